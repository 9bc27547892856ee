//! The configured vpns, indexed: by name (every SA names its vpn and looks it up on each message)
//! and by remote address (an IKE_SA_INIT picks its candidates), so that neither walks thousands
//! of configurations.

use crate::config::PeerConfig;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Default)]
pub(crate) struct Peers {
    list: Vec<PeerConfig>,
    by_name: HashMap<String, usize>,
    by_remote: HashMap<IpAddr, Vec<usize>>,
    /// vpns that accept any remote address, in configuration order.
    any_remote: Vec<usize>,
}

impl Peers {
    pub(crate) fn new(list: Vec<PeerConfig>) -> Peers {
        let mut p = Peers { list, ..Default::default() };
        for (i, c) in p.list.iter().enumerate() {
            // The first of two configurations with one name wins, as a linear search would.
            p.by_name.entry(c.name.clone()).or_insert(i);
            match c.remote_addr {
                Some(a) => p.by_remote.entry(a).or_default().push(i),
                None => p.any_remote.push(i),
            }
        }
        p
    }

    pub(crate) fn get(&self, name: &str) -> Option<&PeerConfig> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &PeerConfig> {
        self.list.iter()
    }

    /// The vpns that may serve a peer at `remote`, in configuration order.
    pub(crate) fn for_remote(&self, remote: IpAddr) -> Vec<&PeerConfig> {
        let exact = self.by_remote.get(&remote).map_or(&[][..], |v| v.as_slice());
        let mut idx: Vec<usize> = exact.iter().chain(&self.any_remote).copied().collect();
        idx.sort_unstable();
        idx.into_iter().map(|i| &self.list[i]).collect()
    }
}
