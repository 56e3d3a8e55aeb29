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

/// Found by the dead-minority soak of this stop's core (seeds 305,000 to
/// 314,999: 9,999 passed, this one failed), not yet explained: replica 0
/// restarts from its disk (tick 1616), moves at once to view 4 on hearing a
/// campaign and sends in it; its store's superblock is then sequence 7,
/// view 4, nothing staged. It crashes (tick 2451) and restarts at tick 2620
/// from superblock sequence 6, view 0: both copies of sequence 7 are gone
/// (no rot in this seed: `corruption_probability` 0). With torn crashes
/// off, or with disk faults at boot off, the seed passes. From the restart
/// at tick 1616 to the crash, the disk (`MemDisk::unsynced`) holds 2
/// unsynced operations that never become synced, while the replica sends
/// in view 4 from tick 1617 and its host holds nothing pending: the
/// superblock write of view 4 was never made durable, yet the sends that
/// must follow it left, and the crash kept a prefix without it. Traced
/// further: the crash at tick 1548 cut a superblock write of view 4 after
/// one of its two copies (sequence 6); a boot at tick 1557 failed (a disk
/// fault at boot: `failed_boots` 0 -> 1), and the simulator puts such a
/// disk back without a crash; the boot at tick 1615 then finds superblock
/// sequence 7 (view 4, two copies) in the disk's current bytes, which are
/// not durable (the durable file holds sequence 6, one copy). The likely
/// cause: an open after a failed `fsync` reads what the failed attempt
/// wrote (as Linux's page cache serves it) and trusts it as durable; the
/// open should make what it read durable (rewrite and sync) before the
/// replica acts on it. Storage, not the protocol; base 9bc5593 passes this
/// seed range (305,000–314,999) whole (another schedule), and this core
/// passes dead-minority seeds 0–24,999. It fails the same on every core since wire
/// version 4 (286f83c); the core before passes it, most likely because the
/// larger messages changed the random schedule (the network's loss grows
/// with a message's size), not the logic. To be explained and fixed, with a
/// scenario, next; replay with
/// `cargo run --release -p vsr_sim --bin vopr -- --seed 307755 --dead-minority`.
#[test]
fn dead_minority_seed_307755_keeps_its_durable_view() {
    let mut options = Options::from_seed(307_755);
    options.dead_minority = true;
    Simulator::new(options).run().unwrap();
}

/// Random membership changes (`vopr --membership`), seeds that failed
/// once: 3 (a replica that knew the reconfiguration entry's op committed
/// but lacked the entry gave up on it, taking a missing entry for a
/// differing one, and stayed in the old epoch); 54, 69, 146 and 168 (a
/// learner, or a replica recovering into a newer epoch, captured
/// checkpoints of older epochs' ops with its live list: their digests
/// differed from the quorum's); 92 (a recovering replica left out of the
/// newer epoch it heard of kept an acknowledgement for its own slot); 25
/// (a replica recovering into a newer epoch refused the older epoch's
/// checkpoint it needed); 822 and 899 (a replica restarted from its disk
/// in the old epoch kept entries of the new one after the
/// reconfiguration entry: the crash kept the log's records, not the
/// superblock's); 836 (a request queued across a change of epoch was
/// prepared again after its client moved on, and its origin answered the
/// caller a second time, naming no op); 108, 127, 672, 700, 709, 906 and
/// 912 (a replica recovering in an old epoch whose list's members that
/// it asked had left or moved on dropped the new epoch's messages and
/// asked nobody else); 358, 681, 859 and 965 (a replica recovering into a
/// newer epoch kept the log it had staged of a view of the old one, which
/// outranked the new epoch's view 0); 787 (a replica behind, whose list's
/// members had all left, asked the one newer-epoch sender it heard only
/// once); 213, 403, 481 and 553 (the timestamp check, not the protocol: a
/// genesis of one stamped with its clock an hour ahead, and the list of
/// two it grew to stamped `head + 1` above that); 819 (a learner
/// restarted after the proposal, recovering in full on entering, removed
/// by the next change before it was done, ignored the notices of the
/// newer epoch); 864 (the simulator's fault budget did not count a
/// crashed learner, which recovers in full on entering, and let a second
/// member of a list of four recover meanwhile); 290 (found under that
/// budget: as 819); 1136 (the simulator restarted a learner removed by a
/// later change as a learner, which nobody would teach); 2192 (a replica
/// behind asked only the newer list's members, none of which held the
/// epoch's start, never the leaving replica that did).
#[test]
fn membership_seeds_that_failed_once() {
    membership_seeds(&[
        3, 25, 54, 69, 92, 108, 127, 146, 168, 213, 290, 358, 403, 481, 553, 672, 681, 700, 709, 787, 819,
        822, 836, 859, 864, 899, 906, 912, 965, 1136, 1465, 2192, 2329, 2589,
    ]);
}

/// Seeds 5,000 to 21,999's failures, fixed (split from the list above so
/// that the two run on two cores): staged epoch entries installed after a
/// checkpoint moved the log's base past their start (7840, 11034, 14116,
/// 14260, 17664); a disk-mode restart in the window where an installed
/// checkpoint of a newer epoch is named before the state (3550, 5688,
/// 7937, 8436, 9682); a learner silent for good after its epoch was left
/// (5471); a member removed while down, back after its whole list left
/// (5521); a replica repairing a damaged entry in an epoch its list left
/// (7002, 9590); a learner-made member repairing a damaged entry, a fence
/// begun (22019); a leaving replica repairing one (18734), or restarted
/// recovering (8965), dropping `EpochStarted`; a recovered replica asking
/// its view's stopped primary for the log (16150).
#[test]
fn membership_seeds_beyond_5000_that_failed_once() {
    membership_seeds(&[
        7840, 11034, 14116, 14260, 17664, 3550, 5688, 7937, 8436, 9682, 5471, 5521, 7002, 9590, 22019, 18734,
        16150, 8965,
    ]);
}

fn membership_seeds(seeds: &[u64]) {
    check(seeds.iter().filter_map(|&seed| {
        let mut options = Options::from_seed(seed);
        options.membership_changes = true;
        Simulator::new(options).run().err()
    }));
}
