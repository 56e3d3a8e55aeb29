//! The bounded model check inside `cargo test`: one exhaustive run per kind
//! of fault, each from `Bounds::quiet()` (3 replicas, one client, a
//! checkpoint after every op) plus that fault. Every reachable state is
//! safe, and the cluster heals from a sample of them. Together they take
//! about a minute on two cores; `make model-check` goes deeper.

use stateright::{Checker, HasDiscoveries, Model};
use vsr::Mutation;
use vsr_model::{verdict, Bounds, Cluster};

/// Explores every state within `bounds` (or, with `states`, the first that
/// many in breadth-first order: every state up to the depth reached).
fn check(name: &str, bounds: Bounds, states: Option<usize>) {
    let mut builder = Cluster::new(bounds).checker().threads(2);
    if let Some(states) = states {
        builder = builder.target_state_count(states);
    }
    let checker = builder.spawn_bfs().join();
    match verdict(&checker) {
        Ok(report) => eprintln!("{name}: {report}"),
        Err(report) => panic!("{name}: {report}"),
    }
}

#[test]
fn a_client_registers_and_executes_a_request() {
    check(
        "requests",
        Bounds {
            requests: 2,
            ..Bounds::quiet()
        },
        None,
    );
}

#[test]
fn view_changes_lose_nothing() {
    // Two timeouts make a view change; all of it is too much for `cargo
    // test` (`make model-check` runs it whole).
    check(
        "view changes",
        Bounds {
            timeouts: 2,
            ..Bounds::quiet()
        },
        Some(150_000),
    );
}

#[test]
fn a_crashed_replica_recovers() {
    check(
        "crash",
        Bounds {
            crashes: 1,
            timeouts: 1,
            ..Bounds::quiet()
        },
        None,
    );
}

#[test]
fn duplicated_packets_change_nothing() {
    check(
        "duplicates",
        Bounds {
            duplicates: 1,
            timeouts: 1,
            ..Bounds::quiet()
        },
        None,
    );
}

#[test]
fn reads_are_linearizable() {
    check(
        "reads",
        Bounds {
            reads: 1,
            ..Bounds::quiet()
        },
        None,
    );
}

/// The model check can fail: a primary that commits without a quorum
/// loses an executed op in the next view change.
#[test]
fn committing_without_a_quorum_is_caught() {
    // The client submits through the primary, so that it is answered
    // before any backup holds the op; two timeouts then start view 1.
    let mut cluster = Cluster::new(Bounds {
        timeouts: 2,
        home: 0,
        ..Bounds::quiet()
    });
    cluster.config.mutation = Mutation::CommitWithoutQuorum;
    let checker = cluster
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyFailures)
        .target_state_count(500_000)
        .spawn_bfs()
        .join();
    let path = checker.discovery("safe").expect("the broken primary is caught");
    eprintln!("caught: {:?}", path.last_state().violation);
}
