//! The gateway in a real browser (headless Chromium, driven over the DevTools protocol): the demo
//! page's clock over EventSource and echo over WebSocket, Chromium's EventSource parsing and
//! resume on a bridged feed, and Chromium as a two-way SSE+POST and XHR long-poll client.
//!
//! Needs `chromium` on PATH (CI installs it); set SWITCHYARD_CHROMIUM to use another binary.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Cdp =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts headless Chromium on `url` and connects to that page's DevTools socket.
async fn open_page(url: &str) -> (Browser, Cdp) {
    let bin = std::env::var("SWITCHYARD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} ({e}): install it with `apt-get install chromium`")
        });
    let browser = Browser {
        child,
        _profile: profile,
    };
    // Chromium writes the port it picked to DevToolsActivePort in the profile.
    let port_file = browser._profile.path().join("DevToolsActivePort");
    let until = Instant::now() + DEADLINE;
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.lines().next()?.parse().ok())
        {
            break p;
        }
        assert!(
            Instant::now() < until,
            "chromium did not open its DevTools port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let devtools = format!("127.0.0.1:{port}").parse().unwrap();
    let ws_url = loop {
        let list: serde_json::Value =
            serde_json::from_slice(&http_get(devtools, "/json/list", &[]).await.body)
                .unwrap_or_default();
        let page = list.as_array().and_then(|l| {
            l.iter()
                .find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                })
                .cloned()
        });
        if let Some(p) = page {
            break p["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < until,
            "the page never showed up in DevTools: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (cdp, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("DevTools socket");
    (browser, cdp)
}

/// Opens `url` in Chromium and waits until that page (not the initial about:blank) has
/// loaded; returns the browser, its DevTools socket and the next message id.
async fn loaded_page(url: &str) -> (Browser, Cdp, u64) {
    let (browser, mut cdp) = open_page(url).await;
    let mut id = 0;
    wait_true(
        &mut cdp,
        &mut id,
        "location.protocol === 'http:' && document.readyState === 'complete'",
        "the page loading",
    )
    .await;
    (browser, cdp, id)
}

/// Starts the gateway with `routes` (which serve the demo page at `/`) and Chromium on that
/// page, loaded.
async fn gateway_page(routes: &str) -> (Gateway, Browser, Cdp, u64) {
    let gw = Gateway::start(routes).await;
    let (browser, cdp, id) = loaded_page(&gw.url("/")).await;
    (gw, browser, cdp, id)
}

/// Calls the DevTools method `method` and returns its `result`.
async fn call(
    cdp: &mut Cdp,
    id: &mut u64,
    method: &str,
    params: serde_json::Value,
) -> serde_json::Value {
    *id += 1;
    let call = serde_json::json!({"id": *id, "method": method, "params": params});
    cdp.send(Message::text(call.to_string())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(DEADLINE, cdp.next())
            .await
            .expect("DevTools answers")
            .unwrap()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(msg.to_text().unwrap_or("{}")).unwrap_or_default();
        if v["id"] == *id {
            assert!(v.get("error").is_none(), "{method}: {v}");
            return v["result"].clone();
        }
    }
}

/// Evaluates `expr` in the page and returns its value.
async fn eval(cdp: &mut Cdp, id: &mut u64, expr: &str) -> serde_json::Value {
    let params = serde_json::json!({"expression": expr, "returnByValue": true});
    let result = call(cdp, id, "Runtime.evaluate", params).await;
    // A script error comes back as a value, so a failed check shows what went wrong.
    if let Some(e) = result.get("exceptionDetails") {
        return serde_json::json!({ "exception": e["exception"]["description"] });
    }
    result["result"]["value"].clone()
}

/// Polls `expr` until it is true.
async fn wait_true(cdp: &mut Cdp, id: &mut u64, expr: &str, what: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        if eval(cdp, id, expr).await == serde_json::Value::Bool(true) {
            return;
        }
        let page = eval(cdp, id, "document.body && document.body.innerText").await;
        assert!(
            Instant::now() < until,
            "{what} never happened; page shows:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn demo_page_shows_the_sse_clock_and_the_websocket_echo_in_chromium() {
    let routes = "  - name: demo\n    path: /\n    backend: { builtin: demo }\n  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n";
    let gw = Gateway::start(routes).await;
    let (_browser, mut cdp) = open_page(&gw.url("/")).await;
    let mut id = 0;
    // Two different clock values: the EventSource is live, not a single response.
    wait_true(&mut cdp, &mut id, "/^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$/.test(document.getElementById('clock').textContent)", "a clock event").await;
    let first = eval(
        &mut cdp,
        &mut id,
        "document.getElementById('clock').textContent",
    )
    .await;
    let expr = format!("document.getElementById('clock').textContent !== {first}");
    wait_true(&mut cdp, &mut id, &expr, "a second clock event").await;
    wait_true(
        &mut cdp,
        &mut id,
        "document.getElementById('echo-status').textContent === 'open'",
        "the WebSocket opening",
    )
    .await;
    eval(&mut cdp, &mut id, "document.getElementById('echo-input').value = 'from chromium'; document.querySelector('#echo-form button').click(); true").await;
    wait_true(
        &mut cdp,
        &mut id,
        "document.getElementById('log').textContent.includes('\\u2190 from chromium')",
        "the echo reply",
    )
    .await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("switchyard_client_connections_open{route=\"clock\",transport=\"sse\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchyard_client_connections_open{route=\"echo\",transport=\"websocket\"} 1"
        ),
        "{metrics}"
    );
}

/// Chromium's own EventSource parser reads what the gateway makes of a WebSocket backend's
/// messages (multi-line, empty, unicode, field-like text), and its automatic reconnect with
/// `Last-Event-ID` resumes without loss or duplicates after the backend went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_eventsource_parses_the_bridged_stream_and_resumes_after_a_backend_restart() {
    let backend = FeedBackend::start().await;
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\", reconnect: {{ initial: 50ms, max: 200ms }} }}\n",
        backend.url("/")
    );
    let (gw, _browser, mut cdp, mut id) = gateway_page(&routes).await;
    eval(
        &mut cdp,
        &mut id,
        "window.got = []; window.errors = 0; window.es = new EventSource('/feed'); \
         es.onmessage = e => got.push([e.data, e.lastEventId]); es.onerror = () => errors++; true",
    )
    .await;
    backend.wait_open(1).await;
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"feed\",transport=\"sse\"}",
        1.0,
    )
    .await;
    let sent = [
        "multi\nline\r\npayload\rend",
        "",
        "unicode h\u{e9}llo \u{1F600} \u{4e2d}\u{6587}",
        "  leading spaces",
        "data: looks like a field\nid: 99",
        "trailing newline\n",
    ];
    backend.send(FeedCmd::Send {
        messages: std::sync::Arc::new(sent.iter().map(|s| Message::text(*s)).collect()),
        batch: 10,
        pause: Duration::ZERO,
    });
    wait_true(&mut cdp, &mut id, "got.length === 6", "six events").await;
    let got = eval(&mut cdp, &mut id, "got.map(g => g[0])").await;
    // SSE cannot carry CR: every line ending arrives as LF.
    let want: Vec<String> = sent
        .iter()
        .map(|s| s.replace("\r\n", "\n").replace('\r', "\n"))
        .collect();
    assert_eq!(got, serde_json::json!(want));
    let ids = eval(&mut cdp, &mut id, "got.map(g => g[1])").await;
    assert!(
        ids.as_array()
            .unwrap()
            .iter()
            .all(|i| i.as_str().is_some_and(|s| s.contains('-'))),
        "every event has the gateway's id: {ids}"
    );

    // The backend restarts; what it sends before Chromium is back arrives through the replay.
    backend.send(FeedCmd::Close(1000, "restart".into()));
    backend.wait_connections(2).await;
    backend.wait_open(1).await;
    backend.send_numbered(1..=3, 0, 3, Duration::ZERO);
    wait_true(
        &mut cdp,
        &mut id,
        "got.length === 9",
        "the three messages after the restart",
    )
    .await;
    let tail = eval(&mut cdp, &mut id, "got.slice(6).map(g => g[0])").await;
    assert_eq!(tail, serde_json::json!(["1:", "2:", "3:"]));
    assert_eq!(
        eval(&mut cdp, &mut id, "errors >= 1").await,
        true,
        "EventSource saw the stream end and reconnected"
    );
    assert_eq!(
        eval(&mut cdp, &mut id, "es.readyState").await,
        1,
        "open again"
    );
}

/// Chromium as the two-way legacy client: its EventSource opens a per-client session (cookie
/// forwarded to the backend), `fetch` POSTs into it and the echo comes back on the stream; an
/// XMLHttpRequest long-poll session does the same round trip with plain requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_talks_to_a_websocket_backend_over_sse_plus_post_and_xhr_long_poll() {
    let backend = crate::common::chat::ChatBackend::start().await;
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"http://{{ADDR}}\"]\n    backend: {{ websocket: \"{}\" }}\n",
        backend.url("/chat")
    );
    let (_gw, _browser, mut cdp, mut id) = gateway_page(&routes).await;
    eval(
        &mut cdp,
        &mut id,
        "document.cookie = 'user=browser'; window.chat = []; window.sid = null; \
         window.es = new EventSource('/chat?transport=sse'); \
         es.addEventListener('session', e => { sid = e.data; }); \
         es.onmessage = e => chat.push(e.data); true",
    )
    .await;
    wait_true(&mut cdp, &mut id, "sid !== null", "the session event").await;
    eval(
        &mut cdp,
        &mut id,
        "fetch('/chat?transport=sse&session=' + sid, { method: 'POST', body: 'hello' }) \
           .then(r => { window.postStatus = r.status; }); true",
    )
    .await;
    wait_true(
        &mut cdp,
        &mut id,
        "chat.length === 1",
        "the echo on the stream",
    )
    .await;
    assert_eq!(eval(&mut cdp, &mut id, "chat[0]").await, "1:1:hello");
    assert_eq!(eval(&mut cdp, &mut id, "postStatus").await, 204);
    assert_eq!(backend.conns()[0].headers["cookie"], "user=browser");

    eval(
        &mut cdp,
        &mut id,
        "window.xhr = (method, url, body, type) => new Promise(done => { \
           const x = new XMLHttpRequest(); x.open(method, url); \
           if (type) x.setRequestHeader('content-type', type); \
           x.onload = () => done([x.status, x.responseText]); x.send(body); }); \
         window.polled = null; \
         (async () => { \
           const open = JSON.parse((await xhr('GET', '/chat?transport=poll'))[1]); \
           const sent = await xhr('POST', '/chat?transport=poll&session=' + open.session, \
                                  JSON.stringify(['x', 'y']), 'application/json'); \
           let cursor = 0, got = []; \
           while (got.length < 2) { \
             const a = JSON.parse((await xhr('GET', '/chat?transport=poll&session=' + open.session + '&cursor=' + cursor))[1]); \
             got = got.concat(a.messages); cursor = a.cursor; } \
           polled = { sent: sent[0], got, cursor }; })(); true",
    )
    .await;
    wait_true(
        &mut cdp,
        &mut id,
        "polled !== null",
        "the long-poll round trip",
    )
    .await;
    assert_eq!(
        eval(&mut cdp, &mut id, "polled").await,
        serde_json::json!({ "sent": 204, "got": ["2:1:x", "2:2:y"], "cursor": 2 })
    );
    assert_eq!(
        backend.conns().len(),
        2,
        "one backend connection per session"
    );
}

/// The Origin allowlist and CORS in a real browser: a page from an allowed origin opens an
/// EventSource (a CORS request) and a WebSocket to the gateway and both work; the same page from
/// an origin the routes do not list is refused (EventSource error, WebSocket failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_pages_from_allowed_origins_work_and_others_are_refused() {
    let allowed_port = free_port();
    let refused_port = free_port();
    let listen = format!(
        "    - addr: \"127.0.0.1:{allowed_port}\"\n    - addr: \"127.0.0.1:{refused_port}\"\n"
    );
    let origins = format!("[\"http://127.0.0.1:{allowed_port}\"]");
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n  - name: clock\n    path: /clock\n    origins: {origins}\n    backend: {{ builtin: clock }}\n  - name: echo\n    path: /echo\n    origins: {origins}\n    backend: {{ builtin: echo }}\n"
    );
    let gw = Gateway::start_full(&listen, &routes, "").await;
    // The page and the gateway's main listener are different origins (different ports).
    let probe = format!(
        "window.result = {{}}; (() => {{ \
         const es = new EventSource('http://{0}/clock'); \
         es.onmessage = e => {{ result.sse = 'ok'; es.close(); }}; \
         es.onerror = () => {{ if (!result.sse) result.sse = 'error'; es.close(); }}; \
         const ws = new WebSocket('ws://{0}/echo'); \
         ws.onopen = () => ws.send('hello'); \
         ws.onmessage = e => {{ result.ws = e.data; ws.close(); }}; \
         ws.onerror = () => {{ result.ws = 'error'; }}; }})(); true",
        gw.addr
    );
    for (port, want_sse, want_ws) in [
        (allowed_port, "ok", "hello"),
        (refused_port, "error", "error"),
    ] {
        let (_browser, mut cdp, mut id) = loaded_page(&format!("http://127.0.0.1:{port}/")).await;
        let started = eval(&mut cdp, &mut id, &probe).await;
        assert_eq!(started, true, "the probe script runs: {probe}");
        let until = Instant::now() + DEADLINE;
        let result = loop {
            let r = eval(&mut cdp, &mut id, "result").await;
            if r.get("sse").is_some() && r.get("ws").is_some() {
                break r;
            }
            assert!(
                Instant::now() < until,
                "page from port {port}: probes stuck at {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            result,
            serde_json::json!({ "sse": want_sse, "ws": want_ws }),
            "page from port {port}"
        );
    }
    gw.wait_metric(
        "switchyard_rejections_total{reason=\"origin_not_allowed\",route=\"echo\"}",
        1.0,
    )
    .await;
}

/// A page server for another origin: `/` is `page`, `/sockjs.min.js` is sockjs-client from npm
/// (installed by `scripts/install-deps.sh --test` in `$SWITCHYARD_TOOLS/node`).
async fn serve_page_origin(
    page: &'static str,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    serve_page_with(
        page,
        &[("/sockjs.min.js", "sockjs-client/dist/sockjs.min.js")],
    )
    .await
}

/// A page server for another origin: `/` (any other path) is `page`; each of `scripts` is a
/// URL path and the file under `$SWITCHYARD_TOOLS/node/node_modules` it serves.
async fn serve_page_with(
    page: &'static str,
    scripts: &[(&'static str, &str)],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tools = std::env::var("SWITCHYARD_TOOLS")
        .unwrap_or_else(|_| format!("{}/.cache/switchyard-tools", std::env::var("HOME").unwrap()));
    let scripts: Vec<(&'static str, Vec<u8>)> = scripts
        .iter()
        .map(|(at, file)| {
            let path = format!("{tools}/node/node_modules/{file}");
            let body = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}: run scripts/install-deps.sh --test"));
            (*at, body)
        })
        .collect();
    let scripts = std::sync::Arc::new(scripts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let scripts = scripts.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let target = line.split(' ').nth(1).unwrap_or("/");
                let script = scripts.iter().find(|(at, _)| *at == target);
                let (ctype, body): (&str, Vec<u8>) = match script {
                    Some((_, js)) => ("application/javascript", js.clone()),
                    None => ("text/html; charset=utf-8", page.as_bytes().to_vec()),
                };
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    (addr, task)
}

const SOCKJS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><script src="/sockjs.min.js"></script></head>
<body><script>
window.results = {};
window.run = function (url, transport) {
  var big = new Array(64 * 1024 + 1).join('b');
  var text = 'h\u00e9llo \u2713 \u6f22\u5b57 \ud83d\ude00 100% %41 "q" \\ \u2028';
  var r = results[transport] = { messages: [], state: 'connecting' };
  var sock = new SockJS(url, null, { transports: [transport], timeout: 15000 });
  sock.onopen = function () {
    r.state = 'open';
    r.transport = sock.transport;
    sock.send(text);
    sock.send(big);
  };
  sock.onmessage = function (e) {
    r.messages.push(e.data);
    if (r.messages.length === 2) {
      r.echoed = r.messages[0].endsWith(':1:' + text) && r.messages[1].endsWith(':2:' + big);
      sock.send('close:4001');
    }
  };
  sock.onclose = function (e) { r.state = 'closed'; r.code = e.code; r.reason = e.reason; };
};
</script></body></html>"#;

/// Chromium on [`SOCKJS_PAGE`] served from `page`, once sockjs-client has loaded.
async fn sockjs_page(page: std::net::SocketAddr) -> (Browser, Cdp, u64) {
    let (browser, mut cdp, mut id) = loaded_page(&format!("http://{page}/")).await;
    wait_true(
        &mut cdp,
        &mut id,
        "typeof SockJS === 'function'",
        "sockjs-client loading",
    )
    .await;
    (browser, cdp, id)
}

/// Runs [`SOCKJS_PAGE`]'s exchange over each of `transports` in turn against the SockJS base
/// `url`: both messages echoed, and the backend's close seen.
async fn run_sockjs_transports(cdp: &mut Cdp, id: &mut u64, url: &str, transports: &[&str]) {
    for transport in transports {
        eval(cdp, id, &format!("run('{url}', '{transport}'); true")).await;
        let done = format!("results['{transport}'].state === 'closed'");
        wait_true(cdp, id, &done, &format!("the {transport} session to close")).await;
        let r = eval(
            cdp,
            id,
            &format!("(({{messages, ...r}}) => r)(results['{transport}'])"),
        )
        .await;
        assert_eq!(
            r,
            serde_json::json!({
                "state": "closed", "transport": transport, "echoed": true,
                "code": 4001, "reason": "closed by the backend",
            }),
            "{transport}"
        );
    }
}

/// sockjs-client (npm, the library legacy applications use) in Chromium, on a page from
/// another origin, through switchyard to a plain WebSocket backend, once per transport it
/// has: each sends non-ASCII text and a 64 KiB message, gets both back, and sees the
/// backend's close code and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_client_in_chromium_works_over_every_transport_cross_origin() {
    let (page, _server) = serve_page_origin(SOCKJS_PAGE).await;
    let backend = crate::common::chat::ChatBackend::start().await;
    let routes = format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"http://{page}\"]\n    clients: [websocket, sockjs]\n    sockjs: {{ client_url: \"http://{page}/sockjs.min.js\" }}\n    backend: {{ websocket: \"{}\", forward_headers: [] }}\n",
        backend.url("/chat")
    );
    let gw = Gateway::start(&routes).await;
    let (_browser, mut cdp, mut id) = sockjs_page(page).await;
    run_sockjs_transports(
        &mut cdp,
        &mut id,
        &gw.url("/chat"),
        &[
            "websocket",
            "xhr-streaming",
            "xhr-polling",
            "eventsource",
            "iframe-htmlfile",
            "iframe-xhr-polling",
            "iframe-eventsource",
            "jsonp-polling",
        ],
    )
    .await;
    let m = gw.metrics().await;
    for label in [
        "sockjs-websocket",
        "sockjs-xhr_streaming",
        "sockjs-xhr",
        "sockjs-eventsource",
        "sockjs-htmlfile",
        "sockjs-jsonp",
    ] {
        let series =
            format!("switchyard_client_connections_total{{route=\"chat\",transport=\"{label}\"}}");
        assert!(metric(&m, &series).is_some_and(|v| v >= 1.0), "{series}");
    }
}

/// The demo page's SockJS panel: sockjs-client loaded from the echo route's `client_url`, a
/// transport forced with the selector, the one picked shown, and the echo in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_sockjs_panel_connects_with_the_transport_chosen() {
    let (scripts, _server) = serve_page_origin("").await;
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n  - name: echo\n    path: /echo\n    clients: [websocket, sockjs]\n    sockjs: {{ client_url: \"http://{scripts}/sockjs.min.js\" }}\n    backend: {{ builtin: echo }}\n"
    );
    let (_gw, _browser, mut cdp, mut id) = gateway_page(&routes).await;
    for transport in ["xhr-streaming", "jsonp-polling"] {
        let choose = format!(
            "document.getElementById('sockjs-transport').value = '{transport}'; \
             document.getElementById('sockjs-connect').click(); true"
        );
        eval(&mut cdp, &mut id, &choose).await;
        let picked = format!("document.getElementById('sockjs-picked').textContent === '{transport}' && document.getElementById('sockjs-status').textContent === 'open'");
        wait_true(
            &mut cdp,
            &mut id,
            &picked,
            &format!("the panel opening over {transport}"),
        )
        .await;
        let send = format!(
            "document.getElementById('sockjs-input').value = 'over {transport}'; \
             document.querySelector('#sockjs-send button').click(); true"
        );
        eval(&mut cdp, &mut id, &send).await;
        let echoed = format!("document.getElementById('sockjs-log').textContent.includes('\\u2190 over {transport}')");
        wait_true(
            &mut cdp,
            &mut id,
            &echoed,
            &format!("the echo over {transport}"),
        )
        .await;
    }
}

/// Chromium offers permessage-deflate on every WebSocket: it agrees with a feed route and reads
/// its compressed JSON intact, its own messages to an echo route go compressed both ways, and a
/// route with `compression: off` answers without the extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_compression_and_reads_compressed_json() {
    let backend = FeedBackend::start().await;
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\" }}\n  - name: echo\n    path: /echo\n    backend: {{ builtin: echo }}\n  - name: plain\n    path: /plain\n    backend: {{ builtin: echo }}\n    compression: off\n",
        backend.url("/")
    );
    let (gw, _browser, mut cdp, mut id) = gateway_page(&routes).await;
    eval(
        &mut cdp,
        &mut id,
        "window.got = []; window.echoed = []; \
         window.ws = new WebSocket(`ws://${location.host}/feed`); ws.onmessage = e => got.push(e.data); \
         window.echo = new WebSocket(`ws://${location.host}/echo`); echo.onmessage = e => echoed.push(e.data); \
         window.plain = new WebSocket(`ws://${location.host}/plain`); true",
    )
    .await;
    wait_true(
        &mut cdp,
        &mut id,
        "ws.readyState === 1 && echo.readyState === 1 && plain.readyState === 1",
        "three sockets open",
    )
    .await;
    let full = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
    assert_eq!(eval(&mut cdp, &mut id, "ws.extensions").await, full);
    assert_eq!(eval(&mut cdp, &mut id, "echo.extensions").await, full);
    assert_eq!(eval(&mut cdp, &mut id, "plain.extensions").await, "");
    backend.wait_open(1).await;
    let sent: Vec<String> = (0..30).map(json_quotes).collect();
    backend.send(FeedCmd::Send {
        messages: std::sync::Arc::new(sent.iter().map(|s| Message::text(s.clone())).collect()),
        batch: 30,
        pause: Duration::ZERO,
    });
    wait_true(
        &mut cdp,
        &mut id,
        "got.length === 30",
        "thirty feed messages",
    )
    .await;
    let got = eval(&mut cdp, &mut id, "JSON.stringify(got)").await;
    assert_eq!(got.as_str().unwrap(), serde_json::to_string(&sent).unwrap());
    // Chromium compresses what it sends, too; the echo comes back whole.
    let big = json_quotes(7).repeat(3);
    eval(
        &mut cdp,
        &mut id,
        &format!("echo.send({}); true", serde_json::to_string(&big).unwrap()),
    )
    .await;
    wait_true(&mut cdp, &mut id, "echoed.length === 1", "the echo").await;
    assert_eq!(eval(&mut cdp, &mut id, "echoed[0]").await, big.as_str());
    // Closing flushes the connections' tallies.
    eval(&mut cdp, &mut id, "ws.close(); echo.close(); true").await;
    let series = |route: &str, dir: &str, stage: &str| {
        format!("switchyard_ws_compression_bytes_total{{direction=\"{dir}\",route=\"{route}\",stage=\"{stage}\",transport=\"websocket\"}}")
    };
    let sent_bytes: usize = sent.iter().map(String::len).sum();
    gw.wait_metric(&series("feed", "out", "plain"), sent_bytes as f64)
        .await;
    gw.wait_metric(&series("echo", "in", "plain"), big.len() as f64)
        .await;
    let m = gw.metrics().await;
    let feed_wire = metric(&m, &series("feed", "out", "wire")).unwrap();
    assert!(
        feed_wire * 3.0 < sent_bytes as f64,
        "{feed_wire} bytes on the wire for {sent_bytes}"
    );
    let echo_in_wire = metric(&m, &series("echo", "in", "wire")).unwrap();
    assert!(
        echo_in_wire * 2.0 < big.len() as f64,
        "Chromium sent {echo_in_wire} bytes for {}",
        big.len()
    );
}

/// sockjs-client in Chromium through haproxy (HTTP, round robin per request, no stickiness) in
/// front of two instances joined as a cluster: consecutive requests of one SockJS session land
/// on different instances, and every polling and streaming transport still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockjs_client_in_chromium_works_through_a_round_robin_balancer_over_a_cluster() {
    use crate::common::cluster::{cluster_of, Balancer, Redis};
    let redis = Redis::start().await;
    let (page, _server) = serve_page_origin(SOCKJS_PAGE).await;
    let backend = crate::common::chat::ChatBackend::start().await;
    let routes = format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"http://{page}\"]\n    clients: [sockjs]\n    backend: {{ websocket: \"{}\", forward_headers: [] }}\n",
        backend.url("/chat")
    );
    let gws = cluster_of(&redis, &routes, "browser", 2).await;
    let lb = Balancer::start(&[gws[0].addr, gws[1].addr]).await;
    let (_browser, mut cdp, mut id) = sockjs_page(page).await;
    run_sockjs_transports(
        &mut cdp,
        &mut id,
        &format!("http://{}/chat", lb.addr),
        &[
            "xhr-polling",
            "xhr-streaming",
            "eventsource",
            "jsonp-polling",
        ],
    )
    .await;
    // Both instances served receivers: the sessions really moved between them.
    for gw in &gws {
        let m = gw.metrics().await;
        let receivers: f64 = [
            "sockjs-xhr",
            "sockjs-xhr_streaming",
            "sockjs-eventsource",
            "sockjs-jsonp",
        ]
        .iter()
        .filter_map(|label| {
            metric(
                &m,
                &format!(
                    "switchyard_client_connections_total{{route=\"chat\",transport=\"{label}\"}}"
                ),
            )
        })
        .sum();
        assert!(receivers >= 2.0, "{receivers} receivers on {}", gw.addr);
    }
    assert_eq!(
        backend.conns().len(),
        4,
        "one backend connection per session"
    );
}

/// The admin status page in Chromium: the route table shows the clients the test opened, the
/// page needs no script, and a screenshot of it is saved to `target/artifacts/status-page.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium_shows_the_route_table() {
    let feed = FeedBackend::start().await;
    let api = HttpBackend::start("api").await;
    let dead = dead_port();
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n\
         \x20 - name: prices\n    path: /prices\n    origins: [\"https://app.example\"]\n    backend: {{ websocket: \"{}\" }}\n\
         \x20 - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n\
         \x20 - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"{}\" }}\n\
         \x20 - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\", \"{}\"], health_check: {{ interval: 100ms }} }}\n",
        feed.url("/prices"),
        feed.url("/chat"),
        api.addr,
        dead.addr,
    );
    let gw = Gateway::start(&routes).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients
            .push(SseReader::open(gw.addr, "/prices", &[("origin", "https://app.example")]).await);
    }
    let (clock_ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/clock"))
        .await
        .unwrap();
    let refused = http_get(gw.addr, "/prices", &[("origin", "https://evil.example")]).await;
    assert_eq!(refused.status, 403);
    gw.wait_metric(
        r#"switchyard_client_connections_open{route="prices",transport="sse"}"#,
        3.0,
    )
    .await;
    let down = format!(
        "switchyard_upstream_healthy{{route=\"api\",upstream=\"{}\"}}",
        dead.addr
    );
    let until = Instant::now() + DEADLINE;
    while metric(&gw.metrics().await, &down) != Some(0.0) {
        assert!(Instant::now() < until, "{down} never went to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (_browser, mut cdp, mut id) = loaded_page(&format!("http://{}/", gw.admin)).await;
    // The page refreshes itself every 5 s, so a count that lagged at the first load shows up.
    wait_true(
        &mut cdp,
        &mut id,
        "document.querySelector('tr[data-route=\"prices\"] td.clients')?.dataset.total === '3'",
        "3 clients on prices",
    )
    .await;
    assert_eq!(
        eval(
            &mut cdp,
            &mut id,
            "document.querySelector('tr[data-route=\"clock\"] td.clients').dataset.total"
        )
        .await,
        "1"
    );
    assert_eq!(
        eval(
            &mut cdp,
            &mut id,
            "document.querySelector('meta[http-equiv=refresh]').content"
        )
        .await,
        "5"
    );
    assert_eq!(eval(&mut cdp, &mut id, "document.scripts.length").await, 0);
    assert_eq!(
        eval(
            &mut cdp,
            &mut id,
            "document.getElementById('refusals-total').textContent"
        )
        .await,
        "1"
    );

    // The whole page in one picture, at a desktop width.
    let mut viewport =
        serde_json::json!({"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": false});
    call(
        &mut cdp,
        &mut id,
        "Emulation.setDeviceMetricsOverride",
        viewport.clone(),
    )
    .await;
    let height = eval(&mut cdp, &mut id, "document.documentElement.scrollHeight").await;
    viewport["height"] = height.as_u64().unwrap_or(800).clamp(300, 2000).into();
    call(
        &mut cdp,
        &mut id,
        "Emulation.setDeviceMetricsOverride",
        viewport,
    )
    .await;
    let shot = call(
        &mut cdp,
        &mut id,
        "Page.captureScreenshot",
        serde_json::json!({"format": "png"}),
    )
    .await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("status-page.png"), &png).unwrap();
    drop((clients, clock_ws));
}

const SOCKETIO_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"></head>
<body><script>
var v = new URLSearchParams(location.search).get('v');
var lib = document.createElement('script');
lib.src = v === '2' ? '/socket.io-v2.js' : '/socket.io.min.js';
document.head.appendChild(lib);
window.results = {};
window.run = function (url, mode) {
  var r = results[mode] = {};
  var opts = { path: '/socket.io', forceNew: true, reconnection: false, withCredentials: true };
  if (mode === 'polling' || mode === 'jsonp') opts.transports = ['polling'];
  if (mode === 'jsonp') opts.forceJSONP = true;
  if (mode === 'websocket') opts.transports = ['websocket'];
  var customOpts = Object.assign({}, opts, v === '2' ? { query: { token: 'abc' } } : { auth: { token: 'abc' } });
  var main = io(url + '/', opts);
  var custom = io(url + '/custom', customOpts);
  var seen = 0;
  var go = function () {
    var text = 'h\u00e9llo \u2603 \ud83d\ude00 \u2028';
    var big = new Array(64 * 1024 + 1).join('b');
    main.once('message-back', function (a, b, c) {
      r.echoed = a === text && b === big && c instanceof ArrayBuffer && new Uint8Array(c).join() === '0,1,2,255';
      main.emit('message-with-ack', 7, function (n) {
        r.acked = n === 7;
        r.transport = main.io.engine.transport.name;
        r.done = true;
        main.close();
        custom.close();
      });
    });
    main.emit('message', text, big, new Uint8Array([0, 1, 2, 255]).buffer);
  };
  main.on('auth', function (a) { r.mainAuth = a; if (++seen === 2) go(); });
  custom.on('auth', function (a) { r.customAuth = a; if (++seen === 2) go(); });
  main.on('connect_error', function (e) { r.error = String(e); });
  custom.on('connect_error', function (e) { r.error = String(e); });
};
</script></body></html>"#;

/// Runs [`SOCKETIO_PAGE`]'s `run(url, mode)` and gives its results once it is done (or failed).
async fn run_socketio(cdp: &mut Cdp, id: &mut u64, url: &str, mode: &str) -> serde_json::Value {
    eval(cdp, id, &format!("run('{url}', '{mode}')")).await;
    wait_true(
        cdp,
        id,
        &format!("!!(results['{mode}'] && (results['{mode}'].done || results['{mode}'].error))"),
        &format!("socket.io-client on {mode} to {url}"),
    )
    .await;
    eval(cdp, id, &format!("results['{mode}']")).await
}

/// socket.io-client 4 (and 2.5) in Chromium, from another origin with `withCredentials: true`,
/// through switchyard to a plain backend written to the mapping: two namespaces, auth, events
/// with non-ASCII text, 64 KiB and binary, an ack; on every transport each offers (JSONP for
/// 2.5). The browser enforces CORS with credentials: an exact origin and
/// `Access-Control-Allow-Credentials` (without `cors: { credentials: true }` this fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_in_chromium_cross_origin_with_credentials() {
    let (page, _server) = serve_page_with(
        SOCKETIO_PAGE,
        &[
            (
                "/socket.io.min.js",
                "socket.io-client/dist/socket.io.min.js",
            ),
            ("/socket.io-v2.js", "socket.io-client-v2/dist/socket.io.js"),
        ],
    )
    .await;
    let backend = crate::socketio::mapped_backend().await;
    let routes = crate::socketio::route(
        backend.addr,
        &format!("    origins: [\"http://{page}\"]\n    cors: {{ credentials: true }}\n"),
    );
    let gw = Gateway::start(&routes).await;
    for (v, modes) in [
        ("4", &["polling", "websocket", "upgrade"][..]),
        ("2", &["polling", "jsonp", "websocket", "upgrade"][..]),
    ] {
        let (_browser, mut cdp, mut id) = loaded_page(&format!("http://{page}/?v={v}")).await;
        wait_true(
            &mut cdp,
            &mut id,
            "typeof io === 'function'",
            "socket.io-client loading",
        )
        .await;
        for mode in modes {
            let r = run_socketio(&mut cdp, &mut id, &gw.url(""), mode).await;
            assert_eq!(r["done"], true, "{v} {mode}: {r}");
            assert_eq!(r["echoed"], true, "{v} {mode}: {r}");
            assert_eq!(r["acked"], true, "{v} {mode}: {r}");
            assert_eq!(r["mainAuth"], serde_json::json!({}), "{v} {mode}: {r}");
            assert_eq!(
                r["customAuth"],
                serde_json::json!({"token": "abc"}),
                "{v} {mode}: {r}"
            );
            let want = if matches!(*mode, "polling" | "jsonp") {
                "polling"
            } else {
                "websocket"
            };
            assert_eq!(r["transport"], want, "{v} {mode}: {r}");
        }
    }
    let m = gw.metrics().await;
    for t in ["socketio-polling", "socketio-websocket"] {
        let series = format!(
            "switchyard_messages_total{{direction=\"in\",route=\"sio\",transport=\"{t}\"}}"
        );
        assert!(metric(&m, &series).is_some_and(|n| n >= 7.0), "{series}");
    }
}

/// socket.io-client 4 in Chromium through haproxy in round robin per request, over two
/// clustered instances, on polling and on polling then the upgrade: no sticky sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_in_chromium_through_a_round_robin_balancer_over_a_cluster() {
    use crate::common::cluster::{cluster_of, Balancer, Redis};
    let redis = Redis::start().await;
    let (page, _server) = serve_page_with(
        SOCKETIO_PAGE,
        &[(
            "/socket.io.min.js",
            "socket.io-client/dist/socket.io.min.js",
        )],
    )
    .await;
    let backend = crate::socketio::mapped_backend().await;
    let routes = crate::socketio::route(
        backend.addr,
        &format!("    origins: [\"http://{page}\"]\n    cors: {{ credentials: true }}\n"),
    );
    let gws = cluster_of(&redis, &routes, "sio-browser", 2).await;
    let lb = Balancer::start(&[gws[0].addr, gws[1].addr]).await;
    let (_browser, mut cdp, mut id) = loaded_page(&format!("http://{page}/?v=4")).await;
    wait_true(
        &mut cdp,
        &mut id,
        "typeof io === 'function'",
        "socket.io-client loading",
    )
    .await;
    for mode in ["polling", "upgrade"] {
        let r = run_socketio(&mut cdp, &mut id, &format!("http://{}", lb.addr), mode).await;
        assert_eq!(r["done"], true, "{mode}: {r}");
        assert_eq!(r["echoed"], true, "{mode}: {r}");
        assert_eq!(r["acked"], true, "{mode}: {r}");
        assert_eq!(
            r["customAuth"],
            serde_json::json!({"token": "abc"}),
            "{mode}: {r}"
        );
    }
    // Both instances served polls: the sessions' requests really went to both.
    for gw in &gws {
        let m = gw.metrics().await;
        let polls = metric(
            &m,
            "switchyard_client_connections_total{route=\"sio\",transport=\"socketio-polling\"}",
        )
        .unwrap_or(0.0);
        assert!(polls >= 2.0, "{polls} polls on {}", gw.addr);
    }
}

/// The demo page's Socket.IO panel: socket.io-client loaded through `/socket.io/socket.io.js`
/// (sent to the route's `socketio.client_url`), the clock arriving as `message` events, over
/// polling then the WebSocket it upgrades to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_socket_io_panel_shows_the_clock() {
    let (scripts, _server) = serve_page_with(
        "",
        &[(
            "/socket.io.min.js",
            "socket.io-client/dist/socket.io.min.js",
        )],
    )
    .await;
    let routes = format!(
        "  - name: demo\n    path: /\n    backend: {{ builtin: demo }}\n  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n  - name: socketio\n    path: /socket.io\n    clients: [socketio]\n    socketio: {{ client_url: \"http://{scripts}/socket.io.min.js\" }}\n    backend: {{ builtin: clock }}\n"
    );
    let (_gw, _browser, mut cdp, mut id) = gateway_page(&routes).await;
    eval(
        &mut cdp,
        &mut id,
        "document.getElementById('sio-connect').click(); true",
    )
    .await;
    wait_true(
        &mut cdp,
        &mut id,
        "document.getElementById('sio-status').textContent === 'connected' && (document.getElementById('sio-log').textContent.match(/\\u2190 \\d{4}-/g) || []).length >= 2",
        "two clock ticks in the Socket.IO panel",
    )
    .await;
    wait_true(
        &mut cdp,
        &mut id,
        "document.getElementById('sio-transport').textContent === 'websocket'",
        "the panel's client upgrading to a WebSocket",
    )
    .await;
}
