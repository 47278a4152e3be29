//! Taking a layer's own paths back out of a copy of a tree made over it:
//! how a block-level driver commits a container without copying its data.
//!
//! A container's writable layer sits on its init layer (its mount points
//! and its own files), which sits on the image layer the container was
//! made from. A commit is the container's changes against the init layer,
//! without the init layer's files, applied to the image layer
//! ([`super::export_diff`] with `skip`, then [`super::apply`]): every
//! changed file is copied. A thin snapshot of the writable layer has those
//! changes already, in place, for no copy; but it also has what the init
//! layer made. [`unlayer`] takes that out, so that the snapshot holds what
//! the export and apply would have made:
//!
//! * a skipped file is the base's (copied from it), or absent if the base
//!   has none, whatever the container did to it (the export leaves it
//!   out);
//! * a directory the init layer made, which the base does not have, goes
//!   unless the container changed it or anything below it (the export
//!   would then write it or what is below it);
//! * a directory the base has, which the container did not change, gets
//!   the base's modification time back (the init layer's entries changed
//!   it); every directory whose entries this changes keeps its own.
//!
//! Directories are compared as the export compares them ([`same_meta`]).
//! What the export would write differently, or what this cannot copy
//! exactly, is refused before anything changes
//! ([`ChangesetError::Unsupported`]): a symlink on the way to one of the
//! paths, a skipped path made a directory, a base file with xattrs or more
//! than one link, a node of another type. The caller then commits by
//! export and apply.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::OFlags;

use super::error::{io_err, io_host, ChangesetError};
use super::tree::{list, open_sub, same_meta, scan, Node};
use crate::fsys::sys::{self, FileType};

type Result<T, E = ChangesetError> = std::result::Result<T, E>;

/// Makes `new`, a copy of a tree made over `over` (itself `base` with the
/// paths `files` and `dirs` made), what applying the tree's changes against
/// `over`, without `files`, to `base` would make (see the module).
/// `files` are the skipped non-directory paths, `dirs` the directories
/// `over` may have made (`dev/pts`); both relative, `/`-separated. The
/// directories on the way to either are taken as made by `over` too.
/// `new` and `over` must be snapshots of one filesystem, where an
/// unchanged directory keeps its inode number.
///
/// # Errors
/// [`ChangesetError::Unsupported`] before anything is changed, for what it
/// cannot make exactly (see the module); [`ChangesetError::Io`] otherwise,
/// after which `new` may be half changed and must be discarded.
pub fn unlayer(new: &Path, over: &Path, base: &Path, files: &[&str], dirs: &[&str]) -> Result<()> {
    let roots = Roots {
        new: sys::open_root(new).map_err(io_host("opening tree", new))?,
        over: sys::open_root(over).map_err(io_host("opening tree", over))?,
        base: sys::open_root(base).map_err(io_host("opening tree", base))?,
    };
    let plan = plan(&roots, files, dirs)?;
    carry_out(&roots, &plan)
}

struct Roots {
    new: OwnedFd,
    over: OwnedFd,
    base: OwnedFd,
}

/// What is at a path of one tree.
enum At {
    /// Nothing; `parent` is the directory it would be in, `None` if that
    /// is missing too.
    Absent {
        parent: Option<OwnedFd>,
    },
    Found {
        parent: OwnedFd,
        node: Node,
    },
}

impl At {
    fn node(&self) -> Option<&Node> {
        match self {
            At::Found { node, .. } => Some(node),
            At::Absent { .. } => None,
        }
    }

    fn is_dir(&self) -> bool {
        self.node().is_some_and(|n| n.kind == FileType::Directory)
    }
}

/// The last component of `key`.
fn name_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, n)| n)
}

/// The node at `key` under `root`, with its parent directory; refused if
/// something on the way is there but is not a directory (a symlink
/// included).
fn at(root: BorrowedFd, key: &str) -> Result<At> {
    let parts: Vec<&str> = key.split('/').collect();
    let (last, ancestors) = parts.split_last().expect("split yields a part");
    let mut dir = root.try_clone_to_owned().map_err(io_err("opening", b""))?;
    let mut walked = String::new();
    for part in ancestors {
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(part);
        let c = sys::cstring(part.as_bytes()).map_err(io_err("naming", walked.as_bytes()))?;
        dir = match sys::open_dir_path(dir.as_fd(), &c) {
            Ok(fd) => fd,
            Err(e) if sys::is_enoent(&e) => return Ok(At::Absent { parent: None }),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(ChangesetError::unsupported(
                    walked.as_bytes(),
                    "not a directory, on the way to a path the init layer made",
                ))
            }
            Err(e) => return Err(ChangesetError::io("opening", walked.as_bytes(), e)),
        };
    }
    Ok(match scan(dir.as_fd(), last.as_bytes(), key.as_bytes())? {
        Some(node) => At::Found { parent: dir, node },
        None => At::Absent { parent: Some(dir) },
    })
}

/// What becomes of a skipped file.
enum FileAction {
    Remove,
    /// The base's regular file or symlink, copied with its metadata.
    Copy(Node),
}

#[derive(Default)]
struct Plan {
    files: Vec<(String, FileAction)>,
    /// Directories to remove, deepest first.
    remove_dirs: Vec<String>,
    /// The modification time each remaining directory ends with (`""`:
    /// the root).
    mtimes: BTreeMap<String, (i64, u32)>,
}

/// Decides everything, changing nothing.
fn plan(roots: &Roots, files: &[&str], dirs: &[&str]) -> Result<Plan> {
    let skipped: BTreeSet<&str> = files.iter().copied().collect();
    // Every directory on the way, too.
    let mut all_dirs: BTreeSet<String> = BTreeSet::new();
    for key in files.iter().chain(dirs) {
        let mut k = *key;
        if dirs.contains(key) {
            all_dirs.insert(k.to_string());
        }
        while let Some((d, _)) = k.rsplit_once('/') {
            all_dirs.insert(d.to_string());
            k = d;
        }
    }
    let known = |k: &str| skipped.contains(k) || all_dirs.contains(k);
    let mut plan = Plan::default();
    for &f in files {
        let new = at(roots.new.as_fd(), f)?;
        if new.is_dir() {
            return Err(ChangesetError::unsupported(
                f.as_bytes(),
                "the container made a directory where its init layer has a file",
            ));
        }
        if matches!(new, At::Absent { parent: None }) {
            // The container removed the directory: so does the export.
            continue;
        }
        let action = match at(roots.base.as_fd(), f)? {
            At::Absent { .. } if new.node().is_none() => continue,
            At::Absent { .. } => FileAction::Remove,
            At::Found { node, .. } => {
                if !node.xattrs.is_empty() || node.nlink > 1 {
                    return Err(ChangesetError::unsupported(
                        f.as_bytes(),
                        "the image's file has xattrs or other links, which a copy would not keep",
                    ));
                }
                if !matches!(node.kind, FileType::RegularFile | FileType::Symlink) {
                    return Err(ChangesetError::unsupported(
                        f.as_bytes(),
                        "the image has neither a file nor a symlink there",
                    ));
                }
                FileAction::Copy(node)
            }
        };
        plan.files.push((f.to_string(), action));
    }
    // Deepest first: a directory is decided and emptied after what is in it.
    let mut order: Vec<&String> = all_dirs.iter().collect();
    order.sort_by_key(|k| std::cmp::Reverse(k.matches('/').count()));
    let mut removed: BTreeSet<&str> = BTreeSet::new();
    for d in order {
        let new = at(roots.new.as_fd(), d)?;
        let Some(n) = new.node().filter(|n| n.kind == FileType::Directory) else {
            // Removed or replaced by the container: the export says so.
            continue;
        };
        let over = at(roots.over.as_fd(), d)?;
        let Some(o) = over.node().filter(|o| o.kind == FileType::Directory) else {
            return Err(ChangesetError::unsupported(
                d.as_bytes(),
                "the layer below has no directory there",
            ));
        };
        if n.ino != o.ino {
            return Err(ChangesetError::unsupported(
                d.as_bytes(),
                "the container removed the directory and made it again",
            ));
        }
        match at(roots.base.as_fd(), d)? {
            At::Found { node: b, .. } if b.kind == FileType::Directory => {
                if (b.mode, b.uid, b.gid, &b.xattrs) != (o.mode, o.uid, o.gid, &o.xattrs) {
                    return Err(ChangesetError::unsupported(
                        d.as_bytes(),
                        "the layer below changed the image's directory",
                    ));
                }
                let mtime = if same_meta(n, o) { b.mtime } else { n.mtime };
                plan.mtimes.insert(d.clone(), mtime);
            }
            At::Found { .. } => {
                return Err(ChangesetError::unsupported(
                    d.as_bytes(),
                    "the image has something else than a directory there",
                ))
            }
            At::Absent { .. } => {
                let (At::Found { parent: np, .. }, At::Found { parent: op, .. }) = (&new, &over)
                else {
                    unreachable!("both found above");
                };
                let nfd = open_sub(np.as_fd(), name_of(d).as_bytes(), d.as_bytes())?;
                let ofd = open_sub(op.as_fd(), name_of(d).as_bytes(), d.as_bytes())?;
                if same_meta(n, o) && unchanged(nfd.as_fd(), ofd.as_fd(), d, &skipped)? {
                    // Everything in it was made below: it empties.
                    let odev = sys::fstat(ofd.as_fd())
                        .map_err(io_err("inspecting", d.as_bytes()))?
                        .st_dev;
                    for c in list(ofd.as_fd(), d.as_bytes(), odev, false)? {
                        let k = format!("{d}/{}", String::from_utf8_lossy(&c.name));
                        if !known(&k) || (all_dirs.contains(&k) && !removed.contains(k.as_str())) {
                            return Err(ChangesetError::unsupported(
                                k.as_bytes(),
                                "the layer below made more than its own paths here",
                            ));
                        }
                    }
                    plan.remove_dirs.push(d.clone());
                    removed.insert(d.as_str());
                } else {
                    plan.mtimes.insert(d.clone(), n.mtime);
                }
            }
        }
    }
    for d in &plan.remove_dirs {
        plan.mtimes.remove(d);
    }
    let root = sys::fstat(roots.new.as_fd()).map_err(io_err("inspecting", b""))?;
    plan.mtimes.insert(String::new(), root.mtime());
    Ok(plan)
}

/// Whether directory `n` has what `o` has, nothing more, all unchanged
/// (`skipped` files aside), as the export compares them.
fn unchanged(n: BorrowedFd, o: BorrowedFd, key: &str, skipped: &BTreeSet<&str>) -> Result<bool> {
    let dev = |fd: BorrowedFd| {
        sys::fstat(fd)
            .map(|st| st.st_dev)
            .map_err(io_err("inspecting", key.as_bytes()))
    };
    let keep = |nodes: Vec<Node>| -> Vec<Node> {
        nodes
            .into_iter()
            .filter(|c| {
                let k = format!("{key}/{}", String::from_utf8_lossy(&c.name));
                !skipped.contains(k.as_str())
            })
            .collect()
    };
    let ns = keep(list(n, key.as_bytes(), dev(n)?, false)?);
    let os = keep(list(o, key.as_bytes(), dev(o)?, false)?);
    if ns.len() != os.len() {
        return Ok(false);
    }
    for (a, b) in ns.iter().zip(&os) {
        if a.name != b.name || !same_meta(a, b) {
            return Ok(false);
        }
        if a.kind == FileType::Directory {
            let k = format!("{key}/{}", String::from_utf8_lossy(&a.name));
            if a.ino != b.ino {
                return Ok(false);
            }
            let asub = open_sub(n, &a.name, k.as_bytes())?;
            let bsub = open_sub(o, &b.name, k.as_bytes())?;
            if !unchanged(asub.as_fd(), bsub.as_fd(), &k, skipped)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn carry_out(roots: &Roots, plan: &Plan) -> Result<()> {
    for (f, action) in &plan.files {
        let (At::Found { parent, .. }
        | At::Absent {
            parent: Some(parent),
        }) = at(roots.new.as_fd(), f)?
        else {
            continue;
        };
        let name = sys::cstring(name_of(f).as_bytes()).map_err(io_err("naming", f.as_bytes()))?;
        match sys::unlinkat(parent.as_fd(), &name) {
            Err(e) if !sys::is_enoent(&e) => {
                return Err(ChangesetError::io("removing", f.as_bytes(), e))
            }
            _ => {}
        }
        if let FileAction::Copy(b) = action {
            copy(roots, f, b, parent.as_fd(), &name)?;
        }
    }
    for d in &plan.remove_dirs {
        if let At::Found { parent, .. } = at(roots.new.as_fd(), d)? {
            let name =
                sys::cstring(name_of(d).as_bytes()).map_err(io_err("naming", d.as_bytes()))?;
            sys::rmdirat(parent.as_fd(), &name).map_err(io_err("removing", d.as_bytes()))?;
        }
    }
    for (d, &mtime) in &plan.mtimes {
        if d.is_empty() {
            sys::lutimensat(roots.new.as_fd(), c".", mtime)
                .map_err(io_err("setting the time of", b"."))?;
            continue;
        }
        if let At::Found { parent, .. } = at(roots.new.as_fd(), d)? {
            let name =
                sys::cstring(name_of(d).as_bytes()).map_err(io_err("naming", d.as_bytes()))?;
            sys::lutimensat(parent.as_fd(), &name, mtime)
                .map_err(io_err("setting the time of", d.as_bytes()))?;
        }
    }
    Ok(())
}

/// Copies the base's file or symlink `b` at `key` into `dir/name` of the
/// new tree, with its owner, mode and time.
fn copy(roots: &Roots, key: &str, b: &Node, dir: BorrowedFd, name: &std::ffi::CStr) -> Result<()> {
    let k = key.as_bytes();
    let At::Found { parent: bdir, .. } = at(roots.base.as_fd(), key)? else {
        return Err(ChangesetError::unsupported(k, "the image's file went away"));
    };
    if b.kind == FileType::Symlink {
        let target = sys::cstring(&b.target).map_err(io_err("naming", k))?;
        sys::symlinkat(&target, dir, name).map_err(io_err("making", k))?;
        sys::lchownat(dir, name, b.uid, b.gid).map_err(io_err("setting the owner of", k))?;
        return sys::lutimensat(dir, name, b.mtime).map_err(io_err("setting the time of", k));
    }
    let mut src = std::fs::File::from(
        sys::openat(bdir.as_fd(), name, OFlags::RDONLY | OFlags::NOFOLLOW, 0)
            .map_err(io_err("opening", k))?,
    );
    let mut data = Vec::with_capacity(b.size as usize);
    src.read_to_end(&mut data).map_err(io_err("reading", k))?;
    let mut dst = std::fs::File::from(
        sys::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            0o600,
        )
        .map_err(io_err("making", k))?,
    );
    dst.write_all(&data).map_err(io_err("writing", k))?;
    // The owner before the mode: a chown clears setuid and setgid.
    sys::fchown(dst.as_fd(), b.uid, b.gid).map_err(io_err("setting the owner of", k))?;
    sys::fchmod(dst.as_fd(), b.mode).map_err(io_err("setting the mode of", k))?;
    sys::futimens(dst.as_fd(), b.mtime).map_err(io_err("setting the time of", k))
}
