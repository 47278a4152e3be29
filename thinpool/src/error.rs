//! The thinpool crate's errors, grouped by what the caller does next.

use std::io;
use std::path::PathBuf;

use crate::lock::LockError;
use crate::record::RecordError;
use crate::units::ThinId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller asked for something impossible; nothing was changed.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    /// No pool has been created in this directory.
    #[error("no pool in {}: create one with `thinlayer pool create`", .dir.display())]
    NoPool { dir: PathBuf },

    /// `pool create` on a directory that already holds one.
    #[error("{} already holds pool {id}: use it, remove it with `thinlayer pool destroy`, or choose another --root", .dir.display())]
    PoolExists { dir: PathBuf, id: String },

    #[error("thin device {0} does not exist in this pool")]
    NoSuchThin(ThinId),

    /// Something is mounted, open or held; retry once it is released.
    #[error("{what} is in use: {hint}")]
    Busy { what: String, hint: String },

    #[error(transparent)]
    Lock(#[from] LockError),

    /// The running kernel cannot do device-mapper at all.
    #[error("this kernel has no device-mapper ({detail}); thinlayer needs the dm-thin target: on this machine run it in the VM with `vm-tests/run.sh -- thinlayer ...`")]
    NoDeviceMapper { detail: String },

    /// Device-mapper is there but the thin-pool target is not.
    #[error("the kernel's device-mapper has no thin-pool target (loaded: {targets}); load it with `modprobe dm-thin-pool`, or run thinlayer in the VM with `vm-tests/run.sh -- thinlayer ...`")]
    NoThinTarget { targets: String },

    #[error("the pool is not active: run `thinlayer pool activate`")]
    Inactive,

    /// The pool's state forbids the operation (full, read-only, has devices).
    #[error("{0}")]
    Precondition(String),

    /// A device-mapper ioctl failed.
    #[error("device-mapper {op}: {detail}")]
    Dm {
        op: String,
        errno: Option<i32>,
        detail: String,
    },

    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    Record(#[from] RecordError),

    /// What the kernel or the disk says disagrees with the pool's record.
    #[error("pool {what} does not match its record: {reason}; nothing was changed (inspect with `thin_check`, and restore the record or the devices)")]
    Mismatch { what: String, reason: String },

    /// A tool that owns a format (mkfs, thin_check) failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },

    /// An operation failed and undoing its partial work failed too; both
    /// are kept so the user knows what may be left.
    #[error("{causal}; undoing the partial work also failed: {rollback}")]
    Rollback {
        causal: Box<Error>,
        rollback: Box<Error>,
    },
}

impl Error {
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let (op, path) = (op.into(), path.into());
        move |source| Error::Io { op, path, source }
    }

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
