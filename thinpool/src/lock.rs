//! One writer at a time per pool.
//!
//! Every pool command holds an exclusive `flock` on `<pool dir>/lock` for
//! its whole run; a shared pool takes it for each change. Work that only
//! reads what the lock guards (taking over an active pool) holds it shared
//! ([`LockGuard::acquire_shared`]): readers hold it together, and a writer
//! waits for them as they wait for it. The lock file is never removed (not
//! even by `pool destroy`), so a process waiting on it can never end up
//! holding a lock on
//! an unlinked file while a newcomer locks a fresh one. The holder writes
//! its pid into the file so a waiter can say who it is waiting for. Lock
//! files that are removed (a dead process's scratch lock, swept while
//! held) are checked after locking: a lock taken on a file the path no
//! longer names is dropped and taken again on the file that is there.
//!
//! The file also counts how many times the lock has been taken (its
//! generation), so a holder that let go and took it again knows whether
//! anyone held it in between ([`LockGuard::generation`]): if not, what it
//! read under the lock before is still true. The file is one fixed-width
//! line, `<pid or -> <generation>`, overwritten in place (after its first
//! write it needs no new block, even on a full filesystem).
//!
//! A tool the holder runs to its end ([`crate::helper::spawn`]) holds its
//! locks too, until the tool is gone: the locks of a holder killed while
//! such a tool works are let go only when the tool is dead as well.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
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
    generation: Option<u64>,
}

/// The lock file's line: `<holder's pid or -> <generation>`, padded to a
/// fixed width so that rewriting it never changes the file's size.
fn lock_line(pid: Option<u32>, generation: u64) -> String {
    let pid = pid.map_or("-".to_string(), |p| p.to_string());
    format!("{pid:<11}{generation:<20}\n")
}

/// The holder's pid and the generation in a lock file's text; a bare pid
/// (as older versions wrote) is generation 0.
fn parse_lock_line(text: &str) -> (Option<u32>, u64) {
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|w| w.parse().ok());
    let generation = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    (pid, generation)
}

impl LockGuard {
    /// Takes the lock at `path` (made if missing), waiting up to `timeout`
    /// for another holder.
    ///
    /// Errors: [`LockError::Busy`] after `timeout`; [`LockError::Io`].
    pub fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard, LockError> {
        Self::acquire_from(path, timeout, open_lock_file(path)?, Mode::Exclusive)
    }

    /// Takes the lock at `path` shared with other shared holders, for
    /// work that only reads what the lock guards: it waits for an
    /// exclusive holder, and one waits for it. A shared holder writes
    /// neither its pid nor a generation into the file (it changes
    /// nothing an exclusive holder read).
    ///
    /// Errors: those of [`LockGuard::acquire`].
    pub fn acquire_shared(path: &Path, timeout: Duration) -> Result<LockGuard, LockError> {
        Self::acquire_from(path, timeout, open_lock_file(path)?, Mode::Shared)
    }

    /// [`acquire`](Self::acquire), from `file` as opened at `path`.
    fn acquire_from(
        path: &Path,
        timeout: Duration,
        file: File,
        mode: Mode,
    ) -> Result<LockGuard, LockError> {
        let io_err = |op| {
            let path = path.to_path_buf();
            move |source| LockError::Io { op, path, source }
        };
        let mut file = file;
        // A wait too long to count is a wait without end.
        let deadline = Instant::now().checked_add(timeout);
        let mut file = loop {
            let locked = match wait_for_lock(file, deadline, mode).map_err(io_err("locking"))? {
                Some(locked) => locked,
                None => {
                    // Read through a fresh open: the one that waited may
                    // still be blocked in its thread.
                    let holder = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|s| parse_lock_line(&s).0);
                    return Err(LockError::Busy {
                        path: path.to_path_buf(),
                        holder,
                        waited: timeout,
                    });
                }
            };
            // Lock files that are swept away (scratch directories' ones)
            // may have been unlinked, or replaced by a fresh file, between
            // our open and our lock: a lock on an inode the path no longer
            // names excludes no one, so take the file the path names now.
            if names_same_file(&locked, path).map_err(io_err("checking"))? {
                break locked;
            }
            drop(locked);
            file = open_lock_file(path)?;
        };
        if mode == Mode::Shared {
            return Ok(LockGuard::held(file, path, None));
        }
        let mut text = String::new();
        file.rewind().map_err(io_err("reading"))?;
        file.read_to_string(&mut text).map_err(io_err("reading"))?;
        let next = parse_lock_line(&text).1 + 1;
        let line = lock_line(Some(std::process::id()), next);
        let written = file.write_all_at(line.as_bytes(), 0).and_then(|()| {
            if text.len() > line.len() {
                file.set_len(line.len() as u64)?;
            }
            Ok(())
        });
        let generation = match written {
            Ok(()) => Some(next),
            // An empty lock file on a full filesystem has no block for the
            // line. No holder has counted in it, so none can take this one
            // for nobody; this holder goes without a count. Rewriting a line
            // already there needs no new block: its failure is an I/O
            // error, and fails the lock.
            Err(_) if text.is_empty() => {
                let _ = file.set_len(0);
                None
            }
            Err(e) => return Err(io_err("writing")(e)),
        };
        Ok(LockGuard::held(file, path, generation))
    }

    /// The guard of a lock just taken, counted among the locks helpers
    /// inherit ([`with_held`]) until it is dropped.
    fn held(file: Flock<File>, path: &Path, generation: Option<u64>) -> LockGuard {
        held_fds().push(file.as_raw_fd());
        LockGuard {
            file,
            path: path.to_path_buf(),
            generation,
        }
    }

    /// How many times the lock has been taken, this time included, as
    /// counted in its file. A holder that let go at generation `g` and
    /// takes it again at `g + 1` knows that no one held it in between, for
    /// a lock file that is never removed (a new file counts from 1 again).
    /// `None` when the count could not be written (a new file on a full
    /// filesystem): the holder knows nothing then.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// Whether this holder took the lock right after the one whose
    /// generation was `previous`, with no one in between: what that holder
    /// read under the lock is still true. `false` whenever either count is
    /// unknown.
    pub fn follows(&self, previous: Option<u64>) -> bool {
        matches!((previous, self.generation), (Some(g), Some(now)) if now == g + 1)
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
    /// does (a live process, or a helper a dead one started that is still
    /// running: the kernel drops a dead one's locks when the last of them
    /// is gone).
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

/// The descriptors of the locks this process holds (every [`LockGuard`]
/// alive).
static HELD: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

fn held_fds() -> MutexGuard<'static, Vec<RawFd>> {
    // The list is left whole at every step: a panic elsewhere while it
    // was held spoils nothing.
    HELD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` with the descriptors of every lock this process holds,
/// which stay open and held while it runs: a lock taken or let go by
/// another thread waits for it. [`crate::helper`] starts a helper
/// process in `f` and hands it these descriptors, so that the locks stay
/// held, even past this process's death, until the helper is gone too.
pub(crate) fn with_held<T>(f: impl FnOnce(&[RawFd]) -> T) -> T {
    f(&held_fds())
}

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// By one holder alone.
    Exclusive,
    /// By any number of shared holders, and no exclusive one.
    Shared,
}

/// Takes a `flock` on `file` in `mode`, waiting until `deadline` (`None`:
/// for as long as it takes); `None` if another holder kept it that long.
///
/// The wait is the kernel's: a waiter wakes the moment the holder lets go,
/// as a poll with naps would not (under contention the lock would sit free
/// while waiters sleep). `flock` has no timeout, so a thread blocks in it
/// while this one waits on a channel until the deadline. A thread that
/// gets the lock after its caller gave up finds no one to hand it to and
/// lets go of it at once; until then it waits in the kernel, costing
/// nothing.
fn wait_for_lock(
    file: File,
    deadline: Option<Instant>,
    mode: Mode,
) -> io::Result<Option<Flock<File>>> {
    let (now, wait) = match mode {
        Mode::Exclusive => (FlockArg::LockExclusiveNonblock, FlockArg::LockExclusive),
        Mode::Shared => (FlockArg::LockSharedNonblock, FlockArg::LockShared),
    };
    let file = match Flock::lock(file, now) {
        Ok(locked) => return Ok(Some(locked)),
        Err((f, Errno::EWOULDBLOCK)) => f,
        Err((_, e)) => return Err(e.into()),
    };
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    if left.is_some_and(|d| d.is_zero()) {
        return Ok(None);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("lock-wait".into())
        .spawn(move || {
            let mut file = file;
            let got = loop {
                match Flock::lock(file, wait) {
                    Err((f, Errno::EINTR)) => file = f,
                    r => break r.map_err(|(_, e)| e),
                }
            };
            // A send to a caller that gave up fails, and the lock goes
            // with `got`.
            let _ = tx.send(got);
        })?;
    let got = match left {
        Some(left) => rx.recv_timeout(left).ok(),
        None => rx.recv().ok(),
    };
    match got {
        Some(got) => got.map(Some).map_err(io::Error::from),
        None => Ok(None),
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
        // Out of the list before the descriptor is closed (when the fields
        // drop, after this): a helper started meanwhile must not be handed
        // a number that may name another file by then.
        let fd = self.file.as_raw_fd();
        held_fds().retain(|&f| f != fd);
        // The pid goes; the generation stays for the next holder.
        if let Some(g) = self.generation {
            let _ = self.file.write_all_at(lock_line(None, g).as_bytes(), 0);
        }
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
    fn plain_shared_holders_hold_together_and_exclude_an_exclusive_one_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let writer = LockGuard::acquire(&path, Duration::ZERO).unwrap();
        let err = LockGuard::acquire_shared(&path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err}");
        drop(writer);
        let one = LockGuard::acquire_shared(&path, Duration::ZERO).unwrap();
        let two = LockGuard::acquire_shared(&path, Duration::ZERO).unwrap();
        // Readers count no generation and leave the writer's line alone.
        assert_eq!((one.generation(), two.generation()), (None, None));
        assert_eq!(
            parse_lock_line(&std::fs::read_to_string(&path).unwrap()),
            (None, 1)
        );
        let err = LockGuard::acquire(&path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, LockError::Busy { .. }), "{err}");
        drop(one);
        assert!(LockGuard::try_acquire(&path).unwrap().is_none());
        // The writer waiting when the last reader lets go gets the lock.
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || LockGuard::acquire(&path, Duration::from_secs(30)).map(|g| g.generation())
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(two);
        assert_eq!(waiter.join().unwrap().unwrap(), Some(2));
    }

    #[test]
    fn plain_the_generation_counts_every_holder_and_survives_the_file_s_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = LockGuard::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(first.generation(), Some(1));
        let mine = first.generation().unwrap();
        drop(first);
        // Taken again with no one in between: the next generation.
        let again = LockGuard::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(again.generation(), Some(mine + 1));
        assert!(again.follows(Some(mine)) && !again.follows(None));
        drop(again);
        // Someone else in between: more than one step.
        drop(LockGuard::acquire(&path, Duration::ZERO).unwrap());
        let later = LockGuard::acquire(&path, Duration::ZERO).unwrap();
        assert_eq!(later.generation(), Some(mine + 3));
        assert!(!later.follows(Some(mine + 1)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_lock_line(&text), (Some(std::process::id()), 4));
        drop(later);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(parse_lock_line(&text), (None, 4));
        // An older version's bare pid reads as generation 0.
        std::fs::write(&path, "4242").unwrap();
        assert_eq!(
            LockGuard::acquire(&path, Duration::ZERO)
                .unwrap()
                .generation(),
            Some(1)
        );
        // A file whose pid is longer than the line is cut to the line.
        std::fs::write(&path, "9".repeat(64)).unwrap();
        drop(LockGuard::acquire(&path, Duration::ZERO).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), 32);
    }

    #[test]
    fn plain_a_waiter_takes_the_lock_when_the_holder_lets_go_and_one_that_gave_up_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = LockGuard::acquire(&path, Duration::ZERO).unwrap();
        // One that gives up: its waiting thread must not keep the lock
        // once it gets it.
        assert!(matches!(
            LockGuard::acquire(&path, Duration::from_millis(50)),
            Err(LockError::Busy { .. })
        ));
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || LockGuard::acquire(&path, Duration::from_secs(60)))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "took a lock that was held");
        let held = first.generation().unwrap();
        drop(first);
        let second = waiter.join().unwrap().unwrap();
        // The thread of the one that gave up may take it for a moment, but
        // reads nothing under it and does not count: no one in between.
        assert!(second.follows(Some(held)));
        assert!(LockGuard::try_acquire(&path).unwrap().is_none());
        drop(second);
        // Nothing holds it now: the given-up thread let go too.
        LockGuard::acquire(&path, Duration::from_secs(10)).unwrap();
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
        let guard = LockGuard::acquire_from(&path, Duration::ZERO, stale, Mode::Exclusive).unwrap();
        let held = guard.file.metadata().unwrap().ino();
        assert_ne!(held, stale_ino, "the lock stayed on the unlinked file");
        assert_eq!(held, std::fs::metadata(&path).unwrap().ino());
        // So a newcomer is excluded, as it would not be by a lock on the
        // unlinked file.
        assert!(LockGuard::try_acquire(&path).unwrap().is_none());
    }
}
