//! What a run's numbers mean: sentences computed from the medians of the
//! samples, so `--render` can remake them from a saved `samples.json`.

use crate::samples::{Environment, Scenario, Series};
use crate::scenarios::size_label;

/// The findings of one scenario, in the run's environment (its CPUs and
/// the pool's block size).
pub fn findings(s: &Scenario, env: &Environment) -> Vec<String> {
    let series = &s.series;
    let cpus = env.cpus;
    let block = Block(env.pool_block_bytes);
    match s.id.as_str() {
        "provision" => match deepest(series, "thin", "depth ") {
            Some(deep) => provision_findings(series, &deep, cpus),
            None => vec![],
        },
        "first-write" => first_write_findings(series, block),
        "metadata" => metadata_findings(series, block),
        "new-data" => new_data_findings(series, block),
        "lookup" => lookup_findings(series),
        "page-cache" => page_cache_findings(series),
        "space" => space_findings(series, block),
        "containerd" => containerd_findings(series),
        "import" => import_findings(series, cpus),
        "containerd-bench" => containerd_bench_findings(series),
        _ => vec![],
    }
}

/// The pool's block size, as the run recorded it (`None` for a run made
/// before it was recorded): the findings name it rather than assume it.
#[derive(Clone, Copy)]
struct Block(Option<u64>);

impl Block {
    /// "256 KiB pool block", or "pool block".
    fn pool_block(self) -> String {
        match self.0 {
            Some(b) => format!("{} pool block", size_label(b)),
            None => "pool block".into(),
        }
    }

    /// What a pool that zeroes new blocks writes around a 4 KiB write into
    /// a new block: "the 252 KiB around the write", or "the rest of the
    /// block around the write".
    fn zeroed_around_4k(self) -> String {
        match self.0 {
            Some(b) => format!("the {} around the write", size_label(b - 4096)),
            None => "the rest of the block around the write".into(),
        }
    }
}

/// The variant of `driver` starting with `prefix` that has the largest x.
fn deepest(series: &[Series], driver: &str, prefix: &str) -> Option<String> {
    series
        .iter()
        .filter(|s| s.driver == driver && s.variant.starts_with(prefix) && s.x.is_some())
        .max_by(|a, b| a.x.unwrap_or(0.0).total_cmp(&b.x.unwrap_or(0.0)))
        .map(|s| s.variant.clone())
}

/// The variant of `driver` starting with `prefix` (the first one).
fn variant(series: &[Series], driver: &str, prefix: &str) -> Option<String> {
    series
        .iter()
        .find(|s| s.driver == driver && s.variant.starts_with(prefix))
        .map(|s| s.variant.clone())
}

fn mib(v: f64) -> f64 {
    v / (1u64 << 20) as f64
}

/// "N× faster/slower" for a time ratio thin/other.
fn times(r: f64) -> String {
    if r < 1.0 {
        format!("{:.1}× faster", 1.0 / r)
    } else {
        format!("{r:.1}× slower")
    }
}

fn first_write_findings(series: &[Series], block: Block) -> Vec<String> {
    let Some(big) = deepest(series, "thin", "first write") else {
        return vec![];
    };
    let size = big
        .trim_start_matches("first write, ")
        .trim_end_matches(" file");
    let second = format!("second write, {size} file");
    let m = |d: &str, v: &str| median(series, d, v);
    let (Some(t1), Some(o1), Some(t2), Some(o2)) = (
        m("thin", &big),
        m("overlay", &big),
        m("thin", &second),
        m("overlay", &second),
    ) else {
        return vec![];
    };
    vec![format!(
        "The first 4 KiB write into a {size} inherited file takes {t1:.1} ms on thin and {o1:.0} ms on \
         overlay ({:.4} of it): overlay copies the whole file up before the write, thin copies one {}. \
         The copy is paid once: the second write, 12 KiB further on in the same block, takes {t2:.1} ms \
         on thin and {o2:.1} ms on overlay, each overwriting its own copy.",
        t1 / o1,
        block.pool_block(),
    )]
}

fn metadata_findings(series: &[Series], block: Block) -> Vec<String> {
    let Some(v) = variant(series, "thin", "chmod") else {
        return vec![];
    };
    let m = |d: &str| median(series, d, &v);
    let (Some(t), Some(o), Some(mc)) = (m("thin"), m("overlay"), m("overlay+metacopy")) else {
        return vec![];
    };
    vec![format!(
        "For {v}, thin is {} than overlay and {} than overlay with `metacopy=on`. Without metacopy \
         overlay copies every file's data up to change its mode; with it, only the inode, yet each file \
         still becomes a new inode in the upper directory. thin rewrites inode table blocks in place, \
         sixteen 256-byte inodes per 4 KiB block, after one copy of each {} it touches.",
        times(t / o),
        times(t / mc),
        block.pool_block(),
    )]
}

fn new_data_findings(series: &[Series], block: Block) -> Vec<String> {
    let (Some(seq), Some(rnd)) = (
        variant(series, "thin", "sequential"),
        variant(series, "thin", "random"),
    ) else {
        return vec![];
    };
    let m = |d: &str, v: &str| median(series, d, v);
    let (Some(ts), Some(ls), Some(tr), Some(lr)) = (
        m("thin", &seq),
        m("linear", &seq),
        m("thin", &rnd),
        m("linear", &rnd),
    ) else {
        return vec![];
    };
    vec![format!(
        "Provisioning costs thin {:.0}% of the linear device's sequential throughput ({:.1} against {:.1} \
         MiB/s) and {:.0}% of its random 4 KiB throughput ({:.1} against {:.1} MiB/s). A random write that \
         lands in an unprovisioned {} makes the pool allocate the block, zero {} and commit the \
         mapping; a sequential stream fills whole blocks, which the pool does not zero. overlay writes \
         straight into the host filesystem, without a loop device in between.",
        (1.0 - ts / ls) * 100.0,
        mib(ts),
        mib(ls),
        (1.0 - tr / lr) * 100.0,
        mib(tr),
        mib(lr),
        block.pool_block(),
        block.zeroed_around_4k(),
    )]
}

fn lookup_findings(series: &[Series]) -> Vec<String> {
    let Some(deep) = deepest(series, "overlay", "depth ") else {
        return vec![];
    };
    let m = |d: &str, v: &str| median(series, d, v);
    let (Some(o1), Some(od), Some(t1), Some(td)) = (
        m("overlay", "depth 1"),
        m("overlay", &deep),
        m("thin", "depth 1"),
        m("thin", &deep),
    ) else {
        return vec![];
    };
    vec![format!(
        "From depth 1 to {deep}, cold lookups change {:.2}× on overlay ({o1:.1} to {od:.1} ms) and {:.2}× on \
         thin ({t1:.1} to {td:.1} ms). overlay looks each name up in every lower directory above the one \
         that holds it; thin reads one filesystem whatever the depth.",
        od / o1,
        td / t1,
    )]
}

fn page_cache_findings(series: &[Series]) -> Vec<String> {
    let Some(most) = deepest(series, "thin", "") else {
        return vec![];
    };
    let n = series
        .iter()
        .find(|s| s.variant == most)
        .and_then(|s| s.x)
        .unwrap_or(1.0);
    let m = |d: &str, v: &str| median(series, d, v);
    let (Some(t1), Some(o1), Some(tn), Some(on)) = (
        m("thin", "1 containers"),
        m("overlay", "1 containers"),
        m("thin", &most),
        m("overlay", &most),
    ) else {
        return vec![];
    };
    vec![format!(
        "One container caches {:.1} MiB on thin and {:.1} MiB on overlay; {n} containers cache {:.1} MiB on \
         thin ({:.2}× one) and {:.1} MiB on overlay ({:.2}× one). This is block-level copy-on-write's \
         price: the same image data read by N containers is N copies in memory. The loop devices under the \
         pool use direct I/O, so the backing file adds no further copy.",
        mib(t1),
        mib(o1),
        mib(tn),
        tn / t1,
        mib(on),
        on / o1,
    )]
}

fn space_findings(series: &[Series], block: Block) -> Vec<String> {
    let m = |d: &str, v: &str| median(series, d, v);
    let mut out = vec![];
    let gone = "container rm after scenarios 2–4";
    if let (Some(pool), Some(file)) = (
        m("thin (pool data freed)", gone),
        m("thin (data file freed)", gone),
    ) {
        out.push(format!(
            "Removing the container freed {:.1} MiB in the pool, and the pool's sparse data file gave \
             {:.1} MiB of it back to the host filesystem ({:.0}%): the blocks a deleted thin device \
             held are discarded down to the file.",
            mib(pool),
            mib(file),
            100.0 * file / pool.max(1.0),
        ));
    }
    if let Some(v) = variant(series, "thin (pool data size)", "right after") {
        if let (Some(used), Some(size)) =
            (m("thin (pool data)", &v), m("thin (pool data size)", &v))
        {
            out.push(format!(
                "A pool made with the defaults holds {:.1} MiB of its {:.0} MiB of data before any layer: \
                 the base filesystem is made without zeroing what a thin device reads as zeros.",
                mib(used),
                mib(size),
            ));
        }
    }
    let steps: Vec<String> = series
        .iter()
        .filter(|s| s.driver == "thin (pool data)" && !s.variant.starts_with("right after"))
        .map(|s| s.variant.clone())
        .collect();
    let [first, second, last] = steps.as_slice() else {
        return out;
    };
    let (Some(t1), Some(o1), Some(t2), Some(o2), Some(t3), Some(o3)) = (
        m("thin (pool data)", first),
        m("overlay (upper dir)", first),
        m("thin (pool data)", second),
        m("overlay (upper dir)", second),
        m("thin (pool data)", last),
        m("overlay (upper dir)", last),
    ) else {
        return out;
    };
    out.insert(0, format!(
        "After the first writes thin holds {:.2} MiB of new pool data against {:.2} MiB in overlay's upper \
         directory: a {} per write, plus the blocks of ext4's journal and inode tables the writes \
         touch, against whole copied-up files. The new data step adds {:.1} MiB to the pool and {:.1} MiB \
         to overlay: there a random 4 KiB write takes a whole {}. After all three steps thin \
         holds {:.1} MiB against overlay's {:.1} MiB.",
        mib(t1),
        mib(o1),
        block.pool_block(),
        mib(t3 - t2),
        mib(o3 - o2),
        block.pool_block(),
        mib(t3),
        mib(o3),
    ));
    out
}

fn containerd_findings(series: &[Series]) -> Vec<String> {
    use crate::scenarios::REPLICA_PHASES;
    let Some(v) = series
        .iter()
        .find(|s| s.driver == "thin" && s.variant.ends_with(" layers"))
        .map(|s| s.variant.clone())
    else {
        return vec![];
    };
    let (Some(t), Some(o)) = (median(series, "thin", &v), median(series, "overlay", &v)) else {
        return vec![];
    };
    let mut out = vec![format!(
        "thin takes {:.2}× overlay's time on this benchmark, where containerd's devmapper snapshotter \
         published 2.68×.",
        t / o
    )];
    let phases: Vec<(&str, f64, f64)> = REPLICA_PHASES
        .iter()
        .filter_map(|p| {
            Some((
                *p,
                median(series, "thin", p)?,
                median(series, "overlay", p)?,
            ))
        })
        .collect();
    if phases.len() == REPLICA_PHASES.len() {
        let secs = |ms: f64| format!("{:.2} s", ms / 1000.0);
        let list: Vec<String> = phases
            .iter()
            .map(|(p, t, o)| format!("{p} {} against {}", secs(*t), secs(*o)))
            .collect();
        out.push(format!(
            "Phase by phase, summed over the layers, thin against overlay: {}. A thin commit is a \
             snapshot of the container's device with its init layer's paths taken out (nothing is \
             copied); overlay's exports the changed files and writes them into a new layer. A thin \
             container's prepare and removal activate, and delete, a thin device.",
            list.join("; ")
        ));
    }
    out
}

fn containerd_bench_findings(series: &[Series]) -> Vec<String> {
    use crate::scenarios::containerd_bench::{
        DEVMAPPER, FLOOR, FLOOR_EXPEDITED, OVERLAY, OVERLAYFS, PHASES, THIN, THIN_EXPEDITED,
        UNMOUNT,
    };
    const LAYERS: f64 = crate::scenarios::containerd_bench::LAYERS as f64;
    let m = |d: &str, v: &str| median(series, d, v);
    let secs = |ms: f64| format!("{:.2} s", ms / 1000.0);
    let verdict = |r: f64, target: f64| if r <= target { "met" } else { "missed" };
    let (Some(thin), Some(dm), Some(ovfs), Some(ov)) = (
        m(THIN, "total"),
        m(DEVMAPPER, "total"),
        m(OVERLAYFS, "total"),
        m(OVERLAY, "total"),
    ) else {
        return vec![];
    };
    let mut out = vec![format!(
        "thinlayer's thin driver runs containerd's benchmark in {} against {} for containerd's devmapper \
         snapshotter ({:.2}×; target ≤ 0.5, {}) and {} for containerd's overlayfs snapshotter ({:.2}×; \
         target ≤ 1.0, {}). thinlayer's overlay driver takes {} ({:.2}× containerd's overlayfs).",
        secs(thin),
        secs(dm),
        thin / dm,
        verdict(thin / dm, 0.5),
        secs(ovfs),
        thin / ovfs,
        verdict(thin / ovfs, 1.0),
        secs(ov),
        ov / ovfs,
    )];
    let phases: Vec<(&str, [Option<f64>; 4])> = PHASES[1..]
        .iter()
        .map(|(_, v)| {
            (
                *v,
                [m(THIN, v), m(DEVMAPPER, v), m(OVERLAYFS, v), m(OVERLAY, v)],
            )
        })
        .collect();
    if phases.iter().all(|(_, p)| p.iter().all(Option::is_some)) {
        let of = |i: usize| {
            phases
                .iter()
                .map(|(_, p)| secs(p[i].unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        // Where thin and devmapper differ most, in time.
        let (far, _) = phases
            .iter()
            .map(|(v, p)| (*v, p[1].unwrap_or(0.0) - p[0].unwrap_or(0.0)))
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .expect("three phases");
        let [t, d, ..] = phases
            .iter()
            .find(|(v, _)| *v == far)
            .map(|(_, p)| *p)
            .expect("that phase");
        out.push(format!(
            "Prepare / write / commit: thinlayer thin {}, containerd devmapper {}, containerd overlayfs {}, \
             thinlayer overlay {}. thin and devmapper differ most in {far}: {} against {}.",
            of(0),
            of(1),
            of(2),
            of(3),
            secs(t.unwrap_or(0.0)),
            secs(d.unwrap_or(0.0)),
        ));
    }
    if let (Some(fl), Some(fw), Some(ow), Some(tw)) = (
        m(FLOOR, "total"),
        m(FLOOR, PHASES[2].1),
        m(OVERLAYFS, PHASES[2].1),
        m(THIN, PHASES[2].1),
    ) {
        let bound = if fl / ovfs > 1.0 {
            format!(
                "The kernel's block-level path alone is {:.2}× containerd's overlayfs here, so no \
                 dm-thin snapshotter meets the ≤ 1.0 target on this machine; thinlayer's thin driver \
                 takes {:.2}× that floor, {} above it.",
                fl / ovfs,
                thin / fl,
                secs(thin - fl)
            )
        } else {
            format!(
                "The floor is {:.2}× containerd's overlayfs here, so the kernel does not stand in the \
                 way of the ≤ 1.0 target; thinlayer's thin driver takes {:.2}× the floor, {} above it.",
                fl / ovfs,
                thin / fl,
                secs(thin - fl)
            )
        };
        let split = match (
            m(THIN, PHASES[1].1),
            m(FLOOR, PHASES[1].1),
            m(THIN, PHASES[3].1),
            m(FLOOR, PHASES[3].1),
            m(DEVMAPPER, PHASES[2].1),
        ) {
            (Some(tp), Some(fp), Some(tc), Some(fc), Some(dw)) => format!(
                " By phase, thin is {:.1} ms per layer above the floor in prepare (a gRPC call, the \
                 journaled snapshot and its records), {:.1} ms in write and {:.1} ms in commit (a gRPC \
                 call and a record). In write, the files are written by the benchsuite's Go code \
                 (its bytes from Go's math/rand) where the floor writes them itself: containerd's \
                 devmapper, the same Go code on thin devices of its own, takes {} there, {:.2}× thin's.",
                (tp - fp) / LAYERS,
                (tw - fw) / LAYERS,
                (tc - fc) / LAYERS,
                secs(dw),
                dw / tw,
            ),
            _ => String::new(),
        };
        out.push(format!(
            "The same work with no snapshotter at all, the `{FLOOR}` column (each layer a `create_snap` of \
             the previous one on thinlayer's pool, activated, its ext4 mounted, the benchsuite's ten file \
             operations, unmounted; ioctls from one process, no records, no gRPC), takes {} in total; its \
             write phase {} against containerd's overlayfs's {} (thinlayer thin: {}). \
             Unmounting an ext4 filesystem writes its dirty data back to the device (the kernel syncs a \
             block filesystem as it shuts down: fs/super.c, generic_shutdown_super), so each layer's new \
             files go through the pool to disk inside the write phase, where overlayfs leaves them in the \
             page cache of the filesystem below. {bound}{split}",
            secs(fl),
            secs(fw),
            secs(ow),
            secs(tw),
        ));
    }
    if let (Some(fp), Some(fpe), Some(fl), Some(fle), Some(fw), Some(fu), Some(te), Some(ow)) = (
        m(FLOOR, PHASES[1].1),
        m(FLOOR_EXPEDITED, PHASES[1].1),
        m(FLOOR, "total"),
        m(FLOOR_EXPEDITED, "total"),
        m(FLOOR_EXPEDITED, PHASES[2].1),
        m(FLOOR_EXPEDITED, UNMOUNT),
        m(THIN_EXPEDITED, "total"),
        m(OVERLAYFS, PHASES[2].1),
    ) {
        let rest = if fle / ovfs > 1.0 {
            format!(
                "Even without that wait the floor stays above containerd's overlayfs: its write phase \
                 takes {} against overlayfs's {}, and {} of it is the unmounts, the writeback of each \
                 layer's new files through the pool.",
                secs(fw),
                secs(ow),
                secs(fu),
            )
        } else {
            "Without that wait the floor is within the ≤ 1.0 target: the grace period is the kernel \
             cost that stands between a dm-thin snapshotter and overlayfs here."
                .to_string()
        };
        out.push(format!(
            "With the kernel's RCU grace periods expedited (the `{FLOOR_EXPEDITED}` and \
             `{THIN_EXPEDITED}` columns), the floor's prepare phase takes {} against {}: {:.1} ms less \
             per layer. Loading a thin device's table waits for a grace period: the thin target's \
             constructor calls synchronize_rcu (Linux, drivers/md/dm-thin.c, thin_ctr), so every \
             activation of a thin device pays it, the floor's and every snapshotter's. The floor then \
             takes {} in total ({:.2}× containerd's overlayfs, against {:.2}× with grace periods as \
             they are), and thinlayer's thin driver {} ({:.2}×, against {:.2}×). {rest}",
            secs(fpe),
            secs(fp),
            (fp - fpe) / LAYERS,
            secs(fle),
            fle / ovfs,
            fl / ovfs,
            secs(te),
            te / ovfs,
            thin / ovfs,
        ));
    }
    out.push(format!(
        "Here containerd's devmapper takes {:.2}× containerd's overlayfs; containerd issue 2988 published \
         2.68× (3.13 s against 1.17 s, EC2 m5.2xlarge, 2019). containerd's devmapper makes its first \
         layer's device and runs mkfs.ext4 on it inside Prepare, and in Commit suspends, resumes and \
         deactivates the device; each device-mapper step is a `dmsetup` process (containerd 1.6, \
         snapshots/devmapper/snapshotter.go, pool_device.go, dmsetup/dmsetup.go). thinlayer's base \
         filesystem is made by `pool create` before the timings (this scenario's setup).",
        dm / ovfs
    ));
    out
}

/// The median of one series.
pub fn median(series: &[Series], driver: &str, variant: &str) -> Option<f64> {
    series
        .iter()
        .find(|s| s.driver == driver && s.variant == variant)
        .and_then(|s| crate::samples::stats(&s.samples))
        .map(|st| st.median)
}

/// What the provisioning figures mean, from this run's medians.
fn provision_findings(series: &[Series], deep: &str, cpus: u32) -> Vec<String> {
    let m = |d: &str, v: &str| median(series, d, v);
    let mut out = vec![];
    if let (Some(thin), Some(floor)) = (m("thin", "depth 1"), m("dm-ioctl", "depth 1")) {
        let mut text = format!(
            "thinlayer spends {:.1} ms per layer above the in-process ioctl floor ({:.1} ms against {:.1} ms).",
            thin - floor,
            thin,
            floor,
        );
        if let Some(phases) = phase_finding(series, thin, floor) {
            text.push(' ');
            text.push_str(&phases);
        }
        out.push(text);
    }
    let burst = series
        .iter()
        .find(|s| s.driver == "dm-ioctl" && s.variant.ends_with("containers at once"))
        .map(|s| s.variant.clone());
    if let Some(b) = burst {
        if let (Some(thin), Some(ov), Some(floor)) =
            (m("thin", &b), m("overlay", &b), m("dm-ioctl", &b))
        {
            out.push(format!(
                "{b}: thin {thin:.0} ms, overlay {ov:.0} ms ({:.2}×). The kernel's part of the same thin \
                 creates, made at once by threads with no records and no processes (the `dm-ioctl` \
                 column), takes {floor:.0} ms, {:.2}× overlay's burst and {:.0}% of thin's.",
                thin / ov,
                floor / ov,
                100.0 * floor / thin,
            ));
            if let Some(cpu) = burst_cpu_finding(series, &b, thin - ov, cpus) {
                out.push(cpu);
            }
            if let Some(open) = store_open_finding(series, &b, thin - ov, cpus) {
                out.push(open);
            }
            if let Some(fixed) = fixed_addresses_finding(series, &b, cpus) {
                out.push(fixed);
            }
            if let Some(phases) = burst_phase_finding(series, &b) {
                out.push(phases);
            }
        }
    }
    if let (Some(t1), Some(td), Some(f1), Some(fd)) = (
        m("thin", "depth 1"),
        m("thin", deep),
        m("dm-ioctl", "depth 1"),
        m("dm-ioctl", deep),
    ) {
        out.push(format!(
            "With depth, the floor itself goes from {f1:.1} ms to {fd:.1} ms ({:.2}×) at {deep}{}. thinlayer's \
             own part (thin − floor) goes from {:.1} ms to {:.1} ms, and thin as a whole by {:.2}×.",
            fd / f1,
            if fd / f1 > 1.05 {
                ": the same ioctls and mount on a deeper snapshot cost the kernel more"
            } else {
                ""
            },
            t1 - f1,
            td - fd,
            td / t1,
        ));
    }
    out
}

/// Where thin's layer (`thin` ms at depth 1, against the floor's `floor`)
/// spends its time, from the provisioning scenario's phase series: each
/// phase's median, thin's largest first, with overlay's beside it; the
/// phases on a thread of their own apart; and the kernel's part (what the
/// floor does too) against the floor.
fn phase_finding(series: &[Series], thin: f64, floor: f64) -> Option<String> {
    use crate::phases::{background, BACKGROUND, REST};
    use crate::scenarios::{phase_variant, PHASE};
    let mut phases: Vec<(&str, f64)> = series
        .iter()
        .filter(|s| s.driver == "thin")
        .filter_map(|s| {
            let name = s.variant.strip_prefix(PHASE)?;
            Some((name, median(series, "thin", &s.variant)?))
        })
        .collect();
    if phases.is_empty() {
        return None;
    }
    phases.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (bg, fg): (Vec<&(&str, f64)>, Vec<_>) =
        phases.iter().partition(|p| p.0.ends_with(BACKGROUND));
    let sum: f64 = fg.iter().map(|p| p.1).sum();
    let list = |of: &[&(&str, f64)]| -> String {
        of.iter()
            .map(|(name, ms)| {
                let ov = median(series, "overlay", &phase_variant(name))
                    .map(|o| format!(", overlay {o:.1} ms"))
                    .unwrap_or_default();
                format!("{name} {ms:.1} ms{ov}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut text = format!(
        "Timed phase by phase in the same runs (each phase's own time, the median over all depths; \
         the medians of the caller's thread add up to {sum:.1} ms, where the whole is {thin:.1} ms at \
         depth 1): {}.",
        list(&fg)
    );
    if !bg.is_empty() {
        text.push_str(&format!(
            " Alongside, on a thread of its own while the layer's record was made durable: {}.",
            list(&bg)
        ));
    }
    let get = |name: &str| phases.iter().find(|p| p.0 == name).map_or(0.0, |p| p.1);
    let (message, mount) = (get(thinpool::phase::MESSAGE), get(thinlayer::phase::MOUNT));
    let activation = get(thinpool::phase::ACTIVATE) + get(&background(thinpool::phase::ACTIVATE));
    let wait = get(thinlayer::phase::ACTIVATION_WAIT);
    let ours = sum - message - get(thinpool::phase::ACTIVATE) - mount - wait - get(REST);
    text.push_str(&format!(
        " The phases that do the floor's work (the dm message {message:.1} ms, the activation \
         {activation:.1} ms, the mount {mount:.1} ms) take {:.1} ms, against the floor's {floor:.1} ms",
        message + activation + mount
    ));
    if wait > 0.0 {
        text.push_str(&format!(
            "; the caller waited {wait:.1} ms for the activation after its own work"
        ));
    }
    text.push_str(&format!(
        ". thinlayer's own phases on the caller's thread (locks, journal, records, the pool's \
         checks and change log, the mount check) take {ours:.1} ms."
    ));
    Some(text)
}

/// What opening the store costs each process of a burst `burst` (the
/// [`crate::scenarios::STORE_OPEN`] series), thin against overlay, and how
/// much of thin's extra wall time `gap` that makes on `cpus` CPUs.
fn store_open_finding(series: &[Series], burst: &str, gap: f64, cpus: u32) -> Option<String> {
    let open = crate::scenarios::STORE_OPEN;
    let (thin, ov) = (
        median(series, "thin", open)?,
        median(series, "overlay", open)?,
    );
    let n: f64 = burst.split_whitespace().next()?.parse().ok()?;
    let extra = thin - ov;
    let mut text = format!(
        "A process opening the store (`thinlayer image ls`, one process after another) takes {thin:.1} ms \
         with thin and {ov:.1} ms with overlay: {:.1} ms {} for thin, whose store opens the pool (its record \
         read, its devices checked against the kernel's) and the thin driver.",
        extra.abs(),
        if extra >= 0.0 { "more" } else { "less" },
    );
    if extra > 0.0 && gap > 0.0 {
        let wall = n * extra / f64::from(cpus.max(1));
        let share = if wall > gap {
            format!(
                "more than the {gap:.0} ms by which thin's burst is longer: by this estimate the \
                 store's opening accounts for all of the gap"
            )
        } else {
            format!(
                "{:.0}% of the {gap:.0} ms by which thin's burst is longer",
                100.0 * wall / gap
            )
        };
        text.push_str(&format!(
            " Each of the burst's {n:.0} creates opens the store first: {:.0} ms of process time, which, \
             spread over {cpus} CPUs as the burst spreads it, is about {wall:.0} ms of wall time, {share} \
             (an estimate from the two series, which time the opening alone, not inside the burst).",
            n * extra,
        ));
    }
    Some(text)
}

/// What the burst `burst` and the store's opening cost with each process's
/// addresses fixed (the [`crate::scenarios::FIXED`] variants), against as
/// run: how much of thin's extra is code the emulator translates again in
/// every process, and what is left of the gap without it, on `cpus` CPUs.
fn fixed_addresses_finding(series: &[Series], burst: &str, cpus: u32) -> Option<String> {
    use crate::scenarios::STORE_OPEN;
    // thin's and overlay's medians of `variant`, as run or fixed.
    let both = |variant: &str, fixed: bool| {
        let v = crate::scenarios::fixed_variant(variant, fixed);
        Some((median(series, "thin", &v)?, median(series, "overlay", &v)?))
    };
    let (thin, ov) = both(burst, false)?;
    let (thin_f, ov_f) = both(burst, true)?;
    let (open_t, open_o) = both(STORE_OPEN, false)?;
    let (open_tf, open_of) = both(STORE_OPEN, true)?;
    let n: f64 = burst.split_whitespace().next()?.parse().ok()?;
    let signed = |x: f64| {
        format!(
            "{:.1} ms {}",
            x.abs(),
            if x >= 0.0 { "more" } else { "less" }
        )
    };
    let mut text = format!(
        "The machine is emulated (QEMU's TCG, the run's environment): a process's machine code runs once \
         translated, and translations are looked up by virtual address (QEMU, `include/exec/tb-lookup.h`), so \
         with addresses randomized no process finds what the processes before it translated. With each \
         process's addresses fixed (`setarch -R`), one process opening the store takes {open_tf:.1} ms with \
         thin and {open_of:.1} ms with overlay ({} for thin, against {} as deployed), and the burst takes \
         thin {thin_f:.0} ms and overlay {ov_f:.0} ms ({:.2}×, against {:.2}×).",
        signed(open_tf - open_of),
        signed(open_t - open_o),
        thin_f / ov_f,
        thin / ov,
    );
    let gap = thin_f - ov_f;
    if gap <= 0.0 {
        text.push_str(
            " With translations reused, thin's burst is within overlay's: what keeps it above as deployed is \
             code its processes translate anew, a cost of this emulated machine.",
        );
    } else {
        let wall = n * (open_tf - open_of).max(0.0) / f64::from(cpus.max(1));
        let share = if wall >= gap {
            "the store's opening still accounts for all of it".to_string()
        } else {
            format!(
                "the store's opening accounts for {:.0}% of it, so most of what keeps thin's burst above \
                 overlay's is in the creates themselves",
                100.0 * wall / gap
            )
        };
        text.push_str(&format!(
            " Even with translations reused, thin's burst is {gap:.0} ms longer. The openings' extra, {n:.0} \
             of them spread over {cpus} CPUs, comes to about {wall:.0} ms of wall time (an estimate from the \
             two series with addresses fixed): {share}."
        ));
    }
    Some(text)
}

/// Where each create of the burst `burst` spent its time, as it timed
/// itself (the [`crate::scenarios::CREATE_PHASE`] series, as deployed and
/// with addresses fixed): thin's command time against overlay's, and the
/// phases that differ most between them, the largest difference first.
fn burst_phase_finding(series: &[Series], burst: &str) -> Option<String> {
    use crate::scenarios::{fixed_variant, CREATE_PHASE, IN_COMMAND, PER_CREATE};
    let one = |fixed: bool| -> Option<String> {
        let v = fixed_variant(burst, fixed);
        let both = |row: &str| {
            let r = format!("{v}{row}");
            Some((median(series, "thin", &r)?, median(series, "overlay", &r)?))
        };
        let (cmd_t, cmd_o) = both(IN_COMMAND)?;
        let (end_t, end_o) = both(PER_CREATE)?;
        let prefix = format!("{v}{CREATE_PHASE}");
        let mut names: Vec<&str> = series
            .iter()
            .filter_map(|s| s.variant.strip_prefix(prefix.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut thin_only = 0.0;
        let mut diffs: Vec<(&str, f64, f64)> = names
            .into_iter()
            .map(|name| {
                let r = format!("{prefix}{name}");
                let t = median(series, "thin", &r).unwrap_or(0.0);
                let o = median(series, "overlay", &r);
                if o.is_none() {
                    thin_only += t;
                }
                (name, t, o.unwrap_or(0.0))
            })
            .collect();
        diffs.sort_by(|a, b| (b.1 - b.2).abs().total_cmp(&(a.1 - a.2).abs()));
        let list = diffs
            .iter()
            .take(5)
            .map(|(name, t, o)| format!("{name} {:+.1} ms (thin {t:.1}, overlay {o:.1})", t - o))
            .collect::<Vec<_>>()
            .join("; ");
        Some(format!(
            "{}a thin create's command took {cmd_t:.1} ms and overlay's {cmd_o:.1} ms ({:+.1} ms), and each \
             ended {end_t:.0} ms and {end_o:.0} ms after the burst's start ({:.0} ms and {:.0} ms of that \
             outside the command: the process's start, loading and exit, and its waits for a CPU); the \
             phases only thin has take {thin_only:.1} ms of its command; the phases that differ most: \
             {list}",
            if fixed { "With addresses fixed, " } else { "As deployed, " },
            cmd_t - cmd_o,
            end_t - cmd_t,
            end_o - cmd_o,
        ))
    };
    let deployed = one(false)?;
    let mut text = format!(
        "Each create of the burst timed its own phases (`--phases`; per burst, the mean over its creates, \
         then the median over the bursts; a phase's time includes its waits for a CPU and, as deployed, \
         the emulator's translation of the code it runs). {deployed}."
    );
    if let Some(fixed) = one(true) {
        text.push_str(&format!(" {fixed}."));
    }
    Some(text)
}

/// The medians of `driver`'s CPU split over `variant` (the series
/// `{variant}: CPU …` of [`crate::scenarios::CPU_SPLIT`]): user space, the
/// kernel, idle or waiting.
fn cpu_split(series: &[Series], driver: &str, variant: &str) -> Option<[f64; 3]> {
    let mut out = [0.0; 3];
    for (o, what) in out.iter_mut().zip(crate::scenarios::CPU_SPLIT) {
        *o = median(series, driver, &format!("{variant}: {what}"))?;
    }
    Some(out)
}

/// Where a burst's CPU time went (`/proc/stat`, the whole machine), thin
/// against overlay, and how much of thin's extra wall time `gap` the
/// kernel's extra time covers on `cpus` CPUs.
fn burst_cpu_finding(series: &[Series], burst: &str, gap: f64, cpus: u32) -> Option<String> {
    let split = |d: &str| cpu_split(series, d, burst);
    let ([tu, tk, ti], [ou, ok, oi]) = (split("thin")?, split("overlay")?);
    let n = f64::from(cpus.max(1));
    let more = |x: f64| if x >= 0.0 { "more" } else { "less" };
    let (du, dk, di) = (tu - ou, tk - ok, ti - oi);
    let floor = split("dm-ioctl")
        .map(|[fu, fk, fi]| {
            format!(
                " The floor's threads, which make only the kernel's part of thin's creates, kept the \
                 CPUs {fk:.0} ms in the kernel and {fu:.0} ms in user space, and left them idle or \
                 waiting for {fi:.0} ms while nothing else ran: {:.0} ms of the machine's time against the {:.0} ms more that thin's burst takes in the \
                 kernel and idle.",
                fk + fi,
                dk + di,
            )
        })
        .unwrap_or_default();
    let verdict = if gap <= 0.0 {
        String::new()
    } else if dk / n >= gap {
        format!(
            " Spread over {cpus} CPUs, thin's extra kernel time alone is {:.0} ms of wall time, more than \
             the {gap:.0} ms by which its burst is longer: the kernel's extra work for thin's creates is \
             what keeps its burst above overlay's on this machine (thinlayer's own user-space time is \
             {:.0} ms of wall time {} than overlay's).",
            dk / n,
            du.abs() / n,
            more(du),
        )
    } else {
        format!(
            " Spread over {cpus} CPUs, thin's extra kernel time is {:.0} ms of wall time, {:.0}% of the \
             {gap:.0} ms by which its burst is longer; its user-space time is {:.0} ms of wall time {}, \
             and its idle or waiting time {:.0} ms {}.",
            dk.max(0.0) / n,
            100.0 * dk.max(0.0) / n / gap,
            du.abs() / n,
            more(du),
            di.abs() / n,
            more(di),
        )
    };
    Some(format!(
        "Counted over the whole machine (`/proc/stat`, all {cpus} CPUs), thin's burst spent {tk:.0} ms of CPU \
         time in the kernel, {tu:.0} ms in user space, and left the CPUs idle or waiting on I/O for {ti:.0} \
         ms; overlay's {ok:.0} ms, {ou:.0} ms and {oi:.0} ms. Thin's takes {:.0} ms {} in the kernel, \
         {:.0} ms {} in user space, and {:.0} ms {} idle or waiting.{floor}{verdict}",
        dk.abs(),
        more(dk),
        du.abs(),
        more(du),
        di.abs(),
        more(di),
    ))
}

/// What the import figures mean, from this run's medians, on a machine
/// of `cpus` cores: the gzip image against its bound, where the time goes,
/// and the uncompressed image.
fn import_findings(series: &[Series], cpus: u32) -> Vec<String> {
    let mut out: Vec<String> = gzip_import_finding(series, cpus).into_iter().collect();
    if !out.is_empty() {
        out.extend(import_cpu_finding(series, cpus));
        out.extend(plain_import_finding(series, cpus));
    }
    out
}

/// The fastest an import that checks can run, in bytes per second: GNU
/// tar's work (`tar_cpu` bytes per CPU second) and the sha256 `passes`
/// (bytes per second each, one thread) spread at best evenly over `cpus`
/// cores, and no faster than its slowest sequential stream (`streams`).
/// Returns the bound and the CPU seconds per byte of that work.
fn import_bound(tar_cpu: f64, passes: &[f64], streams: &[f64], cpus: u32) -> (f64, f64) {
    let work = 1.0 / tar_cpu + passes.iter().map(|p| 1.0 / p).sum::<f64>();
    let longest = streams.iter().map(|s| 1.0 / s).fold(0.0, f64::max);
    (1.0 / longest.max(work / f64::from(cpus.max(1))), work)
}

/// The gzip image: thin and overlay against GNU tar, and the bound that
/// the checks' CPU time sets on this machine.
fn gzip_import_finding(series: &[Series], cpus: u32) -> Option<String> {
    use crate::scenarios::{IMPORT_GZIP, TAR_CPU, VERIFY_BLOB, VERIFY_INFLATE, VERIFY_TAR};
    let m = |d: &str| median(series, d, IMPORT_GZIP);
    let (thin, ov, tar, blob, inflate, tarsum, tar_cpu) = (
        m("thin")?,
        m("overlay")?,
        m("gnu-tar (ext4)")?,
        m(VERIFY_BLOB)?,
        m(VERIFY_INFLATE)?,
        m(VERIFY_TAR)?,
        m(TAR_CPU)?,
    );
    // Seconds per byte. An import that checks does GNU tar's work
    // (inflating, extracting) and the two sha256 passes.
    let (bound, work) = import_bound(tar_cpu, &[blob, tarsum], &[blob, inflate, tarsum], cpus);
    let slowest = blob.min(inflate).min(tarsum);
    let verdict = if thin / tar >= 0.8 {
        format!(
            "thin meets the 0.8 target here ({:.2} of GNU tar).",
            thin / tar
        )
    } else if bound < 0.8 * tar {
        format!(
            "That is {:.2} of GNU tar's {:.1} MiB/s: on this machine the checks' CPU time alone keeps an \
             import that makes them under the 0.8 target; thin reaches {:.2} of the bound.",
            bound / tar,
            mib(tar),
            thin / bound
        )
    } else {
        format!(
            "That is {:.2} of GNU tar's {:.1} MiB/s, so the checks' CPU time does not rule out the 0.8 \
             target here; thin reaches {:.2} of the bound.",
            bound / tar,
            mib(tar),
            thin / bound
        )
    };
    Some(format!(
        "thin imports at {:.1} MiB/s and overlay at {:.1} MiB/s; both share the import path (read, \
         verify, inflate, apply), and only the last step differs between them. GNU tar checks nothing \
         but gzip's CRC; thinlayer also checks each layer's blob digest and diff_id, two sha256 passes. \
         Timed alone, one thread each, the sha256 of the blobs runs at {:.1} MiB/s, inflating at {:.1} \
         MiB/s and the sha256 of the tars at {:.1} MiB/s; GNU tar's extraction into ext4 spent one CPU \
         second per {:.1} MiB. GNU tar's work plus the two passes is {:.2} CPU seconds per 100 MiB, \
         so on this machine's {cpus} cores an import that checks runs at most at {:.1} MiB/s (and no \
         faster than its slowest sequential stream, {:.1} MiB/s). {verdict}",
        mib(thin),
        mib(ov),
        mib(blob),
        mib(inflate),
        mib(tarsum),
        mib(tar_cpu),
        work * 100.0 * (1 << 20) as f64,
        mib(bound),
        mib(slowest),
    ))
}

/// Where one import of the gzip image spent the machine's time, thin
/// against GNU tar into ext4, beside what the checks cost at the rates
/// they run alone.
fn import_cpu_finding(series: &[Series], cpus: u32) -> Option<String> {
    use crate::scenarios::{IMAGE_BYTES, IMPORT_GZIP, VERIFY_BLOB, VERIFY_INFLATE, VERIFY_TAR};
    let split = |d: &str| cpu_split(series, d, IMPORT_GZIP);
    let ([tu, tk, ti], [gu, gk, gi]) = (split("thin")?, split("gnu-tar (ext4)")?);
    let bytes = median(series, IMAGE_BYTES.0, IMAGE_BYTES.1)?;
    let g = |d: &str| median(series, d, IMPORT_GZIP);
    let (blob, inflate, tarsum) = (g(VERIFY_BLOB)?, g(VERIFY_INFLATE)?, g(VERIFY_TAR)?);
    let ms = |rate: f64| 1000.0 * bytes / rate;
    let passes = ms(blob) + ms(tarsum);
    let more = |x: f64| if x >= 0.0 { "more" } else { "less" };
    let (du, dk, di) = (tu - gu, tk - gk, ti - gi);
    let share = if passes >= du {
        ", as much as thin's whole extra user-space time or more".to_string()
    } else {
        format!(
            ": {:.0}% of thin's extra user-space time",
            100.0 * passes / du
        )
    };
    Some(format!(
        "Where the time goes, over the whole machine (`/proc/stat`, all {cpus} CPUs), for one import of \
         the gzip image: thin's kept the CPUs {tu:.0} ms in user space and {tk:.0} ms in the kernel, and \
         left them idle or waiting on I/O for {ti:.0} ms; GNU tar's extraction into ext4 {gu:.0} ms, \
         {gk:.0} ms and {gi:.0} ms. Thin's import takes {:.0} ms {} in user space, {:.0} ms {} in the \
         kernel and {:.0} ms {} idle or waiting. At the rates they run alone, the two sha256 passes over \
         the image's {:.1} MiB take {passes:.0} ms of CPU{share}; inflating it takes {:.0} ms (GNU \
         tar's gzip inflates too, inside its user-space time).",
        du.abs(),
        more(du),
        dk.abs(),
        more(dk),
        di.abs(),
        more(di),
        mib(bytes),
        ms(inflate),
    ))
}

/// The uncompressed image: one sha256 pass per layer, and its bound.
fn plain_import_finding(series: &[Series], cpus: u32) -> Option<String> {
    use crate::scenarios::{IMPORT_GZIP, IMPORT_PLAIN, TAR_CPU, VERIFY_TAR};
    let m = |d: &str| median(series, d, IMPORT_PLAIN);
    let (thin, ov, tar, dir, tar_cpu) = (
        m("thin")?,
        m("overlay")?,
        m("gnu-tar (ext4)")?,
        m("gnu-tar (dir)")?,
        m(TAR_CPU)?,
    );
    let tarsum = median(series, VERIFY_TAR, IMPORT_GZIP)?;
    let thin_gzip = median(series, "thin", IMPORT_GZIP)?;
    let (bound, work) = import_bound(tar_cpu, &[tarsum], &[tarsum], cpus);
    Some(format!(
        "With the layers uncompressed (the same image as skopeo copies it), each blob's digest is its \
         diff_id and thinlayer hashes it once: thin imports at {:.1} MiB/s, {:.2}× its import of the gzip \
         image, against GNU tar's {:.1} MiB/s into ext4 ({:.2}); overlay at {:.1} MiB/s against {:.1} \
         MiB/s into a directory ({:.2}). GNU tar's `tar -xf` spent one CPU second per {:.1} MiB; with the \
         one sha256 pass ({:.1} MiB/s alone) that is {:.2} CPU seconds per 100 MiB, so on {cpus} cores \
         an import that checks runs at most at {:.1} MiB/s here, {:.2} of GNU tar; thin reaches {:.2} \
         of that bound.",
        mib(thin),
        thin / thin_gzip,
        mib(tar),
        thin / tar,
        mib(ov),
        mib(dir),
        ov / dir,
        mib(tar_cpu),
        mib(tarsum),
        work * 100.0 * (1 << 20) as f64,
        mib(bound),
        bound / tar,
        thin / bound,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::Unit;

    fn series(driver: &str, variant: &str, x: Option<f64>, v: f64) -> Series {
        Series {
            driver: driver.into(),
            variant: variant.into(),
            x,
            samples: vec![v, v],
            unit: None,
        }
    }

    /// A run's environment with `cpus` CPUs and a 256 KiB pool block.
    fn env(cpus: u32) -> Environment {
        Environment {
            kernel: "6.1.0".into(),
            cpus,
            memory_bytes: 8 << 30,
            emulated: true,
            quick: false,
            started_unix: 0,
            duration_secs: 1.0,
            thinlayer_version: "0.1.0".into(),
            command: "thinlayer-bench".into(),
            notes: vec![],
            pool_block_bytes: Some(256 << 10),
        }
    }

    fn scenario(id: &str, series: Vec<Series>) -> Scenario {
        Scenario {
            id: id.into(),
            number: 1,
            title: String::new(),
            description: String::new(),
            unit: Unit::Millis,
            series,
            ratios: vec![],
            plot: None,
            findings: vec![],
        }
    }

    #[test]
    fn plain_provisioning_findings_use_the_deepest_depth_and_say_whether_the_floor_grew() {
        let s = scenario(
            "provision",
            vec![
                series("thin", "depth 1", Some(1.0), 100.0),
                series("thin", "depth 64", Some(64.0), 110.0),
                series("dm-ioctl", "depth 1", Some(1.0), 50.0),
                series("dm-ioctl", "depth 64", Some(64.0), 60.0),
                series("record write", "one durable record", None, 10.0),
                series("record write", "one log entry", None, 1.0),
            ],
        );
        let f = findings(&s, &env(2));
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("50.0 ms per layer above"), "{}", f[0]);
        assert!(f[1].contains("at depth 64: the same ioctls"), "{}", f[1]);
        assert!(f[1].contains("1.10×"), "{}", f[1]);
    }

    #[test]
    fn plain_missing_series_give_no_findings_rather_than_wrong_ones() {
        let s = scenario("import", vec![series("thin", "3 layers", None, 1.0)]);
        assert!(findings(&s, &env(2)).is_empty());
        assert!(findings(&scenario("nonesuch", vec![]), &env(2)).is_empty());
    }

    #[test]
    fn plain_import_bound_is_tars_cpu_time_and_the_checks_over_the_cores() {
        use crate::scenarios::{TAR_CPU, VERIFY_BLOB, VERIFY_INFLATE, VERIFY_TAR};
        let mib = (1u64 << 20) as f64;
        let import = |tar: f64, tar_cpu: f64, blob: f64, tarsum: f64| {
            scenario(
                "import",
                vec![
                    series("thin", "3 layers", None, 8.0 * mib),
                    series("overlay", "3 layers", None, 9.0 * mib),
                    series("gnu-tar (ext4)", "3 layers", None, tar * mib),
                    series(TAR_CPU, "3 layers", None, tar_cpu * mib),
                    series(VERIFY_BLOB, "3 layers", None, blob * mib),
                    series(VERIFY_INFLATE, "3 layers", None, 80.0 * mib),
                    series(VERIFY_TAR, "3 layers", None, tarsum * mib),
                ],
            )
        };
        // 1/40 + 1/40 + 1/40 = 3/40 s per MiB over two cores: 26.7 MiB/s,
        // under 0.8 × 50: the checks' CPU time bounds it.
        let f = findings(&import(50.0, 40.0, 40.0, 40.0), &env(2));
        assert!(f[0].contains("runs at most at 26.7 MiB/s"), "{}", f[0]);
        assert!(f[0].contains("alone keeps an import"), "{}", f[0]);
        assert!(f[0].contains("thin reaches 0.30 of the bound"), "{}", f[0]);
        // On 8 cores the slowest stream (40 MiB/s) bounds it: 40 ≥ 0.8 × 50.
        let f = findings(&import(50.0, 40.0, 40.0, 40.0), &env(8));
        assert!(f[0].contains("runs at most at 40.0 MiB/s"), "{}", f[0]);
        assert!(f[0].contains("does not rule out the 0.8"), "{}", f[0]);
    }

    #[test]
    fn plain_import_says_where_the_time_goes_and_bounds_the_uncompressed_image() {
        use crate::scenarios::{
            CPU_SPLIT, IMAGE_BYTES, IMPORT_GZIP, IMPORT_PLAIN, TAR_CPU, VERIFY_BLOB,
            VERIFY_INFLATE, VERIFY_TAR,
        };
        let mib = (1u64 << 20) as f64;
        let mut all = vec![
            series(IMAGE_BYTES.0, IMAGE_BYTES.1, None, 100.0 * mib),
            series("thin", IMPORT_GZIP, None, 20.0 * mib),
            series("overlay", IMPORT_GZIP, None, 25.0 * mib),
            series("gnu-tar (ext4)", IMPORT_GZIP, None, 40.0 * mib),
            series(TAR_CPU, IMPORT_GZIP, None, 30.0 * mib),
            series(VERIFY_BLOB, IMPORT_GZIP, None, 50.0 * mib),
            series(VERIFY_INFLATE, IMPORT_GZIP, None, 100.0 * mib),
            series(VERIFY_TAR, IMPORT_GZIP, None, 50.0 * mib),
            series("thin", IMPORT_PLAIN, None, 30.0 * mib),
            series("overlay", IMPORT_PLAIN, None, 36.0 * mib),
            series("gnu-tar (ext4)", IMPORT_PLAIN, None, 60.0 * mib),
            series("gnu-tar (dir)", IMPORT_PLAIN, None, 72.0 * mib),
            series(TAR_CPU, IMPORT_PLAIN, None, 50.0 * mib),
        ];
        for (d, parts) in [
            ("thin", [9000.0, 3000.0, 1000.0]),
            ("gnu-tar (ext4)", [3000.0, 1500.0, 500.0]),
        ] {
            for (what, v) in CPU_SPLIT.iter().zip(parts) {
                all.push(series(d, &format!("{IMPORT_GZIP}: {what}"), None, v));
            }
        }
        let f = findings(&scenario("import", all.clone()), &env(2));
        assert_eq!(f.len(), 3, "{f:?}");
        // 100 MiB at 50 MiB/s, twice: 4000 ms; inflating at 100 MiB/s: 1000 ms.
        assert!(
            f[1].contains(
                "6000 ms more in user space, 1500 ms more in the kernel and 500 ms more idle"
            ),
            "{}",
            f[1]
        );
        assert!(
            f[1].contains(
                "take 4000 ms of CPU: 67% of thin's extra user-space time; inflating it takes 1000 ms"
            ),
            "{}",
            f[1]
        );
        // 1/50 + 1/50 s per MiB over two cores: 50 MiB/s, 0.83 of GNU tar.
        assert!(f[2].contains("1.50× its import of the gzip"), "{}", f[2]);
        assert!(
            f[2].contains("runs at most at 50.0 MiB/s here, 0.83 of GNU tar"),
            "{}",
            f[2]
        );
        assert!(f[2].contains("thin reaches 0.60 of that bound"), "{}", f[2]);
        // Without the CPU rows, the others still stand.
        all.retain(|s| !s.variant.contains("CPU"));
        assert_eq!(findings(&scenario("import", all), &env(2)).len(), 2);
    }

    #[test]
    fn plain_benchsuite_floor_says_whether_the_kernel_bounds_the_overlayfs_target() {
        use crate::scenarios::containerd_bench::{DEVMAPPER, FLOOR, OVERLAY, OVERLAYFS, THIN};
        let run = |floor: f64| {
            let mut all = vec![];
            for (d, total) in [
                (THIN, 3800.0),
                (DEVMAPPER, 12000.0),
                (OVERLAYFS, 1900.0),
                (OVERLAY, 2600.0),
                (FLOOR, floor),
            ] {
                all.push(series(d, "total", None, total));
                all.push(series(
                    d,
                    "write (mount, write, unmount)",
                    None,
                    total / 2.0,
                ));
                all.push(series(d, "prepare", None, total / 10.0));
                all.push(series(d, "commit", None, total / 20.0));
            }
            findings(&scenario("containerd-bench", all), &env(2)).join(" ")
        };
        let f = run(3500.0);
        // Per layer: (380 - 350) / 16, (1900 - 1750) / 16, (190 - 175) / 16.
        assert!(
            f.contains("1.9 ms per layer above the floor in prepare"),
            "{f}"
        );
        assert!(f.contains("9.4 ms in write and 0.9 ms in commit"), "{f}");
        assert!(f.contains("takes 6.00 s there, 3.16× thin's"), "{f}");
        assert!(
            f.contains("1.84× containerd's overlayfs here, so no dm-thin snapshotter"),
            "{f}"
        );
        assert!(f.contains("takes 1.09× that floor, 0.30 s above it"), "{f}");
        let f = run(1500.0);
        assert!(f.contains("the kernel does not stand in the way"), "{f}");
    }

    #[test]
    fn plain_benchsuite_findings_weigh_the_rcu_wait_and_say_what_is_left_without_it() {
        use crate::scenarios::containerd_bench::{
            DEVMAPPER, FLOOR, FLOOR_EXPEDITED, OVERLAY, OVERLAYFS, THIN, THIN_EXPEDITED, UNMOUNT,
        };
        let (prepare, write) = ("prepare", "write (mount, write, unmount)");
        // The expedited floor's total and write phase.
        let run = |expedited_total: f64, expedited_write: f64| {
            let mut all = vec![];
            for (d, total) in [
                (THIN, 3800.0),
                (DEVMAPPER, 12000.0),
                (OVERLAYFS, 2000.0),
                (OVERLAY, 2100.0),
                (FLOOR, 2800.0),
                (THIN_EXPEDITED, 3300.0),
            ] {
                all.push(series(d, "total", None, total));
            }
            all.push(series(FLOOR, prepare, None, 400.0));
            all.push(series(OVERLAYFS, write, None, 1900.0));
            all.push(series(FLOOR_EXPEDITED, "total", None, expedited_total));
            all.push(series(FLOOR_EXPEDITED, prepare, None, 80.0));
            all.push(series(FLOOR_EXPEDITED, write, None, expedited_write));
            all.push(series(FLOOR_EXPEDITED, UNMOUNT, None, 700.0));
            findings(&scenario("containerd-bench", all), &env(2)).join(" ")
        };
        let f = run(2400.0, 2300.0);
        // (400 - 80) / 16 layers.
        assert!(
            f.contains(
                "the floor's prepare phase takes 0.08 s against 0.40 s: 20.0 ms less per layer"
            ),
            "{f}"
        );
        assert!(
            f.contains("takes 2.40 s in total (1.20× containerd's overlayfs, against 1.40×"),
            "{f}"
        );
        assert!(
            f.contains("thinlayer's thin driver 3.30 s (1.65×, against 1.90×)"),
            "{f}"
        );
        assert!(
            f.contains("write phase takes 2.30 s against overlayfs's 1.90 s, and 0.70 s of it is the unmounts"),
            "{f}"
        );
        let f = run(1900.0, 1800.0);
        assert!(
            f.contains("Without that wait the floor is within the ≤ 1.0 target"),
            "{f}"
        );
        assert!(!f.contains("Even without that wait"), "{f}");
    }

    #[test]
    fn plain_burst_findings_split_the_cpu_time_and_weigh_the_kernels_extra_against_the_gap() {
        use crate::scenarios::CPU_SPLIT;
        let v = "16 containers at once";
        // thin 400 ms longer; on 2 CPUs, `kernel` ms more in the kernel.
        let run = |kernel: f64| {
            let mut all = vec![
                series("thin", "depth 1", Some(1.0), 50.0),
                series("thin", v, None, 3100.0),
                series("overlay", v, None, 2700.0),
                series("dm-ioctl", v, None, 520.0),
            ];
            for (d, cpu) in [
                ("thin", [3000.0, 1500.0 + kernel, 500.0]),
                ("overlay", [3100.0, 1500.0, 400.0]),
                ("dm-ioctl", [30.0, 700.0, 300.0]),
            ] {
                for (what, ms) in CPU_SPLIT.iter().zip(cpu) {
                    all.push(series(d, &format!("{v}: {what}"), None, ms));
                }
            }
            findings(&scenario("provision", all), &env(2)).join(" ")
        };
        let f = run(1000.0);
        assert!(
            f.contains("takes 520 ms, 0.19× overlay's burst and 17% of thin's"),
            "{f}"
        );
        assert!(
            f.contains(
                "thin's burst spent 2500 ms of CPU time in the kernel, 3000 ms in user space"
            ),
            "{f}"
        );
        assert!(
            f.contains("Thin's takes 1000 ms more in the kernel, 100 ms less in user space"),
            "{f}"
        );
        assert!(
            f.contains(
                "kept the CPUs 700 ms in the kernel and 30 ms in user space, and left them idle"
            ) && f.contains("for 300 ms while nothing else ran: 1000 ms of the machine's time against the 1100 ms more"),
            "{f}"
        );
        assert!(
            f.contains("extra kernel time alone is 500 ms of wall time, more than the 400 ms")
                && f.contains("is 50 ms of wall time less than overlay's"),
            "{f}"
        );
        let f = run(400.0);
        assert!(
            f.contains("extra kernel time is 200 ms of wall time, 50% of the 400 ms"),
            "{f}"
        );
        assert!(!f.contains("what keeps its burst above"), "{f}");
    }

    #[test]
    fn plain_burst_findings_list_the_creates_phases_that_differ_most() {
        use crate::scenarios::{CREATE_PHASE, FIXED, IN_COMMAND, PER_CREATE};
        let v = "16 containers at once";
        let mut all = vec![
            series("thin", "depth 1", Some(1.0), 50.0),
            series("thin", v, None, 3100.0),
            series("overlay", v, None, 2700.0),
            series("dm-ioctl", v, None, 520.0),
        ];
        let mut add = |variant: &str, rows: &[(&str, f64, f64)]| {
            for (row, t, o) in rows {
                all.push(series("thin", &format!("{variant}{row}"), None, *t));
                all.push(series("overlay", &format!("{variant}{row}"), None, *o));
            }
        };
        let phase = |name: &str| format!("{CREATE_PHASE}{name}");
        let (lock, open, msg) = (
            phase("containers: lock"),
            phase("store: open"),
            phase("pool: dm message"),
        );
        add(
            v,
            &[
                (IN_COMMAND, 400.0, 300.0),
                (PER_CREATE, 1500.0, 1300.0),
                (&lock, 50.0, 80.0),
                (&open, 120.0, 60.0),
            ],
        );
        // A phase overlay does not have counts as 0 ms for it.
        all.push(series("thin", &format!("{v}{msg}"), None, 10.0));
        let fixed = format!("{v}{FIXED}");
        let f = findings(&scenario("provision", all.clone()), &env(2)).join(" ");
        assert!(
            f.contains(
                "As deployed, a thin create's command took 400.0 ms and overlay's 300.0 ms (+100.0 ms), and each \
                 ended 1500 ms and 1300 ms after the burst's start (1100 ms and 1000 ms of that outside"
            ),
            "{f}"
        );
        // The largest difference first, whatever its sign.
        assert!(
            f.contains(
                "only thin has take 10.0 ms of its command; the phases that differ most: store: open +60.0 ms (thin 120.0, overlay 60.0); containers: lock -30.0 ms \
                 (thin 50.0, overlay 80.0); pool: dm message +10.0 ms (thin 10.0, overlay 0.0)."
            ),
            "{f}"
        );
        assert!(!f.contains("With addresses fixed, a thin create"), "{f}");
        let mut with_fixed = all;
        for (row, t, o) in [(IN_COMMAND, 200.0, 190.0), (PER_CREATE, 900.0, 880.0)] {
            with_fixed.push(series("thin", &format!("{fixed}{row}"), None, t));
            with_fixed.push(series("overlay", &format!("{fixed}{row}"), None, o));
        }
        let f = findings(&scenario("provision", with_fixed), &env(2)).join(" ");
        assert!(
            f.contains("With addresses fixed, a thin create's command took 200.0 ms and overlay's 190.0 ms (+10.0 ms)"),
            "{f}"
        );
    }

    #[test]
    fn plain_burst_findings_say_what_is_left_of_the_gap_with_addresses_fixed() {
        use crate::scenarios::{FIXED, STORE_OPEN};
        let v = "16 containers at once";
        let run = |thin_fixed: f64, thin_open_fixed: f64| {
            let all = vec![
                series("thin", "depth 1", Some(1.0), 50.0),
                series("thin", v, None, 3100.0),
                series("overlay", v, None, 2700.0),
                series("dm-ioctl", v, None, 520.0),
                series("thin", STORE_OPEN, None, 125.0),
                series("overlay", STORE_OPEN, None, 100.0),
                series("thin", &format!("{v}{FIXED}"), None, thin_fixed),
                series("overlay", &format!("{v}{FIXED}"), None, 2000.0),
                series(
                    "thin",
                    &format!("{STORE_OPEN}{FIXED}"),
                    None,
                    thin_open_fixed,
                ),
                series("overlay", &format!("{STORE_OPEN}{FIXED}"), None, 60.0),
            ];
            findings(&scenario("provision", all), &env(2)).join(" ")
        };
        // Fixed: 200 ms longer; the openings 5 ms more each, 16 over 2
        // CPUs: 40 ms, 20% of it.
        let f = run(2200.0, 65.0);
        assert!(
            f.contains("takes 65.0 ms with thin and 60.0 ms with overlay (5.0 ms more for thin, against 25.0 ms more as deployed)"),
            "{f}"
        );
        assert!(
            f.contains("the burst takes thin 2200 ms and overlay 2000 ms (1.10×, against 1.15×)"),
            "{f}"
        );
        assert!(
            f.contains("thin's burst is 200 ms longer")
                && f.contains("comes to about 40 ms of wall time")
                && f.contains("the store's opening accounts for 20% of it, so most"),
            "{f}"
        );
        // Openings 30 ms more each: 240 ms, more than the 200 ms.
        let f = run(2200.0, 90.0);
        assert!(
            f.contains("the store's opening still accounts for all of it"),
            "{f}"
        );
        // Fixed, thin's burst is no longer than overlay's.
        let f = run(1990.0, 58.0);
        assert!(
            f.contains("(2.0 ms less for thin, against 25.0 ms more as deployed)")
                && f.contains("thin's burst is within overlay's"),
            "{f}"
        );
        assert!(!f.contains("Even with translations reused"), "{f}");
        // Without the fixed series the finding is left out.
        let all = vec![
            series("thin", v, None, 3100.0),
            series("overlay", v, None, 2700.0),
            series("dm-ioctl", v, None, 520.0),
            series("thin", STORE_OPEN, None, 125.0),
            series("overlay", STORE_OPEN, None, 100.0),
        ];
        let f = findings(&scenario("provision", all), &env(2)).join(" ");
        assert!(!f.contains("setarch"), "{f}");
    }

    #[test]
    fn plain_burst_findings_weigh_what_opening_the_store_costs_against_the_gap() {
        use crate::scenarios::STORE_OPEN;
        let v = "16 containers at once";
        let run = |thin_open: f64| {
            let all = vec![
                series("thin", "depth 1", Some(1.0), 50.0),
                series("thin", v, None, 3100.0),
                series("overlay", v, None, 2700.0),
                series("dm-ioctl", v, None, 520.0),
                series("thin", STORE_OPEN, None, thin_open),
                series("overlay", STORE_OPEN, None, 100.0),
            ];
            findings(&scenario("provision", all), &env(2)).join(" ")
        };
        // 25 ms more per process, 16 processes over 2 CPUs: 200 ms of the
        // 400 ms gap.
        let f = run(125.0);
        assert!(
            f.contains("takes 125.0 ms with thin and 100.0 ms with overlay: 25.0 ms more for thin"),
            "{f}"
        );
        assert!(
            f.contains("400 ms of process time")
                && f.contains("about 200 ms of wall time, 50% of the 400 ms"),
            "{f}"
        );
        // 60 ms more: 480 ms of wall time, more than the whole gap.
        let f = run(160.0);
        assert!(
            f.contains(
                "about 480 ms of wall time, more than the 400 ms by which thin's burst is longer"
            ),
            "{f}"
        );
        assert!(!f.contains("120% of"), "{f}");
        // Cheaper for thin: no share of the gap is claimed.
        let f = run(90.0);
        assert!(f.contains("10.0 ms less for thin"), "{f}");
        assert!(!f.contains("of process time"), "{f}");
    }

    #[test]
    fn plain_space_findings_say_what_the_host_got_back_and_what_a_new_pool_holds() {
        let mib = |x: f64| x * (1u64 << 20) as f64;
        let fresh = "right after `pool create` (default 10G base)";
        let gone = "container rm after scenarios 2–4";
        let mut all = vec![];
        for (i, step) in ["first", "second", "third"].iter().enumerate() {
            let k = (i + 1) as f64;
            all.push(series("thin (pool data)", step, None, mib(k)));
            all.push(series("overlay (upper dir)", step, None, mib(2.0 * k)));
        }
        all.push(series("thin (pool data freed)", gone, None, mib(100.0)));
        all.push(series("thin (data file freed)", gone, None, mib(95.0)));
        all.push(series("thin (pool data)", fresh, None, mib(5.0)));
        all.push(series("thin (pool data size)", fresh, None, mib(2048.0)));
        let f = findings(&scenario("space", all.clone()), &env(2)).join(" ");
        assert!(
            f.contains("gave 95.0 MiB of it back") && f.contains("(95%)"),
            "{f}"
        );
        // The block size is the run's, and named only when it recorded it.
        assert!(f.contains("a 256 KiB pool block per write"), "{f}");
        let mut old = env(2);
        old.pool_block_bytes = None;
        let f_old = findings(&scenario("space", all), &old).join(" ");
        assert!(f_old.contains("a pool block per write"), "{f_old}");
        assert!(!f_old.contains("KiB pool block"), "{f_old}");
        assert!(f.contains("holds 5.0 MiB of its 2048 MiB"), "{f}");
        assert!(
            f.contains("After the first writes thin holds 1.00 MiB"),
            "{f}"
        );
    }

    #[test]
    fn plain_provisioning_findings_split_the_layer_by_its_timed_phases() {
        use crate::phases::{background, REST};
        use crate::scenarios::phase_variant;
        use thinlayer::phase as store;
        use thinpool::phase as pool;
        let p = |drv: &str, name: &str, ms: f64| series(drv, &phase_variant(name), None, ms);
        let s = scenario(
            "provision",
            vec![
                series("thin", "depth 1", Some(1.0), 60.0),
                series("thin", "depth 64", Some(64.0), 62.0),
                series("dm-ioctl", "depth 1", Some(1.0), 40.0),
                series("dm-ioctl", "depth 64", Some(64.0), 41.0),
                p("thin", pool::MESSAGE, 8.0),
                p("thin", &background(pool::ACTIVATE), 24.0),
                p("thin", &background(pool::LOCK), 0.5),
                p("thin", store::ACTIVATION_WAIT, 12.0),
                p("thin", store::MOUNT, 7.0),
                p("thin", store::RECORD, 5.0),
                p("thin", store::END, 4.0),
                p("thin", pool::LOG, 2.0),
                p("thin", REST, 2.0),
                p("overlay", store::RECORD, 4.5),
            ],
        );
        let f = findings(&s, &env(2)).join(" ");
        assert!(f.contains("20.0 ms per layer above"), "{f}");
        // The caller's phases add up (8 + 12 + 7 + 5 + 4 + 2 + 2), the
        // largest first, overlay's beside thin's; the thread's apart.
        assert!(
            f.contains("add up to 40.0 ms, where the whole is 60.0 ms"),
            "{f}"
        );
        assert!(
            f.contains(&format!(
                "{} 12.0 ms; {} 8.0 ms",
                store::ACTIVATION_WAIT,
                pool::MESSAGE
            )),
            "{f}"
        );
        assert!(
            f.contains(&format!("{} 5.0 ms, overlay 4.5 ms", store::RECORD)),
            "{f}"
        );
        assert!(
            f.contains(&format!(
                "on a thread of its own while the layer's record was made durable: {} 24.0 ms; {} 0.5 ms",
                background(pool::ACTIVATE),
                background(pool::LOCK)
            )),
            "{f}"
        );
        // The floor's work: message, activation (wherever it ran), mount;
        // thinlayer's own: record, end, log (11 ms).
        assert!(
            f.contains("take 39.0 ms, against the floor's 40.0 ms")
                && f.contains("the caller waited 12.0 ms for the activation")
                && f.contains("caller's thread (locks, journal, records, the pool's checks and change log, the mount check) take 11.0 ms"),
            "{f}"
        );
        // Without phase series, the gap alone.
        let mut old = s.clone();
        old.series.truncate(4);
        let f = findings(&old, &env(2)).join(" ");
        assert!(
            f.contains("20.0 ms per layer above") && !f.contains("phase by phase"),
            "{f}"
        );
    }
}
