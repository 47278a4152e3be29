//! Parent directories: resolving them under the root (never through a
//! symlink), and making the missing ones.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{Applier, Result, Target};
use crate::changeset::error::{io_err, show, ChangesetError};
use crate::changeset::path::join;
use crate::fsys::sys::{self, OFlags};
use crate::fsys::walk::{Links, Missing, Walked, Walker};

impl Applier<'_> {
    /// Resolves directory `dir` of `entry`. `what` names what is being
    /// resolved when it is not the entry's own parent (for messages).
    pub(super) fn dir_at(
        &mut self,
        entry: &[u8],
        dir: &[Vec<u8>],
        create: bool,
        what: Option<&str>,
    ) -> Result<Option<OwnedFd>> {
        let mut created = Vec::new();
        let r = self
            .res
            .walk(dir, create, &mut |k| created.push(k.to_vec()))
            .map_err(io_err("resolving the parent of", entry))?;
        for k in created {
            self.claim(&k);
            self.like_lower(entry, &k)?;
        }
        let prefix = |i: usize| show(&join(&dir[..=i]));
        let subject = what.map(|w| format!("{w} ")).unwrap_or_default();
        match r {
            Walked::Found(fd) => {
                if create && !self.overlay {
                    self.keep_mtime(dir, &fd, entry)?;
                }
                Ok(Some(fd))
            }
            Walked::Missing(_) => Ok(None),
            Walked::Symlink(i) => Err(ChangesetError::hostile(
                entry,
                format!("{subject}passes through symlink {:?}", prefix(i)),
            )),
            Walked::NotDir(i) if create => Err(ChangesetError::malformed(format!(
                "entry {:?}: {subject}parent {:?} is not a directory",
                show(entry),
                prefix(i)
            ))),
            Walked::NotDir(_) => Ok(None),
        }
    }

    /// The parent directory of `t`, made if missing.
    pub(super) fn parent(&mut self, t: &Target) -> Result<OwnedFd> {
        self.dir_at(t.entry, t.dir(), true, None)?.ok_or_else(|| {
            ChangesetError::io(
                "creating the parent of",
                t.entry,
                io::Error::other("it vanished while being made"),
            )
        })
    }
}

/// Resolves directories under the root with the shared walker
/// ([`Links::Refuse`]: a symlink anywhere on the way is reported, never
/// followed). Keeps the last directory it resolved, since archive entries
/// come grouped by directory; anything that removes from the tree must call
/// [`Resolver::invalidate`].
pub(super) struct Resolver {
    root: OwnedFd,
    cache: Option<(Vec<u8>, OwnedFd)>,
}

impl Resolver {
    pub(super) fn new(root: OwnedFd) -> Self {
        Resolver { root, cache: None }
    }

    pub(super) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub(super) fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Walks to directory `comps` (an `O_PATH` descriptor). With `create`,
    /// missing components are made (mode 0755, owned by root when running
    /// as root) and each new one's key is passed to `created`. Indices in
    /// the answer are positions in `comps`.
    pub(super) fn walk(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
        created: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Walked> {
        let key = join(comps);
        let (start, skip) = match &self.cache {
            Some((k, fd)) if is_prefix(k, &key) => (fd.as_fd(), n_comps(k)),
            _ => (self.root.as_fd(), 0),
        };
        let mut make = |m: &Missing| -> io::Result<()> {
            match sys::mkdirat(m.dir, m.name, 0o755) {
                Ok(()) => {
                    // The umask may have taken bits away, a setgid parent
                    // may have given its group.
                    let f = sys::open_dir_file(m.dir, m.name)?;
                    if sys::geteuid() == 0 {
                        sys::fchown(f.as_fd(), 0, 0)?;
                    }
                    sys::fchmod(f.as_fd(), 0o755)?;
                    created(&join(&comps[..=skip + m.index]));
                    Ok(())
                }
                // Made by someone else meanwhile: looked up again.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                Err(e) => Err(e),
            }
        };
        let walked = Walker::new(start, Links::Refuse).walk(
            &comps[skip..],
            OFlags::PATH | OFlags::DIRECTORY,
            if create { Some(&mut make) } else { None },
        )?;
        Ok(match walked {
            Walked::Found(fd) => {
                self.cache = Some((key, fd.try_clone()?));
                Walked::Found(fd)
            }
            Walked::Missing(i) => Walked::Missing(skip + i),
            Walked::NotDir(i) => Walked::NotDir(skip + i),
            Walked::Symlink(i) => Walked::Symlink(skip + i),
        })
    }
}

fn is_prefix(k: &[u8], key: &[u8]) -> bool {
    k.is_empty() || key == k || (key.starts_with(k) && key[k.len()] == b'/')
}

fn n_comps(k: &[u8]) -> usize {
    if k.is_empty() {
        0
    } else {
        k.iter().filter(|b| **b == b'/').count() + 1
    }
}
