//! Plain HTTP/1.1 pass-through on the edge's lean path (`gateway::pass`), over the wire: a raw
//! upstream that records every byte it receives and answers from a script, and raw clients.
//! Keep-alive reuse, the forwarded head (hop-by-hop fields out, the edge's `X-Forwarded-*`),
//! bodies in every framing both ways (RFC 9112 sections 6 and 7), interim answers, pipelining,
//! bad answers, and a kept-alive upstream connection that dies as it is reused.

use crate::common::raw_http::*;
use crate::common::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway_for(upstreams: &[SocketAddr]) -> Gateway {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    Gateway::start(&format!(
        "  - name: api\n    path: /\n    proxy: {{ upstreams: [{}] }}\n",
        list.join(", ")
    ))
    .await
}

#[tokio::test]
async fn kept_alive_requests_share_one_upstream_connection_with_the_edges_forwarded_fields() {
    let up = Upstream::start(HashMap::from([("/a", ok("hello"))])).await;
    let gw = gateway_for(&[up.addr]).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..20 {
        c.write_all(
            b"GET /a HTTP/1.1\r\nHost: example.com\r\nX-Custom-Case: v\r\n\
              X-Forwarded-For: 6.6.6.6\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\
              Keep-Alive: timeout=5\r\nTE: trailers\r\n\r\n",
        )
        .await
        .unwrap();
        let answer = read_answer(&mut c, &mut buf, false).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
        assert!(answer.contains("X-Up: 1\r\n"), "{answer}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 20);
    assert!(
        seen.iter().all(|(conn, _)| *conn == 1),
        "one upstream connection carried all 20: {:?}",
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    let first = &seen[0].1;
    assert!(
        first.starts_with("GET /a HTTP/1.1\r\nHost: example.com\r\nX-Custom-Case: v\r\n"),
        "the request line, Host and field case as sent: {first}"
    );
    let lower = first.to_ascii_lowercase();
    for gone in [
        "6.6.6.6",
        "x-hop",
        "keep-alive",
        "\r\nte:",
        "\r\nconnection:",
    ] {
        assert!(!lower.contains(gone), "{gone} was forwarded: {first}");
    }
    assert!(lower.contains("x-forwarded-for: 127.0.0.1\r\n"), "{first}");
    assert!(lower.contains("x-forwarded-proto: http\r\n"), "{first}");
    assert!(
        lower.contains("x-forwarded-host: example.com\r\n"),
        "{first}"
    );
}

#[tokio::test]
async fn bodies_of_every_size_and_framing_pass_both_ways_unchanged() {
    let big = "x".repeat(10 << 20);
    let mid = "m".repeat(64 << 10);
    let chunked_answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
                           5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"
        .to_vec();
    let up = Upstream::start(HashMap::from([
        ("/echo-small", ok("ok")),
        ("/big", ok(&big)),
        ("/mid", ok(&mid)),
        ("/chunked", Answer::Bytes(chunked_answer.clone())),
        (
            "/until-close",
            Answer::ThenClose(
                b"HTTP/1.1 200 OK\r\nX-Kind: close-delimited\r\n\r\nto the end".to_vec(),
            ),
        ),
        (
            "/head",
            Answer::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec()),
        ),
        (
            "/no-content",
            Answer::Bytes(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        ),
        (
            "/not-modified",
            Answer::Bytes(b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n".to_vec()),
        ),
        (
            "/interim",
            Answer::Bytes(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                    .to_vec(),
            ),
        ),
    ]))
    .await;
    let gw = gateway_for(&[up.addr]).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    // Request bodies: 0 B, 1 KiB, 64 KiB, 10 MiB by length; chunked with a trailer.
    for size in [0usize, 1024, 64 << 10, 10 << 20] {
        let body = "b".repeat(size);
        let req = format!(
            "POST /echo-small HTTP/1.1\r\nHost: gw\r\nContent-Length: {size}\r\n\r\n{body}"
        );
        let answer = exchange(&mut c, &mut buf, req.into_bytes(), false).await;
        assert!(answer.ends_with("\r\n\r\nok"), "{size}: {answer:.200}");
        let (_, got) = up.seen().pop().unwrap();
        assert!(
            got.ends_with(&format!("\r\n\r\n{body}")),
            "{size} bytes arrived whole"
        );
    }
    let chunked_req = b"PUT /echo-small HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\nwiki\r\n5;note=x\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n";
    let answer = exchange(&mut c, &mut buf, chunked_req.to_vec(), false).await;
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    let (_, got) = up.seen().pop().unwrap();
    assert!(
        got.ends_with("Transfer-Encoding: chunked\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: gw\r\n\r\n4\r\nwiki\r\n5;note=x\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"),
        "a chunked body goes up as it came, trailer and extension included: {got}"
    );
    // Answers: by length (64 KiB, 10 MiB), chunked with trailers, HEAD, 204, 304, interim.
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /mid HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(answer.ends_with(&mid));
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /big HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(
        answer.len() - answer.find("\r\n\r\n").unwrap() - 4,
        big.len()
    );
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /chunked HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(
        answer.ends_with("\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"),
        "a chunked answer comes as it was sent: {answer}"
    );
    assert!(answer.contains("Trailer: X-Sum\r\n"), "{answer}");
    let answer = exchange(
        &mut c,
        &mut buf,
        b"HEAD /head HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert!(
        answer.contains("Content-Length: 1234\r\n") && answer.ends_with("\r\n\r\n"),
        "{answer}"
    );
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /no-content HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 204 No Content\r\n"),
        "{answer}"
    );
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /not-modified HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 304 Not Modified\r\n"),
        "{answer}"
    );
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /interim HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("final"),
        "interim answers are not relayed: {answer}"
    );
    // Every exchange so far kept the client's connection and one upstream connection.
    let conns: Vec<(usize, String)> = up
        .seen()
        .iter()
        .map(|(c, r)| (*c, r.split(" HTTP").next().unwrap().to_owned()))
        .collect();
    assert!(conns.iter().all(|(conn, _)| *conn == 1), "{conns:?}");
    // Close-delimited: the client is told, gets all of it, and its connection ends.
    let answer = exchange(
        &mut c,
        &mut buf,
        b"GET /until-close HTTP/1.1\r\nHost: gw\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("connection: close\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nto the end"), "{answer}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(DEADLINE, c.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the client's connection closed after it");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start(HashMap::from([("/1", ok("one")), ("/2", ok("two"))])).await;
    let gw = gateway_for(&[up.addr]).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(
        b"POST /1 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabcGET /2 HTTP/1.1\r\nHost: gw\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let one = read_answer(&mut c, &mut buf, false).await.unwrap();
    let two = read_answer(&mut c, &mut buf, false).await.unwrap();
    assert!(
        one.ends_with("one") && two.ends_with("two"),
        "{one} / {two}"
    );
    let seen = up.seen();
    assert!(seen[0].1.starts_with("POST /1 ") && seen[0].1.ends_with("\r\n\r\nabc"));
    assert!(seen[1].1.starts_with("GET /2 "));
}

#[tokio::test]
async fn bad_answers_and_bad_bodies_are_refused_and_the_gateway_keeps_serving() {
    let up = Upstream::start(HashMap::from([
        (
            "/two-lengths",
            Answer::Bytes(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            ),
        ),
        (
            "/switch",
            Answer::Bytes(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec()),
        ),
        ("/fine", ok("fine")),
    ]))
    .await;
    let gw = gateway_for(&[up.addr]).await;
    for path in ["/two-lengths", "/switch"] {
        let r = http_get(gw.addr, path, &[]).await;
        assert_eq!(r.status, 502, "{path}: {}", r.body_text());
    }
    // A chunked request body that breaks its framing is the client's fault.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(b"POST /fine HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut c, &mut buf, false).await;
    // The head and the first chunk may go up before the bad byte is seen; then the upstream
    // connection is dropped and the client gets a 400 and a closed connection.
    let answer = answer.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let r = http_get(gw.addr, "/fine", &[]).await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "fine"));
}

#[tokio::test]
async fn a_kept_alive_upstream_connection_that_dies_on_reuse_costs_no_idempotent_request() {
    let up = Upstream::start(HashMap::from([
        ("/ok", ok("ok")),
        ("/vanish", Answer::Vanish),
    ]))
    .await;
    let gw = gateway_for(&[up.addr]).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes();
    c.write_all(&get("/ok")).await.unwrap();
    assert!(read_answer(&mut c, &mut buf, false)
        .await
        .unwrap()
        .ends_with("ok"));
    // The kept-alive connection takes /vanish and dies without a word: a GET is tried again on
    // a fresh connection, which dies the same way, and the client gets a 502.
    c.write_all(&get("/vanish")).await.unwrap();
    let answer = read_answer(&mut c, &mut buf, false).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    let vanished: Vec<usize> = up
        .seen()
        .iter()
        .filter(|(_, r)| r.starts_with("GET /vanish"))
        .map(|(c, _)| *c)
        .collect();
    assert_eq!(
        vanished,
        vec![1, 2],
        "tried on the reused connection, then a fresh one"
    );
    // A POST with a body is never sent twice.
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    c.write_all(&get("/ok")).await.unwrap();
    assert!(read_answer(&mut c, &mut buf, false)
        .await
        .unwrap()
        .ends_with("ok"));
    c.write_all(b"POST /vanish HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let answer = read_answer(&mut c, &mut buf, false).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    let posts = up
        .seen()
        .iter()
        .filter(|(_, r)| r.starts_with("POST /vanish"))
        .count();
    assert_eq!(posts, 1);
}

#[tokio::test]
async fn a_member_that_refuses_connections_is_skipped() {
    let dead = dead_port();
    let up = Upstream::start(HashMap::from([("/ok", ok("alive"))])).await;
    let gw = gateway_for(&[dead.addr, up.addr]).await;
    for _ in 0..4 {
        let r = http_get(gw.addr, "/ok", &[]).await;
        assert_eq!((r.status, r.body_text().as_str()), (200, "alive"));
    }
}

#[tokio::test]
async fn a_body_that_trickles_in_holds_no_upstream_connection_until_it_is_whole() {
    let up = Upstream::start(HashMap::from([("/slow", ok("got it"))])).await;
    let gw = gateway_for(&[up.addr]).await;
    // 20 clients send their heads and the first bytes of their bodies, then stall.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"POST /slow HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nab")
            .await
            .unwrap();
        clients.push(c);
    }
    let chunked = {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(
            b"POST /slow HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab",
        )
        .await
        .unwrap();
        c
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no upstream connection is taken while bodies are on their way"
    );
    // The rest arrives, a byte at a time: each request goes up whole.
    clients.push(chunked);
    let n = clients.len();
    for (i, c) in clients.iter_mut().enumerate() {
        let rest: &[u8] = if i == n - 1 {
            b"\r\n3\r\ncde\r\n0\r\n\r\n"
        } else {
            b"cde"
        };
        for b in rest {
            c.write_all(&[*b]).await.unwrap();
        }
    }
    for c in clients.iter_mut() {
        let mut buf = Vec::new();
        let answer = read_answer(c, &mut buf, false).await.unwrap();
        assert!(answer.ends_with("got it"), "{answer}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 21);
    assert_eq!(
        seen.iter()
            .filter(|(_, r)| r.ends_with("\r\n\r\nabcde"))
            .count(),
        20
    );
    assert!(seen
        .iter()
        .any(|(_, r)| r.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")));
}

#[tokio::test]
async fn a_client_that_expects_100_continue_gets_it_from_the_edge() {
    let up = Upstream::start(HashMap::from([("/up", ok("stored"))])).await;
    let gw = gateway_for(&[up.addr]).await;
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(
        b"PUT /up HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    // RFC 9110 section 10.1.1: the client waits for 100 before it sends the body.
    let mut interim = [0u8; 25];
    tokio::time::timeout(DEADLINE, c.read_exact(&mut interim))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    c.write_all(b"hello").await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut c, &mut buf, false).await.unwrap();
    assert!(answer.ends_with("stored"), "{answer}");
    let (_, got) = up.seen().pop().unwrap();
    assert!(got.ends_with("\r\n\r\nhello"), "{got}");
    assert!(
        !got.to_ascii_lowercase().contains("expect:"),
        "the expectation was answered at the edge: {got}"
    );
}
