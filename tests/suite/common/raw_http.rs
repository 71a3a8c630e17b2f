//! A raw HTTP/1.1 upstream that records every byte it receives and answers from a script, and
//! a raw client's answer reader: for tests that care about the exact bytes a proxy forwards.

use super::{head_header, DEADLINE};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does with a request, chosen by its path.
#[derive(Clone)]
pub enum Answer {
    /// These bytes, then the connection stays open (unless they say close).
    Bytes(Vec<u8>),
    /// These bytes, then the upstream closes.
    ThenClose(Vec<u8>),
    /// Read the request, then close without a word.
    Vanish,
}

/// Each request an upstream read: its connection's number and its raw bytes.
type Seen = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;

/// A raw upstream: each request it reads (head and body, in their own framing) is recorded
/// with the number of its connection, and answered as the script says for its path.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Seen,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(script: HashMap<&'static str, Answer>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let (log, script) = (seen.clone(), Arc::new(script));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                n += 1;
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (log, script, conn) = (log.clone(), script.clone(), n);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some((raw, path)) = read_request(&mut s, &mut buf).await {
                        log.lock().unwrap().push((conn, raw));
                        let answer = script.get(path.as_str()).cloned().unwrap_or(Answer::Bytes(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        ));
                        match answer {
                            Answer::Bytes(b) => {
                                if s.write_all(&b).await.is_err() {
                                    return;
                                }
                            }
                            Answer::ThenClose(b) => {
                                let _ = s.write_all(&b).await;
                                return;
                            }
                            Answer::Vanish => return,
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            accepted,
            task,
        }
    }

    pub fn seen(&self) -> Vec<(usize, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(c, b)| (*c, String::from_utf8_lossy(b).into_owned()))
            .collect()
    }
}

/// Reads one request (head, then a Content-Length or chunked body) from `s`; its raw bytes
/// and path. `buf` keeps what was read past it.
pub async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, String)> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let lower = head.to_ascii_lowercase();
    let mut end = head_end;
    if let Some(len) = head_header(&head, "content-length") {
        end += len.trim().parse::<usize>().unwrap();
        fill(s, buf, end).await?;
    } else if lower.contains("transfer-encoding: chunked") {
        // De-chunked by hand (not by the gateway's scanner, which this checks).
        loop {
            let line_end = loop {
                if let Some(i) = buf[end..].windows(2).position(|w| w == b"\r\n") {
                    break end + i;
                }
                fill(s, buf, buf.len() + 1).await?;
            };
            let line = String::from_utf8_lossy(&buf[end..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            end = line_end + 2;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let i = loop {
                        if let Some(i) = buf[end..].windows(2).position(|w| w == b"\r\n") {
                            break end + i;
                        }
                        fill(s, buf, buf.len() + 1).await?;
                    };
                    let empty = i == end;
                    end = i + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            end += size + 2;
            fill(s, buf, end).await?;
        }
    }
    let raw: Vec<u8> = buf.drain(..end).collect();
    Some((raw, path))
}

/// Reads from `s` until `buf` holds at least `want` bytes; None when it closed first.
pub async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> Option<()> {
    while buf.len() < want {
        let mut chunk = vec![0u8; 1 << 20];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

/// Reads one answer from the gateway: head, and body by its framing (`head_request`: none).
/// None when the connection closed first.
pub async fn read_answer(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let mut end = head_end;
    let bodiless = head_request || status == 204 || status == 304;
    if bodiless {
    } else if let Some(len) = head_header(&head, "content-length") {
        end += len.trim().parse::<usize>().unwrap();
        fill(s, buf, end).await?;
    } else if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Up to the last chunk and the empty line after its trailers.
        while !buf[head_end..].windows(7).any(|w| w == b"\r\n0\r\n\r\n")
            && !buf[head_end..].starts_with(b"0\r\n\r\n")
            && !trailers_done(&buf[head_end..])
        {
            fill(s, buf, buf.len() + 1).await?;
        }
        end = buf.len();
    } else {
        // Until close.
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(buf)).await;
        end = buf.len();
    }
    let whole = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    Some(whole)
}

fn trailers_done(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("\r\n0\r\n") && text.ends_with("\r\n\r\n")
}

pub async fn exchange(
    c: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: Vec<u8>,
    head_request: bool,
) -> String {
    c.write_all(&req).await.unwrap();
    read_answer(c, buf, head_request).await.unwrap()
}

/// `200 OK` with `body`, framed by its length, and an end-to-end field of the upstream's own.
pub fn ok(body: &str) -> Answer {
    Answer::Bytes(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Up: 1\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}
