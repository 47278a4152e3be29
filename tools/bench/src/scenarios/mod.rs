//! The scenarios. Each measures both drivers on the same work, alternating
//! which goes first in every repetition, and returns its raw samples.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use devicemapper::DM;
use thinlayer::driver::overlay::OverlayOptions;
use thinlayer::layer::LayerId;
use thinlayer::phase::timing::{self, PhaseLine};

use crate::fixture::{drop_caches, ms, run, timed, Changeset, Drv, Fixture};
use crate::peers::{DmFloor, Lvm};

pub mod containerd_bench;
mod data;
use crate::samples::{PlotSpec, Ratio, Scenario, Series, SeriesRef, Target, TargetOp, Unit};
pub use containerd_bench::containerd_bench;
pub use data::{new_data, page_cache_sharing, space};

/// How much work: `--quick` (a smoke test) or a full run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub quick: bool,
    pub reps: usize,
}

/// Reports progress: one tick per sample taken.
pub trait Tick {
    fn tick(&self, what: &str);
}

/// Samples keyed by (driver, variant), in first-seen order.
#[derive(Default)]
struct Collect {
    series: Vec<Series>,
}

impl Collect {
    /// Adds a sample in the scenario's unit.
    fn add(&mut self, driver: &str, variant: &str, x: Option<f64>, v: f64) {
        self.add_in(None, driver, variant, x, v);
    }

    /// Adds a sample in `unit` (`None`: the scenario's).
    fn add_in(&mut self, unit: Option<Unit>, driver: &str, variant: &str, x: Option<f64>, v: f64) {
        match self
            .series
            .iter_mut()
            .find(|s| s.driver == driver && s.variant == variant)
        {
            Some(s) => s.samples.push(v),
            None => self.series.push(Series {
                driver: driver.into(),
                variant: variant.into(),
                x,
                samples: vec![v],
                unit,
            }),
        }
    }
}

fn sref(driver: &str, variant: &str) -> SeriesRef {
    SeriesRef {
        driver: driver.into(),
        variant: variant.into(),
    }
}

fn le(value: f64, text: &str) -> Option<Target> {
    Some(Target {
        op: TargetOp::Le,
        value,
        text: text.into(),
    })
}

fn ge(value: f64, text: &str) -> Option<Target> {
    Some(Target {
        op: TargetOp::Ge,
        value,
        text: text.into(),
    })
}

pub(crate) fn size_label(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}

// ---- 1. provisioning ---------------------------------------------------

/// The floor's first thin id in the burst of container creates (above the
/// per-repetition ones).
const BURST_K: u32 = 1000;
/// The provisioning scenario's series of one `thinlayer image ls` process:
/// what opening a driver's store costs a process.
pub const STORE_OPEN: &str = "one process opening the store";
/// How many `image ls` processes, one after another, make one sample of
/// [`STORE_OPEN`].
const STORE_OPENS: usize = 8;
/// The suffix of the provisioning scenario's variants whose thinlayer
/// processes run with their addresses fixed (`setarch -R`: no address
/// space randomization, for those processes only).
pub const FIXED: &str = ", addresses fixed";

/// The start of the provisioning scenario's variants that time one phase
/// of a layer's making and mounting ([`crate::phases`]), over all depths.
pub const PHASE: &str = "phase: ";

/// The variant of phase `phase` ([`PHASE`]).
pub fn phase_variant(phase: &str) -> String {
    format!("{PHASE}{phase}")
}

/// What a burst's row of each create's mean ends with: the time from the
/// burst's start to the create's exit.
pub const PER_CREATE: &str = ", per create";
/// The row of the time a create's command ran (from its parsed arguments
/// to its result, as it timed itself).
pub const IN_COMMAND: &str = ", per create: in the command";
/// The row prefix of a create's phase (each create's own time in it).
pub const CREATE_PHASE: &str = ", per create: phase: ";

/// Records a burst's creates, each timed by itself (`lines`, one per
/// create) and by when it ended (`ends`, milliseconds from the burst's
/// start): their means, from the burst's start to each one's exit, of
/// the command's own time (what is outside it is the process's start,
/// loading and exit, and its waits for a CPU before), and of each phase.
fn record_burst_phases(
    c: &mut Collect,
    driver: &str,
    variant: &str,
    ends: &[f64],
    lines: &[PhaseLine],
) -> Result<()> {
    anyhow::ensure!(
        lines.len() == ends.len() && lines.iter().all(|l| l.ok),
        "the burst's {} creates left {} phase lines, {} of them failed",
        ends.len(),
        lines.len(),
        lines.iter().filter(|l| !l.ok).count()
    );
    let n = ends.len() as f64;
    c.add(
        driver,
        &format!("{variant}{PER_CREATE}"),
        None,
        ends.iter().sum::<f64>() / n,
    );
    let in_command = lines.iter().map(|l| l.ms).sum::<f64>() / n;
    c.add(driver, &format!("{variant}{IN_COMMAND}"), None, in_command);
    let mut phases: BTreeMap<&str, f64> = BTreeMap::new();
    for l in lines {
        for (name, ms) in &l.phases {
            *phases.entry(name.as_str()).or_default() += ms / n;
        }
    }
    for (name, ms) in phases {
        c.add(driver, &format!("{variant}{CREATE_PHASE}{name}"), None, ms);
    }
    Ok(())
}

/// The name of `variant` with the processes' addresses fixed when `fixed`.
pub fn fixed_variant(variant: &str, fixed: bool) -> String {
    if fixed {
        format!("{variant}{FIXED}")
    } else {
        variant.to_string()
    }
}

/// A `thinlayer` command on the fixture's root; under `setarch -R` when
/// `fixed`.
fn thinlayer(f: &Fixture, fixed: bool) -> Command {
    let mut c = if fixed {
        let mut c = Command::new("setarch");
        c.arg("-R").arg(&f.bin);
        c
    } else {
        Command::new(&f.bin)
    };
    c.arg("--root").arg(f.root.path());
    c
}

pub fn provision(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let depths: &[usize] = if plan.quick { &[1, 16] } else { &[1, 16, 64] };
    let bottom = f.scratch("bottom.tar");
    Changeset::new().file("base/file", 4096, 1).write(&bottom)?;
    let mut tops = vec![];
    for &d in depths {
        tops.push((
            d,
            f.chain(Drv::Thin, &bottom, d)?,
            f.chain(Drv::Overlay, &bottom, d)?,
        ));
    }
    let floor = DmFloor::new(f)?;
    let dm = DM::new().context("opening /dev/mapper/control")?;
    let mnt = f.scratch("floor-mnt");
    fs::create_dir_all(&mnt)?;
    // LVM's chains: base, then snapshots of snapshots.
    let lvm = match Lvm::available() {
        true => {
            let lvm = Lvm::new(&f.scratch("lvm"), f.base)?;
            let tops = depths
                .iter()
                .map(|&d| lvm.chain(d))
                .collect::<Result<Vec<_>>>()?;
            Some((lvm, tops))
        }
        false => None,
    };
    let mut c = Collect::default();
    // One layer takes tens of milliseconds against a floor of as many, and
    // a single jbd2 commit or a timer tick moves one sample by as much as
    // the gap measured: three times the repetitions (a few seconds more)
    // for steadier medians.
    let single_reps = if plan.quick { plan.reps } else { 3 * plan.reps };
    for rep in 0..single_reps {
        for (d, thin_top, ov_top) in &tops {
            let variant = format!("depth {d}");
            for drv in Drv::interleaved(rep) {
                let top = if drv == Drv::Thin { thin_top } else { ov_top };
                let mut store = f.store(drv)?;
                let (t, id, phases) = crate::phases::timed_phases(|| {
                    Ok(store.create_and_mount_layer(Some(top.as_str()), None)?.0)
                })?;
                store.unmount_layer(id.as_str())?;
                store.remove_layer(id.as_str())?;
                c.add(drv.name(), &variant, Some(*d as f64), t);
                for (phase, ms) in phases {
                    c.add(drv.name(), &phase_variant(&phase), None, ms);
                }
            }
            let origin = f.thin_of(thin_top)?;
            let (t, ()) = timed(|| floor.provision(rep as u32, origin, &mnt))?;
            floor.undo(rep as u32, &mnt)?;
            c.add("dmsetup", &variant, Some(*d as f64), t);
            let (t, ()) = timed(|| floor.provision_ioctl(&dm, rep as u32, origin, &mnt))?;
            floor.undo(rep as u32, &mnt)?;
            c.add("dm-ioctl", &variant, Some(*d as f64), t);
            if let Some((lvm, lvm_tops)) = &lvm {
                let at = depths
                    .iter()
                    .position(|x| x == d)
                    .expect("a depth of the list");
                let name = format!("p{rep}");
                let (t, ()) = timed(|| lvm.provision(&lvm_tops[at], &name, &mnt))?;
                lvm.undo(&name, &mnt)?;
                c.add("lvm", &variant, Some(*d as f64), t);
            }
            tick.tick("provisioning");
        }
    }
    if let Some((lvm, _)) = lvm {
        lvm.close()?;
    }
    // 16 containers at once, each its own `thinlayer container create`.
    let n = if plan.quick { 4 } else { 16 };
    let variant = format!("{n} containers at once");
    for rep in 0..plan.reps {
        // Each burst twice: as run, and with the processes' addresses
        // fixed, which lets an emulator reuse the code it translated for
        // the processes before (the report's finding).
        for fixed in [false, true] {
            let variant = fixed_variant(&variant, fixed);
            for drv in Drv::interleaved(rep) {
                let top = &tops[0];
                let layer = if drv == Drv::Thin { &top.1 } else { &top.2 };
                // Each create times its own phases into this file.
                let lines = f.scratch(&format!("burst-phases-{}", drv.name()));
                if lines.exists() {
                    fs::remove_file(&lines)?;
                }
                let cpu_before = machine_cpu()?;
                let start = Instant::now();
                let kids: Vec<_> = (0..n)
                    .map(|i| {
                        thinlayer(f, fixed)
                            .env(timing::ENV, &lines)
                            .args(["--driver", drv.name(), "--lock-timeout", "600"])
                            .args([
                                "container",
                                "create",
                                "--name",
                                &format!("burst-{i}"),
                                "--layer",
                                layer.as_str(),
                            ])
                            .stdout(Stdio::null())
                            .stderr(Stdio::piped())
                            .spawn()
                    })
                    .collect::<std::io::Result<_>>()?;
                // Each create's end, from the burst's start: one thread
                // waits for each.
                let ends: Vec<Result<f64>> = std::thread::scope(|s| {
                    let waits: Vec<_> = kids
                        .into_iter()
                        .map(|k| {
                            s.spawn(move || {
                                let o = k.wait_with_output()?;
                                anyhow::ensure!(
                                    o.status.success(),
                                    "container create: {}",
                                    String::from_utf8_lossy(&o.stderr)
                                );
                                Ok(ms(start))
                            })
                        })
                        .collect();
                    waits
                        .into_iter()
                        .map(|w| {
                            w.join()
                                .unwrap_or_else(|_| Err(anyhow::anyhow!("a wait panicked")))
                        })
                        .collect()
                });
                c.add(drv.name(), &variant, None, ms(start));
                machine_cpu()?.record_since(&cpu_before, &mut c, drv.name(), &variant);
                let ends = ends.into_iter().collect::<Result<Vec<f64>>>()?;
                let lines = PhaseLine::read_all(&lines).context("reading the burst's phases")?;
                record_burst_phases(&mut c, drv.name(), &variant, &ends, &lines)?;
                let mut cs = f.containers()?;
                for i in 0..n {
                    cs.remove(&format!("burst-{i}"), true, true)?;
                }
                tick.tick("provisioning");
            }
        }
        // The kernel's part of the same burst: n threads, each the dm work
        // of one thin container create, a snapshot of the init layer that
        // thin's creates share (made by the first of them).
        let init = f
            .store(Drv::Thin)?
            .children(&tops[0].1)
            .into_iter()
            .find(|l| l.init)
            .map(|l| l.id.clone())
            .context("the thin burst left no init layer over its layer")?;
        let origin = f.thin_of(&init)?;
        let cpu_before = machine_cpu()?;
        let start = Instant::now();
        let made: Vec<Result<()>> = std::thread::scope(|s| {
            let kids: Vec<_> = (0..n as u32)
                .map(|i| {
                    let floor = &floor;
                    s.spawn(move || floor.container_create(BURST_K + i, origin))
                })
                .collect();
            kids.into_iter()
                .map(|k| {
                    k.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a floor thread panicked")))
                })
                .collect()
        });
        let t = ms(start);
        let cpu_after = machine_cpu()?;
        let mut deleted = vec![];
        for (i, m) in made.iter().enumerate() {
            if m.is_ok() {
                deleted.push(floor.delete(&dm, BURST_K + i as u32));
            }
        }
        made.into_iter().collect::<Result<Vec<()>>>()?;
        deleted.into_iter().collect::<Result<Vec<()>>>()?;
        c.add("dm-ioctl", &variant, None, t);
        cpu_after.record_since(&cpu_before, &mut c, "dm-ioctl", &variant);
        // What a process pays to open a driver's store, the first thing
        // every create in the burst does: `image ls`, one process after
        // another (for thin, the pool's adoption and the driver's open;
        // the listing itself reads records only, where `layer ls` would
        // also ask the pool's metadata for each layer's space).
        for fixed in [false, true] {
            let variant = fixed_variant(STORE_OPEN, fixed);
            for drv in Drv::interleaved(rep) {
                let start = Instant::now();
                for _ in 0..STORE_OPENS {
                    let o = thinlayer(f, fixed)
                        .args(["--driver", drv.name(), "image", "ls", "--json"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .output()?;
                    anyhow::ensure!(
                        o.status.success(),
                        "image ls: {}",
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
                c.add(drv.name(), &variant, None, ms(start) / STORE_OPENS as f64);
            }
        }
    }
    // What one durable record write (write, fsync, rename, fsync of the
    // directory) costs on this filesystem: the unit of thinlayer's
    // crash-safety protocol.
    let pool_json = f.root.path().join("pool/pool.json");
    let record: serde_json::Value =
        thinpool::record::read(&pool_json)?.context("the pool has no record")?;
    let scratch = f.scratch("record");
    fs::create_dir_all(&scratch)?;
    for _ in 0..plan.reps {
        let (t, ()) = timed(|| Ok(thinpool::record::write(&scratch.join("r.json"), &record)?))?;
        c.add("record write", "one durable record", None, t);
    }
    // And one entry of the pool's change log (a sector and an fdatasync),
    // where a change to the set of thin devices is recorded as pending: a
    // snapshot's entry, in a log of its own in the same filesystem.
    let (mut pool_rec, _) = thinpool::pool::log::read(&f.root.path().join("pool"))?
        .context("the pool has no record")?;
    let origin = *pool_rec
        .thins
        .keys()
        .next()
        .context("the pool has no thin device")?;
    pool_rec.pending = Some(thinpool::recovery::PendingOp::Snapshot {
        id: pool_rec.next_thin_id,
        origin,
        size: pool_rec.thins[&origin].size,
        tag: format!("layer:{}", "0".repeat(32)),
    });
    thinpool::pool::log::make(&scratch)?;
    for i in 0..plan.reps {
        let entry = thinpool::pool::log::LogEntry::of(&pool_rec, i % thinpool::pool::log::SLOTS);
        let (t, appended) = timed(|| {
            Ok(thinpool::pool::log::append(
                &scratch,
                &entry,
                thinpool::pool::log::Sync::Data,
            )?)
        })?;
        anyhow::ensure!(appended, "the scratch change log took no entry");
        c.add("record write", "one log entry", None, t);
    }
    let deep = format!("depth {}", depths.last().unwrap());
    let mut ratios = vec![
        // The in-process ioctls are the floor; the dmsetup sequence (three
        // processes) is a reference, not a floor.
        Ratio {
            name: "thin provisioning / dm ioctl floor, depth 1".into(),
            numerator: sref("thin", "depth 1"),
            denominator: sref("dm-ioctl", "depth 1"),
            target: le(1.5, "≤ 1.5"),
            headline: true,
        },
        Ratio {
            name: format!("thin provisioning / dm ioctl floor, {deep}"),
            numerator: sref("thin", &deep),
            denominator: sref("dm-ioctl", &deep),
            target: le(1.5, "≤ 1.5"),
            headline: true,
        },
        Ratio {
            name: "thin provisioning / dmsetup sequence, depth 1".into(),
            numerator: sref("thin", "depth 1"),
            denominator: sref("dmsetup", "depth 1"),
            target: None,
            headline: false,
        },
        Ratio {
            name: "thin provisioning / LVM thin snapshot, depth 1".into(),
            numerator: sref("thin", "depth 1"),
            denominator: sref("lvm", "depth 1"),
            target: None,
            headline: false,
        },
        Ratio {
            name: format!("thin provisioning, {deep} / depth 1"),
            numerator: sref("thin", &deep),
            denominator: sref("thin", "depth 1"),
            target: le(1.1, "≤ 1.1 (flat with depth)"),
            headline: true,
        },
        Ratio {
            name: "thin / overlay provisioning, depth 1".into(),
            numerator: sref("thin", "depth 1"),
            denominator: sref("overlay", "depth 1"),
            target: None,
            headline: false,
        },
        Ratio {
            name: format!("dm ioctl floor / overlay, {variant}"),
            numerator: sref("dm-ioctl", &variant),
            denominator: sref("overlay", &variant),
            target: None,
            headline: false,
        },
        Ratio {
            name: format!("thin / overlay, {variant}"),
            numerator: sref("thin", &variant),
            denominator: sref("overlay", &variant),
            target: le(1.0, "≤ 1.0"),
            headline: true,
        },
        Ratio {
            name: format!("thin / overlay, {}", fixed_variant(&variant, true)),
            numerator: sref("thin", &fixed_variant(&variant, true)),
            denominator: sref("overlay", &fixed_variant(&variant, true)),
            target: None,
            headline: false,
        },
    ];
    ratios.push(Ratio {
        name: format!("overlay provisioning, {deep} / depth 1"),
        numerator: sref("overlay", &deep),
        denominator: sref("overlay", "depth 1"),
        target: None,
        headline: false,
    });
    Ok(Scenario {
        id: "provision".into(),
        number: 1,
        title: "Provisioning a layer".into(),
        description: format!(
            "One new layer over a chain of the given depth, made and mounted through thinlayer's library \
             (`Store::create_and_mount_layer`, as the snapshotter prepares a snapshot): \
             for thin a journaled snapshot (an entry in the pool's change log, `create_snap`, the layer's record), activation \
             (on a thread of its own, while the layer's record is made durable) and an ext4 mount; for overlay a directory, its link and an overlayfs mount of the chain. \
             The floors are the same thin work done by hand: the dmsetup sequence (`dmsetup message \
             create_snap`, `dmsetup create`, `mount`, three processes) and the same ioctls made in one \
             process (`dm-ioctl`: message, create, load, resume, mount), which is the true floor. The peer is \
             LVM (`lvm`): `lvcreate -s` of a thin LV in a volume group of its own (lvm2's tools, udev off, \
             one process per call, chains of snapshots of snapshots) and the same mount. Then {n} `thinlayer container create` processes started at once (wall time until all \
             finished), each a writable layer over the init layer that containers over the same layer \
             share (made by the first create of the first burst); its floor (`dm-ioctl`) is {n} threads \
             at once, each the kernel's part of one thin container create: `create_snap` of that init \
             layer, by ioctl. Each create of a burst times its own phases (`--phases`, the same spans, \
             and the containers' lock, open and record): the `{PER_CREATE}` rows are per burst the \
             means over its creates, from the burst's start to each one's exit, of the command's own \
             time (`{IN_COMMAND}`) and of each phase (`{CREATE_PHASE}…`). Last, what a process pays to open a driver's store, the first thing each \
             create of the burst does: `thinlayer image ls` run {STORE_OPENS} times, one process after \
             another, the time per process (for thin that includes adopting the pool). The bursts and \
             the store opens run twice: as deployed, and (`{FIXED}`) with each thinlayer process's \
             addresses fixed (`setarch -R`, no address space randomization for those processes only), \
             so that an emulator that looks up the code it translated by address can reuse, in each \
             process, what it translated for the ones before. \
             {single_reps} repetitions of one layer, {} of the bursts and of the store opens, drivers \
             alternating. Each thin and overlay layer is also timed phase by phase in the same runs \
             (the `{PHASE}` rows, over all depths): each phase is a span the library marks around its \
             work (the store's lock, journal, driver call, layer record and transaction end; the pool's \
             lock, record read, kernel checks, change log, dm message and activation; the mount check \
             and the mount), timed by its own time (less the phases inside it), so that the phases \
             and `{}` add up to the layer's time (which holds the spans' own cost too); the phases of \
             the thread that activates a thin layer's device meanwhile are apart (`{}`).",
            plan.reps,
            crate::phases::REST,
            crate::phases::BACKGROUND.trim(),
        ),
        unit: Unit::Millis,
        series: c.series,
        ratios,
        plot: Some(PlotSpec {
            file: "provision.svg".into(),
            title: "Provisioning time against chain depth".into(),
            x_label: "chain depth (layers)".into(),
            y_label: "time per layer".into(),
            log_x: true,
            log_y: false,
        }),
        findings: vec![],
    })
}

// ---- 2. first write into an inherited file ------------------------------

pub fn first_write(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let sizes: &[u64] = if plan.quick {
        &[4 << 10, 1 << 20, 16 << 20]
    } else {
        &[4 << 10, 1 << 20, 64 << 20, 1 << 30]
    };
    let mut cs = Changeset::new();
    for (i, s) in sizes.iter().enumerate() {
        cs = cs.file(&format!("data/f{s}"), *s, 100 + i as u64);
    }
    let base = f.base_layers(&cs)?;
    let mut c = Collect::default();
    let block = [0x5au8; 4096];
    for rep in 0..plan.reps {
        for drv in Drv::interleaved(rep) {
            let layer = base.of(drv);
            let (name, rootfs) = f.container(drv, layer, OverlayOptions::default())?;
            drop_caches()?;
            for s in sizes {
                let p = rootfs.join(format!("data/f{s}"));
                let mid = s / 2 / 4096 * 4096;
                let (t1, file) = timed(|| {
                    let file = OpenOptions::new().write(true).open(&p)?;
                    file.write_all_at(&block, mid)?;
                    file.sync_data()?;
                    Ok(file)
                })?;
                let (t2, ()) = timed(|| {
                    file.write_all_at(&block, mid + 4096 * 3)?;
                    file.sync_data()?;
                    Ok(())
                })?;
                c.add(
                    drv.name(),
                    &format!("first write, {} file", size_label(*s)),
                    Some(*s as f64),
                    t1,
                );
                c.add(
                    drv.name(),
                    &format!("second write, {} file", size_label(*s)),
                    None,
                    t2,
                );
            }
            f.remove_container(&name)?;
            tick.tick("first write");
        }
    }
    let big = format!("first write, {} file", size_label(*sizes.last().unwrap()));
    Ok(Scenario {
        id: "first-write".into(),
        number: 2,
        title: "First write into an inherited file".into(),
        description: format!(
            "A container over a layer holding fully written files (noise, no holes) of each size; with \
             the page cache dropped, one 4 KiB write in the middle of each file then `fdatasync`, and a \
             second 4 KiB write into the same file. thin copies one pool block ({}); overlay copies the \
             whole file up first. {} repetitions, a fresh container each.",
            size_label(f.block.0),
            plan.reps
        ),
        unit: Unit::Millis,
        ratios: vec![Ratio {
            name: format!("thin / overlay, {big}"),
            numerator: sref("thin", &big),
            denominator: sref("overlay", &big),
            target: if plan.quick { None } else { le(0.01, "≤ 1/100 (1 GiB file)") },
            headline: true,
        }],
        series: c.series,
        plot: Some(PlotSpec {
            file: "first-write.svg".into(),
            title: "First 4 KiB write + fdatasync against file size".into(),
            x_label: "size of the inherited file".into(),
            y_label: "time".into(),
            log_x: true,
            log_y: true,
        }),
        findings: vec![],
    })
}

// ---- 3. metadata-only change -------------------------------------------

pub fn metadata(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let n = if plan.quick { 200 } else { 1000 };
    let mut cs = Changeset::new();
    for i in 0..n {
        cs = cs.file(&format!("many/{i:04}"), 4096, i as u64);
    }
    let base = f.base_layers(&cs)?;
    let metacopy = OverlayOptions {
        metacopy: true,
        ..OverlayOptions::default()
    };
    let mut c = Collect::default();
    let variant = format!("chmod + chown of {n} files");
    for rep in 0..plan.reps {
        let mut runs = vec![];
        for d in Drv::interleaved(rep) {
            runs.push((d, OverlayOptions::default(), d.name()));
            if d == Drv::Overlay {
                runs.push((d, metacopy.clone(), "overlay+metacopy"));
            }
        }
        for (drv, opts, label) in runs {
            let layer = base.of(drv);
            let (name, rootfs) = f.container(drv, layer, opts)?;
            drop_caches()?;
            let (t, ()) = timed(|| {
                for i in 0..n {
                    let p = rootfs.join(format!("many/{i:04}"));
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
                    std::os::unix::fs::chown(&p, Some(1000), Some(1000))?;
                }
                let d = fs::File::open(rootfs.join("many"))?;
                nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d))?;
                Ok(())
            })?;
            c.add(label, &variant, None, t);
            f.remove_container(&name)?;
            tick.tick("metadata");
        }
    }
    Ok(Scenario {
        id: "metadata".into(),
        number: 3,
        title: "Metadata-only change".into(),
        description: format!(
            "chmod then chown of {n} inherited 4 KiB files in a fresh container, then `syncfs`, page cache \
             dropped first. overlay copies each file up (data too) unless mounted with `metacopy=on`; thin \
             changes inodes in place, copying the pool blocks that hold them. {} repetitions.",
            plan.reps
        ),
        unit: Unit::Millis,
        ratios: vec![
            Ratio {
                name: "thin / overlay".into(),
                numerator: sref("thin", &variant),
                denominator: sref("overlay", &variant),
                target: None,
                headline: true,
            },
            Ratio {
                name: "thin / overlay+metacopy".into(),
                numerator: sref("thin", &variant),
                denominator: sref("overlay+metacopy", &variant),
                target: None,
                headline: false,
            },
        ],
        series: c.series,
        plot: None,
        findings: vec![],
    })
}

// ---- 5. lookup against depth -------------------------------------------

pub fn lookup(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let depths: &[usize] = if plan.quick {
        &[1, 16]
    } else {
        &[1, 16, 64, 128]
    };
    let n = if plan.quick { 200 } else { 1000 };
    let bottom = f.scratch("lookup.tar");
    let mut cs = Changeset::new();
    for i in 0..n {
        cs = cs.file(&format!("bottom/{i:04}"), 64, i as u64);
    }
    cs.write(&bottom)?;
    let mut c = Collect::default();
    for &d in depths {
        let tops = [
            f.chain(Drv::Thin, &bottom, d)?,
            f.chain(Drv::Overlay, &bottom, d)?,
        ];
        for rep in 0..plan.reps {
            for drv in Drv::interleaved(rep) {
                let top = &tops[(drv == Drv::Overlay) as usize];
                let mut store = f.store(drv)?;
                let mp = store.mount_layer(top.as_str())?;
                drop_caches()?;
                let (t, ()) = timed(|| {
                    for i in 0..n {
                        let p = mp.join(format!("bottom/{i:04}"));
                        fs::symlink_metadata(&p)?;
                        drop(fs::File::open(&p)?);
                    }
                    Ok(())
                })?;
                store.unmount_layer(top.as_str())?;
                c.add(drv.name(), &format!("depth {d}"), Some(d as f64), t);
                tick.tick("lookup");
            }
        }
    }
    let deep = format!("depth {}", depths.last().unwrap());
    Ok(Scenario {
        id: "lookup".into(),
        number: 5,
        title: "Lookup against depth".into(),
        description: format!(
            "stat and open/close of {n} files of the bottom layer through a read-only mount of the top of a \
             chain, page cache dropped first. thin reads one filesystem whatever the depth; overlay looks \
             each name up through every lower directory above the bottom one. {} repetitions.",
            plan.reps
        ),
        unit: Unit::Millis,
        ratios: vec![
            Ratio {
                name: format!("overlay, {deep} / depth 1"),
                numerator: sref("overlay", &deep),
                denominator: sref("overlay", "depth 1"),
                target: None,
                headline: false,
            },
            Ratio {
                name: format!("thin / overlay, {deep}"),
                numerator: sref("thin", &deep),
                denominator: sref("overlay", &deep),
                target: None,
                headline: true,
            },
        ],
        series: c.series,
        plot: Some(PlotSpec {
            file: "lookup.svg".into(),
            title: "Cold lookup of bottom-layer files against depth".into(),
            x_label: "chain depth (layers)".into(),
            y_label: "time".into(),
            log_x: true,
            log_y: false,
        }),
        findings: vec![],
    })
}

// ---- 8. containerd's snapshotter benchmark, replicated ---------------------

/// The replica's phases, each summed over the layers of a repetition:
/// where its total goes.
pub const REPLICA_PHASES: [&str; 5] = [
    "prepare: create and mount",
    "file operations",
    "unmount",
    "commit",
    "container removal",
];

pub fn containerd(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let layers = if plan.quick { 4 } else { 16 };
    // A full repetition is 16 layers of 10 MiB each: five give the spread.
    let reps = plan.reps.min(5);
    let mb = vec![0xa5u8; 1 << 20];
    let empty = f.scratch("empty.tar");
    Changeset::new().file("seed", 1, 0).write(&empty)?;
    let mut c = Collect::default();
    for rep in 0..reps {
        for drv in Drv::interleaved(rep) {
            let mut parent: LayerId = f.layer(drv, None, &empty)?;
            let mut made = vec![parent.clone()];
            let start = Instant::now();
            let mut phases = [0.0f64; REPLICA_PHASES.len()];
            for i in 0..layers {
                let mut lap = Instant::now();
                let mut phase = |n: usize| {
                    phases[n] += ms(lap);
                    lap = Instant::now();
                };
                let (name, rootfs) = f.container(drv, &parent, OverlayOptions::default())?;
                phase(0);
                for k in 0..10 {
                    fs::write(rootfs.join(format!("l{i}-{k}")), &mb)?;
                }
                if i >= 2 {
                    for k in 0..10 {
                        fs::remove_file(rootfs.join(format!("l{}-{k}", i - 2)))?;
                    }
                }
                if i >= 1 {
                    for k in 0..10 {
                        let file = OpenOptions::new()
                            .write(true)
                            .open(rootfs.join(format!("l{}-{k}", i - 1)))?;
                        file.write_all_at(b"abcd", 512 << 10)?;
                    }
                }
                phase(1);
                let mut cs = f.containers()?;
                cs.unmount(&name)?;
                phase(2);
                let layer = cs.commit(&name, None)?;
                phase(3);
                cs.remove(&name, true, true)?;
                phase(4);
                made.push(layer.clone());
                parent = layer;
            }
            c.add(drv.name(), &format!("{layers} layers"), None, ms(start));
            for (what, t) in REPLICA_PHASES.iter().zip(phases) {
                c.add(drv.name(), what, None, t);
            }
            let mut store = f.store(drv)?;
            for l in made.iter().rev() {
                store.remove_layer(l.as_str())?;
            }
            tick.tick("containerd replica");
        }
    }
    let v = format!("{layers} layers");
    Ok(Scenario {
        id: "containerd".into(),
        number: 8,
        title: "containerd's snapshotter benchmark, replicated".into(),
        description: format!(
            "{layers} layers in a row, each: a container over the previous layer (prepare), mounted; ten \
             1 MiB files created, the ten files of two layers back removed, 4 bytes written in the middle \
             of each of the previous layer's ten files; unmounted and committed as the next layer; the \
             container removed. Total time, and each phase summed over the layers. containerd's own \
             devmapper snapshotter published 2.68× its overlay snapshotter on this benchmark. {reps} \
             repetitions."
        ),
        unit: Unit::Millis,
        ratios: std::iter::once(Ratio {
            name: "thin total / overlay total".into(),
            numerator: sref("thin", &v),
            denominator: sref("overlay", &v),
            target: le(1.5, "≤ 1.5 (containerd devmapper: 2.68)"),
            headline: true,
        })
        .chain(REPLICA_PHASES.iter().map(|p| Ratio {
            name: format!("thin / overlay, {p}"),
            numerator: sref("thin", p),
            denominator: sref("overlay", p),
            target: None,
            headline: false,
        }))
        .collect(),
        series: c.series,
        plot: None,
        findings: vec![],
    })
}

// ---- 9. image import -----------------------------------------------------

/// The import's checking, timed one piece at a time (one thread each).
pub const VERIFY_BLOB: &str = "sha256 of the blobs";
/// The image as umoci packs it (gzip layers), and as skopeo copies it
/// with its layers uncompressed.
pub const IMPORT_GZIP: &str = "3 layers";
pub const IMPORT_PLAIN: &str = "3 uncompressed layers";
/// The series (driver, variant) holding the image's file bytes.
pub const IMAGE_BYTES: (&str, &str) = ("image", "bytes of files");
pub const VERIFY_INFLATE: &str = "gunzip";
pub const VERIFY_TAR: &str = "sha256 of the tars";
/// GNU tar's extraction into ext4 (gzip's inflating included) per second
/// of CPU time its processes spent (user and system).
pub const TAR_CPU: &str = "gnu-tar (ext4), per CPU second";

/// CPU seconds (user and system) of the waited-for children so far.
fn children_cpu() -> Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

pub fn import(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let per_layer: u64 = if plan.quick { 2 << 20 } else { 64 << 20 };
    // Three layers of files from 4 KiB to 1 MiB, as umoci would pack them.
    let layout = f.scratch("oci");
    let l = layout.to_str().unwrap().to_string();
    let img = format!("{l}:bench");
    run(Command::new("umoci").args(["init", "--layout", &l]))?;
    run(Command::new("umoci").args(["new", "--image", &img]))?;
    let mut total = 0u64;
    for layer in 0..3u64 {
        let bundle = f.scratch("bundle");
        run(Command::new("umoci")
            .args(["unpack", "--image", &img])
            .arg(&bundle))?;
        let dir = bundle.join("rootfs").join(format!("l{layer}"));
        fs::create_dir_all(&dir)?;
        let mut written = 0;
        let mut i = 0u64;
        while written < per_layer {
            let size = 4096u64 << (i % 9);
            let mut data = vec![0u8; size as usize];
            std::io::Read::read_exact(
                &mut crate::fixture::Noise::new(layer * 1000 + i),
                &mut data,
            )?;
            fs::write(dir.join(format!("f{i}")), &data)?;
            written += size;
            i += 1;
        }
        total += written;
        run(Command::new("umoci")
            .args(["repack", "--image", &img])
            .arg(&bundle))?;
        fs::remove_dir_all(&bundle)?;
    }
    let blobs: Vec<std::path::PathBuf> = layer_blobs(&layout)?;
    // The same image with its layers stored uncompressed, as skopeo copies
    // it (its `dir:` transport decompresses; its OCI one keeps them so):
    // each blob's digest is its diff_id, and thinlayer hashes it once.
    let plain_layout = f.scratch("oci-plain");
    let skopeo_dir = f.scratch("skopeo-dir");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-decompress"])
        .arg(format!("oci:{img}"))
        .arg(format!("dir:{}", skopeo_dir.display())))?;
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-oci-accept-uncompressed-layers"])
        .arg(format!("dir:{}", skopeo_dir.display()))
        .arg(format!("oci:{}:bench", plain_layout.display())))?;
    fs::remove_dir_all(&skopeo_dir)?;
    let plain_blobs = layer_blobs(&plain_layout)?;
    // GNU tar's targets: ext4 on a loop device (thin's kind of filesystem)
    // and a directory beside the overlay store (overlay's).
    let img_file = f.scratch("ext4.img");
    let fs_size = per_layer * 3 * 2 + (64 << 20);
    fs::File::create(&img_file)?.set_len(fs_size)?;
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img_file))?;
    let ext4_mnt = f.scratch("ext4-mnt");
    fs::create_dir_all(&ext4_mnt)?;
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img_file)
        .arg(&ext4_mnt))?;
    let tar_dir = f.scratch("tar-dir");
    let mut c = Collect::default();
    c.add_in(
        Some(Unit::Bytes),
        IMAGE_BYTES.0,
        IMAGE_BYTES.1,
        None,
        total as f64,
    );
    let result = (|| -> Result<()> {
        for rep in 0..plan.reps {
            for (variant, layout, blobs, tar_flags) in [
                (IMPORT_GZIP, &layout, &blobs, "-xzf"),
                (IMPORT_PLAIN, &plain_layout, &plain_blobs, "-xf"),
            ] {
                for drv in Drv::interleaved(rep) {
                    let mut store = f.store(drv)?;
                    let progress = thinlayer::progress::NoProgress;
                    let cpu = machine_cpu()?;
                    let (t, ids) = timed(|| {
                        Ok(thinlayer::import::import_image(
                            &mut store,
                            layout,
                            Some("bench:1"),
                            &progress,
                        )?)
                    })?;
                    machine_cpu()?.record_since(&cpu, &mut c, drv.name(), variant);
                    for id in ids {
                        store.remove_image(&id)?;
                    }
                    c.add(drv.name(), variant, None, total as f64 / (t / 1000.0));
                    tick.tick("import");
                }
                for (label, target) in [("gnu-tar (ext4)", &ext4_mnt), ("gnu-tar (dir)", &tar_dir)]
                {
                    let dest = target.join("x");
                    fs::create_dir_all(&dest)?;
                    let before = children_cpu()?;
                    let cpu = machine_cpu()?;
                    let (t, ()) = timed(|| {
                        for b in blobs {
                            run(Command::new("tar")
                                .arg(tar_flags)
                                .arg(b)
                                .arg("-C")
                                .arg(&dest))?;
                        }
                        nix::unistd::sync();
                        Ok(())
                    })?;
                    machine_cpu()?.record_since(&cpu, &mut c, label, variant);
                    let spent = children_cpu()? - before;
                    fs::remove_dir_all(&dest)?;
                    c.add(label, variant, None, total as f64 / (t / 1000.0));
                    if label == "gnu-tar (ext4)" {
                        c.add(TAR_CPU, variant, None, total as f64 / spent);
                    }
                }
            }
            // What checking costs, one piece at a time, on blobs already
            // read into memory: a sha256 of each blob (its digest),
            // inflating it, and a sha256 of its tar (its diff_id). The
            // findings bound the import on this machine's cores with them.
            let bytes: Vec<Vec<u8>> = blobs.iter().map(fs::read).collect::<std::io::Result<_>>()?;
            let sha = |data: &[u8]| {
                use sha2::Digest;
                std::hint::black_box(sha2::Sha256::digest(data));
            };
            let (t, ()) = timed(|| {
                bytes.iter().for_each(|b| sha(b));
                Ok(())
            })?;
            c.add(VERIFY_BLOB, IMPORT_GZIP, None, total as f64 / (t / 1000.0));
            let (t, plains) = timed(|| {
                bytes
                    .iter()
                    .map(|b| {
                        let mut plain = vec![];
                        std::io::Read::read_to_end(
                            &mut flate2::read::GzDecoder::new(b.as_slice()),
                            &mut plain,
                        )?;
                        Ok(plain)
                    })
                    .collect::<Result<Vec<Vec<u8>>>>()
            })?;
            c.add(
                VERIFY_INFLATE,
                IMPORT_GZIP,
                None,
                total as f64 / (t / 1000.0),
            );
            let (t, ()) = timed(|| {
                plains.iter().for_each(|p| sha(p));
                Ok(())
            })?;
            c.add(VERIFY_TAR, IMPORT_GZIP, None, total as f64 / (t / 1000.0));
        }
        Ok(())
    })();
    let _ = run(Command::new("umount").arg(&ext4_mnt));
    result?;
    Ok(Scenario {
        id: "import".into(),
        number: 9,
        title: "Image import".into(),
        description: format!(
            "An OCI image of three gzip layers built by umoci ({} of files from 4 KiB to 1 MiB) imported by \
             thinlayer (digests checked, each layer applied into its own snapshot or directory, records \
             journaled), against GNU tar extracting the same layer blobs in order into ext4 on a loop device \
             and into a plain directory, then `sync`; and the same image with its layers uncompressed \
             (`skopeo copy --dest-decompress` to skopeo's `dir:` format, then back to an OCI layout with \
             `--dest-oci-accept-uncompressed-layers`), whose blob digests are their diff_ids, imported \
             the same way and extracted by `tar -xf`. Throughput of uncompressed file bytes. The pieces of \
             checking are timed alone, each in one thread, on the gzip blobs in memory: a sha256 of each blob \
             (its digest), inflating it, and a sha256 of its tar (its diff_id), each as the rate of the same \
             uncompressed bytes; and GNU tar's extraction into ext4 per second of the CPU time its \
             processes (tar, and gzip for the gzip layers) spent, user and system. Where the time goes: \
             the whole machine's CPU time (`/proc/stat`, summed over its CPUs) in user space, in the kernel \
             (including its loop, writeback and device-mapper threads) and idle or waiting on I/O, \
             from the start to the end of each import or extraction, in the rows marked CPU. {} repetitions.",
            crate::report::format_value(Unit::Bytes, total as f64),
            plan.reps
        ),
        unit: Unit::BytesPerSec,
        ratios: vec![
            Ratio {
                name: "thin import / GNU tar into ext4".into(),
                numerator: sref("thin", IMPORT_GZIP),
                denominator: sref("gnu-tar (ext4)", IMPORT_GZIP),
                target: ge(0.8, "≥ 0.8"),
                headline: true,
            },
            Ratio {
                name: "overlay import / GNU tar into a directory".into(),
                numerator: sref("overlay", IMPORT_GZIP),
                denominator: sref("gnu-tar (dir)", IMPORT_GZIP),
                target: ge(0.8, "≥ 0.8"),
                headline: false,
            },
            Ratio {
                name: "thin import / GNU tar into ext4, uncompressed layers".into(),
                numerator: sref("thin", IMPORT_PLAIN),
                denominator: sref("gnu-tar (ext4)", IMPORT_PLAIN),
                target: None,
                headline: false,
            },
            Ratio {
                name: "overlay import / GNU tar into a directory, uncompressed layers".into(),
                numerator: sref("overlay", IMPORT_PLAIN),
                denominator: sref("gnu-tar (dir)", IMPORT_PLAIN),
                target: None,
                headline: false,
            },
        ],
        findings: vec![],
        series: c.series,
        plot: None,
    })
}

/// The layer blobs of the only image in an OCI layout, bottom first.
fn layer_blobs(layout: &Path) -> Result<Vec<std::path::PathBuf>> {
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .context("no manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&fs::read(blob(mdigest))?)?;
    Ok(manifest["layers"]
        .as_array()
        .context("no layers")?
        .iter()
        .filter_map(|l| l["digest"].as_str().map(blob))
        .collect())
}

/// The whole machine's CPU time so far, from `/proc/stat`, in ms summed
/// over the CPUs: in user space (user, nice), in the kernel (system,
/// interrupts) and neither (idle, waiting on I/O).
#[derive(Clone, Copy)]
struct MachineCpu {
    user_ms: f64,
    kernel_ms: f64,
    idle_ms: f64,
}

impl MachineCpu {
    /// What the machine did from `before` to `self`, as samples of
    /// `driver` in the variants `{variant}: CPU …` ([`CPU_SPLIT`]).
    fn record_since(&self, before: &MachineCpu, c: &mut Collect, driver: &str, variant: &str) {
        let parts = [
            self.user_ms - before.user_ms,
            self.kernel_ms - before.kernel_ms,
            self.idle_ms - before.idle_ms,
        ];
        for (what, v) in CPU_SPLIT.iter().zip(parts) {
            c.add_in(
                Some(Unit::Millis),
                driver,
                &format!("{variant}: {what}"),
                None,
                v,
            );
        }
    }
}

/// How a burst's CPU time is split, as the suffixes of its variants: user
/// space, the kernel, idle or waiting on I/O.
pub const CPU_SPLIT: [&str; 3] = [
    "CPU in user space",
    "CPU in the kernel",
    "CPU idle or waiting on I/O",
];

fn machine_cpu() -> Result<MachineCpu> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .context("parsing the cpu line of /proc/stat")?;
    anyhow::ensure!(ticks.len() >= 7, "/proc/stat's cpu line is short: {line}");
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("asking for the clock tick")?
        .context("the system has no clock tick")? as f64;
    let to_ms = |t: f64| t * 1000.0 / hz;
    // user nice system idle iowait irq softirq [steal ...]
    Ok(MachineCpu {
        user_ms: to_ms(ticks[0] + ticks[1]),
        kernel_ms: to_ms(ticks[2] + ticks[5] + ticks[6]),
        idle_ms: to_ms(ticks[3] + ticks[4]),
    })
}
