//! Containers and volumes, written once and run against both drivers:
//! `root_overlay::*` on the host, `dm_thin::*` in the VM (see
//! `common::env`). Every scenario runs a static busybox image's `/bin/sh`
//! under `container exec`, so what is checked is what a process in the
//! container sees.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::env::{kill_sweep, read, Drv, Env};
use common::{busybox_image, scratch_image, stderr, stdout, tar_members};

/// An environment with the busybox image imported as `bb`.
fn setup(label: &str, d: Drv) -> Env {
    let e = Env::new(label, d);
    import_busybox(&e);
    e
}

/// A thin root on a pool made with `pool`'s options, the busybox image
/// imported as `bb`, and container `c` made from it.
fn setup_on_pool(label: &str, pool: &[&str]) -> Env {
    let e = Env::thin_with_pool(label, pool);
    import_busybox(&e);
    create(&e, "c", &[]);
    e
}

fn import_busybox(e: &Env) {
    let layout = busybox_image(&e.s);
    e.ok(&["image", "import", layout.to_str().unwrap(), "--name", "bb"]);
}

fn create(e: &Env, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["container", "create", "--name", name];
    if !extra.contains(&"--layer") {
        args.extend(["--image", "bb"]);
    }
    args.extend(extra);
    let id = e.ok(&args).trim().to_string();
    assert_eq!(id.len(), 64, "not a container id: {id}");
    id
}

fn json(e: &Env, args: &[&str]) -> Value {
    serde_json::from_str(&e.ok(args)).unwrap()
}

fn pool_status(e: &Env) -> Value {
    json(e, &["pool", "status", "--json"])
}

fn volumes(e: &Env) -> Vec<String> {
    json(e, &["volume", "ls", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn containers(e: &Env) -> Vec<String> {
    e.list("container")
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

conformance!(
    container_writes_never_reach_the_image_and_commit_carries_them,
    exec_runs_the_image_s_shell_with_volumes_at_their_paths,
    named_volume_outlives_containers_and_is_shared,
    volumes_from_takes_every_mount_and_ro_means_erofs,
    new_volumes_are_filled_from_the_image_unless_nocopy,
    rm_v_removes_anonymous_volumes_but_never_named_ones,
    local_volume_with_mount_options_is_mounted_on_use,
    refusals_name_the_problem_and_create_nothing,
    container_create_killed_at_any_instant_leaves_all_or_nothing,
    a_mount_killed_before_it_is_whole_is_undone_by_the_next_command,
    a_scratch_image_gets_the_mount_points_a_process_needs,
    containers_share_an_init_layer_and_own_their_files,
);

fn container_writes_never_reach_the_image_and_commit_carries_them(d: Drv) {
    let e = setup("ctr-commit", d);
    create(&e, "c1", &["--hostname", "web1"]);
    e.sh("c1",
        "echo changed > /srv/app/config; echo hello > /etc/motd; rm /bin/wc; echo other > /etc/hostname",
    );
    // The image's top layer is untouched.
    let top = e.top_layer("bb");
    e.with_mounted(&top, |m| {
        assert_eq!(read(&m.join("srv/app/config")).as_deref(), Some("v1\n"));
        assert!(!m.join("etc/motd").exists());
        assert!(m.join("bin/wc").symlink_metadata().is_ok());
        assert!(
            !m.join("etc/hostname").exists(),
            "init files are not the image's"
        );
    });
    let c2 = create(&e, "c2", &[]);
    assert_eq!(
        e.sh("c2", "cat /srv/app/config; ls /etc/motd 2>&1 || true"),
        "v1\nls: /etc/motd: No such file or directory\n"
    );
    assert_eq!(e.sh("c2", "cat /etc/hostname"), format!("{}\n", &c2[..12]));

    // A commit holds the writable layer's changes, never the init files.
    let layer = e
        .ok(&["container", "commit", "c1", "--name", "snap"])
        .trim()
        .to_string();
    assert_eq!(layer.len(), 32);
    let diff = e.cmd(&["layer", "diff", "snap"]).output().unwrap();
    assert!(diff.status.success(), "{}", stderr(&diff));
    let mut names: Vec<String> = tar::Archive::new(diff.stdout.as_slice())
        .entries()
        .unwrap()
        .map(|en| en.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for want in ["etc/motd", "srv/app/config", "bin/.wh.wc"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    for never in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        assert!(
            !names.iter().any(|n| n == never),
            "{never} committed: {names:?}"
        );
    }
    let snap = &e
        .list("layer")
        .into_iter()
        .find(|l| l["name"] == "snap")
        .unwrap();
    assert_eq!(
        snap["parent"].as_str(),
        Some(top.as_str()),
        "a commit's parent is the image's top"
    );

    // The committed layer runs, and is an ordinary layer.
    create(&e, "c3", &["--layer", "snap", "--hostname", "web3"]);
    assert_eq!(
        e.sh(
            "c3",
            "cat /srv/app/config /etc/motd /etc/hostname; ls /bin/wc 2>/dev/null || echo no-wc"
        ),
        "changed\nhello\nweb3\nno-wc\n"
    );
    e.layer(
        Some("snap"),
        "above-snap",
        &e.tar("t.tar", common::Tar::new().file("x", b"x")),
    );
    // Each container owns its writable layer, over the init layer that
    // the containers over its image's top (c1, c2) or layer (c3) share.
    let count = |what: &str| {
        e.list("layer")
            .into_iter()
            .filter(|l| match what {
                "container" => l["container"].is_string(),
                _ => l["init"] == true,
            })
            .count()
    };
    assert_eq!(count("container"), 3, "one writable layer each");
    assert_eq!(
        count("init"),
        2,
        "an init layer over bb's top and over snap"
    );
    let owned = e
        .list("layer")
        .into_iter()
        .find(|l| l["container"].is_string())
        .unwrap();
    e.fails(
        &["layer", "rm", owned["id"].as_str().unwrap()],
        &["belongs to container"],
    );
    e.fails(
        &["image", "rm", "bb"],
        &["container", "remove the container first"],
    );
    for c in ["c1", "c2", "c3"] {
        e.ok(&["container", "rm", c]);
    }
    // The init layers stay for the next containers, until a prune.
    assert_eq!(count("init"), 2);
    assert_eq!(e.ok(&["layer", "prune"]).lines().count(), 2);
    assert_eq!(
        e.list("layer").len(),
        4,
        "image layers, snap and above-snap"
    );
    e.assert_consistent();
}

fn exec_runs_the_image_s_shell_with_volumes_at_their_paths(d: Drv) {
    let e = setup("ctr-exec", d);
    let host = e.path().join("hostdir");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("from-host"), b"h\n").unwrap();
    let bind = format!("{}:/mnt/host", host.display());
    create(
        &e,
        "c",
        &[
            "-v",
            "vol:/var/lib/vol",
            "-v",
            &bind,
            "-v",
            "/scratch",
            "--hostname",
            "box",
        ],
    );
    let out = e.sh("c",
        "hostname; echo $HOSTNAME; cat /mnt/host/from-host; echo v > /var/lib/vol/f; echo s > /scratch/f; \
         grep -cE ' (/var/lib/vol|/mnt/host|/scratch) ' /proc/self/mountinfo; echo x > /dev/null && echo devnull",
    );
    assert_eq!(out, "box\nbox\nh\n3\ndevnull\n");
    // Exit status comes back; a missing program is 127 with a message.
    assert_eq!(e.exec("c", "exit 7").status.code(), Some(7));
    let o = e.run(&["container", "exec", "c", "--", "no-such-program"]);
    assert_eq!(o.status.code(), Some(127));
    assert!(
        stderr(&o).contains("no command 'no-such-program'"),
        "{}",
        stderr(&o)
    );
    // The command's mounts stay in its namespace; exec unmounts what it mounted.
    assert_eq!(e.list("container")[0]["mounted"], false);
    // A pinned mount stays, with the volumes inside it.
    let rootfs = PathBuf::from(e.ok(&["container", "mount", "c"]).trim());
    assert!(
        !rootfs.join("lost+found").exists(),
        "the container's root has a directory its image does not"
    );
    assert_eq!(read(&rootfs.join("var/lib/vol/f")).as_deref(), Some("v\n"));
    assert_eq!(
        read(&rootfs.join("mnt/host/from-host")).as_deref(),
        Some("h\n")
    );
    e.sh("c", "true");
    assert_eq!(e.list("container")[0]["mounted"], true);
    e.fails(
        &["container", "rm", "c"],
        &["is mounted", "container umount c"],
    );
    e.fails(&["container", "commit", "c"], &["is mounted"]);
    e.ok(&["container", "umount", "c"]);
    assert!(!rootfs.join("var/lib/vol/f").exists());
    // -f unmounts first.
    e.ok(&["container", "mount", "c"]);
    e.ok(&["container", "rm", "-f", "c"]);
    assert!(containers(&e).is_empty());
    e.assert_consistent();
}

fn named_volume_outlives_containers_and_is_shared(d: Drv) {
    let e = setup("vol-shared", d);
    create(&e, "a", &["-v", "shared:/data"]);
    create(&e, "b", &["-v", "shared:/other/place"]);
    e.ok(&["container", "mount", "a"]);
    e.ok(&["container", "mount", "b"]);
    e.sh("a", "echo from-a > /data/note");
    assert_eq!(e.sh("b", "cat /other/place/note"), "from-a\n");
    e.fails(&["volume", "rm", "shared"], &["in use", "a, b"]);
    e.fails(&["volume", "rm", "-f", "shared"], &["is mounted with it"]);
    e.ok(&["container", "rm", "-f", "-v", "a"]);
    e.ok(&["container", "rm", "-f", "-v", "b"]);
    assert_eq!(volumes(&e), ["shared"]);
    create(&e, "c", &["-v", "shared:/again"]);
    assert_eq!(e.sh("c", "cat /again/note"), "from-a\n");
    let v = &json(&e, &["volume", "inspect", "shared"])[0];
    assert_eq!(v["used_by"], serde_json::json!(["c"]));
    assert_eq!(v["anonymous"], false);
    e.ok(&["container", "rm", "c"]);
    assert_eq!(
        json(&e, &["volume", "ls", "--filter", "dangling=true", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    e.ok(&["volume", "rm", "shared"]);
    assert!(volumes(&e).is_empty());
}

fn volumes_from_takes_every_mount_and_ro_means_erofs(d: Drv) {
    let e = setup("vol-from", d);
    let host = e.path().join("h");
    std::fs::create_dir(&host).unwrap();
    let bind = format!("{}:/host", host.display());
    create(&e, "src", &["-v", "v:/data", "-v", "w:/w:ro", "-v", &bind]);
    e.sh("src", "echo 1 > /data/one; echo 2 > /host/two");
    create(&e, "reader", &["--volumes-from", "src:ro"]);
    create(&e, "writer", &["--volumes-from", "src"]);
    let o = e.exec("reader", "cat /data/one /host/two; echo x > /data/x");
    assert!(!o.status.success());
    assert_eq!(stdout(&o), "1\n2\n");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    let o = e.exec("reader", "echo x > /host/x");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    e.sh("writer", "echo 3 > /data/three; echo 4 > /host/four");
    assert_eq!(read(&host.join("four")).as_deref(), Some("4\n"));
    // src's own read-only mount stays read-only for writer.
    let o = e.exec("writer", "echo x > /w/x");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert_eq!(e.sh("src", "cat /data/three"), "3\n");
    let mounts = &e
        .list("container")
        .into_iter()
        .find(|c| c["name"] == "reader")
        .unwrap()["mounts"];
    assert_eq!(mounts.as_array().unwrap().len(), 3);
    assert!(mounts
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["readonly"] == true));
}

fn new_volumes_are_filled_from_the_image_unless_nocopy(d: Drv) {
    let e = setup("vol-populate", d);
    create(&e, "p", &["-v", "filled:/data"]);
    assert_eq!(
        e.sh(
            "p",
            "stat -c '%u:%g %a' /data; cat /data/seed; stat -c %u /data/seed"
        ),
        "1000:1000 750\nseed\n1000\n"
    );
    create(&e, "n", &["-v", "empty:/data:nocopy"]);
    assert_eq!(e.sh("n", "ls -A /data | grep -v lost+found | wc -l"), "0\n");
    // A volume with content is never overwritten.
    e.sh("p", "echo mine > /data/seed");
    create(&e, "p2", &["-v", "filled:/data"]);
    assert_eq!(e.sh("p2", "cat /data/seed"), "mine\n");
    // An anonymous volume over a path the image has is filled too; a path
    // the image lacks gives an empty volume, and the mount point is made.
    create(&e, "a", &["-v", "/data", "-v", "/new/dir"]);
    assert_eq!(
        e.sh(
            "a",
            "cat /data/seed; ls -A /new/dir | grep -v lost+found | wc -l"
        ),
        "seed\n0\n"
    );
    // A path through the image's symlink (/var/run -> /run) lands inside.
    create(&e, "s", &["-v", "run:/var/run/app"]);
    e.sh("s", "echo r > /run/app/f");
    assert_eq!(e.sh("s", "cat /var/run/app/f"), "r\n");
}

fn rm_v_removes_anonymous_volumes_but_never_named_ones(d: Drv) {
    let e = setup("vol-rmv", d);
    create(&e, "c", &["-v", "/anon", "-v", "named:/named"]);
    let vols = volumes(&e);
    assert_eq!(vols.len(), 2);
    let anon = vols.iter().find(|v| *v != "named").unwrap().clone();
    assert_eq!(anon.len(), 64);
    assert_eq!(
        json(&e, &["volume", "inspect", &anon])[0]["anonymous"],
        true
    );
    e.ok(&["container", "rm", "-v", "c"]);
    assert_eq!(volumes(&e), ["named"]);
    // Without -v the anonymous volume stays; prune takes it, --all the rest.
    create(&e, "d", &["-v", "/anon2"]);
    e.ok(&["container", "rm", "d"]);
    assert_eq!(volumes(&e).len(), 2);
    let pruned = e.ok(&["volume", "prune"]);
    assert_eq!(pruned.lines().count(), 1, "{pruned}");
    assert_eq!(volumes(&e), ["named"]);
    create(&e, "keep", &["-v", "named:/n"]);
    e.ok(&["volume", "create", "spare"]);
    assert_eq!(e.ok(&["volume", "prune", "--all"]).trim(), "spare");
    assert_eq!(volumes(&e), ["named"], "a volume in use is never pruned");
}

/// `volume create NAME` of a tmpfs mount, with `extra` arguments; returns
/// its mountpoint.
fn tmpfs_volume(e: &Env, name: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        "volume",
        "create",
        name,
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
    ];
    args.extend_from_slice(extra);
    e.ok(&args);
    PathBuf::from(
        json(e, &["volume", "inspect", name])[0]["mountpoint"]
            .as_str()
            .unwrap(),
    )
}

fn local_volume_with_mount_options_is_mounted_on_use(d: Drv) {
    let e = setup("vol-opts", d);
    let data = tmpfs_volume(&e, "t", &["--opt", "o=size=4m,mode=1777", "--label", "k=v"]);
    assert!(!is_mount(&data), "not mounted before use");
    create(&e, "c", &["-v", "t:/t"]);
    let out = e.sh(
        "c",
        "grep ' /t ' /proc/self/mountinfo | grep -c tmpfs; stat -c %a /t; df -k /t | tail -1",
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("1"));
    assert_eq!(lines.next(), Some("1777"));
    let kb: u64 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(kb, 4096, "{out}");
    assert!(!is_mount(&data), "released after exec");
    assert_eq!(json(&e, &["volume", "inspect", "t"])[0]["labels"]["k"], "v");
    // A bad mount is the volume's error, and leaves the container unmounted.
    e.ok(&[
        "volume",
        "create",
        "bad",
        "--opt",
        "type=ext4",
        "--opt",
        "device=/no/such/device",
    ]);
    create(&e, "b", &["-v", "bad:/b"]);
    e.fails(&["container", "mount", "b"], &["mount of volume 'bad'"]);
    assert_eq!(
        e.list("container")
            .iter()
            .filter(|c| c["mounted"] == true)
            .count(),
        0
    );
    // A command killed after it mounted a volume for a container, before
    // the container was mounted, leaves the volume mounted for no one:
    // removing or pruning it unmounts it first.
    for (v, rm) in [
        ("left1", &["volume", "rm", "left1"][..]),
        ("left2", &["volume", "prune", "--all"][..]),
    ] {
        let data = tmpfs_volume(&e, v, &[]);
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&data)
            .status()
            .unwrap();
        assert!(st.success() && is_mount(&data));
        e.ok(rm);
        assert!(!is_mount(&data) && !data.exists(), "{v} is left behind");
    }
    assert!(!volumes(&e).iter().any(|v| v.starts_with("left")));
}

fn is_mount(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

fn refusals_name_the_problem_and_create_nothing(d: Drv) {
    let e = setup("ctr-refuse", d);
    let layers = e.list("layer").len();
    let host = e.path().join("exists");
    std::fs::create_dir(&host).unwrap();
    let h = host.to_str().unwrap();
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec!["-v".into(), "./rel:/x".into()], vec!["relative path"]),
        (
            vec!["-v".into(), "/no/such/dir:/x".into()],
            vec!["/no/such/dir", "existing path"],
        ),
        (vec!["-v".into(), "vol:x".into()], vec!["not absolute"]),
        (vec!["-v".into(), format!("{h}:rel")], vec!["not absolute"]),
        (
            vec!["-v".into(), "vol:/x:bogus".into()],
            vec!["unknown option 'bogus'"],
        ),
        (vec!["-v".into(), "a/b:/x".into()], vec!["relative path"]),
        (vec!["-v".into(), "..:/x".into()], vec!["relative path"]),
        (
            vec![
                "-v".into(),
                "v1:/same".into(),
                "-v".into(),
                "v2:/same".into(),
            ],
            vec!["two mounts at /same"],
        ),
        (
            vec!["--volumes-from".into(), "ghost".into()],
            vec!["no container 'ghost'"],
        ),
        (
            vec!["--hostname".into(), "bad_host".into()],
            vec!["invalid hostname"],
        ),
        (
            vec!["--image".into(), "nope".into()],
            vec!["no image 'nope'"],
        ),
    ];
    for (extra, needles) in &cases {
        let mut args = vec!["container", "create", "--name", "x"];
        if !extra.iter().any(|a| a == "--image") {
            args.extend(["--image", "bb"]);
        }
        args.extend(extra.iter().map(String::as_str));
        e.fails(&args, needles);
    }
    if d == Drv::Overlay {
        e.fails(
            &["container", "create", "--image", "bb", "--size", "1G"],
            &["no per-container size limit"],
        );
    } else {
        e.fails(
            &["container", "create", "--image", "bb", "--size", "100M"],
            &["smaller than the base"],
        );
    }
    for (args, needles) in [
        (
            vec!["volume", "create", "bad/name"],
            vec!["invalid volume name"],
        ),
        (vec!["volume", "create", ".."], vec!["invalid volume name"]),
        (
            vec!["volume", "create", "v", "--opt", "colour=red"],
            vec!["unknown option 'colour'"],
        ),
        (
            vec!["volume", "create", "v", "--driver", "thin", "--size", "1M"],
            vec!["too small for a filesystem"],
        ),
        (
            vec!["volume", "create", "v", "--size", "1G"],
            vec!["--size needs --driver thin"],
        ),
        (vec!["volume", "rm", "ghost"], vec!["no volume 'ghost'"]),
        (
            vec!["volume", "clone", "ghost", "g2"],
            vec!["no volume 'ghost'"],
        ),
        (
            vec!["container", "rm", "ghost"],
            vec!["no container 'ghost'"],
        ),
    ] {
        e.fails(&args, &needles);
    }
    let o = e.run(&["volume", "create", "v", "--driver", "nfs"]);
    assert_eq!(o.status.code(), Some(2), "usage error");
    assert!(stderr(&o).contains("local or thin"), "{}", stderr(&o));
    assert!(containers(&e).is_empty());
    assert!(volumes(&e).is_empty());
    assert_eq!(e.list("layer").len(), layers);
    e.assert_consistent();
    create(&e, "dup", &[]);
    e.fails(
        &["container", "create", "--name", "dup", "--image", "bb"],
        &["already exists"],
    );
}

fn a_mount_killed_before_it_is_whole_is_undone_by_the_next_command(d: Drv) {
    use std::os::unix::process::ExitStatusExt;
    use thinpool::killpoint;
    let e = setup("mount-kill", d);
    let data = tmpfs_volume(&e, "t", &[]);
    create(&e, "c", &["-v", "t:/t"]);
    // Where it is mounted (any command now would repair the kill first).
    let rootfs = PathBuf::from(
        json(&e, &["container", "inspect", "c", "--json"])["rootfs"]
            .as_str()
            .unwrap(),
    );
    let o = e
        .cmd(&["container", "mount", "c"])
        .env(killpoint::ENV, killpoint::CONTAINER_MOUNTS_MADE)
        .output()
        .unwrap();
    assert_eq!(o.status.signal(), Some(9), "not killed: {}", stderr(&o));
    // Killed with everything mounted but not yet marked whole.
    assert!(is_mount(&rootfs) && is_mount(&rootfs.join("t")) && is_mount(&data));
    // The next command undoes it, and says so; the container is not
    // taken for mounted meanwhile.
    let ls = e.run(&["container", "ls", "--json"]);
    assert!(
        stderr(&ls).contains("recovered:") && stderr(&ls).contains("unmounted container c"),
        "{}",
        stderr(&ls)
    );
    assert!(
        !is_mount(&rootfs) && !is_mount(&data),
        "the half mount is left"
    );
    assert!(e.list("container").iter().all(|c| c["mounted"] == false));
    e.assert_consistent();
    // A mount then is whole: its volume is there.
    assert_eq!(
        e.sh("c", "grep -c ' /t .* - tmpfs ' /proc/self/mountinfo"),
        "1\n"
    );
    e.ok(&["container", "rm", "c"]);
    e.ok(&["volume", "rm", "t"]);
    e.assert_consistent();
}

fn container_create_killed_at_any_instant_leaves_all_or_nothing(d: Drv) {
    let e = setup("ctr-kill", d);
    let args = [
        "container",
        "create",
        "--name",
        "k",
        "--image",
        "bb",
        "-v",
        "/anon",
        "-v",
        "named:/data",
    ];
    let full = Env::fastest_of_three(
        || drop(e.ok(&args)),
        || {
            e.ok(&["container", "rm", "-v", "k"]);
            e.ok(&["volume", "rm", "named"]);
        },
    );
    let mut whole = 0;
    kill_sweep("create", full, 16, 3, |at| {
        e.killed_after(&args, at);
        // Listing opens the containers, which repairs what the kill left,
        // and says so.
        let repaired = stderr(&e.run(&["container", "ls"])).contains("recovered:");
        let names = containers(&e);
        e.assert_consistent();
        let vols = volumes(&e);
        if names == ["k"] {
            whole += 1;
            assert_eq!(vols.len(), 2, "{vols:?}");
            assert_eq!(e.sh("k", "cat /data/seed"), "seed\n");
            e.ok(&["container", "rm", "-v", "k"]);
            e.ok(&["volume", "rm", "named"]);
        } else {
            assert!(names.is_empty(), "{names:?}");
            assert!(
                vols.is_empty(),
                "volumes made by a killed create stay: {vols:?}"
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(e.root.join("containers"))
            .unwrap()
            .flatten()
            .filter(|x| x.file_name() != "lock")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        repaired
    });
    eprintln!("{whole} killed creates had completed");
}

// ---- thin only: sizes and thin volumes (the VM) -----------------------

#[test]
fn dm_thin_volume_has_a_hard_size_and_clones_in_place() {
    thinpool::testing::require_dm();
    for d in [Drv::Thin, Drv::Overlay] {
        let e = setup("thinvol", d);
        if d == Drv::Overlay {
            // Thin volumes live in the pool whatever the containers' driver.
            e.ok(&["pool", "create", "--data-size", "1G", "--base-size", "64M"]);
        }
        e.ok(&[
            "volume", "create", "tv", "--driver", "thin", "--size", "32M",
        ]);
        create(&e, "c", &["-v", "tv:/big"]);
        let o = e.exec("c", "dd if=/dev/zero of=/big/f bs=1M count=64 2>&1; sync");
        assert!(
            stdout(&o).contains("No space left on device"),
            "{}: {}",
            d.name(),
            stdout(&o)
        );
        let size: u64 = e.sh("c", "stat -c %s /big/f").trim().parse().unwrap();
        assert!(size <= 32 << 20 && size > 16 << 20, "{size}");
        e.sh("c", "rm /big/f; echo original > /big/a");
        let v = &json(&e, &["volume", "inspect", "tv"])[0];
        assert_eq!(v["driver"], "thin");
        assert_eq!(v["size"], 32 << 20);
        // A clone is a copy-on-write snapshot: same data, then apart.
        e.ok(&["volume", "clone", "tv", "tv2"]);
        create(&e, "c2", &["-v", "tv2:/big"]);
        assert_eq!(
            e.sh("c2", "cat /big/a; echo changed > /big/a; cat /big/a"),
            "original\nchanged\n"
        );
        assert_eq!(e.sh("c", "cat /big/a"), "original\n");
        e.fails(&["volume", "rm", "tv"], &["in use", "c"]);
        e.ok(&["container", "rm", "c", "c2"]);
        e.ok(&["volume", "rm", "tv", "tv2"]);
        let st = pool_status(&e);
        let layers = if d == Drv::Thin {
            e.list("layer").len() as u64
        } else {
            0
        };
        assert_eq!(
            st["thin_devices"].as_u64().unwrap(),
            1 + layers,
            "{}: volumes' devices are gone",
            d.name()
        );
    }
}

/// A thin commit is a snapshot of the container's device, its init
/// layer's paths taken out: it copies nothing (the new layer shares the
/// container's blocks), and holds the very changes overlay's commit,
/// which exports and applies them, holds.
#[test]
fn dm_a_thin_commit_copies_no_data_and_holds_what_an_export_and_apply_would() {
    thinpool::testing::require_dm();
    use std::os::unix::fs::symlink;
    // Not the times: the two containers made them at other instants.
    let members = |e: &Env| -> Vec<String> {
        let tar = e.path().join("cm.tar");
        e.ok(&["layer", "diff", "cm", "-o", tar.to_str().unwrap()]);
        tar_members(&std::fs::read(&tar).unwrap(), false)
    };
    let mut seen = vec![];
    for d in [Drv::Thin, Drv::Overlay] {
        let e = setup(&format!("commit-copy-{}", d.name()), d);
        create(&e, "c", &[]);
        let rootfs = PathBuf::from(e.ok(&["container", "mount", "c"]).trim());
        // New data, a changed file of the image, one removed; a directory
        // made in /dev, which the init layer changed (it made /dev/pts);
        // /etc/mtab, the init layer's, replaced: never committed.
        std::fs::write(rootfs.join("big"), vec![0x5a; 4 << 20]).unwrap();
        std::fs::write(rootfs.join("srv/app/config"), "v2\n").unwrap();
        std::fs::remove_file(rootfs.join("bin/wc")).unwrap();
        std::fs::create_dir(rootfs.join("dev/mine")).unwrap();
        std::fs::write(rootfs.join("dev/mine/f"), "in dev\n").unwrap();
        std::fs::remove_file(rootfs.join("etc/mtab")).unwrap();
        std::fs::write(rootfs.join("etc/mtab"), "not a link\n").unwrap();
        symlink("/somewhere", rootfs.join("link")).unwrap();
        e.ok(&["container", "umount", "c"]);
        e.ok(&["container", "commit", "c", "--name", "cm"]);
        let got = members(&e);
        let cm = e
            .list("layer")
            .into_iter()
            .find(|l| l["name"] == "cm")
            .unwrap();
        if d == Drv::Thin {
            assert!(
                cm["diff_id"].is_null(),
                "thin commits by snapshot, applying nothing: {cm}"
            );
            let exclusive = cm["exclusive_bytes"].as_u64().unwrap();
            assert!(
                exclusive < 1 << 20,
                "the 4 MiB file was copied: {exclusive} bytes are the commit's own"
            );
        } else {
            assert!(cm["diff_id"].is_string(), "overlay exports and applies");
        }
        // The layer runs: a container over it sees the changes, and the
        // init layer's files are its own again.
        create(&e, "c2", &["--layer", "cm", "--hostname", "two"]);
        assert_eq!(
            e.sh(
                "c2",
                "cat /srv/app/config /etc/hostname; stat -c %s /big; readlink /etc/mtab; \
                 ls /bin/wc 2>/dev/null || echo no-wc"
            ),
            "v2\ntwo\n4194304\n/proc/mounts\nno-wc\n"
        );
        // The container's /dev is a tmpfs: the layer's is seen mounted.
        e.with_mounted("cm", |m| {
            assert_eq!(read(&m.join("dev/mine/f")).as_deref(), Some("in dev\n"));
            assert!(!m.join("etc/mtab").exists() && !m.join("sys").exists());
        });
        seen.push(got);
    }
    assert_eq!(
        seen[0], seen[1],
        "thin's commit (left) holds other changes than overlay's (right)"
    );
    for want in [
        "big ",
        "srv/app/config ",
        "bin/.wh.wc ",
        "dev/mine/f ",
        "link ",
    ] {
        assert!(
            seen[0].iter().any(|m| m.starts_with(want)),
            "{want} not committed: {:?}",
            seen[0]
        );
    }
    for never in ["etc/mtab", "dev/pts", "dev/shm", "sys", "etc/hostname"] {
        assert!(
            !seen[0].iter().any(|m| m.starts_with(never)),
            "{never} committed: {:?}",
            seen[0]
        );
    }
}

/// A commit killed at any step of its protocol, or while its snapshot,
/// the init layer and the image are mounted for the init layer's paths to
/// be taken out, leaves no layer, no thin device and no mount; the next
/// commit makes the layer whole.
#[test]
fn dm_a_thin_commit_killed_at_any_instant_leaves_nothing_and_the_next_one_commits() {
    thinpool::testing::require_dm();
    use thinpool::killpoint;
    let e = setup("commit-kill", Drv::Thin);
    create(&e, "c", &[]);
    e.sh("c", "echo data > /kept");
    let thins = |e: &Env| pool_status(e)["thin_devices"].as_u64().unwrap();
    let before = thins(&e);
    let mut hit = vec![];
    for &point in killpoint::ALL {
        if !e.killed_at_point(&["container", "commit", "c", "--name", "cm"], point) {
            // The point is not on a commit's path.
            e.ok(&["layer", "rm", "cm"]);
            continue;
        }
        hit.push(point);
        assert!(
            !e.list("layer").iter().any(|l| l["name"] == "cm"),
            "killed at {point}: a half-made layer survived"
        );
        assert_eq!(
            thins(&e),
            before,
            "killed at {point}: a thin device survived"
        );
        let root = e.root.to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(&root)),
            "killed at {point}: a mount survived: {mounts}"
        );
    }
    for want in [
        killpoint::STORE_JOURNAL_WRITTEN,
        killpoint::POOL_MESSAGE_SENT,
        killpoint::CONTAINER_COMMIT_UNLAYERING,
        killpoint::STORE_RESOURCE_MADE,
        killpoint::STORE_LAYER_RECORDED,
    ] {
        assert!(hit.contains(&want), "{want} not hit: {hit:?}");
    }
    e.ok(&["container", "commit", "c", "--name", "cm"]);
    e.with_mounted("cm", |m| {
        assert_eq!(read(&m.join("kept")).as_deref(), Some("data\n"));
        assert!(!m.join("etc/hostname").exists());
    });
    e.assert_no_orphan_thin_id();
}

#[test]
fn dm_thin_container_size_grows_its_filesystem() {
    thinpool::testing::require_dm();
    let e = setup("ctrsize", Drv::Thin);
    create(&e, "small", &[]);
    create(&e, "big", &["--size", "1G"]);
    let kb = |c: &str| -> u64 {
        e.sh(c, "df -k / | tail -1")
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let (small, big) = (kb("small"), kb("big"));
    assert!(small < 300 << 10, "{small}");
    assert!(big > 900 << 10, "{big}");
    e.sh("big", "dd if=/dev/zero of=/f bs=1M count=400 && sync");
    let info = json(&e, &["container", "inspect", "big", "--json"]);
    assert_eq!(info["size"], 1 << 30);
    // A grown container is not committed by snapshot (the layer would
    // have its size): it is exported and applied, into a layer of the
    // image's size.
    create(&e, "grown", &["--size", "512M"]);
    e.sh("grown", "echo kept > /kept");
    e.ok(&["container", "commit", "grown", "--name", "from-grown"]);
    let l = e
        .list("layer")
        .into_iter()
        .find(|l| l["name"] == "from-grown")
        .unwrap();
    assert!(l["diff_id"].is_string(), "not exported and applied: {l}");
    create(&e, "over", &["--layer", "from-grown"]);
    assert_eq!(e.sh("over", "cat /kept"), "kept\n");
    assert!(kb("over") < 300 << 10, "{}", kb("over"));
}

#[test]
fn dm_thin_volume_killed_create_and_clone_leave_no_device() {
    thinpool::testing::require_dm();
    let e = Env::new("thinvol-kill", Drv::Thin);
    let thins = || -> u64 {
        let st = pool_status(&e);
        st["thin_devices"].as_u64().unwrap()
    };
    let base = thins();
    let args = ["volume", "create", "t", "--driver", "thin", "--size", "64M"];
    let full = Env::fastest_of_three(|| drop(e.ok(&args)), || drop(e.ok(&["volume", "rm", "t"])));
    kill_sweep("create", full, 11, 2, |at| {
        e.killed_after(&args, at);
        // Killed mid-create: the state, read before anything repairs it,
        // is half made (an operation pending in the pool, a volume's thin
        // device or directory without its record).
        // As a reader sees it: an operation the kernel committed is done.
        let pool =
            serde_json::to_value(thinpool::testing::settled_record(&e.root.join("pool"))).unwrap();
        let thin_vols = pool["thins"]
            .as_object()
            .unwrap()
            .values()
            .filter(|t| t["tag"].as_str().unwrap().starts_with("volume:"))
            .count();
        let dirs: Vec<PathBuf> = std::fs::read_dir(e.root.join("volumes"))
            .map(|d| {
                d.flatten()
                    .map(|x| x.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        let records = dirs
            .iter()
            .filter(|d| d.join("volume.json").exists())
            .count();
        let half_made = !pool["pending"].is_null() || thin_vols > records || dirs.len() > records;
        // The next command, a listing, frees what the kill left: a
        // device no volume claims, then the directory.
        let vols = volumes(&e);
        assert_eq!(thins(), base + vols.len() as u64, "{vols:?}");
        if !vols.is_empty() {
            e.ok(&["volume", "rm", "t"]);
        }
        half_made
    });
}

#[test]
fn dm_pool_destroy_takes_thin_containers_and_volumes_only_when_forced() {
    thinpool::testing::require_dm();
    let e = setup("destroy", Drv::Thin);
    create(&e, "thin-c", &["-v", "local-v:/l"]);
    e.ok(&[
        "volume", "create", "tv", "--driver", "thin", "--size", "16M",
    ]);
    // setup() built the image here.
    let layout = e.path().join("bb-oci");
    let ov = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_thinlayer"))
            .arg("--root")
            .arg(&e.root)
            .args(["--driver", "overlay"])
            .args(args)
            .env_remove("THINLAYER_DRIVER")
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    ov(&["image", "import", layout.to_str().unwrap(), "--name", "bb"]);
    ov(&[
        "container",
        "create",
        "--name",
        "ov-c",
        "--image",
        "bb",
        "-v",
        "local-v:/l",
    ]);
    e.ok(&["container", "mount", "thin-c"]);
    e.fails(&["pool", "destroy", "--force"], &["thin-c is mounted"]);
    e.ok(&["container", "umount", "thin-c"]);
    e.fails(
        &["pool", "destroy"],
        &["containers (thin-c)", "thin volumes (tv)", "--force"],
    );
    e.ok(&["pool", "destroy", "--force"]);
    assert_eq!(containers(&e), ["ov-c"]);
    assert_eq!(volumes(&e), ["local-v"]);
}

/// The init layer makes `/dev` (with `/dev/pts`, `/dev/shm`), `/proc`,
/// `/sys` and `/etc/mtab` where an image has none, as Docker's does; what
/// the image has keeps its owner and mode; none of it is committed.
fn a_scratch_image_gets_the_mount_points_a_process_needs(d: Drv) {
    let e = Env::new("ctr-scratch", d);
    let layout = scratch_image(&e.s);
    e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "scratch",
    ]);
    e.ok(&["container", "create", "--name", "s", "--image", "scratch"]);
    let o = e.run(&[
        "container",
        "exec",
        "s",
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox head -c 5 /dev/zero | /bin/busybox wc -c; echo x > /dev/null && echo null-ok; \
         /bin/busybox test -d /proc/self && echo proc-ok; /bin/busybox test -d /sys/kernel && echo sys-ok; \
         /bin/busybox test -d /dev/shm && /bin/busybox test -d /dev/pts && echo dev-dirs-ok; \
         /bin/busybox readlink /etc/mtab; /bin/busybox cat /etc/hostname",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(
        &lines[..6],
        [
            "5",
            "null-ok",
            "proc-ok",
            "sys-ok",
            "dev-dirs-ok",
            "/proc/mounts"
        ],
        "{out}"
    );
    // The container's tree, outside any namespace: the image's /sys keeps
    // its owner and mode; the new mount points are root's, 0755.
    let rootfs = PathBuf::from(e.ok(&["container", "mount", "s"]).trim());
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(rootfs.join("sys")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o700, 1000, 1000));
    for dir in ["dev", "dev/pts", "dev/shm", "proc"] {
        let m = std::fs::symlink_metadata(rootfs.join(dir)).unwrap();
        assert!(m.is_dir(), "{dir}");
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0), "{dir}");
    }
    e.ok(&["container", "umount", "s"]);
    // A commit carries the container's changes, not its init layer.
    sh_in(&e, "s", "echo kept > /kept");
    let layer = e.ok(&["container", "commit", "s"]).trim().to_string();
    let tar = e.path().join("commit.tar");
    e.ok(&["layer", "diff", &layer, "-o", tar.to_str().unwrap()]);
    let names: Vec<String> = tar::Archive::new(std::fs::File::open(&tar).unwrap())
        .entries()
        .unwrap()
        .map(|x| x.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["kept"],
        "the commit holds more than the container's change"
    );
}

fn sh_in(e: &Env, c: &str, script: &str) {
    let o = e.run(&[
        "container",
        "exec",
        c,
        "--",
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ]);
    assert!(o.status.success(), "{script}: {}", stderr(&o));
}

#[test]
fn dm_a_container_filling_the_pool_fails_promptly_and_writes_again_after_pool_grow() {
    thinpool::testing::require_dm();
    // A 1G filesystem over 256M of pool: the writer runs out of pool, not
    // of filesystem.
    let e = setup_on_pool(
        "fill",
        &[
            "--data-size",
            "256M",
            "--base-size",
            "1G",
            "--on-full",
            "error",
        ],
    );
    let mode = || -> String {
        let st = pool_status(&e);
        st["mode"].as_str().unwrap().to_string()
    };
    // The writer fails (no hang) once the pool is full.
    let t = std::time::Instant::now();
    let o = e.exec("c", "dd if=/dev/zero of=/fill bs=1M count=400 conv=fsync");
    let fill = t.elapsed();
    assert!(!o.status.success(), "400M fit in a 256M pool");
    let err = stderr(&o);
    // The pool's error reaches dd as ENOSPC or EIO, or, when ext4 met it
    // first in a journal commit (which aborts the journal and leaves the
    // filesystem read-only), as EROFS on dd's next write.
    assert!(
        err.contains("No space left")
            || err.contains("Input/output error")
            || err.contains("Read-only file system"),
        "{err}"
    );
    assert!(fill.as_secs() < 120, "filling took {fill:?}");
    assert_eq!(mode(), "out-of-data-space");
    // The next write fails at once: the kernel errors it instead of
    // queueing it (queue mode would hold it for 60 s).
    let t = std::time::Instant::now();
    let o = e.exec("c", "dd if=/dev/zero of=/again bs=1M count=8 conv=fsync");
    let again = t.elapsed();
    assert!(!o.status.success());
    assert!(
        again.as_secs() < 10,
        "a write into the full pool took {again:?}"
    );
    // New thin devices are refused with what to do.
    e.fails(
        &["container", "create", "--name", "late", "--image", "bb"],
        &["data space is full", "pool grow"],
    );
    // Grown, the pool takes writes again by itself, and the container's
    // filesystem (mounted anew, its journal replayed) takes the retry.
    e.ok(&["pool", "grow", "--data-size", "+512M"]);
    assert_eq!(mode(), "rw");
    assert_eq!(
        e.sh(
            "c",
            "rm -f /fill /again; dd if=/dev/zero of=/again bs=1M count=8 conv=fsync 2>/dev/null && wc -c < /again; cat /srv/app/config"
        ),
        "8388608\nv1\n"
    );
    create(&e, "late", &[]);
    assert_eq!(e.sh("late", "cat /srv/app/config"), "v1\n");
}

#[test]
fn dm_below_the_free_space_reserve_new_devices_are_refused_and_writers_go_on() {
    thinpool::testing::require_dm();
    let e = setup_on_pool(
        "reserve",
        &[
            "--data-size",
            "256M",
            "--base-size",
            "1G",
            "--min-free",
            "40",
        ],
    );
    assert_eq!(pool_status(&e)["min_free"], 40);
    // Written up to about 75% of the pool, whatever the filesystem and
    // the image hold: below the 40% reserve, far from full.
    let s0 = pool_status(&e);
    let (used, total) = (
        s0["data"]["used_bytes"].as_u64().unwrap(),
        s0["data"]["total_bytes"].as_u64().unwrap(),
    );
    let mib = (total * 3 / 4).saturating_sub(used) >> 20;
    e.sh(
        "c",
        &format!("dd if=/dev/zero of=/big bs=1M count={mib} conv=fsync 2>/dev/null"),
    );
    assert_eq!(pool_status(&e)["mode"], "rw");
    let devices = pool_status(&e)["thin_devices"].clone();
    for args in [
        vec!["container", "create", "--name", "d", "--image", "bb"],
        vec!["layer", "create", "--name", "l"],
        vec!["volume", "create", "v", "--driver", "thin", "--size", "16M"],
    ] {
        e.fails(
            &args,
            &[
                "data space has",
                "below its 40% reserve",
                "pool set --min-free",
            ],
        );
    }
    assert_eq!(
        pool_status(&e)["thin_devices"],
        devices,
        "a refused device was made"
    );
    // The container already made keeps writing into the reserve.
    assert_eq!(
        e.sh(
            "c",
            "dd if=/dev/zero of=/more bs=1M count=8 conv=fsync 2>/dev/null && wc -c < /more"
        ),
        "8388608\n"
    );
    // A lower reserve lets new devices in again.
    e.ok(&["pool", "set", "--min-free", "5"]);
    assert_eq!(pool_status(&e)["min_free"], 5);
    create(&e, "d", &[]);
    // A reserve out of range is a usage error, as clap gives them.
    let o = e.run(&["pool", "set", "--min-free", "60"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("use 0 to 50"), "{}", stderr(&o));
}

/// The pool's dm table line (`0 LEN thin-pool META DATA BLOCK LWM ...`).
fn pool_table(e: &Env) -> Vec<String> {
    let st = pool_status(e);
    let id = thinpool::PoolId::try_from(st["id"].as_str().unwrap().to_string()).unwrap();
    let name = thinpool::names::PoolNames::new(id).name_string(thinpool::names::Role::Pool);
    let o = std::process::Command::new("dmsetup")
        .args(["table", &name])
        .env("DM_DISABLE_UDEV", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "dmsetup table {name}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn dm_a_watched_pool_autoextends_on_its_low_water_event_and_no_write_fails() {
    thinpool::testing::require_dm();
    // 256M of data, grown at 60% use by 256M up to 1G; queue mode, so a
    // write that outruns a grow waits for it (20 s at most, then fails:
    // the test would see that).
    let e = setup_on_pool(
        "autoext",
        &[
            "--data-size",
            "256M",
            "--base-size",
            "2G",
            "--on-full",
            "queue",
            "--queue-timeout",
            "20",
            "--autoextend-threshold",
            "60",
            "--autoextend-step",
            "256M",
            "--autoextend-max",
            "1G",
        ],
    );
    let s0 = pool_status(&e);
    assert_eq!(s0["autoextend"]["threshold"], 60);
    assert_eq!(s0["kernel_queue_timeout"], 20);
    // The low-water mark is the free blocks left at 60%: 40% of 4096.
    let table = pool_table(&e);
    assert_eq!(table[2], "thin-pool");
    assert_eq!(table[6], "1638", "low-water mark in {table:?}");

    let mut monitor = e
        .cmd(&["pool", "monitor", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = monitor.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap();
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("monitor printed '{line}': {err}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    assert_eq!(first["event"], "watching", "{first}");
    // 400M through a pool of 256M: past 60% the kernel raises the
    // low-water event, the monitor grows the pool (twice), the writer
    // never fails.
    assert_eq!(
        e.sh(
            "c",
            "dd if=/dev/zero of=/big bs=1M count=400 conv=fsync 2>/dev/null && wc -c < /big"
        ),
        "419430400\n"
    );
    let grown = pool_status(&e);
    let data = grown["data"]["total_bytes"].as_u64().unwrap();
    assert!(data >= 768 << 20, "the pool did not grow enough: {grown}");
    assert_eq!(grown["mode"], "rw");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = monitor.wait().unwrap();
    assert!(status.success(), "the monitor exited with {status}");
    reader.join().unwrap();
    let events: Vec<Value> = rx.try_iter().collect();
    let grows: Vec<&Value> = events
        .iter()
        .filter(|v| v["event"] == "autoextend" && v["outcome"] == "grew")
        .collect();
    assert!(!grows.is_empty(), "no autoextend reported: {events:?}");
    // Woken by the kernel's event, not by the 30 s timer.
    assert!(
        grows.iter().all(|g| g["wake"] == "event"),
        "a grow came from a timer, not an event: {grows:?}"
    );
    let last = grows.last().unwrap()["data"][1].as_u64().unwrap();
    assert_eq!(last, data, "{grows:?}");
    // The grown pool's low-water mark follows its size.
    let blocks = data / pool_status(&e)["block_size"].as_u64().unwrap();
    let lwm = blocks - (blocks * 60).div_ceil(100);
    assert_eq!(pool_table(&e)[6], lwm.to_string());
    // Turned off, the mark is 0 again; the max below the size is refused.
    e.fails(
        &["pool", "set", "--autoextend-max", "256M"],
        &["autoextend max", "below the pool's data size"],
    );
    e.ok(&["pool", "set", "--no-autoextend"]);
    assert_eq!(pool_status(&e)["autoextend"], Value::Null);
    assert_eq!(pool_table(&e)[6], "0");
    assert_eq!(e.sh("c", "cat /srv/app/config"), "v1\n");
}

#[test]
fn dm_queue_mode_fails_a_writer_after_its_timeout_and_pool_grow_brings_rw_back() {
    thinpool::testing::require_dm();
    let e = setup_on_pool(
        "queue",
        &[
            "--data-size",
            "256M",
            "--base-size",
            "1G",
            "--on-full",
            "queue",
            "--queue-timeout",
            "3",
        ],
    );
    assert_eq!(pool_status(&e)["kernel_queue_timeout"], 3);
    // No "error_if_no_space" feature in queue mode; `pool set` switches
    // the live table.
    assert!(!pool_table(&e).contains(&"error_if_no_space".to_string()));
    // The writer waits at most the queue timeout once the pool is full,
    // then fails: far from the kernel's 60 s default.
    let t = std::time::Instant::now();
    let o = e.exec("c", "dd if=/dev/zero of=/fill bs=1M count=400 conv=fsync");
    let took = t.elapsed();
    assert!(!o.status.success(), "400M fit in a 256M pool");
    assert!(took.as_secs() < 45, "the writer was held {took:?}");
    let s = pool_status(&e);
    assert_eq!(s["mode"], "out-of-data-space");
    let advice = s["advice"].as_str().unwrap();
    assert!(
        advice.contains("wait up to 3s") && advice.contains("pool grow"),
        "{advice}"
    );
    let text = e.ok(&["pool", "status"]);
    assert!(text.contains("what to do:"), "{text}");
    e.ok(&["pool", "grow", "--data-size", "+512M"]);
    assert_eq!(pool_status(&e)["mode"], "rw");
    assert_eq!(
        e.sh(
            "c",
            "rm -f /fill; dd if=/dev/zero of=/again bs=1M count=8 conv=fsync 2>/dev/null && wc -c < /again"
        ),
        "8388608\n"
    );
    e.ok(&["pool", "set", "--on-full", "error"]);
    assert!(pool_table(&e).contains(&"error_if_no_space".to_string()));
    assert_eq!(pool_status(&e)["on_full"], "error");
}

/// Containers over one image share one init layer of placeholders; each
/// sees its own hostname, hosts and resolv.conf, bind-mounted from its
/// directory and written afresh at each mount (as Docker does at each
/// start), never in its writable layer. The init layer goes with the image.
fn containers_share_an_init_layer_and_own_their_files(d: Drv) {
    let e = setup("ctr-init", d);
    let top = e.top_layer("bb");
    create(&e, "one", &["--hostname", "one"]);
    create(&e, "two", &["--hostname", "two"]);
    let inits: Vec<Value> = e
        .list("layer")
        .into_iter()
        .filter(|l| l["init"] == true)
        .collect();
    assert_eq!(inits.len(), 1, "one init layer for both: {inits:?}");
    assert_eq!(inits[0]["parent"].as_str(), Some(top.as_str()));
    let init = inits[0]["id"].as_str().unwrap().to_string();
    let rw_parents: Vec<String> = e
        .list("layer")
        .into_iter()
        .filter(|l| l["container"].is_string())
        .map(|l| l["parent"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rw_parents, vec![init.clone(), init.clone()]);
    // Layer commands build nothing on it.
    let out = e.cmd(&["layer", "mount", &init]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the init layer"), "{}", stderr(&out));

    assert_eq!(e.sh("one", "cat /etc/hostname"), "one\n");
    assert_eq!(e.sh("two", "cat /etc/hostname"), "two\n");
    assert_eq!(
        e.sh("one", "grep -c '127.0.1.1.one$' /etc/hosts; echo '10.9.9.9 extra' >> /etc/hosts; grep -c extra /etc/hosts"),
        "1\n1\n"
    );
    // The write went to the container's own file, not its writable layer;
    // the next mount writes the file afresh.
    assert_eq!(e.ok(&["container", "diff", "one"]), "");
    assert_eq!(e.sh("one", "grep -c extra /etc/hosts || true"), "0\n");

    // Nothing of the init layer outlives the image.
    e.ok(&["container", "rm", "one", "two"]);
    let out = e.cmd(&["image", "rm", "bb"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(e.list("layer"), Vec::<Value>::new());
}
