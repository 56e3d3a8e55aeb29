//! A host's side of quiet groups (docs/protocol.md, "Quiet groups"): what
//! it feeds a replica when its failure detector's view of the peers
//! changes. The NIF's engine and the simulator both decide with this, so
//! the simulator judges the rule the engine runs.
//!
//! The rest of the host's side is bookkeeping each host keeps in its own
//! terms: it stops ticking a quiet replica, and before any other input
//! (a message, a request, a read, a snapshot, a change) it feeds
//! `Input::Wake` with the ticks it skipped and the detector's view.

use vsr::{Member, Replica, Slot};

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

/// The detector's view as `replica` takes it (`Input::Peers`,
/// `Input::Wake`): one bit per slot of its list, clear for each member
/// whose node `is_up` holds down. Its own slot is always set, and slots
/// outside the list stay set. The engine asks it with the member ids its
/// owner says are up; the simulator with its detectors or its oracle.
pub fn up_bits(replica: &Replica, mut is_up: impl FnMut(&Member) -> bool) -> u16 {
    let mut up = u16::MAX;
    for member in replica.membership().members() {
        if member.slot != replica.index() && !is_up(member) {
            up &= !(1 << member.slot);
        }
    }
    up
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_bits_clear_the_members_held_down_but_never_its_own() {
        let replica = Replica::new(vsr::Config::new(1, 4), 1);
        // Slot 1 is this replica: set even though `is_up` says no.
        let up = up_bits(&replica, |member| member.slot == 2);
        assert_eq!(up & 0b1111, 0b0110);
        assert_eq!(up >> 4, u16::MAX >> 4);
    }
}
