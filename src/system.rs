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

/// One row of `system df`: a kind of object and the space it takes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DfRow {
    /// `images`, `containers`, `layers` (outside images and containers)
    /// or `volumes`.
    pub kind: &'static str,
    /// How many there are.
    pub total: usize,
    /// How many are in use: images a container runs, mounted containers,
    /// layers something keeps, volumes a container mounts.
    pub active: usize,
    /// Bytes only they hold (a layer's blocks or files no other layer
    /// shares; a volume's data).
    pub size_bytes: u64,
    /// Bytes their layers share with other layers (counted once per
    /// layer, so shared blocks may be counted more than once).
    pub shared_bytes: u64,
    /// Of `size_bytes`, what removing the unused ones frees (`image rm`,
    /// `container rm`, `layer prune`, `volume prune --all`); for layers
    /// in a chain, at least this much.
    pub reclaimable_bytes: u64,
}

/// The thin pool's space, for `system df`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolSpace {
    /// Data space allocated (`None` while the pool is inactive).
    pub data_used_bytes: Option<u64>,
    /// Data space in all.
    pub data_total_bytes: u64,
    /// Metadata space allocated (`None` while inactive).
    pub metadata_used_bytes: Option<u64>,
    /// Metadata space in all.
    pub metadata_total_bytes: u64,
}

/// What `system df` shows for one driver's store, its containers, every
/// volume, and the pool.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiskUsage {
    /// The store's driver.
    pub driver: crate::driver::DriverKind,
    /// Images, containers, layers, volumes.
    pub rows: Vec<DfRow>,
    /// The pool, if the root has one.
    pub pool: Option<PoolSpace>,
}

/// Measures what images, containers, other layers and volumes take in
/// `driver`'s store, and the pool's space.
pub fn disk_usage(
    root: &Root,
    driver: crate::driver::DriverKind,
    overlay: &crate::driver::overlay::OverlayOptions,
) -> Result<DiskUsage> {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::layer::LayerId;
    // Containers first: their lock comes before the store's.
    let (containers, volumes) = {
        let mut c = Containers::open(root)?;
        let list: Vec<_> = c
            .list()?
            .into_iter()
            .filter(|i| i.record.driver == driver)
            .collect();
        (list, c.volume_list(None)?)
    };
    let mut store = root.open_store(driver, overlay)?;
    // Every set is taken from one read of the store, before `usage`: that
    // lets go of the store's lock and reads the records again after, so a
    // layer could be made or removed between a set taken before it and
    // one taken after. A container listed above whose layer is gone was
    // removed since: it holds no layer of this read.
    let ids: Vec<LayerId> = store.layers().map(|l| l.id.clone()).collect();
    let in_use: BTreeSet<&str> = containers
        .iter()
        .filter_map(|c| c.record.image.as_deref())
        .collect();
    let mut image_layers = BTreeSet::new();
    let mut active_layers = BTreeSet::new();
    let mut active_images = 0;
    let mut image_count = 0;
    for img in store.images() {
        image_count += 1;
        image_layers.extend(img.layers.iter().cloned());
        if in_use.contains(img.id.as_str()) {
            active_images += 1;
            active_layers.extend(img.layers.iter().cloned());
        }
    }
    // A container made from a layer keeps that layer's chain too.
    for c in &containers {
        if let Some(parent) = store.get(&c.record.parent) {
            for l in store.chain(&parent.id)? {
                active_layers.insert(l.id.clone());
            }
        }
    }
    let unused_image_layers: BTreeSet<LayerId> =
        image_layers.difference(&active_layers).cloned().collect();
    let layers_of = |cs: &mut dyn Iterator<Item = &crate::container::ContainerInfo>| {
        cs.flat_map(|c| c.record.layers.iter().cloned())
            .collect::<BTreeSet<LayerId>>()
    };
    let container_layers = layers_of(&mut containers.iter());
    let idle_layers = layers_of(&mut containers.iter().filter(|c| !c.mounted));
    let other: BTreeSet<LayerId> = store
        .layers()
        .filter(|l| {
            !image_layers.contains(&l.id)
                && l.container.is_none()
                && !container_layers.contains(&l.id)
        })
        .map(|l| l.id.clone())
        .collect();
    let prunable: BTreeSet<LayerId> = store.prunable()?.into_iter().collect();

    let usage: BTreeMap<LayerId, crate::driver::Usage> =
        ids.iter().cloned().zip(store.usage(&ids)?).collect();
    drop(store);
    let sum = |set: &BTreeSet<LayerId>, f: fn(&crate::driver::Usage) -> u64| -> u64 {
        set.iter().filter_map(|id| usage.get(id)).map(f).sum()
    };
    let excl = |u: &crate::driver::Usage| u.exclusive_bytes;
    let shared = |u: &crate::driver::Usage| u.shared_bytes;
    // A row of layers: what `set` takes, and what removing `reclaimable` frees.
    let row =
        |kind, total, active, set: &BTreeSet<LayerId>, reclaimable: &BTreeSet<LayerId>| DfRow {
            kind,
            total,
            active,
            size_bytes: sum(set, excl),
            shared_bytes: sum(set, shared),
            reclaimable_bytes: sum(reclaimable, excl),
        };
    let images = row(
        "images",
        image_count,
        active_images,
        &image_layers,
        &unused_image_layers,
    );
    let containers_row = row(
        "containers",
        containers.len(),
        containers.iter().filter(|c| c.mounted).count(),
        &container_layers,
        &idle_layers,
    );
    let layers = row(
        "layers",
        other.len(),
        other.difference(&prunable).count(),
        &other,
        &prunable.intersection(&other).cloned().collect(),
    );

    let vol_size = |v: &crate::container::VolumeInfo| v.size_bytes.unwrap_or(0);
    let volumes_row = DfRow {
        kind: "volumes",
        total: volumes.len(),
        active: volumes.iter().filter(|v| !v.used_by.is_empty()).count(),
        size_bytes: volumes.iter().map(vol_size).sum(),
        shared_bytes: 0,
        reclaimable_bytes: volumes
            .iter()
            .filter(|v| v.used_by.is_empty())
            .map(vol_size)
            .sum(),
    };

    let pool = if root.has_pool() {
        let st = root.open_pool()?.status()?;
        Some(PoolSpace {
            data_used_bytes: st.data.used_bytes.map(|b| b.0),
            data_total_bytes: st.data.total_bytes.0,
            metadata_used_bytes: st.metadata.used_bytes.map(|b| b.0),
            metadata_total_bytes: st.metadata.total_bytes.0,
        })
    } else {
        None
    };
    Ok(DiskUsage {
        driver,
        rows: vec![images, containers_row, layers, volumes_row],
        pool,
    })
}

/// What `pool repair` did, for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolRepair {
    /// Where the damaged metadata was kept.
    pub damaged_copy: std::path::PathBuf,
    /// What was lost: thin devices the repair could not save, and the
    /// records removed because of them.
    pub lost: Vec<String>,
    /// Thin ids the metadata had that no record named, now freed.
    pub freed: Vec<thinpool::ThinId>,
}

/// Repairs the pool's metadata ([`Pool::repair`]), then removes the thin
/// store's records of layers whose devices were lost (with the layers
/// above them and the images that list them), so the store opens again.
/// Thin volumes that lost their device are reported; `volume rm` removes
/// them.
pub fn repair_pool(root: &Root) -> Result<PoolRepair> {
    let lock = lock_store(&root.thin_dir(), root.lock_timeout())?;
    let mut pool = root.open_pool()?;
    let r = pool.repair()?;
    drop(pool);
    let mut lost = vec![];
    let mut layers = std::collections::BTreeSet::new();
    for (id, tag) in &r.lost {
        lost.push(format!("thin device {id} ({tag})"));
        match ThinOwner::parse(tag) {
            Some(ThinOwner::Layer(l)) => {
                layers.insert(l);
            }
            Some(ThinOwner::Volume(v)) => lost.push(format!(
                "thin volume {v} lost its device; remove it with `thinlayer volume rm {v}`"
            )),
            Some(ThinOwner::Base) => lost
                .push("the base filesystem's device; new parentless layers need a new pool".into()),
            None => {}
        }
    }
    if !layers.is_empty() {
        lost.extend(crate::store::lost::forget_layers(
            &root.thin_dir(),
            &lock,
            &layers,
        )?);
    }
    Ok(PoolRepair {
        damaged_copy: r.damaged_copy,
        lost,
        freed: r.freed,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::container::{Containers, NewContainer};
    use crate::driver::fake::Fake;
    use crate::driver::DriverKind;
    use crate::root::Root;

    /// A container and the layer it was made from, removed while
    /// `disk_usage` waits for its driver's usage (which it asks without the
    /// store's lock): the report counts what its one read of the store
    /// had, and does not fail on the layer that went.
    #[test]
    fn plain_disk_usage_counts_one_read_while_a_container_and_its_layer_go() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let root = || {
            Root::new(t.path())
                .unwrap()
                .with_lock_timeout(Duration::from_secs(20))
                .with_fake_driver(fake.clone())
        };
        let store = || root().open_store(DriverKind::Overlay, &Default::default());
        store()
            .unwrap()
            .create_layer(None, Some("base"), None)
            .unwrap();
        let req = NewContainer {
            name: Some("web".into()),
            layer: Some("base".into()),
            driver: DriverKind::Overlay,
            ..NewContainer::default()
        };
        Containers::open(&root()).unwrap().create(&req).unwrap();

        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        fake.state().hold_next_usage = Some((started_tx, go_rx));
        let df = std::thread::scope(|s| {
            let df =
                s.spawn(|| super::disk_usage(&root(), DriverKind::Overlay, &Default::default()));
            started
                .recv_timeout(Duration::from_secs(20))
                .expect("system df never asked its driver for usage");
            // Meanwhile the container goes, then its init layer and the
            // layer it was made from.
            Containers::open(&root())
                .unwrap()
                .remove("web", false, false)
                .unwrap();
            let mut st = store().unwrap();
            st.prune().unwrap();
            st.remove_layer("base").unwrap();
            assert_eq!(st.layers().count(), 0);
            drop(st);
            go.send(()).unwrap();
            df.join().unwrap()
        });
        let df = df.expect("system df failed on a layer removed while it ran");
        let row = |kind: &str| df.rows.iter().find(|r| r.kind == kind).unwrap().clone();
        // What its read had: the container, its two layers, and the base.
        assert_eq!((row("containers").total, row("containers").active), (1, 0));
        assert_eq!(row("layers").total, 1, "{df:?}");
        assert_eq!(row("images").total, 0);
    }
}
