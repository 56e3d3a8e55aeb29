//! [`MemDisk`]: a disk in memory that remembers which writes are durable,
//! so that a simulated crash can tear or drop the rest, and that can rot
//! bytes on demand. Used by the simulator and by this crate's tests.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use crate::disk::{Disk, Zone};

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// A write of `len` zeros, torn and lost as a `Write` of them would be.
    Zeros {
        offset: u64,
        len: u64,
    },
    Truncate {
        len: u64,
    },
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

/// The zones' bytes, each shared until written (copy on write): a crash
/// makes what reads see the durable bytes again, and the simulator copies
/// a whole disk to look at what a restart finds, both without copying a
/// file (a WAL is at least its 1 MiB of preallocated zeros).
#[derive(Clone, Debug, Default)]
struct Files(HashMap<Zone, Arc<Vec<u8>>>);

impl Files {
    /// The zone's bytes (none if it was never written).
    fn bytes(&self, zone: Zone) -> &[u8] {
        self.0.get(&zone).map_or(&[][..], |file| file.as_slice())
    }

    /// The zone's bytes to change, created empty if need be; copied first
    /// if shared.
    fn file_mut(&mut self, zone: Zone) -> &mut Vec<u8> {
        Arc::make_mut(self.0.entry(zone).or_default())
    }

    /// The zone's bytes to change, if it exists; copied first if shared.
    fn existing_mut(&mut self, zone: Zone) -> Option<&mut Vec<u8>> {
        self.0.get_mut(&zone).map(Arc::make_mut)
    }
}

#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    durable: Files,
    current: Files,
    unsynced: Vec<(Zone, Op)>,
    /// While set, writes fail as on a full disk.
    pub full: bool,
    /// While set, syncs fail (an I/O error), and the writes a failed sync
    /// was to make durable never become durable unless written again, as
    /// Linux marks the dirty pages of a failed `fsync` clean: reads still
    /// see them, a crash loses them.
    pub failing: bool,
    /// While set, reads of this zone fail (an I/O error: a latent sector
    /// error, or a device that is not ready yet).
    pub unreadable: Option<Zone>,
    /// The next write to a WAL file lands this many bytes away from where
    /// it was meant to (a misdirected write, at least at offset 0); the
    /// bytes it was meant for keep what they held.
    pub misdirect: Option<i64>,

    /// The machine dies after this many more operations (writes,
    /// truncations, syncs): from then on every operation fails, so the
    /// simulator can crash a replica between any two steps of its write
    /// path and then [`MemDisk::crash`] it.
    pub crash_after: Option<usize>,
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
        Op::Zeros { offset, len } => {
            let len = torn.unwrap_or(*len as usize).min(*len as usize);
            let (start, end) = (*offset as usize, *offset as usize + len);
            let overwritten = file.len().min(end);
            if start < overwritten {
                file[start..overwritten].fill(0);
            }
            if file.len() < end {
                file.resize(end, 0);
            }
        }
        Op::Truncate { len } => file.resize(*len as usize, 0),
    }
}

/// `op`, a write, moved `by` bytes from its place (not below offset 0).
fn misdirected(op: Op, by: i64) -> Op {
    match op {
        Op::Write { offset, bytes } => Op::Write {
            offset: offset.saturating_add_signed(by),
            bytes,
        },
        Op::Zeros { offset, len } => Op::Zeros {
            offset: offset.saturating_add_signed(by),
            len,
        },
        // Not a write: `truncate` never passes through `record_write`.
        truncate @ Op::Truncate { .. } => truncate,
    }
}

impl MemDisk {
    /// Writes not yet synced.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// The machine stops: unsynced writes are kept, torn or lost as `cut`
    /// says. The disk is then usable again (as after a reboot).
    pub fn crash(&mut self, cut: CrashCut) {
        self.crash_after = None;
        for (i, (zone, op)) in std::mem::take(&mut self.unsynced).into_iter().enumerate() {
            let file = self.durable.file_mut(zone);
            if i < cut.kept {
                apply(file, &op, None);
            } else if i == cut.kept && cut.torn.is_some() {
                apply(file, &op, cut.torn);
            }
        }
        self.current = self.durable.clone();
    }

    /// The durable WAL file the durable superblock names (`WalA` if none does).
    pub fn wal_zone(&self) -> Zone {
        let file = self.durable.bytes(Zone::Superblock);
        Zone::wal(crate::format::current_superblock(file).map_or(0, |(s, _)| s.wal))
    }

    /// The durable checkpoint file the durable superblock names, and its
    /// length, if it names one.
    pub fn checkpoint_file(&self) -> Option<(Zone, usize)> {
        let file = self.durable.bytes(Zone::Superblock);
        let (superblock, _) = crate::format::current_superblock(file)?;
        let named = superblock.checkpoint?;
        Some((Zone::checkpoint(named.slot), named.len as usize))
    }

    /// Offsets and lengths of the records of the durable write-ahead log
    /// (the file the superblock names), up to its first damage.
    pub fn wal_records(&self) -> Vec<(usize, usize)> {
        let wal = self.durable.bytes(self.wal_zone());
        let mut records = Vec::new();
        let mut offset = 0;
        while let Some((_, len)) = crate::format::Record::decode(&wal[offset..]) {
            records.push((offset, len));
            offset += len;
        }
        records
    }

    /// Whether the newest superblock would still have a valid copy if the
    /// copy in `slot` were lost (bit rot within the fault model).
    pub fn superblock_survives_losing(&self, slot: usize) -> bool {
        use crate::format::{Superblock, SLOT_SIZE, SUPERBLOCK_COPIES};
        let file = self.durable.bytes(Zone::Superblock);
        let sequences: Vec<Option<u64>> = (0..SUPERBLOCK_COPIES)
            .map(|i| {
                file.get(i * SLOT_SIZE..(i + 1) * SLOT_SIZE)
                    .and_then(Superblock::decode)
                    .map(|s| s.sequence)
            })
            .collect();
        let newest = sequences.iter().flatten().max();
        let copies = sequences.iter().filter(|s| s.as_ref() == newest).count();
        newest.is_some() && (sequences[slot].as_ref() != newest || copies > 1)
    }

    /// Length of a zone as reads see it.
    pub fn len(&self, zone: Zone) -> usize {
        self.current.bytes(zone).len()
    }

    /// Cuts a durable file to `len` bytes (a file lost or truncated after it
    /// was synced: an operator's mistake or a filesystem's loss).
    pub fn cut(&mut self, zone: Zone, len: usize) {
        for file in [&mut self.durable, &mut self.current] {
            if let Some(file) = file.existing_mut(zone) {
                file.truncate(len);
            }
        }
    }

    /// Zeros durable bytes `from..to` of a file, its length kept: writes
    /// that were synced but landed elsewhere (a misdirected write outside
    /// the file), so their place holds the zeros it had before.
    pub fn zero(&mut self, zone: Zone, from: usize, to: usize) {
        for file in [&mut self.durable, &mut self.current] {
            if let Some(file) = file.existing_mut(zone) {
                let to = to.min(file.len());
                file[from.min(to)..to].fill(0);
            }
        }
    }

    /// Flips bits of the byte at `offset` in durable storage (bit rot).
    pub fn corrupt(&mut self, zone: Zone, offset: usize, mask: u8) {
        for file in [&mut self.durable, &mut self.current] {
            if let Some(byte) = file.existing_mut(zone).and_then(|f| f.get_mut(offset)) {
                *byte ^= mask.max(1);
            }
        }
    }
}

impl MemDisk {
    /// A write (of bytes or of zeros): one operation, refused while the
    /// disk is full, seen by reads at once and durable at the next sync.
    fn record_write(&mut self, zone: Zone, op: Op) -> io::Result<()> {
        self.operate()?;
        if self.full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left (simulated)",
            ));
        }
        let op = match zone {
            // An armed misdirection sends the next WAL write off its place,
            // of zeros as of bytes (`Disk::write_zeros` writes a buffer of
            // zeros).
            Zone::WalA | Zone::WalB => match self.misdirect.take() {
                Some(by) => misdirected(op, by),
                None => op,
            },
            _ => op,
        };
        apply(self.current.file_mut(zone), &op, None);
        self.unsynced.push((zone, op));
        Ok(())
    }

    /// Counts one operation against `crash_after`.
    fn operate(&mut self) -> io::Result<()> {
        match &mut self.crash_after {
            Some(0) => Err(io::Error::other("the machine crashed (simulated)")),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl MemDisk {
    fn readable(&self, zone: Zone) -> io::Result<()> {
        if self.unreadable == Some(zone) {
            return Err(io::Error::other("an I/O error in read (simulated)"));
        }
        Ok(())
    }
}

impl Disk for MemDisk {
    fn read(&mut self, zone: Zone) -> io::Result<Vec<u8>> {
        self.readable(zone)?;
        Ok(self.current.bytes(zone).to_vec())
    }

    fn read_at(&mut self, zone: Zone, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.readable(zone)?;
        let file = self.current.bytes(zone);
        usize::try_from(offset)
            .ok()
            .and_then(|start| file.get(start..start.checked_add(len)?))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "a read past the end of a zone"))
    }

    fn write(&mut self, zone: Zone, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let bytes = bytes.to_vec();
        self.record_write(zone, Op::Write { offset, bytes })
    }

    fn write_zeros(&mut self, zone: Zone, offset: u64, len: u64) -> io::Result<()> {
        self.record_write(zone, Op::Zeros { offset, len })
    }

    fn truncate(&mut self, zone: Zone, len: u64) -> io::Result<()> {
        self.operate()?;
        let op = Op::Truncate { len };
        apply(self.current.file_mut(zone), &op, None);
        self.unsynced.push((zone, op));
        Ok(())
    }

    fn sync(&mut self, zone: Zone) -> io::Result<()> {
        self.operate()?;
        let (synced, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unsynced)
            .into_iter()
            .partition(|(z, _)| *z == zone);
        if self.failing {
            self.unsynced = rest;
            return Err(io::Error::other("an I/O error in fdatasync (simulated)"));
        }
        let file = self.durable.file_mut(zone);
        for (_, op) in synced {
            apply(file, &op, None);
        }
        self.unsynced = rest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk after: 6 bytes written and synced, then (unsynced) zeros over
    /// their end and past it, then 2 more bytes inside the zeros; each
    /// write of zeros made as `write_zeros` or as a written zero buffer.
    fn disk(zeros: impl Fn(&mut MemDisk, u64, u64)) -> MemDisk {
        let mut disk = MemDisk::default();
        disk.write(Zone::WalA, 0, &[1, 2, 3, 4, 5, 6]).unwrap();
        disk.sync(Zone::WalA).unwrap();
        zeros(&mut disk, 4, 8);
        disk.write(Zone::WalA, 7, &[9, 9]).unwrap();
        zeros(&mut disk, 14, 3);
        disk
    }

    /// Files are shared until written: a write (or rot) through one copy
    /// of a disk, or after a crash through what reads see, reaches neither
    /// the other copy nor the durable bytes.
    #[test]
    fn a_copy_and_a_crashed_disk_share_no_writes() {
        let mut disk = MemDisk::default();
        disk.write(Zone::WalA, 0, &[1, 2, 3]).unwrap();
        disk.sync(Zone::WalA).unwrap();
        let mut copy = disk.clone();
        copy.write(Zone::WalA, 0, &[7]).unwrap();
        copy.corrupt(Zone::WalA, 1, 0xff);
        assert_eq!(disk.read(Zone::WalA).unwrap(), [1, 2, 3]);
        assert_eq!(copy.read(Zone::WalA).unwrap(), [7, 0xfd, 3]);
        disk.crash(CrashCut { kept: 0, torn: None });
        disk.write(Zone::WalA, 2, &[9]).unwrap();
        assert_eq!(disk.read(Zone::WalA).unwrap(), [1, 2, 9]);
        disk.crash(CrashCut { kept: 0, torn: None });
        assert_eq!(disk.read(Zone::WalA).unwrap(), [1, 2, 3]);
        copy.crash(CrashCut { kept: 0, torn: None });
        assert_eq!(copy.read(Zone::WalA).unwrap(), [1, 0xfd, 3]);
    }

    /// Preallocation's zeros are recorded without a buffer, and every read,
    /// sync and crash (torn at any byte) sees what a written buffer of
    /// zeros would have left.
    #[test]
    fn writing_zeros_is_writing_a_buffer_of_zeros() {
        let by_length = || disk(|d, offset, len| d.write_zeros(Zone::WalA, offset, len).unwrap());
        let by_buffer =
            || disk(|d, offset, len| d.write(Zone::WalA, offset, &vec![0; len as usize]).unwrap());
        let read = |mut d: MemDisk| d.read(Zone::WalA).unwrap();
        assert_eq!(
            read(by_length()),
            [1, 2, 3, 4, 0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(read(by_length()), read(by_buffer()));
        for kept in 0..=3 {
            for torn in [None, Some(0), Some(1), Some(5), Some(20)] {
                let cut = CrashCut { kept, torn };
                let (mut a, mut b) = (by_length(), by_buffer());
                a.crash(cut);
                b.crash(cut);
                assert_eq!(read(a), read(b), "{cut:?}");
            }
        }
        let (mut a, mut b) = (by_length(), by_buffer());
        a.sync(Zone::WalA).unwrap();
        b.sync(Zone::WalA).unwrap();
        a.crash(CrashCut { kept: 0, torn: None });
        b.crash(CrashCut { kept: 0, torn: None });
        assert_eq!(read(a), read(b));
    }

    /// An armed misdirection moves the next write to the WAL, and
    /// preallocation's zeros are such a write (`Disk::write_zeros`: "a
    /// write of a buffer of zeros"): a misdirected preallocation lands its
    /// zeros back over synced records, as a written zero buffer does.
    #[test]
    fn a_misdirected_write_of_zeros_lands_as_a_buffer_of_zeros_would() {
        let after = |zeros: bool| {
            let mut disk = MemDisk::default();
            disk.write(Zone::WalA, 0, &[7; 64]).unwrap();
            disk.sync(Zone::WalA).unwrap();
            disk.misdirect = Some(-32);
            if zeros {
                disk.write_zeros(Zone::WalA, 64, 32).unwrap();
            } else {
                disk.write(Zone::WalA, 64, &[0; 32]).unwrap();
            }
            disk.write(Zone::WalA, 64, &[9; 8]).unwrap();
            disk.sync(Zone::WalA).unwrap();
            disk.crash(CrashCut { kept: 0, torn: None });
            disk.read(Zone::WalA).unwrap()
        };
        assert_eq!(after(true), after(false));
    }
}
