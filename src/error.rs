//! thinlayer's errors, grouped by what the caller does next.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    Root { path: PathBuf, reason: String },

    /// No object by that name or id.
    #[error("no {what} '{name}'{hint}")]
    NotFound {
        what: &'static str,
        name: String,
        hint: String,
    },

    /// A name or id prefix matching several objects.
    #[error("'{name}' matches several {what}s ({candidates}): give more of the id")]
    Ambiguous {
        what: &'static str,
        name: String,
        candidates: String,
    },

    /// The name is taken.
    #[error("a {what} named '{name}' already exists: choose another name or remove it first")]
    Exists { what: &'static str, name: String },

    /// The object is used by something that must go first.
    #[error("{what} is in use: {reason}")]
    InUse { what: String, reason: String },

    /// Bad input from the user; nothing was changed.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error(transparent)]
    Changeset(#[from] crate::changeset::ChangesetError),

    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    /// A record or the kernel's view disagrees with what the store expects.
    #[error("{what} is inconsistent: {reason}")]
    Corrupt { what: String, reason: String },

    #[error(transparent)]
    Record(#[from] thinpool::record::RecordError),

    #[error(transparent)]
    Lock(#[from] thinpool::lock::LockError),

    /// A tool that owns a format (mkfs) failed.
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },

    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// An operation failed and undoing it failed too.
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
