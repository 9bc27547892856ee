//! The TOML schema as written by operators (kebab-case keys; unknown keys are errors).

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub ike_policy: BTreeMap<String, RawIkePolicy>,
    #[serde(default)]
    pub ipsec_policy: BTreeMap<String, RawIpsecPolicy>,
    #[serde(default)]
    pub vpn: BTreeMap<String, RawVpn>,
    #[serde(default)]
    pub pre_shared_key: BTreeMap<String, RawPsk>,
    pub ha: Option<RawHa>,
    #[serde(default)]
    pub dataplane: RawDataplane,
    #[serde(default)]
    pub manual_sa: BTreeMap<String, RawManualSa>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDaemon {
    pub socket: Option<String>,
    pub listen: Option<Vec<String>>,
    pub ike_port: Option<u16>,
    pub natt_port: Option<u16>,
    pub log_level: Option<String>,
    pub cookie_threshold: Option<usize>,
    pub half_open_timeout: Option<toml::Value>,
    pub retransmit_timeout: Option<toml::Value>,
    pub retransmit_tries: Option<u32>,
    pub retransmit_base: Option<f64>,
    pub fragment_size: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawIkePolicy {
    pub proposals: Vec<String>,
    pub rekey_time: Option<toml::Value>,
    pub lifetime: Option<toml::Value>,
    pub rand_time: Option<toml::Value>,
    pub reauth: Option<bool>,
    pub dpd_delay: Option<toml::Value>,
    pub dpd_timeout: Option<toml::Value>,
    pub dpd_action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawIpsecPolicy {
    pub proposals: Vec<String>,
    pub esn: Option<bool>,
    pub pfs: Option<bool>,
    pub mode: Option<String>,
    pub replay_window: Option<u32>,
    pub rekey_time: Option<toml::Value>,
    pub lifetime: Option<toml::Value>,
    pub rand_time: Option<toml::Value>,
    pub rekey_bytes: Option<u64>,
    pub lifetime_bytes: Option<u64>,
    pub rekey_packets: Option<u64>,
    pub lifetime_packets: Option<u64>,
    pub close_action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawVpn {
    pub ike_policy: String,
    pub ipsec_policy: Option<String>,
    pub local_address: Option<String>,
    pub remote_address: Option<String>,
    pub remote_port: Option<u16>,
    pub local_id: Option<String>,
    pub remote_id: Option<String>,
    pub auth: Option<String>,
    pub encap: Option<bool>,
    pub initial_contact: Option<bool>,
    pub unique: Option<String>,
    pub childless: Option<String>,
    pub start_action: Option<String>,
    /// Route-based mode: the name of the vpn's own TUN interface.
    pub interface: Option<String>,
    #[serde(default)]
    pub security_policy: Vec<RawSecurityPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSecurityPolicy {
    pub name: String,
    #[serde(default)]
    pub local_ts: Vec<String>,
    #[serde(default)]
    pub remote_ts: Vec<String>,
    pub ipsec_policy: Option<String>,
    pub start_action: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPsk {
    pub id: Option<String>,
    pub ids: Option<Vec<String>>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHa {
    pub node_id: u8,
    pub interface: Option<String>,
    pub local_address: Option<String>,
    pub remote_address: Option<String>,
    pub listen_ha_group: Option<String>,
    pub sync_period_time: Option<toml::Value>,
    pub sync_period_packets: Option<u32>,
    pub oseq_shift: Option<u64>,
    pub port: Option<u16>,
    pub initial_role: Option<String>,
    pub key_file: Option<String>,
    pub peer_pin: Option<String>,
    pub ack_timeout: Option<toml::Value>,
    pub replay_advance: Option<toml::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawDataplane {
    pub enabled: Option<bool>,
    pub tun_name: Option<String>,
    pub tun_mtu: Option<u16>,
    pub offload: Option<bool>,
    pub raw_esp: Option<bool>,
    pub install_routes: Option<bool>,
    pub route_table: Option<u32>,
    pub nat_keepalive: Option<toml::Value>,
    pub socket_buffer: Option<usize>,
    pub rekey_linger: Option<toml::Value>,
    pub trap_queue: Option<usize>,
    pub workers: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawManualSa {
    pub local_address: String,
    pub remote_address: String,
    pub spi_in: u64,
    pub spi_out: u64,
    pub encryption: String,
    pub integrity: Option<String>,
    pub key_in: String,
    pub key_out: String,
    pub integrity_key_in: Option<String>,
    pub integrity_key_out: Option<String>,
    pub mode: Option<String>,
    #[serde(default)]
    pub local_ts: Vec<String>,
    #[serde(default)]
    pub remote_ts: Vec<String>,
    pub esn: Option<bool>,
    pub replay_window: Option<u32>,
    pub encap: Option<bool>,
    pub remote_port: Option<u16>,
    pub interface: Option<String>,
}
