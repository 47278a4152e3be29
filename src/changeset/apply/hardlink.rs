//! Hard-link entries: to an existing regular file of the tree, never
//! through a symlink.

use std::io;
use std::os::fd::AsFd;

use super::{Applier, Result, Target};
use crate::changeset::error::{io_err, show, ChangesetError};
use crate::changeset::path::check_path;
use crate::fsys::sys::{self, FileType};

impl Applier<'_> {
    pub(super) fn hardlink(&mut self, t: &Target, link: Option<&[u8]>) -> Result<()> {
        let entry = t.entry;
        let raw_target = link.ok_or_else(|| {
            ChangesetError::malformed(format!("hard link {:?} has no target", show(entry)))
        })?;
        let tcomps = check_path(
            entry,
            raw_target,
            Some("hard link target"),
            self.opts.max_path_len,
        )?;
        let what = format!("hard link target {:?}", show(raw_target));
        let Some((tlast, tdir)) = tcomps.split_last() else {
            return Err(ChangesetError::unsupported(
                entry,
                format!("{what} is the layer root"),
            ));
        };
        if tcomps == t.comps {
            return Err(ChangesetError::malformed(format!(
                "hard link {:?} links to itself",
                show(entry)
            )));
        }
        let missing =
            || ChangesetError::malformed(format!("entry {:?}: {what} does not exist", show(entry)));
        let tparent = self
            .dir_at(entry, tdir, false, Some(&what))?
            .ok_or_else(missing)?;
        let tname = sys::cstring(tlast).map_err(io_err("naming", entry))?;
        let tfd = match sys::open_node_path(tparent.as_fd(), &tname) {
            Ok(fd) => fd,
            Err(e) if sys::is_enoent(&e) => return Err(missing()),
            Err(e) => return Err(ChangesetError::io("opening", raw_target, e)),
        };
        let tst = sys::fstat(tfd.as_fd()).map_err(io_err("inspecting", raw_target))?;
        if tst.file_type() != FileType::RegularFile {
            return Err(ChangesetError::unsupported(
                entry,
                format!("{what} is not a regular file"),
            ));
        }
        let parent = self.parent(t)?;
        if let Some(st) =
            sys::lstatat(parent.as_fd(), &t.name).map_err(io_err("inspecting", &t.key))?
        {
            if st.same_inode(&tst) {
                self.claim_leaf(&t.key);
                return Ok(());
            }
            self.remove(parent.as_fd(), &t.name, &t.key, &st)?;
        }
        // Link exactly the inode checked above; without CAP_DAC_READ_SEARCH
        // (ENOENT) link by name, never following, and check the result.
        match sys::link_fd(tfd.as_fd(), parent.as_fd(), &t.name) {
            Ok(()) => {}
            Err(e) if sys::is_enoent(&e) => {
                sys::linkat(tparent.as_fd(), &tname, parent.as_fd(), &t.name)
                    .map_err(io_err("linking", &t.key))?;
                let st =
                    sys::lstatat(parent.as_fd(), &t.name).map_err(io_err("inspecting", &t.key))?;
                if !st.is_some_and(|s| s.same_inode(&tst)) {
                    let _ = sys::unlinkat(parent.as_fd(), &t.name);
                    return Err(ChangesetError::io(
                        "linking",
                        &t.key,
                        io::Error::other("the link target was replaced under us"),
                    ));
                }
            }
            Err(e) => return Err(ChangesetError::io("linking", &t.key, e)),
        }
        self.claim_leaf(&t.key);
        Ok(())
    }
}
