//! switchyard-bench: the load generator and benchmark backend behind `bench/compare.sh`.
//!
//! - `serve`: a WebSocket backend. `/feed` publishes numbered, timestamped messages at `--rate`
//!   to every connection; `/echo` echoes.
//!   With `--grip-listen`, also a GRIP origin for Pushpin: every request is answered with
//!   `Grip-Hold: stream` on channel `test`.
//! - `publish`: the same feed to a publish endpoint: a `ws://` URL as a WebSocket client
//!   (Nchan), an `http://` URL as Pushpin's HTTP publish API (one POST per message, SSE
//!   format, over a kept-alive connection).
//! - `fanout`: N SSE, WebSocket or long-poll subscribers from several 127.0.0.x source
//!   addresses; every client checks what it gets (one feed, in order, no duplicates, no gaps)
//!   and delivery latency is measured from the timestamp in each message. Long-poll speaks
//!   switchyard's protocol (`poll`: `?transport=poll&cursor=N`, JSON batches) or Nchan's
//!   (`nchan-poll`: one message per answer, the next asked for with `If-Modified-Since` and
//!   `If-None-Match`); completed polls per second are reported too.
//! - `echo`: N WebSocket clients doing round trips as fast as they can.
//! - `idle`: N idle clients held open while the server's RSS (`/proc/PID/smaps_rollup`, every
//!   process given) and CPU time are measured; SockJS sessions (held by a streaming receiver)
//!   too.
//!
//! - `soak`: SSE, WebSocket, long-poll, SockJS and tunnel clients against a cluster for as long
//!   as `bench/soak.sh` runs its faults, each checked against the backend's `--seq-log`.
//!
//! Every command prints a table line and, with `--json`, one JSON object.
//!
//! This file is the command line; the work is done in
//! ```text
//! backend.rs    serve (feed and echo backend), the GRIP origin, publish
//! scenarios.rs  fanout, echo, idle: open the clients, settle, measure, report
//! soak.rs       the soak's clients (bench/soak.sh): churn, resume, checked against the log
//! clients.rs    SSE, WebSocket and long-poll subscribers, echo clients
//! stats.rs      latency histogram, verdict and order checks, the report
//! feed.rs       the message format both sides share: `SEQ TS_NS` padded
//! ```

#![forbid(unsafe_code)]

mod backend;
mod clients;
mod feed;
mod scenarios;
mod soak;
mod stats;

use clap::{Parser, Subcommand};
use scenarios::Shape;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(version, about = "switchyard's load generator and benchmark backend")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print the result as one JSON object too.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// WebSocket backend: /feed publishes at --rate, /echo echoes.
    Serve {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Message size in bytes (padded).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// `padded` (the seq and time, then dots) or `json` (quotes as JSON objects, about
        /// `size` bytes: what compression meets in practice).
        #[arg(long, default_value = "padded")]
        payload: feed::Payload,
        /// Also serve a GRIP origin here (for Pushpin).
        #[arg(long)]
        grip_listen: Option<SocketAddr>,
        /// Seqs start from the clock, and every message written to a `/feed` connection is
        /// appended here as `SEQ TS_NS` (the soak's record of what was sent).
        #[arg(long)]
        seq_log: Option<std::path::PathBuf>,
    },
    /// Publish the feed to Nchan's WebSocket publisher (`ws://`) or Pushpin's HTTP API (`http://`).
    Publish {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "padded")]
        payload: feed::Payload,
    },
    /// Subscribers that verify and time every message.
    Fanout {
        #[arg(long)]
        url: String,
        /// sse, ws, ws-deflate (offering permessage-deflate), poll (switchyard's long-poll)
        /// or nchan-poll (Nchan's)
        #[arg(long, default_value = "sse")]
        transport: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds to measure after everyone is connected.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Source addresses 127.0.0.1 .. 127.0.0.N.
        #[arg(long, default_value_t = 4)]
        sources: u8,
        /// The publish rate, to report the expected deliveries.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Clients opened between 20 ms pauses.
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// The server's process ids (comma-separated): its CPU per delivery is reported.
        #[arg(long, default_value = "")]
        pids: String,
    },
    /// Channels: SSE subscribers on many channels, each channel published by HTTP POST.
    Channels {
        /// Subscribers' URL with `{}` where the channel goes: http://127.0.0.1:8080/rooms/{}
        #[arg(long)]
        url: String,
        /// Publish URL with `{}`: http://127.0.0.1:9100/publish/rooms/{}
        #[arg(long)]
        publish: String,
        /// A bearer token for publishes.
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value_t = 1000)]
        channels: usize,
        #[arg(long, default_value_t = 10)]
        per_channel: usize,
        /// Messages per second to each channel.
        #[arg(long, default_value_t = 1)]
        rate: u32,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        sources: u8,
        #[arg(long, default_value_t = 200)]
        batch: usize,
        #[arg(long, default_value = "")]
        pids: String,
    },
    /// Memory per open channel with no subscriber (one message published to each).
    ChannelMemory {
        /// Publish URL with `{}` where the channel goes.
        #[arg(long)]
        publish: String,
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value_t = 10000)]
        channels: usize,
        #[arg(long)]
        pids: String,
    },
    /// WebSocket echo round trips.
    Echo {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// WebSockets opened and held until the server ends them (or `seconds` pass): how each
    /// ended (close code, cut without a close, still open). Signal the server meanwhile to see
    /// how it drains.
    Hold {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The soak's clients: SSE, WebSocket, long-poll, SockJS and tunnels against a cluster,
    /// with churn, each checking its feed against the backend's log (see soak.rs).
    Soak {
        /// The instances' client addresses, comma-separated.
        #[arg(long, value_delimiter = ',')]
        gateways: Vec<SocketAddr>,
        #[arg(long, default_value_t = 3000)]
        sse: usize,
        #[arg(long, default_value_t = 3000)]
        ws: usize,
        #[arg(long, default_value_t = 2000)]
        poll: usize,
        #[arg(long, default_value_t = 1000)]
        sockjs: usize,
        #[arg(long, default_value_t = 1000)]
        tunnels: usize,
        /// Per-client long-poll sessions opened and abandoned per second.
        #[arg(long, default_value_t = 5)]
        sessions_per_sec: u32,
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        /// A client leaves after this many seconds at least ...
        #[arg(long, default_value_t = 30)]
        min_life: u64,
        /// ... and at most, then comes back.
        #[arg(long, default_value_t = 600)]
        max_life: u64,
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// The backend's `--seq-log`.
        #[arg(long)]
        seq_log: std::path::PathBuf,
        /// The driver's fault log (`UNIX_MS redis-down` / `redis-up` lines).
        #[arg(long)]
        events: Option<std::path::PathBuf>,
    },
    /// Idle clients held while the server's memory and CPU are measured.
    Idle {
        #[arg(long)]
        url: String,
        /// sse, ws, ws-deflate, poll, raw (connected, nothing sent), or sockjs-xhr_streaming /
        /// sockjs-eventsource (a SockJS session per client; `url` is the SockJS base)
        #[arg(long, default_value = "sse")]
        transport: String,
        #[arg(long, default_value_t = 10000)]
        clients: usize,
        /// The server's process ids (comma-separated): RSS is summed over them.
        #[arg(long)]
        pids: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        sources: u8,
        /// Clients opened between 20 ms pauses.
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            listen,
            rate,
            size,
            payload,
            grip_listen,
            seq_log,
        } => {
            if let Some(addr) = grip_listen {
                tokio::spawn(backend::grip_origin(addr));
            }
            backend::serve(listen, rate, size, payload, seq_log).await
        }
        Cmd::Publish {
            url,
            rate,
            size,
            payload,
        } => backend::publish(&url, rate, size, payload).await,
        Cmd::Fanout {
            url,
            transport,
            clients,
            seconds,
            sources,
            rate,
            batch,
            pids,
        } => {
            let shape = Shape {
                clients,
                sources,
                batch,
            };
            scenarios::fanout(&url, &transport, shape, seconds, rate, &pids, cli.json).await
        }
        Cmd::Channels {
            url,
            publish,
            token,
            channels,
            per_channel,
            rate,
            size,
            seconds,
            sources,
            batch,
            pids,
        } => {
            let run = scenarios::ChannelRun {
                url: &url,
                publish: &publish,
                publish_headers: bearer(token.as_deref()),
                channels,
                per_channel,
                rate,
                size,
                seconds,
                sources,
                batch,
                pids: &pids,
            };
            scenarios::channels(run, cli.json).await
        }
        Cmd::ChannelMemory {
            publish,
            token,
            channels,
            pids,
        } => {
            let headers = bearer(token.as_deref());
            scenarios::channel_memory(&publish, &headers, channels, &pids, cli.json).await
        }
        Cmd::Echo {
            url,
            clients,
            seconds,
        } => scenarios::echo(&url, clients, seconds, cli.json).await,
        Cmd::Hold {
            url,
            clients,
            seconds,
        } => scenarios::hold(&url, clients, seconds, cli.json).await,
        Cmd::Soak {
            gateways,
            sse,
            ws,
            poll,
            sockjs,
            tunnels,
            sessions_per_sec,
            seconds,
            min_life,
            max_life,
            sources,
            seq_log,
            events,
        } => {
            let run = soak::SoakRun {
                gateways,
                sse,
                ws,
                poll,
                sockjs,
                tunnels,
                sessions_per_sec,
                seconds,
                lifetime: (min_life, max_life),
                sources,
                seq_log,
                events,
            };
            if !soak::soak(run, cli.json).await {
                std::process::exit(1);
            }
        }
        Cmd::Idle {
            url,
            transport,
            clients,
            pids,
            seconds,
            sources,
            batch,
        } => {
            let shape = Shape {
                clients,
                sources,
                batch,
            };
            scenarios::idle(&url, &transport, shape, &pids, seconds, cli.json).await
        }
    }
}

/// An `Authorization: Bearer` header line for publishes, or nothing.
fn bearer(token: Option<&str>) -> String {
    token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"))
}
