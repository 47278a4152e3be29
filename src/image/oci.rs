//! OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`; indexes, manifests and
//! image configs in OCI or docker-v2 media types, read with `oci-spec`'s types.
//!
//! # Where oci-spec is stricter than this reader
//!
//! oci-spec's types follow the image spec to the letter: a descriptor must carry a media type,
//! a platform its `os` and `architecture`, a config its `architecture`, `os` and
//! `rootfs.diff_ids`, and every field it knows must have the spec's type. This reader accepted
//! less strict documents before it used oci-spec and still does, so each document is parsed to
//! a JSON tree first, checked and prepared here, and only then handed to oci-spec:
//!
//! - what says what a document is (`schemaVersion`, `mediaType`, which lists it has) is read
//!   first ([`Probe`]), so the messages for a wrong kind, version or a missing list stay ours;
//! - a required key that the document leaves out (or sets to `null`) and that this reader
//!   tolerates is filled with an empty value and the absence recorded where it matters: an
//!   index entry without a media type is classified by the content of its blob, a config or
//!   layer descriptor without one is refused with our message; a platform without `os` or
//!   `architecture` matches no requested platform and prints as `?`; a config without
//!   `architecture` or `os` gives `None` in [`ImageConfig`], without `diff_ids` no layers;
//! - a field this reader never used and oci-spec cannot read (a `subject` that is not a
//!   descriptor, a config's `history` of the wrong shape, ...) is left out of the typed
//!   document instead of refusing the image ([`drop_unreadable`]); the stored raw bytes keep it;
//! - digests must be sha256 ([`Digest`]), for every descriptor of an index or manifest, whether
//!   it is used or not, as before; oci-spec accepts sha384/sha512 too. They are checked before
//!   oci-spec sees them, so the message names the refused digest.
//!
//! One difference is kept on purpose: a key the spec does not define for a document (`layers`
//! in an index, `manifests` in a manifest) is ignored, as the spec asks, where the earlier
//! reader parsed it and refused a malformed one.

use std::collections::HashMap;

use oci_spec::image::{self as spec, Arch, Descriptor, MediaType, Os};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::digest::{Digest, DigestParseError};
use super::source::Source;
use super::{
    build_layers, check_layer_count, parse_json, Compression, ImageConfig, ImageError,
    ImageManifest, LayerBlob,
};

/// Docker's media types beside the OCI ones oci-spec names in [`MediaType`].
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANN_DOCKER_REF_TYPE: &str = "vnd.docker.reference.type";

/// Nested indexes followed from index.json.
const MAX_INDEX_DEPTH: usize = 4;

/// The OCI architecture name of the host. (oci-spec's `Arch::default()` maps fewer Rust
/// architectures: not x86, loongarch64 or little-endian mips64.)
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    }
}

/// The platform to choose from multi-platform indexes (`os`, `arch` in OCI names).
pub(crate) fn wanted_platform(os: &str, arch: &str) -> spec::Platform {
    let mut p = spec::Platform::default();
    p.set_os(Os::from(os));
    p.set_architecture(Arch::from(arch));
    p
}

// ---------------------------------------------------------------------------------------------
// JSON trees before oci-spec

/// `doc[key]` read as `T`; absent or `null` is `None`.
fn field<T: DeserializeOwned>(
    what: &str,
    doc: &Map<String, Value>,
    key: &str,
) -> Result<Option<T>, ImageError> {
    match doc.get(key) {
        None => Ok(None),
        Some(v) => Option::<T>::deserialize(v)
            .map_err(|e| ImageError::malformed(what, format!("invalid JSON: {key}: {e}"))),
    }
}

/// True if `doc` has `key` with a value other than `null`.
fn present(doc: &Map<String, Value>, key: &str) -> bool {
    doc.get(key).is_some_and(|v| !v.is_null())
}

/// Sets `doc[key]` to an empty string when it is absent or `null`; returns whether it was
/// there. For keys oci-spec requires and this reader tolerates without.
fn fill_missing(doc: &mut Map<String, Value>, key: &str) -> bool {
    let there = present(doc, key);
    if !there {
        doc.insert(key.to_string(), Value::String(String::new()));
    }
    there
}

/// Removes `doc[key]` if oci-spec cannot read it as `T`. Only for fields this reader does not
/// use: it never refused a document over them, and does not start now.
fn drop_unreadable<T: DeserializeOwned>(doc: &mut Map<String, Value>, key: &str) {
    if doc.get(key).is_some_and(|v| T::deserialize(v).is_err()) {
        doc.remove(key);
    }
}

/// The prepared tree read as oci-spec's `T`.
fn typed<T: DeserializeOwned>(what: &str, doc: Map<String, Value>) -> Result<T, ImageError> {
    T::deserialize(Value::Object(doc))
        .map_err(|e| ImageError::malformed(what, format!("invalid JSON: {e}")))
}

/// Prepares an index or manifest (its own fields, not its descriptors) for oci-spec.
fn prepare_document(doc: &mut Map<String, Value>) {
    drop_unreadable::<Option<MediaType>>(doc, "artifactType");
    drop_unreadable::<Option<Descriptor>>(doc, "subject");
    drop_unreadable::<Option<HashMap<String, String>>>(doc, "annotations");
}

/// Prepares one descriptor object for oci-spec's [`Descriptor`]; returns whether the document
/// declares its media type. (A value that is not an object is left for oci-spec to refuse.)
///
/// The digest is checked here, as a sha256 [`Digest`], so that a refused one is named in the
/// message (oci-spec says only "missing ':' in digest") and a valid sha512 one is refused.
fn prepare_descriptor(what: &str, desc: &mut Value) -> Result<bool, ImageError> {
    let Value::Object(d) = desc else {
        return Ok(true);
    };
    if let Some(Value::String(digest)) = d.get("digest") {
        digest
            .parse::<Digest>()
            .map_err(|e| digest_error(what, e))?;
    }
    let declared = fill_missing(d, "mediaType");
    drop_unreadable::<Option<MediaType>>(d, "artifactType");
    drop_unreadable::<Option<String>>(d, "data");
    if let Some(Value::Object(p)) = d.get_mut("platform") {
        fill_missing(p, "os");
        fill_missing(p, "architecture");
        drop_unreadable::<Option<String>>(p, "os.version");
        drop_unreadable::<Option<Vec<String>>>(p, "os.features");
        drop_unreadable::<Option<Vec<String>>>(p, "features");
    }
    Ok(declared)
}

/// [`prepare_descriptor`] for each element of a list (nothing if it is not a list, which
/// oci-spec then refuses).
fn prepare_descriptors(what: &str, list: Option<&mut Value>) -> Result<Vec<bool>, ImageError> {
    match list {
        Some(Value::Array(items)) => items
            .iter_mut()
            .map(|d| prepare_descriptor(what, d))
            .collect(),
        _ => Ok(Vec::new()),
    }
}

fn digest_error(what: &str, e: DigestParseError) -> ImageError {
    ImageError::malformed(what, format!("invalid JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// descriptors, indexes and manifests

/// A descriptor of an index or a manifest, read with oci-spec.
#[derive(Debug, Clone)]
pub(crate) struct Desc {
    /// As oci-spec reads it; its media type is empty where the document has none, and a
    /// platform's `os` or `architecture` likewise (see the module doc).
    oci: Descriptor,
    /// The media type the document declares, if any.
    media_type: Option<MediaType>,
    /// The content digest, checked to be sha256.
    digest: Digest,
}

impl Desc {
    fn new(what: &str, oci: Descriptor, declares_media_type: bool) -> Result<Desc, ImageError> {
        let digest = Digest::try_from(oci.digest()).map_err(|e| digest_error(what, e))?;
        Ok(Desc {
            media_type: declares_media_type.then(|| oci.media_type().clone()),
            oci,
            digest,
        })
    }

    fn list(
        what: &str,
        descs: Vec<Descriptor>,
        declared: Vec<bool>,
    ) -> Result<Vec<Desc>, ImageError> {
        debug_assert_eq!(descs.len(), declared.len());
        descs
            .into_iter()
            .zip(declared)
            .map(|(d, declared)| Desc::new(what, d, declared))
            .collect()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.oci
            .annotations()
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }

    /// The platform, if it names both `os` and `architecture`.
    fn named_platform(&self) -> Option<&spec::Platform> {
        self.oci
            .platform()
            .as_ref()
            .filter(|p| !p.os().to_string().is_empty() && !p.architecture().to_string().is_empty())
    }

    /// Attestation manifests (buildkit) and other non-image entries of an index.
    fn is_attestation(&self) -> bool {
        self.annotation(ANN_DOCKER_REF_TYPE).is_some()
            || self
                .oci
                .platform()
                .as_ref()
                .is_some_and(|p| p.os().to_string() == "unknown")
    }

    fn platform_string(&self) -> String {
        let Some(p) = self.oci.platform() else {
            return "(no platform)".into();
        };
        let shown = |s: String| if s.is_empty() { "?".to_string() } else { s };
        let mut s = format!(
            "{}/{}",
            shown(p.os().to_string()),
            shown(p.architecture().to_string())
        );
        if let Some(v) = p.variant() {
            s.push('/');
            s.push_str(v);
        }
        s
    }

    /// The image name this entry of index.json carries.
    fn image_name(&self) -> Option<String> {
        self.annotation(ANN_CONTAINERD_NAME)
            .or_else(|| self.annotation(spec::ANNOTATION_REF_NAME))
            .map(str::to_string)
    }
}

/// What says which document a JSON object is, read before choosing oci-spec's type for it.
struct Probe {
    schema_version: Option<u64>,
    media_type: Option<MediaType>,
    has_manifests: bool,
    has_layers_or_config: bool,
}

impl Probe {
    fn of(what: &str, doc: &Map<String, Value>) -> Result<Probe, ImageError> {
        Ok(Probe {
            schema_version: field(what, doc, "schemaVersion")?,
            media_type: field(what, doc, "mediaType")?,
            has_manifests: present(doc, "manifests"),
            has_layers_or_config: present(doc, "layers") || present(doc, "config"),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

fn kind_of_media_type(what: &str, mt: &MediaType) -> Result<Kind, ImageError> {
    match mt {
        MediaType::ImageIndex => Ok(Kind::Index),
        MediaType::ImageManifest => Ok(Kind::Manifest),
        MediaType::Other(m) if m == DOCKER_LIST => Ok(Kind::Index),
        MediaType::Other(m) if m == DOCKER_MANIFEST => Ok(Kind::Manifest),
        MediaType::Other(m) if m.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Err(ImageError::malformed(
                what,
                "docker schema 1 manifests are not supported",
            ))
        }
        m => Err(ImageError::malformed(
            what,
            format!("unsupported manifest media type '{m}'"),
        )),
    }
}

/// Decides what a document is and checks schemaVersion / mediaType agreement.
fn classify(what: &str, desc_mt: Option<&MediaType>, doc: &Probe) -> Result<Kind, ImageError> {
    match doc.schema_version {
        Some(2) => {}
        Some(v) => {
            return Err(ImageError::malformed(
                what,
                format!("unsupported schemaVersion {v} (expected 2)"),
            ))
        }
        None => return Err(ImageError::malformed(what, "schemaVersion is missing")),
    }
    if let (Some(a), Some(b)) = (desc_mt, doc.media_type.as_ref()) {
        if a != b {
            return Err(ImageError::malformed(
                what,
                format!("descriptor says mediaType '{a}' but the document says '{b}'"),
            ));
        }
    }
    match desc_mt.or(doc.media_type.as_ref()) {
        Some(mt) => kind_of_media_type(what, mt),
        None if doc.has_manifests => Ok(Kind::Index),
        None if doc.has_layers_or_config => Ok(Kind::Manifest),
        None => Err(ImageError::malformed(
            what,
            "neither an image index nor a manifest (no mediaType, manifests or layers)",
        )),
    }
}

/// An image index read with oci-spec's [`spec::ImageIndex`]: its entries.
fn parse_index(what: &str, mut doc: Map<String, Value>) -> Result<Vec<Desc>, ImageError> {
    if !present(&doc, "manifests") {
        return Err(ImageError::malformed(what, "no manifests list"));
    }
    prepare_document(&mut doc);
    let declared = prepare_descriptors(what, doc.get_mut("manifests"))?;
    let index: spec::ImageIndex = typed(what, doc)?;
    Desc::list(what, index.manifests().clone(), declared)
}

/// An image manifest (OCI or docker v2) read with oci-spec's [`spec::ImageManifest`].
struct Manifest {
    config: Desc,
    layers: Vec<Desc>,
}

fn parse_manifest(what: &str, mut doc: Map<String, Value>) -> Result<Manifest, ImageError> {
    if !present(&doc, "config") {
        return Err(ImageError::malformed(what, "no config descriptor"));
    }
    if !present(&doc, "layers") {
        return Err(ImageError::malformed(what, "no layers list"));
    }
    prepare_document(&mut doc);
    let config_declared = match doc.get_mut("config") {
        Some(c) => prepare_descriptor(what, c)?,
        None => true,
    };
    let layers_declared = prepare_descriptors(what, doc.get_mut("layers"))?;
    let mut m: spec::ImageManifest = typed(what, doc)?;
    Ok(Manifest {
        config: Desc::new(what, m.config().clone(), config_declared)?,
        layers: Desc::list(what, std::mem::take(m.layers_mut()), layers_declared)?,
    })
}

pub(crate) fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads a blob named by a descriptor, verifying digest and size.
fn read_blob(source: &Source, what: &str, desc: &Desc) -> Result<Vec<u8>, ImageError> {
    let raw = source.read_doc(what, &blob_path(&desc.digest), Some(&desc.digest))?;
    if raw.len() as u64 != desc.oci.size() {
        return Err(ImageError::malformed(
            what,
            format!(
                "descriptor size is {} bytes but the blob has {}",
                desc.oci.size(),
                raw.len()
            ),
        ));
    }
    Ok(raw)
}

/// Reads the images of an OCI layout: `oci-layout`, `index.json` and what it names, choosing
/// `platform` from multi-platform indexes.
pub(crate) fn load(
    source: &Source,
    platform: &spec::Platform,
) -> Result<Vec<ImageManifest>, ImageError> {
    let layout: spec::OciLayout = parse_json(
        "oci-layout",
        &source.read_doc("oci-layout", "oci-layout", None)?,
    )?;
    let version = layout.image_layout_version();
    if !version.starts_with("1.") {
        return Err(ImageError::malformed(
            "oci-layout",
            format!("unsupported imageLayoutVersion '{version}'"),
        ));
    }
    let raw = source.read_doc("index.json", "index.json", None)?;
    let doc: Map<String, Value> = parse_json("index.json", &raw)?;
    let probe = Probe::of("index.json", &doc)?;
    if probe.schema_version != Some(2) {
        return Err(ImageError::malformed(
            "index.json",
            "schemaVersion is missing or not 2",
        ));
    }
    if let Some(mt) = &probe.media_type {
        if kind_of_media_type("index.json", mt)? != Kind::Index {
            return Err(ImageError::malformed(
                "index.json",
                format!("mediaType '{mt}' is not an image index"),
            ));
        }
    }
    let entries = parse_index("index.json", doc)?;

    // Entries sharing a name (or all unnamed ones) are alternatives for different platforms.
    let mut groups: Vec<(Option<String>, Vec<&Desc>)> = Vec::new();
    for e in entries.iter().filter(|e| !e.is_attestation()) {
        let name = e.image_name();
        match groups.iter_mut().find(|(n, _)| *n == name) {
            Some((_, g)) => g.push(e),
            None => groups.push((name, vec![e])),
        }
    }

    let mut images: Vec<ImageManifest> = Vec::new();
    for (name, group) in groups {
        let chosen = select_platform("index.json", &group, platform)?;
        let manifest = resolve_manifest(source, chosen, platform, 0)?;
        let image = load_manifest(source, &manifest)?;
        match images
            .iter_mut()
            .find(|i| i.manifest_digest == image.manifest_digest)
        {
            Some(existing) => {
                if let Some(n) = name {
                    if !existing.names.contains(&n) {
                        existing.names.push(n);
                    }
                }
            }
            None => images.push(ImageManifest {
                names: name.into_iter().collect(),
                ..image
            }),
        }
    }
    if images.is_empty() {
        return Err(ImageError::malformed("index.json", "lists no images"));
    }
    Ok(images)
}

/// Picks the entry for `platform`, or the only one.
fn select_platform<'a>(
    what: &str,
    entries: &[&'a Desc],
    platform: &spec::Platform,
) -> Result<&'a Desc, ImageError> {
    let candidates: Vec<&Desc> = entries
        .iter()
        .copied()
        .filter(|e| !e.is_attestation())
        .collect();
    match candidates.len() {
        0 => return Err(ImageError::malformed(what, "lists no image manifests")),
        1 => return Ok(candidates[0]),
        _ => {}
    }
    let matching: Vec<&Desc> = candidates
        .iter()
        .copied()
        .filter(|e| {
            e.named_platform().is_some_and(|p| {
                p.os() == platform.os() && p.architecture() == platform.architecture()
            })
        })
        .collect();
    if matching.len() == 1 {
        return Ok(matching[0]);
    }
    if matching.len() > 1 {
        if matching.iter().all(|m| m.digest == matching[0].digest) {
            return Ok(matching[0]);
        }
        let plain: Vec<&Desc> = matching
            .iter()
            .copied()
            .filter(|m| m.named_platform().is_some_and(|p| p.variant().is_none()))
            .collect();
        if plain.len() == 1 {
            return Ok(plain[0]);
        }
        return Err(ImageError::malformed(
            what,
            format!(
                "several manifests for {}/{} ({}); cannot choose",
                platform.os(),
                platform.architecture(),
                matching
                    .iter()
                    .map(|m| m.platform_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Err(ImageError::malformed(
        what,
        format!(
            "no manifest for {}/{} among {}",
            platform.os(),
            platform.architecture(),
            candidates
                .iter()
                .map(|m| m.platform_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// A manifest descriptor plus its verified bytes and parsed document.
struct LoadedManifest {
    desc: Desc,
    raw: Vec<u8>,
    doc: Manifest,
}

/// Follows nested indexes (choosing the platform) down to an image manifest.
fn resolve_manifest(
    source: &Source,
    desc: &Desc,
    platform: &spec::Platform,
    depth: usize,
) -> Result<LoadedManifest, ImageError> {
    let what = format!("manifest {}", desc.digest);
    if let Some(mt) = &desc.media_type {
        // Refuse unknown media types before reading the blob.
        kind_of_media_type(&what, mt)?;
    }
    let raw = read_blob(source, &what, desc)?;
    let doc: Map<String, Value> = parse_json(&what, &raw)?;
    let probe = Probe::of(&what, &doc)?;
    match classify(&what, desc.media_type.as_ref(), &probe)? {
        Kind::Manifest => Ok(LoadedManifest {
            desc: desc.clone(),
            doc: parse_manifest(&what, doc)?,
            raw,
        }),
        Kind::Index => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::malformed(
                    &what,
                    format!("image indexes nested more than {MAX_INDEX_DEPTH} deep"),
                ));
            }
            let what = format!("image index {}", desc.digest);
            let entries = parse_index(&what, doc)?;
            let refs: Vec<&Desc> = entries.iter().collect();
            let chosen = select_platform(&what, &refs, platform)?;
            resolve_manifest(source, chosen, platform, depth + 1)
        }
    }
}

/// Compression of an accepted layer media type; refuses foreign and unknown ones.
pub(crate) fn layer_compression(
    what: &str,
    media_type: &MediaType,
    urls: Option<&[String]>,
) -> Result<Compression, ImageError> {
    let name = media_type.as_ref();
    if name.contains("nondistributable") || name.contains(".foreign.") {
        let from = match urls {
            Some(u) if !u.is_empty() => format!("; its blob is fetched from {}", u.join(", ")),
            _ => String::new(),
        };
        return Err(ImageError::malformed(
            what,
            format!("non-distributable (foreign) layer '{name}' is not supported{from}"),
        ));
    }
    match (media_type, name) {
        (MediaType::ImageLayer, _) | (_, DOCKER_LAYER) => Ok(Compression::None),
        (MediaType::ImageLayerGzip, _) | (_, DOCKER_LAYER_GZIP) => Ok(Compression::Gzip),
        (MediaType::ImageLayerZstd, _) | (_, DOCKER_LAYER_ZSTD) => Ok(Compression::Zstd),
        _ => Err(ImageError::malformed(
            what,
            format!("unsupported layer media type '{name}'"),
        )),
    }
}

fn load_manifest(source: &Source, m: &LoadedManifest) -> Result<ImageManifest, ImageError> {
    let what = format!("manifest {}", m.desc.digest);
    let config_desc = &m.doc.config;
    match &config_desc.media_type {
        Some(MediaType::ImageConfig) => {}
        Some(MediaType::Other(mt)) if mt == DOCKER_CONFIG => {}
        Some(other) => {
            return Err(ImageError::malformed(
                &what,
                format!("config media type '{other}' is not a container image config"),
            ))
        }
        None => {
            return Err(ImageError::malformed(
                &what,
                "config descriptor has no mediaType",
            ))
        }
    }
    let config_what = format!("config {}", config_desc.digest);
    let config_raw = read_blob(source, &config_what, config_desc)?;
    let config = parse_config(&config_what, config_raw)?;
    check_layer_count(&what, m.doc.layers.len(), &config)?;

    let mut blobs = Vec::with_capacity(m.doc.layers.len());
    for (i, l) in m.doc.layers.iter().enumerate() {
        let lwhat = format!("{what}: layer {i} ({})", l.digest);
        let mt = l
            .media_type
            .as_ref()
            .ok_or_else(|| ImageError::malformed(&lwhat, "layer has no mediaType"))?;
        let compression = layer_compression(&lwhat, mt, l.oci.urls().as_deref())?;
        let (locator, _) = source.locate(&lwhat, &blob_path(&l.digest))?;
        blobs.push(LayerBlob {
            blob_digest: Some(l.digest.clone()),
            media_type: Some(mt.to_string()),
            size: Some(l.oci.size()),
            compression,
            locator,
        });
    }
    let layers = build_layers(&what, blobs, &config)?;
    Ok(ImageManifest {
        config_digest: config_desc.digest.clone(),
        config,
        names: Vec::new(),
        layers,
        manifest_digest: Some(m.desc.digest.clone()),
        manifest_raw: Some(m.raw.clone()),
    })
}

// ---------------------------------------------------------------------------------------------
// image configs

/// Parses an image config (already read and verified), OCI or docker, with oci-spec's
/// [`spec::ImageConfiguration`]; checks `rootfs` and the diff_ids.
pub(crate) fn parse_config(what: &str, raw: Vec<u8>) -> Result<ImageConfig, ImageError> {
    let mut doc: Map<String, Value> = parse_json(what, &raw)?;
    // The names as the document spells them (oci-spec 0.10 reads "armbe" as arm64be).
    let architecture: Option<String> = field(what, &doc, "architecture")?;
    let os: Option<String> = field(what, &doc, "os")?;
    match doc.get_mut("rootfs") {
        None | Some(Value::Null) => {
            return Err(ImageError::malformed(what, "config has no rootfs"))
        }
        // An image without layers may have no (or null) diff_ids: docker omits the empty list.
        Some(Value::Object(rootfs)) if !present(rootfs, "diff_ids") => {
            rootfs.insert("diff_ids".into(), Value::Array(Vec::new()));
        }
        Some(_) => {}
    }
    fill_missing(&mut doc, "architecture");
    fill_missing(&mut doc, "os");
    drop_unreadable::<Option<String>>(&mut doc, "author");
    drop_unreadable::<Option<String>>(&mut doc, "os.version");
    drop_unreadable::<Option<Vec<String>>>(&mut doc, "os.features");
    drop_unreadable::<Option<spec::Config>>(&mut doc, "config");
    drop_unreadable::<Option<Vec<spec::History>>>(&mut doc, "history");
    let mut full: spec::ImageConfiguration = typed(what, doc)?;
    if architecture.as_deref() == Some("armbe") {
        full.set_architecture(Arch::ARMbe);
    }

    let rootfs = full.rootfs();
    if rootfs.typ() != "layers" {
        return Err(ImageError::malformed(
            what,
            format!("rootfs.type is '{}', expected 'layers'", rootfs.typ()),
        ));
    }
    let diff_ids = rootfs
        .diff_ids()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.parse::<Digest>()
                .map_err(|e| ImageError::malformed(what, format!("rootfs.diff_ids[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImageConfig {
        diff_ids,
        architecture,
        os,
        variant: full.variant().clone(),
        created: full.created().clone(),
        raw,
        full,
    })
}
