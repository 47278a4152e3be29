//! Property tests: hostile image archives at scale (issue 14), through the
//! entry points `image import` uses to read and verify an archive
//! ([`ImageArchive::open_for_platform`], then [`ImageArchive::open_layer`]
//! read to EOF), without a store.
//!
//! * An OCI layout (as a directory or a tar) of one three-layer image:
//!   `oci-layout`, `index.json`, the manifest and the config are mutated as
//!   JSON (a value replaced by one of the wrong type, a huge or negative
//!   number, a digest of another blob, of the wrong algorithm or length or
//!   with `../` in it, a media type, a path, a string with a newline; a
//!   key removed or added; an element duplicated) and as bytes (bits
//!   flipped, cut, bytes inserted). A mutated blob is either left where
//!   it was (its name now lies) or stored under its new digest with the
//!   descriptors above it updated (so the parser sees it). A layer blob
//!   may be changed in place, the tar's own bytes cut or flipped.
//! * A legacy `docker save` archive: `manifest.json` mutated the same way,
//!   the config (`<hex>.json`) changed in place, a `layer.tar` changed, the
//!   tar's bytes cut or flipped.
//!
//! Properties:
//!
//! * no panic, in open or in reading a layer;
//! * every error, of open or of a layer read, is one non-empty line;
//! * a blob whose bytes no longer hash to its name is never accepted: an
//!   archive with such a manifest or config does not open, and with
//!   nothing else changed, the error is a [`ImageError::DigestMismatch`];
//!   a layer read that reaches EOF gave bytes that hash to the layer's
//!   digest (or, for a legacy uncompressed `layer.tar`, to its diff_id)
//!   and have its size;
//! * what opens is consistent: the config and manifest hash to the digests
//!   the image gives, one diff_id per layer.
//!
//! Runs are deterministic: see [`crate::text::prop`].

use std::cell::RefCell;
use std::collections::BTreeMap;

use proptest::prelude::*;
// Named: `super::*` brings this module, also `prop`.
use proptest::prelude::prop;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use super::*;
use crate::text::prop::{check, one_line};

const OCI_CASES: u32 = 2_000;
const DOCKER_CASES: u32 = 1_000;

/// A temp dir in `/dev/shm` where there is one (see the changeset
/// property tests: making small trees on this VM's ext4 costs 50 times
/// more).
fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("thinlayer-prop-")
        .tempdir_in("/dev/shm")
        .or_else(|_| TempDir::new())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Mutations of JSON documents and bytes

/// Keys that documents of either format have, for inserting.
const KEYS: [&str; 20] = [
    "mediaType",
    "digest",
    "size",
    "schemaVersion",
    "manifests",
    "layers",
    "config",
    "urls",
    "platform",
    "annotations",
    "rootfs",
    "diff_ids",
    "type",
    "architecture",
    "os",
    "imageLayoutVersion",
    "Config",
    "Layers",
    "LayerSources",
    "subject",
];

/// Replacement values: wrong types, absurd numbers, bad digests, media
/// types, paths, text with line breaks.
fn fixed_values() -> Vec<Value> {
    let hex = "a".repeat(64);
    vec![
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e308),
        json!(-0.5),
        json!(MAX_JSON_SIZE + 1),
        json!(1u64 << 62),
        json!(""),
        json!([]),
        json!([null]),
        json!({}),
        json!([{}]),
        json!({"mediaType": OCI_MANIFEST, "digest": format!("sha256:{hex}"), "size": 2}),
        json!(format!("sha256:{hex}")),
        json!(format!("sha256:{}", "A".repeat(64))),
        json!(format!("sha256:{}", "a".repeat(63))),
        json!(format!("sha256:{}", "a".repeat(65))),
        json!(format!("sha512:{}", "a".repeat(128))),
        json!("sha256:../../../../etc/passwd"),
        json!(format!("sha256:{}/../x", "a".repeat(59))),
        json!("md5:d41d8cd98f00b204e9800998ecf8427e"),
        json!("sha256"),
        json!(":"),
        json!(OCI_INDEX),
        json!(OCI_MANIFEST),
        json!(OCI_CONFIG),
        json!(MT_TAR),
        json!(MT_GZIP),
        json!(MT_ZSTD),
        json!(DOCKER_LIST),
        json!("application/vnd.docker.distribution.manifest.v1+json"),
        json!("application/vnd.oci.image.layer.nondistributable.v1.tar"),
        json!("application/vnd.oci.image.layer.v1.tar\nsecond line"),
        json!("text/plain\r"),
        json!("layers"),
        json!("linux"),
        json!("amd64"),
        json!("unknown"),
        json!("../x/layer.tar"),
        json!("/etc/passwd"),
        json!("blobs/sha256/../../x"),
        json!(format!("blobs/sha256/{hex}")),
        json!("a\nb/layer.tar"),
        json!("repositories"),
        json!("."),
        json!("é\u{0}\u{7f}"),
        json!(2),
        json!("1.0.0"),
        json!("2.0.0"),
    ]
}

/// A value to put in a document: a fixed one, a digest of one of the
/// archive's own blobs (a descriptor pointing at the wrong blob), or a
/// short random string or number.
fn jvalue(digests: Vec<String>) -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => prop::sample::select(fixed_values()),
        2 => prop::sample::select(digests).prop_map(Value::String),
        1 => "[a-z0-9:/.+\\n-]{0,16}".prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| json!(n)),
    ]
}

/// One change to a JSON document; nodes are counted in pre-order, the
/// root first.
#[derive(Debug, Clone)]
enum JsonMut {
    Replace(Index, Value),
    Remove(Index),
    Insert(Index, &'static str, Value),
    Duplicate(Index),
}

/// The paths of every node of `v`, root first.
fn nodes(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    at.push(Seg::Key(k.clone()));
                    walk(c, at, out);
                    at.pop();
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    at.push(Seg::At(i));
                    walk(c, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    At(usize),
}

fn node_mut<'v>(v: &'v mut Value, path: &[Seg]) -> &'v mut Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => &mut v[k.as_str()],
        Seg::At(i) => &mut v[*i],
    })
}

impl JsonMut {
    fn apply(&self, doc: &mut Value) {
        let all = nodes(doc);
        let pick = |i: &Index| all[i.index(all.len())].clone();
        match self {
            JsonMut::Replace(i, with) => *node_mut(doc, &pick(i)) = with.clone(),
            JsonMut::Remove(i) => {
                let p = pick(i);
                if let Some((last, parent)) = p.split_last() {
                    match (node_mut(doc, parent), last) {
                        (Value::Object(m), Seg::Key(k)) => {
                            m.remove(k);
                        }
                        (Value::Array(a), Seg::At(i)) => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            JsonMut::Insert(i, key, with) => {
                if let Value::Object(m) = node_mut(doc, &pick(i)) {
                    m.insert(key.to_string(), with.clone());
                }
            }
            JsonMut::Duplicate(i) => {
                if let Value::Array(a) = node_mut(doc, &pick(i)) {
                    if let Some(first) = a.first().cloned() {
                        a.push(first);
                    }
                }
            }
        }
    }
}

fn json_mut(digests: Vec<String>) -> impl Strategy<Value = JsonMut> {
    let v = move || jvalue(digests.clone());
    prop_oneof![
        6 => (any::<Index>(), v()).prop_map(|(i, v)| JsonMut::Replace(i, v)),
        2 => any::<Index>().prop_map(JsonMut::Remove),
        2 => (any::<Index>(), prop::sample::select(&KEYS[..]), v())
            .prop_map(|(i, k, v)| JsonMut::Insert(i, k, v)),
        1 => any::<Index>().prop_map(JsonMut::Duplicate),
    ]
}

/// One change to bytes.
#[derive(Debug, Clone)]
enum ByteMut {
    Cut(Index),
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
}

impl ByteMut {
    fn apply(&self, b: &mut Vec<u8>) {
        match self {
            ByteMut::Cut(i) => b.truncate(i.index(b.len() + 1)),
            ByteMut::Flip(i, bit) => {
                if !b.is_empty() {
                    let k = i.index(b.len());
                    b[k] ^= 1 << bit;
                }
            }
            ByteMut::Insert(i, bytes) => {
                let k = i.index(b.len() + 1);
                b.splice(k..k, bytes.iter().copied());
            }
        }
    }
}

fn byte_mut() -> impl Strategy<Value = ByteMut> {
    prop_oneof![
        1 => any::<Index>().prop_map(ByteMut::Cut),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| ByteMut::Flip(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| ByteMut::Insert(i, b)),
    ]
}

/// The changes to one document.
#[derive(Debug, Clone)]
struct DocMut {
    json: Vec<JsonMut>,
    bytes: Vec<ByteMut>,
    /// A blob: stored under its new digest, the descriptors above it
    /// updated; else left under its old name.
    readdress: bool,
}

impl DocMut {
    /// `doc`'s bytes after the changes.
    fn apply(m: &Option<DocMut>, doc: &Value) -> Vec<u8> {
        let Some(m) = m else {
            return serde_json::to_vec(doc).unwrap();
        };
        let mut v = doc.clone();
        for j in &m.json {
            j.apply(&mut v);
        }
        let mut b = serde_json::to_vec(&v).unwrap();
        for x in &m.bytes {
            x.apply(&mut b);
        }
        b
    }

    fn readdressed(m: &Option<DocMut>) -> bool {
        m.as_ref().is_some_and(|m| m.readdress)
    }
}

/// Mostly untouched; else JSON changes, byte changes or both.
fn doc_mut(digests: Vec<String>, weight_none: u32) -> impl Strategy<Value = Option<DocMut>> {
    let some = (
        prop::collection::vec(json_mut(digests), 0..3),
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(byte_mut(), 1..3)],
        prop::bool::weighted(0.6),
    )
        .prop_map(|(json, bytes, readdress)| {
            Some(DocMut {
                json,
                bytes,
                readdress,
            })
        });
    prop_oneof![weight_none => Just(None), 1 => some]
}

// ---------------------------------------------------------------------------------------------
// What an archive may give, checked

/// Outcomes by kind ("ok" for an archive that opened).
#[derive(Default)]
struct Tally(RefCell<BTreeMap<&'static str, u32>>);

impl Tally {
    fn add(&self, k: &'static str) {
        *self.0.borrow_mut().entry(k).or_default() += 1;
    }

    #[track_caller]
    fn assert_varied(&self, name: &str, kinds: usize) {
        let t = self.0.borrow();
        eprintln!("{name}: outcomes {t:?}");
        assert!(t.get("ok").copied().unwrap_or(0) > 0, "no archive opened");
        assert!(
            t.get("layer read refused").copied().unwrap_or(0) > 0,
            "no layer read was refused"
        );
        let errors = t
            .keys()
            .filter(|k| **k != "ok" && !k.starts_with("layer"))
            .count();
        assert!(errors >= kinds, "errors of only {errors} kinds");
    }
}

/// Opens `path` and reads every layer; checks the properties that hold
/// whatever the archive was. Returns the error of open.
fn open_and_read(path: &Path, tally: &Tally) -> Result<Option<ImageError>, TestCaseError> {
    let archive = match ImageArchive::open_for_platform(path, "linux", "amd64") {
        Ok(a) => a,
        Err(e) => {
            tally.add(kind(&e));
            one_line(&e.to_string())?;
            return Ok(Some(e));
        }
    };
    tally.add("ok");
    for im in archive.images() {
        prop_assert_eq!(&im.config_digest, &sha256_digest(&im.config.raw));
        if let (Some(d), Some(raw)) = (&im.manifest_digest, &im.manifest_raw) {
            prop_assert_eq!(d, &sha256_digest(raw));
        }
        prop_assert_eq!(im.layers.len(), im.config.diff_ids.len());
        for l in &im.layers {
            let mut r = archive
                .open_layer(l)
                .map_err(|e| TestCaseError::fail(format!("open_layer: {e}")))?;
            let mut bytes = Vec::new();
            match r.read_to_end(&mut bytes) {
                Ok(_) => {
                    tally.add("layer read");
                    let actual = sha256_digest(&bytes);
                    match &l.blob_digest {
                        Some(d) => prop_assert_eq!(d, &actual, "a layer read gave other bytes"),
                        None if !digest::looks_compressed(&bytes) => {
                            prop_assert_eq!(&l.diff_id, &actual, "a layer.tar gave other bytes")
                        }
                        None => {}
                    }
                    if let Some(size) = l.size {
                        prop_assert_eq!(size, bytes.len() as u64);
                    }
                }
                Err(e) => {
                    tally.add("layer read refused");
                    prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", e);
                    one_line(&e.to_string())?;
                }
            }
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// OCI layouts

/// The image every OCI case starts from: three layers (gzip, plain, zstd
/// by media type), its config and manifest as JSON values.
struct OciFixture {
    layers: Vec<Layer>,
    config: Value,
    manifest: Value,
    /// The digests of its blobs, as strings (for descriptors pointing at
    /// the wrong blob).
    digests: Vec<String>,
}

impl OciFixture {
    fn new() -> OciFixture {
        let layers = three_layers();
        let config = config_value(&layers, "amd64");
        let mut o = Oci::default();
        let manifest = o.manifest(&layers, &config);
        let mut digests: Vec<String> = o.blobs.iter().map(|(d, _)| d.to_string()).collect();
        digests.push(sha256_digest(&serde_json::to_vec(&manifest).unwrap()).to_string());
        OciFixture {
            layers,
            config,
            manifest,
            digests,
        }
    }
}

/// A change to a layer blob's bytes, in place.
#[derive(Debug, Clone)]
struct LayerMut {
    layer: Index,
    change: ByteMut,
}

#[derive(Debug, Clone)]
struct OciCase {
    oci_layout: Option<DocMut>,
    index: Option<DocMut>,
    manifest: Option<DocMut>,
    config: Option<DocMut>,
    layer: Option<LayerMut>,
    /// The layout as a tar, maybe with its bytes changed.
    tar: Option<Vec<ByteMut>>,
}

fn oci_case(digests: Vec<String>) -> impl Strategy<Value = OciCase> {
    (
        doc_mut(digests.clone(), 12),
        doc_mut(digests.clone(), 2),
        doc_mut(digests.clone(), 2),
        doc_mut(digests, 2),
        prop::option::weighted(
            0.2,
            (any::<Index>(), byte_mut()).prop_map(|(layer, change)| LayerMut { layer, change }),
        ),
        prop::option::weighted(
            0.3,
            prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(byte_mut(), 1..3)],
        ),
    )
        .prop_map(
            |(oci_layout, index, manifest, config, layer, tar)| OciCase {
                oci_layout,
                index,
                manifest,
                config,
                layer,
                tar,
            },
        )
}

/// What a case's archive must do, whatever else it does.
struct Expect {
    /// A manifest or config left under its old name with other bytes:
    /// the archive must not open.
    tampered: bool,
    /// ... and nothing was changed that is read before it: the error is a
    /// digest mismatch.
    mismatch_first: bool,
}

impl OciCase {
    /// Writes the archive into `dir`; returns its path.
    fn write(&self, fx: &OciFixture, dir: &Path) -> (PathBuf, Expect) {
        let layout = dir.join("layout");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let put = |d: &Digest, b: &[u8]| fs::write(blobs.join(d.hex()), b).unwrap();

        for (i, l) in fx.layers.iter().enumerate() {
            let mut b = l.blob.clone();
            if let Some(m) = &self.layer {
                if m.layer.index(fx.layers.len()) == i {
                    m.change.apply(&mut b);
                }
            }
            put(&sha256_digest(&l.blob), &b);
        }

        // Config, then the manifest naming it, then the index naming that.
        let config_orig = serde_json::to_vec(&fx.config).unwrap();
        let config = DocMut::apply(&self.config, &fx.config);
        let mut manifest_doc = fx.manifest.clone();
        let config_name = if DocMut::readdressed(&self.config) {
            manifest_doc["config"]["digest"] = json!(sha256_digest(&config).to_string());
            manifest_doc["config"]["size"] = json!(config.len());
            sha256_digest(&config)
        } else {
            sha256_digest(&config_orig)
        };
        put(&config_name, &config);
        let config_tampered = !DocMut::readdressed(&self.config) && config != config_orig;

        let manifest_orig = serde_json::to_vec(&fx.manifest).unwrap();
        let manifest = DocMut::apply(&self.manifest, &manifest_doc);
        let manifest_name = if DocMut::readdressed(&self.manifest) {
            sha256_digest(&manifest)
        } else {
            sha256_digest(&manifest_orig)
        };
        put(&manifest_name, &manifest);
        let manifest_tampered = !DocMut::readdressed(&self.manifest) && manifest != manifest_orig;
        let desc = json!({
            "mediaType": OCI_MANIFEST,
            "digest": manifest_name.to_string(),
            "size": if DocMut::readdressed(&self.manifest) {
                manifest.len()
            } else {
                manifest_orig.len()
            },
        });
        let index_doc = index(vec![named(desc, "v1")]);
        fs::write(
            layout.join("index.json"),
            DocMut::apply(&self.index, &index_doc),
        )
        .unwrap();
        let layout_doc = json!({"imageLayoutVersion": "1.0.0"});
        fs::write(
            layout.join("oci-layout"),
            DocMut::apply(&self.oci_layout, &layout_doc),
        )
        .unwrap();

        let before_blobs = self.index.is_none()
            && self.oci_layout.is_none()
            && self.tar.as_ref().is_none_or(|t| t.is_empty());
        let expect = Expect {
            tampered: config_tampered || manifest_tampered,
            mismatch_first: before_blobs
                && (manifest_tampered || (self.manifest.is_none() && config_tampered)),
        };
        let Some(tar_muts) = &self.tar else {
            return (layout, expect);
        };
        let tar = dir.join("layout.tar");
        tar_dir(&layout, &tar);
        if !tar_muts.is_empty() {
            let mut b = fs::read(&tar).unwrap();
            for m in tar_muts {
                m.apply(&mut b);
            }
            fs::write(&tar, b).unwrap();
        }
        // A changed tar may have changed any document: only the general
        // properties then.
        let expect = if tar_muts.is_empty() {
            expect
        } else {
            Expect {
                tampered: false,
                mismatch_first: false,
            }
        };
        (tar, expect)
    }
}

/// An OCI layout whose documents, blobs and tar are mutated.
#[test]
fn plain_oci_layout_never_panics_and_never_accepts_a_changed_blob() {
    let fx = OciFixture::new();
    // Unchanged, the fixture opens, as a directory and as a tar.
    let clean = OciCase {
        oci_layout: None,
        index: None,
        manifest: None,
        config: None,
        layer: None,
        tar: None,
    };
    for tar in [None, Some(vec![])] {
        let t = scratch();
        let (p, _) = OciCase {
            tar,
            ..clean.clone()
        }
        .write(&fx, t.path());
        let a = open(&p);
        check_three_layer_image(&a, &a.images()[0], &fx.layers);
    }
    let tally = Tally::default();
    check(
        "plain_oci_layout_never_panics_and_never_accepts_a_changed_blob",
        OCI_CASES,
        oci_case(fx.digests.clone()),
        |c| {
            let t = scratch();
            let (path, expect) = c.write(&fx, t.path());
            let err = open_and_read(&path, &tally)?;
            if expect.tampered {
                prop_assert!(err.is_some(), "a changed blob was accepted");
            }
            if expect.mismatch_first {
                let e = err.as_ref().unwrap();
                prop_assert!(
                    matches!(e, ImageError::DigestMismatch { .. }),
                    "a changed blob was not refused as a digest mismatch: {}",
                    e
                );
            }
            Ok(())
        },
    );
    tally.assert_varied("oci", 3);
}

// ---------------------------------------------------------------------------------------------
// docker save

#[derive(Debug, Clone)]
struct DockerCase {
    manifest: Option<DocMut>,
    /// The config changed in place (its name is its digest).
    config: Option<DocMut>,
    /// A bit of `layer.tar` of layer 1 flipped.
    layer: Option<(Index, u8)>,
    tar: Vec<ByteMut>,
}

fn docker_case(digests: Vec<String>) -> impl Strategy<Value = DockerCase> {
    (
        doc_mut(digests.clone(), 1),
        doc_mut(digests, 4),
        prop::option::weighted(0.2, (any::<Index>(), 0u8..8)),
        prop_oneof![4 => Just(vec![]), 1 => prop::collection::vec(byte_mut(), 1..3)],
    )
        .prop_map(|(manifest, config, layer, tar)| DockerCase {
            manifest,
            config,
            layer,
            tar,
        })
}

fn docker_layers() -> (Vec<u8>, Vec<u8>) {
    (
        layer_tar(&[("a.txt", b"hello")]),
        layer_tar(&[("b.txt", b"world")]),
    )
}

fn docker_config() -> Value {
    let (l0, l1) = docker_layers();
    let diff_ids: Vec<String> = [&l0, &l1, &l0]
        .iter()
        .map(|l| sha256_digest(l).to_string())
        .collect();
    json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
}

/// The v1 ids (directory names) of the three layers.
fn docker_ids() -> [String; 3] {
    [hex_of("v1-0"), hex_of("v1-1"), hex_of("v1-2")]
}

/// A legacy `docker save` of three layers (the third a symlink to the
/// first's `layer.tar`), as `docker_legacy` in the tests above makes it,
/// with the case's changes.
fn write_docker(c: &DockerCase, path: &Path) -> Expect {
    let (l0, l1) = docker_layers();
    let config_doc = docker_config();
    let config_orig = serde_json::to_vec(&config_doc).unwrap();
    let config = DocMut::apply(&c.config, &config_doc);
    let ids = docker_ids();
    let config_name = format!("{}.json", sha256_digest(&config_orig).hex());
    let manifest_doc = json!([{
        "Config": config_name,
        "RepoTags": ["example.com/app:1.0"],
        "Layers": ids.iter().map(|i| format!("{i}/layer.tar")).collect::<Vec<_>>(),
    }]);
    let manifest = DocMut::apply(&c.manifest, &manifest_doc);
    let mut l1 = l1.clone();
    if let Some((i, bit)) = &c.layer {
        let k = i.index(l1.len());
        l1[k] ^= 1 << bit;
    }
    let mut t = TarW::new();
    t.dir(&format!("{}/", ids[0]))
        .file(&format!("{}/layer.tar", ids[0]), &l0)
        .dir(&format!("{}/", ids[1]))
        .file(&format!("{}/layer.tar", ids[1]), &l1)
        .dir(&format!("{}/", ids[2]))
        .symlink(
            &format!("{}/layer.tar", ids[2]),
            &format!("../{}/layer.tar", ids[0]),
        )
        .file(&config_name, &config)
        .file("manifest.json", &manifest)
        .write_to(path);
    if !c.tar.is_empty() {
        let mut b = fs::read(path).unwrap();
        for m in &c.tar {
            m.apply(&mut b);
        }
        fs::write(path, b).unwrap();
    }
    let tampered = config != config_orig && c.tar.is_empty();
    Expect {
        tampered,
        mismatch_first: tampered && c.manifest.is_none(),
    }
}

/// A `docker save` archive whose `manifest.json`, config, layer and tar
/// bytes are mutated.
#[test]
fn plain_docker_archive_never_panics_and_never_accepts_a_changed_blob() {
    // The archive's own member names and digests, for values that point
    // at the wrong member.
    let config_digest = sha256_digest(&serde_json::to_vec(&docker_config()).unwrap());
    let (l0, l1) = docker_layers();
    let mut digests: Vec<String> = docker_ids()
        .iter()
        .map(|i| format!("{i}/layer.tar"))
        .collect();
    digests.extend([
        format!("{}.json", config_digest.hex()),
        "manifest.json".to_string(),
        config_digest.to_string(),
        sha256_digest(&l0).to_string(),
        sha256_digest(&l1).to_string(),
    ]);
    let tally = Tally::default();
    check(
        "plain_docker_archive_never_panics_and_never_accepts_a_changed_blob",
        DOCKER_CASES,
        docker_case(digests),
        |c| {
            let t = scratch();
            let path = t.path().join("save.tar");
            let expect = write_docker(&c, &path);
            let err = open_and_read(&path, &tally)?;
            if expect.tampered {
                prop_assert!(err.is_some(), "a changed config was accepted");
            }
            if expect.mismatch_first {
                let e = err.as_ref().unwrap();
                prop_assert!(
                    matches!(e, ImageError::DigestMismatch { .. }),
                    "a changed config was not refused as a digest mismatch: {}",
                    e
                );
            }
            Ok(())
        },
    );
    tally.assert_varied("docker", 3);
}
