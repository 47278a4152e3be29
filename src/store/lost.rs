//! Forgetting layers whose resource is gone for good (a pool repair that
//! could not save their thin devices): their records, their descendants'
//! (which stand on them) and the images that list any of them go, and
//! every one is reported. Run before the store is opened, since opening
//! refuses a layer whose device is missing.

use std::collections::BTreeSet;
use std::path::Path;

use super::images::{config_path, ImageRecord};
use super::{image_path, layer_path, layout_path, read_dir_records, StoreLock};
use crate::error::Result;
use crate::layer::{LayerId, LayerRecord};

/// Removes the records of layers `lost`, of every layer above them, and
/// of every image that lists one; holding the store's lock. Returns a line
/// for each record removed.
pub fn forget_layers(
    dir: &Path,
    _lock: &StoreLock,
    lost: &BTreeSet<LayerId>,
) -> Result<Vec<String>> {
    let layers = read_dir_records::<LayerRecord>(&dir.join("layers"))?;
    let mut gone: BTreeSet<LayerId> = lost.clone();
    // Descendants: repeat until no layer is added (chains are short).
    loop {
        let before = gone.len();
        for l in &layers {
            if l.parent.as_ref().is_some_and(|p| gone.contains(p)) {
                gone.insert(l.id.clone());
            }
        }
        if gone.len() == before {
            break;
        }
    }
    let mut said = vec![];
    for img in read_dir_records::<ImageRecord>(&dir.join("images"))? {
        if img.layers.iter().any(|l| gone.contains(l)) {
            thinpool::record::remove(&image_path(dir, &img.id))?;
            thinpool::record::remove(&config_path(dir, &img.id))?;
            said.push(format!("image {} lost layers, and is removed", img.label()));
        }
    }
    for l in layers.iter().filter(|l| gone.contains(&l.id)) {
        thinpool::record::remove(&layer_path(dir, &l.id))?;
        thinpool::record::remove(&layout_path(dir, &l.id))?;
        said.push(if lost.contains(&l.id) {
            format!("layer {} lost its device, and is removed", l.label())
        } else {
            format!("layer {} stood on a lost layer, and is removed", l.label())
        });
    }
    Ok(said)
}
