//! [`unlayer`]: a tree over an init layer made back into its changes over
//! the base. Plain directories stand in for the snapshots: `new` is
//! `over` itself (the one way two trees share inode numbers here), a
//! container that changed nothing, so what must be left is the base.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;

const FILES: &[&str] = &["etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"];
const DIRS: &[&str] = &["dev", "dev/pts", "dev/shm", "proc", "sys"];

fn set_mtime(p: &Path, secs: u64) {
    fs::File::open(p)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

/// An image: `/etc` with hosts and passwd, `/dev`, `/bin/sh`; times set.
fn base(root: &Path) {
    for d in ["etc", "dev", "bin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/hosts"), "image hosts\n").unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    fs::write(root.join("bin/sh"), "#!\n").unwrap();
    for (i, p) in ["etc/hosts", "etc/passwd", "bin/sh", "etc", "dev", "bin"]
        .iter()
        .enumerate()
    {
        set_mtime(&root.join(p), T0 + i as u64);
    }
}

/// `base` copied, then what an init layer makes over it.
fn over(base: &Path, over: &Path) {
    let ok = Command::new("cp")
        .args(["-a", "--"])
        .arg(base)
        .arg(over)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    for d in ["dev/pts", "dev/shm", "proc", "sys"] {
        fs::create_dir(over.join(d)).unwrap();
    }
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        fs::write(over.join(f), "").unwrap();
    }
    symlink("/proc/mounts", over.join("etc/mtab")).unwrap();
}

/// Every entry below `root` (not the root): type, mode, mtime, content or
/// target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&p).unwrap())
            } else {
                format!("{:?}", fs::read_to_string(&p).unwrap())
            };
            let key = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(
                key,
                format!("{what} mode={:o} mtime={}", m.mode(), m.mtime()),
            );
        }
    }
    out
}

#[test]
fn plain_unlayer_of_an_unchanged_container_leaves_the_image_exactly() {
    let t = tempfile::tempdir().unwrap();
    let (b, o) = (t.path().join("base"), t.path().join("over"));
    fs::create_dir(&b).unwrap();
    base(&b);
    over(&b, &o);
    assert_ne!(tree(&o), tree(&b));
    unlayer(&o, &o, &b, FILES, DIRS).unwrap();
    // The image's /etc/hosts back, the rest of the init files gone, the
    // directories it made gone, /etc's and /dev's times the image's.
    assert_eq!(tree(&o), tree(&b));
}

#[test]
fn plain_unlayer_refuses_what_it_cannot_make_exactly_and_changes_nothing() {
    type Case = (&'static str, fn(&Path, &Path));
    let cases: [Case; 3] = [
        ("a symlink on the way", |_b, o| {
            fs::rename(o.join("etc"), o.join("etc2")).unwrap();
            symlink("etc2", o.join("etc")).unwrap();
        }),
        ("an init file made a directory", |_b, o| {
            fs::remove_file(o.join("etc/hostname")).unwrap();
            fs::create_dir(o.join("etc/hostname")).unwrap();
        }),
        ("an image file with two links", |b, _o| {
            fs::hard_link(b.join("etc/hosts"), b.join("hosts2")).unwrap();
        }),
    ];
    for (what, make) in cases {
        let t = tempfile::tempdir().unwrap();
        let (b, o) = (t.path().join("base"), t.path().join("over"));
        fs::create_dir(&b).unwrap();
        base(&b);
        over(&b, &o);
        make(&b, &o);
        let before = tree(&o);
        match unlayer(&o, &o, &b, FILES, DIRS) {
            Err(ChangesetError::Unsupported { .. }) => {}
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(tree(&o), before, "{what}: changed before refusing");
    }
}
