//! Reqids: the stable number of a (vpn, CHILD SA configuration) pair, as the dataplane keys its
//! policies, trap routes and outbound SAs by it. A pair keeps its reqid across rekeys and reloads;
//! a reqid whose configuration is gone (and no SA uses any more) is released and reused, lowest
//! first, so the numbers stay small and never run out over many reloads.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct Reqids {
    by_name: HashMap<(String, String), u32>,
    free: BTreeSet<u32>,
    next: u32,
}

impl Reqids {
    /// The reqid of `vpn`/`child`, allocated on first use.
    pub fn get(&mut self, vpn: &str, child: &str) -> u32 {
        if let Some(&r) = self.by_name.get(&(vpn.to_string(), child.to_string())) {
            return r;
        }
        let r = self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next
        });
        self.by_name.insert((vpn.to_string(), child.to_string()), r);
        r
    }

    /// Release every reqid for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str, u32) -> bool) {
        let free = &mut self.free;
        self.by_name.retain(|(v, c), r| {
            let k = keep(v, c, *r);
            if !k {
                free.insert(*r);
            }
            k
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_per_pair_and_released_ones_are_reused_lowest_first() {
        let mut r = Reqids::default();
        assert_eq!((r.get("a", "x"), r.get("b", "x"), r.get("c", "x")), (1, 2, 3));
        assert_eq!(r.get("b", "x"), 2, "stable");
        r.retain(|v, _, _| v != "a" && v != "b");
        assert_eq!(r.get("c", "x"), 3, "kept across a reload");
        assert_eq!(r.get("d", "y"), 1);
        assert_eq!(r.get("e", "y"), 2);
        assert_eq!(r.get("f", "y"), 4);
    }
}
