//! Validation and conversion of the raw schema into engine types.

use crate::duration::parse_duration;
use crate::locate::line_of;
use crate::raw::*;
use crate::{Config, ConfigError};
use base64::Engine as _;
use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use tandem_crypto::{parse_esp_proposal, parse_ike_proposal, Esn, Proposal};
use tandem_ike::*;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// Daemon settings (the `[daemon]` table).
#[derive(Debug, Clone, Serialize)]
pub struct DaemonSettings {
    pub socket: PathBuf,
    pub listen: Vec<IpAddr>,
    pub ike_port: u16,
    pub natt_port: u16,
    pub log_level: String,
}

pub(crate) struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err(
        &self,
        table: &str,
        key: Option<&str>,
        nth: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let line = line_of(self.text, table, key, nth);
        let path = match key {
            Some(k) if !table.is_empty() => format!("{table}.{k}"),
            Some(k) => k.to_string(),
            None => table.to_string(),
        };
        ConfigError { file: self.file.into(), line, column: 1, key: path, message: message.into() }
    }

    pub(crate) fn duration(
        &self,
        table: &str,
        key: &str,
        v: &Option<toml::Value>,
    ) -> Result<Option<Duration>, ConfigError> {
        match v {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(Duration::from_secs(*i as u64))),
            Some(toml::Value::String(s)) => parse_duration(s).map(Some).ok_or_else(|| {
                self.err(table, Some(key), None, format!("{s:?} is not a duration (e.g. \"30s\", \"1h30m\")"))
            }),
            Some(other) => Err(self.err(table, Some(key), None, format!("{other} is not a duration"))),
        }
    }
}

fn quote(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        name.to_string()
    } else {
        format!("\"{name}\"")
    }
}

/// `10.0.0.0/24`, `10.0.0.1` (a /32 or /128), optionally with `[proto]`, `[proto/port]` or
/// `[proto/lo-hi]`; protocols by name (tcp, udp, icmp, icmpv6, gre, esp, any) or number.
pub fn parse_subnet_selector(s: &str) -> Result<TrafficSelector, String> {
    let (net, extra) = match s.split_once('[') {
        Some((n, rest)) => (n.trim(), Some(rest.strip_suffix(']').ok_or("missing ']'")?)),
        None => (s.trim(), None),
    };
    let (addr, prefix) = match net.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| format!("bad prefix length in {s:?}"))?)),
        None => (net, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
    let mut ts =
        TrafficSelector::from_subnet(addr, prefix).ok_or_else(|| format!("prefix too long in {s:?}"))?;
    if let Some(extra) = extra {
        let (proto, ports) = match extra.split_once('/') {
            Some((p, r)) => (p, Some(r)),
            None => (extra, None),
        };
        ts.ip_protocol = match proto {
            "any" | "" => 0,
            "icmp" => 1,
            "tcp" => 6,
            "udp" => 17,
            "gre" => 47,
            "esp" => 50,
            "icmpv6" => 58,
            n => n.parse().map_err(|_| format!("unknown protocol {n:?}"))?,
        };
        if let Some(r) = ports {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            ts.start_port = lo.parse().map_err(|_| format!("bad port {lo:?}"))?;
            ts.end_port = hi.parse().map_err(|_| format!("bad port {hi:?}"))?;
            if ts.start_port > ts.end_port {
                return Err(format!("empty port range {r:?}"));
            }
        }
    }
    Ok(ts)
}

fn parse_action(s: &str) -> Option<DeadPeerAction> {
    Some(match s {
        "clear" | "none" => DeadPeerAction::Clear,
        "restart" => DeadPeerAction::Restart,
        "trap" => DeadPeerAction::Trap,
        _ => return None,
    })
}

fn parse_start(s: &str) -> Option<StartAction> {
    Some(match s {
        "none" => StartAction::None,
        "start" => StartAction::Start,
        "trap" => StartAction::Trap,
        _ => return None,
    })
}

fn decode_secret(s: &str) -> Result<Vec<u8>, String> {
    if let Some(h) = s.strip_prefix("0x") {
        return hex::decode(h).map_err(|_| "bad hex after 0x".to_string());
    }
    if let Some(b) = s.strip_prefix("0s") {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| "bad base64 after 0s".to_string());
    }
    Ok(s.as_bytes().to_vec())
}

fn soft_to_hard(rekey: Option<Duration>, life: Option<Duration>) -> Option<Duration> {
    life.or_else(|| rekey.map(|r| r + r / 10))
}

struct IpsecTemplate {
    proposals: Vec<Proposal>,
    mode: IpsecMode,
    replay_window: u32,
    lifetimes: Lifetimes,
    close_action: DeadPeerAction,
}

fn ipsec_template(ctx: &Ctx, name: &str, p: &RawIpsecPolicy) -> Result<IpsecTemplate, ConfigError> {
    let table = format!("ipsec-policy.{}", quote(name));
    let mut proposals = Vec::new();
    for s in &p.proposals {
        let mut prop =
            parse_esp_proposal(s).map_err(|e| ctx.err(&table, Some("proposals"), None, e.to_string()))?;
        if p.esn == Some(true) {
            prop.esn = vec![Esn::Yes];
        }
        match p.pfs {
            Some(false) => prop.dh.clear(),
            Some(true) if prop.dh.is_empty() => {
                return Err(ctx.err(
                    &table,
                    Some("pfs"),
                    None,
                    format!("pfs = true but proposal {s:?} names no key exchange method"),
                ))
            }
            _ => {}
        }
        proposals.push(prop);
    }
    if proposals.is_empty() {
        return Err(ctx.err(&table, Some("proposals"), None, "at least one proposal is needed"));
    }
    let mode = match p.mode.as_deref() {
        None | Some("tunnel") => IpsecMode::Tunnel,
        Some("transport") => IpsecMode::Transport,
        Some(m) => {
            return Err(ctx.err(&table, Some("mode"), None, format!("{m:?} is not tunnel or transport")))
        }
    };
    let replay_window = p.replay_window.unwrap_or(1024);
    if replay_window > 65536 {
        return Err(ctx.err(&table, Some("replay-window"), None, "at most 65536"));
    }
    let rekey = ctx.duration(&table, "rekey-time", &p.rekey_time)?.or(Some(Duration::from_secs(3600)));
    let life = ctx.duration(&table, "lifetime", &p.lifetime)?;
    let rand = ctx.duration(&table, "rand-time", &p.rand_time)?;
    let lifetimes = Lifetimes {
        rekey_time: rekey.filter(|d| !d.is_zero()),
        life_time: soft_to_hard(rekey, life).filter(|d| !d.is_zero()),
        rand_time: rand.unwrap_or_else(|| rekey.map_or(Duration::ZERO, |r| r / 10)),
        rekey_bytes: p.rekey_bytes.filter(|b| *b > 0),
        life_bytes: p.lifetime_bytes.filter(|b| *b > 0),
        rekey_packets: p.rekey_packets.filter(|b| *b > 0),
        life_packets: p.lifetime_packets.filter(|b| *b > 0),
    };
    if let (Some(r), Some(l)) = (lifetimes.rekey_time, lifetimes.life_time) {
        if l <= r {
            return Err(ctx.err(&table, Some("lifetime"), None, "must be longer than rekey-time"));
        }
    }
    let close_action = match p.close_action.as_deref() {
        None => DeadPeerAction::Clear,
        Some(a) => parse_action(a).ok_or_else(|| {
            ctx.err(&table, Some("close-action"), None, format!("{a:?} is not clear, restart or trap"))
        })?,
    };
    Ok(IpsecTemplate { proposals, mode, replay_window, lifetimes, close_action })
}

pub(crate) fn convert(raw: RawConfig, text: &str, file: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx { text, file };
    let d = &raw.daemon;
    let listen = match &d.listen {
        None => vec!["0.0.0.0".parse().expect("literal"), "::".parse().expect("literal")],
        Some(v) => v
            .iter()
            .map(|a| {
                a.parse::<IpAddr>().map_err(|_| {
                    ctx.err("daemon", Some("listen"), None, format!("{a:?} is not an IP address"))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let daemon = DaemonSettings {
        socket: PathBuf::from(d.socket.clone().unwrap_or_else(|| "/run/tandem/tandemd.sock".into())),
        listen,
        ike_port: d.ike_port.unwrap_or(500),
        natt_port: d.natt_port.unwrap_or(4500),
        log_level: d.log_level.clone().unwrap_or_else(|| "info".into()),
    };
    let mut endpoint =
        EndpointConfig { cookie_threshold: d.cookie_threshold.unwrap_or(100), ..EndpointConfig::default() };
    if let Some(t) = ctx.duration("daemon", "retransmit-timeout", &d.retransmit_timeout)? {
        endpoint.retransmit.timeout = t;
    }
    if let Some(t) = ctx.duration("daemon", "half-open-timeout", &d.half_open_timeout)? {
        endpoint.half_open_timeout = t;
    }
    if let Some(f) = d.fragment_size {
        if !(128..=65535).contains(&f) {
            return Err(ctx.err("daemon", Some("fragment-size"), None, "must be between 128 and 65535"));
        }
        endpoint.fragment_size = f;
    }
    if let Some(t) = d.retransmit_tries {
        endpoint.retransmit.tries = t;
    }
    if let Some(b) = d.retransmit_base {
        if !(1.0..=4.0).contains(&b) {
            return Err(ctx.err("daemon", Some("retransmit-base"), None, "must be between 1.0 and 4.0"));
        }
        endpoint.retransmit.base = b;
    }

    let ha = match &raw.ha {
        None => None,
        Some(h) => {
            let ha = crate::ha::convert_ha(
                &ctx,
                h,
                daemon.ike_port,
                daemon.natt_port,
                endpoint.retransmit.timeout,
            )?;
            endpoint.node_id = ha.node_id;
            Some(ha)
        }
    };

    let mut psks = Vec::new();
    for (name, p) in &raw.pre_shared_key {
        let table = format!("pre-shared-key.{}", quote(name));
        let mut ids: Vec<Identity> = p.ids.iter().flatten().map(|s| Identity::parse(s)).collect();
        if let Some(i) = &p.id {
            ids.push(Identity::parse(i));
        }
        let secret = match (&p.secret, &p.secret_file) {
            (Some(s), None) => decode_secret(s).map_err(|e| ctx.err(&table, Some("secret"), None, e))?,
            (None, Some(f)) => {
                let content = std::fs::read_to_string(f).map_err(|e| {
                    ctx.err(&table, Some("secret-file"), None, format!("cannot read {f:?}: {e}"))
                })?;
                decode_secret(content.trim_end_matches(['\n', '\r']))
                    .map_err(|e| ctx.err(&table, Some("secret-file"), None, e))?
            }
            _ => return Err(ctx.err(&table, None, None, "exactly one of secret and secret-file is needed")),
        };
        if secret.is_empty() {
            return Err(ctx.err(&table, Some("secret"), None, "the secret is empty"));
        }
        psks.push(PreSharedKey { ids, secret: Zeroizing::new(secret) });
    }

    let dataplane = crate::dataplane::convert_dataplane(&ctx, &raw.dataplane)?;
    let mut interfaces = std::collections::BTreeMap::new();
    let mut peers = Vec::new();
    for (name, v) in &raw.vpn {
        let table = format!("vpn.{}", quote(name));
        let ike = raw.ike_policy.get(&v.ike_policy).ok_or_else(|| {
            ctx.err(&table, Some("ike-policy"), None, format!("no ike-policy named {:?}", v.ike_policy))
        })?;
        let itable = format!("ike-policy.{}", quote(&v.ike_policy));
        let ike_proposals = ike
            .proposals
            .iter()
            .map(|s| {
                parse_ike_proposal(s).map_err(|e| ctx.err(&itable, Some("proposals"), None, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ike_proposals.is_empty() {
            return Err(ctx.err(&itable, Some("proposals"), None, "at least one proposal is needed"));
        }
        let rekey =
            ctx.duration(&itable, "rekey-time", &ike.rekey_time)?.or(Some(Duration::from_secs(4 * 3600)));
        let life = ctx.duration(&itable, "lifetime", &ike.lifetime)?;
        let rand = ctx.duration(&itable, "rand-time", &ike.rand_time)?;
        let dpd_delay = ctx.duration(&itable, "dpd-delay", &ike.dpd_delay)?.filter(|d| !d.is_zero());
        let dpd_timeout = ctx.duration(&itable, "dpd-timeout", &ike.dpd_timeout)?;
        let dpd_action = match ike.dpd_action.as_deref() {
            None => DeadPeerAction::Clear,
            Some(a) => parse_action(a).ok_or_else(|| {
                ctx.err(&itable, Some("dpd-action"), None, format!("{a:?} is not clear, restart or trap"))
            })?,
        };
        let addr = |k: &str, s: &Option<String>| -> Result<Option<IpAddr>, ConfigError> {
            match s.as_deref() {
                None | Some("%any") => Ok(None),
                Some(a) => a
                    .parse()
                    .map(Some)
                    .map_err(|_| ctx.err(&table, Some(k), None, format!("{a:?} is not an IP address"))),
            }
        };
        let local_addr = addr("local-address", &v.local_address)?;
        let remote_addr = addr("remote-address", &v.remote_address)?;
        if let Some(a) = v.auth.as_deref() {
            if a != "psk" {
                return Err(ctx.err(
                    &table,
                    Some("auth"),
                    None,
                    format!("{a:?} is not supported (only psk)"),
                ));
            }
        }
        let local_id = match (&v.local_id, local_addr) {
            (Some(s), _) => Identity::parse(s),
            (None, Some(IpAddr::V4(a))) => Identity::Ipv4(a),
            (None, Some(IpAddr::V6(a))) => Identity::Ipv6(a),
            (None, None) => {
                return Err(ctx.err(&table, Some("local-id"), None, "needed when local-address is not set"))
            }
        };
        let remote_id = match (&v.remote_id, remote_addr) {
            (Some(s), _) => Some(Identity::parse(s)),
            (None, Some(IpAddr::V4(a))) => Some(Identity::Ipv4(a)),
            (None, Some(IpAddr::V6(a))) => Some(Identity::Ipv6(a)),
            (None, None) => None,
        };
        let unique = match v.unique.as_deref() {
            None | Some("replace") => UniquePolicy::Replace,
            Some("keep") => UniquePolicy::Keep,
            Some("never" | "no") => UniquePolicy::Never,
            Some(s) => {
                return Err(ctx.err(
                    &table,
                    Some("unique"),
                    None,
                    format!("{s:?} is not replace, keep or never"),
                ))
            }
        };
        let childless = match v.childless.as_deref() {
            None | Some("allow") => Childless::Allow,
            Some("prefer") => Childless::Prefer,
            Some("force") => Childless::Force,
            Some(s) => {
                return Err(ctx.err(
                    &table,
                    Some("childless"),
                    None,
                    format!("{s:?} is not allow, prefer or force"),
                ))
            }
        };
        let vpn_start = match v.start_action.as_deref() {
            None => StartAction::None,
            Some(s) => parse_start(s).ok_or_else(|| {
                ctx.err(&table, Some("start-action"), None, format!("{s:?} is not none, start or trap"))
            })?,
        };
        if v.security_policy.is_empty() {
            return Err(ctx.err(&table, None, None, "a vpn needs at least one [[security-policy]]"));
        }
        let stable = format!("{table}.security-policy");
        let mut children = Vec::new();
        for (i, sp) in v.security_policy.iter().enumerate() {
            if children.iter().any(|c: &ChildConfig| c.name == sp.name) {
                return Err(ctx.err(
                    &stable,
                    Some("name"),
                    Some(i),
                    format!("duplicate security-policy {:?}", sp.name),
                ));
            }
            let tpl_name = sp.ipsec_policy.as_ref().or(v.ipsec_policy.as_ref()).ok_or_else(|| {
                ctx.err(&stable, Some("ipsec-policy"), Some(i), "no ipsec-policy here or in the vpn")
            })?;
            let tpl = raw.ipsec_policy.get(tpl_name).ok_or_else(|| {
                let key = if sp.ipsec_policy.is_some() {
                    (stable.as_str(), Some(i))
                } else {
                    (table.as_str(), None)
                };
                ctx.err(key.0, Some("ipsec-policy"), key.1, format!("no ipsec-policy named {tpl_name:?}"))
            })?;
            let tpl = ipsec_template(&ctx, tpl_name, tpl)?;
            let sels = |k: &str, list: &[String]| -> Result<Vec<TrafficSelector>, ConfigError> {
                if list.is_empty() && v.interface.is_some() {
                    // Route-based: whatever the operator routes into the interface.
                    return Ok(vec![TrafficSelector::any_v4(), TrafficSelector::any_v6()]);
                }
                if list.is_empty() {
                    return Err(ctx.err(&stable, Some(k), Some(i), "at least one selector is needed"));
                }
                list.iter()
                    .map(|s| parse_subnet_selector(s).map_err(|e| ctx.err(&stable, Some(k), Some(i), e)))
                    .collect()
            };
            let start_action = match sp.start_action.as_deref() {
                None => vpn_start,
                Some(s) => parse_start(s).ok_or_else(|| {
                    ctx.err(
                        &stable,
                        Some("start-action"),
                        Some(i),
                        format!("{s:?} is not none, start or trap"),
                    )
                })?,
            };
            if start_action != StartAction::None && (local_addr.is_none() || remote_addr.is_none()) {
                return Err(ctx.err(
                    &table,
                    Some("remote-address"),
                    None,
                    "start-action start/trap needs local-address and remote-address",
                ));
            }
            children.push(ChildConfig {
                name: sp.name.clone(),
                local_ts: sels("local-ts", &sp.local_ts)?,
                remote_ts: sels("remote-ts", &sp.remote_ts)?,
                esp_proposals: tpl.proposals,
                mode: tpl.mode,
                lifetimes: tpl.lifetimes,
                start_action,
                close_action: tpl.close_action,
                replay_window: tpl.replay_window,
            });
        }
        if let Some(i) = &v.interface {
            if !crate::dataplane::valid_ifname(i) {
                return Err(ctx.err(
                    &table,
                    Some("interface"),
                    None,
                    "an interface name of 1 to 15 characters",
                ));
            }
            if interfaces.values().any(|o| o == i) {
                return Err(ctx.err(
                    &table,
                    Some("interface"),
                    None,
                    format!("interface {i:?} is used twice"),
                ));
            }
            interfaces.insert(name.clone(), i.clone());
        }
        peers.push(PeerConfig {
            name: name.clone(),
            local_addr,
            remote_addr,
            remote_port: v.remote_port.unwrap_or(daemon.ike_port),
            local_id,
            remote_id,
            ike_proposals,
            ike_lifetimes: Lifetimes {
                rekey_time: rekey.filter(|d| !d.is_zero()),
                life_time: soft_to_hard(rekey, life).filter(|d| !d.is_zero()),
                rand_time: rand.unwrap_or_else(|| rekey.map_or(Duration::ZERO, |r| r / 10)),
                ..Lifetimes::default()
            },
            reauth: ike.reauth.unwrap_or(false),
            dpd_delay,
            dpd_timeout,
            dpd_action,
            force_encap: v.encap.unwrap_or(false),
            initial_contact: v.initial_contact.unwrap_or(true),
            unique,
            reqid_per_sa: remote_addr.is_none() && v.interface.is_none(),
            childless,
            children,
        });
    }
    let mut manual_sas: Vec<crate::manual::ManualSa> = Vec::new();
    for (name, m) in &raw.manual_sa {
        let table = format!("manual-sa.{}", quote(name));
        let sa = crate::manual::convert_manual(&ctx, name, &table, m, daemon.natt_port)?;
        if manual_sas.iter().any(|o| o.spi_in == sa.spi_in) {
            return Err(ctx.err(
                &table,
                Some("spi-in"),
                None,
                format!("spi-in {:#x} is used twice", sa.spi_in),
            ));
        }
        if let Some(i) = &sa.interface {
            if interfaces.values().any(|o| o == i)
                || manual_sas.iter().any(|o| o.interface.as_ref() == Some(i))
            {
                return Err(ctx.err(
                    &table,
                    Some("interface"),
                    None,
                    format!("interface {i:?} is used twice"),
                ));
            }
        }
        manual_sas.push(sa);
    }
    for i in interfaces.values().chain(manual_sas.iter().filter_map(|m| m.interface.as_ref())) {
        if *i == dataplane.tun_name {
            return Err(ctx.err(
                "dataplane",
                Some("tun-name"),
                None,
                format!("{i:?} is also a vpn interface"),
            ));
        }
    }
    Ok(Config { path: None, daemon, endpoint, peers, psks, ha, dataplane, interfaces, manual_sas })
}
