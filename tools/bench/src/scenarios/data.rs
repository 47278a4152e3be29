//! Scenarios 4, 6 and 7: writing new data, the page cache, and space.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use devicemapper::DM;
use thinlayer::driver::overlay::OverlayOptions;
use thinpool::Bytes;

use super::{ge, le, size_label, sref, Collect, Plan, Tick};
use crate::fixture::{drop_caches, run, timed, Changeset, Drv, Fixture, Noise};
use crate::peers::Linear;
use crate::samples::{PlotSpec, Ratio, Scenario, Unit};

/// A few distinct pseudo-random numbers below `below` (a Fisher-Yates
/// prefix), the same for the same seed.
fn scatter(n: usize, below: u64, seed: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (0..below).collect();
    let mut rng = Noise::new(seed);
    let mut word = [0u8; 8];
    for i in 0..n.min(all.len()) {
        rng.read_exact(&mut word).expect("noise never ends");
        let j = i + (u64::from_le_bytes(word) % (all.len() - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

/// Writes `bytes` of new data to `path` in 1 MiB writes, then fsync.
fn write_sequential(path: &Path, bytes: u64, chunk: &[u8]) -> Result<()> {
    let f = File::create(path)?;
    let mut off = 0;
    while off < bytes {
        f.write_all_at(chunk, off)?;
        off += chunk.len() as u64;
    }
    f.sync_all()?;
    Ok(())
}

/// `n` 4 KiB writes into a new sparse file, each in a `slot`-sized piece
/// of its own (the thin pool's block), in random order; then fsync.
fn write_random(path: &Path, n: usize, slot_bytes: Bytes, seed: u64) -> Result<()> {
    let block = [0x3cu8; 4096];
    let slots = n as u64 * 4;
    let per_slot = slot_bytes.0 / 4096;
    let f = File::create(path)?;
    f.set_len(slots * slot_bytes.0)?;
    for (k, slot) in scatter(n, slots, seed).into_iter().enumerate() {
        f.write_all_at(&block, slot * slot_bytes.0 + (k as u64 % per_slot) * 4096)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Where a scenario-4 repetition writes.
#[derive(Clone, Copy, PartialEq)]
enum Dest {
    Container(Drv),
    Linear,
}

impl Dest {
    fn name(self) -> &'static str {
        match self {
            Dest::Container(d) => d.name(),
            Dest::Linear => "linear",
        }
    }

    /// The three destinations, the order turning with `rep`.
    fn order(rep: usize) -> [Dest; 3] {
        let mut all = [
            Dest::Container(Drv::Thin),
            Dest::Container(Drv::Overlay),
            Dest::Linear,
        ];
        all.rotate_left(rep % 3);
        all
    }
}

// ---- 4. new data ---------------------------------------------------------

pub fn new_data(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let seq: u64 = if plan.quick { 32 << 20 } else { 256 << 20 };
    let rand_n: usize = if plan.quick { 256 } else { 2048 };
    let base = f.base_layers(&Changeset::new().file("seed", 1, 0))?;
    let mut chunk = vec![0u8; 1 << 20];
    Noise::new(4).read_exact(&mut chunk)?;
    let dm = DM::new().context("opening /dev/mapper/control")?;
    let linear = Linear::new(&dm, &f.scratch("linear"), f.base)?;
    let seq_v = format!("sequential 1 MiB writes, {}", size_label(seq));
    let rand_v = format!("random 4 KiB writes, {rand_n} of them");
    let mut c = Collect::default();
    let result = (|| -> Result<()> {
        for rep in 0..plan.reps {
            for dest in Dest::order(rep) {
                let (dir, container) = match dest {
                    Dest::Container(d) => {
                        let layer = base.of(d);
                        let (name, rootfs) = f.container(d, layer, OverlayOptions::default())?;
                        (rootfs, Some(name))
                    }
                    Dest::Linear => {
                        let dir = linear.mnt.join(format!("r{rep}"));
                        fs::create_dir_all(&dir)?;
                        (dir, None)
                    }
                };
                drop_caches()?;
                let (t, ()) = timed(|| write_sequential(&dir.join("seq"), seq, &chunk))?;
                c.add(dest.name(), &seq_v, None, seq as f64 / (t / 1000.0));
                let (t, ()) =
                    timed(|| write_random(&dir.join("rand"), rand_n, f.block, rep as u64))?;
                c.add(
                    dest.name(),
                    &rand_v,
                    None,
                    (rand_n * 4096) as f64 / (t / 1000.0),
                );
                match container {
                    Some(name) => f.remove_container(&name)?,
                    None => fs::remove_dir_all(&dir)?,
                }
                tick.tick("new data");
            }
        }
        Ok(())
    })();
    let closed = linear.close(&dm);
    result?;
    closed?;
    let ratio = |name: &str, num: &str, den: &str, v: &str, headline: bool| Ratio {
        name: name.into(),
        numerator: sref(num, v),
        denominator: sref(den, v),
        target: None,
        headline,
    };
    Ok(Scenario {
        id: "new-data".into(),
        number: 4,
        title: "New data".into(),
        description: format!(
            "New files written in a fresh container, page cache dropped first: {} in 1 MiB writes then \
             fsync; then {rand_n} 4 KiB writes at random places in a new sparse file, each in a {block} \
             piece of its own (one pool block), then fsync. Throughput. `linear` is the same stack as a thin layer without \
             dm-thin: a plain linear device over a loop device on a sparse file beside the pool's, ext4 \
             made with the thin base's options; thin / linear is the cost of provisioning pool blocks \
             ({block}, zeroed before a partial write). overlay writes into its upper directory on the \
             host filesystem. {} repetitions, the order of the three turning.",
            size_label(seq),
            plan.reps,
            block = size_label(f.block.0),
        ),
        unit: Unit::BytesPerSec,
        ratios: vec![
            ratio("thin / linear, sequential", "thin", "linear", &seq_v, true),
            ratio("thin / linear, random 4 KiB", "thin", "linear", &rand_v, true),
            ratio("thin / overlay, sequential", "thin", "overlay", &seq_v, false),
            ratio("thin / overlay, random 4 KiB", "thin", "overlay", &rand_v, false),
        ],
        series: c.series,
        plot: None,
        findings: vec![],
    })
}

// ---- 6. page cache -------------------------------------------------------

/// The page cache in use (`Cached` + `Buffers` of /proc/meminfo), bytes.
fn page_cache() -> Result<u64> {
    let info = fs::read_to_string("/proc/meminfo")?;
    let mut total = 0;
    for l in info.lines() {
        let mut w = l.split_whitespace();
        if let (Some("Cached:" | "Buffers:"), Some(kb)) = (w.next(), w.next()) {
            total += kb.parse::<u64>().context("a number in /proc/meminfo")? * 1024;
        }
    }
    Ok(total)
}

pub fn page_cache_sharing(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Scenario> {
    let size: u64 = if plan.quick { 32 << 20 } else { 128 << 20 };
    let counts: &[usize] = if plan.quick { &[1, 4] } else { &[1, 2, 4, 8] };
    let reps = plan.reps.min(5);
    let base = f.base_layers(&Changeset::new().file("shared/blob", size, 6))?;
    let mut c = Collect::default();
    for &n in counts {
        for rep in 0..reps {
            for drv in Drv::interleaved(rep) {
                let layer = base.of(drv);
                let mut made = vec![];
                for _ in 0..n {
                    made.push(f.container(drv, layer, OverlayOptions::default())?);
                }
                drop_caches()?;
                let before = page_cache()?;
                for (_, rootfs) in &made {
                    let mut file = File::open(rootfs.join("shared/blob"))?;
                    io::copy(&mut file, &mut io::sink())?;
                }
                let after = page_cache()?;
                c.add(
                    drv.name(),
                    &format!("{n} containers"),
                    Some(n as f64),
                    after.saturating_sub(before) as f64,
                );
                for (name, _) in made {
                    f.remove_container(&name)?;
                }
                tick.tick("page cache");
            }
        }
    }
    let most = format!("{} containers", counts.last().unwrap());
    Ok(Scenario {
        id: "page-cache".into(),
        number: 6,
        title: "Page-cache sharing".into(),
        description: format!(
            "N containers of one image each read the image's {} file in full, page cache dropped \
             first; the growth of `Cached` + `Buffers` in /proc/meminfo. overlay's containers read the \
             lower layer's one inode, so its pages are cached once. Each thin container is a \
             filesystem of its own on its own snapshot: the kernel cannot tell that their blocks are \
             the pool's same blocks, so each caches its own copy. {reps} repetitions.",
            size_label(size)
        ),
        unit: Unit::Bytes,
        ratios: vec![Ratio {
            name: format!("thin / overlay, {most}"),
            numerator: sref("thin", &most),
            denominator: sref("overlay", &most),
            target: None,
            headline: true,
        }],
        series: c.series,
        plot: Some(PlotSpec {
            file: "page-cache.svg".into(),
            title: "Page cache used by N containers reading the same file".into(),
            x_label: "containers".into(),
            y_label: "page cache".into(),
            log_x: false,
            log_y: false,
        }),
        findings: vec![],
    })
}

// ---- 7. space and deletion -------------------------------------------------

/// Bytes allocated under `dir` (st_blocks), each inode counted once.
fn allocated(dir: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let m = e.metadata()?;
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(total)
}

/// Bytes the filesystem holds for `file` (st_blocks): a sparse file's
/// holes take none.
fn file_allocated(file: &Path) -> Result<u64> {
    let m = fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(m.blocks() * 512)
}

/// Space in use: (pool data, pool metadata) for thin, and the overlay
/// store's allocated bytes.
fn usage(f: &Fixture, overlay_dir: &Path) -> Result<(u64, u64, u64)> {
    nix::unistd::sync();
    let st = f.root.open_pool()?.status()?;
    Ok((
        st.data.used_bytes.context("the pool is not active")?.0,
        st.metadata.used_bytes.context("the pool is not active")?.0,
        allocated(overlay_dir)?,
    ))
}

pub fn space(f: &mut Fixture, plan: Plan, tick: &dyn Tick) -> Result<Vec<Scenario>> {
    let sizes: &[u64] = if plan.quick {
        &[1 << 20, 16 << 20]
    } else {
        &[1 << 20, 64 << 20]
    };
    let n_meta = if plan.quick { 200 } else { 1000 };
    let seq: u64 = if plan.quick { 16 << 20 } else { 64 << 20 };
    let rand_n = if plan.quick { 128 } else { 512 };
    let reps = plan.reps.min(5);
    let mut cs = Changeset::new();
    for s in sizes {
        cs = cs.file(&format!("data/f{s}"), *s, *s);
    }
    for i in 0..n_meta {
        cs = cs.file(&format!("many/{i:04}"), 4096, i as u64);
    }
    let base = f.base_layers(&cs)?;
    let overlay_dir: PathBuf = f.store(Drv::Overlay)?.dir().to_path_buf();
    let mut chunk = vec![0u8; 1 << 20];
    Noise::new(7).read_exact(&mut chunk)?;
    let steps = [
        "after first writes (scenario 2)",
        "+ chmod/chown (scenario 3)",
        "+ new data (scenario 4)",
    ];
    let mut c = Collect::default();
    let mut del = Collect::default();
    let data_file = f.root.open_pool()?.status()?.data.path;
    let gone = "container rm after scenarios 2–4";
    for rep in 0..reps {
        for drv in Drv::interleaved(rep) {
            let layer = base.of(drv);
            let (name, rootfs) = f.container(drv, layer, OverlayOptions::default())?;
            let start = usage(f, &overlay_dir)?;
            for (i, step) in steps.iter().enumerate() {
                match i {
                    0 => {
                        for s in sizes {
                            let file = OpenOptions::new()
                                .write(true)
                                .open(rootfs.join(format!("data/f{s}")))?;
                            file.write_all_at(&[0x5a; 4096], s / 2 / 4096 * 4096)?;
                            file.sync_data()?;
                        }
                    }
                    1 => {
                        for k in 0..n_meta {
                            let p = rootfs.join(format!("many/{k:04}"));
                            fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
                            std::os::unix::fs::chown(&p, Some(1000), Some(1000))?;
                        }
                    }
                    _ => {
                        write_sequential(&rootfs.join("seq"), seq, &chunk)?;
                        write_random(&rootfs.join("rand"), rand_n, f.block, rep as u64)?;
                    }
                }
                let now = usage(f, &overlay_dir)?;
                match drv {
                    Drv::Thin => {
                        c.add(
                            "thin (pool data)",
                            step,
                            None,
                            now.0.saturating_sub(start.0) as f64,
                        );
                        c.add(
                            "thin (pool metadata)",
                            step,
                            None,
                            now.1.saturating_sub(start.1) as f64,
                        );
                    }
                    Drv::Overlay => c.add(
                        "overlay (upper dir)",
                        step,
                        None,
                        now.2.saturating_sub(start.2) as f64,
                    ),
                }
            }
            let before = (usage(f, &overlay_dir)?.0, file_allocated(&data_file)?);
            let (t, ()) = timed(|| f.remove_container(&name))?;
            del.add(
                drv.name(),
                "one container after scenarios 2–4's work",
                None,
                t,
            );
            if drv == Drv::Thin {
                // What the pool freed, and what of it the host got back:
                // the blocks the pool's sparse data file no longer holds.
                let after = (usage(f, &overlay_dir)?.0, file_allocated(&data_file)?);
                c.add(
                    "thin (pool data freed)",
                    gone,
                    None,
                    before.0.saturating_sub(after.0) as f64,
                );
                c.add(
                    "thin (data file freed)",
                    gone,
                    None,
                    before.1.saturating_sub(after.1) as f64,
                );
            }
            tick.tick("space");
        }
    }
    // A pool made with the defaults (10G base filesystem): what its data
    // holds before any layer, against its size.
    let fresh = "right after `pool create` (default 10G base)";
    for _ in 0..reps.min(3) {
        let root = f.scratch("fresh-pool");
        let tl = |args: &[&str]| run(Command::new(&f.bin).arg("--root").arg(&root).args(args));
        tl(&["pool", "create", "--data-size", "2G"])?;
        let st: serde_json::Value = serde_json::from_str(&tl(&["pool", "status", "--json"])?)?;
        tl(&["pool", "destroy"])?;
        let num = |k: &str| {
            st["data"][k]
                .as_u64()
                .with_context(|| format!("pool status has no data.{k}: {st}"))
        };
        c.add("thin (pool data)", fresh, None, num("used_bytes")? as f64);
        c.add(
            "thin (pool data size)",
            fresh,
            None,
            num("total_bytes")? as f64,
        );
    }
    let written = sizes.len() as u64 * 4096 + seq + rand_n as u64 * 4096;
    let ratio = |step: &str, headline: bool| Ratio {
        name: format!("thin pool data / overlay upper, {step}"),
        numerator: sref("thin (pool data)", step),
        denominator: sref("overlay (upper dir)", step),
        target: None,
        headline,
    };
    let space = Scenario {
        id: "space".into(),
        number: 7,
        title: "Space used by a container's changes".into(),
        description: format!(
            "One container per driver does, in turn, scenario 2's work (a 4 KiB write in the middle of \
             inherited files of {}), scenario 3's (chmod + chown of {n_meta} inherited 4 KiB files) and \
             scenario 4's ({} written sequentially, {rand_n} random 4 KiB writes): {} of data in all. \
             After each step, `sync`, then the space added since the container was made, cumulative: \
             pool data and pool metadata used (dm-thin's status) for thin, allocated bytes of the overlay \
             store (its upper and work directories) for overlay. Then the container is removed: what \
             the pool freed against what the pool's sparse data file gave back to the host filesystem \
             (its allocated blocks). And a pool made apart with the defaults (`pool create --data-size \
             2G`, a 10G base filesystem): its data used before any layer. {reps} repetitions.",
            sizes.iter().map(|s| size_label(*s)).collect::<Vec<_>>().join(" and "),
            size_label(seq),
            crate::report::format_value(Unit::Bytes, written as f64),
        ),
        unit: Unit::Bytes,
        ratios: vec![
            ratio(steps[0], true),
            ratio(steps[1], false),
            ratio(steps[2], false),
            Ratio {
                name: "pool data used / pool data size, right after `pool create`".into(),
                numerator: sref("thin (pool data)", fresh),
                denominator: sref("thin (pool data size)", fresh),
                target: le(16.0 / 2048.0, "≤ 16 MiB of 2 GiB (0.0078)"),
                headline: true,
            },
            Ratio {
                name: "space the host got back / space the pool freed, container rm".into(),
                numerator: sref("thin (data file freed)", gone),
                denominator: sref("thin (pool data freed)", gone),
                target: ge(0.9, "≥ 0.9"),
                headline: true,
            },
        ],
        series: c.series,
        plot: None,
        findings: vec![],
    };
    let v = "one container after scenarios 2–4's work";
    let delete = Scenario {
        id: "delete".into(),
        number: 7,
        title: "Deleting a container".into(),
        description: format!(
            "`container rm` of the container above once its work is done: for thin, unmount, \
             deactivate and delete two thin devices (writable and init layers) with journaled records; \
             for overlay, unmount and remove the upper directory's files. {reps} repetitions."
        ),
        unit: Unit::Millis,
        ratios: vec![Ratio {
            name: "thin / overlay".into(),
            numerator: sref("thin", v),
            denominator: sref("overlay", v),
            target: None,
            headline: false,
        }],
        series: del.series,
        plot: None,
        findings: vec![],
    };
    Ok(vec![space, delete])
}
