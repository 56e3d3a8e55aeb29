//! A deterministic cluster simulator for the `vsr` protocol core, in the
//! spirit of TigerBeetle's VOPR: the real replica code, a simulated network
//! and disks, simulated clients, all on one thread and driven by one seed,
//! with the protocol's invariants checked after every step.

pub mod checker;
pub mod client;
pub mod network;
pub mod options;
pub mod quiet;
pub mod quiet_scenarios;
pub mod rng;
pub mod scenarios;
pub mod simulator;

pub use options::Options;
pub use quiet::QuietStats;
pub use simulator::{run_seed, trace_seed, Failure, Report, Simulator};
