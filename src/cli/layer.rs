//! `thinlayer layer ...` and `thinlayer snapshot layer`.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use thinlayer::changeset::{Compression, ExportOptions};
use thinlayer::driver::Usage;
use thinlayer::layer::{LayerId, LayerRecord};
use thinlayer::store::{ImageRecord, Store};
use thinlayer::thinpool::Bytes;
use thinlayer::util::ids::short;
use thinlayer::util::time::rfc3339;

#[derive(Debug, Subcommand)]
pub enum LayerCommand {
    /// Create a layer with no parent, optionally from an OCI layer tar.
    Create(NewLayer),
    /// List layers as a tree with their sizes.
    Ls {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one layer.
    Inspect {
        layer: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a layer (refused while it has children, is mounted or is in an image).
    Rm { layer: String },
    /// Remove the layers nothing keeps; prints their ids.
    ///
    /// A layer is kept by an image, a container, its name, a containerd
    /// snapshot, a mount, or a kept child.
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mount a layer read-only; prints the mount point.
    Mount { layer: String },
    /// Unmount a layer mounted with `layer mount`.
    Umount { layer: String },
    /// Write a layer's changes against its parent as an OCI layer tar.
    Diff {
        layer: String,
        /// Output file [default: stdout].
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// gzip the output.
        #[arg(long)]
        gzip: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Create a layer as a thin snapshot of PARENT (name or id); prints its id.
    Layer {
        parent: String,
        #[command(flatten)]
        new: NewLayer,
    },
}

#[derive(Debug, Args)]
pub struct NewLayer {
    /// Name for the new layer.
    #[arg(long)]
    name: Option<String>,
    /// Apply this OCI layer tar (plain, gzip or zstd; - for stdin).
    #[arg(long, value_name = "FILE")]
    from_tar: Option<PathBuf>,
    /// Mount the new layer read-only once it is made (as `layer mount`),
    /// and print the mount point after its id. Without --from-tar, a thin
    /// layer's device is activated while its record is made durable.
    #[arg(long)]
    mount: bool,
}

fn open_tar(path: &Option<PathBuf>) -> Result<Option<Box<dyn Read>>> {
    Ok(match path {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(io::stdin().lock())),
        Some(p) => {
            Some(Box::new(File::open(p).with_context(|| {
                format!("opening changeset {}", p.display())
            })?))
        }
    })
}

fn create(store: &mut Store, parent: Option<&str>, new: &NewLayer) -> Result<()> {
    let mut tar = open_tar(&new.from_tar)?;
    let name = new.name.as_deref();
    if new.mount && tar.is_none() {
        let (id, mp) = store.create_and_mount_layer(parent, name).context(
            "making and mounting the layer (a failed mount leaves it made: see `layer ls`)",
        )?;
        println!("{id}\n{}", mp.display());
        return Ok(());
    }
    let id = store.create_layer(parent, name, tar.as_mut().map(|t| t as &mut dyn Read))?;
    println!("{id}");
    if new.mount {
        let mp = store
            .mount_layer(id.as_str())
            .with_context(|| format!("mounting the new layer {id} (it is made)"))?;
        println!("{}", mp.display());
    }
    Ok(())
}

pub fn run_snapshot(mut store: Store, cmd: SnapshotCommand) -> Result<()> {
    let SnapshotCommand::Layer { parent, new } = cmd;
    create(&mut store, Some(&parent), &new).with_context(|| format!("snapshotting layer {parent}"))
}

#[derive(Serialize)]
struct LayerJson<'a> {
    id: &'a str,
    name: Option<&'a str>,
    parent: Option<&'a str>,
    created_unix: u64,
    /// `created_unix` as RFC 3339.
    created: String,
    diff_id: Option<&'a str>,
    chain_id: Option<&'a str>,
    exclusive_bytes: u64,
    shared_bytes: u64,
    mounted_at: Option<PathBuf>,
    /// Filesystem type and options of that mount.
    mount_options: Option<String>,
    images: Vec<String>,
    children: Vec<&'a str>,
    /// The container this layer belongs to, if any.
    container: Option<&'a str>,
    /// Whether it is the init layer that containers over its parent share.
    init: bool,
}

/// The layers and images a listing shows, as read in one go: asking the
/// layers' usage lets go of the store's lock, and the records read again
/// after may hold layers other processes made or removed meanwhile.
struct Listed {
    layers: Vec<LayerRecord>,
    images: Vec<ImageRecord>,
}

impl Listed {
    fn of(store: &Store) -> Listed {
        Listed {
            layers: store.layers().cloned().collect(),
            images: store.images().cloned().collect(),
        }
    }

    fn children<'a>(&'a self, id: &'a LayerId) -> impl Iterator<Item = &'a LayerRecord> + 'a {
        self.layers
            .iter()
            .filter(move |l| l.parent.as_ref() == Some(id))
    }
}

fn to_json<'a>(
    store: &Store,
    listed: &'a Listed,
    l: &'a LayerRecord,
    u: Usage,
) -> Result<LayerJson<'a>> {
    Ok(LayerJson {
        id: l.id.as_str(),
        name: l.name.as_deref(),
        parent: l.parent.as_ref().map(|p| p.as_str()),
        created_unix: l.created_unix,
        created: rfc3339(l.created_unix),
        diff_id: l.diff_id.as_deref(),
        chain_id: l.chain_id.as_deref(),
        exclusive_bytes: u.exclusive_bytes,
        shared_bytes: u.shared_bytes,
        mounted_at: store.is_mounted(&l.id)?.then(|| store.mount_point(&l.id)),
        mount_options: thinlayer::mount::options_of(&store.mount_point(&l.id))?,
        images: listed
            .images
            .iter()
            .filter(|i| i.layers.contains(&l.id))
            .map(|i| {
                i.names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| short(&i.id).to_string())
            })
            .collect(),
        children: listed.children(&l.id).map(|c| c.id.as_str()).collect(),
        container: l.container.as_deref(),
        init: l.init,
    })
}

pub fn run(mut store: Store, cmd: LayerCommand) -> Result<()> {
    for r in store.repairs() {
        eprintln!("thinlayer: recovered: {r}");
    }
    match cmd {
        LayerCommand::Create(new) => create(&mut store, None, &new).context("creating a layer")?,
        LayerCommand::Ls { json } => {
            let listed = Listed::of(&store);
            let ids: Vec<_> = listed.layers.iter().map(|l| l.id.clone()).collect();
            let usage = store.usage(&ids)?;
            if json {
                let out: Vec<LayerJson> = listed
                    .layers
                    .iter()
                    .zip(&usage)
                    .map(|(l, u)| to_json(&store, &listed, l, *u))
                    .collect::<Result<_>>()?;
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_tree(&listed, &usage)?;
            }
        }
        LayerCommand::Prune { dry_run, json } => {
            #[derive(Serialize)]
            struct Pruned {
                id: String,
                /// Bytes it held alone (before its children went, for a
                /// dry run: at least this much is freed).
                bytes: u64,
            }
            let gone: Vec<Pruned> = if dry_run {
                let ids = store.prunable()?;
                let usage = store.usage(&ids)?;
                ids.iter()
                    .zip(usage)
                    .map(|(id, u)| Pruned {
                        id: id.to_string(),
                        bytes: u.exclusive_bytes,
                    })
                    .collect()
            } else {
                store
                    .prune()
                    .context("pruning layers")?
                    .into_iter()
                    .map(|(id, bytes)| Pruned {
                        id: id.to_string(),
                        bytes,
                    })
                    .collect()
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&gone)?);
            } else {
                for p in &gone {
                    println!("{}", p.id);
                }
                let total = Bytes(gone.iter().map(|p| p.bytes).sum());
                eprintln!(
                    "thinlayer: {} {} layer(s), {}{total}",
                    if dry_run { "would remove" } else { "removed" },
                    gone.len(),
                    if dry_run {
                        "freeing at least "
                    } else {
                        "freeing "
                    }
                );
            }
        }
        LayerCommand::Inspect { layer, json } => {
            let l = store.layer(&layer)?.clone();
            let u = store.usage(std::slice::from_ref(&l.id))?[0];
            let listed = Listed::of(&store);
            let j = to_json(&store, &listed, &l, u)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                let opt = |o: Option<&str>| o.unwrap_or("-").to_string();
                for (k, v) in [
                    ("id", j.id.to_string()),
                    ("name", opt(j.name)),
                    ("parent", opt(j.parent)),
                    ("created", j.created.clone()),
                    ("diff id", opt(j.diff_id)),
                    ("chain id", opt(j.chain_id)),
                    ("exclusive", Bytes(j.exclusive_bytes).to_string()),
                    ("shared", Bytes(j.shared_bytes).to_string()),
                    (
                        "mounted at",
                        j.mounted_at
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or("-".into()),
                    ),
                    ("mount opts", j.mount_options.clone().unwrap_or("-".into())),
                    (
                        "images",
                        if j.images.is_empty() {
                            "-".into()
                        } else {
                            j.images.join(", ")
                        },
                    ),
                    ("children", j.children.len().to_string()),
                ] {
                    println!("{k:<11} {v}");
                }
            }
        }
        LayerCommand::Rm { layer } => {
            let id = store
                .remove_layer(&layer)
                .with_context(|| format!("removing layer {layer}"))?;
            println!("{id}");
        }
        LayerCommand::Mount { layer } => {
            let mp = store
                .mount_layer(&layer)
                .with_context(|| format!("mounting layer {layer}"))?;
            println!("{}", mp.display());
        }
        LayerCommand::Umount { layer } => {
            store
                .unmount_layer(&layer)
                .with_context(|| format!("unmounting layer {layer}"))?;
        }
        LayerCommand::Diff {
            layer,
            output,
            gzip,
        } => {
            let opts = ExportOptions {
                compression: if gzip {
                    Compression::Gzip
                } else {
                    Compression::None
                },
                ..ExportOptions::default()
            };
            let ctx = || format!("exporting layer {layer}");
            match output {
                Some(path) => {
                    // Written beside the target and renamed, so a failed
                    // export never leaves a partial file under its name.
                    let tmp = path.with_extension("partial");
                    let mut f = BufWriter::new(
                        File::create(&tmp)
                            .with_context(|| format!("creating {}", tmp.display()))?,
                    );
                    let r = store
                        .diff(&layer, &mut f, &opts)
                        .with_context(ctx)
                        .and_then(|s| {
                            f.flush()?;
                            Ok(s)
                        });
                    match r {
                        Ok(_) => std::fs::rename(&tmp, &path)
                            .with_context(|| format!("writing {}", path.display()))?,
                        Err(e) => {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(e);
                        }
                    }
                }
                None => {
                    let mut out = BufWriter::new(io::stdout().lock());
                    store.diff(&layer, &mut out, &opts).with_context(ctx)?;
                    out.flush()?;
                }
            }
        }
    }
    Ok(())
}

fn print_tree(listed: &Listed, usage: &[Usage]) -> Result<()> {
    let layers = &listed.layers;
    println!(
        "{:<40} {:<20} {:>10} {:>10}  IMAGES",
        "LAYER", "NAME", "EXCLUSIVE", "SHARED"
    );
    let by_id: std::collections::BTreeMap<_, _> = layers
        .iter()
        .zip(usage)
        .map(|(l, u)| (l.id.clone(), (l, *u)))
        .collect();
    fn walk(
        listed: &Listed,
        by_id: &std::collections::BTreeMap<LayerId, (&LayerRecord, Usage)>,
        l: &LayerRecord,
        prefix: &str,
        last: bool,
        top: bool,
    ) {
        let (_, u) = by_id[&l.id];
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let label = format!("{prefix}{branch}{}", l.id.short());
        let images: Vec<String> = listed
            .images
            .iter()
            .filter(|i| i.layers.last() == Some(&l.id))
            .flat_map(|i| i.names.clone())
            .collect();
        println!(
            "{label:<40} {:<20} {:>10} {:>10}  {}",
            match (&l.name, &l.container) {
                (Some(n), _) => n.clone(),
                (None, Some(c)) => format!("(container {})", short(c)),
                (None, None) if l.init => "(init)".into(),
                (None, None) => "-".into(),
            },
            Bytes(u.exclusive_bytes).to_string(),
            Bytes(u.shared_bytes).to_string(),
            images.join(", ")
        );
        let kids: Vec<&LayerRecord> = listed.children(&l.id).collect();
        let child_prefix = if top {
            prefix.to_string()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, k) in kids.iter().enumerate() {
            walk(listed, by_id, k, &child_prefix, i + 1 == kids.len(), false);
        }
    }
    for l in layers.iter().filter(|l| l.parent.is_none()) {
        walk(listed, &by_id, l, "", true, true);
    }
    Ok(())
}
