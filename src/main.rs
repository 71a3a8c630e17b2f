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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        config_path: Some(cli.config.clone()),
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
