//! A protected host behind the cluster (`cluster.rs`), on its lan segment, using the LAN VIP as its
//! gateway: traffic to the peer's protected network is routed by whichever gateway holds the LAN
//! VIP into its tandemd, and the answers come back the same way. Unlike the cluster's protected
//! address on each gateway's `lo`, this host survives a failover: a TCP connection from it keeps
//! its state across one, and a UDP stream from it follows the LAN VIP, as a real host's does.
//!
//! ```text
//!   host (10.97.0.2 on the lan bridge, 10.99.10.2 on lo; 10.99.20.0/24 via the LAN VIP 10.97.0.10)
//!   gw1, gw2: forwarding on; 10.99.10.2 via 10.97.0.2
//! ```
//! 10.99.10.2 is inside the cluster's local selectors (10.99.10.0/24). The host's interface MTU is
//! tandem's TUN MTU (1396), so a TCP transfer needs no path MTU discovery through the tunnel.

use crate::cluster::{Cluster, LAN_PREFIX, LAN_VIP, PEER_INNER};
use crate::netns::{must, Netns};

/// The host's protected address and its address on the lan segment.
pub const HOST_INNER: &str = "10.99.10.2";
pub const HOST_LAN: &str = "10.97.0.2";
const HOST_MTU: &str = "1396";

pub struct LanHost {
    pub ns: Netns,
    /// The host's interface on the lan bridge.
    pub iface: String,
}

impl LanHost {
    /// Attach a host to `cl`'s lan bridge (namespace: the cluster's prefix with `H`) and make both
    /// gateways forward for it. The LAN VIP is not configured anywhere by this: `move_lan_vip`.
    pub fn attach(cl: &Cluster) -> LanHost {
        let base = cl.peer.name.strip_suffix('P').expect("the cluster's peer namespace ends in P");
        let ns = Netns::new(format!("{base}H"));
        let iface = format!("{}h", cl.peer_if);
        let port = format!("{iface}w");
        must("ip", &["link", "add", &iface, "type", "veth", "peer", "name", &port]);
        must("ip", &["link", "set", &iface, "netns", &ns.name]);
        must("ip", &["link", "set", &port, "netns", &cl.wan.name]);
        cl.wan.ip(&["link", "set", &port, "master", "lanbr"]);
        cl.wan.ip(&["link", "set", &port, "up"]);
        ns.ip(&["link", "set", &iface, "mtu", HOST_MTU]);
        ns.ip(&["addr", "add", &format!("{HOST_LAN}/{LAN_PREFIX}"), "dev", &iface]);
        ns.ip(&["link", "set", &iface, "up"]);
        ns.ip(&["addr", "add", &format!("{HOST_INNER}/32"), "dev", "lo"]);
        let peer_net = format!("{}.0/24", PEER_INNER.rsplit_once('.').expect("IPv4").0);
        ns.ip(&["route", "add", &peer_net, "via", LAN_VIP, "dev", &iface, "src", HOST_INNER]);
        for (i, gw) in cl.gw.iter().enumerate() {
            let out = gw.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
            assert!(out.status.success(), "sysctl ip_forward: {}", String::from_utf8_lossy(&out.stderr));
            gw.ip(&["route", "add", &format!("{HOST_INNER}/32"), "via", HOST_LAN, "dev", &cl.lan_if[i]]);
        }
        LanHost { ns, iface }
    }

    /// Put the LAN VIP on gateway `to` (removed from `from` first), and point the host's
    /// neighbour entry for it at `to` at once (what keepalived's gratuitous ARP achieves).
    pub fn move_lan_vip(&self, cl: &Cluster, from: Option<usize>, to: usize) {
        let vip = format!("{LAN_VIP}/{LAN_PREFIX}");
        if let Some(f) = from {
            cl.gw[f].ip(&["addr", "del", &vip, "dev", &cl.lan_if[f]]);
        }
        cl.gw[to].ip(&["addr", "add", &vip, "dev", &cl.lan_if[to]]);
        let out = cl.gw[to].ip(&["-j", "link", "show", "dev", &cl.lan_if[to]]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j link");
        let mac = v[0]["address"].as_str().expect("link address").to_string();
        self.ns.ip(&["neigh", "replace", LAN_VIP, "lladdr", &mac, "dev", &self.iface, "nud", "reachable"]);
    }
}
