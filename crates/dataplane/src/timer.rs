//! The housekeeping thread: every 100 ms it advances the SAD (clock, retired SAs, soft and hard
//! lifetimes → events) and every second sends NAT keepalives to UDP-encapsulating peers that had
//! no outbound ESP for the keepalive interval. Nothing here is on the packet path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_esp::observer::SadEvent;

use crate::egress::send_one;
use crate::events::DataplaneEvent;
use crate::keepalive::{KeepaliveTracker, NAT_KEEPALIVE};
use crate::shared::Shared;

pub const TICK: Duration = Duration::from_millis(100);

pub fn run(shared: Arc<Shared>) {
    let mut keepalive = shared.cfg.keepalive_interval.map(KeepaliveTracker::new);
    let mut last_keepalive = Instant::now();
    while !shared.stopping() {
        std::thread::park_timeout(TICK);
        if shared.stopping() {
            break;
        }
        let now = Instant::now();
        for ev in shared.sad.tick(now) {
            match ev {
                SadEvent::SoftLimit { spi_in, spi_out, reqid, .. } => {
                    shared.events.send(DataplaneEvent::SoftLimit { reqid, spi_in, spi_out })
                }
                SadEvent::HardLimit { spi_in, spi_out, reqid, .. } => {
                    shared.events.send(DataplaneEvent::HardLimit { reqid, spi_in, spi_out })
                }
                SadEvent::Installed { .. } | SadEvent::Removed { .. } => {}
            }
        }
        if let Some(k) = &mut keepalive {
            if now.saturating_duration_since(last_keepalive) >= Duration::from_secs(1) {
                last_keepalive = now;
                send_keepalives(&shared, k, now);
            }
        }
    }
}

fn send_keepalives(shared: &Shared, k: &mut KeepaliveTracker, now: Instant) {
    let mut pairs = Vec::new();
    for (_, out, retired) in shared.sad.pairs() {
        if retired || !out.udp_encap() {
            continue;
        }
        let pair = (out.local(), out.remote());
        if let Some(t) = out.last_use() {
            k.note_tx(pair.0, pair.1, t);
        }
        pairs.push(pair);
    }
    pairs.sort_unstable();
    pairs.dedup();
    k.poll(now, pairs, |local, remote| {
        if send_one(&shared.udp, &shared.counters, local, remote, &NAT_KEEPALIVE).is_ok() {
            crate::counters::add(&shared.counters.nat_keepalive_tx, 1);
        }
    });
}
