//! A model of one node's ESP dataplane, fed only by the engine's events, with the SAD's rules
//! (crates/esp/src/sad.rs): per reqid the outbound SA is the best non-retired pair, an active one
//! before a deferred one, then the newest; a deferred pair becomes active on its first received
//! packet, which retires the pair it replaces, or when the pair it replaces stops sending; a pair
//! reported down as rekeyed lingers for packets in flight.

use std::collections::BTreeMap;
use std::time::Duration;
use tandem_ike::{DownReason, Event};

#[derive(Debug, Clone)]
pub struct ModelPair {
    pub spi_in: u32,
    pub spi_out: u32,
    pub reqid: u32,
    pub key_in: Vec<u8>,
    pub key_out: Vec<u8>,
    pub active: bool,
    pub serial: u64,
    pub retired_until: Option<Duration>,
    pub replaces: Option<u32>,
}

#[derive(Debug, Default)]
pub struct DataplaneModel {
    pub pairs: BTreeMap<u32, ModelPair>,
    serial: u64,
    pub linger: Duration,
    /// Retired pairs the dataplane dropped by itself once their linger ran out: the engine's
    /// later down event for them is not an error.
    lingered_out: std::collections::BTreeSet<u32>,
    /// Problems in the event stream (a down for an SA never up, an SPI installed twice...).
    pub errors: Vec<String>,
}

impl DataplaneModel {
    pub fn new(linger: Duration) -> Self {
        DataplaneModel { linger, ..Default::default() }
    }

    fn retire(&mut self, spi: u32, now: Duration) {
        let linger = self.linger;
        if let Some(p) = self.pairs.get_mut(&spi) {
            if p.retired_until.is_none() {
                p.retired_until = Some(now + linger);
                let reqid = p.reqid;
                self.promote_successor(spi, reqid);
            }
        }
    }

    /// A deferred pair whose predecessor stops sending becomes active (the SAD's `promote`).
    fn promote_successor(&mut self, spi: u32, reqid: u32) {
        let successor = |q: &&mut ModelPair| {
            q.replaces == Some(spi) && q.reqid == reqid && !q.active && q.retired_until.is_none()
        };
        if let Some(q) = self.pairs.values_mut().find(successor) {
            q.active = true;
        }
    }

    pub fn apply(&mut self, now: Duration, e: &Event) {
        match e {
            Event::ChildSaUp(c) => {
                if self.pairs.contains_key(&c.spi_in) {
                    self.errors.push(format!("SPI {:#x} installed twice", c.spi_in));
                    return;
                }
                self.serial += 1;
                self.pairs.insert(
                    c.spi_in,
                    ModelPair {
                        spi_in: c.spi_in,
                        spi_out: c.spi_out,
                        reqid: c.reqid,
                        key_in: c.keys_in.encr_key.to_vec(),
                        key_out: c.keys_out.encr_key.to_vec(),
                        active: !c.defer_outbound,
                        serial: self.serial,
                        retired_until: None,
                        replaces: c.replaces_spi_in,
                    },
                );
                if let (Some(old), false) = (c.replaces_spi_in, c.defer_outbound) {
                    self.retire(old, now);
                }
            }
            Event::ChildSaDown { spi_in, reason, .. } => {
                if !self.pairs.contains_key(spi_in) {
                    if self.lingered_out.remove(spi_in) {
                        return;
                    }
                    self.errors.push(format!("down for SPI {spi_in:#x} that is not installed"));
                    return;
                }
                if *reason == DownReason::Rekeyed {
                    self.retire(*spi_in, now);
                } else if let Some(p) = self.pairs.remove(spi_in).filter(|p| p.retired_until.is_none()) {
                    self.promote_successor(*spi_in, p.reqid);
                }
            }
            _ => {}
        }
    }

    /// Drop lingering pairs whose time is up.
    pub fn expire(&mut self, now: Duration) {
        let gone: Vec<u32> = self
            .pairs
            .values()
            .filter(|p| p.retired_until.is_some_and(|t| t <= now))
            .map(|p| p.spi_in)
            .collect();
        for spi in gone {
            self.pairs.remove(&spi);
            self.lingered_out.insert(spi);
        }
    }

    /// The pair the dataplane would send on for `reqid`.
    pub fn outbound(&self, reqid: u32) -> Option<&ModelPair> {
        self.pairs
            .values()
            .filter(|p| p.reqid == reqid && p.retired_until.is_none())
            .max_by_key(|p| (p.active, p.serial))
    }

    /// A packet arrived for `spi` sealed with `key`: true when accepted.
    pub fn receive(&mut self, now: Duration, spi: u32, key: &[u8]) -> Result<(), String> {
        let Some(p) = self.pairs.get_mut(&spi) else { return Err(format!("no inbound SA {spi:#x}")) };
        if p.key_in != key {
            return Err(format!("inbound SA {spi:#x} has other keys"));
        }
        if !p.active {
            p.active = true;
            if let Some(old) = p.replaces {
                self.retire(old, now);
            }
        }
        Ok(())
    }

    /// Pairs still in service (not lingering).
    pub fn live(&self) -> Vec<&ModelPair> {
        self.pairs.values().filter(|p| p.retired_until.is_none()).collect()
    }
}
