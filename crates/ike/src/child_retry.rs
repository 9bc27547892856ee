//! Retrying a CHILD SA the peer refused (issue 9 section 5): with start-action `start` the
//! operator wants the tunnel up, so a refusal (TS_UNACCEPTABLE, NO_PROPOSAL_CHOSEN,
//! TEMPORARY_FAILURE, a peer not yet configured...) is asked again while the IKE SA lives, with
//! exponential backoff and jitter instead of never. Rekeys have their own rules (`rekey_child`).
//! For the same reason an IKE SA such a vpn initiated that fails before it is established (no
//! answer, a refusal, the half-open timeout) is initiated again with the same backoff, as
//! strongSwan does with `keyingtries = 0`: one burst of lost IKE_SA_INIT requests must not leave
//! the tunnel down until an operator steps in.

use crate::config::StartAction;
use crate::endpoint::Endpoint;
use crate::sa::{ChildRetry, IkeSa, Queued};
use std::time::{Duration, Instant};
use tandem_crypto::Random;
use tracing::{info, warn};

/// First wait; doubled per refusal up to [`RETRY_MAX`].
pub(crate) const RETRY_BASE: Duration = Duration::from_secs(5);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(300);

/// The wait after `attempt` earlier refusals: RETRY_BASE * 2^attempt, capped, drawn at random in
/// its upper half so that many tunnels refused at once do not come back at once.
pub(crate) fn retry_delay(rng: &mut dyn Random, attempt: u32) -> Duration {
    let full = RETRY_BASE.saturating_mul(1 << attempt.min(16)).min(RETRY_MAX);
    let half = (full / 2).as_millis() as u64;
    Duration::from_millis(half + rng.up_to(half))
}

impl Endpoint {
    /// The peer refused the new CHILD SA `name`: ask again later.
    pub(crate) fn schedule_child_retry(&mut self, now: Instant, sa: &mut IkeSa, name: &str, why: &str) {
        let attempt = match sa.child_retries.iter().position(|r| r.name == name) {
            Some(i) => sa.child_retries.remove(i).attempt + 1,
            None => 0,
        };
        let wait = retry_delay(&mut *self.rng, attempt);
        warn!(target: "ike", vpn = ?sa.vpn, child = name, ?wait, attempt = attempt + 1, "CHILD SA refused by peer: {why}; retrying");
        sa.child_retries.push(ChildRetry { name: name.to_string(), attempt, at: Some(now + wait) });
    }

    /// The CHILD SA `name` is up: its refusals are forgotten.
    pub(crate) fn child_retry_done(sa: &mut IkeSa, name: &str) {
        sa.child_retries.retain(|r| r.name != name);
    }

    /// Our initiation of `vpn` failed before its IKE SA was established: initiate it again
    /// later if it has start-action `start`. `start_attempts` is forgotten once an IKE SA is up.
    pub(crate) fn schedule_start_retry(&mut self, now: Instant, vpn: &str) {
        let starts = self.peer(vpn).is_some_and(|p| {
            p.remote_addr.is_some() && p.children.iter().any(|c| c.start_action == StartAction::Start)
        });
        if !starts {
            return;
        }
        let attempt = self.start_attempts.get(vpn).copied().unwrap_or(0);
        self.start_attempts.insert(vpn.to_string(), attempt + 1);
        let wait = retry_delay(&mut *self.rng, attempt);
        warn!(target: "ike", vpn, ?wait, attempt = attempt + 1, "IKE SA not established: initiating again");
        self.restarts.push((now + wait, vpn.to_string()));
    }

    /// Ask again for the refused CHILD SAs whose wait is over (from the SA's timer).
    pub(crate) fn run_child_retries(&mut self, now: Instant, sa: &mut IkeSa) {
        let due: Vec<String> = sa
            .child_retries
            .iter_mut()
            .filter(|r| r.at.is_some_and(|t| t <= now))
            .map(|r| {
                r.at = None;
                r.name.clone()
            })
            .collect();
        for name in due {
            let up = sa.children.iter().any(|c| c.name == name && c.live());
            let pending =
                sa.queue.iter().any(|q| matches!(q, Queued::CreateChild { name: n, .. } if *n == name))
                    || matches!(&sa.request, Some(crate::sa::Request::CreateChild(p)) if p.name == name);
            if up || pending {
                continue;
            }
            info!(target: "ike", vpn = ?sa.vpn, child = %name, "asking again for the refused CHILD SA");
            self.enqueue(now, sa, Queued::CreateChild { name, rekeys_spi_in: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_crypto::SeededRandom;

    #[test]
    fn backoff_doubles_within_bounds_and_is_jittered() {
        let mut rng = SeededRandom::from_seed([7; 32]);
        for attempt in 0..20 {
            let full = RETRY_BASE.saturating_mul(1 << attempt.min(16)).min(RETRY_MAX);
            let d = retry_delay(&mut rng, attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
        let draws: std::collections::BTreeSet<Duration> = (0..50).map(|_| retry_delay(&mut rng, 3)).collect();
        assert!(draws.len() > 40, "jittered");
    }
}
