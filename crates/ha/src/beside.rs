//! Whether the other node ran SAs beside this active one (docs/ha.md, B5). A node that takes over
//! resumes each outbound SA just above the ceiling the active's leases stop at; if it then steps
//! down (a VRRP blip, a healed partition) and is bulk-synced, the active must not raise those
//! ceilings again, or it would seal the numbers the other node already sealed with the same keys.
//! The other node's Hello tells: it says "active", or, after a partition this node did not see
//! through, it says "standby" with another epoch (its takeover count) than last time.

use crate::msg::Role;

/// Fed the other node's Hellos while this node is active; reset when this node takes over or
/// steps down (what the other node did before is not beside this node's run).
#[derive(Debug, Default)]
pub struct BesideWatch {
    /// The epoch in the other node's last "standby" Hello.
    standby_epoch: Option<u64>,
    /// It said "active" since.
    was_active: bool,
}

impl BesideWatch {
    /// A Hello from the other node while this one is active. True when it says "standby" after
    /// having run SAs beside this node since its last "standby".
    pub fn hello(&mut self, role: Role, epoch: u64) -> bool {
        match role {
            Role::Active => {
                self.was_active = true;
                false
            }
            Role::Standby => {
                let moved = self.standby_epoch.is_some_and(|e| e != epoch);
                let ran = std::mem::take(&mut self.was_active) || moved;
                self.standby_epoch = Some(epoch);
                ran
            }
        }
    }

    pub fn reset(&mut self) {
        *self = BesideWatch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_that_stays_one_ran_nothing() {
        let mut w = BesideWatch::default();
        assert!(!w.hello(Role::Standby, 0), "joins");
        assert!(!w.hello(Role::Standby, 0), "reconnects, or restarts without a takeover");
    }

    #[test]
    fn a_blip_to_active_and_back_is_seen() {
        let mut w = BesideWatch::default();
        w.hello(Role::Standby, 0);
        assert!(!w.hello(Role::Active, 1), "a split brain: nothing to do while it lasts");
        assert!(w.hello(Role::Standby, 1), "stepped down: it ran SAs beside this node");
        assert!(!w.hello(Role::Standby, 1), "once");
    }

    #[test]
    fn a_takeover_behind_a_partition_is_seen_by_its_epoch() {
        let mut w = BesideWatch::default();
        w.hello(Role::Standby, 2);
        assert!(w.hello(Role::Standby, 3), "took over while the link was down, stepped down since");
        assert!(w.hello(Role::Standby, 0), "or took over and restarted (its count starts again)");
    }

    #[test]
    fn what_came_before_this_nodes_takeover_does_not_count() {
        let mut w = BesideWatch::default();
        w.hello(Role::Standby, 0);
        w.hello(Role::Active, 1);
        w.reset();
        assert!(!w.hello(Role::Standby, 1), "a planned switchback: this node resumed above the other");
    }
}
