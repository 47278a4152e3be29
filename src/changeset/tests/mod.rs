//! Tests of the changeset module. Tier first in every name: `plain_` needs
//! no privileges, `root_` needs root (other owners, device nodes, trusted.*
//! xattrs, mounts).

mod entries;
mod export;
mod hostile;
mod prop;
mod roundtrip;
mod split;
mod unlayer;
mod whiteouts;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::*;

/// Base mtime of test entries.
pub(super) const T0: u64 = 1_600_000_000;

pub(super) fn me() -> (u64, u64) {
    (
        crate::fsys::sys::geteuid() as u64,
        crate::fsys::sys::getegid() as u64,
    )
}

/// Builds test archives with the `tar` crate.
pub(super) struct Ar {
    b: tar::Builder<Vec<u8>>,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: u64,
}

impl Ar {
    /// Entries owned by the current user, mtime `T0`.
    pub(super) fn new() -> Self {
        let (uid, gid) = me();
        Ar {
            b: tar::Builder::new(Vec::new()),
            uid,
            gid,
            mtime: T0,
        }
    }

    pub(super) fn header(&self, ty: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_mtime(self.mtime);
        h.set_size(0);
        h
    }

    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.b
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    pub(super) fn xattrs(&mut self, xattrs: &[(&str, &[u8])]) -> &mut Self {
        let recs: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(n, v)| (format!("SCHILY.xattr.{n}"), *v))
            .collect();
        self.b
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self
    }

    pub(super) fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut h = self.header(EntryType::Regular, mode);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub(super) fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = self.header(EntryType::Directory, mode);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub(super) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.header(EntryType::Symlink, 0o777);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub(super) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.header(EntryType::Link, 0o644);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub(super) fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = self.header(EntryType::Fifo, mode);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub(super) fn dev(
        &mut self,
        path: &str,
        ty: EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let mut h = self.header(ty, mode);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// An empty regular file (a whiteout or opaque marker).
    pub(super) fn marker(&mut self, path: &str) -> &mut Self {
        let mut h = self.header(EntryType::Regular, 0o600);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    /// An entry whose name and link name bytes go into the header as they
    /// are (no checks).
    pub(super) fn raw(
        &mut self,
        name: &[u8],
        ty: EntryType,
        data: &[u8],
        link: Option<&[u8]>,
    ) -> &mut Self {
        let mut h = self.header(ty, 0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// A header appended as it is (the caller sets the checksum).
    pub(super) fn header_raw(&mut self, h: &Header, data: &[u8]) -> &mut Self {
        self.b.append(h, data).unwrap();
        self
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }

    /// The bytes so far, without end-of-archive blocks.
    pub(super) fn unfinished(mut self) -> Vec<u8> {
        std::mem::take(self.b.get_mut())
    }
}

pub(super) fn opts(mode: WhiteoutMode) -> ApplyOptions {
    ApplyOptions::new(mode)
}

pub(super) fn apply_bytes(bytes: &[u8], root: &Path) -> Result<ApplyStats, ChangesetError> {
    apply(bytes, root, &opts(WhiteoutMode::Delete))
}

pub(super) fn kind(e: &ChangesetError) -> &'static str {
    match e {
        ChangesetError::Hostile { .. } => "hostile",
        ChangesetError::Malformed { .. } => "malformed",
        ChangesetError::Truncated { .. } => "truncated",
        ChangesetError::Unsupported { .. } => "unsupported",
        ChangesetError::Limit { .. } => "limit",
        ChangesetError::Io { .. } => "io",
        ChangesetError::Corrupt { .. } => "corrupt",
        ChangesetError::Irreproducible { .. } => "irreproducible",
    }
}

/// Asserts `r` failed with an error of `want` kind whose message contains
/// `text`; returns the message.
#[track_caller]
pub(super) fn expect_err<T: std::fmt::Debug>(
    r: Result<T, ChangesetError>,
    want: &str,
    text: &str,
) -> String {
    let e = r.expect_err("should have failed");
    let msg = e.to_string();
    assert_eq!(kind(&e), want, "wrong kind: {msg}");
    assert!(msg.contains(text), "message {msg:?} lacks {text:?}");
    assert!(!msg.contains('\n'), "message spans lines: {msg:?}");
    eprintln!("expected error: {msg}");
    msg
}

/// A temp dir with `root/` (the layer) beside `sentinel/` and other files
/// that no apply may touch.
pub(super) struct Sandbox {
    pub(super) dir: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) sentinel: PathBuf,
    before: BTreeMap<PathBuf, Node>,
}

impl Sandbox {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let sentinel = dir.path().join("sentinel");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(sentinel.join("sub")).unwrap();
        fs::write(sentinel.join("secret"), b"do not touch").unwrap();
        fs::write(sentinel.join("sub/inner"), b"nor this").unwrap();
        fs::write(dir.path().join("outside"), b"outside").unwrap();
        let mut s = Sandbox {
            dir,
            root,
            sentinel,
            before: BTreeMap::new(),
        };
        s.before = s.outside();
        s
    }

    /// Everything in the temp dir except the root's content.
    fn outside(&self) -> BTreeMap<PathBuf, Node> {
        let mut all = tree(self.dir.path(), &CompareOpts::default());
        all.retain(|p, _| !p.starts_with("root"));
        all
    }

    /// Takes the current state outside the root as the one to keep.
    pub(super) fn rebase(&mut self) {
        self.before = self.outside();
    }

    #[track_caller]
    pub(super) fn assert_untouched(&self) {
        let now = self.outside();
        assert_eq!(now, self.before, "something outside the root changed");
    }
}

/// One node of a tree, as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Node {
    pub(super) kind: &'static str,
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Seconds (exports carry whole seconds).
    pub(super) mtime: i64,
    pub(super) size: u64,
    /// sha256 of a file's content.
    pub(super) content: Option<String>,
    pub(super) target: Option<Vec<u8>>,
    pub(super) rdev: u64,
    pub(super) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For a multiply-linked file: the first path (in order) of its inode.
    pub(super) link_group: Option<PathBuf>,
}

#[derive(Default, Clone)]
pub(super) struct CompareOpts {
    pub(super) skip_lost_found: bool,
    pub(super) links: bool,
    pub(super) dir_mtimes: bool,
    /// Whether whiteout devices (char 0:0) keep their mtimes: a whiteout
    /// is made at apply time and gets that time, as containerd's and
    /// Docker's overlay appliers leave theirs, so two applies of one
    /// archive may differ there by a second.
    pub(super) whiteout_mtimes: bool,
}

impl CompareOpts {
    pub(super) fn exact() -> Self {
        CompareOpts {
            skip_lost_found: true,
            links: true,
            dir_mtimes: true,
            whiteout_mtimes: true,
        }
    }
}

/// Every node under `root` (not the root itself), by relative path.
pub(super) fn tree(root: &Path, o: &CompareOpts) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    walk(root, Path::new(""), o, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    rel: &Path,
    o: &CompareOpts,
    out: &mut BTreeMap<PathBuf, Node>,
    inodes: &mut BTreeMap<u64, PathBuf>,
) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        if rel.as_os_str().is_empty() && o.skip_lost_found && name == "lost+found" {
            continue;
        }
        let r = rel.join(&name);
        let p = root.join(&r);
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let content = ft.is_file().then(|| {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&p).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            format!("{:x}", h.finalize())
        });
        let target = ft
            .is_symlink()
            .then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec());
        let xattrs = xattr::list(&p)
            .unwrap()
            .filter(|n| is_exported_xattr(n.as_bytes()))
            .map(|n| {
                (
                    n.as_bytes().to_vec(),
                    xattr::get(&p, &n).unwrap().unwrap_or_default(),
                )
            })
            .collect();
        let link_group = (o.links && ft.is_file() && md.nlink() > 1)
            .then(|| inodes.entry(md.ino()).or_insert_with(|| r.clone()).clone());
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: if (ft.is_dir() && !o.dir_mtimes)
                || (!o.whiteout_mtimes && ft.is_char_device() && md.rdev() == 0)
            {
                0
            } else {
                md.mtime()
            },
            size: if ft.is_dir() { 0 } else { md.size() },
            content,
            target,
            rdev: md.rdev(),
            xattrs,
            link_group,
        };
        out.insert(r.clone(), node);
        if ft.is_dir() {
            walk(root, &r, o, out, inodes);
        }
    }
}

#[track_caller]
pub(super) fn assert_same_tree(a: &Path, b: &Path, o: &CompareOpts) {
    let ta = tree(a, o);
    let tb = tree(b, o);
    let mut diffs = Vec::new();
    for (p, na) in &ta {
        match tb.get(p) {
            None => diffs.push(format!("only in {}: {}", a.display(), p.display())),
            Some(nb) if nb != na => diffs.push(format!("{}: {na:?} != {nb:?}", p.display())),
            _ => {}
        }
    }
    for p in tb.keys().filter(|p| !ta.contains_key(*p)) {
        diffs.push(format!("only in {}: {}", b.display(), p.display()));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

/// Runs a command, panicking with its output if it fails.
#[track_caller]
pub(super) fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cp -a SRC/. DST` (DST made if missing).
pub(super) fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    run(
        "cp",
        &["-a", &format!("{}/.", src.display()), dst.to_str().unwrap()],
    );
}

/// The paths of an uncompressed archive's members, in order, with their
/// type bytes.
pub(super) fn members(bytes: &[u8]) -> Vec<(String, char)> {
    let mut ar = tar::Archive::new(bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().entry_type().as_byte() as char,
            )
        })
        .collect()
}

pub(super) fn export_bytes(parent: Option<&Path>, child: &Path) -> (Vec<u8>, ExportStats) {
    let mut out = Vec::new();
    let st = export_diff(parent, child, &mut out, &ExportOptions::default()).unwrap();
    (out, st)
}

pub(super) fn sha256_hex(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// An ext4 filesystem in an image file, loop-mounted (root tier). Stands in
/// for a thin device: copying the image is a snapshot (inode numbers kept).
pub(super) struct Ext4 {
    pub(super) img: PathBuf,
    pub(super) mnt: PathBuf,
    mounted: bool,
}

impl Ext4 {
    pub(super) fn new(dir: &Path, name: &str) -> Self {
        let img = dir.join(format!("{name}.img"));
        let mnt = dir.join(name);
        fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        run(
            "mkfs.ext4",
            &["-q", "-F", "-N", "4096", img.to_str().unwrap()],
        );
        let mut e = Ext4 {
            img,
            mnt,
            mounted: false,
        };
        e.mount();
        e
    }

    fn mount(&mut self) {
        fs::create_dir_all(&self.mnt).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop",
                self.img.to_str().unwrap(),
                self.mnt.to_str().unwrap(),
            ],
        );
        self.mounted = true;
    }

    fn umount(&mut self) {
        if self.mounted {
            run("umount", &[self.mnt.to_str().unwrap()]);
            self.mounted = false;
        }
    }

    /// A block-level copy, mounted at `dir/name`.
    pub(super) fn snapshot(&mut self, dir: &Path, name: &str) -> Ext4 {
        self.umount();
        let img = dir.join(format!("{name}.img"));
        run(
            "cp",
            &[
                "--sparse=always",
                self.img.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
        self.mount();
        let mut e = Ext4 {
            img,
            mnt: dir.join(name),
            mounted: false,
        };
        e.mount();
        e
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.mnt).status();
        }
    }
}

/// A mount to undo on drop.
pub(super) struct Mounted(pub(super) PathBuf);

/// Mounts overlay layer directories (bottom first) read-only at `mnt`
/// (made here); unmounted when the guard drops.
pub(super) fn mount_overlay(uppers: &[PathBuf], mnt: &Path) -> Mounted {
    fs::create_dir(mnt).unwrap();
    let lower = uppers
        .iter()
        .rev()
        .map(|u| u.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={lower}"),
            mnt.to_str().unwrap(),
        ],
    );
    Mounted(mnt.to_path_buf())
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
