//! Journals: one per transaction in flight (`journals/<txn>.json`), and
//! how the next open finishes or undoes the journal of a killed one.
//!
//! A transaction holds an flock on `journals/<txn>.lock` from before its
//! journal is written until after it is removed. The kernel drops the lock
//! when the process dies, so a journal whose lock can be taken belongs to a
//! dead transaction and is recovered; one whose lock is held belongs to a
//! live one, whose [`Journal::claims`] and removals others respect.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{image_path, layer_path, ImageRecord, Repairs};
use crate::driver::Driver;
use crate::error::Result;
use crate::layer::{LayerId, LayerRecord};
use crate::util::ids::short;

/// The journal of a store written before there was one per transaction:
/// recovered like any dead transaction's.
pub const LEGACY_FILE: &str = "journal.json";

/// The directory of the journals, in the store directory.
pub const DIR: &str = "journals";

/// What a layer being made will be: other transactions neither take its
/// name or snapshot key nor remove its parent while it is made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Its parent.
    #[serde(default)]
    pub parent: Option<LayerId>,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its snapshot key (containerd's).
    #[serde(default)]
    pub key: Option<String>,
}

/// One transaction in flight (`journals/<txn>.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// What the command was doing, for messages.
    pub op: String,
    /// Layers being created, in order.
    #[serde(default)]
    pub create: Vec<LayerId>,
    /// Layers being removed.
    #[serde(default)]
    pub remove: Vec<LayerId>,
    /// An image being created (undone) ...
    #[serde(default)]
    pub create_image: Option<String>,
    /// ... or removed (finished).
    #[serde(default)]
    pub remove_image: Option<String>,
    /// What the layers being created will be, once the transaction knows.
    #[serde(default)]
    pub claims: BTreeMap<LayerId, Claim>,
}

/// Finishes or undoes the transaction in `j`, given the records as they
/// are on disk. Pure but for the driver and record files, so every
/// kill point can be replayed in a test.
pub fn recover(
    j: &Journal,
    layers: &mut BTreeMap<LayerId, LayerRecord>,
    images: &mut BTreeMap<String, ImageRecord>,
    driver: &mut dyn Driver,
    dir: &Path,
) -> Result<Repairs> {
    let mut done = vec![];
    // An image being created is dropped: its layers go below.
    if let Some(img) = &j.create_image {
        if images.remove(img).is_some() {
            thinpool::record::remove(&image_path(dir, img))?;
        }
    }
    if let Some(img) = &j.remove_image {
        if images.remove(img).is_some() {
            thinpool::record::remove(&image_path(dir, img))?;
        }
        done.push(format!("finished removing image {}", short(img)));
    }
    // Layers being created, newest first: the transaction did not commit.
    undo_creates(&j.create, layers, driver, dir)?;
    for id in j.create.iter().rev() {
        done.push(format!(
            "undid the creation of layer {} ({})",
            id.short(),
            j.op
        ));
    }
    for id in &j.remove {
        if let Some(rec) = layers.remove(id) {
            driver.remove(&rec)?;
        }
        thinpool::record::remove(&layer_path(dir, id))?;
        done.push(format!("finished removing layer {} ({})", id.short(), j.op));
    }
    Ok(done)
}

/// Removes the layers a transaction created (records and resources),
/// newest first; a layer with no record has its orphan resource freed.
pub(super) fn undo_creates(
    ids: &[LayerId],
    layers: &mut BTreeMap<LayerId, LayerRecord>,
    driver: &mut dyn Driver,
    dir: &Path,
) -> Result<()> {
    for id in ids.iter().rev() {
        match layers.remove(id) {
            Some(rec) => driver.remove(&rec)?,
            None => driver.remove_orphan(id)?,
        }
        thinpool::record::remove(&layer_path(dir, id))?;
        thinpool::record::remove(&super::layout_path(dir, id))?;
    }
    Ok(())
}
