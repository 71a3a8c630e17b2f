//! Several gateway processes as one gateway, on a real Redis (`redis-server`, started here on
//! an ephemeral port): one backend connection for the cluster, ids and cursors that resume on
//! any instance, failover when the lease holder is killed, and a Redis outage that
//! disconnects nobody.

use crate::common::cluster::*;
use crate::common::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn feed_routes(backend: &FeedBackend) -> String {
    format!(
        "  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\", reconnect: {{ initial: 50ms, max: 200ms }} }}\n    clients: [websocket, sse, long_poll]\n    replay: 1000\n    backend_linger: 30s\n",
        backend.url("/stream")
    )
}

async fn instances(redis: &Redis, backend: &FeedBackend, prefix: &str, n: usize) -> Vec<Gateway> {
    cluster_of(redis, &feed_routes(backend), prefix, n).await
}

fn lease_held(metrics: &str) -> bool {
    metric(metrics, "switchyard_cluster_lease_held{route=\"feed\"}") == Some(1.0)
}

/// The index of the one instance that holds the feed's lease.
async fn holder_of(gws: &[Gateway]) -> usize {
    let mut holders = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        if lease_held(&gw.metrics().await) {
            holders.push(i);
        }
    }
    assert_eq!(holders.len(), 1, "exactly one instance holds the lease");
    holders[0]
}

/// Reads `n` data events; returns (number, id) pairs.
async fn read_numbers(sse: &mut SseReader, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = tokio::time::timeout(DEADLINE, sse.next_data_event())
            .await
            .expect("the next event arrives");
        assert_ne!(ev.event.as_deref(), Some("gap"), "nothing missed");
        out.push((number_of(&ev.data), ev.id.expect("every event has an id")));
    }
    out
}

fn numbers(v: &[(u64, String)]) -> Vec<u64> {
    v.iter().map(|(n, _)| *n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_backend_connection_and_resume_on_any_instance() {
    let redis = Redis::start().await;
    let backend = FeedBackend::start().await;
    let gws = instances(&redis, &backend, "resume", 3).await;
    let (a, b, c) = (&gws[0], &gws[1], &gws[2]);

    // Clients on A and C; the cluster opens one backend connection for them all. B has
    // none yet.
    let mut on_a = SseReader::open(a.addr, "/feed", &[]).await;
    let mut on_c = SseReader::open(c.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    // Three lease ticks: every instance has looked at the lease and wants the feed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    holder_of(&gws).await;

    backend.send_numbered(1..=20, 16, 20, Duration::ZERO);
    let seen_a = read_numbers(&mut on_a, 10).await;
    assert_eq!(numbers(&seen_a), (1..=10).collect::<Vec<_>>());
    let seen_c = read_numbers(&mut on_c, 20).await;
    assert_eq!(numbers(&seen_c), (1..=20).collect::<Vec<_>>());
    // The same message has the same id on every instance.
    assert_eq!(seen_a[..], seen_c[..10]);

    // The client of A reconnects to B, where nobody listened so far, with its last id:
    // exactly what it missed (B loads it from the stream), then live.
    drop(on_a);
    let last_id = seen_a[9].1.clone();
    let mut moved = SseReader::open(b.addr, "/feed", &[("Last-Event-ID", &last_id)]).await;
    let resumed = read_numbers(&mut moved, 10).await;
    assert_eq!(resumed[..], seen_c[10..]);
    backend.send_numbered(21..=30, 16, 10, Duration::ZERO);
    let live = read_numbers(&mut moved, 10).await;
    assert_eq!(numbers(&live), (21..=30).collect::<Vec<_>>());
    // The same resume on C, whose SSE client saw it all live: the same answer.
    let mut on_c2 = SseReader::open(c.addr, "/feed", &[("Last-Event-ID", &last_id)]).await;
    assert_eq!(
        numbers(&read_numbers(&mut on_c2, 20).await),
        (11..=30).collect::<Vec<_>>()
    );

    // Long-poll cursors go round the three instances; nothing lost, nothing repeated.
    let j = get_json(a, "/feed?transport=poll&cursor=0").await;
    let first: Vec<u64> = j["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| number_of(m.as_str().unwrap()))
        .collect();
    assert_eq!(first, (1..=30).collect::<Vec<_>>());
    let mut cursor = j["cursor"].as_u64().unwrap();
    backend.send_numbered(31..=90, 16, 3, Duration::from_millis(5));
    let mut want = 31;
    let mut turn = 0;
    let until = Instant::now() + DEADLINE * 2;
    while want <= 90 {
        assert!(Instant::now() < until, "long-poll stuck at {want}");
        let gw = &gws[turn % 3];
        turn += 1;
        let j = get_json(gw, &format!("/feed?transport=poll&cursor={cursor}")).await;
        assert!(j.get("missed").is_none(), "nothing missed: {j}");
        for m in j["messages"].as_array().unwrap() {
            assert_eq!(number_of(m.as_str().unwrap()), want, "order, no repeats");
            want += 1;
        }
        cursor = j["cursor"].as_u64().unwrap();
    }
    assert!(turn >= 3, "polls went to every instance");
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "still the one backend connection"
    );

    // Everything the cluster keeps in Redis expires by itself.
    let mut conn = redis.conn().await;
    let keys = keys_with_ttls(&mut conn, "resume:*").await;
    assert!(keys.contains(&"resume:feed:feed".to_owned()), "{keys:?}");
    let len: usize = redis::cmd("XLEN")
        .arg("resume:feed:feed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_holder_moves_the_backend_connection_to_another_instance() {
    let redis = Redis::start().await;
    let backend = FeedBackend::start().await;
    let mut gws = instances(&redis, &backend, "failover", 3).await;
    let mut clients = Vec::new();
    for gw in &gws {
        clients.push(SseReader::open(gw.addr, "/feed", &[]).await);
    }
    backend.wait_open(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.send_numbered(1..=5, 16, 5, Duration::ZERO);
    for c in &mut clients {
        assert_eq!(
            numbers(&read_numbers(c, 5).await),
            (1..=5).collect::<Vec<_>>()
        );
    }
    let holder = holder_of(&gws).await;
    // kill -9: no goodbye, the lease just stops being renewed.
    let killed = Instant::now();
    drop(clients.remove(holder));
    drop(gws.remove(holder));
    backend.wait_open(0).await;
    backend.wait_connections(2).await;
    backend.wait_open(1).await;
    let took = killed.elapsed();
    // Lease TTL 1s, ticks every 1/3 s, plus the reconnect: well within a few seconds.
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    backend.send_numbered(6..=10, 16, 5, Duration::ZERO);
    for c in &mut clients {
        // The survivors' clients stayed connected and go on in order.
        assert_eq!(
            numbers(&read_numbers(c, 5).await),
            (6..=10).collect::<Vec<_>>()
        );
    }
    holder_of(&gws).await;
}

/// One SSE client that records the numbers it gets, and whether its stream ended.
struct Tally {
    got: Arc<Mutex<Vec<u64>>>,
    ended: Arc<AtomicBool>,
}

async fn tally(addr: std::net::SocketAddr, opened: Arc<AtomicUsize>) -> Tally {
    let got = Arc::new(Mutex::new(Vec::new()));
    let ended = Arc::new(AtomicBool::new(false));
    let mut sse = SseReader::open(addr, "/feed", &[]).await;
    opened.fetch_add(1, Ordering::SeqCst);
    let (g, e) = (got.clone(), ended.clone());
    tokio::spawn(async move {
        while let Some(ev) = sse.next_data_event_or_end().await {
            if ev.event.is_none() {
                g.lock().unwrap().push(number_of(&ev.data));
            }
        }
        e.store(true, Ordering::SeqCst);
    });
    Tally { got, ended }
}

async fn wait_all_have(clients: &[Tally], want: &[u64]) {
    let until = Instant::now() + DEADLINE * 2;
    loop {
        let done = clients
            .iter()
            .filter(|c| c.got.lock().unwrap().as_slice() == want)
            .count();
        if done == clients.len() {
            return;
        }
        let sample = clients
            .iter()
            .find(|c| c.got.lock().unwrap().as_slice() != want)
            .map(|c| c.got.lock().unwrap().clone());
        assert!(
            Instant::now() < until,
            "{done}/{} clients have {want:?}; one has {sample:?}",
            clients.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_disconnects_nobody_and_the_cluster_reforms() {
    const CLIENTS: usize = 1000;
    let mut redis = Redis::start().await;
    let backend = FeedBackend::start().await;
    let gws = instances(&redis, &backend, "outage", 2).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(tally(gws[i % 2].addr, opened.clone()).await);
    }
    backend.wait_open(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.send_numbered(1..=3, 16, 3, Duration::ZERO);
    wait_all_have(&clients, &[1, 2, 3]).await;

    // Redis goes away for ten seconds.
    let outage = Instant::now();
    redis.stop();
    for (i, gw) in gws.iter().enumerate() {
        let node = (b'a' + i as u8) as char;
        let until = Instant::now() + DEADLINE;
        while metric(
            &gw.metrics().await,
            &format!("switchyard_cluster_up{{node=\"node-{node}\"}}"),
        ) != Some(0.0)
        {
            assert!(
                Instant::now() < until,
                "node-{node} never noticed the outage"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Each instance serves its own clients from its own backend connection.
    backend.wait_open(2).await;
    backend.send_numbered(4..=6, 16, 3, Duration::ZERO);
    wait_all_have(&clients, &[1, 2, 3, 4, 5, 6]).await;
    let rest = Duration::from_secs(10).saturating_sub(outage.elapsed());
    tokio::time::sleep(rest).await;
    assert!(clients.iter().all(|c| !c.ended.load(Ordering::SeqCst)));

    // Redis is back (empty): the cluster reforms around one backend connection. The feed goes
    // on meanwhile (a message every 40 ms for 2 s): until its next lease tick, the instance
    // that lets its own connection go still receives on it while the new holder's entries for
    // the same messages arrive. Every client gets each message once, and none is lost.
    redis.run().await;
    backend.send_numbered(7..=56, 16, 1, Duration::from_millis(40));
    backend.wait_open(1).await;
    // A tick for the other instance's reader to be back on the new stream.
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.send_numbered(57..=59, 16, 3, Duration::ZERO);
    let all: Vec<u64> = (1..=59).collect();
    wait_all_have(&clients, &all).await;
    assert!(
        clients.iter().all(|c| !c.ended.load(Ordering::SeqCst)),
        "no client was disconnected"
    );
    for gw in &gws {
        let m = gw.metrics().await;
        assert_eq!(
            metric(&m, "switchyard_cluster_fallbacks_total{route=\"feed\"}"),
            Some(1.0),
            "each instance fell back once"
        );
    }
    assert_eq!(opened.load(Ordering::SeqCst), CLIENTS);

    // Every cluster metric the dashboard and the alert rules query is exported by now (an
    // outage, a fallback, appends and reads have all happened).
    let root = env!("CARGO_MANIFEST_DIR");
    let mut queried = String::new();
    for f in ["grafana/switchyard.json", "grafana/alerts.yml"] {
        queried.push_str(&std::fs::read_to_string(format!("{root}/{f}")).unwrap());
    }
    let mut names: Vec<&str> = queried
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_cluster_"))
        .map(|w| w.trim_end_matches("_bucket"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    let mut scraped = String::new();
    for gw in &gws {
        scraped.push_str(&gw.metrics().await);
    }
    for name in names {
        assert!(
            scraped.contains(&format!("# TYPE {name} ")),
            "the dashboard or an alert queries {name}, which no instance exports"
        );
    }
}

fn chat_routes(backend: &crate::common::chat::ChatBackend, extra: &str) -> String {
    format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"{}\" }}\n{extra}",
        backend.url("/chat")
    )
}

async fn chat_instances(
    redis: &Redis,
    backend: &crate::common::chat::ChatBackend,
    prefix: &str,
    n: usize,
    extra: &str,
) -> Vec<Gateway> {
    cluster_of(redis, &chat_routes(backend, extra), prefix, n).await
}

/// A GET that must answer 200 with JSON.
async fn get_json(gw: &Gateway, path: &str) -> serde_json::Value {
    let r = http_get(gw.addr, path, &[]).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body_text());
    serde_json::from_slice(&r.body).unwrap()
}

/// A Redis, a chat backend, and `n` instances of a per-client route on it.
async fn chat_cluster(
    prefix: &str,
    n: usize,
    extra: &str,
) -> (Redis, crate::common::chat::ChatBackend, Vec<Gateway>) {
    let redis = Redis::start().await;
    let backend = crate::common::chat::ChatBackend::start().await;
    let gws = chat_instances(&redis, &backend, prefix, n, extra).await;
    (redis, backend, gws)
}

async fn open_poll_session(gw: &Gateway) -> String {
    let j = get_json(gw, "/chat?transport=poll").await;
    j["session"].as_str().unwrap().to_owned()
}

/// One poll: (texts, next cursor, answer).
async fn poll_on(gw: &Gateway, id: &str, cursor: u64) -> (Vec<String>, u64, serde_json::Value) {
    let j = get_json(
        gw,
        &format!("/chat?transport=poll&session={id}&cursor={cursor}"),
    )
    .await;
    let texts = j["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    (texts, j["cursor"].as_u64().unwrap(), j)
}

async fn post_on(gw: &Gateway, id: &str, body: &str) -> u16 {
    post_as(gw, "poll", id, body).await
}

/// POSTs `body` to session `id` as a client of `transport` (`poll` or `sse`); the status.
async fn post_as(gw: &Gateway, transport: &str, id: &str, body: &str) -> u16 {
    let mut c = crate::common::chat::Client::connect(gw.addr).await;
    c.request(
        "POST",
        &format!("/chat?transport={transport}&session={id}"),
        &[("content-type", "text/plain")],
        body,
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_session_converses_through_any_instance_round_robin() {
    let (_redis, backend, gws) =
        chat_cluster("rr", 3, "    keepalive: { poll_timeout: 5s }\n").await;
    let id = open_poll_session(&gws[0]).await;
    let mut cursor = 0;
    let mut replies = Vec::new();
    for i in 1..=30u32 {
        // Each POST and each poll goes to the next instance, as a round-robin balancer does.
        let status = post_on(&gws[i as usize % 3], &id, &format!("m{i}")).await;
        assert_eq!(status, 204, "POST {i}");
        let until = Instant::now() + DEADLINE;
        loop {
            let (texts, next, _) = poll_on(&gws[(i as usize + 1) % 3], &id, cursor).await;
            cursor = next;
            replies.extend(texts);
            if replies.len() == i as usize {
                break;
            }
            assert!(replies.len() < i as usize, "a duplicate: {replies:?}");
            assert!(Instant::now() < until, "no reply to m{i}");
        }
    }
    let want: Vec<String> = (1..=30).map(|i| format!("1:{i}:m{i}")).collect();
    assert_eq!(replies, want, "in order, nothing lost or repeated");
    let conns = backend.conns();
    assert_eq!(conns.len(), 1, "one backend connection for the session");
    assert_eq!(
        conns[0].received,
        (1..=30).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );

    // A poll waiting on an instance that does not own the session is woken by the owner.
    let waiting = {
        let gw_addr = gws[2].addr;
        let id = id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = http_get(
                gw_addr,
                &format!("/chat?transport=poll&session={id}&cursor={cursor}"),
                &[],
            )
            .await;
            (started.elapsed(), r)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(post_on(&gws[1], &id, "late").await, 204);
    let (took, r) = waiting.await.unwrap();
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["messages"], serde_json::json!(["1:31:late"]));
    assert!(
        took < Duration::from_secs(4),
        "woken, not timed out: {took:?}"
    );

    // DELETE through a third instance ends the session and its backend connection.
    let mut c = crate::common::chat::Client::connect(gws[1].addr).await;
    let r = c
        .request(
            "DELETE",
            &format!("/chat?transport=poll&session={id}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    backend.wait_ended(1).await;
    let r = http_get(
        gws[2].addr,
        &format!("/chat?transport=poll&session={id}&cursor=31"),
        &[],
    )
    .await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["closed"]["code"], 1000, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_instance_dies_ends_with_the_documented_close() {
    let (_redis, _backend, mut gws) =
        chat_cluster("lost", 2, "    keepalive: { poll_timeout: 2s }\n").await;
    let id = open_poll_session(&gws[0]).await;
    assert_eq!(post_on(&gws[1], &id, "hello").await, 204);
    let (texts, cursor, _) = poll_on(&gws[1], &id, 0).await;
    assert_eq!(texts, ["1:1:hello"]);
    // kill -9 of the owner: the session cannot go on, and its client is told so.
    drop(gws.remove(0));
    let until = Instant::now() + DEADLINE;
    let closed = loop {
        let (texts, _, j) = poll_on(&gws[0], &id, cursor).await;
        assert!(texts.is_empty());
        if !j["closed"].is_null() {
            break j["closed"].clone();
        }
        assert!(Instant::now() < until, "the session never ended");
    };
    assert_eq!(
        closed,
        serde_json::json!({"code": 1012, "reason": "session ended: its gateway instance is gone"})
    );
    let mut c = crate::common::chat::Client::connect(gws[0].addr).await;
    let r = c
        .request(
            "POST",
            &format!("/chat?transport=poll&session={id}"),
            &[("content-type", "text/plain")],
            "anyone?",
        )
        .await;
    assert_eq!(r.status, 410, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_abandoned_sessions_all_expire() {
    const SESSIONS: usize = 1000;
    let (redis, backend, gws) = chat_cluster(
        "abandon",
        2,
        "    session_ttl: 1s\n    keepalive: { poll_timeout: 200ms }\n",
    )
    .await;
    let mut opened = Vec::new();
    for i in 0..SESSIONS {
        opened.push(open_poll_session(&gws[i % 2]).await);
    }
    let mut conn = redis.conn().await;
    let keys_conn = conn.clone();
    let count = |pattern: &'static str| {
        let mut conn = keys_conn.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys
        }
    };
    // The sessions opened last are still alive, and have their record (the first ones may
    // have expired already: session_ttl is 1s).
    let last = format!("abandon:sess:{}", opened.last().unwrap());
    let exists: u8 = redis::cmd("EXISTS")
        .arg(&last)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 1, "{last}");
    // Nobody polls again: every session expires, and so does everything it kept in Redis.
    let until = Instant::now() + DEADLINE * 2;
    loop {
        let left = count("abandon:sess:*").await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < until,
            "{} session keys left, e.g. {:?}",
            left.len(),
            &left[..left.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let until = Instant::now() + DEADLINE;
    while backend.conns().iter().filter(|c| c.ended).count() < SESSIONS {
        assert!(Instant::now() < until, "backend connections left open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What remains (node streams and liveness) has a TTL too.
    keys_with_ttls(&mut conn, "abandon:*").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_session_reattaches_on_another_instance_and_posts_go_anywhere() {
    let (_redis, backend, gws) = chat_cluster("ssepost", 3, "").await;
    let mut sse = SseReader::open(gws[0].addr, "/chat?transport=sse", &[]).await;
    let hello = sse.next_data_event().await;
    assert_eq!(hello.event.as_deref(), Some("session"));
    let sid = hello.data.clone();
    let post = |gw: usize, body: &'static str| post_as(&gws[gw], "sse", &sid, body);
    assert_eq!(post(1, "one").await, 204);
    let ev = sse.next_data_event().await;
    assert_eq!(ev.data, "1:1:one");
    assert_eq!(ev.id.as_deref(), Some(format!("{sid}-1").as_str()));
    // The stream drops; EventSource reconnects, through the balancer, to another instance.
    drop(sse);
    assert_eq!(post(2, "two").await, 204);
    let mut again = SseReader::open(
        gws[2].addr,
        "/chat?transport=sse",
        &[("Last-Event-ID", &format!("{sid}-1"))],
    )
    .await;
    let ev = again.next_data_event().await;
    assert_eq!(ev.event.as_deref(), Some("session"));
    assert_eq!(ev.data, sid, "the same session, not a new one");
    let ev = again.next_data_event().await;
    assert_eq!(
        (ev.data.as_str(), ev.id.as_deref()),
        ("1:2:two", Some(format!("{sid}-2").as_str())),
        "what it missed while away"
    );
    assert_eq!(post(0, "three").await, 204);
    let ev = again.next_data_event().await;
    assert_eq!(ev.data, "1:3:three");
    assert_eq!(
        backend.conns().len(),
        1,
        "one backend connection throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lease_holder_resumes_an_sse_backend_where_the_old_one_was() {
    let redis = Redis::start().await;
    let backend = SseBackend::start().await;
    let routes = format!(
        "  - name: feed\n    path: /feed\n    backend: {{ sse: \"{}\", reconnect: {{ initial: 50ms, max: 200ms }} }}\n    clients: [sse]\n",
        backend.url("/events")
    );
    let mut gws = cluster_of(&redis, &routes, "sseresume", 2).await;
    let mut clients = Vec::new();
    for gw in &gws {
        clients.push(SseReader::open(gw.addr, "/feed", &[]).await);
    }
    backend.wait_connections(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    backend.write("id: b-1\ndata: one\n\nid: b-2\ndata: two\n\n");
    for c in &mut clients {
        assert_eq!(c.next_data_event().await.data, "one");
        assert_eq!(c.next_data_event().await.data, "two");
    }
    // Each event is stored with its own backend id (`i`), though both came in one read: a
    // holder that died between the two appends leaves the next one a position after "one".
    let mut conn = redis.conn().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("sseresume:feed:feed")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<Option<String>> = entries
        .iter()
        .map(|(_, fields)| {
            fields
                .iter()
                .find(|(k, _)| k == "i")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(ids, [Some("b-1".to_owned()), Some("b-2".to_owned())]);
    let holder = holder_of(&gws).await;
    drop(clients.remove(holder));
    drop(gws.remove(holder));
    // The survivor takes the lease and asks the backend for what came after b-2.
    backend.wait_connections(2).await;
    assert_eq!(
        backend.last_event_ids.lock().unwrap()[1].as_deref(),
        Some("b-2"),
        "resumed from the id the cluster kept"
    );
    backend.write("id: b-3\ndata: three\n\n");
    assert_eq!(clients[0].next_data_event().await.data, "three");
}

/// A SockJS request to `gw` (SockJS base `/echo`, or `/feed`), its body as text.
async fn sockjs(gw: &Gateway, method: &str, path: &str, body: &str) -> (u16, String) {
    let r = crate::common::sockjs::request(gw.addr, method, path, &[], body.as_bytes()).await;
    (r.status, r.body_text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sockjs_session_polls_and_sends_through_any_instance() {
    let redis = Redis::start().await;
    let feed = FeedBackend::start().await;
    let routes = format!(
        "  - name: echo\n    path: /echo\n    backend: {{ builtin: echo }}\n    clients: [sockjs]\n  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\" }}\n    clients: [sockjs]\n    replay: 100\n",
        feed.url("/stream")
    );
    let gws = cluster_of(&redis, &routes, "sockjs", 3).await;
    let (a, b, c) = (&gws[0], &gws[1], &gws[2]);
    // xhr-polling, each request to the next instance, as through a round-robin balancer.
    let sid = crate::common::sockjs::session_id();
    let at = |base: &str, what: &str| format!("{base}/000/{sid}/{what}");
    assert_eq!(
        sockjs(a, "POST", &at("/echo", "xhr"), "").await,
        (200, "o\n".into())
    );
    assert_eq!(
        sockjs(b, "POST", &at("/echo", "xhr_send"), "[\"hello\",\"there\"]")
            .await
            .0,
        204
    );
    assert_eq!(
        sockjs(c, "POST", &at("/echo", "xhr"), "").await,
        (200, "a[\"hello\",\"there\"]\n".into())
    );
    // A poll waiting on B is answered when a send lands on A.
    let waiting = {
        let (addr, path) = (b.addr, at("/echo", "xhr"));
        tokio::spawn(
            async move { crate::common::sockjs::request(addr, "POST", &path, &[], b"").await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One receiver at a time, across instances too.
    assert_eq!(
        sockjs(c, "POST", &at("/echo", "xhr"), "").await,
        (200, "c[2010,\"Another connection still open\"]\n".into())
    );
    assert_eq!(
        sockjs(a, "POST", &at("/echo", "xhr_send"), "[\"again\"]")
            .await
            .0,
        204
    );
    let r = waiting.await.unwrap();
    assert_eq!((r.status, r.body_text()), (200, "a[\"again\"]\n".into()));
    // Another client address may not use the session, here or elsewhere.
    let other = crate::common::sockjs::request_from(
        Some("127.0.0.2".parse().unwrap()),
        c.addr,
        "POST",
        &at("/echo", "xhr_send"),
        &[],
        b"[\"intruder\"]",
    )
    .await;
    assert_eq!(other.status, 404);

    // A session on a shared feed: opened on A, its messages polled on B and C.
    let sid2 = crate::common::sockjs::session_id();
    let on = |what: &str| format!("/feed/000/{sid2}/{what}");
    assert_eq!(sockjs(a, "POST", &on("xhr"), "").await, (200, "o\n".into()));
    feed.wait_open(1).await;
    feed.send_numbered(1..=3, 4, 3, Duration::ZERO);
    let mut got = Vec::new();
    let until = Instant::now() + DEADLINE;
    while got.len() < 3 {
        assert!(Instant::now() < until, "got {got:?}");
        let gw = [b, c][got.len() % 2];
        let (status, body) = sockjs(gw, "POST", &on("xhr"), "").await;
        assert_eq!(status, 200);
        if let Some(items) = body.trim().strip_prefix('a') {
            let items: Vec<String> = serde_json::from_str(items).unwrap();
            got.extend(items.iter().map(|m| number_of(m)));
        }
    }
    assert_eq!(got, [1, 2, 3], "in order, nothing lost or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_replaces_a_feed_keeps_one_backend_connection() {
    let redis = Redis::start().await;
    let backend = FeedBackend::start().await;
    let gws = instances(&redis, &backend, "reload", 1).await;
    let gw = &gws[0];
    let mut before = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    backend.send_numbered(1..=2, 4, 2, Duration::ZERO);
    assert_eq!(numbers(&read_numbers(&mut before, 2).await), [1, 2]);
    // A new replay window is a new feed: the old one is retired, its clients told to go.
    gw.rewrite_routes(&feed_routes(&backend).replace("replay: 1000", "replay: 500"));
    gw.signal("HUP");
    assert!(
        tokio::time::timeout(DEADLINE, before.next_data_event_or_end())
            .await
            .expect("the old stream ends")
            .is_none(),
        "the old feed's client is told to go"
    );
    let mut after = SseReader::open(gw.addr, "/feed", &[]).await;
    // The new feed's controller takes the lease over; the old one lets its connection go.
    if tokio::time::timeout(
        DEADLINE - Duration::from_secs(1),
        backend.wait_connections(2),
    )
    .await
    .is_err()
    {
        panic!(
            "the new feed never connected its backend; the gateway's log:\n{}",
            gw.log()
        );
    }
    backend.wait_open(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend.send_numbered(3..=5, 4, 3, Duration::ZERO);
    assert_eq!(numbers(&read_numbers(&mut after, 3).await), [3, 4, 5]);
    assert_eq!(backend.open.load(Ordering::SeqCst), 1);
}

/// POSTs `body` to `/publish/news/<topic>` on `gw`'s admin listener: the answer's id.
async fn publish_on(gw: &Gateway, topic: &str, body: &str) -> String {
    let r = crate::common::sockjs::request(
        gw.admin,
        "POST",
        &format!("/publish/news/{topic}"),
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body_text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    j["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_any_instance_reaches_the_channels_subscribers_on_every_instance_with_one_id()
{
    let redis = Redis::start().await;
    let gws = cluster_of(
        &redis,
        "  - name: news\n    path: \"/news/{topic}\"\n    backend: { publish: {} }\n    replay: 100\n",
        "chanpub",
        2,
    )
    .await;
    let mut on_a = SseReader::open(gws[0].addr, "/news/t1", &[]).await;
    let mut on_b = SseReader::open(gws[1].addr, "/news/t1", &[]).await;
    let mut other = SseReader::open(gws[1].addr, "/news/t2", &[]).await;
    let mut ids = Vec::new();
    for i in 1..=6 {
        // Alternately on each instance.
        ids.push(publish_on(&gws[i % 2], "t1", &format!("{i}:m")).await);
    }
    for sse in [&mut on_a, &mut on_b] {
        let got = read_numbers(sse, 6).await;
        assert_eq!(numbers(&got), (1..=6).collect::<Vec<_>>(), "in order, once");
        let seen: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
        assert_eq!(
            seen, ids,
            "the same ids on every instance, as the publishes answered"
        );
    }
    // The other channel got none of it.
    publish_on(&gws[0], "t2", "7:for t2").await;
    assert_eq!(numbers(&read_numbers(&mut other, 1).await), [7]);
    // A late subscriber anywhere resumes from an id another instance gave.
    let mut late = SseReader::open(gws[0].addr, "/news/t1", &[("last-event-id", &ids[2])]).await;
    assert_eq!(numbers(&read_numbers(&mut late, 3).await), [4, 5, 6]);
    // Each channel has its own stream, and every key it left in Redis expires.
    let mut conn = redis.conn().await;
    keys_with_ttls(&mut conn, "chanpub:*").await;
    let mut keys = keys_with_ttls(&mut conn, "chanpub:chan:*").await;
    keys.sort();
    assert_eq!(keys, ["chanpub:chan:news:2:t1", "chanpub:chan:news:2:t2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_backend_has_one_connection_for_the_cluster_and_moves_when_its_holder_dies() {
    let redis = Redis::start().await;
    let backend = FeedBackend::start().await;
    let routes = format!(
        "  - name: rooms\n    path: \"/rooms/{{room}}\"\n    backend: {{ websocket: \"{}\", reconnect: {{ initial: 50ms, max: 200ms }} }}\n    replay: 100\n",
        backend.url("/rooms/{room}")
    );
    let mut gws = cluster_of(&redis, &routes, "chanlease", 3).await;
    let mut clients = Vec::new();
    for gw in &gws {
        clients.push(SseReader::open(gw.addr, "/rooms/x", &[]).await);
    }
    backend.wait_open(1).await;
    // Channel y on two of them: one more connection, still one per channel for the cluster.
    let _y = [
        SseReader::open(gws[1].addr, "/rooms/y", &[]).await,
        SseReader::open(gws[2].addr, "/rooms/y", &[]).await,
    ];
    backend.wait_open(2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backend.open.load(Ordering::SeqCst),
        2,
        "one connection per channel"
    );
    backend.send_numbered(1..=3, 8, 3, Duration::ZERO);
    for c in &mut clients {
        assert_eq!(numbers(&read_numbers(c, 3).await), [1, 2, 3]);
    }
    // Channel x's lease names its holder.
    let mut conn = redis.conn().await;
    let holder: String = redis::cmd("GET")
        .arg("chanlease:chan:rooms:1:x:lease")
        .query_async(&mut conn)
        .await
        .expect("channel x has a lease");
    let at = (holder.as_bytes()[5] - b'a') as usize;
    let connections = backend.connections.load(Ordering::SeqCst);
    let killed = Instant::now();
    drop(clients.remove(at));
    drop(gws.remove(at));
    // x's connection (and y's, if the same node held it) moves to a survivor.
    backend.wait_connections(connections + 1).await;
    backend.wait_open(2).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backend.open.load(Ordering::SeqCst),
        2,
        "still one per channel"
    );
    backend.send_numbered(4..=6, 8, 3, Duration::ZERO);
    for c in &mut clients {
        // The survivors' clients stayed connected and go on in order.
        assert_eq!(numbers(&read_numbers(c, 3).await), [4, 5, 6]);
    }
}

/// The hostile pass's finding: every ended SockJS session left its outbox stream in Redis with
/// no TTL (the closing record was appended after the key's expiry was set, and recreated it).
/// Nothing a client can create in Redis may outlive its documented lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sockjs_sessions_leave_no_key_without_a_ttl() {
    const SESSIONS: usize = 40;
    let redis = Redis::start().await;
    let routes = "  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n    clients: [sockjs]\n    sockjs: { disconnect_delay: 200ms }\n";
    let gws = cluster_of(&redis, routes, "sjttl", 2).await;
    for i in 0..SESSIONS {
        let sid = crate::common::sockjs::session_id();
        let (status, body) = sockjs(&gws[i % 2], "POST", &format!("/echo/000/{sid}/xhr"), "").await;
        assert_eq!((status, body.as_str()), (200, "o\n"));
    }
    for gw in &gws {
        gw.wait_metric_is("switchyard_sockjs_sessions_open{route=\"echo\"}", 0.0)
            .await;
    }
    // What the ended sessions queued reaches Redis within moments; then every key must expire.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = redis.conn().await;
    let keys = keys_with_ttls(&mut conn, "sjttl:*").await;
    assert!(
        !keys.is_empty(),
        "the sessions kept records while they lived"
    );
}

/// While Redis is down, an instance that does not hold a session cannot know whether another
/// one does: it answers `503` with `Retry-After` (a long-poll poll, POST and DELETE, a SockJS
/// poll and send) and opens no new session under the id, while the owner goes on serving it.
/// Before, the hostile pass saw `410 Gone` (SockJS: a new session with the same id), which
/// tells a client behind a round-robin balancer that a live session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_non_owner_asks_the_client_to_retry() {
    let mut redis = Redis::start().await;
    let backend = crate::common::chat::ChatBackend::start().await;
    let extra =
        "  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n    clients: [sockjs]\n";
    let routes = format!("{}{extra}", chat_routes(&backend, ""));
    let gws = cluster_of(&redis, &routes, "blind", 2).await;
    let id = open_poll_session(&gws[0]).await;
    let sid = crate::common::sockjs::session_id();
    let at = |t: &str| format!("/echo/000/{sid}/{t}");
    assert_eq!(
        sockjs(&gws[0], "POST", &at("xhr"), "").await,
        (200, "o\n".into())
    );

    redis.stop();
    for (i, gw) in gws.iter().enumerate() {
        let series = format!(
            "switchyard_cluster_up{{node=\"node-{}\"}}",
            (b'a' + i as u8) as char
        );
        gw.wait_metric_is(&series, 0.0).await;
    }
    let poll = format!("/chat?transport=poll&session={id}&cursor=0");
    let r = http_get(gws[1].addr, &poll, &[]).await;
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(post_on(&gws[1], &id, "hello").await, 503);
    let mut c = crate::common::chat::Client::connect(gws[1].addr).await;
    let r = c
        .request(
            "DELETE",
            &format!("/chat?transport=poll&session={id}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 503);
    let (status, _) = sockjs(&gws[1], "POST", &at("xhr"), "").await;
    assert_eq!(status, 503, "no second session under the owner's id");
    let (status, _) = sockjs(&gws[1], "POST", &at("xhr_send"), "[\"x\"]").await;
    assert_eq!(status, 503);
    // The owner still serves both.
    assert_eq!(post_on(&gws[0], &id, "hello").await, 204);
    let (texts, _, _) = poll_on(&gws[0], &id, 0).await;
    assert!(
        texts.len() == 1 && texts[0].ends_with(":hello"),
        "{texts:?}"
    );
    assert_eq!(
        sockjs(&gws[0], "POST", &at("xhr_send"), "[\"x\"]").await.0,
        204
    );
    assert_eq!(
        sockjs(&gws[0], "POST", &at("xhr"), "").await,
        (200, "a[\"x\"]\n".into())
    );
    gws[1]
        .wait_metric(
            "switchyard_rejections_total{reason=\"cluster_unavailable\",route=\"chat\"}",
            3.0,
        )
        .await;
}

/// `cluster.sentinel`: a master, a replica and a Sentinel (`redis-server --sentinel`). The
/// cluster finds the master through the Sentinel; after `SENTINEL FAILOVER` it moves to the new
/// master by itself: no client is disconnected, messages go on in order on every instance, and
/// the cluster is back to one backend connection for the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_without_disconnecting_anyone() {
    use std::process::{Command, Stdio};
    let master = Redis::start().await;
    let replica_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let spawn = |args: Vec<String>| {
        Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _replica = Kill(spawn(
        [
            "--port",
            &replica_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &master.port.to_string(),
            "--dir",
            dir.path().to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    ));
    let sentinel_port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\nsentinel monitor m 127.0.0.1 {} 1\nsentinel down-after-milliseconds m 1000\nsentinel failover-timeout m 4000\n",
            dir.path().display(),
            master.port
        ),
    )
    .unwrap();
    let _sentinel = Kill(spawn(vec![
        conf.to_str().unwrap().to_owned(),
        "--sentinel".into(),
    ]));
    let sentinel_url = format!("redis://127.0.0.1:{sentinel_port}/");
    let ask = |cmd: redis::Cmd| {
        let url = sentinel_url.clone();
        async move {
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            cmd.query_async::<redis::Value>(&mut c).await.ok()
        }
    };
    let master_port = || async {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg("m");
        match ask(cmd).await {
            Some(redis::Value::Array(v)) => match v.get(1) {
                Some(redis::Value::BulkString(p)) => String::from_utf8_lossy(p).parse::<u16>().ok(),
                _ => None,
            },
            _ => None,
        }
    };
    // The Sentinel knows the master and has found its replica.
    let until = Instant::now() + DEADLINE;
    loop {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("replicas").arg("m");
        let replicas = ask(cmd).await;
        let found = matches!(&replicas, Some(redis::Value::Array(v)) if !v.is_empty());
        if master_port().await == Some(master.port) && found {
            break;
        }
        assert!(
            Instant::now() < until,
            "the Sentinel never saw master and replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let backend = FeedBackend::start().await;
    let mut gws = Vec::new();
    for node in ["node-a", "node-b"] {
        let yaml = format!(
            "cluster:\n  sentinel: {{ master: m, addrs: [\"127.0.0.1:{sentinel_port}\"] }}\n  node: \"{node}\"\n  prefix: \"sentinel\"\n  lease_ttl: 1s\n"
        );
        let gw = Gateway::start_with(&feed_routes(&backend), &yaml).await;
        gw.wait_metric(&format!("switchyard_cluster_up{{node=\"{node}\"}}"), 1.0)
            .await;
        gws.push(gw);
    }
    let opened = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(tally(gws[i % 2].addr, opened.clone()).await);
    }
    backend.wait_open(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.send_numbered(1..=3, 16, 3, Duration::ZERO);
    wait_all_have(&clients, &[1, 2, 3]).await;
    holder_of(&gws).await;

    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("failover").arg("m");
    assert!(ask(cmd).await.is_some(), "SENTINEL FAILOVER accepted");
    let until = Instant::now() + DEADLINE * 2;
    while master_port().await != Some(replica_port) {
        assert!(Instant::now() < until, "the failover never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = Instant::now();
    for gw in &gws {
        gw.wait_metric("switchyard_cluster_master_changes_total", 2.0)
            .await;
    }
    for (i, gw) in gws.iter().enumerate() {
        let node = (b'a' + i as u8) as char;
        gw.wait_metric(
            &format!("switchyard_cluster_up{{node=\"node-{node}\"}}"),
            1.0,
        )
        .await;
    }
    let moved = Instant::now();
    // Back to one backend connection for the cluster, within the lease TTL (1 s) and a few
    // ticks of the new master answering.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let held = {
            let mut n = 0;
            for gw in &gws {
                n += usize::from(lease_held(&gw.metrics().await));
            }
            n
        };
        if held == 1 && backend.open.load(Ordering::SeqCst) == 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{held} leases, {} backend connections",
            backend.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "both instances on the new master {:?} after its promotion; one backend connection again {:?} after that",
        moved - promoted,
        moved.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend.send_numbered(4..=6, 16, 3, Duration::ZERO);
    wait_all_have(&clients, &[1, 2, 3, 4, 5, 6]).await;
    assert!(
        clients.iter().all(|c| !c.ended.load(Ordering::SeqCst)),
        "no client was disconnected"
    );
    assert_eq!(opened.load(Ordering::SeqCst), 20, "nobody reconnected");
}

/// An ACL user that may touch only the cluster's own keys (`~PREFIX:*`) and no dangerous
/// command is enough: the cluster joins, shares one backend connection, resumes across
/// instances, and Redis's ACL log shows no denial. A wrong password keeps it in local mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_limited_to_the_prefix_runs_the_cluster() {
    let redis = Redis::start().await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("edge")
        .arg("on")
        .arg(">pa55word")
        .arg("~acl:*")
        .arg("&*")
        .arg("+@all")
        .arg("-@dangerous")
        .query_async(&mut conn)
        .await
        .unwrap();
    let backend = FeedBackend::start().await;
    let url = format!("redis://edge:pa55word@127.0.0.1:{}/0", redis.port);
    let mut gws = Vec::new();
    for node in ["node-a", "node-b"] {
        let yaml = format!(
            "cluster:\n  redis: \"{url}\"\n  node: \"{node}\"\n  prefix: \"acl\"\n  lease_ttl: 1s\n"
        );
        let gw = Gateway::start_with(&feed_routes(&backend), &yaml).await;
        gw.wait_metric(&format!("switchyard_cluster_up{{node=\"{node}\"}}"), 1.0)
            .await;
        gws.push(gw);
    }
    let mut a = SseReader::open(gws[0].addr, "/feed", &[]).await;
    let mut b = SseReader::open(gws[1].addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.send_numbered(1..=3, 16, 3, Duration::ZERO);
    let got = read_numbers(&mut a, 3).await;
    assert_eq!(numbers(&read_numbers(&mut b, 3).await), [1, 2, 3]);
    // Resumed on the other instance from the first one's id: the cluster's stream served it.
    let mut resumed = SseReader::open(
        gws[1].addr,
        "/feed",
        &[("last-event-id", got[0].1.as_str())],
    )
    .await;
    assert_eq!(numbers(&read_numbers(&mut resumed, 2).await), [2, 3]);
    holder_of(&gws).await;
    // Redis logs every command or key its ACL denied.
    let mut denied: Vec<String> = redis::cmd("ACL")
        .arg("LOG")
        .query_async::<Vec<redis::Value>>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|v| format!("{v:?}"))
        .collect();
    denied.truncate(3);
    assert!(denied.is_empty(), "the ACL log has denials: {denied:?}");

    let wrong = format!("redis://edge:wrong@127.0.0.1:{}/0", redis.port);
    let yaml = format!("cluster:\n  redis: \"{wrong}\"\n  node: \"node-c\"\n  prefix: \"acl\"\n");
    let gw = Gateway::start_with(&feed_routes(&backend), &yaml).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.expect_metric("switchyard_cluster_up{node=\"node-c\"}", 0.0)
        .await;
    let log = gw.log();
    assert!(!log.contains("wrong"), "no password in the log:\n{log}");
}

/// `rediss://` against `redis-server --tls-port` with a CA made here, which also asks for a
/// client certificate (`tls-auth-clients yes`): with `cluster.tls` naming the CA and the client
/// certificate the instance joins and serves a clustered feed; without the client certificate,
/// or trusting another CA, it stays in local mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_test_ca_and_a_client_certificate() {
    use crate::common::tls::Pki;
    use std::process::{Command, Stdio};
    let pki = Pki::new();
    let port = free_port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(pki.dir.path())
        .arg("--tls-cert-file")
        .arg(&pki.server_cert)
        .arg("--tls-key-file")
        .arg(&pki.server_key)
        .arg("--tls-ca-cert-file")
        .arg(&pki.ca)
        .args(["--tls-auth-clients", "yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(&mut server);
    assert!(wait_for_port(format!("127.0.0.1:{port}").parse().unwrap(), DEADLINE).await);
    let backend = FeedBackend::start().await;
    let yaml = |node: &str, tls: String| {
        format!(
            "cluster:\n  redis: \"rediss://127.0.0.1:{port}/0\"\n  tls: {{ {tls} }}\n  node: \"{node}\"\n  prefix: \"tls\"\n"
        )
    };
    let (ca, other) = (pki.ca.display(), pki.other_ca.display());
    let client = format!(
        "client_cert: \"{}\", client_key: \"{}\"",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let good = Gateway::start_with(
        &feed_routes(&backend),
        &yaml("node-a", format!("ca: \"{ca}\", {client}")),
    )
    .await;
    good.wait_metric("switchyard_cluster_up{node=\"node-a\"}", 1.0)
        .await;
    let mut sse = SseReader::open(good.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.send_numbered(1..=2, 16, 2, Duration::ZERO);
    assert_eq!(numbers(&read_numbers(&mut sse, 2).await), [1, 2]);
    assert!(
        lease_held(&good.metrics().await),
        "the lease is held through TLS"
    );

    let no_client = Gateway::start_with(
        &feed_routes(&backend),
        &yaml("node-b", format!("ca: \"{ca}\"")),
    )
    .await;
    let wrong_ca = Gateway::start_with(
        &feed_routes(&backend),
        &yaml("node-c", format!("ca: \"{other}\", {client}")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    no_client
        .expect_metric("switchyard_cluster_up{node=\"node-b\"}", 0.0)
        .await;
    wrong_ca
        .expect_metric("switchyard_cluster_up{node=\"node-c\"}", 0.0)
        .await;
    good.expect_metric("switchyard_cluster_up{node=\"node-a\"}", 1.0)
        .await;
}

/// A SockJS receiver on another instance whose attach is still in flight when it goes (here:
/// the owner is paused, so the ask times out and the client is told `c[1002]`) does not hold
/// the session busy: its instance still sends the detach for the attach it named, and the
/// owner, which sees the detach before that attach is done, undoes the attach as interrupted.
/// The next receiver is told what the first one was (`c[1002,"Connection interrupted"]`), not
/// `c[2010,"Another connection still open"]` for as long as the session lives. The owner also
/// reads, after its pause, the commands sent to it meanwhile (its reader never restarts at `$`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sockjs_receiver_dropped_while_its_attach_is_in_flight_does_not_hold_the_session() {
    let redis = Redis::start().await;
    let routes = "  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n    clients: [sockjs]\n    sockjs: { disconnect_delay: 120s }\n";
    let gws = cluster_of(&redis, routes, "inflight", 2).await;
    let (a, b) = (&gws[0], &gws[1]);
    let sid = crate::common::sockjs::session_id();
    let at = |what: &str| format!("/echo/000/{sid}/{what}");
    assert_eq!(sockjs(a, "POST", &at("xhr"), "").await, (200, "o\n".into()));
    // The owner stops; a receiver asks through B, which gives up after its reply deadline
    // (30 s) and tells its client the connection was interrupted.
    a.signal("STOP");
    let asked = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            at("xhr"),
            b.addr
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let r = parse_response(&raw);
        (r.status, r.body_text())
    };
    let asked = tokio::time::timeout(Duration::from_secs(45), asked).await;
    a.signal("CONT");
    let interrupted = (200, "c[1002,\"Connection interrupted\"]\n".to_owned());
    assert_eq!(asked.expect("B answered within its deadline"), interrupted);
    // The owner reads that attach and, after it, its detach (its reader reconnects first: the
    // read in flight during the pause timed out).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sockjs(a, "POST", &at("xhr"), "").await,
        interrupted,
        "the session says what its receiver was told, and is not busy"
    );
}
