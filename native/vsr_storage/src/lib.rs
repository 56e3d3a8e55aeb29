//! `vsr_storage`: durable storage for a `vsr` replica (Visor's disk mode).
//!
//! Two files per replica: a **write-ahead log** of checksummed records,
//! appended only, and a **superblock** holding the replica's durable state
//! (view, log view, commit, crash vector, membership, role) and identity,
//! kept in four copies of which each update rewrites two. `docs/storage.md` documents the layout
//! byte by byte and the rules that make it safe.
//!
//! The byte formats ([`format`]) are pure; the [`Store`] applies a replica's
//! `WriteLog`/`WriteState` outputs through a [`Disk`], buffering them until
//! [`Store::sync`] makes them durable with one sync for all of them (group
//! commit). [`FileDisk`] is the real disk; the simulator brings its own,
//! which tears and corrupts writes on purpose.

pub mod disk;
pub mod format;
pub mod mem;
pub mod store;

pub use disk::{create_dir_durably, probe_dir, sync_dir, Disk, FileDisk, Zone};
pub use format::{Identity, Superblock, WalDamage, WalScan};
pub use mem::{CrashCut, MemDisk};
pub use store::{Creation, Opened, Store, StoreError, StoreStats, Unopened};
