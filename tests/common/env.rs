//! One root with one driver's store, and the macro that runs a scenario
//! against both drivers: the thin run in the dm tier (`dm_thin::*`, in the
//! VM), the overlay run in the root tier (`root_overlay::*`, on the host).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use thinpool::testing::Scratch;

use super::{stderr, Tar};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drv {
    Thin,
    Overlay,
}

impl Drv {
    pub fn name(self) -> &'static str {
        match self {
            Drv::Thin => "thin",
            Drv::Overlay => "overlay",
        }
    }
}

/// One root with one driver's store, in a scratch directory.
pub struct Env {
    pub s: Scratch,
    pub root: PathBuf,
    pub drv: Drv,
}

impl Env {
    pub fn new(label: &str, drv: Drv) -> Env {
        let s = Scratch::new(label);
        let root = s.path().join("root");
        let e = Env { s, root, drv };
        if drv == Drv::Thin {
            e.ok(&["pool", "create", "--data-size", "2G", "--base-size", "256M"]);
        }
        e
    }

    /// A thin root in a fresh scratch directory, its pool made with `pool`
    /// (`pool create` options) instead of [`Env::new`]'s.
    pub fn thin_with_pool(label: &str, pool: &[&str]) -> Env {
        let s = Scratch::new(label);
        let e = Env {
            root: s.path().join("root"),
            s,
            drv: Drv::Thin,
        };
        let mut args = vec!["pool", "create"];
        args.extend_from_slice(pool);
        e.ok(&args);
        e
    }

    pub fn path(&self) -> &Path {
        self.s.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
        c.arg("--root")
            .arg(&self.root)
            .args(["--driver", self.drv.name()])
            .args(args)
            .env_remove("THINLAYER_ROOT")
            .env_remove("THINLAYER_DRIVER");
        c
    }

    /// Reloads the pool, which frees ids its metadata holds and no record
    /// names, and asserts it freed none: no kill left one.
    pub fn assert_no_orphan_thin_id(&self) {
        self.ok(&["pool", "deactivate"]);
        let o = self.run(&["pool", "activate"]);
        assert!(o.status.success(), "{}", super::stderr(&o));
        assert!(
            !super::stderr(&o).contains("freed thin id"),
            "a kill left an orphan thin id: {}",
            super::stderr(&o)
        );
    }

    /// Runs `thinlayer ARGS` with kill point `point` set
    /// (`THINLAYER_KILL_AT`). `false` if the point is not on the command's
    /// path (it then succeeded); `true` if it was killed there, after
    /// checking that the next command recovered something and that
    /// records and resources agree.
    pub fn killed_at_point(&self, args: &[&str], point: &str) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let o = self
            .cmd(args)
            .env(thinpool::killpoint::ENV, point)
            .output()
            .unwrap();
        let what = format!("{} killed at {point}", args[..2].join(" "));
        if o.status.signal() != Some(9) {
            assert!(o.status.success(), "{what}: {}", super::stderr(&o));
            return false;
        }
        let ls = self.run(&["layer", "ls"]);
        assert!(
            super::stderr(&ls).contains("recovered:"),
            "{what}: the next command recovered nothing: {}",
            super::stderr(&ls)
        );
        self.assert_consistent();
        true
    }

    /// The fastest of three timed runs of `run`, with `undo` after each:
    /// a slow first run (cold caches, a busy machine) would put most kills
    /// of a [`kill_sweep`] after the command's end.
    pub fn fastest_of_three(mut run: impl FnMut(), mut undo: impl FnMut()) -> Duration {
        let mut full = Duration::MAX;
        for _ in 0..3 {
            let start = std::time::Instant::now();
            run();
            full = full.min(start.elapsed());
            undo();
        }
        full
    }

    /// Starts `thinlayer ARGS` and SIGKILLs it after `at` (or when it
    /// ends, if sooner): a crash at an arbitrary instant.
    pub fn killed_after(&self, args: &[&str], at: Duration) {
        let mut child = self
            .cmd(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `container exec C -- /bin/sh -c SCRIPT`.
    pub fn exec(&self, c: &str, script: &str) -> Output {
        self.run(&["container", "exec", c, "--", "/bin/sh", "-c", script])
    }

    /// Runs `script` in container `c` and returns its stdout; it must
    /// succeed.
    pub fn sh(&self, c: &str, script: &str) -> String {
        let o = self.exec(c, script);
        assert!(
            o.status.success(),
            "{script} in {c} ({}): exit {:?}: {}{}",
            self.drv.name(),
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The id of `image`'s top layer.
    pub fn top_layer(&self, image: &str) -> String {
        let i: Value =
            serde_json::from_str(&self.ok(&["image", "inspect", image, "--json"])).unwrap();
        super::last_layer(&i)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} ({}) failed: {}",
            self.drv.name(),
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn fails(&self, args: &[&str], needles: &[&str]) {
        let o = self.run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
        }
    }

    pub fn tar(&self, name: &str, t: Tar) -> String {
        t.write(&self.path().join(name))
            .to_string_lossy()
            .into_owned()
    }

    /// A layer on `parent` (or a root layer) from a tar; returns its id.
    pub fn layer(&self, parent: Option<&str>, name: &str, tar: &str) -> String {
        let out = match parent {
            Some(p) => self.ok(&["snapshot", "layer", p, "--name", name, "--from-tar", tar]),
            None => self.ok(&["layer", "create", "--name", name, "--from-tar", tar]),
        };
        let id = out.trim().to_string();
        assert_eq!(id.len(), 32, "not an id: {out}");
        id
    }

    pub fn with_mounted<T>(&self, layer: &str, f: impl FnOnce(&Path) -> T) -> T {
        let mp = PathBuf::from(self.ok(&["layer", "mount", layer]).trim());
        let r = f(&mp);
        self.ok(&["layer", "umount", layer]);
        r
    }

    pub fn list(&self, what: &str) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&[what, "ls", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Resources the driver holds for layers: thin devices besides the
    /// base, or layer directories.
    pub fn resources(&self) -> usize {
        match self.drv {
            Drv::Thin => {
                let st: Value =
                    serde_json::from_str(&self.ok(&["pool", "status", "--json"])).unwrap();
                st["thin_devices"].as_u64().unwrap() as usize - 1
            }
            Drv::Overlay => std::fs::read_dir(self.root.join("overlay/data"))
                .map(|d| d.count())
                .unwrap_or(0),
        }
    }

    /// Records and resources agree.
    pub fn assert_consistent(&self) {
        // Listing opens the store, which repairs what a killed command left.
        let layers = self.list("layer").len();
        assert_eq!(
            self.resources(),
            layers,
            "layer records and {} resources disagree",
            self.drv.name()
        );
        // No file beside the records outlives its record (a layer's
        // changeset layout, an image's config).
        let store = self.root.join(self.drv.name());
        for (sub, ext) in [("layers", "split"), ("images", "config")] {
            let Ok(rd) = std::fs::read_dir(store.join(sub)) else {
                continue;
            };
            for p in rd.map(|e| e.unwrap().path()) {
                if p.extension().is_some_and(|x| x == ext) {
                    assert!(
                        p.with_extension("json").exists(),
                        "{} has no record",
                        p.display()
                    );
                }
            }
        }
    }
}

pub fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

#[macro_export]
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod dm_thin {
            $( #[test] fn $scenario() { thinpool::testing::require_dm(); super::$scenario(super::Drv::Thin) } )*
        }
        mod root_overlay {
            $( #[test] fn $scenario() { thinpool::testing::require_root(); super::$scenario(super::Drv::Overlay) } )*
        }
    };
}

/// Kills a command at instants spread over its run and checks each kill,
/// asserting that at least `want` of them landed mid-operation (else the
/// test proves little).
///
/// `full` is the command's time (see [`Env::fastest_of_three`]);
/// `kill(at)` starts the command, kills it after `at`, checks what the
/// next command finds, and says whether the kill landed mid-operation.
/// The schedule is `even` instants over the whole run and a little past
/// it; then, if fewer than `want` landed (a loaded machine times the run
/// slower than the killed runs go), up to 48 more at finer instants
/// inside it. Returns the number of kills.
pub fn kill_sweep(
    what: &str,
    full: Duration,
    even: u32,
    want: usize,
    mut kill: impl FnMut(Duration) -> bool,
) -> usize {
    let span = (even * 3 / 4).max(1);
    let points = (0..even)
        .map(|k| full * k / span)
        .chain((1..=48u32).map(|k| full * k / 49));
    let (mut kills, mut mid) = (0, 0);
    for at in points {
        if kills >= even as usize && mid >= want {
            break;
        }
        kills += 1;
        if kill(at) {
            mid += 1;
        }
    }
    eprintln!("{what} takes {full:?}; {mid} of {kills} kills landed mid-{what}");
    assert!(
        mid >= want,
        "only {mid} of {kills} kills landed mid-{what}: the test proves little"
    );
    kills
}
