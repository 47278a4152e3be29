//! OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/<hex>`; manifests and indexes
//! in OCI or docker-v2 media types.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::source::Source;
use super::{
    build_layers, check_layer_count, parse_config, parse_json, Compression, ImageError,
    ImageManifest, LayerBlob,
};

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANN_DOCKER_REF_TYPE: &str = "vnd.docker.reference.type";

/// Nested indexes followed from index.json.
const MAX_INDEX_DEPTH: usize = 4;

pub(crate) struct Platform {
    pub os: String,
    pub arch: String,
}

/// The OCI architecture name of the host.
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

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: Option<String>,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub platform: Option<DescPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DescPlatform {
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub variant: Option<String>,
}

impl Descriptor {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// Attestation manifests (buildkit) and other non-image entries of an index.
    fn is_attestation(&self) -> bool {
        self.annotation(ANN_DOCKER_REF_TYPE).is_some()
            || self
                .platform
                .as_ref()
                .is_some_and(|p| p.os.as_deref() == Some("unknown"))
    }

    fn platform_string(&self) -> String {
        match &self.platform {
            None => "(no platform)".into(),
            Some(p) => {
                let mut s = format!(
                    "{}/{}",
                    p.os.as_deref().unwrap_or("?"),
                    p.architecture.as_deref().unwrap_or("?")
                );
                if let Some(v) = &p.variant {
                    s.push('/');
                    s.push_str(v);
                }
                s
            }
        }
    }

    /// The image name this entry of index.json carries.
    fn image_name(&self) -> Option<String> {
        self.annotation(ANN_CONTAINERD_NAME)
            .or_else(|| self.annotation(ANN_REF_NAME))
            .map(str::to_string)
    }
}

/// Any of: index, manifest (OCI or docker v2). Which one is decided from media types or shape.
#[derive(Deserialize)]
struct AnyDoc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Index,
    Manifest,
}

fn kind_of_media_type(what: &str, mt: &str) -> Result<Kind, ImageError> {
    match mt {
        OCI_INDEX | DOCKER_LIST => Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Kind::Manifest),
        m if m.starts_with("application/vnd.docker.distribution.manifest.v1") => Err(
            ImageError::malformed(what, "docker schema 1 manifests are not supported"),
        ),
        m => Err(ImageError::malformed(
            what,
            format!("unsupported manifest media type '{m}'"),
        )),
    }
}

/// Decides what a document is and checks schemaVersion / mediaType agreement.
fn classify(what: &str, desc_mt: Option<&str>, doc: &AnyDoc) -> Result<Kind, ImageError> {
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
    if let (Some(a), Some(b)) = (desc_mt, doc.media_type.as_deref()) {
        if a != b {
            return Err(ImageError::malformed(
                what,
                format!("descriptor says mediaType '{a}' but the document says '{b}'"),
            ));
        }
    }
    match desc_mt.or(doc.media_type.as_deref()) {
        Some(mt) => kind_of_media_type(what, mt),
        None if doc.manifests.is_some() => Ok(Kind::Index),
        None if doc.layers.is_some() || doc.config.is_some() => Ok(Kind::Manifest),
        None => Err(ImageError::malformed(
            what,
            "neither an image index nor a manifest (no mediaType, manifests or layers)",
        )),
    }
}

pub(crate) fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Reads a blob named by a descriptor, verifying digest and size.
fn read_blob(source: &Source, what: &str, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let raw = source.read_doc(what, &blob_path(&desc.digest), Some(&desc.digest))?;
    if raw.len() as u64 != desc.size {
        return Err(ImageError::malformed(
            what,
            format!(
                "descriptor size is {} bytes but the blob has {}",
                desc.size,
                raw.len()
            ),
        ));
    }
    Ok(raw)
}

pub(crate) fn load(source: &Source, platform: &Platform) -> Result<Vec<ImageManifest>, ImageError> {
    #[derive(Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let layout: Layout = parse_json(
        "oci-layout",
        &source.read_doc("oci-layout", "oci-layout", None)?,
    )?;
    if !layout.version.starts_with("1.") {
        return Err(ImageError::malformed(
            "oci-layout",
            format!("unsupported imageLayoutVersion '{}'", layout.version),
        ));
    }
    let raw = source.read_doc("index.json", "index.json", None)?;
    let index: AnyDoc = parse_json("index.json", &raw)?;
    if index.schema_version != Some(2) {
        return Err(ImageError::malformed(
            "index.json",
            "schemaVersion is missing or not 2",
        ));
    }
    if let Some(mt) = index.media_type.as_deref() {
        if kind_of_media_type("index.json", mt)? != Kind::Index {
            return Err(ImageError::malformed(
                "index.json",
                format!("mediaType '{mt}' is not an image index"),
            ));
        }
    }
    let entries = index
        .manifests
        .ok_or_else(|| ImageError::malformed("index.json", "no manifests list"))?;

    // Entries sharing a name (or all unnamed ones) are alternatives for different platforms.
    let mut groups: Vec<(Option<String>, Vec<&Descriptor>)> = Vec::new();
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
    entries: &[&'a Descriptor],
    platform: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let candidates: Vec<&Descriptor> = entries
        .iter()
        .copied()
        .filter(|e| !e.is_attestation())
        .collect();
    match candidates.len() {
        0 => return Err(ImageError::malformed(what, "lists no image manifests")),
        1 => return Ok(candidates[0]),
        _ => {}
    }
    let matching: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|e| {
            e.platform.as_ref().is_some_and(|p| {
                p.os.as_deref() == Some(platform.os.as_str())
                    && p.architecture.as_deref() == Some(platform.arch.as_str())
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
        let plain: Vec<&Descriptor> = matching
            .iter()
            .copied()
            .filter(|m| m.platform.as_ref().is_some_and(|p| p.variant.is_none()))
            .collect();
        if plain.len() == 1 {
            return Ok(plain[0]);
        }
        return Err(ImageError::malformed(
            what,
            format!(
                "several manifests for {}/{} ({}); cannot choose",
                platform.os,
                platform.arch,
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
            platform.os,
            platform.arch,
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
    desc: Descriptor,
    raw: Vec<u8>,
    doc: AnyDoc,
}

/// Follows nested indexes (choosing the platform) down to an image manifest.
fn resolve_manifest(
    source: &Source,
    desc: &Descriptor,
    platform: &Platform,
    depth: usize,
) -> Result<LoadedManifest, ImageError> {
    if let Some(mt) = desc.media_type.as_deref() {
        // Refuse unknown media types before reading the blob.
        kind_of_media_type(&format!("manifest {}", desc.digest), mt)?;
    }
    let what = format!("manifest {}", desc.digest);
    let raw = read_blob(source, &what, desc)?;
    let doc: AnyDoc = parse_json(&what, &raw)?;
    match classify(&what, desc.media_type.as_deref(), &doc)? {
        Kind::Manifest => Ok(LoadedManifest {
            desc: desc.clone(),
            raw,
            doc,
        }),
        Kind::Index => {
            if depth >= MAX_INDEX_DEPTH {
                return Err(ImageError::malformed(
                    &what,
                    format!("image indexes nested more than {MAX_INDEX_DEPTH} deep"),
                ));
            }
            let what = format!("image index {}", desc.digest);
            let entries = doc
                .manifests
                .as_ref()
                .ok_or_else(|| ImageError::malformed(&what, "no manifests list"))?;
            let refs: Vec<&Descriptor> = entries.iter().collect();
            let chosen = select_platform(&what, &refs, platform)?;
            resolve_manifest(source, chosen, platform, depth + 1)
        }
    }
}

/// Compression of an accepted layer media type; refuses foreign and unknown ones.
pub(crate) fn layer_compression(
    what: &str,
    media_type: &str,
    urls: Option<&[String]>,
) -> Result<Compression, ImageError> {
    if media_type.contains("nondistributable") || media_type.contains(".foreign.") {
        let from = match urls {
            Some(u) if !u.is_empty() => format!("; its blob is fetched from {}", u.join(", ")),
            _ => String::new(),
        };
        return Err(ImageError::malformed(
            what,
            format!("non-distributable (foreign) layer '{media_type}' is not supported{from}"),
        ));
    }
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
        other => Err(ImageError::malformed(
            what,
            format!("unsupported layer media type '{other}'"),
        )),
    }
}

fn load_manifest(source: &Source, m: &LoadedManifest) -> Result<ImageManifest, ImageError> {
    let what = format!("manifest {}", m.desc.digest);
    let config_desc = m
        .doc
        .config
        .as_ref()
        .ok_or_else(|| ImageError::malformed(&what, "no config descriptor"))?;
    let layer_descs = m
        .doc
        .layers
        .as_ref()
        .ok_or_else(|| ImageError::malformed(&what, "no layers list"))?;
    match config_desc.media_type.as_deref() {
        Some(OCI_CONFIG | DOCKER_CONFIG) => {}
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
    check_layer_count(&what, layer_descs.len(), &config)?;

    let mut blobs = Vec::with_capacity(layer_descs.len());
    for (i, l) in layer_descs.iter().enumerate() {
        let lwhat = format!("{what}: layer {i} ({})", l.digest);
        let mt = l
            .media_type
            .as_deref()
            .ok_or_else(|| ImageError::malformed(&lwhat, "layer has no mediaType"))?;
        let compression = layer_compression(&lwhat, mt, l.urls.as_deref())?;
        let (locator, _) = source.locate(&lwhat, &blob_path(&l.digest))?;
        blobs.push(LayerBlob {
            blob_digest: Some(l.digest.clone()),
            media_type: Some(mt.to_string()),
            size: Some(l.size),
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
