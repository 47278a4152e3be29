//! Whiteouts (`.wh.NAME`) and opaque markers (`.wh..wh..opq`): what they
//! remove, and how an overlay layer records them.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};

use xattr::FileExt as _;

use super::{Applier, Result};
use crate::changeset::error::io_err;
use crate::changeset::path::{child_key, join};
use crate::changeset::OPAQUE_XATTR;
use crate::fsys::sys::{self, FileType};

/// Marks the directory `f` holds opaque, the way overlayfs reads it.
pub(super) fn set_opaque(f: &File, key: &[u8]) -> Result<()> {
    f.set_xattr(OPAQUE_XATTR, b"y")
        .map_err(io_err("setting the opaque xattr on", key))
}

impl Applier<'_> {
    /// `DIR/.wh.NAME`: removes the lower NAME; in overlay mode also leaves a
    /// whiteout device (or, if this archive made NAME a directory, makes it
    /// opaque).
    pub(super) fn whiteout(&mut self, path: &[u8], comps: &[Vec<u8>], victim: &[u8]) -> Result<()> {
        let dir = &comps[..comps.len() - 1];
        if self.under_leaf(dir) {
            return Ok(());
        }
        let Some(parent) = self.dir_at(path, dir, self.overlay, None)? else {
            return Ok(()); // nothing below to hide
        };
        let key = child_key(&join(dir), victim);
        self.remove_lower(parent.as_fd(), victim, &key)?;
        if self.overlay {
            let name = sys::cstring(victim).map_err(io_err("naming", path))?;
            match sys::lstatat(parent.as_fd(), &name).map_err(io_err("inspecting", &key))? {
                Some(st) if st.is_dir() => {
                    let f = sys::open_dir_file(parent.as_fd(), &name)
                        .map_err(io_err("opening", &key))?;
                    set_opaque(&f, &key)?;
                }
                // This archive's own entry hides the lower one already.
                Some(_) => {}
                None => sys::mknodat(parent.as_fd(), &name, FileType::CharacterDevice, 0, 0)
                    .map_err(io_err("creating whiteout", &key))?,
            }
        }
        Ok(())
    }

    /// `DIR/.wh..wh..opq`: removes DIR's lower entries; in overlay mode also
    /// marks DIR opaque.
    pub(super) fn opaque(&mut self, path: &[u8], dir: &[Vec<u8>]) -> Result<()> {
        if self.under_leaf(dir) {
            return Ok(());
        }
        let key = join(dir);
        let Some(dfd) = self.dir_at(path, dir, self.overlay, None)? else {
            return Ok(());
        };
        for child in sys::list_dir(dfd.as_fd()).map_err(io_err("reading directory", &key))? {
            let ckey = child_key(&key, &child);
            self.remove_lower(dfd.as_fd(), &child, &ckey)?;
        }
        if self.overlay {
            let f = sys::open_dir_file(dfd.as_fd(), c".").map_err(io_err("opening", &key))?;
            set_opaque(&f, &key)?;
        }
        Ok(())
    }

    /// Removes what is at `parent/name` except what this archive made.
    pub(super) fn remove_lower(
        &mut self,
        parent: BorrowedFd,
        name: &[u8],
        key: &[u8],
    ) -> Result<()> {
        let c = sys::cstring(name).map_err(io_err("naming", key))?;
        let Some(st) = sys::lstatat(parent, &c).map_err(io_err("inspecting", key))? else {
            return Ok(());
        };
        let is_mine = self.mine.contains(key);
        if st.is_dir() && (is_mine || self.mine_anc.contains(key)) {
            let sub = sys::open_dir_path(parent, &c).map_err(io_err("opening", key))?;
            for child in sys::list_dir(sub.as_fd()).map_err(io_err("reading directory", key))? {
                let ckey = child_key(key, &child);
                self.remove_lower(sub.as_fd(), &child, &ckey)?;
            }
            return Ok(());
        }
        if is_mine {
            return Ok(());
        }
        self.remove(parent, &c, key, &st)
    }
}
