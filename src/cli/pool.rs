//! `thinlayer pool ...`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use thinlayer::driver::thin::FsType;
use thinlayer::thinpool::pool::MetadataCheck;
use thinlayer::thinpool::pool::{AutoextendChange, SettingsChange};
use thinlayer::thinpool::{
    BackingKind, BackingRequest, BlockSize, Bytes, CreateOptions, MinFree, OnFull, PoolStatus,
    QueueTimeout, SizeChange, SpaceStatus, Threshold,
};
use thinlayer::Root;

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create the thin pool: sparse files on loop devices by default.
    Create(CreateArgs),
    /// Show the pool's space, mode and devices.
    Status {
        /// Print JSON (stable keys; see README).
        #[arg(long)]
        json: bool,
    },
    /// Bring the pool back after a reboot or `pool deactivate`.
    ///
    /// The metadata is checked with thin_check first (as LVM does); a
    /// damaged pool is refused, with the repair command to run.
    Activate {
        /// Do not run thin_check (still refused if the kernel flagged the
        /// metadata for a check).
        #[arg(long)]
        skip_check: bool,
    },
    /// Rebuild damaged metadata with thin_repair (the pool deactivated).
    ///
    /// The damaged metadata is kept beside it; thin devices the repair
    /// could not save are reported, and the layers and volumes that lived
    /// on them are removed from the records.
    Repair,
    /// Remove the pool's dm devices and detach its loop devices; data stays.
    Deactivate,
    /// Change settings of the pool; an active pool follows at once.
    Set(SetArgs),
    /// Watch the pool: grow it by its autoextend settings and report mode
    /// changes, woken by device-mapper events; runs until SIGTERM or
    /// SIGINT (contrib/systemd/thinlayer-monitor.service).
    Monitor {
        /// Print one JSON object per event.
        #[arg(long)]
        json: bool,
    },
    /// Grow the pool online (absolute size or +SIZE); never shrinks.
    Grow(GrowArgs),
    /// Remove the pool, its layers and images, and its files.
    Destroy {
        /// Also destroy the pool's layers (never ones in use).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Data size, e.g. 512M, 20G, 1T [default: 100G, or the whole --data-dev].
    #[arg(long, value_name = "SIZE")]
    data_size: Option<Bytes>,
    /// Metadata size [default: 48 bytes per data block, at least 16M].
    #[arg(long, value_name = "SIZE")]
    metadata_size: Option<Bytes>,
    /// Allocation unit: a multiple of 64K from 64K to 1G.
    #[arg(long, value_name = "SIZE", default_value_t = BlockSize::DEFAULT.bytes())]
    block_size: Bytes,
    /// Use this block device for data instead of a file.
    #[arg(long, value_name = "DEV", requires = "metadata_dev")]
    data_dev: Option<PathBuf>,
    /// Use this block device for metadata instead of a file.
    #[arg(long, value_name = "DEV", requires = "data_dev")]
    metadata_dev: Option<PathBuf>,
    /// What a write to a full pool does: fail with ENOSPC, or wait for `pool grow`.
    #[arg(long, value_name = "POLICY", default_value = "error")]
    on_full: OnFull,
    /// Free data and metadata space kept in reserve: below it, new layers,
    /// containers and volumes are refused (as Docker's dm.min_free_space).
    #[arg(long, value_name = "PCT", default_value = "10")]
    min_free: MinFree,
    /// Seconds a queued write (--on-full queue) waits in a full pool
    /// before it fails (the kernel's no_space_timeout, one for all pools).
    #[arg(long, value_name = "SECS", default_value = "60")]
    queue_timeout: QueueTimeout,
    #[command(flatten)]
    autoextend: AutoextendArgs,
    /// Filesystem of the base device, and so of every layer: ext4 or xfs.
    #[arg(long, value_name = "FS", default_value = "ext4")]
    fs: FsType,
    /// Size of the base filesystem, and so of every layer.
    #[arg(long, value_name = "SIZE", default_value = "10G")]
    base_size: Bytes,
}

/// Autoextend flags, shared by `pool create` and `pool set`.
#[derive(Debug, Args)]
#[group(skip)]
pub struct AutoextendArgs {
    /// Grow the pool by itself when data or metadata use reaches this
    /// share (50 to 99%), as LVM's thin_pool_autoextend_threshold; needs
    /// --autoextend-max to turn it on.
    #[arg(long, value_name = "PCT")]
    autoextend_threshold: Option<Threshold>,
    /// How much data each autoextend adds [default: 20% of the data size];
    /// the metadata grows by the same share of its size.
    #[arg(long, value_name = "SIZE")]
    autoextend_step: Option<Bytes>,
    /// The largest the data grows to by autoextend.
    #[arg(long, value_name = "SIZE")]
    autoextend_max: Option<Bytes>,
}

impl AutoextendArgs {
    fn change(&self) -> AutoextendChange {
        AutoextendChange {
            threshold: self.autoextend_threshold,
            step: self.autoextend_step,
            max: self.autoextend_max,
        }
    }
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The free data and metadata space kept in reserve (0 to 50%).
    #[arg(long, value_name = "PCT")]
    min_free: Option<MinFree>,
    /// What a write to a full pool does: error or queue.
    #[arg(long, value_name = "POLICY")]
    on_full: Option<OnFull>,
    /// Seconds a queued write waits in a full pool before it fails (the
    /// kernel's no_space_timeout: one value for every pool).
    #[arg(long, value_name = "SECS")]
    queue_timeout: Option<QueueTimeout>,
    #[command(flatten)]
    autoextend: AutoextendArgs,
    /// Turn autoextend off.
    #[arg(long, conflicts_with_all = ["autoextend_threshold", "autoextend_step", "autoextend_max"])]
    no_autoextend: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct GrowArgs {
    /// New data size, or +SIZE to add.
    #[arg(long, value_name = "SIZE")]
    data_size: Option<SizeChange>,
    /// New metadata size, or +SIZE to add.
    #[arg(long, value_name = "SIZE")]
    metadata_size: Option<SizeChange>,
}

pub fn run(root: &Root, cmd: PoolCommand) -> Result<()> {
    match cmd {
        PoolCommand::Create(a) => {
            let block_size = BlockSize::new(a.block_size)
                .map_err(|reason| anyhow::anyhow!("invalid block size: {reason}"))?;
            let backing = |dev: Option<PathBuf>, size| match dev {
                Some(d) => BackingRequest::Device(d, size),
                None => BackingRequest::File(size),
            };
            let data = backing(a.data_dev, a.data_size);
            let autoextend = a
                .autoextend
                .change()
                .merge(
                    None,
                    data.size()
                        .unwrap_or(thinlayer::thinpool::config::DEFAULT_DATA_SIZE),
                    block_size,
                )
                .context("checking the autoextend settings")?;
            let opts = CreateOptions {
                data,
                metadata: backing(a.metadata_dev, a.metadata_size),
                block_size,
                on_full: a.on_full,
                min_free: a.min_free,
                autoextend,
                queue_timeout: a.queue_timeout,
            };
            let pool = thinlayer::system::create_pool(root, &opts, a.fs, a.base_size)
                .with_context(|| format!("creating a pool in {}", root.path().display()))?;
            let st = pool.status()?;
            println!(
                "created pool {} in {}: data {} on {}, metadata {} on {}, block size {}",
                st.id,
                root.path().display(),
                st.data.total_bytes,
                where_(&st.data),
                st.metadata.total_bytes,
                where_(&st.metadata),
                st.block_size
            );
        }
        PoolCommand::Status { json } => {
            let pool = root.open_pool()?;
            let st = pool.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
        }
        PoolCommand::Activate { skip_check } => {
            let mut pool = root.open_pool()?;
            let was = pool.is_active();
            let check = if skip_check {
                MetadataCheck::Skip
            } else {
                MetadataCheck::Full
            };
            let done = pool.activate_with(check).context("activating the pool")?;
            if done.cleared_needs_check {
                eprintln!("thinlayer: the kernel had flagged the metadata for a check; thin_check passed and the flag is cleared");
            }
            for id in &done.freed_orphans {
                eprintln!("thinlayer: recovered: freed thin id {id}, which the metadata held but no record named");
            }
            let st = pool.status()?;
            if was {
                println!("pool {} is already active", st.id);
            } else {
                println!(
                    "activated pool {} ({} thin devices{})",
                    st.id,
                    st.thin_devices,
                    if done.checked {
                        ", metadata checked"
                    } else {
                        ""
                    }
                );
            }
        }
        PoolCommand::Repair => {
            let r = thinlayer::system::repair_pool(root).context("repairing the pool")?;
            println!(
                "repaired the pool's metadata; the damaged copy is {}",
                r.damaged_copy.display()
            );
            for l in &r.lost {
                println!("lost: {l}");
            }
            for id in &r.freed {
                println!("freed: thin id {id}, which no record named");
            }
        }
        PoolCommand::Set(a) => {
            if a.min_free.is_none()
                && a.on_full.is_none()
                && a.queue_timeout.is_none()
                && a.autoextend.change().is_empty()
                && !a.no_autoextend
            {
                anyhow::bail!(
                    "nothing to change: give --min-free, --on-full, --queue-timeout, --autoextend-threshold/-step/-max or --no-autoextend"
                );
            }
            let mut pool = root.open_pool()?;
            let change = SettingsChange {
                min_free: a.min_free,
                on_full: a.on_full,
                queue_timeout: a.queue_timeout,
                autoextend: a.autoextend.change(),
                no_autoextend: a.no_autoextend,
            };
            pool.set(&change).context("changing the pool's settings")?;
            let r = pool.record();
            println!(
                "pool {}: min free {}, on full {} (queue timeout {}), autoextend {}",
                r.id,
                r.min_free,
                r.on_full,
                r.queue_timeout,
                r.autoextend
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into())
            );
        }
        PoolCommand::Monitor { json } => monitor(root, json)?,
        PoolCommand::Deactivate => {
            let mut pool = root.open_pool()?;
            let was = pool.is_active();
            pool.deactivate().context("deactivating the pool")?;
            let id = &pool.record().id;
            if was {
                println!("deactivated pool {id}");
            } else {
                println!("pool {id} is already inactive");
            }
        }
        PoolCommand::Grow(a) => {
            let mut pool = root.open_pool()?;
            pool.grow(a.data_size, a.metadata_size)
                .context("growing the pool")?;
            let st = pool.status()?;
            println!(
                "pool {}: data {}, metadata {}",
                st.id, st.data.total_bytes, st.metadata.total_bytes
            );
        }
        PoolCommand::Destroy { force } => {
            let id = thinlayer::system::destroy_pool(root, force).context("destroying the pool")?;
            println!("destroyed pool {id}");
        }
    }
    Ok(())
}

fn where_(s: &SpaceStatus) -> String {
    match (&s.backing, &s.loop_device) {
        (BackingKind::File, Some(l)) => format!("{} ({})", l.display(), s.path.display()),
        _ => s.path.display().to_string(),
    }
}

fn space(s: &SpaceStatus) -> String {
    match s.used_bytes {
        Some(u) => format!(
            "{} used of {} ({:.1}%), {}",
            u,
            s.total_bytes,
            100.0 * u.0 as f64 / s.total_bytes.0.max(1) as f64,
            where_(s)
        ),
        None => format!("{}, {}", s.total_bytes, where_(s)),
    }
}

fn print_status(st: &PoolStatus) {
    let rows = [
        ("pool", st.id.clone()),
        ("directory", st.dir.display().to_string()),
        ("active", if st.active { "yes" } else { "no" }.to_string()),
        (
            "mode",
            st.mode.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
        ),
        ("block size", st.block_size.to_string()),
        ("on full", st.on_full.to_string()),
        ("min free", st.min_free.to_string()),
        (
            "queue timeout",
            match st.kernel_queue_timeout {
                Some(k) if k != st.queue_timeout.secs() && st.active => format!(
                    "{} (the kernel's is {k}s: another pool set it)",
                    st.queue_timeout
                ),
                _ => st.queue_timeout.to_string(),
            },
        ),
        (
            "autoextend",
            st.autoextend
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
        ),
        ("transaction", st.transaction_id.to_string()),
        ("thin devices", st.thin_devices.to_string()),
        ("data", space(&st.data)),
        ("metadata", space(&st.metadata)),
    ];
    for (k, v) in rows {
        println!("{k:<13} {v}");
    }
    if let Some(a) = &st.advice {
        println!("what to do: {a}");
    }
    if st.needs_check == Some(true) {
        println!("warning: the kernel flagged the metadata as needing a check: run thin_check");
    }
}

/// `pool monitor`: watches until SIGTERM or SIGINT.
fn monitor(root: &Root, json: bool) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    // The signals are blocked here and taken by one thread with sigwait:
    // no handler runs in the middle of the watcher's work.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block().context("blocking SIGTERM and SIGINT")?;
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            if sigs.wait().is_ok() {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let dir = root.pool_dir();
    thinlayer::thinpool::monitor::watch(&dir, &stop, &mut |e| {
        if json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("{e}");
        }
    })
    .with_context(|| format!("watching the pool in {}", dir.display()))
}
