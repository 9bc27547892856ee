//! The simulated network between endpoints: per directed link a delay drawn from a range (so
//! reordering falls out of random delay), loss, duplication and scheduled partitions. Deliveries
//! are ordered by (time, sequence number), so ties never depend on a hash map.

use std::collections::BTreeMap;
use std::time::Duration;
use tandem_crypto::{Random, SeededRandom};

/// The behaviour of one direction of a link.
#[derive(Debug, Clone, Copy)]
pub struct LinkModel {
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Probability (per mille) that a datagram is lost.
    pub loss_permille: u64,
    /// Probability (per mille) that a datagram is delivered twice.
    pub dup_permille: u64,
}

impl LinkModel {
    pub fn perfect(delay: Duration) -> Self {
        LinkModel { delay_min: delay, delay_max: delay, loss_permille: 0, dup_permille: 0 }
    }
}

/// A datagram on its way: from node `from` to node `to`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub from: usize,
    pub to: usize,
    pub payload: Packet,
}

#[derive(Debug, Clone)]
pub enum Packet {
    Ike(Vec<u8>),
    /// A simulated ESP packet: the SPI it was sent to and the sender's key for it.
    Esp {
        spi: u32,
        key: Vec<u8>,
        id: u64,
    },
}

pub struct Network {
    rng: SeededRandom,
    /// Simulated time (since the start) -> datagrams, in send order for equal times.
    queue: BTreeMap<(Duration, u64), Delivery>,
    seq: u64,
    /// links[from][to]
    pub links: Vec<Vec<LinkModel>>,
    /// Partitions: (from, to, start, end) during which that direction loses everything.
    pub partitions: Vec<(usize, usize, Duration, Duration)>,
    pub lost: u64,
    pub duplicated: u64,
}

impl Network {
    pub fn new(seed: u64, nodes: usize, model: LinkModel) -> Self {
        Network {
            rng: SeededRandom::from_u64(seed),
            queue: BTreeMap::new(),
            seq: 0,
            links: vec![vec![model; nodes]; nodes],
            partitions: Vec::new(),
            lost: 0,
            duplicated: 0,
        }
    }

    fn delay(&mut self, m: &LinkModel) -> Duration {
        let span = m.delay_max.saturating_sub(m.delay_min).as_micros() as u64;
        m.delay_min + Duration::from_micros(self.rng.up_to(span))
    }

    /// Send a datagram at `now`; IKE datagrams are subject to loss and duplication, ESP only to
    /// delay (the harness measures the tunnel, not the link).
    pub fn send(&mut self, now: Duration, from: usize, to: usize, payload: Packet) {
        let m = self.links[from][to];
        let ike = matches!(payload, Packet::Ike(_));
        let cut = self.partitions.iter().any(|&(f, t, s, e)| f == from && t == to && now >= s && now < e);
        if ike && (cut || self.rng.up_to(999) < m.loss_permille) {
            self.lost += 1;
            return;
        }
        let copies = if ike && self.rng.up_to(999) < m.dup_permille { 2 } else { 1 };
        if copies == 2 {
            self.duplicated += 1;
        }
        for _ in 0..copies {
            let at = now + self.delay(&m);
            self.seq += 1;
            self.queue.insert((at, self.seq), Delivery { from, to, payload: payload.clone() });
        }
    }

    pub fn next_time(&self) -> Option<Duration> {
        self.queue.keys().next().map(|k| k.0)
    }

    pub fn pop_due(&mut self, now: Duration) -> Option<Delivery> {
        let (&k, _) = self.queue.iter().next()?;
        if k.0 > now {
            return None;
        }
        self.queue.remove(&k)
    }

    pub fn ike_in_flight(&self) -> bool {
        self.queue.values().any(|d| matches!(d.payload, Packet::Ike(_)))
    }

    /// Make every link perfect from now on (the end of a run).
    pub fn heal(&mut self, delay: Duration) {
        for row in &mut self.links {
            for l in row.iter_mut() {
                *l = LinkModel::perfect(delay);
            }
        }
        self.partitions.clear();
    }
}
