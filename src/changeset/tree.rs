//! Reading trees for an export: one node's metadata, and a directory's
//! nodes, without following symlinks and without leaving the filesystem.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use super::error::{io_err, ChangesetError};
use super::path::child_key;
use super::{is_exported_xattr, is_overlay_xattr, overlay_xattr_names};
use crate::fsys::sys::{self, FileType};

type Result<T, E = ChangesetError> = std::result::Result<T, E>;

/// One file's metadata, as an export compares and writes it.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) name: Vec<u8>,
    pub(crate) kind: FileType,
    /// Permission bits with setuid/setgid/sticky.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, u32),
    pub(crate) rdev: u64,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) nlink: u64,
    /// A symlink's target.
    pub(crate) target: Vec<u8>,
    /// The xattrs an export writes.
    pub(crate) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// overlayfs's own xattrs (`trusted.overlay.*`, `user.overlay.*`).
    pub(crate) overlay: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Node {
    /// The value of overlayfs xattr `trusted.overlay.NAME` (or the
    /// `user.overlay.` one of an unprivileged overlay).
    pub(crate) fn overlay_attr(&self, name: &str) -> Option<&[u8]> {
        overlay_xattr_names(name)
            .iter()
            .find_map(|k| self.overlay.get(k.as_bytes()).map(Vec::as_slice))
    }
}

/// Whether two nodes at the same path count as unchanged: same type and
/// metadata (for directories: mode, owner, mtime, xattrs), as Docker's naive
/// diff decides; contents are not compared.
pub(crate) fn same_meta(a: &Node, b: &Node) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime == b.mtime
        && a.xattrs == b.xattrs
        && (a.kind == FileType::Directory
            || (a.size == b.size && a.rdev == b.rdev && a.target == b.target))
}

/// Sockets (and types unknown to us), which tar cannot hold: exports skip
/// them.
pub(crate) fn untarrable(kind: FileType) -> bool {
    matches!(kind, FileType::Socket | FileType::Unknown)
}

/// The node `dir/name`; `None` if it vanished. `key` is its path (for
/// messages).
pub(crate) fn scan(dir: BorrowedFd, name: &[u8], key: &[u8]) -> Result<Option<Node>> {
    let c = sys::cstring(name).map_err(io_err("naming", key))?;
    let Some(st) = sys::lstatat(dir, &c).map_err(io_err("inspecting", key))? else {
        return Ok(None);
    };
    let kind = st.file_type();
    let target = if kind == FileType::Symlink {
        sys::readlinkat(dir, &c).map_err(io_err("reading the symlink", key))?
    } else {
        Vec::new()
    };
    let mut xattrs = BTreeMap::new();
    let mut overlay = BTreeMap::new();
    if !untarrable(kind) {
        let p = sys::proc_path(dir, name);
        // l* calls: the last component is not followed.
        let names: Vec<std::ffi::OsString> = match xattr::list(&p) {
            Ok(n) => n.collect(),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(ChangesetError::io("listing xattrs of", key, e)),
        };
        for n in names {
            let nb = n.as_bytes();
            let wanted_overlay = is_overlay_xattr(nb);
            if !wanted_overlay && !is_exported_xattr(nb) {
                continue;
            }
            let v = match xattr::get(&p, &n) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => return Err(ChangesetError::io("reading an xattr of", key, e)),
            };
            if wanted_overlay {
                overlay.insert(nb.to_vec(), v);
            } else {
                xattrs.insert(nb.to_vec(), v);
            }
        }
    }
    Ok(Some(Node {
        name: name.to_vec(),
        kind,
        mode: st.perm(),
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size,
        mtime: st.mtime(),
        rdev: st.st_rdev,
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
        target,
        xattrs,
        overlay,
    }))
}

/// The nodes in directory `dir` (path `key`), sorted by name, sockets left
/// out (tar cannot hold them); `lost+found` left out when `skip_lost_found`.
/// A directory on another filesystem than `tree_dev` reads as empty.
pub(crate) fn list(
    dir: BorrowedFd,
    key: &[u8],
    tree_dev: u64,
    skip_lost_found: bool,
) -> Result<Vec<Node>> {
    let st = sys::fstat(dir).map_err(io_err("inspecting", key))?;
    if st.st_dev != tree_dev {
        return Ok(Vec::new());
    }
    let names = sys::list_dir(dir).map_err(io_err("reading directory", key))?;
    let mut nodes = Vec::with_capacity(names.len());
    for name in names {
        if skip_lost_found && name == b"lost+found" {
            continue;
        }
        let ckey = child_key(key, &name);
        if let Some(n) = scan(dir, &name, &ckey)? {
            if !untarrable(n.kind) {
                nodes.push(n);
            }
        }
    }
    Ok(nodes)
}

/// Opens subdirectory `name` of `dir` (`O_PATH`, never following).
pub(crate) fn open_sub(dir: BorrowedFd, name: &[u8], key: &[u8]) -> Result<std::os::fd::OwnedFd> {
    let c = sys::cstring(name).map_err(io_err("naming", key))?;
    sys::open_dir_path(dir, &c).map_err(|e: io::Error| ChangesetError::io("opening", key, e))
}
