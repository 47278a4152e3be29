//! Operations on a whole root that span rooms: making the pool with the
//! thin driver's base filesystem, and destroying it with every container
//! and thin volume that lives in it. This room stands above the pool, the
//! stores and the containers, so none of those needs another's insides.

use thinpool::{Bytes, CreateOptions, Pool};

use crate::container::Containers;
use crate::driver::thin::{self, FsType, ThinDriver};
use crate::error::{Error, Result};
use crate::pool::{PoolHandle, ThinOwner};
use crate::root::{clear_store, Root};
use crate::store::lock_store;

/// Creates the pool and its base filesystem, making the root (mode 0700)
/// if needed. Bad options and a kernel without dm-thin are refused before
/// anything is made; a later failure undoes the pool and the store's
/// records, but never removes a directory or lock file that a concurrent
/// command may be using.
pub fn create_pool(
    root: &Root,
    opts: &CreateOptions,
    fs: FsType,
    base_size: Bytes,
) -> Result<Pool> {
    thin::check_base_size(base_size)?;
    thinpool::pool::check_create_options(opts)?;
    thinpool::kernel::open_dm()?;
    root.ensure()?;
    let dir = root.thin_dir();
    let _lock = lock_store(&dir, root.lock_timeout())?;
    let pool_exists = root.has_pool();
    if !pool_exists {
        // Records of a pool destroyed by a killed command.
        clear_store(&dir)?;
        ThinDriver::write_params(&dir, fs, base_size)?;
    }
    let pool = match Pool::create_with(&root.pool_dir(), opts, &root.open_options()) {
        Ok(p) => p,
        Err(e) if pool_exists => return Err(e.into()),
        Err(e) => return Err(Error::from(e).with_rollback(clear_store(&dir))),
    };
    let handle = PoolHandle::new(pool);
    match ThinDriver::open(handle.clone(), &dir) {
        Ok(driver) => {
            drop(driver);
            handle.into_inner().ok_or_else(|| Error::InUse {
                what: "the new pool".into(),
                reason: "another holder of its handle is still open".into(),
            })
        }
        Err(e) => {
            drop(handle);
            let undo = Pool::open_with(&root.pool_dir(), &root.open_options())
                .and_then(|p| p.destroy(true))
                .map_err(Error::from)
                .and_then(|()| clear_store(&dir));
            Err(e.with_rollback(undo))
        }
    }
}

/// Destroys the pool with every layer and image in it. Refused while
/// containers of the thin driver or thin volumes exist, or thin devices
/// other than the base, unless `force`. Returns the pool's id.
pub fn destroy_pool(root: &Root, force: bool) -> Result<String> {
    let dir = root.thin_dir();
    if !root.has_pool() {
        return Err(Error::NoPool {
            dir: root.pool_dir(),
        });
    }
    // Containers and thin volumes go with the pool: their lock first.
    let mut containers = Containers::open(root)?;
    let (ctrs, vols) = containers.pool_users()?;
    if !force && (!ctrs.is_empty() || !vols.is_empty()) {
        let names = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        return Err(Error::Precondition(format!(
            "the pool holds containers ({}) and thin volumes ({}); remove them first, or pass --force to destroy them with the pool",
            names(ctrs.iter().map(|c| c.name.clone()).collect()),
            names(vols.iter().map(|v| v.name.clone()).collect()),
        )));
    }
    containers.release_pool();
    let _lock = lock_store(&dir, root.lock_timeout())?;
    // Scratch mounts of a killed command hold devices open.
    crate::mount::unmount_under(&dir.join("tmp"))?;
    let pool = root.open_pool()?;
    let id = pool.record().id.to_string();
    let n = pool
        .thins()
        .values()
        .filter(|t| ThinOwner::parse(&t.tag) != Some(ThinOwner::Base))
        .count();
    if n > 0 && !force {
        return Err(Error::Precondition(format!(
            "the pool still has {n} thin device{} (layers); remove {} first, or pass --force to destroy {} with the pool",
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" },
            if n == 1 { "it" } else { "them" },
        )));
    }
    pool.destroy(true)?;
    clear_store(&dir)?;
    containers.forget(&ctrs, &vols)?;
    Ok(id)
}
