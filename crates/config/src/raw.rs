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
    pub start_action: Option<String>,
    #[serde(default)]
    pub security_policy: Vec<RawSecurityPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSecurityPolicy {
    pub name: String,
    pub local_ts: Vec<String>,
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
}
