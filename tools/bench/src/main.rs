//! thinlayer's benchmark harness: the thin (block-level) and overlay
//! (file-level) drivers on identical work, in one run, reported as raw
//! samples (`samples.json`), a Markdown report (`report.md`) and SVG plots.
//!
//! Run it through `tools/bench.sh`, which runs it natively where the kernel
//! has dm-thin and in the VM otherwise. Needs root and a scratch directory
//! (`--work`) on which it makes a pool of sparse files.

mod findings;
mod fixture;
mod peers;
mod phases;
#[allow(dead_code)]
mod plot;
#[allow(dead_code)]
mod report;
#[allow(dead_code)]
mod samples;
mod scenarios;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use thinpool::Bytes;

use fixture::Fixture;
use samples::{Environment, Run};
use scenarios::{Plan, Tick};

#[derive(Debug, Parser)]
#[command(
    name = "thinlayer-bench",
    about = "Block-level (thin) against file-level (overlay) copy-on-write, side by side"
)]
struct Args {
    /// A smoke run: fewer repetitions and smaller sizes (minutes, not hours).
    #[arg(long)]
    quick: bool,
    /// Where samples.json, report.md and the plots go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Scratch directory for the pool and the stores (emptied first).
    #[arg(long, default_value = "/tmp/thinlayer-bench")]
    work: PathBuf,
    /// The thinlayer binary [default: next to this one].
    #[arg(long)]
    thinlayer: Option<PathBuf>,
    /// Repetitions per measurement [default: 2 with --quick, 10 otherwise].
    #[arg(long)]
    reps: Option<usize>,
    /// Only these scenarios (ids: provision, first-write, metadata, new-data, lookup, page-cache,
    /// space, containerd, import, containerd-bench). --quick leaves containerd-bench out unless
    /// it is named here.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Remake report.md, the plots and the findings from DIR/samples.json
    /// (a finished run) without measuring anything.
    #[arg(long, value_name = "DIR")]
    render: Option<PathBuf>,
    /// containerd's benchsuite binary (tools/build-containerd-bench.sh)
    /// [default: containerd-bench.test in the thinlayer binary's target directory].
    #[arg(long, value_name = "PATH")]
    containerd_bench: Option<PathBuf>,
    /// Say in the report that this ran under emulation (set by tools/bench.sh in the VM).
    #[arg(long, env = "THINLAYER_BENCH_EMULATED")]
    emulated: bool,
}

/// A scenario: one report section, or several sharing their work.
type ScenarioFn = fn(&mut Fixture, Plan, &dyn Tick) -> Result<Vec<samples::Scenario>>;

/// A scenario that makes one report section.
macro_rules! one {
    ($f:path) => {
        |f, p, t| Ok(vec![$f(f, p, t)?])
    };
}

/// The scenario a `--quick` run leaves out unless `--only` names it.
const QUICK_SKIPS: &str = "containerd-bench";

const SCENARIOS: &[(&str, ScenarioFn)] = &[
    ("provision", one!(scenarios::provision)),
    ("first-write", one!(scenarios::first_write)),
    ("metadata", one!(scenarios::metadata)),
    ("new-data", one!(scenarios::new_data)),
    ("lookup", one!(scenarios::lookup)),
    ("page-cache", one!(scenarios::page_cache_sharing)),
    ("space", scenarios::space),
    ("containerd", one!(scenarios::containerd)),
    ("import", one!(scenarios::import)),
    ("containerd-bench", one!(scenarios::containerd_bench)),
];

/// A progress bar on a terminal; otherwise (a log, the VM's console) a
/// line at most every 30 s, so a long run shows where it is.
struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    samples: std::cell::Cell<u64>,
    last_line: std::cell::Cell<Instant>,
}

impl Tick for Progress {
    fn tick(&self, what: &str) {
        self.samples.set(self.samples.get() + 1);
        match &self.bar {
            Some(pb) => {
                pb.set_message(what.to_string());
                pb.inc(1);
            }
            None if self.last_line.get().elapsed().as_secs() >= 30 => {
                self.last_line.set(Instant::now());
                eprintln!(
                    "thinlayer-bench: {what}: {} samples, {} s in",
                    self.samples.get(),
                    self.start.elapsed().as_secs()
                );
            }
            None => {}
        }
    }
}

fn kernel() -> String {
    let u = nix::sys::utsname::uname();
    match u {
        Ok(u) => format!(
            "{} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        ),
        Err(_) => "unknown".into(),
    }
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map(|k| k * 1024)
        .unwrap_or(0)
}

/// samples.json, report.md and the plots of `run`, in `dir`.
fn write_outputs(run: &Run, dir: &std::path::Path) -> Result<()> {
    run.write(dir.join("samples.json"))?;
    std::fs::write(dir.join("report.md"), report::render(run))?;
    plot::write_all(run, dir)?;
    Ok(())
}

/// The filesystem holding `path`: "TYPE on SOURCE", from the longest
/// mount point above it in /proc/self/mountinfo.
fn filesystem_of(path: &std::path::Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(dash) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let (Some(mp), Some(ty), Some(src)) = (f.get(4), f.get(dash + 1), f.get(dash + 2)) else {
            continue;
        };
        if path.starts_with(mp) && best.as_ref().is_none_or(|(n, _)| mp.len() >= *n) {
            best = Some((mp.len(), format!("{ty} on {src}")));
        }
    }
    best.map(|(_, s)| s)
        .unwrap_or_else(|| "an unknown filesystem".into())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.render {
        let path = dir.join("samples.json");
        let mut run =
            samples::Run::read(&path).with_context(|| format!("reading {}", path.display()))?;
        for sc in &mut run.scenarios {
            sc.findings = findings::findings(sc, &run.environment);
        }
        return write_outputs(&run, dir);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmark needs root (loop devices, device-mapper, mounts)");
    }
    if !thinpool::kernel::has_device_mapper() {
        bail!("this kernel has no device-mapper: run tools/bench.sh, which runs the benchmark in the VM");
    }
    for id in &args.only {
        if !SCENARIOS.iter().any(|(s, _)| s == id) {
            bail!(
                "unknown scenario '{id}': use {}",
                SCENARIOS
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let plan = Plan {
        quick: args.quick,
        reps: args.reps.unwrap_or(if args.quick { 2 } else { 10 }),
    };
    let bin = match &args.thinlayer {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("thinlayer"),
    };
    if !bin.exists() {
        bail!(
            "no thinlayer binary at {}: build it, or pass --thinlayer",
            bin.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let clock = Instant::now();
    let (data, base) = if plan.quick {
        (Bytes(8 << 30), Bytes(512 << 20))
    } else {
        (Bytes(32 << 30), Bytes(4 << 30))
    };
    let containerd_bench = args.containerd_bench.clone().or_else(|| {
        bin.parent()
            .and_then(|d| d.parent())
            .map(|t| t.join("containerd-bench.test"))
            .filter(|p| p.exists())
    });
    let mut fx = Fixture::new(&args.work, data, base, bin)?;
    fx.containerd_bench = containerd_bench;
    let chosen: Vec<&(&str, ScenarioFn)> = SCENARIOS
        .iter()
        .filter(|(id, _)| match args.only.is_empty() {
            // containerd's benchsuite takes 2 to 3 minutes in the VM even
            // at one repetition (its 16 layers are fixed): a quick run
            // leaves it out unless it is named.
            true => !(args.quick && *id == QUICK_SKIPS),
            false => args.only.iter().any(|o| o == id),
        })
        .collect();
    let pb = std::io::stderr().is_terminal().then(|| {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} samples  {msg}")
                .expect("a valid template"),
        );
        pb
    });
    let progress = Progress {
        bar: pb,
        start: Instant::now(),
        samples: Default::default(),
        last_line: std::cell::Cell::new(Instant::now()),
    };
    let block = fx.block.0;
    let environment = || {
        Environment {
                kernel: kernel(),
                cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
                memory_bytes: memory_bytes(),
                emulated: args.emulated,
                quick: plan.quick,
                started_unix: started,
                duration_secs: clock.elapsed().as_secs_f64(),
                thinlayer_version: env!("CARGO_PKG_VERSION").into(),
                command: std::env::args().collect::<Vec<_>>().join(" "),
                notes: vec![format!(
                    "Both drivers work in {} on {} (the pool's sparse files and the overlay store on the same filesystem).",
                    args.work.display(),
                    filesystem_of(&args.work)
                )],
                pool_block_bytes: Some(block),
            }
    };
    let mut scenarios = vec![];
    for (id, run) in chosen {
        let began = Instant::now();
        if progress.bar.is_none() {
            eprintln!("thinlayer-bench: {id}: started");
        }
        let mut s = run(&mut fx, plan, &progress).with_context(|| format!("scenario {id}"))?;
        let env = environment();
        for sc in &mut s {
            sc.findings = findings::findings(sc, &env);
        }
        if progress.bar.is_none() {
            eprintln!(
                "thinlayer-bench: {id}: done in {} s",
                began.elapsed().as_secs()
            );
        }
        scenarios.extend(s);
        // What is measured so far, in case the run dies before the end.
        Run {
            environment: environment(),
            scenarios: scenarios.clone(),
        }
        .write(args.out.join("samples.json"))?;
    }
    if let Some(pb) = &progress.bar {
        pb.finish_and_clear();
    }
    let run = Run {
        environment: environment(),
        scenarios,
    };
    write_outputs(&run, &args.out)?;
    // The pool's files are large sparse files: remove them with the pool.
    thinlayer::system::destroy_pool(&fx.root, true).context("removing the benchmark's pool")?;
    std::fs::remove_dir_all(&args.work)
        .with_context(|| format!("removing {}", args.work.display()))?;
    println!("wrote {}", args.out.join("report.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The committed run (docs/bench) is what `--render` makes of its own
    /// samples: its report, plots and samples come back byte for byte, so
    /// nothing in them was edited by hand or left behind by a renderer
    /// that has changed since.
    #[test]
    fn plain_the_committed_run_renders_back_to_itself() {
        let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/bench");
        let copy = tempfile::tempdir().unwrap();
        let path = committed.join("samples.json");
        let mut run = crate::samples::Run::read(&path).unwrap();
        for sc in &mut run.scenarios {
            sc.findings = crate::findings::findings(sc, &run.environment);
        }
        super::write_outputs(&run, copy.path()).unwrap();
        let mut compared = 0;
        for entry in std::fs::read_dir(copy.path()).unwrap() {
            let made = entry.unwrap().path();
            let name = made.file_name().unwrap().to_owned();
            let kept = std::fs::read(committed.join(&name))
                .unwrap_or_else(|e| panic!("docs/bench has no {name:?} the run makes: {e}"));
            assert!(
                std::fs::read(&made).unwrap() == kept,
                "docs/bench/{} is not what --render makes of docs/bench/samples.json",
                name.to_string_lossy()
            );
            compared += 1;
        }
        assert!(compared >= 6, "only {compared} files rendered");
    }
}
