//! The names of the phases of a store operation, each a `tracing` span
//! (level TRACE) around the work it names, as [`thinpool::phase`] names
//! the pool's: a subscriber (the benchmark harness's) times where a
//! layer's making and mounting spend their time. The driver's work
//! ([`DRIVER`]) holds the pool's phases for thin; a subscriber that
//! times each span's own time gets a partition.

/// Taking the store's lock file back after the driver's work.
pub const LOCK: &str = "store: lock";
/// Writing a transaction's journal (with its lock file, the first time).
pub const JOURNAL: &str = "store: journal";
/// The driver's work on the layer's resource (for thin, what the pool's
/// phases do not cover: its calls, the driver's own bookkeeping).
pub const DRIVER: &str = "store: driver";
/// Writing a layer's record.
pub const RECORD: &str = "store: layer record";
/// A transaction's end: the journal removed, the directories synced, the
/// lock released.
pub const END: &str = "store: transaction end";
/// Asking the kernel whether a mount point is mounted (`mountinfo`).
pub const MOUNT_CHECK: &str = "store: mount check";
/// Waiting for a thin device's activation, started in the background
/// when the layer was made ([`crate::driver::Driver::prepare_mount`]).
pub const ACTIVATION_WAIT: &str = "thin: waiting for the activation";
/// The mount(2) call.
pub const MOUNT: &str = "mount";
