//! The configuration file (`--config`, `THINLAYER_CONFIG`), as a user sees
//! it: its values used, flags and environment over it, its errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// thinlayer with none of its environment variables but `env`.
fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_thinlayer"));
    c.args(args);
    for v in [
        "THINLAYER_ROOT",
        "THINLAYER_DRIVER",
        "THINLAYER_CONFIG",
        "THINLAYER_LOCK_TIMEOUT",
        "THINLAYER_PHASES",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running thinlayer")
}

fn ok(args: &[&str], env: &[(&str, &Path)]) -> String {
    let o = run(args, env);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Fails with status 1 and one line of error containing every needle.
fn fails(args: &[&str], env: &[(&str, &Path)], needles: &[&str]) {
    let o = run(args, env);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("thinlayer: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: '{n}' not in: {err}");
    }
}

/// A configuration file in `dir` with `text`.
fn config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A file setting root and driver (overlay: `layer ls` then works without
/// root or a pool, and makes `<root>/overlay`; thin would want a pool).
fn overlay_config(t: &Path) -> (PathBuf, PathBuf) {
    let root = t.join("from-file");
    let c = config(
        t,
        "config.toml",
        &format!("root = \"{}\"\ndriver = \"overlay\"\n", root.display()),
    );
    (c, root)
}

#[test]
fn plain_config_file_sets_root_and_driver() {
    let t = tempfile::tempdir().unwrap();
    let (c, root) = overlay_config(t.path());
    assert_eq!(
        ok(&["--config", s(&c), "layer", "ls", "--json"], &[]).trim(),
        "[]"
    );
    assert!(
        root.join("overlay").is_dir(),
        "the file's root and driver were not used"
    );
    // The same file named by the environment, and --config after the command.
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        ok(&["layer", "ls", "--json"], &[("THINLAYER_CONFIG", &c)]).trim(),
        "[]"
    );
    assert!(root.join("overlay").is_dir());
    std::fs::remove_dir_all(&root).unwrap();
    ok(&["layer", "ls", &format!("--config={}", s(&c))], &[]);
    assert!(root.join("overlay").is_dir());
    // --config wins over THINLAYER_CONFIG.
    let missing = t.path().join("missing.toml");
    ok(
        &["--config", s(&c), "layer", "ls"],
        &[("THINLAYER_CONFIG", &missing)],
    );
}

#[test]
fn plain_config_flags_and_environment_win_over_the_file() {
    let t = tempfile::tempdir().unwrap();
    let (c, root) = overlay_config(t.path());
    let pool = root.join("pool");
    let no_pool = format!("no pool in {}", pool.display());
    // The driver: thin wants a pool under the file's root.
    fails(
        &["--config", s(&c), "--driver", "thin", "layer", "ls"],
        &[],
        &[&no_pool],
    );
    fails(
        &["--config", s(&c), "layer", "ls"],
        &[("THINLAYER_DRIVER", Path::new("thin"))],
        &[&no_pool],
    );
    // The root.
    let flag_root = t.path().join("from-flag");
    ok(
        &["--config", s(&c), "--root", s(&flag_root), "layer", "ls"],
        &[],
    );
    assert!(flag_root.join("overlay").is_dir());
    let env_root = t.path().join("from-env");
    ok(
        &["--config", s(&c), "layer", "ls"],
        &[("THINLAYER_ROOT", &env_root)],
    );
    assert!(env_root.join("overlay").is_dir());
    assert!(
        !root.join("overlay").exists(),
        "the file's root was used despite a flag or variable"
    );
}

#[test]
fn plain_config_pool_defaults_reach_pool_create_and_help() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let c = config(
        t.path(),
        "config.toml",
        &format!(
            "root = \"{}\"\n[pool]\ndata_size = 0\nblock_size = \"1M\"\nbase_size = \"2G\"\n\
             [snapshotter]\nsocket = \"/run/elsewhere.sock\"\n",
            root.display()
        ),
    );
    // Refused as `--data-size 0` is, before anything is made.
    fails(
        &["--config", s(&c), "pool", "create"],
        &[],
        &["invalid data size", "greater than 0"],
    );
    assert!(!root.exists());
    // A flag still wins.
    let o = run(
        &["--config", s(&c), "pool", "create", "--data-size", "junk"],
        &[],
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // --help shows the defaults in force.
    let help = ok(&["--config", s(&c), "pool", "create", "--help"], &[]);
    for d in [
        "[default: 1M]",
        "[default: 2G]",
        &format!("[default: {}]", root.display()),
    ] {
        assert!(help.contains(d), "no '{d}' in:\n{help}");
    }
    let help = ok(&["--config", s(&c), "snapshotter", "serve", "--help"], &[]);
    assert!(help.contains("[default: /run/elsewhere.sock]"), "{help}");
    let help = ok(&["--help"], &[("THINLAYER_CONFIG", Path::new("/dev/null"))]);
    assert!(
        help.contains("--config <FILE>") && help.contains("THINLAYER_CONFIG"),
        "{help}"
    );
}

#[test]
fn plain_config_unknown_keys_and_bad_values_are_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    for (text, needles) in [
        (
            "[pool]\ncolour = \"blue\"\n",
            &["line 2", "pool.colour", "unknown field"][..],
        ),
        ("rot = \"/x\"\n", &["line 1", "rot"]),
        ("driver = \"zfs\"\n", &["line 1", "key `driver`", "zfs"]),
        (
            "\n[pool]\nblock_size = \"96K\"\n",
            &["line 3", "key `pool.block_size`", "multiple of 64K"],
        ),
        (
            "[pool]\non_full = \"panic\"\n",
            &["key `pool.on_full`", "panic"],
        ),
        ("lock_timeout = \"soon\"\n", &["key `lock_timeout`"]),
        (
            "[overlay]\noptions = [\"redirect_dir=on\"]\n",
            &["key `overlay.options`", "redirect_dir"],
        ),
        (
            "root = \"relative\"\n",
            &["key `root`", "not an absolute path"],
        ),
        ("[pool\n", &["line 1"]),
    ] {
        let c = config(t.path(), "bad.toml", text);
        let path = s(&c).to_string();
        let mut all = vec![path.as_str()];
        all.extend_from_slice(needles);
        fails(&["--config", &path, "layer", "ls"], &[], &all);
        fails(&["volume", "ls"], &[("THINLAYER_CONFIG", &c)], &all);
        // Even --help: the file is read first, and a bad one is not ignored.
        fails(&["--config", &path, "--help"], &[], &all);
    }
}

#[test]
fn plain_config_named_file_must_exist() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope.toml");
    let needles = ["reading configuration file", s(&missing), "No such file"];
    fails(&["--config", s(&missing), "layer", "ls"], &[], &needles);
    fails(
        &["layer", "ls"],
        &[("THINLAYER_CONFIG", &missing)],
        &needles,
    );
}

#[test]
fn plain_phases_flag_and_environment_append_one_timed_line_per_command() {
    use thinlayer::phase::timing::{PhaseLine, REST};
    let t = tempfile::tempdir().unwrap();
    let (c, _) = overlay_config(t.path());
    let lines = t.path().join("phases.jsonl");
    ok(
        &["--config", s(&c), "--phases", s(&lines), "layer", "ls"],
        &[],
    );
    ok(
        &["--config", s(&c), "layer", "ls", "--json"],
        &[("THINLAYER_PHASES", &lines)],
    );
    // A command that fails still leaves its line, and its error stands.
    fails(
        &["--config", s(&c), "layer", "inspect", "nosuch"],
        &[("THINLAYER_PHASES", &lines)],
        &["nosuch"],
    );
    let got = PhaseLine::read_all(&lines).unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].args.contains(&"--phases".to_string()),
        "{:?}",
        got[0]
    );
    assert_eq!(got[1].args.last().map(String::as_str), Some("--json"));
    assert_eq!(
        got.iter().map(|l| l.ok).collect::<Vec<_>>(),
        [true, true, false]
    );
    for l in &got {
        // Opening the store is a phase of every command here, and the
        // phases with the rest add up to the command's time.
        assert!(l.phases.contains_key(thinlayer::phase::STORE_OPEN), "{l:?}");
        let sum: f64 = l.phases.values().sum();
        assert!(
            l.phases.contains_key(REST) && (sum - l.ms).abs() < 0.01,
            "{l:?}"
        );
    }
    // A file that cannot be written: a warning, and the command's own
    // result.
    let o = run(
        &["--config", s(&c), "layer", "ls"],
        &[("THINLAYER_PHASES", &t.path().join("no/such/dir"))],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.starts_with("thinlayer: warning: could not append the phases"),
        "{err}"
    );
}
