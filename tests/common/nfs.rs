//! The kernel NFS server of the test VM, driven through
//! `vm-tests/nfs-server.sh`: it exports one directory on 127.0.0.1 as the
//! NFSv4 pseudo-root, so `127.0.0.1:/sub` (or Docker's `device=:/sub`
//! with `o=addr=127.0.0.1`) is `DIR/sub`. There is one nfsd per kernel:
//! a server is held by one test at a time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The one nfsd of this kernel, held by one test at a time.
static NFSD: Mutex<()> = Mutex::new(());

/// A running NFS server exporting one directory; stopped on drop.
pub struct NfsServer {
    export: PathBuf,
    _held: MutexGuard<'static, ()>,
}

impl NfsServer {
    /// Exports `dir` (made if missing) and starts nfsd, waiting for any
    /// other test's server to be dropped first. Panics when it cannot.
    pub fn start(dir: &Path) -> NfsServer {
        let held = NFSD.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(dir).unwrap();
        let s = NfsServer {
            export: dir.to_path_buf(),
            _held: held,
        };
        s.up();
        s
    }

    /// The exported directory, as the server sees it.
    pub fn export(&self) -> &Path {
        &self.export
    }

    /// Stops nfsd's threads: connections to it are refused until
    /// [`NfsServer::up`].
    pub fn down(&self) {
        script(&["down"]);
    }

    /// Starts nfsd again (after [`NfsServer::down`]).
    pub fn up(&self) {
        script(&["start", self.export.to_str().unwrap()]);
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(path()).arg("stop").status();
    }
}

/// A TCP port on 127.0.0.1 that accepts connections (the kernel does, into
/// the backlog) and never answers a byte: a server that hangs. Closed
/// when the listener is dropped.
pub fn silent_server() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/nfs-server.sh")
}

fn script(args: &[&str]) {
    let o = Command::new("bash")
        .arg(path())
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nfs-server.sh {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
