//! Archives that try to write outside the root: each one fails with the
//! right kind of error, and nothing outside the root changes.

use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;

/// Applies `bytes` in both modes in fresh sandboxes, resolving with
/// `openat2` where the kernel has it and then with the component walk alone
/// (as on an older kernel); each must fail with `want` / `text` and leave
/// the outside untouched. `prep` plants things in the root first.
#[track_caller]
fn refused(bytes: &[u8], want: &str, text: &str, prep: &dyn Fn(&Sandbox)) -> String {
    let mut msg = String::new();
    for fallback in [false, true] {
        for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
            let mut sb = Sandbox::new();
            prep(&sb);
            sb.rebase();
            let r = if fallback {
                crate::fsys::walk::with_fallback_only(|| apply(bytes, &sb.root, &opts(mode)))
            } else {
                apply(bytes, &sb.root, &opts(mode))
            };
            msg = expect_err(r, want, text);
            sb.assert_untouched();
        }
    }
    msg
}

fn nothing(_: &Sandbox) {}

/// `root/lower -> <abs sentinel>`, `root/rel -> ../sentinel`.
fn plant_links(sb: &Sandbox) {
    symlink(&sb.sentinel, sb.root.join("lower")).unwrap();
    symlink("../sentinel", sb.root.join("rel")).unwrap();
}

#[test]
fn plain_dotdot_paths_are_refused() {
    for (name, text) in [
        ("../escape", "\"../escape\" leaves the layer root"),
        ("./../escape", "leaves the layer root"),
        ("a/../../sentinel/secret", "contains a \"..\" component"),
        ("a/../b", "contains a \"..\" component"),
        ("a/..", "contains a \"..\" component"),
    ] {
        let mut ar = Ar::new();
        ar.dir("a", 0o755)
            .raw(name.as_bytes(), EntryType::Regular, b"pwned", None);
        let msg = refused(&ar.finish(), "hostile", text, &nothing);
        assert!(msg.starts_with("hostile changeset: entry "), "{msg}");
    }
}

#[test]
fn plain_absolute_paths_are_refused() {
    let sb = Sandbox::new();
    let target = format!("{}/pwned", sb.sentinel.display());
    let mut ar = Ar::new();
    ar.raw(target.as_bytes(), EntryType::Regular, b"pwned", None);
    refused(&ar.finish(), "hostile", "is an absolute path", &nothing);
    let mut ar = Ar::new();
    ar.raw(b"/etc/passwd", EntryType::Regular, b"pwned", None);
    let msg = refused(&ar.finish(), "hostile", "is an absolute path", &nothing);
    assert_eq!(
        msg,
        "hostile changeset: entry \"/etc/passwd\" is an absolute path"
    );
}

#[test]
fn plain_long_names_and_pax_paths_are_checked_too() {
    // A GNU long name record carrying "../".
    let long = format!("../{}", "x".repeat(150));
    let mut ar = Ar::new();
    let mut l = Header::new_gnu();
    l.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    l.set_entry_type(EntryType::GNULongName);
    l.set_size(long.len() as u64 + 1);
    l.set_mode(0o644);
    l.set_cksum();
    ar.header_raw(&l, format!("{long}\0").as_bytes());
    ar.raw(b"short", EntryType::Regular, b"pwned", None);
    refused(&ar.finish(), "hostile", "leaves the layer root", &nothing);

    // A PAX path.
    let mut ar = Ar::new();
    ar.pax(&[("path", b"../sentinel/pwned")]);
    ar.raw(b"innocent", EntryType::Regular, b"pwned", None);
    refused(
        &ar.finish(),
        "hostile",
        "\"../sentinel/pwned\" leaves the layer root",
        &nothing,
    );

    // A PAX linkpath for a hard link.
    let mut ar = Ar::new();
    ar.pax(&[("linkpath", b"../outside")]);
    ar.raw(b"l", EntryType::Link, b"", Some(b"innocent"));
    refused(
        &ar.finish(),
        "hostile",
        "hard link target \"../outside\" leaves the layer root",
        &nothing,
    );
}

#[test]
fn plain_symlink_from_the_same_archive_is_not_followed() {
    for target in ["../sentinel", "/"] {
        let sb = Sandbox::new();
        let target = if target == "/" {
            sb.sentinel.to_str().unwrap().to_string()
        } else {
            target.to_string()
        };
        let mut ar = Ar::new();
        ar.symlink("a", &target).file("a/pwned", b"pwned", 0o644);
        let msg = refused(
            &ar.finish(),
            "hostile",
            "passes through symlink \"a\"",
            &nothing,
        );
        assert_eq!(
            msg,
            "hostile changeset: entry \"a/pwned\" passes through symlink \"a\""
        );
        // Deeper: a directory, then a symlink replacing it, then a path through it.
        let mut ar = Ar::new();
        ar.dir("d", 0o755)
            .dir("d/e", 0o755)
            .symlink("d", &target)
            .dir("d/e", 0o755);
        refused(
            &ar.finish(),
            "hostile",
            "passes through symlink \"d\"",
            &nothing,
        );
    }
}

#[test]
fn plain_pre_existing_symlinks_are_not_followed() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            {
                let mut ar = Ar::new();
                ar.file("lower/pwned", b"pwned", 0o644);
                ar.finish()
            },
            "passes through symlink \"lower\"",
        ),
        (
            {
                let mut ar = Ar::new();
                ar.dir("rel/sub/new", 0o777);
                ar.finish()
            },
            "passes through symlink \"rel\"",
        ),
        (
            {
                let mut ar = Ar::new();
                ar.symlink("lower/sub", "/");
                ar.finish()
            },
            "passes through symlink \"lower\"",
        ),
        (
            {
                let mut ar = Ar::new();
                ar.fifo("rel/fifo", 0o644);
                ar.finish()
            },
            "passes through symlink \"rel\"",
        ),
        // Whiteouts and opaque markers must not delete through a symlink.
        (
            {
                let mut ar = Ar::new();
                ar.marker("lower/.wh.secret");
                ar.finish()
            },
            "passes through symlink \"lower\"",
        ),
        (
            {
                let mut ar = Ar::new();
                ar.marker("rel/sub/.wh..wh..opq");
                ar.finish()
            },
            "passes through symlink \"rel\"",
        ),
        // A hard link placed through one, or pointing through one.
        (
            {
                let mut ar = Ar::new();
                ar.file("f", b"x", 0o644).hardlink("lower/l", "f");
                ar.finish()
            },
            "passes through symlink \"lower\"",
        ),
        (
            {
                let mut ar = Ar::new();
                ar.hardlink("l", "lower/secret");
                ar.finish()
            },
            "hard link target \"lower/secret\" passes through symlink \"lower\"",
        ),
    ];
    for (bytes, text) in cases {
        refused(&bytes, "hostile", text, &plant_links);
    }
}

#[test]
fn plain_lower_layer_symlink_inside_the_root_is_not_followed_either() {
    // lib -> usr/lib points inside the root, and still is not a path.
    let mut sb = Sandbox::new();
    fs::create_dir_all(sb.root.join("usr/lib")).unwrap();
    symlink("usr/lib", sb.root.join("lib")).unwrap();
    sb.rebase();
    let mut ar = Ar::new();
    ar.file("lib/x", b"x", 0o644);
    expect_err(
        apply_bytes(&ar.finish(), &sb.root),
        "hostile",
        "passes through symlink \"lib\"",
    );
    assert!(!sb.root.join("usr/lib/x").exists());
    sb.assert_untouched();
}

#[test]
fn plain_symlink_as_last_component_is_replaced_not_followed() {
    for (mk, want) in [
        (
            (|ar: &mut Ar| {
                ar.file("lower", b"now a file", 0o600);
            }) as fn(&mut Ar),
            "file",
        ),
        (
            |ar: &mut Ar| {
                ar.dir("lower", 0o700);
            },
            "dir",
        ),
        (
            |ar: &mut Ar| {
                ar.symlink("lower", "elsewhere");
            },
            "symlink",
        ),
        (
            |ar: &mut Ar| {
                ar.fifo("lower", 0o600);
            },
            "fifo",
        ),
    ] {
        let mut sb = Sandbox::new();
        plant_links(&sb);
        sb.rebase();
        let mut ar = Ar::new();
        mk(&mut ar);
        apply_bytes(&ar.finish(), &sb.root).unwrap();
        let t = tree(&sb.root, &CompareOpts::default());
        assert_eq!(t[Path::new("lower")].kind, want);
        sb.assert_untouched();
    }
}

#[test]
fn plain_bad_hard_links_are_refused() {
    // Outside the root.
    let passwd_links = fs::metadata("/etc/passwd").map(|m| m.nlink()).ok();
    let mut ar = Ar::new();
    ar.raw(b"l", EntryType::Link, b"", Some(b"/etc/passwd"));
    refused(
        &ar.finish(),
        "hostile",
        "hard link target \"/etc/passwd\" is an absolute path",
        &nothing,
    );
    assert_eq!(
        fs::metadata("/etc/passwd").map(|m| m.nlink()).ok(),
        passwd_links
    );
    let mut ar = Ar::new();
    ar.raw(b"l", EntryType::Link, b"", Some(b"../outside"));
    refused(
        &ar.finish(),
        "hostile",
        "hard link target \"../outside\" leaves the layer root",
        &nothing,
    );
    // Not there.
    let mut ar = Ar::new();
    ar.hardlink("l", "missing");
    refused(
        &ar.finish(),
        "malformed",
        "hard link target \"missing\" does not exist",
        &nothing,
    );
    let mut ar = Ar::new();
    ar.hardlink("l", "nodir/missing");
    refused(&ar.finish(), "malformed", "does not exist", &nothing);
    // Not a regular file: a symlink (to the sentinel), a directory.
    let mut ar = Ar::new();
    ar.hardlink("l", "lower");
    refused(
        &ar.finish(),
        "unsupported",
        "hard link target \"lower\" is not a regular file",
        &plant_links,
    );
    let mut ar = Ar::new();
    ar.dir("d", 0o755).hardlink("l", "d");
    refused(
        &ar.finish(),
        "unsupported",
        "is not a regular file",
        &nothing,
    );
    // Itself.
    let mut ar = Ar::new();
    ar.file("f", b"x", 0o644).hardlink("f", "f");
    refused(&ar.finish(), "malformed", "links to itself", &nothing);
}

#[test]
fn plain_whiteout_names_are_checked() {
    let mut ar = Ar::new();
    ar.dir("d", 0o755).marker("d/.wh...");
    refused(
        &ar.finish(),
        "hostile",
        "whites out the parent directory",
        &nothing,
    );
    let mut ar = Ar::new();
    ar.marker("d/.wh.");
    refused(&ar.finish(), "malformed", "names no entry", &nothing);
    let mut ar = Ar::new();
    ar.raw(b"../.wh.outside", EntryType::Regular, b"", None);
    refused(&ar.finish(), "hostile", "leaves the layer root", &nothing);
    let mut ar = Ar::new();
    ar.file(".wh.d/x", b"x", 0o644);
    refused(
        &ar.finish(),
        "unsupported",
        "reserved whiteout prefix",
        &nothing,
    );
    let mut ar = Ar::new();
    ar.marker(".wh..wh.plnk");
    refused(&ar.finish(), "unsupported", "aufs", &nothing);
}

#[test]
fn plain_root_cannot_be_replaced() {
    let mut ar = Ar::new();
    ar.raw(b"./", EntryType::Regular, b"", None);
    refused(&ar.finish(), "hostile", "replaces the layer root", &nothing);
    let mut ar = Ar::new();
    ar.raw(b".", EntryType::Symlink, b"", Some(b"/"));
    refused(&ar.finish(), "hostile", "replaces the layer root", &nothing);
}

#[test]
fn plain_file_under_a_file_is_malformed() {
    let mut ar = Ar::new();
    ar.file("f", b"x", 0o644).file("f/x", b"x", 0o644);
    refused(
        &ar.finish(),
        "malformed",
        "parent \"f\" is not a directory",
        &nothing,
    );
}

#[test]
fn plain_lower_layer_is_read_beneath_its_root() {
    // The lower tree's `a` is a symlink out of it, to a directory with its
    // own metadata; this archive replaces `a` with a directory, which hides
    // the lower `a` and all below it: the parent `a/ssl` it implies gets
    // the defaults, as in Delete mode, not the metadata found through the
    // link.
    let sb = Sandbox::new();
    let lower = sb.dir.path().join("lower");
    fs::create_dir(&lower).unwrap();
    let host = sb.dir.path().join("hostish");
    fs::create_dir_all(host.join("ssl")).unwrap();
    fs::set_permissions(host.join("ssl"), fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&host, lower.join("a")).unwrap();
    let mut ar = Ar::new();
    ar.dir("a", 0o755).file("a/ssl/x", b"x", 0o644);
    let bytes = ar.finish();
    for fallback in [false, true] {
        let layer = sb.dir.path().join(format!("layer{fallback}"));
        fs::create_dir(&layer).unwrap();
        let mut o = opts(WhiteoutMode::Overlay);
        o.lower = Some(lower.clone());
        let go = || apply(bytes.as_slice(), &layer, &o).unwrap();
        if fallback {
            crate::fsys::walk::with_fallback_only(go);
        } else {
            go();
        }
        let md = fs::metadata(layer.join("a/ssl")).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        assert!(layer.join("a/ssl/x").is_file());
    }
    // Where the lower parent is a real directory, its metadata is copied.
    fs::remove_file(lower.join("a")).unwrap();
    fs::create_dir_all(lower.join("b/ssl")).unwrap();
    fs::set_permissions(lower.join("b/ssl"), fs::Permissions::from_mode(0o700)).unwrap();
    let mut ar = Ar::new();
    ar.file("b/ssl/x", b"x", 0o644);
    let layer = sb.dir.path().join("layer-b");
    fs::create_dir(&layer).unwrap();
    let mut o = opts(WhiteoutMode::Overlay);
    o.lower = Some(lower.clone());
    apply(ar.finish().as_slice(), &layer, &o).unwrap();
    let md = fs::metadata(layer.join("b/ssl")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o700);
}

/// Found by the property tests (`prop.rs`): the `tar` crate's own errors
/// name a member by its raw bytes, and a newline there made the message
/// two lines. Minimized: a member whose PAX size (0) leaves its 7 data
/// bytes to be read as the next header, whose "name" ends in a newline.
#[test]
fn plain_errors_of_the_tar_crate_stay_on_one_line() {
    let mut ar = Ar::new();
    ar.pax(&[("size", b"0")]);
    let mut h = ar.header(EntryType::Regular, 0o644);
    h.set_path("f").unwrap();
    h.set_size(7);
    h.set_cksum();
    ar.header_raw(&h, b"\x04\x05\x06\x07\x08\t\n");
    let msg = refused(
        &ar.finish(),
        "malformed",
        "when getting cksum for \\u{4}\\u{5}\\u{6}\\u{7}\\u{8}\\t\\n (after entry \"f\")",
        &nothing,
    );
    assert!(
        msg.starts_with("malformed changeset: numeric field"),
        "{msg}"
    );
}
