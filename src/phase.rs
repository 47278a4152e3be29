//! The names of the phases of a store operation, each a `tracing` span
//! (level TRACE) around the work it names, as [`thinpool::phase`] names
//! the pool's: a subscriber (the benchmark harness's) times where a
//! layer's making and mounting spend their time. The driver's work
//! ([`DRIVER`]) holds the pool's phases for thin; a subscriber that
//! times each span's own time gets a partition ([`timing`]).

pub mod timing;

/// Taking the store's lock file: when the store is opened, and back
/// after the driver's work.
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
/// Opening a driver's store, or taking a parked one back: reading its
/// records, opening or revalidating its driver (for thin, what the
/// pool's phases in it do not cover).
pub const STORE_OPEN: &str = "store: open";
/// Taking the containers' lock file.
pub const CONTAINERS_LOCK: &str = "containers: lock";
/// Reading the containers' and volumes' records and finishing what a
/// killed command left.
pub const CONTAINERS_OPEN: &str = "containers: open";
/// Writing a container's record.
pub const CONTAINERS_RECORD: &str = "containers: record";
