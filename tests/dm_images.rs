//! dm tier: images built by real OCI tools (umoci, skopeo), imported and
//! compared with a reference unpacker, in the VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use thinpool::testing::{require_dm, Scratch};

mod common;
use common::{assert_same_tree, fails, ok};

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

/// A three-layer image made with umoci: files of every kind, then a layer
/// that deletes and changes things (whiteouts), then one that replaces a
/// directory (opaque). Returns the OCI layout directory.
fn build_image(s: &Scratch) -> PathBuf {
    let layout = s.path().join("oci");
    let l = layout.to_str().unwrap().to_string();
    let img = format!("{l}:t");
    let bundle = s.path().join("bundle");
    let b = bundle.to_str().unwrap();
    umoci(&["init", "--layout", &l]);
    umoci(&["new", "--image", &img]);
    umoci(&["unpack", "--image", &img, b]);
    let rootfs = bundle.join("rootfs");
    let sh = |script: &str| {
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&rootfs))
    };
    sh("mkdir -p etc usr/bin var/lib/app srv/data
        echo root:x:0:0 > etc/passwd
        printf 'tool v1' > usr/bin/tool && chmod 4755 usr/bin/tool
        ln usr/bin/tool usr/bin/tool-hard
        ln -s usr/bin bin
        mkfifo var/lib/app/fifo
        mknod dev-null c 1 3
        echo keep > srv/data/keep; echo gone > srv/data/gone
        chown 1000:1000 srv/data/keep
        setfattr -n trusted.origin -v base usr/bin/tool
        dd if=/dev/urandom of=var/lib/app/blob bs=64k count=16 2>/dev/null");
    umoci(&["repack", "--image", &img, b]);
    umoci(&["unpack", "--image", &img, &format!("{b}2")]);
    let rootfs = PathBuf::from(format!("{b}2/rootfs"));
    let sh = |script: &str| {
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&rootfs))
    };
    sh("rm srv/data/gone etc/passwd
        printf 'tool v2' > usr/bin/tool
        chmod 0700 var/lib/app
        mkdir -p opt/new && echo new > opt/new/file");
    umoci(&["repack", "--image", &img, &format!("{b}2")]);
    umoci(&["unpack", "--image", &img, &format!("{b}3")]);
    let rootfs = PathBuf::from(format!("{b}3/rootfs"));
    let sh = |script: &str| {
        run(Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(&rootfs))
    };
    sh("rm -rf srv/data && mkdir srv/data && echo fresh > srv/data/fresh");
    umoci(&["repack", "--image", &img, &format!("{b}3")]);
    layout
}

fn reference_unpack(s: &Scratch, layout: &Path) -> PathBuf {
    let out = s.path().join("reference");
    umoci(&[
        "raw",
        "unpack",
        "--image",
        &format!("{}:t", layout.display()),
        out.to_str().unwrap(),
    ]);
    out
}

fn pool(s: &Scratch) -> PathBuf {
    let root = s.path().join("root");
    ok(
        &root,
        &["pool", "create", "--data-size", "2G", "--base-size", "256M"],
    );
    root
}

fn top_layer(root: &Path, image: &str) -> String {
    let i: Value = serde_json::from_str(&ok(root, &["image", "inspect", image, "--json"])).unwrap();
    i["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn dm_umoci_image_imports_to_the_same_tree_as_umoci_unpacks() {
    require_dm();
    let s = Scratch::new("umoci");
    let layout = build_image(&s);
    let reference = reference_unpack(&s, &layout);
    let root = pool(&s);
    let out = ok(
        &root,
        &[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "test/app:v1",
        ],
    );
    assert!(out.contains("test/app:v1"), "{out}");
    let top = top_layer(&root, "test/app:v1");
    let mp = PathBuf::from(ok(&root, &["layer", "mount", &top]).trim());
    assert_same_tree(&reference, &mp);
    ok(&root, &["layer", "umount", &top]);

    // Layers are shared, not duplicated, by a second import of the same chain.
    let before = serde_json::from_str::<Value>(&ok(&root, &["layer", "ls", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, 3);
    ok(
        &root,
        &[
            "image",
            "import",
            layout.to_str().unwrap(),
            "--name",
            "test/app:again",
        ],
    );
    let after = serde_json::from_str::<Value>(&ok(&root, &["layer", "ls", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, 3, "a re-import duplicated layers");
    let ls = ok(&root, &["image", "ls"]);
    assert!(
        ls.contains("test/app:v1") && ls.contains("test/app:again"),
        "{ls}"
    );
    fails(&root, &["layer", "rm", &top], 1, &["belongs to image"]);
    ok(&root, &["image", "rm", "test/app:v1"]);
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&root, &["layer", "ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    ok(&root, &["pool", "destroy"]);
}

#[test]
fn dm_docker_archive_from_skopeo_imports_with_its_tag() {
    require_dm();
    let s = Scratch::new("skopeo");
    let layout = build_image(&s);
    let reference = reference_unpack(&s, &layout);
    let archive = s.path().join("docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--insecure-policy",
        &format!("oci:{}:t", layout.display()),
        &format!("docker-archive:{}:example/app:1.0", archive.display()),
    ]));
    let root = pool(&s);
    let out = ok(&root, &["image", "import", archive.to_str().unwrap()]);
    assert!(out.contains("example/app:1.0"), "{out}");
    let top = top_layer(&root, "example/app:1.0");
    let mp = PathBuf::from(ok(&root, &["layer", "mount", &top]).trim());
    assert_same_tree(&reference, &mp);
    ok(&root, &["layer", "umount", &top]);
    ok(&root, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_corrupt_image_blobs_are_refused_and_leave_nothing() {
    require_dm();
    let s = Scratch::new("corrupt");
    let layout = build_image(&s);
    // Flip a byte in the biggest blob (a layer).
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    let root = pool(&s);
    let o = common::thinlayer(&root, &["image", "import", layout.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("sha256") || err.contains("digest") || err.contains("changeset"),
        "{err}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&root, &["layer", "ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        serde_json::from_str::<Value>(&ok(&root, &["image", "ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    ok(&root, &["pool", "destroy"]);
}

/// Kills `image import` at instants spread over its run: the next command
/// finds the whole image or none of it, and no orphaned thin device.
#[test]
fn dm_image_import_killed_at_any_instant_leaves_all_or_nothing() {
    require_dm();
    let s = Scratch::new("killimport");
    let layout = build_image(&s);
    let root = pool(&s);
    let l = layout.to_str().unwrap();
    let start = std::time::Instant::now();
    ok(&root, &["image", "import", l, "--name", "k:1"]);
    let full = start.elapsed().as_millis() as u64;
    ok(&root, &["image", "rm", "k:1"]);
    let count = |what: &str| {
        serde_json::from_str::<Value>(&ok(&root, &[what, "ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let mut whole = 0;
    for k in 0..=12u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&root)
            .args(["image", "import", l, "--name", "k:1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(full * k / 10));
        let _ = child.kill();
        let _ = child.wait();
        let (images, layers) = (count("image"), count("layer"));
        let st: Value = serde_json::from_str(&ok(&root, &["pool", "status", "--json"])).unwrap();
        assert_eq!(
            st["thin_devices"].as_u64().unwrap(),
            1 + layers as u64,
            "orphaned thin devices"
        );
        match images {
            0 => assert_eq!(layers, 0, "a killed import left layers without its image"),
            1 => {
                assert_eq!(layers, 3);
                whole += 1;
                ok(&root, &["image", "rm", "k:1"]);
            }
            n => panic!("{n} images"),
        }
    }
    eprintln!("import takes {full}ms; {whole} of 13 killed imports had completed");
    ok(&root, &["pool", "destroy"]);
}
