//! One writer at a time per pool.
//!
//! Every pool command holds an exclusive `flock` on `<pool dir>/lock` for
//! its whole run. The lock file is never removed (not even by `pool
//! destroy`), so a process waiting on it can never end up holding a lock on
//! an unlinked file while a newcomer locks a fresh one. The holder writes
//! its pid into the file so a waiter can say who it is waiting for. Lock
//! files that are removed (a dead process's scratch lock, swept while
//! held) are checked after locking: a lock taken on a file the path no
//! longer names is dropped and taken again on the file that is there.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be opened, locked or written.
    #[error("{op} lock file {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `opening`.
        op: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another process held the lock for the whole wait.
    #[error("another process{} holds the lock {} and did not release it within {}s; wait for it to finish and retry",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display(), waited.as_secs())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it wrote it into the file.
        holder: Option<u32>,
        /// How long this process waited.
        waited: Duration,
    },
}

/// An exclusive lock, released on drop (or when the process dies).
#[derive(Debug)]
pub struct LockGuard {
    file: Flock<File>,
    path: PathBuf,
}

impl LockGuard {
    /// Takes the lock at `path` (made if missing), waiting up to `timeout`
    /// for another holder.
    ///
    /// Errors: [`LockError::Busy`] after `timeout`; [`LockError::Io`].
    pub fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard, LockError> {
        Self::acquire_from(path, timeout, open_lock_file(path)?)
    }

    /// [`acquire`](Self::acquire), from `file` as opened at `path`.
    fn acquire_from(path: &Path, timeout: Duration, file: File) -> Result<LockGuard, LockError> {
        let io_err = |op| {
            let path = path.to_path_buf();
            move |source| LockError::Io { op, path, source }
        };
        let mut file = file;
        let start = Instant::now();
        // Short waits first: holders of a shared store or pool keep the
        // lock for milliseconds.
        let mut nap = Duration::from_millis(1);
        let mut file = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => {
                    // Lock files that are swept away (scratch directories'
                    // ones) may have been unlinked, or replaced by a fresh
                    // file, between our open and our lock: a lock on an
                    // inode the path no longer names excludes no one, so
                    // take the file the path names now (no wait: nobody
                    // held it).
                    if names_same_file(&locked, path).map_err(io_err("checking"))? {
                        break locked;
                    }
                    drop(locked);
                    file = open_lock_file(path)?;
                    continue;
                }
                Err((f, Errno::EWOULDBLOCK)) => file = f,
                Err((_, e)) => return Err(io_err("locking")(io::Error::from(e))),
            }
            if start.elapsed() >= timeout {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                return Err(LockError::Busy {
                    path: path.to_path_buf(),
                    holder: s.trim().parse().ok(),
                    waited: timeout,
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(50));
        };
        file.set_len(0).map_err(io_err("writing"))?;
        file.rewind().map_err(io_err("writing"))?;
        let _ = write!(file, "{}", std::process::id());
        Ok(LockGuard {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the lock file, then lets go of the lock: what a holder does
    /// once what the lock stood for is gone. A process that opened the file
    /// before it went and locks it after finds the path no longer names it
    /// and takes the file that is there ([`LockGuard::acquire`]).
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Removes the lock file at `path` if no one holds it (its holder is
    /// dead); whether it did.
    ///
    /// Errors: [`LockError::Io`].
    pub fn remove_if_free(path: &Path) -> Result<bool, LockError> {
        Ok(Self::try_acquire(path)?.map(LockGuard::remove).is_some())
    }

    /// Takes the lock at `path` if no one holds it; `None` if someone
    /// does (a live process: the kernel drops a dead one's locks).
    ///
    /// Errors: [`LockError::Io`].
    pub fn try_acquire(path: &Path) -> Result<Option<LockGuard>, LockError> {
        match Self::acquire(path, Duration::ZERO) {
            Ok(g) => Ok(Some(g)),
            Err(LockError::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens (making it if missing) the lock file at `path`.
fn open_lock_file(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| LockError::Io {
            op: "opening",
            path: path.to_path_buf(),
            source,
        })
}

/// Whether `path` still names the open `file` (same device and inode).
fn names_same_file(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lock_excludes_a_second_holder_and_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = LockGuard::acquire(&path, Duration::ZERO).unwrap();
        // flock locks belong to the open file description, so a second open
        // in the same process contends just as another process would.
        let err = LockGuard::acquire(&path, Duration::from_millis(120)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("retry"), "{msg}");
        drop(first);
        LockGuard::acquire(&path, Duration::ZERO).unwrap();
    }

    #[test]
    fn plain_a_lock_file_removed_before_it_was_locked_is_taken_afresh() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1234.lock");
        // Opened, then swept away by another process before our flock.
        let stale = File::create(&path).unwrap();
        let stale_ino = stale.metadata().unwrap().ino();
        // A second name keeps the old inode alive, so its number is not
        // reused by the fresh file.
        std::fs::hard_link(&path, dir.path().join("kept")).unwrap();
        std::fs::remove_file(&path).unwrap();
        let guard = LockGuard::acquire_from(&path, Duration::ZERO, stale).unwrap();
        let held = guard.file.metadata().unwrap().ino();
        assert_ne!(held, stale_ino, "the lock stayed on the unlinked file");
        assert_eq!(held, std::fs::metadata(&path).unwrap().ino());
        // So a newcomer is excluded, as it would not be by a lock on the
        // unlinked file.
        assert!(LockGuard::try_acquire(&path).unwrap().is_none());
    }
}
