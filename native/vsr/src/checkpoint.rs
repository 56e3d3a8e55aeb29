//! Checkpoints, log truncation and chunked state sync.
//!
//! A checkpoint at op `C` is the replicated state right after executing
//! `C`: the host's application snapshot, the client table, and entry `C`'s
//! checksum (the hash-chain link later entries attach to) and timestamp
//! (later prepares stay strictly increasing). Every replica takes one at the
//! same ops (multiples of `checkpoint_interval`), so equal histories give
//! equal checkpoints, and replicas compare their digests to detect a host
//! whose state diverged.
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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checksum::checksum;
use crate::client_table::{ClientTable, Outcome};
#[cfg(feature = "mutations")]
use crate::config::Mutation;
use crate::config::{Op, ReplicaIndex};
use crate::log::Log;
use crate::message::Message;
use crate::replica::{Output, Replica, Status};

/// The largest checkpoint a replica accepts in a state sync (1 GiB).
pub const CHECKPOINT_MAX: u64 = 1 << 30;
/// Snapshots asked of the host and not yet answered, at most.
const PENDING_MAX: usize = 4;
/// Own checkpoint digests remembered for the divergence check.
const DIGESTS_MAX: usize = 16;
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

/// The replicated state after executing op `op`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Checkpoint {
    /// The checkpoint's bytes (postcard), as sent in state sync and stored.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// A checkpoint from [`Checkpoint::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        postcard::from_bytes(bytes).ok()
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
    /// The replica the chunks come from.
    from: ReplicaIndex,
    last_request: Option<u64>,
    /// Tick of the last chunk that made progress (or of the start).
    last_progress: u64,
}

/// Checkpoint state of a replica.
#[derive(Clone, Debug, Default)]
pub(crate) struct Checkpoints {
    pub(crate) held: Option<Held>,
    /// The checkpoint before `held`, still served to a sync in progress.
    previous: Option<Held>,
    pending: BTreeMap<Op, PendingSnapshot>,
    /// This replica's checkpoint digests, by op, for the divergence check.
    digests: BTreeMap<Op, u128>,
    pub(crate) sync: Option<Sync>,
}

impl Checkpoints {
    /// The latest checkpoint `(op, digest)`, `(0, 0)` if none.
    pub(crate) fn latest(&self) -> (Op, u128) {
        self.held.as_ref().map_or((0, 0), |h| (h.checkpoint.op, h.digest))
    }

    fn remember(&mut self, held: &Held) {
        self.digests.insert(held.checkpoint.op, held.digest);
        while self.digests.len() > DIGESTS_MAX {
            self.digests.pop_first();
        }
    }
}

impl Replica {
    /// The latest checkpoint this replica holds.
    pub fn checkpoint(&self) -> Option<&Arc<Checkpoint>> {
        self.checkpoints.held.as_ref().map(|h| &h.checkpoint)
    }

    /// How far a state sync has got: `(checkpoint op, bytes received, bytes total)`.
    pub fn sync_progress(&self) -> Option<(Op, u64, u64)> {
        self.checkpoints
            .sync
            .as_ref()
            .map(|s| (s.op, s.bytes.len() as u64, s.total))
    }

    /// Right after executing `op`: if a checkpoint is due, asks the host for
    /// its snapshot and captures the rest of the state as of `op`.
    pub(crate) fn checkpoint_due(&mut self, op: Op, checksum: u128, timestamp: u64) {
        let interval = self.config.checkpoint_interval;
        if interval == 0 || !op.is_multiple_of(interval) || op <= self.checkpoints.latest().0 {
            return;
        }
        let pending = PendingSnapshot {
            checksum,
            timestamp,
            clients: self.client_table.encode(),
        };
        self.checkpoints.pending.insert(op, pending);
        while self.checkpoints.pending.len() > PENDING_MAX {
            self.checkpoints.pending.pop_first();
        }
        self.out.push(Output::TakeSnapshot { op });
    }

    /// The host's snapshot at `op` arrived: form the checkpoint, persist it,
    /// and drop the log up to the previous checkpoint.
    pub(crate) fn on_snapshot(&mut self, op: Op, app: Vec<u8>) {
        let Some(pending) = self.checkpoints.pending.remove(&op) else {
            return; // not asked for, or superseded
        };
        if op <= self.checkpoints.latest().0 || op > self.commit_min {
            return;
        }
        #[allow(unused_mut)]
        let mut clients = pending.clients;
        #[cfg(feature = "mutations")]
        if self.mutated(Mutation::CheckpointLateClientTable) {
            clients = self.client_table.encode();
        }
        let checkpoint = Arc::new(Checkpoint {
            op,
            checksum: pending.checksum,
            timestamp: pending.timestamp,
            clients,
            app: Arc::new(app),
        });
        let previous = self.checkpoints.latest().0;
        let held = Held::new(checkpoint.clone());
        self.checkpoints.remember(&held);
        self.checkpoints.previous = self.checkpoints.held.replace(held);
        self.checkpoints.pending.retain(|&o, _| o > op);
        self.out.push(Output::WriteCheckpoint(checkpoint));
        // Keep one interval of history for peers that lag a little.
        self.log.truncate_before(previous);
        if self.staging_base().is_some_and(|b| b < self.log.base()) {
            self.staging = None;
        }
    }

    /// A peer reported its latest checkpoint: if this replica took one at
    /// the same op with another digest, the replicas' states diverged.
    pub(crate) fn check_divergence(&mut self, (op, digest): (Op, u128)) {
        if op == 0 {
            return;
        }
        if self.checkpoints.digests.get(&op).is_some_and(|&d| d != digest) {
            self.stats.checkpoint_divergence += 1;
        }
    }

    // ---- Serving -------------------------------------------------------

    /// Offers `to` the latest checkpoint: its first chunk, which starts a
    /// sync there (the receiver then asks for the rest, a window at a time).
    pub(crate) fn send_checkpoint(&mut self, to: ReplicaIndex) {
        if let Some(held) = self.checkpoints.held.clone() {
            self.send_chunks(to, &held, 0, 1);
        }
    }

    /// Sends `to` up to `count` chunks of `held` from `offset`.
    fn send_chunks(&mut self, to: ReplicaIndex, held: &Held, offset: u64, count: u64) {
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
            let end = (offset + chunk).min(total);
            let message = Message::CheckpointChunk {
                op: held.checkpoint.op,
                digest: held.digest,
                total,
                offset,
                bytes: held.bytes[offset as usize..end as usize].to_vec(),
            };
            self.send(to, &message);
            offset = end;
        }
    }

    pub(crate) fn on_request_checkpoint(&mut self, from: ReplicaIndex, op: Op, offset: u64) {
        let checkpoints = &self.checkpoints;
        let asked = [&checkpoints.held, &checkpoints.previous]
            .into_iter()
            .flatten()
            .find(|h| h.checkpoint.op == op)
            .cloned();
        match asked {
            Some(held) => {
                let window = window_chunks(self.config.checkpoint_chunk_bytes as u64);
                self.send_chunks(from, &held, offset, window)
            }
            None => self.send_checkpoint(from),
        }
    }

    // ---- Receiving -----------------------------------------------------

    pub(crate) fn on_checkpoint_chunk(
        &mut self,
        from: ReplicaIndex,
        op: Op,
        digest: u128,
        total: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) {
        if op <= self.commit_min
            || total == 0
            || total > CHECKPOINT_MAX
            || offset.saturating_add(bytes.len() as u64) > total
        {
            return;
        }
        let same = |s: &Sync| s.op == op && s.digest == digest && s.total == total;
        // A newer checkpoint replaces the one being assembled only if that
        // one stalled: under load, checkpoints come faster than a sync.
        let stalled = |s: &Sync| self.ticks >= s.last_progress + 2 * self.config.resend_ticks;
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
        let (to, op, offset) = (sync.from, sync.op, sync.bytes.len() as u64);
        sync.want_until = offset + window_chunks(chunk) * chunk;
        self.send(to, &Message::RequestCheckpoint { op, offset });
    }

    /// Every tick: keeps a state sync going, or gives it up if its sender
    /// went silent (whatever needed it asks again and gets a fresh one).
    pub(crate) fn tick_sync(&mut self) {
        let Some(sync) = &self.checkpoints.sync else {
            return;
        };
        if sync.op <= self.commit_min || self.ticks >= sync.last_progress + 4 * self.config.view_change_ticks
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

    /// Installs a verified checkpoint ahead of what this replica executed:
    /// its client table, its op as the commit, and the log rebased at it
    /// (keeping the entries after it only if they chain from it).
    pub(crate) fn install_checkpoint(&mut self, checkpoint: Arc<Checkpoint>) {
        let op = checkpoint.op;
        if op <= self.commit_min {
            return;
        }
        let Some(table) = ClientTable::decode(self.config.client_table_max, &checkpoint.clients) else {
            return;
        };
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
        self.commit_max = self.commit_max.max(op);
        self.primary_op = self.primary_op.max(op);
        // A primary of a view the cluster has left may be behind too; what
        // it holds for itself is its log as it is now.
        self.acked[self.index as usize] = self.log.op();
        self.repair_until = self.repair_until.max(op);
        if self.staging_base().is_some_and(|b| b < op) {
            self.staging = None;
        }
        if self.checkpoints.sync.as_ref().is_some_and(|s| s.op <= op) {
            self.checkpoints.sync = None;
        }
        self.stats.checkpoints_installed += 1;
        let held = Held::new(checkpoint.clone());
        self.checkpoints.remember(&held);
        self.checkpoints.held = Some(held);
        self.checkpoints.previous = None;
        self.checkpoints.pending.retain(|&o, _| o > op);
        self.out.push(Output::WriteCheckpoint(checkpoint.clone()));
        self.out.push(Output::InstallSnapshot {
            op,
            app: checkpoint.app.clone(),
        });
        self.settle_pending_after_install();
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
        if self.status == Status::Normal && !self.is_primary_of_view() {
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
                let op = match outcome {
                    Outcome::Registered { session } => session,
                    Outcome::Duplicate { op } => op,
                    _ => return None,
                };
                if matches!(outcome, Outcome::Duplicate { op: 0 }) {
                    return None;
                }
                Some((p.request.client, outcome, op))
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

    /// Restores a checkpoint on restart (no outputs but `InstallSnapshot`).
    pub(crate) fn restore_checkpoint(&mut self, checkpoint: Arc<Checkpoint>) -> Result<(), String> {
        let table = ClientTable::decode(self.config.client_table_max, &checkpoint.clients)
            .ok_or("the checkpoint's client table does not decode")?;
        self.client_table = table;
        self.commit_min = checkpoint.op;
        self.commit_max = self.commit_max.max(checkpoint.op);
        let held = Held::new(checkpoint.clone());
        self.checkpoints.remember(&held);
        self.checkpoints.held = Some(held);
        self.out.push(Output::InstallSnapshot {
            op: checkpoint.op,
            app: checkpoint.app.clone(),
        });
        Ok(())
    }
}
