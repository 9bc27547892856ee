//! Anti-replay window for inbound SAs (RFC 4303 section 3.4.3), kept as an RFC 6479 ring of 64-bit
//! blocks so that sliding the window clears whole words instead of shifting a long bitmap.
//!
//! The hot path uses the window in two steps (RFC 4303 section 3.4.3 order): [`ReplayWindow::check`]
//! before the ICV is verified, so replays cost no decryption, and [`ReplayWindow::check_and_mark`] after
//! it succeeded, which checks again (another thread may have accepted the same number meanwhile) and
//! records the number. Only authenticated packets ever move the window.
//!
//! Sizes: the requested size is rounded up to a multiple of 64 (the *effective* window, see
//! [`effective_window`]); 0 disables the check. A packet is accepted when its sequence number is
//! above `top - effective_window` and was not seen before. Storage is one extra block beyond the
//! window, rounded up to a power of two so the ring index is a mask.

use serde::{Deserialize, Serialize};

/// Window size used when the configuration does not give one.
pub const DEFAULT_WINDOW: u32 = 1024;
/// Largest window accepted (8 KiB of bitmap per inbound SA).
pub const MAX_WINDOW: u32 = 65536;
/// Window used to infer the ESN high bits when anti-replay is disabled: the nearest epoch wins.
const ESN_INFER_WINDOW_DISABLED: u32 = 1 << 31;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Below the window (or zero, which a sender never uses).
    #[error("sequence number below the replay window")]
    Old,
    /// Inside the window and already received.
    #[error("sequence number already received")]
    Duplicate,
}

/// A requested window size larger than [`MAX_WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replay window {0} is larger than the maximum {MAX_WINDOW}")]
pub struct WindowTooLarge(pub u32);

/// The window actually enforced for a requested size: rounded up to a multiple of 64; 0 stays 0
/// (disabled). For example 32 becomes 64 and 1000 becomes 1024.
pub fn effective_window(requested: u32) -> u32 {
    requested.div_ceil(64).saturating_mul(64)
}

/// Infers the full 64-bit ESN from the low 32 bits received (RFC 4303 Appendix A.2.1).
///
/// `window_top` is the highest authenticated sequence number, `window` the effective window
/// (0, anti-replay disabled, infers the epoch nearest to the top). The guess is exact for every
/// number in `(top - window, top + 2^32 - window]`; a number outside that range gets a wrong high
/// half and then fails the ICV check, because the high half is authenticated.
pub fn esn_infer(window_top: u64, seq_low: u32, window: u32) -> u64 {
    let w = if window == 0 { ESN_INFER_WINDOW_DISABLED } else { window.min(ESN_INFER_WINDOW_DISABLED) };
    let th = (window_top >> 32) as u32;
    let tl = window_top as u32;
    let bottom = tl.wrapping_sub(w - 1);
    let seq_hi = if tl >= w - 1 {
        // Case A: the window lies within one epoch; a number below it belongs to the next epoch.
        if seq_low >= bottom {
            th
        } else {
            th.checked_add(1).unwrap_or(th)
        }
    } else if seq_low >= bottom {
        // Case B: the window spans two epochs and this number sits in its older part. Before the
        // first epoch there is nothing, so epoch 0 it is.
        th.saturating_sub(1)
    } else {
        th
    };
    (u64::from(seq_hi) << 32) | u64::from(seq_low)
}

/// The window's state in a portable form, for HA sync: `bitmap` bit `i` (word `i / 64`, bit
/// `i % 64`) says whether `top - i` was received, for `i` below `window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayState {
    pub window: u32,
    pub top: u64,
    pub bitmap: Vec<u64>,
}

/// One inbound SA's anti-replay window. See the module documentation.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Effective window, a multiple of 64; 0 = disabled.
    window: u32,
    /// Highest authenticated sequence number (0 before the first packet).
    top: u64,
    /// Ring of blocks; block `b` (numbers `64b..64b+63`) lives at `b & mask`.
    blocks: Box<[u64]>,
    mask: u64,
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow").field("window", &self.window).field("top", &self.top).finish()
    }
}

impl ReplayWindow {
    /// A window of `requested` packets (rounded up to a multiple of 64; 0 disables the check).
    pub fn new(requested: u32) -> Result<Self, WindowTooLarge> {
        if requested > MAX_WINDOW {
            return Err(WindowTooLarge(requested));
        }
        let window = effective_window(requested);
        let nblocks = if window == 0 { 1 } else { (window as usize / 64 + 1).next_power_of_two() };
        Ok(ReplayWindow {
            window,
            top: 0,
            blocks: vec![0; nblocks].into_boxed_slice(),
            mask: nblocks as u64 - 1,
        })
    }

    /// The effective window (0 when disabled).
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Highest authenticated sequence number so far.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// The full sequence number of a packet that carried `seq_low`, given this window's top.
    pub fn infer_esn(&self, seq_low: u32) -> u64 {
        esn_infer(self.top, seq_low, self.window)
    }

    /// The cheap check before decryption: would `seq` be accepted now? Does not change anything.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if self.window == 0 || seq > self.top {
            return Ok(());
        }
        if seq == 0 || self.top - seq >= u64::from(self.window) {
            return Err(ReplayError::Old);
        }
        if self.bit(seq) {
            return Err(ReplayError::Duplicate);
        }
        Ok(())
    }

    /// After the packet authenticated: check again and record `seq`, sliding the window if it is new
    /// highest.
    pub fn check_and_mark(&mut self, seq: u64) -> Result<(), ReplayError> {
        self.check(seq)?;
        if self.window == 0 {
            self.top = self.top.max(seq);
            return Ok(());
        }
        if seq > self.top {
            self.slide_to(seq);
        }
        let slot = self.slot(seq);
        self.blocks[slot] |= 1u64 << (seq & 63);
        Ok(())
    }

    /// HA takeover: move the top ahead by `n` and treat every number skipped as already received,
    /// because the previous active node may have accepted them after the last sync.
    pub fn advance(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let lo = self.top.saturating_add(1);
        let new_top = self.top.saturating_add(n);
        if self.window == 0 {
            self.top = new_top;
            return;
        }
        self.slide_to(new_top);
        let floor = new_top.saturating_sub(u64::from(self.window) - 1).max(1);
        self.set_range(lo.max(floor), new_top);
    }

    /// The state for HA sync.
    pub fn export(&self) -> ReplayState {
        let words = self.window as usize / 64;
        let mut bitmap = vec![0u64; words];
        for i in 0..u64::from(self.window) {
            if i > self.top {
                break;
            }
            let seq = self.top - i;
            if seq != 0 && self.bit(seq) {
                bitmap[(i / 64) as usize] |= 1 << (i % 64);
            }
        }
        ReplayState { window: self.window, top: self.top, bitmap }
    }

    /// Merges `state` (from [`ReplayWindow::export`] of the other node) into this window, forward
    /// only: the top becomes the higher of the two and a number counts as received if either side
    /// received it. Nothing this window already refuses is accepted afterwards, so an old or
    /// reordered sync message, or one that crossed packets this node accepted itself, cannot reopen
    /// the window to a replay. The window size stays this SA's own; bits of `state` beyond it, or
    /// below the merged window, are ignored, and missing bits count as not received, so a
    /// malformed state cannot do more than a well-formed one.
    pub fn import(&mut self, state: &ReplayState) {
        if state.top > self.top {
            if self.window == 0 {
                self.top = state.top;
            } else {
                self.slide_to(state.top);
            }
        }
        if self.window == 0 {
            return;
        }
        // Bit `i` of `state` is `state.top - i`; only numbers inside the merged window (above
        // `self.top - window`) are recorded, and 0 never is.
        let below_window = self.top.saturating_sub(u64::from(self.window));
        let span = u64::from(self.window.min(state.window)).min(state.top.saturating_sub(below_window));
        for (w, &word) in state.bitmap.iter().enumerate().take(span.div_ceil(64) as usize) {
            let mut bits = word;
            while bits != 0 {
                let i = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if i >= span {
                    break;
                }
                let seq = state.top - i;
                let slot = self.slot(seq);
                self.blocks[slot] |= 1 << (seq & 63);
            }
        }
    }

    fn slot(&self, seq: u64) -> usize {
        ((seq >> 6) & self.mask) as usize
    }

    fn bit(&self, seq: u64) -> bool {
        self.blocks[self.slot(seq)] & (1 << (seq & 63)) != 0
    }

    /// Moves the top to `new_top` (> top), clearing the blocks that enter the window.
    fn slide_to(&mut self, new_top: u64) {
        let old_block = self.top >> 6;
        let new_block = new_top >> 6;
        let fresh = (new_block - old_block).min(self.blocks.len() as u64);
        for i in 1..=fresh {
            let slot = ((old_block + i) & self.mask) as usize;
            self.blocks[slot] = 0;
        }
        self.top = new_top;
    }

    /// Marks every number in `lo..=hi` (all inside the window) as received.
    fn set_range(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        for block in (lo >> 6)..=(hi >> 6) {
            let first = if block == lo >> 6 { lo & 63 } else { 0 };
            let last = if block == hi >> 6 { hi & 63 } else { 63 };
            let bits = (u64::MAX >> (63 - last)) & (u64::MAX << first);
            let slot = (block & self.mask) as usize;
            self.blocks[slot] |= bits;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_window_rounds_up_to_64() {
        assert_eq!(effective_window(0), 0);
        assert_eq!(effective_window(1), 64);
        assert_eq!(effective_window(32), 64);
        assert_eq!(effective_window(64), 64);
        assert_eq!(effective_window(1000), 1024);
        assert_eq!(effective_window(4096), 4096);
        assert!(ReplayWindow::new(MAX_WINDOW + 1).is_err());
    }

    #[test]
    fn in_order_out_of_order_old_and_duplicate() {
        let mut w = ReplayWindow::new(64).unwrap();
        assert_eq!(w.check(0), Err(ReplayError::Old));
        for s in 1..=10 {
            w.check_and_mark(s).unwrap();
        }
        assert_eq!(w.check(5), Err(ReplayError::Duplicate));
        w.check_and_mark(100).unwrap();
        assert_eq!(w.check(36), Err(ReplayError::Old));
        assert_eq!(w.check(37), Ok(()));
        w.check_and_mark(37).unwrap();
        assert_eq!(w.check_and_mark(37), Err(ReplayError::Duplicate));
        assert_eq!(w.top(), 100);
    }

    #[test]
    fn disabled_window_accepts_everything_but_tracks_top() {
        let mut w = ReplayWindow::new(0).unwrap();
        w.check_and_mark(7).unwrap();
        w.check_and_mark(7).unwrap();
        w.check_and_mark(3).unwrap();
        assert_eq!(w.top(), 7);
    }

    #[test]
    fn esn_inference_cases_a_and_b() {
        let w = 64;
        // Case A, same epoch and next epoch.
        assert_eq!(esn_infer((5 << 32) | 1000, 990, w), (5 << 32) | 990);
        assert_eq!(esn_infer((5 << 32) | 1000, 2000, w), (5 << 32) | 2000);
        assert_eq!(esn_infer((5 << 32) | 0xFFFF_FFF0, 3, w), (6 << 32) | 3);
        // Case B, top just after a wrap: numbers at the end of the previous epoch.
        assert_eq!(esn_infer((6 << 32) | 3, 0xFFFF_FFF0, w), (5 << 32) | 0xFFFF_FFF0);
        assert_eq!(esn_infer((6 << 32) | 3, 10, w), (6 << 32) | 10);
        // Nothing before epoch 0.
        assert_eq!(esn_infer(3, 0xFFFF_FFF0, w), 0xFFFF_FFF0);
    }

    #[test]
    fn advance_marks_skipped_numbers() {
        let mut w = ReplayWindow::new(128).unwrap();
        w.check_and_mark(10).unwrap();
        w.advance(50);
        assert_eq!(w.top(), 60);
        for s in 10..=60 {
            assert_eq!(w.check(s), Err(ReplayError::Duplicate), "{s}");
        }
        assert_eq!(w.check(9), Ok(()), "numbers below the old top were not skipped");
        assert_eq!(w.check(61), Ok(()));
        w.advance(10_000);
        assert_eq!(w.check(10_060), Err(ReplayError::Duplicate));
        assert_eq!(w.check(10_061), Ok(()));
    }

    #[test]
    fn export_import_round_trip() {
        let mut w = ReplayWindow::new(256).unwrap();
        for s in [1u64, 5, 9, 200, 300, 301, 420] {
            w.check_and_mark(s).unwrap();
        }
        let st = w.export();
        let mut v = ReplayWindow::new(256).unwrap();
        v.import(&st);
        assert_eq!(v.export(), st);
        for s in 0..500 {
            assert_eq!(v.check(s), w.check(s), "{s}");
        }
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<ReplayState>(&json).unwrap(), st);
    }

    fn window_with(size: u32, marks: &[u64]) -> ReplayWindow {
        let mut w = ReplayWindow::new(size).unwrap();
        for &s in marks {
            let _ = w.check_and_mark(s);
        }
        w
    }

    #[test]
    fn import_of_an_older_state_never_moves_the_window_back() {
        let mut w = window_with(256, &[1, 2, 3, 400, 450, 500]);
        let old = window_with(256, &[250, 260, 300]).export();
        w.import(&old);
        assert_eq!(w.top(), 500, "the top stays");
        for s in [400, 450, 500] {
            assert_eq!(w.check(s), Err(ReplayError::Duplicate), "own mark {s} kept");
        }
        for s in [1, 2, 3, 244] {
            assert_eq!(w.check(s), Err(ReplayError::Old), "{s} stays below the window");
        }
        assert_eq!(w.check(245), Ok(()), "the window floor did not move down");
        for s in [250, 260, 300] {
            assert_eq!(w.check(s), Err(ReplayError::Duplicate), "the other node's mark {s} merged");
        }
        assert_eq!(w.check(251), Ok(()), "unmarked by both: still acceptable");
    }

    #[test]
    fn import_of_a_newer_state_slides_and_keeps_own_marks() {
        let mut w = window_with(128, &[60, 90, 100]);
        w.import(&window_with(128, &[120, 150]).export());
        assert_eq!(w.top(), 150);
        for s in [60, 90, 100, 120, 150] {
            assert_eq!(w.check(s), Err(ReplayError::Duplicate), "{s}");
        }
        assert_eq!(w.check(22), Err(ReplayError::Old));
        for s in [23, 61, 101, 130, 149, 151] {
            assert_eq!(w.check(s), Ok(()), "{s}");
        }
        // A jump further than the ring: the own marks fall below the window and are Old.
        w.import(&window_with(128, &[100_000]).export());
        assert_eq!(w.top(), 100_000);
        assert_eq!(w.check(150), Err(ReplayError::Old));
        assert_eq!(w.check(99_999), Ok(()));
    }

    #[test]
    fn import_of_a_malformed_state_stays_in_bounds() {
        let mut w = window_with(64, &[10]);
        let bad = [
            ReplayState { window: u32::MAX, top: 20, bitmap: vec![u64::MAX; 10] },
            ReplayState { window: 64, top: 30, bitmap: Vec::new() },
            ReplayState { window: 7, top: 0, bitmap: vec![u64::MAX] },
            ReplayState { window: 4096, top: u64::MAX, bitmap: vec![1] },
        ];
        w.import(&bad[0]);
        assert_eq!(w.top(), 20);
        assert_eq!(w.check(0), Err(ReplayError::Old), "0 is never received, never accepted");
        for s in 1..=20 {
            assert!(w.check(s).is_err(), "{s}: every bit of the first state was set");
        }
        w.import(&bad[1]);
        assert_eq!((w.top(), w.check(25)), (30, Ok(())), "missing bits are not received");
        w.import(&bad[2]);
        assert_eq!(w.top(), 30);
        w.import(&bad[3]);
        assert_eq!(w.top(), u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(ReplayError::Duplicate));
        let mut off = ReplayWindow::new(0).unwrap();
        off.import(&bad[0]);
        off.import(&bad[1]);
        assert_eq!(off.top(), 30, "a disabled window only keeps the higher top");
    }

    /// A mirrored state as a real window makes it, or anything a broken or hostile sync link
    /// could deliver.
    fn any_state() -> impl Strategy<Value = ReplayState> {
        let real = (prop_oneof![Just(64u32), Just(128), Just(256), Just(1024)], marks())
            .prop_map(|(size, m)| window_with(size, &m).export());
        let raw = (0u32..3000, 0u64..4000, proptest::collection::vec(any::<u64>(), 0..40))
            .prop_map(|(window, top, bitmap)| ReplayState { window, top, bitmap });
        prop_oneof![real, raw]
    }

    fn marks() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(prop_oneof![3 => 0u64..1500, 1 => 1500u64..4000], 0..200)
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// After an import, every number refused before is still refused, the top never
        /// decreases, and the result is exactly the union of both sides over the merged window.
        #[test]
        fn import_is_forward_only_and_a_union(
            size in prop_oneof![Just(0u32), Just(64), Just(128), Just(1024)],
            own in marks(),
            state in any_state(),
        ) {
            let mut w = window_with(size, &own);
            let before: Vec<bool> = (0..=5000).map(|s| w.check(s).is_ok()).collect();
            let top_before = w.top();
            w.import(&state);
            let top = w.top();
            prop_assert!(top >= top_before);
            prop_assert_eq!(top, top_before.max(state.top));
            let win = u64::from(w.window());
            for seq in 0..=5000u64 {
                let after = w.check(seq).is_ok();
                if !before[seq as usize] {
                    prop_assert!(!after, "{} was refused before the import, accepted after", seq);
                }
                let expect = if win == 0 || seq > top {
                    true
                } else {
                    let i = state.top.wrapping_sub(seq);
                    let theirs = seq <= state.top
                        && i < u64::from(state.window)
                        && state.bitmap.get((i / 64) as usize).is_some_and(|b| b & (1 << (i % 64)) != 0);
                    let ours = seq <= top_before && !before[seq as usize];
                    seq != 0 && top - seq < win && !theirs && !ours
                };
                prop_assert_eq!(after, expect, "seq {} top {} (was {}) state top {}", seq, top, top_before, state.top);
            }
        }
    }
}
