//! `container exec`: a command with a mounted container's rootfs as its
//! root, in private mount and UTS namespaces.
//!
//! Not a runtime: no PID or network namespace, no cgroups, no seccomp, no
//! dropped capabilities. The child gets its own copy of the mount table
//! (volumes included, as `container mount` made them), a fresh `/proc`, a
//! read-only `/sys` and a small `/dev` (a tmpfs with `/dev/shm`, an empty
//! `/dev/pts` and the usual character devices bound from
//! the host; the init layer makes those directories), the container's
//! hostname, and a clean environment.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::{signal, SigHandler, Signal};

use super::scoped;
use crate::error::{Error, Result};

/// The PATH a command sees unless `env` sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Device nodes bound into the container's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What to run.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// The container's mounted rootfs, which becomes the process's root.
    pub rootfs: PathBuf,
    /// The hostname of its UTS namespace.
    pub hostname: String,
    /// Program and arguments; the program is looked up in the container's
    /// PATH.
    pub argv: Vec<OsString>,
    /// `KEY=VALUE` additions to the environment.
    pub env: Vec<(String, String)>,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid("path", format!("{} has a NUL byte", p.display())))
}

/// Host paths of the container's `/proc`, `/dev` and `/sys`, where they
/// are directories (the init layer makes them where the image has none;
/// resolved inside the root, so a symlink cannot point them at the host).
fn special_dirs(rootfs: &Path) -> Result<[Option<CString>; 3]> {
    let mut out = [None, None, None];
    for (i, p) in ["/proc", "/dev", "/sys"].iter().enumerate() {
        let fd = scoped::resolve(rootfs, p, None)
            .map_err(Error::io("resolving", rootfs.join(&p[1..])))?;
        if let Some(fd) = fd {
            let host = scoped::host_path(&fd).map_err(Error::io("resolving", rootfs))?;
            if host.starts_with(rootfs) && host.is_dir() {
                out[i] = Some(cstr(&host)?);
            }
        }
    }
    Ok(out)
}

/// Runs the command and returns its exit code (128 + the signal number if
/// a signal ended it). A program not in the container is
/// [`Error::NotFound`] (a shell would exit 127).
pub fn run(spec: &ExecSpec) -> Result<i32> {
    let Some(program) = spec.argv.first() else {
        return Err(Error::invalid("command", "no command given"));
    };
    let rootfs = cstr(&spec.rootfs)?;
    let [proc_dir, dev_dir, sys_dir] = special_dirs(&spec.rootfs)?;
    // Paths in the container's /dev, as the host sees them.
    let in_dev = |name: &str| {
        dev_dir.as_ref().map(|d| {
            let mut p = d.as_bytes().to_vec();
            p.extend_from_slice(format!("/{name}").as_bytes());
            CString::new(p).expect("no NUL")
        })
    };
    let (dev_pts, dev_shm) = (in_dev("pts"), in_dev("shm"));
    let hostname = spec.hostname.clone();
    let devices: Vec<(CString, CString)> = DEVICES
        .iter()
        .filter_map(|n| {
            let host = CString::new(format!("/dev/{n}")).expect("no NUL");
            in_dev(n).map(|inside| (host, inside))
        })
        .collect();
    let links: Vec<(CString, CString)> = [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ]
    .iter()
    .filter_map(|(n, t)| in_dev(n).map(|p| (CString::new(*t).expect("no NUL"), p)))
    .collect();

    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOSTNAME", &spec.hostname)
        .env("HOME", "/root");
    if let Ok(term) = std::env::var("TERM") {
        cmd.env("TERM", term);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // SAFETY: runs in the forked child before exec; it only makes system
    // calls on data prepared above (no allocation of its own but the
    // errors' conversion).
    unsafe {
        cmd.pre_exec(move || {
            let e = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
            for s in [Signal::SIGINT, Signal::SIGQUIT] {
                signal(s, SigHandler::SigDfl).map_err(e)?;
            }
            nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS).map_err(e)?;
            // Nothing done from here on reaches the host's mount table.
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(e)?;
            nix::unistd::sethostname(&hostname).map_err(e)?;
            if let Some(p) = &proc_dir {
                nix::mount::mount(
                    Some("proc"),
                    p.as_c_str(),
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(e)?;
            }
            if let Some(d) = &dev_dir {
                nix::mount::mount(
                    Some("tmpfs"),
                    d.as_c_str(),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("mode=755,size=64k"),
                )
                .map_err(e)?;
                for (host, inside) in &devices {
                    let fd = libc::open(
                        inside.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o666,
                    );
                    if fd >= 0 {
                        libc::close(fd);
                        nix::mount::mount(
                            Some(host.as_c_str()),
                            inside.as_c_str(),
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )
                        .map_err(e)?;
                    }
                }
                for (target, link) in &links {
                    libc::symlink(target.as_ptr(), link.as_ptr());
                }
                if let (Some(pts), Some(shm)) = (&dev_pts, &dev_shm) {
                    libc::mkdir(pts.as_ptr(), 0o755);
                    if libc::mkdir(shm.as_ptr(), 0o1777) == 0 {
                        nix::mount::mount(
                            Some("shm"),
                            shm.as_c_str(),
                            Some("tmpfs"),
                            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                            Some("mode=1777,size=65536k"),
                        )
                        .map_err(e)?;
                    }
                }
            }
            if let Some(s) = &sys_dir {
                nix::mount::mount(
                    Some("sysfs"),
                    s.as_c_str(),
                    Some("sysfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(e)?;
            }
            nix::unistd::chroot(rootfs.as_c_str()).map_err(e)?;
            nix::unistd::chdir("/").map_err(e)?;
            Ok(())
        });
    }
    // Like a shell: ^C goes to the command; this process waits to clean up.
    let old: Vec<_> = [Signal::SIGINT, Signal::SIGQUIT]
        .iter()
        .map(|s| {
            // SAFETY: SIG_IGN installs no handler: no code of ours runs in
            // signal context.
            (*s, unsafe { signal(*s, SigHandler::SigIgn) })
        })
        .collect();
    let status = cmd.status();
    for (s, h) in old {
        if let Ok(h) = h {
            // SAFETY: restores the disposition signal(2) reported before
            // (the default or a handler the runtime installed), unchanged.
            unsafe {
                let _ = signal(s, h);
            }
        }
    }
    match status {
        Ok(st) => Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound {
            what: "command",
            name: program.to_string_lossy().into_owned(),
            hint: format!(" in the container (PATH={DEFAULT_PATH})"),
        }),
        Err(err) => Err(Error::io(
            format!("running {} in", program.to_string_lossy()),
            &spec.rootfs,
        )(err)),
    }
}
