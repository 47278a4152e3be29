//! The thinpool crate's errors, grouped by what the caller does next.
//!
//! Messages say what is wrong, in lowercase, naming the object and the
//! operation. They never say what to type: this crate knows nothing of the
//! command line or the tools around it. A front end that wants to add a
//! remedy ("run ... activate") matches on the variant, which carries the
//! data it needs; every condition a front end may want to explain has a
//! variant of its own rather than a sentence in [`Error::Precondition`].

use std::io;
use std::path::PathBuf;

use crate::config::MinFree;
use crate::lock::LockError;
use crate::names::PoolId;
use crate::record::RecordError;
use crate::units::{Bytes, ThinId};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a pool operation can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- the caller asked for something impossible; nothing was changed
    /// An argument is out of range or inconsistent; nothing was changed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The argument, e.g. `data size`.
        what: &'static str,
        /// Why it was refused, and what would be accepted.
        reason: String,
    },

    /// A device-backed pool cannot grow past the size of its device; the
    /// device must be grown first.
    #[error("invalid size: {} holds only {have}; grow the device first", .path.display())]
    DeviceTooSmall {
        /// The backing device.
        path: PathBuf,
        /// Its size now.
        have: Bytes,
        /// The size the grow asked for.
        want: Bytes,
    },

    /// A grow of the data alone would outgrow the metadata, which must be
    /// grown in the same call.
    #[error("invalid data size: {reason}: grow the metadata too")]
    GrowNeedsMetadata {
        /// Why the current metadata is too small for the new data size.
        reason: String,
    },

    // ---- not found
    /// No pool has been created in this directory.
    #[error("no pool in {}", .dir.display())]
    NoPool {
        /// The pool directory that holds no pool record.
        dir: PathBuf,
    },

    /// The pool has no thin device with this id.
    #[error("thin device {0} does not exist in this pool")]
    NoSuchThin(ThinId),

    // ---- already exists
    /// A create on a directory that already holds a pool.
    #[error("{} already holds pool {id}", .dir.display())]
    PoolExists {
        /// The pool directory.
        dir: PathBuf,
        /// The id of the pool it holds.
        id: PoolId,
    },

    /// A create found a backing file that no pool record refers to (left by
    /// something else, or by hand); it is never overwritten.
    #[error("{} exists but no pool record refers to it; move it away (it may hold data) and retry", .path.display())]
    StrayBacking {
        /// The backing file in the way.
        path: PathBuf,
    },

    /// A create was given a metadata device that already holds thin-pool
    /// metadata (another pool's, or a destroyed one's not wiped).
    #[error("{} already holds thin-pool metadata", .path.display())]
    MetadataInUse {
        /// The metadata device.
        path: PathBuf,
    },

    // ---- in use
    /// Something is mounted, open or held; retry once it is released.
    #[error("{what} is in use: {hint}")]
    Busy {
        /// The device in use, e.g. `thin device 3 (layer:ab12)`.
        what: String,
        /// Why it counts as in use.
        hint: String,
    },

    /// Another process holds the pool's lock.
    #[error(transparent)]
    Lock(#[from] LockError),

    // ---- the pool's state forbids the operation
    /// The pool is not active; activate it first.
    #[error("the pool is not active")]
    Inactive,

    /// A destroy without force on a pool that still has thin devices.
    #[error("the pool still has {count} thin device{}; remove {} first",
        if *.count == 1 { "" } else { "s" }, if *.count == 1 { "it" } else { "them" })]
    ThinDevicesRemain {
        /// How many thin devices the pool has.
        count: usize,
    },

    /// The kernel has put the pool in read-only mode (its metadata is full
    /// or damaged): no thin device can be created or deleted.
    #[error("the pool is read-only (its metadata is full or damaged)")]
    ReadOnly,

    /// The pool's data space is used up: new thin devices are refused
    /// (their first writes would fail); deleting frees space.
    #[error("the pool's data space is full")]
    OutOfDataSpace,

    /// The kernel reports the pool as failed; nothing can change it.
    #[error("the pool has failed (the kernel reports Fail)")]
    Failed,

    /// Every thin device id (24 bits) has been handed out; ids are never
    /// reused.
    #[error("the pool has used all 2^24 thin device ids")]
    ThinIdsExhausted,

    /// A state of the caller's own forbids the operation. This crate no
    /// longer makes these; the variant stays for callers that do.
    #[error("{0}")]
    Precondition(String),

    // ---- the kernel cannot do it
    /// The running kernel cannot do device-mapper at all.
    #[error("this kernel has no device-mapper ({detail})")]
    NoDeviceMapper {
        /// What was missing (the driver, or the control node).
        detail: String,
    },

    /// Device-mapper is there but the thin-pool target is not, even after
    /// trying to load its module.
    #[error("the kernel's device-mapper has no thin-pool target (loaded: {targets})")]
    NoThinTarget {
        /// The targets the kernel has, comma-separated.
        targets: String,
    },

    /// A device-mapper ioctl failed.
    #[error("device-mapper {op}: {detail}")]
    Dm {
        /// What was being done, e.g. `removing <name>`.
        op: String,
        /// The errno the kernel answered, if the ioctl got that far.
        errno: Option<i32>,
        /// The kernel's word for the errno, or devicemapper's message.
        detail: String,
    },

    /// A file or device operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. `opening`.
        op: String,
        /// The file or device.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A tool that owns a format (thin_ls) failed or is missing.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// Its error output, or why it could not run.
        detail: String,
    },

    // ---- corrupt or contradicted state
    /// The pool's record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),

    /// What the kernel or the disk says disagrees with the pool's record;
    /// nothing was changed.
    #[error("pool {what} does not match its record: {reason}; nothing was changed")]
    Mismatch {
        /// The part that disagrees, e.g. `transaction id`.
        what: String,
        /// How it disagrees.
        reason: String,
    },

    /// The pool's free data or metadata space is below its reserve: new
    /// thin devices are refused, so those already made keep room to write.
    #[error("the pool's {space} space has {free} free of {total}, below its {reserve} reserve; new thin devices are refused until space is freed or the pool grows")]
    BelowReserve {
        /// `data` or `metadata`.
        space: &'static str,
        /// What is free.
        free: Bytes,
        /// All of it.
        total: Bytes,
        /// The reserve.
        reserve: MinFree,
    },

    /// `thin_check` found the pool's metadata damaged; nothing was started.
    #[error("the pool's metadata {path} is damaged ({detail}); nothing was started")]
    MetadataDamaged {
        /// The metadata file or device.
        path: PathBuf,
        /// What `thin_check` said.
        detail: String,
    },

    /// The kernel flagged the metadata for a check and the check was
    /// skipped; nothing was started.
    #[error("the kernel flagged the pool's metadata {path} for a check after an error; it is not activated without one")]
    NeedsCheck {
        /// The metadata file or device.
        path: PathBuf,
    },

    /// An interrupted operation could not be settled (its thin device
    /// deleted, or the metadata read to tell whether the kernel made it);
    /// it stays pending in the record, and the pool takes no new change
    /// until it is settled.
    #[error("thin device {id} of an interrupted operation could not be settled yet ({reason}); the pool keeps it pending and takes no new change until it is")]
    UndoPending {
        /// The thin id of the operation.
        id: ThinId,
        /// Why the last try failed.
        reason: String,
    },

    /// An operation failed and undoing its partial work failed too; both
    /// are kept so the user knows what may be left.
    #[error("{causal}; undoing the partial work also failed: {rollback}")]
    Rollback {
        /// Why the operation failed.
        causal: Box<Error>,
        /// Why undoing it failed.
        rollback: Box<Error>,
    },
}

impl Error {
    /// Makes a `map_err` closure wrapping an [`io::Error`] as [`Error::Io`]
    /// with the operation and the path it was done on.
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let (op, path) = (op.into(), path.into());
        move |source| Error::Io { op, path, source }
    }

    /// An [`Error::Invalid`] for argument `what`.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// The errno of a failed dm ioctl or I/O call, if there was one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Dm { errno, .. } => *errno,
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Wraps a devicemapper error with the operation that failed, keeping
    /// only the errno and the kernel's word for it (the crate's own text
    /// dumps whole ioctl headers).
    pub fn dm(op: impl Into<String>) -> impl FnOnce(devicemapper::DmError) -> Error {
        let op = op.into();
        move |e| {
            let errno = dm_errno(&e);
            let detail = match errno {
                Some(n) => io::Error::from_raw_os_error(n).to_string(),
                None => e.to_string(),
            };
            Error::Dm { op, errno, detail }
        }
    }
}

fn dm_errno(e: &devicemapper::DmError) -> Option<i32> {
    use devicemapper::errors::Error as Core;
    match e {
        devicemapper::DmError::Core(Core::Ioctl(_, _, _, err)) => Some(**err as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant this crate makes whose text it writes itself.
    fn own_messages() -> Vec<Error> {
        let path = PathBuf::from("/dev/vdb");
        vec![
            Error::invalid("data size", "it must be greater than 0"),
            Error::DeviceTooSmall {
                path: path.clone(),
                have: Bytes::GIB,
                want: Bytes(2 << 30),
            },
            Error::GrowNeedsMetadata {
                reason: "16M is too small".into(),
            },
            Error::NoPool {
                dir: PathBuf::from("/var/lib/x/pool"),
            },
            Error::NoSuchThin(ThinId(3)),
            Error::PoolExists {
                dir: PathBuf::from("/var/lib/x/pool"),
                id: PoolId::try_from("0123456789abcdef".to_string()).unwrap(),
            },
            Error::StrayBacking { path: path.clone() },
            Error::MetadataInUse { path: path.clone() },
            Error::Inactive,
            Error::ThinDevicesRemain { count: 1 },
            Error::ThinDevicesRemain { count: 2 },
            Error::ReadOnly,
            Error::Failed,
            Error::ThinIdsExhausted,
            Error::NoDeviceMapper {
                detail: "/proc/misc lists no device-mapper driver".into(),
            },
            Error::NoThinTarget {
                targets: "linear, striped".into(),
            },
            Error::Mismatch {
                what: "transaction id".into(),
                reason: "the kernel is at 5, the record at 4".into(),
            },
        ]
    }

    #[test]
    fn plain_messages_say_what_is_wrong_and_name_no_command() {
        for e in own_messages() {
            let msg = e.to_string();
            for command in [
                "thinlayer",
                "`",
                "--",
                "vm-tests",
                "modprobe",
                "thin_check",
                "dd ",
                "lvextend",
            ] {
                assert!(!msg.contains(command), "{msg:?} names {command:?}");
            }
            assert!(
                !msg.starts_with(|c: char| c.is_ascii_uppercase()),
                "{msg:?} is not lowercase"
            );
        }
        assert_eq!(
            Error::ThinDevicesRemain { count: 1 }.to_string(),
            "the pool still has 1 thin device; remove it first"
        );
        assert_eq!(
            Error::ThinDevicesRemain { count: 2 }.to_string(),
            "the pool still has 2 thin devices; remove them first"
        );
    }
}
