//! The task that owns the IKE engine: feeds it datagrams, timers and operator commands, and drains
//! its datagrams and events. Nothing else touches the engine.

use crate::dataplane::Esp;
use crate::ha::{Ha, HaStatus};
use crate::udp::{Datagram, Sockets};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tandem_config::{Config, ConfigDiff};
use tandem_dataplane::tandem_esp::Direction;
use tandem_dataplane::tandem_esp::{GlobalStats, SaInfo};
use tandem_dataplane::{CountersSnapshot, DataplaneEvent, EventReceiver};
use tandem_ike::{ChildSaInfo, Endpoint, Event, IkeSaId, IkeSaInfo};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

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
    /// Whether the userspace ESP dataplane runs (`[dataplane] enabled`).
    pub dataplane: bool,
}

/// `GET /v1/ipsec-stat`: the dataplane's global counters.
#[derive(Debug, Clone, Serialize)]
pub struct IpsecStat {
    /// SA pairs installed (each is two rows of `show ipsec-sa`).
    pub sa_pairs: usize,
    /// Sums over the installed SAs (traffic of removed SAs is not included).
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    /// ESP core drops by reason.
    pub esp: GlobalStats,
    /// I/O edge counters (TUN, sockets, trap queue, events).
    pub io: CountersSnapshot,
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
    IpsecSas(Reply<Result<Vec<SaInfo>, String>>),
    IpsecStat(Reply<Result<IpsecStat, String>>),
    /// Delete the SA pair with this SPI (either direction): through IKE for negotiated SAs;
    /// with `local_only`, from the dataplane alone (the peer is not told).
    DeleteIpsecSa {
        spi: u32,
        local_only: bool,
        reply: Reply<Result<(), String>>,
    },
    /// Delete every SA pair; returns how many.
    FlushIpsecSas(Reply<Result<usize, String>>),
    /// `GET /v1/ha`.
    HaStatus(Reply<Result<HaStatus, String>>),
    /// `POST /v1/ha/state`: become active (take over) or stay standby.
    HaSetState(String, Reply<Result<HaStatus, String>>),
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
    esp: Option<Esp>,
    commands: mpsc::Receiver<Command>,
    started: Instant,
    /// HA: the sync link and the role (`[ha]`).
    ha: Option<Ha>,
}

impl EngineTask {
    /// `esp`: the started dataplane, or `None` when `[dataplane] enabled = false`.
    pub fn new(
        config: Config,
        sockets: Arc<Sockets>,
        esp: Option<Esp>,
    ) -> Result<(EngineTask, Handle), String> {
        let mut endpoint = Endpoint::new(config.endpoint_config(), peers_for(&config), config.psks());
        let ha = Ha::start(&config, &mut endpoint)?;
        let (tx, rx) = mpsc::channel(64);
        let mut task =
            EngineTask { endpoint, config, sockets, esp, commands: rx, started: Instant::now(), ha };
        if let Some(esp) = &mut task.esp {
            esp.configure(&task.config, &mut task.endpoint);
        }
        Ok((task, Handle { tx }))
    }

    pub async fn run(
        mut self,
        mut datagrams: mpsc::Receiver<Datagram>,
        mut dp_events: Option<EventReceiver>,
    ) {
        // Trap policies' routes are in place before anything is initiated or served.
        if let Some(esp) = &self.esp {
            esp.routes_settled().await;
        }
        self.endpoint.start_configured(Instant::now());
        self.flush().await;
        let mut ha_rx = self.ha.as_mut().and_then(|h| h.take_rx());
        // The HA tick (leases, replay windows, handovers), paced by `Ha::tick_period`.
        let mut next_ha_tick = tokio::time::Instant::now();
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
                ev = recv_opt(&mut dp_events) => {
                    match ev {
                        Some(ev) => self.dataplane_event(ev),
                        None => dp_events = None,
                    }
                }
                _ = sleep => self.endpoint.handle_timeout(Instant::now()),
                ev = async {
                    match ha_rx.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match ev {
                        Some(ev) => {
                            if let Some(ha) = self.ha.as_mut() {
                                let r = ha.link_event(Instant::now(), ev, &mut self.endpoint, self.esp.as_ref());
                                self.apply_released(r).await;
                                self.route_mirrored();
                            }
                        }
                        None => ha_rx = None,
                    }
                }
                _ = tokio::time::sleep_until(next_ha_tick), if self.ha.as_ref().is_some_and(|h| h.ticking()) => {
                    if let Some(ha) = self.ha.as_mut() {
                        let now = Instant::now();
                        let r = ha.lease_tick(now, &mut self.endpoint, self.esp.as_ref());
                        next_ha_tick = (now + ha.tick_period()).into();
                        self.apply_released(r).await;
                    }
                }
            }
            self.apply_renumbered_reqids();
            self.flush().await;
            if let Some(d) = self.ha.as_ref().and_then(|h| h.tick_deadline(Instant::now())) {
                next_ha_tick = next_ha_tick.min(d.into());
            }
        }
    }

    /// HA standby: mirroring gave CHILD SA configurations the active node's reqids
    /// (`Endpoint::take_reqids_renumbered`): the dataplane's policies, trap routes and route-based
    /// interfaces are applied again under the new numbers, so that after a takeover they match the
    /// mirrored CHILD SAs. Put off while a bulk transfer comes in (one pass at its end, not one per
    /// SA); a takeover ends the bulk, so it never runs with the old numbers.
    fn apply_renumbered_reqids(&mut self) {
        if self.ha.as_ref().is_some_and(|h| h.receiving_bulk()) || !self.endpoint.take_reqids_renumbered() {
            return;
        }
        if let Some(esp) = &mut self.esp {
            info!(target: "ha", "CHILD SA configurations renumbered as the active node numbers them: policies applied again");
            esp.configure(&self.config, &mut self.endpoint);
        }
    }

    /// What the HA sync released: held datagrams to send, lease ceilings to raise, CHILD SAs to
    /// rekey because their lease cannot grow without the standby.
    async fn apply_released(&mut self, r: tandem_ha::Released<tandem_ike::Transmit>) {
        for (spi_in, ceiling) in r.ceilings {
            if let Some(esp) = &self.esp {
                esp.handle().set_ceiling(spi_in, ceiling);
            }
        }
        for spi_in in r.rekeys {
            info!(target: "ha", spi_in = format_args!("{spi_in:#010x}"), "rekeying: its sequence-number lease cannot grow without the standby");
            let _ = self.endpoint.rekey_child_sa(Instant::now(), spi_in);
        }
        for t in r.datagrams {
            self.send_transmit(t).await;
        }
    }

    // `&mut self`, not `&self`: the future must stay `Send` (the engine is not `Sync`).
    async fn send_transmit(&mut self, t: tandem_ike::Transmit) {
        if let Some(esp) = self.esp.as_ref().filter(|e| t.local.port() == e.natt_port()) {
            // The dataplane owns the NAT-T sockets (IKE and ESP share them, RFC 3948).
            if let Err(e) = esp.handle().send_ike(t.local, t.remote, &t.data) {
                debug!(target: "io", remote = %t.remote, "send: {e}");
            }
            return;
        }
        let sockets = self.sockets.clone();
        sockets.send(t.local, t.remote, &t.data).await;
    }

    /// What the dataplane reports: IKE on the NAT-T port, traffic for trap policies, unknown
    /// SPIs, volume lifetimes.
    fn dataplane_event(&mut self, ev: DataplaneEvent) {
        let now = Instant::now();
        match ev {
            DataplaneEvent::IkeDatagram { local, remote, data } => {
                self.endpoint.handle_datagram(now, local, remote, &data)
            }
            DataplaneEvent::Acquire { reqid, packet } => {
                let trap = self.esp.as_ref().and_then(|e| e.trap_of(reqid)).cloned();
                if let Some((vpn, child)) = trap {
                    info!(target: "esp", vpn, child, ?packet, "traffic for a trap policy: initiating");
                    self.endpoint.acquire(now, &vpn, &child);
                }
            }
            DataplaneEvent::InvalidSpi { spi, remote } => {
                // Reported before an install that has happened since (an HA standby that took over,
                // or a packet that raced the install): the SA is here now; telling the peer it is
                // invalid would make it delete a working SA.
                if self.esp.as_ref().is_some_and(|e| e.handle().sad().get_inbound(spi).is_some()) {
                    debug!(target: "esp", spi = format_args!("{spi:#010x}"), "stale unknown-SPI report: the SA is installed now");
                    return;
                }
                info!(target: "esp", spi = format_args!("{spi:#010x}"), %remote, "ESP for an unknown SPI");
                self.endpoint.report_invalid_spi(now, remote, spi);
            }
            DataplaneEvent::SoftLimit { spi_in, .. } => {
                if let Err(e) = self.endpoint.rekey_child_sa(now, spi_in) {
                    info!(target: "esp", spi_in = format_args!("{spi_in:#010x}"), "soft volume limit: {e}");
                }
            }
            DataplaneEvent::HardLimit { spi_in, .. } => {
                let _ = self.endpoint.terminate_child_sa(now, spi_in);
            }
        }
    }

    /// HA standby: route the CHILD SAs of the IKE SAs whose mirror changed (`Esp::mirror_routes`).
    fn route_mirrored(&mut self) {
        let (Some(ha), Some(esp)) = (self.ha.as_mut(), self.esp.as_mut()) else { return };
        for id in ha.take_mirror_changes() {
            esp.mirror_routes(id, &self.endpoint.mirrored_routes(id));
        }
    }

    /// Apply what the engine decided, then send what it produced: the state behind a datagram
    /// must be in place before the datagram leaves. A CHILD SA's inbound half is installed before
    /// our CREATE_CHILD_SA response (the initiator sends on it as soon as it has the response) and
    /// before our Delete of the SA it replaces (the peer switches to it on that Delete); sending
    /// first lost the packets that raced the install (issue 9, a ping lost per ~10 rekeys).
    async fn flush(&mut self) {
        // HA write-ahead: the standby learns of the changes before their datagrams leave.
        if let Some(ha) = self.ha.as_mut() {
            ha.observe();
        }
        // HA: the CHILD SAs of one flush (a takeover's thousands) go to the dataplane as one
        // batch, installed before any later event that acts on the dataplane is applied.
        let mut resumed = Vec::new();
        while let Some(e) = self.endpoint.poll_event() {
            let e = match (e, self.ha.as_mut()) {
                (Event::ChildSaUp(c), Some(ha)) if self.esp.is_some() => {
                    let r = ha.installing(&c, &self.endpoint);
                    resumed.push((*c, r));
                    continue;
                }
                (e, _) => e,
            };
            // What acts on the dataplane waits for the batch before it (an SA removed or moved
            // on after its install); log-only events do not end a batch.
            if let (Event::ChildSaDown { .. } | Event::OutboundSeqAdvance { .. }, Some(esp)) =
                (&e, self.esp.as_mut())
            {
                esp.install_resumed(&std::mem::take(&mut resumed));
            }
            match e {
                Event::ChildSaUp(c) => match &mut self.esp {
                    Some(esp) => esp.install(&c),
                    None => info!(target: "esp", vpn = %c.vpn, spi_in = format_args!("{:#010x}", c.spi_in),
                                  "CHILD SA up (dataplane disabled: not installed)"),
                },
                Event::ChildSaDown { reqid, spi_in, reason, .. } => {
                    if let Some(esp) = &mut self.esp {
                        esp.remove(reqid, spi_in, &reason);
                    }
                    if let Some(ha) = self.ha.as_mut() {
                        ha.removed(spi_in);
                    }
                }
                Event::IkeSaUp { vpn, ike_sa } => {
                    info!(target: "ike", vpn, sa = format_args!("{ike_sa:#018x}"), "IKE SA up")
                }
                Event::IkeSaDown { vpn, reason, .. } => info!(target: "ike", vpn, ?reason, "IKE SA down"),
                Event::Failure { vpn, message } => warn!(target: "ike", vpn = ?vpn, "{message}"),
                Event::OutboundSeqAdvance { spi_in, spi_out, delta, .. } => {
                    let next = self.esp.as_ref().and_then(|e| e.handle().skip_seq(spi_in, delta));
                    info!(target: "esp", spi_out = format_args!("{spi_out:#010x}"), delta, ?next,
                          "outbound sequence numbers moved on for the peer's replay counter sync");
                }
            }
        }
        if let Some(esp) = self.esp.as_mut() {
            esp.install_resumed(&resumed);
            if self.ha.as_ref().is_some_and(|h| h.is_active()) {
                esp.mirror_routes_taken_over();
            }
        }
        let now = Instant::now();
        while let Some(t) = self.endpoint.poll_transmit() {
            let t = match self.ha.as_mut() {
                Some(ha) => ha.gate(now, t),
                None => Some(t),
            };
            if let Some(t) = t {
                self.send_transmit(t).await;
            }
        }
        if let Some(ha) = self.ha.as_mut() {
            ha.send_queued();
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
            Command::IpsecSas(r) => {
                let _ = r.send(self.esp().map(|e| e.handle().list_sas()));
            }
            Command::IpsecStat(r) => {
                let _ = r.send(self.esp().map(ipsec_stat));
            }
            Command::DeleteIpsecSa { spi, local_only, reply } => {
                let _ = reply.send(self.delete_ipsec_sa(now, spi, local_only));
            }
            Command::FlushIpsecSas(r) => {
                let _ = r.send(self.flush_ipsec_sas(now));
            }
            Command::HaStatus(r) => {
                let _ = r.send(self.ha_status());
            }
            Command::HaSetState(state, r) => {
                let _ = r.send(self.ha_set_state(now, &state));
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
        if new.dataplane != self.config.dataplane {
            warn!("[dataplane] changes take effect at the next start of tandemd");
        }
        self.endpoint.set_peers(now, peers_for(&new), new.psks());
        self.config = new;
        if let Some(ha) = &mut self.ha {
            ha.config_changed(&self.config);
        }
        if let Some(esp) = &mut self.esp {
            esp.configure(&self.config, &mut self.endpoint);
        }
        info!(?diff, "configuration reloaded");
        Ok(diff)
    }

    fn ha_status(&self) -> Result<HaStatus, String> {
        self.ha
            .as_ref()
            .map(|h| h.status(&self.endpoint))
            .ok_or_else(|| "no [ha] section: not clustered".into())
    }

    fn ha_set_state(&mut self, now: Instant, state: &str) -> Result<HaStatus, String> {
        let ha = self.ha.as_mut().ok_or("no [ha] section: not clustered")?;
        match state {
            "active" | "master" => {
                if let Some(t) = ha.take_over(now, &mut self.endpoint) {
                    info!(target: "ha", ?t, "now active");
                }
            }
            "standby" | "backup" => {
                if ha.step_down(&mut self.endpoint, self.esp.as_ref()) {
                    warn!(target: "ha", "now standby: the other node runs the SAs");
                }
            }
            "switchover" => ha.switchover(now, &mut self.endpoint, self.esp.as_ref())?,
            "fault" => warn!(target: "ha", "keepalived reports FAULT"),
            other => return Err(format!("unknown HA state {other:?} (active, standby, switchover)")),
        }
        self.ha_status()
    }

    /// Best-effort Deletes for established IKE SAs so peers do not wait for DPD. A clustered node
    /// sends none: the other node carries on with these SAs.
    async fn shutdown(&mut self) {
        let now = Instant::now();
        if self.ha.is_none() {
            for sa in self.endpoint.ike_sas() {
                let _ = self.endpoint.terminate_ike_sa(now, sa.id);
            }
        }
        self.flush().await;
        if let Some(esp) = &mut self.esp {
            esp.shutdown().await;
        }
    }

    fn esp(&self) -> Result<&Esp, String> {
        self.esp.as_ref().ok_or_else(dataplane_disabled)
    }

    fn esp_mut(&mut self) -> Result<&mut Esp, String> {
        self.esp.as_mut().ok_or_else(dataplane_disabled)
    }

    /// `delete ipsec-sa --spi`: a negotiated CHILD SA is deleted through IKE (the peer is told,
    /// and start/trap policies bring it back); a manual one is removed until the next reload.
    /// `local_only` removes a negotiated SA from the dataplane alone: the peer's next packet on it
    /// then gets an INVALID_SPI notify, which makes the peer delete and re-create it.
    fn delete_ipsec_sa(&mut self, now: Instant, spi: u32, local_only: bool) -> Result<(), String> {
        self.esp()?;
        let child = self.endpoint.child_sas().into_iter().find(|c| c.spi_in == spi || c.spi_out == spi);
        if let Some(c) = child {
            if local_only {
                self.esp_mut()?.handle().remove_sa(c.spi_in);
                info!(target: "esp", spi_in = format_args!("{:#010x}", c.spi_in), "SA removed from the dataplane only");
                return Ok(());
            }
            return self.endpoint.terminate_child_sa(now, c.spi_in).map_err(|e| e.to_string());
        }
        let esp = self.esp_mut()?;
        if esp.remove_manual(spi) || esp.handle().remove_sa(spi) {
            return Ok(());
        }
        Err(format!("no IPsec SA with SPI {spi:#010x}"))
    }

    fn flush_ipsec_sas(&mut self, now: Instant) -> Result<usize, String> {
        self.esp()?;
        let children = self.endpoint.child_sas();
        for c in &children {
            let _ = self.endpoint.terminate_child_sa(now, c.spi_in);
        }
        let esp = self.esp_mut()?;
        let manual = esp.flush_manual();
        // Whatever is left (e.g. a rekeyed SA lingering for packets in flight).
        let rest = esp.handle().flush_sas();
        info!(target: "esp", children = children.len(), manual, rest, "IPsec SAs flushed by the operator");
        Ok(children.len() + manual)
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
            dataplane: self.esp.is_some(),
        }
    }
}

fn ipsec_stat(esp: &Esp) -> IpsecStat {
    let h = esp.handle();
    let sas = h.list_sas();
    let sum = |d: Direction, f: fn(&SaInfo) -> u64| sas.iter().filter(|s| s.direction == d).map(f).sum();
    IpsecStat {
        sa_pairs: sas.iter().filter(|s| s.direction == Direction::In).count(),
        in_packets: sum(Direction::In, |s| s.counters.packets),
        in_bytes: sum(Direction::In, |s| s.counters.bytes),
        out_packets: sum(Direction::Out, |s| s.counters.packets),
        out_bytes: sum(Direction::Out, |s| s.counters.bytes),
        esp: h.esp_stats(),
        io: h.counters(),
    }
}

/// Without raw ESP sockets every peer must be UDP-encapsulated.
fn peers_for(config: &Config) -> Vec<tandem_ike::PeerConfig> {
    let mut peers = config.peers();
    if config.dataplane.enabled && !config.dataplane.raw_esp {
        for p in &mut peers {
            p.force_encap = true;
        }
    }
    peers
}

/// Receive from the dataplane, if there is one (pending forever when there is none).
async fn recv_opt(rx: &mut Option<EventReceiver>) -> Option<DataplaneEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn dataplane_disabled() -> String {
    "the ESP dataplane is disabled ([dataplane] enabled = false)".into()
}
