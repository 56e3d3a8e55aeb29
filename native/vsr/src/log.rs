//! The in-memory log: a hash chain of entries starting after its base.
//!
//! The base is op 0 (the cluster's root checksum) until a checkpoint lets
//! the replica drop the entries at and below some op; from then on the log
//! starts after that op, whose checksum and timestamp it remembers so that
//! later entries still chain and stay strictly increasing in time.

use std::sync::Arc;

use crate::config::Op;
use crate::message::Prepare;
use crate::verified::Verified;

/// Bytes of commands at which a run of log entries sent at once ends: one
/// step of a repair answer (several Prepares to one peer in one step, which
/// a host sends as one distribution message; the answer streams the chunk
/// asked for run by run, `pipeline_max + 1` runs in flight), a StartView's
/// or a StartEpoch's entries, a primary's resend of its tail. A run ends with the first
/// entry that brings its commands to `RUN_BYTES` (or at its count limit),
/// so it carries less than `RUN_BYTES` plus one entry, and always at least
/// one entry, however large. Half of `WINDOW_BYTES` (about where Erlang
/// distribution refuses a `:nosuspend` send): a run of entries no larger
/// than `RUN_BYTES` each stays under `WINDOW_BYTES`. Before this bound a
/// repair answer was up to `message_entries_max` entries whatever their
/// size (64 MB of 1 MB commands), which a busy link dropped but for its
/// first few, answer after answer, so that a lagging backup never caught
/// up with a loaded primary (`make bench-memory`). Entries of small
/// commands reach it too once the primary batches them (256 commands of
/// 2 KiB in one entry: 512 KiB).
pub const RUN_BYTES: u64 = crate::checkpoint::WINDOW_BYTES / 2;

/// The bytes an entry counts for in a run: its commands' payloads, which
/// both ends of a repair measure alike.
pub fn run_bytes(entry: &Prepare) -> u64 {
    entry.payload_bytes() as u64
}

/// The run of `entries` one message (or answer) carries: the shortest
/// prefix whose commands reach [`RUN_BYTES`], or all of them; at least one.
pub fn run(mut entries: Vec<Arc<Prepare>>) -> Vec<Arc<Prepare>> {
    let mut bytes = 0u64;
    let end = entries
        .iter()
        .position(|e| {
            bytes = bytes.saturating_add(run_bytes(e));
            bytes >= RUN_BYTES
        })
        .map_or(entries.len(), |last| last + 1);
    entries.truncate(end);
    entries
}

/// A contiguous run of entries `base+1..=op`, each chained to its parent.
#[derive(Clone, Debug)]
pub struct Log {
    /// The op the log starts after (0, or a checkpoint's op).
    base: Op,
    /// Checksum of entry `base` (the root for op 0).
    root: u128,
    /// Timestamp of entry `base` (0 for op 0).
    base_timestamp: u64,
    entries: Vec<Arc<Prepare>>,
    /// The op up to which [`Log::check`] found the entries sound, so that
    /// the next check starts there. That prefix cannot change behind the
    /// record's back: `entries` is private, each entry an immutable
    /// `Arc<Prepare>`, and the vector changes only by appending after it
    /// or by [`Log::truncate_after`] and [`Log::truncate_before`], which
    /// lower or move the record with the entries they drop.
    checked_through: Verified,
}

impl Log {
    /// An empty log whose chain starts at `root`.
    pub fn new(root: u128) -> Log {
        Log::at(0, root, 0)
    }

    /// An empty log that starts after op `base`, whose entry had `checksum`
    /// and `timestamp` (a checkpoint's).
    pub fn at(base: Op, checksum: u128, timestamp: u64) -> Log {
        Log {
            base,
            root: checksum,
            base_timestamp: timestamp,
            entries: Vec::new(),
            checked_through: Verified::none(),
        }
    }

    /// The op the log starts after: nothing at or below it is held.
    pub fn base(&self) -> Op {
        self.base
    }

    /// A log from stored entries; `None` if they do not form a chain from `root`.
    pub fn from_entries(root: u128, entries: Vec<Arc<Prepare>>) -> Option<Log> {
        Log::new(root).extended(entries)
    }

    /// This log with `entries` appended; `None` if they do not chain onto it.
    pub fn extended(self, entries: Vec<Arc<Prepare>>) -> Option<Log> {
        let mut log = self;
        for entry in entries {
            if !log.can_append(&entry) {
                return None;
            }
            log.entries.push(entry);
        }
        Some(log)
    }

    /// The op of the last entry (0 when empty).
    pub fn op(&self) -> Op {
        self.base + self.entries.len() as Op
    }

    /// The entry at `op`, if present (nothing at or below the base).
    pub fn get(&self, op: Op) -> Option<&Arc<Prepare>> {
        if op <= self.base {
            return None;
        }
        self.entries.get((op - self.base - 1) as usize)
    }

    /// The checksum naming the log up to `op`: the base's for the base op,
    /// `None` below it or past the head.
    pub fn checksum_at(&self, op: Op) -> Option<u128> {
        if op == self.base {
            Some(self.root)
        } else {
            self.get(op).map(|e| e.checksum)
        }
    }

    /// The checksum of the last entry (the root when empty).
    pub fn head_checksum(&self) -> u128 {
        self.entries.last().map_or(self.root, |e| e.checksum)
    }

    /// Timestamp of the last entry (0 when empty).
    pub fn head_timestamp(&self) -> u64 {
        self.entries.last().map_or(self.base_timestamp, |e| e.timestamp)
    }

    /// Whether `entry` extends this log by exactly one op.
    pub fn can_append(&self, entry: &Prepare) -> bool {
        entry.op == self.op() + 1 && entry.parent == self.head_checksum()
    }

    /// Appends `entry`; the caller has checked [`Log::can_append`].
    pub fn append(&mut self, entry: Arc<Prepare>) {
        debug_assert!(self.can_append(&entry));
        self.entries.push(entry);
    }

    /// Drops every entry after `op` (never at or below the base).
    pub fn truncate_after(&mut self, op: Op) {
        debug_assert!(op >= self.base, "truncating below the log's base");
        self.entries.truncate(op.saturating_sub(self.base) as usize);
        if self.checked_through.get() > Some(self.op()) {
            self.checked_through.set(self.op());
        }
    }

    /// Drops every entry at or below `op`, which becomes the base; `op`
    /// must be within the log.
    pub fn truncate_before(&mut self, op: Op) {
        if op <= self.base || op > self.op() {
            return;
        }
        let entry = self.get(op).expect("op within the log");
        let (checksum, timestamp) = (entry.checksum, entry.timestamp);
        self.entries.drain(..(op - self.base) as usize);
        self.base = op;
        self.root = checksum;
        self.base_timestamp = timestamp;
        // Entries checked past the new base still chain to it (its checksum
        // and timestamp are the dropped entry's, which they were checked
        // against); if none were, the next check starts at the base.
        if self.checked_through.get() < Some(op) {
            self.checked_through.forget();
        }
    }

    /// Up to `max` entries after `op` (none if `op` is below the base).
    pub fn suffix(&self, op: Op, max: usize) -> Vec<Arc<Prepare>> {
        if op < self.base {
            return Vec::new();
        }
        let start = ((op - self.base) as usize).min(self.entries.len());
        let end = start.saturating_add(max).min(self.entries.len());
        self.entries[start..end].to_vec()
    }

    /// Up to `max` entries after `op`, ending as a [`run`] does (by bytes).
    pub fn suffix_run(&self, op: Op, max: usize) -> Vec<Arc<Prepare>> {
        run(self.suffix(op, max))
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Arc<Prepare>] {
        &self.entries
    }

    /// Checks that the log is what its type promises: entries numbered
    /// `base+1..=op` without a gap, each chained to its parent (the first
    /// to the base's checksum) and stamped strictly after it. Compares
    /// stored checksums only (an entry's own checksum was verified when it
    /// was decoded), and only the entries appended since the last check
    /// that passed (`checked_through`): no hashing, and no pass over the
    /// whole log after every step.
    pub fn check(&self) -> Result<(), String> {
        let from = match self.checked_through.get() {
            Some(op) if self.base < op && op <= self.op() => op,
            _ => self.base,
        };
        let (mut parent, mut timestamp) = match self.get(from) {
            Some(entry) => (entry.checksum, entry.timestamp),
            None => (self.root, self.base_timestamp),
        };
        let unchecked = (from - self.base) as usize;
        for (i, entry) in self.entries.iter().enumerate().skip(unchecked) {
            let op = self.base + 1 + i as Op;
            if entry.op != op {
                return Err(format!(
                    "log entry {i} after base {} is op {}, not {op}",
                    self.base, entry.op
                ));
            }
            if entry.parent != parent {
                return Err(format!("log op {op} does not chain to op {}", op - 1));
            }
            if entry.timestamp <= timestamp {
                return Err(format!(
                    "log op {op} is stamped {} after {timestamp}",
                    entry.timestamp
                ));
            }
            (parent, timestamp) = (entry.checksum, entry.timestamp);
        }
        self.checked_through.set(self.op());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_and_truncates() {
        let mut log = Log::new(5);
        let a = Arc::new(Prepare::new(5, 0, 1, 1, vec![]));
        let b = Arc::new(Prepare::new(a.checksum, 0, 2, 2, vec![]));
        assert!(!log.can_append(&b));
        log.append(a.clone());
        log.append(b.clone());
        assert_eq!(log.op(), 2);
        assert_eq!(log.checksum_at(0), Some(5));
        assert_eq!(log.checksum_at(2), Some(b.checksum));
        assert_eq!(log.suffix(1, 10), vec![b.clone()]);
        log.truncate_after(1);
        assert_eq!(log.head_checksum(), a.checksum);
        assert!(Log::from_entries(5, vec![a.clone(), b]).is_some());
        assert!(Log::from_entries(6, vec![a]).is_none());
    }

    #[test]
    fn check_finds_a_gap_a_broken_chain_and_time_going_back() {
        let a = Arc::new(Prepare::new(5, 0, 1, 10, vec![]));
        let b = Arc::new(Prepare::new(a.checksum, 0, 2, 20, vec![]));
        let sound = Log::from_entries(5, vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(sound.check(), Ok(()));
        let with = |entries: Vec<Arc<Prepare>>| {
            Log {
                entries,
                ..sound.clone()
            }
            .check()
            .unwrap_err()
        };
        let gap = Arc::new(Prepare::new(a.checksum, 0, 3, 20, vec![]));
        assert!(with(vec![a.clone(), gap]).contains("is op 3, not 2"));
        let stranger = Arc::new(Prepare::new(6, 0, 2, 20, vec![]));
        assert!(with(vec![a.clone(), stranger]).contains("does not chain"));
        let earlier = Arc::new(Prepare::new(a.checksum, 0, 2, 10, vec![]));
        assert!(with(vec![a, earlier]).contains("stamped 10 after 10"));
    }

    /// The check starts where the last one that passed ended; entries it
    /// covered and later replaced are checked again.
    #[test]
    fn check_finds_a_break_made_after_a_check_that_passed() {
        let a = Arc::new(Prepare::new(5, 0, 1, 10, vec![]));
        let b = Arc::new(Prepare::new(a.checksum, 0, 2, 20, vec![]));
        let c = Arc::new(Prepare::new(b.checksum, 0, 3, 30, vec![]));
        let mut log = Log::from_entries(5, vec![a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(log.check(), Ok(()));
        // Op 2 replaced by one that does not chain; op 3 chains to the old op 2.
        log.truncate_after(1);
        log.entries.push(Arc::new(Prepare::new(6, 0, 2, 20, vec![])));
        log.entries.push(c.clone());
        assert!(log.check().unwrap_err().contains("log op 2 does not chain"));

        let mut log = Log::from_entries(5, vec![a.clone(), b.clone(), c]).unwrap();
        assert_eq!(log.check(), Ok(()));
        log.truncate_before(2);
        assert_eq!(log.check(), Ok(()));
        log.truncate_after(2);
        let late = Arc::new(Prepare::new(b.checksum, 0, 3, 20, vec![]));
        log.entries.push(late);
        assert!(log
            .check()
            .unwrap_err()
            .contains("log op 3 is stamped 20 after 20"));

        let mut log = Log::from_entries(5, vec![a, b]).unwrap();
        assert_eq!(log.check(), Ok(()));
        log.truncate_before(2);
        log.entries.push(Arc::new(Prepare::new(7, 0, 4, 40, vec![])));
        assert!(log.check().unwrap_err().contains("is op 4, not 3"));
    }

    #[test]
    fn a_based_log_holds_nothing_below_its_base() {
        let a = Arc::new(Prepare::new(5, 0, 1, 1, vec![]));
        let b = Arc::new(Prepare::new(a.checksum, 0, 2, 2, vec![]));
        let c = Arc::new(Prepare::new(b.checksum, 0, 3, 3, vec![]));
        let mut log = Log::from_entries(5, vec![a, b.clone(), c.clone()]).unwrap();
        log.truncate_before(2);
        assert_eq!(log.base(), 2);
        assert_eq!(log.op(), 3);
        assert!(log.get(2).is_none() && log.get(1).is_none());
        assert_eq!(log.checksum_at(2), Some(b.checksum));
        assert_eq!(log.checksum_at(1), None);
        assert_eq!(log.suffix(1, 10), vec![]);
        assert_eq!(log.suffix(2, 10), vec![c.clone()]);
        log.truncate_after(2);
        assert_eq!(log.head_timestamp(), 2);
        assert!(log.can_append(&c));
    }
}
