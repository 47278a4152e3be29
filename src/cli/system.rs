//! `thinlayer system ...`.

use anyhow::Result;
use clap::Subcommand;
use thinlayer::driver::overlay::OverlayOptions;
use thinlayer::driver::DriverKind;
use thinlayer::thinpool::Bytes;
use thinlayer::Root;

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show the space images, containers, layers and volumes take.
    ///
    /// As `docker system df`, for the --driver's store: how many are in
    /// use, the bytes only they hold, the bytes their layers share, what
    /// removing the unused ones would free; then the pool's data and
    /// metadata use.
    Df {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(
    root: &Root,
    driver: DriverKind,
    overlay: &OverlayOptions,
    cmd: SystemCommand,
) -> Result<()> {
    match cmd {
        SystemCommand::Df { json } => {
            let df = thinlayer::system::disk_usage(root, driver, overlay)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&df)?);
                return Ok(());
            }
            println!(
                "{:<12} {:>6} {:>7} {:>12} {:>12} {:>12}",
                "TYPE", "TOTAL", "ACTIVE", "SIZE", "SHARED", "RECLAIMABLE"
            );
            for r in &df.rows {
                println!(
                    "{:<12} {:>6} {:>7} {:>12} {:>12} {:>12}",
                    r.kind,
                    r.total,
                    r.active,
                    Bytes(r.size_bytes).to_string(),
                    Bytes(r.shared_bytes).to_string(),
                    Bytes(r.reclaimable_bytes).to_string()
                );
            }
            if let Some(p) = &df.pool {
                let used = |u: Option<u64>| u.map_or("-".to_string(), |b| Bytes(b).to_string());
                println!(
                    "pool data {} of {}, metadata {} of {}",
                    used(p.data_used_bytes),
                    Bytes(p.data_total_bytes),
                    used(p.metadata_used_bytes),
                    Bytes(p.metadata_total_bytes)
                );
            }
        }
    }
    Ok(())
}
