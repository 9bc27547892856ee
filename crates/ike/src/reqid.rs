//! Reqids: the stable number of a (vpn, CHILD SA configuration) pair, as the dataplane keys its
//! policies, trap routes and outbound SAs by it. A pair keeps its reqid across rekeys and reloads;
//! a reqid whose configuration is gone (and no SA uses any more) is released and reused, lowest
//! first, so the numbers stay small and never run out over many reloads.
//!
//! A vpn that accepts any remote address serves many peers with one configuration; its CHILD
//! SAs cannot share the configuration's reqid, or the dataplane would send every peer's traffic
//! on whichever outbound SA came last. Each such CHILD SA gets an instance reqid of its own,
//! inherited by its rekeys and released when it goes without a successor. A released instance
//! reqid waits in a FIFO behind [`INSTANCE_QUARANTINE`] others before reuse, so that a number
//! the dataplane may still hold for a lingering SA is not handed to another peer at once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

/// Released instance reqids kept out of use before the oldest is reused.
pub const INSTANCE_QUARANTINE: usize = 1024;

/// What [`Reqids::adopt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// This node numbered it alike already.
    Same,
    /// This node's numbers changed (the daemon re-keys its policies).
    Renumbered,
    /// Refused: a mirrored instance CHILD SA holds the number.
    Conflict,
}

#[derive(Debug, Default)]
pub struct Reqids {
    by_name: HashMap<(String, String), u32>,
    free: BTreeSet<u32>,
    next: u32,
    instances: HashSet<u32>,
    instance_free: VecDeque<u32>,
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

    /// A reqid for one CHILD SA instance (see the module doc).
    pub fn instance(&mut self) -> u32 {
        let r = if self.instance_free.len() > INSTANCE_QUARANTINE {
            self.instance_free.pop_front().unwrap_or_default()
        } else {
            self.next += 1;
            self.next
        };
        self.instances.insert(r);
        r
    }

    /// The CHILD SA holding instance reqid `r` went without a successor. Configuration reqids
    /// are ignored here (`retain` releases those).
    pub fn release_instance(&mut self, r: u32) {
        if self.instances.remove(&r) {
            self.instance_free.push_back(r);
        }
    }

    /// HA standby: instance reqid `r` is held by a CHILD SA mirrored from the active node, so it
    /// is never handed out here. A configuration this node numbered `r` moves to a new number
    /// (returns true: the daemon re-keys its policies).
    pub fn claim_instance(&mut self, r: u32) -> bool {
        let moved = self.evict(r);
        self.instance_free.retain(|&x| x != r);
        self.free.remove(&r);
        self.next = self.next.max(r);
        self.instances.insert(r);
        moved
    }

    /// HA standby: the active node numbers `vpn`/`child` as `r`, and this node takes that number
    /// for it, so that after a takeover the mirrored CHILD SAs and this node's policies and trap
    /// routes agree. The two nodes' numberings differ when their reload histories do: a node that
    /// learnt a configuration by reload numbers it after those it had, one that starts with the
    /// same file numbers it in file order. A configuration this node had numbered `r` moves to a
    /// new number (the active's own number for it will move it again when one of its SAs is
    /// mirrored).
    pub fn adopt(&mut self, vpn: &str, child: &str, r: u32) -> Adopted {
        let key = (vpn.to_string(), child.to_string());
        if self.by_name.get(&key) == Some(&r) {
            return Adopted::Same;
        }
        if self.instances.contains(&r) {
            // A mirrored instance holds it: the active numbers both alike, which it never does
            // while it runs; the newer mirror of the two will correct this node.
            return Adopted::Conflict;
        }
        self.evict(r);
        if let Some(old) = self.by_name.insert(key, r) {
            self.free.insert(old);
        }
        self.free.remove(&r);
        self.instance_free.retain(|&x| x != r);
        self.next = self.next.max(r);
        Adopted::Renumbered
    }

    /// The configuration this node numbered `r`, if any, gets a new number.
    fn evict(&mut self, r: u32) -> bool {
        let Some(key) = self.by_name.iter().find(|(_, &x)| x == r).map(|(k, _)| k.clone()) else {
            return false;
        };
        self.next += 1;
        self.by_name.insert(key, self.next);
        true
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

    #[test]
    fn mirrored_reqids_are_never_handed_out_again() {
        let mut r = Reqids::default();
        assert_eq!(r.adopt("v", "net", 5), Adopted::Renumbered);
        assert_eq!(r.get("v", "net"), 5);
        assert_eq!(r.adopt("v", "net", 5), Adopted::Same, "the same number again");
        assert!(!r.claim_instance(9));
        assert_eq!(r.adopt("w", "net", 9), Adopted::Conflict, "a mirrored instance holds 9");
        let mut fresh: BTreeSet<u32> = (0..20).map(|_| r.instance()).collect();
        fresh.extend((0..5).map(|i| r.get("x", &i.to_string())));
        assert!(!fresh.contains(&9) && !fresh.contains(&5), "{fresh:?}");
    }

    #[test]
    fn a_standby_takes_the_active_numbering_whatever_its_reload_history() {
        // The active had c1 and c3, then learnt c2 by reload: c1=1, c3=2, c2=3. The standby started
        // with the new file: c1=1, c2=2, c3=3.
        let mut active = Reqids::default();
        let _ = (active.get("v", "c1"), active.get("v", "c3"), active.get("v", "c2"));
        let mut standby = Reqids::default();
        let _ = (standby.get("v", "c1"), standby.get("v", "c2"), standby.get("v", "c3"));
        for child in ["c3", "c1", "c2"] {
            let r = active.get("v", child);
            let did = standby.adopt("v", child, r);
            assert_ne!(did, Adopted::Conflict, "{child}");
        }
        for child in ["c1", "c2", "c3"] {
            assert_eq!(standby.get("v", child), active.get("v", child), "{child}");
        }
        // A trap-only configuration the active has no SA of keeps a number of its own, unique.
        let t = standby.get("v", "trap");
        assert!(![1, 2, 3].contains(&t), "{t}");
        // An instance the active numbers like one of this node's configurations moves it.
        let trap = standby.get("v", "trap");
        assert!(standby.claim_instance(trap));
        assert_ne!(standby.get("v", "trap"), trap);
        let fresh: BTreeSet<u32> = (0..5).map(|_| standby.instance()).collect();
        assert!(!fresh.contains(&trap) && !fresh.contains(&standby.get("v", "trap")), "{fresh:?}");
    }

    #[test]
    fn instance_reqids_are_unique_and_reused_only_after_the_quarantine() {
        let mut r = Reqids::default();
        let config = r.get("v", "net");
        let a = r.instance();
        let b = r.instance();
        assert!(a != b && a != config && b != config);
        r.release_instance(config);
        assert_eq!(r.get("v", "net"), config, "a configuration reqid is not released as an instance");
        r.release_instance(a);
        r.release_instance(a);
        let fresh: BTreeSet<u32> = (0..INSTANCE_QUARANTINE).map(|_| r.instance()).collect();
        assert!(!fresh.contains(&a), "not reused within the quarantine");
        for x in fresh.iter().copied() {
            r.release_instance(x);
        }
        assert_eq!(r.instance(), a, "the oldest released is reused first");
        assert_ne!(r.get("w", "net"), a);
    }
}
