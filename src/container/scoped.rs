//! Paths inside a container's root, resolved as the container would see
//! them: symlinks are followed but never out of the root, `..` stops at
//! the root. Mount points and populate sources go through here, so an
//! image cannot aim a volume at the host by planting a symlink.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::fsys::sys::{self, FileType, OFlags};

/// What to make when the last component is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Make {
    Dir,
    File,
}

/// Most symlinks followed in one resolution (as the kernel's MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Splits an in-container path into components. It must be absolute and
/// name something below the root.
pub fn components(path: &str) -> Vec<Vec<u8>> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(|c| c.as_bytes().to_vec())
        .collect()
}

/// Resolves `path` under `root`. Missing components are made as
/// directories (mode 0755, owned by root) when `make` is given, the last
/// one as `make` says; otherwise a missing component gives `Ok(None)`.
/// Returns an `O_PATH` descriptor of what the path names.
pub fn resolve(root: &Path, path: &str, make: Option<Make>) -> io::Result<Option<OwnedFd>> {
    let mut stack: Vec<OwnedFd> = vec![sys::open_root(root)?];
    let mut todo: VecDeque<Vec<u8>> = components(path).into();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let name = sys::cstring(&c)?;
        let cur = stack.last().expect("the root stays").as_fd();
        let last = todo.is_empty();
        let Some(st) = sys::lstatat(cur, &name)? else {
            match make {
                None => return Ok(None),
                Some(Make::File) if last => {
                    let fd = sys::openat(
                        cur,
                        &name,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW,
                        0o644,
                    )?;
                    drop(fd);
                }
                Some(_) => sys::mkdirat(cur, &name, 0o755)?,
            }
            todo.push_front(c);
            continue;
        };
        match st.file_type() {
            FileType::Symlink => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = sys::readlinkat(cur, &name)?;
                if target.starts_with(b"/") {
                    stack.truncate(1);
                }
                let s = String::from_utf8_lossy(&target).into_owned();
                for comp in components(&s).into_iter().rev() {
                    todo.push_front(comp);
                }
            }
            FileType::Directory => {
                let fd = sys::open_dir_path(cur, &name)?;
                stack.push(fd);
            }
            _ if last => {
                let fd = sys::open_node_path(cur, &name)?;
                return Ok(Some(fd));
            }
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    Ok(stack.pop())
}

/// The host path a descriptor from [`resolve`] names now.
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
    }
}
