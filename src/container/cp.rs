//! `container cp`, both ways, as `docker cp` does it: paths are resolved
//! inside the container as it sees them (its volumes mounted, symlinks
//! never leaving its root), owners, modes and times are kept, and a write
//! into a read-only mount is refused before anything is written.
//!
//! Both directions go through a tar stream: out of the container, the
//! `tar` crate archives the resolved path (symlinks archived, never
//! followed); into it, the changeset applier extracts the stream beneath
//! the resolved directory, refusing any entry that would leave it.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::scoped;
use super::Containers;
use crate::changeset::{self, ApplyOptions, WhiteoutMode};
use crate::error::{Error, Result};

/// Where what is copied out of a container goes.
pub enum CopyTo<'a> {
    /// A host path, with `docker cp`'s rules for what exists there.
    Host(&'a Path),
    /// A tar stream (`-`).
    Tar(&'a mut dyn Write),
}

/// What is copied into a container.
pub enum CopyFrom<'a> {
    /// A host path (a symlink is copied as a symlink).
    Host(&'a Path),
    /// A tar stream (`-`), extracted into an existing directory.
    Tar(&'a mut dyn Read),
}

/// A container path split for copying: its directory, its last name
/// (`None` for `/`), and whether it ended in `/.` (the directory's
/// contents, not the directory).
#[derive(Debug)]
struct Split {
    dir: String,
    name: Option<String>,
    contents: bool,
    trailing_slash: bool,
}

fn split(path: &str) -> Result<Split> {
    if !path.starts_with('/') {
        return Err(Error::invalid(
            "container path",
            format!("'{path}' is relative; give an absolute path inside the container"),
        ));
    }
    let contents = path.ends_with("/.") || path == "/";
    let trailing_slash = path.ends_with('/');
    let comps = scoped::components(path);
    let strs: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    if strs.iter().any(|c| c == "..") {
        return Err(Error::invalid(
            "container path",
            format!("'{path}' has '..'; give the path without it"),
        ));
    }
    let (dir, name) = match strs.split_last() {
        Some((last, rest)) => (format!("/{}", rest.join("/")), Some(last.clone())),
        None => ("/".to_string(), None),
    };
    Ok(Split {
        dir,
        name,
        contents,
        trailing_slash,
    })
}

fn missing(container: &str, path: &str) -> Error {
    Error::NotFound {
        what: "path",
        name: path.to_string(),
        hint: format!(
            " in container {container}: list it with `thinlayer container exec {container} -- ls`"
        ),
    }
}

/// The directory `dir` inside `rootfs`, as the container resolves it.
fn resolve_dir(rootfs: &Path, container: &str, dir: &str) -> Result<OwnedFd> {
    let at = rootfs.join(dir.trim_start_matches('/'));
    match scoped::resolve(rootfs, dir, None) {
        Ok(Some(fd)) => {
            let st = crate::fsys::sys::fstat(fd.as_fd()).map_err(Error::io("inspecting", &at))?;
            if st.is_dir() {
                Ok(fd)
            } else {
                Err(Error::invalid(
                    "container path",
                    format!("{dir} in container {container} is not a directory"),
                ))
            }
        }
        Ok(None) => Err(missing(container, dir)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(Error::invalid(
            "container path",
            format!("a component of {dir} in container {container} is not a directory"),
        )),
        Err(e) => Err(Error::io("resolving", &at)(e)),
    }
}

/// Refuses a write beneath `fd` when it is on a read-only mount.
fn refuse_read_only(fd: &OwnedFd, container: &str, path: &str) -> Result<()> {
    let st = rustix::fs::fstatvfs(fd).map_err(|e| Error::io("inspecting", path)(e.into()))?;
    if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Err(Error::invalid(
            "container cp",
            format!(
                "{path} in container {container} is on a read-only mount (a volume mounted :ro); copy somewhere writable"
            ),
        ));
    }
    Ok(())
}

/// Archives `src` into `b`: as `name` (with everything below it), or,
/// with `name` `None`, the children of directory `src` at the top.
fn archive<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    name: Option<&str>,
) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    match name {
        Some(n) if meta.is_dir() => b.append_dir_all(n, src),
        Some(n) => b.append_path_with_name(src, n),
        None => {
            let mut children: Vec<_> = fs::read_dir(src)?.collect::<std::io::Result<_>>()?;
            children.sort_by_key(|e| e.file_name());
            for c in children {
                let n = c.file_name();
                let n = n.to_string_lossy();
                archive(b, &c.path(), Some(&n))?;
            }
            Ok(())
        }
    }
}

/// A tar of `src` written by a thread into a pipe, read from the other end.
fn tar_reader(
    src: PathBuf,
    name: Option<String>,
) -> Result<(
    std::io::PipeReader,
    std::thread::JoinHandle<std::io::Result<()>>,
)> {
    let (r, w) = std::io::pipe().map_err(Error::io("making a pipe for", &src))?;
    let h = std::thread::spawn(move || {
        let mut b = tar::Builder::new(w);
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        archive(&mut b, &src, name.as_deref())?;
        b.into_inner()?.flush()
    });
    Ok((r, h))
}

fn joined(h: std::thread::JoinHandle<std::io::Result<()>>, what: &Path) -> Result<()> {
    h.join()
        .map_err(|_| Error::Corrupt {
            what: format!("the copy of {}", what.display()),
            reason: "the archiving thread panicked".into(),
        })?
        .map_err(Error::io("archiving", what))
}

impl Containers<'_> {
    /// Runs `work` on the container's mounted rootfs (volumes inside),
    /// mounting it for the call if it is not mounted.
    fn with_rootfs<T>(
        &mut self,
        key: &str,
        work: impl FnOnce(&str, &Path) -> Result<T>,
    ) -> Result<T> {
        let (rec, rootfs, mounted_here) = self.prepare_exec(key)?;
        let out = work(&rec.name, &rootfs);
        if mounted_here {
            let undone = self.finish_exec(&rec.id);
            return Error::after_cleanup(out, [undone]);
        }
        out
    }

    /// Copies `path` out of container `key` (`docker cp C:PATH DEST`).
    ///
    /// # Errors
    /// [`Error::NotFound`] for a path the container does not have,
    /// [`Error::Invalid`] for a destination `docker cp` refuses too (a
    /// directory onto a file, a missing directory named with a trailing
    /// `/`), and those of reading and writing.
    pub fn copy_out(&mut self, key: &str, path: &str, to: CopyTo<'_>) -> Result<()> {
        let sp = split(path)?;
        self.with_rootfs(key, |cname, rootfs| {
            let dir = resolve_dir(rootfs, cname, &sp.dir)?;
            let (src, is_dir) = match &sp.name {
                Some(n) => {
                    let p = scoped::fd_path(&dir).join(n);
                    let meta = fs::symlink_metadata(&p).map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => missing(cname, path),
                        _ => Error::io("inspecting", path)(e),
                    })?;
                    if sp.trailing_slash && !meta.is_dir() {
                        return Err(Error::invalid(
                            "container path",
                            format!("{path} in container {cname} is not a directory"),
                        ));
                    }
                    (p, meta.is_dir())
                }
                None => (scoped::fd_path(&dir), true),
            };
            let base = sp.name.clone().unwrap_or_else(|| ".".into());
            match to {
                CopyTo::Tar(out) => {
                    let name = if sp.contents { None } else { Some(base) };
                    let (mut r, h) = tar_reader(src.clone(), name)?;
                    let copied =
                        std::io::copy(&mut r, out).map_err(Error::io("writing", "the tar stream"));
                    drop(r);
                    joined(h, &src)?;
                    copied.map(drop)
                }
                CopyTo::Host(dest) => {
                    let (into, name) = host_target(dest, &base, is_dir, sp.contents)?;
                    let (r, h) = tar_reader(src.clone(), name)?;
                    let mut ar = tar::Archive::new(r);
                    ar.set_preserve_permissions(true);
                    ar.set_preserve_ownerships(true);
                    ar.set_preserve_mtime(true);
                    ar.set_overwrite(true);
                    let unpacked = ar.unpack(&into).map_err(Error::io("writing into", &into));
                    drop(ar);
                    joined(h, &src)?;
                    unpacked
                }
            }
        })
    }

    /// Copies into container `key` at `path` (`docker cp SRC C:PATH`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a destination on a read-only mount, a
    /// directory onto a file, a tar stream into something that is not a
    /// directory; [`Error::NotFound`] for a missing parent directory; the
    /// applier's errors for a hostile or malformed stream.
    pub fn copy_in(&mut self, key: &str, from: CopyFrom<'_>, path: &str) -> Result<()> {
        let sp = split(path)?;
        // Read before anything is mounted: a missing source fails first.
        let src_dir = match &from {
            CopyFrom::Host(src) => fs::symlink_metadata(src)
                .map_err(Error::io("reading", *src))?
                .is_dir(),
            CopyFrom::Tar(_) => false,
        };
        self.with_rootfs(key, |cname, rootfs| {
            let parent = resolve_dir(rootfs, cname, &sp.dir)?;
            // What the destination is now, resolved as the container would.
            let existing = match &sp.name {
                None => Some(resolve_dir(rootfs, cname, "/")?),
                Some(_) => match scoped::resolve(rootfs, path, None) {
                    Ok(fd) => fd,
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                        return Err(Error::invalid(
                            "container path",
                            format!("a component of {path} in container {cname} is not a directory"),
                        ))
                    }
                    Err(e) => return Err(Error::io("resolving", path)(e)),
                },
            };
            let existing_dir = match &existing {
                Some(fd) => crate::fsys::sys::fstat(fd.as_fd())
                    .map_err(Error::io("inspecting", path))?
                    .is_dir()
                    .then_some(fd),
                None => None,
            };
            let opts = ApplyOptions::new(WhiteoutMode::Delete);
            match from {
                CopyFrom::Tar(input) => {
                    let into = existing_dir.ok_or_else(|| {
                        Error::invalid(
                            "container cp",
                            format!("{path} in container {cname} is not an existing directory; a tar stream is extracted into one"),
                        )
                    })?;
                    refuse_read_only(into, cname, path)?;
                    changeset::apply(input, &scoped::fd_path(into), &opts)?;
                    Ok(())
                }
                CopyFrom::Host(src) => {
                    let base = src
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| ".".into());
                    let src_contents = src.as_os_str().as_encoded_bytes().ends_with(b"/.");
                    let (into, name): (&OwnedFd, Option<String>) = match (existing_dir, &existing, &sp.name) {
                        (Some(d), _, _) if src_dir && src_contents => (d, None),
                        (Some(d), _, _) => (d, Some(base)),
                        (None, Some(_), _) if src_dir => {
                            return Err(Error::invalid(
                                "container cp",
                                format!("cannot copy directory {} onto file {path} in container {cname}", src.display()),
                            ))
                        }
                        (None, _, _) if sp.trailing_slash => {
                            return Err(Error::invalid(
                                "container cp",
                                format!("{path} in container {cname} does not exist; a path ending in / must be an existing directory"),
                            ))
                        }
                        (None, _, Some(n)) => (&parent, Some(n.clone())),
                        (None, _, None) => unreachable!("/ always exists"),
                    };
                    refuse_read_only(into, cname, path)?;
                    let (r, h) = tar_reader(src.to_path_buf(), name)?;
                    let applied = changeset::apply(r, &scoped::fd_path(into), &opts);
                    joined(h, src)?;
                    applied?;
                    Ok(())
                }
            }
        })
    }
}

/// Where on the host a copy of a `base`-named source goes, by `docker
/// cp`'s rules: the directory to extract into and the name the source
/// takes there (`None`: the directory's contents go straight in).
fn host_target(
    dest: &Path,
    base: &str,
    src_dir: bool,
    contents: bool,
) -> Result<(PathBuf, Option<String>)> {
    let trailing = dest.as_os_str().as_encoded_bytes().ends_with(b"/");
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => Ok((dest.to_path_buf(), (!contents).then(|| base.to_string()))),
        Ok(_) if src_dir => Err(Error::invalid(
            "container cp",
            format!("cannot copy a directory onto file {}", dest.display()),
        )),
        Ok(_) => Ok(host_parent(dest)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if trailing {
                return Err(Error::invalid(
                    "container cp",
                    format!(
                        "{} does not exist; a path ending in / must be an existing directory",
                        dest.display()
                    ),
                ));
            }
            // The source, or a directory's contents, takes the new name.
            let (parent, name) = host_parent(dest);
            if !parent.is_dir() {
                return Err(Error::invalid(
                    "container cp",
                    format!("{} does not exist; make it first", parent.display()),
                ));
            }
            Ok((parent, name))
        }
        Err(e) => Err(Error::io("inspecting", dest)(e)),
    }
}

fn host_parent(dest: &Path) -> (PathBuf, Option<String>) {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    (parent, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_container_paths_split_as_docker_cp_reads_them() {
        let s = split("/etc/hosts").unwrap();
        assert_eq!(
            (s.dir.as_str(), s.name.as_deref(), s.contents),
            ("/etc", Some("hosts"), false)
        );
        let s = split("/var/cache/.").unwrap();
        assert_eq!(
            (s.dir.as_str(), s.name.as_deref(), s.contents),
            ("/var", Some("cache"), true)
        );
        let s = split("/").unwrap();
        assert_eq!((s.dir.as_str(), s.name, s.contents), ("/", None, true));
        assert!(split("/data/").unwrap().trailing_slash);
        assert!(split("etc").unwrap_err().to_string().contains("relative"));
        assert!(split("/a/../etc").unwrap_err().to_string().contains(".."));
    }

    #[test]
    fn plain_host_targets_follow_docker_cp_rules() {
        let s = thinpool::testing::Scratch::new("cp-host");
        let d = s.path();
        fs::write(d.join("file"), "x").unwrap();
        // Into an existing directory: under the source's name.
        assert_eq!(
            host_target(d, "etc", true, false).unwrap(),
            (d.to_path_buf(), Some("etc".into()))
        );
        assert_eq!(
            host_target(d, "etc", true, true).unwrap(),
            (d.to_path_buf(), None)
        );
        // A file onto a file: replaced; a directory onto a file: refused.
        assert_eq!(
            host_target(&d.join("file"), "hosts", false, false).unwrap(),
            (d.to_path_buf(), Some("file".into()))
        );
        assert!(host_target(&d.join("file"), "etc", true, false).is_err());
        // A new name: a file takes it, a directory is made with it.
        assert_eq!(
            host_target(&d.join("new"), "hosts", false, false).unwrap(),
            (d.to_path_buf(), Some("new".into()))
        );
        assert_eq!(
            host_target(&d.join("newdir"), "etc", true, true).unwrap(),
            (d.to_path_buf(), Some("newdir".into()))
        );
        // A missing directory named with a trailing slash, or a missing parent.
        let slash = PathBuf::from(format!("{}/nodir/", d.display()));
        assert!(host_target(&slash, "hosts", false, false)
            .unwrap_err()
            .to_string()
            .contains("ending in /"));
        assert!(host_target(&d.join("no/such"), "hosts", false, false)
            .unwrap_err()
            .to_string()
            .contains("make it first"));
    }
}
