//! [`MemDisk`]: a disk in memory that remembers which writes are durable,
//! so that a simulated crash can tear or drop the rest, and that can rot
//! bytes on demand. Used by the simulator and by this crate's tests.

use std::collections::HashMap;
use std::io;

use crate::disk::{Disk, Zone};

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, bytes: Vec<u8> },
    Truncate { len: u64 },
}

/// How a crash treats the writes not yet synced, oldest first: the first
/// `kept` survive whole, the next survives as its first `torn` bytes (if
/// `Some`), the rest are lost. (A disk that reorders writes is not
/// modelled: see docs/storage.md, "Fault model".)
#[derive(Clone, Copy, Debug)]
pub struct CrashCut {
    pub kept: usize,
    pub torn: Option<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    durable: HashMap<Zone, Vec<u8>>,
    current: HashMap<Zone, Vec<u8>>,
    unsynced: Vec<(Zone, Op)>,
    /// While set, writes fail as on a full disk.
    pub full: bool,
}

fn apply(file: &mut Vec<u8>, op: &Op, torn: Option<usize>) {
    match op {
        Op::Write { offset, bytes } => {
            let bytes = &bytes[..torn.unwrap_or(bytes.len()).min(bytes.len())];
            let end = *offset as usize + bytes.len();
            if file.len() < end {
                file.resize(end, 0);
            }
            file[*offset as usize..end].copy_from_slice(bytes);
        }
        Op::Truncate { len } => file.resize(*len as usize, 0),
    }
}

impl MemDisk {
    /// Writes not yet synced.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// The machine stops: unsynced writes are kept, torn or lost as `cut` says.
    pub fn crash(&mut self, cut: CrashCut) {
        for (i, (zone, op)) in std::mem::take(&mut self.unsynced).into_iter().enumerate() {
            let file = self.durable.entry(zone).or_default();
            if i < cut.kept {
                apply(file, &op, None);
            } else if i == cut.kept && cut.torn.is_some() {
                apply(file, &op, cut.torn);
            }
        }
        self.current = self.durable.clone();
    }

    /// Length of a zone as reads see it.
    pub fn len(&self, zone: Zone) -> usize {
        self.current.get(&zone).map_or(0, Vec::len)
    }

    /// Flips bits of the byte at `offset` in durable storage (bit rot).
    pub fn corrupt(&mut self, zone: Zone, offset: usize, mask: u8) {
        for file in [&mut self.durable, &mut self.current] {
            if let Some(byte) = file.get_mut(&zone).and_then(|f| f.get_mut(offset)) {
                *byte ^= mask.max(1);
            }
        }
    }
}

impl Disk for MemDisk {
    fn read(&mut self, zone: Zone) -> io::Result<Vec<u8>> {
        Ok(self.current.get(&zone).cloned().unwrap_or_default())
    }

    fn write(&mut self, zone: Zone, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if self.full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left (simulated)",
            ));
        }
        let op = Op::Write {
            offset,
            bytes: bytes.to_vec(),
        };
        apply(self.current.entry(zone).or_default(), &op, None);
        self.unsynced.push((zone, op));
        Ok(())
    }

    fn truncate(&mut self, zone: Zone, len: u64) -> io::Result<()> {
        let op = Op::Truncate { len };
        apply(self.current.entry(zone).or_default(), &op, None);
        self.unsynced.push((zone, op));
        Ok(())
    }

    fn sync(&mut self, zone: Zone) -> io::Result<()> {
        let (synced, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unsynced)
            .into_iter()
            .partition(|(z, _)| *z == zone);
        let file = self.durable.entry(zone).or_default();
        for (_, op) in synced {
            apply(file, &op, None);
        }
        self.unsynced = rest;
        Ok(())
    }
}
