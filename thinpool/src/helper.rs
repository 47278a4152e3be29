//! Starting helper processes: the external tools a command runs to do
//! part of its work (`mkfs`, `resize2fs`, a filesystem's mount helper,
//! the thin tools).
//!
//! A command may be killed at any instant, and the next command repairs
//! what it left under the same locks. A helper that lived on would break
//! that: it could go on writing or mounting after the repair, on what the
//! repair undid. So a helper dies with the thread that started it (the
//! kernel sends it `SIGKILL` when that thread ends: `PR_SET_PDEATHSIG`),
//! and is not started at all if the process is already gone.
//!
//! A tool that runs to its end ([`spawn`], [`output`]) also holds every
//! lock this process holds ([`crate::lock`]), and so does every process it
//! starts in turn: the kernel lets go of a lock when the last process
//! holding it is gone, so the next command, which takes those locks
//! before it repairs anything, finds every process of a killed command's
//! helper gone. A tool that may leave a daemon behind (a mount helper:
//! `mount.nfs` may start `rpc.statd`, a FUSE filesystem's helper becomes
//! its server) holds none ([`spawn_without_locks`]): the daemon would hold
//! them for as long as it runs. It only dies with the command.
//!
//! A process the helper starts does not die with the helper (the kernel
//! clears the death signal on `fork`). Tools that make a mount themselves
//! are therefore run directly, not through `mount(8)`.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};

use crate::lock;

/// Starts `cmd` as a helper that runs to its end and holds this
/// process's locks (see the module). A `Command` is set up for one start:
/// start it once.
///
/// Errors: those of [`Command::spawn`]; `ESRCH` if this process died
/// while the helper was being started.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    lock::with_held(|held| spawn_holding(cmd, held.to_vec()))
}

/// Starts `cmd` as a helper that holds none of this process's locks, for
/// a tool that may leave a daemon behind (see the module). Start it once.
///
/// Errors: those of [`spawn`].
pub fn spawn_without_locks(cmd: &mut Command) -> io::Result<Child> {
    spawn_holding(cmd, vec![])
}

/// Starts `cmd` dying with this thread and keeping `held` open.
fn spawn_holding(cmd: &mut Command, held: Vec<RawFd>) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec,
    // where only async-signal-safe calls are allowed: it calls prctl,
    // getppid and fcntl, and touches only memory copied with the
    // process (`held`, `parent`), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Dead before the death signal was set: it would never
            // come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            for &fd in &held {
                // Kept open across exec: clear close-on-exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // The caller holds the locks' list until the child has exec'd
    // (spawn returns after that), so no descriptor in `held` is closed
    // and its number reused meanwhile.
    cmd.spawn()
}

/// Runs `cmd` as a helper to its end, as [`Command::output`] does: no
/// input, its output and errors collected.
///
/// Errors: those of [`spawn`], and of waiting for it.
pub fn output(cmd: &mut Command) -> io::Result<Output> {
    spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?
    .wait_with_output()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockGuard;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// Set for the process a test starts from its own binary to play the
    /// command that is killed: the directory it works in, then `:locks`
    /// if its helper is to hold its locks.
    const HOLDER: &str = "THINPOOL_TEST_HELPER_HOLDER";

    /// The killed command: holds the lock in `dir` and starts a helper
    /// shell, which writes its pid and starts a process of its own that
    /// writes its pid, works for 3 s and then leaves `late`.
    fn hold_and_run_a_helper(spec: &str) -> ! {
        let (dir, locks) = match spec.strip_suffix(":locks") {
            Some(d) => (Path::new(d), true),
            None => (Path::new(spec), false),
        };
        let _lock = LockGuard::acquire(&dir.join("lock"), Duration::ZERO).unwrap();
        let script = "echo $$ > helper.pid; sh -c 'echo $$ > own.pid; sleep 3; touch late' & wait";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).current_dir(dir);
        let mut helper = if locks {
            spawn(&mut cmd)
        } else {
            spawn_without_locks(&mut cmd)
        }
        .unwrap();
        let _ = helper.wait();
        std::process::exit(0)
    }

    /// Whether process `pid` is alive (there and not a zombie).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
            == Some(false)
    }

    /// Runs test `name` of this binary as a command that holds a lock and
    /// starts a helper (holding its locks if `locks`), kills it while the
    /// helper and the helper's own process work, and checks that the
    /// helper dies with it. Returns whether the helper's process had
    /// finished its work when the lock could be taken again.
    fn kill_a_command_with_a_helper(name: &str, locks: bool) -> bool {
        if let Ok(spec) = std::env::var(HOLDER) {
            hold_and_run_a_helper(&spec);
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let spec = format!("{}{}", d.display(), if locks { ":locks" } else { "" });
        let mut holder = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("helper::tests::{name}"),
                "--test-threads=1",
            ])
            .env(HOLDER, spec)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid_in = |name: &str| -> Option<i32> {
            std::fs::read_to_string(d.join(name))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (helper, own) = loop {
            if let (Some(h), Some(o)) = (pid_in("helper.pid"), pid_in("own.pid")) {
                break (h, o);
            }
            assert!(Instant::now() < deadline, "the helper never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        // The kill lands while the helper and its process work.
        assert!(alive(helper) && alive(own), "the helper ended early");
        assert!(!d.join("late").exists(), "the helper's work ended early");
        holder.kill().unwrap();
        holder.wait().unwrap();

        // The helper dies with its caller, not when its work is done (it
        // waits for its process, which is still working).
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(helper) {
            assert!(Instant::now() < deadline, "the helper outlived its caller");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !d.join("late").exists(),
            "the helper lived until its process had finished"
        );
        let _lock = LockGuard::acquire(&d.join("lock"), Duration::from_secs(60)).unwrap();
        let done = d.join("late").exists();
        // The directory goes with the test: the process finishes first.
        while alive(own) {
            std::thread::sleep(Duration::from_millis(10));
        }
        done
    }

    #[test]
    fn plain_a_helper_dies_with_its_killed_caller_and_its_locks_outlive_every_process_it_started() {
        // The process the helper started holds the caller's lock until it
        // is gone: whoever takes the lock next finds its work done.
        assert!(
            kill_a_command_with_a_helper(
                "plain_a_helper_dies_with_its_killed_caller_and_its_locks_outlive_every_process_it_started",
                true
            ),
            "the lock was free while a process of the killed caller was still working"
        );
    }

    #[test]
    fn plain_a_helper_without_locks_dies_with_its_caller_and_leaves_its_daemons_no_lock() {
        // A daemon the helper left (its process here) holds no lock: the
        // next command goes on while it runs.
        assert!(
            !kill_a_command_with_a_helper(
                "plain_a_helper_without_locks_dies_with_its_caller_and_leaves_its_daemons_no_lock",
                false
            ),
            "the lock was held by a process the helper started"
        );
    }

    #[test]
    fn plain_output_collects_what_the_helper_wrote_and_a_command_that_cannot_start_fails() {
        let out =
            output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"])).unwrap();
        assert_eq!(
            (
                out.stdout.as_slice(),
                out.stderr.as_slice(),
                out.status.code()
            ),
            (&b"out\n"[..], &b"err\n"[..], Some(3))
        );
        let err = output(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
