//! tandem-config: one TOML file in 6WIND/F5 operator words (`ike-policy`, `ipsec-policy`, `vpn`,
//! `security-policy`, `pre-shared-key`, `ha`), validated into the IKE engine's types. Every error names
//! the file, line and key.
#![forbid(unsafe_code)]

mod canon;
mod convert;
mod dataplane;
mod digest;
pub mod duration;
mod ha;
mod locate;
mod manual;
mod raw;

pub use convert::{parse_subnet_selector, DaemonSettings};
pub use dataplane::{DataplaneSettings, Workers};
pub use digest::{ClusterDigest, SecretsDigest};
pub use ha::{HaRole, HaSettings, PeerPin, ReplayAdvance, DEFAULT_HA_PORT};
pub use manual::{ManualKeys, ManualSa};
use std::path::{Path, PathBuf};
use tandem_ike::{EndpointConfig, PeerConfig, PreSharedKey};

/// A configuration problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `vpn.site.ike-policy`.
    pub key: String,
    pub message: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: Option<PathBuf>,
    pub daemon: DaemonSettings,
    pub endpoint: EndpointConfig,
    pub peers: Vec<PeerConfig>,
    pub psks: Vec<PreSharedKey>,
    pub ha: Option<HaSettings>,
    pub dataplane: DataplaneSettings,
    /// Route-based vpns: vpn name -> its TUN interface name.
    pub interfaces: std::collections::BTreeMap<String, String>,
    pub manual_sas: Vec<ManualSa>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse(&text, &name)?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| locate::line_col(text, s.start));
            ConfigError {
                file: file.into(),
                line,
                column,
                key: String::new(),
                message: e.message().to_string(),
            }
        })?;
        convert::convert(raw, text, file)
    }

    pub fn endpoint_config(&self) -> EndpointConfig {
        self.endpoint.clone()
    }

    pub fn peers(&self) -> Vec<PeerConfig> {
        self.peers.clone()
    }

    pub fn psks(&self) -> Vec<PreSharedKey> {
        self.psks.clone()
    }

    /// vpn names added, removed and changed from `old` to `self` (for reload reports).
    pub fn diff(&self, old: &Config) -> ConfigDiff {
        let names = |c: &Config| c.peers.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        let (new_names, old_names) = (names(self), names(old));
        let ser = |p: &PeerConfig| format!("{p:?}");
        ConfigDiff {
            added: new_names.iter().filter(|n| !old_names.contains(n)).cloned().collect(),
            removed: old_names.iter().filter(|n| !new_names.contains(n)).cloned().collect(),
            changed: self
                .peers
                .iter()
                .filter(|p| old.peers.iter().any(|o| o.name == p.name && ser(o) != ser(p)))
                .map(|p| p.name.clone())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConfigDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}
