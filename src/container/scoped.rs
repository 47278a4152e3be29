//! Paths inside a container's root, resolved as the container would see
//! them: symlinks are followed but never out of the root, `..` stops at
//! the root. Mount points and populate sources go through here, so an
//! image cannot aim a volume at the host by planting a symlink.
//!
//! This is the shared walker ([`crate::fsys::walk`]) with
//! [`Links::InRoot`], plus what to make where a component is missing.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::fsys::sys::{self, OFlags};
use crate::fsys::walk::{Links, Missing, Walked, Walker};

/// What [`resolve`] makes when the last component is missing (the others
/// are always made as directories).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Make {
    /// A directory, mode 0755 (less the umask).
    Dir,
    /// An empty regular file, mode 0644 (less the umask).
    File,
}

/// Splits an in-container path into components, dropping empty and `.`
/// ones (`..` stays: [`resolve`] stops it at the root). The path is taken
/// as absolute whether or not it starts with `/`.
pub fn components(path: &str) -> Vec<Vec<u8>> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// Resolves `path` under `root` as the container sees it and returns an
/// `O_PATH` descriptor of what it names (following a last component that
/// is a symlink). Missing components are made as directories (mode 0755)
/// when `make` is given, the last one as `make` says; otherwise a missing
/// component gives `Ok(None)`.
///
/// # Errors
/// `ENOTDIR` when a component other than the last is not a directory,
/// `ELOOP` after more than [`crate::fsys::walk::MAX_LINKS`] symlinks,
/// `ENOENT` when something made vanished at once; those of opening `root`
/// and of the system calls on the way (e.g. `EEXIST` from a racing
/// creator).
pub fn resolve(root: &Path, path: &str, make: Option<Make>) -> io::Result<Option<OwnedFd>> {
    resolve_with(root, path, make, false)
}

/// [`resolve`], with the component walk alone when `fallback_only`.
fn resolve_with(
    root: &Path,
    path: &str,
    make: Option<Make>,
    fallback_only: bool,
) -> io::Result<Option<OwnedFd>> {
    let root = sys::open_root(root)?;
    let mut walker = Walker::new(root.as_fd(), Links::InRoot);
    if fallback_only {
        walker = walker.fallback_only();
    }
    let mut maker = |m: &Missing| match make {
        Some(Make::File) if m.last => {
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW;
            sys::openat(m.dir, m.name, flags, 0o644).map(drop)
        }
        _ => sys::mkdirat(m.dir, m.name, 0o755),
    };
    let made = make.is_some().then_some(&mut maker as _);
    match walker.walk(&components(path), OFlags::PATH, made)? {
        Walked::Found(fd) => Ok(Some(fd)),
        Walked::Missing(_) if make.is_some() => Err(sys::errno(libc::ENOENT)),
        Walked::Missing(_) => Ok(None),
        Walked::NotDir(_) => Err(sys::errno(libc::ENOTDIR)),
        Walked::Symlink(_) => unreachable!("symlinks are followed in the root"),
    }
}

/// The host path a descriptor from [`resolve`] names now.
///
/// # Errors
/// Those of reading `/proc/self/fd/N` (`/proc` must be mounted).
pub fn host_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(sys::proc_fd_path(fd.as_fd()))
}

/// A path through which system calls reach exactly the object of `fd`
/// (`/proc/self/fd/N`), valid while `fd` is open.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    sys::proc_fd_path(fd.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_resolution_stays_in_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join("var/real")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink("/var/real", root.join("abs")).unwrap();
        symlink("../../..", root.join("var/up")).unwrap();
        symlink(&outside, root.join("host")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        // openat2 where the kernel has it, and the component walk alone:
        // the same answers.
        for fallback in [false, true] {
            let resolve = |root: &Path, p: &str, make| resolve_with(root, p, make, fallback);
            let at = |p: &str, make| {
                resolve(&root, p, make)
                    .unwrap()
                    .map(|fd| host_path(&fd).unwrap())
            };
            let root_c = fs::canonicalize(&root).unwrap();
            assert_eq!(at("/abs", None), Some(root_c.join("var/real")));
            assert_eq!(at("/var/up/var", None), Some(root_c.join("var")));
            assert_eq!(at("/../../var/./real/..", None), Some(root_c.join("var")));
            assert_eq!(at("/", None), Some(root_c.clone()));
            // An absolute link to a host path is read inside the root.
            assert_eq!(at("/host", None), None);
            assert_eq!(
                at("/host/data", Some(Make::Dir)),
                Some(root_c.join(outside.strip_prefix("/").unwrap()).join("data"))
            );
            assert!(!outside.join("data").exists());
            assert_eq!(
                at("/new/a/b", Some(Make::Dir)),
                Some(root_c.join("new/a/b"))
            );
            assert!(root.join("new/a/b").is_dir());
            assert_eq!(at("/etc/f", Some(Make::File)), Some(root_c.join("etc/f")));
            assert!(root.join("etc/f").is_file());
            assert_eq!(at("/file", None), Some(root_c.join("file")));
            let e = resolve(&root, "/file/x", None).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
            let e = resolve(&root, "/loop", None).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
            fs::remove_dir_all(root.join("new")).unwrap();
            fs::remove_dir_all(root.join("etc")).unwrap();
            fs::remove_dir_all(
                root.join(outside.strip_prefix("/").unwrap().iter().next().unwrap()),
            )
            .unwrap();
        }
    }
}
