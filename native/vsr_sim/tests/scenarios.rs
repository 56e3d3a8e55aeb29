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
fn failed_boot_keeps_the_disk() {
    scenarios::failed_boot_keeps_the_disk(options(3, 1)).unwrap();
}

#[test]
fn read_sees_what_an_earlier_read_saw() {
    scenarios::read_sees_what_an_earlier_read_saw(options(3, 2)).unwrap();
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
fn lagging_backup_catches_up_under_large_commands() {
    scenarios::lagging_backup_catches_up_under_large_commands(options(3, 4)).unwrap();
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
fn byte_budget_checkpoints_agree_after_sync_and_restart() {
    scenarios::byte_budget_checkpoints_agree_after_sync_and_restart(options(3, 4)).unwrap();
    scenarios::byte_budget_checkpoints_agree_after_sync_and_restart(options(5, 8)).unwrap();
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
fn a_host_whose_snapshot_differs_is_healed() {
    // The liar (a backup) diverges, stops, and installs the quorum's state;
    // the checkers see every other host keep the canonical state.
    let mut lying = options(3, 4);
    lying.lying_host = Some(1);
    scenarios::checkpoints_agree(lying).unwrap();
}

#[test]
fn divergent_checkpoint_is_not_spread() {
    scenarios::divergent_checkpoint_is_not_spread(options(3, 4)).unwrap();
}

#[test]
fn state_sync_finishes_under_sustained_load() {
    scenarios::state_sync_finishes_under_sustained_load(options(3, 32)).unwrap();
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
fn replicas_with_other_settings_never_talk() {
    scenarios::replicas_with_other_settings_never_talk(options(3, 6)).unwrap();
}

#[test]
fn lost_wal_is_not_trusted() {
    scenarios::lost_wal_is_not_trusted(options(3, 1), 0).unwrap();
}

#[test]
fn truncated_wal_is_not_trusted() {
    scenarios::lost_wal_is_not_trusted(options(3, 1), 30).unwrap();
}

#[test]
fn misdirected_wal_tail_is_not_trusted() {
    scenarios::misdirected_wal_tail_is_not_trusted(options(3, 1)).unwrap();
}

#[test]
fn one_corrupt_wal_entry_is_repaired() {
    scenarios::one_corrupt_wal_entry_is_repaired(options(3, 1)).unwrap();
}

#[test]
fn unrepairable_wal_entry_falls_back_to_recovery() {
    scenarios::unrepairable_wal_entry_falls_back_to_recovery(options(3, 2)).unwrap();
}

#[test]
fn delayed_read_ok_is_not_matched_to_a_new_read() {
    scenarios::delayed_read_ok_is_not_matched_to_a_new_read(options(3, 1)).unwrap();
}

#[test]
fn duplicate_request_with_different_body_is_refused() {
    scenarios::duplicate_request_with_different_body_is_refused(options(3, 1)).unwrap();
}

#[test]
fn primary_clock_jump_is_bounded() {
    scenarios::primary_clock_jump_is_bounded(options(3, 1)).unwrap();
    scenarios::primary_clock_jump_is_bounded(options(5, 1)).unwrap();
}

#[test]
fn huge_limits_do_not_overflow() {
    scenarios::huge_limits_do_not_overflow(options(3, 1)).unwrap();
}

#[test]
fn paused_primary_announces_no_commit_from_a_newer_history() {
    scenarios::paused_primary_announces_no_commit_from_a_newer_history(options(5, 13)).unwrap();
}

#[test]
fn two_replicas_repairing_at_once() {
    scenarios::two_replicas_repairing_at_once(options(3, 1)).unwrap();
}

// Review of defect 8 (liveness, within the fault model): after a power loss
// the replica with one damaged entry booted first and gave up its log after
// a fixed 20 requests (2 s with Visor's defaults) before any peer was up; a
// restarted quorum {0, 1} then could not serve (1 recovering needs both
// others). It failed with "replicas 0 and 1 serve the commits: not within 4000 ticks; ...
// r0:ViewChange v0 lv0 op11, r1:Recovering v0 lv0 op0, r2:down". Fixed:
// peers answer NoEntry, and a repairing replica gives up only once a quorum
// of the others did.
#[test]
fn repairing_replica_outwaits_slow_peers() {
    scenarios::repairing_replica_outwaits_slow_peers(options(3, 1)).unwrap();
}

// Review of defect 8 (liveness, within the fault model): replica 1 restarts
// with a damaged entry (op 9) above its own checkpoint (8) but below the
// checkpoint (28) the one peer up restarted from; no peer holds op 9, so 1
// gives up its log and cannot recover without replica 2 (down). Without
// the rot, {0, 1} serve (checked). Fails with "replicas 0 and 1 serve the
// commits: not within 4000 ticks; committed 30, ...; r0:ViewChange v0 lv0
// op30(base 28) commit28/28 ckpt28, r1:Recovering v0 lv0 op0, r2:down".
// Fixed: a peer whose checkpoint covers the op names it in its NoEntry, and
// the repairing replica state-syncs that checkpoint and keeps its own
// entries after it (what restart_from does with a checkpoint).
#[test]
fn repair_of_an_entry_below_every_peers_checkpoint() {
    scenarios::repair_of_an_entry_below_every_peers_checkpoint(options(3, 1)).unwrap();
}

/// Review finding: with only a quorum of clocks heard, the clamp was a
/// no-op (see the scenario's comment).
#[test]
fn primary_clock_jump_with_one_replica_down() {
    scenarios::primary_clock_jump_with_one_replica_down(options(3, 1)).unwrap();
}

/// A backup's clock that jumps ahead does not set the time with one of
/// three replicas down (see the scenario's comment).
#[test]
fn backup_clock_jump_with_one_replica_down() {
    scenarios::backup_clock_jump_with_one_replica_down(options(3, 1)).unwrap();
}

/// Review finding: offsets measured before the primary's own clock jumped
/// vouched for the jumped clock (see the scenario's comment).
#[test]
fn primary_clock_jump_then_request_at_once() {
    scenarios::primary_clock_jump_then_request_at_once(options(3, 1)).unwrap();
    scenarios::primary_clock_jump_then_request_at_once(options(5, 1)).unwrap();
}

#[test]
fn stalled_primary_stamps_no_time_from_its_stall() {
    scenarios::stalled_primary_stamps_no_time_from_its_stall(options(3, 3)).unwrap();
}

#[test]
fn read_resent_across_a_view_change() {
    scenarios::read_resent_across_a_view_change(options(3, 1)).unwrap();
}

/// Review of defects 3 and 7: a diverged replica heals from a peer that
/// holds the quorum's checkpoint without having heard the vouch (it names
/// the digest in `RequestCheckpoint`), after the vouching primary lost its
/// memory (see the scenario's comment).
#[test]
fn diverged_replica_heals_from_a_peer_unaware_of_the_vouch() {
    scenarios::diverged_replica_heals_from_a_peer_unaware_of_the_vouch(options(3, 4)).unwrap();
}

#[test]
fn healed_replica_ignores_a_late_vouch_between_divergence_and_install() {
    scenarios::healed_replica_ignores_a_late_vouch_between_divergence_and_install(options(3, 4)).unwrap();
}

#[test]
fn installed_replica_ignores_a_late_vouch_for_an_older_checkpoint() {
    scenarios::installed_replica_ignores_a_late_vouch_for_an_older_checkpoint(options(3, 4)).unwrap();
}

#[test]
fn synced_backup_on_a_lossy_link_releases_its_pin() {
    scenarios::synced_backup_on_a_lossy_link_releases_its_pin(options(3, 4)).unwrap();
}

#[test]
fn diverged_replica_heals_after_its_anchor_passes_the_divergence() {
    scenarios::diverged_replica_heals_after_its_anchor_passes_the_divergence(options(3, 4)).unwrap();
}

#[test]
fn healed_replica_forms_no_checkpoint_from_its_diverged_state() {
    scenarios::healed_replica_forms_no_checkpoint_from_its_diverged_state(options(3, 4)).unwrap();
}

#[test]
fn recovery_fenced_in_an_unstarted_view_does_not_wedge() {
    scenarios::recovery_fenced_in_an_unstarted_view_does_not_wedge(options(5, 1)).unwrap();
}

#[test]
fn shrink_three_to_two_removing_a_backup() {
    scenarios::shrink_three_to_two_removing_a_backup(options(3, 2)).unwrap();
}

#[test]
fn shrink_four_to_three_removes_the_primary() {
    scenarios::shrink_four_to_three_removes_the_primary(options(4, 2)).unwrap();
}

#[test]
fn changes_that_cannot_be_are_refused() {
    scenarios::changes_that_cannot_be_are_refused(options(3, 1)).unwrap();
}

#[test]
fn reconfiguration_lost_in_a_view_change_is_proposed_again() {
    scenarios::reconfiguration_lost_in_a_view_change_is_proposed_again(options(3, 1)).unwrap();
}

#[test]
fn withdrawn_change_is_never_proposed_from_a_late_reconfigure() {
    scenarios::withdrawn_change_is_never_proposed_from_a_late_reconfigure(options(3, 1)).unwrap();
}

#[test]
fn old_epoch_commits_the_entry_when_the_new_primary_is_lost() {
    scenarios::old_epoch_commits_the_entry_when_the_new_primary_is_lost(options(3, 1)).unwrap();
}

#[test]
fn leaving_replica_restarts_from_disk() {
    scenarios::leaving_replica_restarts_from_disk(options(3, 1)).unwrap();
}

#[test]
fn epoch_notice_after_a_restart_names_the_start() {
    scenarios::epoch_notice_after_a_restart_names_the_start(options(3, 1)).unwrap();
}

#[test]
fn origin_that_syncs_past_its_consent_answers() {
    scenarios::origin_that_syncs_past_its_consent_answers(options(3, 1)).unwrap();
}

#[test]
fn repairing_replica_from_the_old_epoch_repairs() {
    scenarios::repairing_replica_from_the_old_epoch_repairs(options(4, 1)).unwrap();
}

#[test]
fn member_that_missed_the_entry_catches_up() {
    scenarios::member_that_missed_the_entry_catches_up(options(4, 1)).unwrap();
}

#[test]
fn stale_view_change_after_start_epoch_overwrites_executed_ops() {
    scenarios::stale_view_change_after_start_epoch_overwrites_executed_ops(options(5, 3)).unwrap();
}

#[test]
fn diverged_replica_takes_entries_past_the_reconfiguration() {
    scenarios::diverged_replica_takes_entries_past_the_reconfiguration(options(3, 4)).unwrap();
}

#[test]
fn stale_epoch_staging_outlives_its_epoch() {
    scenarios::stale_epoch_staging_outlives_its_epoch(options(5, 2)).unwrap();
}

#[test]
fn member_cut_off_past_the_log_base_enters_by_checkpoint() {
    scenarios::member_cut_off_past_the_log_base_enters_by_checkpoint(options(4, 2)).unwrap();
}

#[test]
fn removed_member_cut_off_past_the_log_base_stops() {
    scenarios::removed_member_cut_off_past_the_log_base_stops(options(4, 2)).unwrap();
}

#[test]
fn origin_that_jumps_over_its_epoch_by_checkpoint_reports_unknown() {
    scenarios::origin_that_jumps_over_its_epoch_by_checkpoint_reports_unknown(options(5, 2)).unwrap();
}

#[test]
fn checkpoint_before_an_entry_records_the_old_list() {
    scenarios::checkpoint_before_an_entry_records_the_old_list(options(5, 1)).unwrap();
}

#[test]
fn grow_three_to_four_under_load() {
    scenarios::grow_three_to_four_under_load(options(3, 3)).unwrap();
    scenarios::grow_three_to_four_under_load(amnesiac(options(3, 3))).unwrap();
    scenarios::grow_three_to_four_under_load(scenarios::checkpointing(options(3, 3))).unwrap();
}

#[test]
fn replace_a_member_that_never_returns() {
    scenarios::replace_a_member_that_never_returns(options(3, 1)).unwrap();
    scenarios::replace_a_member_that_never_returns(amnesiac(options(3, 1))).unwrap();
}

#[test]
fn change_with_a_silent_learner_is_withdrawn() {
    scenarios::change_with_a_silent_learner_is_withdrawn(options(3, 1)).unwrap();
}

#[test]
fn learner_restarted_after_the_proposal_recovers_in_full() {
    scenarios::learner_restarted_after_the_proposal_recovers_in_full(options(3, 1)).unwrap();
    scenarios::learner_restarted_after_the_proposal_recovers_in_full(amnesiac(options(3, 1))).unwrap();
}

#[test]
fn learner_follows_a_new_primary() {
    scenarios::learner_follows_a_new_primary(options(3, 1)).unwrap();
}

fn amnesiac(mut options: vsr_sim::Options) -> vsr_sim::Options {
    options.amnesia = true;
    options
}

#[test]
fn learner_acknowledgements_count_for_nothing() {
    scenarios::learner_acknowledgements_count_for_nothing(options(3, 2)).unwrap();
}

#[test]
fn learner_restarted_after_the_proposal_recovers_in_full_with_checkpoints() {
    scenarios::learner_restarted_after_the_proposal_recovers_in_full(scenarios::checkpointing(options(3, 4)))
        .unwrap();
}

#[test]
fn second_learner_checkpoints_older_epochs_with_its_list() {
    scenarios::second_learner_checkpoints_older_epochs_with_its_list(options(3, 1)).unwrap();
}

#[test]
fn second_learner_refuses_the_primarys_older_epoch_checkpoint() {
    scenarios::second_learner_refuses_the_primarys_older_epoch_checkpoint(options(3, 1)).unwrap();
}

#[test]
fn amnesiac_member_recovers_in_a_later_epoch_from_op_0() {
    scenarios::amnesiac_member_recovers_in_a_later_epoch(options(4, 1), 4).unwrap();
}

#[test]
fn amnesiac_member_recovers_in_a_later_epoch_past_the_log_base() {
    scenarios::amnesiac_member_recovers_in_a_later_epoch(options(4, 1), 8).unwrap();
}

#[test]
fn diverged_member_heals_after_entering_the_next_epoch() {
    scenarios::diverged_member_heals_after_entering_the_next_epoch(options(4, 1)).unwrap();
}

#[test]
fn learner_of_a_second_change_restarted_after_the_proposal_returns() {
    scenarios::learner_of_a_second_change_restarted_after_the_proposal_returns(options(3, 1)).unwrap();
    scenarios::learner_of_a_second_change_restarted_after_the_proposal_returns(amnesiac(options(3, 1)))
        .unwrap();
}

#[test]
fn member_that_missed_the_entry_but_heard_its_commit_enters() {
    scenarios::member_that_missed_the_entry_but_heard_its_commit_enters(options(4, 1)).unwrap();
}

#[test]
fn added_member_restarts_leaving() {
    scenarios::added_member_restarts_leaving(options(3, 1)).unwrap();
}

#[test]
fn leaving_replica_restarts_as_its_slots_new_owner() {
    scenarios::leaving_replica_restarts_as_its_slots_new_owner(options(4, 1)).unwrap();
}

#[test]
fn leaving_replica_asks_its_slots_new_owner() {
    scenarios::leaving_replica_asks_its_slots_new_owner(options(3, 1)).unwrap();
}

#[test]
fn leaving_replica_catches_up_by_checkpoint() {
    scenarios::leaving_replica_catches_up_by_checkpoint(options(4, 2)).unwrap();
}

#[test]
fn replica_behind_asks_past_a_recovering_sender() {
    scenarios::replica_behind_asks_past_a_recovering_sender(amnesiac(options(4, 1))).unwrap();
}

#[test]
fn member_recovered_in_a_later_epoch_restarts_from_disk() {
    scenarios::member_recovered_in_a_later_epoch_restarts_from_disk(options(4, 1)).unwrap();
}

#[test]
fn member_recovers_in_the_epoch_its_earlier_life_entered() {
    scenarios::member_recovers_in_the_epoch_its_earlier_life_entered(amnesiac(options(3, 1))).unwrap();
}

#[test]
#[ignore = "known limitation: an amnesiac member of a two-member list that its view 0 names primary waits (docs/protocol.md, Not yet)"]
fn amnesiac_member_of_a_new_two_member_list_waits() {
    scenarios::amnesiac_member_of_a_new_two_member_list_waits(amnesiac(options(3, 1))).unwrap();
}

#[test]
#[ignore = "known limitation: an amnesiac member of a two-member list that its view 0 names primary waits (docs/protocol.md, Not yet)"]
fn amnesiac_member_after_a_shrink_to_two_waits() {
    scenarios::amnesiac_member_after_a_shrink_to_two_waits(amnesiac(options(3, 1))).unwrap();
}

#[test]
fn recovering_replica_whose_primary_left_hears_the_new_epoch() {
    scenarios::recovering_replica_whose_primary_left_hears_the_new_epoch(options(5, 1)).unwrap();
}

#[test]
fn recovering_replica_forgets_a_view_staged_in_its_old_epoch() {
    scenarios::recovering_replica_forgets_a_view_staged_in_its_old_epoch(options(5, 1)).unwrap();
}

#[test]
fn member_cut_off_while_its_list_left_asks_a_newer_sender_again() {
    scenarios::member_cut_off_while_its_list_left_asks_a_newer_sender_again(options(4, 1)).unwrap();
}

#[test]
fn list_of_one_stamps_ahead_then_grows() {
    scenarios::list_of_one_stamps_ahead_then_grows(options(1, 1)).unwrap();
}

#[test]
fn member_entering_by_the_entry_is_unknown_to_the_new_list() {
    scenarios::member_entering_by_the_entry_is_unknown_to_the_new_list(amnesiac(options(5, 1))).unwrap();
}

#[test]
fn recovering_learner_removed_by_the_next_change_stops() {
    scenarios::recovering_learner_removed_by_the_next_change_stops(options(3, 1)).unwrap();
    scenarios::recovering_learner_removed_by_the_next_change_stops(amnesiac(options(3, 1))).unwrap();
}

#[test]
fn learner_fence_and_full_recovery_wait_for_each_other() {
    scenarios::learner_fence_and_full_recovery_wait_for_each_other(amnesiac(options(3, 1))).unwrap();
}

#[test]
fn recovering_replica_jumping_epochs_hears_a_reused_slots_new_owner() {
    scenarios::recovering_replica_jumping_epochs_hears_a_reused_slots_new_owner(options(4, 1)).unwrap();
}

#[test]
fn two_of_four_lose_their_memory_and_recover_from_the_primary() {
    scenarios::two_of_four_lose_their_memory_and_recover_from_the_primary(amnesiac(options(4, 1))).unwrap();
}

#[test]
fn two_of_four_with_the_primary_lose_their_memory_and_wait() {
    scenarios::two_of_four_with_the_primary_lose_their_memory_and_wait(amnesiac(options(4, 1))).unwrap();
}

#[test]
fn amnesiac_backup_of_two_recovers_from_the_primary() {
    scenarios::amnesiac_backup_of_two_recovers_from_the_primary(amnesiac(options(2, 1))).unwrap();
}

#[test]
fn retried_request_older_than_the_clients_latest_is_not_answered_with_no_op() {
    scenarios::retried_request_older_than_the_clients_latest_is_not_answered_with_no_op(options(3, 1))
        .unwrap();
}

#[test]
fn member_of_the_newest_list_is_not_orphaned() {
    scenarios::member_of_the_newest_list_is_not_orphaned(options(3, 1)).unwrap();
}

/// One-way delays of twice and four times the view-change timeout.
#[test]
fn slow_links_still_elect_a_primary() {
    for factor in [2, 4] {
        let options = options(3, 1);
        let delay = factor * options.config.view_change_ticks;
        scenarios::slow_links_still_elect_a_primary(options, delay).unwrap();
    }
}

/// Samples of `lagging_backup_under_batched_load`: a short look for the
/// regression tests, the review's long one for the exploration.
const SHORT: (usize, u64) = (3, 60);
const LONG: (usize, u64) = (8, scenarios::PHASE_TICKS / 4);

/// Review: a StartView of many large entries comes one run per round trip
/// (exploration, minutes in debug).
#[test]
#[ignore]
fn review_view_change_with_lagging_backup_and_large_commands() {
    for behind in [20, 60, 150, 600] {
        for buffer in [false, true] {
            let (took, views, _) =
                scenarios::view_change_with_lagging_backup_and_large_commands(options(3, 4), behind, buffer)
                    .unwrap();
            eprintln!("buffer {buffer}: {took} ticks, {views} views");
        }
    }
}

/// Review: batched entries of moderate commands exceed `RUN_BYTES /
/// pipeline_max`; the lagging backup must still catch up under load
/// (exploration, minutes in debug).
#[test]
#[ignore]
fn review_lagging_backup_under_batched_load() {
    for (clients, payload) in [(64, 32 << 10), (64, 64 << 10), (128, 32 << 10)] {
        for buffer in [None, Some((1 << 20, 1 << 20))] {
            let (gaps, mean) =
                scenarios::lagging_backup_under_batched_load(options(3, clients), payload, 300, buffer, LONG)
                    .unwrap();
            eprintln!(
                "clients {clients} payload<{payload} buffer {buffer:?}: mean entry {mean} B, gaps {gaps:?}"
            );
        }
    }
}

/// Regression (review of the repair byte runs): 64 clients of commands up
/// to 64 KiB, batched (default limits) into entries of about 130 KiB, over
/// links without a byte limit. With one run (`RUN_BYTES`) per repair round
/// trip the backup gained about four entries per round trip while the
/// primary commits up to `pipeline_max` (8): healed 100 ops behind, the
/// gap grew (about 500 ops after 700 ticks, from 300). With the answer
/// sent run by run under a window of `pipeline_max + 1` runs it catches up.
#[test]
fn lagging_backup_catches_up_under_batched_moderate_commands() {
    let (gaps, mean) =
        scenarios::lagging_backup_under_batched_load(options(3, 64), 64 << 10, 100, None, SHORT).unwrap();
    eprintln!("mean entry {mean} B, gaps {gaps:?}");
    assert!(
        mean > 64 << 10,
        "entries of {mean} B fit a run by count: not the case tested"
    );
    assert!(
        *gaps.last().unwrap() < 30,
        "replica 2 never catches up: gap {gaps:?} (mean entry {mean} B)"
    );
}

/// Review: vopr's random faults with large commands (up to 128 KiB, entries
/// up to 1 MiB) over send-buffered links, so that runs end by bytes.
/// `REVIEW_SEEDS` seeds from `REVIEW_FROM` (default 5 from 0).
#[test]
#[ignore]
fn review_random_faults_with_large_commands() {
    let var = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (from, count) = (var("REVIEW_FROM", 0), var("REVIEW_SEEDS", 5));
    let buffer = var("REVIEW_BUFFER", 1) == 1;
    let mut failed = Vec::new();
    for seed in from..from + count {
        let mut o = vsr_sim::options::Options::from_seed(seed);
        o.payload_max = 128 << 10;
        o.config.batch_max_bytes = 1 << 20;
        o.network.loss_per_kib = 0.0;
        o.request_probability = o.request_probability.min(0.03);
        o.config.checkpoint_bytes = o.config.checkpoint_bytes.saturating_mul(1024);
        o.config.checkpoint_chunk_bytes = o.config.checkpoint_chunk_bytes.saturating_mul(1024);
        let mut sim = vsr_sim::simulator::Simulator::new(o);
        if buffer {
            sim.network.send_buffer = Some(vsr_sim::network::SendBuffer::new(1 << 20, 1 << 20));
        }
        match sim.run() {
            Ok(r) => eprintln!("seed {seed}: ok, {} committed, {} views", r.committed, r.views),
            Err(f) => {
                eprintln!("seed {seed}: FAILED at tick {}: {}", f.tick, f.reason);
                failed.push(seed);
            }
        }
    }
    assert!(failed.is_empty(), "failed seeds {failed:?}");
}

/// Regression: the same load over links that refuse a send while 1 MiB
/// is queued but drain 4 MiB a tick (a faster link than
/// `lagging_backup_catches_up_under_large_commands` models).
#[test]
fn lagging_backup_catches_up_under_batched_commands_on_a_fast_buffered_link() {
    let (gaps, mean) = scenarios::lagging_backup_under_batched_load(
        options(3, 64),
        64 << 10,
        100,
        Some((1 << 20, 4 << 20)),
        SHORT,
    )
    .unwrap();
    eprintln!("mean entry {mean} B, gaps {gaps:?}");
    assert!(
        *gaps.last().unwrap() < 30,
        "replica 2 never catches up: gap {gaps:?} (mean entry {mean} B)"
    );
}

/// Review finding: the same with small commands (under 4 KiB, 2 KiB on
/// average) from 1,024 clients, batched by the default limits (256 requests,
/// 1 MiB) into entries of over 64 KiB: "entries of small commands never
/// reach the budget" does not hold once the primary batches them.
#[test]
#[ignore]
fn review_lagging_backup_catches_up_under_batched_small_commands() {
    let (gaps, mean) =
        scenarios::lagging_backup_under_batched_load(options(3, 1024), 4 << 10, 300, None, LONG).unwrap();
    eprintln!("mean entry {mean} B, gaps {gaps:?}");
    assert!(
        *gaps.last().unwrap() < 50,
        "replica 2 never catches up: gap {gaps:?} (mean entry {mean} B)"
    );
}

/// Review (streamed repair answers): a learner joining under batched load
/// of entries over `RUN_BYTES / pipeline_max`. Prints the gap samples;
/// asserts the learner gets within 30 ops at the end. With REVIEW_LAG=1 the learner
/// is cut off while the group commits 100 more, then healed: at 7344e9a its
/// gap stays 55..260 (repair answers to a learner open only by ticks:
/// `on_learner_ack` never calls `repair_acknowledged`); with that call
/// added (the fix) it is 15 from the first sample. Ignored for its time
/// (about 30 s in debug): `REVIEW_LAG=1 cargo test -p vsr_sim --test
/// scenarios review_learner -- --ignored` passes.
#[test]
#[ignore]
fn review_learner_catches_up_under_batched_load() {
    let (gaps, mean) = scenarios::learner_under_batched_load(options(3, 64), 64 << 10, 100, (8, 60)).unwrap();
    eprintln!("mean entry {mean} B, learner gaps {gaps:?}");
    assert!(
        *gaps.last().unwrap() < 30,
        "learner never catches up: {gaps:?} (mean entry {mean} B)"
    );
}

/// Review (streamed repair answers): the most bytes one host flush sends
/// one peer (one distribution message in the NIF host) while a lagging
/// backup catches up, for large batched entries and larger pipelines.
/// Prints the figures (`review:` lines); asserts nothing.
#[test]
#[ignore]
fn review_flush_bytes_to_one_peer() {
    for (pipeline, payload) in [(8, 256 << 10), (32, 64 << 10), (32, 256 << 10)] {
        let mut o = options(3, 64);
        o.config.pipeline_max = pipeline;
        if let Some(m) = std::env::var("REVIEW_ENTRIES_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            o.config.message_entries_max = m;
        }
        let r = scenarios::lagging_backup_under_batched_load(o, payload, 100, None, (3, 60));
        eprintln!(
            "pipeline {pipeline} payload<{payload}: {:?}",
            r.map_err(|f| f.reason)
        );
    }
}
