//! `thinlayer volume ...`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::Subcommand;
use thinlayer::container::{Containers, VolumeInfo};
use thinlayer::thinpool::Bytes;
use thinlayer::volume::{NewVolume, VolumeDriver};
use thinlayer::Root;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; prints its name (generated when not given).
    Create {
        name: Option<String>,
        /// local (a directory, or a mount made from --opt) or thin (its own
        /// thin device and filesystem of --size).
        #[arg(short, long, default_value = "local")]
        driver: VolumeDriver,
        /// Size of a thin volume: a hard limit [default: 10G].
        #[arg(long)]
        size: Option<Bytes>,
        /// Local driver mount options: type=T, device=D, o=OPTS.
        #[arg(short, long = "opt", value_name = "KEY=VALUE")]
        opt: Vec<String>,
        /// Label (KEY=VALUE or KEY). Repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List volumes.
    Ls {
        /// dangling=true (used by no container) or dangling=false.
        #[arg(short, long, value_name = "FILTER")]
        filter: Vec<String>,
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show volumes as JSON.
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (refused while a container uses them, unless -f).
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove anonymous volumes no container uses (with --all, named ones too).
    Prune {
        /// Named volumes no container uses go too.
        #[arg(short, long)]
        all: bool,
    },
    /// Make NEW an instant copy-on-write copy of thin volume SRC.
    Clone {
        src: String,
        new: String,
        /// Label (KEY=VALUE or KEY). Repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
}

fn pairs(what: &str, items: &[String], value_needed: bool) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            None if !value_needed && !s.is_empty() => Ok((s.clone(), String::new())),
            _ => anyhow::bail!("{what} '{s}': use KEY=VALUE"),
        })
        .collect()
}

fn labels(items: &[String]) -> Result<BTreeMap<String, String>> {
    Ok(pairs("--label", items, false)?.into_iter().collect())
}

fn open(root: &Root) -> Result<Containers<'_>> {
    let c = Containers::open(root)?;
    for r in c.repairs() {
        eprintln!("thinlayer: recovered: {r}");
    }
    Ok(c)
}

fn size(i: &VolumeInfo) -> String {
    match (i.size_bytes, i.record.size) {
        (Some(b), Some(limit)) => format!("{} of {}", Bytes(b), limit),
        (Some(b), None) => Bytes(b).to_string(),
        (None, Some(limit)) => format!("? of {limit}"),
        (None, None) => "-".into(),
    }
}

pub fn run(root: &Root, cmd: VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create {
            name,
            driver,
            size,
            opt,
            labels: l,
        } => {
            let v = NewVolume {
                name: name.clone(),
                driver,
                size,
                options: pairs("--opt", &opt, true)?,
                labels: labels(&l)?,
                anonymous: false,
            };
            let rec = open(root)?.volume_create(&v).with_context(|| match &name {
                Some(n) => format!("creating volume {n}"),
                None => "creating a volume".into(),
            })?;
            println!("{}", rec.name);
        }
        VolumeCommand::Ls {
            filter,
            quiet,
            json,
        } => {
            let mut dangling = None;
            for f in &filter {
                dangling = Some(match f.as_str() {
                    "dangling=true" | "dangling=1" => true,
                    "dangling=false" | "dangling=0" => false,
                    _ => anyhow::bail!("unknown filter '{f}': use dangling=true or dangling=false"),
                });
            }
            let list = open(root)?.volume_list(dangling)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if quiet {
                for i in &list {
                    println!("{}", i.record.name);
                }
            } else {
                println!(
                    "{:<8} {:<66} {:<18} USED BY",
                    "DRIVER", "VOLUME NAME", "SIZE"
                );
                for i in &list {
                    println!(
                        "{:<8} {:<66} {:<18} {}",
                        i.record.driver.as_str(),
                        i.record.name,
                        size(i),
                        if i.used_by.is_empty() {
                            "-".into()
                        } else {
                            i.used_by.join(", ")
                        }
                    );
                }
            }
        }
        VolumeCommand::Inspect { volumes } => {
            let mut c = open(root)?;
            let list: Vec<VolumeInfo> = volumes
                .iter()
                .map(|v| c.volume_inspect(v))
                .collect::<thinlayer::Result<_>>()?;
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        VolumeCommand::Rm { force, volumes } => {
            let mut c = open(root)?;
            for v in volumes {
                c.volume_remove(&v, force)
                    .with_context(|| format!("removing volume {v}"))?;
                println!("{v}");
            }
        }
        VolumeCommand::Prune { all } => {
            for v in open(root)?.volume_prune(all).context("pruning volumes")? {
                println!("{v}");
            }
        }
        VolumeCommand::Clone {
            src,
            new,
            labels: l,
        } => {
            let rec = open(root)?
                .volume_clone(&src, &new, labels(&l)?)
                .with_context(|| format!("cloning volume {src}"))?;
            println!("{}", rec.name);
        }
    }
    Ok(())
}
