//! Mounting filesystems and asking what is mounted.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Mounts `source` of type `fstype` at `target`.
pub fn mount(source: &Path, target: &Path, fstype: &str, readonly: bool, data: &str) -> Result<()> {
    let _phase = tracing::trace_span!(crate::phase::MOUNT).entered();
    let mut flags = MsFlags::empty();
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = (!data.is_empty()).then_some(data);
    nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        Error::io(
            format!("mounting {} ({fstype}) on", source.display()),
            target,
        )(e.into())
    })
}

/// Mounts a filesystem whose options name paths relative to `dir` (an
/// overlay's lower directories, by their short links in its store), in
/// this process: a thread of its own leaves the process's working
/// directory for `dir` (`unshare(CLONE_FS)`, so no other thread's paths
/// move) and makes the mount(2) call. A mount(8) child would also read
/// the paths from its own working directory, but it outlives a kill of
/// this process and can mount after the next command has cleaned up;
/// a thread dies with it, its call done or not made.
pub fn mount_in(dir: &Path, source: &str, target: &Path, fstype: &str, data: &str) -> Result<()> {
    let _phase = tracing::trace_span!(crate::phase::MOUNT).entered();
    let target = std::path::absolute(target).map_err(Error::io("resolving", target))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|e| {
                Error::io("unsharing the working directory to mount on", &target)(e.into())
            })?;
            nix::unistd::chdir(dir).map_err(|e| Error::io("entering", dir)(e.into()))?;
            mount(Path::new(source), &target, fstype, false, data)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::io("mounting on", &target)(std::io::Error::other(
                "the mounting thread panicked",
            )))
        })
    })
}

/// Unmounts `target`; not mounted is not an error.
pub fn unmount(target: &Path) -> Result<()> {
    if !is_mounted(target)? {
        return Ok(());
    }
    nix::mount::umount2(target, MntFlags::empty()).map_err(|e| {
        if e == nix::errno::Errno::EBUSY {
            Error::InUse {
                what: target.display().to_string(),
                reason: "a process has files open there; close them and retry".into(),
            }
        } else {
            Error::io("unmounting", target)(e.into())
        }
    })
}

/// Mount points from /proc/self/mountinfo, unescaped.
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .collect())
}

/// Unmounts everything mounted under `dir` (not `dir` itself), deepest
/// first: the scratch mounts a killed command left. Returns what it
/// unmounted. The caller holds the lock of whatever owns `dir`.
pub fn unmount_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut under: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    under.sort();
    under.dedup();
    for m in under.iter().rev() {
        unmount(m)?;
    }
    Ok(under)
}

/// The filesystem type and superblock options of the mount at `target`.
pub fn options_of(target: &Path) -> Result<Option<String>> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.get(4).map(|m| unescape(m)) == Some(target.to_string_lossy().into_owned()) {
            let sep = f.iter().position(|x| *x == "-").unwrap_or(f.len());
            let fstype = f.get(sep + 1).copied().unwrap_or("?");
            let opts = f.get(sep + 3).map(|o| unescape(o)).unwrap_or_default();
            return Ok(Some(format!("{fstype} {opts}")));
        }
    }
    Ok(None)
}

/// Whether something is mounted exactly at `target`.
pub fn is_mounted(target: &Path) -> Result<bool> {
    let _phase = tracing::trace_span!(crate::phase::MOUNT_CHECK).entered();
    Ok(mount_points()?.iter().any(|m| m == target))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's scratch directory in store `dir` (`tmp/<pid>`), for
/// mount points and spools that a kill may leave behind. The process holds
/// `tmp/<pid>.lock` while it lives, so other processes leave the directory
/// alone and sweep it ([`sweep_scratch`]) once the process is gone; the
/// first use in a process clears what a dead process with the same pid
/// left there.
pub fn scratch_dir(dir: &Path) -> Result<PathBuf> {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<(PathBuf, thinpool::lock::LockGuard)>> = Mutex::new(Vec::new());
    let tmp = dir.join("tmp");
    let pid = std::process::id();
    let mine = tmp.join(pid.to_string());
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if !held.iter().any(|(d, _)| d == &tmp) {
        fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
        let guard = thinpool::lock::LockGuard::acquire(
            &tmp.join(format!("{pid}.lock")),
            // Only a sweeper that found the file before we locked it holds
            // it, for a moment; the lock then moves to a fresh file.
            std::time::Duration::from_secs(10),
        )?;
        unmount_under(&mine)?;
        held.push((tmp.clone(), guard));
    }
    fs::create_dir_all(&mine).map_err(Error::io("creating", &mine))?;
    Ok(mine)
}

/// Unmounts and removes the scratch directories of dead processes in store
/// `dir` (and of the layout before they were per process); returns what
/// it unmounted.
pub fn sweep_scratch(dir: &Path) -> Result<Vec<PathBuf>> {
    let tmp = dir.join("tmp");
    let mut done = vec![];
    let Ok(rd) = fs::read_dir(&tmp) else {
        return Ok(done);
    };
    let me = std::process::id().to_string();
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == me || name == format!("{me}.lock") {
            continue;
        }
        if let Some(pid) = name.strip_suffix(".lock") {
            // A lock whose directory is gone, of a dead process.
            if !tmp.join(pid).exists() {
                thinpool::lock::LockGuard::remove_if_free(&p)?;
            }
            continue;
        }
        if !p.is_dir() {
            continue;
        }
        let lock = tmp.join(format!("{name}.lock"));
        let guard = if name.bytes().all(|b| b.is_ascii_digit()) {
            match thinpool::lock::LockGuard::try_acquire(&lock)? {
                Some(g) => Some(g),
                None => continue, // a live process's
            }
        } else {
            None
        };
        done.extend(unmount_under(&p)?);
        let _ = fs::remove_dir_all(&p);
        if let Some(g) = guard {
            g.remove();
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn root_mount_in_reads_relative_paths_from_its_dir_and_leaves_the_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for x in ["lo/a", "lo/b", "mnt"] {
            fs::create_dir_all(d.join(x)).unwrap();
        }
        fs::write(d.join("lo/a/f"), "a").unwrap();
        fs::write(d.join("lo/b/g"), "b").unwrap();
        let cwd = std::env::current_dir().unwrap();
        let mnt = d.join("mnt");
        mount_in(d, "overlay", &mnt, "overlay", "lowerdir=lo/a:lo/b").unwrap();
        let seen = [
            fs::read_to_string(mnt.join("f")).ok(),
            fs::read_to_string(mnt.join("g")).ok(),
        ];
        unmount(&mnt).unwrap();
        assert_eq!(seen, [Some("a".to_string()), Some("b".to_string())]);
        // Only the mounting thread moved.
        assert_eq!(std::env::current_dir().unwrap(), cwd);
        // A lower directory that is not in `dir`: an error naming where.
        let e = mount_in(d, "overlay", &mnt, "overlay", "lowerdir=nowhere:lo/a")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mounting overlay (overlay) on") && e.contains("mnt"),
            "{e}"
        );
        assert!(!is_mounted(&mnt).unwrap());
    }

    #[test]
    fn plain_root_is_mounted() {
        assert!(is_mounted(Path::new("/")).unwrap());
    }
}
