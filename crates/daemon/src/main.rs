//! tandemd: the tandem IKEv2/IPsec gateway daemon. Runs the sans-IO engine on UDP 500/4500 and serves
//! the control API on a Unix socket.
#![forbid(unsafe_code)]

mod api;
mod dataplane;
mod engine_task;
mod ha;
mod ifaddr;
mod routes;
mod udp;

use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use tandem_config::Config;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "tandemd", version, about = "tandem IKEv2/IPsec gateway daemon")]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "/etc/tandem/tandem.toml")]
    config: PathBuf,
    /// Control API socket (overrides daemon.socket).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Log filter (overrides daemon.log-level), e.g. "info,ike=debug".
    #[arg(long)]
    log_level: Option<String>,
    /// Stay in the foreground (tandemd always does; accepted for compatibility).
    #[arg(long)]
    foreground: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandemd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = cli.log_level.clone().unwrap_or_else(|| config.daemon.log_level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandemd: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let socket = cli.socket.clone().unwrap_or_else(|| config.daemon.socket.clone());
    match rt.block_on(run(config, socket)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("tandemd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, socket: PathBuf) -> Result<(), String> {
    // With the dataplane, UDP 4500 belongs to it (IKE and ESP share the NAT-T port); tandemd's
    // own sockets then serve port 500 only, marked like the dataplane's so they bypass the TUN.
    let (esp, dp_events) = if config.dataplane.enabled {
        let (esp, rx) = dataplane::Esp::start(&config)?;
        (Some(esp), Some(rx))
    } else {
        info!(target: "esp", "ESP dataplane disabled: IKE only");
        (None, None)
    };
    let mark = esp.as_ref().map(|_| routes::FWMARK);
    let sockets = Arc::new(udp::Sockets::bind(&config.daemon, esp.is_none(), mark).await?);
    let listener = api::bind(&socket).await?;
    info!(target: "api", socket = %socket.display(), "control API listening");
    let (engine, handle) = engine_task::EngineTask::new(config, sockets.clone(), esp)?;
    let (dgram_tx, dgram_rx) = tokio::sync::mpsc::channel(4096);
    sockets.spawn_receivers(dgram_tx);
    let api_task = tokio::spawn(api::serve(listener, handle.clone()));
    let engine_join = tokio::spawn(engine.run(dgram_rx, dp_events));
    shutdown_signal(handle.clone()).await;
    let _ = handle.shutdown().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), engine_join).await;
    api_task.abort();
    let _ = std::fs::remove_file(&socket);
    info!("tandemd stopped");
    Ok(())
}

/// Wait for SIGTERM or SIGINT; SIGHUP reloads the configuration.
async fn shutdown_signal(handle: engine_task::Handle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                match handle.reload().await {
                    Ok(d) => info!(?d, "configuration reloaded"),
                    Err(e) => error!("reload refused: {e}"),
                }
            }
        }
    }
}
