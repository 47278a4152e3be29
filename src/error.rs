//! thinlayer's errors, grouped by what the caller does next.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Anything the pool layer refused or failed at.
    #[error(transparent)]
    Pool(#[from] thinpool::Error),

    /// The state directory cannot be used.
    #[error("root {}: {reason}", .path.display())]
    Root { path: PathBuf, reason: String },

    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}
