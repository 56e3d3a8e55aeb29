//! Byte layouts of the superblock and the write-ahead log (pure: no I/O).
//!
//! Every structure starts with a 128-bit XXH3 checksum of the bytes after
//! it, then a magic number, so a torn, zeroed or flipped region never
//! decodes. Integers are little-endian; bodies are postcard, like the wire
//! format's (`docs/protocol.md`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vsr::{checksum, DurableState, Epoch, MemberId, Membership, Op, Prepare, Role, Slot, MAX_SLOTS};

/// Layout version of the store's files, the one every superblock write
/// uses. Version 5 is read too ([`Superblock::decode`]); a store written by
/// any other version is refused (version 1 had no checkpoints, version 2
/// one WAL file that was never compacted, version 3 no `wal_synced` and a
/// checkpoint client table without the checksum of each session's latest
/// request body, version 4 no `wal_durable`, version 5 no membership, role,
/// `fenced_epoch` or life, and an identity by replica index and count).
pub const FORMAT_VERSION: u16 = 6;
/// The earlier version still read: it reads as a store of epoch 0.
pub const FORMAT_VERSION_5: u16 = 5;

/// The superblock file holds this many copies, each in its own slot.
pub const SUPERBLOCK_COPIES: usize = 4;
/// Size of one superblock slot (a filesystem block, so a torn write of one
/// slot cannot reach into another).
pub const SLOT_SIZE: usize = 4096;
const SUPERBLOCK_MAGIC: [u8; 8] = *b"VISOR-SB";
/// checksum (16) + magic (8) + version (2) + reserved (2) + body length (4).
const SUPERBLOCK_HEADER: usize = 32;
/// Most bytes of host metadata a superblock carries.
pub const META_MAX: usize = 2048;
/// Most bytes of a group's name.
pub const GROUP_MAX: usize = 255;

const RECORD_MAGIC: [u8; 4] = *b"VWAL";
/// checksum (16) + magic (4) + body length (4).
pub const RECORD_HEADER: usize = 24;
/// Bytes of a `Seal` record (its body is the variant index alone): all
/// that the end of the records known synced may lose without an entry.
pub const SEAL_LEN: u64 = RECORD_HEADER as u64 + 1;

/// Which data a store belongs to. A store is opened only by the member it
/// was created for: same cluster, same group, same node admitted in the
/// same epoch. A store of an earlier membership of the same node (removed,
/// then added again) is another identity. The member's slot, its list and
/// its role are the store's to say (its durable state), not the host's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: u128,
    /// The group's name (Visor uses the module's), so that two groups'
    /// data can never be mistaken for each other.
    pub group: Vec<u8>,
    /// The host's name for the node (`vsr::Member::id`).
    pub member: MemberId,
    /// The epoch whose change admitted the member (0 in the genesis).
    pub joined: Epoch,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {:032x}, group {:?}, member {:#x} admitted in epoch {}",
            self.cluster,
            String::from_utf8_lossy(&self.group),
            self.member,
            self.joined
        )
    }
}

/// One copy of the superblock (format version 6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Incremented by every update; the highest valid copy is current.
    pub sequence: u64,
    pub identity: Identity,
    /// Opaque to storage, set when the store is created: what the host
    /// needs to restart the replica (Visor keeps the member nodes here).
    pub meta: Vec<u8>,
    pub view: u64,
    pub log_view: u64,
    pub commit: Op,
    /// The crash vector, by slot.
    pub incarnations: [u64; MAX_SLOTS],
    pub recovering: bool,
    /// The membership the replica is in; `None` for its configuration's
    /// genesis (format version 6, as are the three fields below).
    pub membership: Option<Membership>,
    /// What the replica is in that membership.
    #[serde(with = "role_code")]
    pub role: Role,
    /// The epoch in which the replica last fenced its incarnation.
    pub fenced_epoch: Epoch,
    /// The op and checksum of the entry that began the epoch ((0, 0) in
    /// the genesis).
    pub epoch_start: (Op, u128),
    /// A learner's store: the life the host drew when it created the store
    /// (`Creation::Learner`), kept for as long as the store lives; `None`
    /// for a store created as a member's.
    pub life: Option<u64>,
    /// The durable checkpoint, if any (format version 2).
    pub checkpoint: Option<CheckpointRef>,
    /// The WAL file holding the log: 0 = `wal.a`, 1 = `wal.b` (format
    /// version 3). Compaction writes the live log to the other file, then
    /// switches this field.
    pub wal: u8,
    /// The WAL file `wal` names was at least this many bytes long, synced,
    /// when this copy was written (format version 4): every record the
    /// replica synced, so every entry it may have acknowledged, lies below.
    /// A shorter file was cut or deleted, and its log is not trusted.
    /// It counts the zeros written ahead of the log, so records below it
    /// need not have been synced: see `wal_durable`.
    pub wal_synced: u64,
    /// The records of that file up to this byte were synced when this copy
    /// was written (format version 5): the end of the log at a WAL sync
    /// that succeeded. Records beyond it may have been synced since (and
    /// acknowledged), or never (a process killed before its `fdatasync`,
    /// or a failed `fdatasync`): an open makes them durable before the
    /// replica gets them. At most `wal_synced`.
    pub wal_durable: u64,
}

/// A role's number in a superblock, fixed here rather than by the order of
/// `vsr::Role`'s variants, so that reordering them never changes what a
/// store means.
mod role_code {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use vsr::Role;

    pub fn serialize<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(match role {
            Role::Member => 0,
            Role::Learner => 1,
            Role::Leaving => 2,
            Role::Removed => 3,
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        match u8::deserialize(d)? {
            0 => Ok(Role::Member),
            1 => Ok(Role::Learner),
            2 => Ok(Role::Leaving),
            3 => Ok(Role::Removed),
            other => Err(D::Error::custom(format!("role {other}"))),
        }
    }
}

/// A superblock of format version 5, field for field (its postcard body,
/// which the decoder must read exactly as that version wrote it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SuperblockV5 {
    sequence: u64,
    identity: IdentityV5,
    meta: Vec<u8>,
    view: u64,
    log_view: u64,
    commit: Op,
    incarnations: Vec<u64>,
    recovering: bool,
    checkpoint: Option<CheckpointRef>,
    wal: u8,
    wal_synced: u64,
    wal_durable: u64,
}

/// Format version 5's identity: the replica's index (its slot in the
/// genesis) and the cluster's size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdentityV5 {
    cluster: u128,
    group: Vec<u8>,
    replica: u8,
    replica_count: u8,
}

impl SuperblockV5 {
    fn sane(&self) -> bool {
        let count = self.identity.replica_count as usize;
        (1..=vsr::MAX_REPLICAS).contains(&count)
            && self.incarnations.len() == count
            && self.identity.replica < self.identity.replica_count
            && self.log_view <= self.view
            && self.checkpoint.is_none_or(|c| c.slot < 2)
            && self.wal < 2
            && self.wal_durable <= self.wal_synced
    }

    /// The store as format 6 says it: epoch 0 in the genesis (`membership:
    /// None`), role `Member`, never fenced in a later epoch, the crash
    /// vector padded with zeros to every slot. Version 5 named the replica
    /// by its index, which is its slot in the genesis; the member id is
    /// that index, because the genesis every host builds today
    /// (`vsr::Config::new`) gives each member its slot number as its id.
    fn upgraded(self) -> Superblock {
        let identity = Identity {
            cluster: self.identity.cluster,
            group: self.identity.group,
            member: MemberId::from(self.identity.replica),
            joined: 0,
        };
        let mut incarnations = [0; MAX_SLOTS];
        incarnations[..self.incarnations.len()].copy_from_slice(&self.incarnations);
        // What format 6 adds reads as a new store's (`Superblock::new`).
        let mut superblock = Superblock::new(identity, self.meta);
        superblock.set_state(&DurableState {
            view: self.view,
            log_view: self.log_view,
            commit: self.commit,
            incarnations,
            recovering: self.recovering,
            ..DurableState::default()
        });
        Superblock {
            sequence: self.sequence,
            checkpoint: self.checkpoint,
            wal: self.wal,
            wal_synced: self.wal_synced,
            wal_durable: self.wal_durable,
            ..superblock
        }
    }
}

/// Where the durable checkpoint is and how to verify it: its bytes
/// (`vsr::Checkpoint::encode`) are the first `len` bytes of checkpoint file
/// `slot` (0 = `checkpoint.a`, 1 = `checkpoint.b`), and their XXH3-128 is
/// `digest` (= `Checkpoint::digest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub op: Op,
    pub digest: u128,
    pub len: u64,
    pub slot: u8,
}

impl Superblock {
    /// A new store's first superblock: view 0, empty log, a member of its
    /// genesis.
    pub fn new(identity: Identity, meta: Vec<u8>) -> Superblock {
        Superblock {
            sequence: 0,
            identity,
            meta,
            view: 0,
            log_view: 0,
            commit: 0,
            incarnations: [0; MAX_SLOTS],
            recovering: false,
            membership: None,
            role: Role::Member,
            fenced_epoch: 0,
            epoch_start: (0, 0),
            life: None,
            checkpoint: None,
            wal: 0,
            wal_synced: 0,
            wal_durable: 0,
        }
    }

    /// The replica's durable state as this copy records it.
    pub fn state(&self) -> DurableState {
        DurableState {
            view: self.view,
            log_view: self.log_view,
            commit: self.commit,
            incarnations: self.incarnations,
            recovering: self.recovering,
            membership: self.membership,
            role: self.role,
            fenced_epoch: self.fenced_epoch,
            epoch_start: self.epoch_start,
        }
    }

    /// Records `state`, whole: [`Superblock::state`] gives it back.
    pub fn set_state(&mut self, state: &DurableState) {
        let DurableState {
            view,
            log_view,
            commit,
            incarnations,
            recovering,
            membership,
            role,
            fenced_epoch,
            epoch_start,
        } = *state;
        self.view = view;
        self.log_view = log_view;
        self.commit = commit;
        self.incarnations = incarnations;
        self.recovering = recovering;
        self.membership = membership;
        self.role = role;
        self.fenced_epoch = fenced_epoch;
        self.epoch_start = epoch_start;
    }

    /// The epoch of the membership the store records (0 for the genesis).
    pub fn epoch(&self) -> Epoch {
        self.membership.map_or(0, |m| m.epoch())
    }

    /// The store's slot: its member's in the membership it records, or in
    /// `genesis` (the configuration's) if it records none; `None` if that
    /// list does not hold its member (a learner, a member that left).
    pub fn slot_in(&self, genesis: &Membership) -> Option<Slot> {
        let membership = self.membership.as_ref().unwrap_or(genesis);
        membership
            .member_by_id(self.identity.member)
            .filter(|m| m.joined == self.identity.joined)
            .map(|m| m.slot)
    }

    /// One slot's bytes: exactly [`SLOT_SIZE`], zero-padded, in format
    /// version [`FORMAT_VERSION`].
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let body = postcard::to_allocvec(self).map_err(|e| format!("superblock encoding: {e}"))?;
        encode_slot(FORMAT_VERSION, &body)
    }

    /// Decodes one slot of format version 6 or 5 (read as format 6 says
    /// it: see `SuperblockV5::upgraded`); `None` if it is torn, corrupt,
    /// zeroed or of another format version.
    pub fn decode(slot: &[u8]) -> Option<Superblock> {
        let version = Superblock::version_of(slot)?;
        let len = u32::from_le_bytes(slot[28..32].try_into().ok()?) as usize;
        let body = slot.get(SUPERBLOCK_HEADER..SUPERBLOCK_HEADER.checked_add(len)?)?;
        match version {
            FORMAT_VERSION => {
                let superblock: Superblock = postcard::from_bytes(body).ok()?;
                superblock.sane().then_some(superblock)
            }
            FORMAT_VERSION_5 => {
                let superblock: SuperblockV5 = postcard::from_bytes(body).ok()?;
                superblock.sane().then(|| superblock.upgraded())
            }
            _ => None,
        }
    }

    fn sane(&self) -> bool {
        self.log_view <= self.view
            && self.checkpoint.is_none_or(|c| c.slot < 2)
            && self.wal < 2
            && self.wal_durable <= self.wal_synced
    }

    /// The format version of an intact slot (magic and checksum valid),
    /// whatever the version: how a store of another version is told apart
    /// from a damaged one.
    pub fn version_of(slot: &[u8]) -> Option<u16> {
        if slot.len() != SLOT_SIZE || slot[16..24] != SUPERBLOCK_MAGIC {
            return None;
        }
        let sum = u128::from_le_bytes(slot[..16].try_into().ok()?);
        (sum == checksum(&slot[16..])).then(|| u16::from_le_bytes([slot[24], slot[25]]))
    }

    /// Slots that update `sequence` writes: two of the four, alternating,
    /// so the previous update's two copies stay intact while it runs.
    pub fn slots_of(sequence: u64) -> [usize; 2] {
        let first = (sequence % 2) as usize * 2;
        [first, first + 1]
    }
}

/// A superblock slot holding `body` in format `version`.
fn encode_slot(version: u16, body: &[u8]) -> Result<Vec<u8>, String> {
    if SUPERBLOCK_HEADER + body.len() > SLOT_SIZE {
        return Err(format!("superblock of {} bytes exceeds a slot", body.len()));
    }
    let mut slot = vec![0u8; SLOT_SIZE];
    slot[16..24].copy_from_slice(&SUPERBLOCK_MAGIC);
    slot[24..26].copy_from_slice(&version.to_le_bytes());
    slot[28..32].copy_from_slice(&(body.len() as u32).to_le_bytes());
    slot[SUPERBLOCK_HEADER..SUPERBLOCK_HEADER + body.len()].copy_from_slice(body);
    let sum = checksum(&slot[16..]);
    slot[..16].copy_from_slice(&sum.to_le_bytes());
    Ok(slot)
}

/// Whether this code reads superblocks of format `version`.
pub fn readable_version(version: u16) -> bool {
    version == FORMAT_VERSION || version == FORMAT_VERSION_5
}

/// The current superblock among the copies in `file` (the highest sequence
/// among valid copies, of either version read), with how many copies hold it.
pub fn current_superblock(file: &[u8]) -> Option<(Superblock, usize)> {
    let copies: Vec<Superblock> = (0..SUPERBLOCK_COPIES)
        .filter_map(|i| file.get(i * SLOT_SIZE..(i + 1) * SLOT_SIZE))
        .filter_map(Superblock::decode)
        .collect();
    let best = copies.iter().max_by_key(|s| s.sequence)?;
    let count = copies.iter().filter(|s| *s == best).count();
    Some((best.clone(), count))
}

/// The format version of the intact copies in `file`, if they are all of
/// one version this code does not read.
pub fn foreign_version(file: &[u8]) -> Option<u16> {
    let versions: Vec<u16> = (0..SUPERBLOCK_COPIES)
        .filter_map(|i| file.get(i * SLOT_SIZE..(i + 1) * SLOT_SIZE))
        .filter_map(Superblock::version_of)
        .collect();
    let first = *versions.first()?;
    (!readable_version(first) && versions.iter().all(|&v| v == first)).then_some(first)
}

/// A slot of format version 5 holding what `superblock` holds, for tests
/// of reading stores that version wrote: `superblock` must be what a
/// format-5 store can say (epoch 0, a member, its member id its index in
/// a genesis of `replica_count`).
#[cfg(test)]
pub(crate) fn encode_v5(superblock: &Superblock, replica_count: u8) -> Vec<u8> {
    assert!(superblock.membership.is_none() && superblock.role == Role::Member);
    assert!(superblock.fenced_epoch == 0 && superblock.life.is_none() && superblock.identity.joined == 0);
    let v5 = SuperblockV5 {
        sequence: superblock.sequence,
        identity: IdentityV5 {
            cluster: superblock.identity.cluster,
            group: superblock.identity.group.clone(),
            replica: u8::try_from(superblock.identity.member).expect("a genesis index"),
            replica_count,
        },
        meta: superblock.meta.clone(),
        view: superblock.view,
        log_view: superblock.log_view,
        commit: superblock.commit,
        incarnations: superblock.incarnations[..replica_count as usize].to_vec(),
        recovering: superblock.recovering,
        checkpoint: superblock.checkpoint,
        wal: superblock.wal,
        wal_synced: superblock.wal_synced,
        wal_durable: superblock.wal_durable,
    };
    assert!(superblock.incarnations[replica_count as usize..]
        .iter()
        .all(|&i| i == 0));
    encode_slot(FORMAT_VERSION_5, &postcard::to_allocvec(&v5).expect("encodes")).expect("fits")
}

/// One record of the write-ahead log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The entry extends the log by one op.
    Entry(Arc<Prepare>),
    /// Drop every entry after `after` (a view change replaced them).
    Truncate { after: Op },
    /// Drop the whole log: it continues after `op`, whose entry had this
    /// checksum and timestamp (a checkpoint installed by state sync).
    Rebase { op: Op, checksum: u128, timestamp: u64 },
    /// Ends every write, in the same write: changes nothing. Synced records
    /// are then always followed by an intact record, so rot in the last of
    /// them reads as corruption (recover from the peers), never as a torn
    /// tail that may be cut off. Rot in the seal itself loses nothing.
    Seal,
    /// The entry of a hole (a damaged `Entry` record that the entry after it
    /// names), fetched from a peer: replay fills the hole with it if it
    /// matches, and ignores it otherwise.
    Repair(Arc<Prepare>),
}

impl Record {
    /// Appends the record's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&RECORD_MAGIC);
        out.extend_from_slice(&[0u8; 4]);
        // Encoding into a Vec cannot fail for these types.
        let body = postcard::to_extend(self, Vec::new()).expect("encoding a record into a Vec");
        out[start + 20..start + 24].copy_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = checksum(&out[start + 16..]);
        out[start..start + 16].copy_from_slice(&sum.to_le_bytes());
    }

    /// Decodes the record at the start of `bytes`: the record and its
    /// length, or `None` if it is torn, corrupt or not a record at all.
    /// An entry's own checksum is verified too.
    pub fn decode(bytes: &[u8]) -> Option<(Record, usize)> {
        let header = bytes.get(..RECORD_HEADER)?;
        if header[16..20] != RECORD_MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(header[20..24].try_into().ok()?) as usize;
        let end = RECORD_HEADER.checked_add(len)?;
        let record = bytes.get(..end)?;
        let sum = u128::from_le_bytes(header[..16].try_into().ok()?);
        if sum != checksum(&record[16..]) {
            return None;
        }
        let decoded: Record = postcard::from_bytes(&record[RECORD_HEADER..]).ok()?;
        if let Record::Entry(entry) | Record::Repair(entry) = &decoded {
            if entry.checksum != entry.compute_checksum() {
                return None;
            }
        }
        Some((decoded, end))
    }
}

/// What reading a write-ahead log found wrong, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalDamage {
    /// The bytes from `offset` on hold no valid record: the tail of a write
    /// that a crash interrupted. It was never synced, so never acknowledged.
    Torn { offset: u64 },
    /// The record at `offset` is damaged but a valid record follows it, or
    /// records do not chain, and the records after it do not say what it
    /// held (see [`Hole`]): what was synced has since been corrupted, and it
    /// may hold acknowledged entries.
    Corrupt { offset: u64 },
}

/// One entry whose record is damaged, in a log whose later records are
/// intact and name it: the entry after it carries its checksum (`parent`).
/// A peer holding an entry with that op and checksum holds exactly the
/// lost one, so the log is repaired by fetching it (Protocol-Aware
/// Recovery, Alagappan et al., FAST 2018).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub op: Op,
    pub checksum: u128,
    /// Where the damaged record starts.
    pub offset: u64,
}

/// The log a write-ahead log holds, up to its first damage.
#[derive(Clone, Debug)]
pub struct WalScan {
    /// The op the log starts after (0, or the last `Rebase` record's op),
    /// and its checksum.
    pub base: Op,
    pub base_checksum: u128,
    /// The entries up to the hole, if there is one; otherwise all of them.
    pub entries: Vec<Arc<Prepare>>,
    /// A damaged entry named by the one after it, and the intact entries
    /// after it (`hole.op + 1..`).
    pub hole: Option<Hole>,
    pub after_hole: Vec<Arc<Prepare>>,
    /// Where each entry's record (the hole's, then those of `after_hole`)
    /// starts in the file (compaction copies the records after a
    /// checkpoint from there).
    pub offsets: Vec<u64>,
    /// Bytes of valid records (and a repairable hole) before any other damage.
    pub valid_len: u64,
    /// The valid records end with a `Seal` (or there are none).
    pub sealed: bool,
    pub damage: Option<WalDamage>,
}

/// Replays the records of a write-ahead log whose chain starts at `root`.
pub fn scan_wal(root: u128, bytes: &[u8]) -> WalScan {
    scan_wal_from(vsr::log::Log::new(root), bytes)
}

/// A replay in progress: the log so far, and at most one hole in it.
struct Replay {
    log: vsr::log::Log,
    offsets: Vec<u64>,
    hole: Option<Hole>,
    after_hole: Vec<Arc<Prepare>>,
    /// A damaged record whose content the records after it have not yet
    /// told (its offset): an entry, if the next entry skips one op.
    unknown: Option<u64>,
}

impl Replay {
    /// Applies one valid record at `offset`; `false` if it does not fit.
    fn apply(&mut self, record: Record, offset: u64) -> bool {
        if let Some(at) = self.unknown {
            return self.resolve(at, record, offset);
        }
        match record {
            Record::Entry(entry) => self.append(entry, offset),
            Record::Truncate { after } => self.truncate(after),
            Record::Rebase {
                op,
                checksum,
                timestamp,
            } => {
                self.log = vsr::log::Log::at(op, checksum, timestamp);
                self.offsets.clear();
                self.hole = None;
                self.after_hole.clear();
                true
            }
            Record::Repair(entry) => {
                self.repair(entry);
                true
            }
            Record::Seal => true,
        }
    }

    /// The first valid record after a damaged one (at `at`) tells what the
    /// damaged one held, where it can: an entry that continues the log
    /// means the damaged record changed nothing (a seal); one that skips
    /// exactly one op means it was that op's entry, whose checksum it names.
    /// Anything else leaves the damage unexplained.
    fn resolve(&mut self, at: u64, record: Record, offset: u64) -> bool {
        match record {
            Record::Seal => true,
            Record::Entry(entry) if self.log.can_append(&entry) => {
                self.unknown = None;
                self.append(entry, offset)
            }
            Record::Entry(entry) if entry.op == self.log.op() + 2 && self.hole.is_none() => {
                self.unknown = None;
                self.hole = Some(Hole {
                    op: self.log.op() + 1,
                    checksum: entry.parent,
                    offset: at,
                });
                self.offsets.push(at);
                self.append(entry, offset)
            }
            Record::Rebase { .. } => {
                self.unknown = None;
                self.apply(record, offset)
            }
            _ => false,
        }
    }

    fn append(&mut self, entry: Arc<Prepare>, offset: u64) -> bool {
        let fits = match (&self.hole, self.after_hole.last()) {
            (None, _) => self.log.can_append(&entry),
            (Some(hole), last) => {
                entry.op == hole.op + 1 + self.after_hole.len() as Op
                    && entry.parent == last.map_or(hole.checksum, |e| e.checksum)
            }
        };
        if fits {
            self.offsets.push(offset);
            match self.hole {
                None => self.log.append(entry),
                Some(_) => self.after_hole.push(entry),
            }
        }
        fits
    }

    fn op(&self) -> Op {
        self.hole
            .map_or(self.log.op(), |h| h.op + self.after_hole.len() as Op)
    }

    fn truncate(&mut self, after: Op) -> bool {
        if after > self.op() || after < self.log.base() {
            return false;
        }
        match self.hole {
            Some(hole) if after >= hole.op => self.after_hole.truncate((after - hole.op) as usize),
            _ => {
                self.log.truncate_after(after);
                self.hole = None;
                self.after_hole.clear();
            }
        }
        self.offsets.truncate((after - self.log.base()) as usize);
        true
    }

    /// A `Repair` record fills the hole it matches; any other is stale (a
    /// truncation or rebase since dropped its hole) and changes nothing.
    fn repair(&mut self, entry: Arc<Prepare>) {
        let Some(hole) = self.hole else { return };
        if entry.op != hole.op || entry.checksum != hole.checksum || !self.log.can_append(&entry) {
            return;
        }
        self.log.append(entry);
        for entry in std::mem::take(&mut self.after_hole) {
            self.log.append(entry);
        }
        self.hole = None;
    }
}

/// Whether every byte is zero: a WAL's preallocated tail is up to 1 MiB,
/// scanned at every open, so 64 bytes are or-ed at a time (a loop the
/// compiler vectorizes) rather than compared one by one.
fn all_zeros(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .all(|chunk| chunk.iter().fold(0, |or, &b| or | b) == 0)
}

/// [`scan_wal`] of records that continue `log`. A `Rebase` record
/// replaces the log scanned so far with an empty one at its op. One
/// damaged record before intact ones is passed over when the records after
/// it tell what it held (see `Replay::resolve`); a second one, or one
/// they do not explain, is `Corrupt`.
pub fn scan_wal_from(log: vsr::log::Log, bytes: &[u8]) -> WalScan {
    let mut replay = Replay {
        log,
        offsets: Vec::new(),
        hole: None,
        after_hole: Vec::new(),
        unknown: None,
    };
    let mut offset = 0;
    let mut sealed = true;
    let damage = loop {
        if offset == bytes.len() {
            break None;
        }
        let Some((record, len)) = Record::decode(&bytes[offset..]) else {
            if all_zeros(&bytes[offset..]) {
                // The zeros a store writes ahead of its log (or a write
                // of which nothing reached the disk): the clean end.
                break None;
            }
            match next_valid_record(bytes, offset + 1) {
                Some(next) if replay.unknown.is_none() && replay.hole.is_none() => {
                    replay.unknown = Some(offset as u64);
                    offset = next;
                    continue;
                }
                Some(_) => {
                    break Some(WalDamage::Corrupt {
                        offset: offset as u64,
                    })
                }
                None => {
                    break Some(WalDamage::Torn {
                        offset: offset as u64,
                    })
                }
            }
        };
        let is_seal = matches!(record, Record::Seal);
        if !replay.apply(record, offset as u64) {
            // A valid record that does not fit: not something this store wrote.
            break Some(WalDamage::Corrupt {
                offset: replay.unknown.unwrap_or(offset as u64),
            });
        }
        sealed = is_seal;
        offset += len;
    };
    // A damaged record that nothing after it explains: it may have been the
    // last entry, which only it held.
    let damage = match (damage, replay.unknown) {
        (Some(WalDamage::Corrupt { offset }), _) => Some(WalDamage::Corrupt { offset }),
        (_, Some(at)) => Some(WalDamage::Corrupt { offset: at }),
        (damage, None) => damage,
    };
    let log = &replay.log;
    WalScan {
        base: log.base(),
        base_checksum: log.checksum_at(log.base()).unwrap_or_default(),
        entries: log.entries().to_vec(),
        hole: replay.hole,
        after_hole: replay.after_hole,
        offsets: replay.offsets,
        valid_len: offset as u64,
        sealed,
        damage,
    }
}

/// Where the first valid record at or after `from` starts, if any.
fn next_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(RECORD_HEADER - 1))
        .filter(|&at| bytes[at + 16..at + 20] == RECORD_MAGIC)
        .find(|&at| Record::decode(&bytes[at..]).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One nonzero byte anywhere (a chunk's first or last, the short last
    /// chunk's last) makes a tail not all zeros.
    #[test]
    fn all_zeros_finds_one_nonzero_byte_anywhere() {
        assert!(all_zeros(&[]));
        assert!(all_zeros(&[0; 200]));
        for at in [0, 63, 64, 127, 199] {
            let mut bytes = [0; 200];
            bytes[at] = 0x10;
            assert!(!all_zeros(&bytes), "byte {at}");
        }
    }
    use vsr::root_checksum;

    fn identity() -> Identity {
        Identity {
            cluster: 7,
            group: b"Elixir.Cache".to_vec(),
            member: 1,
            joined: 0,
        }
    }

    fn chain(count: u64) -> Vec<Arc<Prepare>> {
        let mut parent = root_checksum(7);
        (1..=count)
            .map(|op| {
                let entry = Arc::new(Prepare::new(parent, 0, op, op, vec![]));
                parent = entry.checksum;
                entry
            })
            .collect()
    }

    fn wal(records: &[Record]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for record in records {
            record.encode_into(&mut bytes);
        }
        bytes
    }

    #[test]
    fn a_seal_is_seal_len_bytes() {
        assert_eq!(wal(&[Record::Seal]).len() as u64, SEAL_LEN);
    }

    #[test]
    fn superblock_round_trips_and_rejects_every_flip() {
        let mut superblock = Superblock::new(identity(), b"meta".to_vec());
        superblock.sequence = 9;
        superblock.view = 4;
        let slot = superblock.encode().unwrap();
        assert_eq!(Superblock::decode(&slot), Some(superblock.clone()));
        for byte in (0..SUPERBLOCK_HEADER + 64).step_by(3) {
            let mut flipped = slot.clone();
            flipped[byte] ^= 0x10;
            assert_eq!(Superblock::decode(&flipped), None, "flip at {byte}");
        }
        assert_eq!(Superblock::decode(&vec![0; SLOT_SIZE]), None);
    }

    /// The durable state of a replica far from its genesis: a member that
    /// left (its slot reused), fenced in an earlier epoch, with incarnations
    /// in slots above the genesis'.
    fn far_state() -> DurableState {
        let member = |slot, id, joined| vsr::Member {
            slot,
            id,
            joined,
            incarnation: 3,
            life: 11,
        };
        let membership = Membership::new(
            4,
            vsr::ChangeId {
                origin: 0xfeed,
                id: 9,
            },
            &[
                member(7, 0xaaaa, 2),
                member(2, 0xbbbb, 0),
                member(11, u128::MAX, 4),
            ],
        )
        .unwrap();
        let mut incarnations = [0; MAX_SLOTS];
        incarnations[2] = 5;
        incarnations[7] = 6;
        incarnations[11] = u64::MAX;
        DurableState {
            view: 8,
            log_view: 6,
            commit: 40,
            incarnations,
            recovering: true,
            membership: Some(membership),
            role: Role::Leaving,
            fenced_epoch: 3,
            epoch_start: (41, 0xfeed),
        }
    }

    #[test]
    fn the_durable_state_round_trips_whole() {
        let mut superblock = Superblock::new(identity(), b"meta".to_vec());
        assert_eq!(superblock.state(), DurableState::default());
        for role in [Role::Member, Role::Learner, Role::Leaving, Role::Removed] {
            let state = DurableState { role, ..far_state() };
            superblock.set_state(&state);
            superblock.life = Some(77);
            assert_eq!(superblock.state(), state);
            let decoded = Superblock::decode(&superblock.encode().unwrap()).unwrap();
            assert_eq!(decoded, superblock);
            assert_eq!(decoded.state(), state);
            assert_eq!(decoded.epoch(), 4);
        }
    }

    #[test]
    fn a_superblock_of_every_field_at_its_largest_fits_a_slot() {
        let identity = Identity {
            cluster: u128::MAX,
            group: vec![b'g'; GROUP_MAX],
            member: u128::MAX,
            joined: u64::MAX,
        };
        let mut superblock = Superblock::new(identity, vec![0xff; META_MAX]);
        let members: Vec<vsr::Member> = (0..vsr::MAX_REPLICAS as u8)
            .map(|i| vsr::Member {
                slot: 6 + i,
                id: u128::MAX - i as u128,
                joined: u64::MAX,
                incarnation: u64::MAX,
                life: u64::MAX,
            })
            .collect();
        let change = vsr::ChangeId {
            origin: u128::MAX,
            id: u64::MAX,
        };
        superblock.set_state(&DurableState {
            view: u64::MAX,
            log_view: u64::MAX,
            commit: u64::MAX,
            incarnations: [u64::MAX; MAX_SLOTS],
            recovering: true,
            membership: Some(Membership::new(u64::MAX, change, &members).unwrap()),
            role: Role::Removed,
            fenced_epoch: u64::MAX,
            epoch_start: (u64::MAX, u128::MAX),
        });
        superblock.sequence = u64::MAX;
        superblock.life = Some(u64::MAX);
        superblock.checkpoint = Some(CheckpointRef {
            op: u64::MAX,
            digest: u128::MAX,
            len: u64::MAX,
            slot: 1,
        });
        (superblock.wal_synced, superblock.wal_durable) = (u64::MAX, u64::MAX);
        let slot = superblock.encode().expect("fits");
        assert_eq!(Superblock::decode(&slot), Some(superblock));
    }

    #[test]
    fn the_slot_comes_from_the_recorded_membership_or_the_genesis() {
        let genesis = Membership::genesis(&[0xaaaa, 0xbbbb, 0xcccc]).unwrap();
        let mut superblock = Superblock::new(
            Identity {
                member: 0xbbbb,
                ..identity()
            },
            vec![],
        );
        assert_eq!(superblock.slot_in(&genesis), Some(1));
        superblock.set_state(&far_state());
        assert_eq!(superblock.slot_in(&genesis), Some(2));
        // The same node admitted again later is another member.
        superblock.identity.joined = 4;
        assert_eq!(superblock.slot_in(&genesis), None);
        superblock.identity.member = 0xcccc;
        assert_eq!(superblock.slot_in(&genesis), None, "not in the recorded list");
    }

    /// The body of a superblock that format version 5's encoder wrote
    /// (replica 1 of 3, a checkpoint, the second WAL file): bytes fixed
    /// here, so that the decoder keeps reading what that version wrote.
    const V5_BODY: &str = "07f7ccd5a2b4c6c88880deb7de9af1d9a2a3020e456c697869722e436f756e746572\
                           0103046d65746104030903050607000108bc15ac0201018020e807";

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_format_5_superblock_reads_as_a_member_of_epoch_0() {
        let slot = encode_slot(FORMAT_VERSION_5, &hex(V5_BODY)).unwrap();
        assert_eq!(Superblock::version_of(&slot), Some(5));
        let read = Superblock::decode(&slot).expect("format 5 is read");
        let mut incarnations = [0; MAX_SLOTS];
        incarnations[..3].copy_from_slice(&[5, 6, 7]);
        let expected = Superblock {
            sequence: 7,
            identity: Identity {
                cluster: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
                group: b"Elixir.Counter".to_vec(),
                member: 1,
                joined: 0,
            },
            meta: b"meta".to_vec(),
            view: 4,
            log_view: 3,
            commit: 9,
            incarnations,
            recovering: false,
            membership: None,
            role: Role::Member,
            fenced_epoch: 0,
            epoch_start: (0, 0),
            life: None,
            checkpoint: Some(CheckpointRef {
                op: 8,
                digest: 0xabc,
                len: 300,
                slot: 1,
            }),
            wal: 1,
            wal_synced: 4096,
            wal_durable: 1000,
        };
        assert_eq!(read, expected);
        assert_eq!(read.slot_in(&Membership::numbered(3).unwrap()), Some(1));
        // The test encoder writes those very bytes.
        assert_eq!(encode_v5(&expected, 3), slot);
        // Written again, it is format 6, and says the same.
        let again = read.encode().unwrap();
        assert_eq!(Superblock::version_of(&again), Some(FORMAT_VERSION));
        assert_eq!(Superblock::decode(&again), Some(expected));
        // Every flip is still caught, and a format-5 body that is not sane
        // (the replica outside its cluster) is not read.
        for byte in (0..SUPERBLOCK_HEADER + 64).step_by(3) {
            let mut flipped = slot.clone();
            flipped[byte] ^= 0x10;
            assert_eq!(Superblock::decode(&flipped), None, "flip at {byte}");
        }
        let mut outside = hex(V5_BODY);
        // After the group's name: the replica and the cluster's size.
        let at = 7 + outside.windows(7).position(|w| w == b"Counter").unwrap();
        assert_eq!(outside[at..at + 2], [1, 3]);
        outside[at] = 3;
        assert_eq!(Superblock::decode(&encode_slot(5, &outside).unwrap()), None);
    }

    #[test]
    fn copies_of_either_version_are_read_and_the_highest_sequence_wins() {
        let mut file = vec![0u8; SLOT_SIZE * SUPERBLOCK_COPIES];
        let mut put = |slots: [usize; 2], bytes: &[u8]| {
            for slot in slots {
                file[slot * SLOT_SIZE..(slot + 1) * SLOT_SIZE].copy_from_slice(bytes);
            }
        };
        let mut superblock = Superblock::new(identity(), vec![]);
        superblock.sequence = 5;
        superblock.view = 1;
        put(Superblock::slots_of(5), &encode_v5(&superblock, 3));
        let old = superblock.clone();
        superblock.sequence = 6;
        superblock.view = 2;
        put(Superblock::slots_of(6), &superblock.encode().unwrap());
        assert_eq!(current_superblock(&file), Some((superblock.clone(), 2)));
        assert_eq!(foreign_version(&file), None);
        // The format-6 copies torn: the format-5 ones stand.
        for slot in Superblock::slots_of(6) {
            file[slot * SLOT_SIZE] ^= 1;
        }
        assert_eq!(current_superblock(&file), Some((old, 2)));
        assert_eq!(foreign_version(&file), None, "format 5 is read, not foreign");
    }

    #[test]
    fn the_newest_valid_copy_wins() {
        let mut file = vec![0u8; SLOT_SIZE * SUPERBLOCK_COPIES];
        let mut superblock = Superblock::new(identity(), vec![]);
        for sequence in 1..=2 {
            superblock.sequence = sequence;
            for slot in Superblock::slots_of(sequence) {
                file[slot * SLOT_SIZE..(slot + 1) * SLOT_SIZE].copy_from_slice(&superblock.encode().unwrap());
            }
        }
        assert_eq!(
            current_superblock(&file).map(|(s, n)| (s.sequence, n)),
            Some((2, 2))
        );
        // One copy of sequence 2 torn: the other still stands.
        file[0] ^= 1;
        assert_eq!(
            current_superblock(&file).map(|(s, n)| (s.sequence, n)),
            Some((2, 1))
        );
        // Both torn: the previous update's copies are intact.
        file[SLOT_SIZE] ^= 1;
        assert_eq!(
            current_superblock(&file).map(|(s, n)| (s.sequence, n)),
            Some((1, 2))
        );
    }

    #[test]
    fn scan_replays_entries_and_truncations() {
        let entries = chain(3);
        let bytes = wal(&[
            Record::Entry(entries[0].clone()),
            Record::Entry(entries[1].clone()),
            Record::Truncate { after: 1 },
            Record::Entry(entries[1].clone()),
            Record::Entry(entries[2].clone()),
        ]);
        let scan = scan_wal(root_checksum(7), &bytes);
        assert_eq!(scan.entries, entries);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.valid_len, bytes.len() as u64);
    }

    #[test]
    fn a_torn_tail_is_told_from_corruption_before_a_valid_record() {
        let entries = chain(3);
        let records: Vec<Record> = entries.iter().cloned().map(Record::Entry).collect();
        let bytes = wal(&records);
        let second = wal(&records[..1]).len();
        let third = wal(&records[..2]).len();
        // Every truncation inside the last record is a torn tail.
        for cut in third..bytes.len() {
            let scan = scan_wal(root_checksum(7), &bytes[..cut]);
            assert_eq!(scan.entries.len(), 2);
            let expected = (cut > third).then_some(WalDamage::Torn { offset: third as u64 });
            assert_eq!(scan.damage, expected, "cut at {cut}");
        }
        // Every flip inside the second record, an entry that the third
        // names, is a hole to repair: the third is valid and kept.
        for byte in second..third {
            let mut flipped = bytes.clone();
            flipped[byte] ^= 0x04;
            let scan = scan_wal(root_checksum(7), &flipped);
            assert_eq!(scan.entries.len(), 1);
            assert_eq!(
                scan.hole,
                Some(Hole {
                    op: 2,
                    checksum: entries[1].checksum,
                    offset: second as u64
                }),
                "flip at {byte}"
            );
            assert_eq!(scan.after_hole, entries[2..]);
            assert_eq!(scan.damage, None);
            // A `Repair` record with the entry fills it.
            let mut repaired = flipped.clone();
            Record::Repair(entries[1].clone()).encode_into(&mut repaired);
            let scan = scan_wal(root_checksum(7), &repaired);
            assert_eq!((scan.entries, scan.hole), (entries.clone(), None));
            // A second damaged record is corruption.
            let mut twice = flipped.clone();
            twice[third + 30] ^= 0x04;
            Record::Seal.encode_into(&mut twice);
            let scan = scan_wal(root_checksum(7), &twice);
            assert!(
                matches!(scan.damage, Some(WalDamage::Corrupt { .. })),
                "flip at {byte}"
            );
        }
    }

    #[test]
    fn damage_the_next_records_do_not_explain_is_corruption() {
        let entries = chain(4);
        let records: Vec<Record> = entries.iter().cloned().map(Record::Entry).collect();
        let mut bytes = wal(&records[..2]);
        let third = bytes.len();
        // The damaged record is followed by a seal and nothing else: it may
        // have been the last entry, which nothing names.
        bytes.extend(wal(&[records[2].clone(), Record::Seal]));
        bytes[third + 30] ^= 0x01;
        let scan = scan_wal(root_checksum(7), &bytes);
        assert_eq!(scan.damage, Some(WalDamage::Corrupt { offset: third as u64 }));
        // Followed by a truncation: the damaged record may have been one.
        let mut bytes = wal(&records[..2]);
        bytes.extend(wal(&[
            records[2].clone(),
            Record::Truncate { after: 1 },
            records[1].clone(),
        ]));
        bytes[third + 30] ^= 0x01;
        let scan = scan_wal(root_checksum(7), &bytes);
        assert_eq!(scan.damage, Some(WalDamage::Corrupt { offset: third as u64 }));
        // A damaged seal between writes loses nothing.
        let mut bytes = wal(&[records[0].clone(), Record::Seal]);
        let seal = wal(&records[..1]).len();
        bytes.extend(wal(&[records[1].clone(), Record::Seal]));
        bytes[seal + 20] ^= 0x01;
        let scan = scan_wal(root_checksum(7), &bytes);
        assert_eq!(
            (scan.entries, scan.hole, scan.damage),
            (entries[..2].to_vec(), None, None)
        );
    }

    #[test]
    fn zeros_after_the_records_are_the_clean_end_and_a_torn_record_before_them_is_torn() {
        let entries = chain(3);
        let records: Vec<Record> = entries.iter().cloned().map(Record::Entry).collect();
        let bytes = wal(&records);
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 10_000, 0);
        let scan = scan_wal(root_checksum(7), &padded);
        assert_eq!(scan.entries, entries);
        assert_eq!(scan.damage, None);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        // A record cut short inside the zeros: torn, not the end.
        let third = wal(&records[..2]).len();
        // (A cut that only drops trailing zero bytes loses nothing: the
        // zeros ahead hold the same bytes, and the record is whole.)
        let last_nonzero = bytes.iter().rposition(|&b| b != 0).unwrap();
        for cut in [third + 1, third + 20, last_nonzero] {
            let mut torn = bytes[..cut].to_vec();
            torn.resize(bytes.len() + 10_000, 0);
            let scan = scan_wal(root_checksum(7), &torn);
            assert_eq!(scan.entries.len(), 2);
            assert_eq!(
                scan.damage,
                Some(WalDamage::Torn { offset: third as u64 }),
                "cut at {cut}"
            );
        }
        // A record whose first bytes never landed but whose later ones did.
        let mut holed = padded.clone();
        holed[third..third + 8].fill(0);
        let scan = scan_wal(root_checksum(7), &holed);
        assert_eq!(scan.damage, Some(WalDamage::Torn { offset: third as u64 }));
    }

    #[test]
    fn records_that_do_not_chain_are_corruption() {
        let entries = chain(3);
        let bytes = wal(&[
            Record::Entry(entries[0].clone()),
            Record::Entry(entries[2].clone()),
        ]);
        let scan = scan_wal(root_checksum(7), &bytes);
        assert_eq!(scan.entries.len(), 1);
        assert!(matches!(scan.damage, Some(WalDamage::Corrupt { .. })));
        let foreign = scan_wal(root_checksum(8), &bytes);
        assert!(foreign.entries.is_empty());
        assert!(matches!(foreign.damage, Some(WalDamage::Corrupt { offset: 0 })));
    }
}
