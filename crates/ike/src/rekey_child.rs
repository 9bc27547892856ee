//! CHILD SA rekey collisions (RFC 7296 sections 2.8, 2.8.1, 2.25.1; ENGINE.md rows C1-C9): the
//! decisions taken when our rekey's response arrives, when the peer asks to rekey an SA, and when
//! our rekey is refused. The exchanges themselves live in `ex_child`.

use crate::api::DownReason;
use crate::endpoint::Endpoint;
use crate::sa::{IkeSa, Queued, Request, Retired};
use std::time::{Duration, Instant};
use tandem_crypto::Random;
use tandem_wire::NotifyType;
use tracing::{debug, info};

/// How our completed rekey of an SA relates to the peer's rekey of the same SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collision {
    /// The peer did not rekey it (or its rekey already went away): ours is the successor.
    None,
    /// Both rekeyed; our exchange had the lowest nonce, so our new SA is redundant.
    Lost { theirs: u32 },
    /// Both rekeyed; the peer's new SA (inbound SPI `theirs`) is redundant.
    Won { theirs: u32 },
}

/// The lower nonce of an exchange, compared as charon's `get_lower_nonce` does.
fn lower<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    a.min(b)
}

/// Retry wait after TEMPORARY_FAILURE: a random 6-15 s (RFC 7296 section 2.25 asks for a random
/// delay so that both peers do not collide again).
/// Near the hard lifetime the wait shrinks to half of what is left, so that a refused rekey
/// gets another chance before the SA dies.
pub(crate) fn retry_delay(rng: &mut dyn Random, now: Instant, expire_at: Option<Instant>) -> Duration {
    let wait = Duration::from_millis(6_000 + rng.up_to(9_000));
    let Some(t) = expire_at else { return wait };
    let left = t.saturating_duration_since(now);
    if wait < left / 2 {
        return wait;
    }
    // Random within the second quarter of what is left, so that two peers that refused each
    // other do not meet again at the same instant.
    let quarter = (left / 4).as_millis() as u64;
    Duration::from_millis(quarter + rng.up_to(quarter))
}

impl Endpoint {
    /// The peer's live rekey of `old` (a CHILD SA it initiated that replaces `old`), newest first.
    fn peer_rekey_of(sa: &IkeSa, old: u32, ours: u32) -> Option<usize> {
        sa.children.iter().rposition(|c| {
            !c.initiated && c.replaces == Some(old) && c.spi_in != ours && c.retired.is_none() && !c.deleting
        })
    }

    /// Settle our completed rekey of `old` against a simultaneous rekey by the peer, before the
    /// new SA is installed: the exchange holding the lowest of the four nonces made the redundant SA.
    pub(crate) fn settle_child_rekey(sa: &IkeSa, old: u32, ours: u32, ni: &[u8], nr: &[u8]) -> Collision {
        let Some(i) = Self::peer_rekey_of(sa, old, ours) else { return Collision::None };
        let theirs = &sa.children[i];
        let Some((tni, tnr)) = &theirs.exchange_nonces else { return Collision::None };
        if lower(ni, nr) < lower(tni, tnr) {
            Collision::Lost { theirs: theirs.spi_in }
        } else {
            Collision::Won { theirs: theirs.spi_in }
        }
    }

    /// After our new SA `ours` (which rekeyed `old`) was recorded: retire what the outcome retires
    /// and queue the Delete its side owes (section 2.8.1: the creator of the redundant SA deletes
    /// it; the initiator of the surviving SA deletes the old one).
    pub(crate) fn conclude_child_rekey(&mut self, sa: &mut IkeSa, old: u32, ours: u32, outcome: Collision) {
        let vpn = sa.vpn.clone().unwrap_or_default();
        let set = |sa: &mut IkeSa, spi: u32, r: Retired| {
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == spi) {
                c.retired = Some(r);
            }
        };
        match outcome {
            Collision::Lost { theirs } => {
                info!(target: "ike", vpn, "simultaneous CHILD SA rekey: ours is redundant, deleting it");
                set(sa, ours, Retired::Redundant);
                set(sa, old, Retired::Replaced(theirs));
                sa.queue.insert(0, Queued::DeleteChild(vec![ours]));
            }
            Collision::Won { theirs } => {
                info!(target: "ike", vpn, "simultaneous CHILD SA rekey: ours wins");
                set(sa, theirs, Retired::Redundant);
                self.replace_old_child(sa, old, ours);
            }
            Collision::None => self.replace_old_child(sa, old, ours),
        }
    }

    fn replace_old_child(&mut self, sa: &mut IkeSa, old: u32, ours: u32) {
        if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == old) {
            c.retired = Some(Retired::Replaced(ours));
            sa.queue.insert(0, Queued::DeleteChild(vec![old]));
        }
        // Otherwise the peer deleted the old SA while our rekey was in flight without rekeying it
        // itself (an operator or lifetime delete): our new SA stands (section 2.25.1).
    }

    /// Whether the peer may rekey the CHILD SA at index `i` now. `Err` is the notify to answer:
    /// TEMPORARY_FAILURE while we delete it or after our own completed rekey replaced it (the
    /// Delete that ends it is on its way, section 2.25.1).
    pub(crate) fn may_peer_rekey(sa: &IkeSa, i: usize) -> Result<(), NotifyType> {
        let c = &sa.children[i];
        match c.retired {
            _ if c.deleting => Err(NotifyType::TEMPORARY_FAILURE),
            None => Ok(()),
            // The peer rekeys again an SA it already replaced (charon commit 84a5208d98 saw
            // Windows do this): the new link replaces the old one.
            Some(Retired::Replaced(s)) if sa.children.iter().any(|x| x.spi_in == s && !x.initiated) => Ok(()),
            Some(_) => Err(NotifyType::TEMPORARY_FAILURE),
        }
    }

    /// The peer answered our rekey of `old` with an error (rows C3, C5, C8).
    pub(crate) fn child_rekey_refused(&mut self, now: Instant, sa: &mut IkeSa, old: u32, err: NotifyType) {
        let Some(i) = sa.children.iter().position(|c| c.spi_in == old) else {
            return; // the peer deleted it meanwhile: it wanted it gone, recreate nothing
        };
        if let Some(t) = Self::peer_rekey_of(sa, old, 0) {
            // The peer's own rekey of it succeeded: that is the successor; wait for its Delete.
            let theirs = sa.children[t].spi_in;
            debug!(target: "ike", vpn = ?sa.vpn, "our CHILD SA rekey refused ({err}); the peer's rekey stands");
            sa.children[i].retired = Some(Retired::Replaced(theirs));
            return;
        }
        if sa.children[i].retired.is_some() || sa.children[i].deleting {
            return;
        }
        if err == NotifyType::CHILD_SA_NOT_FOUND {
            // The peer does not know it: drop our half and make a fresh one (section 2.25).
            // If another live CHILD SA serves the same policy, this one was a leftover of an
            // earlier collision that the peer already removed: dropping it is all that is needed.
            let name = sa.children[i].name.clone();
            let twin = sa.children.iter().any(|c| {
                c.spi_in != old && c.name == name && c.live() && c.local_ts == sa.children[i].local_ts
            });
            self.remove_child(sa, old, DownReason::InvalidSpi);
            if !twin {
                info!(target: "ike", vpn = ?sa.vpn, child = %name, "peer has no such CHILD SA: creating it anew");
                sa.queue.push(Queued::CreateChild { name, rekeys_spi_in: None });
            }
            return;
        }
        // TEMPORARY_FAILURE and the rest: try again later, at a random time.
        let wait = retry_delay(&mut *self.rng, now, sa.children[i].expire_at);
        debug!(target: "ike", vpn = ?sa.vpn, ?wait, "CHILD SA rekey refused ({err}): retrying");
        sa.children[i].rekey_at = Some(now + wait);
    }
}

impl IkeSa {
    /// Our request in flight rekeys or deletes this IKE SA (rows I4, I5).
    pub(crate) fn ike_exchange_in_flight(&self) -> bool {
        matches!(self.request, Some(Request::RekeyIke(_)) | Some(Request::DeleteIke))
    }

    /// Whether queued work `q` waits for the retry of our refused IKE SA rekey. CHILD SA creates
    /// and rekeys do: one of ours in flight makes us refuse the peer's IKE rekey (row I4) just as
    /// the peer's make it refuse ours (row I5), and two peers that take turns never get an IKE
    /// rekey through. Exception: a CHILD SA that would reach its hard lifetime before the retry is
    /// rekeyed at once. Deletes go on (they do not block the peer's IKE rekey).
    pub(crate) fn waits_for_ike_rekey(&self, q: &Queued) -> bool {
        if !self.ike_rekey_waits {
            return false;
        }
        let child = |spi: &u32| self.children.iter().find(|c| c.spi_in == *spi);
        match q {
            Queued::CreateChild { rekeys_spi_in: Some(spi), .. } => {
                let expires = child(spi).and_then(|c| c.expire_at);
                !matches!((expires, self.rekey_at), (Some(e), Some(r)) if e <= r)
            }
            Queued::CreateChild { rekeys_spi_in: None, .. } => true,
            _ => false,
        }
    }

    /// Our request in flight creates or rekeys a CHILD SA (row I4).
    pub(crate) fn child_exchange_in_flight(&self) -> bool {
        matches!(self.request, Some(Request::CreateChild(_)))
    }
}
