//! What can go wrong while hosting a replica.

use std::any::Any;
use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use vsr_storage::StoreError;

/// A panic or a broken invariant inside `vsr`, the store or the host: never
/// expected, and the end of the host that met it (its replica may be
/// half-way through a step).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bug(pub String);

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Bug {}

/// Why [`crate::Host::boot`] built no replica.
#[derive(Debug)]
pub enum BootError {
    /// The store could not be opened (`Store::open`): held by another
    /// replica, someone else's, unreadable, another format version...
    Store(StoreError),
    /// The store opened, but `vsr` refuses to restart from what it holds.
    Corrupt(String),
    /// A recovering replica's state could not be made durable.
    Sync(io::Error),
    Bug(String),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::Store(e) => write!(f, "{e}"),
            BootError::Corrupt(detail) | BootError::Bug(detail) => f.write_str(detail),
            BootError::Sync(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for BootError {}

/// A boot that built no replica: why, and in disk mode the disk, as the
/// boot left it, for another try (`None` if a bug ended the boot, or in
/// memory mode).
pub struct Unbooted<D> {
    pub error: BootError,
    pub disk: Option<D>,
}

impl<D> From<Unbooted<D>> for BootError {
    fn from(unbooted: Unbooted<D>) -> BootError {
        unbooted.error
    }
}

impl<D> fmt::Debug for Unbooted<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl<D> fmt::Display for Unbooted<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl From<Bug> for BootError {
    fn from(Bug(detail): Bug) -> BootError {
        BootError::Bug(detail)
    }
}

/// Runs `f`, turning a panic into a [`Bug`] carrying its message, so that
/// a bug in `vsr` ends one host, never its process (or the BEAM around it).
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, Bug> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| Bug(panic_message(&*payload)))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".into()
    }
}
