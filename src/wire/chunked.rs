//! The chunked transfer coding (RFC 9112 section 7.1), scanned in place: a body passed through
//! a proxy is forwarded as the bytes that came (chunk extensions and trailers included), and the
//! scanner only says where it ends and refuses what is not chunked. Pure: no I/O.
//!
//! Strict where a lenient reading would let two parsers disagree about where a message ends
//! (request smuggling): a line ends with CRLF only (a bare LF or CR is an error), a chunk size
//! is at most 16 hex digits, a chunk's data is followed by CRLF exactly, and control bytes in a
//! size line's extensions or in a trailer are refused. Size lines and the trailer section are
//! bounded in bytes, so a peer cannot make the scanner (or what buffers for it) grow.

/// The longest chunk-size line, extensions included.
pub const SIZE_LINE_MAX: usize = 4096;
/// The longest trailer section (every trailer field and the final empty line).
pub const TRAILERS_MAX: usize = 16 * 1024;

/// Why bytes are not a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// A chunk size is missing, not hex, or longer than 16 digits.
    BadSize,
    /// A size line is over [`SIZE_LINE_MAX`] or has a control byte in its extensions.
    BadExtension,
    /// A line does not end with CRLF, or a chunk's data is not followed by CRLF.
    BadLineEnd,
    /// The trailer section is over [`TRAILERS_MAX`] or has a control byte.
    BadTrailer,
}

impl std::fmt::Display for ChunkedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BadSize => "a chunk size does not parse",
            Self::BadExtension => "a chunk-size line is too long or has control bytes",
            Self::BadLineEnd => "a chunk line does not end with CRLF",
            Self::BadTrailer => "the trailer section is too long or has control bytes",
        })
    }
}

impl std::error::Error for ChunkedError {}

/// What [`Chunked::scan`] found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// All of them belong to the body, which goes on.
    More,
    /// The body ends after this many of them (the rest is the next message).
    End(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a size line: its value so far, hex digits seen, whether extensions began.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    /// A size line's CR was seen.
    SizeLf {
        value: u64,
    },
    /// Chunk data left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// In the trailer section: whether the current line is empty so far.
    Trailer {
        empty: bool,
    },
    /// A trailer line's CR was seen.
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Scans one chunked body across the reads that carry it.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
    /// Data bytes seen, for the caller's accounting.
    pub data_bytes: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
            line: 0,
            data_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body.
    pub fn scan(&mut self, data: &[u8]) -> Result<Scanned, ChunkedError> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Done => return Ok(Scanned::End(i)),
                State::Data(left) => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    self.data_bytes += take;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                _ => {}
            }
            let b = data[i];
            i += 1;
            self.state = match self.state {
                State::Size { value, digits, ext } => {
                    self.line += 1;
                    if self.line > SIZE_LINE_MAX {
                        return Err(ChunkedError::BadExtension);
                    }
                    match b {
                        b'\r' if digits == 0 => return Err(ChunkedError::BadSize),
                        b'\r' => State::SizeLf { value },
                        b'\n' => return Err(ChunkedError::BadLineEnd),
                        _ if ext => {
                            if b != b'\t' && (b < 0x20 || b == 0x7f) {
                                return Err(ChunkedError::BadExtension);
                            }
                            State::Size { value, digits, ext }
                        }
                        b';' | b' ' | b'\t' if digits > 0 => State::Size {
                            value,
                            digits,
                            ext: true,
                        },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(ChunkedError::BadSize)?;
                            if digits == 16 {
                                return Err(ChunkedError::BadSize);
                            }
                            State::Size {
                                value: value << 4 | d as u64,
                                digits: digits + 1,
                                ext,
                            }
                        }
                    }
                }
                State::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnd);
                    }
                    self.line = 0;
                    if value == 0 {
                        State::Trailer { empty: true }
                    } else {
                        State::Data(value)
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                    ext: false,
                },
                State::DataCr | State::DataLf => return Err(ChunkedError::BadLineEnd),
                State::Trailer { empty } => {
                    self.line += 1;
                    if self.line > TRAILERS_MAX {
                        return Err(ChunkedError::BadTrailer);
                    }
                    match b {
                        b'\r' => State::TrailerLf { empty },
                        b'\n' => return Err(ChunkedError::BadLineEnd),
                        b'\t' => State::Trailer { empty: false },
                        _ if b < 0x20 || b == 0x7f => return Err(ChunkedError::BadTrailer),
                        _ => State::Trailer { empty: false },
                    }
                }
                State::TrailerLf { empty } => {
                    self.line += 1;
                    if b != b'\n' {
                        return Err(ChunkedError::BadLineEnd);
                    }
                    if empty {
                        self.state = State::Done;
                        return Ok(Scanned::End(i));
                    }
                    State::Trailer { empty: true }
                }
                State::Data(_) | State::Done => unreachable!("handled above"),
            };
        }
        Ok(if self.state == State::Done {
            Scanned::End(i)
        } else {
            Scanned::More
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` split at every position, and in one piece: the same answer each way.
    fn scan_split(body: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let whole = {
            let mut c = Chunked::new();
            match c.scan(body)? {
                Scanned::End(n) => Some(n),
                Scanned::More => None,
            }
        };
        for at in 0..=body.len() {
            let mut c = Chunked::new();
            let split = match c.scan(&body[..at]) {
                Ok(Scanned::End(n)) => Ok(Some(n)),
                Ok(Scanned::More) => match c.scan(&body[at..]) {
                    Ok(Scanned::End(n)) => Ok(Some(at + n)),
                    Ok(Scanned::More) => Ok(None),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            assert_eq!(split, Ok(whole), "split at {at}");
        }
        Ok(whole)
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n1a;name=\"v\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nExpires: never\r\n\r\nGET / HTTP/1.1\r\n";
        let end = scan_split(body).unwrap().unwrap();
        assert_eq!(&body[end..], b"GET / HTTP/1.1\r\n");
        let mut c = Chunked::new();
        c.scan(body).unwrap();
        assert_eq!(c.data_bytes, 31);
        assert!(c.is_done());
        assert_eq!(scan_split(b"0\r\n\r\n").unwrap(), Some(5));
        assert_eq!(scan_split(b"A\r\n0123456789\r\n0\r\n").unwrap(), None);
    }

    #[test]
    fn shapes_two_parsers_could_read_differently_are_refused() {
        let bad: &[(&[u8], ChunkedError)] = &[
            (b"5\nhello\r\n0\r\n\r\n", ChunkedError::BadLineEnd),
            (b"5\r\nhello\n0\r\n\r\n", ChunkedError::BadLineEnd),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkedError::BadLineEnd),
            (b"\r\n", ChunkedError::BadSize),
            (b"-5\r\n", ChunkedError::BadSize),
            (b"0x5\r\n", ChunkedError::BadSize),
            (b"+5\r\n", ChunkedError::BadSize),
            (b" 5\r\n", ChunkedError::BadSize),
            (b"10000000000000000\r\n", ChunkedError::BadSize),
            (b"5;a\x00b\r\n", ChunkedError::BadExtension),
            (b"0\r\nX: a\x01\r\n\r\n", ChunkedError::BadTrailer),
            (b"0\r\nX: a\n\r\n", ChunkedError::BadLineEnd),
            (b"0\r\n\n", ChunkedError::BadLineEnd),
        ];
        for (body, want) in bad {
            assert_eq!(
                scan_split(body),
                Err(*want),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // 16 hex digits are the most a size may have.
        let mut c = Chunked::new();
        assert_eq!(c.scan(b"000000000000000A\r\n"), Ok(Scanned::More));
    }

    #[test]
    fn size_lines_and_trailers_are_bounded() {
        let mut line = b"5;".to_vec();
        line.resize(SIZE_LINE_MAX + 1, b'a');
        assert_eq!(Chunked::new().scan(&line), Err(ChunkedError::BadExtension));
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < TRAILERS_MAX + 16 {
            trailers.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            Chunked::new().scan(&trailers),
            Err(ChunkedError::BadTrailer)
        );
    }
}
