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

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinpool::{Bytes, CreateOptions, Pool, PoolOpenOptions};

use crate::driver::overlay::{OverlayDriver, OverlayOptions};
use crate::driver::thin::{FsType, ThinDriver};
use crate::error::{Error, Result};
use crate::store::{lock_store, Store};

/// Which driver's store a command works on (`--driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriverKind {
    /// Layers are thin snapshots in the pool.
    #[default]
    Thin,
    /// Layers are directories stacked with overlayfs.
    Overlay,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Thin => "thin",
            DriverKind::Overlay => "overlay",
        }
    }
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "thin" => Ok(DriverKind::Thin),
            "overlay" => Ok(DriverKind::Overlay),
            _ => Err(format!("'{s}' is not a driver: use thin or overlay")),
        }
    }
}

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

    pub fn pool_dir(&self) -> PathBuf {
        self.path.join("pool")
    }

    /// The thin driver's store directory.
    pub fn thin_dir(&self) -> PathBuf {
        self.path.join("thin")
    }

    fn open_options(&self) -> PoolOpenOptions {
        PoolOpenOptions {
            lock_timeout: self.lock_timeout,
        }
    }

    /// Creates the pool and its base filesystem, making the root (mode
    /// 0700) if needed. Bad options and a kernel without dm-thin are refused
    /// before anything is made; a later failure undoes the pool and the
    /// store's records, but never removes a directory or lock file that a
    /// concurrent command may be using.
    pub fn create_pool(&self, opts: &CreateOptions, fs: FsType, base_size: Bytes) -> Result<Pool> {
        crate::driver::thin::check_base_size(base_size)?;
        thinpool::pool::check_create_options(opts)?;
        thinpool::kernel::open_dm()?;
        self.ensure()?;
        let dir = self.thin_dir();
        let _lock = lock_store(&dir, self.lock_timeout)?;
        let pool_exists = self.pool_dir().join(thinpool::pool::RECORD_FILE).exists();
        if !pool_exists {
            // Records of a pool destroyed by a killed command.
            clear_store(&dir)?;
            ThinDriver::write_params(&dir, fs, base_size)?;
        }
        let pool = match Pool::create_with(&self.pool_dir(), opts, &self.open_options()) {
            Ok(p) => p,
            Err(e) if pool_exists => return Err(e.into()),
            Err(e) => return Err(Error::from(e).with_rollback(clear_store(&dir))),
        };
        match ThinDriver::open(pool, &dir) {
            Ok(d) => Ok(d.into_pool()),
            Err(e) => {
                let undo = Pool::open_with(&self.pool_dir(), &self.open_options())
                    .and_then(|p| p.destroy(true))
                    .map_err(Error::from)
                    .and_then(|()| clear_store(&dir));
                Err(e.with_rollback(undo))
            }
        }
    }

    /// Opens the pool (finishing whatever a killed command left in flight).
    pub fn open_pool(&self) -> Result<Pool> {
        Ok(Pool::open_with(&self.pool_dir(), &self.open_options())?)
    }

    /// Opens the layer store of `driver`.
    pub fn open_store(&self, driver: DriverKind, overlay: &OverlayOptions) -> Result<Store> {
        match driver {
            DriverKind::Thin => self.open_thin_store(),
            DriverKind::Overlay => self.open_overlay_store(overlay),
        }
    }

    /// The overlay driver's store directory.
    pub fn overlay_dir(&self) -> PathBuf {
        self.path.join("overlay")
    }

    /// Opens the overlay driver's layer store (no pool needed).
    pub fn open_overlay_store(&self, options: &OverlayOptions) -> Result<Store> {
        self.ensure()?;
        let dir = self.overlay_dir();
        let lock = lock_store(&dir, self.lock_timeout)?;
        let mut driver = OverlayDriver::open(&dir)?;
        driver.options = options.clone();
        Store::open(&dir, lock, Box::new(driver))
    }

    /// Opens the thin driver's layer store over the active pool.
    pub fn open_thin_store(&self) -> Result<Store> {
        // Fail before making the store's directories when there is no pool.
        if !self.pool_dir().join(thinpool::pool::RECORD_FILE).exists() {
            return Err(thinpool::Error::NoPool {
                dir: self.pool_dir(),
            }
            .into());
        }
        let dir = self.thin_dir();
        let lock = lock_store(&dir, self.lock_timeout)?;
        let driver = ThinDriver::open(self.open_pool()?, &dir)?;
        Store::open(&dir, lock, Box::new(driver))
    }

    /// Destroys the pool with every layer and image in it. Refused while
    /// thin devices other than the base exist, unless `force`.
    pub fn destroy_pool(&self, force: bool) -> Result<String> {
        let dir = self.thin_dir();
        if !self.pool_dir().join(thinpool::pool::RECORD_FILE).exists() {
            return Err(thinpool::Error::NoPool {
                dir: self.pool_dir(),
            }
            .into());
        }
        // Containers and thin volumes go with the pool: their lock first.
        let mut containers = crate::container::Containers::open(self)?;
        let (ctrs, vols) = containers.pool_users()?;
        if !force && (!ctrs.is_empty() || !vols.is_empty()) {
            let names = |v: Vec<String>| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.join(", ")
                }
            };
            return Err(thinpool::Error::Precondition(format!(
                "the pool holds containers ({}) and thin volumes ({}); remove them first, or pass --force to destroy them with the pool",
                names(ctrs.iter().map(|c| c.name.clone()).collect()),
                names(vols.iter().map(|v| v.name.clone()).collect()),
            ))
            .into());
        }
        containers.release_pool();
        let _lock = lock_store(&dir, self.lock_timeout)?;
        let pool = self.open_pool()?;
        let id = pool.record().id.to_string();
        let n = pool
            .thins()
            .values()
            .filter(|t| t.tag != crate::driver::thin::BASE_TAG)
            .count();
        if n > 0 && !force {
            return Err(thinpool::Error::Precondition(format!(
                "the pool still has {n} thin device{} (layers); remove {} first, or pass --force to destroy {} with the pool",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" },
                if n == 1 { "it" } else { "them" },
            ))
            .into());
        }
        pool.destroy(true)?;
        clear_store(&dir)?;
        containers.forget(&ctrs, &vols)?;
        Ok(id)
    }

    pub(crate) fn ensure(&self) -> Result<()> {
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
fn clear_store(dir: &Path) -> Result<()> {
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
        assert!(
            err.contains("no pool in") && err.contains("thinlayer pool create"),
            "{err}"
        );
        let err = Root::new(dir.path())
            .unwrap()
            .open_thin_store()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no pool in"), "{err}");
        assert!(!dir.path().join("thin").exists());
    }
}
