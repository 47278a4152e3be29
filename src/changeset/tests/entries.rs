//! Entry types, metadata, sparse files, the stream format, limits.

use std::io::Write as _;
use std::os::unix::fs::{symlink, FileExt, PermissionsExt};

use super::*;

fn md(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap()
}

#[test]
fn plain_all_entry_types_and_metadata() {
    let sb = Sandbox::new();
    let long_dir = "d".repeat(120);
    let long_target = format!("{}/{}", "t".repeat(90), "u".repeat(90));
    let mut ar = Ar::new();
    ar.mtime = T0 + 7;
    ar.dir("etc", 0o755);
    ar.mtime = T0 + 1;
    ar.file("etc/setuid", b"#!/bin/sh\n", 0o4755)
        .file("etc/setgid", b"g", 0o2711)
        .dir("tmp", 0o1777)
        .file("etc/empty", b"", 0o600)
        .symlink("etc/rel", "setuid")
        .symlink("etc/abs", "/etc/passwd")
        .symlink("etc/dangling", "../nowhere/at/all")
        .hardlink("etc/hard", "etc/setuid")
        .fifo("etc/fifo", 0o640)
        .dir(&format!("{long_dir}/"), 0o750)
        .file(&format!("{long_dir}/file"), b"long", 0o644)
        .symlink("longlink", &long_target)
        .hardlink("longhard", &format!("{long_dir}/file"));
    ar.xattrs(&[("user.one", b"1"), ("user.bin", b"\x00\n\xff")])
        .file("etc/xattrs", b"x", 0o644);
    ar.xattrs(&[("user.dir", b"d")]).dir("xdir", 0o700);
    // Fractional mtime from PAX.
    ar.pax(&[("mtime", b"1600000123.25")])
        .file("frac", b"f", 0o644);
    // A directory entry before its children: its mtime is set last.
    ar.mtime = T0 + 100;
    ar.dir("late", 0o755);
    ar.mtime = T0 + 1;
    ar.file("late/a", b"a", 0o644)
        .dir("late/sub", 0o755)
        .file("late/sub/b", b"b", 0o644);
    // Implicit parents.
    ar.file("implicit/parents/f", b"p", 0o644);
    let st = apply_bytes(&ar.finish(), &sb.root).unwrap();
    assert_eq!(st.compression, Compression::None);
    sb.assert_untouched();

    let r = &sb.root;
    let (uid, gid) = me();
    let m = md(&r.join("etc/setuid"));
    assert_eq!(m.mode() & 0o7777, 0o4755);
    assert_eq!((m.uid() as u64, m.gid() as u64), (uid, gid));
    assert_eq!(m.mtime(), (T0 + 1) as i64);
    assert_eq!(fs::read(r.join("etc/setuid")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(md(&r.join("etc/setgid")).mode() & 0o7777, 0o2711);
    assert_eq!(md(&r.join("tmp")).mode() & 0o7777, 0o1777);
    assert_eq!(md(&r.join("etc/empty")).len(), 0);
    assert_eq!(
        fs::read_link(r.join("etc/rel")).unwrap(),
        Path::new("setuid")
    );
    assert_eq!(
        fs::read_link(r.join("etc/abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(r.join("etc/dangling")).unwrap(),
        Path::new("../nowhere/at/all")
    );
    assert_eq!(
        md(&r.join("etc/rel")).mtime(),
        (T0 + 1) as i64,
        "symlink mtime (lutimes)"
    );
    assert_eq!(
        md(&r.join("etc/hard")).ino(),
        md(&r.join("etc/setuid")).ino()
    );
    assert!(md(&r.join("etc/fifo")).file_type().is_fifo());
    assert_eq!(md(&r.join("etc/fifo")).mode() & 0o7777, 0o640);
    assert_eq!(md(&r.join(&long_dir)).mode() & 0o7777, 0o750);
    assert_eq!(fs::read(r.join(&long_dir).join("file")).unwrap(), b"long");
    assert_eq!(
        fs::read_link(r.join("longlink")).unwrap(),
        Path::new(&long_target)
    );
    assert_eq!(
        md(&r.join("longhard")).ino(),
        md(&r.join(&long_dir).join("file")).ino()
    );
    assert_eq!(
        xattr::get(r.join("etc/xattrs"), "user.one")
            .unwrap()
            .unwrap(),
        b"1"
    );
    assert_eq!(
        xattr::get(r.join("etc/xattrs"), "user.bin")
            .unwrap()
            .unwrap(),
        b"\x00\n\xff"
    );
    assert_eq!(
        xattr::get(r.join("xdir"), "user.dir").unwrap().unwrap(),
        b"d"
    );
    assert_eq!(md(&r.join("xdir")).mode() & 0o7777, 0o700);
    let f = md(&r.join("frac"));
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_600_000_123, 250_000_000));
    // Directory mtimes hold although children were written after them.
    assert_eq!(md(&r.join("late")).mtime(), (T0 + 100) as i64);
    assert_eq!(md(&r.join("late/sub")).mtime(), (T0 + 1) as i64);
    assert_eq!(md(&r.join("etc")).mtime(), (T0 + 7) as i64);
    for p in ["implicit", "implicit/parents"] {
        let m = md(&r.join(p));
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o755, "{p}");
        assert_eq!(m.uid() as u64, uid);
    }
}

#[test]
fn plain_replacing_entries_of_other_types() {
    let sb = Sandbox::new();
    let mut ar = Ar::new();
    ar.dir("d", 0o755)
        .dir("d/sub", 0o755)
        .file("d/sub/f", b"f", 0o644)
        .file("f", b"file", 0o644)
        .symlink("s", "f")
        .dir("keep", 0o700)
        .file("keep/old", b"old", 0o644);
    ar.xattrs(&[("user.old", b"1"), ("user.both", b"old")])
        .dir("x", 0o755);
    apply_bytes(&ar.finish(), &sb.root).unwrap();

    let mut ar = Ar::new();
    ar.mtime = T0 + 50;
    ar.file("d", b"was a dir", 0o600) // file over a directory tree
        .dir("f", 0o711) // directory over a file
        .file("s", b"was a symlink", 0o644) // file over a symlink (not followed)
        .dir("keep", 0o755); // directory over directory: kept, metadata updated
    ar.xattrs(&[("user.both", b"new")]).dir("x", 0o755);
    apply_bytes(&ar.finish(), &sb.root).unwrap();
    let r = &sb.root;
    assert_eq!(fs::read(r.join("d")).unwrap(), b"was a dir");
    assert!(md(&r.join("f")).is_dir());
    assert_eq!(md(&r.join("f")).mode() & 0o7777, 0o711);
    assert_eq!(fs::read(r.join("s")).unwrap(), b"was a symlink");
    assert_eq!(fs::read(r.join("keep/old")).unwrap(), b"old");
    assert_eq!(md(&r.join("keep")).mode() & 0o7777, 0o755);
    assert_eq!(md(&r.join("keep")).mtime(), (T0 + 50) as i64);
    // The merged directory's xattrs are the entry's.
    assert_eq!(xattr::get(r.join("x"), "user.old").unwrap(), None);
    assert_eq!(
        xattr::get(r.join("x"), "user.both").unwrap().unwrap(),
        b"new"
    );
    sb.assert_untouched();
}

#[test]
fn plain_root_directory_entry_sets_root_metadata() {
    let sb = Sandbox::new();
    let mut ar = Ar::new();
    ar.mtime = T0 + 3;
    ar.dir("./", 0o750);
    ar.file("./a", b"a", 0o644);
    apply_bytes(&ar.finish(), &sb.root).unwrap();
    let m = md(&sb.root);
    assert_eq!(m.mode() & 0o7777, 0o750);
    assert_eq!(m.mtime(), (T0 + 3) as i64);
    assert_eq!(fs::read(sb.root.join("a")).unwrap(), b"a");
}

#[test]
fn plain_legacy_directory_with_nul_type() {
    let sb = Sandbox::new();
    let mut ar = Ar::new();
    let mut h = ar.header(EntryType::Regular, 0o755);
    h.as_old_mut().name[..4].copy_from_slice(b"old/");
    h.as_old_mut().linkflag = [0];
    h.set_cksum();
    ar.header_raw(&h, b"").file("old/f", b"f", 0o644);
    apply_bytes(&ar.finish(), &sb.root).unwrap();
    assert!(md(&sb.root.join("old")).is_dir());
}

#[test]
fn plain_gnu_sparse_entries_stay_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("sparse");
    let f = fs::File::create(&src).unwrap();
    f.set_len(256 << 20).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(&[7u8; 8192], 100 << 20).unwrap();
    f.write_all_at(b"tail", (256 << 20) - 4).unwrap();
    // Enough data segments for GNU extended sparse headers.
    for i in 0..40u64 {
        f.write_all_at(&[i as u8 + 1; 100], (150 << 20) + i * (1 << 20))
            .unwrap();
    }
    drop(f);
    // The tar crate writes GNU sparse entries for sparse files.
    let mut b = tar::Builder::new(Vec::new());
    b.append_path_with_name(&src, "sparse").unwrap();
    let bytes = b.into_inner().unwrap();
    assert_eq!(members(&bytes), vec![("sparse".to_string(), 'S')]);
    assert!(bytes.len() < 1 << 20);
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    apply_bytes(&bytes, &root).unwrap();
    let out = root.join("sparse");
    let m = md(&out);
    assert_eq!(m.len(), 256 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "not sparse: {} blocks",
        m.blocks()
    );
    let f = fs::File::open(&out).unwrap();
    let mut buf = [0u8; 8192];
    f.read_exact_at(&mut buf[..4], 0).unwrap();
    assert_eq!(&buf[..4], b"head");
    f.read_exact_at(&mut buf, 100 << 20).unwrap();
    assert_eq!(buf, [7u8; 8192]);
    f.read_exact_at(&mut buf[..4], (256 << 20) - 4).unwrap();
    assert_eq!(&buf[..4], b"tail");
    f.read_exact_at(&mut buf, 50 << 20).unwrap();
    assert_eq!(buf, [0u8; 8192]);
    for i in 0..40u64 {
        f.read_exact_at(&mut buf[..100], (150 << 20) + i * (1 << 20))
            .unwrap();
        assert_eq!(buf[..100], [i as u8 + 1; 100]);
    }

    // Without hole detection the zeros are written.
    let root2 = dir.path().join("root2");
    fs::create_dir(&root2).unwrap();
    let mut o = opts(WhiteoutMode::Delete);
    o.holes = false;
    let mut small = Ar::new();
    small.file("zeros", &[0u8; 65536], 0o644);
    let small = small.finish();
    apply(small.as_slice(), &root2, &o).unwrap();
    assert!(md(&root2.join("zeros")).blocks() * 512 >= 65536);
    apply_bytes(&small, &root).unwrap();
    assert_eq!(md(&root.join("zeros")).blocks(), 0);
    assert_eq!(fs::read(root.join("zeros")).unwrap(), vec![0u8; 65536]);
}

#[test]
fn plain_diff_id_covers_the_whole_stream_and_decompress_detects_all() {
    let mut ar = Ar::new();
    ar.dir("a", 0o755).file("a/f", &vec![b'x'; 100_000], 0o644);
    let mut plain = ar.finish();
    // GNU tar style record padding after the end-of-archive blocks.
    plain.extend_from_slice(&[0u8; 8192]);
    let want = sha256_hex(&plain);
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&plain).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(plain.as_slice(), 3).unwrap();
    for (bytes, c) in [
        (&plain, Compression::None),
        (&gz, Compression::Gzip),
        (&zst, Compression::Zstd),
    ] {
        let (got, mut r) = decompress(bytes.as_slice()).unwrap();
        assert_eq!(got, c);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, plain);
        let dir = tempfile::tempdir().unwrap();
        let st = apply_bytes(bytes, dir.path()).unwrap();
        assert_eq!(st.compression, c);
        assert_eq!(st.diff_id, want);
        assert_eq!(st.bytes, plain.len() as u64);
        assert_eq!(st.entries, 2);
        assert_eq!(fs::read(dir.path().join("a/f")).unwrap().len(), 100_000);
    }
    // Concatenated gzip members are one stream.
    let half = plain.len() / 2;
    let mut multi = Vec::new();
    for part in [&plain[..half], &plain[half..]] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(part).unwrap();
        multi.extend(e.finish().unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(apply_bytes(&multi, dir.path()).unwrap().diff_id, want);
    // Unsupported compressions are named.
    let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 0, 0, 0, 0];
    let msg = expect_err(apply_bytes(&xz, dir.path()), "unsupported", "xz-compressed");
    assert!(msg.starts_with("unsupported: xz"), "{msg}");
}

#[test]
fn plain_truncated_archives_fail() {
    let mut ar = Ar::new();
    ar.file("usr/bin/x", &vec![b'x'; 5000], 0o755)
        .file("usr/bin/y", b"y", 0o755);
    let full = ar.finish();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Mid-data of the first entry.
    expect_err(
        apply_bytes(&full[..2000], root),
        "truncated",
        "in entry \"usr/bin/x\" (1488 of 5000 bytes)",
    );
    // Mid-header of the second entry.
    let second = 512 + 5120;
    expect_err(
        apply_bytes(&full[..second + 100], root),
        "truncated",
        "unexpected end of archive after entry \"usr/bin/x\"",
    );
    // At an entry boundary, without the end-of-archive marker (or even the
    // last member's padding, as umoci 0.4 writes): accepted, and the
    // diff_id is that of the bytes given.
    let cut = &full[..second + 512 + 1];
    let stats = apply_bytes(cut, root).unwrap();
    assert_eq!(std::fs::read(root.join("usr/bin/y")).unwrap(), b"y");
    assert_eq!(
        stats.diff_id,
        format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(cut))
    );
    apply_bytes(&full[..second + 1024], root).unwrap();
    expect_err(
        apply_bytes(b"", root),
        "truncated",
        "no end-of-archive marker before the first entry",
    );
    // One zero block is enough; data after the marker must be zeros.
    apply_bytes(&full[..second + 1024 + 512], root).unwrap();
    let mut junk = full.clone();
    junk.extend_from_slice(b"trailing junk");
    expect_err(
        apply_bytes(&junk, root),
        "malformed",
        "data after the end-of-archive marker",
    );
    // A cut gzip / zstd stream.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&full).unwrap();
        e.finish().unwrap()
    };
    for cut in [gz.len() / 2, gz.len() - 4] {
        expect_err(apply_bytes(&gz[..cut], root), "truncated", "");
    }
    let zst = zstd::encode_all(full.as_slice(), 3).unwrap();
    expect_err(apply_bytes(&zst[..zst.len() / 2], root), "truncated", "");
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let e = apply_bytes(&bad, root).unwrap_err();
    assert!(matches!(kind(&e), "malformed" | "truncated"), "{e}");
}

#[test]
fn plain_huge_declared_size_is_refused_or_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut ar = Ar::new();
    let mut h = ar.header(EntryType::Regular, 0o644);
    h.set_path("huge").unwrap();
    h.set_size(1 << 40);
    h.set_cksum();
    ar.header_raw(&h, b"");
    let bytes = [ar.unfinished(), vec![b'x'; 4096]].concat();
    let msg = expect_err(
        apply_bytes(&bytes, dir.path()),
        "limit",
        "entry \"huge\": size 1099511627776 is more than 68719476736",
    );
    assert!(msg.starts_with("changeset exceeds a limit: "));
    let mut o = opts(WhiteoutMode::Delete);
    o.max_entry_size = 2 << 40;
    expect_err(
        apply(bytes.as_slice(), dir.path(), &o),
        "truncated",
        "in entry \"huge\" (4096 of 1099511627776 bytes)",
    );
}

#[test]
fn plain_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut ar = Ar::new();
    for i in 0..5 {
        ar.file(&format!("f{i}"), b"", 0o644);
    }
    let bytes = ar.finish();
    let mut o = opts(WhiteoutMode::Delete);
    o.max_entries = 3;
    expect_err(
        apply(bytes.as_slice(), dir.path(), &o),
        "limit",
        "more than 3 entries",
    );
    // Path length.
    let long = (0..20)
        .map(|_| "p".repeat(250))
        .collect::<Vec<_>>()
        .join("/");
    let mut ar = Ar::new();
    ar.file(&long, b"", 0o644);
    expect_err(
        apply_bytes(&ar.finish(), dir.path()),
        "limit",
        "is 5019 bytes long, more than 4096",
    );
    let mut ar = Ar::new();
    ar.file(&"n".repeat(256), b"", 0o644);
    expect_err(
        apply_bytes(&ar.finish(), dir.path()),
        "limit",
        "component longer than 255",
    );
    // Header bytes (a big PAX record).
    let big = vec![b'v'; 100_000];
    let mut ar = Ar::new();
    ar.xattrs(&[("user.big", &big)]).file("f", b"", 0o644);
    let mut o = opts(WhiteoutMode::Delete);
    o.max_header_bytes = 64 * 1024;
    expect_err(
        apply(ar.finish().as_slice(), dir.path(), &o),
        "limit",
        "take more than 65536 bytes",
    );
}

#[test]
fn plain_malformed_and_ambiguous_headers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Checksum.
    let mut ar = Ar::new();
    ar.file("f", b"x", 0o644);
    let mut bytes = ar.finish();
    bytes[0] = b'g';
    expect_err(apply_bytes(&bytes, root), "malformed", "checksum");
    // A PAX value with an embedded record the `tar` crate would read as the path.
    let mut ar = Ar::new();
    ar.pax(&[("SCHILY.xattr.user.x", b"a\n13 path=evil")]);
    ar.file("good", b"x", 0o644);
    expect_err(
        apply_bytes(&ar.finish(), root),
        "malformed",
        "path is ambiguous",
    );
    assert!(!root.join("evil").exists() && !root.join("good").exists());
    // Duplicate records.
    let mut ar = Ar::new();
    ar.pax(&[("path", b"a"), ("path", b"b")]);
    ar.file("c", b"x", 0o644);
    expect_err(
        apply_bytes(&ar.finish(), root),
        "malformed",
        "duplicate pax record \"path\"",
    );
    // A header-only type with data (other readers would skip no data).
    let mut ar = Ar::new();
    let mut h = ar.header(EntryType::Symlink, 0o777);
    h.set_path("s").unwrap();
    h.set_link_name("t").unwrap();
    h.set_size(512);
    h.set_cksum();
    ar.header_raw(&h, &[0u8; 512]);
    expect_err(
        apply_bytes(&ar.finish(), root),
        "malformed",
        "a symlink entry with size 512",
    );
    // PAX sparse files.
    let mut ar = Ar::new();
    ar.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")]);
    ar.file("sp", b"x", 0o644);
    expect_err(apply_bytes(&ar.finish(), root), "unsupported", "GNU.sparse");
    // Unknown member types.
    let mut ar = Ar::new();
    ar.raw(b"vol", EntryType::new(b'V'), b"", None);
    expect_err(
        apply_bytes(&ar.finish(), root),
        "unsupported",
        "member type",
    );
    // Global headers are ignored.
    let mut ar = Ar::new();
    let mut g = Header::new_ustar();
    g.set_entry_type(EntryType::XGlobalHeader);
    let rec = b"17 comment=hello\n";
    g.set_size(rec.len() as u64);
    g.set_cksum();
    ar.header_raw(&g, rec).file("after-global", b"x", 0o644);
    let st = apply_bytes(&ar.finish(), root).unwrap();
    assert_eq!(st.entries, 2);
    assert!(root.join("after-global").exists());
}

#[test]
fn plain_overlay_xattrs_are_dropped_from_input() {
    // user.overlay.* is checkable without privileges.
    let dir = tempfile::tempdir().unwrap();
    let mut ar = Ar::new();
    ar.xattrs(&[("user.overlay.opaque", b"y"), ("user.kept", b"k")])
        .dir("d", 0o755);
    apply_bytes(&ar.finish(), dir.path()).unwrap();
    assert_eq!(
        xattr::get(dir.path().join("d"), "user.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(
        xattr::get(dir.path().join("d"), "user.kept")
            .unwrap()
            .unwrap(),
        b"k"
    );
}

#[test]
fn root_owners_devices_and_privileged_xattrs() {
    let sb = Sandbox::new();
    let mut ar = Ar::new();
    ar.uid = 1234;
    ar.gid = 5678;
    // security.capability v2: cap_net_bind_service (bit 10) permitted+effective.
    let cap: &[u8] = &[
        0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ar.dir("d", 0o2775).file("d/setuid", b"s", 0o6755);
    ar.xattrs(&[("security.capability", cap), ("trusted.note", b"t")])
        .file("d/cap", b"c", 0o755);
    ar.xattrs(&[("trusted.sym", b"s")]).symlink("d/link", "cap");
    ar.xattrs(&[("trusted.dev", b"v")])
        .dev("d/null", EntryType::Char, 1, 3, 0o666);
    ar.dev("d/loop", EntryType::Block, 7, 200, 0o660)
        .fifo("d/fifo", 0o620)
        .hardlink("d/hard", "d/setuid");
    ar.xattrs(&[
        ("trusted.overlay.opaque", b"y"),
        ("trusted.overlay.redirect", b"/x"),
    ])
    .dir("d/ovl", 0o755);
    apply_bytes(&ar.finish(), &sb.root).unwrap();
    sb.assert_untouched();
    let r = sb.root.join("d");
    for n in [
        "", "setuid", "cap", "link", "null", "loop", "fifo", "hard", "ovl",
    ] {
        let m = md(&r.join(n));
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "{n}");
    }
    assert_eq!(md(&r).mode() & 0o7777, 0o2775);
    assert_eq!(
        md(&r.join("setuid")).mode() & 0o7777,
        0o6755,
        "chown must not eat setuid"
    );
    assert_eq!(
        xattr::get(r.join("cap"), "security.capability")
            .unwrap()
            .unwrap(),
        cap
    );
    assert_eq!(
        xattr::get(r.join("cap"), "trusted.note").unwrap().unwrap(),
        b"t"
    );
    assert_eq!(
        xattr::get(r.join("link"), "trusted.sym").unwrap().unwrap(),
        b"s"
    );
    assert_eq!(
        xattr::get(r.join("null"), "trusted.dev").unwrap().unwrap(),
        b"v"
    );
    let null = md(&r.join("null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    let lp = md(&r.join("loop"));
    assert!(lp.file_type().is_block_device());
    assert_eq!(lp.rdev(), libc::makedev(7, 200));
    assert_eq!(lp.mode() & 0o7777, 0o660);
    assert_eq!(md(&r.join("fifo")).mode() & 0o7777, 0o620);
    // overlayfs's namespace is never taken from input.
    assert_eq!(
        xattr::get(r.join("ovl"), "trusted.overlay.opaque").unwrap(),
        None
    );
    assert_eq!(
        xattr::get(r.join("ovl"), "trusted.overlay.redirect").unwrap(),
        None
    );
}

#[test]
fn root_device_through_planted_symlink_and_chmod_not_redirected() {
    // A device entry replacing a symlink to the sentinel: the sentinel's
    // mode and owner stay.
    let mut sb = Sandbox::new();
    symlink(&sb.sentinel, sb.root.join("lower")).unwrap();
    fs::set_permissions(&sb.sentinel, fs::Permissions::from_mode(0o755)).unwrap();
    sb.rebase();
    let mut ar = Ar::new();
    ar.uid = 42;
    ar.dev("lower", EntryType::Char, 1, 5, 0o777);
    ar.dir("lower2", 0o777);
    apply_bytes(&ar.finish(), &sb.root).unwrap();
    assert!(md(&sb.root.join("lower")).file_type().is_char_device());
    sb.assert_untouched();
}

#[test]
fn plain_a_known_diff_id_is_taken_for_a_plain_stream_without_hashing_it_again() {
    let mut ar = Ar::new();
    ar.file("f", b"checked by its reader", 0o644);
    let plain = ar.finish();
    let real = sha256_hex(&plain);
    // A digest the stream does not have: taken as given, so nothing hashed
    // the stream here (its reader answers for it).
    let given = format!("sha256:{}", "ab".repeat(32));
    let with = |known: &str| ApplyOptions {
        known_diff_id: Some(known.to_string()),
        ..opts(WhiteoutMode::Delete)
    };
    let dir = tempfile::tempdir().unwrap();
    let st = apply(plain.as_slice(), dir.path(), &with(&given)).unwrap();
    assert_eq!(st.diff_id, given);
    assert_eq!(st.bytes, plain.len() as u64);
    assert_eq!(
        fs::read(dir.path().join("f")).unwrap(),
        b"checked by its reader"
    );
    // A compressed stream is hashed whatever the caller says: its
    // reader's check was of the compressed bytes.
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&plain).unwrap();
        e.finish().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        apply(gz.as_slice(), dir.path(), &with(&given))
            .unwrap()
            .diff_id,
        real
    );
    // A malformed digest is refused, not taken.
    let dir = tempfile::tempdir().unwrap();
    expect_err(
        apply(plain.as_slice(), dir.path(), &with("sha256:xyz")),
        "malformed",
        "not a sha256 digest",
    );
}

#[test]
fn plain_starting_writeback_early_changes_no_byte() {
    // Files on both sides of the size from which writeback starts early,
    // one with a hole: the same tree either way.
    let mut big = vec![0u8; 1 << 20];
    big[..4096].fill(9);
    big[(1 << 20) - 4096..].fill(3);
    let mut ar = Ar::new();
    ar.file("small", b"s", 0o644)
        .file("big", &big, 0o640)
        .file("d/mid", &[5u8; 64 << 10], 0o600);
    let bytes = ar.finish();
    let dir = tempfile::tempdir().unwrap();
    let (plain, early) = (dir.path().join("plain"), dir.path().join("early"));
    fs::create_dir(&plain).unwrap();
    fs::create_dir(&early).unwrap();
    apply_bytes(&bytes, &plain).unwrap();
    let mut o = opts(WhiteoutMode::Delete);
    o.start_writeback = true;
    apply(bytes.as_slice(), &early, &o).unwrap();
    assert_same_tree(&plain, &early, &CompareOpts::default());
    assert_eq!(fs::read(early.join("big")).unwrap(), big);
    // The hole in the middle stayed one.
    assert!(md(&early.join("big")).blocks() * 512 < 1 << 20);
}

/// Files' content passes through one buffer the applier keeps from file to
/// file: a small file after a large one, a file of zero blocks between
/// data, and one longer than the buffer with a hole across its end each
/// get exactly their own bytes and holes, from a plain and a gzip stream.
#[test]
fn plain_files_of_every_size_in_a_row_get_exactly_their_own_bytes() {
    let noise = |n: usize, seed: u32| -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2654435761) ^ seed).to_le_bytes()[1] | 1)
            .collect()
    };
    let mut across = noise(600 << 10, 3);
    // Zeros over the buffer's end (256 KiB), block-aligned: a hole.
    across[(240 << 10)..(280 << 10)].fill(0);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("big", noise(1 << 20, 1)),
        ("small", noise(100, 2)),
        ("zeros", vec![0u8; 64 << 10]),
        ("across", across),
        ("empty", vec![]),
        ("odd", noise(4097, 4)),
    ];
    let mut ar = Ar::new();
    for (name, data) in &files {
        ar.file(name, data, 0o644);
    }
    let tar = ar.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    for (how, bytes) in [("plain", &tar), ("gzip", &gz)] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        apply_bytes(bytes, &root).unwrap();
        for (name, data) in &files {
            let got = fs::read(root.join(name)).unwrap();
            assert!(got == *data, "{how}: {name} differs");
        }
        assert_eq!(md(&root.join("zeros")).blocks(), 0, "{how}");
        let across = md(&root.join("across")).blocks() * 512;
        assert!(across <= (600 - 40) << 10, "{how}: across takes {across}");
    }
}
