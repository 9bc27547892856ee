//! IKE SA uniqueness per vpn (strongSwan's `unique`; issue 9 section 5): a peer that restarts
//! without INITIAL_CONTACT and authenticates again must not leave one IKE SA and one set of CHILD
//! SAs with the same selectors per attempt. Checked by the responder once the new IKE SA has
//! authenticated, before its CHILD SA is made.

use crate::api::{DownReason, IkeSaId};
use crate::config::{PeerConfig, UniquePolicy};
use crate::endpoint::Endpoint;
use crate::sa::{IkeSa, SaState};
use std::time::Instant;
use tracing::info;

impl Endpoint {
    /// Established IKE SAs of the vpn of `sa` with its identities, other than `sa` itself and
    /// other than SAs on their way out (superseded by a rekey, being deleted).
    fn duplicates_of(&self, sa: &IkeSa) -> Vec<IkeSaId> {
        let (Some(vpn), Some(remote_id)) = (&sa.vpn, &sa.remote_id) else { return Vec::new() };
        self.sas
            .of_identity(vpn, remote_id)
            .filter(|o| o.id != sa.id && o.state == SaState::Established && !o.superseded)
            .filter(|o| o.local_id == sa.local_id)
            .map(|o| o.id)
            .collect()
    }

    /// Apply the vpn's policy to the freshly authenticated `sa`. `false`: refuse it (`keep`).
    pub(crate) fn enforce_unique(&mut self, now: Instant, sa: &IkeSa, peer: &PeerConfig) -> bool {
        let dups = self.duplicates_of(sa);
        if dups.is_empty() {
            return true;
        }
        match peer.unique {
            UniquePolicy::Never => true,
            UniquePolicy::Keep => {
                info!(target: "ike", vpn = %peer.name, remote = %sa.remote, "an IKE SA with these identities exists (unique = keep): refusing the new one");
                false
            }
            UniquePolicy::Replace => {
                for id in dups {
                    self.replace_duplicate(now, id);
                }
                true
            }
        }
    }

    /// The older IKE SA goes: its CHILD SAs at once (the new IKE SA's carry the same selectors),
    /// then a Delete, which a restarted peer may never answer (retransmissions bound it).
    fn replace_duplicate(&mut self, now: Instant, id: IkeSaId) {
        let Some(mut old) = self.sas.checkout(&id) else { return };
        info!(target: "ike", vpn = ?old.vpn, sa = format_args!("{id:#018x}"), "replacing the older IKE SA with the same identities (unique = replace)");
        let spis: Vec<u32> = old.children.iter().map(|c| c.spi_in).collect();
        for spi in spis {
            self.remove_child(&mut old, spi, DownReason::Duplicate);
        }
        old.down_reason = Some(DownReason::Duplicate);
        self.delete_ike_next(now, &mut old);
        self.finish(now, old);
    }
}
