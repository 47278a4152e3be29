//! The layer store: the graph of layers and images, shared by all drivers.
//!
//! ```text
//! <root>/<driver>/          e.g. <root>/thin
//!   lock                    flock: one command at a time on this store
//!   journal.json            the transaction in flight, if any
//!   layers/<id>.json        one record per layer (crate::layer::LayerRecord)
//!   layers/<id>.split       an image layer's changeset layout (crate::changeset::split)
//!   images/<id>.json        one record per image (ImageRecord)
//!   mnt/<id>/               where `layer mount` mounts a layer
//!   tmp/                    scratch mount points of running commands
//! ```
//!
//! # Transactions
//!
//! Every mutating operation is one [`Txn`] ([`Store::transaction`]):
//!
//! 1. **intent**: `journal.json` names the layers it will create and the
//!    layers and image it will remove ([`journal`]);
//! 2. **work**: the driver makes or frees resources (for the thin driver,
//!    thin devices tagged with their layer's id, each committed with the
//!    pool's `set_transaction_id`: see `thinpool::recovery`);
//! 3. **commit**: layer and image records are written (atomically), then
//!    the journal is removed.
//!
//! [`journal::recover`] runs whenever a store is opened and a journal is
//! present: a layer being created is undone whether or not its record was
//! written (the whole operation did not commit, so an import killed
//! half-way leaves none of its layers); removals are finished. Then the
//! driver frees resources no record claims, so there is never a thin device
//! without a layer, nor a layer without its device.
//!
//! The store's files: [`graph`] (finding layers, chains, names), [`layers`]
//! (layer operations), [`images`] (image records), [`txn`] (the
//! transaction API that those and `crate::image::import` use).

pub mod graph;
pub mod images;
pub mod journal;
pub mod layers;
pub mod txn;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinpool::lock::LockGuard;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::layer::{LayerId, LayerRecord};
use crate::mount;

pub use images::{normalize_image_name, ImageRecord};
pub use journal::Journal;
pub use layers::LayerDiff;
pub use txn::{ExpectDiffId, NewLayer, Txn};

/// What recovery did, for the user to see.
pub type Repairs = Vec<String>;

/// Layers and images of one driver, open and locked.
pub struct Store {
    dir: PathBuf,
    _lock: LockGuard,
    driver: Box<dyn Driver>,
    layers: BTreeMap<LayerId, LayerRecord>,
    images: BTreeMap<String, ImageRecord>,
    repairs: Repairs,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("driver", &self.driver.name())
            .field("layers", &self.layers.len())
            .field("images", &self.images.len())
            .finish()
    }
}

/// Takes the store's lock, making its directories (mode 0700).
pub fn lock_store(dir: &Path, timeout: Duration) -> Result<LockGuard> {
    for sub in ["", "layers", "images", "mnt", "tmp"] {
        let p = dir.join(sub);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&p)
            .map_err(Error::io("creating", &p))?;
    }
    Ok(LockGuard::acquire(&dir.join("lock"), timeout)?)
}

fn read_dir_records<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut out = vec![];
    let rd = fs::read_dir(dir).map_err(Error::io("listing", dir))?;
    for e in rd {
        let p = e.map_err(Error::io("listing", dir))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(r) = thinpool::record::read(&p)? {
                out.push(r);
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Opens the store in `dir` with `driver`, holding `lock` (from
    /// [`lock_store`]), and recovers whatever a killed command left.
    pub fn open(dir: &Path, lock: LockGuard, driver: Box<dyn Driver>) -> Result<Store> {
        let layers = read_dir_records::<LayerRecord>(&dir.join("layers"))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let images = read_dir_records::<ImageRecord>(&dir.join("images"))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            driver,
            layers,
            images,
            repairs: vec![],
        };
        store.recover()?;
        Ok(store)
    }

    /// What opening the store repaired.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// The driver's name (`thin`, `overlay`).
    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Every layer, by id.
    pub fn layers(&self) -> impl Iterator<Item = &LayerRecord> {
        self.layers.values()
    }

    /// Every image, by id.
    pub fn images(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(journal::FILE)
    }

    fn layer_path(&self, id: &LayerId) -> PathBuf {
        layer_path(&self.dir, id)
    }

    fn layout_path(&self, id: &LayerId) -> PathBuf {
        layout_path(&self.dir, id)
    }

    fn image_path(&self, id: &str) -> PathBuf {
        image_path(&self.dir, id)
    }

    /// Where `layer mount` mounts a layer.
    pub fn mount_point(&self, id: &LayerId) -> PathBuf {
        self.dir.join("mnt").join(id.as_str())
    }

    fn recover(&mut self) -> Result<()> {
        // Scratch mounts of a killed command.
        for m in mount::unmount_under(&self.dir.join("tmp"))? {
            self.repairs.push(format!("unmounted {}", m.display()));
        }
        if let Some(j) = thinpool::record::read::<Journal>(&self.journal_path())? {
            let done = journal::recover(
                &j,
                &mut self.layers,
                &mut self.images,
                self.driver.as_mut(),
                &self.dir,
            )?;
            self.repairs.extend(done);
            thinpool::record::remove(&self.journal_path())?;
        }
        self.sweep_files()?;
        let all: Vec<&LayerRecord> = self.layers.values().collect();
        let freed = self.driver.reconcile(&all)?;
        self.repairs.extend(
            freed
                .into_iter()
                .map(|f| format!("freed {f}, which no layer claimed")),
        );
        Ok(())
    }
}

impl Store {
    /// Removes files a killed command left beside the records: layouts
    /// of layers that have no record, configs of images that have none.
    fn sweep_files(&mut self) -> Result<()> {
        for (sub, ext) in [("layers", "split"), ("images", "config")] {
            let dir = self.dir.join(sub);
            let rd = fs::read_dir(&dir).map_err(Error::io("listing", &dir))?;
            for e in rd {
                let p = e.map_err(Error::io("listing", &dir))?.path();
                if p.extension().is_none_or(|x| x != ext) {
                    continue;
                }
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let owned = match sub {
                    "layers" => self.layers.keys().any(|k| k.as_str() == stem),
                    _ => self.images.contains_key(stem),
                };
                if !owned {
                    thinpool::record::remove(&p)?;
                    self.repairs
                        .push(format!("removed {}, which no record claimed", p.display()));
                }
            }
        }
        Ok(())
    }
}

fn layout_path(dir: &Path, id: &LayerId) -> PathBuf {
    dir.join("layers").join(format!("{id}.split"))
}

fn layer_path(dir: &Path, id: &LayerId) -> PathBuf {
    dir.join("layers").join(format!("{id}.json"))
}

fn image_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("images").join(format!("{id}.json"))
}
