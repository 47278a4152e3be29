//! Entry paths: checking them, and resolving them under the root without
//! ever following a symlink.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::error::{show, ChangesetError};
use crate::fsys::sys::{self, FileType};

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

/// What walking a directory path found.
pub(crate) enum Lookup {
    /// The directory, as an `O_PATH` descriptor.
    Found(OwnedFd),
    /// A component does not exist (only when not creating).
    Missing,
    /// Component `.0` exists and is not a directory (nor a symlink).
    NotDir(usize),
    /// Component `.0` is a symlink.
    Symlink(usize),
}

/// Resolves directories under the root, one component at a time with
/// `openat(O_PATH|O_DIRECTORY|O_NOFOLLOW)`. Keeps the last directory it
/// resolved, since archive entries come grouped by directory; anything that
/// removes from the tree must call [`Resolver::invalidate`].
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

    /// Walks to directory `comps`. With `create`, missing components are
    /// made (mode 0755, owned by the caller) and each new one's key is passed
    /// to `created`.
    pub(crate) fn walk(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
        created: &mut dyn FnMut(&[u8]),
    ) -> io::Result<Lookup> {
        let key = join(comps);
        let (mut cur, start) = match &self.cache {
            Some((k, fd)) if is_prefix(k, &key) => (fd.try_clone()?, n_comps(k)),
            _ => (self.root.try_clone()?, 0),
        };
        for (i, comp) in comps.iter().enumerate().skip(start) {
            let c = sys::cstring(comp)?;
            let next = match sys::open_dir_path(cur.as_fd(), &c) {
                Ok(fd) => fd,
                Err(e) if sys::is_enoent(&e) => {
                    if !create {
                        return Ok(Lookup::Missing);
                    }
                    match sys::mkdirat(cur.as_fd(), &c, 0o755) {
                        Ok(()) => {
                            // The umask may have taken bits away, a setgid
                            // parent may have given its group.
                            let f = sys::open_dir_file(cur.as_fd(), &c)?;
                            if sys::geteuid() == 0 {
                                sys::fchown(f.as_fd(), 0, 0)?;
                            }
                            sys::fchmod(f.as_fd(), 0o755)?;
                            created(&join(&comps[..=i]));
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(e),
                    }
                    match sys::open_dir_path(cur.as_fd(), &c) {
                        Ok(fd) => fd,
                        Err(e) => return classify(cur.as_fd(), &c, i, e),
                    }
                }
                Err(e) => return classify(cur.as_fd(), &c, i, e),
            };
            cur = next;
        }
        self.cache = Some((key, cur.try_clone()?));
        Ok(Lookup::Found(cur))
    }
}

/// Why opening component `c` as a directory failed.
fn classify(dir: BorrowedFd, c: &std::ffi::CStr, i: usize, e: io::Error) -> io::Result<Lookup> {
    match e.raw_os_error() {
        Some(libc::ENOTDIR | libc::ELOOP | libc::ENOENT) => match sys::lstatat(dir, c)? {
            Some(st) if st.file_type() == FileType::Symlink => Ok(Lookup::Symlink(i)),
            Some(st) if !st.is_dir() => Ok(Lookup::NotDir(i)),
            Some(_) => Err(e),
            None => Ok(Lookup::Missing),
        },
        _ => Err(e),
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
