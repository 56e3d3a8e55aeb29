//! A replica's store: opening it (and deciding how the replica restarts),
//! and carrying out its writes with group commit.

use std::fmt;
use std::io;
use std::sync::Arc;

use vsr::{checksum, root_checksum, Checkpoint, DurableState, Op, Output, Prepare};

use crate::disk::{Disk, Zone};
use crate::format::{
    current_superblock, scan_wal_from, CheckpointRef, Identity, Record, Superblock, WalDamage, SLOT_SIZE,
};

/// Why a store cannot be opened. The store is left as it was found.
#[derive(Debug)]
pub enum StoreError {
    Io(io::Error),
    /// The store belongs to another cluster, group or replica.
    Foreign {
        expected: Identity,
        found: Identity,
    },
    /// The superblock file has bytes but no valid copy: the store cannot
    /// say whose it is or what it promised.
    NoSuperblock,
    /// Host metadata or a group name too large for a superblock.
    TooLarge(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
            StoreError::Foreign { expected, found } => write!(
                f,
                "the data directory belongs to another replica: it holds cluster {:032x}, group {:?}, \
                 replica {} of {}, not cluster {:032x}, group {:?}, replica {} of {}",
                found.cluster,
                String::from_utf8_lossy(&found.group),
                found.replica,
                found.replica_count,
                expected.cluster,
                String::from_utf8_lossy(&expected.group),
                expected.replica,
                expected.replica_count
            ),
            StoreError::NoSuperblock => write!(
                f,
                "every superblock copy is damaged, so the data directory cannot be trusted; \
                 move it away to let this replica recover from its peers"
            ),
            StoreError::TooLarge(what) => write!(f, "{what}"),
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// How the replica of an opened store starts.
#[derive(Debug)]
pub enum Opened {
    /// The store was empty and has been created: a fresh replica.
    Created,
    /// Restart from what the store holds (`Replica::restart_from`, with
    /// `checkpoint`). `torn` is the offset of a torn tail that was cut off,
    /// if there was one.
    Restart {
        state: DurableState,
        checkpoint: Option<Arc<Checkpoint>>,
        entries: Vec<Arc<Prepare>>,
        torn: Option<u64>,
    },
    /// The log cannot be trusted: recover it from the peers
    /// (`Replica::recovering_from`). The store has recorded that it is
    /// recovering and emptied its log.
    Recover { state: DurableState, reason: String },
}

/// Counters for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub syncs: u64,
    pub wal_bytes: u64,
    pub superblock_writes: u64,
}

/// One replica's store.
pub struct Store<D: Disk> {
    disk: D,
    /// The newest durable superblock.
    superblock: Superblock,
    /// The state to write at the next sync, if it changed.
    state: Option<DurableState>,
    /// Durable length of the write-ahead log.
    wal_len: u64,
    /// Records staged, not yet written.
    wal_pending: Vec<u8>,
    /// The op of the log once the staged records are written.
    op: Op,
    /// The log's base `(op, checksum)` once the staged records are written,
    /// and the checksums of its entries `base+1..=op`: whether a checkpoint
    /// continues the log or needs a rebase.
    base: (Op, u128),
    checksums: Vec<u128>,
    /// A checkpoint to make durable at the next sync.
    checkpoint: Option<Arc<Checkpoint>>,
    /// Its file is written and synced, not yet named by the superblock.
    checkpoint_written: Option<CheckpointRef>,
    /// The staged checkpoint does not continue the log: once it is durable,
    /// a `Rebase` record starts the log over at it, followed by the records
    /// in `after_rebase` (staged after it).
    rebase: Option<(Op, u128, u64)>,
    after_rebase: Vec<u8>,
    stats: StoreStats,
}

/// The current superblock in the bytes of a superblock file: `None` for an
/// empty file (no store yet), an error if no copy is valid.
pub fn superblock_in(file: &[u8]) -> Result<Option<Superblock>, StoreError> {
    if file.is_empty() {
        return Ok(None);
    }
    current_superblock(file)
        .map(|(superblock, _)| Some(superblock))
        .ok_or(StoreError::NoSuperblock)
}

impl<D: Disk> Store<D> {
    /// The superblock of the store on `disk`, without opening it: `None`
    /// for an empty store.
    pub fn probe(disk: &mut D) -> Result<Option<Superblock>, StoreError> {
        superblock_in(&disk.read(Zone::Superblock)?)
    }

    /// Opens the store of replica `identity`, creating it (with `meta`) if
    /// the disk is empty, and decides how the replica starts: from the
    /// durable checkpoint (verified against the superblock's digest) and
    /// the log the write-ahead log holds.
    pub fn open(mut disk: D, identity: Identity, meta: Vec<u8>) -> Result<(Store<D>, Opened), StoreError> {
        if meta.len() > crate::format::META_MAX || identity.group.len() > crate::format::GROUP_MAX {
            return Err(StoreError::TooLarge(
                "the group name or host metadata is too large for a superblock".into(),
            ));
        }
        let file = disk.read(Zone::Superblock)?;
        if file.is_empty() {
            if !disk.read(Zone::Wal)?.is_empty() {
                return Err(StoreError::NoSuperblock);
            }
            return Store::create(disk, identity, meta).map(|store| (store, Opened::Created));
        }
        let (superblock, copies) = current_superblock(&file).ok_or(StoreError::NoSuperblock)?;
        if superblock.identity != identity {
            return Err(StoreError::Foreign {
                expected: identity,
                found: superblock.identity,
            });
        }
        let checkpoint = match superblock.checkpoint {
            None => Ok(None),
            Some(r) => read_checkpoint(&mut disk, r)?
                .map(|c| Some(Arc::new(c)))
                .ok_or(r.op),
        };
        let wal = disk.read(Zone::Wal)?;
        let scan = scan_wal_from(vsr::log::Log::new(root_checksum(identity.cluster)), &wal);
        let base = (scan.base, scan.base_checksum);
        let mut store = Store {
            disk,
            state: None,
            wal_len: wal.len() as u64,
            wal_pending: Vec::new(),
            op: base.0 + scan.entries.len() as Op,
            base,
            checksums: scan.entries.iter().map(|e| e.checksum).collect(),
            checkpoint: None,
            checkpoint_written: None,
            rebase: None,
            after_rebase: Vec::new(),
            stats: StoreStats::default(),
            superblock,
        };
        let state = store.superblock.state();
        if copies < 2 {
            // A torn update or bit rot left one copy of the newest state:
            // write it again, in two fresh copies, before relying on it.
            store.write_superblock(state, None)?;
        }
        let lost = match (scan.damage, &checkpoint) {
            _ if state.recovering => Some("a recovery was interrupted".to_string()),
            (_, Err(op)) => Some(format!(
                "the checkpoint at op {op} does not match its digest in the superblock"
            )),
            (Some(WalDamage::Corrupt { offset }), _) => Some(format!(
                "the write-ahead log is corrupt at byte {offset}, before records that are intact"
            )),
            _ => None,
        };
        if let Some(reason) = lost {
            store.begin_recovery()?;
            let state = store.superblock.state();
            return Ok((store, Opened::Recover { state, reason }));
        }
        let checkpoint = checkpoint.unwrap_or(None);
        if let Some(c) = &checkpoint {
            if store.checksum_at(c.op) != Some(c.checksum) {
                // A crash came between naming an installed checkpoint and
                // the `Rebase` record: the log starts over at it (the next
                // sync writes the record).
                store.rebase = Some((c.op, c.checksum, c.timestamp));
                store.base = (c.op, c.checksum);
                store.checksums.clear();
                store.op = c.op;
            }
        }
        let torn = match scan.damage {
            Some(WalDamage::Torn { offset }) => {
                // Cut the torn bytes off before anything is appended after them.
                store.disk.truncate(Zone::Wal, offset)?;
                store.disk.sync(Zone::Wal)?;
                store.wal_len = offset;
                Some(offset)
            }
            _ => None,
        };
        Ok((
            store,
            Opened::Restart {
                state,
                checkpoint,
                entries: scan.entries,
                torn,
            },
        ))
    }

    fn create(disk: D, identity: Identity, meta: Vec<u8>) -> Result<Store<D>, StoreError> {
        let identity_cluster = identity.cluster;
        let mut store = Store {
            disk,
            superblock: Superblock::new(identity, meta),
            state: None,
            wal_len: 0,
            wal_pending: Vec::new(),
            op: 0,
            base: (0, root_checksum(identity_cluster)),
            checksums: Vec::new(),
            checkpoint: None,
            checkpoint_written: None,
            rebase: None,
            after_rebase: Vec::new(),
            stats: StoreStats::default(),
        };
        store.write_superblock(store.superblock.state(), None)?;
        Ok(store)
    }

    /// Records that the replica is recovering (and drops the checkpoint:
    /// the replica starts over from op 0), then empties the log: a crash at
    /// any point leaves a store that recovers again on restart.
    fn begin_recovery(&mut self) -> io::Result<()> {
        let mut state = self.superblock.state();
        state.recovering = true;
        self.superblock.checkpoint = None;
        self.write_superblock(state, None)?;
        self.disk.truncate(Zone::Wal, 0)?;
        self.disk.sync(Zone::Wal)?;
        self.wal_len = 0;
        self.op = 0;
        self.base = (0, root_checksum(self.superblock.identity.cluster));
        self.checksums.clear();
        Ok(())
    }

    /// Takes a replica output: stages it and returns `true` if it is a
    /// write, returns `false` otherwise. Staged writes become durable at
    /// the next [`Store::sync`]; nothing that followed them may take
    /// effect before.
    pub fn stage(&mut self, output: &Output) -> Result<bool, String> {
        match output {
            Output::WriteLog { after, entries } => {
                if *after > self.op || *after < self.base.0 {
                    return Err(format!(
                        "a write after op {after} to a log of ops {}..={}",
                        self.base.0, self.op
                    ));
                }
                let records = if self.rebase.is_some() {
                    &mut self.after_rebase
                } else {
                    &mut self.wal_pending
                };
                if *after < self.op {
                    Record::Truncate { after: *after }.encode_into(records);
                    self.checksums.truncate((after - self.base.0) as usize);
                }
                for entry in entries {
                    Record::Entry(entry.clone()).encode_into(records);
                    self.checksums.push(entry.checksum);
                }
                self.op = after + entries.len() as Op;
                Ok(true)
            }
            Output::WriteState(state) => {
                // A replica's commit number may run ahead of its own log (a
                // backup learns it from the primary before it has the
                // entries). The superblock records only what this log
                // holds, so that on restart a log shorter than the commit
                // means lost entries, not a lagging replica (seed 1039).
                let mut state = *state;
                state.commit = state.commit.min(self.op);
                self.state = Some(state);
                Ok(true)
            }
            Output::WriteCheckpoint(checkpoint) => {
                if self.checksum_at(checkpoint.op) != Some(checkpoint.checksum) {
                    // Installed by state sync beyond (or off) the log: the
                    // log starts over at it, once it is durable.
                    self.rebase = Some((checkpoint.op, checkpoint.checksum, checkpoint.timestamp));
                    self.after_rebase.clear();
                    self.base = (checkpoint.op, checkpoint.checksum);
                    self.checksums.clear();
                    self.op = checkpoint.op;
                }
                self.checkpoint = Some(checkpoint.clone());
                self.checkpoint_written = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The checksum of entry `op` in the log as staged, if it holds it.
    fn checksum_at(&self, op: Op) -> Option<u128> {
        if op == self.base.0 {
            return Some(self.base.1);
        }
        let index = op.checked_sub(self.base.0 + 1)?;
        self.checksums.get(index as usize).copied()
    }

    /// The durable checkpoint's op, 0 if none.
    pub fn checkpoint_op(&self) -> Op {
        self.superblock.checkpoint.map_or(0, |c| c.op)
    }

    /// The op the log reaches once the staged records are written.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether staged writes wait for a sync.
    pub fn has_staged(&self) -> bool {
        !self.wal_pending.is_empty()
            || self.state.is_some()
            || self.checkpoint.is_some()
            || self.rebase.is_some()
    }

    /// Makes every staged write durable: the log first, then a staged
    /// checkpoint's file, then the superblock (so a superblock never names
    /// a log view whose entries, or a checkpoint whose bytes, are not on
    /// disk). A checkpoint that rebases the log is named by the superblock
    /// before the `Rebase` record is written, and the state staged with it
    /// is written only after the records that follow the rebase: a crash at
    /// any point leaves the old store or the new one. On error, what is
    /// not yet durable stays staged and the next call goes on from there;
    /// nothing durable is overwritten.
    pub fn sync(&mut self) -> io::Result<()> {
        self.write_wal()?;
        if let Some(checkpoint) = &self.checkpoint {
            let written = match self.checkpoint_written {
                Some(written) => written,
                None => {
                    let bytes = checkpoint.encode();
                    // The file the superblock does not name.
                    let slot = self.superblock.checkpoint.map_or(0, |c| 1 - c.slot);
                    let zone = Zone::checkpoint(slot);
                    self.disk.truncate(zone, 0)?;
                    self.disk.write(zone, 0, &bytes)?;
                    self.disk.sync(zone)?;
                    self.stats.syncs += 1;
                    let written = CheckpointRef {
                        op: checkpoint.op,
                        digest: checksum(&bytes),
                        len: bytes.len() as u64,
                        slot,
                    };
                    self.checkpoint_written = Some(written);
                    written
                }
            };
            // With a rebase the staged state may describe records not yet
            // written: the superblock switches checkpoints with the durable state.
            let state = match (self.rebase, self.state) {
                (None, Some(state)) => state,
                _ => self.superblock.state(),
            };
            self.write_superblock(state, Some(written))?;
            if self.rebase.is_none() {
                self.state = None;
            }
            self.checkpoint = None;
            self.checkpoint_written = None;
        }
        if let Some((op, checksum, timestamp)) = self.rebase {
            let mut records = Vec::new();
            Record::Rebase {
                op,
                checksum,
                timestamp,
            }
            .encode_into(&mut records);
            records.append(&mut self.after_rebase);
            self.wal_pending = records;
            self.rebase = None;
            self.write_wal()?;
        }
        if let Some(state) = self.state {
            self.write_superblock(state, None)?;
            self.state = None;
        }
        Ok(())
    }

    fn write_wal(&mut self) -> io::Result<()> {
        if !self.wal_pending.is_empty() {
            self.disk.write(Zone::Wal, self.wal_len, &self.wal_pending)?;
            self.disk.sync(Zone::Wal)?;
            self.wal_len += self.wal_pending.len() as u64;
            self.stats.wal_bytes += self.wal_pending.len() as u64;
            self.stats.syncs += 1;
            self.wal_pending.clear();
        }
        Ok(())
    }

    /// Writes `state` (and, if given, the checkpoint it names) as the next
    /// superblock, in the two slots the previous update did not use, and syncs.
    fn write_superblock(&mut self, state: DurableState, checkpoint: Option<CheckpointRef>) -> io::Result<()> {
        let mut next = self.superblock.clone();
        next.sequence += 1;
        next.set_state(&state);
        if checkpoint.is_some() {
            next.checkpoint = checkpoint;
        }
        let bytes = next.encode().map_err(io::Error::other)?;
        for slot in Superblock::slots_of(next.sequence) {
            self.disk
                .write(Zone::Superblock, (slot * SLOT_SIZE) as u64, &bytes)?;
        }
        self.disk.sync(Zone::Superblock)?;
        self.superblock = next;
        self.stats.superblock_writes += 1;
        self.stats.syncs += 1;
        Ok(())
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub fn into_disk(self) -> D {
        self.disk
    }
}

/// The checkpoint `r` names, if its file holds it intact.
fn read_checkpoint<D: Disk>(disk: &mut D, r: CheckpointRef) -> io::Result<Option<Checkpoint>> {
    let file = disk.read(Zone::checkpoint(r.slot))?;
    let Some(bytes) = usize::try_from(r.len).ok().and_then(|len| file.get(..len)) else {
        return Ok(None);
    };
    if checksum(bytes) != r.digest {
        return Ok(None);
    }
    Ok(Checkpoint::decode(bytes).filter(|c| c.op == r.op))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SUPERBLOCK_COPIES;
    use crate::mem::{CrashCut, MemDisk};

    fn identity() -> Identity {
        Identity {
            cluster: 3,
            group: b"Elixir.Counter".to_vec(),
            replica: 0,
            replica_count: 3,
        }
    }

    fn chain(from: &[Arc<Prepare>], count: u64, view: u64) -> Vec<Arc<Prepare>> {
        let mut parent = from.last().map_or(root_checksum(3), |e| e.checksum);
        let start = from.len() as u64 + 1;
        (start..start + count)
            .map(|op| {
                let entry = Arc::new(Prepare::new(parent, view, op, op, vec![]));
                parent = entry.checksum;
                entry
            })
            .collect()
    }

    fn open(disk: MemDisk) -> (Store<MemDisk>, Opened) {
        Store::open(disk, identity(), b"meta".to_vec()).expect("opens")
    }

    fn restarted(opened: &Opened) -> (DurableState, Vec<Arc<Prepare>>) {
        match opened {
            Opened::Restart { state, entries, .. } => (*state, entries.clone()),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    fn state(view: u64, log_view: u64, commit: Op) -> DurableState {
        DurableState {
            view,
            log_view,
            commit,
            ..DurableState::default()
        }
    }

    /// A store holding `entries`, all synced, and `state`.
    fn store_with(entries: &[Arc<Prepare>], durable: DurableState) -> Store<MemDisk> {
        let (mut store, opened) = open(MemDisk::default());
        assert!(matches!(opened, Opened::Created));
        store
            .stage(&Output::WriteLog {
                after: 0,
                entries: entries.to_vec(),
            })
            .unwrap();
        store.stage(&Output::WriteState(durable)).unwrap();
        store.sync().unwrap();
        store
    }

    fn checkpoint_of(entry: &Prepare, app: u8) -> Arc<Checkpoint> {
        Arc::new(Checkpoint {
            op: entry.op,
            checksum: entry.checksum,
            timestamp: entry.timestamp,
            clients: vec![],
            app: Arc::new(vec![app; 300]),
        })
    }

    fn restarted_from(opened: &Opened) -> (DurableState, Option<Arc<Checkpoint>>, Vec<Arc<Prepare>>) {
        match opened {
            Opened::Restart {
                state,
                checkpoint,
                entries,
                ..
            } => (*state, checkpoint.clone(), entries.clone()),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    /// Crash cuts to try after the machine died `n` operations into a sync.
    fn cuts() -> Vec<CrashCut> {
        let mut cuts = Vec::new();
        for kept in 0..4 {
            for torn in [None, Some(0), Some(9), Some(100)] {
                cuts.push(CrashCut { kept, torn });
            }
        }
        cuts
    }

    #[test]
    fn a_checkpoint_comes_back_and_a_crash_while_writing_it_leaves_the_old_or_the_new_store() {
        let entries = chain(&[], 8, 0);
        let checkpoint = checkpoint_of(&entries[3], 7);
        for n in 0..12 {
            for cut in cuts() {
                let mut store = store_with(&entries[..6], state(0, 0, 6));
                store
                    .stage(&Output::WriteLog {
                        after: 6,
                        entries: entries[6..].to_vec(),
                    })
                    .unwrap();
                store.stage(&Output::WriteCheckpoint(checkpoint.clone())).unwrap();
                store.stage(&Output::WriteState(state(0, 0, 8))).unwrap();
                store.disk.crash_after = Some(n);
                let synced = store.sync().is_ok();
                let mut disk = store.into_disk();
                disk.crash(cut);
                let (store, opened) = open(disk);
                let (durable, stored, log) = restarted_from(&opened);
                assert_eq!(log[..6], entries[..6], "n {n} {cut:?}");
                match stored {
                    Some(c) => {
                        // The log is synced before the checkpoint is named.
                        assert_eq!(c, checkpoint);
                        assert_eq!(log, entries);
                        assert_eq!(store.checkpoint_op(), 4);
                    }
                    None => {
                        assert!(!synced);
                        assert_eq!(durable, state(0, 0, 6));
                    }
                }
                if synced {
                    assert_eq!(durable, state(0, 0, 8));
                }
            }
        }
    }

    #[test]
    fn a_checkpoint_beyond_the_log_rebases_it_crash_atomically() {
        let all = chain(&[], 14, 0);
        let installed = checkpoint_of(&all[9], 9);
        for n in 0..14 {
            for cut in cuts() {
                let mut store = store_with(&all[..6], state(0, 0, 6));
                // A state sync installs op 10, then the replica repairs 11..=12.
                store.stage(&Output::WriteCheckpoint(installed.clone())).unwrap();
                store
                    .stage(&Output::WriteLog {
                        after: 10,
                        entries: all[10..12].to_vec(),
                    })
                    .unwrap();
                store.stage(&Output::WriteState(state(0, 0, 12))).unwrap();
                assert_eq!(store.op(), 12);
                store.disk.crash_after = Some(n);
                let synced = store.sync().is_ok();
                let mut disk = store.into_disk();
                disk.crash(cut);
                let (mut store, opened) = open(disk);
                let (durable, stored, log) = restarted_from(&opened);
                match stored {
                    None => {
                        // The old store, whole: nothing acknowledged is lost.
                        assert!(!synced);
                        assert_eq!(durable, state(0, 0, 6), "n {n} {cut:?}");
                        assert_eq!(log, all[..6]);
                    }
                    Some(c) => {
                        assert_eq!(c, installed);
                        let after: Vec<_> = log.into_iter().filter(|e| e.op > 10).collect();
                        assert!(after.is_empty() || after == all[10..12], "n {n} {cut:?}");
                        if durable.commit == 12 {
                            assert_eq!(after, all[10..12]);
                        }
                        // Appends continue from the rebased log.
                        let next = if after.is_empty() { 10 } else { 12 };
                        store
                            .stage(&Output::WriteLog {
                                after: next,
                                entries: all[next as usize..14].to_vec(),
                            })
                            .unwrap();
                        store.sync().unwrap();
                        let (_, opened) = open(store.into_disk());
                        let (_, c, log) = restarted_from(&opened);
                        assert_eq!(c, Some(installed.clone()));
                        assert_eq!(log, all[10..14]);
                    }
                }
                if synced {
                    assert_eq!(durable, state(0, 0, 12));
                }
            }
        }
    }

    #[test]
    fn a_second_checkpoint_goes_to_the_other_file_and_a_corrupt_one_means_recovery() {
        let entries = chain(&[], 8, 0);
        let mut store = store_with(&entries, state(0, 0, 8));
        store
            .stage(&Output::WriteCheckpoint(checkpoint_of(&entries[3], 1)))
            .unwrap();
        store.sync().unwrap();
        store
            .stage(&Output::WriteCheckpoint(checkpoint_of(&entries[7], 2)))
            .unwrap();
        store.sync().unwrap();
        assert_eq!(
            store.superblock().checkpoint.map(|c| (c.op, c.slot)),
            Some((8, 1))
        );
        let mut disk = store.into_disk();
        assert!(disk.len(Zone::CheckpointA) > 0);
        let (store, opened) = open(disk.clone());
        assert_eq!(restarted_from(&opened).1.map(|c| c.op), Some(8));
        drop(store);
        disk.corrupt(Zone::CheckpointB, 40, 0x08);
        let (mut store, opened) = open(disk);
        match opened {
            Opened::Recover { state, reason } => {
                assert!(state.recovering);
                assert!(reason.contains("checkpoint"), "{reason}");
            }
            other => panic!("expected a recovery, got {other:?}"),
        }
        assert_eq!(store.superblock().checkpoint, None);
        assert_eq!(store.op(), 0);
        store.sync().unwrap();
    }

    #[test]
    fn what_was_synced_comes_back() {
        let entries = chain(&[], 5, 0);
        let mut store = store_with(&entries, state(0, 0, 3));
        // A view change replaces the last two entries.
        let replaced = chain(&entries[..3], 3, 1);
        store
            .stage(&Output::WriteLog {
                after: 3,
                entries: replaced.clone(),
            })
            .unwrap();
        store.stage(&Output::WriteState(state(1, 1, 3))).unwrap();
        store.sync().unwrap();
        let (_, opened) = open(store.into_disk());
        let (durable, log) = restarted(&opened);
        assert_eq!(durable, state(1, 1, 3));
        assert_eq!(log[..3], entries[..3]);
        assert_eq!(log[3..], replaced[..]);
    }

    #[test]
    fn a_crash_at_any_point_of_a_sync_leaves_the_old_or_the_new_store() {
        let old = chain(&[], 3, 0);
        let new = chain(&old[..2], 3, 1);
        for kept in 0..4 {
            for torn in [None, Some(0), Some(7), Some(30), Some(100), Some(4000)] {
                let mut store = store_with(&old, state(0, 0, 2));
                store
                    .stage(&Output::WriteLog {
                        after: 2,
                        entries: new.clone(),
                    })
                    .unwrap();
                store.stage(&Output::WriteState(state(1, 1, 2))).unwrap();
                let mut disk = std::mem::take(&mut store.disk);
                write_unsynced(&mut store, &mut disk);
                disk.crash(CrashCut { kept, torn });
                let (_, opened) = open(disk);
                let (durable, log) = restarted(&opened);
                // The superblock is written after the log is synced, so a new
                // log view always comes with the whole new log.
                if durable.log_view == 1 {
                    assert_eq!(log[2..], new[..]);
                } else {
                    assert_eq!(durable, state(0, 0, 2));
                    assert_eq!(log[..2], old[..2]);
                }
            }
        }
    }

    /// Writes what `store` has staged to `disk` without syncing, as `sync`
    /// would up to its first fsync, plus the superblock (both copies).
    fn write_unsynced(store: &mut Store<MemDisk>, disk: &mut MemDisk) {
        disk.write(Zone::Wal, store.wal_len, &store.wal_pending).unwrap();
        let mut next = store.superblock.clone();
        next.sequence += 1;
        next.set_state(&store.state.unwrap());
        let bytes = next.encode().unwrap();
        for slot in Superblock::slots_of(next.sequence) {
            disk.write(Zone::Superblock, (slot * SLOT_SIZE) as u64, &bytes)
                .unwrap();
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appends_continue() {
        let entries = chain(&[], 4, 0);
        let mut store = store_with(&entries[..3], state(0, 0, 1));
        store
            .stage(&Output::WriteLog {
                after: 3,
                entries: entries[3..].to_vec(),
            })
            .unwrap();
        let mut disk = std::mem::take(&mut store.disk);
        disk.write(Zone::Wal, store.wal_len, &store.wal_pending[..20])
            .unwrap();
        disk.crash(CrashCut { kept: 1, torn: None });
        let (mut store, opened) = open(disk);
        assert!(matches!(opened, Opened::Restart { torn: Some(_), .. }));
        assert_eq!(restarted(&opened).1, entries[..3]);
        store
            .stage(&Output::WriteLog {
                after: 3,
                entries: entries[3..].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        let (_, opened) = open(store.into_disk());
        assert!(matches!(opened, Opened::Restart { torn: None, .. }));
        assert_eq!(restarted(&opened).1, entries);
    }

    #[test]
    fn corruption_before_intact_records_means_recovery_until_it_is_done() {
        let entries = chain(&[], 4, 0);
        let store = store_with(&entries, state(2, 2, 1));
        let mut disk = store.into_disk();
        disk.corrupt(Zone::Wal, 70, 0x20);
        let (_, opened) = open(disk.clone());
        let Opened::Recover {
            state: recovering, ..
        } = opened
        else {
            panic!("expected recovery, got {opened:?}")
        };
        assert!(recovering.recovering);
        assert_eq!(recovering.view, 2);
        // Reopened before the recovery finished: it recovers again, though
        // the log is now empty and undamaged.
        let (store, _) = open(disk);
        assert_eq!(store.disk().len(Zone::Wal), 0);
        let (_, opened) = open(store.into_disk());
        assert!(matches!(opened, Opened::Recover { .. }));
    }

    #[test]
    fn rot_in_the_last_record_is_taken_for_a_torn_write() {
        // The documented limit of the fault model (docs/storage.md): the
        // last record cannot be told from a write a crash interrupted, so
        // it is cut off, and the replica restarts from the rest.
        let entries = chain(&[], 4, 0);
        let mut store = store_with(&entries, state(0, 0, 4));
        let mut disk = std::mem::take(&mut store.disk);
        let len = disk.len(Zone::Wal);
        disk.corrupt(Zone::Wal, len - 1, 0x01);
        let (_, opened) = open(disk);
        assert!(
            matches!(opened, Opened::Restart { torn: Some(_), .. }),
            "{opened:?}"
        );
        assert_eq!(restarted(&opened).1, entries[..3]);
    }

    #[test]
    fn superblock_copies_cover_for_each_other() {
        let entries = chain(&[], 2, 0);
        let store = store_with(&entries, state(1, 1, 2));
        let mut disk = store.into_disk();
        let current = Superblock::slots_of(store_sequence(&mut disk));
        disk.corrupt(Zone::Superblock, current[0] * SLOT_SIZE + 40, 0x08);
        let (_, opened) = open(disk.clone());
        assert_eq!(restarted(&opened).0, state(1, 1, 2));
        for slot in 0..SUPERBLOCK_COPIES {
            disk.corrupt(Zone::Superblock, slot * SLOT_SIZE + 50, 0x08);
        }
        assert!(matches!(
            Store::open(disk, identity(), vec![]),
            Err(StoreError::NoSuperblock)
        ));
    }

    fn store_sequence(disk: &mut MemDisk) -> u64 {
        Store::probe(disk).unwrap().unwrap().sequence
    }

    #[test]
    fn a_foreign_store_is_refused_and_left_untouched() {
        let store = store_with(&chain(&[], 2, 0), state(0, 0, 0));
        let mut disk = store.into_disk();
        let before = (
            disk.read(Zone::Superblock).unwrap(),
            disk.read(Zone::Wal).unwrap(),
        );
        for other in [
            Identity {
                cluster: 4,
                ..identity()
            },
            Identity {
                group: b"Elixir.Other".to_vec(),
                ..identity()
            },
            Identity {
                replica: 1,
                ..identity()
            },
        ] {
            let Err(error) = Store::open(disk.clone(), other, vec![]) else {
                panic!("a foreign store opened")
            };
            assert!(
                error.to_string().contains("belongs to another replica"),
                "{error}"
            );
        }
        disk.crash(CrashCut { kept: 0, torn: None });
        let after = (
            disk.read(Zone::Superblock).unwrap(),
            disk.read(Zone::Wal).unwrap(),
        );
        assert_eq!(before, after);
    }

    #[test]
    fn a_full_disk_keeps_writes_staged_until_space_returns() {
        let entries = chain(&[], 3, 0);
        let mut store = store_with(&entries[..1], state(0, 0, 0));
        store.disk.full = true;
        store
            .stage(&Output::WriteLog {
                after: 1,
                entries: entries[1..].to_vec(),
            })
            .unwrap();
        assert!(store.sync().is_err());
        assert!(store.has_staged());
        store.disk.full = false;
        store.sync().unwrap();
        let (_, opened) = open(store.into_disk());
        assert_eq!(restarted(&opened).1, entries);
    }
}
