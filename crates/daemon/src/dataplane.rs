//! The seam between the IKE engine and the userspace ESP dataplane (`tandem-dataplane`): CHILD SA
//! installs and removals from the engine, the security policies and route-based interfaces of the
//! configuration, manual keyed SAs, and the routes that steer protected traffic into the TUN.
//! The engine task owns the one `Esp`; nothing else changes the SAD or the SPD.

use crate::routes::{Routes, FWMARK};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use tandem_config::{Config, ManualSa, Workers};
use tandem_dataplane::tandem_esp::lifetime::LifetimeLimits;
use tandem_dataplane::tandem_esp::sa::{ChildSaSpec, KeyMaterial, Mode};
use tandem_dataplane::tandem_esp::spd::{Policy, PolicyAction};
use tandem_dataplane::{DataplaneConfig, DataplaneHandle, EventReceiver, TunConfig, WorkerLayout};
use tandem_ike::config::{DeadPeerAction, IpsecMode, StartAction};
use tandem_ike::{ChildSaInstall, DownReason, Endpoint, MirroredRoute};
use tandem_wire::TrafficSelector;
use tracing::{info, warn};

/// reqids of manual SAs start here, far from the engine's (which count up from 1).
const MANUAL_REQID_BASE: u32 = 0x4000_0000;
/// Priority of configured protect policies (room for operator bypass/discard policies before).
const POLICY_PRIORITY: u32 = 1000;
/// Priority of the policies of installed CHILD SAs (their negotiated selectors, which may differ
/// from the configured ones: transport mode across a NAT). Looked at before the configured ones.
const SA_POLICY_PRIORITY: u32 = 900;

/// A manual SA as installed, with what is needed to notice a change on reload.
struct InstalledManual {
    name: String,
    spi_in: u32,
    spi_out: u32,
    reqid: u32,
    fingerprint: Vec<u8>,
}

pub struct Esp {
    handle: Arc<DataplaneHandle>,
    routes: Routes,
    tun_name: String,
    tun_template: TunConfig,
    natt_port: u16,
    /// reqid -> (vpn, child) of trap policies: an Acquire for them makes the engine initiate.
    traps: HashMap<u32, (String, String)>,
    /// reqid -> the route-based interface serving it.
    interface_of: HashMap<u32, String>,
    /// Policy ids we added (to replace them on reload).
    policies: HashSet<u32>,
    /// Inbound SPIs of installed IKE CHILD SAs, by reqid (routes go when the last one does).
    live: HashMap<u32, HashSet<u32>>,
    /// HA standby: the mirrored CHILD SAs (reqid, inbound SPI) of each mirrored IKE SA, and
    /// their inbound SPIs by reqid. Their selectors are routed into the TUN already, so that a
    /// takeover does not wait for netlink before its first packet (at 1,000 tunnels the routes
    /// took 35-65 ms of the takeover); until then nothing seals (no SA is installed), so traffic
    /// that reaches the standby is dropped in the dataplane instead of leaving in the clear.
    /// `standby_live` keeps, per inbound SPI, the IKE SA that routed it last: a CHILD SA that
    /// moved to another IKE SA (a resync after an IKE rekey) stays routed whichever of the two
    /// is updated first.
    standby_of: HashMap<u64, Vec<(u32, u32)>>,
    standby_live: HashMap<u32, HashMap<u32, u64>>,
    manual: Vec<InstalledManual>,
}

fn fingerprint(m: &ManualSa) -> Vec<u8> {
    let mut f = format!("{m:?}").into_bytes();
    for k in [&m.keys_in.encr, &m.keys_in.integ, &m.keys_out.encr, &m.keys_out.integ] {
        f.extend_from_slice(k);
    }
    f
}

fn manual_spec(m: &ManualSa, reqid: u32, local: SocketAddr, remote: SocketAddr) -> ChildSaSpec {
    ChildSaSpec {
        name: format!("manual/{}", m.name),
        reqid,
        spi_in: m.spi_in,
        spi_out: m.spi_out,
        encr: m.encr,
        integ: m.integ,
        esn: m.esn,
        mode: match m.mode {
            IpsecMode::Tunnel => Mode::Tunnel,
            IpsecMode::Transport => Mode::Transport,
        },
        local,
        remote,
        udp_encap: m.encap,
        replay_window: m.replay_window,
        lifetime: LifetimeLimits::default(),
        local_ts: m.local_ts.clone(),
        remote_ts: m.remote_ts.clone(),
        keys_in: KeyMaterial { encr: m.keys_in.encr.clone(), integ: m.keys_in.integ.clone() },
        keys_out: KeyMaterial { encr: m.keys_out.encr.clone(), integ: m.keys_out.integ.clone() },
        replaces_spi_in: None,
        defer_outbound: false,
        iv_key: None,
    }
}

fn protect(id: u32, local_ts: &[TrafficSelector], remote_ts: &[TrafficSelector]) -> Policy {
    Policy {
        id,
        priority: POLICY_PRIORITY,
        local_ts: local_ts.to_vec(),
        remote_ts: remote_ts.to_vec(),
        action: PolicyAction::Protect { reqid: id },
    }
}

/// The policy of one installed CHILD SA, keyed by its inbound SPI.
fn sa_policy(sa: &ChildSaInstall) -> Policy {
    Policy {
        id: sa.spi_in,
        priority: SA_POLICY_PRIORITY,
        local_ts: sa.local_ts.clone(),
        remote_ts: sa.remote_ts.clone(),
        action: PolicyAction::Protect { reqid: sa.reqid },
    }
}

impl Esp {
    /// Create the TUN, bind UDP `natt-port` on the listen addresses and the raw ESP sockets, start
    /// the workers, install the policy-routing rules.
    pub fn start(config: &Config) -> Result<(Esp, EventReceiver), String> {
        let s = &config.dataplane;
        let mut tun = TunConfig::new(s.tun_name.clone());
        tun.mtu = s.tun_mtu;
        tun.offload = s.offload;
        let natt_bind: Vec<SocketAddr> =
            config.daemon.listen.iter().map(|ip| SocketAddr::new(*ip, config.daemon.natt_port)).collect();
        let mut dc = DataplaneConfig::new(tun.clone(), natt_bind);
        dc.raw_esp = s.raw_esp;
        dc.keepalive_interval = s.nat_keepalive;
        dc.socket_buffer = s.socket_buffer;
        dc.rekey_linger = s.rekey_linger;
        dc.pending_per_reqid = s.trap_queue;
        dc.fwmark = Some(FWMARK);
        dc.workers = match s.workers {
            Workers::Auto => WorkerLayout::Auto,
            Workers::Combined => WorkerLayout::Combined,
            Workers::Split => WorkerLayout::Split,
        };
        let (handle, rx) = DataplaneHandle::start(dc).map_err(|e| e.to_string())?;
        info!(target: "esp", tun = %s.tun_name, natt = ?handle.natt_addrs(), raw_esp = s.raw_esp,
              offload = ?handle.interfaces().first().map(|i| i.offload), "ESP dataplane started");
        let esp = Esp {
            handle: Arc::new(handle),
            routes: Routes::new(s.install_routes, s.route_table),
            tun_name: s.tun_name.clone(),
            tun_template: tun,
            natt_port: config.daemon.natt_port,
            traps: HashMap::new(),
            interface_of: HashMap::new(),
            policies: HashSet::new(),
            live: HashMap::new(),
            standby_of: HashMap::new(),
            standby_live: HashMap::new(),
            manual: Vec::new(),
        };
        Ok((esp, rx))
    }

    pub fn handle(&self) -> &Arc<DataplaneHandle> {
        &self.handle
    }

    pub fn natt_port(&self) -> u16 {
        self.natt_port
    }

    /// Apply the configuration's policies, route-based interfaces and manual SAs (at start and
    /// on reload): what disappeared is removed, what is new is added, unchanged manual SAs keep
    /// their sequence numbers and replay windows.
    pub fn configure(&mut self, config: &Config, endpoint: &mut Endpoint) {
        // Old policies out and the vpns' policies in with one SPD publication (see
        // `DataplaneHandle::replace_policies`).
        let old_policies: Vec<u32> = std::mem::take(&mut self.policies).into_iter().collect();
        let mut new_policies = Vec::new();
        let old_traps: Vec<u32> = std::mem::take(&mut self.traps).into_keys().collect();
        let mut wanted_ifaces: HashMap<u32, String> = HashMap::new();
        for peer in &config.peers {
            let iface = config.interfaces.get(&peer.name);
            for (i, child) in peer.children.iter().enumerate() {
                let reqid = endpoint.reqid(&peer.name, &child.name);
                // A trap start action, or a trap close/DPD action (the policy stays and traffic
                // brings the CHILD SA back after the peer deleted it or died).
                let trap = child.start_action == StartAction::Trap
                    || child.close_action == DeadPeerAction::Trap
                    || peer.dpd_action == DeadPeerAction::Trap;
                if trap {
                    self.traps.insert(reqid, (peer.name.clone(), child.name.clone()));
                }
                match iface {
                    // One interface per vpn: its first security policy's CHILD SA serves it.
                    Some(name) if i == 0 => {
                        wanted_ifaces.insert(reqid, name.clone());
                    }
                    Some(_) => warn!(target: "esp", vpn = %peer.name, child = %child.name,
                                     "route-based vpn: only the first security-policy is bound to the interface"),
                    None => {
                        new_policies.push(protect(reqid, &child.local_ts, &child.remote_ts));
                        self.policies.insert(reqid);
                        if child.start_action == StartAction::Trap {
                            let dev = self.tun_name.clone();
                            self.routes.ensure(reqid, &dev, &child.local_ts, &child.remote_ts);
                        }
                    }
                }
            }
        }
        self.handle.replace_policies(&old_policies, new_policies);
        for reqid in old_traps {
            self.release_routes(reqid);
        }
        self.configure_manual(config, &mut wanted_ifaces);
        self.sync_interfaces(wanted_ifaces);
    }

    fn configure_manual(&mut self, config: &Config, wanted_ifaces: &mut HashMap<u32, String>) {
        let keep: Vec<InstalledManual> = std::mem::take(&mut self.manual)
            .into_iter()
            .filter(|old| {
                let same =
                    config.manual_sas.iter().any(|m| m.name == old.name && fingerprint(m) == old.fingerprint);
                if !same {
                    self.handle.remove_sa(old.spi_in);
                    self.routes.remove(old.reqid);
                    info!(target: "esp", name = %old.name, "manual SA removed");
                }
                same
            })
            .collect();
        self.manual = keep;
        for (i, m) in config.manual_sas.iter().enumerate() {
            let reqid = self
                .manual
                .iter()
                .find(|o| o.name == m.name)
                .map(|o| o.reqid)
                .unwrap_or_else(|| self.free_manual_reqid(i as u32));
            if !self.manual.iter().any(|o| o.name == m.name) {
                let port = if m.encap { self.natt_port } else { 0 };
                let rport = if m.encap { m.remote_port } else { 0 };
                let spec =
                    manual_spec(m, reqid, SocketAddr::new(m.local, port), SocketAddr::new(m.remote, rport));
                match self.handle.install_sa(&spec) {
                    Ok(()) => {
                        info!(target: "esp", name = %m.name, spi_in = format_args!("{:#010x}", m.spi_in),
                              spi_out = format_args!("{:#010x}", m.spi_out), "manual SA installed");
                        self.manual.push(InstalledManual {
                            name: m.name.clone(),
                            spi_in: m.spi_in,
                            spi_out: m.spi_out,
                            reqid,
                            fingerprint: fingerprint(m),
                        });
                    }
                    Err(e) => {
                        warn!(target: "esp", name = %m.name, "manual SA not installed: {e}");
                        continue;
                    }
                }
            }
            match &m.interface {
                Some(name) => {
                    wanted_ifaces.insert(reqid, name.clone());
                }
                None => {
                    self.handle.add_policy(protect(reqid, &m.local_ts, &m.remote_ts));
                    self.policies.insert(reqid);
                    let dev = self.tun_name.clone();
                    self.routes.ensure(reqid, &dev, &m.local_ts, &m.remote_ts);
                }
            }
        }
    }

    fn free_manual_reqid(&self, hint: u32) -> u32 {
        let mut r = MANUAL_REQID_BASE + hint;
        while self.manual.iter().any(|o| o.reqid == r) {
            r += 1;
        }
        r
    }

    fn sync_interfaces(&mut self, wanted: HashMap<u32, String>) {
        let current = std::mem::take(&mut self.interface_of);
        for (reqid, name) in &current {
            if wanted.get(reqid) != Some(name) {
                self.handle.remove_interface(name);
                info!(target: "esp", interface = %name, "route-based interface removed");
            }
        }
        for (reqid, name) in wanted {
            if current.get(&reqid) != Some(&name) {
                let mut tun = self.tun_template.clone();
                tun.name = name.clone();
                match self.handle.add_interface(&tun, reqid) {
                    Ok(n) => info!(target: "esp", interface = %n, reqid, "route-based interface up"),
                    Err(e) => {
                        warn!(target: "esp", interface = %name, "route-based interface not created: {e}");
                        continue;
                    }
                }
            }
            self.interface_of.insert(reqid, name);
        }
    }

    /// A CHILD SA from the engine: into the SAD, and its remote selectors routed into the TUN.
    pub fn install(&mut self, sa: &ChildSaInstall) {
        if let Err(e) = self.handle.install_child_sa(sa) {
            warn!(target: "esp", vpn = %sa.vpn, child = %sa.child, "CHILD SA not installed: {e}");
            return;
        }
        if let Some(p) = self.installed(sa) {
            self.handle.add_policy(p);
        }
    }

    /// HA: install with resume states (where each outbound counter starts, its lease ceiling), in
    /// place before an SA can seal a packet. A takeover hands over every CHILD SA at once: one SAD
    /// publication and one SPD publication for all of them, not one of each per SA (at 1,000
    /// tunnels that was most of the takeover's time in the dataplane).
    pub fn install_resumed(&mut self, sas: &[(ChildSaInstall, tandem_dataplane::tandem_esp::Resume)]) {
        if sas.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let results = self.handle.install_child_sas_resumed(sas);
        let mut policies = Vec::new();
        for ((sa, _), r) in sas.iter().zip(results) {
            match r {
                Ok(()) => policies.extend(self.installed(sa)),
                Err(e) => {
                    warn!(target: "esp", vpn = %sa.vpn, child = %sa.child, "CHILD SA not installed: {e}")
                }
            }
        }
        if !policies.is_empty() {
            self.handle.replace_policies(&[], policies);
        }
        if sas.len() > 1 {
            info!(target: "esp", sas = sas.len(), us = started.elapsed().as_micros() as u64, "CHILD SAs installed in one batch");
        }
    }

    /// Routes of an SA just installed, and the policy to add for it (the caller publishes it).
    fn installed(&mut self, sa: &ChildSaInstall) -> Option<Policy> {
        info!(target: "esp", vpn = %sa.vpn, child = %sa.child, reqid = sa.reqid,
              spi_in = format_args!("{:#010x}", sa.spi_in), spi_out = format_args!("{:#010x}", sa.spi_out),
              encr = sa.encr.name(), encap = if sa.udp_encap { "udp" } else { "raw" }, "CHILD SA installed");
        self.live.entry(sa.reqid).or_default().insert(sa.spi_in);
        if let Some(old) = sa.replaces_spi_in {
            if let Some(l) = self.live.get_mut(&sa.reqid) {
                l.remove(&old);
            }
        }
        if self.interface_of.contains_key(&sa.reqid) {
            return None;
        }
        let dev = self.tun_name.clone();
        self.routes.ensure(sa.reqid, &dev, &sa.local_ts, &sa.remote_ts);
        // Policy ids of configured policies are reqids or manual SA reqids, far below or far
        // above the node's SPIs; never replace one of those.
        (!self.policies.contains(&sa.spi_in)).then(|| sa_policy(sa))
    }

    /// A CHILD SA the engine is done with. A rekeyed SA lingers for packets in flight, and so
    /// does one a newer IKE SA of the same peer replaced (`unique = replace`: a peer
    /// reauthenticating make-before-break still has packets on the way on it).
    pub fn remove(&mut self, reqid: u32, spi_in: u32, reason: &DownReason) {
        if matches!(reason, DownReason::Rekeyed | DownReason::Duplicate) {
            self.handle.retire_sa(spi_in);
        } else {
            self.handle.remove_sa(spi_in);
        }
        if !self.policies.contains(&spi_in) {
            self.handle.remove_policy(spi_in);
        }
        let empty = self.live.get_mut(&reqid).map(|l| {
            l.remove(&spi_in);
            l.is_empty()
        });
        if empty == Some(true) {
            self.live.remove(&reqid);
            self.release_routes(reqid);
        }
    }

    /// Remove the routes of `reqid` unless something still needs them: a trap policy, an
    /// installed CHILD SA or, on a standby, a mirrored one. (A route-based interface's reqid has
    /// none: its interface routes.)
    fn release_routes(&mut self, reqid: u32) {
        let needed = self.traps.contains_key(&reqid)
            || self.live.get(&reqid).is_some_and(|l| !l.is_empty())
            || self.standby_live.contains_key(&reqid);
        if !needed {
            self.routes.remove(reqid);
        }
    }

    /// HA standby: IKE SA `id` is mirrored with these CHILD SAs now (none: it is gone). Their
    /// remote selectors are routed into the TUN like an installed SA's (see `standby_of`).
    pub fn mirror_routes(&mut self, id: u64, children: &[MirroredRoute]) {
        let mut released = Vec::new();
        for (reqid, spi_in) in self.standby_of.remove(&id).unwrap_or_default() {
            if let Some(l) = self.standby_live.get_mut(&reqid) {
                if l.get(&spi_in) == Some(&id) {
                    l.remove(&spi_in);
                }
                if l.is_empty() {
                    self.standby_live.remove(&reqid);
                }
            }
            released.push(reqid);
        }
        let mut now = Vec::new();
        for c in children.iter().filter(|c| !self.interface_of.contains_key(&c.reqid)) {
            self.standby_live.entry(c.reqid).or_default().insert(c.spi_in, id);
            self.routes.ensure(c.reqid, &self.tun_name, &c.local_ts, &c.remote_ts);
            now.push((c.reqid, c.spi_in));
        }
        if !now.is_empty() {
            self.standby_of.insert(id, now);
        }
        for reqid in released {
            self.release_routes(reqid);
        }
    }

    /// HA: this node is active now; the SAs it took over are installed (their routes are theirs)
    /// and the standby's bookkeeping goes, with the routes of any mirrored SA not installed.
    pub fn mirror_routes_taken_over(&mut self) {
        if self.standby_live.is_empty() {
            return;
        }
        self.standby_of.clear();
        let reqids: Vec<u32> = self.standby_live.drain().map(|(r, _)| r).collect();
        for reqid in reqids {
            self.release_routes(reqid);
        }
    }

    /// The trap policy behind an Acquire, if the reqid is one.
    pub fn trap_of(&self, reqid: u32) -> Option<&(String, String)> {
        self.traps.get(&reqid)
    }

    /// Delete the manual SA pair with `spi` in either direction; false if none has it.
    pub fn remove_manual(&mut self, spi: u32) -> bool {
        let Some(i) = self.manual.iter().position(|m| m.spi_in == spi || m.spi_out == spi) else {
            return false;
        };
        let m = self.manual.remove(i);
        self.handle.remove_sa(m.spi_in);
        info!(target: "esp", name = %m.name, "manual SA deleted by the operator (back on reload)");
        true
    }

    /// Remove every manual SA (flush); they come back with the next reload.
    pub fn flush_manual(&mut self) -> usize {
        let n = self.manual.len();
        for m in std::mem::take(&mut self.manual) {
            self.handle.remove_sa(m.spi_in);
        }
        n
    }

    /// Wait (bounded) until the routes and rules queued so far are in the kernel.
    pub async fn routes_settled(&self) {
        if tokio::time::timeout(std::time::Duration::from_secs(3), self.routes.sync()).await.is_err() {
            warn!(target: "esp", "routes not installed in time");
        }
    }

    /// Stop the workers, remove routes and rules.
    pub async fn shutdown(&mut self) {
        self.routes.teardown().await;
        self.handle.shutdown();
    }
}
