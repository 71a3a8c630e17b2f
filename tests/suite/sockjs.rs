//! SockJS on bridged routes, over the wire: the behaviours the SockJS protocol suite
//! (`sockjs-protocol.py`) checks, against the routes it expects (`/echo`, `/close`,
//! `/disabled_websocket_echo`, `/cookie_needed_echo`) on a plain WebSocket backend; the same
//! requests sent to the reference server (sockjs-node) and to switchyard, answer for answer;
//! and the abuse a gateway must hold against (callbacks, stolen session ids, abandoned
//! sessions, oversize and malformed bodies, clients that stop reading).

use crate::common::chat::ChatBackend;
use crate::common::sockjs::*;
use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn suite_gateway() -> (Gateway, WsBackend) {
    let backend = WsBackend::start().await;
    let gw = Gateway::start_with(&suite_routes(&backend), SUITE_DEFAULTS).await;
    (gw, backend)
}

const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";

async fn post(gw: &Gateway, path: &str, body: &str) -> Response {
    request(gw.addr, "POST", path, &[], body.as_bytes()).await
}

async fn get(gw: &Gateway, path: &str) -> Response {
    request(gw.addr, "GET", path, &[], b"").await
}

/// The messages of one SockJS frame (`a[...]`, bare or in a JSONP call), or none.
fn messages_in(body: &str) -> Vec<String> {
    let body = body.trim();
    let frame = match body.strip_prefix("/**/") {
        Some(call) => {
            let arg = &call[call.find('(').unwrap() + 1..call.rfind(')').unwrap()];
            serde_json::from_str::<String>(arg).unwrap()
        }
        None => body.to_owned(),
    };
    match frame.strip_prefix('a') {
        Some(items) => serde_json::from_str(items).unwrap(),
        None => panic!("not a message frame: {frame:?}"),
    }
}

/// Polls (`xhr`, or `jsonp?c=cb`) until `n` messages came, however the answers split them.
async fn poll_messages(gw: &Gateway, url: &str, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = if url.ends_with("/xhr") {
            post(gw, url, "").await
        } else {
            get(gw, url).await
        };
        assert_eq!(r.status, 200);
        got.extend(messages_in(&r.body_text()));
    }
    assert_eq!(got.len(), n, "{got:?}");
    got
}

fn ctype(r: &Response) -> String {
    r.header("content-type").unwrap_or("").replace(' ', "")
}

#[tokio::test]
async fn greeting_info_and_iframe_answer_as_the_spec_says() {
    let (gw, _b) = suite_gateway().await;
    for path in ["/echo", "/echo/"] {
        let r = get(&gw, path).await;
        assert_eq!(r.status, 200);
        assert_eq!(ctype(&r), "text/plain;charset=UTF-8");
        assert_eq!(r.body_text(), "Welcome to SockJS!\n");
        assert!(r.header("set-cookie").is_none());
    }
    for suffix in ["/a", "/a.html", "//", "///", "/a/a", "/a/a/", "/a/"] {
        assert_eq!(
            get(&gw, &format!("/echo{suffix}")).await.status,
            404,
            "{suffix}"
        );
    }
    // info: CORS for the origin, never cached, fresh entropy each time.
    let r = request(gw.addr, "GET", "/echo/info", &[("Origin", "test")], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(ctype(&r), "application/json;charset=UTF-8");
    assert_eq!(r.header("cache-control"), Some(NO_CACHE));
    assert_eq!(r.header("access-control-allow-origin"), Some("test"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let info: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(info["websocket"], true);
    assert_eq!(info["cookie_needed"], false);
    assert_eq!(info["origins"], serde_json::json!(["*:*"]));
    let again: serde_json::Value =
        serde_json::from_slice(&get(&gw, "/echo/info").await.body).unwrap();
    assert!(info["entropy"].is_u64() && again["entropy"].is_u64());
    assert_ne!(info["entropy"], again["entropy"]);
    let off: serde_json::Value =
        serde_json::from_slice(&get(&gw, "/disabled_websocket_echo/info").await.body).unwrap();
    assert_eq!(off["websocket"], false);
    let cookie: serde_json::Value =
        serde_json::from_slice(&get(&gw, "/cookie_needed_echo/info").await.body).unwrap();
    assert_eq!(cookie["cookie_needed"], true);

    // iframe.html and its versioned forms: strongly cached, one ETag, 304 on a match.
    for suffix in [
        "/iframe.html",
        "/iframe-a.html",
        "/iframe-.html",
        "/iframe-0.1.2.html",
        "/iframe-0.1.2abc-dirty.2144.html",
        "/iframe-a.html?t=1234",
    ] {
        let r = get(&gw, &format!("/echo{suffix}")).await;
        assert_eq!(r.status, 200, "{suffix}");
        assert_eq!(ctype(&r), "text/html;charset=UTF-8");
        assert!(r.header("cache-control").unwrap().contains("public"));
        assert!(r
            .header("cache-control")
            .unwrap()
            .contains("max-age=31536000"));
        assert!(r.header("expires").is_some() && r.header("last-modified").is_none());
        assert!(r.header("set-cookie").is_none());
        let body = r.body_text();
        assert!(
            body.starts_with("<!DOCTYPE html>\n<html>\n<head>\n"),
            "{body}"
        );
        assert!(
            body.contains("<script src=\"/sockjs.min.js\"></script>"),
            "{body}"
        );
        assert!(body.contains("SockJS.bootstrap_iframe();"));
    }
    for suffix in [
        "/iframe.htm",
        "/iframe",
        "/IFRAME.HTML",
        "/IFRAME",
        "/iframe.HTML",
        "/iframe.xml",
        "/iframe-/.html",
    ] {
        assert_eq!(
            get(&gw, &format!("/echo{suffix}")).await.status,
            404,
            "{suffix}"
        );
    }
    let r1 = get(&gw, "/echo/iframe.html").await;
    let r2 = get(&gw, "/echo/iframe.html").await;
    let etag = r1.header("etag").unwrap().to_owned();
    assert_eq!(Some(etag.as_str()), r2.header("etag"));
    let r = request(
        gw.addr,
        "GET",
        "/echo/iframe.html",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(r.status, 304);
    assert!(r.header("content-type").is_none() && r.body.is_empty());
}

#[tokio::test]
async fn preflights_are_answered_per_the_spec_and_cached_for_a_year() {
    let (gw, _b) = suite_gateway().await;
    for (path, methods) in [
        ("/echo/info", "OPTIONS, GET"),
        ("/echo/abc/abc/xhr", "OPTIONS, POST"),
        ("/echo/abc/abc/xhr_send", "OPTIONS, POST"),
        ("/echo/abc/abc/xhr_streaming", "OPTIONS, POST"),
    ] {
        for origin in ["test", "null", "https://app.example"] {
            let r = request(
                gw.addr,
                "OPTIONS",
                path,
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", methods),
                ],
                b"",
            )
            .await;
            assert_eq!(r.status, 204, "{path} {origin}");
            assert_eq!(r.header("cache-control"), Some("public, max-age=31536000"));
            assert!(r.header("expires").is_some());
            assert_eq!(r.header("access-control-max-age"), Some("31536000"));
            assert_eq!(r.header("access-control-allow-methods"), Some(methods));
            assert_eq!(r.header("access-control-allow-origin"), Some(origin));
            assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
            assert!(r.body.is_empty());
        }
    }
    let asks = |h: &'static str| {
        let addr = gw.addr;
        async move {
            request(
                addr,
                "OPTIONS",
                &format!("/echo/000/{}/xhr", session_id()),
                &[
                    ("Origin", "test"),
                    ("Access-Control-Request-Method", "POST"),
                    ("Access-Control-Request-Headers", h),
                ],
                b"",
            )
            .await
        }
    };
    assert_eq!(
        asks("a, b, c").await.header("access-control-allow-headers"),
        Some("a, b, c")
    );
    assert_eq!(asks("").await.header("access-control-allow-headers"), None);
}

#[tokio::test]
async fn xhr_polling_opens_echoes_and_closes_sessions() {
    let (gw, _b) = suite_gateway().await;
    let url = format!("/echo/000/{}", session_id());
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr"),
        &[("Origin", "test")],
        b"",
    )
    .await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "o\n"));
    assert_eq!(ctype(&r), "application/javascript;charset=UTF-8");
    assert_eq!(r.header("cache-control"), Some(NO_CACHE));
    assert_eq!(r.header("access-control-allow-origin"), Some("test"));
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &[("Origin", "test")],
        br#"["x"]"#,
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(ctype(&r), "text/plain;charset=UTF-8");
    assert_eq!(r.header("cache-control"), Some(NO_CACHE));
    // Without Origin: `*`, and no credentials.
    let r = post(&gw, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body_text(), "a[\"x\"]\n");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);

    // The server id is ignored; the session id alone names the session.
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), r#"["a"]"#)
            .await
            .status,
        204
    );
    let other_server = url.replace("/000/", "/999/");
    assert_eq!(
        post(&gw, &format!("{other_server}/xhr"), "")
            .await
            .body_text(),
        "a[\"a\"]\n"
    );

    // Sends to a session that does not exist: 404.
    assert_eq!(
        post(&gw, "/echo/000/bad_session/xhr_send", r#"["a"]"#)
            .await
            .status,
        404
    );
    // Broken and missing payloads: 500 with the spec's words; the session goes on.
    let r = post(&gw, &format!("{url}/xhr_send"), "[\"x").await;
    assert_eq!(r.status, 500);
    assert!(r.body_text().contains("Broken JSON encoding."));
    let r = post(&gw, &format!("{url}/xhr_send"), "").await;
    assert_eq!(r.status, 500);
    assert!(r.body_text().contains("Payload expected."));
    // Frames with no messages are allowed; every content type is taken.
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), "[]").await.status,
        204
    );
    let types = [
        "text/plain",
        "T",
        "application/json",
        "application/xml",
        "",
        "text/xml; charset=utf-8",
    ];
    for ct in types {
        let h: Vec<(&str, &str)> = if ct.is_empty() {
            vec![]
        } else {
            vec![("Content-Type", ct)]
        };
        let r = request(gw.addr, "POST", &format!("{url}/xhr_send"), &h, br#"["a"]"#).await;
        assert_eq!(r.status, 204, "{ct}");
    }
    let got = poll_messages(&gw, &format!("{url}/xhr"), types.len()).await;
    assert_eq!(got, vec!["a"; types.len()]);

    // A second receiver while one waits: told 2010, and the first goes on.
    let waiting = Stream::open(gw.addr, "POST", &format!("{url}/xhr"), &[]).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = post(&gw, &format!("{url}/xhr"), "").await;
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (200, "c[2010,\"Another connection still open\"]\n")
    );
    // The waiting poll is interrupted by its client: the session is closed.
    waiting.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = post(&gw, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body_text(), "c[1002,\"Connection interrupted\"]\n");

    // A backend that closes: its code and reason, to this poll and every later one.
    let url = format!("/close/000/{}", session_id());
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
    for _ in 0..2 {
        let r = post(&gw, &format!("{url}/xhr"), "").await;
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (200, "c[3000,\"Go away!\"]\n")
        );
    }
}

#[tokio::test]
async fn malformed_session_urls_are_not_found_and_any_other_id_is_a_session() {
    let (gw, _b) = suite_gateway().await;
    for part in ["/a/a", "/_/_", "/1/1", "/abcdefgh_i-j%20/abcdefg_i-j%20"] {
        let part = format!("{part}{}", session_id());
        let r = post(&gw, &format!("/echo{part}/xhr"), "").await;
        assert_eq!((r.status, r.body_text().as_str()), (200, "o\n"), "{part}");
    }
    for part in ["//", "/a./a", "/a/a.", "/./.", "/", "///"] {
        assert_eq!(
            get(&gw, &format!("/echo{part}/xhr")).await.status,
            404,
            "{part}"
        );
        assert_eq!(
            post(&gw, &format!("/echo{part}/xhr"), "").await.status,
            404,
            "{part}"
        );
    }
    // Methods a transport does not take: 405 with Allow, no body, no content type.
    let r = get(&gw, &format!("/echo/000/{}/xhr", session_id())).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert!(r.header("content-type").is_none() && r.body.is_empty());
}

#[tokio::test]
async fn streaming_transports_frame_messages_and_end_at_the_response_limit() {
    let (gw, _b) = suite_gateway().await;
    // xhr_streaming: the 2 KiB prelude, then frames; 4 KiB in all, then the answer ends.
    let url = format!("/echo/000/{}", session_id());
    let mut s = Stream::open(
        gw.addr,
        "POST",
        &format!("{url}/xhr_streaming"),
        &[("Origin", "test")],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("content-type"),
        Some("application/javascript; charset=UTF-8")
    );
    assert_eq!(s.header("cache-control"), Some(NO_CACHE));
    assert_eq!(s.header("access-control-allow-origin"), Some("test"));
    assert_eq!(s.chunk().await.unwrap(), format!("{}\n", "h".repeat(2048)));
    assert_eq!(s.chunk().await.unwrap(), "o\n");
    let msg = format!("\"{}\"", "x".repeat(128));
    for _ in 0..31 {
        assert_eq!(
            post(&gw, &format!("{url}/xhr_send"), &format!("[{msg}]"))
                .await
                .status,
            204
        );
        assert_eq!(s.chunk().await.unwrap(), format!("a[{msg}]\n"));
    }
    assert_eq!(s.chunk().await, None, "the answer ends past response_limit");
    // The session goes on with the next request.
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), "[\"next\"]")
            .await
            .status,
        204
    );
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "a[\"next\"]\n"
    );

    // eventsource.
    let url = format!("/echo/000/{}", session_id());
    let mut s = Stream::open(gw.addr, "GET", &format!("{url}/eventsource"), &[]).await;
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some(NO_CACHE));
    assert_eq!(s.chunk().await.unwrap(), "\r\n");
    assert_eq!(s.chunk().await.unwrap(), "data: o\r\n\r\n");
    post(&gw, &format!("{url}/xhr_send"), "[\"x\"]").await;
    assert_eq!(s.chunk().await.unwrap(), "data: a[\"x\"]\r\n\r\n");
    post(&gw, &format!("{url}/xhr_send"), r#"["  \u0000\n\r "]"#).await;
    assert_eq!(
        s.chunk().await.unwrap(),
        "data: a[\"  \\u0000\\n\\r \"]\r\n\r\n"
    );
    // sockjs-client runs decodeURI on each event: `%` goes as `%25`.
    post(&gw, &format!("{url}/xhr_send"), "[\"100% %61\"]").await;
    assert_eq!(
        s.chunk().await.unwrap(),
        "data: a[\"100%25 %2561\"]\r\n\r\n"
    );
    let big = format!("\"{}\"", "x".repeat(4096));
    post(&gw, &format!("{url}/xhr_send"), &format!("[{big}]")).await;
    assert_eq!(s.chunk().await.unwrap(), format!("data: a[{big}]\r\n\r\n"));
    assert_eq!(s.chunk().await, None);

    // htmlfile: the callback page (over 1 KiB), then one script per frame.
    let url = format!("/echo/000/{}", session_id());
    let mut s = Stream::open(gw.addr, "GET", &format!("{url}/htmlfile?c=%63allback"), &[]).await;
    assert_eq!(s.header("content-type"), Some("text/html; charset=UTF-8"));
    let page = s.chunk().await.unwrap();
    assert!(page.len() > 1024);
    assert!(page.trim().starts_with("<!doctype html>"));
    assert!(page.contains("var c = parent.callback;"));
    assert_eq!(
        s.chunk().await.unwrap(),
        "<script>\np(\"o\");\n</script>\r\n"
    );
    post(&gw, &format!("{url}/xhr_send"), "[\"x\"]").await;
    assert_eq!(
        s.chunk().await.unwrap(),
        "<script>\np(\"a[\\\"x\\\"]\");\n</script>\r\n"
    );
    drop(s);

    // A second streaming receiver gets 2010 and its answer ends; aborting the first closes
    // the session.
    let url = format!("/echo/000/{}", session_id());
    let mut first = Stream::open(gw.addr, "POST", &format!("{url}/xhr_streaming"), &[]).await;
    first.chunk().await;
    assert_eq!(first.chunk().await.unwrap(), "o\n");
    let mut second = Stream::open(gw.addr, "POST", &format!("{url}/xhr_streaming"), &[]).await;
    second.chunk().await;
    assert_eq!(
        second.chunk().await.unwrap(),
        "c[2010,\"Another connection still open\"]\n"
    );
    assert_eq!(second.chunk().await, None);
    first.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = Stream::open(gw.addr, "POST", &format!("{url}/xhr_streaming"), &[]).await;
    third.chunk().await;
    assert_eq!(
        third.chunk().await.unwrap(),
        "c[1002,\"Connection interrupted\"]\n"
    );

    // A closing backend ends every streaming answer after its close frame.
    let url = format!("/close/000/{}", session_id());
    let mut s = Stream::open(gw.addr, "POST", &format!("{url}/xhr_streaming"), &[]).await;
    s.chunk().await;
    assert_eq!(s.chunk().await.unwrap(), "o\n");
    assert_eq!(s.chunk().await.unwrap(), "c[3000,\"Go away!\"]\n");
    assert_eq!(s.chunk().await, None);
}

#[tokio::test]
async fn jsonp_polling_calls_back_and_takes_form_and_raw_sends() {
    let (gw, _b) = suite_gateway().await;
    let url = format!("/echo/000/{}", session_id());
    let r = get(&gw, &format!("{url}/jsonp?c=%63allback")).await;
    assert_eq!(r.status, 200);
    assert_eq!(ctype(&r), "application/javascript;charset=UTF-8");
    assert_eq!(r.header("cache-control"), Some(NO_CACHE));
    assert_eq!(r.body_text(), "/**/callback(\"o\");\r\n");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &form,
        b"d=%5B%22x%22%5D",
    )
    .await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok"));
    assert_eq!(ctype(&r), "text/plain;charset=UTF-8");
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &[("Content-Type", "text/plain")],
        br#"["%61bc"]"#,
    )
    .await;
    assert_eq!(r.body_text(), "ok");
    let got = poll_messages(&gw, &format!("{url}/jsonp?c=callback"), 2).await;
    assert_eq!(got, ["x", "%61bc"]);
    for body in ["", "d=", "p=p"] {
        let r = request(
            gw.addr,
            "POST",
            &format!("{url}/jsonp_send"),
            &form,
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 500, "{body:?}");
        assert!(r.body_text().contains("Payload expected."));
    }
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/jsonp_send"),
        &form,
        b"d=%5B%22x",
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.body_text().contains("Broken JSON encoding."));
    // Callbacks: required, and nothing but [a-zA-Z0-9-_.] (no script through `c=`).
    for t in ["jsonp", "htmlfile"] {
        let r = get(&gw, &format!("/echo/a/a/{t}")).await;
        assert_eq!(r.status, 500);
        assert!(r.body_text().contains("\"callback\" parameter required"));
        for bad in ["%20", "*", "abc(", "abc%28", "alert(1)//", "%3Cscript%3E"] {
            let r = get(&gw, &format!("/echo/a/a/{t}?c={bad}")).await;
            assert_eq!(r.status, 500, "{t} {bad}");
            assert!(r.body_text().contains("invalid \"callback\" parameter"));
        }
    }
    let url = format!("/close/000/{}", session_id());
    assert_eq!(
        get(&gw, &format!("{url}/jsonp?c=x")).await.body_text(),
        "/**/x(\"o\");\r\n"
    );
    assert_eq!(
        get(&gw, &format!("{url}/jsonp?c=x")).await.body_text(),
        "/**/x(\"c[3000,\\\"Go away!\\\"]\");\r\n"
    );
}

#[tokio::test]
async fn websocket_transports_frame_raw_and_refuse_what_is_not_a_handshake() {
    let (gw, _b) = suite_gateway().await;
    let url = gw.ws_url(&format!("/echo/000/{}/websocket", session_id()));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let next = |m: Option<Result<Message, _>>| m.unwrap().unwrap().into_text().unwrap().to_string();
    assert_eq!(next(ws.next().await), "o");
    ws.send(Message::text("")).await.unwrap();
    ws.send(Message::text("[]")).await.unwrap();
    ws.send(Message::text("[\"a\"]")).await.unwrap();
    assert_eq!(next(ws.next().await), "a[\"a\"]");
    // One JSON string is one message too.
    ws.send(Message::text("\"b\"")).await.unwrap();
    assert_eq!(next(ws.next().await), "a[\"b\"]");
    // Broken framing: the connection is closed.
    ws.send(Message::text("[\"a")).await.unwrap();
    let mut closed = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Close(f) = m {
            closed = f.map(|f| (u16::from(f.code), f.reason.to_string()));
        }
    }
    assert_eq!(closed, Some((3000, "Broken framing.".into())));

    // A session that the backend closes: the close frame, then the WebSocket close.
    let url = gw.ws_url(&format!("/close/000/{}/websocket", session_id()));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next(ws.next().await), "o");
    assert_eq!(next(ws.next().await), "c[3000,\"Go away!\"]");
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 3000),
        other => panic!("expected a close, got {other:?}"),
    }

    // Raw WebSocket at base/websocket: plain messages both ways.
    let (mut raw, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo/websocket"))
        .await
        .unwrap();
    raw.send(Message::text("Hello world!\u{ffff}"))
        .await
        .unwrap();
    assert_eq!(next(raw.next().await), "Hello world!\u{ffff}");

    // Not handshakes: 400 with the reference server's words; other methods 405.
    let path = "/echo/0/0/websocket";
    let r = get(&gw, path).await;
    assert_eq!(r.status, 400);
    assert!(r
        .body_text()
        .contains("Can \"Upgrade\" only to \"WebSocket\"."));
    let r = request(
        gw.addr,
        "GET",
        path,
        &[("Upgrade", "WebSocket"), ("Connection", "close")],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    for h in [
        vec![("Upgrade", "WebSocket"), ("Connection", "Upgrade")],
        vec![],
    ] {
        let r = request(gw.addr, "POST", path, &h, b"").await;
        assert_eq!(r.status, 405);
        assert!(r.header("content-type").is_none() && r.body.is_empty());
        assert!(r.header("allow").is_some());
    }
    // A route without WebSocket: 404 on both WebSocket URLs.
    for path in [
        "/disabled_websocket_echo/websocket",
        "/disabled_websocket_echo/0/0/websocket",
    ] {
        let r = request(
            gw.addr,
            "GET",
            path,
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
                ("Sec-WebSocket-Version", "13"),
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 404, "{path}");
    }
}

#[tokio::test]
async fn cookie_needed_routes_set_jsessionid() {
    let (gw, _b) = suite_gateway().await;
    let check = |r: &Response, value: &str| {
        let c = r.header("set-cookie").expect("Set-Cookie");
        let mut parts = c.split(';');
        assert_eq!(parts.next().unwrap().trim(), format!("JSESSIONID={value}"));
        assert_eq!(parts.next().unwrap().trim().to_ascii_lowercase(), "path=/");
    };
    let url = format!("/cookie_needed_echo/000/{}", session_id());
    let r = post(&gw, &format!("{url}/xhr"), "").await;
    assert_eq!(r.body_text(), "o\n");
    check(&r, "dummy");
    let url = format!("/cookie_needed_echo/000/{}", session_id());
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr"),
        &[("Cookie", "JSESSIONID=abcdef")],
        b"",
    )
    .await;
    check(&r, "abcdef");
    for t in ["eventsource", "htmlfile?c=x", "jsonp?c=x"] {
        let url = format!("/cookie_needed_echo/000/{}/{t}", session_id());
        let s = Stream::open(gw.addr, "GET", &url, &[]).await;
        assert_eq!(
            s.header("set-cookie"),
            Some("JSESSIONID=dummy; path=/"),
            "{t}"
        );
    }
    assert!(get(&gw, "/cookie_needed_echo/info")
        .await
        .header("set-cookie")
        .is_none());
    assert!(post(&gw, &format!("/echo/000/{}/xhr", session_id()), "")
        .await
        .header("set-cookie")
        .is_none());
}

#[tokio::test]
async fn the_server_escapes_what_browsers_mangle_and_decodes_what_clients_escape() {
    let (gw, _b) = suite_gateway().await;
    let url = format!("/echo/000/{}", session_id());
    post(&gw, &format!("{url}/xhr"), "").await;
    // The suite's "server killer" code points, and one outside the BMP.
    let killers: String = (0x200cu32..=0x200f)
        .chain(0x2028..=0x202f)
        .chain(0x2060..=0x206f)
        .chain(0xfff0..=0xffff)
        .filter_map(char::from_u32)
        .chain(['\u{1f600}'])
        .collect();
    let body = serde_json::to_string(&[&killers]).unwrap();
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), &body).await.status,
        204
    );
    let got = post(&gw, &format!("{url}/xhr"), "").await.body_text();
    let expected: String = killers
        .encode_utf16()
        .map(|u| format!("\\u{u:04x}"))
        .collect();
    assert_eq!(got, format!("a[\"{expected}\"]\n"));
    // Escaped by the client, decoded by the server: the same text comes back.
    let text = "\u{0}\u{1f}\u{7f}\u{ad}\u{600}\u{2000}\u{feff}é漢";
    let escaped: String = text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
    post(&gw, &format!("{url}/xhr_send"), &format!("[\"{escaped}\"]")).await;
    let got = post(&gw, &format!("{url}/xhr"), "").await.body_text();
    let frame: Vec<String> = serde_json::from_str(got.trim().strip_prefix('a').unwrap()).unwrap();
    assert_eq!(frame, [text]);
}

/// One request as both servers get it: a method, a path under the server, the body, and
/// headers.
struct Probe {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
}

/// The headers the spec fixes, as both servers should send them.
fn fixed_headers(r: &Response) -> Vec<(&'static str, Option<String>)> {
    let names = [
        "content-type",
        "cache-control",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
        "allow",
        "set-cookie",
    ];
    let mut out: Vec<_> = names
        .iter()
        .map(|n| {
            (
                *n,
                r.header(n).map(|v| v.replace(' ', "").to_ascii_lowercase()),
            )
        })
        .collect();
    out.push(("expires", r.header("expires").map(|_| "set".into())));
    out.push(("etag", r.header("etag").map(|_| "set".into())));
    out
}

#[tokio::test]
async fn answers_match_the_reference_server() {
    let (gw, _b) = suite_gateway().await;
    let reference = Reference::start().await;
    let sid = session_id();
    let e = format!("/echo/000/{sid}");
    let c = format!("/close/000/{}", session_id());
    let k = format!("/cookie_needed_echo/000/{}", session_id());
    let j = format!("/echo/000/{}", session_id());
    let p = |method, path: &str, headers: Vec<(&'static str, &'static str)>, body| Probe {
        method,
        path: path.to_owned(),
        headers,
        body,
    };
    let form = || vec![("Content-Type", "application/x-www-form-urlencoded")];
    let probes = vec![
        p("GET", "/echo", vec![], ""),
        p("GET", "/echo/", vec![], ""),
        p("GET", "/echo/a/a", vec![], ""),
        p("GET", "/echo/iframe.html", vec![], ""),
        p("GET", "/echo/iframe-x.html?t=1", vec![], ""),
        p("GET", "/echo/IFRAME.HTML", vec![], ""),
        p(
            "OPTIONS",
            "/echo/info",
            vec![("Origin", "test"), ("Access-Control-Request-Method", "GET")],
            "",
        ),
        p(
            "OPTIONS",
            "/echo/info",
            vec![("Origin", "null"), ("Access-Control-Request-Method", "GET")],
            "",
        ),
        p(
            "OPTIONS",
            &format!("{e}/xhr"),
            vec![
                ("Origin", "test"),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "a, b"),
            ],
            "",
        ),
        p(
            "OPTIONS",
            &format!("{e}/xhr_streaming"),
            vec![
                ("Origin", "null"),
                ("Access-Control-Request-Method", "POST"),
            ],
            "",
        ),
        p("POST", &format!("{e}/xhr"), vec![("Origin", "test")], ""),
        // One message per send: two echoes may come back in one answer or in two.
        p(
            "POST",
            &format!("{e}/xhr_send"),
            vec![("Origin", "test")],
            r#"["aé\u2028😀\u0000"]"#,
        ),
        p("POST", &format!("{e}/xhr"), vec![], ""),
        p("POST", &format!("{e}/xhr_send"), vec![], "[\"x"),
        p("POST", &format!("{e}/xhr_send"), vec![], ""),
        p("POST", &format!("{e}/xhr_send"), vec![], "{}"),
        p("POST", &format!("{e}/xhr_send"), vec![], "[]"),
        p("GET", &format!("{e}/xhr"), vec![], ""),
        p(
            "POST",
            "/echo/000/no_such_session/xhr_send",
            vec![],
            "[\"a\"]",
        ),
        p("POST", "/echo/a./a/xhr", vec![], ""),
        p("GET", &format!("{j}/jsonp"), vec![], ""),
        p("GET", &format!("{j}/jsonp?c=a(b"), vec![], ""),
        p("GET", &format!("{j}/jsonp?c=cb.x-1"), vec![], ""),
        p(
            "POST",
            &format!("{j}/jsonp_send"),
            form(),
            "d=%5B%22x%2By%22%5D",
        ),
        p("POST", &format!("{j}/jsonp_send"), form(), "p=p"),
        p("GET", &format!("{j}/jsonp?c=cb"), vec![], ""),
        p(
            "POST",
            &format!("{j}/jsonp_send"),
            vec![("Content-Type", "text/plain")],
            "[\"z\"]",
        ),
        p("GET", &format!("{j}/jsonp?c=cb"), vec![], ""),
        p("POST", &format!("{c}/xhr"), vec![], ""),
        p("POST", &format!("{c}/xhr"), vec![], ""),
        p("POST", &format!("{c}/xhr_streaming"), vec![], ""),
        p("GET", &format!("{c}/eventsource"), vec![], ""),
        p("GET", &format!("{c}/htmlfile?c=cb"), vec![], ""),
        p(
            "POST",
            &format!("{k}/xhr"),
            vec![("Cookie", "JSESSIONID=abc")],
            "",
        ),
        p("GET", "/echo/0/0/websocket", vec![], ""),
        p("POST", "/echo/0/0/websocket", vec![], ""),
        p("GET", "/disabled_websocket_echo/websocket", vec![], ""),
    ];
    for probe in &probes {
        let ask = |addr| {
            request(
                addr,
                probe.method,
                &probe.path,
                &probe.headers,
                probe.body.as_bytes(),
            )
        };
        let (ours, theirs) = (ask(gw.addr).await, ask(reference.addr).await);
        let what = format!(
            "{} {} {:?} {:?}",
            probe.method, probe.path, probe.headers, probe.body
        );
        assert_eq!(ours.status, theirs.status, "status of {what}");
        // Error bodies are free text for the reference server's 4xx; the frames and the spec's
        // words are not.
        // Refusals: the status, and for 500 the spec's words; their headers are not the spec's.
        if ours.status < 400 || ours.status == 500 {
            assert_eq!(ours.body_text(), theirs.body_text(), "body of {what}");
        }
        if ours.status < 400 {
            assert_eq!(
                fixed_headers(&ours),
                fixed_headers(&theirs),
                "headers of {what}"
            );
        }
    }
}

#[tokio::test]
async fn a_session_belongs_to_the_address_and_origin_that_opened_it() {
    let backend = WsBackend::start().await;
    let routes = format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"https://app.example\", \"https://other.example\"]\n    clients: [sockjs]\n    backend: {{ websocket: \"ws://{}/echo\", forward_headers: [] }}\n",
        backend.addr
    );
    let gw = Gateway::start(&routes).await;
    let url = format!("/chat/000/{}", session_id());
    let app = [("Origin", "https://app.example")];
    let r = request(gw.addr, "POST", &format!("{url}/xhr"), &app, b"").await;
    assert_eq!(r.body_text(), "o\n");
    let elsewhere: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    // Another address with the same id: as if there were no such session.
    let r = request_from(
        Some(elsewhere),
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &app,
        b"[\"stolen\"]",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = request_from(
        Some(elsewhere),
        gw.addr,
        "POST",
        &format!("{url}/xhr"),
        &app,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    // Another origin from the same address: the same.
    let other = [("Origin", "https://other.example")];
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &other,
        b"[\"stolen\"]",
    )
    .await;
    assert_eq!(r.status, 404);
    // The owner goes on, and nothing the others sent reached its backend.
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &app,
        b"[\"mine\"]",
    )
    .await;
    assert_eq!(r.status, 204);
    let r = request(gw.addr, "POST", &format!("{url}/xhr"), &app, b"").await;
    assert_eq!(r.body_text(), "a[\"mine\"]\n");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_rejections_total{reason=\"sockjs_session_owner\",route=\"chat\"}"
        ),
        Some(3.0),
        "{m}"
    );
}

#[tokio::test]
async fn per_client_sessions_carry_closes_both_ways_and_end_after_disconnect_delay() {
    let chat = ChatBackend::start().await;
    let routes = format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"*\"]\n    clients: [sockjs]\n    sockjs: {{ disconnect_delay: 1s }}\n    backend: {{ websocket: \"{}\", forward_headers: [] }}\n",
        chat.url("/chat")
    );
    let gw = Gateway::start(&routes).await;
    let url = format!("/chat/000/{}", session_id());
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
    post(&gw, &format!("{url}/xhr_send"), "[\"hi\",\"ü\"]").await;
    assert_eq!(
        poll_messages(&gw, &format!("{url}/xhr"), 2).await,
        ["1:1:hi", "1:2:ü"]
    );
    assert_eq!(
        chat.conns()[0].headers.get("x-forwarded-for").unwrap(),
        "127.0.0.1"
    );
    // The backend closes with its own code and reason: the client is told, and told again.
    post(&gw, &format!("{url}/xhr_send"), "[\"close:4001\"]").await;
    for _ in 0..2 {
        let r = post(&gw, &format!("{url}/xhr"), "").await;
        assert_eq!(r.body_text(), "c[4001,\"closed by the backend\"]\n");
    }
    // A client that goes away: after disconnect_delay its backend connection is closed
    // (1001), the session is gone, and its id opens a new one.
    let url = format!("/chat/000/{}", session_id());
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
    gw.wait_metric("switchyard_sockjs_sessions_open{route=\"chat\"}", 1.0)
        .await;
    let ended = chat.wait_ended(2).await;
    assert_eq!(ended.closed_with, Some(1001));
    eventually("the session is freed", || async {
        metric(
            &gw.metrics().await,
            "switchyard_sockjs_sessions_open{route=\"chat\"}",
        ) == Some(0.0)
    })
    .await;
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_sessions_are_all_freed_after_disconnect_delay() {
    let routes = "  - name: echo\n    path: /echo\n    clients: [sockjs]\n    sockjs: { disconnect_delay: 5s }\n    limits: { max_clients: 20000 }\n    backend: { builtin: echo }\n";
    let gw = Gateway::start(routes).await;
    let rss_before = gw.rss_kib();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let addr = gw.addr;
        tasks.spawn(async move {
            let mut c = crate::common::chat::Client::connect(addr).await;
            for i in 0..1250 {
                let a = c
                    .request("POST", &format!("/echo/000/w{worker}s{i}/xhr"), &[], "")
                    .await;
                assert_eq!(a.body, "o\n");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let took = started.elapsed();
    let m = gw.metrics().await;
    let open = metric(&m, "switchyard_sockjs_sessions_open{route=\"echo\"}").unwrap();
    // Sessions opened more than disconnect_delay ago may be gone already.
    if took < Duration::from_secs(4) {
        assert_eq!(open, 10_000.0, "opened in {took:?}");
    }
    let rss_full = gw.rss_kib();
    eventually("every abandoned session is freed", || async {
        metric(
            &gw.metrics().await,
            "switchyard_sockjs_sessions_open{route=\"echo\"}",
        ) == Some(0.0)
    })
    .await;
    // A freed session's id is a new session.
    assert_eq!(post(&gw, "/echo/000/w0s0/xhr", "").await.body_text(), "o\n");
    eprintln!("RSS: {rss_before} KiB at start, {rss_full} KiB with 10,000 sessions (opened in {took:?}), {} KiB after", gw.rss_kib());
}

#[tokio::test]
async fn sends_are_bounded_and_a_stream_that_is_not_read_is_let_go() {
    let feed = FeedBackend::start().await;
    let backend = WsBackend::start().await;
    let routes = format!(
        r#"  - name: echo
    path: /echo
    fanout: per_client
    origins: ["*"]
    clients: [sockjs]
    limits: {{ max_message: 64KiB, max_clients: 3 }}
    backend: {{ websocket: "ws://{b}/echo", forward_headers: [] }}
  - name: feed
    path: /feed
    origins: ["*"]
    clients: [sockjs]
    sockjs: {{ response_limit: 256MiB }}
    keepalive: {{ ping_interval: 1s, pong_timeout: 1s }}
    limits: {{ send_queue: 64 }}
    backend: {{ websocket: "ws://{f}/feed" }}
"#,
        b = backend.addr,
        f = feed.addr
    );
    let gw = Gateway::start(&routes).await;
    let url = format!("/echo/000/{}", session_id());
    post(&gw, &format!("{url}/xhr"), "").await;
    let big = format!("[\"{}\"]", "x".repeat(70 * 1024));
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), &big).await.status,
        413
    );
    let many = format!("[{}]", vec!["\"\""; 1001].join(","));
    let r = post(&gw, &format!("{url}/xhr_send"), &many).await;
    assert_eq!(r.status, 413, "1,001 messages: as the README says");
    assert!(
        r.body_text().contains("Too many messages"),
        "{}",
        r.body_text()
    );
    let r = post(&gw, &format!("{url}/xhr_send"), "{\"not\": \"a list\"}").await;
    assert_eq!(
        (r.status, r.body_text().as_str()),
        (500, "Payload expected.")
    );
    // max_clients sessions, then 503 for a new one.
    for _ in 0..2 {
        post(&gw, &format!("/echo/000/{}/xhr", session_id()), "").await;
    }
    let r = post(&gw, &format!("/echo/000/{}/xhr", session_id()), "").await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());

    // A streaming client that stops reading while the feed pours 64 MiB (its response_limit
    // set far above that): cut within the write deadline, its session closed, the gateway's
    // memory flat.
    let sid = session_id();
    let mut s = Stream::open(
        gw.addr,
        "POST",
        &format!("/feed/000/{sid}/xhr_streaming"),
        &[],
    )
    .await;
    s.chunk().await;
    assert_eq!(s.chunk().await.unwrap(), "o\n");
    feed.wait_connections(1).await;
    let rss_before = gw.rss_kib();
    let payload = "y".repeat(32 * 1024);
    let messages: Vec<Message> = (0..2048).map(|_| Message::text(payload.clone())).collect();
    feed.send(FeedCmd::Send {
        messages: std::sync::Arc::new(messages),
        batch: 64,
        pause: Duration::from_millis(5),
    });
    gw.wait_metric(
        "switchyard_slow_consumer_total{action=\"disconnect\",route=\"feed\",transport=\"sockjs-xhr_streaming\"}",
        1.0,
    )
    .await;
    let grown = gw.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "the gateway grew by {grown} KiB for one client that does not read"
    );
    let r = post(&gw, &format!("/feed/000/{sid}/xhr"), "").await;
    assert_eq!(
        r.body_text(),
        "c[1008,\"Too slow: fell behind the feed\"]\n"
    );
    drop(s);
}

#[tokio::test]
async fn transports_that_cannot_show_an_origin_are_judged_by_their_referer() {
    let backend = WsBackend::start().await;
    let b = backend.addr;
    let routes = format!(
        r#"  - name: creds
    path: /creds
    fanout: per_client
    origins: ["https://app.example"]
    clients: [sockjs]
    backend: {{ websocket: "ws://{b}/echo" }}
  - name: listed
    path: /listed
    fanout: per_client
    origins: ["https://app.example"]
    clients: [sockjs]
    sockjs: {{ transports: [xhr, jsonp] }}
    backend: {{ websocket: "ws://{b}/echo" }}
  - name: open
    path: /open
    fanout: per_client
    origins: ["https://app.example"]
    clients: [sockjs]
    backend: {{ websocket: "ws://{b}/echo", forward_headers: [] }}
  - name: authed
    path: /authed
    origins: ["https://app.example"]
    clients: [sockjs]
    auth: {{ url: "http://{b}/authorize", forward_headers: [cookie] }}
    backend: {{ websocket: "ws://{b}/echo" }}
"#
    );
    let gw = Gateway::start(&routes).await;
    let page = [("Referer", "https://app.example/page.html")];
    // A route that forwards cookies: no JSONP, no htmlfile, unless listed.
    let id = session_id();
    for t in ["jsonp?c=cb", "htmlfile?c=cb"] {
        let r = request(gw.addr, "GET", &format!("/creds/000/{id}/{t}"), &page, b"").await;
        assert_eq!(r.status, 404, "{t}");
    }
    let r = request(
        gw.addr,
        "POST",
        &format!("/creds/000/{id}/xhr"),
        &[("Origin", "https://app.example")],
        b"",
    )
    .await;
    assert_eq!(r.body_text(), "o\n");
    let r = request(
        gw.addr,
        "GET",
        &format!("/listed/000/{}/jsonp?c=cb", session_id()),
        &page,
        b"",
    )
    .await;
    assert_eq!(r.body_text(), "/**/cb(\"o\");\r\n");
    // Listed on a route that forwards credentials: a load that shows neither its page nor
    // Sec-Fetch-Site could be any page's (the hostile pass got a visitor's cookie to the
    // backend with it), so it is refused; one that says it is same-origin is served; a
    // Referer's userinfo is not its host.
    let listed = |headers: Vec<(&'static str, &'static str)>| {
        let addr = gw.addr;
        async move {
            let path = format!("/listed/000/{}/jsonp?c=cb", session_id());
            let mut all = headers;
            all.push(("Cookie", "sid=victim"));
            request(addr, "GET", &path, &all, b"").await
        }
    };
    let r = listed(vec![]).await;
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert!(r.body_text().contains("neither Referer nor Sec-Fetch-Site"));
    assert_eq!(
        listed(vec![("Sec-Fetch-Site", "same-origin")]).await.status,
        200
    );
    assert_eq!(
        listed(vec![("Referer", "https://app.example@evil.example/")])
            .await
            .status,
        403
    );
    gw.wait_metric(
        "switchyard_rejections_total{reason=\"origin_unknown\",route=\"listed\"}",
        1.0,
    )
    .await;
    // An `auth:` that is handed the visitor's cookie makes a route credential-forwarding too:
    // JSONP and htmlfile are off there unless listed.
    for t in ["jsonp?c=cb", "htmlfile?c=cb"] {
        let r = request(gw.addr, "GET", &format!("/authed/000/{id}/{t}"), &page, b"").await;
        assert_eq!(r.status, 404, "{t}");
    }
    let r = request(
        gw.addr,
        "GET",
        &format!("/listed/000/{}/eventsource", session_id()),
        &page,
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    let info: serde_json::Value =
        serde_json::from_slice(&request(gw.addr, "GET", "/listed/info", &[], b"").await.body)
            .unwrap();
    assert_eq!(info["websocket"], false);
    // Where no credentials are forwarded, they are offered, and judged by the page they come
    // from: an allowed one, another one, a cross-site request that names none.
    let jsonp = |headers: Vec<(&'static str, &'static str)>| {
        let addr = gw.addr;
        async move {
            request(
                addr,
                "GET",
                &format!("/open/000/{}/jsonp?c=cb", session_id()),
                &headers,
                b"",
            )
            .await
            .status
        }
    };
    assert_eq!(jsonp(page.to_vec()).await, 200);
    assert_eq!(
        jsonp(vec![("Referer", "https://evil.example/x")]).await,
        403
    );
    assert_eq!(
        jsonp(vec![
            ("Sec-Fetch-Site", "cross-site"),
            ("Sec-Fetch-Mode", "no-cors")
        ])
        .await,
        403
    );
    // An old browser sends neither: like any request without Origin, it is let in.
    assert_eq!(jsonp(vec![]).await, 200);
    let r = request(
        gw.addr,
        "GET",
        &format!("/open/000/{}/htmlfile?c=cb", session_id()),
        &[("Referer", "https://evil.example/")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    // `null` (a sandboxed frame, a file: page) only where the route lists it.
    let r = request(
        gw.addr,
        "POST",
        &format!("/open/000/{}/xhr", session_id()),
        &[("Origin", "null")],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn shared_feeds_reach_sockjs_sessions_and_sends_follow_the_route() {
    let posts = crate::common::chat::SsePostBackend::start().await;
    let routes = format!(
        r#"  - name: clock
    path: /clock
    origins: ["*"]
    clients: [sse, sockjs]
    backend: {{ builtin: clock }}
  - name: board
    path: /board
    origins: ["*"]
    clients: [sockjs]
    backend: {{ sse: "http://{a}/events", post: "http://{a}/send", forward_headers: [] }}
"#,
        a = posts.addr
    );
    let gw = Gateway::start(&routes).await;
    // One path, both kinds of client: native SSE at the base, SockJS greeting without it.
    let mut native = SseReader::open(gw.addr, "/clock", &[]).await;
    assert!(native.next_data_event().await.data.ends_with('Z'));
    assert_eq!(get(&gw, "/clock").await.body_text(), "Welcome to SockJS!\n");
    let url = format!("/clock/000/{}", session_id());
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
    let tick = post(&gw, &format!("{url}/xhr"), "").await.body_text();
    let got = messages_in(&tick);
    assert!(got[0].starts_with("20") && got[0].ends_with('Z'), "{tick}");
    // A one-way feed takes nothing from clients.
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), "[\"x\"]")
            .await
            .status,
        405
    );
    // An SSE feed with post: sends are POSTed, and its answer comes back on the feed.
    let url = format!("/board/000/{}", session_id());
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
    assert_eq!(
        post(&gw, &format!("{url}/xhr_send"), "[\"hello\"]")
            .await
            .status,
        204
    );
    assert_eq!(posts.posts.lock().unwrap()[0].body, "hello");
    assert_eq!(
        poll_messages(&gw, &format!("{url}/xhr"), 1).await,
        ["echo:hello"]
    );
}

#[tokio::test]
async fn xdomainrequest_streams_and_sends_with_plain_text_and_no_cookie() {
    // IE8/9's XDomainRequest: no custom headers, text/plain bodies, no cookies; it shows
    // nothing until 2 KiB arrived, hence the prelude before the first frame.
    let (gw, _b) = suite_gateway().await;
    let url = format!("/echo/000/{}", session_id());
    let xdr = [
        ("Origin", "http://legacy.example"),
        ("Content-Type", "text/plain"),
    ];
    let mut s = Stream::open(gw.addr, "POST", &format!("{url}/xhr_streaming"), &xdr).await;
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("access-control-allow-origin"),
        Some("http://legacy.example")
    );
    let prelude = s.chunk().await.unwrap();
    assert_eq!(prelude.len(), 2049);
    assert_eq!(s.chunk().await.unwrap(), "o\n");
    let r = request(
        gw.addr,
        "POST",
        &format!("{url}/xhr_send"),
        &xdr,
        "[\"from IE\"]".as_bytes(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(s.chunk().await.unwrap(), "a[\"from IE\"]\n");
    // XDomainRequest polling too.
    let url = format!("/echo/000/{}", session_id());
    let r = request(gw.addr, "POST", &format!("{url}/xhr"), &xdr, b"").await;
    assert_eq!(r.body_text(), "o\n");
}

#[tokio::test]
async fn sockjs_transports_are_labelled_in_metrics() {
    let (gw, _b) = suite_gateway().await;
    let url = format!("/echo/000/{}", session_id());
    post(&gw, &format!("{url}/xhr"), "").await;
    post(&gw, &format!("{url}/xhr_send"), "[\"m\"]").await;
    poll_messages(&gw, &format!("{url}/xhr"), 1).await;
    let m = gw.metrics().await;
    for series in [
        "switchyard_messages_total{direction=\"in\",route=\"echo\",transport=\"sockjs-xhr_send\"}",
        "switchyard_messages_total{direction=\"out\",route=\"echo\",transport=\"sockjs-xhr\"}",
        "switchyard_client_connections_total{route=\"echo\",transport=\"sockjs-xhr\"}",
        "switchyard_sessions_open{route=\"echo\",transport=\"sockjs-xhr\"}",
    ] {
        assert!(
            metric(&m, series).is_some_and(|v| v >= 1.0),
            "{series}:\n{m}"
        );
    }
}

#[tokio::test]
async fn idle_receivers_get_heartbeats() {
    let routes = "  - name: echo\n    path: /echo\n    clients: [sockjs]\n    sockjs: { heartbeat: 300ms }\n    backend: { builtin: echo }\n";
    let gw = Gateway::start(routes).await;
    // A poll with nothing to say answers `h` after the heartbeat.
    let url = format!("/echo/000/{}", session_id());
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "o\n"
    );
    let started = std::time::Instant::now();
    assert_eq!(
        post(&gw, &format!("{url}/xhr"), "").await.body_text(),
        "h\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A stream gets one each heartbeat, and messages in between.
    let url = format!("/echo/000/{}", session_id());
    let mut s = Stream::open(gw.addr, "GET", &format!("{url}/eventsource"), &[]).await;
    assert_eq!(s.chunk().await.unwrap(), "\r\n");
    assert_eq!(s.chunk().await.unwrap(), "data: o\r\n\r\n");
    assert_eq!(s.chunk().await.unwrap(), "data: h\r\n\r\n");
    post(&gw, &format!("{url}/xhr_send"), "[\"between\"]").await;
    assert_eq!(s.chunk().await.unwrap(), "data: a[\"between\"]\r\n\r\n");
    assert_eq!(s.chunk().await.unwrap(), "data: h\r\n\r\n");
    // So does a SockJS WebSocket.
    let url = gw.ws_url(&format!("/echo/000/{}/websocket", session_id()));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "o"
    );
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "h"
    );
}

/// A Hixie-76 handshake, as the suite's `test_haproxy` sends it: the head, the `101` before the
/// 8-byte key3 is sent, then the 16-byte answer and SockJS frames in `0x00 .. 0xFF`.
async fn hixie76(addr: std::net::SocketAddr, path: &str) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nOrigin: http://{addr}\r\nSec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\nSec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before the 101: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&b[..n]);
    }
    (String::from_utf8_lossy(&got).into_owned(), s)
}

async fn read_exact_n(s: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

#[tokio::test]
async fn hixie76_websockets_get_the_challenge_answer_and_sockjs_frames() {
    use tokio::io::AsyncWriteExt;
    let (gw, _b) = suite_gateway().await;
    let reference = Reference::start().await;
    for addr in [gw.addr, reference.addr] {
        let path = format!("/echo/000/{}/websocket", session_id());
        let (head, mut s) = hixie76(addr, &path).await;
        let head_l = head.to_ascii_lowercase();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(head_l.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(head_l.contains("\r\nconnection: upgrade\r\n"), "{head}");
        assert!(
            head_l.contains(&format!(
                "\r\nsec-websocket-location: ws://{addr}{path}\r\n"
            )),
            "{head}"
        );
        assert!(
            head_l.contains(&format!("\r\nsec-websocket-origin: http://{addr}\r\n")),
            "{head}"
        );
        assert!(!head_l.contains("content-length"), "{head}");
        s.write_all(b"aaaaaaaa").await.unwrap();
        assert_eq!(
            read_exact_n(&mut s, 16).await,
            b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{"
        );
        assert_eq!(read_exact_n(&mut s, 3).await, b"\x00o\xff", "from {addr}");
        s.write_all("\u{0}[\"é\"]".as_bytes()).await.unwrap();
        s.write_all(b"\xff").await.unwrap();
        let mut want = vec![0u8];
        want.extend_from_slice("a[\"é\"]".as_bytes());
        want.push(0xff);
        assert_eq!(read_exact_n(&mut s, want.len()).await, want, "from {addr}");
        // The backend's close: its frame, then the closing frame.
        let path = format!("/close/000/{}/websocket", session_id());
        let (head, mut s) = hixie76(addr, &path).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        s.write_all(b"aaaaaaaa").await.unwrap();
        read_exact_n(&mut s, 16).await;
        assert_eq!(read_exact_n(&mut s, 3).await, b"\x00o\xff");
        let mut want = vec![0u8];
        want.extend_from_slice(b"c[3000,\"Go away!\"]");
        want.extend_from_slice(&[0xff, 0xff, 0x00]);
        assert_eq!(read_exact_n(&mut s, want.len()).await, want, "from {addr}");
    }
}

#[tokio::test]
async fn a_shared_feed_that_reconnects_its_backend_keeps_its_sockjs_sessions() {
    let feed = FeedBackend::start().await;
    let routes = format!(
        "  - name: feed\n    path: /feed\n    origins: [\"*\"]\n    clients: [sockjs]\n    backend: {{ websocket: \"ws://{}/feed\", reconnect: {{ initial: 50ms, max: 200ms }} }}\n",
        feed.addr
    );
    let gw = Gateway::start(&routes).await;
    let url = format!("/feed/000/{}", session_id());
    let mut s = Stream::open(gw.addr, "GET", &format!("{url}/eventsource"), &[]).await;
    assert_eq!(s.chunk().await.unwrap(), "\r\n");
    assert_eq!(s.chunk().await.unwrap(), "data: o\r\n\r\n");
    feed.wait_open(1).await;
    feed.send_numbered(1..=1, 0, 1, Duration::ZERO);
    assert_eq!(s.chunk().await.unwrap(), "data: a[\"1:\"]\r\n\r\n");
    // The backend goes away and comes back: the session and its stream go on.
    feed.send(FeedCmd::Close(1001, "restarting".into()));
    feed.wait_connections(2).await;
    feed.wait_open(1).await;
    feed.send_numbered(2..=2, 0, 1, Duration::ZERO);
    assert_eq!(s.chunk().await.unwrap(), "data: a[\"2:\"]\r\n\r\n");
}
