//! docker-save archives: `manifest.json` = `[{"Config", "RepoTags", "Layers", "LayerSources"}]`.
//!
//! Config and layer paths are either the legacy layout (`<hex>.json`, `<v1 id>/layer.tar`,
//! shared layers as symlinks between those) or the blob layout of newer docker versions
//! (`blobs/sha256/<hex>`). Content digests are taken from the names where the names carry
//! one: `blobs/sha256/<hex>`, `<hex>.json` (config), `<hex>.tar` / `<hex>.tar.gz` (layers, as
//! written by containers/image and go-containerregistry). A legacy `<id>/layer.tar` has none;
//! its reader checks the diff_id instead when the blob is an uncompressed tar (as docker
//! writes it).
//!
//! `manifest.json` is docker's own format, not an OCI document, so it has its serde struct
//! here; the image config it names is parsed like an OCI one ([`parse_config`], with oci-spec).
//! The legacy per-layer `<id>/json` and `<id>/VERSION` and the `repositories` file are not
//! read: `manifest.json` says everything they say (names in `RepoTags`, layers in order), and
//! docker itself ignores them when loading an archive that has it.

use std::collections::BTreeMap;

use oci_spec::image::MediaType;
use serde::Deserialize;

use super::digest::{is_sha256_hex, sha256_digest, Digest};
use super::oci::{layer_compression, parse_config};
use super::source::{check_member_path, Source};
use super::{
    build_layers, check_layer_count, parse_json, Compression, ImageError, ImageManifest, LayerBlob,
};

/// One image of `manifest.json`.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "LayerSources", default)]
    layer_sources: Option<BTreeMap<Digest, LayerSource>>,
}

/// A value of `LayerSources` (by diff_id): docker's `distribution.Descriptor`, whose every
/// field is optional (Go's `omitempty`). Not oci-spec's `Descriptor`, which requires
/// `mediaType`, `digest` and `size` and would refuse entries docker may write; only the media
/// type and URLs are used.
#[derive(Deserialize)]
struct LayerSource {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

fn read_entries(source: &Source) -> Result<Vec<Entry>, ImageError> {
    let raw = source.read_doc("manifest.json", "manifest.json", None)?;
    let entries: Vec<Entry> = parse_json("manifest.json", &raw)?;
    if entries.is_empty() {
        return Err(ImageError::malformed("manifest.json", "lists no images"));
    }
    Ok(entries)
}

/// The content digest a member name carries, if any (see the module doc).
fn digest_from_name(path: &str, suffixes: &[&str]) -> Option<Digest> {
    let comps: Vec<&str> = path.split('/').collect();
    if let ["blobs", "sha256", hex] = comps.as_slice() {
        return Digest::from_hex(hex).ok();
    }
    let base = comps.last()?;
    let stem = suffixes
        .iter()
        .find_map(|s| base.strip_suffix(s))
        .unwrap_or(base);
    let stem = stem.strip_prefix("sha256:").unwrap_or(stem);
    if is_sha256_hex(stem) {
        Digest::from_hex(stem).ok()
    } else {
        None
    }
}

const CONFIG_SUFFIXES: &[&str] = &[".json"];
const LAYER_SUFFIXES: &[&str] = &[".tar.gz", ".tar"];

/// Reads the images of a docker-save archive (no OCI layout beside it).
pub(crate) fn load(source: &Source) -> Result<Vec<ImageManifest>, ImageError> {
    let entries = read_entries(source)?;
    let mut images = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let what = format!("manifest.json image {i}");
        let config_path = check_member_path(&what, &e.config)?;
        let expected = digest_from_name(&config_path, CONFIG_SUFFIXES);
        let config_what = format!("config {config_path}");
        let raw = source.read_doc(&config_what, &config_path, expected.as_ref())?;
        let config_digest = expected.unwrap_or_else(|| sha256_digest(&raw));
        let config = parse_config(&config_what, raw)?;
        check_layer_count(&what, e.layers.len(), &config)?;

        let mut blobs = Vec::with_capacity(e.layers.len());
        for (j, layer_path) in e.layers.iter().enumerate() {
            let lwhat = format!("{what}: layer {j} ({layer_path})");
            let path = check_member_path(&lwhat, layer_path)?;
            let (locator, size) = source.locate(&lwhat, &path)?;
            let blob_digest = digest_from_name(&path, LAYER_SUFFIXES)
                .or_else(|| digest_from_name(locator.path(), LAYER_SUFFIXES));
            let diff_id = &config.diff_ids[j];
            let declared = e.layer_sources.as_ref().and_then(|s| s.get(diff_id));
            let (media_type, mut compression) = match declared {
                Some(LayerSource {
                    media_type: Some(mt),
                    urls,
                }) => (
                    Some(mt.clone()),
                    layer_compression(&lwhat, &MediaType::from(mt.as_str()), urls.as_deref())?,
                ),
                _ => (None, Compression::Unknown),
            };
            // A blob hashing to the diff_id is the uncompressed tar itself.
            if blob_digest.as_ref() == Some(diff_id) {
                compression = Compression::None;
            }
            blobs.push(LayerBlob {
                blob_digest,
                media_type,
                size: Some(size),
                compression,
                locator,
            });
        }
        let layers = build_layers(&what, blobs, &config)?;
        images.push(ImageManifest {
            config_digest,
            config,
            names: e.repo_tags.unwrap_or_default(),
            layers,
            manifest_digest: None,
            manifest_raw: None,
        });
    }
    Ok(images)
}

/// For a docker-save tar that also carries an OCI layout (used for the images): take the
/// names from `RepoTags` (replacing the OCI annotations), matching images by config digest.
pub(crate) fn apply_repo_tags(
    source: &Source,
    images: &mut [ImageManifest],
) -> Result<(), ImageError> {
    for (i, e) in read_entries(source)?.into_iter().enumerate() {
        let what = format!("manifest.json image {i}");
        let config_path = check_member_path(&what, &e.config)?;
        let Some(config_digest) = digest_from_name(&config_path, CONFIG_SUFFIXES) else {
            continue;
        };
        let tags = e.repo_tags.unwrap_or_default();
        if tags.is_empty() {
            continue;
        }
        for image in images
            .iter_mut()
            .filter(|im| im.config_digest == config_digest)
        {
            image.names = tags.clone();
        }
    }
    Ok(())
}
