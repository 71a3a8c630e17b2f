//! The `switchyard` binary: parse the command line, load and validate `gateway.yaml`, run.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use switchyard::{config, server};

/// Edge gateway that bridges WebSocket, Server-Sent Events and HTTP long-poll, and proxies
/// HTTP and WebSocket straight through.
#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about)]
struct Cli {
    /// Path to gateway.yaml.
    #[arg(short, long, default_value = "gateway.yaml")]
    config: PathBuf,
    /// Check the config, list every error, and exit (0 when valid).
    #[arg(long)]
    validate: bool,
    /// Log level: error, warn, info, debug or trace (RUST_LOG, when set, takes precedence).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Take over the listening sockets of the running instance (send it SIGQUIT) for a
    /// zero-downtime binary upgrade.
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Probe a running gateway instead of starting one: GET http://ADDR/PATH (for example
    /// 127.0.0.1:9100/healthz) and exit 0 on a 200. For container health checks, which have
    /// no curl.
    #[arg(long, value_name = "ADDR/PATH")]
    probe: Option<String>,
}

/// `--probe`: one HTTP/1.0 GET with a 2 s budget; success is a 200.
fn probe(target: &str) -> ExitCode {
    use std::io::{Read, Write};
    let (addr, path) = target.split_once('/').unwrap_or((target, "healthz"));
    let timeout = std::time::Duration::from_secs(2);
    let attempt = || -> std::io::Result<String> {
        let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    match attempt() {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") => {
            ExitCode::SUCCESS
        }
        Ok(answer) => {
            eprintln!("{target}: {}", answer.lines().next().unwrap_or("no answer"));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{target}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(target) = &cli.probe {
        return probe(target);
    }
    // SIGHUP means "reload" here, never "terminate": take it over before anything else, so a
    // reload sent while the server is still starting is harmless; SIGUSR1 (reopen the access
    // log) likewise. (tokio's handlers stay installed for the life of the process; the reload
    // and access log services listen on them later.)
    if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        rt.block_on(async {
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
            // SIGUSR1 reopens the access log; by default it would end the process.
            let _ = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1());
        });
    }
    env_logger::Builder::new()
        .parse_filters(&cli.log_level)
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .init();

    let cfg = match config::load_file(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    if cli.validate {
        println!(
            "{}: ok ({} route{}, {} listener{})",
            cli.config.display(),
            cfg.routes.len(),
            if cfg.routes.len() == 1 { "" } else { "s" },
            cfg.server.listen.len(),
            if cfg.server.listen.len() == 1 {
                ""
            } else {
                "s"
            },
        );
        return ExitCode::SUCCESS;
    }
    let run = server::RunOptions {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        // Absolute, so a reload finds it after --daemon changes the working directory.
        config_path: Some(
            std::fs::canonicalize(&cli.config).unwrap_or_else(|_| cli.config.clone()),
        ),
    };
    match server::build(&cfg, &run) {
        Ok(s) => {
            log::info!(
                "switchyard {} serving {} route(s) on {}",
                env!("CARGO_PKG_VERSION"),
                cfg.routes.len(),
                cfg.server
                    .listen
                    .iter()
                    .map(|l| format!("{}{}", l.addr, if l.tls.is_some() { " (tls)" } else { "" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            s.run_forever()
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
