//! The `*at` system calls and their kin, on borrowed descriptors, through
//! `rustix`: no `unsafe` here.
//!
//! Names are `&CStr` (one path component, or a path relative to `dir` where
//! a function says so); modes are permission bits (`0o7777`); times are
//! `(seconds, nanoseconds)`. Every call is retried when a signal interrupts
//! it (`EINTR`), and every error is a [`std::io::Error`] carrying the errno,
//! so callers can still match on `raw_os_error()`.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};
use rustix::io::Errno;

pub use rustix::fs::{FileType, OFlags};

/// What `stat(2)` says about a file, in fixed-width fields whatever the
/// architecture. The fields keep `stat(2)`'s names, so code reads like the
/// man page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The filesystem the file is on.
    pub st_dev: u64,
    /// The inode number.
    pub st_ino: u64,
    /// The file type (`S_IFMT` bits) and the permission bits.
    pub st_mode: u32,
    /// How many hard links the inode has.
    pub st_nlink: u64,
    /// The owner.
    pub st_uid: u32,
    /// The group.
    pub st_gid: u32,
    /// The device a device node stands for.
    pub st_rdev: u64,
    /// The size in bytes.
    pub st_size: u64,
    /// Last modification, seconds since the epoch.
    pub st_mtime: i64,
    /// Last modification, the nanoseconds.
    pub st_mtime_nsec: u32,
}

impl Stat {
    /// The file type, from the `S_IFMT` bits of `st_mode`.
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.st_mode)
    }

    /// Whether the file is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    /// The permission bits, with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub fn perm(&self) -> u32 {
        self.st_mode & 0o7777
    }

    /// The modification time, `(seconds, nanoseconds)`.
    pub fn mtime(&self) -> (i64, u32) {
        (self.st_mtime, self.st_mtime_nsec)
    }

    /// Whether `other` is the same inode (same device and inode number).
    pub fn same_inode(&self, other: &Stat) -> bool {
        self.st_dev == other.st_dev && self.st_ino == other.st_ino
    }
}

impl From<rustix::fs::Stat> for Stat {
    // The kernel's field types differ between architectures (e.g. nlink is
    // 32 bits on aarch64, 64 on x86_64); the values all fit these.
    #[allow(clippy::unnecessary_cast)]
    fn from(st: rustix::fs::Stat) -> Self {
        Stat {
            st_dev: st.st_dev as u64,
            st_ino: st.st_ino as u64,
            st_mode: st.st_mode as u32,
            st_nlink: st.st_nlink as u64,
            st_uid: st.st_uid as u32,
            st_gid: st.st_gid as u32,
            st_rdev: st.st_rdev as u64,
            st_size: st.st_size as u64,
            st_mtime: st.st_mtime as i64,
            st_mtime_nsec: st.st_mtime_nsec as u32,
        }
    }
}

/// Runs a call again while a signal interrupts it.
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// `name` as a C string.
///
/// # Errors
/// `InvalidInput` if it contains a nul byte.
pub fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a nul byte"))
}

/// Whether `e` is `ENOENT` (nothing by that name).
pub fn is_enoent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

/// An `io::Error` with this errno.
pub fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// Opens the caller-given root directory as an `O_PATH` descriptor. This
/// one path is trusted: symlinks in it are followed.
///
/// # Errors
/// Those of `open(2)`; `ENOTDIR` if it is not a directory.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    retry(|| rustix::fs::open(path, flags, Mode::empty()))
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`; `mode` is used only with
/// `O_CREAT`.
///
/// # Errors
/// Those of `openat(2)`.
pub fn openat(dir: BorrowedFd, name: &CStr, flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    let mode = Mode::from_raw_mode(mode);
    retry(|| rustix::fs::openat(dir, name, flags | OFlags::CLOEXEC, mode))
}

/// An `O_PATH` descriptor of directory `dir/name`; never follows a symlink.
///
/// # Errors
/// `ENOTDIR` if `name` is not a directory (a symlink included), `ENOENT`.
pub fn open_dir_path(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        0,
    )
}

/// An `O_PATH` descriptor of `dir/name` itself, whatever it is (a symlink
/// is not followed: the descriptor is the link's).
///
/// # Errors
/// Those of `openat(2)`, e.g. `ENOENT`.
pub fn open_node_path(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW, 0)
}

/// A directory's `O_RDONLY` descriptor as a `File` (for fchmod, fchown,
/// futimens and f*xattr); never follows a symlink.
///
/// # Errors
/// `ENOTDIR` if `name` is not a directory (a symlink included), `ENOENT`.
pub fn open_dir_file(dir: BorrowedFd, name: &CStr) -> io::Result<File> {
    openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW,
        0,
    )
    .map(File::from)
}

/// `lstat` of `dir/name`; `None` if nothing is there.
///
/// # Errors
/// Those of `fstatat(2)` other than `ENOENT`.
pub fn lstatat(dir: BorrowedFd, name: &CStr) -> io::Result<Option<Stat>> {
    match retry(|| rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)) {
        Ok(st) => Ok(Some(st.into())),
        Err(e) if is_enoent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat` of what `fd` holds (an `O_PATH` descriptor is enough).
///
/// # Errors
/// Those of `fstat(2)`.
pub fn fstat(fd: BorrowedFd) -> io::Result<Stat> {
    retry(|| rustix::fs::fstat(fd)).map(Stat::from)
}

/// Makes directory `dir/name` with `mode` (less the umask).
///
/// # Errors
/// Those of `mkdirat(2)`, e.g. `EEXIST`.
pub fn mkdirat(dir: BorrowedFd, name: &CStr, mode: u32) -> io::Result<()> {
    retry(|| rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)))
}

/// Makes node `dir/name` of type `kind` (a device, fifo or socket) with
/// `mode` (less the umask); `dev` is a device's number.
///
/// # Errors
/// Those of `mknodat(2)`, e.g. `EEXIST`, `EPERM` for a device without
/// `CAP_MKNOD`.
pub fn mknodat(
    dir: BorrowedFd,
    name: &CStr,
    kind: FileType,
    mode: u32,
    dev: u64,
) -> io::Result<()> {
    retry(|| rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(mode), dev))
}

/// Makes symlink `dir/name` pointing at `target`.
///
/// # Errors
/// Those of `symlinkat(2)`, e.g. `EEXIST`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    retry(|| rustix::fs::symlinkat(target, dir, name))
}

/// Hard-links `olddir/oldname` (itself: a symlink is not followed) as
/// `newdir/newname`.
///
/// # Errors
/// Those of `linkat(2)`, e.g. `EEXIST`, `EXDEV`.
pub fn linkat(
    olddir: BorrowedFd,
    oldname: &CStr,
    newdir: BorrowedFd,
    newname: &CStr,
) -> io::Result<()> {
    retry(|| rustix::fs::linkat(olddir, oldname, newdir, newname, AtFlags::empty()))
}

/// Hard-links the inode `fd` holds (an `O_PATH` descriptor is enough) as
/// `newdir/newname` (`linkat` with `AT_EMPTY_PATH`).
///
/// # Errors
/// Those of `linkat(2)`; `ENOENT` without `CAP_DAC_READ_SEARCH`.
pub fn link_fd(fd: BorrowedFd, newdir: BorrowedFd, newname: &CStr) -> io::Result<()> {
    retry(|| rustix::fs::linkat(fd, c"", newdir, newname, AtFlags::EMPTY_PATH))
}

/// Removes non-directory `dir/name`.
///
/// # Errors
/// Those of `unlinkat(2)`, e.g. `EISDIR`, `ENOENT`.
pub fn unlinkat(dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    retry(|| rustix::fs::unlinkat(dir, name, AtFlags::empty()))
}

/// Removes empty directory `dir/name`.
///
/// # Errors
/// Those of `unlinkat(2)` with `AT_REMOVEDIR`, e.g. `ENOTEMPTY`, `ENOTDIR`.
pub fn rmdirat(dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    retry(|| rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR))
}

/// Changes the owner of `dir/name` itself (a symlink is not followed).
///
/// # Errors
/// Those of `fchownat(2)`, e.g. `EPERM`.
pub fn lchownat(dir: BorrowedFd, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = ids(uid, gid);
    retry(|| rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW))
}

/// Changes the owner of what `fd` holds.
///
/// # Errors
/// Those of `fchown(2)`, e.g. `EPERM`.
pub fn fchown(fd: BorrowedFd, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = ids(uid, gid);
    retry(|| rustix::fs::fchown(fd, uid, gid))
}

fn ids(uid: u32, gid: u32) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
}

/// Sets the permission bits of what `fd` holds (not an `O_PATH`
/// descriptor: see [`chmod_path`]).
///
/// # Errors
/// Those of `fchmod(2)`, e.g. `EPERM`.
pub fn fchmod(fd: BorrowedFd, mode: u32) -> io::Result<()> {
    retry(|| rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)))
}

/// The access time left alone, the modification time set to `mtime`.
fn mtime_only(mtime: (i64, u32)) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1.into(),
        },
    }
}

/// Sets the mtime of `dir/name` itself (a symlink is not followed); the
/// atime is left alone.
///
/// # Errors
/// Those of `utimensat(2)`, e.g. `EINVAL` for nanoseconds out of range.
pub fn lutimensat(dir: BorrowedFd, name: &CStr, mtime: (i64, u32)) -> io::Result<()> {
    let ts = mtime_only(mtime);
    retry(|| rustix::fs::utimensat(dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW))
}

/// Sets the mtime of what `fd` holds; the atime is left alone.
///
/// # Errors
/// Those of `futimens(2)`.
pub fn futimens(fd: BorrowedFd, mtime: (i64, u32)) -> io::Result<()> {
    let ts = mtime_only(mtime);
    retry(|| rustix::fs::futimens(fd, &ts))
}

/// The target of symlink `dir/name`, byte for byte. With an empty `name`,
/// the symlink `dir` itself (an `O_PATH|O_NOFOLLOW` descriptor of it).
///
/// # Errors
/// `EINVAL` if it is not a symlink, `ENOENT`.
pub fn readlinkat(dir: BorrowedFd, name: &CStr) -> io::Result<Vec<u8>> {
    retry(|| rustix::fs::readlinkat(dir, name, Vec::new())).map(CString::into_bytes)
}

/// The names in directory `dir` (an `O_PATH` descriptor is enough), without
/// `.` and `..`, sorted by bytes.
///
/// # Errors
/// Those of `openat(2)` and `getdents64(2)`.
pub fn list_dir(dir: BorrowedFd) -> io::Result<Vec<Vec<u8>>> {
    let fd = openat(dir, c".", OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(fd)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// Clears `O_NONBLOCK` on an open file (set to open a fifo without blocking).
///
/// # Errors
/// Those of `fcntl(2)`.
pub fn clear_nonblock(fd: BorrowedFd) -> io::Result<()> {
    let flags = retry(|| rustix::fs::fcntl_getfl(fd))?;
    retry(|| rustix::fs::fcntl_setfl(fd, flags - OFlags::NONBLOCK))
}

/// `/proc/self/fd/DIR/NAME`: the magic link pins the directory, the last
/// component is then looked up in it (and not followed by `l*` calls).
/// Valid while `dir` is open; needs `/proc`.
pub fn proc_path(dir: BorrowedFd, name: &[u8]) -> PathBuf {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    PathBuf::from(OsStr::from_bytes(&p))
}

/// `/proc/self/fd/FD`, following which reaches exactly the file `fd` holds.
/// Valid while `fd` is open; needs `/proc`.
pub fn proc_fd_path(fd: BorrowedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Sets the permission bits through a path, following it (for
/// [`proc_fd_path`] of an `O_PATH` descriptor, which `fchmod` refuses).
///
/// # Errors
/// Those of `chmod(2)`.
pub fn chmod_path(path: &Path, mode: u32) -> io::Result<()> {
    retry(|| rustix::fs::chmod(path, Mode::from_raw_mode(mode)))
}

/// The major number of device number `dev`.
pub fn dev_major(dev: u64) -> u32 {
    rustix::fs::major(dev)
}

/// The minor number of device number `dev`.
pub fn dev_minor(dev: u64) -> u32 {
    rustix::fs::minor(dev)
}

/// The device number of `major`:`minor`.
pub fn makedev(major: u32, minor: u32) -> u64 {
    rustix::fs::makedev(major, minor)
}

/// The effective user id of this process.
pub fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The effective group id of this process.
pub fn getegid() -> u32 {
    rustix::process::getegid().as_raw()
}
