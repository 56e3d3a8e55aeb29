//! The in-memory log: a hash chain of entries starting after op 0.

use std::sync::Arc;

use crate::config::Op;
use crate::message::Prepare;

/// A contiguous run of entries `1..=op`, each chained to its parent.
#[derive(Clone, Debug)]
pub struct Log {
    root: u128,
    entries: Vec<Arc<Prepare>>,
}

impl Log {
    /// An empty log whose chain starts at `root`.
    pub fn new(root: u128) -> Log {
        Log {
            root,
            entries: Vec::new(),
        }
    }

    /// A log from stored entries; `None` if they do not form a chain from `root`.
    pub fn from_entries(root: u128, entries: Vec<Arc<Prepare>>) -> Option<Log> {
        let mut log = Log::new(root);
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
        self.entries.len() as Op
    }

    /// The entry at `op`, if present (op 0 has no entry).
    pub fn get(&self, op: Op) -> Option<&Arc<Prepare>> {
        if op == 0 {
            return None;
        }
        self.entries.get((op - 1) as usize)
    }

    /// The checksum naming the log up to `op`: the root for op 0.
    pub fn checksum_at(&self, op: Op) -> Option<u128> {
        if op == 0 {
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
        self.entries.last().map_or(0, |e| e.timestamp)
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

    /// Drops every entry after `op`.
    pub fn truncate_after(&mut self, op: Op) {
        self.entries.truncate(op as usize);
    }

    /// Up to `max` entries after `op`.
    pub fn suffix(&self, op: Op, max: usize) -> Vec<Arc<Prepare>> {
        let start = (op as usize).min(self.entries.len());
        let end = start.saturating_add(max).min(self.entries.len());
        self.entries[start..end].to_vec()
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Arc<Prepare>] {
        &self.entries
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
}
