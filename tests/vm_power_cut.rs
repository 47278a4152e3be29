//! The power-cut test: the dm tier, driven from the HOST.
//!
//! A VM runs a workload of concurrent thinlayer commands (snapshots with
//! content, image imports, container creates and synced writes, thin
//! volumes, removals) on a virtio disk that outlives it
//! (`vm-tests/run.sh --keep-disk`); the host kills QEMU at a random instant
//! in the middle of it (`--power-cut-after`: SIGKILL, no shutdown, no
//! sync); a new VM boots on the same disk and checks that `thin_check` is
//! clean, `pool activate` succeeds, everything that reported success
//! before the cut is there (a removal that did: gone), and records and
//! thin devices agree exactly. Content (sha256 of what was written) is read
//! back after the cut that ends the round it was written in; after later
//! cuts, presence and the agreement of records and devices are checked, to
//! keep each boot short. Then the boot's own workload runs on what
//! recovery left, and the host cuts again.
//!
//! The guest's half is `tests/vm_power_cut/guest.sh`; it prints a line for
//! every operation it starts and every one that returned 0, so the host
//! knows exactly which successes were reported before the cut: a line the
//! host has read was printed after its command returned.
//!
//! Test targets named `vm_*` boot their own VMs: `tools/run-tier.sh` runs
//! them on the host (`vm-tests/dm-tier.sh` does so after the guest's run),
//! never inside the VM.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use thinpool::testing::Scratch;

/// Power cuts per run, each in a round of its own.
const CUTS: u32 = 3;
/// Cuts at most: past [`CUTS`], rounds go on while no cut has yet left
/// recovery anything to repair (a cut in flight may still land before an
/// operation's first durable write), up to this many.
const MAX_CUTS: u32 = 6;
/// Image variants each round may import (more than fit before a cut).
const VARIANTS_PER_ROUND: u32 = 10;
/// The cut comes this many seconds after the first operation of the
/// workload reported success, at random: long enough for more to finish,
/// short enough that far more are still to come (each of the four workers
/// has dozens queued).
const CUT_AFTER_SECS: (f64, f64) = (0.5, 4.0);

/// What one object should look like after a cut, from the lines the host
/// read before it.
#[derive(Clone, Debug, PartialEq)]
enum Want {
    /// It exists; `sha` is its content's, read back after the cut that
    /// follows the round in which it was written (`round`).
    Present { sha: Option<String>, round: u32 },
    /// Its removal reported success.
    Gone,
    /// An operation on it was cut: either outcome is fine (records and
    /// devices must still agree).
    Either,
}

/// Objects by `(kind, name)`, kind one of `layer`, `image`, `container`,
/// `volume`.
#[derive(Default)]
struct Model {
    objects: BTreeMap<(&'static str, String), Want>,
}

impl Model {
    /// Applies one line the host read from round `round`'s console.
    fn apply(&mut self, round: u32, line: &Line) {
        let set = |m: &mut Model, kind: &'static str, name: &str, w: Want| {
            m.objects.insert((kind, name.to_string()), w);
        };
        let sha = |s: &str| (s != "-").then(|| s.to_string());
        match line {
            Line::Ok(kind, name, s) => match kind.as_str() {
                "snap" => set(self, "layer", name, Want::Present { sha: sha(s), round }),
                "import" => set(self, "image", name, Want::Present { sha: sha(s), round }),
                "container" | "write" => set(
                    self,
                    "container",
                    name,
                    Want::Present { sha: sha(s), round },
                ),
                "volume" => set(self, "volume", name, Want::Present { sha: None, round }),
                "rm-snap" => set(self, "layer", name, Want::Gone),
                "rm-volume" => set(self, "volume", name, Want::Gone),
                k => panic!("unknown operation kind {k} in the guest's output"),
            },
            // A write that did not report success may or may not be there:
            // the container stays, its content is not checked.
            Line::Start(kind, name) => match kind.as_str() {
                "write" => set(self, "container", name, Want::Present { sha: None, round }),
                "rm-snap" => set(self, "layer", name, Want::Either),
                "rm-volume" => set(self, "volume", name, Want::Either),
                _ => {}
            },
            _ => {}
        }
    }

    /// The guest's `expect` file after round `round`'s cut: content is
    /// read back for what that round wrote, presence checked for all.
    fn expect(&self, round: u32) -> (String, usize) {
        let mut out = String::new();
        let mut n = 0;
        for ((kind, name), w) in &self.objects {
            let fresh = |sha: &Option<String>, r: &u32| match sha {
                Some(s) if *r == round => s.clone(),
                _ => "-".into(),
            };
            let line = match (*kind, w) {
                (_, Want::Either) => continue,
                ("layer", Want::Present { sha, round: r }) => {
                    format!("layer {name} {}", fresh(sha, r))
                }
                ("image", Want::Present { sha, round: r }) => {
                    format!("image {name} {} variant", fresh(sha, r))
                }
                ("container", Want::Present { sha, round: r }) => {
                    format!("container {name} {}", fresh(sha, r))
                }
                ("volume", Want::Present { .. }) => format!("volume {name}"),
                ("layer", Want::Gone) => format!("no-layer {name}"),
                ("volume", Want::Gone) => format!("no-volume {name}"),
                (k, w) => panic!("no expectation for {k} {name} {w:?}"),
            };
            writeln!(out, "{line}").unwrap();
            n += 1;
        }
        (out, n)
    }
}

/// One console line of the guest's protocol (see guest.sh).
#[derive(Debug)]
enum Line {
    Start(String, String),
    Ok(String, String, String),
    Fail(String),
    Recovered,
    Checked(usize),
    Workload,
    Other,
}

fn parse(l: &str) -> Line {
    let f: Vec<&str> = l.split_whitespace().collect();
    let is_sha = |s: &str| s == "-" || (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    match f.as_slice() {
        ["START", k, n] => Line::Start(k.to_string(), n.to_string()),
        // A line cut short by the power cut has fewer fields or a short
        // sha: it was not reported, so it is not taken.
        ["OK", k, n, s] if is_sha(s) => Line::Ok(k.to_string(), n.to_string(), s.to_string()),
        ["FAIL", ..] => Line::Fail(l.to_string()),
        ["RECOVERED", ..] => Line::Recovered,
        ["CHECKED", n, ..] => n.parse().map_or(Line::Other, Line::Checked),
        ["WORKLOAD", "ROUND", _] => Line::Workload,
        _ => Line::Other,
    }
}

/// What one boot printed and how it ended.
struct Boot {
    lines: Vec<Line>,
    status: Option<i32>,
    stderr: String,
}

/// Boots a VM on `disk` that runs guest.sh with `args`; with `cut_after`,
/// the power is cut that many seconds after the guest's `CUT WINDOW` line
/// (its workload's first success).
fn boot(s: &Scratch, disk: &Path, label: &str, args: &[&str], cut_after: Option<f64>) -> Boot {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_thinlayer"));
    let mut c = Command::new(repo.join("vm-tests/run.sh"));
    c.current_dir(repo)
        .args(["--timeout", "300", "--mem", "2G", "--disk", "4G"])
        .arg("--keep-disk")
        .arg(disk)
        .arg("--share")
        .arg(s.path())
        .arg("--share")
        .arg(bin.parent().unwrap());
    if let Some(secs) = cut_after {
        c.args(["--power-cut-after", "^CUT WINDOW$", &format!("{secs:.2}")]);
    }
    c.arg("--script")
        .arg(repo.join("tests/vm_power_cut/guest.sh"))
        .args(args)
        .arg(s.path())
        .arg(bin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("starting vm-tests/run.sh");
    let mut err = child.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = err.read_to_string(&mut e);
        e
    });
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut buf = Vec::new();
    let t = std::time::Instant::now();
    while out
        .read_until(b'\n', &mut buf)
        .expect("reading the VM's console")
        > 0
    {
        let l = String::from_utf8_lossy(&buf);
        let l = l.trim_end_matches('\n');
        eprintln!("[{label} {:5.1}s] {l}", t.elapsed().as_secs_f64());
        lines.push(parse(l));
        buf.clear();
    }
    let status = child.wait().unwrap().code();
    let stderr = errs.join().unwrap();
    eprint!("{stderr}");
    Boot {
        lines,
        status,
        stderr,
    }
}

/// The inputs in the scratch directory: `base.tar`, the base layer's
/// changeset (a static busybox, so containers made on it run `/bin/sh`,
/// and 1 MiB of random `data`), and `oci`, an image layout made with umoci
/// holding `MAX_CUTS * VARIANTS_PER_ROUND` one-layer images (tags `v1`...),
/// each with a file `variant` of its own, so every import makes a thin
/// device. Writes `variants`: `ROUND TAG SHA256` lines.
fn inputs(s: &Scratch) {
    let busybox = std::fs::read(common::busybox()).unwrap();
    let mut data = vec![0u8; 1 << 20];
    getrandom::fill(&mut data).unwrap();
    let mut base = common::Tar::new();
    for d in ["bin", "dev", "etc", "proc", "tmp", "vol"] {
        base = base.dir(d);
    }
    base.file_mode("bin/busybox", &busybox, 0o755);
    base.symlink("bin/sh", "busybox")
        .file("data", &data)
        .write(&s.path().join("base.tar"));

    let layout = s.path().join("oci");
    let l = layout.to_str().unwrap();
    common::umoci(&["init", "--layout", l]);
    common::umoci(&["new", "--image", &format!("{l}:empty")]);
    let mut list = String::new();
    for k in 1..=MAX_CUTS * VARIANTS_PER_ROUND {
        let mut content = vec![0u8; 256 << 10];
        getrandom::fill(&mut content).unwrap();
        let tar = common::Tar::new()
            .file("variant", &content)
            .write(&s.path().join(format!("v{k}.tar")));
        common::umoci(&[
            "raw",
            "add-layer",
            "--image",
            &format!("{l}:empty"),
            "--tag",
            &format!("v{k}"),
            tar.to_str().unwrap(),
        ]);
        let round = (k - 1) / VARIANTS_PER_ROUND + 1;
        writeln!(list, "{round} v{k} {:x}", Sha256::digest(&content)).unwrap();
    }
    std::fs::write(s.path().join("variants"), list).unwrap();
}

/// A small PRNG (xorshift64*), seeded from the OS or from
/// `THINLAYER_POWER_CUT_SEED` to replay a run's instants.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("THINLAYER_POWER_CUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).unwrap();
                u64::from_le_bytes(b)
            });
        eprintln!(
            "power cut instants from seed {seed} (THINLAYER_POWER_CUT_SEED={seed} replays them)"
        );
        Rng(seed | 1)
    }

    /// Uniform in [lo, hi).
    fn between(&mut self, (lo, hi): (f64, f64)) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        lo + u * (hi - lo)
    }
}

/// The guest's failures, or the end of its output, for a panic message.
fn explain(b: &Boot) -> String {
    let fails: Vec<&str> = b
        .lines
        .iter()
        .filter_map(|l| match l {
            Line::Fail(f) => Some(f.as_str()),
            _ => None,
        })
        .collect();
    format!(
        "exit status {:?}; {}; run.sh said: {}",
        b.status,
        if fails.is_empty() {
            "no FAIL line".to_string()
        } else {
            fails.join("; ")
        },
        b.stderr.trim()
    )
}

/// Adds what boot `b` said recovery repaired to the run's tally.
fn tally(b: &Boot, recovered: &mut usize) {
    *recovered += b
        .lines
        .iter()
        .filter(|l| matches!(l, Line::Recovered))
        .count();
}

/// The guest's CHECKED count after a cut must be every expectation.
fn assert_checked(b: &Boot, label: &str, want: usize) {
    let got = b.lines.iter().find_map(|l| match l {
        Line::Checked(n) => Some(*n),
        _ => None,
    });
    assert_eq!(
        got,
        Some(want),
        "{label}: the check after the cut did not pass: {}",
        explain(b)
    );
}

/// Three power cuts (up to six, see [`MAX_CUTS`]) at random instants of a
/// workload on one pool, each followed by a boot that checks what the cut
/// left: the metadata is clean, the pool activates, everything that
/// reported success is there with its content, records and thin devices
/// agree. Every cut must land mid-workload: some operation started and
/// had not reported success; and the cuts together must have left
/// recovery something to repair.
#[test]
fn dm_power_cut_at_random_instants_loses_nothing_that_reported_success() {
    if std::env::var_os("THINLAYER_IN_VM").is_some() {
        panic!(
            "this test boots VMs from the host and cannot run inside one: \
             vm-tests/dm-tier.sh runs it on the host after the guest's run"
        );
    }
    let t0 = std::time::Instant::now();
    let s = Scratch::new("power-cut");
    inputs(&s);
    let disk = s.path().join("disk.img");
    let expect = s.path().join("expect");
    let mut rng = Rng::new();
    let mut model = Model::default();
    let mut report = Vec::new();
    let (mut oks, mut recovered) = (0, 0usize);
    let mut checks = Vec::new();
    // A cut's repairs show in the boot after it.
    let mut cuts = 0;
    while cuts < CUTS || (recovered == 0 && cuts < MAX_CUTS) {
        cuts += 1;
        let round = cuts;
        let label = format!("boot {round}");
        let delay = rng.between(CUT_AFTER_SECS);
        let (text, n) = model.expect(round - 1);
        std::fs::write(&expect, text).unwrap();
        let b = boot(
            &s,
            &disk,
            &label,
            &["round", &round.to_string()],
            Some(delay),
        );
        if round > 1 {
            assert_checked(&b, &label, n);
            checks.push(n);
        }
        match b.status {
            Some(137) if b.stderr.contains("POWER CUT") => {}
            Some(3) => panic!(
                "{label}: the workload finished before the power cut ({delay:.2}s): the cut landed after it, proving nothing"
            ),
            _ => panic!("{label}: the VM did not end in a power cut: {}", explain(&b)),
        }
        assert!(
            !b.lines.iter().any(|l| matches!(l, Line::Fail(_))),
            "{label}: {}",
            explain(&b)
        );
        // Which operations of the workload had started and not reported
        // success when the power went.
        let w = b
            .lines
            .iter()
            .position(|l| matches!(l, Line::Workload))
            .expect("the cut is armed in the workload, after its WORKLOAD line");
        let mut open = BTreeSet::new();
        let mut done = 0;
        for l in &b.lines[w..] {
            match l {
                Line::Start(k, n) => {
                    open.insert((k.clone(), n.clone()));
                }
                Line::Ok(k, n, _) => {
                    open.remove(&(k.clone(), n.clone()));
                    done += 1;
                }
                _ => {}
            }
        }
        assert!(
            !open.is_empty(),
            "{label}: the cut {delay:.2}s after the workload's first success found no operation in flight"
        );
        tally(&b, &mut recovered);
        oks += b.lines.iter().filter(|l| matches!(l, Line::Ok(..))).count();
        for l in &b.lines {
            model.apply(round, l);
        }
        let inflight: Vec<String> = open.iter().map(|(k, n)| format!("{k} {n}")).collect();
        report.push(format!(
            "cut {round}, {delay:.2}s after the first success: {done} operations had reported success, in flight: {}",
            inflight.join(", ")
        ));
    }
    let label = "boot check";
    let (text, n) = model.expect(cuts);
    std::fs::write(&expect, text).unwrap();
    let b = boot(&s, &disk, label, &["check"], None);
    assert_eq!(b.status, Some(0), "{label}: {}", explain(&b));
    assert_checked(&b, label, n);
    checks.push(n);
    tally(&b, &mut recovered);
    // The summary goes to stderr itself, past libtest's capture: CI logs
    // show where the cuts landed even when the test passes.
    let mut summary = report.join("\n");
    writeln!(
        summary,
        "\npower cut: {cuts} cuts, {oks} operations reported success, expectations held after each cut: {checks:?}, \
         recovery repaired {recovered} things, in {:.0?}",
        t0.elapsed()
    )
    .unwrap();
    std::io::stderr().write_all(summary.as_bytes()).unwrap();
    // Four operations are in flight at every cut, each in a thinlayer
    // command most of its time: a run whose cuts left nothing to repair
    // cut only between commands, and proved little.
    assert!(
        recovered > 0,
        "{cuts} cuts and recovery repaired nothing: every cut fell before the first durable write of what was in flight"
    );
}
