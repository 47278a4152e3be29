//! Named instants of the crash-safety protocol, at which a test can have
//! the process killed (`SIGKILL`, as `kill -9` or a power cut would stop
//! it: no destructor, no flush, no unlock but the kernel's). Random kills
//! land where the time goes; these make sure every step between two
//! durable writes is hit at least once, and the recovery after it proven.
//!
//! A point does nothing unless the environment variable [`ENV`] names it.

use std::sync::OnceLock;

/// The environment variable naming the point to be killed at.
pub const ENV: &str = "THINLAYER_KILL_AT";

/// The pool recorded a thin-device change as pending; no message sent.
pub const POOL_PENDING_RECORDED: &str = "pool-pending-recorded";
/// The pool's message (create, snapshot, delete) was sent and committed
/// by the kernel; its commit entry not yet in the change log.
pub const POOL_MESSAGE_SENT: &str = "pool-message-sent";
/// The operation's commit entry is in the pool's change log.
pub const POOL_COMMIT_LOGGED: &str = "pool-commit-logged";
/// A thin device's dm device was made for its activation; its table not
/// yet loaded (the next activation finishes it).
pub const POOL_THIN_DEVICE_MADE: &str = "pool-thin-device-made";
/// A store transaction's journal was written (its intent recorded).
pub const STORE_JOURNAL_WRITTEN: &str = "store-journal-written";
/// A new layer's resource (thin device or directory) was made and
/// filled; its record not yet written.
pub const STORE_RESOURCE_MADE: &str = "store-resource-made";
/// A new layer's record was written; the journal not yet removed.
pub const STORE_LAYER_RECORDED: &str = "store-layer-recorded";
/// A layer's resource was removed; its record not yet.
pub const STORE_RESOURCE_REMOVED: &str = "store-resource-removed";

/// A container's rootfs and volumes were mounted; the marker that says
/// its mount is whole not yet written.
pub const CONTAINER_MOUNTS_MADE: &str = "container-mounts-made";

/// A thin commit's new snapshot is mounted, with the init layer and the
/// image beside it, and the init layer's paths are not yet taken out.
pub const CONTAINER_COMMIT_UNLAYERING: &str = "container-commit-unlayering";

/// Every point: the store's and the pool's protocol in its order, then
/// the containers'.
pub const ALL: &[&str] = &[
    STORE_JOURNAL_WRITTEN,
    POOL_PENDING_RECORDED,
    POOL_MESSAGE_SENT,
    POOL_COMMIT_LOGGED,
    POOL_THIN_DEVICE_MADE,
    STORE_RESOURCE_MADE,
    STORE_LAYER_RECORDED,
    STORE_RESOURCE_REMOVED,
    CONTAINER_MOUNTS_MADE,
    CONTAINER_COMMIT_UNLAYERING,
];

/// Kills the process if [`ENV`] names `point`.
pub fn here(point: &'static str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    debug_assert!(ALL.contains(&point), "unknown kill point {point}");
    if WANTED.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(point) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // Not reached: SIGKILL cannot be caught.
        std::process::abort();
    }
}
