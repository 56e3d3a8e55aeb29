//! Scripted scenarios of quiet groups (docs/protocol.md, "Quiet groups";
//! the simulator's side: `quiet.rs`). Each returns `Err` if an invariant
//! breaks or the cluster misses its stated bound; each takes its options,
//! so that a test can run it with a deliberately broken protocol.

use vsr::{Message, Slot, Status};

use crate::options::Options;
use crate::scenarios::{commit, register_all, PHASE_TICKS};
use crate::simulator::{Failure, Simulator};

/// `quiet_after_ticks` in these scenarios.
pub const QUIET_AFTER: u64 = 20;

/// Quiet options for a scenario: perfect network, no random faults or
/// load, quiet groups on with the perfect detector.
pub fn quiet_options(replica_count: u8, clients: usize) -> Options {
    let mut options = crate::scenarios::options(replica_count, clients);
    options.quiet = true;
    options.config.quiet_after_ticks = QUIET_AFTER;
    options
}

/// Waits until every member is quiet.
pub fn until_quiet(sim: &mut Simulator) -> Result<(), Failure> {
    sim.run_until(10 * QUIET_AFTER + PHASE_TICKS / 10, "the group goes quiet", |s| {
        s.all_members_quiet() && s.network.in_flight() == 0
    })
}

/// Messages sent per tick by an idle group of `options`, measured over
/// `ticks` ticks once it has had `2 * quiet_after_ticks` (or, with quiet
/// groups off, 100 ticks) to settle after its last request.
pub fn idle_messages_per_tick(options: Options, ticks: u64) -> Result<f64, Failure> {
    idle_traffic_per_tick(options, ticks).map(|(messages, _)| messages)
}

/// As `idle_messages_per_tick`: the replicas' messages and the nodes'
/// beats (quiet groups' failure detector) per tick.
pub fn idle_traffic_per_tick(options: Options, ticks: u64) -> Result<(f64, f64), Failure> {
    let settle = (2 * options.config.quiet_after_ticks).max(100);
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    let backup = (1 % sim.n()) as Slot;
    commit(&mut sim, 0, backup)?;
    sim.run_ticks(settle)?;
    let (before, beats) = (sim.network.sent, sim.network.beats_sent);
    sim.run_ticks(ticks)?;
    Ok((
        (sim.network.sent - before) as f64 / ticks as f64,
        (sim.network.beats_sent - beats) as f64 / ticks as f64,
    ))
}

/// An idle group goes quiet after one round, sends nothing while quiet,
/// and a submission through a backup wakes it and commits as fast as an
/// awake group would (within a few message delays).
pub fn idle_group_goes_quiet_and_a_submission_wakes_it(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    let (sent, view) = (sim.network.sent, sim.replica(0).view());
    sim.run_ticks(500)?;
    if sim.network.sent != sent || !sim.all_members_quiet() {
        return Err(fail(&sim, "a quiet group sent messages or woke by itself"));
    }
    let start = sim.tick;
    let backup = (1 % sim.n()) as Slot;
    commit(&mut sim, 0, backup)?;
    if sim.tick - start > 10 {
        return Err(fail(
            &sim,
            &format!("the waking commit took {} ticks", sim.tick - start),
        ));
    }
    if sim.replicas().any(|r| r.view() != view) {
        return Err(fail(&sim, "waking changed the view"));
    }
    until_quiet(&mut sim)?;
    // Again through the primary, after a long quiet spell (stale clocks).
    sim.run_ticks(2_000)?;
    commit(&mut sim, 0, 0)?;
    until_quiet(&mut sim)
}

/// The primary's node goes down while the group is quiet: the detector
/// wakes the backups, which campaign at once, and a new view starts well
/// within the silence timer (`view_change_ticks`) that a backup would
/// otherwise wait; the group then commits.
pub fn quiet_primary_node_dies(options: Options) -> Result<(), Failure> {
    let bound = options.config.view_change_ticks / 2;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let view = sim.replica(primary).view();
    sim.crash(primary);
    sim.run_until(bound, "a new view starts at once", |s| {
        s.replicas()
            .any(|r| r.is_primary() && r.view() > view && r.status() == Status::Normal)
    })?;
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    commit(&mut sim, 0, backup)?;
    sim.restart(primary);
    until_quiet(&mut sim)
}

/// The detector's timing in these options.
fn detector(sim: &Simulator) -> vsr_host::DetectorConfig {
    vsr_host::DetectorConfig::for_replicas(&sim.options.config)
}

/// The primary's node vanishes silently while the group is quiet (no
/// `nodedown`: a machine or network gone, not a killed process): the
/// backups' detectors time it out, wake the backups, and they campaign at
/// once. Bound: a new view within `timeout_ticks + beat_ticks + 10` ticks
/// of the crash (the last beat the backups heard echoed one of theirs at
/// most a beat before it, and a view change takes a few message delays on
/// a perfect network): 110 ticks with the default timing, against the
/// `view_change_ticks` plus jitter (40 to 80) an awake backup waits, but
/// unbounded without the detector (a quiet backup hears nothing). The
/// group then commits and, the primary back, goes quiet again.
pub fn quiet_primary_node_vanishes(mut options: Options) -> Result<(), Failure> {
    options.nodedown_probability = 0.0;
    let mut sim = Simulator::new(options);
    let timing = detector(&sim);
    let bound = timing.timeout_ticks + timing.beat_ticks + 10;
    register_all(&mut sim, 1)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let view = sim.replica(primary).view();
    sim.crash(primary);
    sim.run_until(
        bound,
        "the detector wakes the backups and a new view starts",
        |s| {
            s.replicas()
                .any(|r| r.is_primary() && r.view() > view && r.status() == Status::Normal)
        },
    )?;
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    commit(&mut sim, 0, backup)?;
    sim.restart(primary);
    until_quiet(&mut sim)
}

/// A partition cuts the quiet group's primary off (both ways) for three
/// detector timeouts: its node is live, but the backups' detectors
/// suspect it (a false suspicion), wake the backups, and they elect a new
/// primary, which commits; the old primary, seeing a quorum down, wakes
/// and abdicates. Once healed, it joins the new view: nothing committed
/// is lost (the checker holds every replica to the committed history),
/// and the group settles quiet again.
pub fn partition_makes_the_detector_suspect_a_live_primary(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let timing = detector(&sim);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let view = sim.replica(primary).view();
    let committed = sim.checker.committed();
    let n = sim.n();
    sim.network.partition(n, &[primary], true, true);
    sim.run_until(
        timing.timeout_ticks + timing.beat_ticks + 10,
        "the backups suspect the primary and elect another",
        |s| {
            s.replicas()
                .any(|r| r.is_primary() && r.view() > view && r.status() == Status::Normal)
        },
    )?;
    let backup = (0..n as Slot).find(|&r| r != primary).expect("a backup");
    commit(&mut sim, 0, backup)?;
    sim.run_ticks(3 * timing.timeout_ticks)?;
    if sim.replica(primary).is_quiet() {
        return Err(fail(&sim, "the cut-off primary stayed quiet with a quorum down"));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "the old primary joins the new view", |s| {
        let newest = s.replicas().map(|r| r.view()).max().unwrap_or(0);
        s.replica(primary).view() == newest && s.replica(primary).status() == Status::Normal
    })?;
    if sim.checker.committed() < committed + 1 {
        return Err(fail(&sim, "an op committed before the partition is missing"));
    }
    commit(&mut sim, 0, primary)?;
    until_quiet(&mut sim)
}

/// Only the beats from the quiet group's primary's node are lost, for
/// three detector timeouts (replica messages still flow): a false
/// suspicion on both sides (the backups do not hear the primary's node,
/// and it is echoed by none). Whatever the group does meanwhile (the
/// backups campaign, the primary abdicates or keeps its quorum), it
/// commits through a backup, loses nothing, and settles quiet once beats
/// flow again.
pub fn lost_beats_make_a_false_suspicion(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let timing = detector(&sim);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let n = sim.n();
    for to in (0..n as Slot).filter(|&r| r != primary) {
        sim.network.lose(
            primary,
            to,
            Box::new(|bytes: &[u8]| vsr_host::Beat::is_beat(bytes)),
        );
    }
    let changes = sim.quiet.stats.detector_changes;
    sim.run_ticks(timing.timeout_ticks + 2 * timing.beat_ticks)?;
    if sim.quiet.stats.detector_changes == changes {
        return Err(fail(&sim, "no detector suspected the primary's node"));
    }
    let backup = (0..n as Slot).find(|&r| r != primary).expect("a backup");
    commit(&mut sim, 0, backup)?;
    sim.run_ticks(2 * timing.timeout_ticks)?;
    sim.network.stop_losing();
    commit(&mut sim, 0, backup)?;
    until_quiet(&mut sim)
}

/// Only the beats from the quiet group's primary's node to one backup's
/// node are lost, for three detector timeouts: that backup's detector
/// suspects a live primary (a false suspicion) and it campaigns, over and
/// over. Every other replica still hears the primary (woken by the
/// campaign, a backup counts its primary as heard on its own detector's
/// word, and the woken primary heartbeats), so the pre-vote holds: no
/// view changes while a quorum hears the primary, and once the beats flow
/// again the group settles quiet in the same view, with nothing lost.
/// (`Mutation::QuietVotesForAnyCampaign`, a woken backup that supports any
/// campaign, deposes the primary here.)
pub fn false_suspicion_at_one_backup_deposes_no_primary(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let timing = detector(&sim);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let suspicious = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    let view = sim.replica(primary).view();
    let committed = sim.checker.committed();
    sim.network.lose(
        primary,
        suspicious,
        Box::new(|bytes: &[u8]| vsr_host::Beat::is_beat(bytes)),
    );
    let campaigns = sim.replica(suspicious).stats().campaigns;
    let deadline = sim.tick + 3 * timing.timeout_ticks;
    while sim.tick < deadline {
        sim.step()?;
        if sim.replicas().any(|r| r.view() != view) {
            return Err(fail(&sim, "a false suspicion at one backup deposed the primary"));
        }
    }
    if sim.replica(suspicious).stats().campaigns == campaigns {
        return Err(fail(&sim, "the backup never suspected its primary"));
    }
    sim.network.stop_losing();
    until_quiet(&mut sim)?;
    if sim.replicas().any(|r| r.view() != view) || sim.checker.committed() != committed {
        return Err(fail(&sim, "the view changed once the suspicion ended"));
    }
    commit(&mut sim, 0, suspicious)?;
    until_quiet(&mut sim)
}

/// Both backups' wall clocks run five seconds behind for a while, so the
/// primary's last readings of them, when the group goes quiet, are five
/// seconds behind (and, two clocks of three, they rightly hold its stamps
/// back); while the group is quiet, long past `view_change_ticks`, both
/// clocks are set right. The first op after the primary wakes must be
/// stamped by the clocks as they are now (within `view_change_ticks` ms
/// of true time): the wake carries the ticks the primary was quiet, so
/// its readings from before the spell are stale, and it waits for fresh
/// ones (its wake-up heartbeat's answers). (`Mutation::WakeWithoutElapsedTicks`
/// takes the old readings as fresh, and stamps five seconds behind every
/// clock.) A clock set back shows only as a clock that stops (a replica's
/// wall clock never goes back), so the backups run behind long enough to
/// read behind, and are set right by a jump forward.
pub fn woken_primary_stamps_by_clocks_as_they_are_now(options: Options) -> Result<(), Failure> {
    const BEHIND_NS: i64 = 5_000_000_000;
    let spell = 20 * options.config.view_change_ticks;
    let slack_ns = options.config.view_change_ticks * 1_000_000;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    let primary = sim.primary().expect("a primary");
    let backups: Vec<Slot> = (0..sim.n() as Slot).filter(|&r| r != primary).collect();
    for &b in &backups {
        sim.clock_offset_ns[b as usize] = -BEHIND_NS;
    }
    sim.run_ticks(2 * BEHIND_NS as u64 / 1_000_000)?;
    commit(&mut sim, 0, primary)?;
    until_quiet(&mut sim)?;
    for &b in &backups {
        sim.clock_offset_ns[b as usize] = 0;
    }
    sim.run_ticks(spell)?;
    if !sim.all_members_quiet() {
        return Err(fail(&sim, "the group woke by itself"));
    }
    let op = sim.replica(primary).op() + 1;
    commit(&mut sim, 0, primary)?;
    let stamp = sim
        .replica(primary)
        .log()
        .get(op)
        .map(|entry| entry.timestamp)
        .expect("the op in the primary's log");
    let now_ns = sim.tick * 1_000_000;
    if stamp + slack_ns < now_ns {
        return Err(fail(
            &sim,
            &format!(
                "op {op} stamped {} ms behind every clock after a quiet spell",
                (now_ns - stamp) / 1_000_000
            ),
        ));
    }
    until_quiet(&mut sim)
}

/// A backup restarts (from its disk) while the group is quiet: it
/// announces itself to its primary at its first tick, which wakes the
/// group at once (not after its silence timer); the group commits through
/// it, and goes quiet again.
pub fn backup_restarted_while_quiet_wakes_the_group(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    sim.crash(backup);
    sim.run_ticks(200)?;
    if !sim.all_members_quiet() {
        return Err(fail(&sim, "a backup's crash woke the group"));
    }
    sim.restart(backup);
    sim.run_until(5, "the restarted backup wakes its primary", |s| {
        !s.replica(primary).is_quiet()
    })?;
    commit(&mut sim, 0, backup)?;
    until_quiet(&mut sim)?;
    // In memory mode, a replica that restarts without its state wakes
    // the group by asking to recover.
    sim.crash(backup);
    sim.restart_amnesiac(backup);
    sim.run_until(PHASE_TICKS, "the amnesiac backup recovers", |s| {
        s.replica(backup).status() == Status::Normal
    })?;
    commit(&mut sim, 0, backup)?;
    until_quiet(&mut sim)
}

/// Nodes that have run for a long time, and a backup's node that
/// restarts under the same name: its detector's clock starts again (a
/// new VM's monotonic clock), far below the beats its previous life sent.
/// No peer heard of its crash (no `nodedown`) until the restart tears the
/// old connection down. Every detector must hold every node up again
/// within a few beats, and the primary keep its view: a detector that
/// echoed its peer's highest beat ever heard echoed the old life's, which
/// the new life takes for another's, and held the others down for good
/// (its backup then deposed the healthy primary).
pub fn restarted_node_with_a_younger_clock_holds_its_peers_up(mut options: Options) -> Result<(), Failure> {
    options.nodedown_probability = 0.0;
    let mut sim = Simulator::new(options);
    let timing = detector(&sim);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    sim.run_ticks(20 * timing.timeout_ticks)?;
    let primary = sim.primary().expect("a primary");
    let view = sim.replica(primary).view();
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    sim.crash(backup);
    sim.run_ticks(timing.beat_ticks)?;
    sim.restart(backup);
    sim.run_ticks(3 * timing.timeout_ticks)?;
    let n = sim.n();
    for i in 0..n {
        let detector = sim.quiet.detectors[i].as_ref().expect("every node runs");
        for j in (0..n).filter(|&j| j != i) {
            if !detector.is_up(j as u64) {
                return Err(fail(&sim, &format!("node {i} holds node {j} down")));
            }
        }
    }
    if sim.replica(primary).view() != view || !sim.replica(primary).is_primary() {
        return Err(fail(&sim, "the restart deposed the primary"));
    }
    commit(&mut sim, 0, backup)?;
    until_quiet(&mut sim)
}

/// A read through a quiet backup, and one through the quiet primary,
/// wake the group and are served linearizably (the simulator checks each
/// read against what completed before it began), within a round trip.
pub fn read_at_a_quiet_group_is_linearizable(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    for through in [backup, primary] {
        sim.issue_read(through)?;
        sim.run_until(20, "the read is served", |s| s.reads.is_empty())?;
        until_quiet(&mut sim)?;
    }
    Ok(())
}

/// A client submits again, through a quiet backup, a request the group
/// has already executed (its reply went with a host that restarted, or
/// came after the client gave up on it): the backup wakes and answers
/// from its client table, and its primary, quiet, hears nothing of it.
/// The woken backup must not campaign against its primary's silence (a
/// quiet primary sends nothing): no replica campaigns, the view stays,
/// and the group goes quiet again. `vopr --quiet --membership` seeds 13
/// and 32 found it (a client's retry through a backup), and seed 172 with
/// a late message from a finished view change waking the backup.
pub fn settled_request_resubmitted_at_a_quiet_backup(options: Options) -> Result<(), Failure> {
    let wait = 4 * options.config.view_change_ticks;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    let primary = sim.primary().expect("a primary");
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    sim.clients[0].home = backup;
    sim.start_request(0)?;
    let submission = sim.clients[0].submission().expect("an outstanding request");
    sim.run_until(PHASE_TICKS, "the request completes", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    until_quiet(&mut sim)?;
    let view = sim.replica(primary).view();
    let campaigns = |s: &Simulator| s.replicas().map(|r| r.stats().campaigns).sum::<u64>();
    let before = campaigns(&sim);
    sim.submit_through(backup, submission)?;
    if !sim.replica(primary).is_quiet() {
        return Err(fail(&sim, "the primary woke for a request settled at the backup"));
    }
    sim.run_ticks(wait)?;
    if campaigns(&sim) != before || sim.replicas().any(|r| r.view() != view) {
        return Err(fail(
            &sim,
            "a backup woken by a settled request campaigned against its quiet primary",
        ));
    }
    until_quiet(&mut sim)
}

/// A backup's forwarded request is lost, just as the group would go
/// quiet: the backup must stay awake (and resend it) rather than go quiet
/// with it pending (`Mutation::QuietWithPendingWork`; the simulator's
/// check names it).
pub fn forwarded_request_lost_before_the_quiet_round(mut options: Options) -> Result<(), Failure> {
    options.config.request_retry_ticks = 3 * QUIET_AFTER;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let backup = (0..sim.n() as Slot).find(|&r| r != primary).expect("a backup");
    // Wake the group, then lose the backup's first forward.
    sim.clients[0].home = primary;
    sim.start_request(0)?;
    let cluster = sim.options.config.wire_cluster();
    let lost = std::rc::Rc::new(std::cell::Cell::new(false));
    let once = lost.clone();
    sim.network.lose(
        backup,
        primary,
        Box::new(move |bytes: &[u8]| {
            let request = matches!(
                vsr::message::decode(cluster, bytes).map(|d| d.message),
                Ok(Message::Request { .. })
            );
            request && !once.replace(true)
        }),
    );
    commit_pending(&mut sim, 0)?;
    commit(&mut sim, 0, backup)?;
    sim.network.stop_losing();
    until_quiet(&mut sim)
}

/// The primary's prepares of an op are lost to every backup for a while,
/// and the op's origin (a backup) crashes: with nothing pending anywhere,
/// the primary must still not go quiet with the op uncommitted
/// (`Mutation::QuietWithUncommittedOp`; the simulator's check names it).
pub fn prepares_lost_before_the_quiet_round(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    let primary = sim.primary().expect("a primary");
    let backups: Vec<Slot> = (0..sim.n() as Slot).filter(|&r| r != primary).collect();
    let origin = *backups.last().expect("a backup");
    let cluster = sim.options.config.wire_cluster();
    let prepare = move |bytes: &[u8]| {
        matches!(
            vsr::message::decode(cluster, bytes).map(|d| d.message),
            Ok(Message::Prepare { .. })
        )
    };
    for &to in &backups {
        sim.network.lose(primary, to, Box::new(prepare));
    }
    let op = sim.replica(primary).op() + 1;
    sim.clients[0].home = origin;
    sim.start_request(0)?;
    sim.run_until(PHASE_TICKS, "the primary prepares the op", |s| {
        s.replica(primary).op() >= op
    })?;
    sim.crash(origin);
    sim.run_ticks(4 * QUIET_AFTER)?;
    sim.network.stop_losing();
    sim.run_until(
        2 * sim.options.config.prepare_retry_ticks,
        "the op commits",
        |s| s.checker.committed() >= op,
    )?;
    sim.restart(origin);
    sim.run_until(PHASE_TICKS, "the client's retry completes", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    until_quiet(&mut sim)
}

/// A group that commits at a steady pace, an op at least every half
/// `quiet_after_ticks`, never proposes a quiet round and never sleeps:
/// quiet is for idle groups, and a round under load only costs a wake at
/// the next request. The test runs it with messages delivered within the
/// tick they are sent in, so that each op is prepared and committed
/// between two of the primary's ticks, as a real engine's are (an op takes
/// well under a millisecond, a tick is 10 ms): what keeps the primary
/// awake is then that it has a commit to announce at its next tick.
pub fn steady_light_load_proposes_no_quiet_round(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    until_quiet(&mut sim)?;
    commit(&mut sim, 0, 0)?;
    let rounds = |s: &Simulator| -> u64 {
        s.replicas()
            .map(|r| r.stats().quiet_rounds + r.stats().wakes)
            .sum()
    };
    let before = rounds(&sim);
    for _ in 0..40 {
        sim.run_ticks(QUIET_AFTER / 2)?;
        commit(&mut sim, 0, 0)?;
    }
    if rounds(&sim) != before || sim.replicas().any(|r| r.is_quiet()) {
        return Err(fail(
            &sim,
            &format!(
                "{} quiet rounds and wakes under a steady load",
                rounds(&sim) - before
            ),
        ));
    }
    until_quiet(&mut sim)
}

/// Waits for client `c`'s outstanding request to complete, within less
/// than a client's retry (the protocol's own resends must do it).
fn commit_pending(sim: &mut Simulator, c: usize) -> Result<(), Failure> {
    let bound = sim.options.client_retry_ticks - 1;
    sim.run_until(bound, "the request completes without the client's retry", |s| {
        s.clients[c].outstanding.is_none()
    })
}

fn fail(sim: &Simulator, what: &str) -> Failure {
    sim.fail_with(format!("{what}: {}", sim.describe()))
}
