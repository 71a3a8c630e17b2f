//! The server side of a benchmark and its publishers: `serve` (a WebSocket backend whose
//! `/feed` publishes the numbered feed at a fixed rate to every connection and whose `/echo`
//! echoes), the GRIP origin that lets Pushpin hold SSE streams on channel `test`, and
//! `publish`, the same feed pushed to Nchan's WebSocket publisher or Pushpin's HTTP publish API.

use crate::clients::{read_response, split_url};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Ticks `rate` times a second; late ticks catch up at once, so the rate holds on average.
fn ticker(rate: u32) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    tick
}

/// The WebSocket backend on `listen`: `/feed` sends every connection the feed (`rate` messages
/// a second of `size` bytes; rate 0 is a quiet feed), `/echo` echoes.
pub async fn serve(
    listen: SocketAddr,
    rate: u32,
    size: usize,
    payload: crate::feed::Payload,
    seq_log: Option<std::path::PathBuf>,
) {
    let listener = TcpListener::bind(listen).await.expect("bind");
    // With a log (the soak), seqs start from the clock, so a restarted backend never reuses
    // one, and every message written to a `/feed` connection is logged once the kernel has it.
    let log = seq_log.map(|path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open the seq log");
        Arc::new(std::sync::Mutex::new(file))
    });
    let first_seq = if log.is_some() {
        crate::feed::now_ns() / 100_000
    } else {
        0
    };
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<str>>(65536);
    let publisher = tx.clone();
    // Rate 0: a quiet feed (idle-density runs).
    let quiet = rate == 0;
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let mut seq = first_seq;
        let mut tick = ticker(rate);
        loop {
            tick.tick().await;
            seq += 1;
            let _ = publisher.send(payload.message(seq, size).into());
        }
    });
    eprintln!("serving /feed at {rate} msg/s and /echo on {listen}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut rx = tx.subscribe();
        let log = log.clone();
        tokio::spawn(async move {
            let path = Arc::new(std::sync::Mutex::new(String::new()));
            let p = path.clone();
            #[allow(clippy::result_large_err)]
            let record = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                               resp| {
                *p.lock().unwrap() = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                return;
            };
            let path = path.lock().unwrap().clone();
            if path.starts_with("/echo") {
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
                return;
            }
            let log = log.filter(|_| path == "/feed");
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(m) => {
                            if ws.send(Message::text(&*m)).await.is_err() {
                                return;
                            }
                            if let Some(log) = &log {
                                log_sent(log, &m);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                    r = ws.next() => if !matches!(r, Some(Ok(_))) { return },
                }
            }
        });
    }
}

/// Appends `SEQ TS_NS` of a message written to a connection (the soak's verifier reads it).
fn log_sent(log: &std::sync::Mutex<std::fs::File>, m: &str) {
    use std::io::Write;
    if let Some((seq, ts)) = crate::feed::parse(m) {
        let _ = writeln!(log.lock().unwrap(), "{seq} {ts}");
    }
}

/// A GRIP origin for Pushpin: every request on every kept-alive connection is answered with
/// an empty `text/event-stream` held open on channel `test`.
pub async fn grip_origin(listen: SocketAddr) {
    let listener = TcpListener::bind(listen)
        .await
        .expect("bind the GRIP origin");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut s = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            loop {
                // Skip the request head (GETs: no body).
                loop {
                    line.clear();
                    match tokio::io::AsyncBufReadExt::read_line(&mut s, &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.trim().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nGrip-Hold: stream\r\nGrip-Channel: test\r\nContent-Length: 0\r\n\r\n";
                if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Publishes to Pushpin's HTTP API: one POST per message (an SSE event on channel `test`).
async fn publish_http(url: &str, rate: u32, size: usize, payload: crate::feed::Payload) {
    let (addr, path) = split_url(url);
    let connect = || async {
        TcpStream::connect(addr)
            .await
            .map(tokio::io::BufReader::new)
            .expect("connect to the publish endpoint")
    };
    let mut s = connect().await;
    let mut tick = ticker(rate);
    let mut seq = 0u64;
    eprintln!("publishing to {url} at {rate} msg/s");
    loop {
        tick.tick().await;
        seq += 1;
        let item = serde_json::json!({ "items": [{ "channel": "test", "formats": {
            "http-stream": { "content": format!("data: {}\n\n", payload.message(seq, size)) } } }] });
        let body = item.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A connection the server closed after its last answer is replaced, and the message
        // sent again on the new one (once).
        let mut answer = None;
        for _ in 0..2 {
            if s.get_mut().write_all(req.as_bytes()).await.is_ok() {
                answer = read_response(&mut s).await;
            }
            let close = answer.as_ref().is_none_or(|(_, headers, _)| {
                headers
                    .iter()
                    .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"))
            });
            if close {
                s = connect().await;
            }
            if answer.is_some() {
                break;
            }
        }
        if !matches!(answer, Some((200, _, _))) {
            eprintln!("publish {seq} failed: {:?}", answer.map(|r| r.0));
        }
    }
}

/// Publishes the feed to `url`: a `ws://` URL over one WebSocket (Nchan's publisher), an
/// `http://` URL through Pushpin's HTTP publish API.
pub async fn publish(url: &str, rate: u32, size: usize, payload: crate::feed::Payload) {
    if url.starts_with("http://") {
        return publish_http(url, rate, size, payload).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to the publish endpoint");
    let mut tick = ticker(rate);
    let mut seq = 0u64;
    eprintln!("publishing to {url} at {rate} msg/s");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                if ws.send(Message::text(payload.message(seq, size))).await.is_err() {
                    eprintln!("publish connection lost");
                    return;
                }
            }
            m = ws.next() => if !matches!(m, Some(Ok(_))) { eprintln!("publish connection closed"); return },
        }
    }
}
