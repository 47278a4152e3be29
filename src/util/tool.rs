//! Running the external tools that own a format or a kernel interface
//! (mkfs.*, resize2fs, xfs_growfs, the mount helpers of remote
//! filesystems): one way, with the tool's stderr as the error, and a
//! time limit for those that wait on a server. Every tool runs as a
//! helper ([`thinpool::helper`]): it dies with the command, so that the
//! next command never finds one still at work on what a killed command
//! left; one that runs to its end also holds the command's locks until
//! it is gone.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use thinpool::helper;

use crate::error::{Error, Result};

/// Runs `cmd` to completion; a failure to start it, or a non-zero exit,
/// becomes [`Error::Tool`] naming `name` with the tool's own stderr.
pub fn run(cmd: &mut Command, name: &str) -> Result<()> {
    let out = helper::output(cmd).map_err(|e| Error::Tool {
        tool: name.to_string(),
        detail: e.to_string(),
    })?;
    check(out.status, &out.stderr, name)
}

/// A non-zero exit as [`Error::Tool`], with the tool's stderr.
fn check(status: ExitStatus, stderr: &[u8], name: &str) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(stderr).trim().to_string();
    Err(Error::Tool {
        tool: name.to_string(),
        detail: if stderr.is_empty() {
            format!("exited with {status}")
        } else {
            stderr
        },
    })
}

/// Runs `cmd` as [`run`] does, but gives it `limit` to finish. Past that
/// it is killed with every process it started (it runs in a process
/// group of its own: `mount` and the `mount.nfs` it runs go together),
/// and the result is [`Error::TimedOut`] naming `name`. For tools that
/// wait on something outside the machine, such as a mount of a network
/// filesystem whose server is down, which would otherwise hold the caller
/// for minutes. Such a tool may leave a daemon behind (`rpc.statd`, a
/// FUSE filesystem's server), so it holds none of the command's locks
/// ([`helper::spawn_without_locks`]); it dies with the command.
pub fn run_within(cmd: &mut Command, name: &str, limit: Duration) -> Result<()> {
    let failed = |e: std::io::Error| Error::Tool {
        tool: name.to_string(),
        detail: e.to_string(),
    };
    let mut child = helper::spawn_without_locks(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0),
    )
    .map_err(failed)?;
    // Read on a thread, so that a chatty tool never blocks on a full pipe;
    // handed over by channel, so that a daemon the tool left holding the
    // pipe cannot block us either.
    let (tx, rx) = mpsc::channel();
    if let Some(mut err) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut buf = vec![];
            let _ = err.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    let deadline = Instant::now() + limit;
    // Most runs end within milliseconds: poll often at first.
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(failed)? {
            break st;
        }
        let now = Instant::now();
        if now >= deadline {
            if let Ok(pgid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            // Reap it: SIGKILL cannot be caught, and our child only waits
            // on its own children, which is interruptible.
            let _ = child.wait();
            return Err(Error::TimedOut {
                what: name.to_string(),
                waited: limit,
                hint: String::new(),
            });
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    let stderr = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    check(status, &stderr, name)
}

/// Mounts SOURCE of type FSTYPE with options OPTS at TARGET, given `limit`
/// to finish, as [`run_within`]: for filesystems that wait on a server
/// (NFS, CIFS). The filesystem's mount helper (`mount.nfs`) is run
/// directly, as `mount(8)` would run it, so that the process making the
/// mount is the one that dies with this one; a type with no helper is
/// mounted by `mount -t FSTYPE`. On [`Error::TimedOut`] the tool is gone;
/// whether it got as far as mounting is for the caller to check.
pub fn mount_within(
    fstype: &str,
    source: &str,
    opts: &str,
    target: &Path,
    limit: Duration,
) -> Result<()> {
    run_within(
        &mut mount_cmd(fstype, source, opts, target),
        &format!("mount -t {fstype}"),
        limit,
    )
}

fn mount_cmd(fstype: &str, source: &str, opts: &str, target: &Path) -> Command {
    let mut cmd = match mount_helper(fstype) {
        // mount(8)'s interface to helpers: SOURCE TARGET [-o OPTS].
        Some(h) => {
            let mut c = Command::new(h);
            c.arg(source).arg(target);
            c
        }
        None => {
            let mut c = Command::new("mount");
            c.args(["-t", fstype]).arg(source).arg(target);
            c
        }
    };
    if !opts.is_empty() {
        cmd.args(["-o", opts]);
    }
    cmd
}

/// The mount helper `mount(8)` runs for `fstype` (`/sbin/mount.nfs4`),
/// where it looks for one.
fn mount_helper(fstype: &str) -> Option<PathBuf> {
    if fstype.is_empty() || fstype.contains('/') {
        return None;
    }
    ["/sbin", "/sbin/fs.d", "/sbin/fs", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(format!("mount.{fstype}")))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_a_failing_tool_reports_its_stderr() {
        let err = run(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            "sh",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "sh failed: broken");
        let err = run(&mut Command::new("/nonexistent/tool"), "tool")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tool failed: "), "{err}");
        run(&mut Command::new("true"), "true").unwrap();
    }

    #[test]
    fn plain_a_tool_past_its_limit_is_killed_with_what_it_started() {
        let limit = Duration::from_millis(300);
        run_within(&mut Command::new("true"), "true", limit).unwrap();
        let err = run_within(
            Command::new("sh").args(["-c", "echo no >&2; exit 2"]),
            "sh",
            limit,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "sh failed: no");
        // A shell whose child sleeps: both must go, or the grandchild
        // would hold the pipe and the marker file would appear later.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("late");
        let t0 = Instant::now();
        let err = run_within(
            Command::new("sh")
                .arg("-c")
                .arg(format!("(sleep 1; touch {}) & wait", marker.display())),
            "sleeper",
            limit,
        )
        .unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(err, Error::TimedOut { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("sleeper did not answer within "),
            "{err}"
        );
        assert!(took < Duration::from_millis(900), "took {took:?}");
        std::thread::sleep(Duration::from_millis(1300));
        assert!(!marker.exists(), "the tool's child outlived the kill");
    }

    #[test]
    fn plain_a_mount_runs_the_type_s_helper_directly_and_mount_8_without_one() {
        let args = |c: &Command| -> Vec<String> {
            std::iter::once(c.get_program())
                .chain(c.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        // nfs-common (tools/setup.sh) installs mount.nfs4.
        let helper = mount_helper("nfs4").expect("mount.nfs4 is installed");
        assert!(helper.ends_with("mount.nfs4"), "{}", helper.display());
        let nfs = mount_cmd("nfs4", "h:/x", "vers=4.2", Path::new("/t"));
        assert_eq!(
            args(&nfs),
            [helper.to_str().unwrap(), "h:/x", "/t", "-o", "vers=4.2"]
        );
        let other = mount_cmd("no-such-fs", "src", "", Path::new("/t"));
        assert_eq!(args(&other), ["mount", "-t", "no-such-fs", "src", "/t"]);
        assert_eq!(mount_helper("../nfs"), None);
    }
}
