//! One writer at a time per pool.
//!
//! Every pool command holds an exclusive `flock` on `<pool dir>/lock` for
//! its whole run. The lock file is never removed (not even by `pool
//! destroy`), so a process waiting on it can never end up holding a lock on
//! an unlinked file while a newcomer locks a fresh one. The holder writes
//! its pid into the file so a waiter can say who it is waiting for.

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
        let io_err = |op| {
            let path = path.to_path_buf();
            move |source| LockError::Io { op, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_err("opening"))?;
        let start = Instant::now();
        // Short waits first: holders of a shared store or pool keep the
        // lock for milliseconds.
        let mut nap = Duration::from_millis(1);
        let mut file = loop {
            file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => break locked,
                Err((f, Errno::EWOULDBLOCK)) => f,
                Err((_, e)) => return Err(io_err("locking")(io::Error::from(e))),
            };
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
}
