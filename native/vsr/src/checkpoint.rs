//! Checkpoints, log truncation and chunked state sync.
//!
//! A checkpoint at op `C` is the replicated state right after executing
//! `C`: the host's application snapshot, the client table, and entry `C`'s
//! checksum (the hash-chain link later entries attach to) and timestamp
//! (later prepares stay strictly increasing). Every replica takes one at the
//! same ops (multiples of `checkpoint_interval`, and the op where the
//! commands since the previous such op pass `checkpoint_bytes`:
//! [`boundary`]), so equal histories give equal checkpoints, and replicas
//! compare their digests to detect a host whose state diverged.
//!
//! Once a checkpoint is formed the replica drops the log entries at and
//! below its *previous* checkpoint: one interval of history stays, so that
//! slightly lagging peers still repair from the log. A peer that needs an
//! entry below the log's base is sent the checkpoint instead, in chunks of
//! `checkpoint_chunk_bytes`; it assembles them (asking for the next chunk as
//! soon as one arrives, otherwise once per resend interval), verifies the
//! digest and installs the checkpoint if it is ahead of what it has
//! executed. A checkpoint holds committed state only, so installing one is
//! safe in any status; the replica then carries on (repair, view change,
//! recovery) from the checkpoint's op. A primary whose log does not hold
//! the checkpoint leads a view the cluster has left, and steps down.
//!
//! **Trust.** A replica sends chunks only of a checkpoint a quorum vouches
//! for: every backup reports its latest checkpoint `(op, digest)` in its
//! `PrepareOk`s, the primary counts the reports (its own checkpoints
//! included), and `Prepare` and `Commit` carry the newest identity a quorum
//! holds. So one host's divergent state never spreads by state sync, and a
//! replica whose own digest differs from the quorum's at the same op learns
//! that its host's state diverged: it reports `Status::Diverged`, executes
//! and serves nothing (but keeps its part in the log protocol), and asks
//! the others for the quorum's checkpoint, which it installs (even at or
//! below what it executed).
//!
//! **Liveness under load.** A replica that sends a peer a checkpoint *pins*
//! it for that peer: it keeps serving it, and keeps the log after it, for as
//! long as the peer keeps asking (for the checkpoint's chunks, then for the
//! entries after it), whatever checkpoints come meanwhile. A sync therefore
//! finishes in a bounded number of round trips however fast the cluster
//! commits (docs/protocol.md states the bound).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checksum::checksum;
use crate::client_table::{ClientTable, Outcome};
#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::Op;
use crate::log::Log;
use crate::membership::{Epoch, MemberId, Membership, Slot, MAX_SLOTS};
use crate::message::Message;
use crate::replica::{Output, Replica, Role, Status};

/// The largest checkpoint a replica accepts in a state sync (1 GiB).
pub const CHECKPOINT_MAX: u64 = 1 << 30;
/// Snapshots asked of the host and not yet answered, at most.
const PENDING_MAX: usize = 4;
/// Own checkpoint digests remembered for the divergence check, and
/// identities remembered as vouched by a quorum.
const DIGESTS_MAX: usize = 16;
/// Checkpoint reports remembered per peer (the primary's quorum count).
const REPORTS_MAX: usize = 4;
/// Most chunks sent in answer to one request: a sync takes a few round
/// trips however small the chunks, so it finishes before the next
/// checkpoints replace the one being sent.
pub const CHUNK_WINDOW: u64 = 64;
/// Most bytes sent in answer to one request. A host may drop messages
/// sent in a burst (Visor's server sends with `:nosuspend`, and Erlang
/// distribution refuses a message once about 1 MB is queued), so a window
/// of large chunks must stay about one chunk: with 64 chunks of 1 MiB, a
/// 100 MB state sync lost most of every window and crawled on resends
/// (bench-catchup never finished).
pub const WINDOW_BYTES: u64 = 1 << 20;

/// Chunks per request for chunks of `chunk` bytes: at least one.
pub fn window_chunks(chunk: u64) -> u64 {
    (WINDOW_BYTES / chunk.max(1)).clamp(1, CHUNK_WINDOW)
}

/// The checkpoint rule: whether op `op`, whose entry carries `bytes` of
/// commands, is a *boundary* (an op every replica checkpoints at), given
/// `since`, the command bytes of the ops after the previous boundary and
/// before `op`; and the bytes since the last boundary once `op` executed
/// (0 at a boundary).
///
/// With `interval = 0` nothing is a boundary (no checkpoints at all, the
/// byte budget included). Otherwise `op` is one if it is a multiple of
/// `interval`, or if `budget > 0` and the command bytes since the
/// previous boundary, `op`'s included, reach `budget`. Op 0 is a boundary.
///
/// So the boundaries are a function of the committed history alone: of
/// each entry's payload bytes (in the hash chain, equal on every replica)
/// and of the two settings (equal on every replica: they are folded into
/// the wire cluster). A replica computes them with a running count that
/// starts at 0 at a boundary: op 0, the checkpoint it restarts from, or one
/// it installs (every checkpoint is at a boundary), and is advanced at
/// every op it executes (docs/protocol.md, "Which ops are checkpoints").
pub fn boundary(interval: u64, budget: u64, op: Op, since: u64, bytes: u64) -> (bool, u64) {
    if interval == 0 {
        return (false, 0);
    }
    let since = since.saturating_add(bytes);
    if op.is_multiple_of(interval) || (budget > 0 && since >= budget) {
        (true, 0)
    } else {
        (false, since)
    }
}

/// The replicated state after executing op `op`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub op: Op,
    /// Checksum of entry `op`: the hash-chain link of the entries after it.
    pub checksum: u128,
    /// Timestamp of entry `op`.
    pub timestamp: u64,
    /// The client table as of `op` (`ClientTable::encode`).
    pub clients: Vec<u8>,
    /// The host's application snapshot at `op`.
    pub app: Arc<Vec<u8>>,
    /// The membership in force after executing `op` (at a change's entry,
    /// the new one): `None` for epoch 0, the configuration's genesis. A
    /// replica that installs the checkpoint takes its membership with its
    /// state (docs/design/membership.md, 2.9).
    pub membership: Option<Membership>,
}

/// The fields every checkpoint has, in the order of their bytes.
#[derive(Serialize)]
struct Fields<'a> {
    op: Op,
    checksum: u128,
    timestamp: u64,
    clients: &'a [u8],
    app: &'a [u8],
}

/// [`Fields`], decoded.
#[derive(Deserialize)]
struct OwnedFields {
    op: Op,
    checksum: u128,
    timestamp: u64,
    clients: Vec<u8>,
    app: Vec<u8>,
}

impl Checkpoint {
    /// The checkpoint's bytes (postcard), as sent in state sync and stored:
    /// its fields, then its membership only if it has one. So a checkpoint
    /// of epoch 0 has the bytes (and the digest) it had before memberships
    /// existed, and replicas of both releases agree on it.
    pub fn encode(&self) -> Vec<u8> {
        let fields = Fields {
            op: self.op,
            checksum: self.checksum,
            timestamp: self.timestamp,
            clients: &self.clients,
            app: &self.app,
        };
        let mut bytes = postcard::to_allocvec(&fields).expect("encoding to a Vec cannot fail");
        if let Some(membership) = &self.membership {
            bytes.extend(postcard::to_allocvec(membership).expect("encoding to a Vec cannot fail"));
        }
        bytes
    }

    /// A checkpoint from [`Checkpoint::encode`]'s bytes: its fields, and
    /// after them nothing (epoch 0) or exactly one well-formed membership.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let (fields, rest): (OwnedFields, &[u8]) = postcard::take_from_bytes(bytes).ok()?;
        let membership = match rest {
            [] => None,
            rest => match postcard::take_from_bytes::<Membership>(rest).ok()? {
                (membership, []) => Some(membership),
                _ => return None,
            },
        };
        Some(Checkpoint {
            op: fields.op,
            checksum: fields.checksum,
            timestamp: fields.timestamp,
            clients: fields.clients,
            app: Arc::new(fields.app),
            membership,
        })
    }

    /// The epoch the checkpoint was taken in (0 without a membership).
    pub fn epoch(&self) -> Epoch {
        self.membership.map_or(0, |m| m.epoch())
    }

    /// XXH3-128 of the checkpoint's bytes: all of it.
    pub fn digest(&self) -> u128 {
        checksum(&self.encode())
    }
}

/// A checkpoint this replica holds, with its encoding for state sync.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) checkpoint: Arc<Checkpoint>,
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) digest: u128,
}

impl Held {
    fn new(checkpoint: Arc<Checkpoint>) -> Held {
        let bytes = checkpoint.encode();
        Held {
            digest: checksum(&bytes),
            bytes: Arc::new(bytes),
            checkpoint,
        }
    }
}

/// What a checkpoint at an op needs besides the host's snapshot, captured
/// right after the op executed.
#[derive(Clone, Debug)]
pub(crate) struct PendingSnapshot {
    checksum: u128,
    timestamp: u64,
    clients: Vec<u8>,
    /// The membership after the op, as the client table is, captured
    /// when the op executes, never when the snapshot arrives.
    membership: Option<Membership>,
}

/// A checkpoint being received in chunks.
#[derive(Clone, Debug)]
pub(crate) struct Sync {
    op: Op,
    digest: u128,
    total: u64,
    /// The bytes received from offset 0 without a gap.
    bytes: Vec<u8>,
    /// Chunks received past a gap, by offset.
    ahead: BTreeMap<u64, Vec<u8>>,
    /// The end of the window last asked for.
    want_until: u64,
    /// The replica the chunks come from, by slot and member id (it may be
    /// of a newer epoch, whose list this replica does not hold).
    from: Slot,
    from_id: MemberId,
    last_request: Option<u64>,
    /// Tick of the last chunk that made progress (or of the start).
    last_progress: u64,
}

/// A checkpoint this replica serves to one peer's sync, with the log after
/// it, for as long as the peer keeps asking.
#[derive(Clone, Debug)]
struct Pin {
    held: Held,
    /// The peer still needs the log after this op.
    floor: Op,
    /// Tick of the peer's last request.
    last: u64,
}

/// Checkpoint state of a replica.
#[derive(Clone, Debug, Default)]
pub(crate) struct Checkpoints {
    pub(crate) held: Option<Held>,
    /// The checkpoint before `held`, still served to a sync in progress.
    pub(crate) previous: Option<Held>,
    /// The newest checkpoint a quorum vouches for that this replica holds:
    /// what it serves, and the log is never truncated past it.
    pub(crate) anchor: Option<Held>,
    pending: BTreeMap<Op, PendingSnapshot>,
    /// This replica's checkpoint digests, by op, for the divergence check.
    digests: BTreeMap<Op, u128>,
    /// Each replica's latest checkpoint reports, by op (the primary counts
    /// them to learn what a quorum holds).
    reports: [BTreeMap<Op, u128>; MAX_SLOTS],
    /// Checkpoint identities a quorum is known to hold, by op.
    vouched: BTreeMap<Op, u128>,
    /// Per peer: the checkpoint it is syncing from this replica.
    pins: [Option<Pin>; MAX_SLOTS],
    /// While the replica is `Diverged`: the op where its digest differed
    /// from the quorum's (it installs a vouched checkpoint at or after it).
    diverged: Option<Op>,
    /// While diverged: when the quorum's checkpoint was last asked for, and
    /// of whom.
    last_heal_request: Option<u64>,
    heal_peer: Slot,
    /// A replica that healed asks for no snapshot at or below this op: it
    /// executes those ops again from the checkpoint it installed, and its
    /// host may still answer what it was asked before the divergence, from
    /// the wrong state (an answer names only its op).
    asked_before_heal: Op,
    pub(crate) sync: Option<Sync>,
    /// Command bytes executed since the last checkpoint boundary
    /// ([`boundary`]); 0 at op 0, and reset to 0 by a restart from a
    /// checkpoint and by an install, which are at boundaries.
    pub(crate) since_boundary: u64,
}

/// Keeps the `max` highest ops of `map`.
fn keep_newest(map: &mut BTreeMap<Op, u128>, max: usize) {
    while map.len() > max {
        map.pop_first();
    }
}

impl Checkpoints {
    /// The latest checkpoint `(op, digest)`, `(0, 0)` if none.
    pub(crate) fn latest(&self) -> (Op, u128) {
        self.held.as_ref().map_or((0, 0), |h| (h.checkpoint.op, h.digest))
    }

    /// What is under way, if anything (the first found): a state sync, a
    /// peer's pin not yet expired at tick `ticks` (pins expire after
    /// `expiry` ticks without a request: `pinned_floor`), a snapshot
    /// awaited from the host, a divergence, or a checkpoint held that no
    /// quorum vouches for yet (a quiet replica has none: `quiet.rs`).
    pub(crate) fn work(&self, ticks: u64, expiry: u64) -> Option<&'static str> {
        let pinned = self
            .pins
            .iter()
            .flatten()
            .any(|p| ticks < p.last.saturating_add(expiry));
        if self.sync.is_some() {
            Some("a state sync")
        } else if pinned {
            Some("a checkpoint pinned for a peer")
        } else if !self.pending.is_empty() {
            Some("a snapshot awaited")
        } else if self.diverged.is_some() {
            Some("a divergence")
        } else if self.held.as_ref().is_some_and(|h| !self.is_vouched(h)) {
            Some("a checkpoint not vouched for")
        } else {
            None
        }
    }

    /// The op of the anchor, 0 if none.
    pub(crate) fn anchor_op(&self) -> Op {
        self.anchor.as_ref().map_or(0, |a| a.checkpoint.op)
    }

    /// The newest checkpoint `(op, digest)` a quorum is known to hold,
    /// `(0, 0)` if none.
    pub(crate) fn canonical(&self) -> (Op, u128) {
        self.vouched.last_key_value().map_or((0, 0), |(&op, &d)| (op, d))
    }

    fn remember(&mut self, held: &Held) {
        self.digests.insert(held.checkpoint.op, held.digest);
        keep_newest(&mut self.digests, DIGESTS_MAX);
    }

    fn is_vouched(&self, held: &Held) -> bool {
        self.vouched.get(&held.checkpoint.op) == Some(&held.digest)
    }

    /// Makes the newest vouched checkpoint held the anchor; returns it if
    /// that is a new one.
    fn update_anchor(&mut self) -> Option<Arc<Checkpoint>> {
        let newest = [&self.held, &self.previous]
            .into_iter()
            .flatten()
            .find(|h| self.is_vouched(h))
            .filter(|h| {
                self.anchor
                    .as_ref()
                    .is_none_or(|a| a.checkpoint.op < h.checkpoint.op)
            })
            .cloned()?;
        let checkpoint = newest.checkpoint.clone();
        self.anchor = Some(newest);
        Some(checkpoint)
    }

    /// The op the log may be truncated up to: the previous checkpoint's, but
    /// never past the anchor (nothing at all without one), so that a peer
    /// behind the log's base can always get a vouched checkpoint and then
    /// the log after it.
    fn truncation_point(&self, previous: Op) -> Op {
        self.anchor.as_ref().map_or(0, |a| a.checkpoint.op.min(previous))
    }
}

impl Checkpoints {
    /// Drops the reports and the pin of `slot`, which left the list.
    pub(crate) fn forget_peer(&mut self, slot: Slot) {
        self.reports[slot as usize].clear();
        self.pins[slot as usize] = None;
    }

    /// Checks the checkpoint state of replica `me` against its log and the
    /// highest op it executed (`Replica::invariants`).
    pub(crate) fn check(&self, me: Slot, log: &Log, executed: Op) -> Result<(), String> {
        let op_of = |h: &Option<Held>| h.as_ref().map(|h| h.checkpoint.op);
        let held = op_of(&self.held).unwrap_or(0);
        if held > executed {
            return Err(format!("checkpoint at op {held} ahead of op {executed} executed"));
        }
        if op_of(&self.previous).is_some_and(|p| p >= held) {
            return Err(format!("previous checkpoint not below the latest (op {held})"));
        }
        // The log goes on from the durable checkpoint (a restart resumes
        // from both), and nothing after the anchor is ever truncated.
        match &self.anchor {
            None if log.base() > 0 => {
                return Err(format!(
                    "log starts after op {} without a durable checkpoint",
                    log.base()
                ))
            }
            Some(a) if a.checkpoint.op > held => {
                return Err(format!(
                    "durable checkpoint at op {} ahead of the latest",
                    a.checkpoint.op
                ))
            }
            Some(a) if log.checksum_at(a.checkpoint.op) != Some(a.checkpoint.checksum) => {
                return Err(format!(
                    "log (ops {}..={}) does not hold the durable checkpoint's op {}",
                    log.base(),
                    log.op(),
                    a.checkpoint.op
                ))
            }
            _ => {}
        }
        if self.pending.keys().any(|&op| op <= held) || self.pending.len() > PENDING_MAX {
            return Err(format!("snapshots asked for at or below checkpoint op {held}"));
        }
        if self.pins[me as usize].is_some() {
            return Err("a replica pins a checkpoint for itself".into());
        }
        if let Some(pin) = self
            .pins
            .iter()
            .flatten()
            .find(|p| p.floor < p.held.checkpoint.op)
        {
            return Err(format!(
                "a pin needs the log after op {}, below its checkpoint's op {}",
                pin.floor, pin.held.checkpoint.op
            ));
        }
        if let Some(sync) = self.sync.as_ref().filter(|s| s.bytes.len() as u64 > s.total) {
            return Err(format!(
                "state sync holds {} of {} bytes",
                sync.bytes.len(),
                sync.total
            ));
        }
        Ok(())
    }
}

impl Replica {
    /// The latest checkpoint this replica holds.
    pub fn checkpoint(&self) -> Option<&Arc<Checkpoint>> {
        self.checkpoints.held.as_ref().map(|h| &h.checkpoint)
    }

    /// The op of the checkpoint this replica keeps for `peer`'s state sync
    /// (a pin), if any.
    pub fn pinned_checkpoint(&self, peer: Slot) -> Option<Op> {
        let pin = self.checkpoints.pins.get(peer as usize)?.as_ref();
        pin.map(|p| p.held.checkpoint.op)
    }

    /// How far a state sync has got: `(checkpoint op, bytes received, bytes total)`.
    pub fn sync_progress(&self) -> Option<(Op, u64, u64)> {
        self.checkpoints
            .sync
            .as_ref()
            .map(|s| (s.op, s.bytes.len() as u64, s.total))
    }

    /// Right after executing `op`, whose entry carries `bytes` of commands:
    /// counts them towards the byte budget and, if `op` is a checkpoint
    /// boundary ([`boundary`]), asks the host for its snapshot and captures
    /// the rest of the state as of `op`. The count goes on whether or not a
    /// snapshot is asked for: which ops are boundaries depends on the
    /// history, never on what this replica held when it executed them.
    pub(crate) fn checkpoint_due(&mut self, op: Op, checksum: u128, timestamp: u64, bytes: u64) {
        let (due, since) = boundary(
            self.config.checkpoint_interval,
            self.config.checkpoint_bytes,
            op,
            self.checkpoints.since_boundary,
            bytes,
        );
        self.checkpoints.since_boundary = since;
        if !due || op <= self.checkpoints.latest().0 || op <= self.checkpoints.asked_before_heal {
            return;
        }
        let pending = PendingSnapshot {
            checksum,
            timestamp,
            clients: self.client_table.encode(),
            membership: self.checkpoint_membership(),
        };
        self.checkpoints.pending.insert(op, pending);
        while self.checkpoints.pending.len() > PENDING_MAX {
            // Keep the oldest asks and the newest. The host answers in
            // order, so the oldest are answered next: dropping them would
            // lose every answer of a host more than PENDING_MAX boundaries
            // behind (a byte budget every op reaches makes every op a
            // boundary). The newest stays so that asks whose answers were
            // lost (an encode that raised) cannot block checkpoints for
            // good: its answer forms one, and that drops the older asks.
            let second_newest = self.checkpoints.pending.keys().rev().nth(1).copied();
            if let Some(op) = second_newest {
                self.checkpoints.pending.remove(&op);
            }
        }
        self.out.push(Output::TakeSnapshot { op });
    }

    /// The membership a checkpoint taken now records: `None` in epoch 0
    /// (today's bytes), else the list as its change's entry carried it.
    fn checkpoint_membership(&self) -> Option<Membership> {
        let membership = self.executed_membership;
        (membership.epoch() > 0).then_some(membership)
    }

    /// The host's snapshot at `op` arrived: form the checkpoint (made
    /// durable once a quorum vouches for it), and drop the log up to the
    /// previous checkpoint, or less (`truncation_point`, pins).
    pub(crate) fn on_snapshot(&mut self, op: Op, app: Vec<u8>) {
        let Some(pending) = self.checkpoints.pending.remove(&op) else {
            return; // not asked for, or superseded
        };
        if self.is_diverged() {
            return; // a state known to be wrong
        }
        if op <= self.checkpoints.latest().0 || op > self.commit_min {
            return;
        }
        #[allow(unused_mut)]
        let mut clients = pending.clients;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::CheckpointLateClientTable) {
            clients = self.client_table.encode();
        }
        #[allow(unused_mut)]
        let mut membership = pending.membership;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::CheckpointLateMembership) {
            membership = self.checkpoint_membership();
        }
        let checkpoint = Arc::new(Checkpoint {
            op,
            checksum: pending.checksum,
            timestamp: pending.timestamp,
            clients,
            app: Arc::new(app),
            membership,
        });
        let previous = self.checkpoints.latest().0;
        let held = Held::new(checkpoint.clone());
        self.checkpoints.remember(&held);
        self.checkpoints.previous = self.checkpoints.held.replace(held);
        self.checkpoints.pending.retain(|&o, _| o > op);
        // A primary (or a lone replica) may now count a quorum for it.
        self.count_reports();
        if self.is_diverged() {
            return;
        }
        self.advance_anchor();
        // Keep one interval of history for peers that lag a little, and
        // the log after every checkpoint a peer is syncing from here.
        let keep = self.checkpoints.truncation_point(previous);
        let keep = self.pinned_floor().map_or(keep, |floor| floor.min(keep));
        self.log.truncate_before(keep);
        if self.staging_base().is_some_and(|b| b < self.log.base()) {
            self.staging = None;
        }
        let vouched = self.checkpoints.vouched.get(&op).copied();
        self.check_own_digest(op, vouched);
    }

    // ---- Which checkpoints a quorum holds -------------------------------

    /// A peer's `PrepareOk` reported its latest checkpoint.
    pub(crate) fn on_checkpoint_report(&mut self, from: Slot, (op, digest): (Op, u128)) {
        if op == 0 {
            return;
        }
        let reports = &mut self.checkpoints.reports[from as usize];
        reports.insert(op, digest);
        keep_newest(reports, REPORTS_MAX);
        self.count_reports();
    }

    /// Vouches for the newest checkpoint that a quorum reported holding
    /// (this replica's own checkpoints count as its report).
    fn count_reports(&mut self) {
        let me = self.index as usize;
        let members = self.membership;
        let checkpoints = &self.checkpoints;
        let holds = |r: usize, op: Op| {
            if r == me {
                checkpoints.digests.get(&op)
            } else {
                checkpoints.reports[r].get(&op)
            }
        };
        let candidates = members.slots().map(usize::from).flat_map(|r| {
            let reports = if r == me {
                &checkpoints.digests
            } else {
                &checkpoints.reports[r]
            };
            reports.iter().map(|(&op, &d)| (op, d))
        });
        let newest = candidates
            .filter(|&(op, d)| {
                let holding = members
                    .slots()
                    .filter(|&r| holds(r as usize, op) == Some(&d))
                    .count();
                holding >= members.quorum()
            })
            .max_by_key(|&(op, _)| op);
        if let Some(identity) = newest {
            self.vouch(identity);
        }
    }

    /// A quorum holds checkpoint `(op, digest)` (counted here, or as the
    /// sender of a `Prepare` or `Commit` counted it).
    pub(crate) fn vouch(&mut self, (op, digest): (Op, u128)) {
        if op == 0 || self.checkpoints.vouched.get(&op) == Some(&digest) {
            return;
        }
        self.checkpoints.vouched.insert(op, digest);
        keep_newest(&mut self.checkpoints.vouched, DIGESTS_MAX);
        self.advance_anchor();
        self.check_own_digest(op, Some(digest));
    }

    /// Once a quorum vouches for a checkpoint this replica holds, it makes
    /// it durable: only a vouched checkpoint is ever written, so the one a
    /// replica restarts from is vouched too, and it can serve it at once.
    fn advance_anchor(&mut self) {
        if let Some(checkpoint) = self.checkpoints.update_anchor() {
            self.out.push(Output::WriteCheckpoint(checkpoint));
        }
    }

    /// If this replica's checkpoint at `op` differs from the one a quorum
    /// holds there, its host's state diverged. Only past its anchor: from
    /// the anchor on, its state is one a quorum vouches for (a checkpoint it
    /// installed, or one of its own that matched), so a digest of its own
    /// below the anchor describes a state it no longer has. (Soak seed
    /// 161832: a late vouch for such a digest made a replica that had just
    /// installed a newer checkpoint diverge; both peers answered its request
    /// with that older checkpoint, which it refused as below the one it
    /// held, and it stayed diverged for ever.)
    fn check_own_digest(&mut self, op: Op, quorum: Option<u128>) {
        #[allow(unused_mut)]
        let mut below_anchor = op < self.checkpoints.anchor_op();
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::CheckDigestsBelowAnchor) {
            below_anchor = false;
        }
        if below_anchor {
            return;
        }
        let own = self.checkpoints.digests.get(&op).copied();
        if let (Some(own), Some(quorum)) = (own, quorum) {
            if own != quorum {
                self.diverge(op, own, quorum);
            }
        }
    }

    /// Whether this replica's host state is known to be wrong (it then
    /// reports `Status::Diverged`, whatever its part in the log protocol).
    pub(crate) fn is_diverged(&self) -> bool {
        self.checkpoints.diverged.is_some()
    }

    /// Stops executing and serving, and asks for the quorum's checkpoint.
    /// It keeps its part in the log protocol (its log is intact and
    /// durable): it acknowledges prepares, votes and takes part in view
    /// changes, so that a quorum is not lost while it heals. A primary
    /// first tells the others the vouch it counted (they may be the only
    /// ones to hear it), then stops leading, as a primary restarted from
    /// disk does, so that a replica that can execute and reply leads.
    fn diverge(&mut self, op: Op, digest: u128, quorum: u128) {
        if self.is_diverged() {
            return;
        }
        self.stats.checkpoint_divergence += 1;
        self.checkpoints.diverged = Some(op);
        self.checkpoints.pending.clear();
        self.checkpoints.sync = None;
        self.checkpoints.pins = Default::default();
        if self.is_primary() {
            self.broadcast_heartbeat(false);
            self.step_down_while_diverged();
        }
        self.clear_queue();
        // Asked for at the next resend interval, as any rate-limited
        // request (which also leaves the status visible for a moment).
        self.checkpoints.last_heal_request = Some(self.ticks);
        self.out.push(Output::Diverged { op, digest, quorum });
    }

    /// A diverged replica does not lead: one that can execute and reply
    /// should. It waits in `ViewChange` status in its view, as a primary
    /// restarted from disk does, until the others elect another.
    pub(crate) fn step_down_while_diverged(&mut self) {
        self.status = Status::ViewChange;
        self.status_since = self.ticks;
    }

    /// While diverged: asks the others, one per resend interval, for the
    /// quorum's checkpoint (any that vouches for one answers with it).
    pub(crate) fn tick_diverged(&mut self) {
        if !self.is_diverged() {
            return;
        }
        if self.syncing() || !self.due(self.checkpoints.last_heal_request) {
            return;
        }
        // It asks for the oldest vouched identity it would install, by
        // digest, so that a peer holding that very checkpoint sends it even
        // if it has not heard the vouch (it may not have: the primary that
        // counted it may since have lost its memory). Not below its floor:
        // its anchor may have passed the op where it diverged (a later
        // snapshot of its own matched the quorum's), and a peer asked for
        // an older checkpoint sends exactly that, refused here, for ever.
        let floor = self.sync_floor();
        let Some((op, digest)) = self
            .checkpoints
            .vouched
            .range(floor..)
            .next()
            .map(|(&o, &d)| (o, d))
        else {
            return;
        };
        self.checkpoints.last_heal_request = Some(self.ticks);
        let peer = self.peer_in_turn(self.checkpoints.heal_peer as u64);
        self.checkpoints.heal_peer = self.checkpoints.heal_peer.wrapping_add(1);
        if let Some(peer) = peer {
            // A peer that entered a newer epoch answers too (the gate
            // serves the request): its chunks are taken as asked for.
            self.asked_across = Some((peer, self.id_of(peer)));
            self.send(
                peer,
                &Message::RequestCheckpoint {
                    op,
                    digest,
                    offset: 0,
                },
            );
        }
    }

    /// The lowest checkpoint op this replica would install: one ahead of
    /// what it executed or, while diverged, the op where it diverged, but
    /// never below its durable (anchor) checkpoint: the log it holds and
    /// acknowledged goes on from there, and installing below it would make
    /// the store drop that log.
    fn sync_floor(&self) -> Op {
        match self.checkpoints.diverged {
            Some(op) => op.max(self.checkpoints.anchor_op()),
            None => self.commit_min + 1,
        }
    }

    // ---- Serving -------------------------------------------------------

    /// Whether this replica may send `held` in a state sync: a quorum
    /// vouches for it.
    fn servable(&self, held: &Held) -> bool {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::ServeUnvouchedCheckpoint) {
            return true;
        }
        self.checkpoints.is_vouched(held)
            || self
                .checkpoints
                .anchor
                .as_ref()
                .is_some_and(|a| a.digest == held.digest)
    }

    /// The op of a checkpoint at or after `op` that this replica may send
    /// in a state sync, or 0 if it has none.
    pub(crate) fn servable_checkpoint_from(&self, op: Op) -> Op {
        let checkpoints = &self.checkpoints;
        [&checkpoints.held, &checkpoints.previous, &checkpoints.anchor]
            .into_iter()
            .flatten()
            .filter(|h| h.checkpoint.op >= op && self.servable(h))
            .map(|h| h.checkpoint.op)
            .max()
            .unwrap_or(0)
    }

    /// Offers `to` the newest checkpoint a quorum vouches for: its first
    /// chunk, which starts a sync there (the receiver then asks for the
    /// rest, a window at a time). Nothing if none is (the peer asks again).
    pub(crate) fn send_checkpoint(&mut self, to: Slot) {
        let id = self.id_of(to);
        self.send_checkpoint_to(to, id);
    }

    /// [`Replica::send_checkpoint`] to the node `id` in slot `to`, which
    /// may be of another epoch (one behind asking for a newer epoch's
    /// start, `serve_start_epoch`).
    pub(crate) fn send_checkpoint_to(&mut self, to: Slot, id: MemberId) {
        if self.is_diverged() {
            return;
        }
        let checkpoints = &self.checkpoints;
        let newest = [&checkpoints.held, &checkpoints.previous, &checkpoints.anchor]
            .into_iter()
            .flatten()
            .find(|h| self.servable(h))
            .cloned();
        if let Some(held) = newest {
            self.pin(to, &held);
            self.send_chunks((to, id), &held, 0, 1);
        }
    }

    /// Keeps serving `held` to `to`, and the log after it, while `to` asks.
    fn pin(&mut self, to: Slot, held: &Held) {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::UnpinnedSync) {
            return;
        }
        if to == self.index {
            // Another node at its own slot (an earlier owner catching up
            // to leave): served, but pins are kept by slot, and this one is
            // its own (`vopr --membership` seeds 149, 941).
            return;
        }
        self.checkpoints.pins[to as usize] = Some(Pin {
            held: held.clone(),
            floor: held.checkpoint.op,
            last: self.ticks,
        });
    }

    /// A peer asked for the log from `first`: if it is syncing from here, it
    /// still needs the log from there. Once it asks from past both the
    /// pinned checkpoint and this replica's anchor, it has installed the
    /// checkpoint and holds the log beyond it: it needs only the log after
    /// the anchor, which is never truncated while the anchor stands, like
    /// any backup; the pin is dropped (else a backup on a lossy link,
    /// asking for the odd lost prepare, kept an old checkpoint pinned).
    pub(crate) fn pinned_peer_asks_from(&mut self, from: Slot, first: Op) {
        let ticks = self.ticks;
        let anchor = self.checkpoints.anchor_op();
        let synced = |pin: &Pin| first > pin.held.checkpoint.op.max(anchor).saturating_add(1);
        #[cfg(feature = "mutations")]
        let synced = |pin: &Pin| !self.mutated(Mutation::PinOutlivesSync) && synced(pin);
        if self.checkpoints.pins[from as usize].as_ref().is_some_and(synced) {
            self.checkpoints.pins[from as usize] = None;
        }
        if let Some(pin) = self.checkpoints.pins[from as usize].as_mut() {
            pin.floor = pin.floor.max(first.saturating_sub(1));
            pin.last = ticks;
        }
    }

    /// The lowest op after which a peer still syncing from here needs the
    /// log; pins whose peer stopped asking (for `4 * view_change_ticks`,
    /// when the peer gives its sync up too) are dropped.
    fn pinned_floor(&mut self) -> Option<Op> {
        let expiry = self.config.view_change_ticks.saturating_mul(4);
        let ticks = self.ticks;
        let pins = &mut self.checkpoints.pins;
        for pin in pins.iter_mut() {
            if pin
                .as_ref()
                .is_some_and(|p| ticks >= p.last.saturating_add(expiry))
            {
                *pin = None;
            }
        }
        pins.iter().flatten().map(|p| p.floor).min()
    }

    /// Sends `to` (slot and member id) up to `count` chunks of `held` from
    /// `offset`.
    fn send_chunks(&mut self, (to, id): (Slot, MemberId), held: &Held, offset: u64, count: u64) {
        let total = held.bytes.len() as u64;
        let chunk = self.config.checkpoint_chunk_bytes as u64;
        let mut offset = if offset < total {
            offset - offset % chunk
        } else {
            0
        };
        for _ in 0..count {
            if offset >= total {
                break;
            }
            let end = offset.saturating_add(chunk).min(total);
            let message = Message::CheckpointChunk {
                op: held.checkpoint.op,
                digest: held.digest,
                total,
                offset,
                bytes: held.bytes[offset as usize..end as usize].to_vec(),
            };
            self.send_to(to, id, &message);
            offset = end;
        }
    }

    /// A peer asks for checkpoint `(op, digest)` from `offset`. It names a
    /// digest it knows a quorum vouches for (from a vouch it heard, or from
    /// chunks of a vouched checkpoint), so any checkpoint held here with
    /// exactly that identity may be sent, vouch heard here or not.
    pub(crate) fn on_request_checkpoint(&mut self, from: Slot, asked: (Op, u128), offset: u64) {
        let id = self.id_of(from);
        self.serve_checkpoint_request((from, id), asked, offset);
    }

    /// [`Replica::on_request_checkpoint`] from the node `id` in slot `from`,
    /// which may be of an older epoch (the gate serves it: a checkpoint
    /// holds committed state, true in any epoch).
    pub(crate) fn serve_checkpoint_request(
        &mut self,
        (from, id): (Slot, MemberId),
        (op, digest): (Op, u128),
        offset: u64,
    ) {
        if self.is_diverged() {
            return;
        }
        let checkpoints = &self.checkpoints;
        let pinned = checkpoints.pins[from as usize].as_ref().map(|p| &p.held);
        let asked = [&checkpoints.held, &checkpoints.previous, &checkpoints.anchor]
            .into_iter()
            .flatten()
            .chain(pinned)
            .find(|h| h.checkpoint.op == op && h.digest == digest)
            .cloned();
        match asked {
            Some(held) => {
                let ticks = self.ticks;
                match self.checkpoints.pins[from as usize].as_mut() {
                    Some(pin) if pin.held.checkpoint.op == op => pin.last = ticks,
                    _ => self.pin(from, &held),
                }
                let window = window_chunks(self.config.checkpoint_chunk_bytes as u64);
                self.send_chunks((from, id), &held, offset, window)
            }
            None => self.send_checkpoint_to(from, id),
        }
    }

    // ---- Receiving -----------------------------------------------------

    pub(crate) fn on_checkpoint_chunk(
        &mut self,
        from: Slot,
        op: Op,
        digest: u128,
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) {
        let id = self.id_of(from);
        self.on_checkpoint_chunk_from((from, id), (op, digest), total, offset, bytes);
    }

    /// A chunk of checkpoint `(op, digest)` from the node `id` in slot
    /// `from`, which may be of a newer epoch (the gate lets through only
    /// the chunks this replica asked for: `asked_across`, reconfig.rs).
    pub(crate) fn on_checkpoint_chunk_from(
        &mut self,
        (from, from_id): (Slot, MemberId),
        (op, digest): (Op, u128),
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) {
        if op < self.sync_floor()
            || total == 0
            || total > CHECKPOINT_MAX
            || offset.saturating_add(bytes.len() as u64) > total
        {
            return;
        }
        let same = |s: &Sync| s.op == op && s.digest == digest && s.total == total;
        // A newer checkpoint replaces the one being assembled only if that
        // one stalled: under load, checkpoints come faster than a sync.
        let stalled = |s: &Sync| {
            self.ticks
                >= s.last_progress
                    .saturating_add(self.config.resend_ticks.saturating_mul(2))
        };
        match &self.checkpoints.sync {
            Some(s) if same(s) => {}
            Some(s) if s.op >= op || !stalled(s) => return,
            _ => {
                let chunk = self.config.checkpoint_chunk_bytes as u64;
                self.checkpoints.sync = Some(Sync {
                    op,
                    digest,
                    total,
                    bytes: Vec::new(),
                    ahead: BTreeMap::new(),
                    want_until: window_chunks(chunk) * chunk,
                    from,
                    from_id,
                    last_request: None,
                    last_progress: self.ticks,
                })
            }
        }
        let ticks = self.ticks;
        let sync = self.checkpoints.sync.as_mut().expect("just set");
        let have = sync.bytes.len() as u64;
        // Only a new chunk is progress; anything else (a duplicate, a
        // resend) waits for the rate-limited request, so duplicated chunks
        // cannot multiply into a storm.
        if bytes.is_empty() || offset < have || sync.ahead.contains_key(&offset) {
            return;
        }
        sync.ahead.insert(offset, bytes);
        while let Some(next) = sync.ahead.remove(&(sync.bytes.len() as u64)) {
            sync.bytes.extend_from_slice(&next);
        }
        sync.from = from;
        sync.from_id = from_id;
        sync.last_progress = ticks;
        let have = sync.bytes.len() as u64;
        if have < sync.total {
            if have >= sync.want_until {
                // The window asked for arrived whole: ask for the next at once.
                sync.last_request = None;
                self.request_checkpoint();
            }
            return;
        }
        let sync = self.checkpoints.sync.take().expect("assembling");
        if checksum(&sync.bytes) != sync.digest {
            return; // cannot happen with checksummed messages; start over
        }
        let Some(checkpoint) = Checkpoint::decode(&sync.bytes).filter(|c| c.op == sync.op) else {
            return;
        };
        self.install_checkpoint(Arc::new(checkpoint));
    }

    /// Asks for the next chunk of the checkpoint being assembled (rate limited).
    fn request_checkpoint(&mut self) {
        let due = self
            .checkpoints
            .sync
            .as_ref()
            .is_some_and(|s| self.due(s.last_request));
        if !due {
            return;
        }
        let ticks = self.ticks;
        let chunk = self.config.checkpoint_chunk_bytes as u64;
        let sync = self.checkpoints.sync.as_mut().expect("checked");
        sync.last_request = Some(ticks);
        let (to, id, op, digest) = (sync.from, sync.from_id, sync.op, sync.digest);
        let offset = sync.bytes.len() as u64;
        sync.want_until = offset.saturating_add(window_chunks(chunk).saturating_mul(chunk));
        self.send_to(to, id, &Message::RequestCheckpoint { op, digest, offset });
    }

    /// Every tick: keeps a state sync going, or gives it up if its sender
    /// went silent (whatever needed it asks again and gets a fresh one).
    pub(crate) fn tick_sync(&mut self) {
        let Some(sync) = &self.checkpoints.sync else {
            return;
        };
        if sync.op < self.sync_floor()
            || self.ticks
                >= sync
                    .last_progress
                    .saturating_add(self.config.view_change_ticks.saturating_mul(4))
        {
            self.checkpoints.sync = None;
            return;
        }
        self.request_checkpoint();
    }

    /// Whether a state sync is under way.
    pub(crate) fn syncing(&self) -> bool {
        self.checkpoints.sync.is_some()
    }

    /// Whether a state sync is under way from the node `id` in slot `from`.
    pub(crate) fn syncing_from(&self, from: Slot, id: MemberId) -> bool {
        self.checkpoints
            .sync
            .as_ref()
            .is_some_and(|s| s.from == from && s.from_id == id)
    }

    /// Installs a verified checkpoint ahead of what this replica executed
    /// (or, while diverged, at or after the op where it diverged): its
    /// client table, its op as the commit, and the log rebased at it
    /// (keeping the entries after it only if they chain from it).
    pub(crate) fn install_checkpoint(&mut self, checkpoint: Arc<Checkpoint>) {
        if self.status == Status::Repairing {
            return self.repair_from_checkpoint(checkpoint);
        }
        let op = checkpoint.op;
        if op < self.sync_floor() {
            return;
        }
        let Some(table) = ClientTable::decode(self.config.client_table_max, &checkpoint.clients) else {
            return;
        };
        // A checkpoint of an older epoch than this replica's live list is
        // installed like any other above its sync floor: a learner, or a
        // replica recovering into a newer epoch, executes on from there
        // (`vopr --membership` seed 25), and a diverged replica that
        // entered the newer epoch by its commit heals from it (review 9).
        // One below what this replica executed is below the floor.
        // A checkpoint of a newer epoch (fetched from a replica of that
        // epoch, `serve_start_epoch`) is entered with it, below. Where the
        // epoch began is known only if the checkpoint is at that very
        // entry and this replica's log holds it: the checkpoint names no
        // other op (docs/protocol.md, "Membership changes").
        let entering = checkpoint
            .membership
            .filter(|m| m.epoch() > self.membership.epoch());
        let start = entering.map_or((0, 0), |m| {
            let at_entry = self
                .log
                .get(op)
                .filter(|e| e.checksum == checkpoint.checksum)
                .and_then(|e| e.reconfiguration())
                .is_some_and(|t| t.epoch() == m.epoch());
            if at_entry {
                (op, checkpoint.checksum)
            } else {
                (0, 0)
            }
        });
        if let Some(diverged) = self.checkpoints.diverged.take() {
            // Healed: its own checkpoints from the op where it diverged on
            // came from the wrong state (also those below the installed
            // one: a late vouch for one of them must not make it diverge
            // again). It kept its part in the log protocol meanwhile, so it
            // carries on in its status and view.
            #[allow(unused_mut)]
            let mut wrong_from = diverged;
            #[cfg(feature = "mutations")]
            if self.mutated(Mutation::CheckDigestsBelowAnchor) {
                wrong_from = op;
            }
            self.checkpoints.digests.retain(|&o, _| o < wrong_from);
            self.checkpoints.asked_before_heal = self.checkpoints.asked_before_heal.max(self.commit_min);
        }
        self.client_table = table;
        let same_history = self.log.checksum_at(op) == Some(checkpoint.checksum);
        if same_history {
            self.log.truncate_before(op);
        } else {
            self.log = Log::at(op, checkpoint.checksum, checkpoint.timestamp);
        }
        if !same_history && self.is_primary() {
            self.step_down_from_a_left_view();
        }
        self.commit_min = op;
        self.reset_byte_count();
        self.executed_membership = checkpoint.membership.unwrap_or(self.config.genesis);
        self.commit_max = self.commit_max.max(op);
        self.primary_op = self.primary_op.max(op);
        // A primary of a view the cluster has left may be behind too; what
        // it holds for itself is its log as it is now (a learner counts
        // for nothing, itself included).
        if self.membership.is_member(self.index, self.id) {
            self.acked[self.index as usize] = self.log.op();
        }
        self.repair_until = self.repair_until.max(op);
        if self.staging_base().is_some_and(|b| b < op) {
            self.staging = None;
        }
        if self.checkpoints.sync.as_ref().is_some_and(|s| s.op <= op) {
            self.checkpoints.sync = None;
        }
        self.stats.checkpoints_installed += 1;
        let held = Held::new(checkpoint.clone());
        // Only a vouched checkpoint is ever sent: it stays vouched here.
        self.checkpoints.vouched.insert(op, held.digest);
        keep_newest(&mut self.checkpoints.vouched, DIGESTS_MAX);
        self.checkpoints.remember(&held);
        self.checkpoints.anchor = Some(held.clone());
        self.checkpoints.held = Some(held);
        self.checkpoints.previous = None;
        self.checkpoints.pending.retain(|&o, _| o > op);
        self.out.push(Output::WriteCheckpoint(checkpoint.clone()));
        self.out.push(Output::InstallSnapshot {
            op,
            app: checkpoint.app.clone(),
        });
        if let Some(target) = entering {
            self.enter_epoch_by_checkpoint(target, start);
        }
        self.settle_pending_after_install();
        self.after_checkpoint_install(op);
        // A new primary mid view change counts its own log as a
        // DoViewChange: it must describe the log it has now.
        if self.status == Status::ViewChange && self.is_primary_of_view() && self.log_view < self.view {
            self.record_own_do_view_change();
        }
        // Carry on from the checkpoint: execute what is committed beyond
        // it, and fetch the rest.
        self.last_repair_tick = None;
        self.last_start_view_request = None;
        self.last_do_view_change_request = None;
        self.execute_committed();
        if self.status == Status::Normal && !self.is_primary_of_view() && self.role == Role::Member {
            self.acknowledge();
            self.request_repair();
        }
    }

    /// A primary whose log does not hold a checkpoint it installs leads a
    /// view the cluster has left: a newer view committed past its log (a
    /// live primary's log holds every committed op). Its commit number is
    /// now the checkpoint's, a number of that newer history: announced in
    /// this view, it would make its backups execute their own log, this
    /// view's uncommitted tail, up to it. So it stops leading, as a primary
    /// restarted from disk does, and waits for a view change (or for the
    /// newer view's primary, whose messages it heeds).
    fn step_down_from_a_left_view(&mut self) {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::LeadOnAfterForeignCheckpoint) {
            return;
        }
        self.status = Status::ViewChange;
        self.status_since = self.ticks;
    }

    /// Requests submitted here that the installed client table shows
    /// settled were executed in ops this replica skipped: answer them.
    fn settle_pending_after_install(&mut self) {
        let settled: Vec<(u128, Outcome, u64)> = self
            .pending
            .values()
            .filter_map(|p| {
                let outcome = self.client_table.settled(&p.request)?;
                Some((p.request.client, outcome, outcome.named_op()?))
            })
            .collect();
        for (client, outcome, op) in settled {
            let Some(pending) = self.pending.remove(&client) else {
                continue;
            };
            self.out.push(Output::Reply {
                client,
                request: pending.request.request,
                op,
                outcome,
            });
        }
        self.serve_reads();
    }

    /// Execution goes on from a checkpoint (installed, or restored on
    /// restart): every checkpoint is at a boundary, so the byte count
    /// starts there at 0, as it did on every replica that executed it.
    fn reset_byte_count(&mut self) {
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::ByteCountSurvivesInstall) {
            return;
        }
        self.checkpoints.since_boundary = 0;
    }

    /// Restores a checkpoint on restart (its `InstallSnapshot`, and what
    /// entering its epoch outputs if it is of a newer one than the state).
    pub(crate) fn restore_checkpoint(&mut self, checkpoint: Arc<Checkpoint>) -> Result<(), String> {
        // A checkpoint of a newer epoch than the durable state is one that
        // state sync installed beyond the log, entering its epoch: the
        // store names such a checkpoint with the *previous* state first and
        // writes the state staged with it only after the `Rebase` record
        // (docs/storage.md), so a crash in between leaves the older epoch's
        // state. Nothing that followed the install was sent (persist, then
        // send): the restart finishes it, entering the epoch as the install
        // did (`vopr --membership` seed 3550).
        let entering = checkpoint
            .membership
            .filter(|m| m.epoch() > self.membership.epoch());
        let table = ClientTable::decode(self.config.client_table_max, &checkpoint.clients)
            .ok_or("the checkpoint's client table does not decode")?;
        self.client_table = table;
        self.commit_min = checkpoint.op;
        self.reset_byte_count();
        self.commit_max = self.commit_max.max(checkpoint.op);
        let held = Held::new(checkpoint.clone());
        self.checkpoints.remember(&held);
        // Only a vouched checkpoint is ever written.
        self.checkpoints.vouched.insert(checkpoint.op, held.digest);
        self.checkpoints.anchor = Some(held.clone());
        self.checkpoints.held = Some(held);
        self.out.push(Output::InstallSnapshot {
            op: checkpoint.op,
            app: checkpoint.app.clone(),
        });
        if let Some(target) = entering {
            self.enter_epoch_by_checkpoint(target, (0, 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Checkpoint {
        Checkpoint {
            op: 5,
            checksum: 0x1234,
            timestamp: 99,
            clients: vec![1, 2],
            app: Arc::new(vec![7, 8, 9]),
            membership: None,
        }
    }

    /// A checkpoint as stored and sent before memberships existed: these
    /// bytes are fixed, so that no change to the type alters them.
    const TODAYS_BYTES: [u8; 11] = [0x05, 0xb4, 0x24, 0x63, 0x02, 0x01, 0x02, 0x03, 0x07, 0x08, 0x09];

    /// The boundaries among ops `from+1..=to` of a history whose op `o`
    /// carries `sizes[o - 1]` command bytes, counted from `from` (a boundary).
    fn boundaries(interval: u64, budget: u64, sizes: &[u64], from: Op) -> Vec<Op> {
        let mut since = 0;
        let mut found = Vec::new();
        for op in from + 1..=sizes.len() as Op {
            let (due, after) = boundary(interval, budget, op, since, sizes[op as usize - 1]);
            since = after;
            if due {
                found.push(op);
            }
        }
        found
    }

    #[test]
    fn the_rule_takes_multiples_of_the_interval_and_every_budget_passed() {
        // Ops by the interval alone, as before the byte budget.
        assert_eq!(boundaries(4, 0, &[1 << 30; 9], 0), vec![4, 8]);
        // Budget 10: ops 3 (4+4+4), 4 (a multiple of 4), 7 (3+3+9), 8.
        let sizes = [4, 4, 4, 1, 3, 3, 9, 1, 2];
        assert_eq!(boundaries(4, 10, &sizes, 0), vec![3, 4, 7, 8]);
        // A command of the budget or more is a boundary by itself.
        assert_eq!(boundaries(100, 10, &[10, 0, 25, 9, 1], 0), vec![1, 3, 5]);
        // Interval 0: no checkpoints at all, whatever the bytes.
        assert_eq!(boundaries(0, 10, &[100; 5], 0), Vec::<Op>::new());
        assert_eq!(boundary(0, 10, 7, 5, 100), (false, 0));
        // The count saturates.
        assert_eq!(boundary(100, 0, 1, u64::MAX, 1), (false, u64::MAX));
        assert_eq!(boundary(100, u64::MAX, 1, u64::MAX, 1), (true, 0));
    }

    /// A replica counts from op 0, or from a checkpoint it restarts from or
    /// installs, which is a boundary: from any boundary of a history, the
    /// count finds the boundaries counting from op 0 finds after it.
    #[test]
    fn counting_from_any_boundary_finds_the_same_boundaries_after_it() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |max: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % max
        };
        for _ in 0..200 {
            let interval = 1 + next(40);
            let budget = next(3) * next(200);
            let sizes: Vec<u64> = (0..300).map(|_| next(4) * next(60)).collect();
            let all = boundaries(interval, budget, &sizes, 0);
            for &from in &all {
                let after: Vec<Op> = all.iter().copied().filter(|&b| b > from).collect();
                assert_eq!(boundaries(interval, budget, &sizes, from), after);
            }
            // Counting from an op that is not a boundary may find others
            // (why a replica starts its count only at a checkpoint), but it
            // meets the same ones again at the next multiple of the interval.
            let from = 1 + next(sizes.len() as u64 - 1);
            let realigned = (from / interval + 1) * interval;
            let tail = |v: Vec<Op>| v.into_iter().filter(|&b| b >= realigned).collect::<Vec<_>>();
            assert_eq!(
                tail(boundaries(interval, budget, &sizes, from)),
                tail(all.clone())
            );
        }
    }

    #[test]
    fn an_epoch_0_checkpoint_keeps_todays_bytes_and_digest() {
        assert_eq!(small().encode(), TODAYS_BYTES);
        assert_eq!(Checkpoint::decode(&TODAYS_BYTES), Some(small()));
        assert_eq!(small().digest(), checksum(&TODAYS_BYTES));
    }

    #[test]
    fn a_later_epochs_checkpoint_carries_its_membership_after_todays_fields() {
        let change = crate::membership::ChangeId { origin: 1, id: 1 };
        let next = Membership::numbered(3)
            .unwrap()
            .next(&[0, 1, 2, 9], change, 0)
            .unwrap();
        let checkpoint = Checkpoint {
            membership: Some(next),
            ..small()
        };
        let bytes = checkpoint.encode();
        assert_eq!(bytes[..TODAYS_BYTES.len()], TODAYS_BYTES);
        assert_eq!(Checkpoint::decode(&bytes), Some(checkpoint.clone()));
        assert_eq!(checkpoint.epoch(), 1);
        assert_ne!(checkpoint.digest(), small().digest());
        // Anything after the membership, or a membership cut short, is not
        // a checkpoint.
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Checkpoint::decode(&longer), None);
        assert_eq!(Checkpoint::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(Checkpoint::decode(&TODAYS_BYTES[..10]), None);
    }
}
