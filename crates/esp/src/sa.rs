//! Outbound and inbound SAs: prepared keys, sequence counter or replay window, counters, lifetimes.
//!
//! Both are `Sync` and shared by the worker threads through `Arc`s held in the SAD. Nothing on the hot
//! path takes a lock except an inbound SA's own replay window, held for a few nanoseconds twice per
//! packet (check before decryption, mark after); SAs never share a lock.

use crate::cipher::{EspSizes, OpenCipher, SealCipher};
use crate::clock::CoarseClock;
use crate::counters::SaCounters;
use crate::error::SaError;
use crate::lifetime::{LifetimeLimits, LifetimeState};
use crate::replay::{ReplayError, ReplayState, ReplayWindow};
use crate::selector::{ts_list_matches, PacketSelector};
use crate::seq::SeqCounter;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tandem_crypto::{EncrAlg, IntegAlg};
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// ESP mode (RFC 4301 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The payload is a whole IP packet (next header 4 or 41).
    #[default]
    Tunnel,
    /// The payload is the transport segment of the outer packet.
    Transport,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Tunnel => "tunnel",
            Mode::Transport => "transport",
        }
    }
}

/// Keys of one direction: encryption key material (with the AEAD salt at the end, see
/// `EncrAlg::key_material_len`) and the integrity key (empty for AEADs).
#[derive(Clone, Default)]
pub struct KeyMaterial {
    pub encr: Zeroizing<Vec<u8>>,
    pub integ: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

/// Everything needed to build one CHILD SA (both directions). Mirrors the IKE engine's
/// `ChildSaInstall`; manual keyed SAs fill it from configuration.
#[derive(Debug, Clone)]
pub struct ChildSaSpec {
    /// Shown in listings (e.g. "vpn/child").
    pub name: String,
    /// Stable id of the policy the SA serves; outbound lookups go by it.
    pub reqid: u32,
    /// SPI of the inbound SA (chosen by us).
    pub spi_in: u32,
    /// SPI of the outbound SA (chosen by the peer).
    pub spi_out: u32,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub esn: bool,
    pub mode: Mode,
    /// Our outer address (and port with UDP encapsulation).
    pub local: SocketAddr,
    /// The peer's outer address (and port with UDP encapsulation).
    pub remote: SocketAddr,
    /// ESP in UDP (RFC 3948) rather than IP protocol 50.
    pub udp_encap: bool,
    /// Anti-replay window in packets; 0 disables it (see `replay::effective_window`).
    pub replay_window: u32,
    pub lifetime: LifetimeLimits,
    /// Our side's selectors (inner destination of inbound packets); empty = not checked.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's selectors (inner source of inbound packets); empty = not checked.
    pub remote_ts: Vec<TrafficSelector>,
    pub keys_in: KeyMaterial,
    pub keys_out: KeyMaterial,
    /// The inbound SPI of the SA this one replaces (rekey): that SA lingers for the grace period.
    pub replaces_spi_in: Option<u32>,
    /// Rekey responder: keep sending on the replaced SA until the first packet arrives on this
    /// one (proof that the peer installed it) or the replaced SA is retired. Switching at once
    /// would race the peer, which installs the new SA only when our response reaches it.
    pub defer_outbound: bool,
    /// Key of the CBC IV generator (16 bytes), from the caller's random source; `None` draws one
    /// from the operating system (manual SAs, tests). Unused with AEAD.
    pub iv_key: Option<Zeroizing<Vec<u8>>>,
}

/// HA: where a CHILD SA mirrored from the other node continues, applied to the pair after it is
/// built and *before* it is published in the SAD ([`ChildSaPair::resume`],
/// `Sad::install_specs_resumed`). Setting these after installation would race the packet path:
/// trap-queued packets are sealed as soon as the SA appears, from sequence number 1, which is a
/// (key, nonce) pair the old active node already used. The default resumes nothing: a new SA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The first outbound sequence number to seal (the acked lease ceiling + 1 after a takeover,
    /// the exact last number + 1 after a planned switchover); 0 or 1 start at 1.
    pub next_seq: u64,
    /// The last outbound number this node may seal before a lease renewal; `None` is unlimited
    /// (up to the sequence space). A standby that installs a pair without sealing on it passes
    /// `Some(next_seq - 1)`.
    pub ceiling: Option<u64>,
    /// The inbound replay window mirrored from the other node, merged forward-only.
    pub replay: Option<ReplayState>,
    /// Numbers above the inbound window's top to treat as received after the merge: the ones the
    /// old active may have accepted since its last sync (see `ReplayWindow::advance`). 0 = none.
    pub replay_advance: u64,
}

/// Fields common to both directions. Reached through `Deref` from [`OutboundSa`] and [`InboundSa`].
pub struct SaCommon {
    spi: u32,
    reqid: u32,
    name: String,
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    esn: bool,
    mode: Mode,
    local: SocketAddr,
    remote: SocketAddr,
    udp_encap: bool,
    sizes: EspSizes,
    lifetime: LifetimeLimits,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    counters: SaCounters,
    clock: Arc<CoarseClock>,
    created_ms: u64,
    /// Coarse time of the last packet, `u64::MAX` before the first.
    last_use_ms: AtomicU64,
}

impl SaCommon {
    fn new(spec: &ChildSaSpec, spi: u32, clock: &Arc<CoarseClock>) -> Result<SaCommon, SaError> {
        if spi < 256 {
            return Err(SaError::ReservedSpi(spi));
        }
        Ok(SaCommon {
            spi,
            reqid: spec.reqid,
            name: spec.name.clone(),
            encr: spec.encr,
            integ: spec.integ,
            esn: spec.esn,
            mode: spec.mode,
            local: spec.local,
            remote: spec.remote,
            udp_encap: spec.udp_encap,
            sizes: EspSizes::new(spec.encr, spec.integ),
            lifetime: spec.lifetime,
            local_ts: spec.local_ts.clone(),
            remote_ts: spec.remote_ts.clone(),
            counters: SaCounters::default(),
            clock: clock.clone(),
            created_ms: clock.now_ms(),
            last_use_ms: AtomicU64::new(u64::MAX),
        })
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }
    pub fn reqid(&self) -> u32 {
        self.reqid
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn encr(&self) -> EncrAlg {
        self.encr
    }
    pub fn integ(&self) -> Option<IntegAlg> {
        self.integ
    }
    pub fn esn(&self) -> bool {
        self.esn
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn local(&self) -> SocketAddr {
        self.local
    }
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }
    pub fn udp_encap(&self) -> bool {
        self.udp_encap
    }
    /// ESP framing sizes (header, ICV, alignment) of this SA.
    pub fn sizes(&self) -> &EspSizes {
        &self.sizes
    }
    pub fn lifetime(&self) -> &LifetimeLimits {
        &self.lifetime
    }
    pub fn local_ts(&self) -> &[TrafficSelector] {
        &self.local_ts
    }
    pub fn remote_ts(&self) -> &[TrafficSelector] {
        &self.remote_ts
    }
    pub fn counters(&self) -> &SaCounters {
        &self.counters
    }
    pub fn created(&self) -> Instant {
        self.clock.at(self.created_ms)
    }
    /// Time of the last packet (coarse clock), `None` before the first.
    pub fn last_use(&self) -> Option<Instant> {
        let ms = self.last_use_ms.load(Ordering::Relaxed);
        (ms != u64::MAX).then(|| self.clock.at(ms))
    }

    /// Byte/packet/time limits at `now`. For outbound SAs prefer [`OutboundSa::lifetime_state`],
    /// which also counts the sequence space.
    pub fn usage_state(&self, now: Instant) -> LifetimeState {
        let c = &self.counters;
        let age = now.saturating_duration_since(self.created());
        self.lifetime.state(c.bytes.load(Ordering::Relaxed), c.packets.load(Ordering::Relaxed), age)
    }

    /// Hot-path check of the hard byte/packet limits.
    pub(crate) fn hard_usage_reached(&self) -> bool {
        let c = &self.counters;
        self.lifetime.hard_usage_reached(c.bytes.load(Ordering::Relaxed), c.packets.load(Ordering::Relaxed))
    }

    /// Records use: counters and last-use stamp (written only when the coarse time changed, so
    /// threads sharing the SA do not bounce the cache line per packet).
    pub(crate) fn count_use(&self, packets: u64, bytes: u64) {
        crate::counters::bump(&self.counters.packets, packets);
        crate::counters::bump(&self.counters.bytes, bytes);
        let now = self.clock.now_ms();
        if self.last_use_ms.load(Ordering::Relaxed) != now {
            self.last_use_ms.store(now, Ordering::Relaxed);
        }
    }
}

/// The sending half of a CHILD SA.
pub struct OutboundSa {
    common: SaCommon,
    pub(crate) cipher: SealCipher,
    seq: SeqCounter,
}

impl Deref for OutboundSa {
    type Target = SaCommon;
    fn deref(&self) -> &SaCommon {
        &self.common
    }
}

impl std::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("reqid", &self.reqid)
            .field("encr", &self.encr)
            .field("next_seq", &self.seq.next_seq())
            .finish_non_exhaustive()
    }
}

impl OutboundSa {
    /// Builds the outbound SA of `spec` (SPI `spi_out`, keys `keys_out`).
    pub fn new(spec: &ChildSaSpec, clock: &Arc<CoarseClock>) -> Result<OutboundSa, SaError> {
        let common = SaCommon::new(spec, spec.spi_out, clock)?;
        let cipher = SealCipher::new(
            spec.encr,
            spec.integ,
            &spec.keys_out.encr,
            &spec.keys_out.integ,
            spec.iv_key.as_ref().map(|k| k.as_slice()),
        )?;
        Ok(OutboundSa { common, cipher, seq: SeqCounter::new(spec.esn) })
    }

    /// Replaces the sequence counter's soft threshold (rekey when a number at or above it is used).
    /// Call before first use: the counter starts over.
    pub fn with_seq_soft_threshold(mut self, soft: u64) -> Self {
        self.seq = SeqCounter::new(self.common.esn).with_soft_threshold(soft);
        self
    }

    /// The sequence counter: `reserve`, `next_seq`, `set_next_seq` (HA), `needs_rekey`.
    pub fn seq(&self) -> &SeqCounter {
        &self.seq
    }

    /// HA: the last sequence number used and the lease ceiling, i.e. how far this SA has sealed
    /// and how far it may (for deciding when to renew the lease).
    pub fn seq_lease(&self) -> (u64, u64) {
        (self.seq.last_seq(), self.seq.ceiling())
    }

    /// The next sequence number (HA sync).
    pub fn next_seq(&self) -> u64 {
        self.seq.next_seq()
    }

    /// HA: continue from `next`; never moves backwards. Returns whether it moved.
    pub fn set_next_seq(&self, next: u64) -> bool {
        self.seq.set_next_seq(next)
    }

    /// Limits at `now`, including the sequence space: Soft when a rekey is due, Hard when the SA
    /// must not be used any more.
    pub fn lifetime_state(&self, now: Instant) -> LifetimeState {
        let seq_state = if self.seq.is_exhausted() {
            LifetimeState::Hard
        } else if self.seq.needs_rekey() {
            LifetimeState::Soft
        } else {
            LifetimeState::Ok
        };
        self.usage_state(now).max(seq_state)
    }
}

/// The receiving half of a CHILD SA.
pub struct InboundSa {
    common: SaCommon,
    pub(crate) cipher: OpenCipher,
    replay: Mutex<ReplayWindow>,
    /// Set while the pair's outbound SA waits for this SA's first packet (`defer_outbound`).
    activate_on_receive: AtomicBool,
}

impl Deref for InboundSa {
    type Target = SaCommon;
    fn deref(&self) -> &SaCommon {
        &self.common
    }
}

impl std::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("reqid", &self.reqid)
            .field("encr", &self.encr)
            .finish_non_exhaustive()
    }
}

impl InboundSa {
    /// Builds the inbound SA of `spec` (SPI `spi_in`, keys `keys_in`).
    pub fn new(spec: &ChildSaSpec, clock: &Arc<CoarseClock>) -> Result<InboundSa, SaError> {
        let common = SaCommon::new(spec, spec.spi_in, clock)?;
        let cipher = OpenCipher::new(spec.encr, spec.integ, &spec.keys_in.encr, &spec.keys_in.integ)?;
        let replay = Mutex::new(ReplayWindow::new(spec.replay_window)?);
        let activate_on_receive = AtomicBool::new(spec.defer_outbound);
        Ok(InboundSa { common, cipher, replay, activate_on_receive })
    }

    /// True once, for the first authenticated packet of an SA installed with `defer_outbound`:
    /// the receive path then calls `Sad::activate`. One relaxed load per packet otherwise.
    pub fn take_activation(&self) -> bool {
        self.activate_on_receive.load(Ordering::Relaxed)
            && self.activate_on_receive.swap(false, Ordering::AcqRel)
    }

    fn window(&self) -> MutexGuard<'_, ReplayWindow> {
        // A panic while holding this lock cannot leave the window inconsistent (every update is a
        // few plain stores), so a poisoned lock is still usable.
        self.replay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cheap check before decryption: infers the full sequence number (ESN) and checks the window.
    pub fn replay_check(&self, seq_low: u32) -> Result<u64, ReplayError> {
        let w = self.window();
        let seq = if self.esn { w.infer_esn(seq_low) } else { u64::from(seq_low) };
        w.check(seq).map(|()| seq)
    }

    /// After authentication: check again and record `seq`.
    pub fn replay_mark(&self, seq: u64) -> Result<(), ReplayError> {
        self.window().check_and_mark(seq)
    }

    /// The effective replay window (0 = disabled).
    pub fn replay_window(&self) -> u32 {
        self.window().window()
    }

    /// Highest authenticated sequence number.
    pub fn replay_top(&self) -> u64 {
        self.window().top()
    }

    /// HA: the replay window state to mirror.
    pub fn replay_state(&self) -> ReplayState {
        self.window().export()
    }

    /// HA: merge a mirrored replay window state into this SA's, forward only (see
    /// `ReplayWindow::import`).
    pub fn import_replay(&self, state: &ReplayState) {
        self.window().import(state);
    }

    /// HA takeover: skip `n` numbers ahead, treating them as received.
    pub fn advance_replay(&self, n: u64) {
        self.window().advance(n);
    }

    /// Limits at `now`.
    pub fn lifetime_state(&self, now: Instant) -> LifetimeState {
        self.usage_state(now)
    }

    /// RFC 4301 section 5.2 inbound check of a tunnel-mode inner packet: source in the peer's
    /// selectors, destination in ours (an empty list is not checked).
    pub fn inner_allowed(&self, sel: &PacketSelector) -> bool {
        (self.remote_ts.is_empty() || ts_list_matches(&self.remote_ts, sel.src, sel.protocol, sel.src_port))
            && (self.local_ts.is_empty()
                || ts_list_matches(&self.local_ts, sel.dst, sel.protocol, sel.dst_port))
    }
}

/// Both halves of a CHILD SA, as installed into the SAD.
#[derive(Debug)]
pub struct ChildSaPair {
    pub inbound: InboundSa,
    pub outbound: OutboundSa,
    /// The inbound SPI of the SA this pair replaces (make-before-break rekey).
    pub replaces_spi_in: Option<u32>,
    /// See [`ChildSaSpec::defer_outbound`].
    pub defer_outbound: bool,
}

impl ChildSaPair {
    /// Builds both SAs of `spec`.
    pub fn new(spec: &ChildSaSpec, clock: &Arc<CoarseClock>) -> Result<ChildSaPair, SaError> {
        Ok(ChildSaPair {
            inbound: InboundSa::new(spec, clock)?,
            outbound: OutboundSa::new(spec, clock)?,
            replaces_spi_in: spec.replaces_spi_in,
            defer_outbound: spec.defer_outbound,
        })
    }

    /// HA: continue where the other node left off (see [`Resume`]). Takes `&mut self`: the
    /// pair is not shared yet, so nothing can seal or receive on it while this runs, and the
    /// ceiling may be set below its default.
    pub fn resume(&mut self, r: &Resume) {
        self.outbound.seq.set_next_seq(r.next_seq);
        if let Some(c) = r.ceiling {
            self.outbound.seq.init_ceiling(c);
        }
        if let Some(state) = &r.replay {
            self.inbound.import_replay(state);
        }
        self.inbound.advance_replay(r.replay_advance);
    }
}
