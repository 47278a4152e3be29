//! thinlayer's errors, grouped by what the caller does next.

use std::io;
use std::path::PathBuf;

/// A result with thinlayer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with, grouped by what the caller does
/// next: fix the input, remove or free something first, repair, retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Anything the pool layer refused or failed at.
    #[error(transparent)]
    Pool(#[from] thinpool::Error),

    /// No pool was created under the root.
    #[error("no pool in {}", .dir.display())]
    NoPool {
        /// Where the pool would be.
        dir: PathBuf,
    },

    /// The state forbids the operation until something else is done first
    /// (the reason says what).
    #[error("{0}")]
    Precondition(String),

    /// The state directory cannot be used.
    #[error("root {}: {reason}", .path.display())]
    Root {
        /// The root given.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// No object by that name or id.
    #[error("no {what} '{name}'{hint}")]
    NotFound {
        /// The kind of object (`layer`, `image`, `container`, `volume`).
        what: &'static str,
        /// The name or id asked for.
        name: String,
        /// Where to look, starting with `: `, or empty.
        hint: String,
    },

    /// A name or id prefix matching several objects.
    #[error("'{name}' matches several {what}s ({candidates}): give more of the id")]
    Ambiguous {
        /// The kind of object.
        what: &'static str,
        /// The prefix given.
        name: String,
        /// The short ids it matches.
        candidates: String,
    },

    /// The name is taken.
    #[error("a {what} named '{name}' already exists: choose another name or remove it first")]
    Exists {
        /// The kind of object.
        what: &'static str,
        /// The name taken.
        name: String,
    },

    /// The object is used by something that must go first.
    #[error("{what} is in use: {reason}")]
    InUse {
        /// The object, as messages name it.
        what: String,
        /// Who uses it, and what to do first.
        reason: String,
    },

    /// Bad input from the user; nothing was changed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was given (`layer name`, `size`, `volume spec`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A changeset (OCI layer tar) was refused or failed to apply.
    #[error(transparent)]
    Changeset(#[from] crate::changeset::ChangesetError),

    /// An image archive was refused.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    /// A record or the kernel's view disagrees with what the store expects.
    #[error("{what} is inconsistent: {reason}")]
    Corrupt {
        /// The object, as messages name it.
        what: String,
        /// What disagrees.
        reason: String,
    },

    /// A record could not be read or written.
    #[error(transparent)]
    Record(#[from] thinpool::record::RecordError),

    /// Another process holds a lock this operation needs.
    #[error(transparent)]
    Lock(#[from] thinpool::lock::LockError),

    /// A tool that owns a format (mkfs) failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The tool (and what it was doing).
        tool: String,
        /// Its stderr, or why it did not start.
        detail: String,
    },

    /// Something outside thinlayer (an NFS server, a tool waiting on one)
    /// did not answer in time; what was asked of it was given up and
    /// undone. Check it (the hint says what), then retry.
    #[error("{what} did not answer within {} s{hint}", .waited.as_secs())]
    TimedOut {
        /// Who did not answer, as messages name it.
        what: String,
        /// How long it was given.
        waited: std::time::Duration,
        /// What to check, starting with `: `, or empty.
        hint: String,
    },

    /// A file operation failed.
    #[error("{op} {}: {source}", .path.display())]
    Io {
        /// What was being done (`creating`, `reading`, ...).
        op: String,
        /// The file it was done to.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// An operation failed and undoing it failed too.
    #[error("{causal}; undoing the partial work also failed: {rollback}")]
    Rollback {
        /// Why the operation failed.
        causal: Box<Error>,
        /// Why undoing it failed.
        rollback: Box<Error>,
    },
}

impl Error {
    /// An [`Error::Io`] maker for `map_err`: `op` on `path`.
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let (op, path) = (op.into(), path.into());
        move |source| Error::Io { op, path, source }
    }

    /// An [`Error::Invalid`]: bad input `what`, because `reason`.
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// The result of work done between a setup and its cleanup (a mount
    /// and its unmount): the work's error first, else the cleanups'.
    pub fn after_cleanup<T>(
        work: Result<T>,
        cleanups: impl IntoIterator<Item = Result<()>>,
    ) -> Result<T> {
        let cleanups: Vec<Result<()>> = cleanups.into_iter().collect();
        let value = work?;
        cleanups.into_iter().collect::<Result<()>>()?;
        Ok(value)
    }

    /// Keeps both errors when undoing a failed operation fails too.
    pub fn with_rollback(self, rollback: Result<()>) -> Error {
        match rollback {
            Ok(()) => self,
            Err(r) => Error::Rollback {
                causal: Box::new(self),
                rollback: Box::new(r),
            },
        }
    }
}
