//! Making the entries themselves: files, directories, symlinks, devices
//! and fifos, after clearing what was at their path.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use tar::EntryType;

use super::content::{start_writeback, write_content, EARLY_WRITEBACK_FROM};
use super::entry::ReadEntry;
use super::meta::set_xattrs_fd;
use super::whiteout::set_opaque;
use super::{Applier, DirMeta, Meta, Result, Target};
use crate::changeset::error::{io_err, show, ChangesetError};
use crate::changeset::stream::Shared;
use crate::fsys::sys::{self, FileType, OFlags, Stat};

impl Applier<'_> {
    /// Makes room for a new non-directory at `t`.
    pub(super) fn clear(&mut self, parent: BorrowedFd, t: &Target) -> Result<()> {
        if let Some(st) = sys::lstatat(parent, &t.name).map_err(io_err("inspecting", &t.key))? {
            self.remove(parent, &t.name, &t.key, &st)?;
        }
        Ok(())
    }

    /// Removes whatever is at `t` (a tree, if a directory).
    pub(super) fn remove(
        &mut self,
        parent: BorrowedFd,
        name: &CStr,
        key: &[u8],
        st: &Stat,
    ) -> Result<()> {
        self.res.invalidate();
        if st.is_dir() {
            remove_tree(parent, name)
        } else {
            sys::unlinkat(parent, name)
        }
        .map_err(io_err("removing", key))
    }

    pub(super) fn file(
        &mut self,
        t: &Target,
        meta: Meta,
        data: &mut dyn ReadEntry,
        size: u64,
        shared: &Shared,
    ) -> Result<()> {
        let parent = self.parent(t)?;
        self.clear(parent.as_fd(), t)?;
        let fd = sys::openat(
            parent.as_fd(),
            &t.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            0o600,
        )
        .map_err(io_err("creating", &t.key))?;
        let file = File::from(fd);
        write_content(
            &file,
            data,
            size,
            self.opts.holes,
            t,
            shared,
            &mut self.content_buf,
        )?;
        if self.opts.start_writeback && size >= EARLY_WRITEBACK_FROM {
            start_writeback(&file);
        }
        // Owner before mode (chown clears setuid/setgid), xattrs after the
        // owner (chown drops security.capability), mtime last.
        sys::fchown(file.as_fd(), meta.uid, meta.gid)
            .map_err(io_err("setting the owner of", &t.key))?;
        sys::fchmod(file.as_fd(), meta.mode).map_err(io_err("setting the mode of", &t.key))?;
        set_xattrs_fd(&file, &meta.xattrs, false, &t.key)?;
        sys::futimens(file.as_fd(), meta.mtime).map_err(io_err("setting the mtime of", &t.key))?;
        self.claim_leaf(&t.key);
        Ok(())
    }

    pub(super) fn dir(&mut self, t: &Target, meta: Meta) -> Result<()> {
        let parent = self.parent(t)?;
        let existing =
            sys::lstatat(parent.as_fd(), &t.name).map_err(io_err("inspecting", &t.key))?;
        if self.opts.keep_existing_dirs
            && (existing.as_ref().is_some_and(|st| st.is_dir()) || self.lower_has_dir(&t.key))
        {
            self.claim(&t.key);
            return Ok(());
        }
        let mut merged = false;
        let mut make_opaque = false;
        match existing {
            Some(st) if st.is_dir() => merged = true,
            Some(st) => {
                self.remove(parent.as_fd(), &t.name, &t.key, &st)?;
                // In a layer directory, what replaced a lower entry (e.g.
                // its whiteout) must keep hiding it: the directory is opaque.
                make_opaque = self.overlay;
            }
            None => {}
        }
        if !merged {
            sys::mkdirat(parent.as_fd(), &t.name, 0o700).map_err(io_err("creating", &t.key))?;
        }
        let f = sys::open_dir_file(parent.as_fd(), &t.name).map_err(io_err("opening", &t.key))?;
        sys::fchown(f.as_fd(), meta.uid, meta.gid)
            .map_err(io_err("setting the owner of", &t.key))?;
        set_xattrs_fd(&f, &meta.xattrs, merged, &t.key)?;
        if make_opaque {
            set_opaque(&f, &t.key)?;
        }
        self.dirs.insert(
            t.key.clone(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        self.claim(&t.key);
        Ok(())
    }

    /// A directory entry for the root itself (`./`).
    pub(super) fn root_dir(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        let f = sys::open_dir_file(self.res.root(), c".").map_err(io_err("opening", path))?;
        sys::fchown(f.as_fd(), meta.uid, meta.gid).map_err(io_err("setting the owner of", path))?;
        set_xattrs_fd(&f, &meta.xattrs, true, b"")?;
        self.dirs.insert(
            Vec::new(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    pub(super) fn symlink(&mut self, t: &Target, meta: Meta, link: Option<&[u8]>) -> Result<()> {
        let target = link.filter(|l| !l.is_empty()).ok_or_else(|| {
            ChangesetError::malformed(format!("symlink {:?} has no target", show(t.entry)))
        })?;
        if target.len() > self.opts.max_path_len {
            return Err(ChangesetError::limit(format!(
                "symlink {:?}: target is {} bytes long, more than {}",
                show(t.entry),
                target.len(),
                self.opts.max_path_len
            )));
        }
        let ctarget = sys::cstring(target).map_err(|_| {
            ChangesetError::malformed(format!(
                "symlink {:?}: target contains a nul byte",
                show(t.entry)
            ))
        })?;
        let parent = self.parent(t)?;
        self.clear(parent.as_fd(), t)?;
        sys::symlinkat(&ctarget, parent.as_fd(), &t.name).map_err(io_err("creating", &t.key))?;
        self.finish_node(parent.as_fd(), t, &meta, None)?;
        self.claim_leaf(&t.key);
        Ok(())
    }

    pub(super) fn node(
        &mut self,
        t: &Target,
        meta: Meta,
        etype: EntryType,
        header: &tar::Header,
    ) -> Result<()> {
        let kind = if etype.is_fifo() {
            FileType::Fifo
        } else if etype.is_character_special() {
            FileType::CharacterDevice
        } else {
            FileType::BlockDevice
        };
        let dev = if kind == FileType::Fifo {
            0
        } else {
            let num = |r: io::Result<Option<u32>>| -> Result<u32> {
                r.ok().flatten().ok_or_else(|| {
                    ChangesetError::malformed(format!(
                        "device {:?} has no valid device numbers",
                        show(t.entry)
                    ))
                })
            };
            let (major, minor) = (num(header.device_major())?, num(header.device_minor())?);
            if self.overlay && kind == FileType::CharacterDevice && major == 0 && minor == 0 {
                return Err(ChangesetError::unsupported(
                    t.entry,
                    "a character device 0/0 in an overlay layer would be a whiteout",
                ));
            }
            sys::makedev(major, minor)
        };
        let parent = self.parent(t)?;
        self.clear(parent.as_fd(), t)?;
        // Permission bits 0 until finish_node sets them (past the umask).
        sys::mknodat(parent.as_fd(), &t.name, kind, 0, dev).map_err(io_err("creating", &t.key))?;
        let fd = sys::open_node_path(parent.as_fd(), &t.name).map_err(io_err("opening", &t.key))?;
        let st = sys::fstat(fd.as_fd()).map_err(io_err("inspecting", &t.key))?;
        if st.file_type() != kind {
            return Err(ChangesetError::io(
                "creating",
                &t.key,
                io::Error::other("the new node was replaced under us"),
            ));
        }
        self.finish_node(parent.as_fd(), t, &meta, Some(fd.as_fd()))?;
        self.claim_leaf(&t.key);
        Ok(())
    }
}

/// Removes `dir/name` and, if it is a directory, everything in it; never
/// follows a symlink.
pub(super) fn remove_tree(dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    match sys::rmdirat(dir, name) {
        Ok(()) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return sys::unlinkat(dir, name),
        Err(e) => return Err(e),
    }
    let sub = sys::open_dir_path(dir, name)?;
    for child in sys::list_dir(sub.as_fd())? {
        let c = sys::cstring(&child)?;
        match sys::lstatat(sub.as_fd(), &c)? {
            Some(st) if st.is_dir() => remove_tree(sub.as_fd(), &c)?,
            Some(_) => sys::unlinkat(sub.as_fd(), &c)?,
            None => {}
        }
    }
    sys::rmdirat(dir, name)
}
