//! A host's side of quiet groups (docs/protocol.md, "Quiet groups"): what
//! it feeds a replica when its failure detector's view of the peers
//! changes. The NIF's engine and the simulator both decide with this, so
//! the simulator judges the rule the engine runs.
//!
//! The rest of the host's side is bookkeeping each host keeps in its own
//! terms: it stops ticking a quiet replica, and before any other input
//! (a message, a request, a read, a snapshot, a change) it feeds
//! `Input::Wake` with the ticks it skipped and the detector's view.

use vsr::{Replica, Slot};

/// What a host feeds a replica when the detector's view of its peers
/// (`up`, one bit per slot of the replica's list) differs from the last
/// one it fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeersFeed {
    /// `Input::Peers`: the replica is awake, and takes every change.
    Peers,
    /// `Input::Wake`: the replica is quiet, and the change concerns it:
    /// its primary's node is down (a backup), or fewer than a quorum of
    /// its list's nodes are up (the primary).
    Wake,
    /// Nothing: the replica is quiet and the change does not concern it.
    /// It is fed the view when something else wakes it.
    Nothing,
}

/// What to feed `replica` when the detector's view becomes `up`.
pub fn peers_feed(replica: &Replica, up: u16) -> PeersFeed {
    if !replica.is_quiet() {
        return PeersFeed::Peers;
    }
    let is_up = |slot: Slot| slot == replica.index() || up & (1 << slot) != 0;
    let concerns = if replica.is_primary() {
        let heard = replica.membership().slots().filter(|&s| is_up(s)).count();
        heard < replica.membership().quorum()
    } else {
        !is_up(replica.primary())
    };
    if concerns {
        PeersFeed::Wake
    } else {
        PeersFeed::Nothing
    }
}
