//! Routes that steer protected traffic into the dataplane's TUN (like charon's table 220): for
//! each CHILD SA, its remote traffic selectors are routed into the TUN in a table of our own,
//! consulted by a policy-routing rule for every packet that does not carry our fwmark. The
//! dataplane's outer sockets and the IKE sockets carry that mark, so ESP and IKE never loop back
//! into the TUN, even when a selector covers the peer's own address (transport mode, 0.0.0.0/0).
//!
//! Routes are changed with iproute2 (`ip`), the operator's own tool: each change is one short
//! command at SA install or removal, never on the packet path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Command;
use tandem_wire::TrafficSelector;
use tracing::{debug, warn};

/// The SO_MARK of tandemd's outer packets ("tn").
pub const FWMARK: u32 = 0x746e;
/// Priority of the policy-routing rules (just before the main table's 32766).
const RULE_PRIORITY: &str = "220";

/// One route: a prefix into an interface, optionally with a preferred source address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Route {
    dst: (IpAddr, u8),
    dev: String,
    src: Option<IpAddr>,
}

/// The routes tandemd installed, by the reqid of the CHILD SA they serve.
pub struct Routes {
    enabled: bool,
    table: String,
    by_reqid: HashMap<u32, Vec<Route>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        debug!(target: "esp", "ip {}", args.join(" "));
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The smallest list of prefixes covering the address range `[start, end]` (selectors are
/// ranges on the wire; routes are prefixes).
pub fn range_to_prefixes(start: IpAddr, end: IpAddr) -> Vec<(IpAddr, u8)> {
    let (bits, lo, hi) = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (32u32, u128::from(u32::from(s)), u128::from(u32::from(e))),
        (IpAddr::V6(s), IpAddr::V6(e)) => (128, u128::from(s), u128::from(e)),
        _ => return Vec::new(),
    };
    let to_ip = |v: u128| -> IpAddr {
        if bits == 32 {
            IpAddr::V4((v as u32).into())
        } else {
            IpAddr::V6(v.into())
        }
    };
    // Does the block of 2^k addresses at `cur` end within the range?
    let fits = |cur: u128, k: u32| -> bool {
        if k == 128 {
            cur == 0 && hi == u128::MAX
        } else {
            cur.checked_add((1u128 << k) - 1).is_some_and(|last| last <= hi)
        }
    };
    let mut out = Vec::new();
    let mut cur = lo;
    // A range splits into at most 2 * bits prefixes; the bound also guards the loop.
    while cur <= hi && out.len() < 2 * bits as usize {
        let mut k = if cur == 0 { bits } else { cur.trailing_zeros().min(bits) };
        while k > 0 && !fits(cur, k) {
            k -= 1;
        }
        out.push((to_ip(cur), (bits - k) as u8));
        if k == 128 {
            break;
        }
        match cur.checked_add(1u128 << k) {
            Some(next) if bits == 128 || next <= u128::from(u32::MAX) => cur = next,
            _ => break,
        }
    }
    out
}

/// A local address inside one of `local_ts` of the same family as `dst`, to use as the route's
/// source (so locally originated traffic matches the policy).
fn source_in(local_ts: &[TrafficSelector], v4: bool) -> Option<IpAddr> {
    // Never loopback or IPv6 link-local: with wide local selectors (0.0.0.0/0) those would be
    // found first, and no peer can answer them.
    crate::ifaddr::interface_addresses().into_iter().find(|ip| {
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        ip.is_ipv4() == v4
            && !ip.is_loopback()
            && !link_local
            && local_ts.iter().any(|ts| ts.is_ipv4() == v4 && ts.start_addr <= *ip && *ip <= ts.end_addr)
    })
}

impl Routes {
    /// Install the policy-routing rules (IPv4 and IPv6) for `table`; idempotent.
    pub fn new(enabled: bool, table: u32) -> Routes {
        let r = Routes { enabled, table: table.to_string(), by_reqid: HashMap::new() };
        if enabled {
            for fam in ["-4", "-6"] {
                // Remove a rule left by an earlier instance, then add ours.
                let _ = r.rule(fam, "del");
                if let Err(e) = r.rule(fam, "add") {
                    warn!(target: "esp", "policy routing rule not installed: {e}");
                }
            }
        }
        r
    }

    /// `ip FAM rule OP priority 220 not fwmark MARK lookup TABLE`.
    fn rule(&self, fam: &str, op: &str) -> Result<(), String> {
        let mark = format!("{FWMARK:#x}");
        ip(&[fam, "rule", op, "priority", RULE_PRIORITY, "not", "fwmark", &mark, "lookup", &self.table])
    }

    /// Route `remote_ts` into `dev` for the CHILD SA `reqid` (adds what is missing).
    pub fn ensure(
        &mut self,
        reqid: u32,
        dev: &str,
        local_ts: &[TrafficSelector],
        remote_ts: &[TrafficSelector],
    ) {
        if !self.enabled {
            return;
        }
        let mut wanted = Vec::new();
        for ts in remote_ts {
            let src = source_in(local_ts, ts.is_ipv4());
            for dst in range_to_prefixes(ts.start_addr, ts.end_addr) {
                let r = Route { dst, dev: dev.to_string(), src };
                if !wanted.contains(&r) {
                    wanted.push(r);
                }
            }
        }
        let have = self.by_reqid.entry(reqid).or_default();
        for r in wanted {
            if have.contains(&r) {
                continue;
            }
            let dst = format!("{}/{}", r.dst.0, r.dst.1);
            let mut args = vec!["route", "replace", &dst, "dev", &r.dev];
            let src = r.src.map(|s| s.to_string());
            if let Some(s) = &src {
                args.extend(["src", s.as_str()]);
            }
            args.extend(["table", self.table.as_str()]);
            match ip(&args) {
                Ok(()) => have.push(r),
                Err(e) => warn!(target: "esp", reqid, "route not installed: {e}"),
            }
        }
    }

    /// Remove the routes of `reqid`.
    pub fn remove(&mut self, reqid: u32) {
        for r in self.by_reqid.remove(&reqid).unwrap_or_default() {
            let dst = format!("{}/{}", r.dst.0, r.dst.1);
            // Another reqid may route the same prefix; leave it then.
            let shared = self.by_reqid.values().flatten().any(|o| o.dst == r.dst && o.dev == r.dev);
            if !shared {
                if let Err(e) = ip(&["route", "del", &dst, "dev", &r.dev, "table", &self.table]) {
                    debug!(target: "esp", reqid, "{e}");
                }
            }
        }
    }

    /// Remove every route and the rules (at shutdown).
    pub fn teardown(&mut self) {
        let reqids: Vec<u32> = self.by_reqid.keys().copied().collect();
        for reqid in reqids {
            self.remove(reqid);
        }
        if self.enabled {
            for fam in ["-4", "-6"] {
                let _ = self.rule(fam, "del");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_become_minimal_prefix_lists() {
        assert_eq!(range_to_prefixes(p("10.0.0.0"), p("10.0.0.255")), vec![(p("10.0.0.0"), 24)]);
        assert_eq!(range_to_prefixes(p("10.0.0.1"), p("10.0.0.1")), vec![(p("10.0.0.1"), 32)]);
        assert_eq!(range_to_prefixes(p("0.0.0.0"), p("255.255.255.255")), vec![(p("0.0.0.0"), 0)]);
        assert_eq!(
            range_to_prefixes(p("::"), p("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            vec![(p("::"), 0)]
        );
        assert_eq!(
            range_to_prefixes(p("10.0.0.1"), p("10.0.0.6")),
            vec![(p("10.0.0.1"), 32), (p("10.0.0.2"), 31), (p("10.0.0.4"), 31), (p("10.0.0.6"), 32)]
        );
        assert_eq!(range_to_prefixes(p("fd00::"), p("fd00::ffff:ffff:ffff:ffff")), vec![(p("fd00::"), 64)]);
        assert_eq!(
            range_to_prefixes(p("255.255.255.254"), p("255.255.255.255")),
            vec![(p("255.255.255.254"), 31)]
        );
        assert!(range_to_prefixes(p("10.0.0.9"), p("10.0.0.1")).is_empty());
    }
}
