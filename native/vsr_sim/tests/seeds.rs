//! Random seeds: every invariant holds under every fault the seed chooses,
//! and every request finishes once the faults heal.
//!
//! 1000 seeds, in four tests so that they run in parallel, and 200 more in
//! the dead-minority mode (up to `n - quorum` replicas never come back once
//! the faults heal, and every request through a live replica must still
//! finish). More with `make soak SEEDS=N` (add `--dead-minority` to vopr
//! for that mode); a failing seed replays with
//! `cargo run --release -p vsr_sim --bin vopr -- --seed N [--dead-minority]`.

use vsr_sim::{run_seed, Options, Simulator};

fn run_range(seeds: std::ops::Range<u64>) {
    check(seeds.filter_map(|seed| run_seed(seed).err()));
}

fn check(failures: impl Iterator<Item = vsr_sim::Failure>) {
    let failures: Vec<String> = failures.map(|failure| failure.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn seeds_0_to_250() {
    run_range(0..250);
}

#[test]
fn seeds_250_to_500() {
    run_range(250..500);
}

#[test]
fn seeds_500_to_750() {
    run_range(500..750);
}

#[test]
fn seeds_750_to_1000() {
    run_range(750..1000);
}

#[test]
fn dead_minority_seeds_0_to_200() {
    check((0..200).filter_map(|seed| {
        let mut options = Options::from_seed(seed);
        options.dead_minority = true;
        Simulator::new(options).run().err()
    }));
}

#[test]
fn a_seed_replays_exactly() {
    let (a, b) = (run_seed(4242).unwrap(), run_seed(4242).unwrap());
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// Two seeds that wedged with a lying host (drawn with every eligible seed
/// lying) while a diverged replica took no part in view changes: with two
/// amnesiac replicas recovering, the others' votes were not a quorum.
#[test]
fn diverged_replica_takes_part_in_view_changes() {
    for (seed, liar) in [(700_556, 3), (700_558, 2)] {
        let mut options = vsr_sim::Options::from_seed(seed);
        options.lying_host = Some(liar);
        vsr_sim::Simulator::new(options).run().unwrap();
    }
}

/// Three seeds of the 1,000,000-seed soak (each with a lying host) where a
/// replica that had installed a newer checkpoint diverged on a late vouch
/// for an older one of its own, asked for that older one, and refused it
/// from both peers for ever (docs/protocol.md, "Vouching and divergence").
#[test]
fn installed_replica_does_not_diverge_on_a_late_vouch() {
    for seed in [161_832, 291_613, 309_250] {
        run_seed(seed).unwrap();
    }
}

/// Two seeds of the 1,000,000-seed soak where a recovering replica took
/// the view of a replica alone in a view change, which then lost its
/// memory while the others kept their view: it waited for that view's log
/// for ever, and so did its clients (docs/protocol.md, "Restart without
/// state: recovery with crash vectors").
#[test]
fn recovery_is_not_fenced_in_an_unstarted_view() {
    for seed in [588_342, 758_283] {
        run_seed(seed).unwrap();
    }
}
