//! Command-line definitions (clap derive) and dispatch.

mod image;
mod layer;
mod pool;
mod progress;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use thinlayer::Root;

#[derive(Debug, Parser)]
#[command(
    name = "thinlayer",
    version,
    about = "Container layers and volumes as device-mapper thin snapshots",
    long_about = "Container layers and volumes as device-mapper thin snapshots.\n\n\
        State lives under --root. The thin pool needs a kernel with the dm-thin target; \
        on a machine without it, run thinlayer in the VM: vm-tests/run.sh -- thinlayer ..."
)]
pub struct Cli {
    /// State directory (created with mode 0700).
    #[arg(long, global = true, env = "THINLAYER_ROOT", default_value = thinlayer::root::DEFAULT_ROOT)]
    root: PathBuf,

    /// Seconds to wait for another thinlayer process working on the same root.
    #[arg(
        long,
        global = true,
        env = "THINLAYER_LOCK_TIMEOUT",
        default_value_t = 30
    )]
    lock_timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, inspect, grow and remove the thin pool.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Layers: thin snapshots of their parents.
    #[command(subcommand)]
    Layer(layer::LayerCommand),
    /// Make a new layer as a snapshot.
    #[command(subcommand)]
    Snapshot(layer::SnapshotCommand),
    /// Import and manage images (docker save archives, OCI layouts).
    #[command(subcommand)]
    Image(image::ImageCommand),
}

pub fn run(cli: Cli) -> Result<()> {
    let root = Root::new(&cli.root)?.with_lock_timeout(Duration::from_secs(cli.lock_timeout));
    match cli.command {
        Command::Pool(cmd) => pool::run(&root, cmd),
        Command::Layer(cmd) => layer::run(&root, cmd),
        Command::Snapshot(cmd) => layer::run_snapshot(&root, cmd),
        Command::Image(cmd) => image::run(&root, cmd),
    }
}
