//! Scripted scenarios: situations random seeds reach only rarely, set up by
//! hand. Each returns `Err` if an invariant breaks or the cluster fails to
//! make progress within its stated bound.
//!
//! Every scenario takes the options to start from, so a test can run it
//! with a deliberately broken protocol and check that it fails.

use vsr::{Op, ReplicaIndex, Status};

use crate::options::Options;
use crate::simulator::{Failure, Simulator};

/// Ticks any single phase of a scenario may take.
pub const PHASE_TICKS: u64 = 2_000;

/// Quiet options for a scenario: perfect network, no random faults or load.
pub fn options(replica_count: u8, clients: usize) -> Options {
    Options::quiet(7, replica_count, clients)
}

/// Starts the next request of client `c` through `home`, and waits for its reply.
pub fn commit(sim: &mut Simulator, c: usize, home: ReplicaIndex) -> Result<(), Failure> {
    sim.clients[c].home = home;
    sim.start_request(c)?;
    sim.run_until(PHASE_TICKS, "request completes", |s| {
        s.clients[c].outstanding.is_none()
    })
}

/// Registers every client through `home`.
pub fn register_all(sim: &mut Simulator, home: ReplicaIndex) -> Result<(), Failure> {
    (0..sim.clients.len()).try_for_each(|c| commit(sim, c, home))
}

fn isolate(sim: &mut Simulator, r: ReplicaIndex) {
    let n = sim.n();
    sim.network.partition(n, &[r], true, true);
}

/// Heals everything and waits for every client and replica to settle.
pub fn settle(sim: &mut Simulator) -> Result<(), Failure> {
    sim.heal();
    sim.run_until(PHASE_TICKS * 2, "cluster settles", |s| s.settled())
}

/// VR Revisited §5.2: a lagging replica learns of a new view and fetches its
/// log; if it joined the view before holding the whole log (the paper
/// truncates to its commit number and then fetches), a view change in that
/// window could pick its short log and lose committed ops.
///
/// Replica 2 misses ops 2..=21 while replicas 0 and 1 commit them. Replica 0
/// crashes; 1 and 2 start view 1 with 1's log, which 2 fetches two entries
/// at a time. Mid-fetch, 1 crashes and 0 returns: the view change to view 2
/// (primary 2) must still choose the log with all 21 ops.
pub fn state_transfer_never_loses_commits(mut options: Options) -> Result<(), Failure> {
    options.config.message_entries_max = 2;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    isolate(&mut sim, 2);
    for _ in 0..20 {
        commit(&mut sim, 0, 1)?;
    }
    let committed = sim.checker.committed();
    sim.crash(0);
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 2 is fetching view 1's log", |s| {
        s.replicas[2]
            .as_ref()
            .is_some_and(|r| r.staging_progress().is_some() || r.log_view() >= 1)
    })?;
    sim.crash(1);
    sim.restart(0);
    sim.run_until(PHASE_TICKS, "view 2 starts", |s| {
        s.replicas[2]
            .as_ref()
            .is_some_and(|r| r.view() >= 2 && r.status() == Status::Normal)
    })?;
    expect_log_holds(&sim, 2, committed)?;
    sim.restart(1);
    settle(&mut sim)?;
    commit(&mut sim, 0, 2)
}

fn expect_log_holds(sim: &Simulator, r: ReplicaIndex, committed: Op) -> Result<(), Failure> {
    let replica = sim.replica(r);
    if replica.op() < committed {
        return Err(Failure {
            seed: sim.options.seed,
            tick: sim.tick,
            reason: format!(
                "replica {r} leads with {} ops; {committed} were committed",
                replica.op()
            ),
        });
    }
    Ok(())
}

/// The primary fills its pipeline with prepares nobody acknowledges, then
/// crashes: the new primary either commits each of those requests once or
/// the clients' retries do, and nothing runs twice.
pub fn view_change_with_full_pipeline(mut options: Options) -> Result<(), Failure> {
    options.config.pipeline_max = 4;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    sim.network.set_link(1, 0, false);
    sim.network.set_link(2, 0, false);
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 1 + (c % 2) as ReplicaIndex;
        sim.start_request(c)?;
    }
    // The forwarded requests cannot reach the primary yet: let one through at a time.
    sim.network.set_link(1, 0, true);
    sim.run_until(PHASE_TICKS, "the primary's pipeline is full", |s| {
        let p = s.replica(0);
        p.op() >= p.commit_max() + 4
    })?;
    sim.network.set_link(1, 0, false);
    sim.crash(0);
    sim.run_until(PHASE_TICKS, "every client completes", |s| {
        s.clients.iter().all(|c| c.outstanding.is_none())
    })?;
    sim.restart(0);
    settle(&mut sim)
}

/// A request reaches a primary that cannot replicate it; the client submits
/// it again, the cluster changes view, and the request runs exactly once.
/// Submitting it once more afterwards is answered from the client table.
pub fn client_retry_across_view_change(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    sim.network.set_link(0, 1, false);
    sim.network.set_link(0, 2, false);
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    sim.run_ticks(20)?;
    sim.resubmit(0)?; // the same client, the same request number
    sim.run_ticks(20)?;
    sim.resubmit(0)?;
    sim.run_until(PHASE_TICKS, "request completes in a new view", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    let request = sim.clients[0].next_request - 1;
    let op = sim.checker.replies[&(sim.clients[0].id, request)];
    // Once more, after the reply: the same op comes back, nothing runs again.
    // (The same body: another body under this number would be refused.)
    let payload = executed_payload(&sim, op, sim.clients[0].id, request);
    sim.clients[0].next_request = request;
    sim.clients[0].outstanding = Some(crate::client::Outstanding {
        request,
        payload,
        last_submit: sim.tick,
    });
    sim.resubmit(0)?;
    sim.run_until(PHASE_TICKS, "the resubmission is answered", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    let again = sim.checker.replies[&(sim.clients[0].id, request)];
    if again != op || sim.replica(1).view() == 0 {
        return Err(Failure {
            seed: sim.options.seed,
            tick: sim.tick,
            reason: format!("resubmission answered with op {again}, first with {op}"),
        });
    }
    settle(&mut sim)
}

/// The primary can send but not receive: it keeps its backups quiet with
/// heartbeats yet can commit nothing. It must abdicate so they elect a
/// primary that can.
pub fn primary_that_cannot_hear_abdicates(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    let n = sim.n();
    sim.network.partition(n, &[0], false, true);
    commit(&mut sim, 0, 1)?;
    if sim.primary() == Some(0) {
        return Err(Failure {
            seed: sim.options.seed,
            tick: sim.tick,
            reason: "replica 0 still leads".into(),
        });
    }
    settle(&mut sim)
}

/// A primary cut off from everyone, whose clock is too slow to notice
/// (so it does not abdicate), still believes it leads while the others
/// elect a new primary and commit. A read through it must not return its
/// stale state: it needs a quorum to confirm it still leads, which it cannot
/// get, so the read waits until the partition heals and is then served
/// from the new view.
pub fn deposed_primary_serves_no_stale_read(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.frozen[0] = true;
    isolate(&mut sim, 0);
    commit(&mut sim, 0, 1)?; // committed in a new view, without replica 0
    if !sim.replica(0).is_primary() {
        return Err(Failure {
            seed: sim.options.seed,
            tick: sim.tick,
            reason: "replica 0 stepped down".into(),
        });
    }
    sim.issue_read(0)?;
    sim.run_ticks(200)?;
    sim.frozen[0] = false;
    settle(&mut sim)
}

/// A replica cut off while hundreds of ops commit catches up, in chunks,
/// once it can hear the others again.
pub fn far_behind_replica_catches_up(mut options: Options) -> Result<(), Failure> {
    options.config.message_entries_max = 4;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for i in 0..300 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    sim.network.heal();
    let target = sim.checker.committed();
    sim.run_until(PHASE_TICKS, "replica 2 catches up", |s| {
        s.replica(2).commit() >= target
    })?;
    settle(&mut sim)
}

/// Memory mode: replicas lose everything, one at a time (the primary too),
/// and each recovers its incarnation and the log from the others before it
/// takes part again; every committed op survives.
pub fn amnesiac_replicas_recover(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let n = sim.n() as ReplicaIndex;
    register_all(&mut sim, 0)?;
    for victim in (0..n).rev() {
        let home = (victim + 1) % n;
        for _ in 0..5 {
            commit(&mut sim, 0, home)?;
        }
        sim.crash(victim);
        commit(&mut sim, 0, home)?;
        sim.restart_amnesiac(victim);
        let committed = sim.checker.committed();
        sim.run_until(PHASE_TICKS, "the amnesiac replica recovers", |s| {
            let r = s.replica(victim);
            !r.is_recovering() && r.commit() >= committed
        })?;
    }
    settle(&mut sim)
}

/// A replica cut off while ops commit must catch up while the primary keeps
/// committing, even one entry per repair message: it asks for the next
/// chunk as soon as one arrives, not once per resend interval (which a busy
/// primary outpaces forever: seed 1007965 of an earlier build).
pub fn lagging_replica_catches_up_under_load(mut options: Options) -> Result<(), Failure> {
    options.config.message_entries_max = 1;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for _ in 0..200 {
        commit(&mut sim, 0, 0)?;
    }
    sim.network.heal();
    let target = sim.checker.committed();
    for _ in 0..400 {
        commit(&mut sim, 0, 0)?;
        if sim.replica(2).commit() >= target {
            return settle(&mut sim);
        }
    }
    Err(Failure {
        seed: sim.options.seed,
        tick: sim.tick,
        reason: format!("replica 2 still behind under load: {}", sim.describe()),
    })
}

fn failure(sim: &Simulator, reason: String) -> Failure {
    Failure {
        seed: sim.options.seed,
        tick: sim.tick,
        reason,
    }
}

/// Options with frequent checkpoints in small chunks: every checkpoint
/// takes several messages to sync.
pub fn checkpointing(mut options: Options) -> Options {
    options.config.checkpoint_interval = 4;
    options.config.checkpoint_chunk_bytes = 24;
    options.config.message_entries_max = 4;
    options.config.batch_max_requests = 1;
    options
}

/// A replica cut off while far more than a checkpoint interval commits is
/// behind every log's base: it catches up by state sync, in many chunks,
/// while the primary keeps committing, and then follows the log again.
pub fn far_behind_replica_syncs_state(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for i in 0..60 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    let base = sim.replica(0).log().base();
    if sim.replica(2).op() >= base {
        return Err(failure(
            &sim,
            format!("replica 2 is not behind the log base {base}"),
        ));
    }
    let chunk = sim.options.config.checkpoint_chunk_bytes;
    let size = sim.replica(0).checkpoint().map_or(0, |c| c.encode().len());
    if size <= 2 * chunk {
        return Err(failure(
            &sim,
            format!("a checkpoint of {size} bytes is not multi-chunk"),
        ));
    }
    sim.network.heal();
    let target = sim.checker.committed();
    let mut caught_up = false;
    for i in 0..200 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
        if sim.replica(2).commit() >= target {
            caught_up = true;
            break;
        }
    }
    if !caught_up || sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(
            &sim,
            format!("replica 2 did not sync state: {}", sim.describe()),
        ));
    }
    settle(&mut sim)
}

/// The new primary's commit is below the base of the best log it is sent:
/// the replica holding that log sends it the checkpoint first, then the
/// log after it, and the view starts with every committed op.
///
/// Replica 1 (primary of view 1) is cut off while 0 and 2 commit well past
/// a few checkpoints; then 0 crashes and 1 can hear 2 again.
pub fn new_primary_behind_the_best_logs_base(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 1);
    for i in 0..40 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    let committed = sim.checker.committed();
    let behind = sim.replica(1).commit();
    if behind >= sim.replica(2).log().base() {
        return Err(failure(
            &sim,
            "replica 1 is not behind replica 2's log base".into(),
        ));
    }
    sim.crash(0);
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 1 leads a new view", |s| {
        s.replica(1).is_primary()
    })?;
    if sim.replica(1).stats().checkpoints_installed == 0 {
        return Err(failure(
            &sim,
            "the new primary did not install a checkpoint".into(),
        ));
    }
    expect_log_holds(&sim, 1, committed)?;
    commit(&mut sim, 0, 1)?;
    sim.restart(0);
    settle(&mut sim)
}

/// Memory mode with checkpoints: an amnesiac replica recovers its
/// incarnation, then the current state by state sync (the others' logs no
/// longer start at op 1), then the log after the checkpoint.
pub fn amnesiac_replica_recovers_from_a_checkpoint(mut options: Options) -> Result<(), Failure> {
    options.amnesia = true;
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    for i in 0..30 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    sim.crash(2);
    commit(&mut sim, 0, 0)?;
    sim.restart_amnesiac(2);
    let committed = sim.checker.committed();
    sim.run_until(PHASE_TICKS, "the amnesiac replica recovers", |s| {
        let r = s.replica(2);
        !r.is_recovering() && r.commit() >= committed
    })?;
    if sim.replica(2).log().base() == 0 || sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(&sim, "replica 2 recovered without a checkpoint".into()));
    }
    for i in 0..10 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 2)?;
    }
    settle(&mut sim)
}

/// Disk mode with checkpoints: every replica restarts from its checkpoint
/// and the log after it, the cluster goes on, and every host's state is the
/// canonical one.
pub fn restart_from_checkpoints(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    for i in 0..30 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    sim.run_ticks(20)?;
    for r in 0..sim.n() as ReplicaIndex {
        sim.crash(r);
    }
    for r in 0..sim.n() as ReplicaIndex {
        sim.restart(r);
        if sim.replica(r).checkpoint().is_none() {
            return Err(failure(
                &sim,
                format!("replica {r} restarted without a checkpoint"),
            ));
        }
    }
    for i in 0..10 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 1)?;
    }
    settle(&mut sim)
}

/// Replicas with checkpoints commit for a while; every one takes the same
/// checkpoints (a host that serialises another state is reported).
pub fn checkpoints_agree(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    for i in 0..30 {
        let (c, home) = (i % sim.clients.len(), (i % sim.n()) as ReplicaIndex);
        commit(&mut sim, c, home)?;
    }
    settle(&mut sim)
}

/// Issue "Lose nothing" 5: a `ReadOk` delayed across a restart of its
/// origin must not answer a new read that the restarted host numbered
/// like the old one (hosts count their reads from 1 again).
///
/// Replica 1's read is confirmed by the primary, whose answer is held back;
/// replica 1 restarts, more ops commit, and its host issues read 1 again.
/// When the old answer arrives it names an index from before those ops.
pub fn delayed_read_ok_is_not_matched_to_a_new_read(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.network.hold(0, 1);
    sim.issue_read(1)?;
    sim.run_ticks(10)?; // the primary confirms it; its ReadOk waits
    sim.crash(1);
    sim.restart(1);
    for _ in 0..3 {
        commit(&mut sim, 0, 2)?;
    }
    sim.issue_read(1)?; // the restarted host's read 1
    let now = sim.tick;
    sim.network.release(now, 0, 1);
    settle(&mut sim)
}

/// Issue "Lose nothing" 9: a request whose (client, session, request) is
/// already known but whose body differs is refused, never answered with
/// the other request's reply; and of two such requests in hand at once,
/// one executes and the other is refused.
pub fn duplicate_request_with_different_body_is_refused(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    let client = sim.clients[0].id;
    let session = sim.clients[0].session.expect("registered");
    let request = sim.clients[0].next_request - 1;
    let executed = sim.checker.replies[&(client, request)];
    let mut body = executed_payload(&sim, executed, client, request);
    body.push(0xaa);
    let submission = |payload: Vec<u8>, request: u64| vsr::Submission {
        client,
        session,
        request,
        payload,
    };
    // Settled: the origin's own table knows the body differs.
    sim.submit_through(1, submission(body.clone(), request))?;
    sim.run_ticks(10)?;
    expect_refused(&sim, client, request)?;
    // Through another replica: the same.
    sim.submit_through(2, submission(body, request))?;
    sim.run_ticks(10)?;
    expect_refused(&sim, client, request)?;
    // Two bodies in hand at once: one executes, the other is refused.
    let next = request + 1;
    sim.submit_through(1, submission(vec![1], next))?;
    sim.submit_through(2, submission(vec![2], next))?;
    sim.run_ticks(50)?;
    let refused: u64 = (0..sim.n() as ReplicaIndex)
        .map(|r| sim.replica(r).stats().refused_requests)
        .sum();
    if !sim.checker.replies.contains_key(&(client, next)) || refused == 0 {
        return Err(failure(
            &sim,
            format!(
                "two bodies for request {next}: executed {:?}, {refused} refusals",
                sim.checker.replies.get(&(client, next))
            ),
        ));
    }
    sim.clients[0].next_request = next + 1;
    settle(&mut sim)
}

fn executed_payload(sim: &Simulator, op: Op, client: vsr::ClientId, request: u64) -> Vec<u8> {
    let entry = sim.replica(0).log().get(op).expect("op in the log").clone();
    entry
        .requests
        .iter()
        .find(|r| r.client == client && r.request == request)
        .expect("the request is in its op")
        .payload
        .clone()
}

fn expect_refused(sim: &Simulator, client: vsr::ClientId, request: u64) -> Result<(), Failure> {
    match sim.last_reply {
        Some((_, c, n, _, vsr::Outcome::Refused)) if c == client && n == request => Ok(()),
        other => Err(failure(
            sim,
            format!("request {request} with another body was answered {other:?}"),
        )),
    }
}

/// Issue "Lose nothing" 10: the primary's wall clock jumps an hour ahead;
/// its backups' clocks did not, so the timestamps it stamps stay within
/// the quorum's clocks instead of running an hour ahead for good.
pub fn primary_clock_jump_is_bounded(options: Options) -> Result<(), Failure> {
    const HOUR_NS: u64 = 3_600 * 1_000_000_000;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.clock_offset_ns[0] = HOUR_NS;
    for _ in 0..5 {
        sim.run_ticks(20)?;
        commit(&mut sim, 0, 1)?;
        let op = sim.replica(0).op();
        let stamped = sim.replica(0).log().get(op).expect("the head").timestamp;
        let now = sim.tick * 1_000_000;
        if stamped > now + 1_000_000_000 {
            return Err(failure(
                &sim,
                format!(
                    "op {op} stamped {} s ahead of the backups' clocks",
                    (stamped - now) / 1_000_000_000
                ),
            ));
        }
        // Time still runs: within a few message delays (ticks) of the backups'.
        if stamped.abs_diff(now) > 20_000_000 {
            return Err(failure(
                &sim,
                format!("op {op} stamped {stamped} ns, the backups' clocks read {now} ns"),
            ));
        }
    }
    sim.clock_offset_ns[0] = 0;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Issue "Lose nothing" 14: limits at the top of `u64`/`usize` (a host
/// that checks no range) must not overflow into a cluster that commits
/// nothing or backups that stop executing.
pub fn huge_limits_do_not_overflow(mut options: Options) -> Result<(), Failure> {
    let c = &mut options.config;
    c.pipeline_max = u64::MAX;
    c.view_change_ticks = u64::MAX;
    c.prepare_retry_ticks = u64::MAX;
    c.resend_ticks = u64::MAX;
    c.request_retry_ticks = u64::MAX;
    c.checkpoint_interval = u64::MAX;
    c.batch_max_requests = usize::MAX;
    c.batch_max_bytes = usize::MAX;
    c.request_queue_max = usize::MAX;
    c.client_table_max = usize::MAX;
    c.message_entries_max = usize::MAX;
    c.checkpoint_chunk_bytes = usize::MAX;
    let mut sim = Simulator::new(options.clone());
    register_all(&mut sim, 1)?;
    let n = sim.n();
    for i in 0..10 {
        commit(&mut sim, 0, (i % n) as ReplicaIndex)?;
    }
    settle(&mut sim)?;
    // With checkpoints: a replica behind the others' log base syncs the
    // state in one chunk of "at most 2^64-1 bytes".
    options.config.checkpoint_interval = 4;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for _ in 0..20 {
        commit(&mut sim, 0, 0)?;
    }
    settle(&mut sim)?;
    if sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(&sim, "replica 2 caught up without a state sync".into()));
    }
    Ok(())
}
