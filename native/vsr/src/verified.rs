//! What a check last established about a value, remembered beside it so
//! that the next check (after every step of every replica, in the
//! simulator) can skip what is unchanged since.
//!
//! Checks take `&self`, hence interior mutability; an atomic rather than a
//! `Cell` because the model check shares states between threads. Relaxed
//! ordering suffices: the value can change only through `&mut`, so while
//! it is shared every fact any thread records about it is true.
//!
//! A clone forgets: code inside the owning module (its tests in
//! particular) may build a copy and change its private fields directly,
//! past the methods that keep the record honest, so a copy is verified in
//! full once before it trusts a record of its own.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Op;

/// The last op a check recorded (what it means is the owner's to say),
/// if any. Kept as the op plus one, 0 for none: an op of `u64::MAX` is
/// not remembered, and the next check starts over.
pub(crate) struct Verified(AtomicU64);

impl Verified {
    /// Nothing verified yet.
    pub(crate) fn none() -> Verified {
        Verified(AtomicU64::new(0))
    }

    /// What was last recorded, if anything.
    pub(crate) fn get(&self) -> Option<Op> {
        self.0.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records what a check just established.
    pub(crate) fn set(&self, op: Op) {
        self.0.store(op.checked_add(1).unwrap_or(0), Ordering::Relaxed);
    }

    /// Drops the record: the value changed in a way the record cannot follow.
    pub(crate) fn forget(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl Clone for Verified {
    fn clone(&self) -> Verified {
        Verified::none()
    }
}

/// Shows nothing of the record: it is a cache of what a check found, not
/// part of the value, and the model check fingerprints a replica by its
/// `Debug` text, so a check (or a clone, which forgets) must not change it.
impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verified")
    }
}
