//! The engine: a small pool of threads that drive every replica group on
//! this node.
//!
//! A group never gets an OS thread of its own: `start/2` assigns it to the
//! least-loaded of `min(available_parallelism, 4)` (at least 2) workers,
//! started lazily on the first `start`. A worker owns its groups' replicas
//! and a channel of commands. Each iteration it waits for a command or its
//! next tick deadline, drains the queued commands (up to `BATCH_MAX`),
//! ticks the groups that are due, then sends each group that was stepped
//! one message holding all its outputs in order, and publishes its
//! status copy. NIFs only enqueue, so no scheduler ever waits on a worker.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustler::{Encoder, OwnedEnv};
use vsr::{Input, Submission};

use crate::atoms;
use crate::error::EngineError;
use crate::host::{guard, ReplicaHost};

/// Most commands handled in one iteration, so a flood of deliveries can
/// neither delay ticks nor hold back outputs indefinitely.
const BATCH_MAX: usize = 4096;
/// Most worker threads, however many cores there are.
const WORKERS_MAX: usize = 4;
/// Fewest worker threads, so one busy group cannot stall all others.
const WORKERS_MIN: usize = 2;
/// Longest test stall (`Command::Stall`), should a test never release it.
const STALL_MAX: Duration = Duration::from_secs(30);

static POOL: OnceLock<Pool> = OnceLock::new();
/// Groups held by workers (counted from `start` until a worker drops them).
static GROUPS: AtomicUsize = AtomicUsize::new(0);
/// Worker threads running.
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// What a NIF asks of a worker.
pub enum Command {
    Start(Box<ReplicaHost>),
    /// Messages from one peer, in the order they were sent.
    Deliver {
        id: u64,
        messages: Vec<Vec<u8>>,
    },
    Submit {
        id: u64,
        submission: Submission,
    },
    /// The host's snapshot at `op` (`snapshot/3`): the binary was saved in
    /// `env` by the NIF without copying its bytes; it is copied here.
    Snapshot {
        id: u64,
        op: u64,
        env: OwnedEnv,
        bytes: rustler::env::SavedTerm,
    },
    /// A linearizable read; `read` is the caller's id for it.
    Read {
        id: u64,
        read: u64,
    },
    /// A membership change to the members `ids` (`reconfigure/4`);
    /// `change` is the host's id for it.
    Reconfigure {
        id: u64,
        change: u64,
        ids: Vec<vsr::MemberId>,
        ticks: u64,
    },
    /// The node's failure detector holds up the nodes of the members
    /// `ids` (`peers/2`; quiet groups).
    Peers {
        id: u64,
        ids: Vec<vsr::MemberId>,
    },
    Stop {
        id: u64,
    },
    /// Test hook: fail the group as a panic in `vsr` would.
    Crash {
        id: u64,
    },
    /// Test hook: keep this thread busy (as a long step would) until
    /// `release` is dropped, telling `notify` when it starts and ends.
    Stall {
        release: Receiver<()>,
        notify: rustler::LocalPid,
    },
    /// Read a store's superblock (`nif_probe`): file I/O stays off the schedulers.
    Probe {
        dir: std::path::PathBuf,
        tag: u64,
        owner: rustler::LocalPid,
    },
}

/// `(live worker threads, live groups)`.
pub fn info() -> (usize, usize) {
    (THREADS.load(Ordering::Acquire), GROUPS.load(Ordering::Acquire))
}

/// A worker as the NIFs see it.
pub struct WorkerHandle {
    pub tx: Sender<Command>,
    load: Arc<AtomicUsize>,
}

impl WorkerHandle {
    /// Hands a new group to this worker.
    pub fn start(&self, group: ReplicaHost) {
        GROUPS.fetch_add(1, Ordering::AcqRel);
        self.load.fetch_add(1, Ordering::AcqRel);
        if let Err(failed) = self.tx.send(Command::Start(Box::new(group))) {
            // The worker is gone (it never exits, so this is defensive).
            if let Command::Start(group) = failed.into_inner() {
                group.shared().stopped.store(true, Ordering::Release);
                release(&self.load);
            }
        }
    }
}

fn release(load: &AtomicUsize) {
    load.fetch_sub(1, Ordering::AcqRel);
    GROUPS.fetch_sub(1, Ordering::AcqRel);
}

pub struct Pool {
    workers: Vec<WorkerHandle>,
}

impl Pool {
    /// The worker with the fewest groups, or `None` if no thread could start.
    pub fn least_loaded(&self) -> Option<&WorkerHandle> {
        self.workers.iter().min_by_key(|w| w.load.load(Ordering::Acquire))
    }
}

/// The pool, started on first use.
pub fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(WORKERS_MIN, |n| n.get());
        let size = cores.clamp(WORKERS_MIN, WORKERS_MAX);
        let workers = (0..size).filter_map(spawn_worker).collect();
        Pool { workers }
    })
}

fn spawn_worker(n: usize) -> Option<WorkerHandle> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let load = Arc::new(AtomicUsize::new(0));
    let worker_load = load.clone();
    std::thread::Builder::new()
        .name(format!("visor-engine-{n}"))
        .spawn(move || {
            THREADS.fetch_add(1, Ordering::AcqRel);
            let mut worker = Worker::new(rx, worker_load);
            // A panic outside any group's guard (a bug here) must not kill
            // the thread: the groups it held are failed and it carries on.
            while let Err(reason) = guard(|| worker.run()) {
                worker.fail_all(&reason);
            }
            THREADS.fetch_sub(1, Ordering::AcqRel);
        })
        .ok()
        .map(|_| WorkerHandle { tx, load })
}

/// Wall clock in nanoseconds since the UNIX epoch, for prepare timestamps.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Monotonic clock in nanoseconds since the first call (an `Instant`: never
/// jumps with the wall clock), against which a replica carries its peers'
/// clock readings forward (`vsr::Input::Tick`).
fn mono_ns(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

struct Worker {
    rx: Receiver<Command>,
    load: Arc<AtomicUsize>,
    groups: HashMap<u64, ReplicaHost>,
    /// Tick deadlines; an entry whose group is gone or has another
    /// deadline is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Groups stepped this iteration, in the order first stepped.
    dirty: Vec<u64>,
    env: OwnedEnv,
}

impl Worker {
    fn new(rx: Receiver<Command>, load: Arc<AtomicUsize>) -> Worker {
        Worker {
            rx,
            load,
            groups: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            env: OwnedEnv::new(),
        }
    }

    /// Runs until every sender is gone (never, in practice: the pool keeps one).
    fn run(&mut self) {
        loop {
            let received = match self.timers.peek() {
                Some(Reverse((deadline, _))) => self.rx.recv_deadline(*deadline),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(command) => {
                    self.handle(command);
                    for _ in 1..BATCH_MAX {
                        let Ok(command) = self.rx.try_recv() else { break };
                        self.handle(command);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.tick_due();
            self.flush();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Start(group) => {
                if group.shared().is_stopped() {
                    // Stopped (or its owner died) before it ever ran.
                    release(&self.load);
                    return;
                }
                let id = group.id;
                self.timers.push(Reverse((group.next_tick, id)));
                self.groups.insert(id, *group);
                // Disk mode: open the store and build the replica from it.
                let booted = match self.groups.get_mut(&id) {
                    Some(group) => guard(|| group.boot()).and_then(|booted| booted),
                    None => Ok(()),
                };
                if let Err(reason) = booted {
                    self.fail(id, &reason);
                    return;
                }
                // The replica learns the time only from ticks, and stamps
                // prepares with it: tick once now, so that requests that
                // arrive before the first interval is up get a real clock.
                let tick = Input::Tick {
                    now_ns: now_ns(),
                    mono_ns: mono_ns(Instant::now()),
                };
                self.step_awake(id, tick);
            }
            Command::Deliver { id, messages } => {
                for bytes in &messages {
                    self.step(id, Input::Receive(bytes));
                }
            }
            Command::Submit { id, submission } => self.step(id, Input::Submit(submission)),
            Command::Read { id, read } => self.step(id, Input::Read { id: read }),
            Command::Snapshot { id, op, env, bytes } => {
                let app = env.run(|env| {
                    bytes
                        .load(env)
                        .decode::<rustler::Binary>()
                        .map(|b| b.as_slice().to_vec())
                });
                // The NIF checked it is a binary.
                if let Ok(app) = app {
                    self.step(id, Input::Snapshot { op, app });
                }
            }
            Command::Reconfigure {
                id,
                change,
                ids,
                ticks,
            } => {
                self.wake(id);
                if let Some(group) = self.groups.get_mut(&id) {
                    let result = group.reconfigure(change, &ids, ticks);
                    self.after_step(id, result);
                }
            }
            Command::Peers { id, ids } => {
                let Some(group) = self.groups.get_mut(&id) else {
                    return;
                };
                group.set_up_ids(ids);
                let now = Instant::now();
                let result = group.feed_peers(now, now_ns(), mono_ns(now));
                self.after_wake(id, now, result);
            }
            Command::Stop { id } => {
                // Outputs not yet flushed are dropped: the owner asked for no more.
                if self.groups.remove(&id).is_some() {
                    release(&self.load);
                }
            }
            Command::Probe { dir, tag, owner } => {
                let result = vsr_storage::probe_dir(&dir);
                let _ = self
                    .env
                    .send_and_clear(&owner, |env| crate::convert::probe(env, tag, result));
            }
            Command::Crash { id } => {
                if let Some(group) = self.groups.get_mut(&id) {
                    let result = group.crash();
                    self.after_step(id, result);
                }
            }
            Command::Stall { release, notify } => {
                let _ = self
                    .env
                    .send_and_clear(&notify, |env| atoms::visor_engine_stalled().encode(env));
                let _ = release.recv_timeout(STALL_MAX);
                let _ = self
                    .env
                    .send_and_clear(&notify, |env| atoms::visor_engine_resumed().encode(env));
            }
        }
    }

    /// Steps group `id` with `input` (not a tick: `tick_due` ticks), waking
    /// it first if it is quiet.
    fn step(&mut self, id: u64, input: Input<'_>) {
        self.wake(id);
        self.step_awake(id, input);
    }

    /// Quiet groups: before an input, a quiet replica gets `Input::Wake`,
    /// and one the engine stopped ticking is ticked again.
    fn wake(&mut self, id: u64) {
        let Some(group) = self.groups.get_mut(&id) else {
            return;
        };
        if !group.asleep() && !group.is_quiet() {
            return;
        }
        let now = Instant::now();
        let result = group.wake(now, now_ns(), mono_ns(now));
        self.after_wake(id, now, result);
    }

    /// After a wake (or a detector feed that may wake): re-arms the group's
    /// tick if the engine had stopped ticking it.
    fn after_wake(&mut self, id: u64, now: Instant, result: Result<bool, EngineError>) {
        match result {
            Ok(rearm) => {
                if let Some(group) = self.groups.get_mut(&id).filter(|_| rearm) {
                    group.next_tick = now + group.tick;
                    self.timers.push(Reverse((group.next_tick, id)));
                }
                self.mark(id);
            }
            Err(reason) => self.fail(id, &reason),
        }
    }

    fn step_awake(&mut self, id: u64, input: Input<'_>) {
        if let Some(group) = self.groups.get_mut(&id) {
            // While writes fail, the host drops ticks and peer messages
            // (`vsr_host::Host::step`); the group is still marked, so each
            // tick retries the sync in `flush`.
            let result = group.step(input);
            self.after_step(id, result);
        }
    }

    fn after_step(&mut self, id: u64, result: Result<(), EngineError>) {
        match result {
            Ok(()) => self.mark(id),
            Err(reason) => self.fail(id, &reason),
        }
    }

    fn mark(&mut self, id: u64) {
        if let Some(group) = self.groups.get_mut(&id) {
            if !group.dirty {
                group.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn fail(&mut self, id: u64, reason: &EngineError) {
        if let Some(group) = self.groups.remove(&id) {
            group.fail(&mut self.env, reason);
            release(&self.load);
        }
    }

    /// Fails every group; used only if the worker loop itself panicked.
    fn fail_all(&mut self, reason: &EngineError) {
        let ids: Vec<u64> = self.groups.keys().copied().collect();
        for id in ids {
            self.fail(id, reason);
        }
        self.dirty.clear();
        self.timers.clear();
    }

    /// Steps every group whose tick deadline has passed.
    fn tick_due(&mut self) {
        let now = Instant::now();
        let now_ns = now_ns();
        let mono_ns = mono_ns(now);
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            if group.next_tick != deadline || group.asleep() {
                continue;
            }
            // A quiet replica is ticked no more until an input wakes it
            // (its status copy and the owner are told at the flush).
            if group.falls_asleep(deadline) {
                self.mark(id);
                continue;
            }
            // Its detector's view, if it changed (a membership change
            // moves members between slots).
            let result = group.feed_peers(now, now_ns, mono_ns);
            if let Err(reason) = result {
                self.fail(id, &reason);
                continue;
            }
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            // A worker that fell behind skips the missed ticks rather than
            // bursting them: ticks measure time, not work.
            let mut next = deadline + group.tick;
            if next <= now {
                next = now + group.tick;
            }
            group.next_tick = next;
            self.timers.push(Reverse((next, id)));
            self.step_awake(id, Input::Tick { now_ns, mono_ns });
        }
    }

    /// One message per stepped group, after publishing its status copy.
    fn flush(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            group.dirty = false;
            if let Err(reason) = group.flush(&mut self.env) {
                self.fail(id, &reason);
            }
        }
    }
}
