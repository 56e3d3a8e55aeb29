//! `vsr_host`: one `vsr` replica as a host runs it, without the host's
//! transport, clock or threads. Visor's NIF drives it on its engine
//! threads over files (`FileDisk`); the simulator (`vsr_sim`) drives it
//! over its faulty `MemDisk`, so that what it tests is the code that ships.
//!
//! A [`Host`] owns the replica, its store (disk mode; none in memory mode)
//! and the outputs the replica owes the outside world. It carries out
//! three rules the protocol leaves to its host:
//!
//! - **Boot from the store**: [`Host::boot`] opens the store and builds the
//!   replica from what it holds (fresh, restarted, repairing one entry, or
//!   recovering), and makes a recovering replica's state durable before
//!   anything else happens.
//! - **Persist, then send**: writes are staged in the store; an output that
//!   follows a write leaves only once the write is durable, and one sync
//!   covers every write staged since the last (group commit): the driver
//!   steps the host any number of times, then takes what may leave at once
//!   ([`Host::take_ready`]) and syncs ([`Host::sync_staged`]).
//! - **Pause on a failed write**: while a sync fails, the replica gets no
//!   ticks and no peer messages, and nothing that followed the write
//!   leaves; each later sync retries, and the first that succeeds releases
//!   the held outputs in order.

mod detector;
mod error;
mod host;
mod quiet;

pub use detector::{Beat, Detector, DetectorConfig, NodeId, BEAT_BYTES};
pub use error::{catch_panic, BootError, Bug, Unbooted};
pub use host::{Host, StorageNotice, StoreOptions};
pub use quiet::{peers_feed, up_bits, PeersFeed};
