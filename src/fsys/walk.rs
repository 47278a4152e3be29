//! Resolving a path beneath a root directory without ever leaving it: the
//! one walker that layer apply, container mount points and directory image
//! sources all use.
//!
//! A [`Walker`] starts at a directory descriptor (the root) and resolves
//! path components below it in one of two ways ([`Links`]):
//!
//! * [`Links::Refuse`]: no symlink may be met on the way (`..` may not climb
//!   above the start). Layer apply uses it: an archive must never write
//!   through a symlink, its own or one already in the tree.
//! * [`Links::InRoot`]: symlinks are followed as if the start were `/`
//!   (absolute targets restart there, `..` stops there). Container mount
//!   points use it: `/var/run -> /run` means the container's `/run`, never
//!   the host's.
//!
//! Where the kernel has `openat2(2)` (Linux 5.6), the whole path is first
//! resolved by it, with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` or
//! `RESOLVE_IN_ROOT` (and `RESOLVE_NO_MAGICLINKS` either way). When that
//! fails for any reason (`ENOSYS` on an older kernel, or because something
//! is missing, is not a directory or is a symlink), the component walk
//! decides: one `openat(O_PATH|O_NOFOLLOW)` per component, the type read
//! from the descriptor itself, so a component swapped for a symlink between
//! two calls is seen, never followed. The component walk is the one that
//! says *which* component stopped the walk ([`Walked`]) and the one that
//! makes missing components (the `make` callback of [`Walker::walk`]), so
//! both ways give the same answers.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, ResolveFlags};
use rustix::io::Errno;

use super::sys::{self, FileType, OFlags};

/// Most symlinks followed in one resolution (the kernel's `MAXSYMLINKS`).
pub const MAX_LINKS: usize = 40;

/// How a walk treats the symlinks it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Any symlink on the way stops the walk ([`Walked::Symlink`]); the last
    /// component too, unless the flags ask for `O_PATH | O_NOFOLLOW` (then
    /// the descriptor is the link's). `..` may not climb above the start
    /// (`EXDEV`). As `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
    Refuse,
    /// Symlinks are followed as if the start were `/`: an absolute target
    /// restarts at the start, `..` stops there; at most [`MAX_LINKS`] of
    /// them (`ELOOP`). The last component is followed unless the flags have
    /// `O_NOFOLLOW`. As `openat2` with `RESOLVE_IN_ROOT`.
    InRoot,
}

/// Where a walk ended. Indices are positions in the components given to
/// [`Walker::walk`] (for a component reached through a symlink, the
/// position of the component whose link led there).
#[derive(Debug)]
pub enum Walked {
    /// The path exists; the descriptor was opened with the walk's flags.
    Found(OwnedFd),
    /// Component `.0` does not exist (and nothing made it).
    Missing(usize),
    /// Component `.0` is not a directory but something follows it, or it is
    /// the last and the flags have `O_DIRECTORY`.
    NotDir(usize),
    /// Component `.0` is a symlink ([`Links::Refuse`] only).
    Symlink(usize),
}

/// A missing component, as the `make` callback of [`Walker::walk`] sees it.
pub struct Missing<'a> {
    /// The directory it is missing from.
    pub dir: BorrowedFd<'a>,
    /// Its name there.
    pub name: &'a CStr,
    /// Its position in the components walked (as in [`Walked`]).
    pub index: usize,
    /// Whether it is the last component of the path.
    pub last: bool,
}

/// What the `make` callback of [`Walker::walk`] is: it makes the missing
/// component (a directory, unless it is the last and the caller wants
/// something else there), or fails the walk with its error.
pub type Make<'m> = &'m mut dyn FnMut(&Missing<'_>) -> io::Result<()>;

/// Set once `openat2` has answered `ENOSYS`: not asked again.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Tests: walks made on this thread skip `openat2`.
    static FALLBACK_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every walk made on this thread using the component walk
/// alone, as on a kernel without `openat2`: for tests of the fallback
/// through an API that walks inside (such as layer apply).
pub fn with_fallback_only<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            FALLBACK_ONLY.set(self.0);
        }
    }
    let _reset = Reset(FALLBACK_ONLY.replace(true));
    f()
}

/// Resolves paths beneath one directory; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Walker<'r> {
    start: BorrowedFd<'r>,
    links: Links,
    kernel: bool,
}

impl<'r> Walker<'r> {
    /// A walker of the tree below `start` (a directory descriptor; an
    /// `O_PATH` one is enough), treating symlinks as `links` says.
    pub fn new(start: BorrowedFd<'r>, links: Links) -> Self {
        Walker {
            start,
            links,
            kernel: !FALLBACK_ONLY.get(),
        }
    }

    /// The same walker, resolving with the component walk alone (as on a
    /// kernel without `openat2`).
    pub fn fallback_only(self) -> Self {
        Walker {
            kernel: false,
            ..self
        }
    }

    /// Resolves `comps` (path components, no nul byte; empty and `.`
    /// components are skipped, `..` goes up as [`Links`] says, a `/` inside
    /// one separates as in a path) and opens
    /// what they name with `flags` (`O_CLOEXEC` is added; `O_CREAT` is not
    /// allowed: `make` creates). An empty path names the start itself.
    ///
    /// With `make`, a missing component is passed to it and looked up again
    /// once it returns; without, or if it is still missing, the walk ends
    /// with [`Walked::Missing`].
    ///
    /// # Errors
    /// Those of the system calls on the way (`EACCES`, ...); `ELOOP` for
    /// more than [`MAX_LINKS`] symlinks ([`Links::InRoot`]) or a last
    /// component that is a symlink opened with `O_NOFOLLOW` but not
    /// `O_PATH`; `EXDEV` for a `..` above the start ([`Links::Refuse`]);
    /// `InvalidInput` for a component with a nul byte; whatever `make`
    /// returns.
    pub fn walk<C: AsRef<[u8]>>(
        &self,
        comps: &[C],
        flags: OFlags,
        make: Option<Make<'_>>,
    ) -> io::Result<Walked> {
        debug_assert!(!flags.contains(OFlags::CREATE), "the walk never creates");
        if let Some(fd) = self.kernel_open(comps, flags) {
            return Ok(Walked::Found(fd));
        }
        self.component_walk(comps, flags, make)
    }

    /// [`walk`](Self::walk) without making anything, where everything but
    /// [`Walked::Found`] is an error.
    ///
    /// # Errors
    /// Those of [`walk`](Self::walk), and `ENOENT` ([`Walked::Missing`]),
    /// `ENOTDIR` ([`Walked::NotDir`]) or `ELOOP` ([`Walked::Symlink`]).
    pub fn open<C: AsRef<[u8]>>(&self, comps: &[C], flags: OFlags) -> io::Result<OwnedFd> {
        match self.walk(comps, flags, None)? {
            Walked::Found(fd) => Ok(fd),
            Walked::Missing(_) => Err(sys::errno(libc::ENOENT)),
            Walked::NotDir(_) => Err(sys::errno(libc::ENOTDIR)),
            Walked::Symlink(_) => Err(sys::errno(libc::ELOOP)),
        }
    }

    /// The whole path in one `openat2`; `None` when it fails (the component
    /// walk then decides) or the kernel lacks it.
    fn kernel_open<C: AsRef<[u8]>>(&self, comps: &[C], flags: OFlags) -> Option<OwnedFd> {
        if !self.kernel || NO_OPENAT2.load(Ordering::Relaxed) {
            return None;
        }
        let mut path = Vec::new();
        for c in comps.iter().map(AsRef::as_ref) {
            if c.is_empty() || c == b"." {
                continue;
            }
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(c);
        }
        if path.is_empty() {
            // The start itself: nothing to resolve.
            return None;
        }
        let resolve = ResolveFlags::NO_MAGICLINKS
            | match self.links {
                Links::Refuse => ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                Links::InRoot => ResolveFlags::IN_ROOT,
            };
        let flags = flags | OFlags::CLOEXEC;
        match rustix::fs::openat2(self.start, &path, flags, Mode::empty(), resolve) {
            Ok(fd) => Some(fd),
            Err(Errno::NOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    /// One component at a time; see the module documentation.
    fn component_walk<C: AsRef<[u8]>>(
        &self,
        comps: &[C],
        flags: OFlags,
        mut make: Option<Make<'_>>,
    ) -> io::Result<Walked> {
        // The directories walked into below the start, innermost last.
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut todo: VecDeque<(Vec<u8>, usize)> = VecDeque::new();
        for (i, c) in comps.iter().enumerate() {
            // A `/` inside a component separates, as it does for openat2
            // (never a multi-component name for openat, which would follow
            // the symlinks inside it).
            for piece in c.as_ref().split(|b| *b == b'/') {
                push_back(&mut todo, piece, i);
            }
        }
        let mut links = 0;
        while let Some((c, i)) = todo.pop_front() {
            let cur = stack.last().map_or(self.start, |fd| fd.as_fd());
            if c == b".." {
                if stack.pop().is_none() && self.links == Links::Refuse {
                    return Err(sys::errno(libc::EXDEV));
                }
                continue;
            }
            let last = todo.is_empty();
            let name = sys::cstring(&c)?;
            let fd = match sys::open_node_path(cur, &name) {
                Err(e) if sys::is_enoent(&e) => {
                    let Some(make) = make.as_mut() else {
                        return Ok(Walked::Missing(i));
                    };
                    make(&Missing {
                        dir: cur,
                        name: &name,
                        index: i,
                        last,
                    })?;
                    match sys::open_node_path(cur, &name) {
                        Err(e) if sys::is_enoent(&e) => return Ok(Walked::Missing(i)),
                        r => r?,
                    }
                }
                r => r?,
            };
            match sys::fstat(fd.as_fd())?.file_type() {
                FileType::Symlink => {
                    if last && flags.contains(OFlags::NOFOLLOW) {
                        if flags.contains(OFlags::PATH) {
                            return Ok(Walked::Found(fd));
                        }
                        if self.links == Links::InRoot {
                            return Err(sys::errno(libc::ELOOP));
                        }
                    }
                    if self.links == Links::Refuse {
                        return Ok(Walked::Symlink(i));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(sys::errno(libc::ELOOP));
                    }
                    let target = sys::readlinkat(fd.as_fd(), c"")?;
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    let mut expanded = VecDeque::new();
                    for t in target.split(|b| *b == b'/') {
                        push_back(&mut expanded, t, i);
                    }
                    expanded.append(&mut todo);
                    todo = expanded;
                }
                FileType::Directory if !last => stack.push(fd),
                _ if !last => return Ok(Walked::NotDir(i)),
                FileType::Directory => return reopen(cur, &name, fd, flags).map(Walked::Found),
                _ if flags.contains(OFlags::DIRECTORY) => return Ok(Walked::NotDir(i)),
                _ => return reopen(cur, &name, fd, flags).map(Walked::Found),
            }
        }
        // The path ended on a directory reached by `..` (or was empty).
        match stack.pop() {
            Some(fd) if flags.contains(OFlags::PATH) => Ok(Walked::Found(fd)),
            Some(fd) => sys::openat(fd.as_fd(), c".", flags, 0).map(Walked::Found),
            None if flags.contains(OFlags::PATH) => {
                self.start.try_clone_to_owned().map(Walked::Found)
            }
            None => sys::openat(self.start, c".", flags, 0).map(Walked::Found),
        }
    }
}

/// Queues component `c` (from input position `i`) unless it is empty or `.`.
fn push_back(todo: &mut VecDeque<(Vec<u8>, usize)>, c: &[u8], i: usize) {
    if !c.is_empty() && c != b"." {
        todo.push_back((c.to_vec(), i));
    }
}

/// The last component `dir/name`, of which `fd` is an `O_PATH|O_NOFOLLOW`
/// descriptor (not a symlink), opened with `flags`.
fn reopen(dir: BorrowedFd, name: &CStr, fd: OwnedFd, flags: OFlags) -> io::Result<OwnedFd> {
    if flags.contains(OFlags::PATH) {
        return Ok(fd);
    }
    // Replaced by a symlink since: O_NOFOLLOW makes that ELOOP.
    sys::openat(dir, name, flags | OFlags::NOFOLLOW, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A tree to walk: `root/` with `d/e/`, `f` (a file), `in -> d`,
    /// `abs -> /d/e`, `out -> ../..` and `host -> <the directory above the
    /// root>`, plus `outside/` beside the root.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::create_dir_all(t.path().join("outside/x")).unwrap();
        fs::write(root.join("f"), b"f").unwrap();
        symlink("d", root.join("in")).unwrap();
        symlink("/d/e", root.join("abs")).unwrap();
        symlink("../..", root.join("d/out")).unwrap();
        symlink(t.path(), root.join("host")).unwrap();
        symlink("self", root.join("self")).unwrap();
        (t, root)
    }

    fn comps(p: &str) -> Vec<&str> {
        p.split('/').collect()
    }

    /// What a walk gave, in comparable form: the host path found, or the
    /// variant and index, or the errno.
    fn show(r: io::Result<Walked>) -> String {
        match r {
            Ok(Walked::Found(fd)) => {
                let p = fs::read_link(sys::proc_fd_path(fd.as_fd())).unwrap();
                format!("found {}", p.display())
            }
            Ok(Walked::Missing(i)) => format!("missing {i}"),
            Ok(Walked::NotDir(i)) => format!("notdir {i}"),
            Ok(Walked::Symlink(i)) => format!("symlink {i}"),
            Err(e) => format!("errno {:?}", e.raw_os_error()),
        }
    }

    /// Walks `path` both ways (openat2 where the kernel has it, and the
    /// component walk alone); they must agree. Returns the answer.
    fn both(root: &Path, links: Links, path: &str, flags: OFlags) -> String {
        let fd = sys::open_root(root).unwrap();
        let w = Walker::new(fd.as_fd(), links);
        let k = show(w.walk(&comps(path), flags, None));
        let f = show(w.fallback_only().walk(&comps(path), flags, None));
        assert_eq!(k, f, "{path:?}: openat2 and the component walk disagree");
        k
    }

    #[test]
    fn plain_refuse_stops_at_symlinks_and_says_where() {
        let (t, root) = tree();
        let root = fs::canonicalize(root).unwrap();
        let dir = OFlags::PATH | OFlags::DIRECTORY;
        let r = |p| both(&root, Links::Refuse, p, dir);
        assert_eq!(r("d/e"), format!("found {}", root.join("d/e").display()));
        assert_eq!(
            r("./d//e/"),
            format!("found {}", root.join("d/e").display())
        );
        assert_eq!(r(""), format!("found {}", root.display()));
        assert_eq!(r("d/nope/x"), "missing 1");
        assert_eq!(r("f/x"), "notdir 0");
        assert_eq!(r("f"), "notdir 0");
        assert_eq!(r("in/e"), "symlink 0");
        assert_eq!(r("d/out"), "symlink 1");
        assert_eq!(r("host/outside"), "symlink 0");
        assert_eq!(r("d/e/../.."), format!("found {}", root.display()));
        assert_eq!(r(".."), "errno Some(18)"); // EXDEV
                                               // O_PATH|O_NOFOLLOW names the link itself, as openat2 does.
        let link = OFlags::PATH | OFlags::NOFOLLOW;
        assert_eq!(
            both(&root, Links::Refuse, "in", link),
            format!("found {}", root.join("in").display())
        );
        // A `/` inside a component separates: the symlink is still seen.
        let fd = sys::open_root(&root).unwrap();
        for w in [
            Walker::new(fd.as_fd(), Links::Refuse),
            Walker::new(fd.as_fd(), Links::Refuse).fallback_only(),
        ] {
            assert_eq!(show(w.walk(&["d", "out/x"], dir, None)), "symlink 1");
            assert_eq!(
                show(w.walk(&["d/e"], dir, None)),
                format!("found {}", root.join("d/e").display())
            );
        }
        // A file opened for reading.
        let fd = sys::open_root(&root).unwrap();
        let f = Walker::new(fd.as_fd(), Links::Refuse)
            .open(&["f"], OFlags::RDONLY)
            .unwrap();
        assert_eq!(fs::read(sys::proc_fd_path(f.as_fd())).unwrap(), b"f");
        drop(t);
    }

    #[test]
    fn plain_in_root_follows_symlinks_without_leaving() {
        let (t, root) = tree();
        let root = fs::canonicalize(root).unwrap();
        let r = |p| both(&root, Links::InRoot, p, OFlags::PATH);
        let at = |p: &str| format!("found {}", root.join(p).display());
        assert_eq!(r("in/e"), at("d/e"));
        assert_eq!(r("abs"), at("d/e"));
        assert_eq!(r("d/out/d/out/f"), at("f"));
        assert_eq!(r("../../d"), at("d"));
        assert_eq!(r("d/e/.."), at("d"));
        assert_eq!(r("f"), at("f"));
        // An absolute link to the host is read inside the root.
        assert_eq!(r("host/outside"), "missing 0");
        assert_eq!(r("f/x"), "notdir 0");
        assert_eq!(r("self"), "errno Some(40)"); // ELOOP
        assert_eq!(
            both(&root, Links::InRoot, "in", OFlags::PATH | OFlags::NOFOLLOW),
            at("in")
        );
        assert_eq!(
            both(
                &root,
                Links::InRoot,
                "in",
                OFlags::RDONLY | OFlags::NOFOLLOW
            ),
            "errno Some(40)"
        );
        drop(t);
    }

    #[test]
    fn plain_make_creates_what_is_missing_and_only_below_the_root() {
        for fallback in [false, true] {
            let (t, root) = tree();
            let fd = sys::open_root(&root).unwrap();
            let mut w = Walker::new(fd.as_fd(), Links::InRoot);
            if fallback {
                w = w.fallback_only();
            }
            let mut made = Vec::new();
            let mut make = |m: &Missing| {
                made.push((m.index, m.last));
                sys::mkdirat(m.dir, m.name, 0o755)
            };
            let r = w.walk(&comps("host/outside/new"), OFlags::PATH, Some(&mut make));
            let root_c = fs::canonicalize(&root).unwrap();
            let inside = root_c
                .join(t.path().strip_prefix("/").unwrap())
                .join("outside/new");
            assert_eq!(show(r), format!("found {}", inside.display()));
            assert!(!t.path().join("outside/new").exists());
            // What component 0's link led to, then components 1 and 2.
            let via_link = t.path().components().count() - 1;
            let mut want = vec![(0, false); via_link];
            want.extend([(1, false), (2, true)]);
            assert_eq!(made, want);
            // A maker that makes nothing: still missing.
            let mut idle = |_: &Missing| Ok(());
            let r = w.walk(&comps("d/none"), OFlags::PATH, Some(&mut idle));
            assert_eq!(show(r), "missing 1");
            // The maker's error ends the walk.
            let mut fail = |_: &Missing| Err(sys::errno(libc::EROFS));
            let r = w.walk(&comps("d/none"), OFlags::PATH, Some(&mut fail));
            assert_eq!(show(r), "errno Some(30)");
        }
    }

    #[test]
    fn plain_fallback_only_applies_on_its_thread_for_its_duration() {
        let fd = sys::open_root(Path::new("/")).unwrap();
        assert!(Walker::new(fd.as_fd(), Links::Refuse).kernel);
        with_fallback_only(|| {
            assert!(!Walker::new(fd.as_fd(), Links::Refuse).kernel);
            let other = std::thread::spawn(|| FALLBACK_ONLY.get()).join().unwrap();
            assert!(!other);
        });
        assert!(Walker::new(fd.as_fd(), Links::Refuse).kernel);
    }

    #[test]
    fn plain_openat2_resolves_where_the_kernel_has_it() {
        let (_t, root) = tree();
        let fd = sys::open_root(&root).unwrap();
        let has_openat2 = !matches!(
            rustix::fs::openat2(
                fd.as_fd(),
                ".",
                OFlags::PATH,
                Mode::empty(),
                ResolveFlags::empty()
            ),
            Err(Errno::NOSYS)
        );
        let w = Walker::new(fd.as_fd(), Links::Refuse);
        let dir = OFlags::PATH | OFlags::DIRECTORY;
        assert_eq!(w.kernel_open(&["d", "e"], dir).is_some(), has_openat2);
        // It refuses what the component walk would refuse.
        assert!(w.kernel_open(&["in", "e"], dir).is_none());
        assert!(w.fallback_only().kernel_open(&["d", "e"], dir).is_none());
    }
}
