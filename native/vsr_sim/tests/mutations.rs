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
fn serving_reads_from_local_state_is_caught_by_reads_against_reads() {
    // The read through the lagging replica sees a state above every op
    // replied to (the old check, on replies alone, passes it), but below
    // the state an earlier read saw.
    let mut broken = options(3, 2);
    broken.config.mutation = Mutation::ReadFromLocalState;
    let failure = scenarios::read_sees_what_an_earlier_read_saw(broken).unwrap_err();
    assert!(
        failure
            .reason
            .contains("a read that completed before it began saw"),
        "{failure}"
    );
    // Random seeds catch it too, mostly by the bound of replies (a
    // lagging backup below an op a client had a reply for).
    let seed = first_failing_seed(Mutation::ReadFromLocalState);
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
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
    // Disk mode, crashes only (no bit rot), the simulator running
    // `vsr_host::Host` with the mutation: a replica sends what its writes
    // promise (a view, an acknowledged entry), then a crash in the write
    // path takes the writes from its disk.
    let options = |seed, mutation| {
        let mut options = Options::from_seed(seed);
        options.amnesia = false;
        options.corruption_probability = 0.0;
        options.crash_probability = options.crash_probability.max(0.002);
        options.config.mutation = mutation;
        options
    };
    let seed = (0..SEEDS).find(|&seed| {
        Simulator::new(options(seed, Mutation::SendBeforeSync))
            .run()
            .is_err()
    });
    let seed = seed.unwrap_or_else(|| panic!("not caught in {SEEDS} seeds"));
    // The host as it ships passes the same seed.
    Simulator::new(options(seed, Mutation::None)).run().unwrap();
}

#[test]
fn a_checkpoint_with_a_late_client_table_is_caught() {
    let seed = first_failing_seed(Mutation::CheckpointLateClientTable);
    assert!(seed.is_some(), "not caught in {SEEDS} seeds");
    // A late table differs from replica to replica (their hosts answer
    // after different delays): the quorum's digest tells the odd one out.
    let mut broken = options(3, 4);
    broken.snapshot_delay_max = 30;
    broken.config.mutation = Mutation::CheckpointLateClientTable;
    let failure = scenarios::checkpoints_agree(broken).unwrap_err();
    assert!(failure.reason.contains("differs from the quorum's"), "{failure}");
}

#[test]
fn serving_an_unvouched_checkpoint_is_caught_by_the_divergence_scenario() {
    let mut broken = options(3, 4);
    broken.config.mutation = Mutation::ServeUnvouchedCheckpoint;
    let failure = scenarios::divergent_checkpoint_is_not_spread(broken).unwrap_err();
    assert!(failure.reason.contains("differs from the canonical"), "{failure}");
}

#[test]
fn a_sync_without_pins_is_caught_by_the_sustained_load_scenario() {
    let mut broken = options(3, 32);
    broken.config.mutation = Mutation::UnpinnedSync;
    let failure = scenarios::state_sync_finishes_under_sustained_load(broken).unwrap_err();
    assert!(failure.reason.contains("syncs under load"), "{failure}");
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
fn replicas_with_other_settings_that_talk_are_caught() {
    // The bare cluster id on the wire: a replica with a smaller client
    // table joins the quorum.
    let mut broken = options(3, 6);
    broken.config.mutation = Mutation::WireClusterIgnoresSettings;
    let failure = scenarios::replicas_with_other_settings_never_talk(broken).unwrap_err();
    println!("{}", failure.reason);
    scenarios::replicas_with_other_settings_never_talk(options(3, 6)).unwrap();
}

#[test]
fn answering_another_body_with_the_duplicates_reply_is_caught() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::AnswerOtherBody;
    let failure = scenarios::duplicate_request_with_different_body_is_refused(broken).unwrap_err();
    assert!(failure.reason.contains("another body"), "{failure}");
}

#[test]
fn read_ids_without_the_boot_nonce_are_caught_by_the_delayed_read_ok_scenario() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::ReadIdsWithoutNonce;
    let failure = scenarios::delayed_read_ok_is_not_matched_to_a_new_read(broken).unwrap_err();
    assert!(failure.reason.contains("stale read"), "{failure}");
}

#[test]
fn stamping_with_one_clock_is_caught_by_the_clock_jump_scenario() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::UnboundedClock;
    let failure = scenarios::primary_clock_jump_is_bounded(broken.clone()).unwrap_err();
    assert!(failure.reason.contains("ahead"), "{failure}");
    let failure = scenarios::primary_clock_jump_with_one_replica_down(broken.clone()).unwrap_err();
    assert!(failure.reason.contains("ahead"), "{failure}");
    let failure = scenarios::primary_clock_jump_then_request_at_once(broken).unwrap_err();
    assert!(failure.reason.contains("ahead"), "{failure}");
}

#[test]
fn a_primary_leading_on_after_a_foreign_checkpoint_is_caught_by_the_paused_primary_scenario() {
    let mut broken = options(5, 13);
    broken.config.mutation = Mutation::LeadOnAfterForeignCheckpoint;
    let failure = scenarios::paused_primary_announces_no_commit_from_a_newer_history(broken).unwrap_err();
    assert!(failure.reason.contains("executed a different entry"), "{failure}");
}

#[test]
fn the_replica_invariants_catch_a_primary_leading_on_after_a_foreign_checkpoint_first() {
    // The invariant: a primary's own acknowledgement is its log's head.
    // Here it counts the log it no longer holds, before any execution
    // goes wrong.
    let mut broken = options(5, 13);
    broken.config.mutation = Mutation::LeadOnAfterForeignCheckpoint;
    broken.invariants_under_mutation = true;
    let failure = scenarios::paused_primary_announces_no_commit_from_a_newer_history(broken).unwrap_err();
    assert!(failure.reason.contains("broke an invariant"), "{failure}");
    assert!(failure.reason.contains("counts acknowledgements"), "{failure}");
}

#[test]
fn carrying_readings_from_before_a_stall_is_caught_by_the_timestamp_check() {
    let mut broken = options(3, 3);
    broken.config.mutation = Mutation::ClockFromTickBeforeArrival;
    let failure = scenarios::stalled_primary_stamps_no_time_from_its_stall(broken).unwrap_err();
    assert!(failure.reason.contains("ahead of every clock"), "{failure}");
}

#[test]
fn checking_digests_below_the_anchor_is_caught_by_the_late_vouch_scenarios() {
    let mut broken = options(3, 4);
    broken.config.mutation = Mutation::CheckDigestsBelowAnchor;
    let failure =
        scenarios::healed_replica_ignores_a_late_vouch_between_divergence_and_install(broken.clone())
            .unwrap_err();
    assert!(failure.reason.contains("differs from the quorum's"), "{failure}");
    let failure =
        scenarios::installed_replica_ignores_a_late_vouch_for_an_older_checkpoint(broken).unwrap_err();
    assert!(failure.reason.contains("differs from the quorum's"), "{failure}");
}

#[test]
fn a_pin_outliving_its_sync_is_caught_by_the_lossy_link_scenario() {
    let mut broken = options(3, 4);
    broken.config.mutation = Mutation::PinOutlivesSync;
    let failure = scenarios::synced_backup_on_a_lossy_link_releases_its_pin(broken).unwrap_err();
    assert!(failure.reason.contains("still pins"), "{failure}");
}

#[test]
fn a_no_entry_without_the_covering_checkpoint_is_caught_by_the_checkpoint_repair_scenario() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::NoEntryWithoutCheckpoint;
    let failure = scenarios::repair_of_an_entry_below_every_peers_checkpoint(broken).unwrap_err();
    assert!(failure.reason.contains("serve the commits"), "{failure}");
}

#[test]
fn trusting_a_lone_backups_clock_is_caught_by_the_timestamp_check() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::PeersAloneWithBareQuorum;
    let failure = scenarios::backup_clock_jump_with_one_replica_down(broken).unwrap_err();
    assert!(
        failure
            .reason
            .contains("ahead of every clock but the 1 furthest ahead"),
        "{failure}"
    );
}

#[test]
fn a_fence_answer_from_a_view_change_is_caught_by_the_unstarted_view_scenario() {
    let mut broken = options(5, 1);
    broken.config.mutation = Mutation::FenceAnswerFromViewChange;
    let failure = scenarios::recovery_fenced_in_an_unstarted_view_does_not_wedge(broken).unwrap_err();
    assert!(failure.reason.contains("request completes"), "{failure}");
    assert!(failure.reason.contains("r4:Recovering v1"), "{failure}");
}

#[test]
fn preparing_after_a_reconfiguration_entry_is_caught_by_the_primary_removal() {
    let mut broken = options(4, 2);
    broken.config.mutation = Mutation::PrepareAfterReconfiguration;
    assert!(scenarios::shrink_four_to_three_removes_the_primary(broken).is_err());
    scenarios::shrink_four_to_three_removes_the_primary(options(4, 2)).unwrap();
}

#[test]
fn proposing_without_the_origins_consent_is_caught_by_a_late_reconfigure() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::ProposeWithoutConsent;
    assert!(scenarios::withdrawn_change_is_never_proposed_from_a_late_reconfigure(broken).is_err());
    scenarios::withdrawn_change_is_never_proposed_from_a_late_reconfigure(options(3, 1)).unwrap();
}

#[test]
fn a_checkpoint_with_a_late_membership_is_caught_by_the_change_after_a_checkpoint() {
    let mut broken = options(5, 1);
    broken.config.mutation = Mutation::CheckpointLateMembership;
    let failure = scenarios::checkpoint_before_an_entry_records_the_old_list(broken).unwrap_err();
    println!("{}", failure.reason);
    scenarios::checkpoint_before_an_entry_records_the_old_list(options(5, 1)).unwrap();
}

#[test]
fn counting_learners_acknowledgements_is_caught() {
    let mut broken = options(3, 2);
    broken.config.mutation = Mutation::CountLearnerAcks;
    assert!(scenarios::learner_acknowledgements_count_for_nothing(broken).is_err());
    scenarios::learner_acknowledgements_count_for_nothing(options(3, 2)).unwrap();
}

#[test]
fn a_recovery_answered_above_an_unexecuted_entry_is_caught() {
    let mut broken = options(3, 1);
    broken.amnesia = true;
    broken.config.mutation = Mutation::RecoveryAnsweredAboveAnEntry;
    assert!(scenarios::member_recovers_in_the_epoch_its_earlier_life_entered(broken).is_err());
}

#[test]
fn a_member_entering_at_a_number_its_new_list_never_installed_is_caught() {
    let mut broken = options(5, 1);
    broken.amnesia = true;
    broken.config.mutation = Mutation::NoFenceInNewEpoch;
    assert!(scenarios::member_entering_by_the_entry_is_unknown_to_the_new_list(broken).is_err());
}

#[test]
fn a_learner_entering_as_another_life_is_caught() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::EnterAsAnotherLife;
    assert!(scenarios::learner_restarted_after_the_proposal_recovers_in_full(broken).is_err());
    scenarios::learner_restarted_after_the_proposal_recovers_in_full(options(3, 1)).unwrap();
}

#[test]
fn quiet_with_a_forwarded_request_pending_is_caught() {
    use vsr_sim::quiet_scenarios::{self as quiet, quiet_options};
    let mut broken = quiet_options(3, 1);
    broken.config.mutation = Mutation::QuietWithPendingWork;
    let failure = quiet::forwarded_request_lost_before_the_quiet_round(broken).unwrap_err();
    assert!(
        failure
            .reason
            .contains("quiet with a request submitted through it"),
        "{failure}"
    );
    quiet::forwarded_request_lost_before_the_quiet_round(quiet_options(3, 1)).unwrap();
}

#[test]
fn quiet_with_an_uncommitted_op_is_caught() {
    use vsr_sim::quiet_scenarios::{self as quiet, quiet_options};
    let mut broken = quiet_options(3, 1);
    broken.config.mutation = Mutation::QuietWithUncommittedOp;
    let failure = quiet::prepares_lost_before_the_quiet_round(broken).unwrap_err();
    assert!(failure.reason.contains("above its commit"), "{failure}");
    quiet::prepares_lost_before_the_quiet_round(quiet_options(3, 1)).unwrap();
}

#[test]
fn ignoring_the_primarys_node_down_is_caught() {
    use vsr_sim::quiet_scenarios::{self as quiet, quiet_options};
    let mut broken = quiet_options(3, 1);
    broken.config.mutation = Mutation::IgnorePeerDown;
    let failure = quiet::quiet_primary_node_dies(broken.clone()).unwrap_err();
    assert!(failure.reason.contains("a new view starts at once"), "{failure}");
    // Also when the detector times the node out (no `nodedown`).
    let failure = quiet::quiet_primary_node_vanishes(broken).unwrap_err();
    assert!(
        failure.reason.contains("the detector wakes the backups"),
        "{failure}"
    );
}

#[test]
fn a_woken_backup_that_votes_for_any_campaign_is_caught() {
    use vsr_sim::quiet_scenarios::{self as quiet, quiet_options};
    for n in [3, 5] {
        let mut broken = quiet_options(n, 1);
        broken.config.mutation = Mutation::QuietVotesForAnyCampaign;
        let failure = quiet::false_suspicion_at_one_backup_deposes_no_primary(broken).unwrap_err();
        assert!(failure.reason.contains("deposed the primary"), "{failure}");
    }
    // Random seeds (`vopr --quiet`) catch it too, by the check that no
    // replica starts a view change in an idle span without a fault: a
    // backup woken by a client's request campaigns at once. Which seeds
    // catch it moves with the protocol's timing (1, 10 and 11 until repair
    // answers went run by run and stalled view changes backed off; 29 did
    // before seeds drew `checkpoint_bytes`, and does again): these are the
    // seeds of 0..80 that catch it now (and 68), each passing as the
    // protocol is written.
    for seed in [1, 29, 43] {
        let options = |mutation| {
            let mut options = Options::from_seed(seed).with_quiet();
            options.config.mutation = mutation;
            options
        };
        let failure = Simulator::new(options(Mutation::QuietVotesForAnyCampaign))
            .run()
            .unwrap_err();
        assert!(failure.reason.contains("with no fault since tick"), "{failure}");
        Simulator::new(options(Mutation::None)).run().unwrap();
    }
}

#[test]
fn a_wake_without_the_elapsed_ticks_is_caught() {
    use vsr_sim::quiet_scenarios::{self as quiet, quiet_options};
    for n in [3, 5] {
        let mut broken = quiet_options(n, 1);
        broken.config.mutation = Mutation::WakeWithoutElapsedTicks;
        let failure = quiet::woken_primary_stamps_by_clocks_as_they_are_now(broken).unwrap_err();
        assert!(failure.reason.contains("behind every clock"), "{failure}");
    }
}

#[test]
fn a_byte_count_kept_across_an_install_is_caught() {
    let mut broken = options(3, 4);
    broken.config.mutation = Mutation::ByteCountSurvivesInstall;
    let failure = scenarios::byte_budget_checkpoints_agree_after_sync_and_restart(broken).unwrap_err();
    assert!(failure.reason.contains("not a checkpoint boundary"), "{failure}");
    scenarios::byte_budget_checkpoints_agree_after_sync_and_restart(options(3, 4)).unwrap();
}

/// Review: the §5.2 scenario with StartView chunks ended by bytes
/// (`vsr::log::RUN_BYTES`) catches a partial install too.
#[test]
fn joining_a_view_with_a_log_cut_by_bytes_is_caught() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::InstallPartialLog;
    assert!(scenarios::state_transfer_by_runs_never_loses_commits(broken).is_err());
    scenarios::state_transfer_by_runs_never_loses_commits(options(3, 1)).unwrap();
}

#[test]
fn view_changes_that_never_back_off_are_caught() {
    let mut broken = options(3, 1);
    broken.config.mutation = Mutation::NoViewChangeBackoff;
    let delay = 2 * broken.config.view_change_ticks;
    let failure = scenarios::slow_links_still_elect_a_primary(broken, delay).unwrap_err();
    assert!(
        failure
            .reason
            .contains("a request commits after the primary's crash"),
        "{failure}"
    );
    let options = options(3, 1);
    let delay = 2 * options.config.view_change_ticks;
    scenarios::slow_links_still_elect_a_primary(options, delay).unwrap();
}
