//! The upstream side of a pass-through WebSocket tunnel: pick a member of the route's upstream
//! set (the same balancing and health state as pingora's proxy path), connect within
//! `connect_timeout` (another member when that fails, since nothing was sent yet), send the
//! client's handshake with the edge's `X-Forwarded-*`, and read the answer's head. A `101`
//! must complete the client's handshake (`Upgrade: websocket` and the `Sec-WebSocket-Accept`
//! of its key, RFC 6455 section 4.1); any other answer is handed back to be relayed as it is,
//! its body read through [`Opened::next_body`].

use super::pool::{Lease, UpstreamSet};
use super::tls::BackendIo;
use crate::metrics;
use bytes::{Buf, Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer head an upstream may send (pingora's proxy path allows the same order).
const ANSWER_HEAD_MAX: usize = 64 * 1024;
const ANSWER_FIELDS: usize = 128;

/// Why no tunnel was opened.
#[derive(Debug)]
pub enum OpenError {
    /// No healthy member was left to try (each failed to connect, or all are down).
    NoUpstream,
    /// A member took the connection but the exchange failed (closed, timed out, no HTTP).
    Failed(String),
    /// A `101` that does not complete the client's handshake.
    BadUpgrade,
}

/// A connected upstream and its answer's head.
pub struct Opened {
    pub stream: BackendIo,
    pub answer: Box<ResponseHeader>,
    /// Bytes read after the head: the upstream's first frames after a `101`, else the start of
    /// the body.
    pub early: BytesMut,
    /// The member's in-flight count, held while the tunnel lives.
    pub lease: Lease,
    body: BodyLeft,
}

/// What is left of a non-`101` answer's body.
enum BodyLeft {
    Length(u64),
    /// Chunked: the data left in the current chunk, and whether the chunk's trailing CRLF is
    /// still to come.
    Chunked {
        left: u64,
        crlf: bool,
    },
    UntilClose,
    Done,
}

/// What the client's request becomes on the way up.
pub struct Forwarded {
    pub client_ip: Option<IpAddr>,
    pub tls: bool,
}

/// Opens the upstream side of a tunnel for `req`. `answer_timeout` bounds the wait for the
/// answer's head.
pub async fn open(
    set: &Arc<UpstreamSet>,
    req: &RequestHeader,
    fwd: &Forwarded,
    answer_timeout: Duration,
) -> Result<Opened, OpenError> {
    let head = request_head(req, fwd);
    let mut tried = Vec::new();
    loop {
        let lease = set
            .select(fwd.client_ip, &tried)
            .ok_or(OpenError::NoUpstream)?;
        let member = &set.members[lease.index];
        let up = &member.upstream;
        let connected = tokio::time::timeout(set.spec.connect_timeout, async {
            let tcp = TcpStream::connect(up.addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            super::tls::secure(tcp, set.spec.tls.as_ref(), up.host(), &up.name).await
        })
        .await;
        let mut stream = match connected {
            Ok(Ok(s)) => s,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "connect timed out".to_owned(),
                };
                if why.starts_with("TLS") {
                    log::warn!("route {}: upstream {}: {why}", set.route, up.name);
                } else {
                    log::debug!(
                        "route {}: upstream {} refused a tunnel: {why}",
                        set.route,
                        up.name
                    );
                }
                metrics::UPSTREAM_CONNECT_FAILURES
                    .with_label_values(&[&set.route, &member.upstream.name])
                    .inc();
                tried.push(lease.index);
                continue;
            }
        };
        let exchanged = tokio::time::timeout(answer_timeout, async {
            stream.write_all(&head).await?;
            read_answer(&mut stream).await
        })
        .await;
        let (answer, early) = match exchanged {
            Ok(Ok(Some(a))) => a,
            Ok(Ok(None)) => {
                return Err(OpenError::Failed(
                    "the upstream's answer is not HTTP/1.1".into(),
                ))
            }
            Ok(Err(e)) => return Err(OpenError::Failed(e.to_string())),
            Err(_) => {
                return Err(OpenError::Failed(
                    "no answer to the handshake in time".into(),
                ))
            }
        };
        let body = if answer.status.as_u16() == 101 {
            if !crate::wire::ws::answer_completes(req, &answer) {
                return Err(OpenError::BadUpgrade);
            }
            BodyLeft::Done
        } else {
            body_framing(&answer)
        };
        return Ok(Opened {
            stream,
            answer,
            early,
            lease,
            body,
        });
    }
}

/// The client's request head as sent up: its own fields (Host kept), with the edge's
/// `X-Forwarded-For`, `-Proto` and `-Host` in place of any the client sent.
fn request_head(req: &RequestHeader, fwd: &Forwarded) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"GET ");
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes();
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    for (name, value) in req.headers.iter() {
        if name.as_str().starts_with("x-forwarded-") {
            continue;
        }
        field(name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(ip) = fwd.client_ip {
        field(b"x-forwarded-for", ip.to_string().as_bytes());
    }
    field(
        b"x-forwarded-proto",
        if fwd.tls { b"https" } else { b"http" },
    );
    if let Some(host) = crate::wire::http::request_host(req) {
        field(b"x-forwarded-host", host.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads an answer head; None when the bytes are not an HTTP/1.1 answer.
async fn read_answer(
    stream: &mut BackendIo,
) -> std::io::Result<Option<(Box<ResponseHeader>, BytesMut)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(parsed) = parse_answer(&buf)? {
            let (answer, len) = parsed;
            buf.advance(len);
            // The head's buffer is not kept for the tunnel's life: only what followed it.
            return Ok(Some((answer, BytesMut::from(&buf[..]))));
        }
        if buf.len() >= ANSWER_HEAD_MAX {
            return Ok(None);
        }
        buf.reserve(2048);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A complete answer head and its length; Ok(None) while incomplete.
#[allow(clippy::type_complexity)]
fn parse_answer(buf: &[u8]) -> std::io::Result<Option<(Box<ResponseHeader>, usize)>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut fields = vec![httparse::EMPTY_HEADER; ANSWER_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(&format!("the upstream's answer does not parse: {e}"))),
    };
    if resp.version != Some(1) {
        return Err(bad("the upstream's answer is not HTTP/1.1"));
    }
    let code = resp.code.unwrap_or(502);
    let mut answer =
        ResponseHeader::build(code, Some(resp.headers.len())).map_err(|e| bad(&e.to_string()))?;
    for h in resp.headers.iter() {
        // CORS is the edge's: an upstream's own would bypass the route's policy.
        if h.name.len() > 15 && h.name[..15].eq_ignore_ascii_case("access-control-") {
            continue;
        }
        let value = http::HeaderValue::from_bytes(h.value).map_err(|e| bad(&e.to_string()))?;
        answer
            .append_header(h.name.to_owned(), value)
            .map_err(|e| bad(&e.to_string()))?;
    }
    Ok(Some((Box::new(answer), len)))
}

fn body_framing(answer: &ResponseHeader) -> BodyLeft {
    let status = answer.status.as_u16();
    if status < 200 || status == 204 || status == 304 {
        return BodyLeft::Done;
    }
    let chunked = answer
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("chunked"))
        });
    if chunked {
        return BodyLeft::Chunked {
            left: 0,
            crlf: false,
        };
    }
    match answer
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
    {
        Some(0) => BodyLeft::Done,
        Some(n) => BodyLeft::Length(n),
        None => BodyLeft::UntilClose,
    }
}

impl Opened {
    /// A `101`'s parts: its head (to relay), the upstream socket, the bytes it sent after the
    /// head, and the member's lease.
    pub fn into_tunnel(self) -> (Box<ResponseHeader>, BackendIo, BytesMut, Lease) {
        (self.answer, self.stream, self.early, self.lease)
    }

    /// The next piece of a non-`101` answer's body (its own framing removed), None at its end.
    pub async fn next_body(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match &mut self.body {
                BodyLeft::Done => return Ok(None),
                BodyLeft::Length(left) => {
                    if self.early.is_empty() && fill(&mut self.stream, &mut self.early).await? == 0
                    {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    let take = (*left).min(self.early.len() as u64) as usize;
                    *left -= take as u64;
                    if *left == 0 {
                        self.body = BodyLeft::Done;
                    }
                    return Ok(Some(self.early.split_to(take).freeze()));
                }
                BodyLeft::UntilClose => {
                    if self.early.is_empty() && fill(&mut self.stream, &mut self.early).await? == 0
                    {
                        self.body = BodyLeft::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.early.split().freeze()));
                }
                BodyLeft::Chunked { left, crlf } if *left > 0 => {
                    if self.early.is_empty() && fill(&mut self.stream, &mut self.early).await? == 0
                    {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    let take = (*left).min(self.early.len() as u64) as usize;
                    *left -= take as u64;
                    *crlf = true;
                    return Ok(Some(self.early.split_to(take).freeze()));
                }
                BodyLeft::Chunked { crlf, .. } => {
                    if *crlf {
                        if self.early.len() < 2 {
                            if fill(&mut self.stream, &mut self.early).await? == 0 {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                            continue;
                        }
                        if &self.early[..2] != b"\r\n" {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "a chunk does not end with CRLF",
                            ));
                        }
                        self.early.advance(2);
                        *crlf = false;
                    }
                    match httparse::parse_chunk_size(&self.early) {
                        Ok(httparse::Status::Complete((used, 0))) => {
                            // The last chunk; trailers (if any) are dropped with the rest.
                            self.early.advance(used);
                            self.body = BodyLeft::Done;
                            return Ok(None);
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            self.early.advance(used);
                            self.body = BodyLeft::Chunked {
                                left: size,
                                crlf: false,
                            };
                        }
                        Ok(httparse::Status::Partial) => {
                            if self.early.len() > 1024
                                || fill(&mut self.stream, &mut self.early).await? == 0
                            {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                        }
                        Err(_) => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "a chunk size does not parse",
                            ))
                        }
                    }
                }
            }
        }
    }
}

async fn fill(stream: &mut BackendIo, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(16 * 1024);
    stream.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_goes_up_with_the_edges_forwarded_fields_only() {
        let mut req = RequestHeader::build("GET", b"/chat?room=1", None).unwrap();
        req.insert_header("host", "example.com").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        let head = request_head(
            &req,
            &Forwarded {
                client_ip: Some("10.0.0.1".parse().unwrap()),
                tls: true,
            },
        );
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("GET /chat?room=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: example.com\r\n"));
        assert!(text.contains("upgrade: websocket\r\n"));
        assert!(!text.contains("6.6.6.6"));
        assert!(text.contains("x-forwarded-for: 10.0.0.1\r\n"));
        assert!(text.contains("x-forwarded-proto: https\r\n"));
        assert!(text.contains("x-forwarded-host: example.com\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn an_answer_head_is_parsed_without_the_upstreams_cors() {
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\nAccess-Control-Allow-Origin: *\r\n\r\nno";
        let (answer, len) = parse_answer(raw).unwrap().unwrap();
        assert_eq!(answer.status.as_u16(), 403);
        assert!(answer.headers.get("access-control-allow-origin").is_none());
        assert_eq!(&raw[len..], b"no");
        assert!(parse_answer(b"HTTP/1.1 101 Sw").unwrap().is_none());
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
