//! Shell completions and man pages, as a user installs and reads them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

fn thinlayer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_thinlayer"))
        .args(args)
        .env("THINLAYER_CONFIG", "/dev/null")
        .output()
        .expect("running thinlayer")
}

#[test]
fn plain_completions_bash_is_valid_bash_and_knows_the_commands() {
    let o = thinlayer(&["completions", "bash"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = String::from_utf8(o.stdout).unwrap();
    for word in ["container", "volume", "pool", "--config"] {
        assert!(script.contains(word), "no '{word}' in the bash completion");
    }
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    std::io::Write::write_all(bash.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    let r = bash.wait_with_output().unwrap();
    assert!(
        r.status.success(),
        "bash -n refused the script: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    // Every other shell has a script too; an unknown one is a usage error.
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = thinlayer(&["completions", shell]);
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("container"),
            "{shell}"
        );
    }
    let o = thinlayer(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Every file under `dir`, by relative path, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn install(prefix: &Path) {
    let o = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/install.sh"))
        .arg("--prefix")
        .arg(prefix)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_thinlayer"))
        .env_remove("DESTDIR")
        .output()
        .expect("running tools/install.sh");
    assert!(
        o.status.success(),
        "tools/install.sh failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn plain_install_puts_pages_where_man_finds_them_and_again_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("usr-local");
    install(&prefix);
    for f in [
        "bin/thinlayer",
        "share/man/man1/thinlayer.1",
        "share/man/man1/thinlayer-volume-create.1",
        "share/man/man1/thinlayer-container-cp.1",
        "share/bash-completion/completions/thinlayer",
        "share/zsh/site-functions/_thinlayer",
        "share/fish/vendor_completions.d/thinlayer.fish",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }

    // Idempotent: the same files again, and a page of a command that no
    // longer exists is gone.
    let before = files(&prefix);
    let stale = prefix.join("share/man/man1/thinlayer-gone.1");
    std::fs::write(&stale, ".TH GONE 1\n").unwrap();
    install(&prefix);
    assert!(!stale.exists(), "a stale page stayed");
    assert_eq!(files(&prefix), before, "a second install changed the files");

    // Read as a user would. No man is a broken machine, not a skip.
    let man = prefix.join("share/man");
    let o = match Command::new("man")
        .env("MANPATH", &man)
        .args(["-P", "cat", "thinlayer-container-cp"])
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C")
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run man ({e}): tools/setup.sh installs it (man-db)"),
    };
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "man failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(page.contains("NAME"), "{page}");
    assert!(
        page.contains("thinlayer-container-cp - Copy files between a container and the host"),
        "{page}"
    );
    assert!(
        page.contains("SEE ALSO") && page.contains("thinlayer-container(1)"),
        "{page}"
    );
}
