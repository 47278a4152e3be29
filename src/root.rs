//! The state directory (`--root`, env `THINLAYER_ROOT`).
//!
//! ```text
//! <root>/          mode 0700
//!   pool/          the thin pool (see thinpool::pool for its files)
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinpool::{CreateOptions, Pool, PoolOpenOptions};

use crate::error::{Error, Result};

/// Where thinlayer keeps its state when no root is given.
pub const DEFAULT_ROOT: &str = "/var/lib/thinlayer";

/// A thinlayer state directory.
#[derive(Clone, Debug)]
pub struct Root {
    path: PathBuf,
    lock_timeout: Duration,
}

impl Root {
    /// A root at `path` (made absolute against the current directory, since
    /// paths under it are recorded). Nothing is created yet.
    pub fn new(path: &Path) -> Result<Root> {
        let path = std::path::absolute(path).map_err(|source| Error::Io {
            op: "resolving".into(),
            path: path.to_path_buf(),
            source,
        })?;
        if path.exists() && !path.is_dir() {
            return Err(Error::Root {
                path,
                reason: "exists and is not a directory".into(),
            });
        }
        Ok(Root {
            path,
            lock_timeout: thinpool::pool::DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// How long to wait for another thinlayer process on this root.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Root {
        self.lock_timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.path.join("pool")
    }

    fn open_options(&self) -> PoolOpenOptions {
        PoolOpenOptions {
            lock_timeout: self.lock_timeout,
        }
    }

    /// Creates the pool, making the root (mode 0700) if needed; a root this
    /// call made is removed again if the pool cannot be created.
    pub fn create_pool(&self, opts: &CreateOptions) -> Result<Pool> {
        let made = !self.path.exists();
        let result = self.ensure().and_then(|()| {
            Pool::create_with(&self.pool_dir(), opts, &self.open_options()).map_err(Error::from)
        });
        if result.is_err() && made {
            let _ = fs::remove_dir(&self.path);
        }
        result
    }

    /// Opens the pool (finishing whatever a killed command left in flight).
    pub fn open_pool(&self) -> Result<Pool> {
        Ok(Pool::open_with(&self.pool_dir(), &self.open_options())?)
    }

    fn ensure(&self) -> Result<()> {
        let io_err = |op: &str| {
            let path = self.path.clone();
            let op = op.to_string();
            move |source: io::Error| Error::Io { op, path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(io_err("creating"))?;
        let mode = fs::metadata(&self.path)
            .map_err(io_err("inspecting"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restricting the mode of"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_root_is_made_absolute_and_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = Root::new(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let r = Root::new(Path::new("relative/root")).unwrap();
        assert!(r.path().is_absolute());
        assert_eq!(r.pool_dir(), r.path().join("pool"));
    }

    #[test]
    fn plain_open_pool_on_an_empty_root_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Root::new(dir.path())
            .unwrap()
            .open_pool()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no pool in") && err.contains("thinlayer pool create"),
            "{err}"
        );
    }
}
