//! Starting the dataplane and the control handle the daemon keeps: SAs, policies, route-based
//! interfaces, IKE datagrams out of port 4500, counters, listings, shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tandem_esp::clock::CoarseClock;
use tandem_esp::counters::GlobalStats;
use tandem_esp::listing::SaInfo;
use tandem_esp::replay::ReplayState;
use tandem_esp::sa::{ChildSaPair, ChildSaSpec, Resume};
use tandem_esp::sad::{Sad, SadError};
use tandem_esp::spd::Policy;

use crate::config::{DataplaneConfig, TunConfig};
use crate::counters::{Counters, CountersSnapshot};
use crate::egress::{send_one, Egress};
use crate::events::{event_channel, EventReceiver};
use crate::inbound::Inbound;
use crate::outbound::Outbound;
use crate::policy::Policies;
use crate::raw::RawEspSocket;
use crate::shared::{Shared, TunEntry, TunTable};
use crate::sys::Waker;
use crate::tun::Tun;
use crate::udp::EncapSocket;
use crate::worker::{self, WorkerLayout};

/// Failure to start the dataplane or to add an interface.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot create TUN interface {name}: {source}")]
    Tun { name: String, source: io::Error },
    #[error("cannot bind UDP encapsulation socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot open raw ESP socket (IPv{version}; needs CAP_NET_RAW): {source}")]
    Raw { version: u8, source: io::Error },
    #[error("an interface named {0} already exists in the dataplane")]
    InterfaceExists(String),
    #[error("cannot start worker thread: {0}")]
    Thread(io::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One TUN interface of the dataplane.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InterfaceInfo {
    pub name: String,
    /// The reqid of a route-based interface; `None` for the policy-based TUN.
    pub reqid: Option<u32>,
    /// Whether the kernel accepted TUN offloads (virtio-net header, TSO/USO).
    pub offload: bool,
}

/// How long `shutdown` waits for the worker threads (they notice within one poll interval).
const JOIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The daemon's handle on a running dataplane. Dropping it stops the workers.
pub struct DataplaneHandle {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    iface_lock: Mutex<()>,
}

impl DataplaneHandle {
    /// Create the TUN, bind the sockets, start the worker threads. Events (IKE datagrams from the
    /// NAT-T sockets, Acquires, unknown SPIs, lifetimes) arrive on the returned receiver, control
    /// events first and never dropped (see `events`).
    pub fn start(cfg: DataplaneConfig) -> Result<(DataplaneHandle, EventReceiver), DataplaneError> {
        let sad =
            Arc::new(Sad::new(Arc::new(CoarseClock::new(Instant::now()))).with_rekey_grace(cfg.rekey_linger));
        Self::start_with_sad(cfg, sad)
    }

    /// Like `start`, with a SAD made by the caller (e.g. with HA observers registered).
    pub fn start_with_sad(
        cfg: DataplaneConfig,
        sad: Arc<Sad>,
    ) -> Result<(DataplaneHandle, EventReceiver), DataplaneError> {
        let tun = Tun::create(&cfg.tun)
            .map_err(|source| DataplaneError::Tun { name: cfg.tun.name.clone(), source })?;
        let mut udp = Vec::new();
        for addr in &cfg.natt_bind {
            let s = EncapSocket::bind(*addr, cfg.socket_buffer, cfg.fwmark)
                .map_err(|source| DataplaneError::Bind { addr: *addr, source })?;
            udp.push(Arc::new(s));
        }
        let (mut raw_v4, mut raw_v6) = (None, None);
        if cfg.raw_esp {
            raw_v4 = Some(Arc::new(
                RawEspSocket::open(false, cfg.socket_buffer, cfg.fwmark)
                    .map_err(|source| DataplaneError::Raw { version: 4, source })?,
            ));
            // IPv6 may be disabled on the host: then only IPv4 raw ESP is available.
            match RawEspSocket::open(true, cfg.socket_buffer, cfg.fwmark) {
                Ok(s) => raw_v6 = Some(Arc::new(s)),
                Err(e) => tracing::warn!(target: "dataplane", "no IPv6 raw ESP socket: {e}"),
            }
        }
        let counters = Arc::new(Counters::default());
        let (events, rx) = event_channel(cfg.event_capacity, counters.clone());
        let mut table =
            TunTable { list: vec![TunEntry { tun: Arc::new(tun), reqid: None }], ..Default::default() };
        table.rebuild_index();
        let shared = Arc::new(Shared {
            events,
            counters: counters.clone(),
            sad,
            policies: Policies::default(),
            tuns: ArcSwap::from_pointee(table),
            tuns_generation: AtomicU64::new(0),
            udp: udp.clone(),
            shutdown: AtomicBool::new(false),
            wake_out: Waker::new()?,
            wake_in: Waker::new()?,
            cfg,
        });
        let egress = Egress::new(udp, raw_v4.clone(), raw_v6.clone(), counters);
        let raw: Vec<_> = raw_v4.into_iter().chain(raw_v6).collect();
        let handle = DataplaneHandle {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            iface_lock: Mutex::new(()),
        };
        let out = Outbound::new(shared.clone(), egress);
        let inb = Inbound::new(shared.clone(), raw);
        match shared.cfg.workers.resolve() {
            WorkerLayout::Split => {
                let s = shared.clone();
                handle.spawn("tandem-dp-out", move || worker::run(s, vec![Box::new(out)]))?;
                let s = shared.clone();
                handle.spawn("tandem-dp-in", move || worker::run(s, vec![Box::new(inb)]))?;
            }
            _ => {
                let s = shared.clone();
                handle.spawn("tandem-dp", move || worker::run(s, vec![Box::new(out), Box::new(inb)]))?;
            }
        }
        let s = shared.clone();
        handle.spawn("tandem-dp-timer", move || crate::timer::run(s))?;
        Ok((handle, rx))
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), DataplaneError> {
        let h = std::thread::Builder::new().name(name.into()).spawn(f).map_err(DataplaneError::Thread)?;
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(h);
        Ok(())
    }

    /// Install both SAs of a CHILD SA. Packets queued by a trap policy for its reqid are sent.
    pub fn install_sa(&self, spec: &ChildSaSpec) -> Result<(), SadError> {
        self.shared.sad.install_spec(spec, Instant::now())?;
        self.shared.wake_out.wake();
        Ok(())
    }

    /// HA: `install_sa` of a CHILD SA mirrored from the other node, continuing from `resume`
    /// (outbound sequence number and lease ceiling, inbound replay window). The state is in
    /// place before the SA is published and the outbound worker woken, so trap-queued packets
    /// are sealed from `resume.next_seq`, never from 1 (which the old active already used with
    /// the same key).
    pub fn install_sa_resumed(&self, spec: &ChildSaSpec, resume: &Resume) -> Result<(), SadError> {
        let mut pair = ChildSaPair::new(spec, self.shared.sad.clock())?;
        pair.resume(resume);
        self.shared.sad.install(pair, Instant::now())?;
        self.shared.wake_out.wake();
        Ok(())
    }

    /// Install a CHILD SA negotiated by the IKE engine (`Event::ChildSaUp`). With
    /// `replaces_spi_in` (a rekey) the old SA stops sending now and keeps receiving for the linger
    /// time (make-before-break).
    pub fn install_child_sa(&self, install: &tandem_ike::ChildSaInstall) -> Result<(), SadError> {
        self.install_sa(&crate::install::spec_from_install(install))
    }

    /// Install many CHILD SAs at once (an HA standby taking over thousands of SAs): the packet
    /// path sees them all in one new SAD snapshot, and the result of each comes back in order
    /// (a taken inbound SPI fails that SA alone). Trap queues of their reqids are flushed once.
    pub fn install_sas(&self, specs: &[ChildSaSpec]) -> Vec<Result<(), SadError>> {
        let results = self.shared.sad.install_specs(specs, Instant::now());
        if results.iter().any(Result::is_ok) {
            self.shared.wake_out.wake();
        }
        results
    }

    /// `install_sas` for CHILD SAs negotiated by the IKE engine (or restored from its state).
    pub fn install_child_sas(&self, installs: &[tandem_ike::ChildSaInstall]) -> Vec<Result<(), SadError>> {
        let specs: Vec<ChildSaSpec> = installs.iter().map(crate::install::spec_from_install).collect();
        self.install_sas(&specs)
    }

    /// HA takeover: `install_sas` with each SA resumed (see `install_sa_resumed`), all in one
    /// SAD publication.
    pub fn install_sas_resumed(&self, specs: &[(ChildSaSpec, Resume)]) -> Vec<Result<(), SadError>> {
        let results = self.shared.sad.install_specs_resumed(specs, Instant::now());
        if results.iter().any(Result::is_ok) {
            self.shared.wake_out.wake();
        }
        results
    }

    /// HA takeover: `install_child_sas` for CHILD SAs restored from the IKE engine's mirrored
    /// state, each resumed (see `install_sa_resumed`).
    pub fn install_child_sas_resumed(
        &self,
        installs: &[(tandem_ike::ChildSaInstall, Resume)],
    ) -> Vec<Result<(), SadError>> {
        let specs: Vec<(ChildSaSpec, Resume)> =
            installs.iter().map(|(i, r)| (crate::install::spec_from_install(i), r.clone())).collect();
        self.install_sas_resumed(&specs)
    }

    /// HA: (inbound SPI, outbound last sequence number, inbound replay window top) of every CHILD
    /// SA, for the lease tick (one table lock per tick, not two per SA).
    pub fn ha_counters(&self) -> Vec<(u32, u64, u64)> {
        self.shared.sad.ha_counters()
    }

    /// HA: (last sequence number used, lease ceiling) of the outbound SA of the CHILD SA with
    /// inbound SPI `spi_in`, to decide when to renew its lease.
    pub fn seq_lease(&self, spi_in: u32) -> Option<(u64, u64)> {
        self.shared.sad.seq_lease(spi_in)
    }

    /// HA: the standby acked a lease up to `ceiling`: the SA may seal up to it (the ceiling only
    /// rises). Returns whether the SA exists.
    pub fn set_ceiling(&self, spi_in: u32, ceiling: u64) -> bool {
        self.shared.sad.set_ceiling(spi_in, ceiling)
    }

    /// RFC 6311 replay counter sync from a clustered peer: the outbound SA of the CHILD SA with
    /// inbound SPI `spi_in` skips `delta` sequence numbers. Returns the next one it will use.
    pub fn skip_seq(&self, spi_in: u32, delta: u64) -> Option<u64> {
        self.shared.sad.skip_seq(spi_in, delta)
    }

    /// HA planned switchover: stop sealing on the SA and return the highest sequence number
    /// that was or may still be sealed; the new active resumes above it.
    pub fn freeze_seq(&self, spi_in: u32) -> Option<u64> {
        self.shared.sad.freeze_seq(spi_in)
    }

    /// HA: the replay window of the inbound SA `spi_in`, to mirror.
    pub fn replay_state(&self, spi_in: u32) -> Option<ReplayState> {
        self.shared.sad.replay_state(spi_in)
    }

    /// HA: merge a mirrored replay window into the inbound SA `spi_in`, forward only. Returns
    /// whether the SA exists.
    pub fn import_replay(&self, spi_in: u32, state: &ReplayState) -> bool {
        self.shared.sad.import_replay(spi_in, state)
    }

    /// Remove the CHILD SA with this inbound SPI at once. Returns whether it existed.
    pub fn remove_sa(&self, spi_in: u32) -> bool {
        self.shared.sad.remove(spi_in)
    }

    /// Make-before-break removal: stop sending on the SA now, keep receiving on it for the
    /// configured linger time.
    pub fn retire_sa(&self, spi_in: u32) -> bool {
        self.shared.sad.retire(spi_in, Instant::now())
    }

    /// Remove every SA; returns how many CHILD SAs were removed.
    pub fn flush_sas(&self) -> usize {
        self.shared.sad.flush()
    }

    /// Add (or replace, same id) a security policy.
    pub fn add_policy(&self, policy: Policy) {
        self.shared.policies.update(|spd| spd.insert(policy));
    }

    /// Remove the policy with this id. Returns whether it existed.
    pub fn remove_policy(&self, id: u32) -> bool {
        self.shared.policies.update(|spd| spd.remove(id))
    }

    /// Remove the policies `remove` and add `add` (in order) in one publication: the packet path
    /// never sees a state in between (a reload that replaces every policy leaves no window without
    /// them), and thousands of policies cost one copy of the SPD's shard tables.
    pub fn replace_policies(&self, remove: &[u32], add: Vec<Policy>) {
        self.shared.policies.update(|spd| {
            for id in remove {
                spd.remove(*id);
            }
            spd.extend(add);
        });
    }

    /// Policies in lookup order.
    pub fn policies(&self) -> Vec<Policy> {
        self.shared.policies.list()
    }

    /// Every SA (outbound and inbound of each CHILD SA), for `show ipsec-sa`.
    pub fn list_sas(&self) -> Vec<SaInfo> {
        self.shared.sad.list(Instant::now())
    }

    /// Dataplane I/O counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.shared.counters.snapshot()
    }

    /// The ESP core's global counters (`show ipsec-stat`): drops by reason.
    pub fn esp_stats(&self) -> GlobalStats {
        self.shared.sad.global_stats()
    }

    /// The SAD, for HA observers and sequence/replay state (read and set per SA).
    pub fn sad(&self) -> &Arc<Sad> {
        &self.shared.sad
    }

    /// Local addresses of the UDP encapsulation sockets (as bound).
    pub fn natt_addrs(&self) -> Vec<SocketAddr> {
        self.shared.udp.iter().map(|s| s.bound).collect()
    }

    /// Send an IKE message from a NAT-T socket: the 4-byte non-ESP marker is prepended here.
    pub fn send_ike(&self, local: SocketAddr, remote: SocketAddr, data: &[u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(4 + data.len());
        buf.extend_from_slice(&[0, 0, 0, 0]);
        buf.extend_from_slice(data);
        send_one(&self.shared.udp, &self.shared.counters, local, remote, &buf)?;
        crate::counters::add(&self.shared.counters.ike_tx, 1);
        Ok(())
    }

    /// Create a route-based interface (the F5 "interface mode", a per-vpn TUN): whatever the
    /// operator routes into it is protected with the SA of `reqid` (0.0.0.0/0 and ::/0
    /// selectors), and inbound packets of that SA come out of it. The TUN is created in the
    /// network namespace of the calling thread. Returns the interface name.
    pub fn add_interface(&self, tun: &TunConfig, reqid: u32) -> Result<String, DataplaneError> {
        let _g = self.iface_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.shared.tuns.load_full();
        if current.list.iter().any(|e| e.tun.name() == tun.name) {
            return Err(DataplaneError::InterfaceExists(tun.name.clone()));
        }
        let dev =
            Tun::create(tun).map_err(|source| DataplaneError::Tun { name: tun.name.clone(), source })?;
        let name = dev.name().to_string();
        let mut table = TunTable::clone(&current);
        table.list.push(TunEntry { tun: Arc::new(dev), reqid: Some(reqid) });
        table.rebuild_index();
        self.publish_tuns(table);
        Ok(name)
    }

    /// Remove a route-based interface. Returns whether it existed (the policy TUN stays).
    pub fn remove_interface(&self, name: &str) -> bool {
        let _g = self.iface_lock.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.shared.tuns.load_full();
        let mut table = TunTable::clone(&current);
        let before = table.list.len();
        table.list.retain(|e| e.reqid.is_none() || e.tun.name() != name);
        if table.list.len() == before {
            return false;
        }
        table.rebuild_index();
        self.publish_tuns(table);
        true
    }

    /// The TUN interfaces, the policy-based one first.
    pub fn interfaces(&self) -> Vec<InterfaceInfo> {
        self.shared
            .tuns
            .load()
            .list
            .iter()
            .map(|e| InterfaceInfo {
                name: e.tun.name().to_string(),
                reqid: e.reqid,
                offload: e.tun.offload(),
            })
            .collect()
    }

    fn publish_tuns(&self, table: TunTable) {
        self.shared.tuns.store(Arc::new(table));
        self.shared.tuns_generation.fetch_add(1, Ordering::AcqRel);
        self.shared.wake_out.wake();
        self.shared.wake_in.wake();
    }

    /// Stop the workers and wait for them (bounded). Idempotent; also done on drop.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake_out.wake();
        self.shared.wake_in.wake();
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in &threads {
            t.thread().unpark();
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        for t in threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(target: "dataplane", "worker thread did not stop in time; detached");
            }
        }
    }
}

impl Drop for DataplaneHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
