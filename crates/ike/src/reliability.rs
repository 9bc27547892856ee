//! The reliability layer of one IKE SA (RFC 7296 sections 2.1-2.4), kept apart from the exchanges:
//! Message IDs in both directions, retransmission of our outstanding request with exponential backoff,
//! and the cache of our last response so a retransmitted request gets the identical bytes back.

use crate::config::RetransmitConfig;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

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
    #[serde(skip)]
    pub deadline: Option<Instant>,
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

    /// Record a request being sent; returns its Message ID.
    pub fn send_request(&mut self, now: Instant, datagrams: Vec<Vec<u8>>, cfg: &RetransmitConfig) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.outstanding =
            Some(Outstanding { message_id: id, datagrams, tries: 0, deadline: Some(now + cfg.timeout) });
        id
    }

    /// Replace the bytes of the outstanding request (IKE_SA_INIT retried with a cookie or new KE keeps
    /// Message ID 0).
    pub fn resend_as(&mut self, now: Instant, datagrams: Vec<Vec<u8>>, cfg: &RetransmitConfig) {
        if let Some(o) = &mut self.outstanding {
            o.datagrams = datagrams;
            o.tries = 0;
            o.deadline = Some(now + cfg.timeout);
        }
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

    /// Record our response to the request with `message_id`.
    pub fn responded(&mut self, message_id: u32, datagrams: Vec<Vec<u8>>) {
        self.last_response = Some((message_id, datagrams));
        self.expected_peer_id = message_id.wrapping_add(1);
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.outstanding.as_ref().and_then(|o| o.deadline)
    }

    pub fn tick(&mut self, now: Instant, cfg: &RetransmitConfig) -> Tick {
        let Some(o) = &mut self.outstanding else { return Tick::Nothing };
        match o.deadline {
            Some(d) if d <= now => {}
            _ => return Tick::Nothing,
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
        r.responded(0, vec![vec![7, 7]]);
        assert_eq!(r.check_request(0), RequestCheck::Resend(vec![vec![7, 7]]));
        assert_eq!(r.check_request(1), RequestCheck::Process);
        assert_eq!(r.check_request(5), RequestCheck::Drop);
        assert_eq!(r.check_request(u32::MAX), RequestCheck::Drop);
    }
}
