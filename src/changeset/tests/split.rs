//! The layout record: an applied changeset's exact bytes come back from
//! the tree, or are refused when the tree cannot give them.

use super::*;
use crate::changeset::split::reassemble;
use crate::changeset::{apply_recording, ChangesetError};

fn record(bytes: &[u8], root: &Path, mode: WhiteoutMode) -> Vec<u8> {
    let mut rec = Vec::new();
    let st = apply_recording(bytes, root, &opts(mode), &mut rec).unwrap();
    assert_eq!(st.diff_id, sha256_hex(bytes));
    rec
}

fn back(rec: &[u8], root: &Path) -> Result<Vec<u8>, ChangesetError> {
    let mut out = Vec::new();
    let r = reassemble(rec, root, &mut out)?;
    assert_eq!(r.diff_id, sha256_hex(&out));
    Ok(out)
}

/// Every kind of member, extension headers, a long name, xattrs,
/// whiteouts and trailing padding after the end-of-archive blocks: the
/// same bytes; the record holds none of the file content.
fn reassembles_to_its_exact_bytes(mode: WhiteoutMode) {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let long = format!("d/{}/f", "x".repeat(150));
    let mut a = Ar::new();
    a.dir("d", 0o755)
        .file("d/big", &big, 0o644)
        .file("d/empty", b"", 0o600)
        .hardlink("d/hl", "d/big")
        .symlink("s", "d/big")
        .fifo("fifo", 0o644)
        .marker("d/.wh.gone")
        .marker(".wh..wh..opq")
        .file(&long, b"long name", 0o644);
    a.xattrs(&[("user.k", b"v\nwith newline")])
        .file("./d/x", b"xattr", 0o644);
    let mut bytes = a.finish();
    bytes.extend_from_slice(&[0u8; 4096]);
    let sb = Sandbox::new();
    let rec = record(&bytes, &sb.root, mode);
    assert!(
        rec.len() < 4096,
        "{mode:?}: the record holds content ({} bytes)",
        rec.len()
    );
    assert_eq!(back(&rec, &sb.root).unwrap(), bytes, "{mode:?}");
}

#[test]
fn plain_an_applied_changeset_reassembles_to_its_exact_bytes() {
    reassembles_to_its_exact_bytes(WhiteoutMode::Delete);
}

/// Overlay mode makes whiteout devices and trusted.* xattrs: root.
#[test]
fn root_an_overlay_layer_reassembles_to_its_exact_bytes() {
    reassembles_to_its_exact_bytes(WhiteoutMode::Overlay);
}

/// A sparse member written by GNU tar stays sparse in the record (its data
/// is not the file's bytes) and comes back exactly.
#[test]
fn plain_gnu_tar_sparse_members_reassemble() {
    let sb = Sandbox::new();
    let src = sb.dir.path().join("src");
    fs::create_dir(&src).unwrap();
    let f = fs::File::create(src.join("sparse")).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"middle", 4 << 20).unwrap();
    fs::write(src.join("plain"), b"plain").unwrap();
    let tarball = sb.dir.path().join("s.tar");
    run(
        "tar",
        &[
            "--sparse",
            "--format=gnu",
            "-cf",
            tarball.to_str().unwrap(),
            "-C",
            src.to_str().unwrap(),
            ".",
        ],
    );
    let bytes = fs::read(&tarball).unwrap();
    let rec = record(&bytes, &sb.root, WhiteoutMode::Delete);
    assert_eq!(back(&rec, &sb.root).unwrap(), bytes);
    assert_eq!(fs::metadata(sb.root.join("sparse")).unwrap().len(), 8 << 20);
}

/// A tree that cannot give the bytes back is refused, not written as if
/// right: a file changed in length, a file gone, a path the archive wrote
/// twice (the first content is lost), a damaged record.
#[test]
fn plain_what_cannot_be_reproduced_is_refused() {
    let mut a = Ar::new();
    a.file("a", b"first", 0o644).file("b", b"bee", 0o644);
    let bytes = a.finish();

    let sb = Sandbox::new();
    let rec = record(&bytes, &sb.root, WhiteoutMode::Delete);
    fs::write(sb.root.join("a"), b"first!").unwrap();
    let e = back(&rec, &sb.root).unwrap_err();
    assert!(matches!(e, ChangesetError::Irreproducible { .. }), "{e}");
    assert!(e.to_string().contains("\"a\" has 6 bytes"), "{e}");
    fs::write(sb.root.join("a"), b"FIRST").unwrap();
    let e = back(&rec, &sb.root).unwrap_err();
    assert!(e.to_string().contains("is not the recorded one"), "{e}");
    fs::remove_file(sb.root.join("a")).unwrap();
    let e = back(&rec, &sb.root).unwrap_err();
    assert!(matches!(e, ChangesetError::Irreproducible { .. }), "{e}");
    // A symlink where the file was is not followed.
    std::os::unix::fs::symlink(&sb.sentinel, sb.root.join("a")).unwrap();
    let e = back(&rec, &sb.root).unwrap_err();
    assert!(matches!(e, ChangesetError::Irreproducible { .. }), "{e}");

    let mut twice = Ar::new();
    twice.file("a", b"one", 0o644).file("a", b"two", 0o644);
    let bytes = twice.finish();
    let sb = Sandbox::new();
    let rec = record(&bytes, &sb.root, WhiteoutMode::Delete);
    let e = back(&rec, &sb.root).unwrap_err();
    assert!(e.to_string().contains("is not the recorded one"), "{e}");

    let mut damaged = rec.clone();
    let n = damaged.len();
    damaged[n / 2] ^= 0xff;
    damaged.truncate(n - 3);
    let e = back(&damaged, &sb.root).unwrap_err();
    assert!(matches!(e, ChangesetError::Corrupt { .. }), "{e}");
    let e = back(b"not a record", &sb.root).unwrap_err();
    assert!(matches!(e, ChangesetError::Corrupt { .. }), "{e}");
}
