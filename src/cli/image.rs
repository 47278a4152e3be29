//! `thinlayer image ...`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
use thinlayer::image::{read_config, HistoryEntry, ImageDetails};
use thinlayer::save::{save_images, SaveFormat};
use thinlayer::store::ImageRecord;
use thinlayer::util::ids::short;
use thinlayer::util::time::rfc3339;
use thinlayer::Store;

use super::progress::ImportProgress;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a `docker save` archive or an OCI image layout (directory or
    /// tar); `PATH:TAG` takes only the image tagged TAG in the layout.
    Import {
        path: PathBuf,
        /// Name the image NAME[:TAG] instead of the archive's names.
        #[arg(long, value_name = "NAME:TAG")]
        name: Option<String>,
    },
    /// List images.
    Ls {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one image: its ids, layers and config (entrypoint, cmd, env,
    /// working dir, user, ports, volumes, labels).
    Inspect {
        image: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show how an image was built: one row per history step, newest
    /// first, with the layer it made and that layer's size (its
    /// uncompressed changeset).
    History {
        image: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Do not shorten ids and commands.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Remove an image and its layers that nothing else uses.
    Rm { image: String },
    /// Save images as an OCI image layout or a `docker save` archive (one
    /// tar file), with the digests they were imported with: the same bytes
    /// every time. An image named by id is saved without a name.
    Save {
        /// Images (name[:tag], id or id prefix).
        #[arg(required = true)]
        images: Vec<String>,
        /// The archive to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Archive format.
        #[arg(long, value_enum, default_value_t = Format::Oci)]
        format: Format,
    },
}

/// `image save --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// OCI image layout (skopeo `oci-archive:`, umoci after unpacking the tar).
    Oci,
    /// `docker save` archive (`docker load`, skopeo `docker-archive:`).
    Docker,
}

/// An image as `--json` shows it: its record, and its time as RFC 3339.
#[derive(Serialize)]
struct ImageJson<'a> {
    #[serde(flatten)]
    record: &'a ImageRecord,
    created: String,
}

/// A history row as `--json` shows it.
#[derive(Serialize)]
struct HistoryJson {
    #[serde(flatten)]
    step: HistoryEntry,
    /// The layer's id in the store, for a step that made one.
    #[serde(rename = "layer_id")]
    layer: Option<String>,
    /// The length of that layer's changeset (its uncompressed tar), as
    /// `docker history` sizes a layer.
    size_bytes: u64,
}

fn print_details(d: &ImageDetails) {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(" ")
        }
    };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("config");
    let row = |k: &str, v: String| println!("  {k:<11} {v}");
    row("built", opt(&d.created));
    if let Some(a) = &d.author {
        row("author", a.clone());
    }
    row("entrypoint", list(&d.entrypoint));
    row("cmd", list(&d.cmd));
    row("workdir", opt(&d.working_dir));
    row("user", opt(&d.user));
    row("ports", list(&d.exposed_ports));
    row("volumes", list(&d.volumes));
    if let Some(s) = &d.stop_signal {
        row("stopsignal", s.clone());
    }
    for e in &d.env {
        row("env", e.clone());
    }
    for (k, v) in &d.labels {
        row("label", format!("{k}={v}"));
    }
}

/// An RFC 3339 time to the second, as a table shows it.
fn to_second(t: &str) -> String {
    match (t.get(..19), t.len() > 19) {
        (Some(s), true) => format!("{s}Z"),
        _ => t.to_string(),
    }
}

fn to_json(i: &ImageRecord) -> ImageJson<'_> {
    ImageJson {
        record: i,
        created: rfc3339(i.created_unix),
    }
}

pub fn run(mut store: Store, cmd: ImageCommand) -> Result<()> {
    for r in store.repairs() {
        eprintln!("thinlayer: recovered: {r}");
    }
    match cmd {
        ImageCommand::Import { path, name } => {
            let progress = ImportProgress::new();
            let ids =
                thinlayer::import::import_image(&mut store, &path, name.as_deref(), &progress)
                    .with_context(|| format!("importing {}", path.display()))?;
            drop(progress);
            for id in ids {
                let img = store.image(&id)?;
                println!("{} {}", img.id, img.names.join(" "));
            }
        }
        ImageCommand::Ls { json } => {
            let images: Vec<_> = store.images().cloned().collect();
            if json {
                let out: Vec<ImageJson> = images.iter().map(to_json).collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{:<14} {:>6}  NAMES", "IMAGE", "LAYERS");
                for i in images {
                    println!(
                        "{:<14} {:>6}  {}",
                        short(&i.id),
                        i.layers.len(),
                        i.names.join(", ")
                    );
                }
            }
        }
        ImageCommand::Inspect { image, json } => {
            let i = store.image(&image)?.clone();
            let details = read_config(store.image_config(&i.id)?)?.details();
            if json {
                #[derive(Serialize)]
                struct Inspect<'a> {
                    #[serde(flatten)]
                    image: ImageJson<'a>,
                    config: ImageDetails,
                }
                let out = Inspect {
                    image: to_json(&i),
                    config: details,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("id        sha256:{}", i.id);
                println!("names     {}", i.names.join(", "));
                println!("created   {}", rfc3339(i.created_unix));
                println!(
                    "platform  {}/{}",
                    i.os.as_deref().unwrap_or("-"),
                    i.architecture.as_deref().unwrap_or("-")
                );
                println!("layers    (bottom to top)");
                for l in &i.layers {
                    let rec = store.layer(l.as_str())?;
                    println!("  {}  {}", l, rec.diff_id.as_deref().unwrap_or("-"));
                }
                print_details(&details);
            }
        }
        ImageCommand::History {
            image,
            json,
            no_trunc,
        } => {
            let i = store.image(&image)?.clone();
            let steps = read_config(store.image_config(&i.id)?)?.history();
            let sizes = i
                .layers
                .iter()
                .map(|l| store.changeset_length(l))
                .collect::<thinlayer::error::Result<Vec<_>>>()?;
            let rows: Vec<HistoryJson> = steps
                .into_iter()
                .map(|h| HistoryJson {
                    layer: h.layer.and_then(|n| i.layers.get(n)).map(|l| l.to_string()),
                    size_bytes: h
                        .layer
                        .and_then(|n| sizes.get(n).copied().flatten())
                        .unwrap_or(0),
                    step: h,
                })
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<14} {:<22} {:<46} {:>9}  COMMENT",
                    "LAYER", "CREATED", "CREATED BY", "SIZE"
                );
                for r in rows {
                    let layer = match (&r.layer, no_trunc) {
                        (Some(l), true) => l.clone(),
                        (Some(l), false) => short(l).to_string(),
                        (None, _) => "<missing>".into(),
                    };
                    let by = r.step.created_by.replace('\n', " ");
                    let by = if no_trunc || by.chars().count() <= 45 {
                        by
                    } else {
                        format!("{}…", by.chars().take(44).collect::<String>())
                    };
                    println!(
                        "{:<14} {:<22} {:<46} {:>9}  {}",
                        layer,
                        r.step.created.as_deref().map_or("-".into(), to_second),
                        by,
                        thinpool::Bytes(r.size_bytes).to_string(),
                        r.step.comment.as_deref().unwrap_or("")
                    );
                }
            }
        }
        ImageCommand::Save {
            images,
            output,
            format,
        } => {
            let format = match format {
                Format::Oci => SaveFormat::Oci,
                Format::Docker => SaveFormat::Docker,
            };
            let progress = ImportProgress::doing("saving");
            let ids = save_images(&mut store, &images, &output, format, &progress)
                .with_context(|| format!("saving {}", output.display()))?;
            drop(progress);
            for id in ids {
                println!("{id}");
            }
        }
        ImageCommand::Rm { image } => {
            match store
                .remove_image(&image)
                .with_context(|| format!("removing image {image}"))?
            {
                thinlayer::store::ImageRemoval::Untagged(name) => println!("untagged {name}"),
                thinlayer::store::ImageRemoval::Removed(removed) => println!(
                    "removed image {image} and {} layer{}",
                    removed.len(),
                    if removed.len() == 1 { "" } else { "s" }
                ),
            }
        }
    }
    Ok(())
}
