//! `[manual-sa.NAME]`: a manually keyed CHILD SA pair (both directions) for peers without IKE, as in
//! the F5 guide's manual security associations. Keys are hex; SPIs are 256..2^32-1 (values below
//! 256 are reserved by RFC 4303 section 2.1).

use crate::convert::{parse_subnet_selector, Ctx};
use crate::raw::RawManualSa;
use crate::ConfigError;
use std::net::IpAddr;
use tandem_crypto::{parse_esp_proposal, EncrAlg, IntegAlg};
use tandem_ike::config::IpsecMode;
use tandem_wire::TrafficSelector;
use zeroize::Zeroizing;

/// The keys of one direction.
#[derive(Clone)]
pub struct ManualKeys {
    /// Encryption key, including the 4-byte salt for AEADs.
    pub encr: Zeroizing<Vec<u8>>,
    /// Integrity key (empty for AEADs).
    pub integ: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ManualKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManualKeys(<redacted>)")
    }
}

/// A validated manual SA pair.
#[derive(Debug, Clone)]
pub struct ManualSa {
    pub name: String,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub spi_in: u32,
    pub spi_out: u32,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub keys_in: ManualKeys,
    pub keys_out: ManualKeys,
    pub mode: IpsecMode,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub esn: bool,
    pub replay_window: u32,
    /// ESP in UDP from the NAT-T port to `remote_port`.
    pub encap: bool,
    pub remote_port: u16,
    /// Route-based: the SA's own TUN interface.
    pub interface: Option<String>,
}

fn hex_key(
    ctx: &Ctx,
    table: &str,
    key: &str,
    s: &str,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let h = s.strip_prefix("0x").unwrap_or(s);
    let bytes = Zeroizing::new(
        hex::decode(h).map_err(|_| ctx.err(table, Some(key), None, "not a hex string (0x...)"))?,
    );
    if bytes.len() != len {
        return Err(ctx.err(
            table,
            Some(key),
            None,
            format!("{} bytes given, the algorithm needs {len}", bytes.len()),
        ));
    }
    Ok(bytes)
}

fn spi(ctx: &Ctx, table: &str, key: &str, v: u64) -> Result<u32, ConfigError> {
    match u32::try_from(v) {
        Ok(s) if s >= 256 => Ok(s),
        _ => Err(ctx.err(table, Some(key), None, "an SPI is 256..4294967295 (RFC 4303 reserves 0-255)")),
    }
}

pub(crate) fn convert_manual(
    ctx: &Ctx,
    name: &str,
    table: &str,
    m: &RawManualSa,
    natt_port: u16,
) -> Result<ManualSa, ConfigError> {
    let addr = |k: &str, s: &str| -> Result<IpAddr, ConfigError> {
        s.parse().map_err(|_| ctx.err(table, Some(k), None, format!("{s:?} is not an IP address")))
    };
    let local = addr("local-address", &m.local_address)?;
    let remote = addr("remote-address", &m.remote_address)?;
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(ctx.err(table, Some("remote-address"), None, "not of the same family as local-address"));
    }
    let keyword = match &m.integrity {
        Some(i) => format!("{}-{i}", m.encryption),
        None => m.encryption.clone(),
    };
    let prop =
        parse_esp_proposal(&keyword).map_err(|e| ctx.err(table, Some("encryption"), None, e.to_string()))?;
    let (encr, integ) = match (prop.encr.as_slice(), prop.integ.as_slice(), prop.dh.is_empty()) {
        ([e], [], true) if e.is_aead() => (*e, None),
        ([e], [i], true) if !e.is_aead() => (*e, Some(*i)),
        _ => {
            return Err(ctx.err(
                table,
                Some("encryption"),
                None,
                "one encryption algorithm (and, for CBC, one integrity algorithm) and no key exchange",
            ))
        }
    };
    let integ_key = |k: &str, v: &Option<String>| -> Result<Zeroizing<Vec<u8>>, ConfigError> {
        match (integ, v) {
            (None, None) => Ok(Zeroizing::new(Vec::new())),
            (None, Some(_)) => Err(ctx.err(table, Some(k), None, "an AEAD takes no integrity key")),
            (Some(_), None) => Err(ctx.err(table, Some(k), None, "needed with an integrity algorithm")),
            (Some(i), Some(s)) => hex_key(ctx, table, k, s, i.key_len()),
        }
    };
    let klen = encr.key_material_len();
    let keys_in = ManualKeys {
        encr: hex_key(ctx, table, "key-in", &m.key_in, klen)?,
        integ: integ_key("integrity-key-in", &m.integrity_key_in)?,
    };
    let keys_out = ManualKeys {
        encr: hex_key(ctx, table, "key-out", &m.key_out, klen)?,
        integ: integ_key("integrity-key-out", &m.integrity_key_out)?,
    };
    let mode = match m.mode.as_deref() {
        None | Some("tunnel") => IpsecMode::Tunnel,
        Some("transport") => IpsecMode::Transport,
        Some(o) => {
            return Err(ctx.err(table, Some("mode"), None, format!("{o:?} is not tunnel or transport")))
        }
    };
    let sels = |k: &str, list: &[String], host: IpAddr| -> Result<Vec<TrafficSelector>, ConfigError> {
        if list.is_empty() {
            // Transport mode protects the two hosts; route-based tunnels protect what is routed in.
            return Ok(match (mode, &m.interface) {
                (IpsecMode::Transport, _) => {
                    vec![TrafficSelector::from_subnet(host, if host.is_ipv4() { 32 } else { 128 })
                        .expect("full-length prefix")]
                }
                (IpsecMode::Tunnel, Some(_)) => vec![TrafficSelector::any_v4(), TrafficSelector::any_v6()],
                (IpsecMode::Tunnel, None) => {
                    return Err(ctx.err(table, Some(k), None, "needed for a policy-based tunnel"))
                }
            });
        }
        list.iter().map(|s| parse_subnet_selector(s).map_err(|e| ctx.err(table, Some(k), None, e))).collect()
    };
    let replay_window = m.replay_window.unwrap_or(1024);
    if replay_window > 65536 {
        return Err(ctx.err(table, Some("replay-window"), None, "at most 65536"));
    }
    if let Some(i) = &m.interface {
        if !crate::dataplane::valid_ifname(i) {
            return Err(ctx.err(table, Some("interface"), None, "an interface name of 1 to 15 characters"));
        }
    }
    Ok(ManualSa {
        name: name.to_string(),
        local,
        remote,
        spi_in: spi(ctx, table, "spi-in", m.spi_in)?,
        spi_out: spi(ctx, table, "spi-out", m.spi_out)?,
        encr,
        integ,
        keys_in,
        keys_out,
        mode,
        local_ts: sels("local-ts", &m.local_ts, local)?,
        remote_ts: sels("remote-ts", &m.remote_ts, remote)?,
        esn: m.esn.unwrap_or(false),
        replay_window,
        encap: m.encap.unwrap_or(false),
        remote_port: m.remote_port.unwrap_or(natt_port),
        interface: m.interface.clone(),
    })
}
