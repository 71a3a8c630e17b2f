//! permessage-deflate (RFC 7692) on the WebSockets the gateway terminates, over the wire with
//! raw frames and an independent deflate (flate2): what is negotiated and what is declined,
//! compressed messages both ways (small ones plain), one compression of a feed message for all
//! its subscribers, and a zip bomb refused with 1009 while the gateway's memory stays flat.

use crate::common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The next data frame (pings answered are skipped).
async fn read_data(s: &mut TcpStream) -> (u8, Vec<u8>) {
    loop {
        let f = read_server_frame(s).await;
        if f.0 & 0x0f != 0x9 {
            return f;
        }
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    while (c.total_in() as usize) < data.len() || out.len() == out.capacity() {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        c.compress_vec(
            &data[c.total_in() as usize..],
            &mut out,
            FlushCompress::Sync,
        )
        .unwrap();
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(data.len() * 8 + 1024);
    while (d.total_in() as usize) < input.len() {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        d.decompress_vec(
            &input[d.total_in() as usize..],
            &mut out,
            FlushDecompress::Sync,
        )
        .unwrap();
    }
    out
}

const FULL: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_what_it_can_honour_and_declines_the_rest() {
    let gw = Gateway::start(
        "  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n\
         \x20 - name: plain\n    path: /plain\n    backend: { builtin: echo }\n    compression: off\n",
    )
    .await;
    let cases: [(Option<&str>, &str); 7] = [
        // What Chromium and Firefox offer.
        (Some("permessage-deflate; client_max_window_bits"), FULL),
        (Some("permessage-deflate"), FULL),
        // RFC 7692 section 5.1: an unknown parameter declines the offer; the next is taken.
        (
            Some("permessage-deflate; x=1, permessage-deflate; server_max_window_bits=10"),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10",
        ),
        // A 256-byte window cannot be honoured (zlib has none): declined.
        (Some("permessage-deflate; server_max_window_bits=8"), ""),
        (Some("permessage-deflate; client_no_context_takeover; client_no_context_takeover"), ""),
        (Some("x-webkit-deflate-frame"), ""),
        (None, ""),
    ];
    for (offer, want) in cases {
        let (_s, ext) = ws_open_offering(gw.addr, "/echo", offer).await;
        assert_eq!(ext, want, "offer {offer:?}");
    }
    let (_s, ext) = ws_open_offering(gw.addr, "/plain", Some("permessage-deflate")).await;
    assert_eq!(ext, "", "compression: off answers without the extension");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_compressed_both_ways_and_small_ones_go_plain() {
    let gw =
        Gateway::start("  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n").await;
    let (mut s, ext) = ws_open_offering(
        gw.addr,
        "/echo",
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert_eq!(ext, FULL);
    // A compressed text message (RSV1 on its first frame, split over two frames) comes back
    // compressed, and inflates to what was sent.
    let body = json_quotes(1);
    let c = deflate(body.as_bytes());
    let (a, b) = c.split_at(c.len() / 2);
    s.write_all(&[client_frame(0x41, a), client_frame(0x80, b)].concat())
        .await
        .unwrap();
    let (first, payload) = read_data(&mut s).await;
    assert_eq!(first, 0xC1, "FIN, RSV1, text");
    assert!(
        payload.len() < body.len() / 3,
        "{} of {}",
        payload.len(),
        body.len()
    );
    assert_eq!(inflate(&payload), body.as_bytes());
    // An uncompressed message is fine too; a short one comes back plain (RSV1 clear).
    s.write_all(&client_frame(0x81, b"short")).await.unwrap();
    assert_eq!(read_data(&mut s).await, (0x81, b"short".to_vec()));
    // RSV1 on a control frame is a protocol error (RFC 7692 section 6.1): 1002.
    s.write_all(&client_frame(0xC9, b"")).await.unwrap();
    let (first, payload) = read_data(&mut s).await;
    assert_eq!((first, &payload[..2]), (0x88, &1002u16.to_be_bytes()[..]));
    let m = gw.metrics().await;
    let series = |dir: &str, stage: &str| {
        metric(&m, &format!("switchyard_ws_compression_bytes_total{{direction=\"{dir}\",route=\"echo\",stage=\"{stage}\",transport=\"websocket\"}}"))
            .unwrap_or(0.0)
    };
    // Flushed at the connection's end or each second; the inbound side at once.
    assert_eq!(series("in", "plain"), (body.len() + 5) as f64);
    assert!(series("in", "wire") > 0.0 && series("in", "wire") < series("in", "plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_message_is_compressed_once_for_every_subscriber_that_agreed() {
    let backend = FeedBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\" }}\n",
        backend.url("/")
    ))
    .await;
    let offer = Some("permessage-deflate; client_max_window_bits");
    let (mut a, _) = ws_open_offering(gw.addr, "/feed", offer).await;
    let (mut b, _) = ws_open_offering(gw.addr, "/feed", offer).await;
    let (mut plain, ext) = ws_open_offering(gw.addr, "/feed", None).await;
    assert_eq!(ext, "");
    backend.wait_open(1).await;
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"feed\",transport=\"websocket\"}",
        3.0,
    )
    .await;
    let sent: Vec<String> = (0..20).map(json_quotes).collect();
    backend.send(FeedCmd::Send {
        messages: Arc::new(sent.iter().map(|s| Message::text(s.clone())).collect()),
        batch: 20,
        pause: Duration::ZERO,
    });
    let mut wire_a = Vec::new();
    for want in &sent {
        let (fa, pa) = read_data(&mut a).await;
        let (fb, pb) = read_data(&mut b).await;
        assert_eq!((fa, fb), (0xC1, 0xC1));
        // No context between messages and one compression for all: the same bytes to both.
        assert_eq!(pa, pb);
        assert_eq!(inflate(&pa), want.as_bytes());
        wire_a.push(pa.len());
        assert_eq!(
            read_data(&mut plain).await,
            (0x81, want.as_bytes().to_vec())
        );
    }
    let avg = wire_a.iter().sum::<usize>() / wire_a.len();
    let plain_avg = sent.iter().map(String::len).sum::<usize>() / sent.len();
    assert!(avg * 3 < plain_avg, "compressed {avg} bytes of {plain_avg}");
    drop((a, b));
    let want_plain = 2 * sent.iter().map(String::len).sum::<usize>();
    gw.wait_metric(
        "switchyard_ws_compression_bytes_total{direction=\"out\",route=\"feed\",stage=\"plain\",transport=\"websocket\"}",
        want_plain as f64,
    )
    .await;
}

/// A 1 KiB-class frame that inflates to 64 MiB, on a route whose max_message is 1 MiB: the
/// inflation stops at the limit and the client gets 1009 (RFC 6455 section 7.4.1), fifty
/// times over at once, and the gateway's resident memory does not grow with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bomb_gets_1009_and_the_gateway_memory_stays_flat() {
    let gw = Gateway::start(
        "  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n    limits: { max_message: 1MiB }\n",
    )
    .await;
    let bomb = deflate(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
    let bomb = Arc::new(client_frame(0xC2, &bomb));
    // Warm up (threads, allocator arenas) before measuring.
    let (mut s, _) = ws_open_offering(gw.addr, "/echo", Some("permessage-deflate")).await;
    s.write_all(&client_frame(0x81, b"warm")).await.unwrap();
    read_data(&mut s).await;
    let before = gw.rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, bomb) = (gw.addr, bomb.clone());
        tasks.push(tokio::spawn(async move {
            let (mut s, ext) = ws_open_offering(addr, "/echo", Some("permessage-deflate")).await;
            assert_eq!(ext, FULL);
            s.write_all(&bomb).await.unwrap();
            let (first, payload) = read_data(&mut s).await;
            assert_eq!(first, 0x88, "a close frame");
            u16::from_be_bytes([payload[0], payload[1]])
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1009);
    }
    let after = gw.rss_kib();
    // Fifty bombs of 64 MiB each would be 3.2 GiB inflated; each stops at 1 MiB, and only as
    // many inflate at once as the gateway has threads.
    assert!(
        after < before + 24 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving.
    s.write_all(&client_frame(0x81, b"still here"))
        .await
        .unwrap();
    assert_eq!(read_data(&mut s).await, (0x81, b"still here".to_vec()));
    gw.expect_metric(
        "switchyard_rejections_total{reason=\"ws_protocol\",route=\"echo\"}",
        50.0,
    )
    .await;
}

/// A compressed message is charged to the memory budget while it inflates, not only once it
/// is out: under a 1 MiB budget, a message that inflates to 8 MiB (under `max_message`) is
/// refused with 1013 as its buffer passes the budget (`ws_inflate`), before it is ever whole,
/// and the budget is given back; a message that fits still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflation_is_charged_to_the_memory_budget_while_it_runs() {
    let gw = Gateway::start_with(
        "  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n    limits: { max_message: 16MiB }\n",
        "  limits: { memory: 1MiB }\n",
    )
    .await;
    let big = deflate(&vec![b'a'; 8 << 20]);
    let (mut s, ext) = ws_open_offering(gw.addr, "/echo", Some("permessage-deflate")).await;
    assert_eq!(ext, FULL);
    s.write_all(&client_frame(0xC1, &big)).await.unwrap();
    let (first, payload) = read_data(&mut s).await;
    assert_eq!(first, 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1013);
    gw.expect_metric("switchyard_memory_refusals_total{what=\"ws_inflate\"}", 1.0)
        .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_memory_refusals_total{what=\"ws_message\"}").unwrap_or(0.0),
        0.0,
        "refused while inflating, not once whole"
    );
    // Nothing stays charged, and a message that fits is echoed.
    let (mut s, _) = ws_open_offering(gw.addr, "/echo", Some("permessage-deflate")).await;
    let body = json_quotes(20);
    s.write_all(&client_frame(0xC1, &deflate(body.as_bytes())))
        .await
        .unwrap();
    let (first, payload) = read_data(&mut s).await;
    assert_eq!(first, 0xC1);
    assert_eq!(inflate(&payload), body.as_bytes());
    drop(s);
    gw.expect_metric("switchyard_memory_used_bytes", 0.0).await;
}
