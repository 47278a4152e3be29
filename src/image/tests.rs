//! Tests: fixtures are built here (OCI layouts as directories and tars, docker-save archives in
//! the legacy and blob layouts), plus one image built with the real `umoci` tool.

mod prop;

use super::oci::DOCKER_LIST;
use super::*;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

// ---------------------------------------------------------------------------------------------
// fixture helpers

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn hex_of(s: &str) -> String {
    sha256_digest(s.as_bytes()).hex().to_string()
}

#[derive(Clone)]
struct Layer {
    mt: String,
    blob: Vec<u8>,
    diff_id: Digest,
}

/// gzip, uncompressed, and "zstd" (declared by media type; bytes are only hashed).
fn three_layers() -> Vec<Layer> {
    let t0 = layer_tar(&[("a.txt", b"hello")]);
    let t1 = layer_tar(&[("b.txt", b"world")]);
    let mut fake_zstd = vec![0x28, 0xb5, 0x2f, 0xfd];
    fake_zstd.extend_from_slice(b"not really zstd, only hashed");
    vec![
        Layer {
            mt: MT_GZIP.into(),
            blob: gzip(&t0),
            diff_id: sha256_digest(&t0),
        },
        Layer {
            mt: MT_TAR.into(),
            diff_id: sha256_digest(&t1),
            blob: t1,
        },
        Layer {
            mt: MT_ZSTD.into(),
            blob: fake_zstd,
            diff_id: sha256_digest(b"the tar inside the zstd"),
        },
    ]
}

fn config_value(layers: &[Layer], arch: &str) -> Value {
    json!({
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        },
    })
}

#[derive(Default)]
struct Oci {
    blobs: Vec<(Digest, Vec<u8>)>,
}

impl Oci {
    fn add(&mut self, bytes: Vec<u8>) -> Digest {
        let d = sha256_digest(&bytes);
        if !self.blobs.iter().any(|(x, _)| *x == d) {
            self.blobs.push((d.clone(), bytes));
        }
        d
    }

    fn desc(&mut self, mt: &str, bytes: Vec<u8>) -> Value {
        let size = bytes.len();
        let d = self.add(bytes);
        json!({"mediaType": mt, "digest": d.to_string(), "size": size})
    }

    /// A manifest document (not yet stored) for `layers` with `config`.
    fn manifest(&mut self, layers: &[Layer], config: &Value) -> Value {
        let cdesc = self.desc(OCI_CONFIG, serde_json::to_vec(config).unwrap());
        let ldescs: Vec<Value> = layers
            .iter()
            .map(|l| self.desc(&l.mt, l.blob.clone()))
            .collect();
        json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": ldescs})
    }

    fn store_manifest(&mut self, manifest: &Value) -> Value {
        self.desc(OCI_MANIFEST, serde_json::to_vec(manifest).unwrap())
    }

    fn image(&mut self, layers: &[Layer], arch: &str) -> Value {
        self.image_with_config(layers, &config_value(layers, arch))
    }

    /// A stored manifest of `layers` with `config`; its descriptor.
    fn image_with_config(&mut self, layers: &[Layer], config: &Value) -> Value {
        let m = self.manifest(layers, config);
        self.store_manifest(&m)
    }

    fn write(&self, dir: &Path, index: &Value) {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        for (d, bytes) in &self.blobs {
            fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        }
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        fs::write(dir.join("index.json"), serde_json::to_vec(index).unwrap()).unwrap();
    }
}

fn index(manifests: Vec<Value>) -> Value {
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
}

fn named(mut desc: Value, name: &str) -> Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": name});
    desc
}

fn with_platform(mut desc: Value, os: &str, arch: &str) -> Value {
    desc["platform"] = json!({"os": os, "architecture": arch});
    desc
}

fn blob_file(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(d.hex())
}

/// Writes a tar archive with hand-made members (raw headers, so hostile names are possible).
struct TarW {
    b: tar::Builder<Vec<u8>>,
}

impl TarW {
    fn new() -> Self {
        TarW {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, name: &str, size: u64) -> tar::Header {
        let mut h = tar::Header::new_old();
        let raw = name.as_bytes();
        assert!(raw.len() < 100, "test names are short");
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, name, data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, name, 0);
        h.set_cksum();
        self.b.append(&h, io::empty()).unwrap();
        self
    }

    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(kind, name, 0);
        let raw = target.as_bytes();
        h.as_old_mut().linkname[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        self.b.append(&h, io::empty()).unwrap();
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Symlink, name, target)
    }

    fn write_to(&mut self, path: &Path) {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        fs::write(path, b.into_inner().unwrap()).unwrap();
    }
}

/// Tars a directory tree (members prefixed with "./", symlinks kept as symlinks).
fn tar_dir(src: &Path, out: &Path) {
    fn walk(t: &mut TarW, root: &Path, rel: &str) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let p = root.join(&r);
            let m = p.symlink_metadata().unwrap();
            if m.file_type().is_symlink() {
                t.symlink(
                    &format!("./{r}"),
                    fs::read_link(&p).unwrap().to_str().unwrap(),
                );
            } else if m.is_dir() {
                t.dir(&format!("./{r}/"));
                walk(t, root, &r);
            } else {
                t.file(&format!("./{r}"), &fs::read(&p).unwrap());
            }
        }
    }
    let mut t = TarW::new();
    walk(&mut t, src, "");
    t.write_to(out);
}

fn read_all(archive: &ImageArchive, layer: &LayerRef) -> io::Result<Vec<u8>> {
    let mut r = archive.open_layer(layer).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

/// Reads until an error; returns (bytes delivered before it, the error).
fn read_until_error(archive: &ImageArchive, layer: &LayerRef) -> (Vec<u8>, io::Error) {
    let mut r = archive.open_layer(layer).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        match r.read(&mut buf) {
            Ok(0) => panic!("reader reached EOF without an error"),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, e),
        }
    }
}

fn kind(e: &ImageError) -> &'static str {
    match e {
        ImageError::NotAnImage { .. } => "NotAnImage",
        ImageError::Malformed { .. } => "Malformed",
        ImageError::Hostile { .. } => "Hostile",
        ImageError::DigestMismatch { .. } => "DigestMismatch",
        ImageError::TooLarge { .. } => "TooLarge",
        ImageError::Io { .. } => "Io",
    }
}

#[track_caller]
fn expect_err(path: &Path, want: &str, needle: &str) -> ImageError {
    let e = ImageArchive::open_for_platform(path, "linux", "amd64").unwrap_err();
    let msg = e.to_string();
    assert_eq!(kind(&e), want, "wrong error kind: {msg}");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    assert!(!msg.contains('\n'), "message is one line: {msg:?}");
    e
}

fn open(path: &Path) -> ImageArchive {
    ImageArchive::open_for_platform(path, "linux", "amd64").unwrap()
}

/// Checks an image made from `three_layers()`: digests, diff_ids, chain ids and blob bytes.
fn check_three_layer_image(archive: &ImageArchive, image: &ImageManifest, layers: &[Layer]) {
    assert_eq!(image.layers.len(), 3);
    let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(image.config.diff_ids, diff_ids);
    assert_eq!(image.config.architecture.as_deref(), Some("amd64"));
    assert_eq!(image.config.os.as_deref(), Some("linux"));
    assert_eq!(image.config_digest, sha256_digest(&image.config.raw));
    let chains = chain_ids(&diff_ids);
    let want_comp = [Compression::Gzip, Compression::None, Compression::Zstd];
    for (i, (l, want)) in image.layers.iter().zip(layers).enumerate() {
        assert_eq!(l.index, i);
        assert_eq!(l.blob_digest.as_ref(), Some(&sha256_digest(&want.blob)));
        assert_eq!(l.media_type.as_deref(), Some(want.mt.as_str()));
        assert_eq!(l.size, Some(want.blob.len() as u64));
        assert_eq!(l.compression, want_comp[i]);
        assert_eq!(l.diff_id, want.diff_id);
        assert_eq!(l.chain_id, chains[i]);
        assert_eq!(read_all(archive, l).unwrap(), want.blob);
    }
    assert_eq!(
        gunzip(&read_all(archive, &image.layers[0]).unwrap()),
        layer_tar(&[("a.txt", b"hello")])
    );
}

// ---------------------------------------------------------------------------------------------
// digests

#[test]
fn plain_digest_parse_display_serde() {
    let hex = "ab".repeat(32);
    let d: Digest = format!("sha256:{hex}").parse().unwrap();
    assert_eq!(d.hex(), hex);
    assert_eq!(d.to_string(), format!("sha256:{hex}"));
    let j = serde_json::to_string(&d).unwrap();
    assert_eq!(j, format!("\"sha256:{hex}\""));
    assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);

    let e = format!("sha512:{}", "ab".repeat(64))
        .parse::<Digest>()
        .unwrap_err();
    assert!(e.to_string().contains("only sha256 is supported"), "{e}");
    for bad in [
        format!("sha256:{}", "AB".repeat(32)),
        format!("sha256:{}", "ab".repeat(31)),
        format!("sha256:{}x", "ab".repeat(32)),
        hex.clone(),
        String::new(),
    ] {
        assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
    }
    assert!(serde_json::from_str::<Digest>("\"md5:abc\"").is_err());
    assert_eq!(
        sha256_digest(b"").to_string(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn plain_chain_ids_match_hand_computed() {
    let d = |c: char| -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    };
    let ids = [d('1'), d('2'), d('3')];
    let chains = chain_ids(&ids);
    // printf 'sha256:111…1 sha256:222…2' | sha256sum, then the same with that and 333…3.
    assert_eq!(chains[0], ids[0]);
    assert_eq!(
        chains[1].hex(),
        "9932074217c35353d2e03a3f5a86549f7c67bfeb0ba53e23d69f4d4c8f7958f5"
    );
    assert_eq!(
        chains[2].hex(),
        "50127c0d6b338be78246434b4bce23ecf75e505158ea0bbd15effeb162fbf3ec"
    );
    assert!(chain_ids(&[]).is_empty());
}

// ---------------------------------------------------------------------------------------------
// OCI layouts

fn oci_three_layer_dir(dir: &Path) -> Vec<Layer> {
    let layers = three_layers();
    let mut o = Oci::default();
    let m = o.image(&layers, "amd64");
    o.write(dir, &index(vec![named(m, "v1")]));
    layers
}

#[test]
fn plain_oci_dir_three_layers() {
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    let a = open(t.path());
    assert_eq!(a.format(), ArchiveFormat::OciDir);
    assert_eq!(a.images().len(), 1);
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["v1".to_string()]);
    assert_eq!(
        im.manifest_digest.as_ref(),
        Some(&sha256_digest(im.manifest_raw.as_ref().unwrap()))
    );
    check_three_layer_image(&a, im, &layers);
}

#[test]
fn plain_oci_tar_three_layers_and_parallel_readers() {
    let t = TempDir::new().unwrap();
    let dir = t.path().join("layout");
    let layers = oci_three_layer_dir(&dir);
    let tar_path = t.path().join("image.tar");
    tar_dir(&dir, &tar_path);
    let a = open(&tar_path);
    assert_eq!(a.format(), ArchiveFormat::OciTar);
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["v1".to_string()]);
    check_three_layer_image(&a, im, &layers);

    // Readers of one tar can be used from several threads at once (positioned reads).
    std::thread::scope(|s| {
        let handles: Vec<_> = im
            .layers
            .iter()
            .map(|l| s.spawn(|| read_all(&a, l).unwrap()))
            .collect();
        for (h, l) in handles.into_iter().zip(&layers) {
            assert_eq!(h.join().unwrap(), l.blob);
        }
    });
}

#[test]
fn plain_oci_two_tags_of_one_image_are_merged() {
    let t = TempDir::new().unwrap();
    let layers = three_layers();
    let mut o = Oci::default();
    let m = o.image(&layers, "amd64");
    let other = o.image(&layers[..1], "amd64");
    o.write(
        t.path(),
        &index(vec![
            named(m.clone(), "v1"),
            named(other, "small"),
            named(m, "latest"),
        ]),
    );
    let a = open(t.path());
    assert_eq!(a.images().len(), 2);
    assert_eq!(a.images()[0].names, vec!["v1", "latest"]);
    assert_eq!(a.images()[1].names, vec!["small"]);
    assert_eq!(a.images()[1].layers.len(), 1);
}

#[test]
fn plain_oci_symlink_inside_layout_is_followed() {
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    // Move one blob to a store inside the layout and leave a relative symlink behind.
    let d = sha256_digest(&layers[1].blob);
    fs::create_dir(t.path().join("store")).unwrap();
    fs::rename(blob_file(t.path(), &d), t.path().join("store/b")).unwrap();
    std::os::unix::fs::symlink("../../store/b", blob_file(t.path(), &d)).unwrap();
    let a = open(t.path());
    assert_eq!(
        read_all(&a, &a.images()[0].layers[1]).unwrap(),
        layers[1].blob
    );
}

#[test]
fn plain_index_two_platforms_picks_amd64() {
    let t = TempDir::new().unwrap();
    let layers = three_layers();
    let mut o = Oci::default();
    let amd = with_platform(o.image(&layers, "amd64"), "linux", "amd64");
    let arm = with_platform(o.image(&layers[..2], "arm64"), "linux", "arm64");
    let mut att = o.image(&layers[..1], "unknown");
    att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    att["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    // Nested: index.json -> image index -> {arm64, amd64, attestation}.
    let nested = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [arm.clone(), amd.clone(), att]});
    let nested_desc = o.desc(OCI_INDEX, serde_json::to_vec(&nested).unwrap());
    o.write(t.path(), &index(vec![named(nested_desc, "multi")]));
    let a = open(t.path());
    assert_eq!(a.images().len(), 1);
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["multi"]);
    assert_eq!(im.config.architecture.as_deref(), Some("amd64"));
    assert_eq!(im.layers.len(), 3);
    let arm64 = ImageArchive::open_for_platform(t.path(), "linux", "arm64").unwrap();
    assert_eq!(
        arm64.images()[0].config.architecture.as_deref(),
        Some("arm64")
    );
    assert_eq!(arm64.images()[0].layers.len(), 2);

    // Flat: index.json itself lists the platforms (docker manifest-list media type nested
    // one level down works the same way).
    let t2 = TempDir::new().unwrap();
    o.write(t2.path(), &index(vec![arm, amd]));
    let a = open(t2.path());
    assert_eq!(a.images().len(), 1);
    assert_eq!(a.images()[0].config.architecture.as_deref(), Some("amd64"));
    assert!(a.images()[0].names.is_empty());

    // Default open() uses the host architecture.
    let host = ImageArchive::open(t2.path()).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            host.images()[0].config.architecture.as_deref(),
            Some("amd64")
        );
    }
}

#[test]
fn plain_index_docker_manifest_list_without_match_is_refused() {
    let t = TempDir::new().unwrap();
    let layers = three_layers();
    let mut o = Oci::default();
    let arm = with_platform(o.image(&layers, "arm64"), "linux", "arm64");
    let ppc = with_platform(o.image(&layers[..1], "ppc64le"), "linux", "ppc64le");
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [arm, ppc]});
    let d = o.desc(DOCKER_LIST, serde_json::to_vec(&list).unwrap());
    o.write(t.path(), &index(vec![named(d, "x")]));
    expect_err(
        t.path(),
        "Malformed",
        "no manifest for linux/amd64 among linux/arm64, linux/ppc64le",
    );
    // The only manifest of an index is taken whatever its platform.
    let t2 = TempDir::new().unwrap();
    let mut o = Oci::default();
    let arm = with_platform(o.image(&layers, "arm64"), "linux", "arm64");
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [arm]});
    let d = o.desc(DOCKER_LIST, serde_json::to_vec(&list).unwrap());
    o.write(t2.path(), &index(vec![d]));
    assert_eq!(
        open(t2.path()).images()[0].config.architecture.as_deref(),
        Some("arm64")
    );
}

// ---------------------------------------------------------------------------------------------
// blob verification

#[test]
fn plain_reader_corrupt_byte_fails_on_final_read() {
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    let d = sha256_digest(&layers[1].blob);
    let mut bytes = layers[1].blob.clone();
    bytes[100] ^= 0x01;
    fs::write(blob_file(t.path(), &d), &bytes).unwrap();
    let a = open(t.path()); // layers are not read at open
    let (got, e) = read_until_error(&a, &a.images()[0].layers[1]);
    assert_eq!(
        got, bytes,
        "every byte is delivered before the failing final read"
    );
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let msg = e.to_string();
    assert!(msg.contains(&d.to_string()), "{msg}");
    assert!(msg.contains(&sha256_digest(&bytes).to_string()), "{msg}");
    // Later reads keep failing.
    let mut r = a.open_layer(&a.images()[0].layers[1]).unwrap();
    assert!(io::copy(&mut r, &mut io::sink()).is_err());
    assert!(r.read(&mut [0u8; 8]).is_err());
    // Other layers are fine, and a completed reader keeps returning EOF.
    let mut r = a.open_layer(&a.images()[0].layers[0]).unwrap();
    io::copy(&mut r, &mut io::sink()).unwrap();
    assert_eq!(r.read(&mut [0u8; 8]).unwrap(), 0);
}

#[test]
fn plain_reader_truncated_or_extended_blob_fails() {
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    let d = sha256_digest(&layers[0].blob);
    let short = &layers[0].blob[..layers[0].blob.len() - 5];
    fs::write(blob_file(t.path(), &d), short).unwrap();
    let a = open(t.path());
    let (got, e) = read_until_error(&a, &a.images()[0].layers[0]);
    assert_eq!(got, short);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains(&d.to_string()), "{e}");
    assert!(e.to_string().contains("bytes read"), "{e}");

    let mut long = layers[0].blob.clone();
    long.extend_from_slice(b"trailing");
    fs::write(blob_file(t.path(), &d), &long).unwrap();
    let (got, e) = read_until_error(&a, &a.images()[0].layers[0]);
    assert!(got.len() <= layers[0].blob.len());
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains(&d.to_string()), "{e}");
}

#[test]
fn plain_reader_corrupt_member_in_tar_fails() {
    let t = TempDir::new().unwrap();
    let dir = t.path().join("layout");
    let layers = oci_three_layer_dir(&dir);
    let tar_path = t.path().join("image.tar");
    tar_dir(&dir, &tar_path);
    // Flip a byte of layer 2's blob inside the tar.
    let mut raw = fs::read(&tar_path).unwrap();
    let pos = raw
        .windows(layers[2].blob.len())
        .position(|w| w == layers[2].blob.as_slice())
        .unwrap();
    raw[pos + 10] ^= 0xff;
    fs::write(&tar_path, &raw).unwrap();
    let a = open(&tar_path);
    let (_, e) = read_until_error(&a, &a.images()[0].layers[2]);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e
        .to_string()
        .contains(&sha256_digest(&layers[2].blob).to_string()));
    assert_eq!(
        read_all(&a, &a.images()[0].layers[1]).unwrap(),
        layers[1].blob
    );
}

// ---------------------------------------------------------------------------------------------
// docker save

struct DockerLegacy {
    layers: Vec<Vec<u8>>, // uncompressed tars, bottom to top; layer 2 == layer 0
    config: Vec<u8>,
}

/// A legacy `docker save`: `<id>/layer.tar`, `<hex>.json`, the top layer a symlink to the
/// bottom one (docker does this for layers with identical content).
fn docker_legacy(
    path: &Path,
    edit: impl FnOnce(&mut TarW, &mut Value, &mut Vec<u8>),
) -> DockerLegacy {
    let l0 = layer_tar(&[("a.txt", b"hello")]);
    let l1 = layer_tar(&[("b.txt", b"world")]);
    let layers = vec![l0.clone(), l1.clone(), l0.clone()];
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| sha256_digest(l).to_string())
        .collect();
    let mut config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let ids = [hex_of("v1-0"), hex_of("v1-1"), hex_of("v1-2")];
    let config_name = format!("{}.json", sha256_digest(&config).hex());
    let mut manifest = json!([{
        "Config": config_name,
        "RepoTags": ["example.com/app:1.0", "app:latest"],
        "Layers": ids.iter().map(|i| format!("{i}/layer.tar")).collect::<Vec<_>>(),
    }]);
    let mut t = TarW::new();
    t.dir(&format!("{}/", ids[0]))
        .file(&format!("{}/VERSION", ids[0]), b"1.0")
        .file(&format!("{}/json", ids[0]), b"{}")
        .file(&format!("{}/layer.tar", ids[0]), &l0)
        .dir(&format!("{}/", ids[1]))
        .file(&format!("{}/layer.tar", ids[1]), &l1)
        .dir(&format!("{}/", ids[2]))
        .symlink(
            &format!("{}/layer.tar", ids[2]),
            &format!("../{}/layer.tar", ids[0]),
        )
        .file("repositories", b"{}");
    edit(&mut t, &mut manifest, &mut config);
    t.file(&config_name, &config)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .write_to(path);
    DockerLegacy { layers, config }
}

#[test]
fn plain_docker_legacy_symlinked_shared_layer() {
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    let fx = docker_legacy(&p, |_, _, _| {});
    let a = open(&p);
    assert_eq!(a.format(), ArchiveFormat::DockerTar);
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["example.com/app:1.0", "app:latest"]);
    assert_eq!(im.config.raw, fx.config);
    assert_eq!(im.config_digest, sha256_digest(&fx.config));
    assert!(im.manifest_digest.is_none());
    let diff_ids: Vec<Digest> = fx.layers.iter().map(|l| sha256_digest(l)).collect();
    assert_eq!(im.config.diff_ids, diff_ids);
    let chains = chain_ids(&diff_ids);
    for (i, l) in im.layers.iter().enumerate() {
        assert_eq!(l.blob_digest, None);
        assert_eq!(l.media_type, None);
        assert_eq!(l.compression, Compression::Unknown);
        assert_eq!(l.size, Some(fx.layers[i].len() as u64));
        assert_eq!(l.diff_id, diff_ids[i]);
        assert_eq!(l.chain_id, chains[i]);
        assert_eq!(read_all(&a, l).unwrap(), fx.layers[i]);
    }
    assert_ne!(im.layers[2].chain_id, im.layers[0].chain_id);
}

#[test]
fn plain_docker_legacy_layer_checked_against_diff_id() {
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    let fx = docker_legacy(&p, |_, _, _| {});
    let mut raw = fs::read(&p).unwrap();
    let pos = raw
        .windows(fx.layers[1].len())
        .position(|w| w == fx.layers[1].as_slice())
        .unwrap();
    raw[pos] ^= 0x20; // still not a compression magic
    fs::write(&p, &raw).unwrap();
    let a = open(&p);
    let (_, e) = read_until_error(&a, &a.images()[0].layers[1]);
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(
        e.to_string()
            .contains(&sha256_digest(&fx.layers[1]).to_string()),
        "{e}"
    );
    assert!(e.to_string().contains("layer.tar"), "{e}");
}

/// Docker ≥ 25 `docker save`: blobs/sha256 layout, manifest.json, and optionally an OCI index.
fn docker_blob_layout(path: &Path, with_oci: bool) -> Vec<Vec<u8>> {
    let tars = vec![
        layer_tar(&[("a.txt", b"hello")]),
        layer_tar(&[("b.txt", b"world")]),
    ];
    let layers: Vec<Layer> = tars
        .iter()
        .map(|t| Layer {
            mt: MT_TAR.into(),
            blob: t.clone(),
            diff_id: sha256_digest(t),
        })
        .collect();
    let mut o = Oci::default();
    let config = config_value(&layers, "amd64");
    let m = o.manifest(&layers, &config);
    let mut desc = o.store_manifest(&m);
    desc["annotations"] = json!({
        "io.containerd.image.name": "docker.io/library/app:1.0",
        "org.opencontainers.image.ref.name": "1.0",
    });
    let config_digest = sha256_digest(&serde_json::to_vec(&config).unwrap());
    let layer_paths: Vec<String> = layers
        .iter()
        .map(|l| format!("blobs/sha256/{}", l.diff_id.hex()))
        .collect();
    let manifest = json!([{
        "Config": format!("blobs/sha256/{}", config_digest.hex()),
        "RepoTags": ["app:1.0"],
        "Layers": layer_paths,
    }]);
    let mut t = TarW::new();
    t.dir("blobs/").dir("blobs/sha256/");
    for (d, b) in &o.blobs {
        t.file(&format!("blobs/sha256/{}", d.hex()), b);
    }
    if with_oci {
        t.file(
            "index.json",
            &serde_json::to_vec(&index(vec![desc])).unwrap(),
        )
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    }
    t.file("manifest.json", &serde_json::to_vec(&manifest).unwrap())
        .write_to(path);
    tars
}

#[test]
fn plain_docker_blob_layout_with_oci_index_uses_oci_and_repo_tags() {
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    let tars = docker_blob_layout(&p, true);
    let a = open(&p);
    assert_eq!(a.format(), ArchiveFormat::OciTar);
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["app:1.0"]);
    assert!(im.manifest_digest.is_some());
    for (l, tar) in im.layers.iter().zip(&tars) {
        assert_eq!(l.media_type.as_deref(), Some(MT_TAR));
        assert_eq!(l.blob_digest.as_ref(), Some(&sha256_digest(tar)));
        assert_eq!(read_all(&a, l).unwrap(), *tar);
    }
}

#[test]
fn plain_docker_blob_layout_without_oci_index() {
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    let tars = docker_blob_layout(&p, false);
    let a = open(&p);
    assert_eq!(a.format(), ArchiveFormat::DockerTar);
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["app:1.0"]);
    assert!(im.manifest_digest.is_none());
    for (l, tar) in im.layers.iter().zip(&tars) {
        assert_eq!(l.blob_digest.as_ref(), Some(&sha256_digest(tar)));
        assert_eq!(l.blob_digest.as_ref(), Some(&l.diff_id));
        assert_eq!(l.compression, Compression::None);
        assert_eq!(read_all(&a, l).unwrap(), *tar);
    }
}

// ---------------------------------------------------------------------------------------------
// error cases

/// Builds a one-image OCI layout in a fresh dir after `edit` changes the manifest and config.
fn oci_edited(edit: impl FnOnce(&mut Oci, &mut Value, &mut Value)) -> TempDir {
    let t = TempDir::new().unwrap();
    let layers = three_layers();
    let mut o = Oci::default();
    let mut config = config_value(&layers, "amd64");
    let mut m = json!(null);
    edit(&mut o, &mut m, &mut config);
    let mut manifest = o.manifest(&layers, &config);
    if let Value::Object(patch) = m {
        for (k, v) in patch {
            if v.is_null() {
                manifest.as_object_mut().unwrap().remove(&k);
            } else {
                manifest[k] = v;
            }
        }
    }
    let d = o.store_manifest(&manifest);
    o.write(t.path(), &index(vec![named(d, "v1")]));
    t
}

#[test]
fn plain_malformed_cases() {
    let layers = three_layers();
    type Case = (
        &'static str,
        Box<dyn FnOnce(&mut Oci, &mut Value, &mut Value)>,
    );
    let ld = layers[0].diff_id.to_string();
    let cases: Vec<Case> =
        vec![
        ("no layers list", Box::new(|_, m, _| *m = json!({"layers": null}))),
        (
            "3 layers but the config lists 1 diff_ids",
            Box::new(move |_, _, c| c["rootfs"]["diff_ids"] = json!([ld])),
        ),
        (
            "rootfs.type is 'foo'",
            Box::new(|_, _, c| c["rootfs"]["type"] = json!("foo")),
        ),
        (
            "config has no rootfs",
            Box::new(|_, _, c| {
                c.as_object_mut().unwrap().remove("rootfs");
            }),
        ),
        (
            "descriptor says mediaType 'application/vnd.oci.image.manifest.v1+json' but the \
             document says 'application/vnd.docker.distribution.manifest.v2+json'",
            Box::new(|_, m, _| {
                *m = json!({"mediaType": "application/vnd.docker.distribution.manifest.v2+json"})
            }),
        ),
        (
            "unsupported schemaVersion 1",
            Box::new(|_, m, _| *m = json!({"schemaVersion": 1})),
        ),
        (
            "unsupported layer media type 'application/x-tar'",
            Box::new(|o, m, _| {
                let d = o.desc("application/x-tar", b"x".to_vec());
                *m = json!({"layers": [d.clone(), d.clone(), d]});
            }),
        ),
        (
            "non-distributable (foreign) layer",
            Box::new(|o, m, _| {
                let mut d = o.desc(
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    b"x".to_vec(),
                );
                d["urls"] = json!(["https://example.com/layer"]);
                *m = json!({"layers": [d.clone(), d.clone(), d]});
            }),
        ),
        (
            "config media type 'application/vnd.oci.empty.v1+json' is not a container image config",
            Box::new(|o, m, _| {
                let d = o.desc("application/vnd.oci.empty.v1+json", b"{}".to_vec());
                *m = json!({"config": d});
            }),
        ),
        (
            "invalid JSON",
            Box::new(|o, m, _| {
                let d = o.desc(OCI_CONFIG, b"{not json".to_vec());
                *m = json!({"config": d});
            }),
        ),
        (
            "descriptor size is 3 bytes",
            Box::new(|o, m, c| {
                let mut d = o.desc(OCI_CONFIG, serde_json::to_vec(c).unwrap());
                d["size"] = json!(3);
                *m = json!({"config": d});
            }),
        ),
        (
            "only sha256 is supported",
            Box::new(|_, m, _| {
                *m = json!({"config": {"mediaType": OCI_CONFIG,
                    "digest": format!("sha512:{}", "ab".repeat(64)), "size": 2}})
            }),
        ),
    ];
    for (needle, edit) in cases {
        let t = oci_edited(edit);
        expect_err(t.path(), "Malformed", needle);
    }

    // A missing layer blob.
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    let d = sha256_digest(&layers[2].blob);
    fs::remove_file(blob_file(t.path(), &d)).unwrap();
    expect_err(
        t.path(),
        "Malformed",
        &format!("blobs/sha256/{}' not found", d.hex()),
    );

    // index.json broken in various ways.
    let t = TempDir::new().unwrap();
    oci_three_layer_dir(t.path());
    fs::write(t.path().join("index.json"), b"[1,2").unwrap();
    expect_err(t.path(), "Malformed", "index.json: invalid JSON");
    fs::write(t.path().join("index.json"), br#"{"schemaVersion":2}"#).unwrap();
    expect_err(t.path(), "Malformed", "index.json: no manifests list");
    fs::write(
        t.path().join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    expect_err(t.path(), "Malformed", "lists no images");
    fs::write(
        t.path().join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.example+json",
             "digest": sha256_digest(b"x").to_string(), "size": 1}
        ]}))
        .unwrap(),
    )
    .unwrap();
    expect_err(
        t.path(),
        "Malformed",
        "unsupported manifest media type 'application/vnd.example+json'",
    );
    fs::write(
        t.path().join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v1+prettyjws",
             "digest": sha256_digest(b"x").to_string(), "size": 1}
        ]}))
        .unwrap(),
    )
    .unwrap();
    expect_err(
        t.path(),
        "Malformed",
        "docker schema 1 manifests are not supported",
    );
    fs::write(
        t.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"2.0.0"}"#,
    )
    .unwrap();
    expect_err(
        t.path(),
        "Malformed",
        "unsupported imageLayoutVersion '2.0.0'",
    );

    // docker manifest.json problems.
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    docker_legacy(&p, |_, m, _| {
        m[0].as_object_mut().unwrap().remove("Layers");
    });
    expect_err(
        &p,
        "Malformed",
        "manifest.json: invalid JSON: missing field `Layers`",
    );
    docker_legacy(&p, |_, m, _| {
        m[0]["Layers"].as_array_mut().unwrap().truncate(2)
    });
    expect_err(&p, "Malformed", "2 layers but the config lists 3 diff_ids");
    docker_legacy(&p, |_, m, _| m[0]["Layers"][1] = json!("nothere/layer.tar"));
    expect_err(&p, "Malformed", "'nothere/layer.tar' not found");
    docker_legacy(&p, |_, m, _| *m = json!([]));
    expect_err(&p, "Malformed", "manifest.json: lists no images");
    docker_legacy(&p, |_, m, _| {
        let diff = sha256_digest(&layer_tar(&[("b.txt", b"world")])).to_string();
        m[0]["LayerSources"] = json!({diff: {
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "size": 1, "digest": sha256_digest(b"x").to_string(),
            "urls": ["https://example.com/foreign"]}});
    });
    expect_err(&p, "Malformed", "non-distributable (foreign) layer");
}

#[test]
fn plain_hostile_cases() {
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    let cases: &[(&str, &str)] = &[
        ("../x/layer.tar", "contains '..'"),
        ("/etc/passwd", "is absolute"),
        ("blobs/sha256/../../../etc/passwd", "contains '..'"),
        (
            "blobs/sha512/abc",
            "is not of the form blobs/sha256/<64 hex>",
        ),
        (
            "blobs/sha256/ABC",
            "is not of the form blobs/sha256/<64 hex>",
        ),
    ];
    for (path, needle) in cases {
        docker_legacy(&p, |_, m, _| m[0]["Layers"][1] = json!(path));
        expect_err(&p, "Hostile", needle);
    }
    docker_legacy(&p, |_, m, _| m[0]["Config"] = json!("../config.json"));
    expect_err(&p, "Hostile", "contains '..'");

    // Hostile tar members, even ones nobody references.
    docker_legacy(&p, |t, _, _| {
        t.file("../evil", b"x");
    });
    expect_err(
        &p,
        "Hostile",
        "tar member '../evil' is absolute or contains '..'",
    );
    docker_legacy(&p, |t, _, _| {
        t.file("/abs", b"x");
    });
    expect_err(&p, "Hostile", "tar member '/abs'");
    docker_legacy(&p, |t, _, _| {
        t.link(tar::EntryType::Link, "hl", "../../etc/shadow");
    });
    expect_err(
        &p,
        "Hostile",
        "hard link 'hl' -> '../../etc/shadow' is absolute or contains '..'",
    );

    // Symlinks leading outside the archive, absolute, or looping.
    docker_legacy(&p, |t, m, _| {
        t.symlink("x/layer.tar", "../../outside/layer.tar");
        m[0]["Layers"][1] = json!("x/layer.tar");
    });
    expect_err(&p, "Hostile", "leads outside the archive");
    docker_legacy(&p, |t, m, _| {
        t.symlink("x/layer.tar", "/etc/passwd");
        m[0]["Layers"][1] = json!("x/layer.tar");
    });
    expect_err(&p, "Hostile", "symlink to the absolute path '/etc/passwd'");
    docker_legacy(&p, |t, m, _| {
        t.symlink("a", "b").symlink("b", "a");
        m[0]["Layers"][1] = json!("a");
    });
    expect_err(&p, "Hostile", "levels of links");

    // Duplicate members: identical is fine, different is refused.
    docker_legacy(&p, |t, _, _| {
        t.file("repositories", b"{}");
    });
    open(&p);
    docker_legacy(&p, |t, _, _| {
        t.file("repositories", b"{\"other\":1}");
    });
    expect_err(
        &p,
        "Hostile",
        "'repositories' appears twice with different contents",
    );

    // OCI directory: a blob symlinked outside the layout, or the blobs dir itself.
    let outside = TempDir::new().unwrap();
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    let d = sha256_digest(&layers[1].blob);
    fs::rename(blob_file(t.path(), &d), outside.path().join("b")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("b"), blob_file(t.path(), &d)).unwrap();
    expect_err(t.path(), "Hostile", "symlink to the absolute path");
    fs::remove_file(blob_file(t.path(), &d)).unwrap();
    let depth = t.path().components().count();
    let up = "../".repeat(depth + 2);
    let rel = format!("{up}{}", outside.path().join("b").display());
    std::os::unix::fs::symlink(&rel, blob_file(t.path(), &d)).unwrap();
    expect_err(t.path(), "Hostile", "leads outside the archive");

    let t = TempDir::new().unwrap();
    oci_three_layer_dir(t.path());
    fs::rename(t.path().join("blobs"), outside.path().join("blobs")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("blobs"), t.path().join("blobs")).unwrap();
    expect_err(t.path(), "Hostile", "symlink to the absolute path");
}

#[test]
fn plain_too_large_documents_are_refused_before_reading() {
    let big = MAX_JSON_SIZE + 1;
    // index.json (sparse file: refused by size, never read).
    let t = TempDir::new().unwrap();
    oci_three_layer_dir(t.path());
    fs::File::create(t.path().join("index.json"))
        .unwrap()
        .set_len(big)
        .unwrap();
    let e = expect_err(t.path(), "TooLarge", "index.json: too large");
    assert!(matches!(e, ImageError::TooLarge { size, .. } if size == big));

    // A config blob.
    let t = oci_edited(|o, m, _| {
        let mut d = o.desc(OCI_CONFIG, b"{}".to_vec());
        d["size"] = json!(big);
        *m = json!({"config": d});
    });
    let cfg: Vec<_> = fs::read_dir(t.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::read(p).unwrap() == b"{}")
        .collect();
    fs::OpenOptions::new()
        .write(true)
        .open(&cfg[0])
        .unwrap()
        .set_len(big)
        .unwrap();
    expect_err(t.path(), "TooLarge", "config sha256:");

    // manifest.json in a tar.
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    let mut w = TarW::new();
    w.file("manifest.json", &vec![b' '; big as usize])
        .write_to(&p);
    expect_err(&p, "TooLarge", "manifest.json: too large");
}

#[test]
fn plain_digest_mismatch_cases() {
    // Manifest blob changed in place.
    let t = TempDir::new().unwrap();
    let layers = three_layers();
    let mut o = Oci::default();
    let d = o.image(&layers, "amd64");
    o.write(t.path(), &index(vec![d.clone()]));
    let digest: Digest = d["digest"].as_str().unwrap().parse().unwrap();
    let f = blob_file(t.path(), &digest);
    let mut raw = fs::read(&f).unwrap();
    raw.push(b' ');
    fs::write(&f, &raw).unwrap();
    let e = expect_err(t.path(), "DigestMismatch", &format!("manifest {digest}"));
    match e {
        ImageError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, digest);
            assert_eq!(actual, sha256_digest(&raw));
        }
        other => panic!("{other}"),
    }

    // Config blob changed in place.
    let t = TempDir::new().unwrap();
    let mut o = Oci::default();
    let config = config_value(&layers, "amd64");
    let cd = sha256_digest(&serde_json::to_vec(&config).unwrap());
    let d = o.image(&layers, "amd64");
    o.write(t.path(), &index(vec![d]));
    fs::write(blob_file(t.path(), &cd), b"{\"changed\":true}").unwrap();
    expect_err(
        t.path(),
        "DigestMismatch",
        &format!("config {cd}: digest mismatch"),
    );

    // docker legacy: <hex>.json whose content does not hash to <hex>.
    let t = TempDir::new().unwrap();
    let p = t.path().join("save.tar");
    docker_legacy(&p, |_, _, c| c.extend_from_slice(b" "));
    expect_err(&p, "DigestMismatch", ".json: digest mismatch");
}

#[test]
fn plain_not_an_image() {
    let t = TempDir::new().unwrap();
    expect_err(
        t.path(),
        "NotAnImage",
        "neither oci-layout nor manifest.json",
    );
    let f = t.path().join("random.bin");
    fs::write(&f, vec![7u8; 4096]).unwrap();
    expect_err(&f, "NotAnImage", "not a tar archive");
    let g = t.path().join("image.tar.gz");
    let tar_path = t.path().join("plain.tar");
    docker_legacy(&tar_path, |_, _, _| {});
    fs::write(&g, gzip(&fs::read(&tar_path).unwrap())).unwrap();
    expect_err(&g, "NotAnImage", "decompress it to a plain .tar first");
    let d = TempDir::new().unwrap();
    fs::write(d.path().join("index.json"), b"{}").unwrap();
    expect_err(d.path(), "NotAnImage", "index.json without oci-layout");
    expect_err(&t.path().join("missing"), "Io", "stat");
}

/// Found by the property tests (`tests/prop.rs`): names and values from the archive went into
/// messages as they were, and a newline in one made the message two lines. (`expect_err`
/// checks that the message is one line.)
#[test]
fn plain_errors_naming_archive_text_stay_on_one_line() {
    // OCI: an index entry whose digest has a newline (minimized).
    let t = TempDir::new().unwrap();
    let mut o = Oci::default();
    let mut d = o.image(&three_layers(), "amd64");
    d["digest"] = json!("a\nb/layer.tar");
    o.write(t.path(), &index(vec![d]));
    expect_err(t.path(), "Malformed", "invalid digest 'a\\nb/layer.tar'");

    // docker: a Config path with a newline (minimized).
    let p = t.path().join("save.tar");
    docker_legacy(&p, |_, m, _| m[0]["Config"] = json!("a\nb/layer.tar"));
    expect_err(
        &p,
        "Malformed",
        "config a\\nb/layer.tar: 'a\\nb/layer.tar' not found",
    );

    // A layer media type, and a tar member's name.
    let t = TempDir::new().unwrap();
    let mut layers = three_layers();
    layers[1].mt = "text/plain\r\n".into();
    let mut o = Oci::default();
    let d = o.image(&layers, "amd64");
    o.write(t.path(), &index(vec![d]));
    expect_err(
        t.path(),
        "Malformed",
        "unsupported layer media type 'text/plain\\r\\n'",
    );
    let p = t.path().join("save.tar");
    docker_legacy(&p, |t, _, _| {
        t.file("../a\nb", b"x");
    });
    expect_err(&p, "Hostile", "tar member '../a\\nb' is absolute");
}

// ---------------------------------------------------------------------------------------------
// a real image from a real tool

#[test]
fn plain_umoci_real_image() {
    assert!(
        std::process::Command::new("umoci")
            .arg("--version")
            .output()
            .is_ok(),
        "umoci is missing: run tools/setup.sh, which installs it"
    );
    let t = TempDir::new().unwrap();
    let layout = t.path().join("L");
    let umoci = |args: &[&str]| {
        let out = std::process::Command::new("umoci")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "umoci {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let image = format!("{}:t", layout.display());
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &image]);
    for i in 0..3 {
        let src = t.path().join(format!("src{i}"));
        fs::create_dir(&src).unwrap();
        fs::write(
            src.join("file"),
            format!("content {i}").repeat(100 * (i + 1)),
        )
        .unwrap();
        fs::create_dir(src.join("sub")).unwrap();
        fs::write(src.join("sub/x"), b"x").unwrap();
        umoci(&[
            "insert",
            "--rootless",
            "--image",
            &image,
            src.to_str().unwrap(),
            &format!("/data{i}"),
        ]);
    }

    let tar_path = t.path().join("L.tar");
    tar_dir(&layout, &tar_path);
    for path in [&layout, &tar_path] {
        let a = ImageArchive::open(path).unwrap();
        assert_eq!(a.images().len(), 1);
        let im = &a.images()[0];
        assert!(im.names.contains(&"t".to_string()), "{:?}", im.names);
        assert_eq!(im.layers.len(), 3);
        assert_eq!(im.config.diff_ids.len(), 3);
        let chains = chain_ids(&im.config.diff_ids);
        for l in &im.layers {
            assert_eq!(l.compression, Compression::Gzip);
            assert_eq!(l.chain_id, chains[l.index]);
            // What the caller does: decompress, hash, compare with the diff_id; then drain
            // the blob reader so it verifies the blob digest.
            let mut r = a.open_layer(l).unwrap();
            let mut dec = flate2::read::MultiGzDecoder::new(&mut r);
            let mut tar_bytes = Vec::new();
            dec.read_to_end(&mut tar_bytes).unwrap();
            drop(dec);
            io::copy(&mut r, &mut io::sink()).unwrap();
            assert_eq!(sha256_digest(&tar_bytes), l.diff_id, "layer {}", l.index);
            let mut names = Vec::new();
            // umoci 0.4.7 (Debian) ends its layer tars right after the last member's data,
            // without padding or end-of-archive blocks: stop at the first error.
            for e in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
                let Ok(e) = e else { break };
                names.push(e.path().unwrap().display().to_string());
            }
            assert!(
                names
                    .iter()
                    .any(|n| n.contains(&format!("data{}/file", l.index))),
                "{names:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// documents the reader accepts although oci-spec's types are stricter (and what it still refuses)

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A one-image layout (named "v1") of `layers` with `config`, in a fresh dir.
fn layout_with_config(layers: &[Layer], config: &Value) -> TempDir {
    let t = TempDir::new().unwrap();
    let mut o = Oci::default();
    let m = o.image_with_config(layers, config);
    o.write(t.path(), &index(vec![named(m, "v1")]));
    t
}

#[test]
fn plain_config_without_architecture_os_or_diff_ids_is_accepted() {
    // docker omits an empty diff_ids list; nothing requires architecture or os to import.
    for config in [
        json!({"rootfs": {"type": "layers"}}),
        json!({"architecture": null, "os": null, "variant": null,
               "rootfs": {"type": "layers", "diff_ids": null}}),
    ] {
        let t = layout_with_config(&[], &config);
        let a = open(t.path());
        let im = &a.images()[0];
        assert_eq!(im.config.architecture, None);
        assert_eq!(im.config.os, None);
        assert_eq!(im.config.variant, None);
        assert!(im.config.diff_ids.is_empty());
        assert!(im.layers.is_empty());
        // oci-spec requires them: empty in the parsed config.
        assert_eq!(im.config.full.architecture().to_string(), "");
        assert_eq!(im.config.full.os().to_string(), "");
        assert!(im.config.full.rootfs().diff_ids().is_empty());
    }
}

#[test]
fn plain_config_parts_never_read_do_not_refuse_the_image() {
    let layers = three_layers();
    let mut c = config_value(&layers, "amd64");
    c["config"] = json!({"Env": "PATH=/bin", "Cmd": 5});
    c["history"] = json!({"not": "a list"});
    c["author"] = json!(["x"]);
    c["os.features"] = json!("x");
    c["os.version"] = json!(10);
    let t = layout_with_config(&layers, &c);
    let a = open(t.path());
    check_three_layer_image(&a, &a.images()[0], &layers);
    // Left out of the parsed config; still in the stored bytes.
    let full = &a.images()[0].config.full;
    assert!(full.config().is_none());
    assert!(full.history().is_none());
    assert!(full.author().is_none());
    assert!(full.os_features().is_none());
    assert!(full.os_version().is_none());
    let raw: Value = serde_json::from_slice(&a.images()[0].config.raw).unwrap();
    assert_eq!(raw["config"]["Env"], json!("PATH=/bin"));
}

/// A config as docker writes it: Go's nil slices and maps as null, sets as `{"k": {}}`.
fn docker_style_config(layers: &[Layer]) -> Value {
    let mut c = config_value(layers, "amd64");
    c["config"] = json!({
        "Hostname": "", "User": "", "Env": ["PATH=/usr/bin:/bin"], "Cmd": null,
        "Entrypoint": null, "Volumes": {"/data": {}}, "ExposedPorts": {"80/tcp": {}},
        "Labels": null, "OnBuild": null, "WorkingDir": "", "ArgsEscaped": true,
    });
    c["container_config"] = json!({"Cmd": ["/bin/sh", "-c", "#(nop) CMD"], "Env": null});
    c["docker_version"] = json!("24.0.7");
    c["variant"] = Value::Null;
    c["history"] = json!([
        {"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:x in /"},
        {"created": "2024-01-01T00:00:01Z", "created_by": "/bin/sh -c #(nop) ENV A=1",
         "empty_layer": true},
        {"created": "2024-01-01T00:00:02Z", "created_by": "RUN x", "comment": "buildkit"},
        {"created": "2024-01-01T00:00:03Z", "created_by": "RUN y", "empty_layer": null},
    ]);
    c
}

#[test]
fn plain_config_as_docker_writes_it_is_accepted() {
    let layers = three_layers();
    let t = layout_with_config(&layers, &docker_style_config(&layers));
    let a = open(t.path());
    check_three_layer_image(&a, &a.images()[0], &layers);
    let full = &a.images()[0].config.full;
    let config = full.config().as_ref().unwrap();
    assert_eq!(
        config.env().as_deref(),
        Some(&["PATH=/usr/bin:/bin".to_string()][..])
    );
    assert_eq!(config.cmd(), &None);
    assert_eq!(config.entrypoint(), &None);
    assert_eq!(
        config.volumes().as_deref(),
        Some(&["/data".to_string()][..])
    );
    assert_eq!(
        config.exposed_ports().as_deref(),
        Some(&["80/tcp".to_string()][..])
    );
    assert_eq!(config.labels(), &None);
    let history = full.history().as_ref().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[1].empty_layer(), Some(true));
    assert_eq!(history[2].comment().as_deref(), Some("buildkit"));
    assert_eq!(full.created().as_deref(), Some("2024-01-01T00:00:00Z"));
}

#[test]
fn plain_config_is_parsed_in_full() {
    let t = TempDir::new().unwrap();
    let layers = oci_three_layer_dir(t.path());
    let a = open(t.path());
    let c = &a.images()[0].config;
    let config = c.full.config().as_ref().unwrap();
    assert_eq!(config.cmd().as_deref(), Some(&["/bin/sh".to_string()][..]));
    assert_eq!(c.full.architecture().to_string(), "amd64");
    assert_eq!(c.full.os().to_string(), "linux");
    let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
    assert_eq!(c.full.rootfs().diff_ids(), &diff_ids);
    assert_eq!(c.full.rootfs().typ(), "layers");
}

#[test]
fn plain_config_keeps_refusing_what_it_refused() {
    let layers = three_layers();
    let sha512 = format!("sha512:{}", "ab".repeat(64));
    type Edit = fn(&mut Value, &str);
    let cases: &[(&str, Edit)] = &[
        ("only sha256 is supported", |c, d| {
            c["rootfs"]["diff_ids"][1] = json!(d)
        }),
        ("invalid JSON", |c, _| c["rootfs"]["diff_ids"][1] = json!(7)),
        ("invalid JSON", |c, _| c["architecture"] = json!(64)),
        ("invalid JSON", |c, _| c["variant"] = json!(["v8"])),
        ("invalid JSON", |c, _| c["created"] = json!(1)),
        ("invalid JSON", |c, _| c["rootfs"]["type"] = Value::Null),
        ("invalid JSON", |c, _| c["rootfs"] = json!("layers")),
        ("config has no rootfs", |c, _| c["rootfs"] = Value::Null),
        ("invalid JSON", |c, _| *c = json!([1])),
    ];
    for (needle, edit) in cases {
        let mut c = config_value(&layers, "amd64");
        edit(&mut c, &sha512);
        let t = layout_with_config(&layers, &c);
        expect_err(t.path(), "Malformed", needle);
    }
}

#[test]
fn plain_config_architecture_is_kept_as_spelled() {
    let layers = three_layers();
    for arch in ["armbe", "arm64be", "sparc64", "my-arch", ""] {
        let t = layout_with_config(&layers, &config_value(&layers, arch));
        let a = open(t.path());
        assert_eq!(a.images()[0].config.architecture.as_deref(), Some(arch));
        assert_eq!(a.images()[0].config.os.as_deref(), Some("linux"));
        // oci-spec 0.10 reads "armbe" as arm64be; the parsed config is corrected.
        assert_eq!(a.images()[0].config.full.architecture().to_string(), arch);
    }
}

#[test]
fn plain_index_entries_without_media_type_are_classified_by_content() {
    let layers = three_layers();
    let mut o = Oci::default();
    let amd = with_platform(o.image(&layers, "amd64"), "linux", "amd64");
    let arm = with_platform(o.image(&layers[..2], "arm64"), "linux", "arm64");

    // Flat: entries without mediaType or with null.
    let mut bare = amd.clone();
    bare.as_object_mut().unwrap().remove("mediaType");
    let mut null_mt = arm.clone();
    null_mt["mediaType"] = Value::Null;
    let t = TempDir::new().unwrap();
    o.write(t.path(), &index(vec![null_mt, bare.clone()]));
    let a = open(t.path());
    assert_eq!(a.images()[0].layers.len(), 3);

    // Nested: neither the descriptor nor the nested index says it is one; nor does the
    // manifest below it.
    let mut m = o.manifest(&layers[..1], &config_value(&layers[..1], "amd64"));
    m.as_object_mut().unwrap().remove("mediaType");
    let mut md = o.desc(OCI_MANIFEST, serde_json::to_vec(&m).unwrap());
    md.as_object_mut().unwrap().remove("mediaType");
    md["platform"] = json!({"os": "linux", "architecture": "amd64"});
    let nested = json!({"schemaVersion": 2, "manifests": [arm, md]});
    let mut nd = o.desc(OCI_INDEX, serde_json::to_vec(&nested).unwrap());
    nd.as_object_mut().unwrap().remove("mediaType");
    let t = TempDir::new().unwrap();
    o.write(t.path(), &index(vec![named(nd, "nested")]));
    let a = open(t.path());
    assert_eq!(a.images()[0].names, vec!["nested"]);
    assert_eq!(a.images()[0].layers.len(), 1);

    // A declared media type still has to agree with the document.
    let mut wrong = bare;
    wrong["mediaType"] = json!(OCI_INDEX);
    let t = TempDir::new().unwrap();
    o.write(t.path(), &index(vec![wrong]));
    expect_err(
        t.path(),
        "Malformed",
        "descriptor says mediaType 'application/vnd.oci.image.index.v1+json' but the document \
         says 'application/vnd.oci.image.manifest.v1+json'",
    );

    // An index whose manifests list is null has none.
    fs::write(
        t.path().join("index.json"),
        br#"{"schemaVersion":2,"manifests":null}"#,
    )
    .unwrap();
    expect_err(t.path(), "Malformed", "index.json: no manifests list");
}

#[test]
fn plain_index_partial_platforms_match_nothing() {
    let layers = three_layers();
    let mut o = Oci::default();
    let arm = with_platform(o.image(&layers, "arm64"), "linux", "arm64");
    let mut no_os = o.image(&layers[..1], "amd64");
    no_os["platform"] = json!({"architecture": "amd64"});
    let mut no_arch = o.image(&layers[..2], "amd64");
    no_arch["platform"] = json!({"os": "linux", "architecture": null});
    let mut empty = o.image(&layers[..1], "amd64");
    empty["platform"] = json!({});
    let t = TempDir::new().unwrap();
    o.write(t.path(), &index(vec![no_os, no_arch, empty, arm.clone()]));
    expect_err(
        t.path(),
        "Malformed",
        "no manifest for linux/amd64 among ?/amd64, linux/?, ?/?, linux/arm64",
    );
    let a = ImageArchive::open_for_platform(t.path(), "linux", "arm64").unwrap();
    assert_eq!(a.images()[0].layers.len(), 3);
}

#[test]
fn plain_fields_never_read_do_not_refuse_an_index_or_manifest() {
    let layers = three_layers();
    let mut o = Oci::default();
    let mut m = o.manifest(&layers, &config_value(&layers, "amd64"));
    m["annotations"] = json!({"a": [1]});
    m["subject"] = json!({"digest": "nope"});
    m["artifactType"] = json!(5);
    m["layers"][0]["data"] = json!(false);
    m["layers"][1]["artifactType"] = json!({});
    m["config"]["platform"] = json!({"os": "linux", "architecture": "amd64",
                                     "os.features": "x", "features": 3, "os.version": 1});
    let md = o.desc(OCI_MANIFEST, serde_json::to_vec(&m).unwrap());
    let mut md = with_platform(md, "linux", "amd64");
    md["data"] = json!(5);
    md["artifactType"] = json!(7);
    md["platform"]["os.features"] = json!("x");
    md["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    let mut ix = index(vec![md]);
    ix["annotations"] = json!({"n": 1});
    ix["subject"] = json!("x");
    ix["artifactType"] = json!(5);
    let t = TempDir::new().unwrap();
    o.write(t.path(), &ix);
    let a = open(t.path());
    assert_eq!(a.images()[0].names, vec!["v1"]);
    check_three_layer_image(&a, &a.images()[0], &layers);
}

#[test]
fn plain_descriptors_keep_being_refused_as_before() {
    let layers = three_layers();
    let sha512 = format!("sha512:{}", "ab".repeat(64));

    // A non-sha256 digest anywhere in index.json, even in an entry that is never used.
    let mut o = Oci::default();
    let amd = o.image(&layers, "amd64");
    let att = json!({"mediaType": OCI_MANIFEST, "digest": sha512, "size": 1,
                     "platform": {"os": "unknown", "architecture": "unknown"}});
    let t = TempDir::new().unwrap();
    o.write(t.path(), &index(vec![amd, att]));
    expect_err(t.path(), "Malformed", "only sha256 is supported");

    // ... or among the layers of a manifest.
    let t = oci_edited(
        |_, m, _| *m = json!({"layers": [{"mediaType": MT_TAR, "digest": format!("sha512:{}", "cd".repeat(64)), "size": 1}]}),
    );
    expect_err(t.path(), "Malformed", "only sha256 is supported");

    // Config and layers must say what they are.
    let t = oci_edited(|o, m, c| {
        let mut d = o.desc(OCI_CONFIG, serde_json::to_vec(c).unwrap());
        d.as_object_mut().unwrap().remove("mediaType");
        *m = json!({"config": d});
    });
    expect_err(t.path(), "Malformed", "config descriptor has no mediaType");
    let t = oci_edited(|o, m, _| {
        let ls: Vec<Value> = three_layers()
            .iter()
            .map(|l| {
                let mut d = o.desc(&l.mt, l.blob.clone());
                d["mediaType"] = Value::Null;
                d
            })
            .collect();
        *m = json!({"layers": ls});
    });
    expect_err(t.path(), "Malformed", "layer 0 (sha256:");
    expect_err(t.path(), "Malformed", "layer has no mediaType");

    // Descriptors oci-spec cannot read either.
    let t = oci_edited(|_, m, _| *m = json!({"config": {"mediaType": OCI_CONFIG, "size": 2}}));
    expect_err(t.path(), "Malformed", "invalid JSON");
    let t = oci_edited(|_, m, _| *m = json!({"layers": [7]}));
    expect_err(t.path(), "Malformed", "invalid JSON");
    let t = oci_edited(|o, m, c| {
        let mut d = o.desc(OCI_CONFIG, serde_json::to_vec(c).unwrap());
        d["platform"] = json!({"os": 1, "architecture": "amd64"});
        *m = json!({"config": d});
    });
    expect_err(t.path(), "Malformed", "invalid JSON");
    let t = oci_edited(|o, m, c| {
        let mut d = o.desc(OCI_CONFIG, serde_json::to_vec(c).unwrap());
        d["annotations"] = json!({"a": 1});
        *m = json!({"config": d});
    });
    expect_err(t.path(), "Malformed", "invalid JSON");
    let t = oci_edited(|_, m, _| *m = json!({"mediaType": 5}));
    expect_err(t.path(), "Malformed", "invalid JSON");
}

#[test]
fn plain_docker_v2_manifest_and_media_types() {
    let mut o = Oci::default();
    let t0 = layer_tar(&[("a.txt", b"hello")]);
    let t1 = layer_tar(&[("b.txt", b"world")]);
    let layers = vec![
        Layer {
            mt: "application/vnd.docker.image.rootfs.diff.tar.gzip".into(),
            blob: gzip(&t0),
            diff_id: sha256_digest(&t0),
        },
        Layer {
            mt: "application/vnd.docker.image.rootfs.diff.tar".into(),
            diff_id: sha256_digest(&t1),
            blob: t1,
        },
    ];
    let config = docker_style_config(&layers);
    let cdesc = o.desc(
        "application/vnd.docker.container.image.v1+json",
        serde_json::to_vec(&config).unwrap(),
    );
    let ldescs: Vec<Value> = layers
        .iter()
        .map(|l| o.desc(&l.mt, l.blob.clone()))
        .collect();
    let m = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                   "config": cdesc, "layers": ldescs});
    let md = with_platform(
        o.desc(DOCKER_MANIFEST, serde_json::to_vec(&m).unwrap()),
        "linux",
        "amd64",
    );
    let list = json!({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [md]});
    let ld = o.desc(DOCKER_LIST, serde_json::to_vec(&list).unwrap());
    let t = TempDir::new().unwrap();
    o.write(t.path(), &index(vec![named(ld, "d")]));
    let a = open(t.path());
    let im = &a.images()[0];
    assert_eq!(im.names, vec!["d"]);
    assert_eq!(im.config.architecture.as_deref(), Some("amd64"));
    assert_eq!(im.layers[0].compression, Compression::Gzip);
    assert_eq!(im.layers[1].compression, Compression::None);
    for (l, want) in im.layers.iter().zip(&layers) {
        assert_eq!(l.media_type.as_deref(), Some(want.mt.as_str()));
        assert_eq!(l.diff_id, want.diff_id);
        assert_eq!(read_all(&a, l).unwrap(), want.blob);
    }
}
