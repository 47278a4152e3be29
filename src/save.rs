//! Saving images: `image save` writes an OCI image layout or a `docker
//! save` archive, as one tar file, byte for byte the same every time.
//!
//! Each layer blob is the exact changeset the layer was imported from,
//! reassembled from its recorded layout ([`crate::changeset::split`]) and
//! its files, uncompressed (as `docker save` writes layers): its digest is
//! the image's diff_id, and the image config is kept byte for byte, so the
//! image id is the same after a round trip. A layer that cannot be given
//! back exactly is refused, and nothing is written under `out`.
//!
//! This room stands on the store (layers, image records and configs) and
//! the image formats' names; nothing below it knows about saving.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::changeset::ExportOptions;
use crate::error::{Error, Result};
use crate::layer::LayerId;
use crate::progress::Progress;
use crate::store::{normalize_image_name, ImageRecord, Store};

/// What `image save` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFormat {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`),
    /// as skopeo's `oci-archive:` and umoci read it.
    Oci,
    /// A `docker save` archive (`manifest.json` and the blobs it names), as
    /// `docker load` and skopeo's `docker-archive:` read it.
    Docker,
}

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An OCI descriptor, with its annotations in a sorted map so the JSON is
/// the same every time (oci-spec's use a `HashMap`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: &'a Descriptor,
    layers: Vec<&'a Descriptor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// One image of `manifest.json`.
#[derive(Serialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// An image to save and the names it is saved under.
struct Wanted {
    image: ImageRecord,
    names: Vec<String>,
}

/// Resolves `keys` (names, ids or id prefixes): an image asked for by
/// name is saved under that name, one asked for by id under no name (as
/// `docker save` does). Each image once, in the order first asked for.
fn resolve(store: &Store, keys: &[String]) -> Result<Vec<Wanted>> {
    let mut out: Vec<Wanted> = vec![];
    for key in keys {
        let image = store.image(key)?.clone();
        let name = normalize_image_name(key)
            .ok()
            .filter(|n| image.names.contains(n));
        match out.iter_mut().find(|w| w.image.id == image.id) {
            Some(w) => w.names.extend(name.filter(|n| !w.names.contains(n))),
            None => out.push(Wanted {
                image,
                names: name.into_iter().collect(),
            }),
        }
    }
    Ok(out)
}

/// Writes the images `keys` name to `out` as `format`. Returns the ids of
/// the images saved. `out` is written whole or not at all: a partial file
/// beside it is removed on failure.
///
/// # Errors
/// [`Error::NotFound`]/[`Error::Ambiguous`] for a key;
/// [`Error::Precondition`] for an image imported without its config (by an
/// older thinlayer); `ChangesetError::Irreproducible` when a layer cannot
/// be given back exactly; [`Error::Io`] for `out`.
pub fn save_images(
    store: &mut Store,
    keys: &[String],
    out: &Path,
    format: SaveFormat,
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    if keys.is_empty() {
        return Err(Error::invalid("image", "no image given"));
    }
    let wanted = resolve(store, keys)?;
    // Everything that can be checked before writing is.
    let configs: Vec<Vec<u8>> = wanted
        .iter()
        .map(|w| store.image_config(&w.image.id))
        .collect::<Result<_>>()?;
    let partial = partial_path(out)?;
    let file = File::create(&partial).map_err(Error::io("creating", &partial))?;
    let written = write_archive(store, &wanted, &configs, file, format, progress)
        .and_then(|f| f.sync_all().map_err(Error::io("syncing", &partial)))
        .and_then(|()| fs::rename(&partial, out).map_err(Error::io("writing", out)));
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = thinpool::record::sync_dir(dir);
    }
    Ok(wanted.into_iter().map(|w| w.image.id).collect())
}

fn partial_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::invalid("output", format!("{} names no file", out.display())))?;
    let mut p = name.to_os_string();
    p.push(".partial");
    Ok(out.with_file_name(p))
}

fn write_archive(
    store: &mut Store,
    wanted: &[Wanted],
    configs: &[Vec<u8>],
    file: File,
    format: SaveFormat,
    progress: &dyn Progress,
) -> Result<File> {
    let mut tar = TarOut::new(file);
    if format == SaveFormat::Oci {
        tar.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    // Layers, each once (by diff_id), bottom to top, image after image.
    let mut layer_desc: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut seen: BTreeSet<&LayerId> = BTreeSet::new();
    let all: Vec<&LayerId> = wanted
        .iter()
        .flat_map(|w| &w.image.layers)
        .filter(|l| seen.insert(l))
        .collect();
    for (i, id) in all.iter().enumerate() {
        let rec = store.layer_record(id)?.clone();
        let Some(diff_id) = rec.diff_id.clone() else {
            return Err(Error::Precondition(format!(
                "layer {} has no diff_id, so no image can name it",
                rec.label()
            )));
        };
        if layer_desc.contains_key(&diff_id) {
            continue;
        }
        progress.layer_start(i, all.len(), None);
        let hex = diff_id.trim_start_matches("sha256:").to_string();
        let bytes = tar.stream(&format!("blobs/sha256/{hex}"), |w| {
            let d = store.diff(id.as_str(), w, &ExportOptions::default())?;
            if d.diff_id != diff_id {
                return Err(crate::changeset::ChangesetError::Irreproducible {
                    reason: format!(
                        "layer {} exports as {}, its image names {diff_id}; import the image again to save it",
                        rec.label(),
                        d.diff_id
                    ),
                }
                .into());
            }
            Ok(d.bytes)
        })?;
        progress.layer_done(i, false);
        layer_desc.insert(
            diff_id.clone(),
            Descriptor {
                media_type: MT_LAYER,
                digest: diff_id,
                size: bytes,
                annotations: BTreeMap::new(),
            },
        );
    }
    let mut index = Index {
        schema_version: 2,
        media_type: MT_INDEX,
        manifests: vec![],
    };
    let mut docker: Vec<DockerEntry> = vec![];
    for (w, config) in wanted.iter().zip(configs) {
        let config_hex = &w.image.id;
        let path = format!("blobs/sha256/{config_hex}");
        if !tar.has(&path) {
            tar.bytes(&path, config)?;
        }
        let diff_ids: Vec<String> = w
            .image
            .layers
            .iter()
            .map(|l| Ok(store.layer_record(l)?.diff_id.clone().unwrap_or_default()))
            .collect::<Result<_>>()?;
        match format {
            SaveFormat::Oci => {
                let config_desc = Descriptor {
                    media_type: MT_CONFIG,
                    digest: format!("sha256:{config_hex}"),
                    size: config.len() as u64,
                    annotations: BTreeMap::new(),
                };
                let manifest = Manifest {
                    schema_version: 2,
                    media_type: MT_MANIFEST,
                    config: &config_desc,
                    layers: diff_ids.iter().map(|d| &layer_desc[d]).collect(),
                };
                let raw = serde_json::to_vec(&manifest).expect("manifests serialize");
                let digest = format!("{:x}", Sha256::digest(&raw));
                let path = format!("blobs/sha256/{digest}");
                if !tar.has(&path) {
                    tar.bytes(&path, &raw)?;
                }
                let desc = |annotations| Descriptor {
                    media_type: MT_MANIFEST,
                    digest: format!("sha256:{digest}"),
                    size: raw.len() as u64,
                    annotations,
                };
                if w.names.is_empty() {
                    index.manifests.push(desc(BTreeMap::new()));
                }
                for n in &w.names {
                    let tag = n.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
                    index.manifests.push(desc(BTreeMap::from([
                        (ANN_CONTAINERD_NAME, n.clone()),
                        (ANN_REF_NAME, tag.to_string()),
                    ])));
                }
            }
            SaveFormat::Docker => docker.push(DockerEntry {
                config: path,
                repo_tags: w.names.clone(),
                layers: diff_ids
                    .iter()
                    .map(|d| format!("blobs/sha256/{}", d.trim_start_matches("sha256:")))
                    .collect(),
            }),
        }
    }
    match format {
        SaveFormat::Oci => {
            let raw = serde_json::to_vec(&index).expect("indexes serialize");
            tar.bytes("index.json", &raw)?;
        }
        SaveFormat::Docker => {
            let raw = serde_json::to_vec(&docker).expect("manifests serialize");
            tar.bytes("manifest.json", &raw)?;
        }
    }
    tar.finish()
}

/// A tar file written in order, with headers that depend only on names
/// and contents (owner root, mode 0644/0755, mtime 0): the same input, the
/// same bytes. A streamed member's header is written after its content,
/// in the block reserved for it, once its length is known.
struct TarOut {
    w: BufWriter<File>,
    names: BTreeSet<String>,
}

fn out_err(e: io::Error) -> Error {
    Error::io("writing", "the image archive")(e)
}

impl TarOut {
    fn new(f: File) -> Self {
        TarOut {
            w: BufWriter::with_capacity(1 << 20, f),
            names: BTreeSet::new(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn header(name: &str, kind: tar::EntryType, size: u64) -> Result<tar::Header> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).map_err(out_err)?;
        h.set_entry_type(kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        Ok(h)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (512 - size % 512) % 512;
        self.w
            .write_all(&[0u8; 512][..rem as usize])
            .map_err(out_err)
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        let h = Self::header(name, tar::EntryType::Directory, 0)?;
        self.w.write_all(h.as_bytes()).map_err(out_err)?;
        self.names.insert(name.to_string());
        Ok(())
    }

    fn bytes(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let h = Self::header(name, tar::EntryType::Regular, data.len() as u64)?;
        self.w.write_all(h.as_bytes()).map_err(out_err)?;
        self.w.write_all(data).map_err(out_err)?;
        self.pad(data.len() as u64)?;
        self.names.insert(name.to_string());
        Ok(())
    }

    /// A member whose content `fill` writes; `fill` returns its length.
    fn stream(
        &mut self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<u64>,
    ) -> Result<u64> {
        // Checked before any content is written.
        Self::header(name, tar::EntryType::Regular, 0)?;
        self.w.flush().map_err(out_err)?;
        let at = self.w.get_mut().stream_position().map_err(out_err)?;
        self.w.write_all(&[0u8; 512]).map_err(out_err)?;
        let mut counted = Counted {
            w: &mut self.w,
            n: 0,
        };
        let size = fill(&mut counted)?;
        if counted.n != size {
            return Err(Error::Corrupt {
                what: format!("archive member {name}"),
                reason: format!("{} bytes were written, {size} reported", counted.n),
            });
        }
        self.pad(size)?;
        self.w.flush().map_err(out_err)?;
        let h = Self::header(name, tar::EntryType::Regular, size)?;
        let f = self.w.get_mut();
        let end = f.stream_position().map_err(out_err)?;
        f.seek(SeekFrom::Start(at)).map_err(out_err)?;
        f.write_all(h.as_bytes()).map_err(out_err)?;
        f.seek(SeekFrom::Start(end)).map_err(out_err)?;
        self.names.insert(name.to_string());
        Ok(size)
    }

    /// The end-of-archive blocks; returns the file.
    fn finish(mut self) -> Result<File> {
        self.w.write_all(&[0u8; 1024]).map_err(out_err)?;
        self.w.into_inner().map_err(|e| out_err(e.into_error()))
    }
}

struct Counted<'a, W: Write> {
    w: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}
