//! The reliability layer of one IKE SA (RFC 7296 sections 2.1-2.4), kept apart from the exchanges:
//! Message IDs in both directions, retransmission of our outstanding request with exponential backoff,
//! and the cache of our last response so a retransmitted request gets the identical bytes back.
//!
//! Crossed Message IDs. Each direction counts its own Message IDs, so when both ends send a
//! request at the same moment (equal rekey timers) our request N and our response N to the peer's
//! request N are on the wire together. strongSwan's charon drops any message whose ID equals the
//! one it is still processing on that IKE SA, request or response (`ike_sa_manager.c`,
//! "ignoring request with ID N, already processing"), so one of the two is lost and the peer
//! waits for a retransmission (seconds): long enough for a rekey to run past the hard lifetime of
//! the SA it replaces. Two remedies, both only when the IDs cross and both harmless to any peer
//! (a duplicate is what retransmission already produces):
//! - our response N went out while our request N was in flight: when the peer's response N
//!   arrives (it has then all but finished with our request), send our response N again, and
//!   once more [`CROSSED_ECHO_DELAY`] later (the peer may still hold the IKE SA for a moment
//!   after sending its response: seen against charon);
//! - our request N goes out just after our response N: retransmit it once early, after
//!   [`CROSSED_RETRANSMIT`], before the normal schedule starts.

use crate::config::RetransmitConfig;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A request that follows our response with the same Message ID within this time may have
/// reached the peer while it was still processing that response.
pub const CROSSING_WINDOW: Duration = Duration::from_millis(200);
/// When such a request is retransmitted first (the normal schedule follows, tries unchanged).
pub const CROSSED_RETRANSMIT: Duration = Duration::from_millis(250);
/// The second resend of a response that crossed our request, after the peer's response.
pub const CROSSED_ECHO_DELAY: Duration = Duration::from_millis(100);

/// What the layer says about an incoming request's Message ID.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestCheck {
    /// The expected next request: process it.
    Process,
    /// A retransmission of the request we last answered: send these cached datagrams again.
    Resend(Vec<Vec<u8>>),
    /// Old, unknown or out of window: drop.
    Drop,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outstanding {
    pub message_id: u32,
    pub datagrams: Vec<Vec<u8>>,
    pub tries: u32,
    #[serde(with = "crate::snapshot::deadline", default)]
    pub deadline: Option<Instant>,
    /// The deadline is the early retransmission of a crossed request (see the module doc).
    #[serde(default)]
    pub early: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Reliability {
    /// Message ID of our next request.
    pub next_request_id: u32,
    /// Message ID we expect on the peer's next request.
    pub expected_peer_id: u32,
    pub outstanding: Option<Outstanding>,
    /// Our response to the peer's last request: (Message ID, datagrams).
    pub last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// When `last_response` was sent.
    #[serde(with = "crate::snapshot::deadline", default)]
    pub last_response_at: Option<Instant>,
    /// Message ID of a response we sent while our request with the same ID was in flight.
    #[serde(default)]
    pub crossed: Option<u32>,
    /// When to send `last_response` once more (the delayed resend of a crossed response).
    #[serde(with = "crate::snapshot::deadline", default)]
    pub echo_at: Option<Instant>,
}

/// Result of a timer tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    Nothing,
    Retransmit(Vec<Vec<u8>>),
    GiveUp,
}

impl Reliability {
    /// Window size 1: a new request may be sent only when none is outstanding.
    pub fn can_send(&self) -> bool {
        self.outstanding.is_none()
    }

    /// Whether the SA's last response is recent enough at `now` to be kept as a tombstone when
    /// the SA is removed (a retransmission of its request may still come).
    pub fn buries_at(&self, now: Instant) -> bool {
        self.last_response.is_some()
            && self.last_response_at.is_some_and(|t| now < t + crate::tombstones::TOMBSTONE_LIFETIME)
    }

    /// Record a request being sent; returns its Message ID.
    pub fn send_request(&mut self, now: Instant, datagrams: Vec<Vec<u8>>, cfg: &RetransmitConfig) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let crossed = matches!(
            (&self.last_response, self.last_response_at),
            (Some((rid, _)), Some(at)) if *rid == id && now.saturating_duration_since(at) < CROSSING_WINDOW
        );
        let first = if crossed { CROSSED_RETRANSMIT.min(cfg.timeout) } else { cfg.timeout };
        self.outstanding = Some(Outstanding {
            message_id: id,
            datagrams,
            tries: 0,
            deadline: Some(now + first),
            early: crossed,
        });
        id
    }

    /// Record a request sent with a fixed Message ID that is not part of the numbering (RFC 6311
    /// Message ID sync uses 0): it holds the window like any request, but the next request ID
    /// does not move.
    pub fn send_out_of_sequence(
        &mut self,
        now: Instant,
        message_id: u32,
        datagrams: Vec<Vec<u8>>,
        cfg: &RetransmitConfig,
    ) {
        self.outstanding = Some(Outstanding {
            message_id,
            datagrams,
            tries: 0,
            deadline: Some(now + cfg.timeout),
            early: false,
        });
    }

    /// Replace the bytes of the outstanding request (IKE_SA_INIT retried with a cookie or new KE keeps
    /// Message ID 0).
    pub fn resend_as(&mut self, now: Instant, datagrams: Vec<Vec<u8>>, cfg: &RetransmitConfig) {
        if let Some(o) = &mut self.outstanding {
            o.datagrams = datagrams;
            o.tries = 0;
            o.deadline = Some(now + cfg.timeout);
            o.early = false;
        }
    }

    /// HA takeover: this node inherits the SA with a request outstanding (the old active sent it;
    /// the peer may or may not have it). Returns its bytes to send again now, unchanged (same
    /// Message ID, same content: RFC 7296 section 2.1), with the retransmission schedule restarted
    /// but the tries so far kept.
    pub fn resume(&mut self, now: Instant, cfg: &RetransmitConfig) -> Option<Vec<Vec<u8>>> {
        let o = self.outstanding.as_mut()?;
        o.early = false;
        o.deadline = Some(now + backoff(cfg, o.tries));
        Some(o.datagrams.clone())
    }

    /// A response arrived: true when it answers the outstanding request (which is then cleared).
    pub fn accept_response(&mut self, message_id: u32) -> bool {
        match &self.outstanding {
            Some(o) if o.message_id == message_id => {
                self.outstanding = None;
                true
            }
            _ => false,
        }
    }

    pub fn check_request(&self, message_id: u32) -> RequestCheck {
        if message_id == self.expected_peer_id {
            return RequestCheck::Process;
        }
        match &self.last_response {
            Some((id, d)) if *id == message_id => RequestCheck::Resend(d.clone()),
            _ => RequestCheck::Drop,
        }
    }

    /// Record our response to the request with `message_id`, sent at `now`.
    pub fn responded(&mut self, now: Instant, message_id: u32, datagrams: Vec<Vec<u8>>) {
        if self.outstanding.as_ref().is_some_and(|o| o.message_id == message_id) {
            self.crossed = Some(message_id);
        }
        self.last_response = Some((message_id, datagrams));
        self.last_response_at = Some(now);
        // A new request proves the peer has our previous response.
        self.echo_at = None;
        self.expected_peer_id = message_id.wrapping_add(1);
    }

    /// The peer's response `message_id` was accepted at `now`: our response with the same ID,
    /// when it crossed our request, to be sent again now (and once more at `echo_at`).
    pub fn take_crossed_response(&mut self, now: Instant, message_id: u32) -> Option<Vec<Vec<u8>>> {
        if self.crossed != Some(message_id) {
            return None;
        }
        self.crossed = None;
        match &self.last_response {
            Some((id, d)) if *id == message_id => {
                self.echo_at = Some(now + CROSSED_ECHO_DELAY);
                Some(d.clone())
            }
            _ => None,
        }
    }

    /// The delayed resend of a crossed response, when due.
    pub fn due_echo(&mut self, now: Instant) -> Option<Vec<Vec<u8>>> {
        if self.echo_at.is_none_or(|t| t > now) {
            return None;
        }
        self.echo_at = None;
        self.last_response.as_ref().map(|(_, d)| d.clone())
    }

    pub fn deadline(&self) -> Option<Instant> {
        [self.outstanding.as_ref().and_then(|o| o.deadline), self.echo_at].into_iter().flatten().min()
    }

    pub fn tick(&mut self, now: Instant, cfg: &RetransmitConfig) -> Tick {
        let Some(o) = &mut self.outstanding else { return Tick::Nothing };
        match o.deadline {
            Some(d) if d <= now => {}
            _ => return Tick::Nothing,
        }
        if o.early {
            o.early = false;
            o.deadline = Some(now + cfg.timeout);
            return Tick::Retransmit(o.datagrams.clone());
        }
        if o.tries >= cfg.tries {
            o.deadline = None;
            return Tick::GiveUp;
        }
        o.tries += 1;
        o.deadline = Some(now + backoff(cfg, o.tries));
        Tick::Retransmit(o.datagrams.clone())
    }
}

/// Wait before the next retransmission after `tries` retransmissions.
pub fn backoff(cfg: &RetransmitConfig, tries: u32) -> Duration {
    let secs = cfg.timeout.as_secs_f64() * cfg.base.powi(tries as i32);
    Duration::from_secs_f64(secs.min(cfg.max_timeout.as_secs_f64()))
}

/// Total time from the first send until the layer gives up.
pub fn give_up_after(cfg: &RetransmitConfig) -> Duration {
    (0..=cfg.tries).map(|t| backoff(cfg, t)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RetransmitConfig {
        RetransmitConfig {
            timeout: Duration::from_secs(2),
            base: 2.0,
            tries: 3,
            max_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn retransmits_with_backoff_then_gives_up() {
        let t0 = Instant::now();
        let mut r = Reliability::default();
        assert_eq!(r.send_request(t0, vec![vec![1]], &cfg()), 0);
        assert!(!r.can_send());
        assert_eq!(r.tick(t0 + Duration::from_secs(1), &cfg()), Tick::Nothing);
        assert_eq!(r.tick(t0 + Duration::from_secs(2), &cfg()), Tick::Retransmit(vec![vec![1]]));
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(6)));
        assert_eq!(r.tick(t0 + Duration::from_secs(6), &cfg()), Tick::Retransmit(vec![vec![1]]));
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(11)), "capped at max_timeout");
        assert_eq!(r.tick(t0 + Duration::from_secs(11), &cfg()), Tick::Retransmit(vec![vec![1]]));
        assert_eq!(r.tick(t0 + Duration::from_secs(16), &cfg()), Tick::GiveUp);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn responses_match_only_the_outstanding_id() {
        let t0 = Instant::now();
        let mut r = Reliability::default();
        r.send_request(t0, vec![], &cfg());
        assert!(!r.accept_response(1));
        assert!(r.accept_response(0));
        assert!(!r.accept_response(0), "a duplicate response is ignored");
        assert_eq!(r.send_request(t0, vec![], &cfg()), 1);
    }

    #[test]
    fn request_window_and_response_cache() {
        let mut r = Reliability::default();
        assert_eq!(r.check_request(1), RequestCheck::Drop);
        assert_eq!(r.check_request(0), RequestCheck::Process);
        r.responded(Instant::now(), 0, vec![vec![7, 7]]);
        assert_eq!(r.check_request(0), RequestCheck::Resend(vec![vec![7, 7]]));
        assert_eq!(r.check_request(1), RequestCheck::Process);
        assert_eq!(r.check_request(5), RequestCheck::Drop);
        assert_eq!(r.check_request(u32::MAX), RequestCheck::Drop);
    }

    #[test]
    fn a_response_that_crossed_our_request_is_sent_again_once() {
        let t0 = Instant::now();
        let mut r = Reliability::default();
        r.send_request(t0, vec![vec![1]], &cfg());
        r.responded(t0, 0, vec![vec![9]]);
        assert_eq!(r.take_crossed_response(t0, 1), None, "only for the crossing ID");
        assert!(r.accept_response(0));
        assert_eq!(r.take_crossed_response(t0, 0), Some(vec![vec![9]]));
        assert_eq!(r.take_crossed_response(t0, 0), None, "once");
        assert_eq!(r.deadline(), Some(t0 + CROSSED_ECHO_DELAY), "and once more, later");
        assert_eq!(r.due_echo(t0), None);
        assert_eq!(r.due_echo(t0 + CROSSED_ECHO_DELAY), Some(vec![vec![9]]));
        assert_eq!((r.due_echo(t0 + CROSSED_ECHO_DELAY), r.deadline()), (None, None));
        // Not crossed: the request was answered before we answered the peer's.
        r.send_request(t0, vec![vec![2]], &cfg());
        assert!(r.accept_response(1));
        r.responded(t0, 1, vec![vec![8]]);
        assert_eq!(r.take_crossed_response(t0, 1), None);
    }

    #[test]
    fn a_request_just_after_our_response_with_its_id_is_retransmitted_early() {
        let t0 = Instant::now();
        let mut r = Reliability::default();
        r.responded(t0, 0, vec![vec![9]]);
        r.send_request(t0 + Duration::from_millis(5), vec![vec![1]], &cfg());
        let early = t0 + Duration::from_millis(5) + CROSSED_RETRANSMIT;
        assert_eq!(r.deadline(), Some(early));
        assert_eq!(r.tick(early, &cfg()), Tick::Retransmit(vec![vec![1]]));
        // Then the normal schedule, with every try still left.
        assert_eq!(r.deadline(), Some(early + Duration::from_secs(2)));
        assert_eq!(r.outstanding.as_ref().map(|o| o.tries), Some(0));
        assert!(r.accept_response(0));
        // Long after our response, or with another ID: the normal first timeout.
        r.responded(t0, 1, vec![vec![8]]);
        r.send_request(t0 + Duration::from_secs(1), vec![vec![2]], &cfg());
        assert_eq!(r.deadline(), Some(t0 + Duration::from_secs(3)));
    }
}
