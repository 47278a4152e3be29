//! Importing images into a store: every image of a `docker save` archive or
//! an OCI layout becomes layers (reused by chain id when already there) and
//! an image record, in one store transaction per image. This room stands on
//! the image formats ([`crate::image`]) and the store, which know nothing
//! of each other.

mod ahead;

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{ImageArchive, ImageManifest};
use crate::layer::LayerId;
use crate::progress::Progress;
use crate::store::{normalize_image_name, ExpectDiffId, ImageRecord, NewLayer, Store, Txn};
use crate::util::ids::short;
use crate::util::time::now_unix;
use ahead::DiffIdCheck;

/// Imports every image in a `docker save` archive or OCI layout (tar or
/// directory) at `path`. Layers already in the store (same chain id) are
/// reused. `name` replaces the archive's names (and needs an archive of one
/// image). Returns the image ids. An image whose import fails leaves none
/// of its new layers.
pub fn import_image(
    store: &mut Store,
    path: &Path,
    name: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let name = name.map(normalize_image_name).transpose()?;
    let (path, reference) = split_reference(path);
    let archive = ImageArchive::open(&path)?;
    let chosen: Vec<&ImageManifest> = archive
        .images()
        .iter()
        .filter(|m| reference.as_ref().is_none_or(|r| names_reference(m, r)))
        .collect();
    if chosen.is_empty() {
        return Err(match &reference {
            Some(r) => Error::NotFound {
                what: "image",
                name: r.clone(),
                hint: format!(" in {}", path.display()),
            },
            None => Error::invalid(
                "image archive",
                format!("{} holds no image", path.display()),
            ),
        });
    }
    if name.is_some() && chosen.len() > 1 {
        return Err(Error::invalid(
            "image name",
            format!(
                "{} holds {} images; --name needs exactly one",
                path.display(),
                chosen.len()
            ),
        ));
    }
    let mut ids = vec![];
    for m in chosen {
        let names = match &name {
            Some(n) => vec![n.clone()],
            None => m
                .names
                .iter()
                .map(|n| normalize_image_name(n))
                .collect::<Result<_>>()?,
        };
        let id = m.config_digest.hex().to_string();
        store.transaction(format!("import image {}", short(&id)), |txn| {
            txn.intend_image(&id)?;
            let layers = import_layers(txn, &archive, m, progress)?;
            let mut rec = txn
                .store()
                .image(&id)
                .ok()
                .filter(|i| i.id == id)
                .cloned()
                .unwrap_or(ImageRecord {
                    id: id.clone(),
                    names: vec![],
                    layers,
                    created_unix: now_unix(),
                    architecture: m.config.architecture.clone(),
                    os: m.config.os.clone(),
                });
            for n in &names {
                if !rec.names.contains(n) {
                    rec.names.push(n.clone());
                }
            }
            txn.put_image_config(&id, &m.config.raw)?;
            txn.put_image(rec)
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// `PATH:REF` (as skopeo's and umoci's `oci:PATH:REF`) when PATH is there
/// and `PATH:REF` is not: the archive and the one reference to take from
/// it. Otherwise the whole path, every image.
fn split_reference(path: &Path) -> (std::path::PathBuf, Option<String>) {
    if !path.exists() {
        if let Some((p, r)) = path.to_str().and_then(|s| s.rsplit_once(':')) {
            if !r.is_empty() && !r.contains('/') && Path::new(p).exists() {
                return (p.into(), Some(r.to_string()));
            }
        }
    }
    (path.to_path_buf(), None)
}

/// Whether image `m` carries `reference`: as its name or its tag.
fn names_reference(m: &ImageManifest, reference: &str) -> bool {
    m.names
        .iter()
        .any(|n| n == reference || n.rsplit_once(':').is_some_and(|(_, tag)| tag == reference))
}

/// Makes the image's layers bottom to top, reusing those already present.
fn import_layers(
    txn: &mut Txn<'_>,
    archive: &ImageArchive,
    m: &ImageManifest,
    progress: &dyn Progress,
) -> Result<Vec<LayerId>> {
    let count = m.layers.len();
    // Which layers are there already (by chain id), decided up front: the
    // transaction holds the store, and this image's own layers have chain
    // ids of their own.
    let existing: Vec<Option<LayerId>> = m
        .layers
        .iter()
        .map(|lr| {
            let chain_id = lr.chain_id.to_string();
            txn.store()
                .layers()
                .find(|l| l.chain_id.as_deref() == Some(chain_id.as_str()))
                .map(|l| l.id.clone())
        })
        .collect();
    let mut parent: Option<LayerId> = None;
    let mut out = vec![];
    // The blob is read, checked and inflated on a second core, its tar
    // hashed on a third, as it is applied. The next layer's blob starts
    // as soon as this one's tar has been read to its end, while this
    // layer's files are still going to its device (its unmount, the
    // device's flush and its record), which leaves the CPUs waiting.
    std::thread::scope(|s| -> Result<()> {
        let start = |i: usize, gate: Option<ahead::Gate>| -> Result<ahead::Ahead<'_>> {
            let lr = &m.layers[i];
            let blob = archive.open_layer(lr)?;
            Ok(ahead::decompressed(
                s,
                blob,
                progress,
                diff_id_check(lr, i),
                gate,
            ))
        };
        let mut prefetched: Option<ahead::Ahead<'_>> = None;
        for (i, lr) in m.layers.iter().enumerate() {
            if let Some(id) = &existing[i] {
                progress.layer_done(i, true);
                out.push(id.clone());
                parent = Some(id.clone());
                continue;
            }
            progress.layer_start(i, count, lr.size);
            let id = txn.reserve_layers(1)?.remove(0);
            let mut plain = match prefetched.take() {
                Some(p) => p,
                None => start(i, None)?,
            };
            if let Some(next) = (i + 1..count).find(|&j| existing[j].is_none()) {
                let (opened, gate) = ahead::gate();
                plain.open_at_end(opened);
                prefetched = Some(start(next, Some(gate))?);
            }
            let diff_id = lr.diff_id.to_string();
            txn.make_layer(
                &id,
                NewLayer {
                    parent: parent.as_ref(),
                    chain_id: Some(lr.chain_id.to_string()),
                    changeset: Some(&mut plain),
                    expect: Some(ExpectDiffId {
                        diff_id: &diff_id,
                        what: layer_what(i),
                        checked_by_reader: true,
                    }),
                    keep_layout: true,
                    ..NewLayer::default()
                },
            )?;
            plain.open_next();
            progress.layer_done(i, false);
            out.push(id.clone());
            parent = Some(id);
        }
        Ok(())
    })?;
    Ok(out)
}

/// How layer `i` (of `lr`) is named in errors.
fn layer_what(i: usize) -> String {
    format!("layer {} of the image", i + 1)
}

/// How layer `i`'s tar is checked against its diff_id.
fn diff_id_check(lr: &crate::image::LayerRef, i: usize) -> DiffIdCheck {
    // A blob whose digest is its diff_id is the uncompressed tar itself:
    // its reader's digest check is the diff_id check, and it is hashed
    // once.
    let plain_blob = lr
        .blob_digest
        .as_ref()
        .is_some_and(|d| d.to_string() == lr.diff_id.to_string());
    if plain_blob {
        DiffIdCheck::ByBlob
    } else {
        DiffIdCheck::Hash {
            diff_id: lr.diff_id.clone(),
            what: layer_what(i),
            // Only a `docker save` layer.tar has no digest of its own;
            // uncompressed, its reader checks it against the diff_id.
            reader_if_plain: lr.blob_digest.is_none(),
        }
    }
}
