//! Scripted scenarios: situations random seeds reach only rarely, set up by
//! hand. Each returns `Err` if an invariant breaks or the cluster fails to
//! make progress within its stated bound.
//!
//! Every scenario takes the options to start from, so a test can run it
//! with a deliberately broken protocol and check that it fails.

use vsr::{ChangeResult, MemberId, Op, Role, Slot, Status};

use crate::options::Options;
use crate::simulator::{Failure, Simulator};

/// Ticks any single phase of a scenario may take.
pub const PHASE_TICKS: u64 = 2_000;

/// Quiet options for a scenario: perfect network, no random faults or load.
pub fn options(replica_count: u8, clients: usize) -> Options {
    Options::quiet(7, replica_count, clients)
}

/// Starts the next request of client `c` through `home`, and waits for its reply.
pub fn commit(sim: &mut Simulator, c: usize, home: Slot) -> Result<(), Failure> {
    sim.clients[c].home = home;
    sim.start_request(c)?;
    sim.run_until(PHASE_TICKS, "request completes", |s| {
        s.clients[c].outstanding.is_none()
    })
}

/// Registers every client through `home`.
pub fn register_all(sim: &mut Simulator, home: Slot) -> Result<(), Failure> {
    (0..sim.clients.len()).try_for_each(|c| commit(sim, c, home))
}

fn isolate(sim: &mut Simulator, r: Slot) {
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
    state_transfer_never_loses_commits_with(options)
}

/// Review: `state_transfer_never_loses_commits` with the StartView's
/// chunks ended by bytes rather than by count (commands of up to 256 KiB,
/// the default `message_entries_max`).
pub fn state_transfer_by_runs_never_loses_commits(mut options: Options) -> Result<(), Failure> {
    options.payload_max = 256 << 10;
    options.config.batch_max_requests = 1;
    state_transfer_never_loses_commits_with(options)
}

fn state_transfer_never_loses_commits_with(options: Options) -> Result<(), Failure> {
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
        s.running(2)
            .is_some_and(|r| r.staging_progress().is_some() || r.log_view() >= 1)
    })?;
    sim.crash(1);
    sim.restart(0);
    sim.run_until(PHASE_TICKS, "view 2 starts", |s| {
        s.running(2)
            .is_some_and(|r| r.view() >= 2 && r.status() == Status::Normal)
    })?;
    expect_log_holds(&sim, 2, committed)?;
    sim.restart(1);
    settle(&mut sim)?;
    commit(&mut sim, 0, 2)
}

fn expect_log_holds(sim: &Simulator, r: Slot, committed: Op) -> Result<(), Failure> {
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
        sim.clients[c].home = 1 + (c % 2) as Slot;
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

/// A read must see at least what a read that completed before it saw, even
/// when no client has a reply for the newer state yet (reads against reads).
///
/// Replica 1 stops hearing the primary (0). Client 1's request, submitted
/// through 1, is forwarded to 0, which commits it with 2; replica 1, which
/// would reply, never learns, so no client has a reply for that op. A read
/// through 0 sees it. A read through 1 must then see it too: it waits for
/// its index until 1 hears 0 again (a replica that served it from its own
/// state would return the state before it, above every op replied to).
pub fn read_sees_what_an_earlier_read_saw(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.run_ticks(20)?; // replica 1 executes it
    let acknowledged = sim.checker.committed();
    sim.network.set_link(0, 1, false);
    sim.clients[1].home = 1;
    sim.start_request(1)?;
    sim.run_until(PHASE_TICKS, "the primary commits client 1's request", |s| {
        s.replica(0).commit() > acknowledged
    })?;
    if sim.checker.replied > acknowledged {
        return Err(failure(&sim, "client 1 has its reply".into()));
    }
    sim.issue_read(0)?;
    sim.run_until(PHASE_TICKS, "the read through the primary completes", |s| {
        s.reads.is_empty()
    })?;
    sim.issue_read(1)?;
    sim.run_ticks(50)?;
    settle(&mut sim)
}

/// Disk mode: a replica whose log cannot be read as it restarts (a read
/// error in its WAL file) stays down, and its host hands its disk back
/// as the boot left it; restarted once the error is gone, it comes back
/// from its own log with every op it had, and the cluster goes on.
pub fn failed_boot_keeps_the_disk(mut options: Options) -> Result<(), Failure> {
    options.amnesia = false;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..10 {
        commit(&mut sim, 0, 0)?;
    }
    sim.run_ticks(20)?; // replica 2 holds every op
    let held = sim.replica(2).op();
    sim.crash(2);
    for file in [vsr_storage::Zone::WalA, vsr_storage::Zone::WalB] {
        if sim.restart_with_fault(2, |disk| disk.unreadable = Some(file)) {
            sim.crash(2); // the store's WAL is the other file
        }
    }
    if sim.report().failed_boots != 1 {
        return Err(failure(&sim, "no boot failed to read the WAL".into()));
    }
    commit(&mut sim, 0, 0)?;
    sim.restart(2);
    let restarted = sim.replica(2);
    if restarted.is_recovering() || restarted.op() < held {
        return Err(failure(
            &sim,
            format!("replica 2 came back with op {} of {held}", restarted.op()),
        ));
    }
    sim.crash(0);
    commit(&mut sim, 0, 1)?;
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
    let n = sim.n() as Slot;
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

/// `make bench-memory`'s lagging backup: commands of up to 256 KiB keep
/// the cluster loaded while replica 2 is cut off, then while it catches
/// up, over links that drop what a busy send buffer would (Erlang
/// distribution under `:nosuspend`: nothing is sent to a link holding
/// 1 MiB queued, which drains 1 MiB a tick). Replica 2, healed about 100
/// ops behind, must come within a few ops of the commit point within
/// `PHASE_TICKS`, while the load goes on (about one op a tick). Before
/// repair answers were bounded by bytes (`vsr::log::RUN_BYTES`), the
/// primary answered each request with up to `message_entries_max`
/// prepares at once: the link took the first eight or so and dropped the
/// rest, and the backup, short of the run's end it waited for, asked
/// again a resend interval later, gaining fewer ops per interval than the
/// load added (the gap grew from 100 to 400 ops in 2,000 ticks).
pub fn lagging_backup_catches_up_under_large_commands(mut options: Options) -> Result<(), Failure> {
    options.payload_max = 256 << 10;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    sim.network.send_buffer = Some(crate::network::SendBuffer::new(1 << 20, 1 << 20));
    register_all(&mut sim, 0)?;
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 0;
    }
    sim.options.request_probability = 0.5;
    sim.load = true;
    isolate(&mut sim, 2);
    let behind: Op = 100;
    // Close enough to the commit point to be keeping up: a few ops.
    const CLOSE: Op = 4;
    sim.run_until(PHASE_TICKS, "the others commit while replica 2 is cut off", |s| {
        s.checker.committed() >= behind
    })?;
    sim.network.heal();
    let target = sim.checker.committed();
    sim.run_until(PHASE_TICKS, "replica 2 catches up under load", |s| {
        s.replica(2).commit() + CLOSE >= s.checker.committed()
    })?;
    let committed = sim.checker.committed() - target;
    if sim.replica(2).commit() < target {
        return Err(failure(&sim, format!("replica 2 never reached op {target}")));
    }
    if committed < 20 {
        return Err(failure(
            &sim,
            format!("only {committed} ops committed while replica 2 caught up: not under load"),
        ));
    }
    sim.load = false;
    settle(&mut sim)
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

/// Checkpoints by bytes (`checkpoint_bytes`) are at the same ops on every
/// replica, whatever path each took: replica 2 executes a few commands,
/// is cut off while the others commit far past their log bases (byte
/// checkpoints every few ops, the interval never reached), and catches up
/// by state sync; replica 1 then restarts from its disk (its durable
/// checkpoint and log). The checker fails the run at any snapshot asked
/// for at an op that is not a boundary of the committed history; at the
/// end every replica holds the same latest checkpoint, which is a byte
/// checkpoint, and every log holds about two budgets of commands at most.
/// With `ByteCountSurvivesInstall` (the count kept across the install),
/// replica 2 checkpoints at other ops than the others.
pub fn byte_budget_checkpoints_agree_after_sync_and_restart(mut options: Options) -> Result<(), Failure> {
    const BUDGET: u64 = 300;
    options.payload_max = 120;
    let c = &mut options.config;
    c.checkpoint_interval = 1_000_000;
    c.checkpoint_bytes = BUDGET;
    c.checkpoint_chunk_bytes = 64;
    c.batch_max_requests = 2;
    let batch_max = 2 * 120;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for c in 0..sim.clients.len() {
        commit(&mut sim, c, 0)?;
    }
    sim.run_until(PHASE_TICKS, "replica 2 executes what was committed", |s| {
        s.replica(2).commit() == s.checker.committed()
    })?;
    isolate(&mut sim, 2);
    let behind = sim.checker.committed();
    while sim.replica(0).log().base() <= behind + 1 {
        for c in 0..sim.clients.len() {
            commit(&mut sim, c, 0)?;
        }
    }
    settle(&mut sim)?;
    if sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(&sim, "replica 2 caught up without a state sync".into()));
    }
    sim.crash(1);
    for c in 0..sim.clients.len() {
        commit(&mut sim, c, 0)?;
    }
    sim.restart(1);
    settle(&mut sim)?;
    // The checkpoint replica 2 synced from stays pinned for it (with the
    // log after it) until the pin expires: wait that out, then commit
    // enough for a few more byte checkpoints on every replica.
    let pin_expiry = 4 * sim.options.config.view_change_ticks;
    sim.run_ticks(pin_expiry + 1)?;
    let from = sim.checker.committed();
    while sim.checker.committed() < from + 20 {
        for c in 0..sim.clients.len() {
            commit(&mut sim, c, 2)?;
        }
    }
    settle(&mut sim)?;
    let latest = |r: Slot| sim.replica(r).checkpoint().map(|c| (c.op, c.digest()));
    let first = latest(0);
    if (1..3).any(|r| latest(r) != first) {
        return Err(failure(
            &sim,
            format!(
                "latest checkpoints differ: {:?}",
                (0..3).map(latest).collect::<Vec<_>>()
            ),
        ));
    }
    match first {
        Some((op, _)) if op > behind && !op.is_multiple_of(1_000_000) => {}
        _ => return Err(failure(&sim, format!("no byte checkpoint: {first:?}"))),
    }
    for r in 0..3 {
        let log = sim.replica(r).log();
        let bytes: u64 = (log.base() + 1..=log.op())
            .filter_map(|op| log.get(op))
            .map(|e| e.payload_bytes() as u64)
            .sum();
        if bytes > 2 * (BUDGET + batch_max) {
            return Err(failure(
                &sim,
                format!(
                    "replica {r}'s log holds {bytes} bytes of commands (ops {}..={}), \
                     over two budgets of {BUDGET}",
                    log.base() + 1,
                    log.op()
                ),
            ));
        }
    }
    Ok(())
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
    for r in 0..sim.n() as Slot {
        sim.crash(r);
    }
    for r in 0..sim.n() as Slot {
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
        let (c, home) = (i % sim.clients.len(), (i % sim.n()) as Slot);
        commit(&mut sim, c, home)?;
    }
    settle(&mut sim)
}

/// The view every running replica is in, for failure messages.
fn views(sim: &Simulator) -> Vec<u64> {
    sim.replicas().map(|r| r.view()).collect()
}

/// Defect 1 of "Lose nothing" (5 replicas): a replica still campaigning in
/// an old view installs a checkpoint from a newer view's history, and its
/// DoViewChange for the old view then carries that checkpoint's op as its
/// commit number. The old view's primary must not adopt it: the log it
/// chose is an older view's, whose tail beyond the old commit was never
/// committed (the newer view committed other entries there).
///
/// Replica 0 (primary of view 0) prepares a tail only replica 1 receives.
/// Replicas 2, 3 and 4 start view 1; replica 1 (its primary) hears only
/// 4's DoViewChange, so it waits, holding its own log (the tail) and 4's.
/// Cut off from 0 and 1, replicas 2, 3 and 4 start a newer view, commit
/// other entries past the tail's start and checkpoint beyond it. Replica
/// 0, still in view 1, installs that checkpoint, then its DoViewChange for
/// view 1 reaches replica 1 and completes its quorum. (Replica 0 hears
/// only the newer view's primary meanwhile, so that it stays in view 1.)
pub fn commit_number_from_newer_history_is_not_adopted(options: Options) -> Result<(), Failure> {
    let mut options = checkpointing(options);
    options.config.pipeline_max = 16;
    let mut sim = Simulator::new(options);
    let extra = sim.clients.len() - 1; // commits in the newer view; the others make the tail
    register_all(&mut sim, 0)?;
    let committed = sim.replica(0).commit_max();
    for to in 2..5 {
        sim.network.set_link(0, to, false);
    }
    for c in 0..extra {
        sim.clients[c].home = 0;
        sim.start_request(c)?;
    }
    let tail = committed + extra as Op;
    sim.run_until(PHASE_TICKS, "replica 1 holds the uncommitted tail", |s| {
        s.replica(1).op() >= tail
    })?;
    // Replica 1 hears only replica 4; replica 0 hears everyone but is heard by no one.
    sim.network.set_link(0, 1, false);
    sim.network.set_link(2, 1, false);
    sim.network.set_link(3, 1, false);
    sim.run_until(PHASE_TICKS, "every replica moves to view 1", |s| {
        s.replicas().all(|r| r.view() >= 1)
    })?;
    if sim.replica(0).view() != 1 || sim.replica(1).view() != 1 || sim.replica(1).is_primary() {
        return Err(failure(&sim, format!("setup: views {:?}", views(&sim))));
    }
    // Replicas 2, 3 and 4 go on alone, in a newer view, past a checkpoint
    // beyond the old commit number.
    sim.network.partition(5, &[0, 1], true, true);
    sim.network.set_link(1, 0, false);
    sim.run_until(PHASE_TICKS, "a newer view starts without 0 and 1", |s| {
        s.primary().is_some_and(|p| p >= 2)
    })?;
    let newer = sim.primary().expect("just started");
    while sim.replica(newer).log().base() <= committed {
        commit(&mut sim, extra, newer)?;
    }
    // Replica 0 fetches the newer view's checkpoint, and only that.
    sim.network.set_link(newer, 0, true);
    sim.network.set_link(0, newer, true);
    sim.run_until(
        PHASE_TICKS,
        "replica 0 installs the newer view's checkpoint",
        |s| s.replica(0).stats().checkpoints_installed > 0,
    )?;
    sim.network.set_link(newer, 0, false);
    sim.network.set_link(0, newer, false);
    let (r0, r1) = (sim.replica(0), sim.replica(1));
    if r0.view() != 1 || r0.commit_max() <= committed || r1.view() != 1 || r1.is_primary() {
        return Err(failure(&sim, format!("setup: {}", sim.describe())));
    }
    // Its DoViewChange for view 1, with the newer history's commit number,
    // completes replica 1's quorum.
    sim.network.set_link(0, 1, true);
    sim.run_ticks(PHASE_TICKS / 4)?;
    settle(&mut sim)?;
    commit(&mut sim, 0, 1)
}

/// Defect 2 of "Lose nothing" (3 replicas): after an ordinary failover the
/// old primary (cut off) and the new one (whose only partner then died)
/// each lead their own view, both abdicated. When the cut heals, the two
/// connected replicas must make progress again.
pub fn two_abdicated_primaries_do_not_wedge(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    isolate(&mut sim, 0);
    commit(&mut sim, 0, 1)?; // in view 1, led by replica 1
    sim.crash(2);
    sim.run_ticks(PHASE_TICKS / 4)?; // both primaries abdicate
    sim.network.heal();
    commit(&mut sim, 0, 1)?;
    sim.restart(2);
    settle(&mut sim)
}

/// Defect 6 of "Lose nothing" (5 replicas): campaign votes must expire with
/// their campaign. Replicas 3 and 4 lose the primary for a while and
/// campaign together (two votes: no quorum); later replicas 2 and 3 do.
/// The primary kept a quorum throughout, so it must still lead: replica 3
/// must not count 4's vote from the first flap.
pub fn prevote_votes_expire(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    for flap in [[3, 4], [2, 3]] {
        for r in flap {
            sim.network.set_link(0, r, false);
        }
        sim.run_ticks(PHASE_TICKS / 8)?;
        sim.network.heal();
        commit(&mut sim, 0, 1)?;
        if views(&sim).iter().any(|&v| v != 0) {
            return Err(failure(
                &sim,
                format!(
                    "replicas {flap:?} deposed a primary that kept a quorum: {}",
                    sim.describe()
                ),
            ));
        }
    }
    settle(&mut sim)
}

/// Replicas must agree on the settings that decide execution: a replica
/// whose client table holds fewer sessions evicts sessions the others
/// keep, and then refuses requests they execute. The host checks the
/// settings at formation; the core makes them part of the cluster id on
/// the wire (`Config::wire_cluster`), so such a replica cannot take part
/// even if the host let it start.
///
/// Replica 2 runs with `client_table_max` 2, the others with 4096. Six
/// clients register and commit through replica 0: replicas 0 and 1 (a
/// quorum) serve them, and replica 2 drops every message as another
/// cluster's and executes nothing.
pub fn replicas_with_other_settings_never_talk(mut options: Options) -> Result<(), Failure> {
    let mut other = options.config.clone();
    other.client_table_max = 2;
    options.config_override = Some((2, other));
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for c in 0..sim.clients.len() {
        commit(&mut sim, c, 0)?;
    }
    let odd = sim.running(2).expect("replica 2 runs");
    if odd.commit() != 0 || odd.stats().dropped_foreign_cluster == 0 {
        let reason = format!(
            "replica 2 (client_table_max 2) took part: commit {}, {} clients in its table, \
             {} messages dropped as another cluster's",
            odd.commit(),
            odd.clients(),
            odd.stats().dropped_foreign_cluster
        );
        return Err(failure(&sim, reason));
    }
    Ok(())
}

/// Disk mode, a write-ahead log lost after it was synced: replica 2 is cut
/// off while 0 and 1 commit 30 ops; both crash, and 1 comes back next to
/// the stale 2 with its WAL file cut to `keep_percent` of its records (0:
/// deleted). A store that trusted the short log would restart 1 with it,
/// let 1 and 2 start a view without the 30 commits, and lose them on 0 as
/// well once it returns. The store must see that its log is shorter than
/// what it had synced and recover from its peers instead.
pub fn lost_wal_is_not_trusted(options: Options, keep_percent: usize) -> Result<(), Failure> {
    lost_records_are_not_trusted(options, |sim| {
        sim.cut_wal(1, keep_percent);
        Ok(())
    })
}

/// Disk mode, issue "Lose nothing": as `lost_wal_is_not_trusted`, but
/// replica 1's WAL file keeps its length, and its records from 30% of what
/// its superblock knows synced (`wal_durable`) on are zeros, as if their
/// writes had landed outside the file. The scan reads the zeros as the
/// log's clean end. A store that took `wal_durable` down to that end
/// restarted 1 with the short log (10 of 31 ops), which let 1 and the
/// stale 2 start a view without the other 21 commits, and 0 then joined
/// it, dropping them too. The store must see that records it knew synced
/// are missing and recover from its peers instead.
pub fn misdirected_wal_tail_is_not_trusted(options: Options) -> Result<(), Failure> {
    lost_records_are_not_trusted(options, |sim| {
        // A superblock records where the synced records end only when it
        // is written for another reason: here, 0 and 1 restart and change
        // views (the stale 2 still cut off), and crash again.
        sim.restart(0);
        sim.restart(1);
        sim.run_until(PHASE_TICKS, "0 and 1 change views", |s| {
            [0, 1].iter().all(|&r| {
                s.running(r)
                    .is_some_and(|r| r.status() == Status::Normal && r.view() > 0)
            })
        })?;
        sim.crash(0);
        sim.crash(1);
        match sim.misdirect_wal_tail(1, 30) {
            0 => Err(failure(
                sim,
                "replica 1's superblock knows no record synced".into(),
            )),
            _ => Ok(()),
        }
    })
}

/// Replica 2 is cut off while 0 and 1 commit 30 ops; both crash, `lose`
/// takes records from 1's WAL, and 1 comes back next to the stale 2, then
/// 0: every replica must end up holding the 30 commits.
fn lost_records_are_not_trusted(
    options: Options,
    lose: impl FnOnce(&mut Simulator) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for _ in 0..30 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    sim.crash(0);
    sim.crash(1);
    lose(&mut sim)?;
    sim.network.heal();
    sim.restart(1);
    sim.run_ticks(PHASE_TICKS)?;
    sim.restart(0);
    sim.run_until(PHASE_TICKS, "every replica holds the commits", |s| {
        (0..s.n()).all(|r| {
            s.running(r)
                .is_some_and(|r| r.status() == Status::Normal && r.commit() >= committed)
        })
    })?;
    for r in 0..sim.n() as Slot {
        expect_log_holds(&sim, r, committed)?;
    }
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Disk mode, Protocol-Aware Recovery: with 3 replicas, one is down and
/// another restarts with one damaged entry in the middle of its log. It
/// must not throw its log away (a recovery needs both others, and one is
/// down: the cluster would stop); it fetches the damaged entry, which the
/// next entry names by checksum, from the one peer up, and serves again.
pub fn one_corrupt_wal_entry_is_repaired(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..10 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    sim.crash(2);
    sim.crash(1);
    if !sim.rot_wal_entry(1, 5) {
        return Err(failure(&sim, "replica 1's WAL holds no record of op 5".into()));
    }
    sim.restart(1);
    commit(&mut sim, 0, 1)?;
    if sim.replica(1).is_recovering() || sim.replica(1).op() <= committed {
        return Err(failure(&sim, "replica 1 did not repair its log".into()));
    }
    for _ in 0..5 {
        commit(&mut sim, 0, 1)?;
    }
    // It was repaired on disk too: a restart finds the whole log.
    sim.crash(1);
    sim.restart(1);
    if sim.replica(1).repairing().is_some() || sim.replica(1).is_recovering() {
        return Err(failure(&sim, "replica 1's repair was not made durable".into()));
    }
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Disk mode: a damaged entry that no peer holds cannot be repaired. The
/// primary, cut off, prepares two ops no one else receives, and crashes;
/// the others elect a new primary, which commits other entries at those
/// ops. The old primary restarts with the first of its two entries
/// damaged: both peers say they do not hold it (their entries at that op
/// have other checksums), a quorum of the others, so it falls back to a
/// full recovery, which they serve. (A replica waits for a quorum of such
/// answers, not for a timer: see `repairing_replica_outwaits_slow_peers`.)
pub fn unrepairable_wal_entry_falls_back_to_recovery(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..5 {
        commit(&mut sim, 0, 0)?;
    }
    let unreplicated = sim.replica(0).op() + 1;
    isolate(&mut sim, 0);
    for c in 0..2 {
        sim.clients[c].home = 0;
        sim.start_request(c)?;
        sim.run_ticks(10)?;
    }
    if sim.replica(0).op() < unreplicated + 1 {
        return Err(failure(&sim, "replica 0 did not prepare two ops".into()));
    }
    sim.crash(0);
    if !sim.rot_wal_entry(0, unreplicated) {
        return Err(failure(&sim, "replica 0's WAL holds no record of the op".into()));
    }
    sim.network.heal(); // (Simulator::heal would restart replica 0 too)
    for c in 0..2 {
        sim.clients[c].home = 1;
        sim.resubmit(c)?;
    }
    sim.run_until(PHASE_TICKS * 2, "the others commit the requests", |s| {
        s.clients.iter().all(|c| c.outstanding.is_none())
    })?;
    let committed = sim.checker.committed();
    sim.restart(0);
    if sim.replica(0).repairing().is_none() {
        return Err(failure(&sim, "replica 0 does not repair".into()));
    }
    sim.run_until(PHASE_TICKS, "replica 0 gives up the repair and recovers", |s| {
        let r = s.replica(0);
        r.status() == Status::Normal && r.commit() >= committed
    })?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Issue "Lose nothing", defect 3: a replica behind every log's base must
/// finish its state sync under sustained load, even when the transfer
/// takes longer than two checkpoint intervals (a 1-byte chunk size makes
/// the client table of 32 clients take dozens of round trips, while load
/// takes a checkpoint every few ticks). Before the fix, the sender served
/// only its latest two checkpoints, so the sync restarted on a newer one
/// forever.
pub fn state_sync_finishes_under_sustained_load(mut options: Options) -> Result<(), Failure> {
    options = checkpointing(options);
    options.config.checkpoint_chunk_bytes = 1;
    options.config.pipeline_max = 4;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for i in 0..40 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    let size = sim.replica(0).checkpoint().map_or(0, |c| c.encode().len());
    let window = vsr::checkpoint::window_chunks(1);
    if (size as u64) < 8 * window {
        return Err(failure(
            &sim,
            format!("a checkpoint of {size} bytes syncs in fewer than 8 windows"),
        ));
    }
    // Steady load from every client, through the primary, from now on.
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 0;
    }
    sim.options.request_probability = 0.5;
    sim.load = true;
    sim.network.heal();
    let target = sim.checker.committed();
    let start_op = sim.replica(0).commit();
    sim.run_until(PHASE_TICKS * 2, "replica 2 syncs under load", |s| {
        s.replica(2).commit() >= target && s.replica(2).stats().checkpoints_installed > 0
    })?;
    let committed = sim.replica(0).commit() - start_op;
    let interval = sim.options.config.checkpoint_interval;
    if committed < 2 * interval * 3 {
        return Err(failure(
            &sim,
            format!("only {committed} ops committed during the sync: not sustained load"),
        ));
    }
    sim.load = false;
    settle(&mut sim)
}

/// Issue "Lose nothing", defect 7: a checkpoint is trusted only once a
/// quorum holds it, and a replica whose digest disagrees with the
/// quorum's heals itself from the quorum's state.
///
/// Replica 2 is cut off from the start. Replicas 0 (the primary) and 1
/// agree on the first checkpoints; then replica 0's host starts to
/// serialise a state that differs from the others' (`lying_host`), so 0
/// and 1 disagree on every later checkpoint and no quorum holds any. When
/// replica 2 comes back, behind the log's base, it must be sent the last
/// checkpoint a quorum holds, never 0's (before the fix it got 0's latest,
/// and the divergence was only counted), and then the log after it. Once 2
/// has executed that log, 1 and 2 agree against 0: replica 0 learns that
/// its state diverged, stops, and installs the quorum's checkpoint.
pub fn divergent_checkpoint_is_not_spread(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    let clients = sim.clients.len();
    isolate(&mut sim, 2);
    register_all(&mut sim, 0)?;
    for i in 0..8 {
        commit(&mut sim, i % clients, 0)?;
    }
    sim.options.lying_host = Some(0);
    for i in 0..40 {
        commit(&mut sim, i % clients, 0)?;
    }
    let base = sim.replica(0).log().base();
    if base == 0 || sim.replica(2).op() >= base {
        return Err(failure(
            &sim,
            format!("replica 2 is not behind the log base {base}"),
        ));
    }
    sim.network.heal();
    // The checker fails the run if replica 2 installs host 0's state.
    let committed = sim.checker.committed();
    sim.run_until(PHASE_TICKS, "replica 2 catches up", |s| {
        s.replica(2).commit() >= committed
    })?;
    if sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(&sim, "replica 2 did not sync state".into()));
    }
    sim.run_until(PHASE_TICKS, "replica 0 heals from the quorum's checkpoint", |s| {
        let r = s.replica(0);
        !s.divergences.is_empty() && r.status() == Status::Normal && r.commit() >= committed
    })?;
    let &(r, op, digest, quorum) = sim.divergences.first().expect("checked");
    if r != 0 || digest == quorum || op <= base {
        return Err(failure(
            &sim,
            format!("wrong divergence: replica {r} at op {op}: {digest:x} vs {quorum:x}"),
        ));
    }
    if sim.replica(0).stats().checkpoint_divergence == 0 {
        return Err(failure(&sim, "replica 0 did not count its divergence".into()));
    }
    commit(&mut sim, 0, 1)?;
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
    let refused: u64 = (0..sim.n() as Slot)
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
    const HOUR_NS: i64 = 3_600 * 1_000_000_000;
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
    c.resend_ticks = u64::MAX - 1; // below view_change_ticks, as validate requires
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
        commit(&mut sim, 0, (i % n) as Slot)?;
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

/// A commit number from a newer history must not reach an old view's
/// backups through its primary's heartbeat (5 replicas; the same defect as
/// `commit_number_from_newer_history_is_not_adopted`, through the normal
/// path instead of the view change).
///
/// Replica 0 (primary of view 0) prepares a tail only replica 1 receives,
/// and is then paused (its clock stops and nothing reaches it, as in a long
/// GC or VM pause), so it never notices it lost its quorum. Replicas 2, 3
/// and 4 start a newer view, commit other entries over the tail's ops and
/// checkpoint past two checkpoints. Replica 0 resumes still leading view
/// 0, installs the newer view's checkpoint (its commit number jumps to the
/// checkpoint's op) and heartbeats replica 1 with that number: replica 1
/// must not execute its view-0 tail, which was never committed.
pub fn paused_primary_announces_no_commit_from_a_newer_history(options: Options) -> Result<(), Failure> {
    let mut options = checkpointing(options);
    options.config.pipeline_max = 16;
    let mut sim = Simulator::new(options);
    let extra = sim.clients.len() - 2; // the tail; clients 11 and 12 commit in the newer view
    register_all(&mut sim, 0)?;
    let committed = sim.replica(0).commit_max();
    for to in 2..5 {
        sim.network.set_link(0, to, false);
    }
    for c in 0..extra {
        sim.clients[c].home = 0;
        sim.start_request(c)?;
    }
    let tail = committed + extra as Op;
    sim.run_until(PHASE_TICKS, "replica 1 holds the uncommitted tail", |s| {
        s.replica(1).op() >= tail
    })?;
    // Replica 0 pauses; replica 1 is cut off from the others.
    sim.frozen[0] = true;
    isolate(&mut sim, 0);
    sim.network.partition(5, &[0, 1], true, true);
    sim.run_until(PHASE_TICKS, "a newer view starts without 0 and 1", |s| {
        s.primary().is_some_and(|p| p >= 2)
    })?;
    let newer = sim.primary().expect("just started");
    let mut i = 0;
    while sim.replica(newer).log().base() <= committed {
        commit(&mut sim, extra + i % 2, newer)?;
        i += 1;
    }
    let checkpoint = sim.replica(newer).checkpoint().map_or(0, |c| c.op);
    if checkpoint > tail || !sim.replica(0).is_primary() || sim.replica(1).view() != 0 {
        return Err(failure(&sim, format!("setup: {}", sim.describe())));
    }
    // Replica 0 resumes, hears replica 1 again and fetches the newer
    // view's checkpoint, and only that.
    sim.frozen[0] = false;
    for (a, b) in [(0, 1), (1, 0), (0, newer), (newer, 0)] {
        sim.network.set_link(a, b, true);
    }
    sim.run_until(
        PHASE_TICKS,
        "replica 0 installs the newer view's checkpoint",
        |s| s.replica(0).stats().checkpoints_installed > 0,
    )?;
    sim.network.set_link(newer, 0, false);
    sim.network.set_link(0, newer, false);
    sim.run_ticks(PHASE_TICKS / 4)?;
    settle(&mut sim)?;
    commit(&mut sim, 0, 1)
}

/// Disk mode: two replicas of three restart, each with one damaged entry
/// (ops 5 and 7), while the third is down. Each holds the entry the other
/// lacks. If a `Repairing` replica answered no `RequestEntry`, both would
/// eventually give up, empty their logs and recover; a recovery
/// needs a quorum of the *others* not recovering, so even once the third
/// returns with every commit the cluster could never serve again.
pub fn two_replicas_repairing_at_once(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..10 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    for r in 0..sim.n() as Slot {
        sim.crash(r);
    }
    if !sim.rot_wal_entry(1, 5) || !sim.rot_wal_entry(2, 7) {
        return Err(failure(&sim, "a WAL holds no record of the op".into()));
    }
    sim.restart(1);
    sim.restart(2);
    sim.run_ticks(PHASE_TICKS * 2)?;
    sim.restart(0);
    sim.run_until(PHASE_TICKS * 2, "every replica holds the commits", |s| {
        (0..s.n()).all(|r| {
            s.running(r)
                .is_some_and(|r| r.status() == Status::Normal && r.commit() >= committed)
        })
    })?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Disk mode, review of defect 8, within the fault model (power loss on
/// every node, rot in one record of one replica): replica 1 restarts first,
/// with one damaged entry; the others take long to boot. Had replica 1
/// given up its log on a timer (20 requests, as it once did), then when
/// replica 0 returns (a quorum, {0, 1}, has restarted, and 0 holds the
/// entry) the cluster could not serve: a recovering replica needs a quorum
/// of the others, and replica 2 is still down. It gives up only once a
/// quorum of the others said they do not hold the entry.
pub fn repairing_replica_outwaits_slow_peers(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..10 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    for r in 0..sim.n() as Slot {
        sim.crash(r);
    }
    if !sim.rot_wal_entry(1, 5) {
        return Err(failure(&sim, "replica 1's WAL holds no record of op 5".into()));
    }
    sim.restart(1);
    sim.run_ticks(PHASE_TICKS)?;
    sim.restart(0);
    sim.run_until(PHASE_TICKS * 2, "replicas 0 and 1 serve the commits", |s| {
        (0..2).all(|r| {
            s.running(r)
                .is_some_and(|r| r.status() == Status::Normal && r.commit() >= committed)
        })
    })?;
    commit(&mut sim, 0, 1)?;
    sim.restart(2);
    settle(&mut sim)
}

/// Disk mode, review of defect 8, within the fault model (power loss on
/// every node, rot in one record of one replica, a quorum restarted):
/// replica 1, down for a while, restarts with a damaged entry above its
/// own checkpoint; replica 0, the one peer up, has checkpointed past that
/// entry and restarted from its checkpoint, so no peer holds the entry.
/// Had replica 1 given up its log, it would need both others to recover,
/// so {0, 1} could not serve, though 0's checkpoint covers the damaged
/// (committed) op; instead 0 names its checkpoint, and 1 syncs it and
/// restarts from it.
pub fn repair_of_an_entry_below_every_peers_checkpoint(mut options: Options) -> Result<(), Failure> {
    options.config.checkpoint_interval = 4;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..9 {
        commit(&mut sim, 0, 0)?;
    }
    sim.run_ticks(100)?;
    sim.crash(1);
    for _ in 0..20 {
        commit(&mut sim, 0, 0)?;
    }
    sim.run_ticks(100)?;
    let committed = sim.checker.committed();
    sim.crash(0);
    sim.crash(2);
    if !sim.rot_wal_entry(1, 9) {
        return Err(failure(&sim, "replica 1's WAL holds no record of op 9".into()));
    }
    sim.restart(1);
    if sim.replica(1).repairing().is_none() {
        return Err(failure(&sim, "replica 1 does not repair op 9".into()));
    }
    sim.restart(0);
    sim.run_until(PHASE_TICKS * 2, "replicas 0 and 1 serve the commits", |s| {
        (0..2).all(|r| {
            s.running(r)
                .is_some_and(|r| r.status() == Status::Normal && r.commit() >= committed)
        })
    })?;
    commit(&mut sim, 0, 0)?;
    sim.restart(2);
    settle(&mut sim)
}

/// Review of issue "Lose nothing" 10: with one of three replicas down, the
/// primary hears exactly a quorum of clocks (its own and one backup's).
/// The window of `k = q` offsets was `[min, max]`, which always holds the
/// primary's own offset 0, so the clamp never moved it: a primary whose
/// clock alone jumped an hour ahead stamped an hour ahead ("op 3 stamped
/// 3599 s ahead of the backup's clock"), and once committed, the skew
/// stays for good (timestamps only increase). Now the window's upper bound
/// leaves out the latest clock, so with `k = q = 2` the earlier of the two
/// clocks sets the time (`clock.rs`).
pub fn primary_clock_jump_with_one_replica_down(options: Options) -> Result<(), Failure> {
    clock_jump_with_one_replica_down(options, 0, "the backup's clock")
}

/// The mirror of `primary_clock_jump_with_one_replica_down`. With one of
/// three replicas down and `k = q`, the window was the one backup's clock
/// alone, so a backup whose clock alone jumped an hour ahead made the
/// primary stamp an hour ahead, and timestamps only increase: the skew of
/// issue "Lose nothing" 10, moved from the primary's clock to a backup's.
/// With two clocks and no way to tell which is right, taking the later one
/// is irrecoverable (every later timestamp stays ahead); the earlier one,
/// which the window now takes, only lags until it catches up
/// (`PeersAloneWithBareQuorum` brings the old window back).
pub fn backup_clock_jump_with_one_replica_down(options: Options) -> Result<(), Failure> {
    clock_jump_with_one_replica_down(options, 1, "the primary's clock (backup 1's clock jumped)")
}

/// Replica `jumped`'s clock alone jumps an hour ahead while the last
/// replica is down; no prepare of replica 0 (the primary) may be stamped
/// more than a second ahead of true time, that is, of `other`, the clock
/// that did not jump.
fn clock_jump_with_one_replica_down(options: Options, jumped: Slot, other: &str) -> Result<(), Failure> {
    const HOUR_NS: i64 = 3_600 * 1_000_000_000;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    let down = (sim.n() - 1) as Slot;
    sim.crash(down);
    sim.clock_offset_ns[jumped as usize] = HOUR_NS;
    for _ in 0..3 {
        sim.run_ticks(20)?;
        commit(&mut sim, 0, 1)?;
        let op = sim.replica(0).op();
        let stamped = sim.replica(0).log().get(op).expect("the head").timestamp;
        let now = sim.tick * 1_000_000;
        if stamped > now + 1_000_000_000 {
            return Err(failure(
                &sim,
                format!(
                    "op {op} stamped {} s ahead of {other}, replica {down} down",
                    (stamped - now) / 1_000_000_000
                ),
            ));
        }
    }
    sim.clock_offset_ns[jumped as usize] = 0;
    settle(&mut sim)
}

/// Review of issue "Lose nothing" 10: all replicas up, the primary's clock
/// jumps an hour ahead and a request arrives at once. The offsets the
/// primary held were measured against its clock *before* the jump (a
/// sample stored `theirs - ours` at arrival), so until each backup's next
/// message they agreed with the jumped clock: the next prepare was stamped
/// an hour ahead, and since timestamps only increase, every later one too.
/// Now a sample keeps the peer's reading and the monotonic time it arrived
/// at, which a wall clock jump does not move (`clock.rs`).
/// `primary_clock_jump_is_bounded` waits 20 ticks after the jump, which
/// hid this.
pub fn primary_clock_jump_then_request_at_once(options: Options) -> Result<(), Failure> {
    const HOUR_NS: i64 = 3_600 * 1_000_000_000;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.clock_offset_ns[0] = HOUR_NS;
    sim.run_ticks(1)?; // the primary's clock reads an hour ahead now
    commit(&mut sim, 0, 0)?;
    sim.run_ticks(20)?;
    commit(&mut sim, 0, 1)?;
    let op = sim.replica(0).op();
    let stamped = sim.replica(0).log().get(op).expect("the head").timestamp;
    let now = sim.tick * 1_000_000;
    if stamped > now + 1_000_000_000 {
        return Err(failure(
            &sim,
            format!(
                "op {op}, 20 ticks after the jump, stamped {} s ahead of the backups' clocks",
                (stamped - now) / 1_000_000_000
            ),
        ));
    }
    sim.clock_offset_ns[0] = 0;
    settle(&mut sim)
}

/// A primary whose host stalls (a slow fsync) takes in the messages that
/// queued up meanwhile before its first tick after the stall. Their
/// clock readings are fresh, but as far as its monotonic clock could tell
/// they arrived at its last tick before the stall; carried forward from
/// there, every peer's clock read as far ahead as the stall lasted, and
/// the next prepare was stamped that far ahead of every clock (the
/// simulator's timestamp check).
pub fn stalled_primary_stamps_no_time_from_its_stall(mut options: Options) -> Result<(), Failure> {
    const STALL: u64 = 300;
    // No timeout fires during the stall: the primary stays the primary.
    options.config.view_change_ticks = 1_000;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.stall(0, STALL);
    let back = sim.tick + STALL;
    sim.run_ticks(STALL - 3)?;
    // Both backups forward a request to the stalled primary just before
    // it goes on: their freshest clock readings wait in its queue.
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    sim.clients[1].home = 2;
    sim.start_request(1)?;
    sim.run_until(10, "the primary goes on", |s| s.tick >= back)?;
    // Right after its first tick: a request through the primary itself.
    commit(&mut sim, 2, 0)?;
    settle(&mut sim)
}

/// Review of issue "Lose nothing" 5 (passes: kept as a regression): a read
/// confirmed by the primary of view 0, whose ReadOk is held, is re-sent
/// to the primary of view 1 after the first crashes; another read is
/// submitted while its replica is in the view change; writes follow in
/// view 1, then the old ReadOk arrives. Every read is answered, none
/// stale (the simulator checks each read's index against the replies
/// given before it was issued).
pub fn read_resent_across_a_view_change(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.network.hold(0, 2);
    sim.issue_read(2)?;
    sim.run_ticks(10)?; // replica 0 confirms it; its ReadOk waits
    sim.crash(0);
    sim.run_until(PHASE_TICKS, "replica 1 starts a view change", |s| {
        s.replica(1).status() == Status::ViewChange
    })?;
    sim.issue_read(1)?;
    sim.run_until(PHASE_TICKS, "view 1 runs", |s| {
        s.replica(1).view() >= 1 && s.replica(1).status() == Status::Normal
    })?;
    for _ in 0..3 {
        commit(&mut sim, 0, 2)?;
    }
    let now = sim.tick;
    sim.network.release(now, 0, 2);
    sim.restart(0);
    settle(&mut sim)
}

/// The setup two divergence scenarios share (checkpoints every 4 ops):
/// replica 2's host lies from op 9 on, and replica 1's reports to the
/// primary (replica 0) are held back while 1 and 2 reach checkpoint 12;
/// then 0 can no longer reach 1 (1's held reports are still to come).
fn lying_replica_2_past_checkpoint_12(sim: &mut Simulator) -> Result<(), Failure> {
    let clients = sim.clients.len();
    register_all(sim, 0)?;
    for i in 0..4 {
        commit(sim, i % clients, 0)?;
    }
    sim.run_ticks(50)?;
    sim.options.lying_host = Some(2);
    sim.network.hold(1, 0);
    for i in 0..4 {
        commit(sim, i % clients, 0)?;
    }
    sim.run_until(PHASE_TICKS, "replicas 1 and 2 checkpoint op 12", |s| {
        [1, 2]
            .iter()
            .all(|&r| s.replica(r).checkpoint().is_some_and(|c| c.op == 12))
    })?;
    sim.run_ticks(20)?;
    sim.network.set_link(0, 1, false);
    Ok(())
}

/// `lying_replica_2_past_checkpoint_12` in a cluster that starts no view
/// change: in the scenarios that use it, a replica hears nothing from
/// another for a while (a primary nothing, a backup nothing from it), and
/// must neither abdicate nor campaign meanwhile.
fn lying_replica_2_without_view_changes(mut options: Options) -> Result<Simulator, Failure> {
    options.config.view_change_ticks = 100_000;
    let mut sim = Simulator::new(checkpointing(options));
    lying_replica_2_past_checkpoint_12(&mut sim)?;
    Ok(sim)
}

/// Review of defects 3 and 7 (issue "Lose nothing"): a diverged replica
/// heals only from a peer that *knows* a quorum vouches for the checkpoint
/// it wants, although any peer holding that very (op, digest) would do.
///
/// Replica 2's host lies from op 9 on. Replica 1's acks (with its report of
/// checkpoint 12) are held back until replica 0 can no longer reach 1; then
/// 0 counts 1's report, vouches for 12, and tells only 2, which diverges.
/// Replica 0 then loses its memory (memory mode). Replica 1 holds exactly
/// the checkpoint 2 needs, but does not know it is vouched. Before the fix
/// it offered 2 only its anchor (8), below what 2 would install; 2 stayed
/// diverged, voted for nothing, and 0 could not recover without it. Now 2
/// names the vouched digest in `RequestCheckpoint`, and 1 sends the
/// checkpoint with that identity.
pub fn diverged_replica_heals_from_a_peer_unaware_of_the_vouch(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    lying_replica_2_past_checkpoint_12(&mut sim)?;
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_until(PHASE_TICKS, "replica 2 diverges", |s| {
        s.replica(2).status() == Status::Diverged
    })?;
    sim.crash(0);
    sim.network.heal();
    sim.restart_amnesiac(0);
    let committed = sim.checker.committed();
    sim.run_until(PHASE_TICKS * 4, "replica 2 heals and the cluster recovers", |s| {
        s.replica(2).status() == Status::Normal && (0..3).all(|r| s.replica(r).commit() >= committed)
    })?;
    settle(&mut sim)
}

/// A diverged replica that heals with a checkpoint newer than the op where
/// it diverged must forget its own (wrong) digests from that op on: a late
/// vouch for an op in between must not make it diverge again.
///
/// Replica 2's host lies from op 9 on. Replica 1's reports are held back
/// while 0 and 2 reach checkpoint 16; then 0 counts 1's report of 12 and
/// 2 diverges at 12. 2 is then cut off (0's messages to it held, with the
/// vouch for 16 among them) while 0 and 1 go past checkpoint 24, so 2 heals
/// from 1 with its newest vouched checkpoint, not 12's. Only then do 0's
/// held messages reach 2.
pub fn healed_replica_ignores_a_late_vouch_between_divergence_and_install(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    let clients = sim.clients.len();
    lying_replica_2_past_checkpoint_12(&mut sim)?;
    for i in 0..4 {
        commit(&mut sim, i % clients, 0)?;
    }
    sim.run_until(PHASE_TICKS, "replica 2 checkpoints op 16", |s| {
        s.replica(2).checkpoint().is_some_and(|c| c.op == 16)
    })?;
    for to in [0, 1] {
        sim.network.set_link(2, to, false);
    }
    sim.network.set_link(1, 2, false);
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_until(PHASE_TICKS, "replica 2 diverges", |s| {
        s.replica(2).status() == Status::Diverged
    })?;
    sim.network.hold(0, 2);
    sim.network.set_link(0, 1, true);
    for i in 0..8 {
        commit(&mut sim, i % clients, 0)?;
    }
    sim.run_until(PHASE_TICKS, "replica 1 checkpoints op 24", |s| {
        s.replica(1).checkpoint().is_some_and(|c| c.op >= 24)
    })?;
    sim.run_ticks(50)?;
    sim.options.lying_host = None;
    sim.network.set_link(2, 1, true);
    sim.network.set_link(1, 2, true);
    sim.run_until(PHASE_TICKS, "replica 2 heals past op 16", |s| {
        s.replica(2).status() != Status::Diverged && s.replica(2).checkpoint().is_some_and(|c| c.op > 16)
    })?;
    let now = sim.tick;
    sim.network.release(now, 0, 2);
    sim.run_ticks(200)?;
    if sim.divergences.len() != 1 {
        return Err(Failure {
            seed: sim.options.seed,
            tick: sim.tick,
            reason: format!("replica 2 diverged again on a late vouch: {:?}", sim.divergences),
        });
    }
    settle(&mut sim)
}

/// Soak seed 161832: a replica that installs a vouched checkpoint must
/// not then diverge on a late vouch for one of its own older checkpoints.
/// Its state is the quorum's from the installed checkpoint on; before the
/// fix it kept its own digests below it, and in the soak, where both peers
/// still held the older checkpoint it then asked for, it refused what they
/// sent (below the one it held) and stayed diverged for ever.
///
/// Replica 2's host lies from op 9 on and checkpoints op 12 unnoticed
/// (replica 1's reports are held back, so nothing vouches for 12). Then
/// replica 0 counts 1's report of 12, and its messages to 2, which carry
/// that vouch, are set aside while 0 and 1 commit far past 2's op. 2 syncs
/// the quorum's newest checkpoint from 0 and catches up; only then does the
/// vouch for 12 reach it. By then its host no longer lies, so the simulator
/// fails the run if 2 reports a divergence.
pub fn installed_replica_ignores_a_late_vouch_for_an_older_checkpoint(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = lying_replica_2_without_view_changes(options)?;
    let clients = sim.clients.len();
    sim.network.hold(0, 2);
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_until(PHASE_TICKS, "replica 0 learns that a quorum holds 12", |s| {
        s.replica(0).stats().checkpoint_divergence == 0 && s.network.in_flight() == 0
    })?;
    sim.run_ticks(20)?; // a heartbeat or two, with the vouch, held for 2
    if sim.replica(2).status() == Status::Diverged {
        return Err(failure(
            &sim,
            "replica 2 diverged before the scenario's point".into(),
        ));
    }
    let late = sim.network.take_held(0, 2);
    sim.network.set_link(0, 2, false);
    sim.network.set_link(0, 1, true);
    for i in 0..16 {
        commit(&mut sim, i % clients, 0)?;
    }
    let base = sim.replica(0).log().base();
    if sim.replica(2).op() >= base {
        return Err(failure(
            &sim,
            format!("replica 2 is not behind the log base {base}"),
        ));
    }
    sim.options.lying_host = None;
    sim.network.set_link(0, 2, true);
    let committed = sim.checker.committed();
    sim.run_until(PHASE_TICKS, "replica 2 syncs and catches up", |s| {
        s.replica(2).commit() >= committed
    })?;
    if sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(&sim, "replica 2 caught up without a state sync".into()));
    }
    if late.is_empty() {
        return Err(failure(&sim, "no message from replica 0 was set aside".into()));
    }
    let now = sim.tick;
    for bytes in late {
        sim.network.deliver(now, 0, 2, bytes);
    }
    sim.run_ticks(200)?;
    if sim.replica(2).status() != Status::Normal {
        return Err(failure(
            &sim,
            format!("replica 2 is {:?} after the late vouch", sim.replica(2).status()),
        ));
    }
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// A backup that synced a checkpoint from the primary and then caught up
/// keeps asking for the odd prepare it lost on a lossy link: those
/// requests must not keep the checkpoint it synced pinned (its bytes held)
/// for ever.
pub fn synced_backup_on_a_lossy_link_releases_its_pin(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    let clients = sim.clients.len();
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for i in 0..24 {
        commit(&mut sim, i % clients, 0)?;
    }
    sim.network.heal();
    let target = sim.checker.committed();
    sim.run_until(PHASE_TICKS, "replica 2 syncs and catches up", |s| {
        s.replica(2).commit() >= target
    })?;
    if sim.replica(2).stats().checkpoints_installed == 0 {
        return Err(failure(&sim, "replica 2 caught up without a state sync".into()));
    }
    let interval = sim.options.config.view_change_ticks;
    for i in 0..12 {
        sim.network.set_link(0, 2, false);
        commit(&mut sim, i % clients, 0)?;
        sim.network.set_link(0, 2, true);
        commit(&mut sim, (i + 1) % clients, 0)?;
        sim.run_ticks(interval / 2)?;
    }
    if let Some(op) = sim.replica(0).pinned_checkpoint(2) {
        return Err(failure(
            &sim,
            format!("the primary still pins checkpoint {op} for replica 2, long caught up"),
        ));
    }
    settle(&mut sim)
}

/// Found by a review: a diverged replica whose anchor then passes the op
/// where it diverged must still heal. Before the fix it asked for the
/// vouched checkpoint at the op where it diverged, but `sync_floor` was its
/// anchor, above it: every peer that holds that checkpoint sends it, it refuses it, and
/// the sender pins it for it (the requests keep the pin fresh), so even a
/// cluster that commits on never offers it anything newer.
///
/// Replica 2's host serialises a wrong state at checkpoint 12 and a right
/// one at 16 (an intermittent host bug: a nondeterministic serialisation,
/// or a fix loaded between the two). Both are taken before any vouch for
/// 12 reaches it. Then the primary (0) counts 1's held report of 12 and 2
/// diverges at 12; then 0 counts 2's report of 16, sent before it diverged
/// and held back until now, vouches for 16, and 2 makes its own 16 (which
/// matches) its anchor.
pub fn diverged_replica_heals_after_its_anchor_passes_the_divergence(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = lying_replica_2_without_view_changes(options)?;
    let clients = sim.clients.len();
    sim.options.lying_host = None;
    for i in 0..4 {
        commit(&mut sim, i % clients, 0)?;
    }
    // Replica 2's acknowledgements with its report of 16 are held back.
    sim.network.hold(2, 0);
    sim.run_until(PHASE_TICKS, "replica 2 checkpoints op 16", |s| {
        s.replica(2).checkpoint().is_some_and(|c| c.op == 16)
    })?;
    sim.run_ticks(20)?; // a heartbeat or two: 2 reports 16, held
    sim.options.lying_host = Some(2);
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_until(PHASE_TICKS, "replica 2 diverges at op 12", |s| {
        s.replica(2).status() == Status::Diverged
    })?;
    if sim.divergences.last().map(|d| d.1) != Some(12)
        || sim.replica(2).checkpoint().map(|c| c.op) != Some(16)
    {
        return Err(failure(
            &sim,
            format!(
                "replica 2 did not diverge at 12 holding its own checkpoint 16: {:?}",
                sim.divergences
            ),
        ));
    }
    // 0 vouches for 16 and tells 2, whose anchor becomes its own 16 (before
    // the fix it then asked for 12 for ever; now it may heal at once).
    let now = sim.tick;
    sim.network.release(now, 2, 0);
    sim.run_ticks(50)?;
    // Nothing of 2's can diverge from here on (it holds no other digest at
    // or past its anchor), so the simulator fails the run if it does.
    sim.options.lying_host = None;
    sim.network.heal();
    for i in 0..16 {
        commit(&mut sim, i % clients, 0)?;
    }
    let healed = sim.run_until(PHASE_TICKS * 4, "replica 2 heals", |s| {
        s.replica(2).status() != Status::Diverged
    });
    if let Err(mut failure) = healed {
        let pins: Vec<Option<Op>> = [0, 1]
            .iter()
            .map(|&r| sim.replica(r).pinned_checkpoint(2))
            .collect();
        failure.reason += &format!("; checkpoints pinned for replica 2 by replicas 0 and 1: {pins:?}");
        return Err(failure);
    }
    settle(&mut sim)
}

/// Found by a review: a replica that heals installs a checkpoint at or
/// below what it executed and executes again from it. Before the fix it
/// asked its host again for snapshots at ops it had asked for before it
/// diverged; the host's answers to the old requests, taken from the wrong
/// state and still on their way (`TakeSnapshot` is answered "now or
/// later"; `diverge` forgets the requests, not the answers), matched the
/// new requests' ops, and the replica formed its checkpoint from one: it
/// diverged again, although its host's state was the quorum's. Now it asks
/// for no snapshot at those ops. Visor's own host is exposed too:
/// `Visor.Router` keeps the protocol (and so a heal) going while
/// `Visor.Server` still works through older events, the old snapshot
/// request among them, behind a slow `handle_commit`.
///
/// Replica 2's host lies from op 9 on. While 0 and 2 commit up to op 20
/// (1 cut off, its report of 12 held back), 2's host answers snapshots
/// late. Then 0 counts 1's report of 12 and 2 diverges at 12; its host is
/// fixed (it no longer lies), 2 heals from 1's checkpoint 12 and executes
/// 13..=20 again, while the old answer for 20 is still on its way; had it
/// asked again, that answer would come first, and once 0 and 1 vouch for
/// 20 the simulator would fail the run as 2 diverged again.
pub fn healed_replica_forms_no_checkpoint_from_its_diverged_state(options: Options) -> Result<(), Failure> {
    let mut sim = lying_replica_2_without_view_changes(options)?;
    let clients = sim.clients.len();
    sim.options.snapshot_delay_max = SLOW_SNAPSHOT_TICKS;
    for i in 0..8 {
        commit(&mut sim, i % clients, 0)?;
    }
    sim.run_until(PHASE_TICKS, "replica 2 executes op 20", |s| {
        s.replica(2).commit() >= 20
    })?;
    let stale = sim.snapshots_owed(2);
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_until(PHASE_TICKS, "replica 2 diverges", |s| {
        s.replica(2).status() == Status::Diverged
    })?;
    // Fixed: its host serialises the quorum's state from here on.
    sim.options.lying_host = None;
    sim.options.snapshot_delay_max = SLOW_SNAPSHOT_TICKS + 100;
    sim.run_until(PHASE_TICKS, "replica 2 heals", |s| {
        s.replica(2).status() != Status::Diverged && s.replica(2).commit() >= 20
    })?;
    // The setup: an answer owed from before the divergence is still on its
    // way once the replica has healed and executed its op again (before
    // the fix it asked again, and the old answer came first).
    let owed = sim.snapshots_owed(2);
    if !stale.iter().any(|old| owed.contains(old)) {
        return Err(failure(
            &sim,
            format!("no old snapshot answer outlives the heal: owed {stale:?} then {owed:?}"),
        ));
    }
    sim.run_ticks(SLOW_SNAPSHOT_TICKS * 2)?;
    sim.options.snapshot_delay_max = 0;
    sim.network.heal();
    for i in 0..8 {
        commit(&mut sim, i % clients, 0)?;
    }
    settle(&mut sim)
}

/// Longest a host takes to answer `TakeSnapshot` in
/// `healed_replica_forms_no_checkpoint_from_its_diverged_state`.
const SLOW_SNAPSHOT_TICKS: u64 = 900;

/// Soak seeds 588342 and 758283 (5 replicas, memory mode): a recovering
/// replica took the highest view its fence quorum reported, and one of
/// them was a replica alone in a view change to a view that never started;
/// that replica then lost its memory and recovered into the view the
/// others kept running. The recovering replica asked the primary of a view
/// nobody runs for its log, forever, and the clients it serves waited
/// forever although a quorum ran.
///
/// Replica 4 is down. The primary stalls; replica 1, hearing the campaigns
/// of 2 and 3 (which hear neither each other nor 1), moves alone to view 1;
/// then 2 and 3 hear the primary again. Replica 4 restarts
/// without state, and its fence reaches 0, 1 and 2 only. Replica 1 then
/// loses its memory too and recovers into view 0. Replica 4 must recover,
/// and serve its client.
pub fn recovery_fenced_in_an_unstarted_view_does_not_wedge(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.crash(4);
    for (from, to) in [(0, 1), (1, 0), (1, 2), (1, 3), (2, 3), (3, 2)] {
        sim.network.set_link(from, to, false);
    }
    sim.stall(0, PHASE_TICKS / 8);
    sim.run_until(PHASE_TICKS, "replica 1 alone changes view", |s| {
        s.replica(1).status() == Status::ViewChange
    })?;
    sim.run_ticks(PHASE_TICKS / 4)?;
    if views(&sim) != [0, 1, 0, 0] || sim.replica(0).status() != Status::Normal {
        return Err(failure(&sim, format!("setup: {}", sim.describe())));
    }
    sim.network.set_link(3, 4, false);
    sim.restart_amnesiac(4);
    sim.run_ticks(PHASE_TICKS / 4)?;
    sim.crash(1);
    sim.network.heal();
    sim.restart_amnesiac(1);
    sim.run_until(PHASE_TICKS, "replica 1 recovers", |s| {
        !s.replica(1).is_recovering()
    })?;
    commit(&mut sim, 0, 4)?;
    settle(&mut sim)
}

// ---- Membership changes (docs/design/membership.md) ----------------------

/// Waits for the answer to change `id` asked through `through`, and checks
/// it is `expected`.
fn change_ends(sim: &mut Simulator, through: Slot, id: u64, expected: ChangeResult) -> Result<(), Failure> {
    sim.run_until(PHASE_TICKS, "the change is answered", |s| {
        s.reconfigured(through, id).is_some()
    })?;
    match sim.reconfigured(through, id) {
        Some(result) if result == expected => Ok(()),
        other => Err(failure(
            sim,
            format!("change {id} through {through} ended {other:?}, not {expected:?}"),
        )),
    }
}

/// Through replica 0, asks change `id` to the nodes `ids`, whose one new
/// member's learner crashes once the entry is proposed (it names the
/// learner's life) and before it hears the entry committed; the change
/// ends `Done` without it. Returns the learner's node, down.
fn learner_crashed_after_the_proposal(
    sim: &mut Simulator,
    id: u64,
    ids: &[MemberId],
) -> Result<Slot, Failure> {
    let new = sim.start_learners(0, ids)?[0];
    sim.reconfigure(0, id, ids, PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "the entry is proposed", |s| {
        s.replica(0).consent().is_some()
    })?;
    sim.crash(new);
    change_ends(sim, 0, id, ChangeResult::Done)?;
    Ok(new)
}

/// Checks that the running replicas `members` are members of `epoch` and
/// that `gone` have stopped as removed from it.
fn in_epoch(sim: &Simulator, epoch: u64, members: &[Slot], gone: &[Slot]) -> Result<(), Failure> {
    for &r in members {
        let replica = sim.replica(r);
        if replica.membership().epoch() != epoch || replica.role() != Role::Member {
            return Err(failure(
                sim,
                format!("replica {r} is not a member of epoch {epoch}"),
            ));
        }
    }
    for &r in gone {
        if sim.replica(r).role() != Role::Removed || !sim.removed.contains(&(r, epoch)) {
            return Err(failure(
                sim,
                format!("replica {r} did not stop, removed from epoch {epoch}"),
            ));
        }
    }
    Ok(())
}

/// The simplest change: a backup removed from three. The primary, the
/// origin, proposes the entry; everyone executes it and enters epoch 1,
/// replica 2 as leaving, and stops once both members said they entered.
/// The pair then commits alone (both needed: a quorum of two).
pub fn shrink_three_to_two_removing_a_backup(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| !s.removed.is_empty())?;
    in_epoch(&sim, 1, &[0, 1], &[2])?;
    commit(&mut sim, 0, 1)?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// The primary itself is removed, through a backup: the old primary
/// commits the entry and leaves; the first staying member leads view 0
/// of the new epoch at once, and commands go on through it.
pub fn shrink_four_to_three_removes_the_primary(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    let views_before = sim.replica(1).stats().views_started;
    sim.reconfigure(1, 7, &[1, 2, 3], PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "replica 0 prepares the entry", |s| {
        s.replica(0)
            .log()
            .get(s.replica(0).op())
            .is_some_and(|e| e.reconfiguration().is_some())
    })?;
    // A command reaches the old primary after its entry: it waits for the
    // new epoch (its origin retries towards the new primary).
    sim.clients[1].home = 2;
    sim.start_request(1)?;
    change_ends(&mut sim, 1, 7, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "the command commits", |s| {
        s.clients[1].outstanding.is_none()
    })?;
    commit(&mut sim, 0, 1)?;
    sim.run_until(PHASE_TICKS, "replica 0 stops", |s| !s.removed.is_empty())?;
    in_epoch(&sim, 1, &[1, 2, 3], &[0])?;
    if sim.replica(1).membership().primary(0) != 1 || !sim.replica(1).is_primary() {
        return Err(failure(&sim, "replica 1 does not lead epoch 1".into()));
    }
    if sim.replica(1).stats().views_started != views_before {
        return Err(failure(&sim, "the switch took a view change".into()));
    }
    commit(&mut sim, 0, 2)?;
    settle(&mut sim)
}

/// Requests that cannot be a change are answered, and nothing changes: a
/// target equal to the list (at once), and one with a new member that no
/// node runs (its learner is never heard: at the deadline).
pub fn changes_that_cannot_be_are_refused(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.reconfigure(1, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 1, 1, ChangeResult::Unchanged)?;
    sim.reconfigure(1, 2, &[0, 1, 2, 9], PHASE_TICKS)?;
    change_ends(&mut sim, 1, 2, ChangeResult::Unreachable)?;
    if sim.replicas().any(|r| r.membership().epoch() != 0) {
        return Err(failure(&sim, "a refused change changed the membership".into()));
    }
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// VR Revisited's origin problem, and the design's break 4: a change its
/// origin gave up on (its deadline passed before any consent: the caller
/// hears `NoQuorum`) must never commit, even when its `Reconfigure`,
/// delayed in the network, reaches the primary afterwards. The primary
/// admits it and asks the origin, which refuses: it knows no such change.
pub fn withdrawn_change_is_never_proposed_from_a_late_reconfigure(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.network.hold(1, 0);
    sim.reconfigure(1, 4, &[0, 1], 5)?;
    change_ends(&mut sim, 1, 4, ChangeResult::NoQuorum)?;
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_ticks(PHASE_TICKS / 4)?;
    if sim.replicas().any(|r| r.membership().epoch() != 0) {
        return Err(failure(&sim, "a change its origin gave up on was made".into()));
    }
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// The design's break 6: the primary commits the entry at op N, enters the
/// new epoch, and crashes before its last `Commit` of the old epoch
/// reaches anyone. The others hold N but do not know it committed; the old
/// epoch keeps running for them, so its next view commits N again (the
/// same entry: it was committed, so every view-change quorum holds it),
/// and they enter by that commit. Had they stopped taking part in the old
/// epoch on hearing of the new one, neither list could ever commit N.
/// Disk mode: the old primary comes back in the new epoch, and the
/// removed member stops once both members entered.
pub fn old_epoch_commits_the_entry_when_the_new_primary_is_lost(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    let next = sim.replica(0).op() + 1;
    for to in [1, 2] {
        sim.network.hold(0, to);
    }
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS)?;
    // The entry reaches the backups; nothing after it does.
    for to in [1, 2] {
        for bytes in sim.network.take_held(0, to) {
            let now = sim.tick;
            sim.network.deliver(now, 0, to, bytes);
        }
    }
    sim.run_until(PHASE_TICKS, "the backups hold the entry", |s| {
        s.replica(1).op() == next && s.replica(2).op() == next
    })?;
    for to in [1, 2] {
        sim.network.hold(0, to);
    }
    sim.run_until(PHASE_TICKS, "replica 0 commits the entry and enters", |s| {
        s.replica(0).membership().epoch() == 1
    })?;
    sim.crash(0);
    for to in [1, 2] {
        sim.network.take_held(0, to);
    }
    if sim.replica(1).commit_max() >= next {
        return Err(failure(
            &sim,
            "setup: replica 1 learned the entry committed".into(),
        ));
    }
    sim.run_until(PHASE_TICKS, "the old epoch commits the entry again", |s| {
        s.replica(1).membership().epoch() == 1 && s.replica(2).role() == Role::Leaving
    })?;
    sim.restart(0);
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| !s.removed.is_empty())?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    in_epoch(&sim, 1, &[0, 1], &[2])?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// The entry is prepared at op N by a primary cut off at once: no one
/// else gets it, and the next view goes on without it. The origin (a
/// backup, which consented to N) submits again; the new primary, whose
/// log ends before N, proposes it at N again, which the standing consent
/// covers, and the change commits in the new view. The old primary, left
/// out, holds a different entry at N; catching it up across epochs is a
/// later step, so it is not waited for.
pub fn reconfiguration_lost_in_a_view_change_is_proposed_again(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 2)?;
    commit(&mut sim, 0, 2)?;
    let next = sim.replica(0).op() + 1;
    sim.reconfigure(2, 3, &[1, 2], PHASE_TICKS * 2)?;
    sim.run_until(PHASE_TICKS, "the origin consents", |s| {
        s.replica(2).consent() == Some(next)
    })?;
    // Its `Confirmed` is on the way; whatever replica 0 sends from now on,
    // the entry above all, is lost.
    let n = sim.n();
    sim.network.partition(n, &[0], true, false);
    sim.run_until(PHASE_TICKS, "replica 0 prepares the entry", |s| {
        s.replica(0).op() == next
    })?;
    sim.network.partition(n, &[0], true, true);
    change_ends(&mut sim, 2, 3, ChangeResult::Done)?;
    in_epoch(&sim, 1, &[1, 2], &[])?;
    if sim.replica(1).log().get(next).map(|e| e.view) == Some(0) {
        return Err(failure(&sim, "the entry of view 0 reached the others".into()));
    }
    commit(&mut sim, 0, 2)?;
    if sim.replica(0).membership().epoch() != 0 {
        return Err(failure(
            &sim,
            "the cut-off primary entered an epoch it never heard of".into(),
        ));
    }
    // Healed, it hears of epoch 1 and fetches the committed log, which
    // replaces its own entry at N: it enters as leaving, and stops.
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 0 stops", |s| !s.removed.is_empty())?;
    in_epoch(&sim, 1, &[1, 2], &[0])?;
    settle(&mut sim)
}

/// A member of the new list is cut off while the change commits and the
/// new epoch goes on committing. Healed, it hears of the newer epoch,
/// fetches the committed log past the entry, enters the epoch by it, and
/// joins the epoch's running view.
pub fn member_that_missed_the_entry_catches_up(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let n = sim.n();
    sim.network.partition(n, &[2], true, true);
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    for _ in 0..5 {
        commit(&mut sim, 0, 0)?;
    }
    if sim.replica(2).membership().epoch() != 0 {
        return Err(failure(&sim, "setup: replica 2 heard of epoch 1".into()));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 2 enters epoch 1", |s| {
        s.replica(2).membership().epoch() == 1
    })?;
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| !s.removed.is_empty())?;
    in_epoch(&sim, 1, &[0, 1, 2], &[3])?;
    commit(&mut sim, 0, 2)?;
    settle(&mut sim)
}

// ---- Review 6: breaks found in step 6 of the membership design -----------

/// Review break: a `Leaving` replica cannot restart from its disk. Its
/// durable state records the epoch it was left out of, whose list does not
/// hold its slot, so `Replica::restart_from` refuses to build it ("replica
/// index 2 outside a cluster of 2") and the host fails to boot: the
/// replica neither finishes leaving nor serves, and its host never hears
/// `Removed`.
///
/// Three replicas; replica 2 is removed. The link from 1 to 2 is down, so
/// 2 hears `EpochStarted` from 0 only (a quorum of {0, 1} is two) and
/// stays `Leaving`. It crashes and restarts from its disk.
pub fn leaving_replica_restarts_from_disk(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.network.set_link(1, 2, false);
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 2 enters epoch 1, leaving", |s| {
        s.replica(2).role() == Role::Leaving
    })?;
    sim.run_ticks(50)?;
    sim.crash(2);
    if !sim.restart_with_fault(2, |_| {}) {
        return Err(failure(
            &sim,
            "replica 2, leaving, failed to restart from its disk".into(),
        ));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| !s.removed.is_empty())?;
    in_epoch(&sim, 1, &[0, 1], &[2])?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Review break: a replica restarted from its disk in the new epoch has
/// forgotten where the epoch began (`epoch_start` is `(0, 0)` after
/// `restart_from`: it is set only by `enter_epoch`, and the replay skips
/// an entry of an epoch already entered), so its `EpochNotice`s name op 0,
/// which `on_epoch_notice` ignores. A member still in the old epoch that
/// holds the entry then never enters, and the new list wedges with its
/// quorum up and connected.
///
/// Three replicas, 2 removed: epoch 1 is {0, 1}, both needed. Replica 1
/// gets the entry but not the last `Commit` of epoch 0 (link 0 -> 1 down
/// once it holds the entry). Replica 0 commits it (with 2), enters epoch
/// 1, crashes and restarts from its disk; replica 2 dies. Replicas 0 and 1
/// are up and connected, a quorum of the new list; 1 holds the entry with
/// the checksum 0 would name.
pub fn epoch_notice_after_a_restart_names_the_start(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let next = sim.replica(0).op() + 1;
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "replica 1 holds the entry", |s| {
        s.replica(1).op() == next
    })?;
    // Replica 1 hears nothing more of 0, nor of 2 (which, leaving epoch 1,
    // would serve it the committed log).
    for (a, b) in [(0, 1), (1, 0), (2, 1), (1, 2)] {
        sim.network.set_link(a, b, false);
    }
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_ticks(50)?;
    if sim.replica(1).membership().epoch() != 0 {
        return Err(failure(&sim, "replica 1 entered without the last commit".into()));
    }
    sim.crash(0);
    sim.crash(2);
    sim.dead[2] = true;
    sim.restart(0);
    if sim.replica(0).membership().epoch() != 1 {
        return Err(failure(&sim, "replica 0 restarted outside epoch 1".into()));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS * 2, "replica 1 enters epoch 1", |s| {
        s.replica(1).membership().epoch() == 1
    })?;
    commit(&mut sim, 0, 0)?;
    Ok(())
}

/// Review break: an origin whose consent at op N is outstanding and that
/// passes N by installing a checkpoint (state sync) kept the consent for
/// ever (`origin_executed` runs only for ops it executes): it never
/// answered its host (`tick_origin` answers at the deadline only with no
/// consent outstanding), never consented to any other op, and refused
/// every later change as `Busy`. Now a checkpoint of its own epoch at or
/// past N spends the consent (had the change committed at N, the
/// checkpoint would be of the next epoch).
///
/// Replica 2, a backup, asks to remove itself. It consents at N and is
/// cut off at once, so its `Confirmed` is lost. The primary goes on
/// committing commands at N and beyond, with checkpoints every 4 ops, far
/// past 2's log; 2 comes back and syncs a checkpoint past N. Its change,
/// open again, is then proposed at a later op and made (or, had its
/// deadline passed first, answered "no" and never made).
pub fn origin_that_syncs_past_its_consent_answers(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let next = sim.replica(0).op() + 1;
    sim.reconfigure(2, 5, &[0, 1], PHASE_TICKS / 2)?;
    sim.run_until(PHASE_TICKS, "the origin consents", |s| {
        s.replica(2).consent() == Some(next)
    })?;
    let n = sim.n();
    sim.network.partition(n, &[2], true, true);
    for i in 0..24 {
        let c = i % sim.clients.len();
        commit(&mut sim, c, 0)?;
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 2 passes op N", |s| {
        s.replica(2).commit() > next + 8
    })?;
    let answered = sim.run_until(PHASE_TICKS * 2, "the origin answers its host", |s| {
        s.reconfigured(2, 5).is_some()
    });
    if let Some(op) = sim.replica(2).consent().filter(|_| answered.is_err()) {
        return Err(failure(
            &sim,
            format!("the origin, synced past op {op}, still holds its consent at it"),
        ));
    }
    answered?;
    let made = sim.replicas().any(|r| r.membership().epoch() != 0);
    match sim.reconfigured(2, 5) {
        Some(ChangeResult::Done) => {
            sim.run_until(PHASE_TICKS, "replica 2 stops", |s| !s.removed.is_empty())?;
            in_epoch(&sim, 1, &[0, 1], &[2])?;
        }
        Some(_) if made => return Err(failure(&sim, "a change answered no was made".into())),
        _ => {}
    }
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review break (the design's break 8, which step 6 was to answer): a
/// replica that restarts `Repairing` from a superblock of the old epoch
/// never repairs once its peers entered the new one. The gate answers its
/// `RequestEntry` (epoch 0) with an `EpochNotice` only (rule 2 serves no
/// `RequestEntry` across epochs), and a repairing replica ignores the
/// notice (`on_envelope` sends it to `outside_the_gate` before the
/// repairing branch, and `on_epoch_notice` returns while `Repairing`),
/// although it holds the entry the notice names.
///
/// Four replicas, 3 removed: epoch 1 is {0, 1, 2}. Replica 1 gets the
/// entry but not the last `Commit` of epoch 0. 0, 2 and 3 enter. Replica
/// 1 loses power, one of its WAL records rots (op 2, committed long
/// before), and it restarts `Repairing` in epoch 0; then replica 2 fails.
/// Replicas 0 and 1, a quorum of the new list, are up and connected.
pub fn repairing_replica_from_the_old_epoch_repairs(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    commit(&mut sim, 0, 0)?;
    let next = sim.replica(0).op() + 1;
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "replica 1 holds the entry", |s| {
        s.replica(1).op() == next
    })?;
    sim.network.set_link(0, 1, false);
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 2 enters epoch 1", |s| {
        s.replica(2).membership().epoch() == 1
    })?;
    if sim.replica(1).membership().epoch() != 0 {
        return Err(failure(&sim, "replica 1 entered without the last commit".into()));
    }
    sim.crash(1);
    if !sim.rot_wal_entry(1, 2) {
        return Err(failure(&sim, "replica 1's WAL holds no record of op 2".into()));
    }
    sim.restart(1);
    if sim.replica(1).repairing().is_none() {
        return Err(failure(&sim, "replica 1 did not restart repairing".into()));
    }
    sim.crash(2);
    sim.network.heal();
    sim.run_until(PHASE_TICKS * 2, "replica 1 enters epoch 1", |s| {
        s.replica(1).membership().epoch() == 1 && s.replica(1).status() == Status::Normal
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

// ---- Review 7: breaks found in step 7 (catching up across epochs) --------

/// Takes the packets held on `from -> to` (the link stops holding) and
/// keeps those that are a `DoViewChange` for `view`, dropping the rest.
fn held_do_view_changes(sim: &mut Simulator, from: Slot, to: Slot, view: u64) -> Vec<Vec<u8>> {
    let cluster = sim.options.config.wire_cluster();
    sim.network
        .take_held(from, to)
        .into_iter()
        .filter(|bytes| {
            matches!(
                vsr::message::decode(cluster, bytes).map(|d| d.message),
                Ok(vsr::Message::DoViewChange { view: v, .. }) if v == view
            )
        })
        .collect()
}

/// Review break: a replica that takes a chunk of committed entries from a
/// newer epoch (`on_start_epoch`) raises `commit_max` and executes them,
/// yet stays in the old epoch, where it may be the primary of a stale view
/// still gathering DoViewChanges. The log it then chooses (greatest
/// `(log_view, op)` of the quorum) need not hold entries committed in a
/// *later* view of the old epoch, the ones it just took; `start_view_if_ready`
/// checks only that the chosen log is long enough (`dvc.op < commit_max`),
/// and `replace_log_after` overwrites ops it executed. It starts the view
/// with `commit = commit_max` over a log holding other entries there, and a
/// backup that installs that view executes them: two replicas execute
/// different entries at one op.
///
/// Five replicas, `message_entries_max = 2`. Replica 0 (primary of view 0)
/// is cut off and prepares X at ops k..=k+2 alone. Replica 1 enters view 1
/// as its primary, but every DoViewChange to it is held. Replicas 2, 3, 4
/// start view 2, commit c at k..=k+2, remove 0 (epoch 1 = {1, 2, 3, 4}) and
/// enter. Replica 1 hears of epoch 1, takes the first chunk (c at k, k+1),
/// executes it, and stays in epoch 0, still gathering view 1. Then the held
/// DoViewChanges of 0 (log X, op k+2) and 3 arrive: 1 starts view 1 with
/// 0's log and commit k+1, and 0 (in view 1, cut off from the rest)
/// installs it and executes X at k.
pub fn stale_view_change_after_start_epoch_overwrites_executed_ops(
    mut options: Options,
) -> Result<(), Failure> {
    options.config.message_entries_max = 2;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.run_ticks(30)?;
    let k = sim.replica(0).op() + 1;
    if (0..5).any(|r| sim.replica(r).commit() != k - 1) {
        return Err(failure(&sim, "setup: not everyone executed op k - 1".into()));
    }
    // Replica 0 is heard by no one; what it sends to 1 waits.
    for to in [2, 3, 4] {
        sim.network.set_link(0, to, false);
    }
    sim.network.hold(0, 1);
    for c in 0..3 {
        sim.clients[c].home = 0;
        sim.start_request(c)?;
    }
    sim.run_until(PHASE_TICKS, "replica 0 prepares X at k..=k+2", |s| {
        s.replica(0).op() == k + 2
    })?;
    // Replica 1 enters view 1 (its own); the DoViewChanges sent to it wait.
    sim.run_until(PHASE_TICKS, "replica 1 enters view 1", |s| {
        s.replica(1).view() == 1
    })?;
    for from in [2, 3, 4] {
        sim.network.hold(from, 1);
    }
    if sim.replica(1).status() != Status::ViewChange {
        return Err(failure(&sim, "setup: replica 1 started view 1".into()));
    }
    sim.run_until(PHASE_TICKS, "replica 0 joins view 1", |s| {
        s.replica(0).view() == 1
    })?;
    // From now on 0 hears 1 only (it stays in view 1).
    for from in [2, 3, 4] {
        sim.network.set_link(from, 0, false);
    }
    // 2, 3 and 4 go on in view 2 and commit c at k..=k+2.
    sim.run_until(PHASE_TICKS, "replica 2 leads view 2", |s| {
        s.replica(2).view() == 2 && s.replica(2).is_primary()
    })?;
    for c in 0..3 {
        sim.clients[c].home = 2;
        sim.resubmit(c)?;
    }
    sim.run_until(PHASE_TICKS, "c commits at k..=k+2", |s| {
        s.clients.iter().all(|c| c.outstanding.is_none())
    })?;
    sim.reconfigure(2, 1, &[1, 2, 3, 4], PHASE_TICKS)?;
    change_ends(&mut sim, 2, 1, ChangeResult::Done)?;
    let c_k = sim.replica(2).log().get(k).map(|e| e.checksum);
    // Keep 3's DoViewChange for view 1; drop the rest held for 1.
    let from_3 = held_do_view_changes(&mut sim, 3, 1, 1);
    sim.network.hold(3, 1);
    sim.network.take_held(4, 1);
    sim.network.hold(4, 1);
    sim.network.take_held(2, 1);
    if from_3.is_empty() {
        return Err(failure(&sim, "setup: no DoViewChange of 3 held".into()));
    }
    // Replica 1 hears epoch 1 from 2 and fetches its committed log. It
    // used to take it chunk by chunk, executing ops committed in views it
    // never saw while still changing views in epoch 0; now it installs the
    // chunks whole once they reach the entry, and enters epoch 1 at once.
    sim.run_until(PHASE_TICKS, "replica 1 takes the committed log", |s| {
        let one = s.replica(1);
        one.commit() > k || (one.membership().epoch() == 0 && one.commit() >= k)
    })?;
    sim.network.hold(2, 1);
    let one = sim.replica(1);
    if one.membership().epoch() == 0 {
        return Err(failure(
            &sim,
            format!(
                "replica 1 executed op {} of later views while still in epoch 0 ({:?})",
                one.commit(),
                one.status()
            ),
        ));
    }
    // The held DoViewChanges of 0 and 3 for view 1 arrive.
    let from_0 = held_do_view_changes(&mut sim, 0, 1, 1);
    if from_0.is_empty() {
        return Err(failure(&sim, "setup: no DoViewChange of 0 held".into()));
    }
    let now = sim.tick;
    sim.network.deliver(now, 0, 1, from_0[0].clone());
    sim.network.deliver(now, 0, 1, from_3[0].clone());
    sim.run_ticks(1)?;
    sim.network.hold(0, 1);
    sim.run_ticks(50)?;
    let one = sim.replica(1);
    if one.log().get(k).map(|e| e.checksum) != c_k && one.commit() >= k {
        return Err(failure(
            &sim,
            format!(
                "replica 1 executed op {} yet its log holds another entry at op {k} (view {}, {:?})",
                one.commit(),
                one.view(),
                one.status()
            ),
        ));
    }
    sim.network.take_held(0, 1);
    settle(&mut sim)
}

/// Review break: a diverged replica takes `StartEpoch` chunks but executes
/// nothing (`execute_committed` returns at once while diverged), so its
/// log ends up holding the reconfiguration entry *and* entries of the new
/// epoch after it, unexecuted: `check_reconfiguration` ("a reconfiguration
/// entry at op N below the log's head, unexecuted") fails, a panic in a
/// debug build (`Replica::step` checks the invariants). `on_start_epoch`
/// and `request_start_epoch` refuse only `Recovering`, `Repairing` and
/// `Removed`.
///
/// Three replicas, checkpoints every 4 ops; replica 2's host lies from op
/// 9 on and diverges at checkpoint 12. It is cut off; 0 and 1 remove it
/// (epoch 1 = {0, 1}) and commit one more command. Healed, 2 hears of
/// epoch 1, asks, and takes the chunk. (With catching up by checkpoint,
/// it now heals from a replica of epoch 1 and stops.)
pub fn diverged_replica_takes_entries_past_the_reconfiguration(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    lying_replica_2_past_checkpoint_12(&mut sim)?;
    sim.network.set_link(0, 1, true);
    let now = sim.tick;
    sim.network.release(now, 1, 0);
    sim.run_until(PHASE_TICKS, "replica 2 diverges", |s| {
        s.replica(2).status() == Status::Diverged
    })?;
    isolate(&mut sim, 2);
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    let start = sim.replica(0).commit();
    commit(&mut sim, 0, 0)?;
    sim.network.heal();
    // Now a diverged replica neither asks for nor takes `StartEpoch`: it
    // heals by a checkpoint first, which a replica of epoch 1 sends it
    // (the gate serves its `RequestCheckpoint`, and it takes the chunks it
    // asked for), and only then catches up, or enters epoch 1 by the
    // checkpoint itself; either way it leaves, and stops. The replica's
    // invariants, checked after every step, fail the run if it ever holds
    // entries past the reconfiguration entry unexecuted.
    sim.run_until(PHASE_TICKS, "replica 2 heals", |s| {
        s.replica(2).status() != Status::Diverged
    })?;
    if sim.replica(2).membership().epoch() == 0 && sim.replica(2).op() > start {
        return Err(failure(
            &sim,
            "the diverged replica took entries of epoch 1".into(),
        ));
    }
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| !s.removed.is_empty())?;
    in_epoch(&sim, 1, &[0, 1], &[2])?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

// ---- Review 8: breaks found in the whole-install of `StartEpoch` ---------

/// Takes the packets held on `from -> to` (the link goes on holding) and
/// hands them back decoded: bytes, sender's epoch, message. Those the
/// scenario does not pass on (`pass_held`) are lost.
fn held_messages(sim: &mut Simulator, from: Slot, to: Slot) -> Vec<(Vec<u8>, u64, vsr::Message)> {
    let cluster = sim.options.config.wire_cluster();
    let taken = sim.network.take_held(from, to);
    sim.network.hold(from, to);
    taken
        .into_iter()
        .filter_map(|bytes| {
            let d = vsr::message::decode(cluster, &bytes).ok()?;
            Some((bytes, d.sender.epoch, d.message))
        })
        .collect()
}

/// Delivers one packet on `from -> to`, which holds: the link lets go for
/// one tick, then holds again.
fn pass_held(sim: &mut Simulator, from: Slot, to: Slot, bytes: Vec<u8>) -> Result<(), Failure> {
    sim.network.take_held(from, to);
    let now = sim.tick;
    sim.network.deliver(now, from, to, bytes);
    sim.run_ticks(1)?;
    sim.network.hold(from, to);
    Ok(())
}

/// Review break: `epoch_staging` outlives the epoch it was gathered for.
/// It is dropped only when a chunk reaches the next epoch's entry
/// (`on_start_epoch` takes it) or a chunk that does not continue it
/// attaches to the log; entering the epoch by another way
/// (`on_epoch_notice`, the entry's own commit) leaves it in place, and
/// `request_start_epoch` then asks from its end (`s.end().0`) instead of
/// from `commit_min`, for every later epoch. Once every newer replica's log
/// base has passed that op, `serve_start_epoch` answers nothing
/// (`checksum_at(from)` is `None`) and the asker never catches up, though
/// the newer epoch's log holds everything after its `commit_min`.
///
/// Five replicas, checkpoints every 4 ops, `message_entries_max = 1`.
/// After op 9, replica 0 prepares two commands and the entry removing 4 (epoch 1 =
/// {0, 1, 2, 3}) while no acknowledgement reaches it; replica 1 gets the
/// three prepares (its commit stays 3 ops behind) but nothing after. 0, 2
/// and 3 commit the entry and enter epoch 1. Replica 1 hears 0 in epoch 1,
/// asks, takes the first chunk (one command: staged), and then an
/// `EpochNotice`: it holds the entry, enters epoch 1 by it, and keeps the
/// staging. Epoch 1 commits past several checkpoints with 1 taking part;
/// then 1 is cut off while 3 is removed (epoch 2 = {0, 1, 2}) and two more
/// commands commit. Healed, 1 must enter epoch 2.
pub fn stale_epoch_staging_outlives_its_epoch(options: Options) -> Result<(), Failure> {
    let mut options = checkpointing(options);
    options.config.message_entries_max = 1;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    // Up to op 9: a checkpoint at 8, and the next (at 12) keeps the log
    // after 8, so replica 1's commit stays above every base.
    while sim.replica(0).op() < 9 {
        commit(&mut sim, 0, 0)?;
    }
    sim.run_ticks(30)?;
    let before = sim.replica(0).op();
    // No acknowledgement reaches 0: two commands and the entry stay
    // uncommitted while 0 prepares them.
    for from in 1..5 {
        sim.network.hold(from, 0);
    }
    for c in 0..2 {
        sim.clients[c].home = 0;
        sim.start_request(c)?;
    }
    sim.reconfigure(0, 1, &[0, 1, 2, 3], PHASE_TICKS)?;
    let s1 = sim.replica(0).op();
    if s1 != before + 3 {
        return Err(failure(
            &sim,
            format!("setup: replica 0 prepared up to {s1}, not {}", before + 3),
        ));
    }
    sim.run_until(PHASE_TICKS, "replica 1 holds the entry", |s| {
        s.replica(1).op() == s1
    })?;
    for from in [0, 2, 3, 4] {
        sim.network.hold(from, 1);
    }
    if sim.replica(1).commit() + 2 > s1 {
        return Err(failure(
            &sim,
            format!("setup: replica 1 executed {} of {s1}", sim.replica(1).commit()),
        ));
    }
    let now = sim.tick;
    for from in 1..5 {
        sim.network.release(now, from, 0);
    }
    sim.run_until(PHASE_TICKS, "0, 2 and 3 enter epoch 1", |s| {
        [0, 2, 3].iter().all(|&r| s.replica(r).membership().epoch() == 1)
    })?;
    // Replica 1 hears 0 in epoch 1 (no notice): it asks for the committed
    // log, and takes the first chunk.
    let mut asked = false;
    for _ in 0..100 {
        sim.run_ticks(5)?;
        for (bytes, epoch, message) in held_messages(&mut sim, 0, 1) {
            if !asked
                && epoch == 1
                && !matches!(
                    message,
                    vsr::Message::EpochNotice { .. } | vsr::Message::StartEpoch { .. }
                )
            {
                pass_held(&mut sim, 0, 1, bytes)?;
                asked = true;
            }
        }
        if asked {
            break;
        }
    }
    if !asked {
        return Err(failure(&sim, "setup: 0 sent 1 nothing of epoch 1".into()));
    }
    let mut staged = false;
    for _ in 0..100 {
        sim.run_ticks(5)?;
        for (bytes, _, message) in held_messages(&mut sim, 0, 1) {
            if let vsr::Message::StartEpoch { entries, .. } = &message {
                if !staged && entries.last().is_some_and(|e| e.op < s1) {
                    pass_held(&mut sim, 0, 1, bytes)?;
                    staged = true;
                }
            }
        }
        if staged {
            break;
        }
    }
    if !staged {
        return Err(failure(&sim, "setup: no first chunk for replica 1".into()));
    }
    sim.run_ticks(5)?;
    if sim.replica(1).membership().epoch() != 0 {
        return Err(failure(
            &sim,
            "setup: the first chunk took replica 1 to epoch 1".into(),
        ));
    }
    // Further chunks are lost; a notice of epoch 1 comes.
    let mut entered = false;
    for _ in 0..200 {
        sim.run_ticks(5)?;
        for from in [0, 2, 3, 4] {
            for (bytes, epoch, message) in held_messages(&mut sim, from, 1) {
                if !entered && epoch == 1 && matches!(message, vsr::Message::EpochNotice { .. }) {
                    pass_held(&mut sim, from, 1, bytes)?;
                    entered = true;
                }
            }
        }
        if entered {
            break;
        }
    }
    sim.run_ticks(5)?;
    if sim.replica(1).membership().epoch() != 1 {
        return Err(failure(
            &sim,
            "setup: replica 1 did not enter epoch 1 by the notice".into(),
        ));
    }
    for from in [0, 2, 3, 4] {
        sim.network.take_held(from, 1);
    }
    sim.heal();
    sim.run_until(PHASE_TICKS, "replica 4 stops", |s| !s.removed.is_empty())?;
    for _ in 0..16 {
        commit(&mut sim, 0, 0)?;
    }
    sim.run_ticks(50)?;
    isolate(&mut sim, 1);
    sim.reconfigure(0, 2, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    for _ in 0..2 {
        commit(&mut sim, 0, 0)?;
    }
    let behind = sim.replica(1).commit();
    let bases: Vec<Op> = [0, 2].iter().map(|&r| sim.replica(r).log().base()).collect();
    if bases.iter().all(|&b| b > behind) {
        return Err(failure(
            &sim,
            format!("setup: every log's base {bases:?} passed replica 1's commit {behind}"),
        ));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 1 enters epoch 2", |s| {
        s.replica(1).membership().epoch() == 2
    })
    .map_err(|f| {
        failure(
            &sim,
            format!(
                "{}; replica 1 executed {behind}, bases of 0 and 2: {bases:?}, the chunk it staged in epoch 0 ends at op {}",
                f.reason,
                before + 1
            ),
        )
    })?;
    settle(&mut sim)
}

// ---- Step 7: catching up across epochs by checkpoint ---------------------

/// Origin `origin` asks to change the list to `ids`; once it consented and
/// the primary prepared the entry, `origin` is cut off, before the entry
/// (or anything after it) reaches it.
fn origin_cut_off_at_its_entry(
    sim: &mut Simulator,
    origin: Slot,
    id: u64,
    ids: &[vsr::MemberId],
) -> Result<Op, Failure> {
    let next = sim.replica(0).op() + 1;
    sim.reconfigure(origin, id, ids, PHASE_TICKS * 4)?;
    sim.run_until(PHASE_TICKS, "the origin consents", |s| {
        s.replica(origin).consent() == Some(next)
    })?;
    // Its `Confirmed` is on the way to the primary; what the primary sends
    // it from now on is lost.
    sim.network.hold(0, origin);
    sim.run_until(PHASE_TICKS, "replica 0 prepares the entry", |s| {
        s.replica(0).op() == next
    })?;
    isolate(sim, origin);
    sim.network.take_held(0, origin);
    Ok(next)
}

/// Commits `count` commands through replica `home`, every client in turn.
fn commit_many(sim: &mut Simulator, count: usize, home: Slot) -> Result<(), Failure> {
    for i in 0..count {
        let c = i % sim.clients.len();
        commit(sim, c, home)?;
    }
    Ok(())
}

/// Checks that replica `r`, still in epoch `epoch`, is behind the log base
/// of every replica in `ahead`: no one can send it the committed log from
/// what it executed.
fn behind_every_log_base(sim: &Simulator, r: Slot, epoch: u64, ahead: &[Slot]) -> Result<(), Failure> {
    let behind = sim.replica(r).commit();
    if sim.replica(r).membership().epoch() != epoch {
        return Err(failure(sim, format!("setup: replica {r} left epoch {epoch}")));
    }
    if let Some(&a) = ahead.iter().find(|&&a| sim.replica(a).log().base() <= behind) {
        return Err(failure(
            sim,
            format!(
                "setup: replica {a}'s log base {} is not past replica {r}'s commit {behind}",
                sim.replica(a).log().base()
            ),
        ));
    }
    Ok(())
}

/// A member of the new list, the change's origin, is cut off at the
/// entry, while the others commit the change and go on past several
/// checkpoints: every log it could fetch the epoch's start from now begins
/// after what it executed (design 2.7, pitfall 2). Healed, it asks for the
/// epoch's start and is sent the newest vouched checkpoint instead (of the
/// new epoch, with its membership), installs it, enters the epoch by it
/// and joins the epoch's running view. The origin learns its change was
/// made from the checkpoint's membership (design 2.4, step 8: `Done`).
///
/// Four replicas, checkpoints every 4 ops; replica 2 asks to remove 3.
pub fn member_cut_off_past_the_log_base_enters_by_checkpoint(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let installed = sim.replica(2).stats().checkpoints_installed;
    origin_cut_off_at_its_entry(&mut sim, 2, 1, &[0, 1, 2])?;
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| !s.removed.is_empty())?;
    commit_many(&mut sim, 24, 0)?;
    behind_every_log_base(&sim, 2, 0, &[0, 1])?;
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 2 enters epoch 1", |s| {
        s.replica(2).membership().epoch() == 1
    })?;
    if sim.replica(2).stats().checkpoints_installed == installed {
        return Err(failure(
            &sim,
            "setup: replica 2 entered without a checkpoint".into(),
        ));
    }
    change_ends(&mut sim, 2, 1, ChangeResult::Done)?;
    in_epoch(&sim, 1, &[0, 1, 2], &[3])?;
    commit(&mut sim, 0, 2)?;
    settle(&mut sim)
}

/// The member cut off across the change is the one it removes: healed,
/// behind every log's base, it installs a checkpoint of the new epoch
/// whose list leaves it out, becomes `Leaving` there and stops once a
/// quorum of the new list says it entered (design 2.8).
pub fn removed_member_cut_off_past_the_log_base_stops(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let installed = sim.replica(3).stats().checkpoints_installed;
    isolate(&mut sim, 3);
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    commit_many(&mut sim, 24, 0)?;
    behind_every_log_base(&sim, 3, 0, &[0, 1, 2])?;
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| !s.removed.is_empty())?;
    if sim.replica(3).stats().checkpoints_installed == installed {
        return Err(failure(&sim, "setup: replica 3 left without a checkpoint".into()));
    }
    in_epoch(&sim, 1, &[0, 1, 2], &[3])?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Two changes while a member is cut off: it jumps from epoch 0 to epoch
/// 2 by one checkpoint, merging the incarnations epoch 2 records. It was
/// the origin of the first change, whose epoch it jumped over: it cannot
/// tell from epoch 2's list whether its change was the one that made
/// epoch 1, and reports `Unknown` (design 2.4, step 8).
///
/// Five replicas; replica 4 asks to remove 3 (epoch 1 = {0, 1, 2, 4})
/// and is cut off at the entry; then 0 removes 1 (epoch 2 = {0, 2, 4}),
/// and 0 and 2 commit past several checkpoints.
pub fn origin_that_jumps_over_its_epoch_by_checkpoint_reports_unknown(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    origin_cut_off_at_its_entry(&mut sim, 4, 1, &[0, 1, 2, 4])?;
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| !s.removed.is_empty())?;
    commit_many(&mut sim, 4, 0)?;
    sim.reconfigure(0, 2, &[0, 2, 4], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 1 stops", |s| s.removed.len() == 2)?;
    commit_many(&mut sim, 24, 0)?;
    behind_every_log_base(&sim, 4, 0, &[0, 2])?;
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 4 enters epoch 2", |s| {
        s.replica(4).membership().epoch() == 2
    })?;
    change_ends(&mut sim, 4, 1, ChangeResult::Unknown)?;
    in_epoch(&sim, 1, &[], &[3])?;
    in_epoch(&sim, 2, &[0, 2, 4], &[1])?;
    commit(&mut sim, 0, 4)?;
    settle(&mut sim)
}

/// Every replica forms the same checkpoint at an op just before a change's
/// entry, however late its host answers the snapshot: the checkpoint
/// records the membership in force right after its op executed, captured
/// then (design 2.9), never when the snapshot arrives, by which time the
/// replica may have executed the entry and entered the next epoch. Hosts
/// answer snapshots now or up to 200 ticks later, at random; each change's
/// entry follows a checkpoint's op at once, and the next checkpoint waits
/// until every late answer came (a later checkpoint formed first would
/// make the replica drop it).
///
/// Five replicas, checkpoints every 4 ops: 4 is removed, then 3, then 2.
pub fn checkpoint_before_an_entry_records_the_old_list(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    sim.options.snapshot_delay_max = 200;
    let changes: [&[vsr::MemberId]; 3] = [&[0, 1, 2, 3], &[0, 1, 2], &[0, 1]];
    for (id, ids) in (1..).zip(changes) {
        // The next op is a checkpoint's; the entry comes right after it.
        while !(sim.replica(0).op() + 1).is_multiple_of(4) {
            commit(&mut sim, 0, 0)?;
        }
        commit(&mut sim, 0, 0)?;
        let entry = sim.replica(0).op() + 1;
        sim.reconfigure(0, id, ids, PHASE_TICKS)?;
        change_ends(&mut sim, 0, id, ChangeResult::Done)?;
        let at = sim.replica(0).log().get(entry).and_then(|e| e.reconfiguration());
        if at.is_none_or(|t| t.epoch() != id) {
            return Err(failure(
                &sim,
                format!("setup: the entry of epoch {id} is not at op {entry}"),
            ));
        }
        sim.run_ticks(250)?;
    }
    sim.options.snapshot_delay_max = 0;
    commit_many(&mut sim, 8, 0)?;
    sim.run_until(PHASE_TICKS, "replicas 2, 3 and 4 stop", |s| s.removed.len() == 3)?;
    in_epoch(&sim, 3, &[0, 1], &[2])?;
    settle(&mut sim)
}

// ---- Learners: changes that add members (design step 8) ------------------

/// Member id of the `k`-th node a change adds (the genesis ids are the
/// slots 0 to n - 1).
pub const NEW: MemberId = 100;

/// Checks that nodes `members` run members of `epoch`.
fn members_of(sim: &Simulator, epoch: u64, members: &[Slot]) -> Result<(), Failure> {
    for &r in members {
        let ok = sim
            .running(r as usize)
            .is_some_and(|x| x.membership().epoch() == epoch && x.role() == Role::Member);
        if !ok {
            return Err(failure(sim, format!("node {r} is not a member of epoch {epoch}")));
        }
    }
    Ok(())
}

/// Grows three members to four while clients commit: the new node learns
/// from the primary (the view's log, then its prepares), the change is
/// proposed once it holds the commit number, and all four enter epoch 1.
/// Afterwards the group commits with any one of the four down, the new
/// member's state included.
pub fn grow_three_to_four_under_load(mut options: Options) -> Result<(), Failure> {
    options.request_probability = 0.3;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.load = true;
    sim.run_ticks(200)?;
    let ids = [0, 1, 2, NEW];
    let learners = sim.start_learners(0, &ids)?;
    if learners != [3] || sim.replica(3).role() != Role::Learner {
        return Err(failure(&sim, format!("setup: learners {learners:?}")));
    }
    sim.reconfigure(1, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 1, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "all four enter epoch 1", |s| {
        (0..4).all(|r| s.running(r).is_some_and(|x| x.membership().epoch() == 1))
    })?;
    members_of(&sim, 1, &[0, 1, 2, 3])?;
    sim.load = false;
    sim.run_until(PHASE_TICKS, "the clients finish", |s| {
        s.clients.iter().all(|c| c.outstanding.is_none())
    })?;
    // The new member counts: with two of the old three down, the other
    // and the new one are not a quorum of four, but with one down they are.
    sim.crash(2);
    commit(&mut sim, 0, 0)?;
    if sim.options.amnesia {
        sim.restart_amnesiac(2);
    } else {
        sim.restart(2);
    }
    settle(&mut sim)
}

/// A member that is gone for good is replaced by a new node: the change
/// needs the survivors and the learner, a quorum of the new list, and the
/// group then tolerates a further failure again.
pub fn replace_a_member_that_never_returns(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.crash(2);
    sim.dead[2] = true;
    commit(&mut sim, 0, 1)?;
    let ids = [0, 1, NEW];
    let learners = sim.start_learners(0, &ids)?;
    sim.reconfigure(0, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    let new = learners[0];
    sim.run_until(PHASE_TICKS, "the new member enters", |s| {
        s.running(new as usize).is_some_and(|x| x.role() == Role::Member)
    })?;
    members_of(&sim, 1, &[0, 1, new])?;
    // A further failure: the primary.
    sim.crash(0);
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// A learner that never answers (its node is not running) is never
/// counted: the primary withdraws the change at its deadline, the origin
/// says `Unreachable`, and nothing changed.
pub fn change_with_a_silent_learner_is_withdrawn(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    let ids = [0, 1, 2, NEW];
    let learners = sim.start_learners(0, &ids)?;
    sim.crash(learners[0]);
    sim.dead[learners[0] as usize] = true;
    sim.reconfigure(0, 1, &ids, 200)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Unreachable)?;
    if sim.replicas().any(|r| r.membership().epoch() != 0) {
        return Err(failure(&sim, "a withdrawn change was made".into()));
    }
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// The design's break 1: a learner restarts without its state after the
/// primary proposed the change with its life, and the change commits
/// without it. The new life must not take part as the one the entry
/// records (an earlier life may have acknowledged in the new epoch at
/// incarnation 0): it catches up into the epoch and recovers in full
/// first, taking incarnation 1 at a quorum. A crash during that recovery
/// does not excuse it: restarted from its disk (whose store keeps the
/// life it was created for), it recovers again.
pub fn learner_restarted_after_the_proposal_recovers_in_full(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let new = learner_crashed_after_the_proposal(&mut sim, 1, &[0, 1, 2, NEW])?;
    sim.restart_amnesiac(new);
    if sim.replica(new).role() != Role::Learner {
        return Err(failure(
            &sim,
            "setup: the node did not restart as a learner".into(),
        ));
    }
    sim.run_until(PHASE_TICKS, "the new life enters epoch 1, recovering", |s| {
        s.running(new as usize)
            .is_some_and(|x| x.membership().epoch() == 1 && x.is_recovering())
    })?;
    sim.crash(new);
    if sim.options.amnesia {
        sim.restart_amnesiac(new);
    } else {
        sim.restart(new);
    }
    if !sim.replica(new).is_recovering() || sim.replica(new).role() != Role::Member {
        return Err(failure(&sim, "the restarted member skipped its recovery".into()));
    }
    sim.run_until(PHASE_TICKS, "the new life recovers into epoch 1", |s| {
        s.running(new as usize).is_some_and(|x| {
            x.membership().epoch() == 1 && x.role() == Role::Member && x.status() == Status::Normal
        })
    })?;
    let incarnation = sim.replica(0).durable_state().incarnations[sim.nodes[new as usize].slot as usize];
    if incarnation == 0 {
        return Err(failure(&sim, "the new life took part at incarnation 0".into()));
    }
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// The primary that admitted the change crashes while its learner follows
/// it, before the proposal: the new primary does not hold the change, the
/// origin submits it again, and the new primary teaches the learner from
/// its own view, which the learner fetches whole.
pub fn learner_follows_a_new_primary(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let ids = [0, 1, 2, NEW];
    let learners = sim.start_learners(2, &ids)?;
    let new = learners[0];
    sim.reconfigure(2, 1, &ids, PHASE_TICKS * 2)?;
    sim.run_until(PHASE_TICKS, "primary 0 teaches the learner", |s| {
        s.replica(new).learn_target().is_some()
    })?;
    // No consent reaches primary 0.
    sim.network.set_link(2, 0, false);
    sim.run_until(PHASE_TICKS, "the learner follows primary 0", |s| {
        s.replica(new).status() == Status::Normal
    })?;
    sim.run_ticks(50)?;
    if sim.replicas().any(|r| r.membership().epoch() != 0) {
        return Err(failure(&sim, "setup: the change was made without consent".into()));
    }
    sim.crash(0);
    sim.network.set_link(2, 0, true);
    change_ends(&mut sim, 2, 1, ChangeResult::Done)?;
    if sim.replica(new).view() == 0 && sim.replica(new).membership().epoch() == 0 {
        return Err(failure(&sim, "the learner never left view 0".into()));
    }
    members_of(&sim, 1, &[1, 2, new])?;
    sim.restart(0);
    settle(&mut sim)
}

/// A learner's acknowledgements count for nothing: the primary, cut off
/// from both backups with only its learner still reachable, commits
/// nothing, and the backups' next view (which never heard of the
/// learner's log) loses nothing. Counted, the learner's acknowledgement
/// and the primary's own would make two of three, a "quorum" no
/// view-change quorum intersects.
pub fn learner_acknowledgements_count_for_nothing(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let ids = [0, 1, 2, NEW];
    let learners = sim.start_learners(1, &ids)?;
    let new = learners[0];
    sim.reconfigure(1, 1, &ids, PHASE_TICKS * 4)?;
    sim.run_until(PHASE_TICKS, "primary 0 teaches the learner", |s| {
        s.replica(new).learn_target().is_some()
    })?;
    // No consent reaches the primary: the change stays admitted.
    sim.network.set_link(1, 0, false);
    sim.run_until(PHASE_TICKS, "the learner follows primary 0", |s| {
        s.replica(new).status() == Status::Normal
    })?;
    // The backups are cut off from the primary and its learner.
    let n = sim.n();
    sim.network.partition(n, &[1, 2], true, true);
    let committed = sim.checker.committed();
    sim.clients[0].home = 0;
    sim.start_request(0)?;
    sim.run_ticks(40)?;
    if sim.checker.committed() > committed {
        return Err(failure(
            &sim,
            "the primary committed with its learner alone".into(),
        ));
    }
    // The backups move on without the primary and commit through 1.
    sim.crash(0);
    sim.network.heal();
    sim.network.partition(n, &[new], true, true);
    sim.clients[1].home = 1;
    sim.start_request(1)?;
    sim.run_until(PHASE_TICKS, "the backups commit in a new view", |s| {
        s.clients[1].outstanding.is_none()
    })?;
    sim.restart(0);
    settle(&mut sim)
}

// ---- Review 9: breaks found in learners and catching up by checkpoint ----
//
// Breaks 1 to 4 share one cause: a replica whose list is newer than the
// ops it has executed. `on_learn` gives a learner its primary's list at
// once, `Replica::recovering_in` gives an amnesiac member the newest list
// before it holds any log, and a diverged member enters the next epoch by
// its commit while it executes nothing. Such a replica then (a) captures
// the checkpoints of older epochs' ops with its newer list
// (`checkpoint_membership` reads the live list outside a restart's
// replay), so its digest differs from the quorum's and the simulator
// fails the run as a divergence of a correct host; and (b) refuses any
// checkpoint of an older epoch (`install_checkpoint`: "of an epoch this
// replica has left"), though that checkpoint is ahead of what it
// executed, so while the newest vouched checkpoint is one taken before
// the epoch's entry (the group is idle since the change) it never catches
// up, recovers or heals.

/// Commits through `home` until the log's head is at least `op`.
fn commit_until(sim: &mut Simulator, op: Op, home: Slot) -> Result<(), Failure> {
    while sim.replica(home).op() < op {
        commit(sim, 0, home)?;
    }
    Ok(())
}

/// Grows {0, 1, 2} by one learner (epoch 1, its entry right after
/// checkpoint op `before`), and starts the learner of a second change
/// that adds one more (epoch 2). Returns the second learner's node.
fn second_learner_after_checkpoint(sim: &mut Simulator, before: Op) -> Result<Slot, Failure> {
    register_all(sim, 0)?;
    commit_until(sim, before, 0)?;
    let ids = [0, 1, 2, NEW];
    sim.start_learners(0, &ids)?;
    sim.reconfigure(0, 1, &ids, PHASE_TICKS)?;
    change_ends(sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "all four enter epoch 1", |s| {
        (0..4).all(|r| s.running(r).is_some_and(|x| x.membership().epoch() == 1))
    })?;
    let entry = sim.replica(0).op();
    if sim.replica(0).checkpoint().map(|c| c.op) != Some(before) || entry != before + 1 {
        return Err(failure(
            sim,
            format!("setup: epoch 1's entry is not right after checkpoint {before}"),
        ));
    }
    let ids = [0, 1, 2, NEW, NEW + 1];
    let learners = sim.start_learners(0, &ids)?;
    sim.reconfigure(0, 2, &ids, PHASE_TICKS)?;
    Ok(learners[0])
}

/// Review 9, break 1 (a correct replica's checkpoint digest differs from
/// the quorum's). The learner of a second change is taught by a primary
/// whose log still begins at op 0: `on_learn` sets the learner's list to
/// epoch 1's at once, the learner fetches the view's log whole and
/// executes it from op 1, and at op 4, an op of epoch 0, it captures
/// checkpoint 4 with epoch 1's list where every member recorded none. The
/// primary's next vouch for (4, digest) makes it diverge: the simulator
/// fails the run ("replica 4's checkpoint digest at op 4 differs from the
/// quorum's").
///
/// Three replicas, checkpoints every 4 ops: a learner grows them to four
/// at op 5 (epoch 1), then a second learner is started for epoch 2.
pub fn second_learner_checkpoints_older_epochs_with_its_list(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    let new = second_learner_after_checkpoint(&mut sim, 4)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "all five enter epoch 2", |s| {
        (0..5).all(|r| s.running(r).is_some_and(|x| x.membership().epoch() == 2))
    })?;
    members_of(&sim, 2, &[0, 1, 2, 3, new])?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 2 (liveness: a change that cannot finish while every
/// replica is up and connected). As break 1, but epoch 1's entry follows
/// checkpoint 8, so the primary's log begins at op 4 and its newest
/// vouched checkpoint, 8, is of epoch 0. The second learner, whose list
/// `on_learn` made epoch 1's, asks for the view's log from op 0; the
/// primary sends checkpoint 8 first, which the learner verifies and then
/// refuses in `install_checkpoint` ("of an epoch this replica has left"),
/// and a `StartView` from op 4, which attaches to nothing it holds. It
/// asks again for ever, never acknowledges, and the change is withdrawn
/// at its deadline (`NoQuorum`). Until the group commits past checkpoint
/// 12 nothing changes: a change adding a member to an idle group after
/// an earlier change is refused every time.
pub fn second_learner_refuses_the_primarys_older_epoch_checkpoint(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    let new = second_learner_after_checkpoint(&mut sim, 8)?;
    sim.run_until(PHASE_TICKS / 2, "the second learner follows the primary", |s| {
        s.replica(new).status() == Status::Normal
    })?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "all five enter epoch 2", |s| {
        (0..5).all(|r| s.running(r).is_some_and(|x| x.membership().epoch() == 2))
    })?;
    members_of(&sim, 2, &[0, 1, 2, 3, new])?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 3 (a correct replica diverges, or never recovers). A
/// member restarted without its state after a change recovers in the
/// newest list its host knows (`Replica::recovering_in`, epoch 1), with
/// an empty log. With `before = 4` (epoch 1's entry at op 5, the log
/// still begins at op 0) it fetches the whole log, executes op 4 under
/// epoch 1's list and forms a checkpoint whose digest differs from the
/// quorum's: the run fails as a divergence. With `before = 8` (log base
/// 4, newest vouched checkpoint 8, of epoch 0) it is sent checkpoint 8,
/// refuses it as of an epoch it left, and stays `Recovering` for as long
/// as the group is idle. Nothing of learners is needed: any memory-mode
/// restart soon after a change.
///
/// Four replicas, checkpoints every 4 ops; 3 is removed (epoch 1 =
/// {0, 1, 2}), then 1 restarts without its state.
pub fn amnesiac_member_recovers_in_a_later_epoch(mut options: Options, before: Op) -> Result<(), Failure> {
    options.amnesia = true;
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit_until(&mut sim, before, 0)?;
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| !s.removed.is_empty())?;
    if sim.replica(0).op() != before + 1 {
        return Err(failure(
            &sim,
            format!("setup: epoch 1's entry is not at op {}", before + 1),
        ));
    }
    sim.crash(1);
    sim.restart_amnesiac(1);
    sim.run_until(PHASE_TICKS, "replica 1 recovers", |s| {
        s.running(1).is_some_and(|x| x.status() == Status::Normal)
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 4 (liveness: a diverged member never heals). Replica
/// 2's host lies at checkpoint 8; the entry of a change that keeps 2
/// (epoch 1 = {0, 1, 2}) follows at op 9, and 2 learns the vouch for 8
/// only with the commit of 9: it diverges at op 8 and enters epoch 1 by
/// its commit (design break 10). It then asks its peers for the vouched
/// checkpoint 8, which they hold and send, and refuses it in
/// `install_checkpoint` as of epoch 0, which it left: it asks again for
/// ever, and heals only once the group has committed far enough that its
/// peers no longer hold checkpoint 8.
///
/// Four replicas, checkpoints every 4 ops; 3 is removed.
pub fn diverged_member_heals_after_entering_the_next_epoch(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit_until(&mut sim, 7, 0)?;
    sim.options.lying_host = Some(2);
    commit_until(&mut sim, 8, 0)?;
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "replica 2 diverges", |s| {
        s.replica(2).status() == Status::Diverged
    })?;
    sim.options.lying_host = None;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 2 enters epoch 1", |s| {
        s.replica(2).membership().epoch() == 1
    })?;
    if sim.divergences.last().map(|d| d.1) != Some(8) || sim.replica(2).status() != Status::Diverged {
        return Err(failure(
            &sim,
            "setup: replica 2 did not enter diverged at op 8".into(),
        ));
    }
    sim.run_until(PHASE_TICKS, "replica 2 heals", |s| {
        s.replica(2).status() != Status::Diverged
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 5 (liveness: a new member that never comes back while
/// a quorum is up and connected). A learner of the *second* change
/// (`joined` 2) restarts without its state after the primary proposed the
/// entry with its life, and the change commits. Its host starts it again
/// as a learner, whose list is the genesis placeholder (epoch 0) until a
/// `Learn` comes; none will (the change is made). It hears epoch 2's
/// members (it is one) and asks them for the epoch's start, but its
/// header says epoch 0 and `joined` 2, which `message::decode` refuses as
/// crafted (`joined > epoch + 1`): every request is dropped, and it never
/// enters, recovers or counts. Epoch 2 has five members of which one
/// never returns, until another change removes it. (Design 2.5 and the
/// existing `learner_restarted_after_the_proposal_recovers_in_full` cover
/// only `joined` 1, where the placeholder's epoch is `joined - 1`.)
///
/// Three replicas grow to four (epoch 1), then to five (epoch 2).
pub fn learner_of_a_second_change_restarted_after_the_proposal_returns(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let ids = [0, 1, 2, NEW];
    sim.start_learners(0, &ids)?;
    sim.reconfigure(0, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "all four enter epoch 1", |s| {
        (0..4).all(|r| s.running(r).is_some_and(|x| x.membership().epoch() == 1))
    })?;
    commit(&mut sim, 0, 0)?;
    let new = learner_crashed_after_the_proposal(&mut sim, 2, &[0, 1, 2, NEW, NEW + 1])?;
    sim.restart_amnesiac(new);
    if sim.replica(new).role() != Role::Learner {
        return Err(failure(
            &sim,
            "setup: the node did not restart as a learner".into(),
        ));
    }
    sim.run_until(PHASE_TICKS, "the new life recovers into epoch 2", |s| {
        s.running(new as usize).is_some_and(|x| {
            x.membership().epoch() == 2 && x.role() == Role::Member && x.status() == Status::Normal
        })
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 6 (liveness: a member wedged in the old epoch for
/// ever, every replica up and connected). A backup that got the old
/// epoch's last `Commit { commit: N }` but not the `Prepare` of the entry
/// at `N` has `commit_max = N` and a log ending at `N - 1`. Nobody of
/// epoch 0 is left to repair it from, so it fetches the epoch's start: the
/// `StartEpoch` chunk from `N - 1` holds the entry, and
/// `install_to_epoch_start` finds that its log's checksum at `N` (none: it
/// does not hold `N`) differs from the entry's, at an op at or below its
/// commit number, and refuses the chunk as "a committed entry of ours
/// differs". It asks again for ever. (A learner that lost the entry's
/// prepare but heard the last commit, which the primary also sends its
/// learners, wedges the same way: found by a sweep of
/// `grow_three_to_four_under_load` over a lossy network, seed 10.)
///
/// Four replicas, 3 removed; the entry's prepare to replica 1 is lost and
/// the last commit of epoch 0 reaches it.
pub fn member_that_missed_the_entry_but_heard_its_commit_enters(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let entry = sim.replica(0).op() + 1;
    sim.network.hold(0, 1);
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_ticks(10)?;
    let cluster = sim.options.config.wire_cluster();
    let commits: Vec<Vec<u8>> = sim
        .network
        .take_held(0, 1)
        .into_iter()
        .filter(|bytes| {
            matches!(
                vsr::message::decode(cluster, bytes),
                Ok(d) if d.sender.epoch == 0
                    && matches!(d.message, vsr::Message::Commit { commit, .. } if commit == entry)
            )
        })
        .collect();
    if commits.is_empty() {
        return Err(failure(&sim, "setup: no last commit of epoch 0 held".into()));
    }
    let now = sim.tick;
    for bytes in commits {
        sim.network.deliver(now, 0, 1, bytes);
    }
    sim.run_until(PHASE_TICKS, "replica 1 hears the commit", |s| {
        s.replica(1).commit_max() == entry
    })?;
    if sim.replica(1).op() != entry - 1 {
        return Err(failure(&sim, "setup: replica 1 holds the entry".into()));
    }
    sim.run_until(PHASE_TICKS, "replica 1 enters epoch 1", |s| {
        s.replica(1).membership().epoch() == 1
    })?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Review 9, break 7 (a boot that fails: disk mode). A member that a
/// change added and a later change removes restarts from its disk while
/// it is `Leaving` (it must go on serving the epoch's start until a quorum
/// of the new list says it entered, design 2.8). `Replica::restart` looks
/// its slot up in the durable list, which leaves it out, and falls back
/// on the genesis "until learners exist": the genesis does not hold its
/// slot either, so the boot fails ("replica index 3 outside a cluster of
/// 3"); the simulator panics. (Found by a random sweep of changes under
/// faults, as a `Removed` member restarted the same way.)
///
/// Three replicas grow to four (epoch 1, node 3 at slot 3), then node 3
/// is removed (epoch 2); the backups' `EpochStarted` to it are held, so it
/// stays `Leaving`; it crashes and restarts from its disk.
pub fn added_member_restarts_leaving(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    let ids = [0, 1, 2, NEW];
    let new = sim.start_learners(0, &ids)?[0];
    sim.reconfigure(0, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "the new member enters", |s| {
        s.running(new as usize).is_some_and(|x| x.role() == Role::Member)
    })?;
    commit(&mut sim, 0, 0)?;
    sim.network.hold(1, new);
    sim.network.hold(2, new);
    sim.reconfigure(0, 2, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "the added member leaves", |s| {
        s.replica(new).role() == Role::Leaving
    })?;
    sim.crash(new);
    sim.restart(new);
    sim.network.take_held(1, new);
    sim.network.take_held(2, new);
    sim.run_until(PHASE_TICKS, "the added member stops", |s| {
        s.running(new as usize).is_some_and(|x| x.role() == Role::Removed)
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 8 (a replica restarted from its disk impersonates the
/// member that took its slot). `Replica::restart` names the replica by
/// the member its durable list holds at its slot, whatever that member's
/// id: for a replica left out of its epoch whose slot a later change gave
/// to a new member, that is the new member. Restarted `Leaving`, it then
/// sends as `(slot 3, id 100, joined 2)`: the others' gates take it for
/// the listed member (its crash vector is merged, its clock reading
/// counts in the cluster's clock), and its own invariants fail at once
/// ("role Leaving for slot 3 in its list").
///
/// Four replicas; 3 is cut off while 0 removes it (epoch 1 = {0, 1, 2})
/// and adds a new node, which takes slot 3 (epoch 2). Healed towards 0
/// and the new member only, 3 catches up to epoch 2, where it is
/// `Leaving` (two `EpochStarted` of the three it needs), crashes and
/// restarts from its disk.
pub fn leaving_replica_restarts_as_its_slots_new_owner(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    isolate(&mut sim, 3);
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    commit(&mut sim, 0, 0)?;
    let ids = [0, 1, 2, NEW];
    let new = sim.start_learners(0, &ids)?[0];
    if sim.nodes[new as usize].slot != 3 {
        return Err(failure(&sim, "setup: the new member is not at slot 3".into()));
    }
    sim.reconfigure(0, 2, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    commit(&mut sim, 0, 0)?;
    for peer in [0, new] {
        sim.network.set_link(3, peer, true);
        sim.network.set_link(peer, 3, true);
    }
    // Since, a leaving replica stops on the first message of the epoch
    // after the one it left, so it may never reach epoch 2 by the log
    // (by a checkpoint of epoch 2 it still can): whichever it reached, its
    // restart must be itself.
    sim.run_until(PHASE_TICKS, "replica 3 leaves", |s| {
        s.replica(3).role() != Role::Member
    })?;
    sim.crash(3);
    sim.restart(3);
    if sim.replica(3).member_id() != 3 {
        return Err(failure(
            &sim,
            format!("replica 3 restarted as member {}", sim.replica(3).member_id()),
        ));
    }
    sim.heal();
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| {
        s.replica(3).role() == Role::Removed
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 9 (liveness: a leaving replica never stops). A replica
/// that leaves in an epoch where its slot now belongs to a new member asks
/// the epoch's members whether they entered (`Leaving`) by `broadcast`,
/// which sends to every slot of the list but its own: the new owner of
/// its slot is never asked. Members also say `EpochStarted` unasked on
/// entering, but only then, and this replica was then in an older epoch.
/// When the other members alone are not a quorum of the list, it never
/// hears a quorum and stays `Leaving` for ever, though every replica is up
/// and connected. (Found by a random sweep of changes under faults.)
///
/// Three replicas; 2 is cut off while 0 removes it (epoch 1 = {0, 1}) and
/// then replaces 1 by a new node, which takes slot 2 (epoch 2 = {0,
/// new}). Healed, 2 catches up into epoch 2 as `Leaving`; only 0 is asked.
pub fn leaving_replica_asks_its_slots_new_owner(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    isolate(&mut sim, 2);
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    commit(&mut sim, 0, 0)?;
    let ids = [0, NEW];
    let new = sim.start_learners(0, &ids)?[0];
    if sim.nodes[new as usize].slot != 2 {
        return Err(failure(&sim, "setup: the new member is not at slot 2".into()));
    }
    sim.reconfigure(0, 2, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 1 stops", |s| {
        s.replica(1).role() == Role::Removed
    })?;
    commit(&mut sim, 0, 0)?;
    sim.network.heal();
    // Since fixed another way: it stops on the first message of epoch 2
    // it hears once leaving epoch 1 (that epoch's successor began), so it
    // need not reach epoch 2 at all.
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| {
        s.replica(2).role() == Role::Removed
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 10 (liveness: a leaving replica never stops). A
/// `Leaving` replica catches up across epochs like any replica behind
/// (it must reach the epoch whose members answer its `Leaving`), and
/// below the log base of the replica it asks it is sent a checkpoint, one
/// chunk at first. The rest of a state sync is asked for by `tick_sync`,
/// which `tick` never calls for a leaving replica (`tick_leaving` only),
/// so the sync neither progresses nor expires, and while it is under way
/// `request_start_epoch` asks for nothing: it stays `Leaving` in the old
/// epoch for ever. (Found by a random sweep of changes under faults.)
///
/// Four replicas, checkpoints every 4 ops (24-byte chunks). 3 is removed
/// (epoch 1 = {0, 1, 2}) and hears only 0's `EpochStarted`, so it stays
/// `Leaving`; it is cut off while 2 is removed too (epoch 2 = {0, 1}) and
/// the pair commits past several checkpoints; then healed.
pub fn leaving_replica_catches_up_by_checkpoint(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(checkpointing(options));
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.network.hold(1, 3);
    sim.network.hold(2, 3);
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 3 leaves", |s| {
        s.replica(3).role() == Role::Leaving
    })?;
    isolate(&mut sim, 3);
    sim.network.take_held(1, 3);
    sim.network.take_held(2, 3);
    sim.reconfigure(0, 2, &[0, 1], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| {
        s.replica(2).role() == Role::Removed
    })?;
    commit_many(&mut sim, 24, 0)?;
    behind_every_log_base(&sim, 3, 1, &[0, 1])?;
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| {
        s.replica(3).role() == Role::Removed
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// Review 9, break 11 (liveness: a group wedged for good with a quorum up
/// and connected). A replica behind asks for the newer epoch's start only
/// the sender of the newer-epoch message it hears first once its rate
/// limit allows (`request_start_epoch(sender)`), never the others of that
/// epoch (design 2.7: "then the others of the epoch's list in turn").
/// When that sender is a replica recovering in the newer epoch, which
/// broadcasts `Recovery` every `resend_ticks` and can serve nothing (its
/// commit is 0), the asker locks onto it: every period its `Recovery` is
/// the first newer-epoch message due, and it is asked again. The asker
/// never enters, the recovering replica never hears a quorum of others,
/// and the third member cannot form a view alone. (Found by a random
/// sweep of changes under faults, seed 893, where the asker asked the
/// recovering replica 550 times and no one else.)
///
/// Four replicas; 3 is cut off while 2 is removed (epoch 1 = {0, 1, 3}),
/// then epoch 1's primary, 0, restarts without its state and recovers in
/// epoch 1; 3 is healed.
pub fn replica_behind_asks_past_a_recovering_sender(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    isolate(&mut sim, 3);
    sim.reconfigure(0, 1, &[0, 1, 3], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 2 stops", |s| {
        s.replica(2).role() == Role::Removed
    })?;
    commit(&mut sim, 0, 0)?;
    sim.crash(0);
    sim.restart_amnesiac(0);
    sim.run_ticks(50)?;
    sim.network.set_link(0, 3, true);
    sim.run_ticks(30)?;
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 3 enters epoch 1", |s| {
        s.replica(3).membership().epoch() == 1
    })?;
    sim.run_until(PHASE_TICKS, "replica 0 recovers", |s| {
        s.replica(0).status() == Status::Normal
    })?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Review 9, break 12 (an invariant failure: disk mode). A member that
/// recovered without its state in a later epoch (`recovering_in`, list of
/// epoch 1) holds the whole log it fetched, the entry that began epoch 1
/// included, but its durable commit number is the one `install_view`
/// wrote before it learned the commit (0). Restarted from its disk, it
/// replays nothing, and its log holds a reconfiguration entry below the
/// head, unexecuted: `check_reconfiguration` fails at its first tick (a
/// panic in debug builds). In release it goes on in epoch 1 executing
/// epoch 0's ops under epoch 1's list (breaks 1 to 4). (Found by a random
/// sweep of changes under faults, with torn crashes.)
///
/// Four replicas, disk mode; 3 is removed (epoch 1 = {0, 1, 2}); replica
/// 1 loses its disk, recovers in epoch 1, then crashes and restarts from
/// the new disk.
pub fn member_recovered_in_a_later_epoch_restarts_from_disk(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.reconfigure(0, 1, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| !s.removed.is_empty())?;
    commit(&mut sim, 0, 0)?;
    sim.crash(1);
    sim.restart_amnesiac(1);
    sim.run_until(PHASE_TICKS, "replica 1 recovers", |s| {
        s.replica(1).status() == Status::Normal && s.replica(1).commit() == s.replica(0).commit()
    })?;
    sim.run_ticks(20)?;
    sim.crash(1);
    sim.restart(1);
    sim.run_ticks(20)?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// The start of review 10's scenario and of those built on it. Epoch 0 =
/// {A, B, C} (slots 0 to 2); A, its primary, commits the entry of epoch 1
/// = {A, D, E} with B's acknowledgement, but neither B nor C hears that it
/// committed (A's and the new members' packets to them are lost); they
/// start view 1 of epoch 0 under B, and their acknowledgements to each
/// other are lost (until `stop_losing`), so the entry stays uncommitted
/// there. Returns the genesis list and D's and E's nodes.
fn epoch_1_entered_while_b_and_c_lag(sim: &mut Simulator) -> Result<(vsr::Membership, Slot, Slot), Failure> {
    let (a, b, c) = (0, 1, 2);
    register_all(sim, a)?;
    commit(sim, 0, a)?;
    let genesis = *sim.replica(b).membership();
    let ids = [0, NEW, NEW + 1];
    let learners = sim.start_learners(a, &ids)?;
    let (d, e) = (learners[0], learners[1]);
    sim.reconfigure(a, 1, &ids, PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "the entry is proposed", |s| {
        s.replica(a).consent().is_some()
    })?;
    let entry = sim.replica(a).op();
    sim.run_until(PHASE_TICKS, "B holds the entry", |s| s.replica(b).op() == entry)?;
    // Nothing more of A, D or E reaches B or C.
    for from in [a, d, e] {
        for to in [b, c] {
            sim.network.set_link(from, to, false);
        }
    }
    // B's and C's acknowledgements never reach each other.
    let lose = acknowledgements(sim);
    sim.network.lose(c, b, lose);
    let lose = acknowledgements(sim);
    sim.network.lose(b, c, lose);
    sim.run_until(PHASE_TICKS, "A, D and E enter epoch 1", |s| {
        [a, d, e].iter().all(|&r| s.replica(r).membership().epoch() == 1)
    })?;
    sim.run_until(PHASE_TICKS, "B leads view 1 of epoch 0", |s| {
        [b, c].iter().all(|&r| {
            let x = s.replica(r);
            x.membership().epoch() == 0 && x.view() >= 1 && x.status() == Status::Normal
        })
    })?;
    if sim.replica(b).commit() >= entry || sim.replica(c).commit() >= entry {
        return Err(failure(sim, "setup: the entry committed in B's view".into()));
    }
    Ok((genesis, d, e))
}

/// Review 10's hazard (design 2.10). Epoch 0 =
/// {A, B, C}; A, its primary, commits the entry of epoch 1 = {A, D, E}
/// with B's acknowledgement, but neither B nor C hears that it committed
/// (A's and the new members' packets to them are lost); they start view 1
/// of epoch 0 under B, whose acknowledgements from C are lost, so the
/// entry stays uncommitted there. In epoch 1, A follows D's view 1 and
/// acknowledges op Y; D's prepare of Y never reaches E, and A's
/// acknowledgement is held. A crashes; its acknowledgement reaches D,
/// which commits Y (D and A held it) and replies. D is cut off.
///
/// A comes back without its state, its host knowing only epoch 0. Were it
/// to recover there among B and C (incarnation 1, fenced by them alone),
/// acknowledge the entry in B's view and enter epoch 1 by it, neither D
/// nor E would ever have installed incarnation 1, and A and E would start
/// a view without Y, which D committed. B and C hold the entry
/// unexecuted, so they answer no `Recovery`: A waits, and once the entry
/// commits in epoch 0 it hears of epoch 1 and recovers there, which needs
/// D.
pub fn member_recovers_in_the_epoch_its_earlier_life_entered(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let (a, b, c) = (0, 1, 2);
    let (genesis, d, e) = epoch_1_entered_while_b_and_c_lag(&mut sim)?;
    // Epoch 1: D leads view 1, A follows it.
    for r in [d, e] {
        sim.network.set_link(a, r, false);
        sim.network.set_link(r, a, false);
    }
    sim.run_until(PHASE_TICKS, "D leads epoch 1's view 1", |s| {
        [d, e]
            .iter()
            .all(|&r| s.replica(r).view() == 1 && s.replica(r).status() == Status::Normal)
    })?;
    for r in [d, e] {
        sim.network.set_link(a, r, true);
        sim.network.set_link(r, a, true);
    }
    sim.run_until(PHASE_TICKS, "A follows view 1", |s| {
        s.replica(a).view() == 1 && s.replica(a).status() == Status::Normal
    })?;
    // Y: prepared at D and A only, A's acknowledgement held.
    sim.network.hold(d, e);
    sim.network.hold(a, d);
    sim.clients[0].home = d;
    sim.start_request(0)?;
    let y = sim.replica(d).op();
    sim.run_until(PHASE_TICKS, "A holds Y", |s| s.replica(a).op() == y)?;
    sim.crash(a);
    let mut ack = None;
    for _ in 0..50 {
        sim.run_ticks(1)?;
        ack = ack.or(held_messages(&mut sim, a, d)
            .into_iter()
            .find(|(_, _, m)| matches!(m, vsr::Message::PrepareOk { op, .. } if *op == y)));
    }
    sim.network.take_held(a, d);
    let Some((ack, _, _)) = ack else {
        return Err(failure(&sim, "setup: A never acknowledged Y".into()));
    };
    let now = sim.tick;
    sim.network.deliver(now, a, d, ack);
    sim.run_until(PHASE_TICKS, "D commits Y", |s| s.clients[0].outstanding.is_none())?;
    // E never gets Y: D and E are cut off from each other.
    sim.network.take_held(d, e);
    sim.network.set_link(d, e, false);
    sim.network.set_link(e, d, false);
    // A returns knowing only epoch 0; of D and E it hears only answers to
    // a fence (their other messages would tell it of epoch 1).
    sim.network.set_link(a, b, true);
    sim.network.set_link(a, c, true);
    for from in [d, e] {
        let lose = picking(&sim, |_, m| !matches!(m, vsr::Message::RecoveryFenced { .. }));
        sim.network.lose(from, a, lose);
    }
    sim.restart_amnesiac_knowing(a, Some(genesis));
    for _ in 0..PHASE_TICKS {
        if sim.replica(a).membership().epoch() == 1 && !sim.replica(a).is_recovering() {
            break;
        }
        sim.run_ticks(1)?;
    }
    // D is cut off; A and E hear each other. B and C still do not
    // commit the entry.
    sim.network.stop_losing();
    sim.network.lose(c, b, acknowledgements(&sim));
    sim.network.lose(b, c, acknowledgements(&sim));
    isolate(&mut sim, d);
    // With D away, nothing may commit; E and A must not start a view
    // without Y. A client asks through E meanwhile.
    sim.clients[0].home = e;
    sim.start_request(0)?;
    sim.run_ticks(PHASE_TICKS)?;
    if sim.clients[0].outstanding.is_none() {
        return Err(failure(
            &sim,
            "a request committed in epoch 1 without D, which alone holds Y".into(),
        ));
    }
    if !sim.replica(a).is_recovering() {
        return Err(failure(
            &sim,
            "A recovered among replicas holding the entry unexecuted".into(),
        ));
    }
    sim.network.stop_losing();
    settle(&mut sim)?;
    if sim.replica(a).durable_state().fenced_epoch != 1 {
        return Err(failure(&sim, "A did not recover in epoch 1".into()));
    }
    Ok(())
}

/// A packet filter for `Network::lose`: every `PrepareOk`.
fn acknowledgements(sim: &Simulator) -> crate::network::Picks {
    picking(sim, |_, m| matches!(m, vsr::Message::PrepareOk { .. }))
}

/// Review 11, break 1, as it stands since the fence per epoch gave way to
/// refused recoveries (docs/protocol.md, "Recovering across epochs"): an
/// amnesiac member of a two-member list that view 0 names primary waits,
/// a documented limitation (B's one answer fences it, since a recovery
/// counts `n - q + 1` answers, but the log it must fetch is view 0's,
/// whose primary it is, and view 1 needs its DoViewChange, which it has
/// no log for). Epoch 0 = {A, B, C},
/// memory mode. A, its primary, proposes epoch 1 = {A, B} (C removed); B
/// and C hold the entry, but no acknowledgement reaches A, and C's never
/// reach B. A crashes and comes back without its state; B and C hold the
/// entry unexecuted and do not answer it. Healed, B and C commit the
/// entry, and A, told of epoch 1, recovers among {A, B}: it never can
/// finish, and epoch 1 needs it. (With the fence per epoch, A recovered in epoch
/// 0 and then wedged fencing as view 0's primary.)
pub fn amnesiac_member_of_a_new_two_member_list_waits(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let (a, b, c) = (0, 1, 2);
    register_all(&mut sim, a)?;
    commit(&mut sim, 0, a)?;
    for from in [b, c] {
        let lose = acknowledgements(&sim);
        sim.network.lose(from, a, lose);
    }
    let lose = acknowledgements(&sim);
    sim.network.lose(c, b, lose);
    sim.reconfigure(a, 1, &[0, 1], PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "the entry is proposed", |s| {
        s.replica(a).consent().is_some()
    })?;
    let entry = sim.replica(a).op();
    sim.run_until(PHASE_TICKS, "B and C hold the entry", |s| {
        s.replica(b).op() == entry && s.replica(c).op() == entry
    })?;
    sim.crash(a);
    sim.run_until(PHASE_TICKS, "B leads view 1 of epoch 0", |s| {
        [b, c].iter().all(|&r| {
            let x = s.replica(r);
            x.view() >= 1 && x.status() == Status::Normal
        })
    })?;
    if sim.replica(b).commit() >= entry {
        return Err(failure(&sim, "setup: the entry committed without A".into()));
    }
    sim.restart_amnesiac(a);
    sim.run_ticks(PHASE_TICKS)?;
    sim.network.stop_losing();
    sim.heal();
    // Both members of epoch 1 are up and connected.
    commit(&mut sim, 0, b)?;
    settle(&mut sim)
}

/// Review 11, break 3, as it stands since the fence per epoch gave way to
/// refused recoveries: again an amnesiac member of a two-member list (a
/// documented limitation). As in
/// `member_recovers_in_the_epoch_its_earlier_life_entered`, A commits the
/// entry of epoch 1 = {A, D, E} while B and C stay in epoch 0 with the
/// entry unexecuted; A then shrinks the list to epoch 2 = {A, D}, which D
/// and A enter, and crashes, coming back without its state and knowing
/// only epoch 0. B and C do not answer it; it hears of epoch 2 and
/// recovers among {A, D}, which it never can finish (D fences it, but
/// view 0's primary is A itself). (With the fence per epoch,
/// A recovered in epoch 0 and then fenced in epoch 1 for ever.)
pub fn amnesiac_member_after_a_shrink_to_two_waits(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let (a, b, c) = (0, 1, 2);
    let (genesis, d, _) = epoch_1_entered_while_b_and_c_lag(&mut sim)?;
    sim.reconfigure(a, 2, &[0, NEW], PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "A and D enter epoch 2", |s| {
        [a, d].iter().all(|&r| s.replica(r).membership().epoch() == 2)
    })?;
    sim.crash(a);
    // A returns knowing only epoch 0.
    sim.network.set_link(a, b, true);
    sim.network.set_link(a, c, true);
    sim.restart_amnesiac_knowing(a, Some(genesis));
    sim.run_ticks(PHASE_TICKS)?;
    sim.network.stop_losing();
    sim.heal();
    // A and D, epoch 2's members, are up and connected.
    commit(&mut sim, 0, d)?;
    settle(&mut sim)
}

/// `vopr --membership` seed 108 (liveness). A replica restarted without
/// its state recovers in epoch 0: enough of the others fence it at
/// view 0, and it asks view 0's primary for the log. That primary is
/// removed by the next change, and stops, before it answers. The
/// recovering replica asked nobody else: the new epoch's primary, which
/// sends it every prepare and commit (it is a member there), was dropped
/// at its gate, as any newer epoch's message but an `EpochNotice`; and
/// the members it had asked, busy in the new epoch, had no old-epoch
/// message of it to answer with one. It stayed `Recovering` for ever.
/// Now any newer-epoch message makes it send its sender its `Recovery`,
/// which the sender's gate answers with the notice: it recovers in the
/// new epoch.
///
/// Five replicas, memory mode; 2 restarts cut off from 0 (the primary),
/// is fenced by 1, 3 and 4, and waits for 0's log; 0 is removed
/// (epoch 1 = {1, 2, 3, 4}) and the network heals.
pub fn recovering_replica_whose_primary_left_hears_the_new_epoch(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(Options {
        amnesia: true,
        ..options
    });
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    sim.crash(2);
    sim.network.set_link(0, 2, false);
    sim.network.set_link(2, 0, false);
    sim.restart_amnesiac(2);
    sim.run_until(PHASE_TICKS, "replica 2 is fenced", |s| {
        s.replica(2).is_fetching_recovered_log()
    })?;
    sim.reconfigure(1, 1, &[1, 2, 3, 4], PHASE_TICKS)?;
    change_ends(&mut sim, 1, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 0 stops", |s| {
        s.replica(0).role() == Role::Removed
    })?;
    if sim.replica(2).membership().epoch() != 0 || !sim.replica(2).is_recovering() {
        return Err(failure(
            &sim,
            "setup: replica 2 is no longer recovering in epoch 0".into(),
        ));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 2 recovers", |s| {
        s.replica(2).status() == Status::Normal
    })?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// `vopr --membership` seed 358 (liveness). A replica recovering without
/// its state in epoch 0 is fenced at view 1 and stages the first chunk
/// of view 1's log; the rest never comes (its primary is cut off from it,
/// then removed). It hears of epoch 1 and recovers there, fenced at view
/// 0 of epoch 1, and asks view 0's primary for the log. Views are
/// numbered per epoch, but the staging of epoch 0's view 1 was kept, and
/// `on_start_view` takes only a chunk of a later view than the one
/// staged (or further in the same): view 0's chunks never were, and it
/// stayed `Recovering` for ever. Recovering into a newer epoch now
/// forgets what it staged, campaigned or counted for the old epoch's
/// views, as entering one does.
///
/// Five replicas, memory mode, two entries a message; 0 is cut off until
/// the others run view 1 (primary 1); 2 restarts and gets one chunk of
/// view 1's log from 1, then nothing from it; 1 is removed (epoch 1 =
/// {0, 2, 3, 4}, primary 0).
pub fn recovering_replica_forgets_a_view_staged_in_its_old_epoch(options: Options) -> Result<(), Failure> {
    let mut options = Options {
        amnesia: true,
        ..options
    };
    options.config.message_entries_max = 2;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..6 {
        commit(&mut sim, 0, 0)?;
    }
    isolate(&mut sim, 0);
    sim.run_until(PHASE_TICKS, "replicas 1 to 4 run view 1", |s| {
        (1..5).all(|r| s.replica(r).view() == 1 && s.replica(r).status() == Status::Normal)
    })?;
    sim.network.heal();
    commit(&mut sim, 0, 1)?;
    sim.crash(2);
    sim.network.hold(1, 2);
    sim.restart_amnesiac(2);
    sim.run_until(PHASE_TICKS, "replica 2 is fenced", |s| {
        s.replica(2).is_fetching_recovered_log()
    })?;
    sim.run_ticks(5)?;
    let cluster = sim.replica(1).config().wire_cluster();
    let held = sim.network.take_held(1, 2);
    sim.network.hold(1, 2); // from now on, nothing of 1's reaches 2
    let mut chunks = 0;
    for bytes in held {
        let chunk = matches!(
            vsr::message::decode(cluster, &bytes).map(|d| d.message),
            Ok(vsr::Message::StartView { .. })
        );
        if chunk {
            chunks += 1;
            if chunks > 1 {
                continue;
            }
        }
        // By another link: 1's own is held (the network does not read
        // the sender in the header).
        let now = sim.tick;
        sim.network.deliver(now + 1, 3, 2, bytes);
    }
    sim.run_ticks(5)?;
    if chunks == 0 || sim.replica(2).staging_progress().is_none() || !sim.replica(2).is_recovering() {
        return Err(failure(
            &sim,
            "setup: replica 2 staged no part of view 1's log".into(),
        ));
    }
    sim.reconfigure(1, 1, &[0, 2, 3, 4], PHASE_TICKS)?;
    change_ends(&mut sim, 1, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "replica 1 stops", |s| {
        s.replica(1).role() == Role::Removed
    })?;
    sim.run_until(PHASE_TICKS, "replica 2 recovers in epoch 1", |s| {
        s.replica(2).status() == Status::Normal && s.replica(2).membership().epoch() == 1
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

/// `vopr --membership` seed 787 (liveness). A member cut off from the
/// others while two changes remove it, then every other member of its
/// list, hears of the newer epoch once: the new member's `EpochStarted`
/// (sent to each member left out, once, on entering). It asks that
/// sender for the epoch's log, and the question is lost. Then nothing:
/// the newer epoch's members send nothing unasked to a replica outside
/// their list, and the members of its own list have all left and
/// stopped, so its campaigns reach nobody. It stayed in the old epoch
/// for ever. Now a replica behind asks the last newer-epoch sender it
/// heard again every `view_change_ticks` until it gets there: it catches
/// up into epoch 1, where it is leaving, and a member of epoch 2 tells
/// it that epoch started, so it stops.
///
/// Four replicas; 3 is cut off; epoch 1 = {0, 1, 2, NEW} (only NEW's
/// `EpochStarted` reaches 3; 3's answer does not reach NEW), epoch 2 =
/// {NEW, NEW + 1, NEW + 2}; 0, 1 and 2 stop for good; the network heals.
pub fn member_cut_off_while_its_list_left_asks_a_newer_sender_again(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    isolate(&mut sim, 3);
    let ids = [0, 1, 2, NEW];
    let learners = sim.start_learners(0, &ids)?;
    let new = learners[0];
    sim.network.set_link(new, 3, true);
    sim.network.hold(new, 3);
    sim.reconfigure(0, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "the new member enters", |s| {
        s.running(new as usize).is_some_and(|x| x.role() == Role::Member)
    })?;
    sim.run_ticks(5)?;
    let cluster = sim.replica(0).config().wire_cluster();
    let now = sim.tick;
    let mut told = false;
    for bytes in sim.network.take_held(new, 3) {
        let decoded = vsr::message::decode(cluster, &bytes);
        if matches!(decoded.map(|d| d.message), Ok(vsr::Message::EpochStarted { .. })) {
            told = true;
            sim.network.deliver(now + 1, new, 3, bytes);
        }
    }
    sim.run_ticks(1)?;
    sim.network.set_link(new, 3, false);
    if !told {
        return Err(failure(
            &sim,
            "setup: the new member sent 3 no EpochStarted".into(),
        ));
    }
    let ids = [NEW, NEW + 1, NEW + 2];
    sim.start_learners(new, &ids)?;
    sim.reconfigure(new, 2, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, new, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "0, 1 and 2 stop", |s| {
        (0..3).all(|r| s.replica(r).role() == Role::Removed)
    })?;
    for r in 0..3 {
        sim.crash(r);
        sim.dead[r as usize] = true;
    }
    if sim.replica(3).membership().epoch() != 0 {
        return Err(failure(&sim, "setup: replica 3 left epoch 0".into()));
    }
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "replica 3 stops", |s| {
        s.replica(3).role() == Role::Removed
    })?;
    commit(&mut sim, 0, new)?;
    settle(&mut sim)
}

/// `vopr --membership` seeds 213, 403, 481 and 553 (the timestamp
/// checker, not the protocol). A list of one outvotes no clock: its
/// primary stamps with its own, an hour ahead after a jump. Grown to two,
/// the list stamps `head + 1` (timestamps only increase) until true time
/// catches up, above what its two clocks allow, and the checker, which
/// outvoted one clock whatever lists had run, called that a violation. It
/// now allows 1 ns above the previous op's timestamp (which it checked).
///
/// One replica; its wall clock jumps an hour ahead; it commits; a second
/// node joins (epoch 1 = {0, NEW}); it commits again.
pub fn list_of_one_stamps_ahead_then_grows(options: Options) -> Result<(), Failure> {
    const HOUR_NS: i64 = 3_600_000_000_000;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.clock_offset_ns[0] = HOUR_NS;
    commit(&mut sim, 0, 0)?;
    let ids = [0, NEW];
    let learners = sim.start_learners(0, &ids)?;
    sim.reconfigure(0, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 0, 1, ChangeResult::Done)?;
    let new = learners[0];
    sim.run_until(PHASE_TICKS, "the new member enters", |s| {
        s.running(new as usize).is_some_and(|x| x.role() == Role::Member)
    })?;
    commit(&mut sim, 0, 0)?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

// ---- Review 12: recovering across epochs by refused recoveries ----------

/// A packet filter for `Network::lose`: the packets whose sender's epoch
/// and message `pick` picks.
fn picking(sim: &Simulator, pick: impl Fn(u64, &vsr::Message) -> bool + 'static) -> crate::network::Picks {
    let cluster = sim.options.config.wire_cluster();
    Box::new(move |bytes: &[u8]| {
        vsr::message::decode(cluster, bytes).is_ok_and(|d| pick(d.sender.epoch, &d.message))
    })
}

/// Review 12, break 1 (two lives of a slot at one incarnation in one
/// epoch). The refusal covers a recovery in the old epoch that an earlier
/// life of the asker could have outrun; it does not cover the other case
/// of the argument ("answered first"), where the recovery completes in
/// epoch 0 and the replica then enters epoch 1 by the entry at a number
/// that only epoch 0's quorum installed. Epoch 1's members never fenced
/// it, so a *later* life recovering in epoch 1 among them takes the same
/// number again, and what the first life told them is not forgotten.
///
/// Epoch 0 = {P, A, B, C, D} (P leads view 0), memory mode. A loses its
/// state and recovers in epoch 0: B, C and D answer step 1 (no entry
/// anywhere yet) and A takes incarnation 1, but its fences are lost for
/// now and nothing of A reaches P. P proposes epoch 1 = {P, A, G, H, J}
/// (B, C, D removed; G, H, J learners), recording A at incarnation 0, and
/// commits it with B, C and D, whose acknowledgements carry A at 0; P and
/// the learners enter epoch 1, none of them knowing incarnation 1, while
/// nothing of epoch 1 reaches B, C or D. Those three start view 2 of epoch
/// 0 (B leads) without committing the entry; A's fences now reach them,
/// A fetches view 2's log and helps commit the entry, and enters epoch 1
/// by it at incarnation 1 (first life). It takes part there: it
/// acknowledges a request in P's view 0, which P counts; P's packets to
/// G, H and J are held meanwhile. A crashes and comes back without its
/// state, its host knowing epoch 1 (second life); it cannot reach P. G,
/// H and J answer step 1 with incarnation 0, so it takes incarnation 1
/// again. Passes on this code only if the second life takes a number
/// above the first's.
pub fn member_entering_by_the_entry_is_unknown_to_the_new_list(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    let (p, a, b, c, d) = (0, 1, 2, 3, 4);
    register_all(&mut sim, p)?;
    commit(&mut sim, 0, p)?;
    let genesis = *sim.replica(p).membership();
    let ids = [0, 1, NEW, NEW + 1, NEW + 2];
    let learners = sim.start_learners(p, &ids)?;
    let (g, h, j) = (learners[0], learners[1], learners[2]);
    let before = sim.replica(p).op();
    // Nothing tells B, C or D that anything after `before` committed, and
    // nothing of epoch 1 reaches them.
    for to in [b, c, d] {
        let lose = picking(&sim, move |epoch, m| {
            epoch >= 1
                || matches!(m, vsr::Message::Commit { commit, .. } if *commit > before)
                || matches!(m, vsr::Message::Prepare { commit, .. } if *commit > before)
        });
        sim.network.lose(p, to, lose);
        for from in [g, h, j] {
            sim.network.set_link(from, to, false);
        }
    }
    // A: nothing reaches P; its fences are lost for now.
    sim.network.set_link(a, p, false);
    sim.network.set_link(p, a, false);
    for to in [b, c, d] {
        let lose = picking(&sim, |_, m| matches!(m, vsr::Message::RecoveryFence { .. }));
        sim.network.lose(a, to, lose);
    }
    sim.crash(a);
    sim.restart_amnesiac_knowing(a, Some(genesis));
    sim.run_until(PHASE_TICKS, "A takes incarnation 1 in epoch 0", |s| {
        s.replica(a).durable_state().incarnations[a as usize] == 1
    })?;
    sim.reconfigure(p, 1, &ids, PHASE_TICKS)?;
    sim.run_until(PHASE_TICKS, "the entry is proposed", |s| {
        s.replica(p).consent().is_some()
    })?;
    let entry = sim.replica(p).op();
    sim.run_until(PHASE_TICKS, "P, G, H and J enter epoch 1", |s| {
        [p, g, h, j]
            .iter()
            .all(|&r| s.replica(r).membership().epoch() == 1)
    })?;
    if [p, g, h, j]
        .iter()
        .any(|&r| sim.replica(r).durable_state().incarnations[a as usize] != 0)
    {
        return Err(failure(&sim, "setup: epoch 1 heard of A's incarnation 1".into()));
    }
    // B, C and D: view 2 of epoch 0 under B, the entry uncommitted.
    for r in [b, c, d] {
        sim.network.set_link(p, r, false);
        sim.network.set_link(r, p, false);
    }
    sim.network.stop_losing();
    for to in [b, c, d] {
        let lose = picking(&sim, |_, m| matches!(m, vsr::Message::RecoveryFence { .. }));
        sim.network.lose(a, to, lose);
    }
    for from in [c, d] {
        sim.network.lose(from, b, acknowledgements(&sim));
    }
    sim.run_until(PHASE_TICKS, "B leads view 2 of epoch 0", |s| {
        [b, c, d].iter().all(|&r| {
            let x = s.replica(r);
            x.membership().epoch() == 0 && x.view() >= 2 && x.status() == Status::Normal
        })
    })?;
    if [b, c, d].iter().any(|&r| sim.replica(r).commit() >= entry) {
        return Err(failure(&sim, "setup: the entry committed in view 2".into()));
    }
    // A's fences get through: it recovers in epoch 0 and helps commit.
    sim.network.stop_losing();
    for from in [c, d] {
        sim.network.lose(from, b, acknowledgements(&sim));
    }
    sim.run_until(PHASE_TICKS, "A recovers in view 2 of epoch 0", |s| {
        let x = s.replica(a);
        x.membership().epoch() == 0 && x.status() == Status::Normal && x.op() == entry
    })?;
    sim.network.stop_losing();
    sim.run_until(PHASE_TICKS, "A enters epoch 1 by the entry", |s| {
        let x = s.replica(a);
        x.membership().epoch() == 1 && !x.is_recovering()
    })?;
    let first = sim.replica(a).durable_state().incarnations[a as usize];
    // A's first life takes part in epoch 1: it acknowledges a request in
    // P's view 0. Nothing of P or A reaches G, H or J meanwhile.
    for from in [p, a] {
        for to in [g, h, j] {
            sim.network.hold(from, to);
        }
    }
    sim.network.set_link(a, p, true);
    sim.network.set_link(p, a, true);
    sim.clients[0].home = p;
    sim.start_request(0)?;
    let y = sim.replica(p).op();
    sim.run_until(PHASE_TICKS, "A acknowledges Y to P", |s| {
        s.replica(p).durable_state().incarnations[a as usize] == first && s.replica(a).op() == y
    })?;
    sim.run_ticks(5)?;
    // A's second life, cut off from P.
    sim.crash(a);
    // (P's packets to G, H and J stay held.)
    for to in [g, h, j] {
        sim.network.take_held(a, to);
    }
    sim.network.set_link(a, p, false);
    sim.network.set_link(p, a, false);
    let newest = *sim.replica(p).membership();
    sim.restart_amnesiac_knowing(a, Some(newest));
    sim.run_until(PHASE_TICKS, "A's second life chooses its incarnation", |s| {
        s.replica(a).durable_state().incarnations[a as usize] > 0
    })?;
    let second = sim.replica(a).durable_state().incarnations[a as usize];
    if second <= first {
        return Err(failure(
            &sim,
            format!(
                "A's second life took incarnation {second} in epoch 1, where its first life \
                 took part at {first} (P still counts its acknowledgement)"
            ),
        ));
    }
    settle(&mut sim)
}

/// `vopr --membership` seeds 290 and 819 (liveness). A learner restarted
/// after the proposal enters its epoch recovering in full, keeping its
/// log (design break 1), and cannot finish: one of the members it needs
/// does not hear it. Meanwhile the next change removes it. The members,
/// gone on into the newer epoch, answer its messages with an
/// `EpochNotice`, which only a recovery without a log followed: it stayed
/// `Recovering` in the old epoch for ever. A notice whose list leaves it
/// out now removes any recovering replica (it takes part in nothing
/// until recovered, and that epoch began: nothing needs it).
///
/// Three replicas; the learner NEW restarts after the proposal of epoch
/// 1 = {0, 1, 2, NEW}, cut off from 2; epoch 2 = {0, 1, 2}.
pub fn recovering_learner_removed_by_the_next_change_stops(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let new = learner_crashed_after_the_proposal(&mut sim, 1, &[0, 1, 2, NEW])?;
    sim.network.set_link(new, 2, false);
    sim.network.set_link(2, new, false);
    sim.restart_amnesiac(new);
    sim.run_until(PHASE_TICKS, "the new life enters epoch 1, recovering", |s| {
        s.running(new as usize)
            .is_some_and(|x| x.membership().epoch() == 1 && x.is_recovering())
    })?;
    sim.reconfigure(0, 2, &[0, 1, 2], PHASE_TICKS)?;
    change_ends(&mut sim, 0, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "0, 1 and 2 enter epoch 2", |s| {
        (0..3).all(|r| s.replica(r).membership().epoch() == 2)
    })?;
    sim.network.heal();
    sim.run_until(PHASE_TICKS, "the learner stops", |s| {
        s.replica(new).role() == Role::Removed
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

// ---- Review 13 --------------------------------------------------------

/// Review 13, break 1 (liveness: a list of four wedges with every member
/// up and connected and one of them without its state). A learner
/// restarted after the proposal enters its epoch as another life and
/// recovers keeping its log (`fence_in_epoch`: steps 1 and 2 among the
/// three others, then `min(quorum, n - 1)` = 3 answers). While it is at it, a
/// staying member loses its state and recovers in full in the same epoch
/// (3 answers of the three others). Each is `Recovering`, so neither
/// answers the other's `Recovery` (nor, at step 2, its `RecoveryFence`,
/// which only a replica in normal status answers): each waits for the
/// other for ever, and with two of four members recovering the list has
/// no quorum to commit anything. The learner lost nothing (it holds the
/// whole log); only one replica lacks its state. This is review 11's
/// "two members fencing at once" wedge, left in place for learners by
/// 07ee6d2 (the fence alone of 5de8624, answered in any status, is not
/// used for them); `vopr --membership` seeds 17380 and 14383 end in this
/// state (and likely seed 2164). Now each step of a recovery counts
/// `n - q + 1` answers (two of the three others here), which meet every
/// quorum without the asker: each recovers among the two members in
/// normal status.
///
/// Three replicas, memory mode; epoch 1 = {0, 1, 2, NEW}. NEW crashes
/// after the proposal and restarts as a new life, cut off from 2 so that
/// its recovery cannot finish; then 1 loses its state and recovers in
/// epoch 1; then the network heals.
pub fn learner_fence_and_full_recovery_wait_for_each_other(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    commit(&mut sim, 0, 0)?;
    let new = learner_crashed_after_the_proposal(&mut sim, 1, &[0, 1, 2, NEW])?;
    sim.network.set_link(new, 2, false);
    sim.network.set_link(2, new, false);
    sim.restart_amnesiac(new);
    sim.run_until(PHASE_TICKS, "the new life enters epoch 1, recovering", |s| {
        s.running(new as usize)
            .is_some_and(|x| x.membership().epoch() == 1 && x.is_recovering())
    })?;
    sim.run_ticks(50)?;
    // A member loses its state while the learner's recovery is under way.
    let newest = *sim.replica(0).membership();
    sim.crash(1);
    sim.restart_amnesiac_knowing(1, Some(newest));
    sim.run_ticks(20)?;
    sim.network.heal();
    sim.run_until(3 * PHASE_TICKS, "both recover", |s| {
        [1, new].iter().all(|&r| {
            s.running(r as usize)
                .is_some_and(|x| !x.is_recovering() && x.status() == Status::Normal)
        })
    })?;
    commit(&mut sim, 0, 0)?;
    settle(&mut sim)
}

// ---- Slots reused across epochs ----------------------------------------

/// `vopr --membership` seed 13605, on a build before recoveries counted
/// `n - q + 1` answers (liveness: a recovery that never finishes). Slots
/// are reused: a later change may give a removed member's slot to a new
/// node. The crash vector (`incarnations`, per slot) was reset only for a
/// slot absent from the list a replica entered, so a replica that jumped
/// epochs, from one where a slot held X at a raised incarnation to one
/// where it holds a new node Y, never saw the slot empty and kept X's
/// number for Y. Every message of Y then carried a lower number for its
/// slot than the replica knew, and its gate dropped it as stale; Y never
/// learns better from a replica that is recovering (its `Recovery` is
/// answered before any merge), so a recovery that needs Y's answer waits
/// for ever. Now a slot whose occupant changed is forgotten as one that
/// left.
///
/// Four replicas, memory mode: A = 0 (the primary), R = 1, X = 2, B = 3.
/// X loses its state and recovers (incarnation 1). R loses its state, and
/// learns X's incarnation 1 from the answers to its `Recovery`; its fences
/// are lost, and it is cut off while still recovering in epoch 0. X is
/// removed (epoch 1 = {A, R, B}), then a new node Y takes slot 2 (epoch 2
/// = {A, R, B, Y}). B is cut off, R healed: told of epoch 2, R recovers
/// there, with `n - q + 1` = 2 answers of A, B and Y, so A's and Y's.
pub fn recovering_replica_jumping_epochs_hears_a_reused_slots_new_owner(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = Simulator::new(Options {
        amnesia: true,
        ..options
    });
    let (a, r, x, b) = (0, 1, 2, 3);
    register_all(&mut sim, a)?;
    commit(&mut sim, 0, a)?;
    sim.crash(x);
    sim.restart_amnesiac(x);
    sim.run_until(PHASE_TICKS, "X recovers at incarnation 1", |s| {
        let replica = s.replica(x);
        replica.status() == Status::Normal && replica.durable_state().incarnations[x as usize] == 1
    })?;
    commit(&mut sim, 0, a)?;
    // R learns X's number from the answers to step 1; none of its fences
    // gets through, so it stays recovering in epoch 0.
    sim.crash(r);
    for to in [a, x, b] {
        let lose = picking(&sim, |_, m| matches!(m, vsr::Message::RecoveryFence { .. }));
        sim.network.lose(r, to, lose);
    }
    sim.restart_amnesiac(r);
    sim.run_until(PHASE_TICKS, "R learns X's incarnation", |s| {
        s.replica(r).durable_state().incarnations[x as usize] == 1
    })?;
    isolate(&mut sim, r);
    sim.network.stop_losing();
    sim.reconfigure(a, 1, &[0, 1, 3], PHASE_TICKS)?;
    change_ends(&mut sim, a, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "X stops", |s| s.replica(x).role() == Role::Removed)?;
    let ids = [0, 1, 3, NEW];
    let y = sim.start_learners(a, &ids)?[0];
    if sim.nodes[y as usize].slot != x {
        return Err(failure(&sim, "setup: the new member is not at X's slot".into()));
    }
    sim.reconfigure(a, 2, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, a, 2, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "Y enters epoch 2", |s| {
        s.running(y as usize)
            .is_some_and(|m| m.membership().epoch() == 2 && m.role() == Role::Member)
    })?;
    let r_state = sim.replica(r);
    if r_state.membership().epoch() != 0 || !r_state.is_recovering() {
        return Err(failure(
            &sim,
            "setup: R is no longer recovering in epoch 0".into(),
        ));
    }
    sim.network.heal();
    isolate(&mut sim, b);
    let recovered = sim.run_until(PHASE_TICKS, "R recovers in epoch 2", |s| {
        let replica = s.replica(r);
        replica.membership().epoch() == 2 && replica.status() == Status::Normal
    });
    if let Err(e) = recovered {
        let replica = sim.replica(r);
        return Err(failure(
            &sim,
            format!(
                "{}: in epoch {}, R knows incarnation {} for slot {x} (Y's is {}), and dropped {} \
                 messages as stale",
                e.reason,
                replica.membership().epoch(),
                replica.durable_state().incarnations[x as usize],
                sim.replica(y).durable_state().incarnations[x as usize],
                replica.stats().dropped_stale,
            ),
        ));
    }
    // A, R and Y are a quorum of epoch 2 without B.
    commit(&mut sim, 0, a)?;
    settle(&mut sim)
}

// ---- Review k: a recovery counts n - q + 1 answers -----------------------

/// Four replicas, memory mode: ops commit at {0, 1, 2} while 3 is cut off
/// from the primary, so 3 lacks them. 1 and 2 lose their memory at once
/// (half the list, more than the `n - q` memory mode promises to survive).
/// Each recovers from the two others in normal status (0, which holds the
/// ops and leads, and 3, which lacks them): `n - q + 1` = 2 answers, the
/// fence of one meeting every quorum without it. They must take the
/// primary's log, not 3's, and every commit survives. (With a quorum of
/// others, both waited for ever.)
pub fn two_of_four_lose_their_memory_and_recover_from_the_primary(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.network.set_link(0, 3, false);
    sim.network.set_link(3, 0, false);
    for _ in 0..6 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    if sim.replica(3).op() >= committed {
        return Err(failure(&sim, format!("setup: {}", sim.describe())));
    }
    sim.crash(1);
    sim.crash(2);
    sim.restart_amnesiac(1);
    sim.restart_amnesiac(2);
    sim.run_until(PHASE_TICKS, "1 and 2 recover", |s| {
        [1, 2].iter().all(|&r| {
            s.running(r)
                .is_some_and(|x| x.status() == Status::Normal && x.op() >= committed)
        })
    })?;
    sim.network.heal();
    commit(&mut sim, 0, 3)?;
    settle(&mut sim)
}

/// Four replicas, memory mode: ops commit at {0, 1, 2} while 3 is cut off
/// from the primary 0, so 3 lacks them. The primary and 1 lose their
/// memory at once; 2 (which holds the ops) and 3 (which does not) stay up,
/// in view 0. The two answers each recovering replica counts are 2's and
/// 3's, which report view 0, whose primary is one of the amnesiac
/// replicas: neither can fetch a log, and no view can start without one
/// of them. The group waits (as it did when a recovery counted a quorum
/// of others): it must never start a view from 3's shorter log. The
/// checkers run all along; nothing but an operator ends the wait.
pub fn two_of_four_with_the_primary_lose_their_memory_and_wait(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    sim.network.set_link(0, 3, false);
    sim.network.set_link(3, 0, false);
    for _ in 0..6 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    sim.crash(0);
    sim.crash(1);
    sim.network.heal();
    sim.restart_amnesiac(0);
    sim.restart_amnesiac(1);
    sim.run_ticks(PHASE_TICKS * 3)?;
    // No view after 0 starts, and 0 and 1 still wait.
    let waiting = sim.replica(0).is_recovering() && sim.replica(1).is_recovering();
    if !waiting
        || sim
            .replicas()
            .any(|x| x.view() > 0 && x.status() == Status::Normal)
    {
        return Err(failure(&sim, format!("expected a wait: {}", sim.describe())));
    }
    if sim.replica(3).op() >= committed {
        return Err(failure(
            &sim,
            format!("setup: 3 holds the commits: {}", sim.describe()),
        ));
    }
    Ok(())
}

/// Two replicas, memory mode: the backup (1) loses its memory while the
/// primary (0) runs. One answer, the primary's, is `n - q + 1`: it
/// recovers the primary's log and the group serves again, every commit
/// kept.
pub fn amnesiac_backup_of_two_recovers_from_the_primary(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for _ in 0..5 {
        commit(&mut sim, 0, 0)?;
    }
    let committed = sim.checker.committed();
    sim.crash(1);
    sim.run_ticks(PHASE_TICKS / 2)?;
    sim.restart_amnesiac(1);
    sim.run_until(PHASE_TICKS, "1 recovers", |s| {
        s.running(1)
            .is_some_and(|x| x.status() == Status::Normal && x.op() >= committed)
    })?;
    commit(&mut sim, 0, 1)?;
    settle(&mut sim)
}

/// Review 15 (`retry_pending`, 2e42b30): a caller submits its request 2
/// through replica 2, which is cut off; it goes over to replica 1 (as the
/// simulator's clients do when their home stops), has request 2 answered
/// there, then request 3. Replica 2 still holds request 2 pending; healed,
/// it executes up to request 3, and its next retry finds request 2 below
/// the client's latest in its table: `settled` says `Duplicate { op: 0 }`,
/// which the retry sends as a reply naming no op. Execution suppresses
/// exactly that reply (`vopr --membership` seed 836); the retry did not,
/// and now drops the request unanswered instead.
pub fn retried_request_older_than_the_clients_latest_is_not_answered_with_no_op(
    options: Options,
) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    isolate(&mut sim, 2);
    sim.clients[0].home = 2;
    sim.start_request(0)?; // pending at 2, its route lost
    sim.run_ticks(20)?;
    sim.clients[0].home = 1;
    sim.resubmit(0)?; // the same request, through 1
    sim.run_until(PHASE_TICKS, "request 2 completes through 1", |s| {
        s.clients[0].outstanding.is_none()
    })?;
    commit(&mut sim, 0, 1)?; // request 3
    let committed = sim.checker.committed();
    sim.heal();
    sim.run_until(PHASE_TICKS, "2 executes request 3", |s| {
        s.running(2).is_some_and(|x| x.commit() >= committed)
    })?;
    sim.run_ticks(PHASE_TICKS / 2)?;
    settle(&mut sim)
}

/// Review 15 (`Simulator::orphaned`, 616f88a): the exemption counts a
/// replica orphaned when every other member of *its own* list stopped for
/// good, even if a newer list, running, names it. Replica 0 is down while
/// {0, 1, 2} changes to {0, new, new'}; 1 and 2 leave and stop for good;
/// 0 restarts from disk in epoch 0: "orphaned", though it is a member of
/// epoch 1, whose members send to it. `settled` asks nothing of it (it
/// leaves it out of the newest list's members it checks), so the group
/// counts as settled while a member of the newest list is still in the
/// old epoch: a bug that kept it there for good would pass unseen. (Run
/// on, 0 does enter epoch 1 today: the exemption hid nothing here yet.)
/// Now a replica the newest list names is never orphaned.
pub fn member_of_the_newest_list_is_not_orphaned(options: Options) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    commit(&mut sim, 0, 1)?;
    sim.crash(0);
    sim.run_until(PHASE_TICKS, "1 leads", |s| s.primary() == Some(1))?;
    let ids = [0, NEW, NEW + 1];
    let learners = sim.start_learners(1, &ids)?;
    sim.reconfigure(1, 1, &ids, PHASE_TICKS)?;
    change_ends(&mut sim, 1, 1, ChangeResult::Done)?;
    sim.run_until(PHASE_TICKS, "1 and 2 stop, the learners serve", |s| {
        (1..3).all(|r| s.running(r).is_some_and(|x| x.role() == Role::Removed))
            && learners.iter().all(|&l| {
                s.running(l as usize)
                    .is_some_and(|x| x.role() == Role::Member && x.status() == Status::Normal)
            })
    })?;
    for r in [1, 2] {
        sim.crash(r);
        sim.dead[r as usize] = true;
    }
    sim.restart(0);
    sim.run_ticks(1)?;
    // The sim's liveness check, as `settle` runs it: already settled,
    // with 0 still in epoch 0.
    if sim.settled() && sim.running(0).is_some_and(|x| x.membership().epoch() == 0) {
        return Err(failure(
            &sim,
            format!(
                "settled while 0, a member of epoch 1, is still in epoch 0: {}",
                sim.describe()
            ),
        ));
    }
    settle(&mut sim)
}

/// Messages slower than the view-change timeout (the network of a
/// saturated host, or a long link): a view change takes about three one-way
/// delays (the votes, the DoViewChange, the StartView), and with every
/// attempt timing out after `view_change_ticks` plus a jitter below it, each
/// is overtaken by the next campaign and no view ever starts. Each attempt
/// that times out doubles the next one's timeout (`view_change.rs`), up to
/// a cap, so the timeout comes to exceed the delays and a view starts.
///
/// Replica 0, the primary, crashes once every link takes `delay` ticks;
/// replicas 1 and 2 must elect a primary and commit a request.
pub fn slow_links_still_elect_a_primary(options: Options, delay: u64) -> Result<(), Failure> {
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 1)?;
    sim.network.options.delay_min = delay;
    sim.network.options.delay_max = delay;
    sim.run_ticks(2 * delay)?;
    sim.crash(0);
    sim.clients[0].home = 1;
    sim.start_request(0)?;
    sim.run_until(
        20 * PHASE_TICKS,
        "a request commits after the primary's crash",
        |s| s.clients[0].outstanding.is_none(),
    )
}

/// Review of the byte-bounded runs: a view change while a backup lags by
/// many large commands. Replica 2 is cut off while about `behind` ops of
/// up to 256 KiB commit; then primary 0 crashes and 2 comes back, so view
/// 1 (primary 1) can run only with 2, which must fetch the new view's log
/// by `StartView` chunks of one run (`RUN_BYTES`) each. Returns the ticks
/// and views it took for a request to commit again, for comparison.
pub fn view_change_with_lagging_backup_and_large_commands(
    mut options: Options,
    behind: Op,
    send_buffer: bool,
) -> Result<(u64, u64, u64), Failure> {
    options.payload_max = 256 << 10;
    options.config.batch_max_requests = 1;
    let mut sim = Simulator::new(options);
    if send_buffer {
        sim.network.send_buffer = Some(crate::network::SendBuffer::new(1 << 20, 1 << 20));
    }
    register_all(&mut sim, 0)?;
    isolate(&mut sim, 2);
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 0;
    }
    sim.options.request_probability = 0.5;
    sim.load = true;
    sim.run_until(
        PHASE_TICKS * 5,
        "the others commit while replica 2 is cut off",
        |s| s.checker.committed() >= behind,
    )?;
    sim.load = false;
    let start = sim.tick;
    let views_before: u64 = sim.replicas().map(|r| r.stats().views_started).sum();
    sim.crash(0);
    sim.network.heal();
    let target = sim.checker.committed();
    sim.run_until(
        PHASE_TICKS * 5,
        "replica 2 holds the log in a running view",
        |s| {
            s.running(2)
                .is_some_and(|r| r.status() == Status::Normal && r.op() >= target)
        },
    )?;
    let installed = sim.tick - start;
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 1;
    }
    sim.load = true;
    let before = sim.checker.committed();
    sim.run_until(PHASE_TICKS * 5, "a request commits again", |s| {
        s.checker.committed() > before + 5
    })?;
    sim.load = false;
    let views_after: u64 = sim.replicas().map(|r| r.stats().views_started).sum();
    let campaigns: u64 = sim.replicas().map(|r| r.stats().campaigns).sum();
    let took = sim.tick - start;
    sim.restart(0);
    settle(&mut sim)?;
    eprintln!(
        "behind {behind}: replica 2 installed after {installed} ticks, commits resumed after {took} ticks, {} views started, {campaigns} campaigns, final view {}",
        views_after - views_before,
        sim.replica(1).view()
    );
    Ok((took, views_after - views_before, campaigns))
}

/// Review of the byte-bounded runs: commands of moderate size (up to
/// `payload_max`) from many clients, batched by the primary (default
/// `batch_max_requests` and `batch_max_bytes`), so that an entry holds
/// more than `RUN_BYTES / pipeline_max` of commands although no command
/// is large. Replica 2 is cut off while `behind` ops commit, then healed
/// under the same load (over links with `send_buffer`'s busy limit and
/// drain per tick, if any); returns replica 2's gap to the commit point (in
/// ops) every `every` ticks, `samples` times, and the mean entry size.
pub fn lagging_backup_under_batched_load(
    mut options: Options,
    payload_max: usize,
    behind: Op,
    send_buffer: Option<(u64, u64)>,
    (samples, every): (usize, u64),
) -> Result<(Vec<Op>, u64), Failure> {
    options.payload_max = payload_max;
    let mut sim = Simulator::new(options);
    if let Some((busy, drain)) = send_buffer {
        sim.network.send_buffer = Some(crate::network::SendBuffer::new(busy, drain));
    }
    register_all(&mut sim, 0)?;
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 0;
    }
    sim.options.request_probability = 1.0;
    sim.load = true;
    isolate(&mut sim, 2);
    sim.run_until(
        PHASE_TICKS * 5,
        "the others commit while replica 2 is cut off",
        |s| s.checker.committed() >= behind,
    )?;
    sim.network.heal();
    let mut gaps = Vec::new();
    for _ in 0..samples {
        sim.run_ticks(every)?;
        gaps.push(sim.checker.committed().saturating_sub(sim.replica(2).commit()));
        if std::env::var("REVIEW_TRACE").is_ok() {
            let r = sim.replica(2);
            eprintln!(
                "tick {}: committed {}, replica 2 op {} commit {} view {} status {:?}; primary 0 op {} commit {} base {}",
                sim.tick,
                sim.checker.committed(),
                r.op(),
                r.commit(),
                r.view(),
                r.status(),
                sim.replica(0).op(),
                sim.replica(0).commit(),
                sim.replica(0).log().base()
            );
        }
    }
    let log = sim.replica(0).log();
    let (base, op) = (log.base(), log.op());
    let bytes: u64 = (base + 1..=op)
        .filter_map(|o| log.get(o))
        .map(|e| vsr::log::run_bytes(e))
        .sum();
    let mean = bytes / (op - base).max(1);
    eprintln!(
        "review: most bytes one flush sent one peer: {} in {} messages at most",
        sim.flush_peer_bytes_max, sim.flush_peer_messages_max
    );
    sim.load = false;
    settle(&mut sim)?;
    Ok((gaps, mean))
}

/// Review of the streamed repair answers: a learner joining a group under
/// the batched load of `lagging_backup_under_batched_load` (entries over
/// `RUN_BYTES / pipeline_max`). A learner's acknowledgements go through
/// `on_learner_ack`, which does not call `repair_acknowledged`, so its
/// repair answers open only by ticks (one run a tick, `pipeline_max + 1`
/// at most) and stall until its resend interval. Returns the samples of
/// (committed - learner's op) and whether the change ended `Done`.
pub fn learner_under_batched_load(
    mut options: Options,
    payload_max: usize,
    behind: Op,
    (samples, every): (usize, u64),
) -> Result<(Vec<Op>, u64), Failure> {
    options.payload_max = payload_max;
    let mut sim = Simulator::new(options);
    register_all(&mut sim, 0)?;
    for c in 0..sim.clients.len() {
        sim.clients[c].home = 0;
    }
    sim.options.request_probability = 1.0;
    sim.load = true;
    sim.run_until(PHASE_TICKS * 5, "the group commits under load", |s| {
        s.checker.committed() >= behind
    })?;
    let ids = [0, 1, 2, NEW];
    let learners = sim.start_learners(0, &ids)?;
    if learners != [3] {
        return Err(failure(&sim, format!("setup: learners {learners:?}")));
    }
    sim.reconfigure(0, 1, &ids, 1_000_000)?;
    if std::env::var("REVIEW_LAG").is_ok() {
        sim.run_ticks(60)?;
        isolate(&mut sim, 3);
        let target = sim.checker.committed() + behind;
        sim.run_until(
            PHASE_TICKS * 5,
            "the others commit while the learner is cut off",
            |s| s.checker.committed() >= target,
        )?;
        sim.network.heal();
    }
    let mut gaps = Vec::new();
    for _ in 0..samples {
        sim.run_ticks(every)?;
        let op = sim.running(3).map_or(0, |r| r.op());
        gaps.push(sim.checker.committed().saturating_sub(op));
        if std::env::var("REVIEW_TRACE").is_ok() {
            let r = sim.running(3);
            eprintln!(
                "tick {}: committed {}, learner op {op} role {:?} epoch {:?} status {:?}; change {:?}",
                sim.tick,
                sim.checker.committed(),
                r.map(|r| r.role()),
                r.map(|r| r.membership().epoch()),
                r.map(|r| r.status()),
                sim.reconfigured(0, 1)
            );
        }
    }
    let log = sim.replica(0).log();
    let (base, op) = (log.base(), log.op());
    let bytes: u64 = (base + 1..=op)
        .filter_map(|o| log.get(o))
        .map(|e| vsr::log::run_bytes(e))
        .sum();
    let mean = bytes / (op - base).max(1);
    sim.load = false;
    Ok((gaps, mean))
}
