//! The bounded model check of membership changes inside `cargo test`
//! (docs/testing.md, "Membership changes"): the small cases of
//! `Bounds::membership` that finish within a minute on two cores, and the
//! self-tests that break the membership protocol on purpose. The heavier
//! cases are `#[ignore]`d here and run by `make model-check-membership`.

use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};
use vsr::Mutation;
use vsr_model::{verdict, Bounds, Cluster};

/// Explores every state within `bounds` (or, with `states`, the first that
/// many in breadth-first order).
fn check(name: &str, bounds: Bounds, states: Option<usize>) {
    let started = Instant::now();
    let mut builder = Cluster::new(bounds).checker().threads(2);
    if let Some(states) = states {
        builder = builder.target_state_count(states);
    }
    let checker = builder.spawn_bfs().join();
    let elapsed = started.elapsed();
    match verdict(&checker) {
        Ok(report) => eprintln!("{name} ({elapsed:.0?}): {report}"),
        Err(report) => panic!("{name} ({elapsed:.0?}): {report}"),
    }
}

/// The states each case explores inside `cargo test` (breadth-first:
/// every state up to the depth reached, deep enough for every change to
/// take effect); `make model-check-membership` goes further.
const CI_STATES: usize = 150_000;

fn case(name: &str) -> Bounds {
    Bounds::membership(name).expect("a known case")
}

/// Runs `bounds` with `mutation` until a property breaks; the violation
/// found (of `safe`, or met while healing), which must contain `expected`.
fn caught(bounds: Bounds, mutation: Mutation, states: usize, expected: &str) {
    let started = Instant::now();
    let mut cluster = Cluster::new(bounds);
    cluster.config.mutation = mutation;
    let checker = cluster
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .target_state_count(states)
        .spawn_bfs()
        .join();
    let found = ["safe", "heals"].into_iter().find_map(|property| {
        let path = checker.discovery(property)?;
        let state = path.last_state();
        let violation = match &state.violation {
            Some(v) => v.clone(),
            None => checker.model().heals(state).err().unwrap_or_default(),
        };
        Some((property, violation, path.into_actions()))
    });
    let Some((property, violation, actions)) = found else {
        panic!(
            "{mutation:?} not caught in {} states ({:.0?})",
            checker.state_count(),
            started.elapsed()
        );
    };
    eprintln!(
        "{mutation:?} caught by {property:?} after {} states ({:.0?}): {violation}\n  after {actions:?}",
        checker.state_count(),
        started.elapsed()
    );
    assert!(violation.contains(expected), "{mutation:?}: {violation}");
}

// ---- The cases ------------------------------------------------------------

/// 3 → 3 by replace (slot 0 out, slot 3 in), asked through member 1 at any
/// point of a client's registration, one timeout (the primary proposes
/// once its learner caught up, or a backup campaigns).
#[test]
fn replace_one_member() {
    check(
        "replace",
        Bounds {
            duplicates: 0,
            origin: Some(1),
            ..case("replace")
        },
        Some(CI_STATES),
    );
}

/// 2 → 3, one crash (of a member once every list has three, or of the
/// learner at any point), a genesis member's host knowing only epoch 0:
/// it must find the newest epoch.
#[test]
fn amnesiac_host_knowing_only_the_genesis() {
    check("genesis host", case("genesis-host"), Some(CI_STATES));
}

/// 2 → 3 with the learner crashing at any point: before it entered it
/// restarts as a new life (which enters only by recovering in full), after
/// it as a member without its state.
#[test]
fn learner_restarted_without_its_state() {
    check("learner restart", case("learner-restart"), Some(CI_STATES));
}

/// 1 → 2 → 1 without faults, the first states of it (it found a lone new
/// primary asking for the entry's snapshot after executing the next op;
/// `make model-check-membership` goes deeper: 1.5 million states, depth
/// 20, safe).
#[test]
fn one_to_two_to_one() {
    check("one-two-one", case("one-two-one"), Some(CI_STATES));
}

/// 3 → 4 → 3 with one crash and two timeouts: minutes, not for `cargo test`.
#[test]
#[ignore = "heavy: make model-check-membership"]
fn grow_then_shrink() {
    check("grow-shrink", case("grow-shrink"), None);
}

// ---- Self-tests: a broken membership protocol is caught --------------------

/// A primary that counts its learner's acknowledgement commits with the
/// learner and itself alone, two of three members of its list missing
/// (at its next tick: a learner's acknowledgement alone does not make the
/// primary count).
#[test]
fn counting_learner_acknowledgements_is_caught() {
    caught(
        Bounds {
            slots: 4,
            changes: vec![vec![0, 1, 2, 3]],
            origin: Some(0),
            home: 0,
            timeouts: 1,
            heal_one_in: u64::MAX,
            ..Bounds::quiet()
        },
        Mutation::CountLearnerAcks,
        500_000,
        "committed in epoch 0 with 1 of its 3 members holding it",
    );
}

/// A primary that prepares a client's request after the entry that ends
/// its epoch: the old epoch holds an op the new one gives to another entry.
#[test]
fn preparing_after_a_reconfiguration_entry_is_caught() {
    caught(
        Bounds {
            changes: vec![vec![0, 1]],
            origin: Some(0),
            home: 0,
            ..Bounds::quiet()
        },
        Mutation::PrepareAfterReconfiguration,
        500_000,
        "holds entries after op",
    );
}

/// An origin that consents to a change it already answered "no" (its
/// deadline passed first) lets a late `Reconfigure` make the epoch.
#[test]
fn proposing_without_the_origins_consent_is_caught() {
    caught(
        Bounds {
            changes: vec![vec![0, 1]],
            origin: Some(1),
            change_ticks: 5,
            timeouts: 1,
            heal_one_in: u64::MAX,
            ..Bounds::quiet()
        },
        Mutation::ProposeWithoutConsent,
        500_000,
        "answered NoQuorum",
    );
}

/// A learner restarted as a new life after the proposal recorded the old
/// one enters as the member the entry names, without recovering.
#[test]
fn a_learner_entering_as_another_life_is_caught() {
    caught(
        Bounds {
            timeouts: 2,
            crashes: 1,
            heal_one_in: 1,
            origin: Some(0),
            ..case("learner-restart")
        },
        Mutation::EnterAsAnotherLife,
        1_000_000,
        "without recovering",
    );
}
