//! Differential: the same raw requests through switchyard's pass-through and through nginx as
//! a proxy, each in front of its own copy of one scripted upstream; what the upstream receives
//! and what the client gets back are compared, shape by shape (RFC 9112 framing both ways,
//! bodies of 0 B to 10 MiB, bodiless answers, pipelining, and the smuggling shapes).
//!
//! Compared as meaning, not bytes, where the two proxies legitimately differ in form: a chunked
//! body by its de-chunked data (nginx re-chunks and drops chunk extensions and trailers;
//! switchyard forwards them as they came), the upstream's head by its end-to-end fields
//! (each proxy adds its own `X-Forwarded-*` or `Connection`), a close-delimited answer by its
//! body (nginx re-frames it as chunked; switchyard closes the client's connection after it).
//! A shape one of them refuses must be refused by the other too, and reach no upstream;
//! where switchyard refuses what nginx forwards, the case says so (a stricter refusal).
//!
//! Needs `nginx` (scripts/install-deps.sh --test installs it).

use crate::common::raw_http::*;
use crate::common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    /// TERM to the master, which stops its worker with it (a KILL would leave the worker
    /// running, orphaned); KILL only if it is still there after a while.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    /// nginx as a keep-alive HTTP/1.1 proxy to `upstream`, set up as it would front an
    /// application (Host kept, bodies streamed, no size cap).
    async fn start(upstream: SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
             fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
             client_max_body_size 0;\n  proxy_request_buffering off;\n  proxy_buffering off;\n\
             upstream up {{ server {upstream}; keepalive 16; }}\n\
             server {{ listen 127.0.0.1:{port};\n    location / {{ proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_set_header Host $http_host; \
             proxy_pass http://up; }} }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let bin = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("-v")
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .expect("nginx is installed (scripts/install-deps.sh --test)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(wait_for_port(addr, DEADLINE).await, "nginx listens");
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

/// A body's data: de-chunked when `chunked`.
fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = body[at..].windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let line = String::from_utf8_lossy(&body[at..at + eol]).to_string();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        at += eol + 2;
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
}

/// A message's head fields (lower-case names) and its body's data.
fn split(message: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&message[..end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap().to_owned();
    let fields: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let chunked = fields
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(&message[end..])
    } else {
        message[end..].to_vec()
    };
    (first, fields, body)
}

/// What the upstream saw of a request: its request line, end-to-end fields and body data.
fn upstream_view(raw: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let (line, fields, body) = split(raw.as_bytes());
    let hop = [
        "connection",
        "content-length",
        "transfer-encoding",
        "te",
        "keep-alive",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    let fields = fields
        .into_iter()
        .filter(|(n, _)| !hop.contains(&n.as_str()))
        .collect();
    (line, fields, body)
}

/// What a client saw: the status and the body's data.
fn client_view(answer: &str) -> (u16, Vec<u8>) {
    let (line, _, body) = split(answer.as_bytes());
    (line[9..12].parse().unwrap(), body)
}

async fn send(addr: SocketAddr, raw: &[u8], head_requests: &[bool]) -> Vec<String> {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    for head in head_requests {
        match read_answer(&mut c, &mut buf, *head).await {
            Some(a) => answers.push(a),
            None => break,
        }
    }
    answers
}

#[tokio::test]
async fn pass_through_answers_as_nginx_does_for_every_framing() {
    let big = "x".repeat(10 << 20);
    let script: HashMap<&'static str, Answer> = HashMap::from([
        ("/a", ok("hello")),
        ("/big", ok(&big)),
        (
            "/chunked",
            Answer::Bytes(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"
                    .to_vec(),
            ),
        ),
        (
            "/until-close",
            Answer::ThenClose(b"HTTP/1.1 200 OK\r\nX-Kind: close\r\n\r\nto the end".to_vec()),
        ),
        (
            "/head",
            Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec()),
        ),
        (
            "/no-content",
            Answer::Bytes(b"HTTP/1.1 204 No Content\r\nX-Up: 1\r\n\r\n".to_vec()),
        ),
        (
            "/not-modified",
            Answer::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n".to_vec()),
        ),
    ]);
    let up_sy = Upstream::start(script.clone()).await;
    let up_ng = Upstream::start(script).await;
    let gw = Gateway::start(&format!(
        "  - name: api\n    path: /\n    proxy: {{ upstreams: [\"{}\"] }}\n",
        up_sy.addr
    ))
    .await;
    let nginx = Nginx::start(up_ng.addr).await;

    let post = |size: usize| {
        format!(
            "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n{}",
            "b".repeat(size)
        )
        .into_bytes()
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\n\r\n");
    let cases: Vec<(&str, Vec<u8>, Vec<bool>)> = vec![
        ("GET", get("/a").into_bytes(), vec![false]),
        ("POST 0 B", post(0), vec![false]),
        ("POST 1 KiB", post(1024), vec![false]),
        ("POST 64 KiB", post(64 << 10), vec![false]),
        ("POST 10 MiB", post(10 << 20), vec![false]),
        (
            "POST chunked, extension and trailer",
            b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n"
                .to_vec(),
            vec![false],
        ),
        ("answer 10 MiB", get("/big").into_bytes(), vec![false]),
        ("answer chunked", get("/chunked").into_bytes(), vec![false]),
        (
            "answer until close",
            get("/until-close").into_bytes(),
            vec![false],
        ),
        (
            "HEAD",
            b"HEAD /head HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
            vec![true],
        ),
        ("204", get("/no-content").into_bytes(), vec![false]),
        ("304", get("/not-modified").into_bytes(), vec![false]),
        (
            "pipelined",
            format!("{}{}", get("/a"), get("/chunked")).into_bytes(),
            vec![false, false],
        ),
    ];
    for (name, raw, heads) in &cases {
        let seen = (up_sy.seen().len(), up_ng.seen().len());
        let a_sy = send(gw.addr, raw, heads).await;
        let a_ng = send(nginx.addr, raw, heads).await;
        assert_eq!(a_sy.len(), heads.len(), "{name}: switchyard answered each");
        assert_eq!(a_ng.len(), heads.len(), "{name}: nginx answered each");
        for (s, n) in a_sy.iter().zip(&a_ng) {
            assert_eq!(
                client_view(s),
                client_view(n),
                "{name}: the client's view\nswitchyard: {s:.300}\nnginx: {n:.300}"
            );
        }
        let (v_sy, v_ng) = (up_sy.seen(), up_ng.seen());
        let (new_sy, new_ng) = (&v_sy[seen.0..], &v_ng[seen.1..]);
        assert_eq!(new_sy.len(), new_ng.len(), "{name}: requests upstream");
        for ((_, s), (_, n)) in new_sy.iter().zip(new_ng) {
            assert_eq!(
                upstream_view(s),
                upstream_view(n),
                "{name}: the upstream's view\nswitchyard: {s:.300}\nnginx: {n:.300}"
            );
        }
    }

    // Smuggling shapes (RFC 9112 sections 6.1 and 6.3): refused by both, upstream untouched.
    // `stricter`: nginx forwards it, switchyard refuses it.
    let smuggling: [(&str, &[u8], bool); 6] = [
        (
            "Content-Length and Transfer-Encoding",
            b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
        (
            "two different lengths",
            b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            false,
        ),
        (
            "a coding after chunked",
            b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            false,
        ),
        (
            "a signed length",
            b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: +2\r\n\r\nab",
            false,
        ),
        (
            "a bare LF in a chunk size line",
            b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
            true,
        ),
        (
            "two Hosts",
            b"GET /a HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n",
            false,
        ),
    ];
    for (name, raw, stricter) in smuggling {
        let seen = (up_sy.seen().len(), up_ng.seen().len());
        let a_sy = send(gw.addr, raw, &[false]).await;
        let a_ng = send(nginx.addr, raw, &[false]).await;
        let status = |a: &[String]| a.first().map_or(0, |a| client_view(a).0);
        assert!(
            status(&a_sy) >= 400,
            "{name}: switchyard refuses it: {a_sy:?}"
        );
        let sy_forwarded = up_sy.seen().len() - seen.0;
        let ng_forwarded = up_ng.seen().len() - seen.1;
        assert_eq!(
            sy_forwarded, 0,
            "{name}: nothing reached switchyard's upstream"
        );
        let nginx_refused = status(&a_ng) >= 400 && ng_forwarded == 0;
        assert_eq!(
            nginx_refused,
            !stricter,
            "{name}: nginx {} it: {a_ng:?}",
            if stricter { "forwards" } else { "refuses" }
        );
    }
}
