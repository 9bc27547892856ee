//! tandemctl: operate a running tandemd through its control API.
#![forbid(unsafe_code)]

mod client;
mod ha_status;
mod ipsec_tables;
mod tables;

use clap::{Parser, Subcommand};
use client::{request, ClientError};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "tandemctl", version, about = "Control a running tandemd")]
struct Cli {
    /// tandemd's control socket.
    #[arg(long, global = true, default_value = "/run/tandem/tandemd.sock")]
    socket: PathBuf,
    /// Print raw JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Daemon status and counters.
    Status,
    /// Show SAs.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Bring up a vpn.
    Initiate {
        vpn: String,
        /// Wait up to this many seconds for the IKE SA to be established.
        #[arg(long)]
        wait: Option<f64>,
    },
    /// Delete SAs.
    Terminate {
        #[command(subcommand)]
        what: Target,
    },
    /// Rekey SAs.
    Rekey {
        #[command(subcommand)]
        what: Target,
    },
    /// Delete one IPsec SA pair by SPI (either direction): negotiated ones through IKE.
    Delete {
        #[command(subcommand)]
        what: DeleteTarget,
    },
    /// Delete every IPsec SA.
    Flush {
        #[command(subcommand)]
        what: FlushTarget,
    },
    /// Re-read the configuration file.
    Reload,
    /// High availability (active/standby cluster).
    Ha {
        #[command(subcommand)]
        what: HaCmd,
    },
}

#[derive(Subcommand)]
enum HaCmd {
    /// Role, sync link, mirrored SAs, lag and counters.
    Status,
    /// Become active (take over every mirrored SA), or stay standby. Also what the keepalived
    /// notify hook calls: master, backup and fault are accepted.
    #[command(name = "set-state")]
    SetState { state: String },
    /// Planned switchover, on the active node: the standby (in sync) takes every SA over at
    /// once, with exact replay windows; this node keeps forwarding until the addresses move
    /// (stop its keepalived, or `set-state standby`) and then becomes standby.
    Switchover,
    /// Write this node's sync-link key pair (PEM, mode 0600) and print its pin for the other
    /// node's `peer-pin`.
    Keygen {
        /// Where to write the key file (`[ha] key-file`).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeleteTarget {
    /// The SA pair with this SPI (hex 0x... or decimal).
    #[command(name = "ipsec-sa")]
    IpsecSa {
        #[arg(long)]
        spi: String,
        /// Remove it from the dataplane only, without telling the peer (its next packet then
        /// draws an INVALID_SPI notify and the peer re-creates the SA).
        #[arg(long)]
        local_only: bool,
    },
}

#[derive(Subcommand)]
enum FlushTarget {
    /// Every IPsec SA (negotiated ones are deleted through IKE; manual ones return on reload).
    #[command(name = "ipsec-sa")]
    IpsecSa,
}

#[derive(Subcommand)]
enum Show {
    /// IKE SAs (the `show ike-sa` table).
    #[command(name = "ike-sa")]
    IkeSa,
    /// CHILD SAs.
    #[command(name = "child-sa")]
    ChildSa,
    /// IPsec SAs in the dataplane, one row per direction.
    #[command(name = "ipsec-sa")]
    IpsecSa {
        /// Every property of each SA (counters, lifetimes, replay window...).
        #[arg(long)]
        all_properties: bool,
    },
    /// Dataplane statistics: totals and drops by reason.
    #[command(name = "ipsec-stat")]
    IpsecStat,
}

#[derive(Subcommand)]
enum Target {
    /// An IKE SA by id (hex SPI), or all IKE SAs of a vpn with --vpn.
    #[command(name = "ike-sa")]
    IkeSa {
        id: Option<String>,
        #[arg(long)]
        vpn: Option<String>,
    },
    /// A CHILD SA by either SPI (hex 0x... or decimal).
    #[command(name = "child-sa")]
    ChildSa { spi: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (method, path, timeout) = match &cli.cmd {
        Cmd::Status => ("GET", "/v1/status".to_string(), 10.0),
        Cmd::Show { what: Show::IkeSa } => ("GET", "/v1/ike-sas".into(), 10.0),
        Cmd::Show { what: Show::ChildSa } => ("GET", "/v1/child-sas".into(), 10.0),
        Cmd::Show { what: Show::IpsecSa { .. } } => ("GET", "/v1/ipsec-sas".into(), 10.0),
        Cmd::Show { what: Show::IpsecStat } => ("GET", "/v1/ipsec-stat".into(), 10.0),
        Cmd::Delete { what: DeleteTarget::IpsecSa { spi, local_only } } => {
            let q = if *local_only { "?local=true" } else { "" };
            ("DELETE", format!("/v1/ipsec-sas/{spi}{q}"), 10.0)
        }
        Cmd::Flush { what: FlushTarget::IpsecSa } => ("DELETE", "/v1/ipsec-sas".into(), 10.0),
        Cmd::Initiate { vpn, wait } => {
            let q = wait.map(|w| format!("?wait={w}")).unwrap_or_default();
            ("POST", format!("/v1/vpns/{vpn}/initiate{q}"), wait.unwrap_or(0.0) + 10.0)
        }
        Cmd::Terminate { what: Target::IkeSa { vpn: Some(v), .. } } => {
            ("DELETE", format!("/v1/ike-sas?vpn={v}"), 10.0)
        }
        Cmd::Terminate { what: Target::IkeSa { id: Some(id), .. } } => {
            ("DELETE", format!("/v1/ike-sas/{id}"), 10.0)
        }
        Cmd::Terminate { what: Target::ChildSa { spi } } => ("DELETE", format!("/v1/child-sas/{spi}"), 10.0),
        Cmd::Rekey { what: Target::IkeSa { id: Some(id), .. } } => {
            ("POST", format!("/v1/ike-sas/{id}/rekey"), 10.0)
        }
        Cmd::Rekey { what: Target::ChildSa { spi } } => ("POST", format!("/v1/child-sas/{spi}/rekey"), 10.0),
        Cmd::Terminate { what: Target::IkeSa { .. } } | Cmd::Rekey { what: Target::IkeSa { .. } } => {
            eprintln!("tandemctl: give an IKE SA id or --vpn NAME");
            return ExitCode::from(2);
        }
        Cmd::Reload => ("POST", "/v1/reload".into(), 30.0),
        Cmd::Ha { what: HaCmd::Status } => ("GET", "/v1/ha".into(), 10.0),
        Cmd::Ha { what: HaCmd::SetState { state } } => ("POST", format!("/v1/ha/state?state={state}"), 10.0),
        Cmd::Ha { what: HaCmd::Switchover } => ("POST", "/v1/ha/state?state=switchover".into(), 10.0),
        Cmd::Ha { what: HaCmd::Keygen { out } } => return keygen(out),
    };
    match request(&cli.socket, method, &path, Duration::from_secs_f64(timeout)) {
        Ok(v) => {
            print(&cli, &v);
            ExitCode::SUCCESS
        }
        Err(ClientError::Unreachable(e)) => {
            eprintln!("tandemctl: cannot reach tandemd at {}: is it running? ({e})", cli.socket.display());
            ExitCode::from(3)
        }
        Err(ClientError::Api(code, msg)) => {
            eprintln!("tandemctl: {msg} (HTTP {code})");
            ExitCode::from(1)
        }
        Err(ClientError::Protocol(e)) => {
            eprintln!("tandemctl: bad answer from tandemd: {e}");
            ExitCode::from(1)
        }
    }
}

/// `tandemctl ha keygen`: local, no daemon needed.
fn keygen(out: &std::path::Path) -> ExitCode {
    if out.exists() {
        eprintln!("tandemctl: {} exists: not overwriting a node key", out.display());
        return ExitCode::from(1);
    }
    match tandem_ha_link::keygen().and_then(|k| k.write_pem_file(out).map(|()| k.pin())) {
        Ok(pin) => {
            println!("{pin}");
            eprintln!("wrote {}; put the line above in the other node's [ha] peer-pin", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandemctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn print(cli: &Cli, v: &Value) {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match &cli.cmd {
        Cmd::Show { what: Show::IkeSa } => print!("{}", tables::ike_sa_table(v)),
        Cmd::Show { what: Show::ChildSa } => print!("{}", tables::child_sa_table(v)),
        Cmd::Show { what: Show::IpsecSa { all_properties: false } } => {
            print!("{}", ipsec_tables::ipsec_sa_table(v))
        }
        Cmd::Show { what: Show::IpsecSa { all_properties: true } } => {
            print!("{}", ipsec_tables::ipsec_sa_properties(v))
        }
        Cmd::Show { what: Show::IpsecStat } => print!("{}", ipsec_tables::ipsec_stat(v)),
        Cmd::Ha { what: HaCmd::Status | HaCmd::SetState { .. } | HaCmd::Switchover } => {
            print!("{}", ha_status::ha_status(v))
        }
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}
