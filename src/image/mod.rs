//! Image archives: a `docker save` tarball (legacy `<id>/layer.tar` layout or the newer
//! `blobs/sha256/…` layout, with or without the OCI layout newer docker versions add beside it),
//! or an OCI image layout, as a directory or as a plain tar.
//!
//! [`ImageArchive::open`] reads and verifies every JSON document (index, manifests, configs,
//! docker `manifest.json`) and checks the structure; layer blobs are only located, and
//! [`ImageArchive::open_layer`] hands out a reader that hashes the blob as it is read and fails
//! at EOF when the digest or size differ.
//!
//! **Read every layer reader to EOF.** Verification happens on the read that returns EOF; a
//! decompressor usually stops at the end of its stream, so after decoding, drain the rest
//! (`std::io::copy(&mut reader, &mut std::io::sink())`) and treat an error as a corrupt blob.
//!
//! Applying a layer is not done here: the caller decompresses the blob (see [`Compression`])
//! and checks the result against [`LayerRef::diff_id`].
//!
//! The OCI documents (index, manifest, image config, `oci-layout`) are read with the `oci-spec`
//! crate's types; the image config, parsed, is in [`ImageConfig::full`]. docker's own
//! `manifest.json` has its serde struct in `docker.rs`. Where oci-spec is stricter than the
//! images real tools write, `oci.rs` prepares the document first (its module doc lists how).

mod details;
mod digest;
mod docker;
mod oci;
mod source;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use details::{read_config, HistoryEntry, ImageDetails};
pub(crate) use digest::hasher_digest;
pub use digest::{chain_ids, sha256_digest, Digest, DigestParseError};
/// The parsed image config, as in [`ImageConfig::full`].
pub use oci_spec::image::ImageConfiguration;

use crate::text::escape_controls as esc;
use source::Source;

/// JSON documents (index, manifests, configs, `manifest.json`) larger than this are refused
/// before being read.
pub const MAX_JSON_SIZE: u64 = 16 * 1024 * 1024;

/// Failures of [`ImageArchive`], grouped by what the caller does next.
///
/// Messages are one line: the names, paths and reasons they carry come
/// from the archive (a member named `a<newline>b`, a media type with a
/// newline) and have their control characters escaped.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Neither an OCI layout nor a docker-save archive: the user gave the wrong file.
    #[error(
        "{}: not a container image archive: {}",
        esc(&path.display().to_string()),
        esc(reason)
    )]
    NotAnImage {
        /// The path given to [`ImageArchive::open`].
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The archive is recognized but broken or unsupported (bad JSON, missing field, layer
    /// count mismatch, unsupported media type, missing blob, no usable platform).
    #[error("{}: {}", esc(what), esc(reason))]
    Malformed {
        /// The document or member at fault (`index.json`, `manifest sha256:…`, …).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The archive tries to reach outside itself (`..`, absolute paths, symlinks leaving the
    /// layout, odd blob paths, conflicting duplicate members).
    #[error("{}: refused as hostile: {}", esc(what), esc(reason))]
    Hostile {
        /// The document, member or archive at fault.
        what: String,
        /// The path or link that was refused, and why.
        reason: String,
    },
    /// A document read at open does not hash to its digest.
    #[error("{}: digest mismatch: expected {expected}, actual {actual}", esc(what))]
    DigestMismatch {
        /// The document (`manifest sha256:…`, `config …`).
        what: String,
        /// The digest that names it.
        expected: Digest,
        /// The digest of the bytes read.
        actual: Digest,
    },
    /// A JSON document is over [`MAX_JSON_SIZE`]; refused before reading.
    #[error(
        "{}: too large: {size} bytes (limit {limit} bytes)",
        esc(what),
        limit = MAX_JSON_SIZE
    )]
    TooLarge {
        /// The document.
        what: String,
        /// Its size in bytes.
        size: u64,
    },
    /// An I/O error on the archive itself.
    #[error("{op} {}: {}", esc(&path.display().to_string()), esc(&source.to_string()))]
    Io {
        /// What was being done (`open`, `read`, `stat`, …).
        op: &'static str,
        /// The file (for a tar member: the archive joined with the member path).
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn hostile(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Hostile {
            what: what.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How the archive was recognized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// OCI image layout in a directory.
    OciDir,
    /// OCI image layout in a tar (including a docker-save tar that also carries an OCI layout;
    /// the OCI side is used because every blob has a digest, size and media type there).
    OciTar,
    /// docker-save archive (`manifest.json`) in a tar.
    DockerTar,
    /// An unpacked docker-save archive in a directory.
    DockerDir,
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar (`…layer.v1.tar`, `…rootfs.diff.tar`).
    None,
    /// gzip (`+gzip`, `.tar.gzip`).
    Gzip,
    /// zstd (`+zstd`, `.tar.zstd`).
    Zstd,
    /// Not declared (docker archives): sniff the magic bytes.
    Unknown,
}

/// One image in the archive.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// Digest of the config blob: the image id.
    pub config_digest: Digest,
    /// The image config.
    pub config: ImageConfig,
    /// `repo:tag` from docker `RepoTags`, or for OCI the `io.containerd.image.name`
    /// annotation when present, else `org.opencontainers.image.ref.name` (may be just a tag).
    /// Entries of the OCI index that resolve to the same manifest are merged.
    pub names: Vec<String>,
    /// Bottom to top.
    pub layers: Vec<LayerRef>,
    /// Digest of the OCI/docker-v2 manifest blob (None for a plain docker-save archive).
    pub manifest_digest: Option<Digest>,
    /// The manifest blob as stored (None for a plain docker-save archive).
    pub manifest_raw: Option<Vec<u8>>,
}

/// An image config (OCI, or docker's, which has the same shape), with the raw bytes for
/// storing.
///
/// The fields beside [`ImageConfig::full`] are what the import needs, checked: `rootfs.type`
/// is `layers` and every diff_id a sha256 digest.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The config blob as stored; it hashes to [`ImageManifest::config_digest`].
    pub raw: Vec<u8>,
    /// `rootfs.diff_ids`: digests of the uncompressed layer tars, bottom to top (empty when
    /// the config has none, as docker writes an image without layers).
    pub diff_ids: Vec<Digest>,
    /// `architecture` as the document spells it (OCI names: `amd64`, `arm64`, …); None if
    /// absent or null.
    pub architecture: Option<String>,
    /// `os` (`linux`, …); None if absent or null.
    pub os: Option<String>,
    /// `variant` (`v8`, …), if any.
    pub variant: Option<String>,
    /// `created`, as written (RFC 3339 by the spec; not checked).
    pub created: Option<String>,
    /// The whole config as oci-spec parses it: entrypoint, cmd, env, volumes, labels, history.
    ///
    /// Where the document leaves out what oci-spec requires, `architecture` and `os` are
    /// empty here (the fields above say None) and `rootfs.diff_ids` is empty. An optional
    /// part oci-spec cannot read (`config`, `history`, `author`, `os.version`, `os.features`
    /// of the wrong shape) is left out rather than refusing the image; [`ImageConfig::raw`]
    /// still has it.
    pub full: ImageConfiguration,
}

/// A layer of an image, with where to find its blob.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// Position in the image, 0 = bottom.
    pub index: usize,
    /// Digest of the blob as stored; None only for a legacy docker `<id>/layer.tar`, whose
    /// reader then checks the diff_id instead when the blob is an uncompressed tar.
    pub blob_digest: Option<Digest>,
    /// The media type the manifest (or docker's `LayerSources`) declares; None in a plain
    /// docker-save archive.
    pub media_type: Option<String>,
    /// Expected blob size (descriptor size, or the member size in a docker archive).
    pub size: Option<u64>,
    /// How the blob is compressed.
    pub compression: Compression,
    /// Digest of the uncompressed layer tar, from the config.
    pub diff_id: Digest,
    /// Chain id of the stack up to and including this layer (see [`chain_ids`]).
    pub chain_id: Digest,
    locator: source::Locator,
}

/// An opened, structurally verified image archive.
#[derive(Debug)]
pub struct ImageArchive {
    path: PathBuf,
    format: ArchiveFormat,
    source: Source,
    images: Vec<ImageManifest>,
}

impl ImageArchive {
    /// Opens `path`: a directory holding an OCI layout (or an unpacked docker-save archive), or
    /// a plain tar holding either. Compressed archive files are refused with a message.
    ///
    /// Where an index offers several platforms, the one for linux and the host architecture
    /// is chosen (amd64 on x86_64), or the only one; see [`ImageArchive::open_for_platform`].
    ///
    /// Every JSON document is read (at most [`MAX_JSON_SIZE`] each), verified against its
    /// digest and parsed; layer blobs are located, not read.
    ///
    /// # Errors
    ///
    /// [`ImageError::NotAnImage`] for something that is not an image archive,
    /// [`ImageError::Io`] if `path` cannot be read, and the other [`ImageError`] kinds for a
    /// broken, oversized or hostile archive.
    pub fn open(path: &Path) -> Result<ImageArchive, ImageError> {
        ImageArchive::open_for_platform(path, "linux", oci::host_arch())
    }

    /// Like [`ImageArchive::open`], choosing `os`/`arch` (OCI names: `amd64`, `arm64`, …) from
    /// multi-platform indexes.
    ///
    /// An index entry matches when its platform names exactly this os and architecture; of
    /// several matches with different manifests, the one without a variant is taken. An index
    /// with a single image entry gives it whatever its platform; attestation entries
    /// (buildkit) are never chosen.
    ///
    /// # Errors
    ///
    /// As [`ImageArchive::open`]; [`ImageError::Malformed`] when no entry matches or several
    /// match with nothing to choose between them.
    pub fn open_for_platform(
        path: &Path,
        os: &str,
        arch: &str,
    ) -> Result<ImageArchive, ImageError> {
        let source = Source::open(path)?;
        let platform = oci::wanted_platform(os, arch);
        let has_oci = source.is_file("oci-layout")?;
        let has_docker = source.is_file("manifest.json")?;
        let (format, images) = if has_oci {
            let mut images = oci::load(&source, &platform)?;
            if has_docker {
                docker::apply_repo_tags(&source, &mut images)?;
            }
            let format = if source.is_dir() {
                ArchiveFormat::OciDir
            } else {
                ArchiveFormat::OciTar
            };
            (format, images)
        } else if has_docker {
            let format = if source.is_dir() {
                ArchiveFormat::DockerDir
            } else {
                ArchiveFormat::DockerTar
            };
            (format, docker::load(&source)?)
        } else {
            let reason = if source.is_file("index.json")? {
                "index.json without oci-layout"
            } else {
                "neither oci-layout nor manifest.json found"
            };
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                reason: reason.into(),
            });
        };
        Ok(ImageArchive {
            path: path.to_path_buf(),
            format,
            source,
            images,
        })
    }

    /// The images of the archive, in the order of `index.json` or `manifest.json` (at least
    /// one).
    pub fn images(&self) -> &[ImageManifest] {
        &self.images
    }

    /// How the archive was recognized.
    pub fn format(&self) -> ArchiveFormat {
        self.format
    }

    /// The path the archive was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader of the layer's blob exactly as stored (possibly compressed). It hashes what it
    /// passes on; the read that reaches EOF fails with `InvalidData` (naming the blob and the
    /// expected/actual digest) if the digest or size differ, and a read past the expected
    /// size fails at once. Tar members are read in place with positioned reads, so several
    /// readers can be used at once from different threads.
    ///
    /// `layer` must come from [`ImageArchive::images`] of this archive.
    ///
    /// # Errors
    ///
    /// [`ImageError::Io`] if the blob of a directory layout cannot be opened,
    /// [`ImageError::Malformed`] for a layer of another archive.
    pub fn open_layer(&self, layer: &LayerRef) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let what = match &layer.blob_digest {
            Some(d) => format!("layer {} blob {d}", layer.index),
            // The member's name, from the archive: one line in the reader's errors.
            None => format!("layer {} ({})", layer.index, esc(layer.locator.path())),
        };
        let expect = match &layer.blob_digest {
            Some(d) => digest::Expect::Blob {
                digest: d.clone(),
                size: layer.size,
            },
            None => digest::Expect::DiffIdIfUncompressed {
                diff_id: layer.diff_id.clone(),
                size: layer.size,
            },
        };
        let inner = self.source.open_member(&layer.locator)?;
        Ok(Box::new(digest::VerifyingReader::new(inner, what, expect)))
    }
}

/// A located layer blob, before the config gives its diff_id.
pub(crate) struct LayerBlob {
    pub blob_digest: Option<Digest>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    pub compression: Compression,
    pub locator: source::Locator,
}

/// Checks that the image lists as many layers as its config has diff_ids.
pub(crate) fn check_layer_count(
    what: &str,
    layers: usize,
    config: &ImageConfig,
) -> Result<(), ImageError> {
    if layers != config.diff_ids.len() {
        return Err(ImageError::malformed(
            what,
            format!(
                "{layers} layers but the config lists {} diff_ids",
                config.diff_ids.len()
            ),
        ));
    }
    Ok(())
}

/// Builds the layer list of an image from located blobs, checking the diff_id count.
pub(crate) fn build_layers(
    what: &str,
    blobs: Vec<LayerBlob>,
    config: &ImageConfig,
) -> Result<Vec<LayerRef>, ImageError> {
    check_layer_count(what, blobs.len(), config)?;
    let chains = chain_ids(&config.diff_ids);
    Ok(blobs
        .into_iter()
        .zip(config.diff_ids.iter().zip(chains))
        .enumerate()
        .map(|(index, (b, (diff_id, chain_id)))| LayerRef {
            index,
            blob_digest: b.blob_digest,
            media_type: b.media_type,
            size: b.size,
            compression: b.compression,
            diff_id: diff_id.clone(),
            chain_id,
            locator: b.locator,
        })
        .collect())
}

/// Parses a whole JSON document; errors say `invalid JSON` with serde's reason.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::malformed(what, format!("invalid JSON: {e}")))
}
