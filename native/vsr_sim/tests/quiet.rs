//! Quiet groups (`vsr_sim::quiet_scenarios` for each story).

use vsr_sim::quiet_scenarios::{self as quiet, quiet_options};
use vsr_sim::scenarios::options;
use vsr_sim::{Options, Simulator};

/// The cost claim: an idle group of three sends `2 * (n - 1) /
/// heartbeat_ticks` messages per tick awake (a heartbeat to each backup
/// and its answer), and none once quiet; its nodes' detectors send `n *
/// (n - 1) / beat_ticks` beats per tick (per node pair, whatever the
/// number of groups).
#[test]
fn an_idle_group_sends_nothing_once_quiet() {
    let awake = quiet::idle_messages_per_tick(options(3, 1), 1_000).unwrap();
    let heartbeat = options(3, 1).config.heartbeat_ticks as f64;
    assert!(
        (awake - 2.0 * 2.0 / heartbeat).abs() < 0.01,
        "awake: {awake} per tick"
    );
    let quiet = quiet::idle_messages_per_tick(quiet_options(3, 1), 1_000).unwrap();
    assert_eq!(quiet, 0.0, "quiet: {quiet} per tick");
    let five = quiet::idle_messages_per_tick(quiet_options(5, 1), 1_000).unwrap();
    assert_eq!(five, 0.0, "five replicas, quiet: {five} per tick");
    for n in [3u8, 5] {
        let options = quiet_options(n, 1);
        let beat_ticks = vsr_host::DetectorConfig::for_replicas(&options.config).beat_ticks;
        let (messages, beats) = quiet::idle_traffic_per_tick(options, 1_000).unwrap();
        let expected = (n as f64) * (n as f64 - 1.0) / beat_ticks as f64;
        assert_eq!(messages, 0.0);
        assert!(
            (beats - expected).abs() < 0.01,
            "{n} nodes: {beats} beats per tick"
        );
    }
}

#[test]
fn idle_group_goes_quiet_and_a_submission_wakes_it() {
    for n in [1, 2, 3, 5] {
        quiet::idle_group_goes_quiet_and_a_submission_wakes_it(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn steady_light_load_proposes_no_quiet_round() {
    for n in [1, 3, 5] {
        let mut options = quiet_options(n, 1);
        // Ops done between two ticks, as a real engine's are.
        options.network.delay_min = 0;
        options.network.delay_max = 0;
        quiet::steady_light_load_proposes_no_quiet_round(options).unwrap();
    }
}

#[test]
fn quiet_primary_node_dies() {
    for n in [3, 5] {
        quiet::quiet_primary_node_dies(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn backup_restarted_while_quiet_wakes_the_group() {
    quiet::backup_restarted_while_quiet_wakes_the_group(quiet_options(3, 1)).unwrap();
}

#[test]
fn read_at_a_quiet_group_is_linearizable() {
    quiet::read_at_a_quiet_group_is_linearizable(quiet_options(3, 1)).unwrap();
}

#[test]
fn settled_request_resubmitted_at_a_quiet_backup() {
    for n in [2, 3, 5] {
        quiet::settled_request_resubmitted_at_a_quiet_backup(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn false_suspicion_at_one_backup_deposes_no_primary() {
    for n in [3, 5] {
        quiet::false_suspicion_at_one_backup_deposes_no_primary(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn woken_primary_stamps_by_clocks_as_they_are_now() {
    for n in [3, 5] {
        quiet::woken_primary_stamps_by_clocks_as_they_are_now(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn forwarded_request_lost_before_the_quiet_round() {
    quiet::forwarded_request_lost_before_the_quiet_round(quiet_options(3, 1)).unwrap();
}

#[test]
fn prepares_lost_before_the_quiet_round() {
    quiet::prepares_lost_before_the_quiet_round(quiet_options(3, 1)).unwrap();
}

/// Random seeds with quiet groups (`vopr --quiet`): bursty load, faults
/// while groups are quiet, and every run ends with the group quiet.
#[test]
fn quiet_seeds_pass() {
    quiet_seeds_run(0..40, false);
}

/// Runs `seeds` with quiet groups (and membership changes if
/// `membership`), panicking with the replay command at the first failure.
fn quiet_seeds_run(seeds: impl IntoIterator<Item = u64>, membership: bool) {
    for seed in seeds {
        let mut options = Options::from_seed(seed).with_quiet();
        options.membership_changes = membership;
        if let Err(failure) = Simulator::new(options).run() {
            let flags = if membership { " --membership" } else { "" };
            panic!("{failure}\n     replay: vopr --seed {seed} --quiet{flags}");
        }
    }
}

/// Quiet groups with membership changes (`vopr --quiet --membership`):
/// seeds 109 and 290 never went quiet, a replica retrying for ever a
/// request executed under another origin (`Replica::retry_pending`).
#[test]
fn quiet_membership_seeds_that_failed_once() {
    quiet_seeds_run([109, 290], true);
}

#[test]
fn quiet_primary_node_vanishes() {
    for n in [3, 5] {
        quiet::quiet_primary_node_vanishes(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn partition_makes_the_detector_suspect_a_live_primary() {
    for n in [3, 5] {
        quiet::partition_makes_the_detector_suspect_a_live_primary(quiet_options(n, 1)).unwrap();
    }
}

#[test]
fn lost_beats_make_a_false_suspicion() {
    for n in [3, 5] {
        quiet::lost_beats_make_a_false_suspicion(quiet_options(n, 1)).unwrap();
    }
}

/// The oracle (`Options::oracle`) still drives quiet groups, for
/// comparison with the detector.
#[test]
fn the_oracle_still_serves() {
    let mut options = quiet_options(3, 1);
    options.oracle = true;
    quiet::quiet_primary_node_dies(options.clone()).unwrap();
    quiet::idle_group_goes_quiet_and_a_submission_wakes_it(options).unwrap();
}

#[test]
fn restarted_node_with_a_younger_clock_holds_its_peers_up() {
    quiet::restarted_node_with_a_younger_clock_holds_its_peers_up(quiet_options(3, 1)).unwrap();
}
