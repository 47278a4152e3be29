//! The pool as thinlayer uses it: one shared handle, and the owner every
//! thin device's tag names.
//!
//! The `thinpool` crate keeps the pool and its thin devices; it knows
//! nothing of layers or volumes and tags each thin device with an opaque
//! string. [`ThinOwner`] is the one place that string is made and read.
//! [`PoolHandle`] is the pool opened once by whoever opens the thin driver's
//! store and passed explicitly to everything that needs the pool (the thin
//! driver, thin volumes), so nothing opens it twice or reaches for it
//! through another type.

mod owner;

use std::sync::{Arc, Mutex, MutexGuard};

use thinpool::Pool;

pub use owner::ThinOwner;

/// An open pool, shared by the thin driver and thin volumes. Cloning shares
/// the same pool (and its lock on the pool directory).
#[derive(Clone, Debug)]
pub struct PoolHandle(Arc<Mutex<Pool>>);

impl PoolHandle {
    /// Shares `pool`.
    pub fn new(pool: Pool) -> PoolHandle {
        PoolHandle(Arc::new(Mutex::new(pool)))
    }

    /// The pool, for one operation. A panic in another holder does not
    /// make the pool unusable: its record is written atomically, and the
    /// next operation checks it against the kernel.
    pub fn lock(&self) -> MutexGuard<'_, Pool> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool itself, when this is the last handle to it.
    pub fn into_inner(self) -> Option<Pool> {
        Arc::into_inner(self.0).map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
    }
}
