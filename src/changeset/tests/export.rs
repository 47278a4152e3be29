//! Exports: format, order, determinism, change detection, hard links,
//! sparse files, overlay layer directories, the inode rule.

use std::os::unix::fs::{symlink, FileExt, PermissionsExt};

use super::*;

/// One member as the tests look at it.
#[derive(Debug, PartialEq)]
struct Member {
    path: String,
    ty: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: Option<String>,
    /// PAX keys in archive order.
    pax: Vec<String>,
    uname: Vec<u8>,
}

fn detail(bytes: &[u8]) -> Vec<Member> {
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let pax = match e.pax_extensions().unwrap() {
            Some(p) => p.map(|x| x.unwrap().key().unwrap().to_string()).collect(),
            None => Vec::new(),
        };
        let h = e.header();
        out.push(Member {
            path: String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            ty: h.entry_type().as_byte() as char,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            size: e.size(),
            link: e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            pax,
            uname: h.username_bytes().unwrap_or_default().to_vec(),
        });
    }
    out
}

fn paths(bytes: &[u8]) -> Vec<String> {
    members(bytes).into_iter().map(|(p, _)| p).collect()
}

/// A small tree made by applying an archive (so its metadata is fixed).
fn sample(dir: &Path) -> PathBuf {
    let root = dir.join("sample");
    fs::create_dir(&root).unwrap();
    let mut ar = Ar::new();
    ar.dir("b", 0o755)
        .file("b/z", b"z", 0o644)
        .file("b/a", b"a", 0o4755)
        .dir("b/sub", 0o700)
        .file("b/sub/deep", b"deep", 0o600)
        .file(
            "b-c",
            b"sorts before b/ bytewise, after it by components",
            0o644,
        )
        .file("a", b"first", 0o644)
        .hardlink("b/link-to-a", "a")
        .symlink("s", "b/z")
        .fifo("p", 0o644)
        .dir("long", 0o755);
    // PAX, GNU long name and (below) GNU long link records together.
    ar.xattrs(&[("user.long", b"x")])
        .file(&format!("long/{}", "n".repeat(150)), b"long name", 0o644)
        .hardlink(
            &format!("long/{}", "m".repeat(150)),
            &format!("long/{}", "n".repeat(150)),
        );
    ar.xattrs(&[("user.zz", b"2"), ("user.aa", b"1")])
        .file("x", b"x", 0o644);
    apply_bytes(&ar.finish(), &root).unwrap();
    root
}

#[test]
fn plain_export_order_format_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let root = sample(dir.path());
    let (bytes, st) = export_bytes(None, &root);
    let long = format!("long/{}", "n".repeat(150));
    let long2 = format!("long/{}", "m".repeat(150));
    assert_eq!(
        paths(&bytes),
        vec![
            "a",
            "b/",
            "b/a",
            "b/link-to-a",
            "b/sub/",
            "b/sub/deep",
            "b/z",
            "b-c",
            "long/",
            long2.as_str(),
            long.as_str(),
            "p",
            "s",
            "x"
        ]
    );
    assert_eq!(st.entries, 14);
    assert_eq!(st.bytes, bytes.len() as u64);
    assert_eq!(st.diff_id, sha256_hex(&bytes));
    let d = detail(&bytes);
    let (uid, gid) = me();
    for m in &d {
        assert_eq!((m.uid, m.gid), (uid, gid), "{}", m.path);
        assert!(m.uname.is_empty());
        assert_eq!(m.mtime, T0, "{}", m.path);
    }
    let by = |p: &str| d.iter().find(|m| m.path == p).unwrap();
    assert_eq!(by("b/a").mode, 0o4755);
    assert_eq!(by("b/").ty, '5');
    assert_eq!(
        (by("b/link-to-a").ty, by("b/link-to-a").link.as_deref()),
        ('1', Some("a"))
    );
    assert_eq!(by("s").link.as_deref(), Some("b/z"));
    assert_eq!(by("p").ty, '6');
    assert_eq!(
        by("x").pax,
        vec!["SCHILY.xattr.user.aa", "SCHILY.xattr.user.zz"]
    );
    // The first path of the inode is the file, the later one links to it.
    assert_eq!((by(&long2).ty, by(&long).ty), ('0', '1'));
    assert_eq!(by(&long).link.as_deref(), Some(long2.as_str()));
    assert_eq!(by(&long2).pax, vec!["SCHILY.xattr.user.long"]);
    // The same tree, the same bytes; also compressed.
    assert_eq!(export_bytes(None, &root).0, bytes);
    for c in [Compression::Gzip, Compression::Zstd] {
        let o = ExportOptions {
            compression: c,
            ..ExportOptions::default()
        };
        let mut one = Vec::new();
        let s1 = export_diff(None, &root, &mut one, &o).unwrap();
        let mut two = Vec::new();
        export_diff(None, &root, &mut two, &o).unwrap();
        assert_eq!(one, two, "{c:?} output is deterministic");
        assert_eq!(
            s1.diff_id, st.diff_id,
            "diff_id is of the uncompressed stream"
        );
        let (got, mut r) = decompress(one.as_slice()).unwrap();
        assert_eq!(got, c);
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).unwrap();
        assert_eq!(plain, bytes);
        let back = dir.path().join(format!("back-{c:?}"));
        fs::create_dir(&back).unwrap();
        let a = apply_bytes(&one, &back).unwrap();
        assert_eq!(
            (a.compression, a.diff_id.as_str()),
            (c, st.diff_id.as_str())
        );
        assert_same_tree(&root, &back, &CompareOpts::exact());
    }
    // Touching an unrelated file elsewhere changes nothing.
    fs::write(dir.path().join("elsewhere"), b"x").unwrap();
    assert_eq!(export_bytes(None, &root).0, bytes);
}

#[test]
fn plain_export_diff_of_top_level_changes() {
    // Only top-level files are compared by metadata here: copies give
    // directories new inode numbers (see the root tier for directories).
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("p");
    fs::create_dir(&parent).unwrap();
    let mut ar = Ar::new();
    ar.file("same", b"same", 0o644)
        .file("chmod", b"c", 0o644)
        .file("touch", b"t", 0o644)
        .file("grow", b"g", 0o644)
        .file("quiet", b"q", 0o644)
        .file("gone", b"g", 0o644)
        .dir("gonedir", 0o755)
        .file("gonedir/inner", b"i", 0o644)
        .file("f2d", b"file", 0o644)
        .dir("d2f", 0o755)
        .symlink("retarget", "same")
        .fifo("fifo", 0o600);
    apply_bytes(&ar.finish(), &parent).unwrap();
    let child = dir.path().join("c");
    copy_tree(&parent, &child);
    assert!(
        paths(&export_bytes(Some(&parent), &child).0)
            .iter()
            .all(|p| p == "d2f/" || p.starts_with("d2f/") || p.starts_with("gonedir/")),
        "only copied directories (new inodes) differ"
    );
    fs::set_permissions(child.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    let f = fs::File::options()
        .write(true)
        .open(child.join("touch"))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(T0, 5))
        .unwrap();
    fs::write(child.join("grow"), b"grown").unwrap();
    // Same size, same mtime: like docker's naive diff, not a change.
    fs::write(child.join("quiet"), b"Q").unwrap();
    let f = fs::File::options()
        .write(true)
        .open(child.join("quiet"))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0))
        .unwrap();
    fs::remove_file(child.join("gone")).unwrap();
    fs::remove_dir_all(child.join("gonedir")).unwrap();
    fs::remove_file(child.join("f2d")).unwrap();
    fs::create_dir(child.join("f2d")).unwrap();
    fs::write(child.join("f2d/in"), b"in").unwrap();
    fs::remove_dir(child.join("d2f")).unwrap();
    fs::write(child.join("d2f"), b"now a file").unwrap();
    fs::remove_file(child.join("retarget")).unwrap();
    symlink("chmod", child.join("retarget")).unwrap();
    fs::write(child.join("new"), b"new").unwrap();
    let (bytes, _) = export_bytes(Some(&parent), &child);
    assert_eq!(
        paths(&bytes),
        vec![
            ".wh.gone",
            ".wh.gonedir",
            "chmod",
            "d2f",
            "f2d/",
            "f2d/in",
            "grow",
            "new",
            "retarget",
            "touch"
        ]
    );
    let d = detail(&bytes);
    assert_eq!(d[0].ty, '0');
    assert_eq!(
        (d[0].mode, d[0].uid, d[0].mtime, d[0].size),
        (0, 0, 0, 0),
        "whiteouts have fixed metadata"
    );
    // Applied to a copy of the parent, it gives the child (but "quiet").
    fs::write(child.join("quiet"), b"q").unwrap();
    let f = fs::File::options()
        .write(true)
        .open(child.join("quiet"))
        .unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0))
        .unwrap();
    let back = dir.path().join("back");
    copy_tree(&parent, &back);
    apply_bytes(&bytes, &back).unwrap();
    let mut o = CompareOpts::exact();
    o.dir_mtimes = false; // f2d's mtime changed when "in" was written; seconds may differ
    assert_same_tree(&child, &back, &o);
    // No change: an empty archive.
    let (same, _) = export_bytes(Some(&child), &child);
    assert_eq!(same, vec![0u8; 1024]);
}

#[test]
fn plain_names_a_changeset_cannot_hold_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/.wh.sneaky"), b"").unwrap();
    let mut out = Vec::new();
    expect_err(
        export_diff(None, &root, &mut out, &ExportOptions::default()),
        "unsupported",
        "entry \"d/.wh.sneaky\": the name has the reserved whiteout prefix",
    );
    // Sockets are skipped.
    let root2 = dir.path().join("t2");
    fs::create_dir(&root2).unwrap();
    let _l = std::os::unix::net::UnixListener::bind(root2.join("sock")).unwrap();
    fs::write(root2.join("f"), b"f").unwrap();
    assert_eq!(paths(&export_bytes(None, &root2).0), vec!["f"]);
}

fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    std::io::pipe().unwrap()
}

#[test]
fn plain_one_gib_sparse_file_exports_and_reapplies_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let size: u64 = 1 << 30;
    let f = fs::File::create(src.join("big")).unwrap();
    f.set_len(size).unwrap();
    let marks: [(u64, &[u8]); 3] = [
        (0, b"start"),
        (size / 2 + 12345, b"middle"),
        (size - 6, b"finish"),
    ];
    for (off, data) in marks {
        f.write_all_at(data, off).unwrap();
    }
    drop(f);
    let dst = dir.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let (r, w) = pipe();
    let src2 = src.clone();
    let t = std::time::Instant::now();
    let exporter =
        std::thread::spawn(move || export_diff(None, &src2, w, &ExportOptions::default()));
    let applied = apply(r, &dst, &opts(WhiteoutMode::Delete)).unwrap();
    let exported = exporter.join().unwrap().unwrap();
    eprintln!("1 GiB sparse export+apply: {:?}", t.elapsed());
    assert_eq!(applied.diff_id, exported.diff_id);
    assert_eq!(applied.bytes, exported.bytes);
    let m = fs::metadata(dst.join("big")).unwrap();
    assert_eq!(m.len(), size);
    assert!(
        m.blocks() * 512 <= 1 << 20,
        "not sparse: {} blocks",
        m.blocks()
    );
    let f = fs::File::open(dst.join("big")).unwrap();
    for (off, data) in marks {
        let mut buf = vec![0u8; data.len()];
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(buf, data);
    }
}

#[test]
fn root_overlay_layer_directory_export() {
    let dir = tempfile::tempdir().unwrap();
    let l = dir.path().join("layer");
    fs::create_dir_all(l.join("a")).unwrap();
    fs::write(l.join("a/f"), b"f").unwrap();
    let wh = |p: &Path| {
        let (cwd, chr) = (rustix::fs::CWD, rustix::fs::FileType::CharacterDevice);
        assert_eq!(
            rustix::fs::mknodat(cwd, p, chr, rustix::fs::Mode::empty(), 0),
            Ok(())
        );
    };
    wh(&l.join("a/gone"));
    wh(&l.join("gonetop"));
    fs::create_dir(l.join("b")).unwrap();
    xattr::set(l.join("b"), "trusted.overlay.opaque", b"y").unwrap();
    fs::write(l.join("b/inside"), b"i").unwrap();
    wh(&l.join("b/alsogone"));
    xattr::set(l.join("a/f"), "trusted.overlay.origin", b"\x00\xfb").unwrap();
    xattr::set(l.join("a/f"), "user.kept", b"k").unwrap();
    for p in ["", "a", "b"] {
        // Fixed directory mtimes make the output predictable.
        let d = fs::File::open(l.join(p)).unwrap();
        d.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(T0))
            .unwrap();
    }
    let mut out = Vec::new();
    let st = export_overlay_layer(&l, &mut out, &ExportOptions::default()).unwrap();
    assert_eq!(
        paths(&out),
        vec![
            ".wh.gonetop",
            "a/",
            "a/.wh.gone",
            "a/f",
            "b/",
            "b/.wh..wh..opq",
            "b/.wh.alsogone",
            "b/inside"
        ]
    );
    assert_eq!(st.entries, 8);
    let d = detail(&out);
    assert_eq!(
        d.iter().find(|m| m.path == "a/f").unwrap().pax,
        vec!["SCHILY.xattr.user.kept"]
    );
    // Exporting again: the same bytes.
    let mut again = Vec::new();
    export_overlay_layer(&l, &mut again, &ExportOptions::default()).unwrap();
    assert_eq!(again, out);
    // Applied in delete mode over a lower tree, it does what overlayfs does.
    let lower = dir.path().join("lower");
    let mut ar = Ar::new();
    ar.dir("a", 0o755)
        .file("a/gone", b"x", 0o644)
        .file("gonetop", b"x", 0o644)
        .dir("b", 0o755)
        .file("b/hidden", b"x", 0o644);
    fs::create_dir(&lower).unwrap();
    apply_bytes(&ar.finish(), &lower).unwrap();
    apply_bytes(&out, &lower).unwrap();
    let t = tree(&lower, &CompareOpts::default());
    let names: Vec<String> = t.keys().map(|p| p.display().to_string()).collect();
    assert_eq!(names, ["a", "a/f", "b", "b/inside"]);

    // A root-level opaque marker comes first.
    xattr::set(&l, "trusted.overlay.opaque", b"y").unwrap();
    let mut out = Vec::new();
    export_overlay_layer(&l, &mut out, &ExportOptions::default()).unwrap();
    assert_eq!(paths(&out)[..2], [".wh..wh..opq", ".wh.gonetop"]);
    xattr::remove(&l, "trusted.overlay.opaque").unwrap();

    // What the layer alone cannot express is refused.
    xattr::set(l.join("b"), "trusted.overlay.redirect", b"/elsewhere").unwrap();
    expect_err(
        export_overlay_layer(&l, &mut Vec::new(), &ExportOptions::default()),
        "unsupported",
        "entry \"b\": overlayfs renamed this directory",
    );
    xattr::remove(l.join("b"), "trusted.overlay.redirect").unwrap();
    xattr::set(l.join("a/f"), "trusted.overlay.metacopy", b"").unwrap();
    expect_err(
        export_overlay_layer(&l, &mut Vec::new(), &ExportOptions::default()),
        "unsupported",
        "metadata-only copy-up",
    );
}

#[test]
fn root_inode_rule_ancestors_and_lost_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Ext4::new(dir.path(), "parent");
    let mut ar = Ar::new();
    ar.dir("x", 0o755)
        .file("x/old", b"old", 0o644)
        .dir("y", 0o755)
        .file("y/g", b"g", 0o644)
        .dir("deep", 0o755)
        .dir("deep/a", 0o711)
        .dir("deep/a/b", 0o755)
        .file("deep/a/b/file", b"one", 0o644)
        .file("deep/a/b/other", b"other", 0o644)
        .dir("gone", 0o755)
        .dir("gone/sub", 0o755)
        .file("gone/sub/f", b"f", 0o644);
    apply_bytes(&ar.finish(), &p.mnt).unwrap();
    let c = p.snapshot(dir.path(), "child");
    let cm = &c.mnt;
    // Untouched: nothing to export (lost+found is skipped on both sides).
    assert_eq!(export_bytes(Some(&p.mnt), cm).0, vec![0u8; 1024]);
    // x removed and made again: a new inode.
    fs::create_dir(cm.join("x.new")).unwrap();
    fs::write(cm.join("x.new/new"), b"new").unwrap();
    fs::remove_dir_all(cm.join("x")).unwrap();
    fs::rename(cm.join("x.new"), cm.join("x")).unwrap();
    fs::set_permissions(cm.join("x"), fs::Permissions::from_mode(0o755)).unwrap();
    let x_ino = |m: &Path| fs::metadata(m.join("x")).unwrap().ino();
    assert_ne!(x_ino(&p.mnt), x_ino(cm));
    // A change deep down: its ancestors come along.
    fs::write(cm.join("deep/a/b/file"), b"two!").unwrap();
    fs::remove_dir_all(cm.join("gone")).unwrap();
    fs::write(cm.join("lost+found/ignored"), b"x").unwrap();
    let (bytes, _) = export_bytes(Some(&p.mnt), cm);
    assert_eq!(
        paths(&bytes),
        vec![
            ".wh.gone",
            "deep/",
            "deep/a/",
            "deep/a/b/",
            "deep/a/b/file",
            "x/",
            "x/.wh..wh..opq",
            "x/new"
        ]
    );
    let d = detail(&bytes);
    assert_eq!(d[2].mode, 0o711, "ancestors carry the child's metadata");
    // Applied onto another snapshot of the parent: the child.
    let b = p.snapshot(dir.path(), "back");
    apply_bytes(&bytes, &b.mnt).unwrap();
    fs::remove_file(cm.join("lost+found/ignored")).unwrap();
    let mut o = CompareOpts::exact();
    o.dir_mtimes = false; // the hand-made changes left sub-second directory mtimes
    assert_same_tree(cm, &b.mnt, &o);
}

#[test]
fn root_a_directory_changed_alone_deep_down_brings_its_ancestors() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Ext4::new(dir.path(), "parent");
    let mut ar = Ar::new();
    ar.dir("v", 0o755)
        .dir("v/l", 0o755)
        .dir("v/l/app", 0o755)
        .file("v/l/app/f", b"f", 0o644)
        .file("w", b"w", 0o644);
    apply_bytes(&ar.finish(), &p.mnt).unwrap();
    let c = p.snapshot(dir.path(), "child");
    fs::set_permissions(c.mnt.join("v/l/app"), fs::Permissions::from_mode(0o700)).unwrap();
    let (bytes, _) = export_bytes(Some(&p.mnt), &c.mnt);
    assert_eq!(paths(&bytes), vec!["v/", "v/l/", "v/l/app/"]);
    assert_eq!(detail(&bytes)[2].mode, 0o700);
}
