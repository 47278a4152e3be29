//! `thinlayer image ...`

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::Serialize;
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
        #[arg(long)]
        json: bool,
    },
    /// Show one image.
    Inspect {
        image: String,
        #[arg(long)]
        json: bool,
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
            if json {
                println!("{}", serde_json::to_string_pretty(&to_json(&i))?);
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
            let removed = store
                .remove_image(&image)
                .with_context(|| format!("removing image {image}"))?;
            println!(
                "removed image {image} and {} layer{}",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(())
}
