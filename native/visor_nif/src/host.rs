//! One replica group on an engine thread: its `vsr_host::Host` (the
//! replica, its store, the outputs it owes), the owner it sends them to,
//! and the status copy `status/1` reads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustler::{Encoder, LocalPid, OwnedEnv, ResourceArc, Term};
use vsr::{ChangeResult, Input, MemberId, Membership, Output, Replica, Role, Stats, Status};
use vsr_host::{catch_panic, Host, StoreOptions};
use vsr_storage::{FileDisk, Identity};

use crate::atoms;
use crate::convert;
use crate::error::EngineError;
use crate::resource::EngineResource;

/// Where a replica host is, as far as its status copy says. `:stopped` is not here:
/// it is the resource's `stopped` flag, set at once by `stop/1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPhase {
    /// Opening its store on the engine thread (disk mode).
    Starting,
    Normal,
    ViewChange,
    Recovering,
    /// Its state diverged from the quorum's: it heals by state sync.
    Diverged,
    Failed,
}

/// What `status/1` reports: a copy of the replica's numbers, published by
/// the engine thread after each batch of steps.
#[derive(Clone, Debug)]
pub struct StatusCopy {
    pub phase: HostPhase,
    pub view: u64,
    pub log_view: u64,
    pub op: u64,
    pub commit: u64,
    pub commit_max: u64,
    /// The op of the latest checkpoint the replica holds (0 if none).
    pub checkpoint: u64,
    /// The op the replica's log starts after.
    pub log_base: u64,
    pub primary: u8,
    pub is_primary: bool,
    /// The replica's membership (its epoch and list) and its role in it.
    pub membership: Membership,
    pub role: Role,
    pub stats: Stats,
    pub storage: StorageStatus,
    /// A state sync under way: the checkpoint's op, the bytes received so
    /// far and its size (`Replica::sync_progress`).
    pub sync: Option<(u64, u64, u64)>,
    /// The replica is quiet (`Replica::is_quiet`): its engine ticks it no
    /// more until an input wakes it.
    pub quiet: bool,
}

/// The storage part of a status copy.
#[derive(Clone, Debug, Default)]
pub struct StorageStatus {
    /// `None` in memory mode.
    pub dir: Option<PathBuf>,
    /// The last write or sync error, while it lasts.
    pub error: Option<String>,
    pub syncs: u64,
    pub wal_bytes: u64,
    /// Length of the log in the WAL file now (the file has zeros beyond it;
    /// it shrinks at a compaction).
    pub wal_size: u64,
    pub compactions: u64,
    /// The op of the durable checkpoint (0 if none).
    pub checkpoint: u64,
}

impl StatusCopy {
    /// A group whose replica is not built yet (its store opens on the engine thread).
    pub fn starting(replica: &Replica, dir: Option<PathBuf>) -> StatusCopy {
        let mut copy = StatusCopy::of(replica);
        copy.phase = HostPhase::Starting;
        copy.storage.dir = dir;
        copy
    }

    pub fn of(replica: &Replica) -> StatusCopy {
        StatusCopy {
            phase: match replica.status() {
                Status::Normal => HostPhase::Normal,
                Status::ViewChange => HostPhase::ViewChange,
                Status::Recovering | Status::Repairing => HostPhase::Recovering,
                Status::Diverged => HostPhase::Diverged,
            },
            view: replica.view(),
            log_view: replica.log_view(),
            op: replica.op(),
            commit: replica.commit(),
            commit_max: replica.commit_max(),
            checkpoint: replica.checkpoint().map_or(0, |c| c.op),
            log_base: replica.log().base(),
            primary: replica.primary(),
            is_primary: replica.is_primary(),
            membership: *replica.membership(),
            role: replica.role(),
            stats: replica.stats().clone(),
            storage: StorageStatus::default(),
            sync: replica.sync_progress(),
            quiet: replica.is_quiet(),
        }
    }
}

/// Disk mode: where the group's store is, and what to put in a new one.
pub struct DiskOptions {
    pub dir: PathBuf,
    /// The group's name, part of the store's identity.
    pub group: Vec<u8>,
    /// Opaque host metadata kept in a new store's superblock.
    pub meta: Vec<u8>,
    /// `Store::set_compaction_bytes`, if given.
    pub compaction_bytes: Option<u64>,
}

/// A node a membership change adds (`start/2`'s `member`, `joined` and
/// `learner`): its member id, the epoch that admits it, and, for a
/// learner, the life drawn for this start (`None`: disk mode, a member
/// restarting from the store it created as a learner).
#[derive(Clone, Copy, Debug)]
pub struct Joining {
    pub id: MemberId,
    pub joined: vsr::Epoch,
    pub life: Option<u64>,
}

/// State shared between a group's resource (read by NIFs on schedulers)
/// and its engine thread (the only writer).
pub struct Shared {
    copy: Mutex<StatusCopy>,
    /// Set by `stop/1`, the owner's death, the resource's drop, or a
    /// failure; once set, the NIFs enqueue nothing more for the group.
    pub stopped: AtomicBool,
}

impl Shared {
    pub fn new(copy: StatusCopy) -> Shared {
        Shared {
            copy: Mutex::new(copy),
            stopped: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StatusCopy> {
        // Only a copy happens under the lock, so it cannot be poisoned in
        // practice; if it ever were, the data is still a valid copy.
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest status copy (the lock is held for the copy only).
    pub fn status_copy(&self) -> StatusCopy {
        self.lock().clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Runs `f`, turning a panic into `EngineError::Bug`: a bug in `vsr` (or
/// here) fails one group, never the VM.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, EngineError> {
    Ok(catch_panic(f)?)
}

/// One replica of a group as an engine thread hosts it: the `vsr_host::Host`
/// that runs the replica and its store, and what only the NIF has: the
/// owner, the resource that names the group, its ticks.
pub struct ReplicaHost {
    pub id: u64,
    host: Host<FileDisk>,
    owner: LocalPid,
    /// The resource, to name the group in messages to its owner. This
    /// reference keeps the resource alive while the group runs; the owner
    /// monitor, `stop/1` and failures are what end a group (docs/nif.md).
    engine: ResourceArc<EngineResource>,
    /// Disk mode, until `boot` runs: the store to open, whether a new
    /// store's replica must recover (it rejoins a cluster that ran), and
    /// the member a change added, if this is one.
    boot: Option<(DiskOptions, bool, Option<Joining>)>,
    pub tick: Duration,
    /// The group's next tick; the worker's timer heap holds one entry
    /// with exactly this deadline.
    pub next_tick: Instant,
    /// Stepped since the last flush (the worker's dirty list has it).
    pub dirty: bool,
    /// Outputs the host itself owes the owner, sent before the replica's
    /// at the next flush: the membership a store booted into, and answers
    /// to changes the replica could not take.
    owed: Vec<Output>,
    /// Quiet groups: what the engine keeps to stop and resume its ticks.
    quiet: QuietHost,
    /// What the owner's status watch looks at, as last published, and as
    /// the owner was last told it changed (`:status_changed`).
    published: WatchKey,
    told: WatchKey,
}

/// The fields of a status copy the owner's watch acts on (`Visor.Router.Watch`:
/// a view change, a new primary or role, a recovery, a state sync, dropped
/// messages). The engine tells the owner when they change, so that the
/// owner reads the status then instead of polling it; what changes with
/// every op (op, commit, sent) is left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct WatchKey {
    phase: Option<HostPhase>,
    view: u64,
    primary: u8,
    is_primary: bool,
    role: Option<Role>,
    epoch: u64,
    sync: Option<u64>,
    installed: u64,
    dropped: u64,
}

impl WatchKey {
    fn of(copy: &StatusCopy) -> WatchKey {
        let s = &copy.stats;
        WatchKey {
            phase: Some(copy.phase),
            view: copy.view,
            primary: copy.primary,
            is_primary: copy.is_primary,
            role: Some(copy.role),
            epoch: copy.membership.epoch(),
            sync: copy.sync.map(|(op, _, _)| op),
            installed: s.checkpoints_installed,
            dropped: [
                s.dropped_truncated,
                s.dropped_corrupt,
                s.dropped_unknown_format,
                s.dropped_foreign_cluster,
                s.dropped_unknown_sender,
                s.dropped_malformed,
                s.dropped_stale,
                s.dropped_requests,
            ]
            .iter()
            .fold(0u64, |sum, n| sum.wrapping_add(*n)),
        }
    }
}

/// A quiet group on the engine (docs/nif.md, "Quiet groups"): the engine
/// stops ticking a replica it finds quiet, wakes it (`Input::Wake`, with
/// the ticks it skipped) before any other input, and feeds it the node
/// detector's view (`vsr_host::peers_feed`, the rule the simulator runs).
#[derive(Debug)]
struct QuietHost {
    /// When the engine found the replica quiet and stopped ticking it.
    since: Option<Instant>,
    /// The member ids whose nodes the node's detector holds up (`peers/2`);
    /// `None` until the owner first says: every member up.
    up_ids: Option<Vec<MemberId>>,
    /// The view last fed to the replica, one bit per slot (`u16::MAX`, all
    /// up, as a replica boots believing).
    fed: u16,
    /// Whether the owner was last told the engine ticks the replica no more.
    told_asleep: bool,
}

impl ReplicaHost {
    /// `host` runs the group's replica in memory mode; in disk mode (`disk`
    /// given) it stands in until `boot` replaces it.
    pub fn new(
        id: u64,
        host: Host<FileDisk>,
        owner: LocalPid,
        engine: ResourceArc<EngineResource>,
        tick: Duration,
        disk: Option<(DiskOptions, bool, Option<Joining>)>,
    ) -> ReplicaHost {
        let first = WatchKey::of(&engine.shared.lock());
        ReplicaHost {
            id,
            host,
            owner,
            engine,
            boot: disk,
            tick,
            next_tick: Instant::now() + tick,
            dirty: false,
            owed: Vec::new(),
            quiet: QuietHost {
                since: None,
                up_ids: None,
                fed: u16::MAX,
                told_asleep: false,
            },
            // The owner looks at the status once as it starts the group:
            // it is told of changes from that first copy on.
            published: first,
            told: first,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.engine.shared
    }

    /// Disk mode: opens the store and builds the replica from it. Runs on
    /// the engine thread, before the group's first step.
    pub fn boot(&mut self) -> Result<(), EngineError> {
        let Some((disk, recover, joining)) = self.boot.take() else {
            return Ok(());
        };
        let config = self.host.replica().config().clone();
        let index = self.host.replica().index();
        let file = FileDisk::open(&disk.dir).map_err(|e| EngineError::store(&disk.dir, e))?;
        let (member, joined) = match joining {
            Some(joining) => (joining.id, joining.joined),
            // The member id of this slot in the genesis (today's
            // `Config::new` numbers them: the slot number).
            None => (config.genesis.members()[index as usize].id, 0),
        };
        let store = StoreOptions {
            disk: file,
            identity: Identity {
                cluster: config.cluster,
                group: disk.group,
                member,
                joined,
            },
            meta: disk.meta,
            compaction_bytes: disk.compaction_bytes,
        };
        let nonce = recovery_nonce(config.jitter_seed);
        let booted = match joining.and_then(|j| j.life) {
            // A learner starts in a new store (its host cleared the
            // directory): one that holds state is refused.
            Some(life) => Host::boot_learner(config, index, member, joined, life, Some(store)),
            None => Host::boot(config, index, Some(store), recover, nonce),
        };
        self.host = booted.map_err(|unbooted| EngineError::boot(&disk.dir, unbooted.error))?;
        // A store of a later epoch, or of a replica that left, tells the
        // owner where it stands before anything else: the core emits
        // `Epoch` only on entering one.
        let replica = self.host.replica();
        let (membership, role) = (*replica.membership(), replica.role());
        if membership.epoch() > 0 || role != Role::Member {
            self.owed.push(Output::Epoch {
                membership: Box::new(membership),
                role,
            });
        }
        if role == Role::Removed {
            self.owed.push(Output::Removed {
                epoch: membership.epoch(),
            });
        }
        Ok(())
    }

    /// A change of the membership to the members `ids` (in any order),
    /// named `change` by this replica's host, given up after `ticks` if
    /// not yet consented to (`Input::Reconfigure`). The target is built
    /// here, on the engine thread, from the replica's own membership
    /// (`Membership::next`, led by the primary it knows). A replica that
    /// handles nothing more (removed), or a list `next` refuses, is
    /// answered at once.
    pub fn reconfigure(&mut self, change: u64, ids: &[MemberId], ticks: u64) -> Result<(), EngineError> {
        let replica = self.host.replica();
        if replica.role() == Role::Removed {
            self.owed.push(Output::Reconfigured {
                id: change,
                result: ChangeResult::NotMember,
            });
            return Ok(());
        }
        match replica.change_target(ids, change) {
            Ok(target) => self.step(Input::Reconfigure {
                id: change,
                target: Box::new(target),
                ticks,
            }),
            // The NIF checked the list (1 to MAX_REPLICAS distinct ids), so
            // `next` has no reason left to refuse; should it, the change
            // was never handed over: a final "no".
            Err(_) => {
                self.owed.push(Output::Reconfigured {
                    id: change,
                    result: ChangeResult::Stale,
                });
                Ok(())
            }
        }
    }

    /// Feeds one input to the replica (a paused one drops ticks and peer
    /// messages: `Host::step`) and keeps its outputs for `flush`.
    pub fn step(&mut self, input: Input<'_>) -> Result<(), EngineError> {
        Ok(self.host.step(input)?)
    }

    /// Whether the replica is quiet (`Replica::is_quiet`).
    pub fn is_quiet(&self) -> bool {
        self.host.replica().is_quiet()
    }

    /// Whether the engine stopped ticking this replica (it is quiet).
    pub fn asleep(&self) -> bool {
        self.quiet.since.is_some()
    }

    /// At a tick due `at`: if the replica is quiet (and its store is not
    /// paused), the engine stops ticking it (`true`) until an input wakes it.
    pub fn falls_asleep(&mut self, at: Instant) -> bool {
        // A paused store (a failed write) is retried at each tick's flush:
        // the group sleeps only once its writes are durable.
        if !self.host.replica().is_quiet() || self.host.paused() || self.host.has_staged() {
            return false;
        }
        self.quiet.since.get_or_insert(at);
        true
    }

    /// Before an input other than a tick: a quiet replica is woken
    /// (`Input::Wake`, with the ticks skipped since it fell asleep and the
    /// detector's view). `true` if the engine had stopped ticking it, and
    /// must tick it again.
    pub fn wake(&mut self, now: Instant, now_ns: u64, mono_ns: u64) -> Result<bool, EngineError> {
        let since = self.quiet.since.take();
        if !self.host.replica().is_quiet() {
            return Ok(since.is_some());
        }
        // Every tick deadline from the one found quiet on was skipped.
        let elapsed_ticks = since.map_or(0, |since| {
            let tick = self.tick.as_nanos().max(1);
            (now.saturating_duration_since(since).as_nanos() / tick) as u64 + 1
        });
        let up = self.up_bits();
        self.quiet.fed = up;
        self.step(Input::Wake {
            now_ns,
            mono_ns,
            elapsed_ticks,
            up,
        })?;
        Ok(since.is_some())
    }

    /// The node's detector holds up the nodes of the members `ids` (the
    /// owner's `peers/2`).
    pub fn set_up_ids(&mut self, ids: Vec<MemberId>) {
        self.quiet.up_ids = Some(ids);
    }

    /// Feeds the replica the detector's view if it changed since last fed
    /// (`vsr_host::peers_feed`): `Input::Peers` when awake, a wake when
    /// quiet and it concerns it. `true` if the engine must tick it again.
    pub fn feed_peers(&mut self, now: Instant, now_ns: u64, mono_ns: u64) -> Result<bool, EngineError> {
        let up = self.up_bits();
        if up == self.quiet.fed {
            return Ok(false);
        }
        match vsr_host::peers_feed(self.host.replica(), up) {
            vsr_host::PeersFeed::Peers => {
                self.quiet.fed = up;
                self.step(Input::Peers { up })?;
                Ok(false)
            }
            vsr_host::PeersFeed::Wake => self.wake(now, now_ns, mono_ns),
            vsr_host::PeersFeed::Nothing => Ok(false),
        }
    }

    /// The detector's view as the replica takes it: one bit per slot of its
    /// list, clear for a member whose node is not held up (its own slot
    /// always set; slots outside the list too).
    fn up_bits(&self) -> u16 {
        match &self.quiet.up_ids {
            None => u16::MAX,
            Some(ids) => vsr_host::up_bits(self.host.replica(), |member| ids.contains(&member.id)),
        }
    }

    /// Test hook: fails the group as a panic inside `vsr` would.
    pub fn crash(&mut self) -> Result<(), EngineError> {
        // resume_unwind skips the panic hook: no backtrace noise in test logs.
        guard(|| std::panic::resume_unwind(Box::new("deliberate crash (test hook)")))
    }

    /// Publishes the status copy, then sends this iteration's outputs to the
    /// owner: one message with what may leave at once and, in disk mode
    /// when the iteration wrote, a second one after the sync with what
    /// followed the writes. Each send comes after a publish, so that
    /// `status/1` called on receipt of a message is at least as new as the
    /// message. Only ever called on an engine thread (send_and_clear panics
    /// on a scheduler thread).
    pub fn flush(&mut self, env: &mut OwnedEnv) -> Result<(), EngineError> {
        // What needs no durability (a primary's prepares, above all) leaves
        // before the disk is touched, so the backups' syncs overlap ours.
        let early = self.host.take_ready().map(|ready| {
            let mut owed = std::mem::take(&mut self.owed);
            owed.extend(ready);
            owed
        });
        self.publish();
        self.send_events(env, early?)?;
        if self.host.has_staged() {
            let late = self.host.sync_staged();
            self.publish();
            self.send_events(env, late)?;
        }
        Ok(())
    }

    /// Sends the pending storage notices and `outputs` to the owner as one
    /// message, `{:visor_engine, engine, events}` (nothing if both are empty):
    /// the notices, then the sends grouped by peer, then the other outputs
    /// in order.
    fn send_events(&mut self, env: &mut OwnedEnv, outputs: Vec<Output>) -> Result<(), EngineError> {
        let notices = self.host.take_notices();
        // The owner stops looking at a group the engine no longer ticks,
        // and looks again once it ticks it.
        let asleep = self.asleep();
        let quiet = (asleep != self.quiet.told_asleep).then_some(asleep);
        self.quiet.told_asleep = asleep;
        let changed = self.published != self.told;
        self.told = self.published;
        if self.shared().is_stopped() {
            // stop/1 has returned: the owner gets nothing more, even from
            // steps taken before the Stop command reached this thread.
            return Ok(());
        }
        if outputs.is_empty() && notices.is_empty() && quiet.is_none() && !changed {
            return Ok(());
        }
        let engine = &self.engine;
        let sent = guard(|| {
            // An error means the owner is gone: its monitor stops the group.
            let _ = env.send_and_clear(&self.owner, |env| {
                // Sends first: a peer's work should not wait for this
                // node's `handle_commit`s.
                let events: Vec<Term> = notices
                    .iter()
                    .map(|n| convert::notice(env, n))
                    .chain(convert::sends(env, &outputs))
                    .chain(outputs.iter().filter_map(|o| convert::event(env, o)))
                    .chain(quiet.map(|asleep| (atoms::quiet(), asleep).encode(env)))
                    .chain(changed.then(|| atoms::status_changed().encode(env)))
                    .collect();
                (atoms::visor_engine(), engine.encode(env), events)
            });
        });
        if sent.is_err() {
            env.clear();
        }
        sent
    }

    fn publish(&mut self) {
        let mut copy = StatusCopy::of(self.host.replica());
        if let Some(store) = self.host.store() {
            let stats = store.stats();
            copy.storage = StorageStatus {
                dir: Some(store.disk().dir().to_path_buf()),
                error: self.host.storage_error().map(str::to_string),
                syncs: stats.syncs,
                wal_bytes: stats.wal_bytes,
                wal_size: store.wal_len(),
                compactions: stats.compactions,
                checkpoint: store.checkpoint_op(),
            };
        }
        self.published = WatchKey::of(&copy);
        *self.shared().lock() = copy;
    }

    /// The group failed: flush what it produced before the failure, mark
    /// it `:failed`, and tell the owner `{:visor_engine_down, engine, reason}`
    /// (unless it was stopped already: then the owner wants nothing more).
    pub fn fail(mut self, env: &mut OwnedEnv, reason: &EngineError) {
        let _ = self.flush(env);
        let was_stopped = self.shared().stopped.swap(true, Ordering::AcqRel);
        self.shared().lock().phase = HostPhase::Failed;
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

/// A recovery's nonce: it only has to differ between restarts.
pub fn recovery_nonce(seed: u64) -> u128 {
    vsr::checksum(&[&seed.to_le_bytes()[..], &std::process::id().to_le_bytes()].concat())
}
