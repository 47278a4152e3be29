//! NFS volumes against a real NFS server: the kernel's nfsd in the VM
//! (`vm-tests/nfs-server.sh`, through `common::nfs`), exporting a
//! directory on 127.0.0.1. A local volume with `--opt type=nfs` is
//! mounted when its first container is mounted and unmounted after its
//! last; a server that is down or silent fails the container's mount
//! within `LOCAL_MOUNT_TIMEOUT`, leaving nothing mounted. Dm tier: only
//! the VM's kernel has nfsd (and the thin run needs dm-thin).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::env::{read, Drv, Env};
use common::nfs::{silent_server, NfsServer};
use common::{busybox_image, stderr};

/// The bound a failing NFS mount must stay within: the library's 20 s
/// timeout, plus the command's own work in a slow (TCG) VM.
const BOUND: Duration = Duration::from_secs(30);

fn setup(label: &str, d: Drv) -> Env {
    let e = Env::new(label, d);
    let layout = busybox_image(&e.s);
    e.ok(&["image", "import", layout.to_str().unwrap(), "--name", "bb"]);
    e
}

/// `volume create NAME` of type nfs for `:/PATH` on 127.0.0.1, Docker's
/// way; `o` is appended to the mount options. Returns its data directory.
fn nfs_volume(e: &Env, name: &str, path: &str, o: &str) -> PathBuf {
    e.ok(&[
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=nfs",
        "--opt",
        &format!("o=addr=127.0.0.1,vers=4.2{o}"),
        "--opt",
        &format!("device=:{path}"),
        name,
    ]);
    let v: serde_json::Value = serde_json::from_str(&e.ok(&["volume", "inspect", name])).unwrap();
    PathBuf::from(v[0]["mountpoint"].as_str().unwrap())
}

fn create(e: &Env, name: &str, vol: &str) {
    e.ok(&[
        "container",
        "create",
        "--name",
        name,
        "--image",
        "bb",
        "-v",
        &format!("{vol}:/shared"),
    ]);
}

/// The filesystem type and source of the mount at `p`, if any.
fn mount_at(p: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&p.to_str().unwrap())).then(|| {
            let sep = f.iter().position(|x| *x == "-").unwrap();
            (f[sep + 1].to_string(), f[sep + 2].to_string())
        })
    })
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}

fn mounted(e: &Env, c: &str) -> bool {
    let all = e.list("container");
    let rec = all.iter().find(|r| r["name"] == c).expect("container gone");
    rec["mounted"] == true
}

/// Runs a command that must fail within [`BOUND`] with one error line
/// containing every needle; returns the line and how long it took.
fn fails_within(e: &Env, args: &[&str], needles: &[&str]) -> (String, Duration) {
    let t0 = Instant::now();
    let o = e.run(args);
    let took = t0.elapsed();
    let err = stderr(&o);
    eprintln!("{args:?} failed in {took:.1?}: {err}");
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(took < BOUND, "{args:?} took {took:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("thinlayer: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
    (err, took)
}

#[test]
fn dm_nfs_volume_is_mounted_with_its_first_user_and_unmounted_after_its_last() {
    thinpool::testing::require_dm();
    let e = setup("nfs-shared", Drv::Thin);
    let srv = NfsServer::start(&e.path().join("export"));
    let remote = srv.export().join("vol1");
    std::fs::create_dir(&remote).unwrap();

    let data = nfs_volume(&e, "nv", "/vol1", "");
    assert_eq!(mount_at(&data), None, "volume create mounts nothing");
    create(&e, "c1", "nv");
    create(&e, "c2", "nv");
    assert_eq!(mount_at(&data), None, "container create mounts nothing");

    // The first container mounted mounts the volume, from the server.
    let rootfs = PathBuf::from(e.ok(&["container", "mount", "c1"]).trim());
    assert_eq!(
        mount_at(&data),
        Some(("nfs4".to_string(), "127.0.0.1:/vol1".to_string())),
        "mounted with c1"
    );
    e.sh("c1", "echo one > /shared/from-c1");
    // c2's exec sees c1's file, and its own write reaches the server.
    assert_eq!(
        e.sh("c2", "cat /shared/from-c1; echo two > /shared/from-c2"),
        "one\n"
    );
    assert!(!mounted(&e, "c2"), "exec unmounts what it mounted");
    assert!(mount_at(&data).is_some(), "c1 still uses it");
    assert_eq!(read(&remote.join("from-c1")).as_deref(), Some("one\n"));
    assert_eq!(read(&remote.join("from-c2")).as_deref(), Some("two\n"));
    assert_eq!(
        read(&rootfs.join("shared/from-c2")).as_deref(),
        Some("two\n")
    );
    // What the server writes, the containers see.
    std::fs::write(remote.join("from-server"), b"three\n").unwrap();
    assert_eq!(e.sh("c1", "cat /shared/from-server"), "three\n");

    // Unmounted after the last mounted user, whichever order they go in.
    e.ok(&["container", "mount", "c2"]);
    e.ok(&["container", "umount", "c1"]);
    assert!(mount_at(&data).is_some(), "c2 still uses it");
    assert_eq!(
        read(&data.join("from-c1")).as_deref(),
        Some("one\n"),
        "the volume stays readable at its mountpoint"
    );
    e.ok(&["container", "umount", "c2"]);
    assert_eq!(mount_at(&data), None, "unmounted after the last user");
    assert_eq!(mounts_under(&e.root), Vec::<String>::new());

    e.fails(&["volume", "rm", "nv"], &["in use", "c1, c2"]);
    e.ok(&["container", "rm", "c1"]);
    e.ok(&["container", "rm", "c2"]);
    e.ok(&["volume", "rm", "nv"]);
    assert!(!data.exists());
    assert!(e.list("volume").is_empty());
    // The volume was the mount, never the server's data.
    assert_eq!(read(&remote.join("from-c1")).as_deref(), Some("one\n"));
    e.assert_consistent();
}

#[test]
fn dm_nfs_server_down_or_silent_fails_the_mount_in_bounded_time_and_mounts_nothing() {
    thinpool::testing::require_dm();
    let e = setup("nfs-down", Drv::Overlay);
    let srv = NfsServer::start(&e.path().join("export"));
    std::fs::create_dir(srv.export().join("vol1")).unwrap();
    std::fs::write(srv.export().join("vol1/kept"), b"kept\n").unwrap();
    let down = nfs_volume(&e, "down", "/vol1", "");
    create(&e, "c", "down");

    // nfsd stopped: connections are refused.
    srv.down();
    let (err, _) = fails_within(
        &e,
        &["container", "mount", "c"],
        &["volume 'down'", "127.0.0.1"],
    );
    assert!(
        err.contains("Connection refused") || err.contains("did not answer within"),
        "{err}"
    );
    assert_eq!(mount_at(&down), None);
    assert_eq!(mounts_under(&e.root), Vec::<String>::new());
    assert!(!mounted(&e, "c"), "the container is left unmounted");

    // A server that accepts the connection and never answers: only the
    // library's timeout ends the mount.
    let (listener, port) = silent_server();
    let silent = nfs_volume(&e, "silent", "/vol1", &format!(",port={port}"));
    create(&e, "s", "silent");
    let (_, took) = fails_within(
        &e,
        &["container", "exec", "s", "--", "true"],
        &[
            "NFS server 127.0.0.1 of volume 'silent' did not answer within 20 s",
            "exports /vol1",
        ],
    );
    assert!(took >= Duration::from_secs(19), "gave up early: {took:?}");
    drop(listener);
    assert_eq!(mount_at(&silent), None);
    assert_eq!(mounts_under(&e.root), Vec::<String>::new());
    assert!(!mounted(&e, "s"));

    // The containers are intact: with the server back, they mount.
    srv.up();
    let rootfs = PathBuf::from(e.ok(&["container", "mount", "c"]).trim());
    assert_eq!(read(&rootfs.join("shared/kept")).as_deref(), Some("kept\n"));
    e.ok(&["container", "umount", "c"]);
    assert_eq!(mount_at(&down), None);
    for c in ["c", "s"] {
        e.ok(&["container", "rm", c]);
    }
    for v in ["down", "silent"] {
        e.ok(&["volume", "rm", v]);
    }
    assert_eq!(mounts_under(&e.root), Vec::<String>::new());
    e.assert_consistent();
}

/// The parent of every process, from /proc: pid to (parent, command name).
fn processes() -> std::collections::BTreeMap<u32, (u32, String)> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some((_, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let comm = stat[open + 1..stat.len() - rest.len() - 1].to_string();
        let mut f = rest.split_whitespace();
        if f.next() == Some("Z") {
            continue;
        }
        if let Some(ppid) = f.next().and_then(|p| p.parse().ok()) {
            out.insert(pid, (ppid, comm));
        }
    }
    out
}

/// A live process named `mount.nfs*` started, directly or not, by `pid`.
fn nfs_helper_of(pid: u32) -> Option<u32> {
    let procs = processes();
    procs.iter().find_map(|(&p, (_, comm))| {
        if !comm.starts_with("mount.nfs") {
            return None;
        }
        let mut at = p;
        while let Some((parent, _)) = procs.get(&at) {
            if *parent == pid {
                return Some(p);
            }
            at = *parent;
        }
        None
    })
}

/// `container mount` killed while mount.nfs works on the container's
/// volume, the rootfs already mounted: no helper is left at work, and the
/// next command finds the container unmounted (not taken for mounted
/// without its volume) and the volume not mounted.
#[test]
fn dm_nfs_mount_killed_midway_leaves_no_helper_behind_and_nothing_mounted() {
    thinpool::testing::require_dm();
    let e = setup("nfs-killed", Drv::Overlay);
    // A server that never answers holds the mount helper for as long as
    // the test needs: the kill lands while it is mounting.
    let (listener, port) = silent_server();
    let data = nfs_volume(&e, "silent", "/vol1", &format!(",port={port}"));
    create(&e, "s", "silent");
    let mut cmd = e
        .cmd(&["container", "mount", "s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let deadline = started + BOUND;
    let helper = loop {
        if let Some(h) = nfs_helper_of(cmd.id()) {
            break h;
        }
        assert!(
            cmd.try_wait().unwrap().is_none(),
            "the mount ended before its helper was seen"
        );
        assert!(Instant::now() < deadline, "no mount.nfs was started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        cmd.try_wait().unwrap().is_none() && processes().contains_key(&helper),
        "the mount ended before the kill: the kill proves nothing"
    );
    cmd.kill().unwrap();
    cmd.wait().unwrap();
    // The helper dies with the command, though its server still hangs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes().contains_key(&helper) {
        assert!(
            Instant::now() < deadline,
            "mount.nfs (pid {helper}) outlived the command that started it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "the command's own 20 s limit may have ended the helper: the test proves nothing"
    );
    // The next commands find nothing mounted and remove all of it.
    assert_eq!(mount_at(&data), None);
    assert!(!mounted(&e, "s"));
    drop(listener);
    e.ok(&["container", "rm", "s"]);
    e.ok(&["volume", "rm", "silent"]);
    assert_eq!(mounts_under(&e.root), Vec::<String>::new());
    e.assert_consistent();
}
