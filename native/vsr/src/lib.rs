//! `vsr`: the Viewstamped Replication protocol core of Visor.
//!
//! Pure and deterministic: no threads, sockets, files, clocks or global
//! state. A [`Replica`] is a value that takes an [`Input`] and returns
//! [`Output`]s for its host to carry out. See `docs/protocol.md` for the
//! protocol, the wire format and the deviations from VR Revisited.

pub mod checkpoint;
pub mod checksum;
pub mod client_table;
mod clock;
pub mod config;
mod invariants;
mod learner;
pub mod log;
pub mod membership;
pub mod message;
mod quiet;
mod read;
mod reconfig;
mod recovery;
mod repair;
pub mod replica;
mod verified;
mod view_change;

pub use checkpoint::Checkpoint;
pub use checksum::{checksum, root_checksum};
pub use client_table::Outcome;
#[cfg(feature = "mutations")]
pub use config::Mutation;
pub use config::{quorum, ClientId, Config, ConfigError, Op, View, MAX_REPLICAS, RANGES};
pub use membership::{ChangeId, Epoch, Member, MemberId, Membership, MembershipError, Slot, MAX_SLOTS};
pub use message::{DecodeError, Decoded, Message, Prepare, Request};
pub use reconfig::ChangeResult;
pub use replica::{DurableState, Input, Output, Replica, Role, Stats, Status, Submission};
