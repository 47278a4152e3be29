//! Entry paths: checking them, and resolving them under the root without
//! ever following a symlink.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::error::{show, ChangesetError};
use crate::fsys::sys::{self, OFlags};
use crate::fsys::walk::{Links, Missing, Walked, Walker};

/// Longest name of one path component (Linux's NAME_MAX).
const NAME_MAX: usize = 255;

/// Splits a path from the archive into its components, refusing what could
/// leave the root. Empty and `.` components are dropped, so `./a//b/` is
/// `["a", "b"]` and `./` is `[]` (the root itself).
///
/// `entry` is the entry's own path (for messages); `what` says what `raw` is
/// when it isn't the entry's path (e.g. "hard link target").
pub(crate) fn check_path(
    entry: &[u8],
    raw: &[u8],
    what: Option<&str>,
    max_len: usize,
) -> Result<Vec<Vec<u8>>, ChangesetError> {
    let subject = match what {
        Some(w) => format!("{w} {:?} ", show(raw)),
        None => String::new(),
    };
    if raw.len() > max_len {
        return Err(ChangesetError::limit(format!(
            "entry {:?}: {subject}path is {} bytes long, more than {max_len}",
            show(&entry[..entry.len().min(200)]),
            raw.len()
        )));
    }
    if raw.is_empty() {
        return Err(ChangesetError::malformed(match what {
            Some(w) => format!("entry {:?} has an empty {w}", show(entry)),
            None => "an entry has an empty path".to_string(),
        }));
    }
    if raw.contains(&0) {
        return Err(ChangesetError::malformed(format!(
            "entry {:?}: {subject}contains a nul byte",
            show(entry)
        )));
    }
    if raw[0] == b'/' {
        return Err(ChangesetError::hostile(
            entry,
            format!("{subject}is an absolute path"),
        ));
    }
    let mut comps: Vec<Vec<u8>> = Vec::new();
    let mut depth = 0usize;
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                let reason = if depth == 0 {
                    format!("{subject}leaves the layer root")
                } else {
                    format!("{subject}contains a \"..\" component")
                };
                return Err(ChangesetError::hostile(entry, reason));
            }
            _ => {
                if c.len() > NAME_MAX {
                    return Err(ChangesetError::limit(format!(
                        "entry {:?}: {subject}has a component longer than {NAME_MAX} bytes",
                        show(&entry[..entry.len().min(200)])
                    )));
                }
                depth += 1;
                comps.push(c.to_vec());
            }
        }
    }
    Ok(comps)
}

/// `a/b/c` from its components.
pub(crate) fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

/// `dir/name`, where `dir` may be empty (the root).
pub(crate) fn child_key(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        k.extend_from_slice(dir);
        k.push(b'/');
    }
    k.extend_from_slice(name);
    k
}

/// Every proper ancestor of `key`, the root (empty key) included.
pub(crate) fn ancestors(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::once(&key[..0]).chain(
        key.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(move |(i, _)| &key[..i]),
    )
}

/// Resolves directories under the root with the shared walker
/// ([`Links::Refuse`]: a symlink anywhere on the way is reported, never
/// followed). Keeps the last directory it resolved, since archive entries
/// come grouped by directory; anything that removes from the tree must call
/// [`Resolver::invalidate`].
pub(crate) struct Resolver {
    root: OwnedFd,
    cache: Option<(Vec<u8>, OwnedFd)>,
}

impl Resolver {
    pub(crate) fn new(root: OwnedFd) -> Self {
        Resolver { root, cache: None }
    }

    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    pub(crate) fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Walks to directory `comps` (an `O_PATH` descriptor). With `create`,
    /// missing components are made (mode 0755, owned by root when running
    /// as root) and each new one's key is passed to `created`. Indices in
    /// the answer are positions in `comps`.
    pub(crate) fn walk(
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
