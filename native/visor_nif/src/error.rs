//! The engine's errors, as terms Elixir can match: `start/2`'s
//! `{:error, reason}` and the `reason` of `{:visor_engine_down, engine,
//! reason}`. Each is an atom or a tuple tagged with one (docs/nif.md,
//! "Errors"); text is only ever a detail for people, never what code
//! matches on. `Visor.Native.format_error/1` renders them.

use std::path::Path;

use rustler::{Atom, Encoder, Env, Term};
use vsr::ConfigError;
use vsr_host::{BootError, Bug};
use vsr_storage::StoreError;

use crate::atoms;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// `{:bad_option, key, why}`: a start option is missing or out of its
    /// bounds (`why` reads after the key: "must be positive").
    BadOption { key: &'static str, why: String },
    /// `:engine_unavailable`: no engine thread could be started.
    EngineUnavailable,
    /// `{:store_in_use, dir}`: another live group holds the store's lock.
    StoreInUse(String),
    /// `{:foreign_store, dir, detail}`: the store belongs to another
    /// cluster, group or replica; it was left untouched.
    ForeignStore { dir: String, detail: String },
    /// `{:corrupt_store, dir, detail}`: the store cannot be trusted (every
    /// superblock copy damaged, a log without its superblock, a log the
    /// replica cannot restart from); it was left untouched.
    CorruptStore { dir: String, detail: String },
    /// `{:store_version, dir, found}`: the store is in another format version.
    StoreVersion { dir: String, found: u16 },
    /// `{:io_error, dir, detail}`: the store's files could not be read or written.
    Io { dir: String, detail: String },
    /// `{:engine_bug, detail}`: a panic or a broken invariant inside the
    /// engine or vsr. Never expected; it fails the one group.
    Bug(String),
}

impl EngineError {
    pub fn bad_option(key: &'static str, why: impl Into<String>) -> EngineError {
        EngineError::BadOption { key, why: why.into() }
    }

    /// The error of opening the store in `dir`.
    pub fn store(dir: &Path, error: StoreError) -> EngineError {
        let detail = error.to_string();
        let dir = dir.display().to_string();
        match error {
            StoreError::InUse(_) => EngineError::StoreInUse(dir),
            StoreError::Foreign { .. } => EngineError::ForeignStore { dir, detail },
            StoreError::NoSuperblock | StoreError::LostSuperblock => {
                EngineError::CorruptStore { dir, detail }
            }
            StoreError::Version(found) => EngineError::StoreVersion { dir, found },
            StoreError::Io(_) => EngineError::Io { dir, detail },
            // start's options were checked against the same limits.
            StoreError::TooLarge(_) => EngineError::Bug(detail),
        }
    }

    /// The error of booting the replica from the store in `dir`.
    pub fn boot(dir: &Path, error: BootError) -> EngineError {
        match error {
            BootError::Store(e) => EngineError::store(dir, e),
            // vsr refuses to restart from a log that does not hold together.
            BootError::Corrupt(detail) => EngineError::CorruptStore {
                dir: dir.display().to_string(),
                detail,
            },
            BootError::Sync(e) => EngineError::Io {
                dir: dir.display().to_string(),
                detail: e.to_string(),
            },
            BootError::Bug(detail) => EngineError::Bug(detail),
        }
    }
}

impl From<Bug> for EngineError {
    fn from(Bug(detail): Bug) -> EngineError {
        EngineError::Bug(detail)
    }
}

impl From<ConfigError> for EngineError {
    fn from(e: ConfigError) -> EngineError {
        EngineError::BadOption {
            key: e.key,
            why: e.why,
        }
    }
}

impl Encoder for EngineError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            EngineError::BadOption { key, why } => {
                let key = Atom::from_str(env, key).expect("a valid atom");
                (atoms::bad_option(), key, why).encode(env)
            }
            EngineError::EngineUnavailable => atoms::engine_unavailable().encode(env),
            EngineError::StoreInUse(dir) => (atoms::store_in_use(), dir).encode(env),
            EngineError::ForeignStore { dir, detail } => (atoms::foreign_store(), dir, detail).encode(env),
            EngineError::CorruptStore { dir, detail } => (atoms::corrupt_store(), dir, detail).encode(env),
            EngineError::StoreVersion { dir, found } => {
                (atoms::store_version(), dir, *found as u32).encode(env)
            }
            EngineError::Io { dir, detail } => (atoms::io_error(), dir, detail).encode(env),
            EngineError::Bug(detail) => (atoms::engine_bug(), detail).encode(env),
        }
    }
}
