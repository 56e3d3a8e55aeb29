//! Scripted regression scenarios (see `vsr_sim::scenarios` for each story).

use vsr_sim::scenarios::{self, options};

#[test]
fn state_transfer_never_loses_commits() {
    scenarios::state_transfer_never_loses_commits(options(3, 1)).unwrap();
}

#[test]
fn view_change_with_full_pipeline() {
    scenarios::view_change_with_full_pipeline(options(3, 8)).unwrap();
}

#[test]
fn client_retry_across_view_change() {
    scenarios::client_retry_across_view_change(options(3, 1)).unwrap();
}

#[test]
fn primary_that_cannot_hear_abdicates() {
    scenarios::primary_that_cannot_hear_abdicates(options(3, 1)).unwrap();
}

#[test]
fn deposed_primary_serves_no_stale_read() {
    scenarios::deposed_primary_serves_no_stale_read(options(3, 1)).unwrap();
}

#[test]
fn far_behind_replica_catches_up() {
    scenarios::far_behind_replica_catches_up(options(3, 4)).unwrap();
}

#[test]
fn lagging_replica_catches_up_under_load() {
    scenarios::lagging_replica_catches_up_under_load(options(3, 1)).unwrap();
}

#[test]
fn amnesiac_replicas_recover() {
    scenarios::amnesiac_replicas_recover(options(3, 1)).unwrap();
}

#[test]
fn every_scenario_holds_for_five_replicas() {
    scenarios::amnesiac_replicas_recover(options(5, 1)).unwrap();
    scenarios::state_transfer_never_loses_commits(options(5, 1)).unwrap();
    scenarios::primary_that_cannot_hear_abdicates(options(5, 1)).unwrap();
    scenarios::far_behind_replica_catches_up(options(5, 2)).unwrap();
}

#[test]
fn far_behind_replica_syncs_state() {
    scenarios::far_behind_replica_syncs_state(options(3, 4)).unwrap();
    scenarios::far_behind_replica_syncs_state(options(5, 8)).unwrap();
}

#[test]
fn new_primary_behind_the_best_logs_base() {
    scenarios::new_primary_behind_the_best_logs_base(options(3, 4)).unwrap();
}

#[test]
fn amnesiac_replica_recovers_from_a_checkpoint() {
    scenarios::amnesiac_replica_recovers_from_a_checkpoint(options(3, 4)).unwrap();
    scenarios::amnesiac_replica_recovers_from_a_checkpoint(options(5, 4)).unwrap();
}

#[test]
fn restart_from_checkpoints() {
    scenarios::restart_from_checkpoints(options(3, 4)).unwrap();
}

#[test]
fn checkpoints_agree() {
    scenarios::checkpoints_agree(options(3, 4)).unwrap();
}

#[test]
fn a_host_whose_snapshot_differs_is_detected() {
    let mut lying = options(3, 4);
    lying.lying_host = Some(1);
    let failure = scenarios::checkpoints_agree(lying).unwrap_err();
    assert!(failure.reason.contains("checkpoint digests"), "{failure}");
}

#[test]
fn commit_number_from_newer_history_is_not_adopted() {
    scenarios::commit_number_from_newer_history_is_not_adopted(options(5, 13)).unwrap();
}

#[test]
fn two_abdicated_primaries_do_not_wedge() {
    scenarios::two_abdicated_primaries_do_not_wedge(options(3, 1)).unwrap();
}

#[test]
fn prevote_votes_expire() {
    scenarios::prevote_votes_expire(options(5, 1)).unwrap();
}

#[test]
fn paused_primary_announces_no_commit_from_a_newer_history() {
    scenarios::paused_primary_announces_no_commit_from_a_newer_history(options(5, 13)).unwrap();
}
