//! The checkers can fail: with a deliberate bug compiled into the protocol
//! (the `mutations` feature of `vsr`), the simulator must catch it within a
//! stated number of seeds. A checker that never fails proves nothing.

use vsr::Mutation;
use vsr_sim::scenarios::{self, options};
use vsr_sim::{Options, Simulator};

/// Each mutation must be caught within this many random seeds.
const SEEDS: u64 = 200;

fn first_failing_seed(mutation: Mutation) -> Option<u64> {
    (0..SEEDS).find(|&seed| {
        let mut options = Options::from_seed(seed);
        options.config.mutation = mutation;
        Simulator::new(options).run().is_err()
    })
}

#[test]
fn committing_without_a_quorum_is_caught() {
    let seed = first_failing_seed(Mutation::CommitWithoutQuorum);
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
}

#[test]
fn skipping_the_client_table_is_caught() {
    let seed = first_failing_seed(Mutation::SkipClientTable);
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
}

#[test]
fn ignoring_the_best_log_in_a_view_change_is_caught() {
    let seed = first_failing_seed(Mutation::IgnoreBestLog);
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
}

#[test]
fn rejoining_without_recovering_the_log_is_caught() {
    let seed = (0..SEEDS).find(|&seed| {
        let mut options = Options::from_seed(seed);
        options.amnesia = true;
        options.crash_probability = options.crash_probability.max(0.002);
        options.config.mutation = Mutation::RecoverWithoutLog;
        Simulator::new(options).run().is_err()
    });
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
}

#[test]
fn serving_reads_without_a_quorum_is_caught_by_the_deposed_primary_scenario() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::ReadWithoutQuorum;
    assert!(scenarios::deposed_primary_serves_no_stale_read(broken).is_err());
    scenarios::deposed_primary_serves_no_stale_read(options(3, 1)).unwrap();
}

#[test]
fn joining_a_view_with_a_partial_log_is_caught_by_the_section_5_2_scenario() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::InstallPartialLog;
    assert!(scenarios::state_transfer_never_loses_commits(broken).is_err());
    // And the same scenario passes with the protocol as written.
    scenarios::state_transfer_never_loses_commits(options(3, 1)).unwrap();
}

#[test]
fn a_host_that_sends_before_its_writes_are_durable_is_caught() {
    // Disk mode, crashes only (no bit rot): a replica acknowledges entries
    // that a crash then takes from its disk, and a view change loses them.
    let seed = (0..SEEDS).find(|&seed| {
        let mut options = Options::from_seed(seed);
        options.amnesia = false;
        options.corruption_probability = 0.0;
        options.crash_probability = options.crash_probability.max(0.002);
        options.send_before_sync = true;
        Simulator::new(options).run().is_err()
    });
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
}

#[test]
fn a_checkpoint_with_a_late_client_table_is_caught() {
    let seed = first_failing_seed(Mutation::CheckpointLateClientTable);
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
    let mut broken = options(3, 4);
    broken.snapshot_delay_max = 30;
    broken.config.mutation = Mutation::CheckpointLateClientTable;
    assert!(scenarios::far_behind_replica_syncs_state(broken).is_err());
}

#[test]
fn adopting_an_unverified_commit_number_is_caught_by_the_newer_history_scenario() {
    let mut broken = options(5, 13);
    broken.config.mutation = Mutation::AdoptUnverifiedCommit;
    let failure = scenarios::commit_number_from_newer_history_is_not_adopted(broken).unwrap_err();
    assert!(failure.reason.contains("executed a different entry"), "{failure}");
    scenarios::commit_number_from_newer_history_is_not_adopted(options(5, 13)).unwrap();
}

#[test]
fn a_silent_abdicated_primary_is_caught_by_the_wedge_scenario() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::SilentAbdicatedPrimary;
    let failure = scenarios::two_abdicated_primaries_do_not_wedge(broken).unwrap_err();
    assert!(failure.reason.contains("not within"), "{failure}");
}

#[test]
fn votes_that_never_expire_are_caught_by_the_flapping_scenario() {
    let mut broken = options(5, 1);
    broken.config.mutation = Mutation::KeepStaleVotes;
    let failure = scenarios::prevote_votes_expire(broken).unwrap_err();
    assert!(failure.reason.contains("deposed"), "{failure}");
}

#[test]
fn a_primary_leading_on_after_a_foreign_checkpoint_is_caught_by_the_paused_primary_scenario() {
    let mut broken = options(5, 13);
    broken.config.mutation = Mutation::LeadOnAfterForeignCheckpoint;
    let failure = scenarios::paused_primary_announces_no_commit_from_a_newer_history(broken).unwrap_err();
    assert!(failure.reason.contains("executed a different entry"), "{failure}");
}
