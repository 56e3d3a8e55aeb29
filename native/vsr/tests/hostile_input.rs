//! Crafted, correctly checksummed messages (the checksum is not a MAC:
//! anyone who knows the cluster id can compute it) fed to one replica.
//! The core must not panic on network input (a panic fails the group).
//!
//! Each test here is `#[ignore]`d: it shows a bug found in review and
//! fails (panics) on today's code. Run with `cargo test -p vsr --test
//! hostile_input -- --ignored`.

use std::sync::Arc;

use vsr::message::encode;
use vsr::{root_checksum, Config, Input, Message, Prepare, Replica, Status};

const CLUSTER: u128 = 1;

fn from(sender: u8, message: &Message) -> Vec<u8> {
    encode(
        Config::new(CLUSTER, 3).wire_cluster(),
        sender,
        &[0, 0, 0],
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

/// BUG (defect 14 follow-up): a view number from the network is trusted
/// up to `u64::MAX`. One `StartViewChange { view: u64::MAX, current:
/// u64::MAX }` from one sender is a quorum with the receiver's own vote in
/// a group of three (the receiver adopts the higher campaign and votes for
/// it), so the replica moves to view `u64::MAX` (and tells everyone, who
/// follow). The next timeout computes `self.view + 1` in `start_campaign`:
/// a panic with overflow checks (tests, the simulator), a wrap to 0 in the
/// release NIF, where `campaign = max(campaign, 0)` never exceeds the view
/// again: the group can never change view again (its primary's crash is
/// forever). Fix: ignore a view above some bound (e.g. `view > self.view +
/// 2^32` or `u64::MAX / 2`), or saturate and refuse to campaign at
/// `u64::MAX`.
#[test]
#[ignore = "bug: a crafted StartViewChange moves the group to view u64::MAX; start_campaign overflows"]
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

/// BUG: a DoViewChange's `op` and `log_view` are claims, not checked
/// against anything. A new primary that has committed op 1 and receives a
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
#[test]
#[ignore = "bug: a crafted DoViewChange trips the assert in start_view_if_ready"]
fn a_crafted_do_view_change_does_not_panic_the_new_primary() {
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
}

/// BUG: `on_recovery_response` (recovery.rs) computes `highest + 1` on
/// incarnations the responders report: a `RecoveryResponse { incarnation:
/// u64::MAX }` (or a crash vector carrying `u64::MAX`, which every replica
/// merges and passes on) panics a recovering replica with overflow checks;
/// in the release build it wraps, `max` keeps the old incarnation, and the
/// fence that must tell the new incarnation from the old one does not.
/// Fix: `checked_add(1)`, refusing (ignoring) an answer at `u64::MAX`, and
/// refuse crash vectors with such entries in `on_envelope`.
#[test]
#[ignore = "bug: recovery computes highest + 1 on a reported incarnation"]
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
}
