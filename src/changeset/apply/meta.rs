//! Metadata: reading an entry's from its headers, and setting owners,
//! modes, times and xattrs (directories' modes and mtimes last).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use tar::EntryType;
use xattr::FileExt as _;

use super::{Applier, DirMeta, Meta, Result, Target};
use crate::changeset::error::{io_err, show, ChangesetError};
use crate::changeset::path::{join, split};
use crate::changeset::stream::RawMember;
use crate::changeset::{is_exported_xattr, is_overlay_xattr};
use crate::fsys::sys::{self, FileType, OFlags};
use crate::fsys::walk::{Links, Walked, Walker};

impl Applier<'_> {
    pub(super) fn meta(&self, raw: &RawMember, path: &[u8], etype: EntryType) -> Result<Meta> {
        let bad = |what: &str, e: io::Error| {
            ChangesetError::malformed(format!("entry {:?}: bad {what}: {e}", show(path)))
        };
        let id = |pax: Option<u64>, hdr: io::Result<u64>, what: &str| -> Result<u32> {
            let v = match pax {
                Some(v) => v,
                None => hdr.map_err(|e| bad(what, e))?,
            };
            // u32::MAX is chown's "leave it".
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| {
                    ChangesetError::malformed(format!(
                        "entry {:?}: {what} {v} is out of range",
                        show(path)
                    ))
                })
        };
        let mode = raw.header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = id(raw.pax.uid, raw.header.uid(), "uid")?;
        let gid = id(raw.pax.gid, raw.header.gid(), "gid")?;
        let mtime = match raw.pax.mtime {
            Some(t) => t,
            None => {
                let s = raw.header.mtime().map_err(|e| bad("mtime", e))?;
                (i64::try_from(s).unwrap_or(i64::MAX), 0)
            }
        };
        let plain_node =
            !(etype.is_dir() || etype.is_file() || etype.is_contiguous() || etype.is_gnu_sparse());
        let xattrs = raw
            .pax
            .xattrs
            .iter()
            // overlayfs's own namespace is never taken from a changeset;
            // Linux refuses user.* on symlinks and device nodes.
            .filter(|(n, _)| !(is_overlay_xattr(n) || (plain_node && n.starts_with(b"user."))))
            .cloned()
            .collect();
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// Owner, mode (`chmod_fd`: an O_PATH descriptor of the node, for nodes
    /// that have a mode), xattrs and mtime of a node without a descriptor of
    /// its own: a symlink, device or fifo.
    pub(super) fn finish_node(
        &self,
        parent: BorrowedFd,
        t: &Target,
        meta: &Meta,
        chmod_fd: Option<BorrowedFd>,
    ) -> Result<()> {
        sys::lchownat(parent, &t.name, meta.uid, meta.gid)
            .map_err(io_err("setting the owner of", &t.key))?;
        if let Some(fd) = chmod_fd {
            sys::chmod_path(&sys::proc_fd_path(fd), meta.mode)
                .map_err(io_err("setting the mode of", &t.key))?;
        }
        if !meta.xattrs.is_empty() {
            let p = sys::proc_path(parent, t.name.as_bytes());
            for (n, v) in &meta.xattrs {
                // The l* variant: the last component is not followed.
                xattr::set(&p, OsStr::from_bytes(n), v)
                    .map_err(io_err("setting an xattr on", &t.key))?;
            }
        }
        sys::lutimensat(parent, &t.name, meta.mtime).map_err(io_err("setting the mtime of", &t.key))
    }

    /// Delete mode: a directory that already existed and whose content this
    /// archive changes without naming it keeps its mode and mtime (set back
    /// at the end), as it keeps them under overlayfs, where the layer holds
    /// a copy-up of it with the lower metadata.
    pub(super) fn keep_mtime(&mut self, dir: &[Vec<u8>], fd: &OwnedFd, entry: &[u8]) -> Result<()> {
        let key = join(dir);
        if self.dirs.contains_key(&key) || self.mine.contains(&key) {
            return Ok(());
        }
        let st = sys::fstat(fd.as_fd()).map_err(io_err("inspecting the parent of", entry))?;
        self.dirs.insert(
            key,
            DirMeta {
                mode: st.perm(),
                mtime: st.mtime(),
            },
        );
        Ok(())
    }

    /// Gives a parent directory this archive had to make the metadata it has
    /// in the lower layers, and refuses one that is a symlink there.
    ///
    /// The lower tree is read beneath its root, never through a symlink: a
    /// parent of `key` that is a symlink there was refused when this archive
    /// made that parent, or was replaced by a directory of this archive,
    /// which hides everything below it; either way there is nothing to copy.
    /// Whether the lower tree ([`crate::changeset::ApplyOptions::lower`])
    /// has a directory at `key`, reached without following a symlink.
    pub(super) fn lower_has_dir(&self, key: &[u8]) -> bool {
        let Some(lower) = &self.lower else {
            return false;
        };
        let comps = split(key);
        let dir_path = OFlags::PATH | OFlags::DIRECTORY;
        matches!(
            Walker::new(lower.as_fd(), Links::Refuse).walk(&comps, dir_path, None),
            Ok(Walked::Found(_))
        )
    }

    pub(super) fn like_lower(&mut self, entry: &[u8], key: &[u8]) -> Result<()> {
        let Some(lower) = &self.lower else {
            return Ok(());
        };
        let comps = split(key);
        let (last, dir) = comps.split_last().expect("a made directory has a name");
        let dir_path = OFlags::PATH | OFlags::DIRECTORY;
        let Ok(Walked::Found(ldir)) =
            Walker::new(lower.as_fd(), Links::Refuse).walk(dir, dir_path, None)
        else {
            return Ok(());
        };
        let name = sys::cstring(last).map_err(io_err("naming", key))?;
        let Ok(Some(st)) = sys::lstatat(ldir.as_fd(), &name) else {
            return Ok(());
        };
        if st.file_type() == FileType::Symlink {
            return Err(ChangesetError::hostile(
                entry,
                format!("passes through symlink {:?} of a lower layer", show(key)),
            ));
        }
        if !st.is_dir() {
            return Ok(());
        }
        if let Ok(Walked::Found(p)) = self.res.walk(dir, false, &mut |_| {}) {
            let f = sys::open_dir_file(p.as_fd(), &name).map_err(io_err("opening", key))?;
            sys::fchown(f.as_fd(), st.st_uid, st.st_gid)
                .map_err(io_err("setting the owner of", key))?;
            self.dirs.insert(
                key.to_vec(),
                DirMeta {
                    mode: st.perm(),
                    mtime: st.mtime(),
                },
            );
        }
        Ok(())
    }

    /// Sets directory modes and mtimes, deepest first.
    pub(super) fn finish(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (key, m) in dirs.iter().rev() {
            let f = if key.is_empty() {
                sys::open_dir_file(self.res.root(), c".").map_err(io_err("opening", key))?
            } else {
                let comps = split(key);
                let (last, dir) = comps.split_last().expect("not the root");
                // Gone or moved behind a symlink since: nothing to set.
                let Ok(Walked::Found(p)) = self.res.walk(dir, false, &mut |_| {}) else {
                    continue;
                };
                let name = sys::cstring(last).map_err(io_err("naming", key))?;
                match sys::open_dir_file(p.as_fd(), &name) {
                    Ok(f) => f,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(ChangesetError::io("opening", key, e)),
                }
            };
            sys::fchmod(f.as_fd(), m.mode).map_err(io_err("setting the mode of", key))?;
            sys::futimens(f.as_fd(), m.mtime).map_err(io_err("setting the mtime of", key))?;
        }
        Ok(())
    }
}

/// Sets xattrs through a descriptor. With `exact`, xattrs not in the list
/// are removed first (except SELinux labels and overlayfs's own).
pub(super) fn set_xattrs_fd(
    f: &File,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    exact: bool,
    key: &[u8],
) -> Result<()> {
    if exact {
        let existing = f.list_xattr().map_err(io_err("listing xattrs of", key))?;
        for name in existing {
            let n = name.as_bytes();
            // Those a changeset never carries stay.
            if !is_exported_xattr(n) || xattrs.iter().any(|(x, _)| x == n) {
                continue;
            }
            f.remove_xattr(&name)
                .map_err(io_err("removing an xattr of", key))?;
        }
    }
    for (n, v) in xattrs {
        f.set_xattr(OsStr::from_bytes(n), v)
            .map_err(io_err("setting an xattr on", key))?;
    }
    Ok(())
}
