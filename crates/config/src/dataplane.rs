//! The `[dataplane]` table: the userspace ESP dataplane's TUN, sockets and routes. Defaults work
//! without tuning; `enabled = false` runs IKE only (useful for IKE load tests and hosts without TUN).

use crate::convert::Ctx;
use crate::raw::RawDataplane;
use crate::ConfigError;
use serde::Serialize;
use std::time::Duration;

/// Validated `[dataplane]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataplaneSettings {
    pub enabled: bool,
    /// The policy-based TUN interface (SPD lookups decide what is protected).
    pub tun_name: String,
    pub tun_mtu: u16,
    /// TUN offloads (virtio-net header, TSO/USO) when the kernel offers them.
    pub offload: bool,
    /// Raw IP protocol 50 sockets for peers without NAT.
    pub raw_esp: bool,
    /// Route each CHILD SA's remote selectors into the TUN (table `route_table`).
    pub install_routes: bool,
    pub route_table: u32,
    /// NAT keepalive interval towards UDP-encapsulating peers; `None` disables them.
    pub nat_keepalive: Option<Duration>,
    pub socket_buffer: usize,
    /// How long a rekeyed inbound SA keeps receiving (packets in flight).
    pub rekey_linger: Duration,
    /// Packets held per CHILD SA while a trap policy negotiates it.
    pub trap_queue: usize,
    /// How the two directions of the packet path are spread over threads.
    pub workers: Workers,
}

/// `workers`: one thread for both directions, one per direction, or chosen by CPU count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workers {
    /// `split` with more than two CPUs, else `combined`.
    Auto,
    Combined,
    Split,
}

impl Default for DataplaneSettings {
    fn default() -> Self {
        DataplaneSettings {
            enabled: true,
            tun_name: "tandem0".into(),
            tun_mtu: 1396,
            offload: true,
            raw_esp: true,
            install_routes: true,
            route_table: 220,
            nat_keepalive: Some(Duration::from_secs(20)),
            socket_buffer: 8 << 20,
            rekey_linger: Duration::from_secs(5),
            trap_queue: 16,
            workers: Workers::Auto,
        }
    }
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
pub(crate) fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

pub(crate) fn convert_dataplane(ctx: &Ctx, d: &RawDataplane) -> Result<DataplaneSettings, ConfigError> {
    const T: &str = "dataplane";
    let def = DataplaneSettings::default();
    let tun_name = d.tun_name.clone().unwrap_or(def.tun_name);
    if !valid_ifname(&tun_name) {
        return Err(ctx.err(T, Some("tun-name"), None, "an interface name of 1 to 15 characters"));
    }
    let tun_mtu = d.tun_mtu.unwrap_or(def.tun_mtu);
    if !(576..=9000).contains(&tun_mtu) {
        return Err(ctx.err(T, Some("tun-mtu"), None, "must be between 576 and 9000"));
    }
    let route_table = d.route_table.unwrap_or(def.route_table);
    if route_table == 0 || (253..=255).contains(&route_table) {
        return Err(ctx.err(T, Some("route-table"), None, "0 and 253-255 are the kernel's own tables"));
    }
    let socket_buffer = d.socket_buffer.unwrap_or(def.socket_buffer);
    if !(65536..=1 << 30).contains(&socket_buffer) {
        return Err(ctx.err(T, Some("socket-buffer"), None, "must be between 65536 and 1073741824"));
    }
    let trap_queue = d.trap_queue.unwrap_or(def.trap_queue);
    if trap_queue > 4096 {
        return Err(ctx.err(T, Some("trap-queue"), None, "at most 4096"));
    }
    let nat_keepalive = match ctx.duration(T, "nat-keepalive", &d.nat_keepalive)? {
        None => def.nat_keepalive,
        Some(z) if z.is_zero() => None,
        Some(k) => Some(k),
    };
    let workers = match d.workers.as_deref() {
        None | Some("auto") => Workers::Auto,
        Some("combined") => Workers::Combined,
        Some("split") => Workers::Split,
        Some(_) => return Err(ctx.err(T, Some("workers"), None, "one of auto, combined, split")),
    };
    Ok(DataplaneSettings {
        enabled: d.enabled.unwrap_or(true),
        tun_name,
        tun_mtu,
        offload: d.offload.unwrap_or(true),
        raw_esp: d.raw_esp.unwrap_or(true),
        install_routes: d.install_routes.unwrap_or(true),
        route_table,
        nat_keepalive,
        socket_buffer,
        rekey_linger: ctx.duration(T, "rekey-linger", &d.rekey_linger)?.unwrap_or(def.rekey_linger),
        trap_queue,
        workers,
    })
}
