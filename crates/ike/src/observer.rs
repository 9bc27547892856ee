//! The one interface through which SA state changes leave the engine (for HA sync, seed 002).
//! Protocol code reports changes here; it never talks to a sync layer directly.

use crate::api::IkeSaId;

/// Receives every change of an established IKE SA, after the engine handled a datagram, a timer or
/// a command, and before the datagrams that change produced are handed out (`poll_transmit`): an
/// HA layer can hold those until its standby has the state (write-ahead). `snapshot` is the whole
/// state of the IKE SA and its CHILD SAs (`crate::snapshot`: keys, Message IDs, the outstanding
/// request and the last response, an in-flight key exchange, every deadline), from which a
/// standby rebuilds the SA (`Endpoint::mirror`) and takes it over (`Endpoint::take_over`).
/// Half-open SAs are not reported: their peers are not authenticated, and an attacker must not be
/// able to make sync traffic. Snapshots hold keys: zeroize copies of them.
pub trait SaObserver: Send {
    fn ike_sa_changed(&mut self, id: IkeSaId, snapshot: &[u8]);
    fn ike_sa_removed(&mut self, id: IkeSaId);
    /// The changes reported since the last call belong together: one IKE SA's turn, with the IKE
    /// SAs its rekey made. A standby applies all of them or none: the old SA's snapshot may hold
    /// the response or the Delete that moves the peer to the new SA, and a standby that took over
    /// with only one of the two would hold an SA the peer never learnt of, or answer for one it
    /// lacks (docs/ha.md, B8). Changes reported outside a turn are followed by none.
    fn end_of_turn(&mut self) {}
}
