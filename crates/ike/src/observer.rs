//! The one interface through which SA state changes leave the engine (for HA sync, seed 002).
//! Protocol code reports changes here; it never talks to a sync layer directly.

use crate::api::IkeSaId;

/// Receives every IKE SA state change. `snapshot` is the serialized (serde_json) full state of the
/// IKE SA and its CHILD SAs, including keys, Message IDs and the last request/response, from which a
/// standby will rebuild the SA (the restoring side comes with active/standby sync). Timers are not in
/// the snapshot: a standby re-arms them from the configured lifetimes when it takes over.
pub trait SaObserver: Send {
    fn ike_sa_changed(&mut self, id: IkeSaId, snapshot: &[u8]);
    fn ike_sa_removed(&mut self, id: IkeSaId);
}
