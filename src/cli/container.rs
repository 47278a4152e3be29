//! `thinlayer container ...`.

use std::ffi::OsString;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use thinlayer::container::exec::{self, ExecSpec};
use thinlayer::container::spec::Source;
use thinlayer::container::{ContainerInfo, Containers, NewContainer};
use thinlayer::driver::overlay::OverlayOptions;
use thinlayer::driver::DriverKind;
use thinlayer::thinpool::Bytes;
use thinlayer::Root;

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create a container: a writable layer over the image's (or layer's)
    /// shared init layer, with volumes. The storage driver is the global
    /// --driver.
    Create(CreateArgs),
    /// Mount a container (volumes inside); prints its rootfs.
    Mount { container: String },
    /// Unmount a container and its volumes.
    Umount { container: String },
    /// Run a command with the container's rootfs as its root, in a private
    /// mount namespace with its volumes; exits with the command's status.
    Exec {
        container: String,
        /// Set an environment variable (KEY=VALUE).
        #[arg(short, long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// List containers.
    Ls {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one container.
    Inspect {
        container: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a layer of the container's changes (without its init files)
    /// over its image's top layer; prints the layer's id.
    Commit {
        container: String,
        /// Name for the new layer.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the container's changes against its image, as `docker diff`.
    ///
    /// One line per path, sorted: `A` added, `C` changed, `D` deleted; the
    /// init files are left out. Refused while the container is mounted.
    Diff {
        container: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Copy files between a container and the host, as `docker cp`.
    ///
    /// `cp C:/path HOSTPATH`, `cp HOSTPATH C:/path`, or `-` for a tar
    /// stream on stdin or stdout. Paths inside resolve as the container
    /// sees them (its volumes included, symlinks never leaving its root);
    /// owners, modes and times are kept; a write into a read-only mount is
    /// refused.
    Cp {
        /// CONTAINER:PATH, a host path, or `-` (a tar stream on stdin).
        src: String,
        /// CONTAINER:PATH, a host path, or `-` (a tar stream on stdout).
        dest: String,
    },
    /// Remove containers and their layers.
    Rm {
        /// Unmount a mounted container first.
        #[arg(short, long)]
        force: bool,
        /// Also remove their anonymous volumes (never named ones).
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the container [default: its short id].
    #[arg(long)]
    name: Option<String>,
    /// Image to run (NAME[:TAG] or id).
    #[arg(long, conflicts_with = "layer", required_unless_present = "layer")]
    image: Option<String>,
    /// Layer to run (name or id), e.g. one made by `container commit`.
    #[arg(long)]
    layer: Option<String>,
    /// A volume: NAME:/path[:ro][:nocopy], /host/path:/path[:ro], or /path
    /// (anonymous). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SPEC")]
    volumes: Vec<String>,
    /// Take every volume of another container (C[:ro|:rw]). Repeatable.
    #[arg(long, value_name = "CONTAINER")]
    volumes_from: Vec<String>,
    /// Hostname inside the container [default: its short id].
    #[arg(long)]
    hostname: Option<String>,
    /// Thin driver: grow the container's filesystem to SIZE (e.g. 20G).
    #[arg(long)]
    size: Option<Bytes>,
}

fn open(root: &Root) -> Result<Containers<'_>> {
    let c = Containers::open(root)?;
    for r in c.repairs() {
        eprintln!("thinlayer: recovered: {r}");
    }
    Ok(c)
}

fn show_source(s: &Source) -> String {
    match s {
        Source::Volume { name } => name.clone(),
        Source::Bind { path } => path.clone(),
        Source::Anonymous => "(anonymous)".into(),
    }
}

fn print_inspect(i: &ContainerInfo) {
    let r = &i.record;
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    for (k, v) in [
        ("id", r.id.clone()),
        ("name", r.name.clone()),
        ("driver", r.driver.to_string()),
        ("image", opt(&r.image_name)),
        ("parent", r.parent.to_string()),
        (
            "layers",
            r.layers
                .iter()
                .map(|l| l.short().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("hostname", r.hostname.clone()),
        (
            "size",
            r.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        ),
        (
            "mounted",
            if i.mounted {
                i.rootfs.display().to_string()
            } else {
                "no".into()
            },
        ),
    ] {
        println!("{k:<9} {v}");
    }
    for m in &r.mounts {
        let kind = match m.source {
            Source::Bind { .. } => "bind",
            _ => "volume",
        };
        println!(
            "mount     {} {} -> {}{}",
            kind,
            show_source(&m.source),
            m.destination,
            if m.readonly { " (ro)" } else { "" }
        );
    }
}

pub fn run(
    root: &Root,
    driver: DriverKind,
    overlay: &OverlayOptions,
    cmd: ContainerCommand,
) -> Result<()> {
    match cmd {
        ContainerCommand::Create(a) => {
            let req = NewContainer {
                name: a.name.clone(),
                image: a.image,
                layer: a.layer,
                driver,
                overlay: overlay.clone(),
                volumes: a.volumes,
                volumes_from: a.volumes_from,
                hostname: a.hostname,
                size: a.size,
            };
            let rec = open(root)?.create(&req).with_context(|| match &a.name {
                Some(n) => format!("creating container {n}"),
                None => "creating a container".to_string(),
            })?;
            println!("{}", rec.id);
        }
        ContainerCommand::Mount { container } => {
            let p = open(root)?
                .mount(&container, true)
                .with_context(|| format!("mounting container {container}"))?;
            println!("{}", p.display());
        }
        ContainerCommand::Umount { container } => {
            open(root)?
                .unmount(&container)
                .with_context(|| format!("unmounting container {container}"))?;
        }
        ContainerCommand::Exec {
            container,
            env,
            cmd,
        } => {
            let mut vars = vec![];
            for e in env {
                let (k, v) = e
                    .split_once('=')
                    .with_context(|| format!("--env '{e}': use KEY=VALUE"))?;
                if k.is_empty() {
                    anyhow::bail!("--env '{e}': the name is empty");
                }
                vars.push((k.to_string(), v.to_string()));
            }
            // The lock is held only to mount and to unmount: the command
            // may run for as long as it likes.
            let (rec, rootfs, mounted_here) = open(root)?
                .prepare_exec(&container)
                .with_context(|| format!("mounting container {container}"))?;
            let result = exec::run(&ExecSpec {
                rootfs,
                hostname: rec.hostname.clone(),
                argv: cmd,
                env: vars,
            });
            if mounted_here {
                open(root)?
                    .finish_exec(&rec.id)
                    .with_context(|| format!("unmounting container {container}"))?;
            }
            match result {
                Ok(code) => std::process::exit(code),
                Err(e @ thinlayer::Error::NotFound { .. }) => {
                    eprintln!("thinlayer: {e}");
                    std::process::exit(127);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("running in container {container}"))
                }
            }
        }
        ContainerCommand::Ls { json } => {
            let list = open(root)?.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<14} {:<20} {:<8} {:<24} {:<8} VOLUMES",
                    "CONTAINER", "NAME", "DRIVER", "IMAGE", "MOUNTED"
                );
                for i in &list {
                    let r = &i.record;
                    let vols: Vec<String> = r
                        .mounts
                        .iter()
                        .map(|m| {
                            let src = match &m.source {
                                // Anonymous volumes' names are 64 hex digits.
                                Source::Volume { name } if name.len() == 64 => {
                                    thinlayer::util::ids::short(name).to_string()
                                }
                                s => show_source(s),
                            };
                            let ro = if m.readonly { ":ro" } else { "" };
                            format!("{src}:{}{ro}", m.destination)
                        })
                        .collect();
                    println!(
                        "{:<14} {:<20} {:<8} {:<24} {:<8} {}",
                        r.short_id(),
                        r.name,
                        r.driver,
                        r.image_name
                            .clone()
                            .unwrap_or_else(|| format!("layer {}", r.parent.short())),
                        if i.mounted { "yes" } else { "no" },
                        vols.join(", ")
                    );
                }
            }
        }
        ContainerCommand::Inspect { container, json } => {
            let i = open(root)?.inspect(&container)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print_inspect(&i);
            }
        }
        ContainerCommand::Commit { container, name } => {
            let id = open(root)?
                .commit(&container, name.as_deref())
                .with_context(|| format!("committing container {container}"))?;
            println!("{id}");
        }
        ContainerCommand::Diff { container, json } => {
            let changes = open(root)?
                .diff(&container)
                .with_context(|| format!("listing the changes of container {container}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
            } else {
                let mut out = std::io::stdout().lock();
                for c in &changes {
                    use std::io::Write;
                    writeln!(out, "{} {}", c.kind.letter(), c.path)?;
                }
            }
        }
        ContainerCommand::Cp { src, dest } => copy(root, &src, &dest)?,
        ContainerCommand::Rm {
            force,
            volumes,
            containers,
        } => {
            let mut c = open(root)?;
            for name in containers {
                let removed = c
                    .remove(&name, force, volumes)
                    .with_context(|| format!("removing container {name}"))?;
                println!("{name}");
                for v in removed {
                    eprintln!("thinlayer: removed anonymous volume {v}");
                }
            }
        }
    }
    Ok(())
}

/// One end of `container cp`.
#[derive(Debug, PartialEq, Eq)]
enum End<'a> {
    Container(&'a str, &'a str),
    Host(&'a str),
    Stream,
}

/// Reads an end as `docker cp` does: `-`, `NAME:PATH` (a colon before any
/// `/`), or a host path (a leading `/` or `./` makes any path a host one).
fn end(s: &str) -> End<'_> {
    if s == "-" {
        return End::Stream;
    }
    match s.split_once(':') {
        Some((c, p)) if !c.is_empty() && !c.contains('/') => End::Container(c, p),
        _ => End::Host(s),
    }
}

fn copy(root: &Root, src: &str, dest: &str) -> Result<()> {
    use thinlayer::container::cp::{CopyFrom, CopyTo};
    let what = || format!("copying {src} to {dest}");
    match (end(src), end(dest)) {
        (End::Container(c, p), End::Host(h)) => open(root)?
            .copy_out(c, p, CopyTo::Host(std::path::Path::new(h)))
            .with_context(what)?,
        (End::Container(c, p), End::Stream) => {
            let mut out = std::io::stdout().lock();
            open(root)?
                .copy_out(c, p, CopyTo::Tar(&mut out))
                .with_context(what)?;
        }
        (End::Host(h), End::Container(c, p)) => open(root)?
            .copy_in(c, CopyFrom::Host(std::path::Path::new(h)), p)
            .with_context(what)?,
        (End::Stream, End::Container(c, p)) => {
            let mut input = std::io::stdin().lock();
            open(root)?
                .copy_in(c, CopyFrom::Tar(&mut input), p)
                .with_context(what)?;
        }
        (End::Container(..), End::Container(..)) => {
            anyhow::bail!("copying between containers is not supported: copy to the host first")
        }
        _ => anyhow::bail!(
            "one of SRC and DEST must be CONTAINER:PATH, e.g. `thinlayer container cp c1:/etc/hosts .`"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_cp_ends_are_read_as_docker_reads_them() {
        assert_eq!(end("-"), End::Stream);
        assert_eq!(end("c1:/etc/hosts"), End::Container("c1", "/etc/hosts"));
        assert_eq!(end("/tmp/a:b"), End::Host("/tmp/a:b"));
        assert_eq!(end("./c1:x"), End::Host("./c1:x"));
        assert_eq!(end("file"), End::Host("file"));
    }
}
