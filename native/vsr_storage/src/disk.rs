//! Where a store's bytes live: the [`Disk`] trait, and [`FileDisk`], the
//! store's files in a directory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The files of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    Superblock,
    /// The two write-ahead log files: the superblock names the one holding
    /// the log; compaction writes the live log to the other.
    WalA,
    WalB,
    /// The two checkpoint files: the superblock names the one holding the
    /// durable checkpoint; a new one is written to the other.
    CheckpointA,
    CheckpointB,
}

impl Zone {
    /// WAL file `slot` (0 or 1).
    pub fn wal(slot: u8) -> Zone {
        if slot == 0 {
            Zone::WalA
        } else {
            Zone::WalB
        }
    }

    /// Checkpoint file `slot` (0 or 1).
    pub fn checkpoint(slot: u8) -> Zone {
        if slot == 0 {
            Zone::CheckpointA
        } else {
            Zone::CheckpointB
        }
    }
}

/// Byte storage for a [`crate::Store`]. Writes need not be durable until
/// `sync` returns; a crash may tear or drop any write not yet synced.
pub trait Disk {
    /// The whole zone.
    fn read(&mut self, zone: Zone) -> io::Result<Vec<u8>>;
    /// `len` bytes of the zone from `offset`: an error if it is shorter.
    fn read_at(&mut self, zone: Zone, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    fn write(&mut self, zone: Zone, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Writes `len` zero bytes from `offset` (preallocation): a write of a
    /// buffer of zeros, which a disk in memory records without building one.
    fn write_zeros(&mut self, zone: Zone, offset: u64, len: u64) -> io::Result<()> {
        self.write(zone, offset, &vec![0; len as usize])
    }
    fn truncate(&mut self, zone: Zone, len: u64) -> io::Result<()>;
    /// Makes every write to `zone` so far durable (`fdatasync`).
    fn sync(&mut self, zone: Zone) -> io::Result<()>;
}

/// A store in a directory: `superblock`, `wal.a`, `wal.b`, `checkpoint.a`
/// and `checkpoint.b`. The directory is locked
/// (an advisory `flock`) for as long as the value lives, so two replicas
/// can never write one store.
pub struct FileDisk {
    dir: PathBuf,
    superblock: File,
    wals: [File; 2],
    checkpoints: [File; 2],
    /// Holds the lock.
    _lock: File,
}

impl FileDisk {
    /// Opens (creating if needed) the store directory `dir`;
    /// `StoreError::InUse` if another `FileDisk` holds it.
    pub fn open(dir: &Path) -> Result<FileDisk, crate::StoreError> {
        // The store's own entry, whoever made its directory.
        create_dir_durably(dir, dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        lock.try_lock()
            .map_err(|_| crate::StoreError::InUse(dir.to_path_buf()))?;
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join(name))
        };
        let disk = FileDisk {
            superblock: open("superblock")?,
            wals: [open("wal.a")?, open("wal.b")?],
            checkpoints: [open("checkpoint.a")?, open("checkpoint.b")?],
            _lock: lock,
            dir: dir.to_path_buf(),
        };
        // The files' directory entries must be durable too.
        sync_dir(dir)?;
        Ok(disk)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, zone: Zone) -> &File {
        match zone {
            Zone::Superblock => &self.superblock,
            Zone::WalA => &self.wals[0],
            Zone::WalB => &self.wals[1],
            Zone::CheckpointA => &self.checkpoints[0],
            Zone::CheckpointB => &self.checkpoints[1],
        }
    }
}

impl Disk for FileDisk {
    fn read(&mut self, zone: Zone) -> io::Result<Vec<u8>> {
        let file = self.file(zone);
        let mut bytes = vec![0; file.metadata()?.len() as usize];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(bytes)
    }

    fn read_at(&mut self, zone: Zone, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0; len];
        self.file(zone).read_exact_at(&mut bytes, offset)?;
        Ok(bytes)
    }

    fn write(&mut self, zone: Zone, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file(zone).write_all_at(bytes, offset)
    }

    fn truncate(&mut self, zone: Zone, len: u64) -> io::Result<()> {
        self.file(zone).set_len(len)
    }

    fn sync(&mut self, zone: Zone) -> io::Result<()> {
        self.file(zone).sync_data()
    }
}

/// Creates `dir` and any missing ancestors, and makes the entry of every
/// directory from `root` down to `dir` durable, in the directory that
/// holds it (`root` itself included): POSIX makes a directory entry
/// durable only once the directory holding it is synced, so a store
/// whose files were all synced could otherwise vanish whole, directory
/// and all, in a power loss. Entries that already existed are synced
/// too: a directory that exists may have been made by a call that failed
/// before its sync, or by another caller still syncing. `root` must be
/// `dir` or one of its ancestors (`InvalidInput` otherwise). A directory
/// holding `root` that this process may not read is not synced.
pub fn create_dir_durably(dir: &Path, root: &Path) -> io::Result<()> {
    if !dir.starts_with(root) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the root is not an ancestor of the directory",
        ));
    }
    std::fs::create_dir_all(dir)?;
    let mut path = root.to_path_buf();
    // The directory holding `root` is the operator's (`data_dir`'s
    // parent), which this process may not be allowed to read, and so to
    // open for a sync: then `root`'s entry is left to whoever made it.
    match sync_dir(parent_of(&path)) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        other => other?,
    }
    for part in dir.strip_prefix(root).expect("checked above").components() {
        path.push(part);
        sync_dir(parent_of(&path))?;
    }
    Ok(())
}

/// Makes the entries of the directory `dir` durable (an `fsync` of the
/// directory): the files created, renamed or removed in it. Anything but
/// a directory is refused (`NotADirectory`) before it is opened, so a
/// FIFO never blocks the caller.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotADirectory));
    }
    File::open(dir)?.sync_all()
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The current superblock of the store in `dir`, read without creating or
/// locking anything: `Ok(None)` when there is no store there yet. A
/// directory whose log or checkpoint files hold data but whose superblock
/// is missing or empty is no "no store": `StoreError::LostSuperblock`.
pub fn probe_dir(dir: &Path) -> Result<Option<crate::Superblock>, crate::StoreError> {
    let superblock = match std::fs::read(dir.join("superblock")) {
        Ok(bytes) => crate::store::superblock_in(&bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    if superblock.is_none() {
        for name in ["wal.a", "wal.b", "checkpoint.a", "checkpoint.b"] {
            match std::fs::metadata(dir.join(name)) {
                Ok(file) if file.len() > 0 => return Err(crate::StoreError::LostSuperblock),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(superblock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreError;

    #[test]
    fn probe_refuses_a_log_without_its_superblock_and_touches_nothing() {
        let dir = std::env::temp_dir().join(format!("vsr-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(probe_dir(&dir), Ok(None)), "no directory: no store");
        // Files created but nothing written (a crash before the store's
        // first superblock): no store.
        drop(FileDisk::open(&dir).unwrap());
        assert!(matches!(probe_dir(&dir), Ok(None)), "created files, all empty");
        std::fs::write(dir.join("wal.a"), b"records").unwrap();
        std::fs::remove_file(dir.join("superblock")).unwrap();
        assert!(matches!(probe_dir(&dir), Err(StoreError::LostSuperblock)));
        std::fs::write(dir.join("superblock"), b"").unwrap();
        assert!(matches!(probe_dir(&dir), Err(StoreError::LostSuperblock)));
        assert_eq!(std::fs::read(dir.join("wal.a")).unwrap(), b"records");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_dir_durably_makes_missing_ancestors_and_leaves_what_exists() {
        let root = std::env::temp_dir().join(format!("vsr-mkdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let data = root.join("data");
        let dir = data.join("Elixir.M.keyed").join("3f2a");
        create_dir_durably(&dir, &data).unwrap();
        assert!(dir.is_dir());
        std::fs::write(dir.join("keep"), b"x").unwrap();
        create_dir_durably(&dir, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"x");
        sync_dir(&dir).unwrap();
        // A root that is not an ancestor, a file in the way, a missing
        // directory, a file or a FIFO to sync: errors, not panics or
        // waits, and nothing changed.
        let other = root.join("other");
        let refused = create_dir_durably(&dir, &other).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);
        assert!(!other.exists());
        let file = root.join("file");
        std::fs::write(&file, b"y").unwrap();
        assert!(create_dir_durably(&file.join("below"), &root).is_err());
        assert!(sync_dir(&root.join("absent")).is_err());
        let not_dir = sync_dir(&file).unwrap_err();
        assert_eq!(not_dir.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(std::fs::read(&file).unwrap(), b"y");
        let fifo = root.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|status| status.success()) {
            assert_eq!(sync_dir(&fifo).unwrap_err().kind(), io::ErrorKind::NotADirectory);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    // The host tells a store that another replica holds from a broken one
    // by this variant, not by the message's text (it retries the first).
    #[test]
    fn a_locked_directory_is_in_use_until_its_holder_is_dropped() {
        let dir = std::env::temp_dir().join(format!("vsr-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let holder = FileDisk::open(&dir).unwrap();
        assert!(matches!(FileDisk::open(&dir), Err(StoreError::InUse(d)) if d == dir));
        drop(holder);
        assert!(FileDisk::open(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
