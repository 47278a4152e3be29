//! `thinlayer pool`: what a user sees, in all three tiers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use thinpool::testing::{require_dm, require_root, Scratch};

mod common;
use common::{fails, ok, stderr, stdout, thinlayer};

/// `pool create` of the smallest pool the dm tests need: 128M of data and
/// the smallest base filesystem.
const SMALL_POOL: [&str; 6] = [
    "pool",
    "create",
    "--data-size",
    "128M",
    "--base-size",
    "64M",
];

fn status(root: &Path) -> Value {
    serde_json::from_str(&ok(root, &["pool", "status", "--json"])).expect("status JSON")
}

// ---------------------------------------------------------------- plain

#[test]
fn plain_pool_create_refuses_bad_sizes_before_touching_anything() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let r = root.to_str().unwrap();
    fails(
        &root,
        &["pool", "create", "--data-size", "0"],
        1,
        &["invalid data size", "greater than 0"],
    );
    fails(
        &root,
        &["pool", "create", "--data-size", "garbage"],
        2,
        &["'garbage' is not a size", "512M"],
    );
    fails(
        &root,
        &["pool", "create", "--data-size=-5G"],
        2,
        &["'-5G' is not a size"],
    );
    fails(
        &root,
        &["pool", "create", "--block-size", "96K"],
        1,
        &["invalid block size", "multiple of 64K"],
    );
    fails(
        &root,
        &["pool", "create", "--block-size", "2G"],
        1,
        &["between 64K and 1G"],
    );
    fails(
        &root,
        &["pool", "create", "--data-size", "1000000"],
        1,
        &["not a whole number of 64K blocks"],
    );
    fails(
        &root,
        &[
            "pool",
            "create",
            "--data-size",
            "1T",
            "--metadata-size",
            "16M",
        ],
        1,
        &["too small for 1T", "at least 768M"],
    );
    fails(
        &root,
        &["pool", "create", "--on-full", "panic"],
        2,
        &["error or queue"],
    );
    fails(
        &root,
        &["pool", "create", "--data-dev", "/dev/null"],
        2,
        &["--metadata-dev"],
    );
    fails(
        &root,
        &[
            "pool",
            "create",
            "--data-dev",
            "/nonexistent/dev",
            "--metadata-dev",
            "/nonexistent/m",
        ],
        1,
        &["invalid data device", "/nonexistent/dev does not exist"],
    );
    fails(
        &root,
        &[
            "pool",
            "create",
            "--data-dev",
            "/dev/null",
            "--metadata-dev",
            "/dev/zero",
        ],
        1,
        &["/dev/null is not a block device"],
    );
    assert!(!root.exists(), "a refused create left {r} behind");
}

#[test]
fn plain_pool_commands_without_a_pool_say_how_to_make_one() {
    let t = tempfile::tempdir().unwrap();
    for cmd in [
        &["pool", "status"][..],
        &["pool", "activate"],
        &["pool", "deactivate"],
        &["pool", "destroy"],
    ] {
        fails(t.path(), cmd, 1, &["no pool in", "thinlayer pool create"]);
    }
    fails(
        t.path(),
        &["pool", "grow", "--data-size", "+1G"],
        1,
        &["no pool in"],
    );
    fails(t.path(), &["pool", "grow"], 2, &["--data-size"]);
    fails(
        t.path(),
        &["pool", "frobnicate"],
        2,
        &["unrecognized subcommand"],
    );
}

#[test]
fn plain_layer_commands_without_a_pool_say_how_to_make_one() {
    let t = tempfile::tempdir().unwrap();
    fails(
        t.path(),
        &["layer", "ls"],
        1,
        &["no pool in", "thinlayer pool create"],
    );
    assert!(
        !t.path().join("thin").exists(),
        "the store was made without a pool"
    );
}

#[test]
fn plain_a_listing_into_a_closed_pipe_ends_quietly() {
    let t = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    // The reader is gone before thinlayer writes: `layer ls | head -0`.
    drop(reader);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_thinlayer"))
        .arg("--root")
        .arg(t.path())
        .args(["--driver", "overlay", "layer", "ls"])
        .env_remove("THINLAYER_ROOT")
        .stdout(writer)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        o.status
    );
}

#[test]
fn plain_overlay_options_without_the_overlay_driver_are_a_usage_error() {
    let t = tempfile::tempdir().unwrap();
    fails(
        t.path(),
        &["--overlay-opt", "metacopy=on", "layer", "ls"],
        2,
        &["--overlay-opt needs --driver overlay"],
    );
}

#[test]
fn plain_root_that_is_a_file_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("file");
    std::fs::write(&f, b"keep me").unwrap();
    fails(&f, &["pool", "status"], 1, &["not a directory"]);
    assert_eq!(std::fs::read(&f).unwrap(), b"keep me");
}

#[test]
fn plain_help_lists_the_pool_commands() {
    let o = Command::new(env!("CARGO_BIN_EXE_thinlayer"))
        .args(["pool", "--help"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = stdout(&o);
    for c in [
        "create",
        "status",
        "activate",
        "deactivate",
        "grow",
        "destroy",
    ] {
        assert!(out.contains(c), "{c} missing from help: {out}");
    }
}

// ----------------------------------------------------------------- root

#[test]
fn root_pool_create_refuses_a_device_in_use() {
    require_root();
    let s = Scratch::new("inuse");
    let data = s.loop_device("data.img", 64 << 20);
    let meta = s.loop_device("meta.img", 16 << 20);
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&data)
        .status()
        .unwrap()
        .success());
    let mnt = s.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .arg(&data)
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let root = s.path().join("root");
    let (d, m) = (data.to_str().unwrap(), meta.to_str().unwrap());
    fails(
        &root,
        &["pool", "create", "--data-dev", d, "--metadata-dev", m],
        1,
        &[&format!("{d} is in use"), "mounted or held"],
    );
    fails(
        &root,
        &["pool", "create", "--data-dev", m, "--metadata-dev", m],
        1,
        &["must differ"],
    );
    assert!(!root.exists());
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
}

/// On a kernel without device-mapper (this project's build machines) the
/// create explains how to use the VM and leaves nothing; on one with it,
/// the same command must succeed and clean up.
#[test]
fn root_pool_create_on_this_kernel_either_works_or_names_the_vm() {
    require_root();
    let s = Scratch::new("nodm");
    let root = s.path().join("root");
    if thinpool::kernel::has_device_mapper() {
        ok(&root, &["pool", "create", "--data-size", "64M"]);
        ok(&root, &["pool", "destroy"]);
    } else {
        fails(
            &root,
            &["pool", "create", "--data-size", "64M"],
            1,
            &["this kernel has no device-mapper", "vm-tests/run.sh"],
        );
        assert!(!root.exists(), "a refused create left the root behind");
        assert!(s.loops_under().is_empty());
    }
}

// ------------------------------------------------------------------- dm

fn dmsetup(args: &[&str]) -> String {
    let o = Command::new("dmsetup")
        .args(args)
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dmsetup {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pool_dm_name(st: &Value) -> String {
    format!("thinlayer-1-{}-pool", st["id"].as_str().unwrap())
}

fn assert_nothing_left(s: &Scratch, root: &Path) {
    assert!(
        s.dm_devices_under().is_empty(),
        "dm devices left: {:?}",
        s.dm_devices_under()
    );
    let ours: Vec<PathBuf> = s.loops_under();
    assert!(ours.is_empty(), "loop devices left: {ours:?}");
    for f in [
        "pool/data",
        "pool/metadata",
        "pool/pool.json",
        "pool/pool.log",
    ] {
        assert!(!root.join(f).exists(), "{f} left behind");
    }
}

#[test]
fn dm_pool_create_with_defaults_matches_dmsetup_status() {
    require_dm();
    let s = Scratch::new("defaults");
    let root = s.path().join("root");
    let out = ok(&root, &["pool", "create"]);
    assert!(
        out.contains("created pool") && out.contains("data 100G"),
        "{out}"
    );
    let st = status(&root);
    assert_eq!(st["active"], true);
    assert_eq!(st["mode"], "rw");
    assert_eq!(st["block_size"], 64 << 10);
    assert_eq!(st["on_full"], "error");
    assert_eq!(st["thin_devices"], 1, "the base filesystem's device");
    assert_eq!(st["data"]["total_bytes"], 100u64 << 30);
    assert_eq!(st["metadata"]["total_bytes"], 75u64 << 20);
    assert_eq!(st["data"]["backing"], "file");
    assert!(st["data"]["loop_device"]
        .as_str()
        .unwrap()
        .starts_with("/dev/loop"));
    let mode = std::fs::metadata(&root).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );

    // `<start> <len> thin-pool <tx> <used>/<total meta> <used>/<total data> ...`
    let line = dmsetup(&["status", &pool_dm_name(&st)]);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[2], "thin-pool");
    assert_eq!(f[3], st["transaction_id"].to_string());
    let (mu, mt) = f[4].split_once('/').unwrap();
    let (du, dt) = f[5].split_once('/').unwrap();
    let n = |s: &str| s.parse::<u64>().unwrap();
    assert_eq!(n(mu) * 4096, st["metadata"]["used_bytes"].as_u64().unwrap());
    assert_eq!(
        n(mt) * 4096,
        st["metadata"]["total_bytes"].as_u64().unwrap()
    );
    assert_eq!(n(du) * 65536, st["data"]["used_bytes"].as_u64().unwrap());
    assert_eq!(n(dt) * 65536, st["data"]["total_bytes"].as_u64().unwrap());
    assert_eq!(f[6], "-", "held metadata root");
    assert_eq!(f[7], "rw");
    assert!(f.contains(&"error_if_no_space"), "{line}");
    let table = dmsetup(&["table", &pool_dm_name(&st)]);
    assert!(
        table.contains(" 128 "),
        "block size not 128 sectors: {table}"
    );

    let human = ok(&root, &["pool", "status"]);
    assert!(
        human.contains("mode          rw") && human.contains("100G"),
        "{human}"
    );
    base_filesystem_takes_only_what_it_writes(&root, &st);
    ok(&root, &["pool", "destroy"]);
    assert_nothing_left(&s, &root);
}

/// The pool provisions only what mkfs writes for the default 10G base:
/// its inode tables and journal are read as the thin device's zeros, not
/// written; no lazy-init thread writes them later (a layer mounted
/// read-write for a while provisions next to nothing); and e2fsck finds
/// the base and the layer clean.
fn base_filesystem_takes_only_what_it_writes(root: &Path, st: &Value) {
    let used = || status(root)["data"]["used_bytes"].as_u64().unwrap();
    let after_create = used();
    assert!(
        after_create <= 16 << 20,
        "the base filesystem provisioned {} MiB",
        after_create >> 20
    );
    ok(root, &["layer", "create", "--name", "l"]);
    let thins = || -> Vec<(String, String)> {
        let rec =
            serde_json::to_value(thinpool::testing::settled_record(&root.join("pool"))).unwrap();
        rec["thins"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(id, t)| (id.clone(), t["tag"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    let all = thins();
    let base = &all.iter().find(|(_, t)| t == "base").expect("no base").0;
    let layer = &all.iter().find(|(_, t)| t != "base").expect("no layer").0;
    let sectors = (10u64 << 30) / 512;
    // By number: thinlayer makes its devices without /dev/mapper nodes.
    let pool = dmsetup(&[
        "info",
        "-c",
        "--noheadings",
        "-o",
        "major,minor",
        &pool_dm_name(st),
    ])
    .trim()
    .to_string();
    let check = |id: &str, rw: bool| {
        let name = format!("tl-test-fsck-{}-{id}", std::process::id());
        let table = format!("0 {sectors} thin {pool} {id}");
        let mut args = vec!["create", &name, "--table", &table];
        if !rw {
            args.push("--readonly");
        }
        dmsetup(&args);
        let dev = format!("/dev/mapper/{name}");
        if rw {
            // Mounted read-write as a container's layer is: ext4's lazy
            // init would start zeroing inode tables now.
            let mnt = tempfile::tempdir().unwrap();
            let st = Command::new("mount")
                .arg(&dev)
                .arg(mnt.path())
                .status()
                .unwrap();
            assert!(st.success());
            std::thread::sleep(Duration::from_secs(3));
            let st = Command::new("umount").arg(mnt.path()).status().unwrap();
            assert!(st.success());
        }
        let fsck = Command::new("e2fsck").args(["-fn", &dev]).output().unwrap();
        dmsetup(&["remove", &name]);
        assert!(
            fsck.status.success(),
            "e2fsck of thin device {id}: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
    };
    check(layer, true);
    let after_mount = used();
    assert!(
        after_mount - after_create <= 2 << 20,
        "a layer mounted read-write for 3 s provisioned {} KiB",
        (after_mount - after_create) >> 10
    );
    check(base, false);
    eprintln!(
        "base filesystem (10G ext4): {} KiB of pool after create, {} KiB more after a read-write mount",
        after_create >> 10,
        (after_mount - after_create) >> 10
    );
    ok(root, &["layer", "rm", "l"]);
}

#[test]
fn dm_pool_create_honours_every_option() {
    require_dm();
    let s = Scratch::new("options");
    let root = s.path().join("root");
    ok(
        &root,
        &[
            "pool",
            "create",
            "--data-size",
            "256M",
            "--metadata-size",
            "8M",
            "--block-size",
            "1M",
            "--on-full",
            "queue",
            "--base-size",
            "64M",
        ],
    );
    let st = status(&root);
    assert_eq!(st["data"]["total_bytes"], 256u64 << 20);
    assert_eq!(st["metadata"]["total_bytes"], 8u64 << 20);
    assert_eq!(st["block_size"], 1u64 << 20);
    assert_eq!(st["on_full"], "queue");
    let table = dmsetup(&["table", &pool_dm_name(&st)]);
    assert!(table.contains(" 2048 "), "{table}");
    assert!(!table.contains("error_if_no_space"), "{table}");
    assert_eq!(
        std::fs::metadata(root.join("pool/data")).unwrap().len(),
        256 << 20
    );
    fails(
        &root,
        &["pool", "create"],
        1,
        &["already holds pool", "pool destroy"],
    );
    ok(&root, &["pool", "destroy"]);
    assert_nothing_left(&s, &root);
}

#[test]
fn dm_pool_on_block_devices_leaves_them_attached_and_wiped() {
    require_dm();
    let s = Scratch::new("devs");
    let data = s.loop_device("data.img", 128 << 20);
    let meta = s.loop_device("meta.img", 8 << 20);
    let root = s.path().join("root");
    let (d, m) = (data.to_str().unwrap(), meta.to_str().unwrap());
    ok(
        &root,
        &[
            "pool",
            "create",
            "--data-dev",
            d,
            "--metadata-dev",
            m,
            "--base-size",
            "64M",
        ],
    );
    let st = status(&root);
    assert_eq!(st["data"]["backing"], "device");
    assert_eq!(st["data"]["path"], d);
    assert_eq!(st["data"]["total_bytes"], 128u64 << 20);
    assert_eq!(st["metadata"]["total_bytes"], 8u64 << 20);
    fails(
        &root,
        &["pool", "grow", "--data-size", "+64M"],
        1,
        &["grow the device first"],
    );
    ok(&root, &["pool", "deactivate"]);
    ok(&root, &["pool", "activate"]);
    ok(&root, &["pool", "destroy"]);
    assert!(s.dm_devices_under().is_empty());
    assert!(data.exists() && thinpool::kernel::Superblock::read(&meta).unwrap().is_none());
    // Wiped: the device can make a new pool.
    ok(
        &root,
        &[
            "pool",
            "create",
            "--data-dev",
            d,
            "--metadata-dev",
            m,
            "--base-size",
            "64M",
        ],
    );
    ok(&root, &["pool", "destroy"]);
}

#[test]
fn dm_pool_deactivate_and_activate_are_idempotent() {
    require_dm();
    let s = Scratch::new("cycle");
    let root = s.path().join("root");
    ok(&root, &SMALL_POOL);
    assert!(ok(&root, &["pool", "deactivate"]).contains("deactivated"));
    assert!(ok(&root, &["pool", "deactivate"]).contains("already inactive"));
    assert!(s.dm_devices_under().is_empty());
    assert!(s.loops_under().is_empty());
    let st = status(&root);
    assert_eq!(st["active"], false);
    assert_eq!(st["mode"], Value::Null);
    assert_eq!(st["data"]["used_bytes"], Value::Null);
    assert!(ok(&root, &["pool", "activate"]).contains("activated"));
    assert!(ok(&root, &["pool", "activate"]).contains("already active"));
    assert_eq!(status(&root)["mode"], "rw");
    ok(&root, &["pool", "destroy"]);
    assert_nothing_left(&s, &root);
}

#[test]
fn dm_pool_grow_online_through_the_cli() {
    require_dm();
    let s = Scratch::new("clgrow");
    let root = s.path().join("root");
    ok(&root, &SMALL_POOL);
    let out = ok(&root, &["pool", "grow", "--data-size", "+128M"]);
    assert!(out.contains("data 256M"), "{out}");
    ok(
        &root,
        &[
            "pool",
            "grow",
            "--data-size",
            "512M",
            "--metadata-size",
            "+16M",
        ],
    );
    let st = status(&root);
    assert_eq!(st["data"]["total_bytes"], 512u64 << 20);
    assert_eq!(st["metadata"]["total_bytes"], 32u64 << 20);
    fails(
        &root,
        &["pool", "grow", "--data-size", "256M"],
        1,
        &["shrinking a pool is not supported"],
    );
    fails(
        &root,
        &["pool", "grow", "--data-size", "10T"],
        1,
        &["grow the metadata too"],
    );
    assert_eq!(status(&root)["data"]["total_bytes"], 512u64 << 20);
    // The new size survives deactivation.
    ok(&root, &["pool", "deactivate"]);
    ok(&root, &["pool", "activate"]);
    assert_eq!(status(&root)["data"]["total_bytes"], 512u64 << 20);
    ok(&root, &["pool", "destroy"]);
}

#[test]
fn dm_pool_destroy_is_refused_while_thin_devices_exist_unless_forced() {
    require_dm();
    let s = Scratch::new("destroy");
    let root = s.path().join("root");
    ok(&root, &SMALL_POOL);
    {
        let mut pool = thinpool::Pool::open(&root.join("pool")).unwrap();
        pool.create_thin(thinpool::Bytes(32 << 20), "layer")
            .unwrap();
    }
    assert_eq!(status(&root)["thin_devices"], 2, "the base and one more");
    fails(
        &root,
        &["pool", "destroy"],
        1,
        &["still has 1 thin device", "--force"],
    );
    assert_eq!(status(&root)["active"], true);
    ok(&root, &["pool", "destroy", "--force"]);
    assert_nothing_left(&s, &root);
}

#[test]
fn dm_two_racing_creates_make_one_pool_and_one_clear_error() {
    require_dm();
    let s = Scratch::new("race");
    let root = s.path().join("root");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&root)
            .args(SMALL_POOL)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Several rounds: which process wins, and when the loser starts, vary.
    for _ in 0..4 {
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let wins = [&a, &b].iter().filter(|o| o.status.success()).count();
        assert_eq!(wins, 1, "a: {} b: {}", stderr(&a), stderr(&b));
        let loser = if a.status.success() { &b } else { &a };
        assert!(
            stderr(loser).contains("already holds pool"),
            "{}",
            stderr(loser)
        );
        assert_eq!(s.dm_devices_under().len(), 3);
        ok(&root, &["pool", "destroy"]);
        assert_nothing_left(&s, &root);
    }
}

/// Kill `pool create`, then `pool destroy`, at many instants: the next
/// command finds either a whole pool or none, and no device or file is
/// left orphaned.
#[test]
fn dm_pool_create_and_destroy_killed_at_any_instant_leave_a_pool_or_nothing() {
    require_dm();
    let s = Scratch::new("kill");
    let root = s.path().join("root");
    let killed = |args: &[&str], delay_ms: u64| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&root)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
    };
    // Spread the kills over the whole run of an uninterrupted create, and
    // a little past it, whatever this machine's speed.
    let t = std::time::Instant::now();
    ok(&root, &SMALL_POOL);
    let full = t.elapsed().as_millis() as u64;
    ok(&root, &["pool", "destroy"]);
    let (mut pools, mut none, mut mid) = (0, 0, 0);
    for delay_ms in (0..=16u64).map(|k| full * k / 14) {
        killed(&SMALL_POOL, delay_ms);
        // Something of the pool exists: the kill came after it started.
        let begun = root.join("pool").exists();
        let o = thinlayer(&root, &["pool", "status", "--json"]);
        if !o.status.success() {
            none += 1;
            if begun {
                mid += 1;
            }
            assert!(stderr(&o).contains("no pool in"), "{}", stderr(&o));
            assert_nothing_left(&s, &root);
            continue;
        }
        pools += 1;
        let st: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(st["active"], true);
        killed(&["pool", "destroy"], delay_ms);
        let o = thinlayer(&root, &["pool", "status", "--json"]);
        if o.status.success() {
            // Killed before the destroy was recorded: the pool is whole,
            // possibly already deactivated, and can still be destroyed.
            let again: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(again["id"], st["id"]);
            ok(&root, &["pool", "destroy"]);
        } else {
            assert!(stderr(&o).contains("no pool in"), "{}", stderr(&o));
        }
        assert_nothing_left(&s, &root);
    }
    eprintln!(
        "create takes {full}ms; killed: {pools} whole pools, {none} rolled back or never started, {mid} of them mid-create"
    );
    assert!(
        mid >= 2,
        "only {mid} kills landed mid-create: the rollback went untested"
    );
    assert!(
        pools > 0,
        "no create outlived its kill: the destroy half went untested"
    );
}

// ------------------------------------------- damaged metadata, lost ids

/// A pool at `root` with three layers a <- b <- c, each adding a file.
fn pool_with_three_layers(s: &Scratch, root: &Path) {
    ok(
        root,
        &["pool", "create", "--data-size", "1G", "--base-size", "128M"],
    );
    let mut parent: Option<&str> = None;
    for n in ["a", "b", "c"] {
        let dir = s.path().join(format!("src-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(n), format!("layer {n}\n")).unwrap();
        let tar = s.path().join(format!("{n}.tar"));
        let st = Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .arg(n)
            .status()
            .unwrap();
        assert!(st.success());
        let t = tar.to_str().unwrap();
        match parent {
            None => ok(root, &["layer", "create", "--name", n, "--from-tar", t]),
            Some(p) => ok(
                root,
                &["snapshot", "layer", p, "--name", n, "--from-tar", t],
            ),
        };
        parent = Some(n);
    }
}

/// What `thin_check` says of `meta` (run through a loop device: the thin
/// tools open with O_DIRECT, which the guest's tmpfs refuses); `None`
/// when it passes.
fn thin_check_says(meta: &Path) -> Option<String> {
    let lo = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(meta)
        .output()
        .unwrap();
    assert!(lo.status.success(), "losetup: {}", stderr(&lo));
    let dev = stdout(&lo).trim().to_string();
    let o = Command::new("thin_check").arg(&dev).output().unwrap();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    (!o.status.success()).then(|| format!("{}{}", stderr(&o), stdout(&o)))
}

/// 16 bytes of a fixed pattern written into 4 KiB block `b` of `path`.
fn damage_block(path: &Path, b: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(b * 4096 + 48)).unwrap();
    f.write_all(&[0xa5; 16]).unwrap();
    f.sync_all().unwrap();
}

/// The first metadata block whose damage `thin_check` reports with a
/// message containing `kind`, tried on copies of `meta`.
fn block_whose_damage_reads(s: &Scratch, meta: &Path, kind: &str) -> u64 {
    let copy = s.path().join("meta-probe");
    let blocks = std::fs::metadata(meta).unwrap().len() / 4096;
    for b in 1..blocks.min(256) {
        std::fs::copy(meta, &copy).unwrap();
        damage_block(&copy, b);
        if thin_check_says(&copy).is_some_and(|said| said.contains(kind)) {
            return b;
        }
    }
    panic!("no metadata block whose damage thin_check reports as {kind:?}");
}

fn layer_file(root: &Path, layer: &str, file: &str) -> String {
    let mp = PathBuf::from(ok(root, &["layer", "mount", layer]).trim());
    let got = std::fs::read_to_string(mp.join(file)).unwrap_or_default();
    ok(root, &["layer", "umount", layer]);
    got
}

#[test]
fn dm_damaged_metadata_is_refused_at_activation_and_pool_repair_brings_every_layer_back() {
    require_dm();
    let s = Scratch::new("repair");
    let root = s.path().join("root");
    pool_with_three_layers(&s, &root);
    ok(&root, &["pool", "deactivate"]);
    let meta = root.join("pool/metadata");
    assert!(thin_check_says(&meta).is_none(), "clean before the damage");
    // A space map is derived from the mappings: thin_repair rebuilds it
    // whole, so every layer must come back.
    let b = block_whose_damage_reads(&s, &meta, "space map");
    damage_block(&meta, b);
    fails(
        &root,
        &["pool", "activate"],
        1,
        &["metadata", "damaged", "thinlayer pool repair"],
    );
    assert_eq!(status(&root)["active"], false, "nothing was started");
    // Skipping the check would load damaged metadata: the user's choice,
    // not tested here; repair is refused while active, so deactivate.
    let out = ok(&root, &["pool", "repair"]);
    assert!(out.contains("damaged copy"), "{out}");
    assert!(!out.contains("lost:"), "nothing may be lost: {out}");
    let kept: Vec<String> = std::fs::read_dir(root.join("pool"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("metadata.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged metadata is kept: {kept:?}");
    assert!(thin_check_says(&root.join("pool").join(&kept[0])).is_some());
    assert!(
        thin_check_says(&meta).is_none(),
        "the repaired metadata is clean"
    );
    let st = status(&root);
    assert_eq!(st["active"], true);
    assert_eq!(st["thin_devices"], 4, "base and three layers");
    assert_eq!(layer_file(&root, "c", "a"), "layer a\n");
    assert_eq!(layer_file(&root, "c", "b"), "layer b\n");
    assert_eq!(layer_file(&root, "c", "c"), "layer c\n");
    // The pool works on: a new layer, and a checked activation.
    ok(&root, &["snapshot", "layer", "c", "--name", "d"]);
    ok(&root, &["pool", "deactivate"]);
    assert!(ok(&root, &["pool", "activate"]).contains("metadata checked"));
    // Repairing an active pool is refused, and changes nothing.
    fails(&root, &["pool", "repair"], 1, &["active", "deactivated"]);
}

#[test]
fn dm_pool_repair_reports_what_it_could_not_save_and_the_store_opens_on_what_survived() {
    require_dm();
    let s = Scratch::new("repair-lost");
    let root = s.path().join("root");
    pool_with_three_layers(&s, &root);
    ok(&root, &["pool", "deactivate"]);
    let meta = root.join("pool/metadata");
    let b = block_whose_damage_reads(&s, &meta, "btree node");
    damage_block(&meta, b);
    fails(&root, &["pool", "activate"], 1, &["thinlayer pool repair"]);
    let out = ok(&root, &["pool", "repair"]);
    // Whatever the repair saved opens and reads back; whatever it could
    // not is named, never silently gone.
    let layers: Vec<Value> = serde_json::from_str(&ok(&root, &["layer", "ls", "--json"])).unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    for n in ["a", "b", "c"] {
        if names.contains(&n) {
            assert_eq!(layer_file(&root, n, n), format!("layer {n}\n"), "{out}");
        } else {
            assert!(
                out.contains(&format!("layer {n}")) || out.contains("lost:"),
                "{n} vanished silently: {out}"
            );
        }
    }
    let st = status(&root);
    assert_eq!(
        st["thin_devices"].as_u64().unwrap(),
        layers.len() as u64 + 1,
        "records and devices agree: {out}"
    );
    eprintln!("damage at block {b}: kept {names:?}; repair said: {out}");
}

#[test]
fn dm_activation_frees_ids_no_record_names_and_a_failed_undo_stays_pending() {
    require_dm();
    let s = Scratch::new("orphans");
    let root = s.path().join("root");
    ok(
        &root,
        &[
            "pool",
            "create",
            "--data-size",
            "512M",
            "--base-size",
            "64M",
        ],
    );
    let st = status(&root);
    let pool = pool_dm_name(&st);
    let dm_info = |name: &str, field: &str| {
        dmsetup(&["info", "-c", "--noheadings", "-o", field, name])
            .trim()
            .to_string()
    };
    // An id in the metadata that no record names (what an older rollback
    // that ignored a failed delete left).
    dmsetup(&["message", &pool, "0", "create_thin 9000"]);
    ok(&root, &["pool", "deactivate"]);
    let o = thinlayer(&root, &["pool", "activate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("freed thin id 9000"), "{}", stderr(&o));
    ok(&root, &["pool", "deactivate"]);
    let o = thinlayer(&root, &["pool", "activate"]);
    assert!(!stderr(&o).contains("freed"), "freed once: {}", stderr(&o));

    // An interrupted delete that cannot be finished (its device held open
    // here, as a device a crash left in use would be) stays pending; no
    // new change is made until the delete goes through, and then it is
    // gone.
    dmsetup(&["message", &pool, "0", "create_thin 9001"]);
    let holder = format!("tl-test-hold-{}", std::process::id());
    let pool_dev = dm_info(&pool, "major,minor").replace(' ', "");
    dmsetup(&[
        "create",
        &holder,
        "--table",
        &format!("0 2048 thin {pool_dev} 9001"),
    ]);
    let held = std::fs::File::open(format!("/dev/{}", dm_info(&holder, "blkdevname"))).unwrap();
    let rec_path = root.join("pool/pool.json");
    let read_rec = || -> Value {
        serde_json::to_value(thinpool::testing::settled_record(&root.join("pool"))).unwrap()
    };
    let mut rec = read_rec();
    rec["pending"] = serde_json::json!({"op": "delete", "id": 9001});
    // A checkpoint's next epoch: the change log's entries are retired.
    rec["log_epoch"] = (rec["log_epoch"].as_u64().unwrap() + 1).into();
    thinpool::record::write(&rec_path, &rec).unwrap();
    fails(
        &root,
        &["layer", "create", "--name", "x"],
        1,
        &["thin device 9001", "pending"],
    );
    let rec = read_rec();
    assert_eq!(rec["pending"]["id"], 9001, "still pending: {rec}");
    drop(held);
    dmsetup(&["remove", &holder]);
    ok(&root, &["layer", "create", "--name", "x"]);
    let rec = read_rec();
    assert!(rec["pending"].is_null(), "{rec}");
    ok(&root, &["pool", "deactivate"]);
    let o = thinlayer(&root, &["pool", "activate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("9001"),
        "9001 was deleted, not left: {}",
        stderr(&o)
    );
    assert_eq!(status(&root)["thin_devices"], 2, "base and x");
}

/// Bytes the host filesystem holds for a file (a sparse file's holes take
/// none).
/// `layer create --name NAME --from-tar TAR` in the pool at `root`.
fn layer_from_tar(root: &Path, name: &str, tar: &Path) {
    ok(
        root,
        &[
            "layer",
            "create",
            "--name",
            name,
            "--from-tar",
            tar.to_str().unwrap(),
        ],
    );
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn dm_deleting_a_layer_gives_its_blocks_back_to_the_host_filesystem() {
    require_dm();
    let s = Scratch::new("discard");
    let root = s.path().join("root");
    ok(&root, &["pool", "create", "--data-size", "1G"]);
    // 32 MiB that no other layer shares (incompressible, so no filesystem
    // trick keeps it small).
    let mut data = vec![0u8; 32 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let tar = common::Tar::new()
        .file("big", &data)
        .write(&s.path().join("big.tar"));
    layer_from_tar(&root, "big", &tar);
    let file = root.join("pool/data");
    let used = || status(&root)["data"]["used_bytes"].as_u64().unwrap();
    let (pool_before, file_before) = (used(), allocated(&file));
    ok(&root, &["layer", "rm", "big"]);
    let (pool_after, file_after) = (used(), allocated(&file));
    let pool_freed = pool_before - pool_after;
    let file_freed = file_before.saturating_sub(file_after);
    eprintln!(
        "layer rm: the pool freed {} KiB, the data file gave back {} KiB",
        pool_freed >> 10,
        file_freed >> 10
    );
    assert!(pool_freed >= 32 << 20, "the pool freed {pool_freed}");
    assert!(
        file_freed * 10 >= pool_freed * 9,
        "the data file gave back {file_freed} of the {pool_freed} bytes the pool freed"
    );
    ok(&root, &["pool", "destroy"]);
}

/// `thin_dump` of a copy of the pool's metadata file as it is now (the
/// tools read with O_DIRECT, which the tmpfs the tests run in refuses, so
/// the copy is read through a loop device): `snapshot` reads the metadata
/// snapshot the caller reserved, otherwise the metadata as last committed.
fn thin_dump(s: &Scratch, meta: &Path, name: &str, snapshot: bool) -> String {
    let bytes = std::fs::read(meta).unwrap();
    let dev = s.loop_device(name, bytes.len() as u64);
    std::fs::write(s.path().join(name), &bytes).unwrap();
    let mut cmd = Command::new("thin_dump");
    if snapshot {
        cmd.arg("-m");
    }
    let o = cmd.arg(&dev).output().unwrap();
    assert!(o.status.success(), "thin_dump: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Thin device `id`'s element in a `thin_dump`: its mappings.
fn device_mappings(dump: &str, id: u32) -> String {
    let start = dump
        .find(&format!("<device dev_id=\"{id}\""))
        .unwrap_or_else(|| panic!("no device {id} in the dump"));
    let end = start + dump[start..].find("</device>").unwrap();
    dump[start..end].to_string()
}

#[test]
fn dm_a_layer_written_from_a_tar_is_committed_in_the_pool_s_metadata_when_the_command_returns() {
    require_dm();
    let s = Scratch::new("committed");
    let root = s.path().join("root");
    ok(&root, &["pool", "create", "--data-size", "1G"]);
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let tar = common::Tar::new()
        .file("f", &data)
        .write(&s.path().join("l.tar"));
    layer_from_tar(&root, "l", &tar);
    // At once, before the pool's own commit (once a second while anything
    // changed) could commit for it: the metadata on disk, as a power cut
    // would leave it. The layer is written with journal barriers off and
    // one flush of its device at the end (a commit of the pool): without
    // that flush, the mappings its last writes made would be missing here.
    let meta = root.join("pool/metadata");
    let on_disk = thin_dump(&s, &meta, "on-disk", false);
    let rec = thinpool::testing::settled_record(&root.join("pool"));
    let id = rec
        .thins
        .iter()
        .find(|(_, t)| t.tag.starts_with("layer:"))
        .map(|(id, _)| id.0)
        .expect("the layer's thin device");
    // The kernel's view: reserving a metadata snapshot commits first.
    let pool = pool_dm_name(&status(&root));
    dmsetup(&["message", &pool, "0", "reserve_metadata_snap"]);
    let live = thin_dump(&s, &meta, "live", true);
    dmsetup(&["message", &pool, "0", "release_metadata_snap"]);
    let (on_disk, live) = (device_mappings(&on_disk, id), device_mappings(&live, id));
    assert!(
        live.matches("mapping").count() > 0,
        "the layer maps nothing: {live}"
    );
    assert_eq!(on_disk, live, "the layer's last writes were not committed");
    let mp = PathBuf::from(ok(&root, &["layer", "mount", "l"]).trim());
    let read = std::fs::read(mp.join("f")).unwrap();
    ok(&root, &["layer", "umount", "l"]);
    assert!(read == data, "the layer's file differs from the tar's");
    ok(&root, &["pool", "destroy", "--force"]);
}
