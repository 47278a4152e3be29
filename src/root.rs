//! The state directory (`--root`, env `THINLAYER_ROOT`).
//!
//! ```text
//! <root>/          mode 0700
//!   pool/          the thin pool (see thinpool::pool for its files)
//!   thin/          the thin driver's layer store (see crate::store)
//!   overlay/       the overlay driver's layer store and layer directories
//!   containers/    containers of both drivers, and the lock that guards
//!                  them and the volumes (see crate::container)
//!   volumes/       volumes, shared by the containers of both drivers
//! ```
//!
//! Locks are always taken in this order, so two commands never wait on
//! each other: `containers/lock`, then a store's lock, then the pool's.
//! The thin store's pool is opened before its store's lock is taken, and
//! holds the pool's lock only while it opens (`Pool::open_shared`): no
//! pool lock is held when the store's is taken.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinpool::{Pool, PoolOpenOptions};

use crate::driver::overlay::{OverlayDriver, OverlayOptions};
use crate::driver::thin::ThinDriver;
use crate::driver::DriverKind;
use crate::error::{Error, Result};
use crate::pool::PoolHandle;
use crate::store::{lock_store, Store};

/// Where thinlayer keeps its state when no root is given.
pub const DEFAULT_ROOT: &str = "/var/lib/thinlayer";

/// A thinlayer state directory.
#[derive(Clone, Debug)]
pub struct Root {
    path: PathBuf,
    lock_timeout: Duration,
    /// Tests: every store is opened over this in-memory driver instead.
    #[cfg(test)]
    fake: Option<crate::driver::fake::Fake>,
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
            #[cfg(test)]
            fake: None,
        })
    }

    /// Tests: open every store over `fake` (no pool, no mounts).
    #[cfg(test)]
    pub(crate) fn with_fake_driver(mut self, fake: crate::driver::fake::Fake) -> Root {
        self.fake = Some(fake);
        self
    }

    /// How long to wait for another thinlayer process on this root.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Root {
        self.lock_timeout = timeout;
        self
    }

    /// The root directory (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long commands wait for another process's lock on this root.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// Containers and their lock (see [`crate::container`]).
    pub fn containers_dir(&self) -> PathBuf {
        self.path.join("containers")
    }

    /// Volumes (see [`crate::volume`]).
    pub fn volumes_dir(&self) -> PathBuf {
        self.path.join("volumes")
    }

    /// The pool's directory.
    pub fn pool_dir(&self) -> PathBuf {
        self.path.join("pool")
    }

    /// The thin driver's store directory.
    pub fn thin_dir(&self) -> PathBuf {
        self.path.join("thin")
    }

    /// Whether a pool was created under this root (its record exists).
    pub fn has_pool(&self) -> bool {
        self.pool_dir().join(thinpool::pool::RECORD_FILE).exists()
    }

    pub(crate) fn open_options(&self) -> PoolOpenOptions {
        PoolOpenOptions {
            lock_timeout: self.lock_timeout,
        }
    }

    /// Opens the pool (finishing whatever a killed command left in flight).
    pub fn open_pool(&self) -> Result<Pool> {
        Ok(Pool::open_with(&self.pool_dir(), &self.open_options())?)
    }

    /// Opens the layer store of `driver` (overlay stores mount with
    /// `overlay`).
    pub fn open_store(&self, driver: DriverKind, overlay: &OverlayOptions) -> Result<Store> {
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            self.ensure()?;
            let dir = self.path.join(driver.as_str());
            let lock = lock_store(&dir, self.lock_timeout)?;
            return Store::open(&dir, lock, Box::new(fake.clone()));
        }
        match driver {
            DriverKind::Thin => Ok(self.open_thin_store()?.0),
            DriverKind::Overlay => self.open_overlay_store(overlay),
        }
    }

    /// The overlay driver's store directory.
    pub fn overlay_dir(&self) -> PathBuf {
        self.path.join("overlay")
    }

    /// Opens the overlay driver's layer store (no pool needed).
    pub fn open_overlay_store(&self, options: &OverlayOptions) -> Result<Store> {
        let _phase = tracing::trace_span!(crate::phase::STORE_OPEN).entered();
        self.ensure()?;
        let dir = self.overlay_dir();
        let lock = lock_store(&dir, self.lock_timeout)?;
        let driver = OverlayDriver::open(&dir, options.clone())?;
        Store::open(&dir, lock, Box::new(driver))
    }

    /// Opens the thin driver's layer store over the active pool, and the
    /// handle to that pool, for whatever else needs it beside the store
    /// (thin volumes). Locks: the pool's while it is opened, then the
    /// store's (and the pool's again for each change to it).
    pub fn open_thin_store(&self) -> Result<(Store, PoolHandle)> {
        #[cfg(test)]
        if self.fake.is_some() {
            return Err(Error::NoPool {
                dir: self.pool_dir(),
            });
        }
        // Fail before making the store's directories when there is no pool.
        if !self.has_pool() {
            return Err(Error::NoPool {
                dir: self.pool_dir(),
            });
        }
        let _phase = tracing::trace_span!(crate::phase::STORE_OPEN).entered();
        let dir = self.thin_dir();
        // The pool first, shared: each change to it takes its lock for
        // itself only, beside other processes' changes, and an active pool
        // with nothing to finish is taken over beside other processes
        // opening it (`Pool::open_shared`). It holds no lock once open, so
        // it is opened before the store's lock is taken, not under it.
        let pool = PoolHandle::new(Pool::open_shared(&self.pool_dir(), &self.open_options())?);
        // The store's lock keeps the base, should it be made here, this
        // process's.
        let lock = lock_store(&dir, self.lock_timeout)?;
        let driver = ThinDriver::open(pool.clone(), &dir)?;
        Ok((Store::open(&dir, lock, Box::new(driver))?, pool))
    }

    /// Makes the root (mode 0700) if missing, and restricts its mode.
    pub fn ensure(&self) -> Result<()> {
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

/// Removes a store's records (not its lock), after its pool is gone.
pub(crate) fn clear_store(dir: &Path) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "lock") {
            continue;
        }
        let r = if p.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(Error::io("removing", &p))?;
    }
    Ok(())
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
        // The command to type is the CLI's to add (tests/cli_pool.rs).
        assert!(err.contains("no pool in"), "{err}");
        let err = Root::new(dir.path())
            .unwrap()
            .open_thin_store()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no pool in"), "{err}");
        assert!(!dir.path().join("thin").exists());
    }
}
