//! `thinlayer snapshotter serve` against containerd's own snapshotter test
//! suite (`snapshots/testsuite`, the suite containerd runs against its
//! overlayfs, devmapper and btrfs snapshotters), built from Debian's copy of
//! containerd 1.6's source by `tools/build-containerd-suite.sh` with the
//! harness in `tests/containerd-suite/`: each of its tests starts a daemon
//! on a fresh root and talks to it through containerd's proxy client.
//! The overlay driver runs in the root tier, the thin driver in the dm tier.

use std::path::PathBuf;
use std::process::Command;

mod common;

fn suite_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let bin = target.join("containerd-suite.test");
    assert!(
        bin.exists(),
        "{} is missing: build it with tools/build-containerd-suite.sh (tools/run-tier.sh does)",
        bin.display()
    );
    bin
}

/// Runs the suite with `cmd` as each test's daemon; every test must pass
/// but `Rename`, which containerd 1.6's suite skips itself.
fn run_suite(label: &str, cmd: &str) {
    let s = thinpool::testing::Scratch::new(label);
    let logs = s.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let out = Command::new(suite_binary())
        .args(["-test.v", "-test.timeout", "15m"])
        .env("SNAPSHOTTER_CMD", cmd)
        .env("SNAPSHOTTER_NAME", "thinlayer")
        .env("SNAPSHOTTER_LOG_DIR", &logs)
        .env("SNAPSHOTTER_STOP_TIMEOUT", "60s")
        .env("TMPDIR", s.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let passed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--- PASS: TestSnapshotterSuite/"))
        .collect();
    let skipped: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--- SKIP: TestSnapshotterSuite/"))
        .collect();
    let daemon_logs: String = std::fs::read_dir(&logs)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter(|t| t.contains("Code"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "containerd's snapshotter suite failed:\n{text}\n{}\ndaemon failures:\n{daemon_logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        skipped.iter().all(|s| s.starts_with("Rename ")),
        "skipped: {skipped:?}"
    );
    assert!(
        passed.len() >= 20,
        "only {} of containerd's tests passed: {passed:?}",
        passed.len()
    );
    eprintln!(
        "containerd's snapshotter suite: {} passed, {} skipped",
        passed.len(),
        skipped.len()
    );
}

#[test]
fn root_containerd_snapshotter_suite_passes_on_overlay() {
    thinpool::testing::require_root();
    let bin = env!("CARGO_BIN_EXE_thinlayer");
    run_suite(
        "suite-overlay",
        &format!(
            "{bin} --root {{root}}/state --driver overlay snapshotter serve --address {{socket}}"
        ),
    );
}

#[test]
fn dm_containerd_snapshotter_suite_passes_on_thin() {
    thinpool::testing::require_dm();
    let bin = env!("CARGO_BIN_EXE_thinlayer");
    // Each test's root gets its own pool, destroyed when its daemon stops
    // (the suite removes the root, and a pool's loop devices would keep
    // their deleted files).
    let script = format!(
        "set -e; T={bin}; R={{root}}/state; \
         $T --root $R pool create --data-size 4G --base-size 256M >/dev/null; \
         $T --root $R --driver thin snapshotter serve --address {{socket}} & pid=$!; \
         trap \"kill -TERM $pid\" TERM INT; \
         rc=0; wait $pid || rc=$?; \
         if [ $rc -gt 128 ]; then rc=0; wait $pid || rc=$?; fi; \
         $T --root $R pool destroy --force >/dev/null; exit $rc"
    );
    run_suite("suite-thin", &format!("sh -c '{script}'"));
}

/// The daemon refuses a socket another live server holds, replaces a
/// stale one, logs a failed request in one line, and stops cleanly on
/// SIGTERM, removing its socket.
#[test]
fn root_snapshotter_serve_owns_its_socket_and_stops_on_sigterm() {
    thinpool::testing::require_root();
    let s = thinpool::testing::Scratch::new("serve");
    let bin = env!("CARGO_BIN_EXE_thinlayer");
    let sock = s.path().join("s.sock");
    let root = s.path().join("root");
    let serve = |log: &str| {
        Command::new(bin)
            .args(["--root", root.to_str().unwrap(), "--driver", "overlay"])
            .args(["snapshotter", "serve", "--address", sock.to_str().unwrap()])
            .stderr(std::fs::File::create(s.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    // A stale socket (no listener) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let mut first = serve("first.log");
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t0.elapsed().as_secs() < 20, "the daemon never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = Command::new(bin)
        .args(["--root", root.to_str().unwrap(), "--driver", "overlay"])
        .args(["snapshotter", "serve", "--address", sock.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = common::stderr(&second);
    assert!(
        err.contains("another server is listening on") && err.lines().count() == 1,
        "{err}"
    );
    // The CLI works on the same root while the daemon runs.
    let o = Command::new(bin)
        .args(["--root", root.to_str().unwrap(), "--driver", "overlay"])
        .args(["layer", "ls", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = first.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists(), "the socket outlived the daemon");
    let log = std::fs::read_to_string(s.path().join("first.log")).unwrap();
    assert!(
        log.contains("serving containerd's snapshots API") && log.contains("stopping"),
        "{log}"
    );
}
