//! Command-line definitions (clap derive) and dispatch.

pub mod config;
mod container;
mod docs;
pub mod hint;
mod image;
mod layer;
mod pool;
mod progress;
mod snapshotter;
mod system;
mod volume;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use thinlayer::driver::overlay::OverlayOptions;
use thinlayer::driver::DriverKind;
use thinlayer::Root;

#[derive(Debug, Parser)]
#[command(
    name = "thinlayer",
    version,
    about = "Container layers and volumes as device-mapper thin snapshots",
    long_about = "Container layers and volumes as device-mapper thin snapshots.\n\n\
        State lives under --root. The thin pool needs a kernel with the dm-thin target; \
        on a machine without it, run thinlayer in the VM: vm-tests/run.sh -- thinlayer ...\n\n\
        Defaults for the flags can be set once in a configuration file \
        (--config, /etc/thinlayer/config.toml by default); a flag or its \
        environment variable wins over the file."
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

    /// Storage driver for layers, images and new containers: thin (dm-thin
    /// snapshots) or overlay (directories stacked with overlayfs). Each keeps
    /// its own layers. Given before the command (volumes have their own
    /// `volume create --driver`).
    #[arg(long, env = "THINLAYER_DRIVER", default_value = "thin")]
    driver: DriverKind,

    /// overlay driver mount options: index=off, metacopy=on, volatile
    /// (repeatable) [default: the configuration file's overlay.options].
    #[arg(long = "overlay-opt", global = true, value_name = "OPT")]
    overlay_opts: Vec<String>,

    /// Configuration file: defaults for the flags, which a flag or its
    /// environment variable overrides. A missing default file is fine; a
    /// file named here or in the environment must exist.
    #[arg(
        long,
        global = true,
        env = "THINLAYER_CONFIG",
        value_name = "FILE",
        default_value = thinlayer::config::DEFAULT_PATH
    )]
    config: PathBuf,

    /// Append the command's time, phase by phase (locks, records, the
    /// pool's checks, change log and dm message, mounts), to FILE as one
    /// JSON line when it ends: where a command run as a process spends its
    /// time (the benchmark harness times its container creates so).
    #[arg(long, global = true, env = thinlayer::phase::timing::ENV, value_name = "FILE")]
    phases: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The file `--phases` names, if any.
    pub fn phases_file(&self) -> Option<PathBuf> {
        self.phases.clone()
    }
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
    /// Containers: a writable layer over an image, with volumes.
    #[command(subcommand)]
    Container(container::ContainerCommand),
    /// Volumes: data that outlives containers.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// containerd's snapshotter: serve thinlayer's layers to containerd.
    #[command(subcommand)]
    Snapshotter(snapshotter::SnapshotterCommand),
    /// The whole root: what its parts take.
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Write a man page for every command and subcommand.
    Man(docs::ManArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    // Made from the definition itself, with the built-in defaults: neither
    // needs a root.
    match &cli.command {
        Command::Completions(a) => return docs::completions(Cli::command(), a),
        Command::Man(a) => return docs::man(Cli::command(), a),
        _ => {}
    }
    let root = Root::new(&cli.root)?.with_lock_timeout(Duration::from_secs(cli.lock_timeout));
    if !cli.overlay_opts.is_empty() && cli.driver != DriverKind::Overlay {
        // A usage error, like clap's own: exit 2.
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--overlay-opt needs --driver overlay",
            )
            .exit();
    }
    let overlay = OverlayOptions::parse(&cli.overlay_opts)?;
    let open = || root.open_store(cli.driver, &overlay);
    match cli.command {
        Command::Pool(cmd) => pool::run(&root, cmd),
        Command::Layer(cmd) => layer::run(open()?, cmd),
        Command::Snapshot(cmd) => layer::run_snapshot(open()?, cmd),
        Command::Image(cmd) => image::run(open()?, cmd),
        Command::Container(cmd) => container::run(&root, cli.driver, &overlay, cmd),
        Command::Volume(cmd) => volume::run(&root, cmd),
        Command::Snapshotter(cmd) => snapshotter::run(root, cli.driver, overlay, cmd),
        Command::System(cmd) => system::run(&root, cli.driver, &overlay, cmd),
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    }
}
