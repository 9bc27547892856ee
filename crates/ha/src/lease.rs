//! Sequence-number leases (guides/HA.md section b): the active seals on an outbound SA only up to
//! a ceiling the standby has acknowledged, so a takeover that resumes above the ceiling can never
//! repeat a sequence number, whatever the packet rate and however late a sync message is.
//!
//! Rules, with `shift` = `oseq-shift`:
//! - every SA starts with an implicit lease of `shift` (the standby resumes an SA it holds no
//!   lease for at `shift + 1`): the first packets of a new CHILD SA never wait for the sync link;
//! - once `last_seq` passes `ceiling - shift/2` the active asks for `max(ceiling, last_seq) +
//!   shift`; at 590k packets/s and the default shift of 65,536 that is one 16-byte message per SA
//!   every 55 ms, and sealing stalls only if the ack takes longer than that;
//! - without a standby (sync link down) an SA the standby never knew is granted its next lease at
//!   once; one the standby may hold is never sealed past its acknowledged ceiling: it is rekeyed
//!   before (fresh keys make old sequence numbers harmless), and stalls if the rekey is late.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Ceiling in force (acknowledged, or granted alone for an SA the standby never knew).
    ceiling: u64,
    /// Asked for and not yet acknowledged: (sync sequence number, ceiling).
    asked: Option<(u64, u64)>,
    /// The standby may hold this SA (it was added or re-announced while the link was up).
    mirrored: bool,
    /// A rekey was asked for because the ceiling cannot be raised without the standby.
    rekey_asked: bool,
    /// The other node may have sealed above `ceiling` on this SA (it was active while this node
    /// was: `taint_all`): the ceiling is never raised again and the SA is rekeyed before it.
    tainted: bool,
}

/// What the caller must do for one SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    Nothing,
    /// The book has no lease for this SA: nothing to do (`check` of an SA this node does not lease).
    Unleased,
    /// Send `SyncMsg::Lease` with this ceiling (the book numbered it `seq`).
    Ask {
        spi_in: u32,
        seq: u64,
        ceiling: u64,
    },
    /// Set the dataplane ceiling of this SA.
    Raise {
        spi_in: u32,
        ceiling: u64,
    },
    /// Rekey this CHILD SA: it nears a ceiling that cannot be raised while the standby is away.
    Rekey {
        spi_in: u32,
    },
}

/// The active's leases, by inbound SPI of the CHILD SA.
#[derive(Debug)]
pub struct LeaseBook {
    shift: u64,
    sas: HashMap<u32, Lease>,
    /// Asks not yet acknowledged, by sync sequence number: an ack settles the ones it covers
    /// without a walk over every SA (a bulk transfer of 10,000 SAs is acked message by message).
    asks: BTreeMap<u64, u32>,
}

impl LeaseBook {
    /// `shift` is `oseq-shift` (at least 2).
    pub fn new(shift: u64) -> Self {
        LeaseBook { shift: shift.max(2), sas: HashMap::new(), asks: BTreeMap::new() }
    }

    pub fn shift(&self) -> u64 {
        self.shift
    }

    /// A CHILD SA was installed. Returns the ceiling to install it with (the implicit lease).
    pub fn add(&mut self, spi_in: u32, standby_connected: bool) -> u64 {
        self.add_from(spi_in, 1, standby_connected)
    }

    /// A CHILD SA was installed whose first sequence number is `next_seq` (after a takeover:
    /// where it resumes). Returns the ceiling to install it with. For a resumed SA the old active's
    /// standby is gone, so this node holds the only copy: the lease starts from `next_seq`.
    pub fn add_from(&mut self, spi_in: u32, next_seq: u64, standby_connected: bool) -> u64 {
        let ceiling = next_seq.saturating_sub(1).saturating_add(self.shift);
        let l =
            Lease { ceiling, asked: None, mirrored: standby_connected, rekey_asked: false, tainted: false };
        self.sas.insert(spi_in, l);
        ceiling
    }

    /// A CHILD SA was installed whose first sequence number `next_seq` is above 1 while a standby
    /// is connected: it seals nothing until the standby has a lease above `next_seq` (else the
    /// standby would resume it at `shift + 1`, possibly below what this node seals). The lease is
    /// asked for at once under sync sequence number `seq`. Returns (ceiling to install it with,
    /// ceiling to ask for).
    pub fn add_paused(&mut self, spi_in: u32, next_seq: u64, seq: u64) -> (u64, u64) {
        let ceiling = next_seq.saturating_sub(1);
        let want = ceiling.saturating_add(self.shift);
        let l =
            Lease { ceiling, asked: Some((seq, want)), mirrored: true, rekey_asked: false, tainted: false };
        self.sas.insert(spi_in, l);
        self.asks.insert(seq, spi_in);
        (ceiling, want)
    }

    pub fn remove(&mut self, spi_in: u32) {
        self.sas.remove(&spi_in);
    }

    pub fn len(&self) -> usize {
        self.sas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sas.is_empty()
    }

    /// Every SA in the book (inbound SPIs, unordered).
    pub fn spis(&self) -> Vec<u32> {
        self.sas.keys().copied().collect()
    }

    /// The ceiling in force for an SA.
    pub fn ceiling(&self, spi_in: u32) -> Option<u64> {
        self.sas.get(&spi_in).map(|l| l.ceiling)
    }

    /// Look at one SA whose outbound counter stands at `last_seq`. `next_seq` numbers a message
    /// the book asks to send.
    pub fn check(
        &mut self,
        spi_in: u32,
        last_seq: u64,
        standby_connected: bool,
        next_seq: &mut u64,
    ) -> LeaseOutcome {
        let shift = self.shift;
        let Some(l) = self.sas.get_mut(&spi_in) else { return LeaseOutcome::Unleased };
        if l.tainted {
            if l.rekey_asked || last_seq.saturating_add(shift / 2) < l.ceiling {
                return LeaseOutcome::Nothing;
            }
            l.rekey_asked = true;
            return LeaseOutcome::Rekey { spi_in };
        }
        let top = l.asked.map_or(l.ceiling, |(_, c)| c);
        if last_seq.saturating_add(shift / 2) < top {
            return LeaseOutcome::Nothing;
        }
        let want = top.max(last_seq).saturating_add(shift);
        if standby_connected {
            *next_seq += 1;
            l.asked = Some((*next_seq, want));
            self.asks.insert(*next_seq, spi_in);
            return LeaseOutcome::Ask { spi_in, seq: *next_seq, ceiling: want };
        }
        if !l.mirrored {
            l.ceiling = want;
            return LeaseOutcome::Raise { spi_in, ceiling: want };
        }
        if l.rekey_asked {
            return LeaseOutcome::Nothing;
        }
        l.rekey_asked = true;
        LeaseOutcome::Rekey { spi_in }
    }

    /// The standby applied every message up to `seq`: leases asked up to there are in force.
    pub fn acked(&mut self, seq: u64) -> Vec<LeaseOutcome> {
        let mut out = Vec::new();
        let later = self.asks.split_off(&seq.saturating_add(1));
        let settled = std::mem::replace(&mut self.asks, later);
        for (ask_seq, spi_in) in settled {
            // Skip an ask replaced since (a newer one, or a removed SA).
            let Some(l) = self.sas.get_mut(&spi_in) else { continue };
            if let Some((_, c)) = l.asked.filter(|(s, _)| *s == ask_seq) {
                l.asked = None;
                l.mirrored = true;
                if c > l.ceiling && !l.tainted {
                    l.ceiling = c;
                    out.push(LeaseOutcome::Raise { spi_in, ceiling: c });
                }
            }
        }
        out.sort_by_key(|o| match o {
            LeaseOutcome::Raise { spi_in, .. } => *spi_in,
            _ => 0,
        });
        out
    }

    /// The sync link went down: asks in flight will not be answered (the standby may or may not
    /// have applied them, so the SAs count as mirrored).
    pub fn link_down(&mut self) {
        self.asks.clear();
        for l in self.sas.values_mut() {
            if l.asked.take().is_some() {
                l.mirrored = true;
            }
        }
    }

    /// The other node was active while this one was (a split brain that ends with it stepping
    /// down): it may have sealed on any of these SAs above their ceilings, resuming where a
    /// takeover does. Each SA keeps its ceiling for good and is rekeyed before it (`check`),
    /// (docs/ha.md, B5). Returns the SAs newly tainted.
    pub fn taint_all(&mut self) -> Vec<u32> {
        let mut spis = Vec::new();
        for (&spi, l) in self.sas.iter_mut() {
            if !l.tainted {
                // `rekey_asked` stays as it was: should the rekey asked for now fail, `check`
                // asks again before the ceiling.
                l.tainted = true;
                spis.push(spi);
            }
        }
        spis.sort_unstable();
        spis
    }

    /// Bulk sync: announce this SA's lease again (the standby starts from nothing). Returns the
    /// ceiling to ask for: above anything sealed or granted.
    pub fn reannounce(&mut self, spi_in: u32, last_seq: u64, seq: u64) -> Option<u64> {
        let shift = self.shift;
        let l = self.sas.get_mut(&spi_in)?;
        // A tainted SA keeps its ceiling: the new standby learns it, nothing above.
        let want = if l.tainted { l.ceiling } else { l.ceiling.max(last_seq.saturating_add(shift)) };
        l.asked = Some((seq, want));
        l.mirrored = true;
        l.rekey_asked = l.rekey_asked && l.tainted;
        self.asks.insert(seq, spi_in);
        Some(want)
    }
}

/// Where a new active resumes an outbound SA: above any number the old active could have sealed.
pub fn resume_at(lease: Option<u64>, shift: u64) -> u64 {
    lease.unwrap_or(0).max(shift.max(2)).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn asks_ahead_and_raises_on_ack() {
        let mut b = LeaseBook::new(100);
        let mut seq = 0;
        assert_eq!(b.add(7, true), 100);
        assert_eq!(b.check(7, 10, true, &mut seq), LeaseOutcome::Nothing);
        assert_eq!(b.check(7, 50, true, &mut seq), LeaseOutcome::Ask { spi_in: 7, seq: 1, ceiling: 200 });
        assert_eq!(b.check(7, 60, true, &mut seq), LeaseOutcome::Nothing, "one ask at a time");
        assert_eq!(b.ceiling(7), Some(100), "not in force before the ack");
        assert_eq!(b.acked(1), vec![LeaseOutcome::Raise { spi_in: 7, ceiling: 200 }]);
        assert_eq!(b.ceiling(7), Some(200));
        assert_eq!(b.check(8, 10_000, true, &mut seq), LeaseOutcome::Unleased, "not in the book");
        assert_eq!(seq, 1, "nothing asked for it");
    }

    #[test]
    fn without_the_standby_a_known_sa_is_rekeyed_not_raised() {
        let mut b = LeaseBook::new(100);
        let mut seq = 0;
        b.add(1, true);
        b.add(2, false);
        assert_eq!(b.check(1, 60, false, &mut seq), LeaseOutcome::Rekey { spi_in: 1 });
        assert_eq!(b.check(1, 99, false, &mut seq), LeaseOutcome::Nothing, "asked once");
        assert_eq!(b.ceiling(1), Some(100));
        assert_eq!(b.check(2, 60, false, &mut seq), LeaseOutcome::Raise { spi_in: 2, ceiling: 200 });
    }

    #[test]
    fn a_tainted_sa_is_never_raised_again() {
        let mut b = LeaseBook::new(100);
        let mut seq = 0;
        b.add(1, true);
        assert!(matches!(b.check(1, 60, true, &mut seq), LeaseOutcome::Ask { ceiling: 200, .. }));
        assert_eq!(b.taint_all(), vec![1]);
        assert_eq!(b.taint_all(), Vec::<u32>::new(), "once");
        assert_eq!(b.acked(seq), vec![], "an ask in flight raises nothing any more");
        assert_eq!(b.ceiling(1), Some(100));
        assert_eq!(b.reannounce(1, 70, 7), Some(100), "a new standby learns the ceiling, nothing above");
        assert_eq!(b.acked(7), vec![]);
        assert_eq!(b.check(1, 40, true, &mut seq), LeaseOutcome::Nothing);
        assert_eq!(
            b.check(1, 99, true, &mut seq),
            LeaseOutcome::Rekey { spi_in: 1 },
            "again before the ceiling"
        );
        assert_eq!(b.check(1, 99, true, &mut seq), LeaseOutcome::Nothing, "once");
        assert_eq!(b.ceiling(1), Some(100));
        b.add(2, true);
        assert!(
            matches!(b.check(2, 60, true, &mut seq), LeaseOutcome::Ask { .. }),
            "a new SA is leased as before"
        );
    }

    #[test]
    fn a_lost_ask_makes_the_sa_mirrored() {
        let mut b = LeaseBook::new(100);
        let mut seq = 0;
        b.add(1, false);
        assert!(matches!(b.check(1, 60, true, &mut seq), LeaseOutcome::Ask { .. }));
        b.link_down();
        assert_eq!(b.check(1, 60, false, &mut seq), LeaseOutcome::Rekey { spi_in: 1 });
    }

    #[test]
    fn resume_is_above_the_implicit_lease() {
        assert_eq!(resume_at(None, 65536), 65537);
        assert_eq!(resume_at(Some(200_000), 65536), 200_001);
    }

    proptest! {
        /// Whatever the schedule of packets, acks and link changes, the ceiling in force never
        /// exceeds what the standby acknowledged (or the implicit lease), for an SA it may hold:
        /// so `resume_at(standby's lease)` is above every number the active may seal.
        #[test]
        fn the_active_never_seals_above_what_the_standby_resumes_from(
            steps in proptest::collection::vec((0u8..4, 0u64..300), 1..200)
        ) {
            let shift = 100;
            let mut b = LeaseBook::new(shift);
            let mut seq = 0;
            let mut up = true;
            b.add(1, up);
            let mut last = 0u64;
            let mut in_flight: Vec<(u64, u64)> = vec![];
            let mut standby_lease: Option<u64> = None;
            for (op, n) in steps {
                match op {
                    0 => {
                        // Seal up to n packets, never past the ceiling in force.
                        last = (last + n).min(b.ceiling(1).unwrap());
                        match b.check(1, last, up, &mut seq) {
                            LeaseOutcome::Ask { seq: s, ceiling, .. } => in_flight.push((s, ceiling)),
                            LeaseOutcome::Raise { .. }
                            | LeaseOutcome::Rekey { .. }
                            | LeaseOutcome::Nothing
                            | LeaseOutcome::Unleased => {}
                        }
                    }
                    1 if up && !in_flight.is_empty() => {
                        // The standby applies the oldest ask and acks it.
                        let (s, c) = in_flight.remove(0);
                        standby_lease = Some(standby_lease.unwrap_or(0).max(c));
                        b.acked(s);
                    }
                    2 => {
                        up = !up;
                        if !up {
                            // Asks in flight may or may not have been applied.
                            if n % 2 == 0 {
                                for (_, c) in in_flight.drain(..) {
                                    standby_lease = Some(standby_lease.unwrap_or(0).max(c));
                                }
                            }
                            in_flight.clear();
                            b.link_down();
                        }
                    }
                    _ => {}
                }
                prop_assert!(last < resume_at(standby_lease, shift), "sealed {last}, standby resumes at {}", resume_at(standby_lease, shift));
            }
        }
    }
}
