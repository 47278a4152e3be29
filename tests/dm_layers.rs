//! dm tier: layers as thin snapshots, through the CLI, in the VM.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use thinpool::testing::{require_dm, Scratch};

mod common;
use common::{assert_same_tree, fails, ok, stderr, thinlayer, Tar};

/// A pool small enough for the VM: 2G of data, 256M layers.
fn pool(s: &Scratch) -> PathBuf {
    let root = s.path().join("root");
    ok(
        &root,
        &["pool", "create", "--data-size", "2G", "--base-size", "256M"],
    );
    root
}

fn tar(s: &Scratch, name: &str, t: Tar) -> String {
    t.write(&s.path().join(name)).to_string_lossy().into_owned()
}

/// Creates a layer (on `parent`, or a root layer) from a tar; returns its id.
fn layer(root: &Path, parent: Option<&str>, name: &str, tar: &str) -> String {
    let out = match parent {
        Some(p) => ok(
            root,
            &["snapshot", "layer", p, "--name", name, "--from-tar", tar],
        ),
        None => ok(
            root,
            &["layer", "create", "--name", name, "--from-tar", tar],
        ),
    };
    let id = out.trim().to_string();
    assert_eq!(id.len(), 32, "not an id: {out}");
    id
}

/// Runs `f` with the layer mounted read-only.
fn with_mounted<T>(root: &Path, layer: &str, f: impl FnOnce(&Path) -> T) -> T {
    let mp = PathBuf::from(ok(root, &["layer", "mount", layer]).trim());
    let r = f(&mp);
    ok(root, &["layer", "umount", layer]);
    r
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn layers_json(root: &Path) -> Vec<Value> {
    serde_json::from_str::<Value>(&ok(root, &["layer", "ls", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn pool_thin_devices(root: &Path) -> u64 {
    let st: Value = serde_json::from_str(&ok(root, &["pool", "status", "--json"])).unwrap();
    st["thin_devices"].as_u64().unwrap()
}

#[test]
fn dm_snapshot_writes_never_reach_the_parent_or_a_sibling() {
    require_dm();
    let s = Scratch::new("cow");
    let root = pool(&s);
    let t1 = tar(
        &s,
        "t1.tar",
        Tar::new()
            .dir("etc")
            .file("etc/a", b"base a")
            .file("b", b"base b"),
    );
    let t2 = tar(
        &s,
        "t2.tar",
        Tar::new().dir("etc").file("etc/a", b"child one"),
    );
    let t3 = tar(&s, "t3.tar", Tar::new().file("c", b"child two"));
    layer(&root, None, "base", &t1);
    layer(&root, Some("base"), "one", &t2);
    layer(&root, Some("base"), "two", &t3);
    with_mounted(&root, "base", |m| {
        assert_eq!(read(&m.join("etc/a")).as_deref(), Some("base a"));
        assert!(!m.join("c").exists());
    });
    with_mounted(&root, "one", |m| {
        assert_eq!(read(&m.join("etc/a")).as_deref(), Some("child one"));
        assert_eq!(read(&m.join("b")).as_deref(), Some("base b"));
        assert!(!m.join("c").exists(), "a sibling's file showed up");
    });
    with_mounted(&root, "two", |m| {
        assert_eq!(read(&m.join("etc/a")).as_deref(), Some("base a"));
        assert_eq!(read(&m.join("c")).as_deref(), Some("child two"));
    });
    // The mount is read-only.
    with_mounted(&root, "base", |m| {
        let e = std::fs::write(m.join("new"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(30), "{e}"); // EROFS
    });
    let tree = ok(&root, &["layer", "ls"]);
    assert!(
        tree.contains("base") && tree.contains("├─") && tree.contains("└─"),
        "{tree}"
    );
    ok(&root, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_a_chain_100_layers_deep_keeps_every_layer_s_file() {
    require_dm();
    let s = Scratch::new("deep");
    let root = pool(&s);
    let mut parent: Option<String> = None;
    for i in 0..100 {
        let t = tar(
            &s,
            &format!("l{i}.tar"),
            Tar::new().file(&format!("f{i}"), format!("layer {i}").as_bytes()),
        );
        let name = format!("l{i}");
        layer(&root, parent.as_deref(), &name, &t);
        parent = Some(name);
    }
    with_mounted(&root, "l99", |m| {
        for i in 0..100 {
            assert_eq!(
                read(&m.join(format!("f{i}"))),
                Some(format!("layer {i}")),
                "f{i}"
            );
        }
    });
    with_mounted(&root, "l50", |m| {
        assert!(m.join("f50").exists() && !m.join("f51").exists());
    });
    assert_eq!(layers_json(&root).len(), 100);
    ok(&root, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_whiteouts_and_opaque_directories_across_layers() {
    require_dm();
    let s = Scratch::new("wh");
    let root = pool(&s);
    let l1 = tar(
        &s,
        "1.tar",
        Tar::new()
            .dir("d")
            .file("d/f1", b"1")
            .file("d/f2", b"2")
            .file("x", b"x")
            .dir("e")
            .file("e/keep", b"k"),
    );
    let l2 = tar(
        &s,
        "2.tar",
        Tar::new()
            .whiteout("x")
            .dir("d")
            .whiteout("d/f1")
            .dir("e")
            .file("e/added", b"a"),
    );
    let l3 = tar(
        &s,
        "3.tar",
        Tar::new()
            .dir("e")
            .opaque("e")
            .file("e/only", b"o")
            .file("e/.wh.only-in-this-layer", b""),
    );
    layer(&root, None, "l1", &l1);
    layer(&root, Some("l1"), "l2", &l2);
    layer(&root, Some("l2"), "l3", &l3);
    with_mounted(&root, "l2", |m| {
        assert!(!m.join("x").exists());
        assert!(!m.join("d/f1").exists());
        assert_eq!(read(&m.join("d/f2")).as_deref(), Some("2"));
        assert!(m.join("e/keep").exists() && m.join("e/added").exists());
        assert!(!m.join(".wh.x").exists(), "a whiteout was materialized");
    });
    with_mounted(&root, "l3", |m| {
        let mut names: Vec<String> = std::fs::read_dir(m.join("e"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["only"],
            "an opaque directory kept lower entries"
        );
        assert_eq!(read(&m.join("d/f2")).as_deref(), Some("2"));
    });
    ok(&root, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_changeset_round_trips_through_diff_into_a_fresh_pool() {
    require_dm();
    let s = Scratch::new("rt");
    let root = pool(&s);
    let mut t = Tar::new()
        .dir("usr")
        .dir("usr/bin")
        .symlink("bin", "usr/bin")
        .file("usr/bin/tool", b"#!/bin/sh\necho hi\n");
    t.file_mode("usr/bin/suid", b"s", 0o4755);
    let t = t
        .hardlink("usr/bin/tool-link", "usr/bin/tool")
        .dir("var")
        .dir("var/empty");
    let base = tar(&s, "base.tar", t);
    layer(&root, None, "base", &base);
    let change = tar(
        &s,
        "change.tar",
        Tar::new()
            .dir("usr")
            .dir("usr/bin")
            .file("usr/bin/tool", b"v2")
            .whiteout("var/empty")
            .file("new", b"n"),
    );
    layer(&root, Some("base"), "top", &change);
    let out_base = s.path().join("base-export.tar");
    let out_top = s.path().join("top-export.tar.gz");
    ok(
        &root,
        &["layer", "diff", "base", "-o", out_base.to_str().unwrap()],
    );
    ok(
        &root,
        &[
            "layer",
            "diff",
            "top",
            "--gzip",
            "-o",
            out_top.to_str().unwrap(),
        ],
    );
    // Stable: the same layer exports the same bytes.
    let again = s.path().join("again.tar.gz");
    ok(
        &root,
        &[
            "layer",
            "diff",
            "top",
            "--gzip",
            "-o",
            again.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(&out_top).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let fresh = s.path().join("fresh");
    ok(
        &fresh,
        &["pool", "create", "--data-size", "2G", "--base-size", "256M"],
    );
    layer(&fresh, None, "base", out_base.to_str().unwrap());
    layer(&fresh, Some("base"), "top", out_top.to_str().unwrap());
    let a = PathBuf::from(ok(&root, &["layer", "mount", "top"]).trim());
    let b = PathBuf::from(ok(&fresh, &["layer", "mount", "top"]).trim());
    assert_same_tree(&a, &b);
    assert!(!b.join("var/empty").exists());
    ok(&root, &["layer", "umount", "top"]);
    ok(&fresh, &["layer", "umount", "top"]);
    ok(&root, &["pool", "destroy", "--force"]);
    ok(&fresh, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_hostile_archives_are_refused_and_write_nothing_outside() {
    require_dm();
    let s = Scratch::new("hostile");
    let root = pool(&s);
    let sentinel = s.path().join("sentinel");
    std::fs::create_dir(&sentinel).unwrap();
    let abs = format!("{}/evil", sentinel.display());
    let cases: Vec<(&str, Tar)> = vec![
        ("dotdot", Tar::new().file("../../../../evil", b"x")),
        ("absolute", Tar::new().file(&abs, b"x")),
        (
            "through-symlink",
            Tar::new()
                .symlink("link", sentinel.to_str().unwrap())
                .file("link/evil", b"x"),
        ),
        (
            "parent-symlink",
            Tar::new().symlink("up", "..").file("up/evil", b"x"),
        ),
        ("hardlink-out", Tar::new().hardlink("h", "../../etc/passwd")),
        ("truncated", {
            let mut t = Tar::new();
            t.file_mode("big", &[7u8; 100_000], 0o644);
            t
        }),
    ];
    for (name, t) in cases {
        let mut bytes = t.bytes();
        if name == "truncated" {
            bytes.truncate(50_000);
        }
        let p = s.path().join(format!("{name}.tar"));
        std::fs::write(&p, bytes).unwrap();
        let o = thinlayer(
            &root,
            &[
                "layer",
                "create",
                "--name",
                name,
                "--from-tar",
                p.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success(), "{name} was accepted");
        let err = stderr(&o);
        assert!(err.contains("changeset"), "{name}: {err}");
        assert_eq!(
            std::fs::read_dir(&sentinel).unwrap().count(),
            0,
            "{name} wrote outside the layer"
        );
        assert_eq!(layers_json(&root).len(), 0, "{name} left a layer");
        assert_eq!(
            pool_thin_devices(&root),
            1,
            "{name} left a thin device besides the base"
        );
    }
    ok(&root, &["pool", "destroy"]);
}

#[test]
fn dm_layer_rm_refuses_while_children_or_mounts_exist() {
    require_dm();
    let s = Scratch::new("rm");
    let root = pool(&s);
    let t = tar(&s, "t.tar", Tar::new().file("a", b"a"));
    layer(&root, None, "p", &t);
    layer(&root, Some("p"), "c", &t);
    fails(
        &root,
        &["layer", "rm", "p"],
        1,
        &["is in use", "parent of 1 layer"],
    );
    ok(&root, &["layer", "mount", "c"]);
    fails(
        &root,
        &["layer", "rm", "c"],
        1,
        &["is mounted at", "layer umount"],
    );
    fails(&root, &["layer", "rm", "nope"], 1, &["no layer 'nope'"]);
    fails(
        &root,
        &["pool", "destroy"],
        1,
        &["thin devices (layers)", "--force"],
    );
    ok(&root, &["layer", "umount", "c"]);
    ok(&root, &["layer", "rm", "c"]);
    ok(&root, &["layer", "rm", "p"]);
    assert_eq!(pool_thin_devices(&root), 1);
    ok(&root, &["pool", "destroy"]);
}

#[test]
fn dm_exclusive_and_shared_sizes_follow_what_was_written() {
    require_dm();
    let s = Scratch::new("sizes");
    let root = pool(&s);
    let big = tar(&s, "big.tar", {
        let mut t = Tar::new();
        t.file_mode("data", &vec![0x5au8; 8 << 20], 0o644);
        t
    });
    let small = tar(&s, "small.tar", Tar::new().file("note", b"small"));
    layer(&root, None, "big", &big);
    layer(&root, Some("big"), "small", &small);
    let ls = layers_json(&root);
    let get = |n: &str| ls.iter().find(|l| l["name"] == n).unwrap().clone();
    let (b, sm) = (get("big"), get("small"));
    let mib = |v: &Value| v.as_u64().unwrap() as f64 / (1 << 20) as f64;
    // The 8M file is shared by the child; each layer holds only a few
    // blocks of its own (inode tables, the journal, the new file).
    assert!(mib(&sm["shared_bytes"]) >= 8.0, "{sm}");
    assert!(mib(&sm["exclusive_bytes"]) < 2.0, "{sm}");
    assert!(mib(&b["shared_bytes"]) >= 8.0, "{b}");
    let inspect: Value =
        serde_json::from_str(&ok(&root, &["layer", "inspect", "small", "--json"])).unwrap();
    assert_eq!(inspect["exclusive_bytes"], sm["exclusive_bytes"]);
    ok(&root, &["pool", "destroy", "--force"]);
}

/// Kills `snapshot layer` at instants spread over its run: the next
/// command finds the layer whole or not at all, and no orphaned device.
#[test]
fn dm_snapshot_killed_at_any_instant_is_repaired() {
    require_dm();
    let s = Scratch::new("killsnap");
    let root = pool(&s);
    let t = tar(&s, "t.tar", Tar::new().file("payload", &vec![1u8; 2 << 20]));
    layer(&root, None, "base", &t);
    let start = std::time::Instant::now();
    layer(&root, Some("base"), "timed", &t);
    let full = start.elapsed().as_millis() as u64;
    ok(&root, &["layer", "rm", "timed"]);
    let mut whole = 0;
    for k in 0..=12u64 {
        let delay = full * k / 10;
        let mut child = Command::new(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&root)
            .args(["snapshot", "layer", "base", "--name", "k", "--from-tar", &t])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let ls = layers_json(&root);
        // Records and thin devices agree: base + k (if whole) + the base fs.
        assert_eq!(
            pool_thin_devices(&root),
            1 + ls.len() as u64,
            "after a kill at {delay}ms"
        );
        if ls.iter().any(|l| l["name"] == "k") {
            whole += 1;
            with_mounted(&root, "k", |m| {
                assert_eq!(std::fs::metadata(m.join("payload")).unwrap().len(), 2 << 20)
            });
            ok(&root, &["layer", "rm", "k"]);
        }
    }
    eprintln!("snapshot takes {full}ms; {whole} of 13 killed snapshots had completed");
    ok(&root, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_xfs_base_with_changesets_from_stdin_and_two_mounted_snapshots() {
    require_dm();
    let s = Scratch::new("xfs");
    let root = s.path().join("root");
    ok(
        &root,
        &[
            "pool",
            "create",
            "--data-size",
            "2G",
            "--base-size",
            "512M",
            "--fs",
            "xfs",
        ],
    );
    let bytes = Tar::new().file("hello", b"from stdin").bytes();
    let mut child = Command::new(env!("CARGO_BIN_EXE_thinlayer"))
        .arg("--root")
        .arg(&root)
        .args(["layer", "create", "--name", "x", "--from-tar", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &bytes).unwrap();
    drop(child.stdin.take());
    assert!(child.wait_with_output().unwrap().status.success());
    let t = tar(&s, "y.tar", Tar::new().file("hello", b"changed"));
    layer(&root, Some("x"), "y", &t);
    // Snapshots of one xfs share its uuid: both mounted at once.
    let a = PathBuf::from(ok(&root, &["layer", "mount", "x"]).trim());
    let b = PathBuf::from(ok(&root, &["layer", "mount", "y"]).trim());
    assert_eq!(read(&a.join("hello")).as_deref(), Some("from stdin"));
    assert_eq!(read(&b.join("hello")).as_deref(), Some("changed"));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(a.to_str().unwrap()) && l.contains(" xfs ")),
        "{mounts}"
    );
    ok(&root, &["layer", "umount", "x"]);
    ok(&root, &["layer", "umount", "y"]);
    ok(&root, &["pool", "destroy", "--force"]);
}

#[test]
fn dm_concurrent_snapshots_serialize_and_both_succeed() {
    require_dm();
    let s = Scratch::new("concurrent");
    let root = pool(&s);
    let t = tar(&s, "t.tar", Tar::new().file("a", b"a"));
    layer(&root, None, "base", &t);
    let spawn = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&root)
            .args([
                "snapshot",
                "layer",
                "base",
                "--name",
                name,
                "--from-tar",
                &t,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kids: Vec<_> = ["c1", "c2", "c3"].iter().map(|n| spawn(n)).collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(layers_json(&root).len(), 4);
    assert_eq!(pool_thin_devices(&root), 5);
    ok(&root, &["pool", "destroy", "--force"]);
}
