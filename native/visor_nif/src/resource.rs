//! The engine resource: what `start/2` returns to Elixir.
//!
//! It is a handle, not the group: the group lives on an engine thread and
//! the handle only enqueues commands to it and reads its status copy. Every
//! method returns at once and never blocks a scheduler.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use rustler::{Env, LocalPid, Monitor, Resource};
use vsr::Submission;

use crate::engine::Command;
use crate::host::Shared;

pub struct EngineResource {
    pub id: u64,
    pub replica_index: u8,
    pub replica_count: u8,
    pub shared: Arc<Shared>,
    /// The command queue of the engine thread that owns the group.
    worker: Sender<Command>,
}

impl EngineResource {
    pub fn new(
        id: u64,
        replica_index: u8,
        replica_count: u8,
        shared: Arc<Shared>,
        worker: Sender<Command>,
    ) -> Self {
        EngineResource {
            id,
            replica_index,
            replica_count,
            shared,
            worker,
        }
    }

    /// Enqueues a command unless the group is stopped. A send can only fail
    /// if the engine thread is gone, and then there is nothing to stop.
    fn enqueue(&self, command: impl FnOnce() -> Command) {
        if !self.shared.is_stopped() {
            let _ = self.worker.send(command());
        }
    }

    pub fn deliver(&self, messages: Vec<Vec<u8>>) {
        self.enqueue(|| Command::Deliver {
            id: self.id,
            messages,
        });
    }

    pub fn submit(&self, submission: Submission) {
        self.enqueue(|| Command::Submit {
            id: self.id,
            submission,
        });
    }

    pub fn read(&self, read: u64) {
        self.enqueue(|| Command::Read { id: self.id, read });
    }

    pub fn snapshot(&self, op: u64, env: rustler::OwnedEnv, bytes: rustler::env::SavedTerm) {
        self.enqueue(|| Command::Snapshot {
            id: self.id,
            op,
            env,
            bytes,
        });
    }

    pub fn reconfigure(&self, change: u64, ids: Vec<vsr::MemberId>, ticks: u64) {
        self.enqueue(|| Command::Reconfigure {
            id: self.id,
            change,
            ids,
            ticks,
        });
    }

    pub fn peers(&self, ids: Vec<vsr::MemberId>) {
        self.enqueue(|| Command::Peers { id: self.id, ids });
    }

    pub fn crash(&self) {
        self.enqueue(|| Command::Crash { id: self.id });
    }

    /// Test hook: holds the group's engine thread until `release` is
    /// released (see `StallRelease`); `notify` hears when it starts and ends.
    pub fn stall(&self, release: Receiver<()>, notify: LocalPid) {
        self.enqueue(|| Command::Stall { release, notify });
    }

    /// Stops the group; idempotent. The flag is set before the command is
    /// sent, so a Start still in the queue sees it and never runs.
    pub fn stop(&self) {
        if !self.shared.stopped.swap(true, Ordering::AcqRel) {
            let _ = self.worker.send(Command::Stop { id: self.id });
        }
    }
}

#[rustler::resource_impl]
impl Resource for EngineResource {
    /// The owner process died (start/2 monitors it): stop the group.
    fn down<'a>(&'a self, _env: Env<'a>, _pid: LocalPid, _monitor: Monitor) {
        self.stop();
    }
}

/// Test hook: what `stall_for_test/1` returns. Releasing it (or its being
/// garbage collected) drops the sender, which ends the engine thread's stall.
pub struct StallRelease(Mutex<Option<Sender<()>>>);

impl StallRelease {
    pub fn new(release: Sender<()>) -> Self {
        StallRelease(Mutex::new(Some(release)))
    }

    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[rustler::resource_impl]
impl Resource for StallRelease {}

impl Drop for EngineResource {
    /// The last reference is gone (stopped groups hold none): make sure.
    fn drop(&mut self) {
        self.stop();
    }
}
