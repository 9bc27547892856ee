//! The task that owns the IKE engine: feeds it datagrams, timers and operator commands, and drains
//! its datagrams and events. Nothing else touches the engine.

use crate::dataplane::{Dataplane, RecordOnly};
use crate::udp::{Datagram, Sockets};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tandem_config::{Config, ConfigDiff};
use tandem_ike::{ChildSaInfo, Endpoint, Event, IkeSaId, IkeSaInfo};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub ike_sas: usize,
    pub child_sas: usize,
    pub vpns: Vec<String>,
    pub engine: tandem_ike::endpoint_stats::Stats,
    pub io: serde_json::Value,
}

type Reply<T> = oneshot::Sender<T>;

pub enum Command {
    Status(Reply<Status>),
    IkeSas(Reply<Vec<IkeSaInfo>>),
    ChildSas(Reply<Vec<ChildSaInfo>>),
    Initiate(String, Reply<Result<IkeSaId, String>>),
    TerminateIke(IkeSaId, Reply<Result<(), String>>),
    TerminateVpn(String, Reply<Result<usize, String>>),
    TerminateChild(u32, Reply<Result<(), String>>),
    RekeyIke(IkeSaId, Reply<Result<(), String>>),
    RekeyChild(u32, Reply<Result<(), String>>),
    Reload(Reply<Result<ConfigDiff, String>>),
    Shutdown(Reply<()>),
}

/// Cheap, cloneable access to the engine task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| "engine stopped".to_string())?;
        rx.await.map_err(|_| "engine stopped".to_string())
    }

    pub async fn reload(&self) -> Result<ConfigDiff, String> {
        self.ask(Command::Reload).await?
    }

    pub async fn shutdown(&self) -> Result<(), String> {
        self.ask(Command::Shutdown).await
    }
}

pub struct EngineTask {
    endpoint: Endpoint,
    config: Config,
    sockets: Arc<Sockets>,
    dataplane: Box<dyn Dataplane>,
    commands: mpsc::Receiver<Command>,
    started: Instant,
}

impl EngineTask {
    pub fn new(config: Config, sockets: Arc<Sockets>) -> (EngineTask, Handle) {
        let endpoint = Endpoint::new(config.endpoint_config(), config.peers(), config.psks());
        let (tx, rx) = mpsc::channel(64);
        let task = EngineTask {
            endpoint,
            config,
            sockets,
            dataplane: Box::new(RecordOnly::default()),
            commands: rx,
            started: Instant::now(),
        };
        (task, Handle { tx })
    }

    pub async fn run(mut self, mut datagrams: mpsc::Receiver<Datagram>) {
        self.endpoint.start_configured(Instant::now());
        self.flush().await;
        loop {
            let deadline = self.endpoint.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = datagrams.recv() => {
                    let Some(d) = d else { return };
                    self.endpoint.handle_datagram(Instant::now(), d.local, d.remote, &d.data);
                }
                c = self.commands.recv() => {
                    let Some(c) = c else { return };
                    if self.command(c).await {
                        return;
                    }
                }
                _ = sleep => self.endpoint.handle_timeout(Instant::now()),
            }
            self.flush().await;
        }
    }

    /// Send what the engine produced and apply its events.
    async fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.sockets.send(t.local, t.remote, &t.data).await;
        }
        while let Some(e) = self.endpoint.poll_event() {
            match e {
                Event::ChildSaUp(c) => self.dataplane.install(&c),
                Event::ChildSaDown { spi_in, spi_out, .. } => self.dataplane.remove(spi_in, spi_out),
                Event::IkeSaUp { vpn, ike_sa } => {
                    info!(target: "ike", vpn, sa = format_args!("{ike_sa:#018x}"), "IKE SA up")
                }
                Event::IkeSaDown { vpn, reason, .. } => info!(target: "ike", vpn, ?reason, "IKE SA down"),
                Event::Failure { vpn, message } => warn!(target: "ike", vpn = ?vpn, "{message}"),
            }
        }
    }

    /// Returns true on shutdown.
    async fn command(&mut self, c: Command) -> bool {
        let now = Instant::now();
        let e = |r: Result<(), tandem_ike::EngineError>| r.map_err(|e| e.to_string());
        match c {
            Command::Status(r) => {
                let _ = r.send(self.status());
            }
            Command::IkeSas(r) => {
                let _ = r.send(self.endpoint.ike_sas());
            }
            Command::ChildSas(r) => {
                let _ = r.send(self.endpoint.child_sas());
            }
            Command::Initiate(vpn, r) => {
                let _ = r.send(self.endpoint.initiate(now, &vpn).map_err(|e| e.to_string()));
            }
            Command::TerminateIke(id, r) => {
                let _ = r.send(e(self.endpoint.terminate_ike_sa(now, id)));
            }
            Command::TerminateVpn(vpn, r) => {
                let ids: Vec<IkeSaId> = self
                    .endpoint
                    .ike_sas()
                    .into_iter()
                    .filter(|s| s.vpn.as_deref() == Some(&vpn))
                    .map(|s| s.id)
                    .collect();
                for id in &ids {
                    let _ = self.endpoint.terminate_ike_sa(now, *id);
                }
                let _ = r.send(Ok(ids.len()));
            }
            Command::TerminateChild(spi, r) => {
                let _ = r.send(e(self.endpoint.terminate_child_sa(now, spi)));
            }
            Command::RekeyIke(id, r) => {
                let _ = r.send(e(self.endpoint.rekey_ike_sa(now, id)));
            }
            Command::RekeyChild(spi, r) => {
                let _ = r.send(e(self.endpoint.rekey_child_sa(now, spi)));
            }
            Command::Reload(r) => {
                let _ = r.send(self.reload(now));
            }
            Command::Shutdown(r) => {
                self.shutdown().await;
                let _ = r.send(());
                return true;
            }
        }
        false
    }

    fn reload(&mut self, now: Instant) -> Result<ConfigDiff, String> {
        let path = self.config.path.clone().ok_or("no configuration file")?;
        let new = Config::load(&path).map_err(|e| e.to_string())?;
        let diff = new.diff(&self.config);
        self.endpoint.set_peers(now, new.peers(), new.psks());
        self.config = new;
        info!(?diff, "configuration reloaded");
        Ok(diff)
    }

    /// Best-effort Deletes for established IKE SAs so peers do not wait for DPD.
    async fn shutdown(&mut self) {
        let now = Instant::now();
        for sa in self.endpoint.ike_sas() {
            let _ = self.endpoint.terminate_ike_sa(now, sa.id);
        }
        self.flush().await;
    }

    fn status(&self) -> Status {
        let c = &self.sockets.counters;
        Status {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config.path.clone(),
            listen: self.sockets.local_addrs(),
            ike_sas: self.endpoint.ike_sas().len(),
            child_sas: self.endpoint.child_sas().len(),
            vpns: self.config.peers.iter().map(|p| p.name.clone()).collect(),
            engine: self.endpoint.stats().clone(),
            io: serde_json::to_value(&**c).unwrap_or_default(),
        }
    }
}
