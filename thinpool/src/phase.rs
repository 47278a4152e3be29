//! The names of the phases of a pool operation, each a `tracing` span
//! (level TRACE) around the work it names, so that a subscriber (the
//! benchmark harness's) can time where an operation's time goes. No
//! subscriber is installed by the library: a span then costs one atomic
//! load.
//!
//! The phases do not nest, except [`ACTIVATE`], which reads the record
//! again ([`CHECK`], [`READ`]) for a device made since this process last
//! read it, and [`OPEN`], which holds the others an opening does; a
//! subscriber that times each span's own time (its time less its
//! children's) gets a partition.

/// Taking the pool's lock file: shared to open the pool beside other
/// processes, exclusive for a change.
pub const LOCK: &str = "pool: lock";
/// Reading the pool's record and its change log.
pub const READ: &str = "pool: record read";
/// Asking the kernel before a change: the pool's status (is there room,
/// is it writable) and whether the origin is active.
pub const CHECK: &str = "pool: kernel checks";
/// Appending a pending or commit entry to the pool's change log (the
/// pending one with an `fdatasync`).
pub const LOG: &str = "pool: change log";
/// The dm message that makes the change (`create_snap`, `create_thin`,
/// `delete`), with an active origin's suspend and resume.
pub const MESSAGE: &str = "pool: dm message";
/// Activating a thin device: create, table load, resume.
pub const ACTIVATE: &str = "pool: activation";
/// Opening the pool: what its lock, record read and kernel checks in it
/// do not cover (the devices listed, the backings and tables checked).
pub const OPEN: &str = "pool: open";
