//! Where archive members come from: a directory (every lookup and open made beneath its root
//! with the shared walker, [`crate::fsys::walk`], which never follows a symlink on the way) or
//! a plain tar file (indexed once, members read in place).
//!
//! Both resolve member paths the same way ([`Source::resolve`]): component by component, following
//! symlinks (and, in a tar, hard links) *within* the archive only, with a link limit. An
//! absolute symlink target or a `..` that climbs above the archive root is refused as hostile.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use super::digest::{is_sha256_hex, looks_compressed, sha256_digest, Digest};
use super::{ImageError, MAX_JSON_SIZE};
use crate::fsys::sys::{self, FileType, OFlags};
use crate::fsys::walk::{Links, Walked, Walker};

/// Symlinks/hard links followed while resolving one path.
const MAX_LINKS: usize = 32;
/// Members indexed in one tar archive.
const MAX_TAR_MEMBERS: usize = 1_000_000;

/// A resolved (symlink-free) regular file inside the source.
#[derive(Debug, Clone)]
pub(crate) enum Locator {
    Dir {
        path: String,
    },
    Tar {
        path: String,
        offset: u64,
        size: u64,
    },
}

impl Locator {
    pub(crate) fn path(&self) -> &str {
        match self {
            Locator::Dir { path } | Locator::Tar { path, .. } => path,
        }
    }
}

pub(crate) enum Source {
    Dir {
        root: PathBuf,
        root_fd: OwnedFd,
    },
    Tar {
        path: PathBuf,
        file: File,
        index: TarIndex,
    },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Dir { root, .. } => write!(f, "Dir({})", root.display()),
            Source::Tar { path, index, .. } => {
                write!(f, "Tar({}, {} members)", path.display(), index.nodes.len())
            }
        }
    }
}

/// What a path names, one component at a time.
enum Node {
    File,
    Dir,
    Symlink(String),
    /// Target is an archive-root-relative, already normalized path.
    HardLink(String),
    Other,
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TarNode {
    File { offset: u64, size: u64 },
    Dir,
    Symlink(String),
    HardLink(String),
    Other,
}

#[derive(Default)]
pub(crate) struct TarIndex {
    nodes: HashMap<String, TarNode>,
    /// Ancestors of members, which exist as directories even without their own entry.
    dirs: HashSet<String>,
}

impl Source {
    pub(crate) fn open(path: &Path) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io("stat", path, e))?;
        if meta.is_dir() {
            let root_fd =
                sys::open_root(path).map_err(|e| ImageError::io("open directory", path, e))?;
            return Ok(Source::Dir {
                root: path.to_path_buf(),
                root_fd,
            });
        }
        if !meta.is_file() {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                reason: "not a regular file or directory".into(),
            });
        }
        let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        let mut magic = [0u8; 6];
        let n = file
            .read_at(&mut magic, 0)
            .map_err(|e| ImageError::io("read", path, e))?;
        if looks_compressed(&magic[..n]) {
            return Err(ImageError::NotAnImage {
                path: path.to_path_buf(),
                reason: "compressed archive file (gzip/zstd/bzip2/xz); decompress it to a \
                         plain .tar first"
                    .into(),
            });
        }
        let index = TarIndex::build(path, &file, meta.len())?;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            file,
            index,
        })
    }

    pub(crate) fn is_dir(&self) -> bool {
        matches!(self, Source::Dir { .. })
    }

    fn describe(&self) -> String {
        match self {
            Source::Dir { root, .. } => root.display().to_string(),
            Source::Tar { path, .. } => path.display().to_string(),
        }
    }

    fn lookup(&self, path: &str) -> Result<Node, ImageError> {
        match self {
            Source::Tar { index, .. } => Ok(match index.nodes.get(path) {
                Some(TarNode::File { .. }) => Node::File,
                Some(TarNode::Dir) => Node::Dir,
                Some(TarNode::Symlink(t)) => Node::Symlink(t.clone()),
                Some(TarNode::HardLink(t)) => Node::HardLink(t.clone()),
                Some(TarNode::Other) => Node::Other,
                None if index.dirs.contains(path) => Node::Dir,
                None => Node::Missing,
            }),
            Source::Dir { root, root_fd } => {
                let full = root.join(path);
                let stat_err = |e| ImageError::io("stat", &full, e);
                // The components before the last are directories `resolve` looked up; one
                // swapped for a symlink since is not followed.
                let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
                let parent: Vec<&str> = parent.split('/').collect();
                let walker = Walker::new(root_fd.as_fd(), Links::Refuse);
                let dir = match walker.walk(&parent, OFlags::PATH | OFlags::DIRECTORY, None) {
                    Ok(Walked::Found(fd)) => fd,
                    Ok(Walked::Missing(_) | Walked::NotDir(_)) => return Ok(Node::Missing),
                    Ok(Walked::Symlink(_)) => return Err(stat_err(sys::errno(libc::ELOOP))),
                    Err(e) => return Err(stat_err(e)),
                };
                let name = sys::cstring(name.as_bytes()).map_err(stat_err)?;
                let Some(st) = sys::lstatat(dir.as_fd(), &name).map_err(stat_err)? else {
                    return Ok(Node::Missing);
                };
                Ok(match st.file_type() {
                    FileType::Symlink => {
                        let target = sys::readlinkat(dir.as_fd(), &name)
                            .map_err(|e| ImageError::io("readlink", &full, e))?;
                        match String::from_utf8(target) {
                            Ok(t) => Node::Symlink(t),
                            Err(_) => Node::Other,
                        }
                    }
                    FileType::Directory => Node::Dir,
                    FileType::RegularFile => Node::File,
                    _ => Node::Other,
                })
            }
        }
    }

    /// Resolves `path` (already checked by [`check_member_path`]) to a regular file, following
    /// links within the archive. `Ok(None)` if it does not exist.
    fn resolve(&self, what: &str, path: &str) -> Result<Option<String>, ImageError> {
        let mut pending: Vec<String> = path
            .split('/')
            .rev()
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut links = 0usize;
        let link_step = |links: &mut usize| {
            *links += 1;
            if *links > MAX_LINKS {
                Err(ImageError::hostile(
                    what,
                    format!("'{path}': more than {MAX_LINKS} levels of links"),
                ))
            } else {
                Ok(())
            }
        };
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    if resolved.pop().is_none() {
                        return Err(ImageError::hostile(
                            what,
                            format!("'{path}' leads outside the archive"),
                        ));
                    }
                    continue;
                }
                _ => {}
            }
            resolved.push(c);
            let cur = resolved.join("/");
            match self.lookup(&cur)? {
                Node::Dir => {
                    if pending.is_empty() {
                        return Err(ImageError::malformed(
                            what,
                            format!("'{path}' is a directory, not a file"),
                        ));
                    }
                }
                Node::File => {
                    if pending.is_empty() {
                        return Ok(Some(cur));
                    }
                    return Ok(None);
                }
                Node::Symlink(target) => {
                    link_step(&mut links)?;
                    if target.starts_with('/') {
                        return Err(ImageError::hostile(
                            what,
                            format!("'{cur}' is a symlink to the absolute path '{target}'"),
                        ));
                    }
                    resolved.pop();
                    pending.extend(
                        target
                            .split('/')
                            .rev()
                            .filter(|c| !c.is_empty())
                            .map(str::to_string),
                    );
                }
                Node::HardLink(target) => {
                    link_step(&mut links)?;
                    resolved.clear();
                    pending.extend(target.split('/').rev().map(str::to_string));
                }
                Node::Other => {
                    return Err(ImageError::malformed(
                        what,
                        format!("'{cur}' is not a regular file"),
                    ))
                }
                Node::Missing => return Ok(None),
            }
        }
        Err(ImageError::malformed(
            what,
            format!("'{path}' is a directory, not a file"),
        ))
    }

    /// True if `path` names a regular file (following links within the archive).
    pub(crate) fn is_file(&self, path: &str) -> Result<bool, ImageError> {
        match self.resolve(path, path) {
            Ok(found) => Ok(found.is_some()),
            Err(ImageError::Malformed { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Finds the regular file at `path`; a missing member is `Malformed`.
    pub(crate) fn locate(&self, what: &str, path: &str) -> Result<(Locator, u64), ImageError> {
        let path = check_member_path(what, path)?;
        let Some(resolved) = self.resolve(what, &path)? else {
            return Err(ImageError::malformed(
                what,
                format!("'{path}' not found in {}", self.describe()),
            ));
        };
        match self {
            Source::Tar { index, .. } => match index.nodes.get(&resolved) {
                Some(TarNode::File { offset, size }) => Ok((
                    Locator::Tar {
                        path: resolved,
                        offset: *offset,
                        size: *size,
                    },
                    *size,
                )),
                _ => unreachable!("resolve returns regular files only"),
            },
            Source::Dir { .. } => {
                let f = self.open_dir_file(&resolved)?;
                let size = f
                    .metadata()
                    .map_err(|e| ImageError::io("stat", &self.full_path(&resolved), e))?
                    .len();
                Ok((Locator::Dir { path: resolved }, size))
            }
        }
    }

    fn full_path(&self, rel: &str) -> PathBuf {
        match self {
            Source::Dir { root, .. } => root.join(rel),
            Source::Tar { path, .. } => path.join(rel),
        }
    }

    fn open_dir_file(&self, rel: &str) -> Result<File, ImageError> {
        let Source::Dir { root_fd, .. } = self else {
            unreachable!("directory sources only")
        };
        open_beneath(root_fd.as_fd(), rel)
            .map_err(|e| ImageError::io("open", &self.full_path(rel), e))
    }

    /// Reads a whole JSON document (at most [`MAX_JSON_SIZE`]) and checks its digest.
    pub(crate) fn read_doc(
        &self,
        what: &str,
        path: &str,
        expected: Option<&Digest>,
    ) -> Result<Vec<u8>, ImageError> {
        let (loc, size) = self.locate(what, path)?;
        if size > MAX_JSON_SIZE {
            return Err(ImageError::TooLarge {
                what: what.to_string(),
                size,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open_member(&loc)?
            .take(MAX_JSON_SIZE + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io("read", &self.full_path(loc.path()), e))?;
        if buf.len() as u64 > MAX_JSON_SIZE {
            return Err(ImageError::TooLarge {
                what: what.to_string(),
                size: buf.len() as u64,
            });
        }
        if let Some(expected) = expected {
            let actual = sha256_digest(&buf);
            if actual != *expected {
                return Err(ImageError::DigestMismatch {
                    what: what.to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(buf)
    }

    /// The raw bytes of a located member.
    pub(crate) fn open_member(
        &self,
        loc: &Locator,
    ) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        match (self, loc) {
            (Source::Tar { file, .. }, Locator::Tar { offset, size, .. }) => Ok(Box::new(ReadAt {
                file,
                pos: *offset,
                end: offset + size,
            })),
            (Source::Dir { .. }, Locator::Dir { path }) => Ok(Box::new(self.open_dir_file(path)?)),
            _ => Err(ImageError::malformed(
                loc.path(),
                "layer reference belongs to a different archive",
            )),
        }
    }
}

/// Checks a path named by a manifest: relative, no `..`, and a `blobs/…` path must be exactly
/// `blobs/sha256/<64 hex>`. Returns it normalized (no `.` or empty components).
pub(crate) fn check_member_path(what: &str, path: &str) -> Result<String, ImageError> {
    let hostile = |reason: &str| ImageError::hostile(what, format!("path '{path}' {reason}"));
    if path.starts_with('/') {
        return Err(hostile("is absolute"));
    }
    if path.contains('\0') {
        return Err(hostile("contains a NUL byte"));
    }
    let comps: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err(hostile("contains '..'"));
    }
    if comps.is_empty() {
        return Err(ImageError::malformed(what, "empty path"));
    }
    if comps[0] == "blobs" && !(comps.len() == 3 && comps[1] == "sha256" && is_sha256_hex(comps[2]))
    {
        return Err(hostile("is not of the form blobs/sha256/<64 hex>"));
    }
    Ok(comps.join("/"))
}

/// Opens `rel` (symlink-free, relative) beneath `root` with the shared walker, refusing any
/// symlink on the way, so a component swapped for a symlink after resolution fails instead of
/// being followed. The result must be a regular file (`O_NONBLOCK` keeps a FIFO from blocking
/// the open).
fn open_beneath(root: BorrowedFd, rel: &str) -> io::Result<File> {
    let comps: Vec<&str> = rel.split('/').collect();
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    let file = File::from(Walker::new(root, Links::Refuse).open(&comps, flags)?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    sys::clear_nonblock(file.as_fd())?;
    Ok(file)
}

/// A tar member read in place with positioned reads (no shared file offset).
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

/// Normalizes a tar member name (or hard link target): `.` and empty components dropped;
/// absolute and `..` names are hostile. `None` for names that are not UTF-8 (no JSON document
/// can name them).
fn normalize_member(
    archive: &Path,
    name: &Path,
    label: impl FnOnce() -> String,
) -> Result<Option<String>, ImageError> {
    let mut out: Vec<&str> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => out.push(s),
                None => return Ok(None),
            },
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(ImageError::hostile(
                    archive.display().to_string(),
                    format!("{} is absolute or contains '..'", label()),
                ))
            }
        }
    }
    Ok(Some(out.join("/")))
}

impl TarIndex {
    fn build(path: &Path, file: &File, len: u64) -> Result<TarIndex, ImageError> {
        let what = path.display().to_string();
        let mut index = TarIndex::default();
        let mut archive = tar::Archive::new(file);
        let entries = archive
            .entries_with_seek()
            .map_err(|e| ImageError::io("read", path, e))?;
        for (i, entry) in entries.enumerate() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if i == 0 => {
                    return Err(ImageError::NotAnImage {
                        path: path.to_path_buf(),
                        reason: format!("not a tar archive ({e})"),
                    })
                }
                Err(e) => {
                    return Err(ImageError::malformed(
                        &what,
                        format!("corrupt tar archive: {e}"),
                    ))
                }
            };
            if i >= MAX_TAR_MEMBERS {
                return Err(ImageError::hostile(
                    &what,
                    format!("more than {MAX_TAR_MEMBERS} tar members"),
                ));
            }
            let raw_name = entry
                .path()
                .map_err(|e| ImageError::malformed(&what, format!("bad tar member name: {e}")))?
                .into_owned();
            let Some(name) = normalize_member(path, &raw_name, || {
                format!("tar member '{}'", raw_name.display())
            })?
            else {
                continue;
            };
            if name.is_empty() {
                continue; // "./" itself
            }
            let link = || -> Result<PathBuf, ImageError> {
                entry
                    .link_name()
                    .map_err(|e| {
                        ImageError::malformed(
                            &what,
                            format!("bad link in tar member '{name}': {e}"),
                        )
                    })?
                    .map(|l| l.into_owned())
                    .ok_or_else(|| {
                        ImageError::malformed(&what, format!("tar link '{name}' has no target"))
                    })
            };
            let node = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let offset = entry.raw_file_position();
                    let size = entry.size();
                    if offset.checked_add(size).is_none_or(|end| end > len) {
                        return Err(ImageError::malformed(
                            &what,
                            format!("tar member '{name}' is truncated"),
                        ));
                    }
                    TarNode::File { offset, size }
                }
                tar::EntryType::Directory => TarNode::Dir,
                tar::EntryType::Symlink => match link()?.to_str() {
                    Some(t) => TarNode::Symlink(t.to_string()),
                    None => TarNode::Other,
                },
                tar::EntryType::Link => match normalize_member(path, &link()?, || {
                    let target = entry.link_name().ok().flatten().unwrap_or_default();
                    format!("hard link '{name}' -> '{}'", target.display())
                })? {
                    Some(t) if !t.is_empty() => TarNode::HardLink(t),
                    _ => TarNode::Other,
                },
                _ => TarNode::Other,
            };
            index.insert(path, file, name, node)?;
        }
        Ok(index)
    }

    fn insert(
        &mut self,
        archive: &Path,
        file: &File,
        name: String,
        node: TarNode,
    ) -> Result<(), ImageError> {
        if let Some(old) = self.nodes.get(&name) {
            let same = match (old, &node) {
                (
                    TarNode::File {
                        offset: a,
                        size: sa,
                    },
                    TarNode::File {
                        offset: b,
                        size: sb,
                    },
                ) => {
                    sa == sb
                        && same_bytes(file, *a, *b, *sa)
                            .map_err(|e| ImageError::io("read", archive, e))?
                }
                (a, b) => a == b,
            };
            if !same {
                return Err(ImageError::hostile(
                    archive.display().to_string(),
                    format!("tar member '{name}' appears twice with different contents"),
                ));
            }
            return Ok(());
        }
        let mut parent = name.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if !self.dirs.insert(p.to_string()) {
                break;
            }
            parent = p;
        }
        self.nodes.insert(name, node);
        Ok(())
    }
}

fn same_bytes(file: &File, a: u64, b: u64, size: u64) -> io::Result<bool> {
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < size {
        let n = (size - done).min(ba.len() as u64) as usize;
        file.read_exact_at(&mut ba[..n], a + done)?;
        file.read_exact_at(&mut bb[..n], b + done)?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        done += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn kind(n: Node) -> String {
        match n {
            Node::File => "file".into(),
            Node::Dir => "dir".into(),
            Node::Symlink(t) => format!("symlink {t}"),
            Node::HardLink(t) => format!("hardlink {t}"),
            Node::Other => "other".into(),
            Node::Missing => "missing".into(),
        }
    }

    /// A directory source looks up and opens beneath its root, never through
    /// a symlink, with `openat2` and with the component walk alone alike.
    #[test]
    fn plain_dir_source_never_opens_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("layout");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), b"data").unwrap();
        symlink("a", root.join("link")).unwrap();
        symlink("b/f", root.join("a/flink")).unwrap();
        nix::unistd::mkfifo(&root.join("a/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let src = Source::open(&root).unwrap();
        let Source::Dir { root_fd, .. } = &src else {
            panic!("a directory source")
        };
        for fallback in [false, true] {
            let check = || {
                let look = |p: &str| kind(src.lookup(p).unwrap());
                assert_eq!(look("a/b/f"), "file");
                assert_eq!(look("a/b"), "dir");
                assert_eq!(look("link"), "symlink a");
                assert_eq!(look("a/flink"), "symlink b/f");
                assert_eq!(look("a/fifo"), "other");
                assert_eq!(look("a/nope/f"), "missing");
                assert_eq!(look("a/b/f/x"), "missing");
                let mut data = String::new();
                let mut f = open_beneath(root_fd.as_fd(), "a/b/f").unwrap();
                f.read_to_string(&mut data).unwrap();
                assert_eq!(data, "data");
                for through_link in ["link/b/f", "a/flink"] {
                    let e = open_beneath(root_fd.as_fd(), through_link).unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{through_link}");
                }
                let e = open_beneath(root_fd.as_fd(), "a/fifo").unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            };
            if fallback {
                crate::fsys::walk::with_fallback_only(check);
            } else {
                check();
            }
        }
    }
}
