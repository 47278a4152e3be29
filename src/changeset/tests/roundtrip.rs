//! Round trips: layers applied in delete mode give trees A1..An; the export
//! of A(n-1) → An applied onto a copy of A(n-1) gives An again.

use super::whiteouts::layers;
use super::*;

/// `a` removed and made again in one layer (a new inode in delete mode).
fn layer4() -> Vec<u8> {
    let mut ar = Ar::new();
    ar.mtime = T0 + 30;
    ar.marker(".wh.a")
        .dir("a", 0o755)
        .file("a/fresh", b"fresh", 0o644)
        .dir("b", 0o711)
        .file("b/back", b"back", 0o644);
    ar.finish()
}

fn all_layers() -> Vec<Vec<u8>> {
    let mut ls = layers();
    ls.push(layer4());
    ls
}

fn has_opaque(bytes: &[u8]) -> bool {
    members(bytes)
        .iter()
        .any(|(p, _)| p.ends_with(".wh..wh..opq"))
}

/// Trees as plain copies (`cp -a`): every directory of a copy has a new
/// inode number, so the exports mark them all replaced (opaque, full
/// content). The round trip must hold all the same.
#[test]
fn plain_round_trip_on_copies() {
    let dir = tempfile::tempdir().unwrap();
    let mut states = vec![dir.path().join("a0")];
    fs::create_dir(&states[0]).unwrap();
    for (i, l) in all_layers().iter().enumerate() {
        let next = dir.path().join(format!("a{}", i + 1));
        copy_tree(&states[i], &next);
        apply_bytes(l, &next).unwrap();
        states.push(next);
    }
    for n in 1..states.len() {
        let parent = (n > 1).then(|| states[n - 1].as_path());
        let (e, st) = export_bytes(parent, &states[n]);
        assert_eq!(
            export_bytes(parent, &states[n]).0,
            e,
            "layer {n}: same trees, same bytes"
        );
        let gz = |_: ()| {
            let mut out = Vec::new();
            let o = ExportOptions {
                compression: Compression::Gzip,
                ..ExportOptions::default()
            };
            export_diff(parent, &states[n], &mut out, &o).unwrap();
            out
        };
        let g = gz(());
        assert_eq!(g, gz(()), "layer {n}: gzip is deterministic");
        let back = dir.path().join(format!("b{n}"));
        copy_tree(&states[n - 1], &back);
        let applied = apply_bytes(&g, &back).unwrap();
        assert_eq!(applied.diff_id, st.diff_id);
        assert_eq!(applied.compression, Compression::Gzip);
        assert_same_tree(&states[n], &back, &CompareOpts::exact());
    }
}

/// Trees as ext4 snapshots (block copies, like thin snapshots): exports are
/// minimal, match the overlay exporter byte for byte, and stack in
/// overlayfs to the same tree.
#[test]
fn root_round_trip_on_ext4_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ls = all_layers();
    let mut fss = vec![Ext4::new(d, "a0")];
    for (i, l) in ls.iter().enumerate() {
        let next = fss[i].snapshot(d, &format!("a{}", i + 1));
        apply_bytes(l, &next.mnt).unwrap();
        fss.push(next);
    }
    let mut uppers = Vec::new();
    for n in 1..fss.len() {
        let (e, st) = export_bytes(Some(&fss[n - 1].mnt), &fss[n].mnt);
        assert_eq!(export_bytes(Some(&fss[n - 1].mnt), &fss[n].mnt).0, e);
        assert!(!members(&e).iter().any(|(p, _)| p.starts_with("lost+found")));
        // Layer 2's opaque "b" kept its inode and shows as whiteouts. Layer
        // 4 removed "a" and made it again: ext4 may give the new directory
        // the old inode number (then: whiteouts), or another (then: opaque).
        if n < 4 {
            assert!(!has_opaque(&e), "layer {n}: {:?}", members(&e));
        } else {
            let p: Vec<String> = members(&e).into_iter().map(|(p, _)| p).collect();
            assert!(
                p.contains(&"a/.wh..wh..opq".to_string()) || p.contains(&"a/.wh.y".to_string()),
                "{p:?}"
            );
        }
        if n == 2 {
            let p: Vec<String> = members(&e).into_iter().map(|(p, _)| p).collect();
            assert!(
                p.contains(&"b/.wh.keep".to_string()) && p.contains(&"b/.wh.old".to_string()),
                "{p:?}"
            );
        }
        // Onto another snapshot of the parent.
        let b = fss[n - 1].snapshot(d, &format!("b{n}"));
        let applied = apply_bytes(&e, &b.mnt).unwrap();
        assert_eq!(applied.diff_id, st.diff_id);
        assert_same_tree(&fss[n].mnt, &b.mnt, &CompareOpts::exact());
        if !has_opaque(&e) {
            // A fixpoint: the tree it made exports to the same bytes.
            assert_eq!(
                export_bytes(Some(&fss[n - 1].mnt), &b.mnt).0,
                e,
                "layer {n}"
            );
        }
        drop(b);
        // The overlay way: a layer directory exporting to the same bytes.
        let u = d.join(format!("u{n}"));
        fs::create_dir(&u).unwrap();
        apply(e.as_slice(), &u, &opts(WhiteoutMode::Overlay)).unwrap();
        let mut o = Vec::new();
        let ost = export_overlay_layer(&u, &mut o, &ExportOptions::default()).unwrap();
        assert_eq!(members(&o), members(&e), "layer {n}");
        assert_eq!(o, e, "layer {n}: both exporters, the same bytes");
        assert_eq!(ost.diff_id, st.diff_id);
        uppers.push(u);
    }
    // The overlay layers, stacked, show the last tree.
    let mnt = d.join("merged");
    let _m = mount_overlay(&uppers, &mnt);
    let o = CompareOpts {
        skip_lost_found: true,
        links: false,
        dir_mtimes: true,
        whiteout_mtimes: true,
    };
    assert_same_tree(&fss.last().unwrap().mnt, &mnt, &o);
}
