//! [`Host`]: a replica, its store, and the outputs it owes.

use vsr::{Config, Input, Output, Replica, Slot};
use vsr_storage::{Creation, Disk, Identity, Opened, Store};

use crate::error::{catch_panic, BootError, Bug, Unbooted};

/// A replica that starts with nothing: fresh, or recovering if `recover`.
fn fresh(
    config: Config,
    index: Slot,
    recover: bool,
    nonce: u128,
    known: Option<vsr::Membership>,
) -> Result<Replica, BootError> {
    match (recover, known) {
        (true, Some(known)) => Replica::recovering_in(config, index, known, nonce).map_err(BootError::Bug),
        (true, None) => Replica::recovering(config, index, nonce).map_err(BootError::Bug),
        (false, _) => Ok(Replica::new(config, index)),
    }
}

/// Runs a boot, turning a panic into a boot that failed (the disk, if it
/// was taken, is lost with the panic).
fn guarded<D: Disk>(boot: impl FnOnce() -> Result<Host<D>, Unbooted<D>>) -> Result<Host<D>, Unbooted<D>> {
    catch_panic(boot).unwrap_or_else(|bug| {
        Err(Unbooted {
            error: bug.into(),
            disk: None,
        })
    })
}

/// Opens (or creates, as `creation` says) the store `options` describe,
/// handing the disk back if it cannot.
fn open_store<D: Disk>(
    options: StoreOptions<D>,
    creation: Creation,
) -> Result<(Store<D>, Opened), Unbooted<D>> {
    let (mut store, opened) = Store::open_with(options.disk, options.identity, options.meta, creation)
        .map_err(|unopened| Unbooted {
            error: BootError::Store(unopened.error),
            disk: Some(unopened.disk),
        })?;
    if let Some(bytes) = options.compaction_bytes {
        store.set_compaction_bytes(bytes);
    }
    Ok((store, opened))
}

/// Disk mode: the disk a replica's store is on, and what a new store there
/// records.
pub struct StoreOptions<D: Disk> {
    pub disk: D,
    /// Whose store it is: a store of another replica is refused.
    pub identity: Identity,
    /// Opaque host metadata kept in a new store's superblock.
    pub meta: Vec<u8>,
    /// `Store::set_compaction_bytes`, if given.
    pub compaction_bytes: Option<u64>,
}

/// Something about the replica's storage its host should tell people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageNotice {
    /// A new, empty store was created.
    Created,
    /// Restarted from the store; `torn` is the offset of a torn write cut
    /// off the log's tail, if there was one.
    Restarted { torn: Option<u64> },
    /// The store's log cannot be trusted: recovering from the peers.
    Recovering(String),
    /// One damaged entry of the log is fetched from a peer before the
    /// replica restarts from the rest.
    Repairing(String),
    /// A write or sync failed: the replica acknowledges nothing until one succeeds.
    Error(String),
    /// Writes succeed again after an error.
    Resumed,
}

/// One replica as a host runs it: the replica, its store (disk mode), and
/// the outputs it owes. The driver feeds it inputs with [`Host::step`];
/// then, as often as it likes (the NIF: once per engine iteration; the
/// simulator: once per tick), it takes what may leave at once with
/// [`Host::take_ready`], and what waited for the writes with
/// [`Host::sync_staged`].
pub struct Host<D: Disk> {
    replica: Replica,
    /// `None` in memory mode: writes are dropped, the replica's log is the storage.
    store: Option<Store<D>>,
    /// Outputs of the steps since the last `take_ready`, in order.
    outbox: Vec<Output>,
    /// Outputs that followed a staged write, waiting for it to be durable.
    held: Vec<Output>,
    notices: Vec<StorageNotice>,
    /// The last sync's error, until a sync succeeds.
    storage_error: Option<String>,
}

impl<D: Disk> Host<D> {
    /// Builds replica `index` of `config`. In memory mode (`store` is
    /// `None`) it is fresh, or recovering if `recover` (it lost its state
    /// and rejoins a cluster that ran). In disk mode it is built from what
    /// the store holds: fresh (or recovering if `recover`) from a new
    /// store, restarted from the checkpoint and log (its outputs then
    /// re-execute the committed prefix, for the host to rebuild its
    /// application state), repairing one damaged entry, or recovering
    /// from a log the store cannot trust. A recovering replica's state is
    /// durable before this returns: a crash from then on restarts it into
    /// recovery, never into an empty log. `nonce` (a recovery's) must
    /// differ at every boot. A boot that fails hands the disk back
    /// (`Unbooted`), as it left it, for another try.
    pub fn boot(
        config: Config,
        index: Slot,
        store: Option<StoreOptions<D>>,
        recover: bool,
        nonce: u128,
    ) -> Result<Host<D>, Unbooted<D>> {
        Host::boot_in(config, index, store, recover, nonce, None)
    }

    /// [`Host::boot`], recovering (if it does) in `known`, the newest
    /// membership its host knows, instead of the genesis.
    pub fn boot_in(
        config: Config,
        index: Slot,
        store: Option<StoreOptions<D>>,
        recover: bool,
        nonce: u128,
        known: Option<vsr::Membership>,
    ) -> Result<Host<D>, Unbooted<D>> {
        guarded(|| Host::boot_unguarded(config, index, store, recover, nonce, known))
    }

    /// Builds a learner (docs/design/membership.md, 2.5): member `id` in
    /// slot `index`, to join epoch `joined`, running `life` (drawn afresh
    /// at every start, never 0). In disk mode its store is created as a
    /// learner's; a store that already holds state is refused: a learner
    /// that restarts starts over, in a new store, with a new life, and one
    /// that has entered its epoch since (its store records it a member)
    /// restarts through [`Host::boot`] as the member it is.
    pub fn boot_learner(
        config: Config,
        index: Slot,
        id: vsr::MemberId,
        joined: vsr::Epoch,
        life: u64,
        store: Option<StoreOptions<D>>,
    ) -> Result<Host<D>, Unbooted<D>> {
        guarded(|| Host::boot_learner_unguarded(config, index, id, joined, life, store))
    }

    fn boot_learner_unguarded(
        config: Config,
        index: Slot,
        id: vsr::MemberId,
        joined: vsr::Epoch,
        life: u64,
        store: Option<StoreOptions<D>>,
    ) -> Result<Host<D>, Unbooted<D>> {
        let learner = |config| Replica::learner(config, index, id, joined, life).map_err(BootError::Bug);
        let Some(options) = store else {
            let replica = learner(config).map_err(|error| Unbooted { error, disk: None })?;
            return Ok(Host::new(replica, None, Vec::new(), Vec::new()));
        };
        let (store, opened) = open_store(options, Creation::Learner { life })?;
        let booted = match opened {
            Opened::Created { .. } => learner(config).map(|replica| (replica, StorageNotice::Created)),
            _ => Err(BootError::Bug(
                "a learner starts in a new store: this one holds state already".into(),
            )),
        };
        match booted {
            Ok((replica, notice)) => Ok(Host::new(replica, Some(store), Vec::new(), vec![notice])),
            Err(error) => Err(Unbooted {
                error,
                disk: Some(store.into_disk()),
            }),
        }
    }

    fn boot_unguarded(
        config: Config,
        index: Slot,
        store: Option<StoreOptions<D>>,
        recover: bool,
        nonce: u128,
        known: Option<vsr::Membership>,
    ) -> Result<Host<D>, Unbooted<D>> {
        let Some(options) = store else {
            let replica = fresh(config, index, recover, nonce, known)
                .map_err(|error| Unbooted { error, disk: None })?;
            return Ok(Host::new(replica, None, Vec::new(), Vec::new()));
        };
        let creation = if recover {
            Creation::Recovering
        } else {
            Creation::Fresh
        };
        let (mut store, opened) = open_store(options, creation)?;
        // The store names the member it belongs to: a restart is that one,
        // whatever its durable list holds at its slot.
        let identity = &store.superblock().identity;
        let config = Config {
            member: Some((identity.member, identity.joined)),
            ..config
        };
        match Host::start(config, index, &mut store, opened, recover, nonce, known) {
            Ok((replica, outputs, notice)) => Ok(Host::new(replica, Some(store), outputs, vec![notice])),
            Err(error) => Err(Unbooted {
                error,
                disk: Some(store.into_disk()),
            }),
        }
    }

    /// Builds the replica from what the opened store holds (its outputs
    /// and what to tell about the store), a recovering one's state durable
    /// first.
    fn start(
        config: Config,
        index: Slot,
        store: &mut Store<D>,
        opened: Opened,
        recover: bool,
        nonce: u128,
        known: Option<vsr::Membership>,
    ) -> Result<(Replica, Vec<Output>, StorageNotice), BootError> {
        let (replica, outputs, notice) = match opened {
            Opened::Created { .. } => (
                fresh(config, index, recover, nonce, known)?,
                Vec::new(),
                StorageNotice::Created,
            ),
            Opened::Restart {
                state,
                checkpoint,
                entries,
                torn,
            } => {
                // Outputs begin with the checkpoint's InstallSnapshot, then
                // the executes of the committed entries after it.
                let (mut replica, outputs) = Replica::restart_from(config, index, state, checkpoint, entries)
                    .map_err(BootError::Corrupt)?;
                if let Some(life) = store.life() {
                    replica.resume_learner_life(life, nonce);
                }
                (replica, outputs, StorageNotice::Restarted { torn })
            }
            Opened::Repair {
                state,
                checkpoint,
                entries,
                hole,
                after,
            } => (
                {
                    let mut replica =
                        Replica::restart_repairing(config, index, state, checkpoint, entries, hole, after)
                            .map_err(BootError::Corrupt)?;
                    if let Some(life) = store.life() {
                        replica.resume_learner_life(life, nonce);
                    }
                    replica
                },
                Vec::new(),
                StorageNotice::Repairing(format!(
                    "the write-ahead log's entry at op {} is damaged; the entries around it are intact, \
                     and it is fetched from a peer by its checksum {:032x}",
                    hole.0, hole.1
                )),
            ),
            Opened::Recover { state, reason } => (
                Replica::recovering_from(config, index, state, nonce).map_err(BootError::Corrupt)?,
                Vec::new(),
                StorageNotice::Recovering(reason),
            ),
        };
        if replica.is_recovering() {
            // Durable before anything else: a crash from here on must
            // restart into recovery, never into the empty log.
            store
                .stage(&Output::WriteState(Box::new(replica.durable_state())))
                .map_err(BootError::Bug)?;
            store.sync().map_err(BootError::Sync)?;
        }
        Ok((replica, outputs, notice))
    }

    fn new(
        replica: Replica,
        store: Option<Store<D>>,
        outbox: Vec<Output>,
        notices: Vec<StorageNotice>,
    ) -> Host<D> {
        Host {
            replica,
            store,
            outbox,
            held: Vec::new(),
            notices,
            storage_error: None,
        }
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The store, in disk mode.
    pub fn store(&self) -> Option<&Store<D>> {
        self.store.as_ref()
    }

    pub fn store_mut(&mut self) -> Option<&mut Store<D>> {
        self.store.as_mut()
    }

    /// The disk, in disk mode, once the host stops (a crash, for the
    /// simulator): what was staged but never written is gone; what was
    /// written but not synced is the disk's to keep, tear or lose.
    pub fn into_disk(self) -> Option<D> {
        self.store.map(Store::into_disk)
    }

    /// Whether writes are failing: until a sync succeeds, the replica gets
    /// no ticks and no peer messages (see [`Host::step`]).
    pub fn paused(&self) -> bool {
        self.storage_error.is_some()
    }

    /// The error of the last sync, while writes are failing.
    pub fn storage_error(&self) -> Option<&str> {
        self.storage_error.as_deref()
    }

    /// Feeds one input to the replica and keeps its outputs for
    /// `take_ready`. While paused, ticks and peer messages are dropped (the
    /// peers see a slow replica, and the protocol tolerates the lost
    /// messages; the driver's next sync retries the write); submissions,
    /// reads and snapshots still go in, so that they are answered later.
    pub fn step(&mut self, input: Input<'_>) -> Result<(), Bug> {
        if self.paused() && matches!(input, Input::Tick { .. } | Input::Receive(_)) {
            return Ok(());
        }
        let outputs = catch_panic(|| self.replica.step(input))?;
        self.outbox.extend(outputs);
        Ok(())
    }

    /// The outputs of the steps since the last call that may leave now, in
    /// order: those that come before any write. Writes are staged in the
    /// store; whatever follows a write (and everything while a write is
    /// held) is held for [`Host::sync_staged`]. In memory mode writes are
    /// dropped and everything leaves at once.
    pub fn take_ready(&mut self) -> Result<Vec<Output>, Bug> {
        let outbox = std::mem::take(&mut self.outbox);
        let send_before_sync = self.sends_before_sync();
        let Some(store) = self.store.as_mut() else {
            return Ok(outbox.into_iter().filter(|o| !is_write(o)).collect());
        };
        let mut ready = Vec::new();
        for output in outbox {
            let waits = !self.held.is_empty() || store.has_staged();
            if (send_before_sync || !waits) && !is_write(&output) {
                ready.push(output);
            } else if !store.stage(&output).map_err(Bug)? {
                self.held.push(output);
            }
        }
        Ok(ready)
    }

    /// The outputs of the steps since the last `take_ready`, in order,
    /// before any is staged or sent: for a driver that checks what the
    /// replica asks of its storage (the simulator follows each write).
    pub fn pending(&self) -> &[Output] {
        &self.outbox
    }

    /// Whether the host is the deliberately broken one of
    /// `vsr::Mutation::SendBeforeSync` (never without the `mutations` feature).
    fn sends_before_sync(&self) -> bool {
        #[cfg(feature = "mutations")]
        return self.replica.config().mutation == vsr::Mutation::SendBeforeSync;
        #[cfg(not(feature = "mutations"))]
        false
    }

    /// Whether staged writes wait for a sync.
    pub fn has_staged(&self) -> bool {
        self.store.as_ref().is_some_and(Store::has_staged)
    }

    /// Makes every staged write durable with one sync (group commit), and
    /// returns the held outputs, in order, which may now leave. If the sync
    /// fails, they stay held, the host pauses, and a notice says why (once
    /// per distinct error); the next call retries. The first sync that
    /// succeeds after a failure notes `Resumed`.
    pub fn sync_staged(&mut self) -> Vec<Output> {
        let Some(store) = self.store.as_mut() else {
            return Vec::new();
        };
        if store.has_staged() {
            if let Err(e) = store.sync() {
                let message = e.to_string();
                if self.storage_error.as_ref() != Some(&message) {
                    self.notices.push(StorageNotice::Error(message.clone()));
                }
                self.storage_error = Some(message);
                return Vec::new();
            }
            if self.storage_error.take().is_some() {
                self.notices.push(StorageNotice::Resumed);
            }
        }
        std::mem::take(&mut self.held)
    }

    /// What happened to the storage since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<StorageNotice> {
        std::mem::take(&mut self.notices)
    }
}

fn is_write(output: &Output) -> bool {
    matches!(
        output,
        Output::WriteLog { .. } | Output::WriteState(_) | Output::WriteCheckpoint(_)
    )
}
