//! A replica's store: opening it (and deciding how the replica restarts),
//! and carrying out its writes with group commit.

use std::fmt;
use std::io;
use std::sync::Arc;

use vsr::{checksum, root_checksum, Checkpoint, DurableState, Membership, Op, Output, Prepare, Role};

use crate::disk::{Disk, Zone};
use crate::format::{
    current_superblock, foreign_version, scan_wal_from, CheckpointRef, Identity, Record, Superblock,
    WalDamage, WalScan, FORMAT_VERSION, FORMAT_VERSION_5, SEAL_LEN, SLOT_SIZE,
};

/// The WAL is compacted once the records before the durable checkpoint's
/// suffix take at least this many bytes (and at least as many as the
/// suffix): see [`Store::set_compaction_bytes`].
pub const DEFAULT_COMPACTION_BYTES: u64 = 64 << 20;

/// Zeros written ahead of the log's end, so that a sync overwrites blocks
/// the file already has instead of growing it: a sync that changes the
/// file's size or allocates blocks also commits the filesystem's journal,
/// which on ext4 made an fdatasync of a few KiB about 1.5 to 2 times
/// slower (285 µs against 146 µs p50 for 5 KB appends).
pub const PREALLOCATE_BYTES: u64 = 1 << 20;
/// The next preallocation starts when less than this is left ahead.
const PREALLOCATE_AHEAD: u64 = PREALLOCATE_BYTES / 4;

/// A store that could not be opened: why, and its disk, as the open left
/// it, for another try (a simulated disk is the only copy of its files).
pub struct Unopened<D> {
    pub error: StoreError,
    pub disk: D,
}

impl<D> From<Unopened<D>> for StoreError {
    fn from(unopened: Unopened<D>) -> StoreError {
        unopened.error
    }
}

impl<D> fmt::Debug for Unopened<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl<D> fmt::Display for Unopened<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

/// What an open found on a disk that holds a store.
struct Found {
    superblock: Superblock,
    /// Intact copies of the newest superblock.
    copies: usize,
    /// The durable checkpoint, or the op of one that does not match its digest.
    checkpoint: Result<Option<Arc<Checkpoint>>, Op>,
    wal: Vec<u8>,
}

/// Why a store cannot be opened. A refusal (every variant but `Io`) leaves
/// the store exactly as it was found.
#[derive(Debug)]
pub enum StoreError {
    Io(io::Error),
    /// Another live store holds the directory's lock (`FileDisk::open`).
    InUse(std::path::PathBuf),
    /// The store belongs to another cluster or group, or to another
    /// member: another node, or an earlier membership of this one.
    Foreign {
        expected: Box<Identity>,
        found: Box<Identity>,
    },
    /// The superblock file has bytes but no valid copy: the store cannot
    /// say whose it is or what it promised.
    NoSuperblock,
    /// The superblock file is missing or empty, but the log or a checkpoint
    /// file holds data: the superblock was deleted, and the store cannot
    /// say whose it is or what it promised.
    LostSuperblock,
    /// Host metadata or a group name too large for a superblock.
    TooLarge(String),
    /// The store was written in another format version.
    Version(u16),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
            StoreError::InUse(dir) => write!(f, "{} is in use by another replica", dir.display()),
            StoreError::Foreign { expected, found } => write!(
                f,
                "the data directory belongs to another replica: it holds {found}, not {expected}"
            ),
            StoreError::NoSuperblock => write!(
                f,
                "every superblock copy is damaged, so the data directory cannot be trusted; \
                 move it away to let this replica recover from its peers"
            ),
            StoreError::LostSuperblock => write!(
                f,
                "the data directory holds a write-ahead log or checkpoint but no superblock (was it \
                 deleted?), so it cannot say whose store it is or what its replica acknowledged; \
                 move it away to let this replica recover from its peers"
            ),
            StoreError::TooLarge(what) => write!(f, "{what}"),
            StoreError::Version(found) => write!(
                f,
                "the data directory holds storage format version {found}, and this version of Visor \
                 reads only versions {FORMAT_VERSION_5} and {FORMAT_VERSION}; move it away to let this \
                 replica recover from its peers"
            ),
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// What a store created by `Store::open_with` records first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Creation {
    /// A new replica of a new cluster.
    Fresh,
    /// A replica that lost its state and rejoins a cluster that ran.
    Recovering,
    /// A learner (docs/design/membership.md, 2.5): role `Learner` from the
    /// store's first superblock on, so a crash before its first sync
    /// restarts a learner, never a member; `life` is the number its host
    /// drew for it, kept for as long as the store lives
    /// ([`Store::life`]).
    Learner { life: u64 },
}

/// How the replica of an opened store starts.
#[derive(Debug)]
pub enum Opened {
    /// The store was empty and has been created: a fresh replica, whose
    /// durable state is `state` (what `Creation` recorded).
    Created { state: DurableState },
    /// Restart from what the store holds (`Replica::restart_from`, with
    /// `checkpoint`). `torn` is the offset of a torn tail that was cut off,
    /// if there was one.
    Restart {
        state: DurableState,
        checkpoint: Option<Arc<Checkpoint>>,
        entries: Vec<Arc<Prepare>>,
        torn: Option<u64>,
    },
    /// The log is intact but for one entry whose record is damaged, and
    /// which the entry after it names (`hole`: its op and checksum): the
    /// replica fetches it from a peer before it restarts
    /// (`Replica::restart_repairing`), with `entries` (the log up to the
    /// hole) and `after` (the entries after it). Once the replica writes
    /// the log with that entry, the store records the repair.
    Repair {
        state: DurableState,
        checkpoint: Option<Arc<Checkpoint>>,
        entries: Vec<Arc<Prepare>>,
        hole: (Op, u128),
        after: Vec<Arc<Prepare>>,
    },
    /// The log cannot be trusted: recover it from the peers
    /// (`Replica::recovering_from`). The store has recorded that it is
    /// recovering and emptied its log.
    Recover { state: DurableState, reason: String },
}

impl Opened {
    /// The durable state the replica starts from: its role and membership
    /// are the store's, whatever the host expected.
    pub fn state(&self) -> &DurableState {
        match self {
            Opened::Created { state }
            | Opened::Restart { state, .. }
            | Opened::Repair { state, .. }
            | Opened::Recover { state, .. } => state,
        }
    }

    /// What the replica is in its membership.
    pub fn role(&self) -> Role {
        self.state().role
    }

    /// The membership the store records; `None` for the genesis.
    pub fn membership(&self) -> Option<Membership> {
        self.state().membership
    }
}

/// Counters for `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub syncs: u64,
    /// Bytes appended to the WAL, in all (compaction copies not counted).
    pub wal_bytes: u64,
    pub superblock_writes: u64,
    /// WAL compactions completed, and attempts that failed (an I/O error:
    /// the log stays where it was and the next attempt waits for more growth).
    pub compactions: u64,
    pub compaction_errors: u64,
}

/// One replica's store.
pub struct Store<D: Disk> {
    disk: D,
    /// The newest durable superblock.
    superblock: Superblock,
    /// The state to write at the next sync, if it changed.
    state: Option<DurableState>,
    /// Durable length of the log in the write-ahead log file records go to.
    wal_len: u64,
    /// Length of that file: `wal_len`, then zeros written ahead of it
    /// (`PREALLOCATE_BYTES`), which a scan reads as the log's clean end.
    wal_allocated: u64,
    /// How long that file is known to be, synced: what the next superblock
    /// records as `wal_synced`. Every record synced lies below it, and no
    /// sync returns before a superblock records it (see [`Store::sync`]).
    /// It counts the zeros ahead of the log, so it says nothing about
    /// whether a record was synced: `wal_durable` does.
    wal_synced: u64,
    /// Where the records of that file end at its last sync that succeeded:
    /// every record below is durable, and once nothing is staged, every
    /// record is. The superblock records it only when it is written for
    /// another reason (no extra `fdatasync` per commit), so the durable
    /// superblock may lag behind; an open makes the records beyond the
    /// superblock's value durable again before handing them out.
    wal_durable: u64,
    /// A compaction wrote the live log to the other WAL file, and the
    /// superblock naming it is not yet durable. Until it is, nothing else
    /// is written: either file holds the log, but records appended to the
    /// new one would be lost if the old one stayed named.
    switch_pending: bool,
    /// Records staged, not yet written.
    wal_pending: Vec<u8>,
    /// An entry of the log whose record is damaged (op, checksum): until a
    /// log write carries it and a `Repair` record is staged for it.
    hole: Option<(Op, u128)>,
    /// The replica gave up its log while running (a repair no peer could
    /// serve): the next sync empties it and records that it is recovering.
    emptying: bool,
    /// The op of the log once the staged records are written.
    op: Op,
    /// The log's base `(op, checksum)` once the staged records are written,
    /// and the checksums of its entries `base+1..=op`: whether a checkpoint
    /// continues the log or needs a rebase.
    base: (Op, u128),
    checksums: Vec<u128>,
    /// Where each of those entries' records starts in the WAL file; while a
    /// rebase is staged, within `after_rebase` instead.
    offsets: Vec<u64>,
    /// The durable checkpoint's `(op, checksum, timestamp)`: where a
    /// compacted log starts.
    named: Option<(Op, u128, u64)>,
    /// Compact when the records before the named checkpoint's suffix take
    /// at least this many bytes; no attempt before the WAL reaches
    /// `compact_after` bytes (backs off after a failure).
    compaction_bytes: u64,
    compact_after: u64,
    /// The checkpoint op the current WAL file was compacted at: no second
    /// compaction at it (its `Rebase` record alone would count as dead).
    compacted_at: Option<Op>,
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
        .ok_or_else(|| no_superblock(file))
}

/// Why a non-empty superblock file has no copy this code can use.
fn no_superblock(file: &[u8]) -> StoreError {
    foreign_version(file).map_or(StoreError::NoSuperblock, StoreError::Version)
}

/// Whether the bytes of a superblock file with no valid copy are what a
/// crash during a new store's first superblock write leaves: the first
/// write fills slots 2 and 3 (`Superblock::slots_of(1)`), and every later
/// one alternates with slots 0 and 1, so a store that ever got past its
/// creation has bytes there. (With the WAL and checkpoint files empty,
/// checked by the caller, such a store never acknowledged anything.)
fn torn_creation(file: &[u8]) -> bool {
    foreign_version(file).is_none()
        && current_superblock(file).is_none()
        && file.iter().take(2 * SLOT_SIZE).all(|&b| b == 0)
}

impl<D: Disk> Store<D> {
    /// The superblock of the store on `disk`, without opening it: `None`
    /// for an empty store (or one whose creation a crash tore).
    pub fn probe(disk: &mut D) -> Result<Option<Superblock>, StoreError> {
        let file = disk.read(Zone::Superblock)?;
        if torn_creation(&file) && Store::data_files_empty(disk)? {
            return Ok(None);
        }
        superblock_in(&file)
    }

    /// Whether every WAL and checkpoint file is empty (or absent).
    fn data_files_empty(disk: &mut D) -> Result<bool, StoreError> {
        for zone in [Zone::WalA, Zone::WalB, Zone::CheckpointA, Zone::CheckpointB] {
            if !disk.read(zone)?.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Opens the store of replica `identity`, creating it (with `meta`) if
    /// the disk is empty, and decides how the replica starts: from the
    /// durable checkpoint (verified against the superblock's digest) and
    /// the log the write-ahead log holds. If it cannot, the disk comes back
    /// with the error (`Unopened`), as the open left it, for another try.
    pub fn open(disk: D, identity: Identity, meta: Vec<u8>) -> Result<(Store<D>, Opened), Unopened<D>> {
        Store::open_with(disk, identity, meta, Creation::Fresh)
    }

    /// As `open`, but a store created here records `creation` in its first
    /// superblock. A replica that rejoins a cluster that ran (it lost its
    /// state) is recovering from the store's creation on: a crash before
    /// its first sync restarts it into recovery, never as a normal replica
    /// with an empty log at view 0 (a review found that window: the store
    /// said "not recovering" until the replica's first sync). A learner's
    /// store is a learner's from its creation on (`Creation::Learner`).
    /// A store that exists is opened as it is, whatever `creation` says:
    /// its role and membership come back in `Opened`'s state.
    pub fn open_with(
        mut disk: D,
        identity: Identity,
        meta: Vec<u8>,
        creation: Creation,
    ) -> Result<(Store<D>, Opened), Unopened<D>> {
        let found = match Store::examine(&mut disk, &identity, &meta) {
            Ok(found) => found,
            Err(error) => return Err(Unopened { error, disk }),
        };
        let (store, opened) = match found {
            None => {
                let mut store = Store::blank(disk, identity, meta);
                let mut state = store.superblock.state();
                match creation {
                    Creation::Fresh => {}
                    Creation::Recovering => state.recovering = true,
                    Creation::Learner { life } => {
                        state.role = Role::Learner;
                        store.superblock.life = Some(life);
                    }
                }
                let created = store.write_superblock(state, None);
                let opened = created.map(|()| Opened::Created { state });
                (store, opened.map_err(StoreError::from))
            }
            Some(found) => Store::resume(disk, found),
        };
        match opened {
            Ok(opened) => Ok((store, opened)),
            Err(error) => Err(Unopened {
                error,
                disk: store.into_disk(),
            }),
        }
    }

    /// Reads what the disk holds: `None` if there is no store yet (a torn
    /// creation is cleared), or its newest superblock (and how many copies
    /// of it are intact), its durable checkpoint (`Err(op)` if it does not
    /// match its digest) and its WAL file.
    fn examine(disk: &mut D, identity: &Identity, meta: &[u8]) -> Result<Option<Found>, StoreError> {
        if meta.len() > crate::format::META_MAX || identity.group.len() > crate::format::GROUP_MAX {
            return Err(StoreError::TooLarge(
                "the group name or host metadata is too large for a superblock".into(),
            ));
        }
        let file = disk.read(Zone::Superblock)?;
        if file.is_empty() {
            if !Store::data_files_empty(disk)? {
                return Err(StoreError::LostSuperblock);
            }
            return Ok(None);
        }
        // A crash tore the store's creation: no store yet (see torn_creation).
        if torn_creation(&file) && Store::data_files_empty(disk)? {
            disk.truncate(Zone::Superblock, 0)?;
            return Ok(None);
        }
        let (superblock, copies) = current_superblock(&file).ok_or_else(|| no_superblock(&file))?;
        if superblock.identity != *identity {
            return Err(StoreError::Foreign {
                expected: Box::new(identity.clone()),
                found: Box::new(superblock.identity),
            });
        }
        let checkpoint = match superblock.checkpoint {
            None => Ok(None),
            Some(r) => read_checkpoint(disk, r)?.map(|c| Some(Arc::new(c))).ok_or(r.op),
        };
        let wal = disk.read(Zone::wal(superblock.wal))?;
        Ok(Some(Found {
            superblock,
            copies,
            checkpoint,
            wal,
        }))
    }

    /// The store over what `examine` found, and how its replica starts.
    fn resume(disk: D, found: Found) -> (Store<D>, Result<Opened, StoreError>) {
        let Found {
            superblock,
            copies,
            checkpoint,
            wal,
        } = found;
        let mut scan = scan_wal_from(
            vsr::log::Log::new(root_checksum(superblock.identity.cluster)),
            &wal,
        );
        let base = (scan.base, scan.base_checksum);
        let named = match &checkpoint {
            Ok(Some(c)) => Some((c.op, c.checksum, c.timestamp)),
            _ => None,
        };
        let mut store = Store {
            disk,
            state: None,
            // Without the zeros ahead of the end (a torn tail is cut below).
            wal_len: scan.valid_len,
            wal_allocated: wal.len() as u64,
            // What the superblock says, not what was found: bytes beyond
            // them may never have been synced (a process crash keeps them
            // in the page cache), and are made durable below.
            wal_synced: superblock.wal_synced,
            // Within the records found: a synced seal may be lost to rot
            // (or a torn tail cut below), which loses no entry. (More than
            // a seal missing means recovery: see `finish_open`.)
            wal_durable: superblock.wal_durable.min(scan.valid_len),
            switch_pending: false,
            wal_pending: Vec::new(),
            hole: scan.hole.map(|h| (h.op, h.checksum)),
            emptying: false,
            op: base.0 + (scan.entries.len() + scan.after_hole.len()) as Op + Op::from(scan.hole.is_some()),
            base,
            checksums: (scan.entries.iter().map(|e| e.checksum))
                .chain(scan.hole.map(|h| h.checksum))
                .chain(scan.after_hole.iter().map(|e| e.checksum))
                .collect(),
            offsets: std::mem::take(&mut scan.offsets),
            named,
            compaction_bytes: DEFAULT_COMPACTION_BYTES,
            compact_after: 0,
            compacted_at: None,
            checkpoint: None,
            checkpoint_written: None,
            rebase: None,
            after_rebase: Vec::new(),
            stats: StoreStats::default(),
            superblock,
        };
        let opened = store.finish_open(copies, checkpoint, &wal, scan);
        (store, opened)
    }

    /// The rest of an open, on the store built over what was found: frees
    /// what the WAL file not named holds, rewrites a lone superblock copy,
    /// begins a recovery if the log cannot be trusted, cuts a torn tail,
    /// makes durable what the superblock does not know to be, and seals.
    fn finish_open(
        &mut self,
        copies: usize,
        checkpoint: Result<Option<Arc<Checkpoint>>, Op>,
        wal: &[u8],
        scan: WalScan,
    ) -> Result<Opened, StoreError> {
        let store = self;
        // The WAL file not named holds nothing of the log (at most what an
        // interrupted compaction wrote): free its space.
        store.disk.truncate(Zone::wal(1 - store.superblock.wal), 0)?;
        let state = store.superblock.state();
        let lost = match (scan.damage, &checkpoint) {
            _ if state.recovering => Some("a recovery was interrupted".to_string()),
            (_, Err(op)) => Some(format!(
                "the checkpoint at op {op} does not match its digest in the superblock"
            )),
            (Some(WalDamage::Corrupt { offset }), _) => Some(format!(
                "the write-ahead log is corrupt at byte {offset}, before records that are intact"
            )),
            _ if (wal.len() as u64) < store.superblock.wal_synced => Some(format!(
                "the write-ahead log is {} bytes long, shorter than the {} bytes it had when \
                 the superblock was written: it was cut or deleted, and it may have lost \
                 acknowledged entries",
                wal.len(),
                store.superblock.wal_synced
            )),
            // Every sync ends with a seal, so the records the superblock
            // knows synced end with one: losing it loses nothing, losing
            // more may lose acknowledged entries (a write that landed
            // elsewhere, its place left zeros), which nothing names.
            _ if scan.valid_len + SEAL_LEN < store.superblock.wal_durable => Some(format!(
                "the write-ahead log's records end at byte {}, before byte {}, where they ended \
                 at a sync the superblock records: synced records are missing, and they may \
                 hold acknowledged entries",
                scan.valid_len, store.superblock.wal_durable
            )),
            _ => None,
        };
        if let Some(reason) = lost {
            store.begin_recovery()?;
            let state = store.superblock.state();
            return Ok(Opened::Recover { state, reason });
        }
        if copies < 2 {
            // A torn update or bit rot left one copy of the newest state:
            // write it again, in two fresh copies, before relying on it.
            // (After the checks above: it records `wal_durable` within the
            // records found, so a crash after it would hide what is lost.)
            store.write_superblock(state, None)?;
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
                store.offsets.clear();
                store.op = c.op;
            }
        }
        let torn = match scan.damage {
            Some(WalDamage::Torn { offset }) => {
                // Cut the torn bytes off before anything is appended after
                // them. Nothing from `offset` on was synced, so the
                // superblock may record that the file is only this long;
                // it does so first, or a crash after the cut would leave a
                // file shorter than the superblock says, which reads as lost.
                // (Torn bytes the superblock knew durable were a seal: every
                // sync ends with one, so rot in a synced entry is followed
                // by an intact record and reads as corruption instead.)
                if offset < store.wal_synced {
                    store.wal_synced = offset;
                    store.write_superblock(state, None)?;
                }
                let zone = store.wal_zone();
                store.disk.truncate(zone, offset)?;
                store.disk.sync(zone)?;
                store.wal_len = offset;
                store.wal_allocated = offset;
                Some(offset)
            }
            _ => None,
        };
        if store.wal_len > store.wal_durable {
            // Records the superblock does not know to be durable. They may
            // have been synced and acknowledged (the process died before a
            // superblock recorded it), so they cannot be dropped, and the
            // replica will acknowledge them again once it runs; or never
            // synced: the process was killed before its `fdatasync`, or the
            // `fdatasync` failed, and Linux then marks the pages clean, so
            // a sync alone would not write them. So write their bytes (and
            // the zeros ahead) again and sync, before the replica gets them
            // (recorded below).
            let zone = store.wal_zone();
            let from = store.wal_durable;
            store
                .disk
                .write(zone, from, &wal[from as usize..store.wal_allocated as usize])?;
            store.disk.sync(zone)?;
            store.wal_durable = store.wal_len;
            store.wal_synced = store.wal_synced.max(store.wal_allocated);
        }
        if !scan.sealed {
            // The records a torn write left whole end unsealed: seal them
            // before the replica can acknowledge any of them. If the disk
            // refuses (full), the seal stays staged, and everything the
            // replica outputs waits for it like for any staged write.
            Record::Seal.encode_into(&mut store.wal_pending);
            let _ = store.write_wal();
        }
        // The superblock itself may not be durable either: an earlier life
        // whose superblock write failed to sync (Linux marks the pages
        // clean, and reads still return them) left bytes this open reads
        // and a crash loses; the replica would act on them (send in their
        // view) and restart below it after a crash (seed 307755). So the
        // open writes it again, synced, before the replica gets it; that
        // also covers what the open made durable of the WAL, as a sync
        // would before an acknowledgement. With the seal still staged, the
        // sync that writes it writes the superblock too.
        if store.has_staged() {
            store.state.get_or_insert(state);
        } else {
            store.write_superblock(state, None)?;
        }
        let mut entries = scan.entries;
        if let Some((op, checksum)) = store.hole {
            if checkpoint.as_ref().is_some_and(|c| c.op >= op) {
                // The checkpoint covers the damaged entry: the replica
                // restarts from it and the entries after it, and never
                // needs the damaged one.
                entries = scan.after_hole;
                store.hole = None;
            } else {
                let opened = Opened::Repair {
                    state,
                    checkpoint,
                    entries,
                    hole: (op, checksum),
                    after: scan.after_hole,
                };
                return Ok(opened);
            }
        }
        Ok(Opened::Restart {
            state,
            checkpoint,
            entries,
            torn,
        })
    }

    /// A store with nothing in it yet, over `disk` (its superblock is still
    /// to be written).
    fn blank(disk: D, identity: Identity, meta: Vec<u8>) -> Store<D> {
        let identity_cluster = identity.cluster;
        Store {
            disk,
            superblock: Superblock::new(identity, meta),
            state: None,
            wal_len: 0,
            wal_allocated: 0,
            wal_synced: 0,
            wal_durable: 0,
            switch_pending: false,
            wal_pending: Vec::new(),
            hole: None,
            emptying: false,
            op: 0,
            base: (0, root_checksum(identity_cluster)),
            checksums: Vec::new(),
            offsets: Vec::new(),
            named: None,
            compaction_bytes: DEFAULT_COMPACTION_BYTES,
            compact_after: 0,
            compacted_at: None,
            checkpoint: None,
            checkpoint_written: None,
            rebase: None,
            after_rebase: Vec::new(),
            stats: StoreStats::default(),
        }
    }

    /// Records that the replica is recovering (and drops the checkpoint:
    /// the replica starts over from op 0), then empties the log: a crash at
    /// any point leaves a store that recovers again on restart.
    fn begin_recovery(&mut self) -> io::Result<()> {
        let mut state = self.superblock.state();
        state.recovering = true;
        self.superblock.checkpoint = None;
        self.named = None;
        self.wal_synced = 0;
        self.wal_durable = 0;
        self.write_superblock(state, None)?;
        let zone = self.wal_zone();
        self.disk.truncate(zone, 0)?;
        self.disk.sync(zone)?;
        self.wal_len = 0;
        self.wal_allocated = 0;
        self.forget_log();
        Ok(())
    }

    /// The log as staged becomes empty at op 0 (a recovery starts over).
    fn forget_log(&mut self) {
        self.op = 0;
        self.base = (0, root_checksum(self.superblock.identity.cluster));
        self.checksums.clear();
        self.offsets.clear();
        self.hole = None;
        self.wal_pending.clear();
        self.rebase = None;
        self.after_rebase.clear();
        self.checkpoint = None;
        self.checkpoint_written = None;
    }

    /// Takes a replica output: stages it and returns `true` if it is a
    /// write, returns `false` otherwise. Staged writes become durable at
    /// the next [`Store::sync`]; nothing that followed them may take
    /// effect before.
    pub fn stage(&mut self, output: &Output) -> Result<bool, String> {
        match output {
            Output::WriteLog { after, entries } => {
                let (after, entries) = self.above_base(*after, entries)?;
                self.stage_repair(after, entries);
                let (after, entries) = self.past_unchanged(after, entries);
                if self.hole.is_some_and(|(op, _)| after < op) {
                    // The `Truncate` record below drops the hole.
                    self.hole = None;
                }
                if after > self.op {
                    return Err(format!(
                        "a write after op {after} to a log of ops {}..={}",
                        self.base.0, self.op
                    ));
                }
                // Offsets are the records' places in the file once written;
                // behind a staged rebase, in `after_rebase` (fixed at sync).
                let (records, start) = if self.rebase.is_some() {
                    (&mut self.after_rebase, 0)
                } else {
                    (&mut self.wal_pending, self.wal_len)
                };
                if after < self.op {
                    Record::Truncate { after }.encode_into(records);
                    self.checksums.truncate((after - self.base.0) as usize);
                    self.offsets.truncate((after - self.base.0) as usize);
                }
                for entry in entries {
                    self.offsets.push(start + records.len() as u64);
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
                let mut state = **state;
                if state.recovering && !self.superblock.recovering && !self.emptying {
                    // The replica gave up its log while running (no peer
                    // could repair it): empty it, as an open that found it
                    // untrustworthy does, before the state says recovering.
                    self.emptying = true;
                    self.forget_log();
                }
                state.commit = state.commit.min(self.op);
                self.state = Some(state);
                Ok(true)
            }
            Output::WriteCheckpoint(checkpoint) => {
                if self.hole.is_some_and(|(op, _)| op <= checkpoint.op) {
                    // The checkpoint covers the damaged entry (a replica
                    // that repaired by state sync): it is never needed,
                    // and compaction will drop its record.
                    self.hole = None;
                }
                if self.checksum_at(checkpoint.op) != Some(checkpoint.checksum) {
                    // Installed by state sync beyond (or off) the log: the
                    // log starts over at it, once it is durable.
                    self.hole = None;
                    self.rebase = Some((checkpoint.op, checkpoint.checksum, checkpoint.timestamp));
                    self.after_rebase.clear();
                    self.base = (checkpoint.op, checkpoint.checksum);
                    self.checksums.clear();
                    self.offsets.clear();
                    self.op = checkpoint.op;
                }
                self.checkpoint = Some(checkpoint.clone());
                self.checkpoint_written = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A log write that starts below the base (the replica keeps history
    /// the compacted WAL dropped: it may rewrite it unchanged, as when it
    /// installs a new view's log from below its latest checkpoint), as the
    /// same write from the base: the entries up to the base must be the
    /// ones the log had, ending at the base's checksum.
    fn above_base<'e>(
        &self,
        after: Op,
        entries: &'e [Arc<Prepare>],
    ) -> Result<(Op, &'e [Arc<Prepare>]), String> {
        let (base, checksum) = self.base;
        if after >= base {
            return Ok((after, entries));
        }
        let skip = (base - after) as usize;
        match entries.get(skip - 1) {
            Some(entry) if entry.checksum == checksum => Ok((base, &entries[skip..])),
            _ => Err(format!(
                "a write after op {after} to a log of ops {base}..={} that does not reach op {base} unchanged",
                self.op
            )),
        }
    }

    /// A log write that carries the entry of the hole: a `Repair` record
    /// for it goes first (replay fills the hole with it; the rest of the
    /// write is then the unchanged log, and is skipped).
    fn stage_repair(&mut self, after: Op, entries: &[Arc<Prepare>]) {
        let Some((op, checksum)) = self.hole else { return };
        let Some(entry) = op
            .checked_sub(after + 1)
            .and_then(|index| entries.get(index as usize))
            .filter(|entry| entry.checksum == checksum)
        else {
            return;
        };
        let records = if self.rebase.is_some() {
            &mut self.after_rebase
        } else {
            &mut self.wal_pending
        };
        Record::Repair(entry.clone()).encode_into(records);
        self.hole = None;
    }

    /// A log write without the entries the log already holds unchanged.
    /// A replica installing a new view's log rewrites from below the point
    /// where the logs differ; written as they come, a `Truncate` record
    /// would go first, and a crash that tore the write after it would lose
    /// synced (even committed) entries that the rewrite only repeated
    /// (simulator seed 55898). So a `Truncate` is written only where an
    /// entry really changes, or where the log really gets shorter: the
    /// entries it drops were never committed.
    fn past_unchanged<'e>(&self, after: Op, entries: &'e [Arc<Prepare>]) -> (Op, &'e [Arc<Prepare>]) {
        let same = entries
            .iter()
            .zip(after + 1..=self.op)
            .take_while(|(entry, op)| self.checksum_at(*op) == Some(entry.checksum))
            .count();
        (after + same as Op, &entries[same..])
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
            || self.switch_pending
            || self.emptying
    }

    /// Compact the WAL once the records before the durable checkpoint's
    /// suffix take at least `bytes` (and at least as many as the suffix,
    /// so the copying costs at most what it frees). `u64::MAX`: never.
    pub fn set_compaction_bytes(&mut self, bytes: u64) {
        self.compaction_bytes = bytes.max(1);
    }

    /// Bytes of log in the WAL file the log is in (the file itself may be
    /// up to `PREALLOCATE_BYTES` longer: zeros written ahead).
    pub fn wal_len(&self) -> u64 {
        self.wal_len
    }

    /// The WAL file records go to: the one the superblock names, or the
    /// one it is switching to.
    fn wal_zone(&self) -> Zone {
        Zone::wal(self.superblock.wal ^ u8::from(self.switch_pending))
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
        if self.emptying {
            self.begin_recovery()?;
            self.emptying = false;
        }
        if self.switch_pending {
            // Finish the last compaction's switch first (with the durable
            // state: the staged one may describe records not yet written).
            self.write_superblock(self.superblock.state(), None)?;
            self.switched();
        }
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
            let named = (checkpoint.op, checkpoint.checksum, checkpoint.timestamp);
            self.write_superblock(state, Some(written))?;
            self.named = Some(named);
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
            let start = self.wal_len + records.len() as u64;
            for offset in &mut self.offsets {
                *offset += start;
            }
            records.append(&mut self.after_rebase);
            self.wal_pending = records;
            self.rebase = None;
            self.write_wal()?;
        }
        if self.state.is_some() || self.wal_synced > self.superblock.wal_synced {
            // The records synced reach beyond what the superblock records
            // (rarely: each preallocation syncs 1 MiB of zeros ahead, which
            // it then covers): record it before anything that follows the
            // sync, an acknowledgement above all, takes effect.
            let state = self.state.unwrap_or_else(|| self.superblock.state());
            self.write_superblock(state, None)?;
            self.state = None;
        }
        self.compact_if_due();
        Ok(())
    }

    /// Compaction, once everything staged is durable: the records the
    /// named checkpoint makes dead go. The live log (a `Rebase` record at
    /// the checkpoint, then the records after it, copied as they are) is
    /// written to the other WAL file and synced; then the superblock names
    /// that file. A crash at any point leaves a superblock naming one of
    /// two files that hold the same log after the checkpoint. A failure
    /// before the switch leaves everything as it was (and waits for more
    /// growth before trying again); a failed switch is retried first thing
    /// at the next sync.
    fn compact_if_due(&mut self) {
        let Some((op, checksum, timestamp)) = self.named else {
            return;
        };
        if self.wal_len < self.compact_after
            || self.compacted_at == Some(op)
            || self.checksum_at(op) != Some(checksum)
        {
            return;
        }
        let first = (op - self.base.0) as usize; // the entry after the checkpoint
        let live_from = self.offsets.get(first).copied().unwrap_or(self.wal_len);
        let live = self.wal_len - live_from;
        if live_from < self.compaction_bytes || live_from < live {
            return;
        }
        let mut bytes = Vec::new();
        Record::Rebase {
            op,
            checksum,
            timestamp,
        }
        .encode_into(&mut bytes);
        let head = bytes.len() as u64;
        let next = 1 - self.superblock.wal;
        let written = (|| {
            bytes.extend(self.disk.read_at(self.wal_zone(), live_from, live as usize)?);
            Record::Seal.encode_into(&mut bytes);
            let zone = Zone::wal(next);
            self.disk.truncate(zone, 0)?;
            self.disk.write(zone, 0, &bytes)?;
            self.disk.sync(zone)
        })();
        if written.is_err() {
            self.stats.compaction_errors += 1;
            self.compact_after = self.wal_len + self.compaction_bytes;
            return;
        }
        self.stats.syncs += 1;
        self.switch_pending = true;
        self.compacted_at = Some(op);
        self.wal_len = bytes.len() as u64;
        self.wal_allocated = self.wal_len;
        self.wal_synced = self.wal_len;
        self.wal_durable = self.wal_len;
        self.base = (op, checksum);
        self.checksums.drain(..first);
        self.offsets.drain(..first);
        for offset in &mut self.offsets {
            *offset = *offset - live_from + head;
        }
        if self.write_superblock(self.superblock.state(), None).is_ok() {
            self.switched();
        } else {
            self.stats.compaction_errors += 1;
        }
    }

    /// A compaction's switch is durable: the old file is no longer named,
    /// so its space is freed (unsynced: whatever a crash leaves in it is
    /// never read), and the backoff of earlier failures is over.
    fn switched(&mut self) {
        let _ = self.disk.truncate(Zone::wal(1 - self.superblock.wal), 0);
        self.stats.compactions += 1;
        self.compact_after = 0;
    }

    /// Appends the staged records, and a seal, and syncs. On error they stay
    /// staged (the seal is added again on the retry, after them).
    fn write_wal(&mut self) -> io::Result<()> {
        if self.wal_pending.is_empty() {
            return Ok(());
        }
        let records = self.wal_pending.len();
        Record::Seal.encode_into(&mut self.wal_pending);
        let zone = self.wal_zone();
        self.preallocate(zone, self.wal_len + self.wal_pending.len() as u64);
        let written = self
            .disk
            .write(zone, self.wal_len, &self.wal_pending)
            .and_then(|()| self.disk.sync(zone));
        if let Err(e) = written {
            self.wal_pending.truncate(records); // the retry seals them again
                                                // A failed sync may have dropped the zeros written ahead with
                                                // the records (Linux marks a failed fsync's dirty pages clean):
                                                // the retry writes them again, or the superblock would record
                                                // a file longer than the disk holds, which reads as a cut log
                                                // and a needless recovery after the next crash.
            self.wal_allocated = self.wal_len;
            return Err(e);
        }
        self.wal_len += self.wal_pending.len() as u64;
        self.wal_durable = self.wal_len;
        self.wal_allocated = self.wal_allocated.max(self.wal_len);
        // The zeros written ahead, if any, were synced with the records.
        self.wal_synced = self.wal_allocated;
        self.stats.wal_bytes += self.wal_pending.len() as u64;
        self.stats.syncs += 1;
        self.wal_pending.clear();
        Ok(())
    }

    /// Writes zeros ahead of the log's end when little is left, so that
    /// the next syncs overwrite blocks the file has (see
    /// `PREALLOCATE_BYTES`), beyond the data about to be written, so the
    /// sync that follows covers both. Best effort: if the disk refuses
    /// (full), the data is written all the same, growing the file as before.
    fn preallocate(&mut self, zone: Zone, end: u64) {
        if end + PREALLOCATE_AHEAD <= self.wal_allocated {
            return;
        }
        let from = self.wal_allocated.max(end);
        let to = (end + PREALLOCATE_BYTES).next_multiple_of(4096);
        if self.disk.write_zeros(zone, from, to - from).is_ok() {
            self.wal_allocated = to;
        }
    }

    /// Writes `state` (and, if given, the checkpoint it names) as the next
    /// superblock, in the two slots the previous update did not use, and syncs.
    fn write_superblock(&mut self, state: DurableState, checkpoint: Option<CheckpointRef>) -> io::Result<()> {
        let mut next = self.superblock.clone();
        next.sequence += 1;
        next.set_state(&state);
        // Any superblock written also completes a pending WAL switch.
        next.wal = self.superblock.wal ^ u8::from(self.switch_pending);
        next.wal_synced = self.wal_synced;
        next.wal_durable = self.wal_durable;
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
        self.switch_pending = false;
        self.stats.superblock_writes += 1;
        self.stats.syncs += 1;
        Ok(())
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// A learner's store: the life its host drew when it created it
    /// (`Creation::Learner`); `None` for a store created as a member's.
    pub fn life(&self) -> Option<u64> {
        self.superblock.life
    }

    /// Checks what always holds of the store's bookkeeping: one checksum
    /// and one record offset per entry of the staged log `base+1..=op`
    /// (offsets increasing), a hole inside that log and named by its
    /// checksum, the log within the file's allocated length, the records
    /// known durable within the log, and, once nothing is staged, every
    /// record known durable (what an acknowledgement relies on: a machine
    /// crash keeps it) and a superblock that covers every record (a restart
    /// trusts the log that far). The simulator asserts it after every step
    /// of every replica.
    pub fn invariants(&self) -> Result<(), String> {
        let (base, op) = (self.base.0, self.op);
        let entries = op
            .checked_sub(base)
            .ok_or(format!("log op {op} below its base {base}"))?;
        if self.checksums.len() as u64 != entries || self.offsets.len() as u64 != entries {
            return Err(format!(
                "log of ops {base}..={op} with {} checksums and {} record offsets",
                self.checksums.len(),
                self.offsets.len()
            ));
        }
        if self.offsets.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("record offsets of ops {base}..={op} out of order"));
        }
        if let Some((hole, checksum)) = self.hole {
            if self.checksum_at(hole).filter(|_| hole > base) != Some(checksum) {
                return Err(format!(
                    "hole at op {hole} outside the log of ops {base}..={op} or renamed"
                ));
            }
        }
        if self.wal_len > self.wal_allocated {
            return Err(format!(
                "WAL of {} bytes in a file of {}",
                self.wal_len, self.wal_allocated
            ));
        }
        if self.wal_durable > self.wal_len {
            return Err(format!(
                "{} bytes of records known durable in a {}-byte WAL",
                self.wal_durable, self.wal_len
            ));
        }
        if self.wal_durable > self.wal_synced {
            // A superblock recording this would not decode.
            return Err(format!(
                "{} bytes of records known durable in a file synced to {}",
                self.wal_durable, self.wal_synced
            ));
        }
        if !self.has_staged() && self.wal_durable < self.wal_len {
            return Err(format!(
                "nothing staged, but only {} bytes of a {}-byte WAL are known durable",
                self.wal_durable, self.wal_len
            ));
        }
        if !self.has_staged() && self.superblock.wal_synced < self.wal_len {
            return Err(format!(
                "nothing staged, but the superblock covers {} bytes of a {}-byte WAL",
                self.superblock.wal_synced, self.wal_len
            ));
        }
        Ok(())
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
            member: 0,
            joined: 0,
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

    #[test]
    fn each_invariant_can_fail() {
        let entries = chain(&[], 3, 0);
        let store = store_with(&entries, state(0, 0, 3));
        store.invariants().expect("a synced store is sound");
        let breaks = |corrupt: &dyn Fn(&mut Store<MemDisk>), expected: &str| {
            let mut broken = store_with(&entries, state(0, 0, 3));
            corrupt(&mut broken);
            let message = broken.invariants().expect_err(expected);
            assert!(
                message.contains(expected),
                "{message:?} does not say {expected:?}"
            );
        };
        breaks(&|s| s.op = 4, "with 3 checksums and 3 record offsets");
        breaks(&|s| s.offsets.swap(0, 1), "out of order");
        breaks(&|s| s.hole = Some((2, 7)), "hole at op 2");
        breaks(&|s| s.hole = Some((4, entries[2].checksum)), "hole at op 4");
        breaks(&|s| s.wal_allocated = s.wal_len - 1, "in a file of");
        breaks(
            &|s| s.superblock.wal_synced = s.wal_len - 1,
            "the superblock covers",
        );
        breaks(&|s| s.wal_durable = s.wal_len + 1, "known durable in a");
        breaks(
            &|s| {
                s.wal_synced = s.wal_len - 1;
                s.wal_durable = s.wal_len;
            },
            "in a file synced to",
        );
        // What an open that trusted the superblock's zero-padded length
        // left: records handed out that no sync is known to have written.
        breaks(&|s| s.wal_durable = s.wal_len - 1, "are known durable");
    }

    /// A store holding `entries`, all synced, and `state`.
    fn store_with(entries: &[Arc<Prepare>], durable: DurableState) -> Store<MemDisk> {
        let (mut store, opened) = open(MemDisk::default());
        assert!(matches!(opened, Opened::Created { .. }));
        store
            .stage(&Output::WriteLog {
                after: 0,
                entries: entries.to_vec(),
            })
            .unwrap();
        store.stage(&Output::WriteState(Box::new(durable))).unwrap();
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
            membership: None,
        })
    }

    /// Stages a checkpoint at `entry` and syncs it.
    fn take_checkpoint(store: &mut Store<MemDisk>, entry: &Prepare, app: u8) {
        store
            .stage(&Output::WriteCheckpoint(checkpoint_of(entry, app)))
            .unwrap();
        store.sync().unwrap();
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
                store
                    .stage(&Output::WriteState(Box::new(state(0, 0, 8))))
                    .unwrap();
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
                store
                    .stage(&Output::WriteState(Box::new(state(0, 0, 12))))
                    .unwrap();
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
        take_checkpoint(&mut store, &entries[3], 1);
        take_checkpoint(&mut store, &entries[7], 2);
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
        store
            .stage(&Output::WriteState(Box::new(state(1, 1, 3))))
            .unwrap();
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
                store
                    .stage(&Output::WriteState(Box::new(state(1, 1, 2))))
                    .unwrap();
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
        disk.write(Zone::WalA, store.wal_len, &store.wal_pending).unwrap();
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
    fn the_wal_is_preallocated_with_zeros_and_reopens_at_the_log_end() {
        let entries = chain(&[], 40, 0);
        let mut store = store_with(&entries[..20], state(0, 0, 1));
        let file = store.disk.read(Zone::WalA).unwrap();
        assert!(file.len() as u64 >= store.wal_len() + PREALLOCATE_AHEAD);
        assert!(file[store.wal_len() as usize..].iter().all(|&b| b == 0));
        let disk = std::mem::take(&mut store.disk);
        let (mut store, opened) = open(disk);
        assert!(matches!(opened, Opened::Restart { torn: None, .. }));
        assert_eq!(restarted(&opened).1, entries[..20]);
        // Appends go at the end of the log, into the zeros, not after them.
        let allocated = store.disk.len(Zone::WalA);
        store
            .stage(&Output::WriteLog {
                after: 20,
                entries: entries[20..].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        assert_eq!(store.disk.len(Zone::WalA), allocated);
        let disk = std::mem::take(&mut store.disk);
        let (_, opened) = open(disk);
        assert_eq!(restarted(&opened).1, entries);
    }

    #[test]
    fn preallocation_keeps_ahead_of_a_growing_log() {
        let entries = chain(&[], 1, 0);
        let mut store = store_with(&entries, state(0, 0, 1));
        let mut last = entries;
        // Entries of 64 KiB: the log grows past several preallocations.
        for op in 2..=40u64 {
            let parent = last[0].checksum;
            let request = vsr::Request {
                client: 1,
                session: 1,
                request: op,
                origin: 0,
                payload: vec![op as u8; 64 << 10],
            };
            let entry = Arc::new(Prepare::new(parent, 0, op, op, vec![request]));
            store
                .stage(&Output::WriteLog {
                    after: op - 1,
                    entries: vec![entry.clone()],
                })
                .unwrap();
            store.sync().unwrap();
            let file = store.disk.len(Zone::WalA) as u64;
            assert!(file >= store.wal_len() + PREALLOCATE_AHEAD, "op {op}");
            assert!(file <= store.wal_len() + PREALLOCATE_BYTES + 4096, "op {op}");
            last = vec![entry];
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
        disk.write(Zone::WalA, store.wal_len, &store.wal_pending[..20])
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
        // Two damaged entries: more than one hole is not repaired.
        let records = disk.wal_records();
        disk.corrupt(Zone::WalA, records[0].0 + 40, 0x20);
        disk.corrupt(Zone::WalA, records[2].0 + 40, 0x20);
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
        assert_eq!(store.disk().len(Zone::WalA), 0);
        let (_, opened) = open(store.into_disk());
        assert!(matches!(opened, Opened::Recover { .. }));
    }

    #[test]
    fn a_wal_cut_or_deleted_after_it_was_synced_means_recovery() {
        // Entries synced in a stable view (no state write after the first):
        // the superblock still records how long the file was when synced.
        let entries = chain(&[], 8, 0);
        let mut store = store_with(&entries[..2], state(0, 0, 0));
        for entry in &entries[2..] {
            store
                .stage(&Output::WriteLog {
                    after: entry.op - 1,
                    entries: vec![entry.clone()],
                })
                .unwrap();
            store.sync().unwrap();
        }
        let disk = store.into_disk();
        let records = disk.wal_records();
        let (last, len) = *records.last().unwrap();
        let end = last + len;
        let mut cuts: Vec<usize> = records.iter().map(|(offset, _)| *offset).collect();
        cuts.extend([0, 1, end * 3 / 10, end - 1, end, end + 100]);
        for cut in cuts {
            let mut cut_disk = disk.clone();
            cut_disk.cut(Zone::WalA, cut);
            let (_, opened) = open(cut_disk);
            match opened {
                Opened::Recover { reason, .. } => assert!(reason.contains("cut or deleted"), "{reason}"),
                other => panic!("a WAL cut to {cut} bytes opened as {other:?}"),
            }
        }
        // Untouched, it restarts with every entry.
        let (_, opened) = open(disk);
        assert_eq!(restarted(&opened).1, entries);
    }

    #[test]
    fn a_damaged_entry_named_by_the_next_is_repaired_and_the_rest_kept() {
        let entries = chain(&[], 4, 0);
        let store = store_with(&entries, state(1, 1, 4));
        let mut disk = store.into_disk();
        let records = disk.wal_records();
        disk.corrupt(Zone::WalA, records[1].0 + 40, 0x20);
        let (mut store, opened) = open(disk);
        let Opened::Repair {
            state: repairing,
            entries: before,
            hole,
            after,
            ..
        } = opened
        else {
            panic!("expected a repair, got {opened:?}")
        };
        assert_eq!(repairing, state(1, 1, 4));
        assert_eq!(before, entries[..1]);
        assert_eq!(hole, (2, entries[1].checksum));
        assert_eq!(after, entries[2..]);
        // The replica writes its log with the fetched entry: the store
        // records the repair, and the next open finds the whole log.
        store
            .stage(&Output::WriteLog {
                after: 1,
                entries: entries[1..].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        let (store, opened) = open(store.into_disk());
        assert_eq!(restarted(&opened).1, entries);
        // And it goes on from there.
        let more = chain(&entries, 2, 1);
        let mut store = store;
        store
            .stage(&Output::WriteLog {
                after: 4,
                entries: more.clone(),
            })
            .unwrap();
        store.sync().unwrap();
        let (_, opened) = open(store.into_disk());
        assert_eq!(restarted(&opened).1, [entries, more].concat());
    }

    /// Six entries, a checkpoint at op 4, and the WAL's copy of op 2
    /// damaged: the disk, and the entries as written.
    fn damaged_entry_below_a_checkpoint() -> (Vec<Arc<Prepare>>, MemDisk) {
        let entries = chain(&[], 6, 0);
        let mut store = store_with(&entries, state(0, 0, 6));
        take_checkpoint(&mut store, &entries[3], 1);
        let mut disk = store.into_disk();
        let records = disk.wal_records();
        disk.corrupt(Zone::WalA, records[1].0 + 40, 0x20);
        (entries, disk)
    }

    #[test]
    fn a_damaged_entry_below_the_checkpoint_needs_no_repair() {
        let (entries, disk) = damaged_entry_below_a_checkpoint();
        let (_, opened) = open(disk);
        let Opened::Restart {
            checkpoint,
            entries: kept,
            ..
        } = opened
        else {
            panic!("expected a restart, got {opened:?}")
        };
        assert_eq!(checkpoint.map(|c| c.op), Some(4));
        assert_eq!(kept, entries[2..]);
    }

    #[test]
    fn rot_in_the_checkpoint_file_makes_the_replica_recover() {
        let entries = chain(&[], 6, 0);
        let mut store = store_with(&entries, state(0, 0, 6));
        take_checkpoint(&mut store, &entries[3], 1);
        let mut disk = store.into_disk();
        let (zone, len) = disk.checkpoint_file().expect("a checkpoint is named");
        disk.corrupt(zone, len / 2, 0x10);
        let (store, opened) = open(disk);
        let Opened::Recover { reason, .. } = opened else {
            panic!("expected a recovery, got {opened:?}")
        };
        assert!(reason.contains("does not match its digest"), "{reason}");
        store.invariants().unwrap();
    }

    #[test]
    fn a_damaged_entry_below_the_checkpoint_is_forgotten_by_compaction() {
        // Was a stale hole (simulator seed 771, `Store::invariants`): the
        // store kept naming the damaged entry below the checkpoint after
        // compaction had dropped it from the log (harmless, as nothing
        // below the checkpoint is written again, but no longer true).
        let (entries, disk) = damaged_entry_below_a_checkpoint();
        let (mut store, _) = open(disk);
        store.invariants().unwrap();
        store.set_compaction_bytes(1);
        let next = chain(&entries, 1, 0);
        store
            .stage(&Output::WriteLog {
                after: 6,
                entries: next,
            })
            .unwrap();
        store.sync().unwrap();
        assert_eq!(store.stats().compactions, 1);
        store.invariants().unwrap();
    }

    #[test]
    fn rot_in_the_last_entry_is_corruption_and_rot_in_the_seal_loses_nothing() {
        // Every write ends with a seal, so the last synced entry is never
        // the last record: rot in it is followed by an intact record.
        let entries = chain(&[], 4, 0);
        let store = store_with(&entries, state(0, 0, 4));
        let disk = store.into_disk();
        let records = disk.wal_records();
        let (seal_at, seal_len) = *records.last().unwrap();
        let (entry_at, _) = records[records.len() - 2];

        let mut rotted = disk.clone();
        rotted.corrupt(Zone::WalA, entry_at + 30, 0x01);
        let (_, opened) = open(rotted);
        assert!(matches!(opened, Opened::Recover { .. }), "{opened:?}");

        let mut rotted = disk.clone();
        rotted.corrupt(Zone::WalA, seal_at + seal_len - 1, 0x01);
        let (store, opened) = open(rotted);
        assert!(
            matches!(opened, Opened::Restart { torn: Some(_), .. }),
            "{opened:?}"
        );
        assert_eq!(restarted(&opened).1, entries);
        // The entries left unsealed by the cut were sealed again at once:
        // rot in the last of them is corruption again.
        let mut disk = store.into_disk();
        disk.corrupt(Zone::WalA, entry_at + 30, 0x01);
        let (_, opened) = open(disk);
        assert!(matches!(opened, Opened::Recover { .. }), "{opened:?}");
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
            Err(Unopened {
                error: StoreError::NoSuperblock,
                ..
            })
        ));
    }

    // Contiguous damage over a view change's `Truncate` and the two
    // entries after it reads as one damaged record whose hole the next
    // entry names, while the entries before it are the old view's, which
    // do not chain with the fetched entry. Without a checkpoint,
    // `restart_from` refuses them, and the repair used to give up on a
    // repair it had already taken: the replica stayed `Repairing` for
    // good. With a checkpoint below the hole, `restart_from` keeps the
    // checkpoint alone, silently dropping ops 3..=6 the replica
    // acknowledged in its log view 1. Either way the repair must give up
    // (docs/storage.md: two damaged records mean a full recovery, not a loss).
    #[test]
    fn a_repaired_log_that_does_not_chain_is_never_cut_to_the_checkpoint() {
        for with_checkpoint in [false, true] {
            a_repaired_log_that_does_not_chain_means_recovery(with_checkpoint);
        }
    }

    fn a_repaired_log_that_does_not_chain_means_recovery(with_checkpoint: bool) {
        use vsr::{Config, Input, Message, Replica};
        let old = chain(&[], 4, 0);
        let mut store = store_with(&old, state(1, 1, 2));
        if with_checkpoint {
            let checkpoint = Arc::new(Checkpoint {
                op: 2,
                checksum: old[1].checksum,
                timestamp: old[1].timestamp,
                clients: vec![0],
                app: Arc::new(vec![1; 10]),
                membership: None,
            });
            store.stage(&Output::WriteCheckpoint(checkpoint)).unwrap();
            store.sync().unwrap();
        }
        // View 1 replaces op 4 and appends 5 and 6 (one write: a Truncate
        // and three entries).
        let new = chain(&old[..3], 3, 1);
        let before = store.wal_len() as usize;
        store
            .stage(&Output::WriteLog {
                after: 3,
                entries: new.clone(),
            })
            .unwrap();
        store
            .stage(&Output::WriteState(Box::new(state(1, 1, 6))))
            .unwrap();
        store.sync().unwrap();
        let mut disk = store.into_disk();
        let records = disk.wal_records();
        let last = records.iter().rev().nth(1).unwrap().0; // op 6's record (the seal is last)
                                                           // One contiguous damaged region: the Truncate, op 4' and op 5'.
        for offset in (before + 20..last - 1).step_by(7) {
            disk.corrupt(Zone::WalA, offset, 0x10);
        }
        let (_, opened) = open(disk);
        let Opened::Repair {
            state: durable,
            checkpoint,
            entries,
            hole,
            after,
        } = opened
        else {
            panic!("expected a repair, got {opened:?}")
        };
        assert_eq!(hole, (5, new[1].checksum));
        let config = Config::new(3, 3);
        let mut replica =
            Replica::restart_repairing(config.clone(), 0, durable, checkpoint, entries, hole, after).unwrap();
        let member_1 = vsr::message::Sender {
            epoch: 0,
            slot: 1,
            id: 1,
            joined: 0,
        };
        let bytes = vsr::message::encode(
            config.wire_cluster(),
            member_1,
            &[0; vsr::MAX_SLOTS],
            0,
            &Message::Entry {
                entry: new[1].clone(),
            },
        );
        replica.step(Input::Receive(&bytes));
        assert!(
            replica.is_recovering(),
            "with a checkpoint: {with_checkpoint}; the replica restarted with op {} in log view {}, status {:?}",
            replica.op(),
            replica.log_view(),
            replica.status()
        );
    }

    // Review of defect 15 (pre-existing, false positive): a power loss
    // during the very first superblock write of a new store (its two
    // copies, unsynced, torn) leaves a superblock file with bytes but no
    // valid copy, and an empty log. Open refuses it for good ("every
    // superblock copy is damaged"), though nothing was ever acknowledged:
    // the node needs an operator after a crash in its first milliseconds.
    // Fix: create the superblock file complete (write a temporary file,
    // sync, rename, sync the directory), so a torn first write leaves no
    // superblock file at all.
    #[test]
    fn a_crash_during_the_first_superblock_write_leaves_a_store_that_opens() {
        let (store, _) = open(MemDisk::default());
        let created = store.into_disk().read(Zone::Superblock).unwrap();
        // The first update writes slots 2 and 3 (Superblock::slots_of(1)).
        assert!(created[..2 * SLOT_SIZE].iter().all(|&b| b == 0));
        for torn in [1, 100, SLOT_SIZE - 1] {
            let mut disk = MemDisk::default();
            disk.write(Zone::Superblock, 0, &created[..2 * SLOT_SIZE + torn])
                .unwrap();
            disk.sync(Zone::Superblock).unwrap();
            match Store::open(disk, identity(), b"meta".to_vec()) {
                Ok(_) => {}
                Err(e) => panic!("first superblock write torn at {torn} bytes: {e}"),
            }
        }
    }

    #[test]
    fn a_failed_open_hands_the_disk_back_for_another_try() {
        let entries = chain(&[], 4, 0);
        let mut disk = store_with(&entries, state(0, 0, 4)).into_disk();
        // A read error in the WAL, then one copy of the superblock rotted
        // and a sync that fails when the open writes it again: each open
        // fails, and the disk it hands back opens once the fault is gone.
        disk.unreadable = Some(Zone::WalA);
        let Err(unopened) = Store::open(disk, identity(), vec![]) else {
            panic!("opened a WAL it could not read")
        };
        assert!(matches!(unopened.error, StoreError::Io(_)), "{unopened}");
        let mut disk = unopened.disk;
        disk.unreadable = None;
        let slot = (0..SUPERBLOCK_COPIES)
            .find(|&slot| disk.superblock_survives_losing(slot))
            .expect("a copy to spare");
        disk.corrupt(Zone::Superblock, slot * SLOT_SIZE + 50, 0x08);
        disk.failing = true;
        let Err(unopened) = Store::open(disk, identity(), vec![]) else {
            panic!("opened with a sync that fails")
        };
        let mut disk = unopened.disk;
        disk.failing = false;
        let (store, opened) = open(disk);
        assert_eq!(restarted(&opened), (state(0, 0, 4), entries));
        store.invariants().unwrap();
    }

    #[test]
    fn a_misdirected_wal_write_is_found_at_the_next_open() {
        let entries = chain(&[], 4, 0);
        // Back over the records before it, a little ahead of where it
        // belongs, or well ahead in the zeros.
        for by in [-200, -30, 10, 5_000] {
            let mut store = store_with(&entries[..3], state(0, 0, 3));
            store.disk.misdirect = Some(by);
            store
                .stage(&Output::WriteLog {
                    after: 3,
                    entries: entries[3..].to_vec(),
                })
                .unwrap();
            store
                .stage(&Output::WriteState(Box::new(state(0, 0, 4))))
                .unwrap();
            store.sync().unwrap();
            // Never a restart without entry 4: the open finds it where it
            // landed, or the damage (a repair or a recovery).
            match open(store.into_disk()).1 {
                Opened::Restart { entries: found, .. } => assert_eq!(found, entries, "by {by}"),
                Opened::Repair { .. } | Opened::Recover { .. } => {}
                Opened::Created { .. } => panic!("by {by}: created"),
            }
        }
    }

    #[test]
    fn synced_records_missing_at_the_log_end_mean_recovery() {
        // Entry 4 synced, and a superblock recording that its records
        // were: then its write turns out to have landed outside the file
        // (its place holds zeros). The replica may have acknowledged it,
        // so the open must not hand out the log without it.
        let entries = chain(&[], 4, 0);
        let mut store = store_with(&entries[..3], state(0, 0, 3));
        let entry_at = store.wal_len() as usize;
        store
            .stage(&Output::WriteLog {
                after: 3,
                entries: entries[3..].to_vec(),
            })
            .unwrap();
        store
            .stage(&Output::WriteState(Box::new(state(0, 0, 4))))
            .unwrap();
        store.sync().unwrap();
        let mut disk = store.into_disk();
        let end = Store::probe(&mut disk).unwrap().unwrap().wal_durable as usize;
        disk.zero(Zone::WalA, entry_at, end);
        let (store, opened) = open(disk.clone());
        match opened {
            Opened::Recover { reason, .. } => assert!(reason.contains("synced"), "{reason}"),
            other => panic!("entry 4 lost silently: {other:?}"),
        }
        store.invariants().unwrap();
        // A crash at any point of that open (one copy of the newest
        // superblock rotted, so the open writes it again) leaves a store
        // that still knows.
        let newest = Store::probe(&mut disk).unwrap().unwrap().sequence;
        let slot = Superblock::slots_of(newest)[0];
        disk.corrupt(Zone::Superblock, slot * SLOT_SIZE + 50, 0x08);
        for operations in 0..8 {
            let mut crashing = disk.clone();
            crashing.crash_after = Some(operations);
            let mut crashed = match Store::open(crashing, identity(), b"meta".to_vec()) {
                Ok((store, _)) => store.into_disk(),
                Err(unopened) => unopened.disk,
            };
            crashed.crash(CrashCut { kept: 0, torn: None });
            let (_, opened) = open(crashed);
            assert!(
                matches!(opened, Opened::Recover { .. }),
                "crash after {operations}: {opened:?}"
            );
        }
    }

    #[test]
    fn a_log_without_its_superblock_is_refused_and_left_untouched() {
        let store = store_with(&chain(&[], 2, 0), state(0, 0, 0));
        let mut disk = store.into_disk();
        disk.cut(Zone::Superblock, 0);
        let wal = disk.read(Zone::WalA).unwrap();
        let Err(Unopened {
            error: StoreError::LostSuperblock,
            mut disk,
        }) = Store::open(disk, identity(), vec![])
        else {
            panic!("a log without its superblock opened")
        };
        assert_eq!(disk.read(Zone::WalA).unwrap(), wal);
        assert_eq!(disk.len(Zone::Superblock), 0);
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
            disk.read(Zone::WalA).unwrap(),
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
                member: 1,
                ..identity()
            },
            // An earlier membership of the same node.
            Identity {
                joined: 2,
                ..identity()
            },
        ] {
            let Err(error) = Store::open(disk.clone(), other.clone(), vec![]) else {
                panic!("a foreign store opened")
            };
            let message = error.to_string();
            assert!(message.contains("belongs to another replica"), "{message}");
            // Both identities, readably.
            assert!(
                message.contains(&format!("holds {}, not {other}", identity())),
                "{message}"
            );
            assert!(message.contains("group \"Elixir.Counter\""), "{message}");
        }
        disk.crash(CrashCut { kept: 0, torn: None });
        let after = (
            disk.read(Zone::Superblock).unwrap(),
            disk.read(Zone::WalA).unwrap(),
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

    /// The entries after `op` in a restarted log.
    fn after(log: &[Arc<Prepare>], op: Op) -> Vec<Arc<Prepare>> {
        log.iter().filter(|e| e.op > op).cloned().collect()
    }

    #[test]
    fn a_failed_sync_that_loses_its_writes_is_retried_whole() {
        // A failed fdatasync may drop the dirty pages it was to write
        // (Linux marks them clean): the retry must write them again, the
        // zeros written ahead of the log included, or a crash after the
        // retry leaves a log shorter than the superblock says.
        let entries = chain(&[], 8, 0);
        let (mut store, _) = open(MemDisk::default());
        store.disk.failing = true;
        store
            .stage(&Output::WriteLog {
                after: 0,
                entries: entries[..4].to_vec(),
            })
            .unwrap();
        store
            .stage(&Output::WriteState(Box::new(state(0, 0, 4))))
            .unwrap();
        assert!(store.sync().is_err());
        assert!(store.sync().is_err(), "still failing");
        store.disk.failing = false;
        store.sync().unwrap();
        store.invariants().unwrap();
        store
            .stage(&Output::WriteLog {
                after: 4,
                entries: entries[4..].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        let mut disk = store.into_disk();
        disk.crash(CrashCut { kept: 0, torn: None });
        let (_, opened) = open(disk);
        let (durable, stored) = restarted(&opened);
        assert_eq!(durable, state(0, 0, 4));
        assert_eq!(stored, entries);
    }

    /// Seed 307755 (dead minority): a process whose superblock write failed
    /// to sync (its pages marked clean, as Linux does) dies without a
    /// machine crash; the next open reads that superblock, and its replica
    /// acts on it (sends in its view). A crash then loses it, and the
    /// replica restarts below a view it sent messages in. The open must
    /// make what it read durable before the replica acts on it.
    #[test]
    fn an_open_makes_the_superblock_it_read_durable() {
        let (mut store, _) = open(MemDisk::default());
        store.disk.failing = true;
        store
            .stage(&Output::WriteState(Box::new(state(4, 0, 0))))
            .unwrap();
        assert!(store.sync().is_err());
        let mut disk = store.into_disk();
        disk.failing = false; // the process dies; the pages stay, clean
        let (store, opened) = open(disk);
        assert_eq!(
            restarted(&opened).0.view,
            4,
            "the open reads the written superblock"
        );
        let mut disk = store.into_disk();
        disk.crash(CrashCut { kept: 0, torn: None });
        let (_, opened) = open(disk);
        assert_eq!(
            restarted(&opened).0.view,
            4,
            "what the replica acted on survives a crash"
        );
    }

    #[test]
    fn compaction_moves_the_live_log_to_the_other_file_and_appends_continue_there() {
        let entries = chain(&[], 40, 0);
        let mut store = store_with(&entries[..30], state(0, 0, 30));
        store.set_compaction_bytes(1);
        let before = store.wal_len();
        let checkpoint = checkpoint_of(&entries[24], 5);
        store.stage(&Output::WriteCheckpoint(checkpoint.clone())).unwrap();
        store.sync().unwrap();
        assert_eq!(store.stats().compactions, 1);
        assert_eq!(store.superblock().wal, 1);
        assert!(
            store.wal_len() < before / 4,
            "{} of {before} bytes left",
            store.wal_len()
        );
        assert_eq!(store.disk().len(Zone::WalA), 0, "the old file is freed");
        // Appends go to the new file, a view change truncates in it.
        store
            .stage(&Output::WriteLog {
                after: 28,
                entries: entries[28..40].to_vec(),
            })
            .unwrap();
        store
            .stage(&Output::WriteState(Box::new(state(1, 1, 40))))
            .unwrap();
        store.sync().unwrap();
        let (mut store, opened) = open(store.into_disk());
        let (durable, stored, log) = restarted_from(&opened);
        assert_eq!(durable, state(1, 1, 40));
        assert_eq!(stored, Some(checkpoint));
        assert_eq!(log, entries[25..]);
        // The next checkpoint compacts back into the first file.
        store.set_compaction_bytes(1);
        take_checkpoint(&mut store, &entries[37], 6);
        assert_eq!(store.superblock().wal, 0);
        let (_, opened) = open(store.into_disk());
        let (_, stored, log) = restarted_from(&opened);
        assert_eq!(stored.map(|c| c.op), Some(38));
        assert_eq!(log, entries[38..]);
    }

    #[test]
    fn compaction_waits_until_the_dead_records_outweigh_the_live_ones() {
        let entries = chain(&[], 30, 0);
        let mut store = store_with(&entries, state(0, 0, 30));
        store.set_compaction_bytes(1);
        // 10 dead entries against 20 live ones: not worth copying yet.
        take_checkpoint(&mut store, &entries[9], 1);
        assert_eq!(store.stats().compactions, 0);
        // Under the byte threshold: not either.
        store.set_compaction_bytes(u64::MAX);
        take_checkpoint(&mut store, &entries[24], 2);
        assert_eq!(store.stats().compactions, 0);
        assert_eq!(store.superblock().wal, 0);
    }

    #[test]
    fn a_crash_at_any_point_of_a_compaction_leaves_the_whole_log_after_the_checkpoint() {
        let entries = chain(&[], 24, 0);
        let checkpoint = checkpoint_of(&entries[15], 3);
        for n in 0..16 {
            for cut in cuts() {
                let mut store = store_with(&entries[..20], state(0, 0, 20));
                store.set_compaction_bytes(1);
                store.stage(&Output::WriteCheckpoint(checkpoint.clone())).unwrap();
                store
                    .stage(&Output::WriteLog {
                        after: 20,
                        entries: entries[20..22].to_vec(),
                    })
                    .unwrap();
                store.disk.crash_after = Some(n);
                let synced = store.sync().is_ok();
                // What a live replica does next: more records, another sync.
                store
                    .stage(&Output::WriteLog {
                        after: 22,
                        entries: entries[22..].to_vec(),
                    })
                    .unwrap();
                let synced_more = synced && store.sync().is_ok();
                let mut disk = store.into_disk();
                disk.crash(cut);
                let (_, opened) = open(disk);
                let (_, stored, log) = restarted_from(&opened);
                let upto = if synced_more {
                    24
                } else if synced {
                    22
                } else {
                    20
                };
                match stored {
                    Some(c) => {
                        assert_eq!(c, checkpoint, "n {n} {cut:?}");
                        let after = after(&log, 16);
                        assert!(after.len() >= upto - 16, "n {n} {cut:?}: {} entries", after.len());
                        assert_eq!(after, entries[16..16 + after.len()], "n {n} {cut:?}");
                    }
                    None => {
                        assert!(!synced, "n {n} {cut:?}");
                        assert_eq!(log[..20], entries[..20], "n {n} {cut:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_failed_switch_is_retried_before_anything_else_is_written() {
        let entries = chain(&[], 12, 0);
        let mut store = store_with(&entries[..10], state(0, 0, 10));
        store.set_compaction_bytes(1);
        store
            .stage(&Output::WriteCheckpoint(checkpoint_of(&entries[7], 4)))
            .unwrap();
        // The checkpoint file (truncate, write, sync), its superblock (two
        // copies, sync), then the compaction's file (truncate, write, sync):
        // the switch's superblock write fails.
        store.disk.crash_after = Some(9);
        store.sync().unwrap();
        assert_eq!(store.stats().compaction_errors, 1);
        assert!(store.has_staged(), "the switch waits");
        store.disk.crash_after = None;
        store
            .stage(&Output::WriteLog {
                after: 10,
                entries: entries[10..].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        assert_eq!(store.superblock().wal, 1);
        assert_eq!(store.stats().compactions, 1);
        assert_eq!(store.disk().len(Zone::WalA), 0, "the old file is freed");
        let (_, opened) = open(store.into_disk());
        let (_, _, log) = restarted_from(&opened);
        assert_eq!(log, entries[8..]);
    }

    #[test]
    fn a_compacted_file_is_not_compacted_again_at_the_same_checkpoint() {
        let entries = chain(&[], 20, 0);
        let mut store = store_with(&entries, state(0, 0, 20));
        store.set_compaction_bytes(1);
        take_checkpoint(&mut store, &entries[19], 1);
        assert_eq!(store.stats().compactions, 1);
        // Only the Rebase and a seal are left, all "before" the checkpoint's
        // suffix: syncs of state alone must not copy them back and forth.
        for view in 1..4 {
            store
                .stage(&Output::WriteState(Box::new(state(view, view, 20))))
                .unwrap();
            store.sync().unwrap();
        }
        assert_eq!(store.stats().compactions, 1);
    }

    #[test]
    fn unsealed_records_on_a_full_disk_stay_staged_until_the_seal_is_written() {
        let entries = chain(&[], 3, 0);
        let store = store_with(&entries, state(0, 0, 3));
        let mut disk = store.into_disk();
        // A crash kept the last write's records whole but not its seal
        // (which would have gone into the zeros written ahead).
        let (seal_at, seal_len) = *disk.wal_records().last().unwrap();
        disk.write(Zone::WalA, seal_at as u64, &vec![0; seal_len])
            .unwrap();
        disk.sync(Zone::WalA).unwrap();
        disk.full = true;
        let (mut store, opened) = open(disk);
        assert_eq!(restarted(&opened).1, entries);
        assert!(store.has_staged(), "the seal waits, and so does every output");
        assert!(store.sync().is_err());
        store.disk.full = false;
        store.sync().unwrap();
        assert!(!store.has_staged());
        let records = store.disk().wal_records();
        let (last, _) = *records.last().unwrap();
        assert_eq!(
            Record::decode(&store.disk.read(Zone::WalA).unwrap()[last..]).map(|(r, _)| r),
            Some(Record::Seal)
        );
    }

    #[test]
    fn compaction_after_a_rebase_copies_the_records_that_followed_it() {
        let all = chain(&[], 20, 0);
        let mut store = store_with(&all[..4], state(0, 0, 4));
        store.set_compaction_bytes(1);
        store
            .stage(&Output::WriteCheckpoint(checkpoint_of(&all[9], 1)))
            .unwrap();
        store
            .stage(&Output::WriteLog {
                after: 10,
                entries: all[10..18].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        take_checkpoint(&mut store, &all[15], 2);
        assert_eq!(store.stats().compactions, 1);
        let (_, opened) = open(store.into_disk());
        let (_, stored, log) = restarted_from(&opened);
        assert_eq!(stored.map(|c| c.op), Some(16));
        assert_eq!(log, all[16..18]);
    }

    #[test]
    fn a_store_of_another_format_version_is_refused_by_its_version() {
        let store = store_with(&chain(&[], 2, 0), state(0, 0, 2));
        let mut disk = store.into_disk();
        let mut file = disk.read(Zone::Superblock).unwrap();
        for slot in file.chunks_mut(SLOT_SIZE) {
            if Superblock::version_of(slot).is_some() {
                slot[24..26].copy_from_slice(&2u16.to_le_bytes());
                let sum = checksum(&slot[16..]);
                slot[..16].copy_from_slice(&sum.to_le_bytes());
            }
        }
        disk.write(Zone::Superblock, 0, &file).unwrap();
        disk.sync(Zone::Superblock).unwrap();
        let error = Store::open(disk, identity(), b"meta".to_vec())
            .err()
            .expect("refused")
            .error;
        assert!(matches!(error, StoreError::Version(2)), "{error}");
        assert!(error.to_string().contains("format version 2"), "{error}");
    }

    /// A store like `store_with`'s whose superblock copies are all format
    /// 5, as that version wrote them (a cluster of 3; crash vector `[1, 2, 3]`).
    fn format_5_store(entries: &[Arc<Prepare>]) -> (MemDisk, DurableState) {
        let mut durable = state(2, 2, entries.len() as Op);
        durable.incarnations[..3].copy_from_slice(&[1, 2, 3]);
        let mut disk = store_with(entries, durable).into_disk();
        let mut file = disk.read(Zone::Superblock).unwrap();
        for slot in file.chunks_mut(SLOT_SIZE) {
            if let Some(superblock) = Superblock::decode(slot) {
                slot.copy_from_slice(&crate::format::encode_v5(&superblock, 3));
            }
        }
        disk.write(Zone::Superblock, 0, &file).unwrap();
        disk.sync(Zone::Superblock).unwrap();
        (disk, durable)
    }

    /// The format versions of the superblock file's copies, slot by slot.
    fn versions(disk: &mut MemDisk) -> Vec<Option<u16>> {
        let file = disk.read(Zone::Superblock).unwrap();
        file.chunks(SLOT_SIZE).map(Superblock::version_of).collect()
    }

    #[test]
    fn a_format_5_store_restarts_in_epoch_0_and_its_next_write_is_format_6() {
        let entries = chain(&[], 4, 0);
        let (mut disk, durable) = format_5_store(&entries);
        assert!(versions(&mut disk).iter().flatten().all(|&v| v == 5));
        let (mut store, opened) = open(disk);
        let (restored, log) = restarted(&opened);
        assert_eq!((restored, &log), (durable, &entries));
        assert_eq!((opened.role(), opened.membership()), (Role::Member, None));
        assert_eq!(store.life(), None);
        // Restarted, the replica is in the genesis, epoch 0.
        let (replica, _) = vsr::Replica::restart(vsr::Config::new(3, 3), 0, restored, log).unwrap();
        assert_eq!(replica.membership().epoch(), 0);
        assert_eq!(replica.durable_state().incarnations, durable.incarnations);
        // The open writes the superblock again (it makes what it read
        // durable): format 6, beside the format-5 copies of the update
        // before it; a reopen reads the newer.
        let sequence = store.superblock().sequence;
        let found = versions(store.disk_mut());
        for slot in Superblock::slots_of(sequence) {
            assert_eq!(found[slot], Some(FORMAT_VERSION));
        }
        for slot in Superblock::slots_of(sequence - 1) {
            assert_eq!(found[slot], Some(FORMAT_VERSION_5));
        }
        let next = state(3, 3, 4);
        store.stage(&Output::WriteState(Box::new(next))).unwrap();
        store.sync().unwrap();
        let (_, opened) = open(store.into_disk());
        assert_eq!(restarted(&opened), (next, entries));
    }

    #[test]
    fn a_crash_while_a_format_5_store_first_writes_format_6_leaves_either() {
        let entries = chain(&[], 4, 0);
        let next = state(3, 3, 4);
        for n in 0..4 {
            for cut in cuts() {
                let (disk, durable) = format_5_store(&entries);
                let (mut store, _) = open(disk);
                store.stage(&Output::WriteState(Box::new(next))).unwrap();
                store.disk.crash_after = Some(n);
                let synced = store.sync().is_ok();
                let mut disk = store.into_disk();
                disk.crash(cut);
                let (_, opened) = open(disk);
                let (found, log) = restarted(&opened);
                assert_eq!(log, entries, "n {n} {cut:?}");
                assert!(found == durable || found == next, "n {n} {cut:?}: {found:?}");
                if synced {
                    assert_eq!(found, next);
                }
            }
        }
    }

    #[test]
    fn a_learners_store_restarts_a_learner_with_its_life() {
        let learner = Creation::Learner { life: 0x11fe };
        let (store, opened) = Store::open_with(MemDisk::default(), identity(), vec![], learner).unwrap();
        assert!(matches!(opened, Opened::Created { .. }));
        assert_eq!((opened.role(), opened.membership()), (Role::Learner, None));
        assert_eq!(store.life(), Some(0x11fe));
        // A crash before its first sync, whatever the creation a reopen
        // asks for: the store is a learner's.
        let mut disk = store.into_disk();
        disk.crash(CrashCut { kept: 0, torn: None });
        let (mut store, opened) = Store::open_with(disk, identity(), vec![], Creation::Fresh).unwrap();
        let (restored, log) = restarted(&opened);
        assert_eq!(restored.role, Role::Learner);
        assert!(log.is_empty());
        assert_eq!(store.life(), Some(0x11fe));
        // The life outlives every write, the role changes with the state.
        let entries = chain(&[], 2, 0);
        store
            .stage(&Output::WriteLog {
                after: 0,
                entries: entries.clone(),
            })
            .unwrap();
        store
            .stage(&Output::WriteState(Box::new(state(1, 1, 2))))
            .unwrap();
        store.sync().unwrap();
        let (store, opened) = open(store.into_disk());
        assert_eq!(restarted(&opened), (state(1, 1, 2), entries));
        assert_eq!((opened.role(), store.life()), (Role::Member, Some(0x11fe)));
        // A store created as a member's has no life.
        let (store, opened) = open(MemDisk::default());
        assert_eq!((opened.role(), store.life()), (Role::Member, None));
        // Whether the learner's creation tore or not: no store, or a learner's.
        for n in 0..3 {
            for cut in cuts() {
                let mut disk = MemDisk::default();
                disk.crash_after = Some(n);
                let created = Store::open_with(disk, identity(), vec![], learner);
                let Err(Unopened { mut disk, .. }) = created else {
                    continue;
                };
                disk.crash(cut);
                let (store, opened) = open(disk);
                match opened {
                    Opened::Created { .. } => assert_eq!(store.life(), None),
                    _ => {
                        assert_eq!(opened.role(), Role::Learner, "n {n} {cut:?}");
                        assert_eq!(store.life(), Some(0x11fe));
                    }
                }
            }
        }
    }

    #[test]
    fn every_role_and_membership_comes_back_from_the_store() {
        let member = |slot, id| vsr::Member {
            slot,
            id,
            ..vsr::Member::default()
        };
        let membership = Membership::new(
            2,
            vsr::ChangeId { origin: 1, id: 1 },
            &[member(3, 9), member(1, 1)],
        )
        .unwrap();
        for role in [Role::Member, Role::Learner, Role::Leaving, Role::Removed] {
            let mut durable = state(1, 1, 0);
            (durable.membership, durable.role, durable.fenced_epoch) = (Some(membership), role, 1);
            durable.incarnations[9] = 4;
            let store = store_with(&[], durable);
            let (_, opened) = open(store.into_disk());
            assert_eq!(*opened.state(), durable);
            assert_eq!((opened.role(), opened.membership()), (role, Some(membership)));
        }
    }

    #[test]
    fn a_write_from_below_the_compacted_base_is_taken_from_the_base() {
        let entries = chain(&[], 30, 0);
        let mut store = store_with(&entries[..26], state(0, 0, 26));
        store.set_compaction_bytes(1);
        take_checkpoint(&mut store, &entries[19], 1);
        assert_eq!(store.stats().compactions, 1);
        // A new view's log installed from op 10 on: the same entries up to
        // the checkpoint at 20, then a longer suffix.
        store
            .stage(&Output::WriteLog {
                after: 10,
                entries: entries[10..].to_vec(),
            })
            .unwrap();
        store.sync().unwrap();
        let (mut store, opened) = open(store.into_disk());
        assert_eq!(restarted_from(&opened).2, entries[20..]);
        // One that differs at or before the base, or stops short of it, is refused.
        let other = chain(&entries[..10], 12, 1);
        for (after, write) in [(10, other), (10, entries[10..18].to_vec())] {
            let error = store
                .stage(&Output::WriteLog {
                    after,
                    entries: write,
                })
                .unwrap_err();
            assert!(error.contains("does not reach op 20 unchanged"), "{error}");
        }
    }

    #[test]
    fn a_torn_rewrite_of_unchanged_entries_loses_nothing_that_was_synced() {
        // A new view's log that repeats ours from op 3 and replaces op 9 on.
        let ours = chain(&[], 10, 1);
        let theirs: Vec<_> = ours[..8].iter().cloned().chain(chain(&ours[..8], 4, 2)).collect();
        for cut in cuts() {
            let mut store = store_with(&ours, state(1, 1, 8));
            store
                .stage(&Output::WriteLog {
                    after: 2,
                    entries: theirs[2..].to_vec(),
                })
                .unwrap();
            store.disk.crash_after = Some(1); // the write lands, its sync does not
            assert!(store.sync().is_err());
            let mut disk = store.into_disk();
            disk.crash(cut);
            let (_, opened) = open(disk);
            let log = restarted(&opened).1;
            // Ops 1..=8 (synced, committed) are all still there, whatever the tear.
            assert!(log.len() >= 8, "{cut:?}: {} entries", log.len());
            assert_eq!(log[..8], ours[..8], "{cut:?}");
        }
    }

    /// A store reopened by a new process (the machine did not crash, so
    /// the page cache still holds what the old process wrote), then the
    /// machine crashes: what the first reopen handed the replica as its log
    /// (which it acknowledges from then on) must come back, or the second
    /// reopen must say the log was lost.
    fn reopened_then_machine_crash(prepare_failure: impl Fn(&mut MemDisk)) {
        let entries = chain(&[], 8, 0);
        let (mut store, _) = open(MemDisk::default());
        store
            .stage(&Output::WriteLog {
                after: 0,
                entries: entries[..4].to_vec(),
            })
            .unwrap();
        store
            .stage(&Output::WriteState(Box::new(state(0, 0, 4))))
            .unwrap();
        store.sync().unwrap();
        prepare_failure(&mut store.disk);
        store
            .stage(&Output::WriteLog {
                after: 4,
                entries: entries[4..].to_vec(),
            })
            .unwrap();
        assert!(store.sync().is_err());
        // The process dies; the machine does not.
        let mut disk = store.into_disk();
        disk.failing = false;
        disk.crash_after = None;
        let lagging = Store::probe(&mut disk.clone()).unwrap().unwrap().wal_durable;
        let (reopened, opened) = open(disk.clone());
        let handed = restarted(&opened).1;
        assert_eq!(
            handed, entries,
            "the reopen reads the records from the page cache"
        );
        reopened.invariants().expect("the records handed out are durable");
        // The state an open that trusted the superblock left: the
        // invariants catch it.
        let mut trusting = reopened;
        trusting.wal_durable = lagging;
        let broken = trusting
            .invariants()
            .expect_err("records handed out, not known durable");
        assert!(broken.contains("are known durable"), "{broken}");
        disk = open(disk).0.into_disk();
        disk.crash(CrashCut { kept: 0, torn: None });
        match open(disk).1 {
            Opened::Recover { .. } => {}
            opened => {
                let log = restarted(&opened).1;
                assert_eq!(
                    log.len(),
                    handed.len(),
                    "entries handed as durable were lost silently"
                );
            }
        }
    }

    #[test]
    fn records_a_killed_process_wrote_but_never_synced_are_synced_before_a_reopen_hands_them_out() {
        // DEFECT (found in review): `open` syncs records beyond the
        // superblock's `wal_synced` only when they reach past it, but
        // `wal_synced` counts the zeros preallocated ahead of the log, so
        // records written into them by a process killed before its
        // fdatasync are handed to the replica unsynced (it acknowledges
        // them), and a machine crash then loses them without a trace.
        reopened_then_machine_crash(|disk| disk.crash_after = Some(1)); // the write lands, its sync does not
    }

    #[test]
    fn records_of_a_failed_sync_are_not_handed_out_as_durable_by_a_reopen() {
        // DEFECT (found in review): after a failed fdatasync (its pages
        // marked clean) a new process reads the records from the page
        // cache and takes them as durable; a sync at open would not write
        // them either. The retry-in-place of 208c603 covers only a process
        // that keeps running.
        reopened_then_machine_crash(|disk| disk.failing = true);
    }
}
