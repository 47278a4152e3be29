//! Whiteouts and opaque directories, in both modes, across layers.

use super::*;

fn exists(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok()
}

/// Three layers in the style of an exporter: every entry's parent
/// directories are in the archive too.
pub(super) fn layers() -> Vec<Vec<u8>> {
    let mut l1 = Ar::new();
    l1.dir("a", 0o755)
        .file("a/x", b"x1", 0o644)
        .file("a/y", b"y1", 0o640)
        .hardlink("a/hl", "a/y")
        .fifo("a/fifo", 0o600)
        .dir("a/sub", 0o700)
        .file("a/sub/z", b"z1", 0o644)
        .dir("b", 0o755)
        .file("b/old", b"old", 0o644)
        .file("b/keep", b"keep?", 0o644)
        .file("c", b"c1", 0o644)
        .dir("d", 0o755)
        .dir("d/e", 0o755)
        .file("d/e/f", b"f1", 0o644)
        .symlink("s", "a/x");
    l1.xattrs(&[("user.layer", b"1")]).file("xa", b"xa", 0o644);

    let mut l2 = Ar::new();
    l2.mtime = T0 + 10;
    l2.dir("a", 0o750)
        .marker("a/.wh.x")
        .file("a/new", b"new2", 0o644)
        .marker(".wh.d")
        .dir("b", 0o755)
        .marker("b/.wh..wh..opq")
        .file("b/new", b"b new", 0o644)
        .marker(".wh.s")
        .file("c", b"c2 longer", 0o600)
        .marker(".wh.missing");
    l2.xattrs(&[("user.layer", b"2")]).file("xa", b"xa", 0o644);

    let mut l3 = Ar::new();
    l3.mtime = T0 + 20;
    l3.dir("a", 0o750)
        .marker("a/.wh.sub")
        .dir("a/sub2", 0o755)
        .file("a/sub2/w", b"w3", 0o644)
        .dir("b", 0o711)
        .marker("b/.wh.new")
        .dir("d", 0o700)
        .file("d/again", b"again", 0o644)
        .dir("x", 0o755)
        .marker("x/.wh..wh..opq")
        .file("x/only", b"only", 0o644)
        .symlink("s", "c");
    vec![l1.finish(), l2.finish(), l3.finish()]
}

#[test]
fn plain_delete_mode_across_layers() {
    let sb = Sandbox::new();
    let r = &sb.root;
    let ls = layers();
    apply_bytes(&ls[0], r).unwrap();
    apply_bytes(&ls[1], r).unwrap();
    assert!(!exists(&r.join("a/x")));
    assert_eq!(fs::read(r.join("a/y")).unwrap(), b"y1");
    assert_eq!(fs::read(r.join("a/new")).unwrap(), b"new2");
    assert!(exists(&r.join("a/sub/z")));
    assert!(
        !exists(&r.join("d")),
        "a directory whiteout removes the tree"
    );
    assert!(!exists(&r.join("s")));
    assert_eq!(fs::read(r.join("b/new")).unwrap(), b"b new");
    assert!(
        !exists(&r.join("b/old")) && !exists(&r.join("b/keep")),
        "opaque"
    );
    assert!(!exists(&r.join("missing")));
    apply_bytes(&ls[2], r).unwrap();
    assert!(!exists(&r.join("a/sub")));
    assert!(exists(&r.join("a/sub2/w")));
    let names: Vec<_> = fs::read_dir(r.join("b")).unwrap().collect();
    assert!(names.is_empty());
    assert_eq!(fs::read(r.join("d/again")).unwrap(), b"again");
    assert!(!exists(&r.join("d/e")));
    assert_eq!(fs::read_link(r.join("s")).unwrap(), Path::new("c"));
    // No whiteout is ever materialized.
    assert!(tree(r, &CompareOpts::default()).keys().all(|p| !p
        .file_name()
        .unwrap()
        .as_bytes()
        .starts_with(b".wh.")));
    sb.assert_untouched();
}

#[test]
fn plain_whiteouts_for_missing_things_are_fine() {
    let sb = Sandbox::new();
    let r = &sb.root;
    let mut ar = Ar::new();
    ar.file("f", b"f", 0o644);
    apply_bytes(&ar.finish(), r).unwrap();
    let mut ar = Ar::new();
    ar.marker(".wh.nothing")
        .marker("nodir/.wh.x")
        .marker("nodir/deeper/.wh..wh..opq")
        .marker("f/.wh.x");
    apply_bytes(&ar.finish(), r).unwrap();
    assert!(
        !exists(&r.join("nodir")),
        "whiteouts make no directories in delete mode"
    );
    assert_eq!(fs::read(r.join("f")).unwrap(), b"f");
}

/// The lower tree for the same-archive tests.
fn same_archive_lower(r: &Path) {
    let mut ar = Ar::new();
    ar.dir("d", 0o755)
        .file("d/old", b"old", 0o644)
        .dir("d/e", 0o755)
        .file("d/e/old", b"old", 0o644)
        .file("f", b"lower f", 0o644)
        .dir("m", 0o755)
        .file("m/lower1", b"l", 0o644)
        .dir("k", 0o755)
        .file("k/lower", b"l", 0o644);
    apply_bytes(&ar.finish(), r).unwrap();
}

#[test]
fn plain_whiteouts_never_remove_what_the_same_archive_made() {
    let sb = Sandbox::new();
    let r = &sb.root;
    same_archive_lower(r);
    let mut ar = Ar::new();
    ar.dir("d", 0o755)
        .dir("d/e", 0o755)
        .file("d/e/new", b"new", 0o644)
        .file("d/new", b"new", 0o644)
        .marker("d/.wh..wh..opq") // after: lower d/old, d/e/old go; new ones stay
        .file("g", b"g", 0o644)
        .marker(".wh.g") // after g: g stays
        .file("f", b"upper f", 0o644)
        .marker(".wh.f") // lower f was replaced already: upper f stays
        .marker(".wh.h")
        .file("h", b"h", 0o644) // before h: h is made
        .dir("e", 0o755)
        .file("e/x", b"x", 0o644)
        .marker(".wh.e") // e is this archive's: stays
        .file("m/own", b"own", 0o644) // m itself not in the archive
        .marker(".wh.m") // lower m goes, m/own (and m as its parent) stay
        .marker(".wh.k")
        .dir("k", 0o700); // k made again after its whiteout: empty
    apply_bytes(&ar.finish(), r).unwrap();
    let t = tree(r, &CompareOpts::default());
    let paths: Vec<String> = t.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(
        paths,
        ["d", "d/e", "d/e/new", "d/new", "e", "e/x", "f", "g", "h", "k", "m", "m/own"]
    );
    assert_eq!(fs::read(r.join("f")).unwrap(), b"upper f");
    sb.assert_untouched();

    // The opaque marker first, then the entries: the same tree.
    let sb2 = Sandbox::new();
    same_archive_lower(&sb2.root);
    let mut ar = Ar::new();
    ar.dir("d", 0o755)
        .marker("d/.wh..wh..opq")
        .dir("d/e", 0o755)
        .file("d/e/new", b"new", 0o644)
        .file("d/new", b"new", 0o644);
    apply_bytes(&ar.finish(), &sb2.root).unwrap();
    let mut a = tree(r, &CompareOpts::default());
    a.retain(|p, _| p.starts_with("d"));
    let mut b = tree(&sb2.root, &CompareOpts::default());
    b.retain(|p, _| p.starts_with("d"));
    assert_eq!(a, b);
}

fn is_whiteout_dev(p: &Path) -> bool {
    let m = fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && m.rdev() == 0
}

fn opaque(p: &Path) -> bool {
    xattr::get(p, "trusted.overlay.opaque").unwrap().as_deref() == Some(b"y")
}

#[test]
fn root_overlay_mode_makes_overlayfs_whiteouts() {
    let dir = tempfile::tempdir().unwrap();
    let u = dir.path().join("upper");
    fs::create_dir(&u).unwrap();
    let ls = layers();
    apply(ls[1].as_slice(), &u, &opts(WhiteoutMode::Overlay)).unwrap();
    assert!(is_whiteout_dev(&u.join("a/x")));
    assert!(is_whiteout_dev(&u.join("d")));
    assert!(is_whiteout_dev(&u.join("s")));
    assert!(is_whiteout_dev(&u.join("missing")));
    assert!(opaque(&u.join("b")));
    assert!(!opaque(&u.join("a")));
    assert_eq!(fs::read(u.join("b/new")).unwrap(), b"b new");
    assert!(tree(&u, &CompareOpts::default()).keys().all(|p| !p
        .file_name()
        .unwrap()
        .as_bytes()
        .starts_with(b".wh.")));

    // The same-archive rules, the overlay way.
    let u2 = dir.path().join("upper2");
    fs::create_dir(&u2).unwrap();
    let mut ar = Ar::new();
    ar.file("g", b"g", 0o644)
        .marker(".wh.g") // g stays a file
        .dir("e", 0o755)
        .file("e/x", b"x", 0o644)
        .marker(".wh.e") // e stays, opaque: the lower e is hidden
        .marker(".wh.h")
        .dir("h", 0o755) // replaces its whiteout: opaque
        .marker("nodir/.wh.y"); // parents are made in a layer directory
    apply(ar.finish().as_slice(), &u2, &opts(WhiteoutMode::Overlay)).unwrap();
    assert_eq!(fs::read(u2.join("g")).unwrap(), b"g");
    assert!(opaque(&u2.join("e")) && exists(&u2.join("e/x")));
    assert!(opaque(&u2.join("h")));
    assert!(is_whiteout_dev(&u2.join("nodir/y")));
    // A 0/0 character device in the input would be a whiteout: refused.
    let mut ar = Ar::new();
    ar.dev("c00", EntryType::Char, 0, 0, 0o600);
    let u3 = dir.path().join("upper3");
    fs::create_dir(&u3).unwrap();
    expect_err(
        apply(ar.finish().as_slice(), &u3, &opts(WhiteoutMode::Overlay)),
        "unsupported",
        "would be a whiteout",
    );
}

#[test]
fn root_overlayfs_mount_of_overlay_layers_equals_delete_mode_tree() {
    let dir = tempfile::tempdir().unwrap();
    let merged_delete = dir.path().join("delete");
    fs::create_dir(&merged_delete).unwrap();
    let ls = layers();
    let mut uppers = Vec::new();
    for (i, l) in ls.iter().enumerate() {
        apply_bytes(l, &merged_delete).unwrap();
        let u = dir.path().join(format!("u{}", i + 1));
        fs::create_dir(&u).unwrap();
        apply(l.as_slice(), &u, &opts(WhiteoutMode::Overlay)).unwrap();
        uppers.push(u);
    }
    let mnt = dir.path().join("merged");
    let _m = mount_overlay(&uppers, &mnt);
    let o = CompareOpts {
        dir_mtimes: true,
        ..Default::default()
    };
    assert_same_tree(&mnt, &merged_delete, &o);
    assert!(!tree(&mnt, &o).is_empty());
}

/// The component walk alone (as on a kernel without `openat2`) makes the
/// same trees, in both modes, implied parents included.
#[test]
fn plain_component_walk_makes_the_same_trees() {
    let mut implied = Ar::new();
    implied
        .file("p/q/r/f", b"f", 0o644)
        .file("p/q/g", b"g", 0o600)
        .hardlink("p/h", "p/q/g")
        .marker("p/q/.wh.r");
    let mut layers = layers();
    layers.push(implied.finish());
    let d = tempfile::tempdir().unwrap();
    let apply_all = |name: &str, mode: WhiteoutMode, fallback: bool| -> Vec<PathBuf> {
        let mut roots = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            // Delete mode merges into one tree, overlay mode makes a layer
            // directory each.
            let root = match mode {
                WhiteoutMode::Delete => d.path().join(name),
                WhiteoutMode::Overlay => d.path().join(format!("{name}{i}")),
            };
            fs::create_dir_all(&root).unwrap();
            let go = || apply(l.as_slice(), &root, &opts(mode)).unwrap();
            if fallback {
                crate::fsys::walk::with_fallback_only(go);
            } else {
                go();
            }
            roots.push(root);
        }
        roots
    };
    // Implied parents get the current time: compare directory mtimes only
    // where every parent is in the archive. Whiteout devices get the
    // current time too: two applies may make them a second apart.
    let exact = CompareOpts {
        whiteout_mtimes: false,
        ..CompareOpts::exact()
    };
    let no_dir_mtimes = CompareOpts {
        dir_mtimes: false,
        ..exact.clone()
    };
    for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
        let kernel = apply_all(&format!("{mode:?}-k"), mode, false);
        let fallback = apply_all(&format!("{mode:?}-f"), mode, true);
        for (i, (k, f)) in kernel.iter().zip(&fallback).enumerate() {
            let implied_parents = mode == WhiteoutMode::Delete || i == 3;
            let o = if implied_parents {
                &no_dir_mtimes
            } else {
                &exact
            };
            assert_same_tree(k, f, o);
        }
    }
}

/// A directory that becomes a symlink, as umoci writes it: the symlink,
/// then whiteouts (and an opaque marker) for the old directory's children.
/// Those are redundant and apply as no-ops, in both modes; a file through
/// the new symlink is still refused.
#[test]
fn plain_whiteouts_under_a_directory_the_archive_replaced_are_no_ops() {
    let mut base = Ar::new();
    base.dir("d", 0o755)
        .file("d/f", b"f", 0o644)
        .dir("d/sub", 0o755)
        .file("d/sub/g", b"g", 0o644)
        .dir("usr", 0o755);
    let base = base.finish();
    let mut change = Ar::new();
    change
        .symlink("d", "usr")
        .marker("d/.wh.f")
        .marker("d/.wh.sub")
        .marker("d/sub/.wh.g")
        .marker("d/.wh..wh..opq");
    let change = change.finish();
    for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
        let sb = Sandbox::new();
        let r = &sb.root;
        apply(&base[..], r, &opts(mode)).unwrap();
        // Delete mode applies onto the merged tree; overlay mode into an
        // empty layer directory over it.
        let mut o = opts(mode);
        let layer = if mode == WhiteoutMode::Overlay {
            let l = r.join("upper");
            fs::create_dir(&l).unwrap();
            o.lower = Some(r.clone());
            l
        } else {
            r.clone()
        };
        apply(&change[..], &layer, &o).unwrap();
        assert_eq!(
            fs::read_link(layer.join("d")).unwrap(),
            Path::new("usr"),
            "{mode:?}"
        );
        assert!(exists(&r.join("usr")), "{mode:?}");
        if mode == WhiteoutMode::Overlay {
            // The lower directory is untouched; the symlink hides it.
            assert_eq!(fs::read(r.join("d/sub/g")).unwrap(), b"g");
        }
        sb.assert_untouched();
        // Writing through the new symlink stays refused.
        let mut bad = Ar::new();
        bad.symlink("e", "usr").file("e/pwned", b"p", 0o644);
        let err = apply(&bad.finish()[..], &layer, &o).unwrap_err();
        assert!(
            err.to_string().contains("passes through symlink \"e\""),
            "{err}"
        );
    }
}
