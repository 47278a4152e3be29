//! What Docker users reach for, on both drivers (`root_overlay::*` on the
//! host, `dm_thin::*` in the VM): volumes an image declares, `container
//! diff`, `container cp` both ways, `container inspect`'s Docker-shaped
//! mounts, and `layer prune` / `system df`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{json, Value};

mod common;
use common::env::{Drv, Env};
use common::{busybox_image, stderr, stdout, umoci, Tar};

/// An environment with the busybox image imported as `bb`.
fn setup(label: &str, d: Drv) -> (Env, std::path::PathBuf) {
    let e = Env::new(label, d);
    let layout = busybox_image(&e.s);
    e.ok(&["image", "import", layout.to_str().unwrap(), "--name", "bb"]);
    (e, layout)
}

fn create(e: &Env, name: &str, extra: &[&str]) {
    let mut args = vec!["container", "create", "--name", name];
    if !extra.contains(&"--image") && !extra.contains(&"--layer") {
        args.extend(["--image", "bb"]);
    }
    args.extend(extra);
    e.ok(&args);
}

fn inspect(e: &Env, c: &str) -> Value {
    serde_json::from_str(&e.ok(&["container", "inspect", c, "--json"])).unwrap()
}

/// Runs `thinlayer ARGS` with `input` on stdin.
fn with_stdin(e: &Env, args: &[&str], input: &[u8]) -> Output {
    let mut child = e
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

conformance!(
    declared_volumes_are_made_filled_and_shared_with_volumes_from,
    diff_lists_added_changed_and_deleted_paths_as_docker_diff_does,
    cp_copies_both_ways_inside_the_container_s_view,
    cp_refuses_read_only_mounts_hostile_streams_and_missing_paths,
    inspect_shows_mounts_as_docker_inspect_does,
    layer_prune_takes_only_what_nothing_keeps_and_system_df_counts_it,
    image_rm_of_one_of_several_names_untags_it,
    system_df_beside_containers_coming_and_going_counts_one_read,
);

fn declared_volumes_are_made_filled_and_shared_with_volumes_from(d: Drv) {
    let (e, layout) = setup("declared", d);
    // VOLUME /data /cache, as a Dockerfile would declare them.
    let l = layout.to_str().unwrap();
    umoci(&[
        "config",
        "--image",
        &format!("{l}:bb"),
        "--tag",
        "packed",
        "--config.volume",
        "/data",
        "--config.volume",
        "/cache",
    ]);
    e.ok(&[
        "image",
        "import",
        &format!("{l}:packed"),
        "--name",
        "packed",
    ]);
    let img: Value =
        serde_json::from_str(&e.ok(&["image", "inspect", "packed", "--json"])).unwrap();
    assert_eq!(img["config"]["volumes"], json!(["/cache", "/data"]));

    create(&e, "store", &["--image", "packed"]);
    let mounts = inspect(&e, "store")["Mounts"].clone();
    let dests: Vec<&str> = mounts
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Destination"].as_str().unwrap())
        .collect();
    assert_eq!(dests, ["/cache", "/data"], "{mounts}");
    for m in mounts.as_array().unwrap() {
        assert_eq!(m["Type"], "volume");
        assert_eq!(m["Name"].as_str().unwrap().len(), 64, "anonymous: {m}");
        let vol: Value =
            serde_json::from_str(&e.ok(&["volume", "inspect", m["Name"].as_str().unwrap()]))
                .unwrap();
        assert_eq!(vol[0]["anonymous"], true);
    }
    // /data is filled from the image (owner and mode kept); /cache, which
    // the image lacks, is an empty volume.
    assert_eq!(
        e.sh(
            "store",
            "stat -c '%u:%g %a' /data; cat /data/seed; ls -A /cache | grep -v lost+found | wc -l"
        ),
        "1000:1000 750\nseed\n0\n"
    );
    e.sh("store", "echo packed > /data/shared; echo c > /cache/c");
    // The data-packed volume container: another takes its volumes.
    create(&e, "user", &["--volumes-from", "store"]);
    assert_eq!(
        e.sh("user", "cat /data/shared /data/seed /cache/c"),
        "packed\nseed\nc\n"
    );
    // A -v at a declared path wins: no anonymous volume there.
    create(&e, "own", &["--image", "packed", "-v", "mine:/data"]);
    let own = inspect(&e, "own")["Mounts"].clone();
    let own: Vec<(String, String)> = own
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Destination"].as_str().unwrap().to_string(),
                m["Name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(own.len(), 2);
    assert_eq!(own[0], ("/data".to_string(), "mine".to_string()));
    assert_eq!(own[1].0, "/cache");
    assert_eq!(e.sh("own", "cat /data/seed"), "seed\n");
    // rm -v takes the anonymous volumes of a container nobody else uses.
    let before = e.list("volume").len();
    e.ok(&["container", "rm", "-v", "own"]);
    assert_eq!(
        e.list("volume").len(),
        before - 1,
        "own's /cache volume goes, mine stays"
    );
}

fn diff_lists_added_changed_and_deleted_paths_as_docker_diff_does(d: Drv) {
    let (e, _) = setup("diff", d);
    create(&e, "c", &[]);
    assert_eq!(
        e.ok(&["container", "diff", "c"]),
        "",
        "a new container has no changes"
    );
    e.sh(
        "c",
        "echo x > /tmp/new; echo v2 > /srv/app/config; rm /etc/passwd; mkdir -p /a/b; \
         rm -rf /data; echo h > /etc/hostname",
    );
    let got = e.ok(&["container", "diff", "c"]);
    assert_eq!(
        got,
        "A /a\nA /a/b\nD /data\nC /etc\nD /etc/passwd\nC /srv\nC /srv/app\nC /srv/app/config\nC /tmp\nA /tmp/new\n",
        "sorted by path; the init files (/etc/hostname) never show"
    );
    let j: Value = serde_json::from_str(&e.ok(&["container", "diff", "c", "--json"])).unwrap();
    assert!(j
        .as_array()
        .unwrap()
        .contains(&json!({"path": "/tmp/new", "kind": "A"})));
    // The same change detection as commit: the committed layer has them.
    e.ok(&["container", "commit", "c", "--name", "cm"]);
    create(&e, "from", &["--layer", "cm"]);
    assert_eq!(
        e.sh(
            "from",
            "cat /tmp/new /srv/app/config; test -e /etc/passwd || echo gone"
        ),
        "x\nv2\ngone\n"
    );
    // A container held mounted is refused, as commit is.
    e.ok(&["container", "mount", "c"]);
    e.fails(
        &["container", "diff", "c"],
        &["mounted", "container umount c"],
    );
    e.ok(&["container", "umount", "c"]);
    e.fails(&["container", "diff", "nope"], &["no container"]);
}

fn cp_copies_both_ways_inside_the_container_s_view(d: Drv) {
    let (e, _) = setup("cp", d);
    create(&e, "c", &["-v", "vol:/vol"]);
    let host = e.path().join("host");
    fs::create_dir(&host).unwrap();

    // Out: a file to a new name, a directory into an existing directory
    // (owner and mode kept), a directory's contents, and a tar stream.
    e.ok(&[
        "container",
        "cp",
        "c:/srv/app/config",
        host.join("config").to_str().unwrap(),
    ]);
    assert_eq!(fs::read_to_string(host.join("config")).unwrap(), "v1\n");
    e.ok(&["container", "cp", "c:/data", host.to_str().unwrap()]);
    let m = fs::metadata(host.join("data")).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        fs::read_to_string(host.join("data/seed")).unwrap(),
        "seed\n"
    );
    e.ok(&[
        "container",
        "cp",
        "c:/srv/.",
        host.join("srvcopy").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(host.join("srvcopy/app/config")).unwrap(),
        "v1\n"
    );
    let o = e.run(&["container", "cp", "c:/srv", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut names: Vec<String> = tar::Archive::new(&o.stdout[..])
        .entries()
        .unwrap()
        .map(|x| {
            let p = x.unwrap().path().unwrap().to_string_lossy().into_owned();
            p.trim_end_matches('/').to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["srv", "srv/app", "srv/app/config"]);
    // A symlink is copied as a symlink.
    e.ok(&[
        "container",
        "cp",
        "c:/var/run",
        host.join("run-link").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_link(host.join("run-link")).unwrap(),
        Path::new("/run")
    );

    // In: a file into a directory (mode and owner kept), a directory into
    // a volume, a file through the image's symlink /var/run -> /run, and
    // a tar stream.
    let f = host.join("in.txt");
    fs::write(&f, "in\n").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(4321)).unwrap();
    e.ok(&["container", "cp", f.to_str().unwrap(), "c:/tmp/"]);
    assert_eq!(
        e.sh("c", "cat /tmp/in.txt; stat -c '%a %u:%g' /tmp/in.txt"),
        "in\n640 1234:4321\n"
    );
    e.ok(&[
        "container",
        "cp",
        host.join("data").to_str().unwrap(),
        "c:/vol",
    ]);
    assert_eq!(e.sh("c", "cat /vol/data/seed"), "seed\n");
    let vol: Value = serde_json::from_str(&e.ok(&["volume", "inspect", "vol"])).unwrap();
    let vol_is_mount = vol[0]["mount"].is_object() || vol[0]["driver"] == "thin";
    if !vol_is_mount {
        let data = vol[0]["mountpoint"].as_str().unwrap();
        assert!(
            Path::new(data).join("data/seed").exists(),
            "the write went to the volume"
        );
    }
    let marker = format!("thinlayer-cp-{}", std::process::id());
    e.ok(&[
        "container",
        "cp",
        f.to_str().unwrap(),
        &format!("c:/var/run/{marker}"),
    ]);
    assert_eq!(e.sh("c", &format!("cat /run/{marker}")), "in\n");
    assert!(
        !Path::new("/run").join(&marker).exists(),
        "the host's /run was never touched"
    );
    let tar = Tar::new()
        .dir("streamed/")
        .file("streamed/f", b"s\n")
        .bytes();
    let o = with_stdin(&e, &["container", "cp", "-", "c:/tmp"], &tar);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(e.sh("c", "cat /tmp/streamed/f"), "s\n");
    // A file onto an existing file replaces it; the container is not left
    // mounted by cp.
    e.ok(&["container", "cp", f.to_str().unwrap(), "c:/srv/app/config"]);
    assert_eq!(e.sh("c", "cat /srv/app/config"), "in\n");
    assert_eq!(inspect(&e, "c")["mounted"], false);
    // A held mount stays held.
    e.ok(&["container", "mount", "c"]);
    e.ok(&[
        "container",
        "cp",
        "c:/tmp/in.txt",
        host.join("again").to_str().unwrap(),
    ]);
    assert_eq!(inspect(&e, "c")["mounted"], true);
    e.ok(&["container", "umount", "c"]);
}

fn cp_refuses_read_only_mounts_hostile_streams_and_missing_paths(d: Drv) {
    let (e, _) = setup("cp-bad", d);
    create(&e, "c", &["-v", "ro:/ro:ro"]);
    let host = e.path().join("host");
    fs::create_dir(&host).unwrap();
    let f = host.join("f");
    fs::write(&f, "f").unwrap();
    e.fails(
        &["container", "cp", f.to_str().unwrap(), "c:/ro/"],
        &["read-only"],
    );
    assert_eq!(e.sh("c", "ls -A /ro | grep -v lost+found | wc -l"), "0\n");
    // A stream that climbs out, or goes through a symlink it made.
    for (label, t) in [
        ("dotdot", Tar::new().file("../../escape", b"x").bytes()),
        (
            "symlink",
            Tar::new()
                .symlink("out", "/")
                .file("out/escape", b"x")
                .bytes(),
        ),
    ] {
        let o = with_stdin(&e, &["container", "cp", "-", "c:/tmp"], &t);
        assert_eq!(o.status.code(), Some(1), "{label}: {}", stderr(&o));
        assert!(!Path::new("/escape").exists(), "{label}");
        assert!(!e.path().join("escape").exists(), "{label}");
    }
    let o = with_stdin(&e, &["container", "cp", "-", "c:/tmp"], b"not a tar at all");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    e.fails(
        &["container", "cp", "c:/no/such", host.to_str().unwrap()],
        &["/no/such"],
    );
    e.fails(
        &["container", "cp", f.to_str().unwrap(), "c:/no/such/dir/"],
        &["/no/such"],
    );
    e.fails(
        &["container", "cp", host.to_str().unwrap(), "c:/etc/passwd"],
        &["directory", "onto file"],
    );
    e.fails(
        &[
            "container",
            "cp",
            "c:/etc",
            host.join("f").to_str().unwrap(),
        ],
        &["onto file"],
    );
    e.fails(
        &["container", "cp", "c:etc", host.to_str().unwrap()],
        &["relative"],
    );
    e.fails(&["container", "cp", "/a", "/b"], &["CONTAINER:PATH"]);
    e.fails(
        &["container", "cp", "nope:/etc", host.to_str().unwrap()],
        &["no container"],
    );
    assert_eq!(
        inspect(&e, "c")["mounted"],
        false,
        "a failed cp leaves it unmounted"
    );
}

fn inspect_shows_mounts_as_docker_inspect_does(d: Drv) {
    let (e, _) = setup("inspect-mounts", d);
    let bind = e.path().join("bind");
    fs::create_dir(&bind).unwrap();
    let b = bind.to_str().unwrap();
    create(
        &e,
        "c",
        &[
            "-v",
            "named:/n:ro",
            "-v",
            &format!("{b}:/b"),
            "-v",
            "fresh:/f:nocopy",
        ],
    );
    let vols = e.root.join("volumes");
    let got = inspect(&e, "c")["Mounts"].clone();
    assert_eq!(
        got,
        json!([
            {"Type": "volume", "Name": "named", "Source": vols.join("named/_data"),
             "Destination": "/n", "Driver": "local", "Mode": "ro", "RW": false, "Propagation": ""},
            {"Type": "bind", "Source": b, "Destination": "/b", "Mode": "", "RW": true,
             "Propagation": "rprivate"},
            {"Type": "volume", "Name": "fresh", "Source": vols.join("fresh/_data"),
             "Destination": "/f", "Driver": "local", "Mode": "nocopy", "RW": true, "Propagation": ""},
        ])
    );
    let listed: Value = serde_json::from_str(&e.ok(&["container", "ls", "--json"])).unwrap();
    assert_eq!(listed[0]["Mounts"], got);
}

fn layer_ids(e: &Env) -> Vec<String> {
    e.list("layer")
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .collect()
}

fn df_row(df: &Value, kind: &str) -> Value {
    df["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap()
        .clone()
}

fn layer_prune_takes_only_what_nothing_keeps_and_system_df_counts_it(d: Drv) {
    let (e, _) = setup("prune", d);
    let top = e.top_layer("bb");
    create(&e, "c", &["-v", "vol:/vol"]);
    e.sh(
        "c",
        "dd if=/dev/urandom of=/big bs=64k count=16 2>/dev/null; sync",
    );
    // Unnamed layers nothing keeps: a commit, a snapshot of it, a root layer.
    let l1 = e.ok(&["container", "commit", "c"]).trim().to_string();
    let l2 = e.ok(&["snapshot", "layer", &l1]).trim().to_string();
    // A thin commit shares the container's blocks: the container holds
    // alone (and a removal frees) what it wrote after.
    e.sh(
        "c",
        "dd if=/dev/urandom of=/big2 bs=64k count=16 2>/dev/null; sync",
    );
    let t = e.tar("root.tar", Tar::new().file("f", &[7u8; 300_000]));
    let l3 = e
        .ok(&["layer", "create", "--from-tar", &t])
        .trim()
        .to_string();
    // Kept: a named layer, a mounted one, and what the image and the
    // container hold.
    let named = e.layer(None, "named", &e.tar("n.tar", Tar::new().file("n", b"n")));
    let mounted = e.ok(&["snapshot", "layer", &top]).trim().to_string();
    e.ok(&["layer", "mount", &mounted]);

    let df: Value = serde_json::from_str(&e.ok(&["system", "df", "--json"])).unwrap();
    let layers = df_row(&df, "layers");
    assert_eq!(
        (layers["total"].as_u64(), layers["active"].as_u64()),
        (Some(5), Some(2)),
        "{df}"
    );
    assert!(
        layers["reclaimable_bytes"].as_u64().unwrap() >= 300_000,
        "at least the root layer's file: {df}"
    );
    let images = df_row(&df, "images");
    assert_eq!(
        (images["total"].as_u64(), images["active"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(images["size_bytes"].as_u64().unwrap() > 0);
    let ctrs = df_row(&df, "containers");
    assert_eq!(
        (ctrs["total"].as_u64(), ctrs["active"].as_u64()),
        (Some(1), Some(0))
    );
    assert!(
        ctrs["size_bytes"].as_u64().unwrap() >= 1 << 20,
        "the 1 MiB written since the commit: {df}"
    );
    assert_eq!(ctrs["reclaimable_bytes"], ctrs["size_bytes"], "not mounted");
    let vols = df_row(&df, "volumes");
    assert_eq!(
        (vols["total"].as_u64(), vols["active"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(df["pool"].is_object(), d == Drv::Thin, "{df}");
    let text = e.ok(&["system", "df"]);
    assert!(text.starts_with("TYPE"), "{text}");

    // A dry run lists them, children before parents, and removes nothing.
    let before = layer_ids(&e);
    let dry: Value =
        serde_json::from_str(&e.ok(&["layer", "prune", "--dry-run", "--json"])).unwrap();
    let dry: Vec<&str> = dry
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let mut want = vec![l1.as_str(), l2.as_str(), l3.as_str()];
    want.sort();
    let mut got = dry.clone();
    got.sort();
    assert_eq!(got, want);
    let pos = |x: &str| dry.iter().position(|y| *y == x).unwrap();
    assert!(pos(&l2) < pos(&l1), "the child first: {dry:?}");
    assert_eq!(layer_ids(&e), before);

    // The prune removes exactly those, and records and resources agree.
    let out = e.run(&["layer", "prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut pruned: Vec<String> = stdout(&out).lines().map(String::from).collect();
    pruned.sort();
    assert_eq!(pruned, want);
    assert!(
        stderr(&out).contains("removed 3 layer(s)"),
        "{}",
        stderr(&out)
    );
    let after = layer_ids(&e);
    assert_eq!(after.len(), before.len() - 3);
    assert!(after.contains(&named) && after.contains(&mounted) && after.contains(&top));
    e.assert_consistent();
    assert_eq!(e.ok(&["layer", "prune"]), "", "nothing left to prune");
    assert_eq!(
        e.sh("c", "wc -c < /big"),
        "1048576\n",
        "the container is untouched"
    );

    // Once the container, the mount and the image go, only the named
    // layer is kept.
    e.ok(&["layer", "umount", &mounted]);
    e.ok(&["container", "rm", "c"]);
    e.ok(&["image", "rm", "bb"]);
    e.ok(&["layer", "prune"]);
    assert_eq!(layer_ids(&e), [named]);
    e.assert_consistent();
    let df: Value = serde_json::from_str(&e.ok(&["system", "df", "--json"])).unwrap();
    let layers = df_row(&df, "layers");
    assert_eq!(
        (
            layers["total"].as_u64(),
            layers["reclaimable_bytes"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let vols = df_row(&df, "volumes");
    assert_eq!(vols["active"].as_u64(), Some(0));
    assert_eq!(vols["reclaimable_bytes"], vols["size_bytes"]);
}

fn image_rm_of_one_of_several_names_untags_it(d: Drv) {
    let (e, layout) = setup("untag", d);
    // The same image imported under a second name: one image, two names.
    e.ok(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "again:1",
    ]);
    let images = e.list("image");
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0]["names"].as_array().unwrap().len(),
        2,
        "{images:?}"
    );
    create(&e, "c", &[]);
    // Untagging takes only the name, even while a container uses the image.
    assert_eq!(e.ok(&["image", "rm", "again:1"]).trim(), "untagged again:1");
    let images = e.list("image");
    assert_eq!(images[0]["names"], json!(["bb:latest"]));
    e.fails(&["image", "rm", "bb"], &["in use", "container rm"]);
    e.ok(&["container", "rm", "c"]);
    assert!(e.ok(&["image", "rm", "bb"]).starts_with("removed image bb"));
    assert!(e.list("image").is_empty());
    assert!(e.list("layer").is_empty());
}

/// `system df` lists the containers, then reads the store, whose usage
/// call lets go of its lock: containers (and their layers) made and
/// removed meanwhile must neither fail it nor be counted half.
fn system_df_beside_containers_coming_and_going_counts_one_read(d: Drv) {
    let (e, _) = setup("df-race", d);
    let top = e.top_layer("bb");
    // overlay's usage walks each layer's files: a layer of many files makes
    // it take as long as a container's removal, as thin's (a `thin_ls` of
    // the pool, under emulation) does anyway.
    let rounds = match d {
        Drv::Overlay => {
            let mut many = Tar::new().dir("many");
            for i in 0..20_000 {
                many = many.file(&format!("many/{i}"), b"x");
            }
            e.layer(None, "many", &e.tar("many.tar", many));
            30
        }
        Drv::Thin => 3,
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    let reports = std::thread::scope(|s| {
        let churn = s.spawn(|| {
            for i in 0..rounds {
                let p = format!("p{i}");
                let c = format!("c{i}");
                e.ok(&["snapshot", "layer", &top, "--name", &p]);
                create(&e, &c, &["--layer", &p]);
                e.ok(&["container", "rm", &c]);
                e.ok(&["layer", "rm", &p]);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reports = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let out = e.run(&["system", "df", "--json"]);
            assert!(
                out.status.success(),
                "system df failed beside containers coming and going: {}",
                stderr(&out)
            );
            let df: Value = serde_json::from_slice(&out.stdout).unwrap();
            let ctrs = df_row(&df, "containers");
            assert!(ctrs["total"].as_u64().unwrap() <= 1, "{df}");
            reports += 1;
        }
        churn.join().unwrap();
        reports
    });
    assert!(reports > 0, "no report ran beside the churn");
    let df: Value = serde_json::from_str(&e.ok(&["system", "df", "--json"])).unwrap();
    assert_eq!(df_row(&df, "containers")["total"].as_u64(), Some(0), "{df}");
    e.assert_consistent();
}
