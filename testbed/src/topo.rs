//! Gateway topologies for traffic tests: the plain `Pair` (one veth between the gateways) and a NAT
//! topology (left gateway, a masquerading router, right gateway), both with IPv4 and IPv6 outer
//! addressing and the protected-subnet host addresses on `lo` of each gateway.
//!
//! Addresses (the right side is the same in both, so charon configurations do not change):
//!
//! | | plain | NAT |
//! |---|---|---|
//! | left outer | 10.99.1.1, fd00:99:1::1 | 10.99.2.1, fd00:99:2::1 (private side) |
//! | router | | 10.99.2.254, fd00:99:2::fe (private); 10.99.1.254, fd00:99:1::fe (public) |
//! | right outer | 10.99.1.2, fd00:99:1::2 | 10.99.1.2, fd00:99:1::2 |
//! | left inner (on lo) | 10.99.10.1, fd00:99:10::1 | same |
//! | right inner (on lo) | 10.99.20.1, fd00:99:20::1 | same |
//!
//! The right gateway has no route to the left's private network: only masqueraded traffic gets
//! through, so a tunnel across the NAT must use NAT traversal.

use crate::netns::{must, unique_tag, Netns, Pair};

pub const LEFT_INNER4: &str = "10.99.10.1";
pub const LEFT_INNER6: &str = "fd00:99:10::1";
pub const RIGHT_INNER4: &str = "10.99.20.1";
pub const RIGHT_INNER6: &str = "fd00:99:20::1";
pub const LEFT_NET4: &str = "10.99.10.0/24";
pub const LEFT_NET6: &str = "fd00:99:10::/64";
pub const RIGHT_NET4: &str = "10.99.20.0/24";
pub const RIGHT_NET6: &str = "fd00:99:20::/64";

/// Two gateways, optionally with a NAT router between them. Dropping it removes every namespace
/// (and the processes started in them).
pub struct Topo {
    pub left: Netns,
    pub right: Netns,
    pub router: Option<Netns>,
    /// The left gateway's outer interface.
    pub left_if: String,
    /// The right gateway's outer interface.
    pub right_if: String,
    /// The router's interface towards the right gateway (the public side), when there is one.
    pub router_public_if: Option<String>,
}

impl Topo {
    /// The plain pair: one veth, no NAT.
    pub fn plain() -> Topo {
        let Pair { left, right, left_if, right_if } = Pair::new();
        Topo { left, right, router: None, left_if, right_if, router_public_if: None }
    }

    /// `plain()` or `nat()`.
    pub fn new(nat: bool) -> Topo {
        if nat {
            Topo::nat()
        } else {
            Topo::plain()
        }
    }

    /// Left gateway behind a masquerading router (IPv4 and IPv6), right gateway on the public side.
    pub fn nat() -> Topo {
        let tag = unique_tag();
        let left = Netns::new(format!("tdm{tag}L"));
        let router = Netns::new(format!("tdm{tag}N"));
        let right = Netns::new(format!("tdm{tag}R"));
        // left <-> router (private), router <-> right (public).
        let (la, ra) = (format!("t{tag}a"), format!("t{tag}p"));
        let (rb, b) = (format!("t{tag}q"), format!("t{tag}b"));
        must("ip", &["link", "add", &la, "type", "veth", "peer", "name", &ra]);
        must("ip", &["link", "add", &rb, "type", "veth", "peer", "name", &b]);
        must("ip", &["link", "set", &la, "netns", &left.name]);
        must("ip", &["link", "set", &ra, "netns", &router.name]);
        must("ip", &["link", "set", &rb, "netns", &router.name]);
        must("ip", &["link", "set", &b, "netns", &right.name]);
        left.ip(&["addr", "add", "10.99.2.1/24", "dev", &la]);
        left.ip(&["addr", "add", "fd00:99:2::1/64", "dev", &la, "nodad"]);
        router.ip(&["addr", "add", "10.99.2.254/24", "dev", &ra]);
        router.ip(&["addr", "add", "fd00:99:2::fe/64", "dev", &ra, "nodad"]);
        router.ip(&["addr", "add", "10.99.1.254/24", "dev", &rb]);
        router.ip(&["addr", "add", "fd00:99:1::fe/64", "dev", &rb, "nodad"]);
        right.ip(&["addr", "add", "10.99.1.2/24", "dev", &b]);
        right.ip(&["addr", "add", "fd00:99:1::2/64", "dev", &b, "nodad"]);
        for (ns, dev) in [(&left, &la), (&router, &ra), (&router, &rb), (&right, &b)] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        left.ip(&["route", "add", "default", "via", "10.99.2.254"]);
        left.ip(&["-6", "route", "add", "default", "via", "fd00:99:2::fe"]);
        left.ip(&["addr", "add", "10.99.10.1/32", "dev", "lo"]);
        left.ip(&["addr", "add", "fd00:99:10::1/128", "dev", "lo"]);
        right.ip(&["addr", "add", "10.99.20.1/32", "dev", "lo"]);
        right.ip(&["addr", "add", "fd00:99:20::1/128", "dev", "lo"]);
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let o = router.exec("sysctl", &["-qw", key]);
            assert!(o.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&o.stderr));
        }
        let rules = format!(
            "table inet tandemnat {{\n  chain post {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"{rb}\" masquerade\n  }}\n}}\n"
        );
        let mut nft = router.command("nft");
        nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = nft.spawn().expect("run nft (apt-get install nftables)");
        {
            use std::io::Write;
            child.stdin.take().expect("nft stdin").write_all(rules.as_bytes()).expect("write nft rules");
        }
        let st = child.wait_with_output().expect("nft");
        assert!(st.status.success(), "nft: {}", String::from_utf8_lossy(&st.stderr));
        Topo { left, right, router: Some(router), left_if: la, right_if: b, router_public_if: Some(rb) }
    }

    pub fn nat_enabled(&self) -> bool {
        self.router.is_some()
    }

    /// The left gateway's own outer address.
    pub fn left_outer(&self, v6: bool) -> &'static str {
        match (self.nat_enabled(), v6) {
            (false, false) => "10.99.1.1",
            (false, true) => "fd00:99:1::1",
            (true, false) => "10.99.2.1",
            (true, true) => "fd00:99:2::1",
        }
    }

    /// The left gateway's address as the right gateway sees it (the router's, behind NAT).
    pub fn left_public(&self, v6: bool) -> &'static str {
        match (self.nat_enabled(), v6) {
            (false, false) => "10.99.1.1",
            (false, true) => "fd00:99:1::1",
            (true, false) => "10.99.1.254",
            (true, true) => "fd00:99:1::fe",
        }
    }

    pub fn right_outer(&self, v6: bool) -> &'static str {
        if v6 {
            "fd00:99:1::2"
        } else {
            "10.99.1.2"
        }
    }

    /// Where to watch the wire between the gateways: (namespace, interface). Behind NAT this is the
    /// router's public side, what an observer on the Internet would see.
    pub fn wire(&mut self) -> (&mut Netns, String) {
        match (&mut self.router, &self.router_public_if) {
            (Some(r), Some(i)) => (r, i.clone()),
            _ => (&mut self.left, self.left_if.clone()),
        }
    }
}

/// Inner (protected) host addresses: (left, right).
pub fn inner(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        (LEFT_INNER6, RIGHT_INNER6)
    } else {
        (LEFT_INNER4, RIGHT_INNER4)
    }
}

/// Protected subnets: (left, right).
pub fn nets(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        (LEFT_NET6, RIGHT_NET6)
    } else {
        (LEFT_NET4, RIGHT_NET4)
    }
}
