//! One replica group on an engine thread: its `vsr::Replica`, the outputs
//! it owes its owner, and the snapshot `status/1` reads.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustler::{Encoder, LocalPid, OwnedEnv, ResourceArc, Term};
use vsr::{Input, Output, Replica, Stats, Status};

use crate::atoms;
use crate::convert;
use crate::resource::EngineResource;

/// Where a group is, as far as the snapshot says. `:stopped` is not here:
/// it is the resource's `stopped` flag, set at once by `stop/1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupStatus {
    Normal,
    ViewChange,
    Recovering,
    Failed,
}

/// What `status/1` reports: a copy of the replica's numbers, published by
/// the engine thread after each batch of steps.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub status: GroupStatus,
    pub view: u64,
    pub log_view: u64,
    pub op: u64,
    pub commit: u64,
    pub commit_max: u64,
    pub primary: u8,
    pub is_primary: bool,
    pub stats: Stats,
}

impl Snapshot {
    pub fn of(replica: &Replica) -> Snapshot {
        Snapshot {
            status: match replica.status() {
                Status::Normal => GroupStatus::Normal,
                Status::ViewChange => GroupStatus::ViewChange,
                Status::Recovering => GroupStatus::Recovering,
            },
            view: replica.view(),
            log_view: replica.log_view(),
            op: replica.op(),
            commit: replica.commit(),
            commit_max: replica.commit_max(),
            primary: replica.primary(),
            is_primary: replica.is_primary(),
            stats: replica.stats().clone(),
        }
    }
}

/// State shared between a group's resource (read by NIFs on schedulers)
/// and its engine thread (the only writer).
pub struct Shared {
    snapshot: Mutex<Snapshot>,
    /// Set by `stop/1`, the owner's death, the resource's drop, or a
    /// failure; once set, the NIFs enqueue nothing more for the group.
    pub stopped: AtomicBool,
}

impl Shared {
    pub fn new(snapshot: Snapshot) -> Shared {
        Shared {
            snapshot: Mutex::new(snapshot),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // Only a copy happens under the lock, so it cannot be poisoned in
        // practice; if it ever were, the data is still a valid snapshot.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the latest snapshot (the lock is held for the copy only).
    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Runs `f`, turning a panic into an error message: a bug in `vsr` (or
/// here) fails one group, never the VM.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(&*payload))
}

pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}

/// A replica group as an engine thread holds it.
pub struct Group {
    pub id: u64,
    replica: Replica,
    owner: LocalPid,
    /// The resource, to name the group in messages to its owner. This
    /// reference keeps the resource alive while the group runs; the owner
    /// monitor, `stop/1` and failures are what end a group (docs/nif.md).
    engine: ResourceArc<EngineResource>,
    /// Outputs of this iteration's steps, sent as one message by `flush`.
    outbox: Vec<Output>,
    pub tick: Duration,
    /// The group's next tick; the worker's timer heap holds one entry
    /// with exactly this deadline.
    pub next_tick: Instant,
    /// Stepped since the last flush (the worker's dirty list has it).
    pub dirty: bool,
}

impl Group {
    pub fn new(
        id: u64,
        replica: Replica,
        owner: LocalPid,
        engine: ResourceArc<EngineResource>,
        tick: Duration,
    ) -> Group {
        Group {
            id,
            replica,
            owner,
            engine,
            outbox: Vec::new(),
            tick,
            next_tick: Instant::now() + tick,
            dirty: false,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.engine.shared
    }

    /// Feeds one input to the replica and keeps its outputs for `flush`.
    pub fn step(&mut self, input: Input<'_>) -> Result<(), String> {
        let outputs = guard(|| self.replica.step(input))?;
        // Memory mode: the replica's in-memory log is the storage, so the
        // writes are dropped. The durability issue handles WriteLog and
        // WriteState here, on the engine thread, with group commit: one
        // fsync covering the writes of every step in the iteration, before
        // the sends and replies that follow them leave in `flush`.
        self.outbox.extend(
            outputs
                .into_iter()
                .filter(|o| !matches!(o, Output::WriteLog { .. } | Output::WriteState(_))),
        );
        Ok(())
    }

    /// Test hook: fails the group as a panic inside `vsr` would.
    pub fn crash(&mut self) -> Result<(), String> {
        // resume_unwind skips the panic hook: no backtrace noise in test logs.
        guard(|| std::panic::resume_unwind(Box::new("deliberate crash (test hook)")))
    }

    /// Publishes the snapshot, then sends this iteration's outputs to the
    /// owner as one message, `{:visor_engine, engine, events}`. In that
    /// order, so that `status/1` called on receipt of a message is at least
    /// as new as the message. Only ever called on an engine thread
    /// (send_and_clear panics on a scheduler thread).
    pub fn flush(&mut self, env: &mut OwnedEnv) -> Result<(), String> {
        self.publish();
        if self.shared().is_stopped() {
            // stop/1 has returned: the owner gets nothing more, even from
            // steps taken before the Stop command reached this thread.
            self.outbox.clear();
        }
        if !self.outbox.is_empty() {
            let outbox = std::mem::take(&mut self.outbox);
            let engine = &self.engine;
            let sent = guard(|| {
                // An error means the owner is gone: its monitor stops the group.
                let _ = env.send_and_clear(&self.owner, |env| {
                    let events: Vec<Term> = outbox.iter().filter_map(|o| convert::event(env, o)).collect();
                    (atoms::visor_engine(), engine.encode(env), events)
                });
            });
            if sent.is_err() {
                env.clear();
            }
            sent?;
        }
        Ok(())
    }

    fn publish(&self) {
        let snapshot = Snapshot::of(&self.replica);
        *self.shared().lock() = snapshot;
    }

    /// The group failed: flush what it produced before the failure, mark
    /// it `:failed`, and tell the owner `{:visor_engine_down, engine, reason}`
    /// (unless it was stopped already: then the owner wants nothing more).
    pub fn fail(mut self, env: &mut OwnedEnv, reason: &str) {
        let _ = self.flush(env);
        let was_stopped = self.shared().stopped.swap(true, Ordering::AcqRel);
        self.shared().lock().status = GroupStatus::Failed;
        if was_stopped {
            return;
        }
        let engine = &self.engine;
        let sent = guard(|| {
            let _ = env.send_and_clear(&self.owner, |env| {
                (atoms::visor_engine_down(), engine.encode(env), reason).encode(env)
            });
        });
        if sent.is_err() {
            env.clear();
        }
    }
}
