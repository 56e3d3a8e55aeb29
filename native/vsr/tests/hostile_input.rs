//! Crafted, correctly checksummed messages (the checksum is not a MAC:
//! anyone who knows the cluster id can compute it) fed to one replica.
//! The core must not panic on network input (a panic fails the group).
//!
//! Each test shows a bug found in review that failed (panicked) before its
//! fix: such input is now dropped and counted (`dropped_malformed`;
//! docs/protocol.md, "Fault model").

use std::sync::Arc;

use vsr::message::{encode, Sender};
use vsr::{root_checksum, Config, Input, Message, Prepare, Replica, Status, MAX_SLOTS};

const CLUSTER: u128 = 1;

/// The genesis member in `slot` (`Config::new` numbers member ids by slot).
fn member(slot: u8) -> Sender {
    Sender {
        epoch: 0,
        slot,
        id: slot as u128,
        joined: 0,
    }
}

fn from(slot: u8, message: &Message) -> Vec<u8> {
    as_sender(member(slot), &[0; MAX_SLOTS], message)
}

fn as_sender(sender: Sender, incarnations: &[u64; MAX_SLOTS], message: &Message) -> Vec<u8> {
    encode(
        Config::new(CLUSTER, 3).wire_cluster(),
        sender,
        incarnations,
        1,
        message,
    )
}

fn receive(replica: &mut Replica, sender: u8, message: &Message) {
    let bytes = from(sender, message);
    replica.step(Input::Receive(&bytes));
}

fn tick(replica: &mut Replica, ticks: u64) {
    for t in 0..ticks {
        replica.step(Input::Tick {
            now_ns: 1 + t,
            mono_ns: 1 + t,
        });
    }
}

/// Was a bug (defect 14 follow-up): a view number from the network was
/// trusted up to `u64::MAX`. One `StartViewChange { view: u64::MAX, current:
/// u64::MAX }` from one sender is a quorum with the receiver's own vote in
/// a group of three (the receiver adopts the higher campaign and votes for
/// it), so the replica moves to view `u64::MAX` (and tells everyone, who
/// follow). The next timeout computes `self.view + 1` in `start_campaign`:
/// a panic with overflow checks (tests, the simulator), a wrap to 0 in the
/// release NIF, where `campaign = max(campaign, 0)` never exceeds the view
/// again: the group can never change view again (its primary's crash is
/// forever). Before the fix: "panicked at native/vsr/src/view_change.rs:
/// attempt to add with overflow". Now a message with a view (or an
/// incarnation) above `NUMBER_MAX = u64::MAX / 2` is malformed.
#[test]
fn a_view_near_u64_max_from_the_network_does_not_wedge_or_panic() {
    let mut replica = Replica::new(Config::new(CLUSTER, 3), 0);
    tick(&mut replica, 1);
    let max = u64::MAX;
    receive(
        &mut replica,
        1,
        &Message::StartViewChange {
            view: max,
            current: max,
        },
    );
    assert_eq!(replica.stats().dropped_malformed, 1);
    tick(&mut replica, 1_000); // times out: start_campaign
    assert!(
        replica.view() < max,
        "one crafted vote moved the replica to view {}",
        replica.view()
    );
}

/// `entries_are_consistent` (message.rs) computed `from + 1` and
/// `w[0].op + 1` on untrusted fields: a StartView (or DoViewChange) with
/// `from: u64::MAX` panicked `decode` itself with overflow checks (tests,
/// the simulator); the release build wrapped, and took the entry with op 0
/// as attached. Now it is malformed.
#[test]
fn a_start_view_from_u64_max_does_not_panic_decode() {
    let mut replica = Replica::new(Config::new(CLUSTER, 3), 0);
    tick(&mut replica, 1);
    let entry = Arc::new(Prepare::new(7, 1, 0, 1, vec![]));
    receive(
        &mut replica,
        1,
        &Message::StartView {
            view: 1,
            op: 0,
            commit: 0,
            from: u64::MAX,
            from_checksum: 7,
            entries: vec![entry],
        },
    );
    // A run of entries whose first is at op u64::MAX: the same.
    let last = Arc::new(Prepare::new(7, 1, u64::MAX, 1, vec![]));
    let wrapped = Arc::new(Prepare::new(last.checksum, 1, 0, 2, vec![]));
    receive(
        &mut replica,
        1,
        &Message::DoViewChange {
            view: 1,
            log_view: 0,
            op: 0,
            commit: 0,
            from: u64::MAX - 1,
            from_checksum: 7,
            entries: vec![last, wrapped],
        },
    );
    assert_eq!(replica.stats().dropped_malformed, 2);
}

/// Was a bug: a DoViewChange's `op` and `log_view` were claims, not
/// checked against anything. A new primary that has committed op 1 and receives a
/// DoViewChange claiming `log_view: 1, op: 0` (attached at op 0 by the
/// cluster's root checksum, which anyone who knows the cluster id can
/// compute) chooses it as the best log, truncates its own log to op 0 and
/// then hits `assert!(commit_max <= log.op())` in `start_view_if_ready`: a
/// panic in the release build too (an `assert!`, not a `debug_assert!`).
/// (A Byzantine sender can do worse than a panic in VSR, which assumes
/// crash faults; but the rule is that the core never panics on network
/// input.) Fix: drop a DoViewChange whose `log_view > view`, or whose
/// `op < commit`, or whose entries do not reach `op` from `from`
/// (`from + entries.len() != op` when it is meant to be whole); and make
/// the assertion a refusal of that DoViewChange instead of a panic.
/// Before the fix: "view 1: commit 1 beyond the chosen log's head 0". Now
/// decode drops a DoViewChange with `log_view >= view` (no replica sends
/// one: it sends only before it starts the view) or whose entries do not
/// reach `op`.
#[test]
fn a_crafted_do_view_change_does_not_panic_the_new_primary() {
    let mut replica = backup_that_committed_op_1();
    // Replica 2 is already in view 1: with this replica's own vote, a quorum.
    receive(&mut replica, 2, &Message::StartViewChange { view: 1, current: 1 });
    assert_eq!((replica.view(), replica.status()), (1, Status::ViewChange));
    receive(
        &mut replica,
        2,
        &Message::DoViewChange {
            view: 1,
            log_view: 1,
            op: 0,
            commit: 0,
            from: 0,
            from_checksum: root_checksum(CLUSTER),
            entries: vec![],
        },
    );
    assert!(replica.log().op() >= replica.commit_max());
    assert_eq!(replica.stats().dropped_malformed, 1);
}

/// The same with a plausible `log_view` (below the view, above the new
/// primary's): the crafted log would be the best, and lacks op 1, which
/// the new primary knows is committed. It refuses that DoViewChange
/// (`start_view_if_ready`) instead of truncating its log.
#[test]
fn a_best_do_view_change_without_a_committed_op_is_refused() {
    let mut replica = backup_that_committed_op_1();
    receive(
        &mut replica,
        2,
        &Message::DoViewChange {
            view: 4, // replica 1 is its primary
            log_view: 3,
            op: 0,
            commit: 0,
            from: 0,
            from_checksum: root_checksum(CLUSTER),
            entries: vec![],
        },
    );
    assert_eq!((replica.view(), replica.status()), (4, Status::ViewChange));
    assert_eq!((replica.log().op(), replica.commit_max()), (2, 1));
    assert_eq!(replica.stats().dropped_malformed, 1);
}

/// Replica 1 of three, a backup of view 0 holding ops 1 and 2, op 1
/// known committed.
fn backup_that_committed_op_1() -> Replica {
    let mut replica = Replica::new(Config::new(CLUSTER, 3), 1);
    tick(&mut replica, 1);
    // As a backup of view 0, it receives ops 1 and 2 and learns 1 is committed.
    let one = Arc::new(Prepare::new(root_checksum(CLUSTER), 0, 1, 10, vec![]));
    let two = Arc::new(Prepare::new(one.checksum, 0, 2, 11, vec![]));
    for (entry, commit) in [(one, 0), (two, 1)] {
        receive(
            &mut replica,
            0,
            &Message::Prepare {
                view: 0,
                commit,
                entry,
                checkpoint: (0, 0),
            },
        );
    }
    assert_eq!(replica.commit_max(), 1);
    replica
}

/// Was a bug: `on_recovery_response` (recovery.rs) computed `highest + 1` on
/// incarnations the responders report: a `RecoveryResponse { incarnation:
/// u64::MAX }` (or a crash vector carrying `u64::MAX`, which every replica
/// merges and passes on) panics a recovering replica with overflow checks;
/// in the release build it wraps, `max` keeps the old incarnation, and the
/// fence that must tell the new incarnation from the old one does not.
/// Before the fix: "panicked at native/vsr/src/recovery.rs: attempt to add
/// with overflow". Now an incarnation above `NUMBER_MAX`, in a response or
/// a crash vector, makes the message malformed.
#[test]
fn a_recovery_response_at_u64_max_does_not_panic() {
    let nonce = 99;
    let mut replica = Replica::recovering(Config::new(CLUSTER, 3), 0, nonce).unwrap();
    tick(&mut replica, 1);
    for sender in [1, 2] {
        receive(
            &mut replica,
            sender,
            &Message::RecoveryResponse {
                nonce,
                incarnation: u64::MAX,
            },
        );
    }
    assert_eq!(replica.stats().dropped_malformed, 2);
    assert_eq!(replica.status(), Status::Recovering);
    // A crash vector carrying u64::MAX: dropped whole, never merged.
    let mut incarnations = [0; MAX_SLOTS];
    incarnations[0] = u64::MAX;
    let bytes = as_sender(
        member(1),
        &incarnations,
        &Message::RecoveryResponse {
            nonce,
            incarnation: 0,
        },
    );
    replica.step(Input::Receive(&bytes));
    assert_eq!(replica.stats().dropped_malformed, 3);
}

/// The epoch gate (wire version 4 names the sender by epoch, slot, member
/// id and the epoch that admitted it): a message from anyone but a member
/// of the receiver's epoch, so named, is dropped before anything of it is
/// merged. Here a campaign whose crash vector raises slot 2's incarnation
/// comes from an impostor at slot 1 with another member id, from slot 1
/// in another epoch, from slot 1 admitted by another epoch, and from slot
/// 5, outside the list: none is merged (a stranger's crash vector could
/// fence a member out, or make it drop its own messages as stale). From
/// the member in slot 1 it is.
#[test]
fn only_a_member_of_the_receivers_epoch_gets_through_the_gate() {
    let campaign = Message::StartViewChange { view: 1, current: 0 };
    let mut raised = [0; MAX_SLOTS];
    raised[2] = 7;
    let strangers = [
        Sender { id: 99, ..member(1) },
        Sender {
            epoch: 1,
            ..member(1)
        },
        Sender {
            epoch: 2,
            joined: 1,
            ..member(1)
        },
        member(5),
    ];
    let mut replica = Replica::new(Config::new(CLUSTER, 3), 0);
    tick(&mut replica, 1);
    for (i, stranger) in strangers.into_iter().enumerate() {
        replica.step(Input::Receive(&as_sender(stranger, &raised, &campaign)));
        assert_eq!(
            replica.stats().dropped_unknown_sender,
            i as u64 + 1,
            "{stranger:?}"
        );
        assert_eq!(
            replica.durable_state().incarnations,
            [0; MAX_SLOTS],
            "{stranger:?}"
        );
    }
    // The member itself is heard.
    replica.step(Input::Receive(&as_sender(member(1), &raised, &campaign)));
    assert_eq!(replica.durable_state().incarnations[2], 7);
    assert_eq!(replica.stats().dropped_unknown_sender, 4);
}
