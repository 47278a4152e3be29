//! The layer conformance suite: every behaviour of layers and images,
//! written once and run against both drivers. The thin run is in the dm
//! tier (`dm_thin::*`, in the VM), the overlay run in the root tier
//! (`root_overlay::*`, on the host). A behaviour that differs between the
//! drivers is branched on `Drv` below, with the reason.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use thinpool::testing::Scratch;

mod common;
use common::env::{kill_sweep, read, Drv, Env};
use common::{
    assert_same_tree, build_image, corpus_image, reference_unpack, run, stderr, tar_members,
    umoci_unpack, Tar, XattrDir,
};

conformance!(
    snapshot_writes_never_reach_the_parent_or_a_sibling,
    a_deep_chain_keeps_every_layer_s_file,
    whiteouts_and_opaque_directories_across_layers,
    changeset_round_trips_through_diff_into_a_fresh_store,
    hostile_archives_are_refused_and_write_nothing_outside,
    layer_rm_refuses_while_children_mounts_or_images_exist,
    sizes_follow_what_was_written,
    snapshot_killed_at_any_instant_is_repaired,
    a_layer_made_and_mounted_at_once_is_whole_or_gone_when_killed,
    every_kill_point_of_the_protocol_is_hit_and_recovered,
    concurrent_snapshots_serialize_and_all_succeed,
    listings_beside_new_layers_show_what_they_read,
    umoci_image_imports_to_the_same_tree_as_umoci_unpacks,
    docker_archive_from_skopeo_imports_with_its_tag,
    corrupt_image_blobs_are_refused_and_leave_nothing,
    a_config_naming_another_diff_id_is_refused_and_leaves_nothing,
    image_import_killed_at_any_instant_leaves_all_or_nothing,
    real_tool_corpus_imports_to_the_trees_umoci_unpacks,
    saved_images_round_trip_with_the_same_ids_and_real_tools_read_them,
    a_layer_that_cannot_be_given_back_exactly_is_refused,
    image_config_and_history_show_what_real_tools_wrote,
);

fn snapshot_writes_never_reach_the_parent_or_a_sibling(d: Drv) {
    let e = Env::new("cow", d);
    let t1 = e.tar(
        "t1.tar",
        Tar::new()
            .dir("etc")
            .file("etc/a", b"base a")
            .file("b", b"base b"),
    );
    let t2 = e.tar("t2.tar", Tar::new().dir("etc").file("etc/a", b"child one"));
    let t3 = e.tar("t3.tar", Tar::new().file("c", b"child two"));
    e.layer(None, "base", &t1);
    e.layer(Some("base"), "one", &t2);
    e.layer(Some("base"), "two", &t3);
    e.with_mounted("base", |m| {
        assert_eq!(read(&m.join("etc/a")).as_deref(), Some("base a"));
        assert!(!m.join("c").exists());
        assert!(
            !m.join("lost+found").exists(),
            "a layer has a directory its changeset does not"
        );
    });
    e.with_mounted("one", |m| {
        assert_eq!(read(&m.join("etc/a")).as_deref(), Some("child one"));
        assert_eq!(read(&m.join("b")).as_deref(), Some("base b"));
        assert!(!m.join("c").exists(), "a sibling's file showed up");
    });
    e.with_mounted("two", |m| {
        assert_eq!(read(&m.join("etc/a")).as_deref(), Some("base a"));
        assert_eq!(read(&m.join("c")).as_deref(), Some("child two"));
        let err = std::fs::write(m.join("new"), b"x").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(30),
            "a layer mount is writable: {err}"
        ); // EROFS
    });
    let tree = e.ok(&["layer", "ls"]);
    assert!(
        tree.contains("base") && tree.contains("├─") && tree.contains("└─"),
        "{tree}"
    );
    e.assert_consistent();
}

fn a_deep_chain_keeps_every_layer_s_file(d: Drv) {
    let e = Env::new("deep", d);
    // overlay: the 200 lower layers; thin: 100 (each layer is a
    // mount and an unmount under emulation).
    let depth = if d == Drv::Overlay { 200 } else { 100 };
    let mut parent: Option<String> = None;
    for i in 0..depth {
        let t = e.tar(
            &format!("l{i}.tar"),
            Tar::new().file(&format!("f{i}"), format!("layer {i}").as_bytes()),
        );
        let name = format!("l{i}");
        e.layer(parent.as_deref(), &name, &t);
        parent = Some(name);
    }
    e.with_mounted(&format!("l{}", depth - 1), |m| {
        for i in 0..depth {
            assert_eq!(
                read(&m.join(format!("f{i}"))),
                Some(format!("layer {i}")),
                "f{i}"
            );
        }
    });
    e.with_mounted("l50", |m| {
        assert!(m.join("f50").exists() && !m.join("f51").exists())
    });
    assert_eq!(e.list("layer").len(), depth);
}

fn whiteouts_and_opaque_directories_across_layers(d: Drv) {
    let e = Env::new("wh", d);
    let l1 = e.tar(
        "1.tar",
        Tar::new()
            .dir("d")
            .file("d/f1", b"1")
            .file("d/f2", b"2")
            .file("x", b"x")
            .dir("e")
            .file("e/keep", b"k"),
    );
    let l2 = e.tar(
        "2.tar",
        Tar::new()
            .whiteout("x")
            .dir("d")
            .whiteout("d/f1")
            .dir("e")
            .file("e/added", b"a"),
    );
    let l3 = e.tar(
        "3.tar",
        Tar::new().dir("e").opaque("e").file("e/only", b"o"),
    );
    e.layer(None, "l1", &l1);
    e.layer(Some("l1"), "l2", &l2);
    e.layer(Some("l2"), "l3", &l3);
    e.with_mounted("l2", |m| {
        assert!(!m.join("x").exists());
        assert!(!m.join("d/f1").exists());
        assert_eq!(read(&m.join("d/f2")).as_deref(), Some("2"));
        assert!(m.join("e/keep").exists() && m.join("e/added").exists());
        assert!(!m.join(".wh.x").exists(), "a whiteout was materialized");
    });
    e.with_mounted("l3", |m| {
        let mut names: Vec<String> = std::fs::read_dir(m.join("e"))
            .unwrap()
            .map(|x| x.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["only"],
            "an opaque directory kept lower entries"
        );
        assert_eq!(read(&m.join("d/f2")).as_deref(), Some("2"));
    });
}

fn changeset_round_trips_through_diff_into_a_fresh_store(d: Drv) {
    let e = Env::new("rt", d);
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
    let base = e.tar("base.tar", t);
    e.layer(None, "base", &base);
    let change = e.tar(
        "change.tar",
        Tar::new()
            .dir("usr")
            .dir("usr/bin")
            .file("usr/bin/tool", b"v2")
            .whiteout("var/empty")
            .file("new", b"n"),
    );
    e.layer(Some("base"), "top", &change);
    let out_base = e.path().join("base-export.tar");
    let out_top = e.path().join("top-export.tar.gz");
    e.ok(&["layer", "diff", "base", "-o", out_base.to_str().unwrap()]);
    e.ok(&[
        "layer",
        "diff",
        "top",
        "--gzip",
        "-o",
        out_top.to_str().unwrap(),
    ]);
    let again = e.path().join("again.tar.gz");
    e.ok(&[
        "layer",
        "diff",
        "top",
        "--gzip",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&out_top).unwrap(),
        std::fs::read(&again).unwrap(),
        "two exports differ"
    );

    let fresh = Env::new("rt-fresh", d);
    fresh.layer(None, "base", out_base.to_str().unwrap());
    fresh.layer(Some("base"), "top", out_top.to_str().unwrap());
    let a = PathBuf::from(e.ok(&["layer", "mount", "top"]).trim());
    let b = PathBuf::from(fresh.ok(&["layer", "mount", "top"]).trim());
    assert_same_tree(&a, &b);
    assert!(!b.join("var/empty").exists());
    e.ok(&["layer", "umount", "top"]);
    fresh.ok(&["layer", "umount", "top"]);
}

fn hostile_archives_are_refused_and_write_nothing_outside(d: Drv) {
    let e = Env::new("hostile", d);
    let sentinel = e.path().join("sentinel");
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
        let p = e.path().join(format!("{name}.tar"));
        std::fs::write(&p, bytes).unwrap();
        let o = e.run(&[
            "layer",
            "create",
            "--name",
            name,
            "--from-tar",
            p.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{name} was accepted");
        assert!(stderr(&o).contains("changeset"), "{name}: {}", stderr(&o));
        assert_eq!(
            std::fs::read_dir(&sentinel).unwrap().count(),
            0,
            "{name} wrote outside the layer"
        );
        assert_eq!(e.list("layer").len(), 0, "{name} left a layer");
        assert_eq!(e.resources(), 0, "{name} left a {} resource", d.name());
    }
}

fn layer_rm_refuses_while_children_mounts_or_images_exist(d: Drv) {
    let e = Env::new("rm", d);
    let t = e.tar("t.tar", Tar::new().file("a", b"a"));
    e.layer(None, "p", &t);
    e.layer(Some("p"), "c", &t);
    e.fails(&["layer", "rm", "p"], &["is in use", "parent of 1 layer"]);
    e.ok(&["layer", "mount", "c"]);
    e.fails(&["layer", "rm", "c"], &["is mounted at", "layer umount"]);
    e.fails(&["layer", "rm", "nope"], &["no layer 'nope'"]);
    if d == Drv::Thin {
        e.fails(&["pool", "destroy"], &["thin devices (layers)", "--force"]);
    }
    e.ok(&["layer", "umount", "c"]);
    e.ok(&["layer", "rm", "c"]);
    e.ok(&["layer", "rm", "p"]);
    e.assert_consistent();
    assert_eq!(e.resources(), 0);
}

fn sizes_follow_what_was_written(d: Drv) {
    let e = Env::new("sizes", d);
    let big = e.tar("big.tar", {
        let mut t = Tar::new();
        t.file_mode("data", &vec![0x5au8; 8 << 20], 0o644);
        t
    });
    let small = e.tar("small.tar", Tar::new().file("note", b"small"));
    e.layer(None, "big", &big);
    e.layer(Some("big"), "small", &small);
    let ls = e.list("layer");
    let get = |n: &str| ls.iter().find(|l| l["name"] == n).unwrap().clone();
    let (b, sm) = (get("big"), get("small"));
    let mib = |v: &Value| v.as_u64().unwrap() as f64 / (1 << 20) as f64;
    match d {
        // Blocks: the child shares the 8M and owns a few blocks of its own.
        Drv::Thin => {
            assert!(mib(&sm["shared_bytes"]) >= 8.0, "{sm}");
            assert!(mib(&sm["exclusive_bytes"]) < 2.0, "{sm}");
            assert!(mib(&b["shared_bytes"]) >= 8.0, "{b}");
        }
        // Files: each layer's directory holds only its own files.
        Drv::Overlay => {
            assert!(mib(&b["exclusive_bytes"]) >= 8.0, "{b}");
            assert!(mib(&sm["exclusive_bytes"]) < 0.1, "{sm}");
        }
    }
    let inspect: Value =
        serde_json::from_str(&e.ok(&["layer", "inspect", "small", "--json"])).unwrap();
    assert_eq!(inspect["exclusive_bytes"], sm["exclusive_bytes"]);
}

fn snapshot_killed_at_any_instant_is_repaired(d: Drv) {
    let e = Env::new("killsnap", d);
    let t = e.tar("t.tar", Tar::new().file("payload", &vec![1u8; 2 << 20]));
    e.layer(None, "base", &t);
    let full = Env::fastest_of_three(
        || drop(e.layer(Some("base"), "timed", &t)),
        || drop(e.ok(&["layer", "rm", "timed"])),
    );
    let mut whole = 0;
    kill_sweep("snapshot", full, 16, 3, |at| {
        e.killed_after(
            &["snapshot", "layer", "base", "--name", "k", "--from-tar", &t],
            at,
        );
        // The next command repairs what a kill mid-snapshot left, and says so.
        let repaired = stderr(&e.run(&["layer", "ls"])).contains("recovered:");
        e.assert_consistent();
        if e.list("layer").iter().any(|l| l["name"] == "k") {
            whole += 1;
            e.with_mounted("k", |m| {
                assert_eq!(std::fs::metadata(m.join("payload")).unwrap().len(), 2 << 20)
            });
            e.ok(&["layer", "rm", "k"]);
        }
        repaired
    });
    eprintln!("{whole} killed snapshots had completed");
}

/// `snapshot layer --mount`: the layer is made and mounted in one command
/// (for thin, its device activated on a thread of its own while the
/// record is made durable). It reads as its parent, shows as mounted, and
/// a kill at any instant leaves it whole (mounted or not) or gone, with no
/// device or resource left behind.
fn a_layer_made_and_mounted_at_once_is_whole_or_gone_when_killed(d: Drv) {
    let e = Env::new("mountnow", d);
    let t = e.tar("t.tar", Tar::new().file("payload", &vec![3u8; 1 << 20]));
    e.layer(None, "base", &t);
    let args = ["snapshot", "layer", "base", "--name", "m", "--mount"];
    let out = e.ok(&args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let mp = PathBuf::from(lines[1]);
    assert_eq!(
        std::fs::metadata(mp.join("payload")).unwrap().len(),
        1 << 20
    );
    let info: Value = serde_json::from_str(&e.ok(&["layer", "inspect", "m", "--json"])).unwrap();
    assert_eq!(info["id"], lines[0], "{info}");
    assert_eq!(info["mounted_at"].as_str(), mp.to_str(), "{info}");
    // Mounted read-only, as `layer mount` mounts.
    assert!(std::fs::write(mp.join("new"), b"x").is_err());
    e.ok(&["layer", "umount", "m"]);
    e.ok(&["layer", "rm", "m"]);
    // With a changeset: applied, then mounted.
    let out = e.ok(&[
        "snapshot",
        "layer",
        "base",
        "--name",
        "m",
        "--from-tar",
        &t,
        "--mount",
    ]);
    assert_eq!(out.lines().count(), 2, "{out}");
    e.ok(&["layer", "umount", "m"]);
    e.ok(&["layer", "rm", "m"]);
    e.assert_consistent();
    let kill = ["snapshot", "layer", "base", "--name", "k", "--mount"];
    let full = Env::fastest_of_three(
        || drop(e.ok(&kill)),
        || {
            e.ok(&["layer", "umount", "k"]);
            e.ok(&["layer", "rm", "k"]);
        },
    );
    let mut whole = 0;
    kill_sweep("create-and-mount", full, 16, 3, |at| {
        e.killed_after(&kill, at);
        // The next command repairs what a kill mid-create left, and says so.
        let mut mid = stderr(&e.run(&["layer", "ls"])).contains("recovered:");
        e.assert_consistent();
        if e.list("layer").iter().any(|l| l["name"] == "k") {
            whole += 1;
            // Made but not mounted: killed between the two (for thin,
            // maybe while its device was being activated).
            let info: Value =
                serde_json::from_str(&e.ok(&["layer", "inspect", "k", "--json"])).unwrap();
            mid |= info["mounted_at"].is_null();
            // Whole, mounted or not: it mounts, reads as its parent, and
            // goes (its device with it).
            e.with_mounted("k", |m| {
                assert_eq!(std::fs::metadata(m.join("payload")).unwrap().len(), 1 << 20)
            });
            e.ok(&["layer", "rm", "k"]);
        }
        mid
    });
    eprintln!("{whole} killed creates had made the layer");
    e.assert_consistent();
    if d == Drv::Thin {
        e.assert_no_orphan_thin_id();
        // A mount killed between the device's making and its table's
        // loading leaves a device with no table; the next mount finishes
        // it.
        use std::os::unix::process::ExitStatusExt;
        use thinpool::killpoint;
        let o = e
            .cmd(&["layer", "mount", "base"])
            .env(killpoint::ENV, killpoint::POOL_THIN_DEVICE_MADE)
            .output()
            .unwrap();
        assert_eq!(o.status.signal(), Some(9), "not killed: {}", stderr(&o));
        e.with_mounted("base", |m| {
            assert_eq!(std::fs::metadata(m.join("payload")).unwrap().len(), 1 << 20)
        });
        e.assert_consistent();
    }
}

/// Random kills land where the time goes; this kills a snapshot and a
/// removal at each named instant of the protocol between two durable
/// writes (`thinpool::killpoint`), so that every one of them is hit and
/// its recovery checked: a layer killed while being made is undone, one
/// killed while being removed is removed, records and resources agree,
/// and (thin) the pool's metadata holds no id the records do not name.
fn every_kill_point_of_the_protocol_is_hit_and_recovered(d: Drv) {
    use thinpool::killpoint;
    let e = Env::new("killpoints", d);
    let t = e.tar("t.tar", Tar::new().file("payload", &vec![7u8; 1 << 20]));
    e.layer(None, "base", &t);
    let mut hit = std::collections::BTreeSet::new();
    for &point in killpoint::ALL {
        for removal in [false, true] {
            let args = if removal {
                e.layer(Some("base"), "k", &t);
                vec!["layer", "rm", "k"]
            } else {
                vec!["snapshot", "layer", "base", "--name", "k", "--from-tar", &t]
            };
            let what = format!("{} killed at {point}", args[..2].join(" "));
            if !e.killed_at_point(&args, point) {
                // The point is not on this command's path.
                if !removal {
                    e.ok(&["layer", "rm", "k"]);
                }
                continue;
            }
            hit.insert(point);
            // Neither a half-made layer nor a half-removed one survives.
            assert!(
                !e.list("layer").iter().any(|l| l["name"] == "k"),
                "{what}: the layer is still there"
            );
        }
    }
    if d == Drv::Thin {
        e.assert_no_orphan_thin_id();
    }
    e.with_mounted("base", |m| {
        assert_eq!(std::fs::metadata(m.join("payload")).unwrap().len(), 1 << 20)
    });
    // A container's points are not on a layer command's path.
    let want: Vec<&str> = killpoint::ALL
        .iter()
        .copied()
        .filter(|p| (d == Drv::Thin || !p.starts_with("pool-")) && !p.starts_with("container-"))
        .collect();
    assert_eq!(
        hit.into_iter().collect::<Vec<_>>(),
        {
            let mut w = want;
            w.sort();
            w
        },
        "kill points never hit"
    );
}

fn concurrent_snapshots_serialize_and_all_succeed(d: Drv) {
    let e = Env::new("concurrent", d);
    let t = e.tar("t.tar", Tar::new().file("a", b"a"));
    e.layer(None, "base", &t);
    let kids: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .map(|n| {
            e.cmd(&["snapshot", "layer", "base", "--name", n, "--from-tar", &t])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(e.list("layer").len(), 4);
    e.assert_consistent();
}

/// `layer ls` asks the layers' usage without the store's lock, and reads
/// the records again after: layers made meanwhile must not break the
/// listing, which shows the layers it read, each child among them.
fn listings_beside_new_layers_show_what_they_read(d: Drv) {
    let e = Env::new("listing", d);
    let t = e.tar("t.tar", Tar::new().file("a", b"a"));
    e.layer(None, "base", &t);
    let made = 12;
    let done = std::sync::atomic::AtomicBool::new(false);
    let listings = std::thread::scope(|s| {
        let maker = s.spawn(|| {
            for _ in 0..made {
                e.ok(&["snapshot", "layer", "base"]);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut listings = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            e.ok(&["layer", "ls"]);
            let ls: Vec<Value> = serde_json::from_str(&e.ok(&["layer", "ls", "--json"])).unwrap();
            let ids: Vec<&str> = ls.iter().map(|l| l["id"].as_str().unwrap()).collect();
            for l in &ls {
                for c in l["children"].as_array().unwrap() {
                    assert!(
                        ids.contains(&c.as_str().unwrap()),
                        "child {c} of {} is not in the listing",
                        l["id"]
                    );
                }
            }
            listings += 1;
        }
        maker.join().unwrap();
        listings
    });
    assert!(listings > 0);
    assert_eq!(e.list("layer").len(), made + 1);
    e.assert_consistent();
}

fn umoci_image_imports_to_the_same_tree_as_umoci_unpacks(d: Drv) {
    let e = Env::new("umoci", d);
    let layout = build_image(&e.s);
    let reference = reference_unpack(&e.s, &layout);
    let out = e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "test/app:v1",
    ]);
    assert!(out.contains("test/app:v1"), "{out}");
    let top = e.top_layer("test/app:v1");
    e.with_mounted(&top, |m| assert_same_tree(&reference, m));
    assert_eq!(e.list("layer").len(), 3);
    e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "test/app:again",
    ]);
    assert_eq!(e.list("layer").len(), 3, "a re-import duplicated layers");
    let ls = e.ok(&["image", "ls"]);
    assert!(
        ls.contains("test/app:v1") && ls.contains("test/app:again"),
        "{ls}"
    );
    e.fails(&["layer", "rm", &top], &["belongs to image"]);
    // One image with two names: removing one untags it, as docker rmi
    // does; removing the last removes the image and its layers.
    assert_eq!(
        e.ok(&["image", "rm", "test/app:v1"]).trim(),
        "untagged test/app:v1"
    );
    assert_eq!(e.list("layer").len(), 3);
    e.ok(&["image", "rm", "test/app:again"]);
    assert_eq!(e.list("layer").len(), 0);
    e.assert_consistent();
}

fn docker_archive_from_skopeo_imports_with_its_tag(d: Drv) {
    let e = Env::new("skopeo", d);
    let layout = build_image(&e.s);
    let reference = reference_unpack(&e.s, &layout);
    let archive = e.path().join("docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--insecure-policy",
        &format!("oci:{}:t", layout.display()),
        &format!("docker-archive:{}:example/app:1.0", archive.display()),
    ]));
    // Its layers are uncompressed tars named by their digest, which is
    // their diff_id: each is hashed once, as it is read. A byte flipped in
    // the biggest is still caught, and nothing is left.
    let corrupt = e.path().join("corrupt.tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    let (offset, size) = {
        let mut ar = tar::Archive::new(bytes.as_slice());
        ar.entries()
            .unwrap()
            .map(|m| m.unwrap())
            .filter(|m| m.path().unwrap().to_string_lossy().ends_with(".tar"))
            .map(|m| (m.raw_file_position(), m.size()))
            .max_by_key(|&(_, size)| size)
            .expect("a layer member")
    };
    bytes[(offset + size / 2) as usize] ^= 0xff;
    std::fs::write(&corrupt, bytes).unwrap();
    let o = e.run(&["image", "import", corrupt.to_str().unwrap()]);
    assert!(!o.status.success(), "a corrupt layer was imported");
    assert!(stderr(&o).contains("verification failed"), "{}", stderr(&o));
    assert_eq!(e.list("layer").len(), 0);
    assert_eq!(e.list("image").len(), 0);
    assert_eq!(e.resources(), 0);
    let out = e.ok(&["image", "import", archive.to_str().unwrap()]);
    assert!(out.contains("example/app:1.0"), "{out}");
    let top = e.top_layer("example/app:1.0");
    e.with_mounted(&top, |m| assert_same_tree(&reference, m));
}

fn corrupt_image_blobs_are_refused_and_leave_nothing(d: Drv) {
    let e = Env::new("corrupt", d);
    let layout = build_image(&e.s);
    let blobs = layout.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|x| x.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&biggest, bytes).unwrap();
    let o = e.run(&["image", "import", layout.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("sha256") || err.contains("digest") || err.contains("changeset"),
        "{err}"
    );
    assert_eq!(e.list("layer").len(), 0);
    assert_eq!(e.list("image").len(), 0);
    assert_eq!(e.resources(), 0);
}

fn a_config_naming_another_diff_id_is_refused_and_leaves_nothing(d: Drv) {
    let e = Env::new("diffid", d);
    let layout = build_image(&e.s);
    let wrong = config_names_another_top_diff_id(&layout);
    let o = e.run(&["image", "import", layout.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "a layer whose tar is not its diff_id was imported"
    );
    let err = stderr(&o);
    assert!(
        err.contains("layer 3 of the image: its content has diff_id sha256:")
            && err.contains(&format!("the image config says {wrong}")),
        "{err}"
    );
    // The two layers below it were made in the same transaction: undone.
    assert_eq!(e.list("layer").len(), 0);
    assert_eq!(e.list("image").len(), 0);
    assert_eq!(e.resources(), 0);
}

/// Rewrites the image of OCI layout `layout` so that its config names
/// another diff_id for its top layer, every digest that points at the
/// config (manifest, index) made right again: every blob checks out, and
/// only the layer's diff_id does not. Returns the diff_id it names.
fn config_names_another_top_diff_id(layout: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let blob = |d: &Value| {
        let d = d["digest"].as_str().unwrap();
        layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    // Writes `v` as a blob; the descriptor `desc` is made to point at it.
    let put = |v: &Value, desc: &mut Value| {
        let bytes = serde_json::to_vec(v).unwrap();
        let hex = format!("{:x}", Sha256::digest(&bytes));
        std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
        desc["digest"] = format!("sha256:{hex}").into();
        desc["size"] = bytes.len().into();
    };
    let read = |p: std::path::PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut index = read(layout.join("index.json"));
    let mut manifest = read(blob(&index["manifests"][0]));
    let mut config = read(blob(&manifest["config"]));
    let wrong = format!("sha256:{:x}", Sha256::digest(b"not the top layer's tar"));
    let diff_ids = config["rootfs"]["diff_ids"].as_array_mut().unwrap();
    assert_eq!(diff_ids.len(), 3);
    diff_ids[2] = wrong.clone().into();
    put(&config, &mut manifest["config"]);
    put(&manifest, &mut index["manifests"][0]);
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    wrong
}

fn image_import_killed_at_any_instant_leaves_all_or_nothing(d: Drv) {
    let e = Env::new("killimport", d);
    let layout = build_image(&e.s);
    let l = layout.to_str().unwrap();
    let args = ["image", "import", l, "--name", "k:1"];
    let full = Env::fastest_of_three(|| drop(e.ok(&args)), || drop(e.ok(&["image", "rm", "k:1"])));
    let mut whole = 0;
    kill_sweep("import", full, 13, 3, |at| {
        e.killed_after(&args, at);
        // The next command repairs what a kill mid-import left, and says so.
        let repaired = stderr(&e.run(&["image", "ls"])).contains("recovered:");
        let (images, layers) = (e.list("image").len(), e.list("layer").len());
        e.assert_consistent();
        match images {
            0 => assert_eq!(layers, 0, "a killed import left layers without its image"),
            1 => {
                assert_eq!(layers, 3);
                whole += 1;
                e.ok(&["image", "rm", "k:1"]);
            }
            n => panic!("{n} images"),
        }
        repaired
    });
    eprintln!("{whole} killed imports had completed");
}

// ------------------------------------------- behaviour of one driver only

#[test]
fn dm_xfs_base_with_changesets_from_stdin_and_two_mounted_snapshots() {
    thinpool::testing::require_dm();
    let e = Env::thin_with_pool(
        "xfs",
        &["--data-size", "2G", "--base-size", "512M", "--fs", "xfs"],
    );
    let bytes = Tar::new().file("hello", b"from stdin").bytes();
    let mut child = e
        .cmd(&["layer", "create", "--name", "x", "--from-tar", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &bytes).unwrap();
    drop(child.stdin.take());
    assert!(child.wait_with_output().unwrap().status.success());
    let t = e.tar("y.tar", Tar::new().file("hello", b"changed"));
    e.layer(Some("x"), "y", &t);
    // Snapshots of one xfs share its uuid: both mounted at once (nouuid).
    let a = PathBuf::from(e.ok(&["layer", "mount", "x"]).trim());
    let b = PathBuf::from(e.ok(&["layer", "mount", "y"]).trim());
    assert_eq!(read(&a.join("hello")).as_deref(), Some("from stdin"));
    assert_eq!(read(&b.join("hello")).as_deref(), Some("changed"));
    let info: Value = serde_json::from_str(&e.ok(&["layer", "inspect", "x", "--json"])).unwrap();
    assert!(
        info["mount_options"].as_str().unwrap().starts_with("xfs "),
        "{info}"
    );
    e.ok(&["layer", "umount", "x"]);
    e.ok(&["layer", "umount", "y"]);
}

#[test]
fn root_overlay_chain_beyond_the_kernel_limit_is_refused_clearly() {
    thinpool::testing::require_root();
    let e = Env::new("limit", Drv::Overlay);
    let t = e.tar("t.tar", Tar::new().file("f", b"f"));
    let mut parent: Option<String> = None;
    for i in 0..500 {
        let name = format!("l{i}");
        let out = match &parent {
            Some(p) => e.ok(&["snapshot", "layer", p, "--name", &name]),
            None => e.ok(&["layer", "create", "--name", &name, "--from-tar", &t]),
        };
        assert_eq!(out.trim().len(), 32);
        parent = Some(name);
    }
    // 499 layers and the empty bottom directory: exactly the kernel's 500.
    e.with_mounted("l498", |m| {
        assert_eq!(read(&m.join("f")).as_deref(), Some("f"))
    });
    e.fails(
        &["layer", "mount", "l499"],
        &["500 layers deep", "at most 500 lower directories"],
    );
}

#[test]
fn root_overlay_mount_options_are_chosen_and_shown() {
    thinpool::testing::require_root();
    let e = Env::new("opts", Drv::Overlay);
    let t = e.tar("t.tar", Tar::new().file("f", b"f"));
    e.layer(None, "a", &t);
    e.ok(&["layer", "create", "--name", "b"]);
    let o = e
        .cmd(&[
            "--overlay-opt",
            "index=off",
            "--overlay-opt",
            "metacopy=on",
            "layer",
            "mount",
            "a",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let info: Value = serde_json::from_str(&e.ok(&["layer", "inspect", "a", "--json"])).unwrap();
    let opts = info["mount_options"].as_str().unwrap();
    // The kernel lists index= only where it differs from its default.
    assert!(
        opts.starts_with("overlay ") && opts.contains("metacopy=on"),
        "{opts}"
    );
    assert!(
        opts.contains("lowerdir=l/") && opts.contains(":empty"),
        "{opts}"
    );
    e.ok(&["layer", "umount", "a"]);
    e.fails(
        &["--overlay-opt", "bogus", "layer", "ls"],
        &["invalid overlay option", "'bogus'"],
    );
}

// ------------------------------------------------ the drivers side by side

/// The same image on both drivers: the same top-layer tree as umoci's own
/// unpack, and every layer exports the same bytes from both.
#[test]
fn dm_both_drivers_give_the_same_trees_and_the_same_layer_bytes() {
    thinpool::testing::require_dm();
    let thin = Env::new("both-thin", Drv::Thin);
    let overlay = Env::new("both-overlay", Drv::Overlay);
    let layout = build_image(&thin.s);
    let reference = reference_unpack(&thin.s, &layout);
    let l = layout.to_str().unwrap();
    thin.ok(&["image", "import", l, "--name", "x:1"]);
    overlay.ok(&["image", "import", l, "--name", "x:1"]);
    let (tt, ot) = (thin.top_layer("x:1"), overlay.top_layer("x:1"));
    thin.with_mounted(&tt, |m| assert_same_tree(&reference, m));
    overlay.with_mounted(&ot, |m| assert_same_tree(&reference, m));
    let layers = |e: &Env| -> Vec<String> {
        let i: Value = serde_json::from_str(&e.ok(&["image", "inspect", "x:1", "--json"])).unwrap();
        i["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    for (n, (a, b)) in layers(&thin).iter().zip(layers(&overlay)).enumerate() {
        let (pa, pb) = (
            thin.path().join(format!("t{n}.tar")),
            overlay.path().join(format!("o{n}.tar")),
        );
        thin.ok(&["layer", "diff", a, "-o", pa.to_str().unwrap()]);
        overlay.ok(&["layer", "diff", &b, "-o", pb.to_str().unwrap()]);
        let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        if ba != bb {
            let members = |b: &[u8]| tar_members(b, true);
            let (ma, mb) = (members(&ba), members(&bb));
            let diffs: Vec<String> = ma
                .iter()
                .zip(&mb)
                .filter(|(x, y)| x != y)
                .map(|(x, y)| format!("thin:    {x}\noverlay: {y}"))
                .collect();
            panic!(
                "layer {n} exports differ ({} vs {} members):\n{}",
                ma.len(),
                mb.len(),
                diffs.join("\n")
            );
        }
    }
}

// ------------------------------------------------ real images, exactly

fn image_json(e: &Env, image: &str) -> Value {
    serde_json::from_str(&e.ok(&["image", "inspect", image, "--json"])).unwrap()
}

fn sha256_file(p: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(p).unwrap(), &mut h).unwrap();
    format!("sha256:{:x}", h.finalize())
}

/// Every layer of `image` exports (`layer diff`) the exact changeset it
/// was imported from: its sha256 is the layer's diff_id in the image's
/// config.
fn assert_layers_give_back_their_diff_ids(e: &Env, image: &str, layout: &std::path::Path) {
    let cfg = config_of(layout, image);
    let diff_ids: Vec<String> = cfg["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let layers = image_json(e, &format!("corpus:{image}"))["layers"].clone();
    let layers = layers.as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (n, (l, want)) in layers.iter().zip(&diff_ids).enumerate() {
        let out = e.path().join(format!("{image}-{n}.tar"));
        e.ok(&[
            "layer",
            "diff",
            l.as_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(&sha256_file(&out), want, "layer {n} of {image}");
    }
}

/// The config umoci wrote for `layout:tag`.
fn config_of(layout: &std::path::Path, tag: &str) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap()
}

/// The corpus of real-tool images (see `common::corpus_image`): every step
/// imports, its top layer is the tree umoci unpacks, and every layer gives
/// back its exact bytes. A skopeo conversion to a docker archive imports
/// to the same tree.
fn real_tool_corpus_imports_to_the_trees_umoci_unpacks(d: Drv) {
    let e = Env::new("corpus", d);
    let xd = XattrDir::new(&e.s);
    let (layout, tags) = corpus_image(xd.path());
    for tag in &tags {
        e.ok(&[
            "image",
            "import",
            &format!("{}:{tag}", layout.display()),
            "--name",
            &format!("corpus:{tag}"),
        ]);
        let reference = umoci_unpack(xd.path(), &layout, tag);
        let top = e.top_layer(&format!("corpus:{tag}"));
        e.with_mounted(&top, |m| assert_same_tree(&reference, m));
        assert_layers_give_back_their_diff_ids(&e, tag, &layout);
    }
    assert_eq!(e.list("layer").len(), 4, "steps share their lower layers");
    // The patterns are really in the layers real tools wrote.
    let members = |tag: &str, n: usize| -> Vec<(String, char)> {
        let f = std::fs::File::open(e.path().join(format!("{tag}-{n}.tar"))).unwrap();
        tar::Archive::new(f)
            .entries()
            .unwrap()
            .map(|m| {
                let m = m.unwrap();
                let kind = m.header().entry_type().as_byte() as char;
                (m.path().unwrap().to_string_lossy().into_owned(), kind)
            })
            .collect()
    };
    let has = |tag: &str, n: usize, want: &[(&str, char)]| {
        let m = members(tag, n);
        for (p, k) in want {
            assert!(
                m.contains(&(p.to_string(), *k)),
                "{tag} layer {n}: no {p} ({k}) in {m:?}"
            );
        }
    };
    // A directory becomes a symlink, with whiteouts for its old children;
    // a directory becomes a file, with a whiteout under it; a whole tree
    // goes; a hard link to a file of layer 1.
    has(
        "step2",
        1,
        &[
            ("lib", '2'),
            ("lib/.wh.x", '0'),
            ("d2f", '0'),
            ("d2f/.wh.inner", '0'),
        ],
    );
    has("step2", 1, &[("opt/.wh.tree", '0'), ("h/link2", '1')]);
    // And back; a file becomes a directory again.
    has(
        "step3",
        2,
        &[
            ("lib/", '5'),
            ("f2d", '0'),
            ("f2d/.wh.inner", '0'),
            ("d2f/", '5'),
        ],
    );
    // GNU tar's opaque directory and hard link.
    has("step4", 3, &[("data/.wh..wh..opq", '0'), ("gl2", '1')]);
    let archive = e.path().join("corpus-docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--insecure-policy",
        &format!("oci:{}:step4", layout.display()),
        &format!("docker-archive:{}:corpus/converted:1", archive.display()),
    ]));
    e.ok(&["image", "import", archive.to_str().unwrap()]);
    let reference = umoci_unpack(xd.path(), &layout, "step4");
    let top = e.top_layer("corpus/converted:1");
    e.with_mounted(&top, |m| assert_same_tree(&reference, m));
    e.assert_consistent();
}

/// `image save` in both formats: the same bytes every time, blobs with the
/// imported digests; umoci unpacks the OCI layout to the reference tree,
/// skopeo reads and converts both, and importing either into a fresh root
/// gives the same image id and trees.
fn saved_images_round_trip_with_the_same_ids_and_real_tools_read_them(d: Drv) {
    let e = Env::new("save", d);
    let layout = build_image(&e.s);
    let reference = reference_unpack(&e.s, &layout);
    let id = e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "app:v1",
    ]);
    let id = id.split_whitespace().next().unwrap().to_string();
    let (oci, oci2, docker) = (
        e.path().join("app-oci.tar"),
        e.path().join("app-oci2.tar"),
        e.path().join("app-docker.tar"),
    );
    let saved = e.ok(&["image", "save", "app:v1", "-o", oci.to_str().unwrap()]);
    assert_eq!(saved.trim(), id);
    e.ok(&["image", "save", "app:v1", "-o", oci2.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&oci).unwrap(),
        std::fs::read(&oci2).unwrap(),
        "two saves of one image differ"
    );
    e.ok(&[
        "image",
        "save",
        "app:v1",
        "-o",
        docker.to_str().unwrap(),
        "--format",
        "docker",
    ]);
    // Blobs carry the digests the image was imported with.
    let cfg = config_of(&layout, "t");
    let x = e.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(Command::new("tar").arg("-xf").arg(&oci).arg("-C").arg(&x));
    for d in cfg["rootfs"]["diff_ids"].as_array().unwrap() {
        let hex = d.as_str().unwrap().trim_start_matches("sha256:");
        let blob = x.join("blobs/sha256").join(hex);
        assert_eq!(sha256_file(&blob), d.as_str().unwrap());
    }
    assert_eq!(
        sha256_file(&x.join("blobs/sha256").join(&id)),
        format!("sha256:{id}")
    );
    // Real tools read them.
    let unpacked = umoci_unpack(e.path(), &x, "v1");
    assert_same_tree(&reference, &unpacked);
    for (transport, file) in [("oci-archive", &oci), ("docker-archive", &docker)] {
        let src = match transport {
            "oci-archive" => format!("oci-archive:{}:v1", file.display()),
            _ => format!("docker-archive:{}", file.display()),
        };
        let dest = e.path().join(format!("skopeo-{transport}"));
        run(Command::new("skopeo").args([
            "copy",
            "--insecure-policy",
            &src,
            &format!("oci:{}:copied", dest.display()),
        ]));
        let tree = umoci_unpack(e.path(), &dest, "copied");
        assert_same_tree(&reference, &tree);
    }
    // Into fresh roots: the same image id, names and trees.
    for (label, file) in [("save-oci", &oci), ("save-docker", &docker)] {
        let fresh = Env::new(label, d);
        let out = fresh.ok(&["image", "import", file.to_str().unwrap()]);
        assert_eq!(out.trim(), format!("{id} app:v1"), "{label}");
        let top = fresh.top_layer("app:v1");
        fresh.with_mounted(&top, |m| assert_same_tree(&reference, m));
        // And saving again gives the same bytes.
        let again = fresh.path().join("again.tar");
        let format = if label == "save-oci" { "oci" } else { "docker" };
        fresh.ok(&[
            "image",
            "save",
            "app:v1",
            "-o",
            again.to_str().unwrap(),
            "--format",
            format,
        ]);
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(file).unwrap(),
            "{label}"
        );
    }
    // By id: no name; unknown images are refused and write nothing.
    let byid = e.path().join("byid.tar");
    e.ok(&["image", "save", &id[..12], "-o", byid.to_str().unwrap()]);
    let listing = String::from_utf8(
        Command::new("tar")
            .arg("-xOf")
            .arg(&byid)
            .arg("index.json")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!listing.contains("ref.name"), "{listing}");
    let none = e.path().join("none.tar");
    e.fails(
        &[
            "image",
            "save",
            "app:v1",
            "nope",
            "-o",
            none.to_str().unwrap(),
        ],
        &["no image 'nope'"],
    );
    assert!(!none.exists() && !e.path().join("none.tar.partial").exists());
}

/// A layer whose recorded layout is damaged cannot be given back exactly:
/// `layer diff` and `image save` refuse, and leave no output file.
fn a_layer_that_cannot_be_given_back_exactly_is_refused(d: Drv) {
    let e = Env::new("irreproducible", d);
    let layout = build_image(&e.s);
    e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "app:v1",
    ]);
    let top = e.top_layer("app:v1");
    let split = e
        .root
        .join(d.name())
        .join("layers")
        .join(format!("{top}.split"));
    let mut bytes = std::fs::read(&split).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 12);
    std::fs::write(&split, bytes).unwrap();
    let out = e.path().join("top.tar");
    e.fails(
        &["layer", "diff", &top, "-o", out.to_str().unwrap()],
        &["corrupt"],
    );
    assert!(!out.exists() && !e.path().join("top.partial").exists());
    let saved = e.path().join("app.tar");
    e.fails(
        &["image", "save", "app:v1", "-o", saved.to_str().unwrap()],
        &["corrupt"],
    );
    assert!(!saved.exists() && !e.path().join("app.tar.partial").exists());
    std::fs::remove_file(&split).unwrap();
    e.fails(
        &["image", "save", "app:v1", "-o", saved.to_str().unwrap()],
        &["layout", "is missing"],
    );
}

/// `image inspect` shows the config umoci wrote (entrypoint, cmd, env,
/// working dir, user, ports, volumes, labels) and `image history` its
/// history newest first: umoci's `config` step (no layer, `<missing>`) on
/// top of its two `repack` steps, each paired with its layer in the store
/// and that layer's size.
fn image_config_and_history_show_what_real_tools_wrote(d: Drv) {
    let e = Env::new("history", d);
    let layout = common::busybox_image(&e.s);
    let img = format!("{}:bb", layout.display());
    common::umoci(&[
        "config",
        "--image",
        &img,
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hi",
        "--config.env",
        "APP=1",
        "--config.workingdir",
        "/srv",
        "--config.user",
        "1000:1000",
        "--config.exposedports",
        "8080/tcp",
        "--config.volume",
        "/data",
        "--config.label",
        "tier=web",
        "--history.created_by",
        "CMD (umoci config)",
    ]);
    e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "bb:1",
    ]);
    let v = image_json(&e, "bb:1");
    let c = &v["config"];
    assert_eq!(c["entrypoint"], serde_json::json!(["/bin/sh"]), "{v}");
    assert_eq!(c["cmd"], serde_json::json!(["-c", "echo hi"]));
    assert!(
        c["env"].as_array().unwrap().contains(&Value::from("APP=1")),
        "{c}"
    );
    assert_eq!(c["working_dir"], "/srv");
    assert_eq!(c["user"], "1000:1000");
    assert_eq!(c["exposed_ports"], serde_json::json!(["8080/tcp"]));
    assert_eq!(c["volumes"], serde_json::json!(["/data"]));
    assert_eq!(c["labels"]["tier"], "web");
    assert_eq!(c["architecture"], "amd64");
    let text = e.ok(&["image", "inspect", "bb:1"]);
    assert!(
        text.contains("  entrypoint  /bin/sh") && text.contains("  volumes     /data"),
        "{text}"
    );

    let layers: Vec<String> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let h: Value = serde_json::from_str(&e.ok(&["image", "history", "bb:1", "--json"])).unwrap();
    let rows = h.as_array().unwrap();
    let got: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r["created_by"].as_str().unwrap(), r["layer_id"].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("CMD (umoci config)", None),
            ("umoci repack", Some(layers[1].as_str())),
            ("umoci repack", Some(layers[0].as_str())),
        ]
    );
    // A layer's size is its changeset's: the tar `layer diff` gives back.
    for (row, layer) in [(1, &layers[1]), (2, &layers[0])] {
        let tar = e.path().join(format!("{layer}.tar"));
        e.ok(&["layer", "diff", layer, "-o", tar.to_str().unwrap()]);
        let len = std::fs::metadata(&tar).unwrap().len();
        assert_eq!(rows[row]["size_bytes"].as_u64(), Some(len), "{h}");
    }
    // The bottom layer holds the static busybox.
    assert!(rows[2]["size_bytes"].as_u64().unwrap() > 500_000, "{h}");
    assert_eq!(rows[0]["size_bytes"], 0);
    let text = e.ok(&["image", "history", "bb:1"]);
    let first = text.lines().nth(1).unwrap();
    assert!(
        first.starts_with("<missing>") && first.contains("CMD (umoci config)"),
        "{text}"
    );
    e.fails(&["image", "history", "nope:1"], &["no image 'nope:1'"]);
}

/// The filesystem holding the root fills up: commands fail with one clear
/// line, leave no half-written record or temporary file, and everything
/// made before is intact; once space is back they work again.
#[test]
fn root_a_full_state_filesystem_fails_commands_clearly_and_loses_nothing() {
    thinpool::testing::require_root();
    let s = Scratch::new("statefull");
    let fs_dir = s.path().join("fs");
    std::fs::create_dir(&fs_dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16M", "tmpfs"])
        .arg(&fs_dir)
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .stderr(Stdio::null())
                .status();
        }
    }
    let _u = Unmount(fs_dir.clone());
    let (e, before_layers) = root_with_a_layer_and_a_volume(s, &fs_dir);
    // Fill what is left of the filesystem.
    let filler = fs_dir.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=64k", "status=none"])
        .stderr(Stdio::null())
        .status();
    let big = e.tar("big.tar", Tar::new().file("big", &vec![7u8; 1 << 20]));
    refused_and_nothing_lost(&e, &big, &before_layers, &["No space left"]);
    // Space back: the same commands work.
    std::fs::remove_file(&filler).unwrap();
    works_again(&e, &big);
}

/// The commands refused before now work: `b` over `a` with `big`, and
/// volume `w`.
fn works_again(e: &Env, big: &str) {
    e.layer(Some("a"), "b", big);
    e.ok(&["volume", "create", "w"]);
    e.with_mounted("b", |m| {
        assert_eq!(std::fs::read(m.join("f")).unwrap(), b"small");
        assert_eq!(std::fs::metadata(m.join("big")).unwrap().len(), 1 << 20);
    });
    e.assert_consistent();
}

/// An overlay root in `fs_dir/root` with layer `a` (file `f`: "small")
/// and volume `v`; and its layers as listed.
fn root_with_a_layer_and_a_volume(s: Scratch, fs_dir: &std::path::Path) -> (Env, Vec<Value>) {
    let e = Env {
        root: fs_dir.join("root"),
        s,
        drv: Drv::Overlay,
    };
    let small = e.tar("small.tar", Tar::new().file("f", b"small"));
    e.layer(None, "a", &small);
    e.ok(&["volume", "create", "v"]);
    let layers = e.list("layer");
    (e, layers)
}

/// The three commands that write most to the state directory fail with
/// one line holding one of `needles`, and nothing is half-made
/// ([`nothing_half_made`]).
fn refused_and_nothing_lost(e: &Env, big: &str, before_layers: &[Value], needles: &[&str]) {
    refused_in_one_line(e, big, needles);
    nothing_half_made(e, before_layers);
}

/// The three commands that write most to the state directory fail with
/// one line holding one of `needles`.
fn refused_in_one_line(e: &Env, big: &str, needles: &[&str]) {
    for args in [
        vec!["snapshot", "layer", "a", "--name", "b", "--from-tar", big],
        vec!["layer", "create", "--name", "c", "--from-tar", big],
        vec!["volume", "create", "w"],
    ] {
        let o = e.run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(needles.iter().any(|n| err.contains(n)), "{args:?}: {err}");
    }
}

/// The root has exactly `before_layers` and volume `v`, no journal or
/// temporary file, and records that agree with resources.
fn nothing_half_made(e: &Env, before_layers: &[Value]) {
    assert_eq!(e.list("layer"), before_layers);
    let vols: Vec<String> = e
        .list("volume")
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vols, ["v"]);
    e.assert_consistent();
    let leftovers: Vec<PathBuf> = walk(&e.root)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".tmp")
                || (p.parent().unwrap().ends_with("journals") && n.ends_with(".json"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn dmsetup(args: &[&str]) {
    let o = Command::new("dmsetup")
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "dmsetup {args:?}: {}", stderr(&o));
}

/// The disk holding the root starts failing every I/O (a device-mapper
/// `error` table swapped in under its ext4): commands fail with one clear
/// line; once the disk is back and the filesystem checked, everything
/// made before is there and agrees, and nothing half-made is.
#[test]
fn dm_a_state_filesystem_returning_eio_fails_commands_clearly_and_loses_nothing() {
    thinpool::testing::require_dm();
    let s = Scratch::new("stateeio");
    let img = s.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let lo = String::from_utf8(
        Command::new("losetup")
            .args(["--show", "-f"])
            .arg(&img)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    assert!(lo.starts_with("/dev/loop"), "losetup gave '{lo}'");
    let name = format!("tl-test-eio-{}", std::process::id());
    let dev = format!("/dev/mapper/{name}");
    let sectors = (128u64 << 20) / 512;
    let linear = format!("0 {sectors} linear {lo} 0");
    dmsetup(&["create", &name, "--table", &linear]);
    struct Cleanup(String, String, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.2).status();
            let _ = Command::new("dmsetup")
                .args(["remove", "--force", &self.0])
                .env("DM_DISABLE_UDEV", "1")
                .status();
            let _ = Command::new("losetup").args(["-d", &self.1]).status();
        }
    }
    let fs_dir = s.path().join("fs");
    std::fs::create_dir(&fs_dir).unwrap();
    let _c = Cleanup(name.clone(), lo.clone(), fs_dir.clone());
    run(Command::new("mkfs.ext4").args(["-q", &dev]));
    run(Command::new("mount").arg(&dev).arg(&fs_dir));
    let (e, before_layers) = root_with_a_layer_and_a_volume(s, &fs_dir);
    let big = e.tar("big.tar", Tar::new().file("big", &vec![7u8; 1 << 20]));
    // The disk fails: every read and write of it returns EIO.
    dmsetup(&["suspend", &name]);
    dmsetup(&["load", &name, "--table", &format!("0 {sectors} error")]);
    dmsetup(&["resume", &name]);
    // ext4 turns itself read-only at its first failed journal write.
    refused_in_one_line(&e, &big, &["Input/output error", "Read-only file system"]);
    // The disk comes back; the filesystem is checked and mounted again,
    // as after a reboot.
    run(Command::new("umount").arg(&fs_dir));
    dmsetup(&["suspend", &name]);
    dmsetup(&["load", &name, "--table", &linear]);
    dmsetup(&["resume", &name]);
    let fsck = Command::new("fsck.ext4")
        .args(["-fy", &dev])
        .status()
        .unwrap();
    assert!(
        fsck.code().is_some_and(|c| c <= 1),
        "fsck.ext4 found damage it could not fix: {fsck}"
    );
    run(Command::new("mount").arg(&dev).arg(&fs_dir));
    // What was made before is there, nothing half-made is, and the same
    // commands now work.
    nothing_half_made(&e, &before_layers);
    works_again(&e, &big);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
