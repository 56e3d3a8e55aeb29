//! Review of 73728d7 ("Stalled view changes back off"): probes of the
//! view-change backoff's liveness. Each test prints what it measured (run
//! with `--nocapture`) and asserts only what holds at this commit.

use vsr::{Slot, Status};
use vsr_sim::scenarios::{options, register_all, PHASE_TICKS};
use vsr_sim::simulator::{Failure, Simulator};

fn all_normal_in_one_view(s: &Simulator, alive: &[Slot]) -> bool {
    let views: Vec<u64> = alive.iter().map(|&r| s.replica(r).view()).collect();
    views.iter().all(|&v| v == views[0]) && alive.iter().all(|&r| s.replica(r).status() == Status::Normal)
}

/// Ticks a request through `home` takes to commit, starting now.
fn ticks_to_commit(sim: &mut Simulator, home: Slot, bound: u64) -> Result<u64, Failure> {
    let t0 = sim.tick;
    sim.clients[0].home = home;
    sim.start_request(0)?;
    sim.run_until(bound, "a request commits", |s| s.clients[0].outstanding.is_none())?;
    Ok(sim.tick - t0)
}

/// One-way delays of `delay` ticks (`spread`: uniformly 1..=delay instead),
/// `n` replicas, primary 0 crashes: ticks until a request commits.
fn slow_links(n: u8, delay: u64, spread: bool) -> Result<u64, Failure> {
    let mut sim = Simulator::new(options(n, 1));
    register_all(&mut sim, 1)?;
    if spread {
        sim.network.options.delay_min = 1;
        sim.network.options.tail = 1.0;
    } else {
        sim.network.options.delay_min = delay;
    }
    sim.network.options.delay_max = delay;
    sim.run_ticks(2 * delay)?;
    sim.crash(0);
    ticks_to_commit(&mut sim, 1, 40 * PHASE_TICKS)
}

/// Sweep of `slow_links_still_elect_a_primary` over cluster sizes and
/// delays, fixed and spread. Fixed delays up to 4x the timeout elect a
/// primary with 3 and 5 replicas; beyond the cap (3 delays > 16 timeouts)
/// nothing is promised and the sweep only prints.
#[test]
fn slow_links_sweep() {
    let vct = options(3, 1).config.view_change_ticks;
    for n in [3u8, 5] {
        for factor in [1u64, 2, 3, 4, 6, 8] {
            for spread in [false, true] {
                let r = slow_links(n, factor * vct, spread);
                println!(
                    "n={n} delay={factor}x{} {}: {:?}",
                    vct,
                    if spread { "spread" } else { "fixed" },
                    r.as_ref()
                        .map_err(|e| e.reason.chars().take(120).collect::<String>())
                );
                if factor <= 4 && !spread {
                    r.unwrap();
                }
            }
        }
    }
}

/// A stalled view change after a slow period: 5 replicas; replica 0 (view
/// 0's primary) is cut off while links are `slow` ticks one way, and the
/// other four elect a primary (their view changes time out and back off).
/// Links become fast, 0 rejoins, and `churn` times a primary is deposed
/// (cut off for a moment) `gap` ticks after the last view started. Then the
/// current primary and the next view's primary both crash: the first view
/// change stalls on a dead primary and must time out. Returns the ticks
/// from the crash to a commit.
fn failover_after(slow: u64, churn: usize, gap: u64) -> Result<u64, Failure> {
    failover_after_with(slow, churn, gap, false)
}

fn failover_after_with(slow: u64, churn: usize, gap: u64, zero_dies: bool) -> Result<u64, Failure> {
    let mut sim = Simulator::new(options(5, 1));
    register_all(&mut sim, 1)?;
    let fast = (sim.network.options.delay_min, sim.network.options.delay_max);
    let all: Vec<Slot> = (0..5).collect();
    sim.network.partition(5, &[0], true, true);
    sim.network.options.delay_min = slow;
    sim.network.options.delay_max = slow;
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    sim.run_until(40 * PHASE_TICKS, "the four elect a primary", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    (sim.network.options.delay_min, sim.network.options.delay_max) = fast;
    sim.network.heal();
    // In-flight slow messages land within `slow` ticks.
    sim.run_until(slow + PHASE_TICKS, "all five normal", |s| {
        s.tick > 0 && all_normal_in_one_view(s, &all)
    })?;
    for round in 0.. {
        let p = sim.primary().expect("a primary");
        let view = sim.replica(p).view();
        let next = sim.replica(p).membership().primary(view + 1);
        let done = if zero_dies {
            p == 0 || next == 0
        } else {
            round >= churn
        };
        if done {
            break;
        }
        sim.network.partition(5, &[p], true, true);
        sim.run_until(PHASE_TICKS, "the others depose it", |s| {
            let others: Vec<Slot> = (0..5).filter(|&r| r != p).collect();
            s.replica(others[0]).view() > view && all_normal_in_one_view(s, &others)
        })?;
        sim.network.heal();
        sim.run_until(PHASE_TICKS, "all five normal", |s| {
            all_normal_in_one_view(s, &all)
        })?;
        sim.run_ticks(gap)?;
    }
    sim.run_until(PHASE_TICKS, "all five normal", |s| {
        all_normal_in_one_view(s, &all)
    })?;
    let p = sim.primary().expect("a primary");
    let view = sim.replica(p).view();
    let next = sim.replica(p).membership().primary(view + 1);
    let survivors: Vec<Slot> = (0..5).filter(|&r| r != p && r != next).collect();
    println!(
        "  crash {p} and {next} in view {view}; survivors' attempts {:?}",
        attempts(&sim, &survivors)
    );
    sim.crash(p);
    sim.crash(next);
    let home = survivors[0];
    ticks_to_commit(&mut sim, home, 40 * PHASE_TICKS)
}

/// Baseline (fast links throughout) against a slow period (one-way delays
/// of 2x the timeout) just before, and against a slow period followed by
/// view changes every `gap` ticks: the count of timed-out view changes is
/// only reset by normal status lasting a whole backed-off timeout, and
/// successful view changes more often than that keep it (and the 16x
/// stalled-view-change timeout) forever.
#[test]
fn stalled_view_change_after_a_slow_period() {
    let vct = options(5, 1).config.view_change_ticks;
    let mut worst = 0;
    for slow in [2, 3, 4, 6] {
        println!(
            "slow {slow}x, crash at once: {} ticks",
            failover_after(slow * vct, 0, 0).unwrap()
        );
    }
    for slow in [2, 3, 4, 6] {
        let t = failover_after_with(slow * vct, 0, 0, true).unwrap();
        println!("slow {slow}x, quick view changes until 0 is among the two crashed: {t} ticks");
        worst = worst.max(t);
    }
    let base = failover_after(1, 0, 0).unwrap();
    // The stalled view change waits up to 16 backed-off timeouts.
    assert!(worst > 5 * base, "worst {worst}, baseline {base}");
    println!("baseline (no slow period): {base} ticks");
    let right_after = failover_after(2 * vct, 0, 0).unwrap();
    println!("right after a slow period: {right_after} ticks");
    for (churn, gap) in [(5, 300), (20, 300), (20, 600), (5, 2_000)] {
        let t = failover_after(2 * vct, churn, gap).unwrap();
        println!("after a slow period and {churn} view changes {gap} ticks apart: {t} ticks");
    }
}

fn attempts(sim: &Simulator, rs: &[Slot]) -> Vec<u32> {
    rs.iter()
        .map(|&r| sim.replica(r).view_change_attempts())
        .collect()
}

/// 5 replicas. Replica 0 crashes while one-way delays are `slow` ticks; the
/// other four elect a primary, their view changes timing out and backing
/// off. Links become fast again; quick view changes (the primary cut off
/// for a moment) move the cluster to a view `v` with `v + 1` led by the
/// dead replica 0, `gap` ticks after the previous view started (and, if
/// `churn_more`, `churn_more` extra rounds of 5 view changes first, each
/// `gap` apart). Then v's primary crashes: the first view change (to
/// v + 1) stalls on dead 0 and must time out before v + 2 is tried.
/// Returns (attempts of the survivors at the crash, ticks to a commit).
fn stalled_after(slow: u64, gap: u64, churn_more: usize) -> Result<(Vec<u32>, u64), Failure> {
    let mut sim = Simulator::new(options(5, 1));
    register_all(&mut sim, 1)?;
    let fast = (sim.network.options.delay_min, sim.network.options.delay_max);
    sim.network.options.delay_min = slow;
    sim.network.options.delay_max = slow;
    sim.run_ticks(2 * slow)?;
    sim.crash(0);
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    sim.run_until(40 * PHASE_TICKS, "the four elect a primary", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    (sim.network.options.delay_min, sim.network.options.delay_max) = fast;
    let alive: Vec<Slot> = (1..5).collect();
    sim.run_until(slow + PHASE_TICKS, "all four normal", |s| {
        all_normal_in_one_view(s, &alive)
    })?;
    let mut rounds = 0;
    loop {
        let p = sim.primary().expect("a primary");
        let view = sim.replica(p).view();
        if view % 5 == 4 && rounds >= churn_more * 5 {
            break;
        }
        // Depose p quickly unless the next view's primary is 0 (it would stall).
        let others: Vec<Slot> = alive.iter().copied().filter(|&r| r != p).collect();
        if view % 5 == 4 {
            // v + 1 is led by dead 0: restart instead from a fresh count.
            break;
        }
        sim.network.partition(5, &[p], true, true);
        sim.run_until(PHASE_TICKS, "the others depose it", |s| {
            s.replica(others[0]).view() > view && all_normal_in_one_view(s, &others)
        })?;
        sim.network.heal();
        sim.run_until(PHASE_TICKS, "all four normal", |s| {
            all_normal_in_one_view(s, &alive)
        })?;
        sim.run_ticks(gap)?;
        rounds += 1;
    }
    let p = sim.primary().expect("a primary");
    let survivors: Vec<Slot> = alive.iter().copied().filter(|&r| r != p).collect();
    let a = attempts(&sim, &survivors);
    println!(
        "  crash primary {p} of view {}; primary of next view {}",
        sim.replica(p).view(),
        sim.replica(p).membership().primary(sim.replica(p).view() + 1)
    );
    sim.crash(p);
    let t0 = sim.tick;
    sim.clients[0].home = survivors[0];
    sim.start_request(0)?;
    let mut last = String::new();
    sim.run_until(40 * PHASE_TICKS, "a request commits", |s| {
        let now: String = survivors
            .iter()
            .map(|&r| {
                format!(
                    "r{r}:{:?} v{} a{} ",
                    s.replica(r).status(),
                    s.replica(r).view(),
                    s.replica(r).view_change_attempts()
                )
            })
            .collect();
        if now != last {
            println!("    +{}: {now}", s.tick - t0);
            last = now;
        }
        s.clients[0].outstanding.is_none()
    })?;
    let t = sim.tick - t0;
    Ok((a, t))
}

/// Baseline: the same with no slow period (`slow` = 1).
#[test]
fn stalled_view_change_soon_after_a_slow_period() {
    let vct = options(5, 1).config.view_change_ticks;
    for gap in [0, 100, 300, 600] {
        println!("fast, gap {gap}: {:?}", stalled_after(1, gap, 0).unwrap());
        println!(
            "slow 2x, gap {gap}: {:?}",
            stalled_after(2 * vct, gap, 0).unwrap()
        );
        println!(
            "slow 4x, gap {gap}: {:?}",
            stalled_after(4 * vct, gap, 0).unwrap()
        );
    }
}

/// Question: can the count stay high for good? 3 replicas; replica 0 (the
/// primary) is cut off while one-way delays are twice the timeout, and 1
/// and 2 elect a primary with their view changes backing off. Links become
/// fast and whole again, and then every `gap` ticks the primary is cut off
/// for a moment so that the others depose it (each such view change
/// succeeds at once, so it never counts as timed out, but normal status
/// starts over). Prints the counts after each.
#[test]
fn periodic_view_changes_keep_the_backoff() {
    let vct = options(3, 1).config.view_change_ticks;
    for gap in [0u64, 100, 400, 2_000] {
        let mut sim = Simulator::new(options(3, 1));
        register_all(&mut sim, 1).unwrap();
        let fast = (sim.network.options.delay_min, sim.network.options.delay_max);
        sim.network.options.delay_min = 2 * vct;
        sim.network.options.delay_max = 2 * vct;
        sim.run_ticks(4 * vct).unwrap();
        sim.network.partition(3, &[0], true, true);
        sim.clients[0].home = 1;
        sim.start_request(0).unwrap();
        sim.run_until(40 * PHASE_TICKS, "1 and 2 elect", |s| {
            s.clients[0].outstanding.is_none()
        })
        .unwrap();
        let after_slow = attempts(&sim, &[1, 2]);
        (sim.network.options.delay_min, sim.network.options.delay_max) = fast;
        sim.network.heal();
        let all: Vec<Slot> = vec![0, 1, 2];
        let t = sim.tick;
        sim.run_until(4 * PHASE_TICKS, "all normal", |s| all_normal_in_one_view(s, &all))
            .unwrap();
        let healed = (sim.tick - t, attempts(&sim, &all));
        let mut seen = vec![];
        for _ in 0..10 {
            let p = sim.primary().unwrap();
            let view = sim.replica(p).view();
            let others: Vec<Slot> = all.iter().copied().filter(|&r| r != p).collect();
            sim.network.partition(3, &[p], true, true);
            sim.run_until(PHASE_TICKS, "deposed", |s| {
                s.replica(others[0]).view() > view && all_normal_in_one_view(s, &others)
            })
            .unwrap();
            sim.network.heal();
            sim.run_until(PHASE_TICKS, "all normal", |s| all_normal_in_one_view(s, &all))
                .unwrap();
            sim.run_ticks(gap).unwrap();
            seen.push(attempts(&sim, &all));
        }
        println!(
            "gap {gap}: after the slow period {after_slow:?}; healed {healed:?}; after each churn {seen:?}"
        );
    }
}

/// The wedge `vopr --membership --seed 5175` ends in (after 73728d7; the
/// parent passes that seed, on another trajectory): two members, the
/// primary of the newest view restarts without its log (`Recovering`),
/// and its backup stays in normal status. The recovering replica asks
/// the view's primary (itself: `request_start_view` skips it) or a member
/// in turn (a backup answers no `RequestStartView`); the backup's campaign
/// needs the recovering replica's vote, which it never gives. No timer of
/// the view change is involved: the backoff is not its cause.
#[test]
#[ignore = "pre-existing wedge, reported in review; fails at 73728d7 and at its parent 54870cd (checked)"]
fn two_members_primary_restarts_without_its_log() {
    let mut sim = Simulator::new(options(2, 1));
    register_all(&mut sim, 1).unwrap();
    let p = sim.primary().unwrap();
    sim.crash(p);
    sim.restart_amnesiac(p);
    let other = 1 - p;
    let t = ticks_to_commit(&mut sim, other, 10 * PHASE_TICKS);
    println!(
        "{:?}",
        t.as_ref()
            .map_err(|e| e.reason.chars().take(300).collect::<String>())
    );
    t.unwrap();
}

/// The backoff is per replica, but a replica in a view change joins any
/// higher campaign it hears (it is not `healthy`), so the replica whose
/// timer is shortest drives everyone: the cluster's effective timeout is
/// the minimum. A replica that restarts forgets its count (it is not
/// durable). 5 replicas, one-way delays of `factor` times the timeout,
/// primary 0 crashed; replica 4 crashes and restarts from its disk every
/// `every` ticks (down 1 tick). Prints the ticks to a commit, or the failure.
fn slow_links_with_a_restarting_replica(factor: u64, every: u64) -> Result<u64, Failure> {
    let options = options(5, 1);
    let delay = (factor * options.config.view_change_ticks).max(1);
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    sim.network.options.delay_min = delay;
    sim.network.options.delay_max = delay;
    sim.run_ticks(2 * delay)?;
    sim.crash(0);
    let t0 = sim.tick;
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    let bound = 40 * PHASE_TICKS;
    while sim.clients[0].outstanding.is_some() {
        if sim.tick - t0 > bound {
            return Err(Failure {
                seed: 7,
                tick: sim.tick,
                reason: format!("no commit; {}", sim.describe()),
            });
        }
        let until = sim.tick + every;
        sim.run_until(every + 1, "", |s| {
            s.tick >= until || s.clients[0].outstanding.is_none()
        })?;
        if sim.clients[0].outstanding.is_none() {
            break;
        }
        if sim.running(4).is_some() {
            sim.crash(4);
        }
        sim.run_ticks(1)?;
        sim.restart(4);
    }
    Ok(sim.tick - t0)
}

#[test]
fn slow_links_with_a_restarting_replica_sweep() {
    for factor in [0u64, 2, 3, 4] {
        for every in [100u64, 300, 1_000, 3_000, 1_000_000] {
            let r = slow_links_with_a_restarting_replica(factor, every);
            println!(
                "delay {factor}x, replica 4 restarts every {every}: {:?}",
                r.as_ref()
                    .map_err(|e| e.reason.chars().take(200).collect::<String>())
            );
        }
    }
}

/// Fails at 73728d7: one-way delays of 4x the timeout, 5 replicas, primary
/// 0 dead, and backup 4 crash-looping (restarted from its disk every 1,000
/// ticks): no commit in 80,000 ticks (views past 130); with 4 kept down
/// instead, a commit after about 1,900. Each restart forgets the count,
/// the restarted replica campaigns after a plain timeout, and the others,
/// in a view change, join its campaign at once.
#[test]
#[ignore = "liveness gap of 73728d7, reported in review"]
fn crash_looping_backup_defeats_the_backoff() {
    slow_links_with_a_restarting_replica(4, 1_000).unwrap();
}

/// Quiet groups: `Replica::tick` returns before `tick_backoff` while a
/// replica is quiet, and `wake` moves `ticks` on by the quiet spell but not
/// `normal_ticks`. A group that goes quiet soon after a view change timed
/// out keeps its count through any length of quiet: 5 replicas, quiet
/// groups on (fast links); 0 and 1, the primaries of views 0 and 1, crash,
/// so the view change to view 1 stalls and times out; the group elects
/// replica 2 and goes quiet, and stays so for 50,000 ticks (500 s at 10 ms).
/// The counts are unchanged while the group sleeps (a quiet replica does
/// not tick); the review found they stayed so after it woke, as if the
/// spell had not been spent in normal status. Fixed: waking adds the
/// ticks slept to `normal_ticks`, and the next tick resets the counts.
#[test]
fn quiet_spell_counts_toward_ending_the_backoff() {
    use vsr_sim::quiet_scenarios::{quiet_options, until_quiet};
    let mut sim = Simulator::new(quiet_options(5, 1));
    register_all(&mut sim, 0).unwrap();
    sim.crash(0);
    sim.crash(1);
    sim.clients[0].home = 2;
    sim.start_request(0).unwrap();
    sim.run_until(4 * PHASE_TICKS, "2, 3, 4 elect", |s| {
        s.clients[0].outstanding.is_none()
    })
    .unwrap();
    let alive: Vec<Slot> = vec![2, 3, 4];
    until_quiet(&mut sim).unwrap();
    let before = attempts(&sim, &alive);
    sim.run_ticks(50_000).unwrap();
    let quiet: Vec<bool> = alive.iter().map(|&r| sim.replica(r).is_quiet()).collect();
    let after = attempts(&sim, &alive);
    println!("quiet {quiet:?}; counts going quiet {before:?}, after 50,000 quiet ticks {after:?}");
    assert!(quiet.iter().all(|&q| q));
    assert!(before.iter().any(|&a| a > 0), "{before:?}");
    assert_eq!(before, after);
    // A request wakes them: the spell counts, and the backoff is over.
    sim.start_request(0).unwrap();
    sim.run_until(PHASE_TICKS, "the request after the spell", |s| {
        s.clients[0].outstanding.is_none()
    })
    .unwrap();
    let woken = attempts(&sim, &alive);
    assert!(woken.iter().all(|&a| a == 0), "counts after waking {woken:?}");
}

/// `slow_links_still_elect_a_primary` with quiet groups on (the perfect
/// detector; `quiet_after_ticks` 20): prints each replica's status, view,
/// count and quiet flag every `every` ticks, and the outcome.
fn slow_links_quiet(n: u8, factor: u64, ticks: u64, every: u64) -> Result<u64, Failure> {
    use vsr_sim::quiet_scenarios::quiet_options;
    let options = quiet_options(n, 1);
    let delay = factor * options.config.view_change_ticks;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    sim.network.options.delay_min = delay;
    sim.network.options.delay_max = delay;
    sim.run_ticks(2 * delay)?;
    sim.crash(0);
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    let t0 = sim.tick;
    let alive: Vec<Slot> = (1..n).collect();
    let mut next = t0;
    sim.run_until(ticks, "a request commits", |s| {
        if every > 0 && s.tick >= next {
            next += every;
            let line: String = alive
                .iter()
                .map(|&r| {
                    let x = s.replica(r);
                    format!(
                        "r{r}:{:?} v{} a{} c{} w{} q{}{} ",
                        x.status(),
                        x.view(),
                        x.view_change_attempts(),
                        x.stats().campaigns,
                        x.stats().wakes,
                        x.stats().quiet_rounds,
                        if x.is_quiet() { " quiet" } else { "" }
                    )
                })
                .collect();
            println!("  +{}: {line}", s.tick - t0);
        }
        s.clients[0].outstanding.is_none()
    })?;
    Ok(sim.tick - t0)
}

/// Fails at 73728d7 and at its parent: with quiet groups on, one-way
/// delays of 1x, 2x and 4x the timeout never let 3 or 5 replicas commit
/// after the primary's crash (views in the hundreds after 80,000 ticks).
/// The campaigns that overthrow each new view come from normal status
/// (`slow_links_quiet_trace` with a probe: a new primary's
/// `campaign_if_silent` once it abdicates, its dead peer not counted as
/// heard and the survivor's first answer two delays away; and backups'
/// `campaign_if_primary_down` from the beat detector): neither timer backs
/// off.
#[test]
#[ignore = "liveness gap of 73728d7 (pre-existing), reported in review"]
fn slow_links_quiet_sweep() {
    for n in [3u8, 5] {
        for factor in [1u64, 2, 4] {
            let r = slow_links_quiet(n, factor, 40 * PHASE_TICKS, 0);
            println!(
                "quiet n={n} delay {factor}x: {:?}",
                r.as_ref()
                    .map_err(|e| e.reason.chars().take(160).collect::<String>())
            );
            r.unwrap();
        }
    }
}

#[test]
#[ignore = "diagnostic trace"]
fn slow_links_quiet_trace() {
    let _ = slow_links_quiet(3, 2, 2_500, 40);
}
