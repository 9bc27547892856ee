//! The anti-replay window against a reference model: a set of seen numbers and the top; accept iff
//! `seq > top - window` (effective window), not seen, and not zero. Window sizes 32..4096, in-order,
//! out-of-order, duplicates and old numbers, 32-bit and ESN mode across the 2^32 boundary (where the
//! real window only sees the low 32 bits and infers the rest; a wrong guess fails authentication).

use proptest::prelude::*;
use std::collections::HashSet;
use tandem_esp::replay::{effective_window, ReplayError, ReplayWindow};

struct Model {
    window: u64,
    top: u64,
    seen: HashSet<u64>,
}

impl Model {
    fn accepts(&self, seq: u64) -> bool {
        seq != 0 && seq > self.top.saturating_sub(self.window) && !self.seen.contains(&seq)
    }
    fn mark(&mut self, seq: u64) {
        self.seen.insert(seq);
        self.top = self.top.max(seq);
    }
}

fn offsets() -> impl Strategy<Value = Vec<i64>> {
    proptest::collection::vec(
        prop_oneof![
            8 => -5000i64..=300,
            2 => -70i64..=70,
            1 => 1000i64..=20_000,
        ],
        1..400,
    )
}

fn run(window: u32, base: u64, offs: &[i64], esn: bool) -> Result<(), TestCaseError> {
    let mut real = ReplayWindow::new(window).unwrap();
    let mut model = Model { window: u64::from(effective_window(window)), top: 0, seen: HashSet::new() };
    real.check_and_mark(base).unwrap();
    model.mark(base);
    for &off in offs {
        let seq = (model.top as i128 + off as i128).clamp(0, u64::MAX as i128) as u64;
        let expect = model.accepts(seq);
        let got = if esn {
            let inferred = real.infer_esn(seq as u32);
            // A wrong high half means the ICV (which covers it) fails: the packet is not accepted.
            inferred == seq && real.check(inferred).is_ok() && real.check_and_mark(inferred).is_ok()
        } else {
            let cheap = real.check(seq).is_ok();
            let marked = real.check_and_mark(seq).is_ok();
            prop_assert_eq!(cheap, marked, "check and check_and_mark disagree at {}", seq);
            marked
        };
        prop_assert_eq!(got, expect, "seq {} top {} window {}", seq, model.top, model.window);
        if expect {
            model.mark(seq);
            prop_assert_eq!(real.check(seq), Err(ReplayError::Duplicate));
        }
        prop_assert_eq!(real.top(), model.top);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn matches_model_32bit(window in 32u32..=4096, base in 1u64..100_000, offs in offsets()) {
        run(window, base, &offs, false)?;
    }

    #[test]
    fn matches_model_esn_across_wrap(
        window in 32u32..=4096,
        epoch in 0u64..4,
        below in 0u64..3000,
        offs in offsets(),
    ) {
        // Start just below an epoch boundary so the run crosses 2^32 * (epoch + 1).
        let base = ((epoch + 1) << 32) - below - 1;
        run(window, base, &offs, true)?;
    }

    #[test]
    fn export_import_preserves_decisions(window in 32u32..=4096, base in 1u64..100_000, offs in offsets()) {
        let mut a = ReplayWindow::new(window).unwrap();
        a.check_and_mark(base).unwrap();
        let mut top = base;
        for off in offs {
            let seq = (top as i64 + off).max(0) as u64;
            if a.check_and_mark(seq).is_ok() {
                top = top.max(seq);
            }
        }
        let mut b = ReplayWindow::new(window).unwrap();
        b.import(&a.export());
        for s in top.saturating_sub(5000)..=top + 5 {
            prop_assert_eq!(a.check(s), b.check(s), "seq {}", s);
        }
    }
}

#[test]
fn esn_window_spanning_the_boundary_accepts_late_packets_of_the_old_epoch() {
    let mut w = ReplayWindow::new(1024).unwrap();
    let top = (1u64 << 32) + 5;
    w.check_and_mark(top).unwrap();
    let late = (1u64 << 32) - 100;
    assert_eq!(w.infer_esn(late as u32), late);
    w.check_and_mark(late).unwrap();
    assert_eq!(w.check_and_mark(w.infer_esn(late as u32)), Err(ReplayError::Duplicate));
    let next = (1u64 << 32) + 6;
    assert_eq!(w.infer_esn(next as u32), next);
}
