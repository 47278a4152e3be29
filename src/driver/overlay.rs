//! The overlay driver: every layer is a directory of its own changes.
//!
//! ```text
//! <root>/overlay/
//!   data/<id>/diff     the layer's changes, overlayfs upperdir form:
//!                      whiteouts are 0/0 character devices, opaque
//!                      directories carry trusted.overlay.opaque=y
//!   l/<link>           a 4-character link to data/<id>/diff
//!   empty/             an empty directory, the bottom of every stack
//! ```
//!
//! A mount stacks the layer's chain as overlayfs lower directories (the
//! layer on top, the empty directory at the bottom, so a single layer's
//! whiteouts stay hidden too). The option string names the short links
//! relative to `<root>/overlay`, as Docker's overlay2 does, so a chain of
//! 500 layers (the kernel's limit) still fits in one page.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::changeset::split::Reassembled;
use crate::changeset::{self, ApplyOptions, ApplyStats, ExportOptions, ExportStats, WhiteoutMode};
use crate::driver::{ApplyWith, Driver, MountSpec, Usage};
use crate::error::{Error, Result};
use crate::layer::{DriverResource, LayerId, LayerRecord, Resource};
use crate::mount;
use crate::util::ids;

/// overlayfs stacks at most this many lower directories (OVL_MAX_STACK).
pub const MAX_LOWER: usize = 500;

/// Mount options users may choose (shown by `layer inspect`). Recorded as
/// the list of their `--overlay-opt` values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct OverlayOptions {
    /// `index=off`: no inode index (the kernel default may be on).
    pub index_off: bool,
    /// `metacopy=on`: copy-up of metadata only on chmod/chown.
    pub metacopy: bool,
    /// `volatile`: no syncs to the upper directory (throwaway layers).
    pub volatile: bool,
}

impl OverlayOptions {
    /// Parses `--overlay-opt` values.
    pub fn parse(args: &[String]) -> Result<OverlayOptions> {
        let mut o = OverlayOptions::default();
        for a in args {
            match a.as_str() {
                "index=off" => o.index_off = true,
                "metacopy=on" => o.metacopy = true,
                "volatile" => o.volatile = true,
                _ => {
                    return Err(Error::invalid(
                        "overlay option",
                        format!("unknown option '{a}': use index=off, metacopy=on or volatile"),
                    ))
                }
            }
        }
        Ok(o)
    }

    /// Whether every option is off (the kernel's defaults).
    pub fn is_default(&self) -> bool {
        *self == OverlayOptions::default()
    }

    /// The `--overlay-opt` values that make these options.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![];
        if self.index_off {
            v.push("index=off".to_string());
        }
        if self.metacopy {
            v.push("metacopy=on".to_string());
        }
        if self.volatile {
            v.push("volatile".to_string());
        }
        v
    }
}

/// What the overlay driver records as a layer's resource: the short link
/// to its directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirResource {
    /// `l/<link>` points at the layer's `diff` directory.
    pub link: String,
}

impl DriverResource for DirResource {
    const KIND: &'static str = "dir";
}

impl TryFrom<Vec<String>> for OverlayOptions {
    type Error = Error;
    fn try_from(args: Vec<String>) -> Result<OverlayOptions> {
        OverlayOptions::parse(&args)
    }
}

impl From<OverlayOptions> for Vec<String> {
    fn from(o: OverlayOptions) -> Vec<String> {
        o.to_args()
    }
}

/// The overlay driver over its store directory.
pub struct OverlayDriver {
    dir: PathBuf,
    options: OverlayOptions,
}

fn random_link() -> Result<String> {
    ids::random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 4)
}

impl OverlayDriver {
    /// Opens the driver in its store directory, mounting with `options`.
    pub fn open(dir: &Path, options: OverlayOptions) -> Result<OverlayDriver> {
        for sub in ["data", "l", "empty"] {
            let p = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(Error::io("creating", &p))?;
        }
        Ok(OverlayDriver {
            dir: dir.to_path_buf(),
            options,
        })
    }

    fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.dir.join("data").join(id.as_str())
    }

    fn diff_dir(&self, id: &LayerId) -> PathBuf {
        self.layer_dir(id).join("diff")
    }

    fn link_of(layer: &LayerRecord) -> Result<String> {
        Ok(layer.resource.decode::<DirResource>(&layer.id)?.link)
    }

    /// The `-o` string for a stack of `chain` (top first): all read-only
    /// lower directories, or with `writable` the top layer's directory as
    /// the upper directory (and its `work/` beside it).
    pub fn mount_options(&self, chain: &[&LayerRecord], writable: bool) -> Result<String> {
        self.mount_options_from(chain, writable, "")
    }

    /// [`OverlayDriver::mount_options`] with every directory prefixed by
    /// `base` (empty: relative to the store directory).
    fn mount_options_from(
        &self,
        chain: &[&LayerRecord],
        writable: bool,
        base: &str,
    ) -> Result<String> {
        let (upper, lower) = match (writable, chain.split_first()) {
            (true, Some((top, rest))) => (Some(*top), rest),
            _ => (None, chain),
        };
        if lower.len() + 1 > MAX_LOWER {
            return Err(Error::invalid(
                "layer chain",
                format!(
                    "{} layers deep: overlayfs stacks at most {} lower directories ({} layers); use the thin driver for deeper chains",
                    chain.len(),
                    MAX_LOWER,
                    MAX_LOWER - 1
                ),
            ));
        }
        let mut lowers: Vec<String> = lower
            .iter()
            .map(|l| Ok(format!("{base}l/{}", Self::link_of(l)?)))
            .collect::<Result<_>>()?;
        lowers.push(format!("{base}empty"));
        let mut opts = vec![format!("lowerdir={}", lowers.join(":"))];
        if let Some(top) = upper {
            opts.push(format!("upperdir={base}data/{}/diff", top.id));
            opts.push(format!("workdir={base}data/{}/work", top.id));
            if !self.options.metacopy {
                // A renamed lower directory would otherwise become a
                // redirect, which a commit cannot export: the kernel answers
                // EXDEV and mv(1) copies instead, as on older kernels.
                opts.push("redirect_dir=off".into());
            }
        }
        if self.options.index_off {
            opts.push("index=off".into());
        }
        if self.options.metacopy {
            opts.push("metacopy=on".into());
        }
        if self.options.volatile {
            opts.push("volatile".into());
        }
        Ok(opts.join(","))
    }
}

impl OverlayDriver {
    /// overlayfs needs an empty work directory on the upper directory's
    /// filesystem.
    fn make_work_dir(&self, id: &LayerId) -> Result<()> {
        let work = self.layer_dir(id).join("work");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(Error::io("creating", &work))
    }
}

impl Driver for OverlayDriver {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn create(&mut self, id: &LayerId, _chain: &[&LayerRecord]) -> Result<Resource> {
        let diff = self.diff_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&diff)
            .map_err(Error::io("creating", &diff))?;
        for _ in 0..64 {
            let link = random_link()?;
            let target = Path::new("../data").join(id.as_str()).join("diff");
            match std::os::unix::fs::symlink(&target, self.dir.join("l").join(&link)) {
                Ok(()) => return Ok(Resource::new(&DirResource { link })),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io("linking", self.dir.join("l").join(&link))(e)),
            }
        }
        Err(Error::Corrupt {
            what: "the overlay store".into(),
            reason: "no free short link name after 64 tries".into(),
        })
    }

    fn apply(
        &mut self,
        layer: &LayerRecord,
        chain: &[&LayerRecord],
        changeset: &mut dyn Read,
        with: ApplyWith<'_>,
    ) -> Result<ApplyStats> {
        let mut opts = ApplyOptions::new(WhiteoutMode::Overlay);
        if chain.is_empty() {
            return with.apply(changeset, &self.diff_dir(&layer.id), opts);
        }
        // The parent's merged view, so directories the changeset implies
        // get their lower metadata and lower symlinks are not written
        // through: both as the thin driver's merged tree behaves.
        let lower = crate::mount::scratch_dir(&self.dir)?.join(format!("{}-lower", layer.id));
        fs::create_dir_all(&lower).map_err(Error::io("creating", &lower))?;
        self.mount(chain, &lower, false)?;
        opts.lower = Some(lower.clone());
        let applied = with.apply(changeset, &self.diff_dir(&layer.id), opts);
        let unmounted = mount::unmount(&lower);
        let _ = fs::remove_dir(&lower);
        Error::after_cleanup(applied, [unmounted])
    }

    fn mount_spec(&mut self, chain: &[&LayerRecord], writable: bool) -> Result<MountSpec> {
        let base = format!("{}/", self.dir.display());
        let opts = self.mount_options_from(chain, writable, &base)?;
        if writable {
            self.make_work_dir(&chain[0].id)?;
        }
        Ok(MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: opts.split(',').map(str::to_string).collect(),
        })
    }

    fn mount(&mut self, chain: &[&LayerRecord], target: &Path, writable: bool) -> Result<()> {
        let opts = self.mount_options(chain, writable)?;
        if writable {
            self.make_work_dir(&chain[0].id)?;
        }
        // From the store directory, so the short relative links resolve
        // there; the kernel reads them relative to the caller's cwd.
        mount::mount_in(&self.dir, "overlay", target, "overlay", &opts)
    }

    fn unmount(&mut self, _layer: &LayerRecord, target: &Path) -> Result<()> {
        mount::unmount(target)?;
        let _ = fs::remove_dir(target);
        Ok(())
    }

    fn export(
        &mut self,
        chain: &[&LayerRecord],
        out: &mut dyn Write,
        opts: &ExportOptions,
    ) -> Result<ExportStats> {
        Ok(changeset::export_overlay_layer(
            &self.diff_dir(&chain[0].id),
            out,
            opts,
        )?)
    }

    fn reassemble(
        &mut self,
        chain: &[&LayerRecord],
        record: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<Reassembled> {
        // The layer's own directory holds every file its changeset wrote.
        Ok(changeset::split::reassemble(
            record,
            &self.diff_dir(&chain[0].id),
            out,
        )?)
    }

    fn check_size(&self, _size: thinpool::Bytes) -> Result<()> {
        Err(Error::invalid(
            "size",
            "the overlay driver has no per-container size limit (its layers are directories on the root's filesystem); use --driver thin for --size",
        ))
    }

    fn resize(&mut self, _layer: &LayerRecord, size: thinpool::Bytes) -> Result<()> {
        self.check_size(size)
    }

    fn remove(&mut self, layer: &LayerRecord) -> Result<()> {
        let _ = fs::remove_file(self.dir.join("l").join(Self::link_of(layer)?));
        self.remove_orphan(&layer.id)
    }

    fn remove_orphan(&mut self, id: &LayerId) -> Result<()> {
        let d = self.layer_dir(id);
        match fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing", &d)(e)),
        }
        // Links whose target is gone.
        if let Ok(rd) = fs::read_dir(self.dir.join("l")) {
            for e in rd.flatten() {
                if fs::metadata(e.path()).is_err() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn usage(&mut self, layers: &[&LayerRecord]) -> Result<Vec<Usage>> {
        Ok(layers
            .iter()
            .map(|l| {
                let (bytes, inodes) = crate::util::du::du_inodes(&self.diff_dir(&l.id));
                Usage {
                    exclusive_bytes: bytes,
                    shared_bytes: 0,
                    inodes: Some(inodes),
                }
            })
            .collect())
    }

    fn reconcile(
        &mut self,
        layers: &[&LayerRecord],
        in_flight: &std::collections::BTreeSet<LayerId>,
    ) -> Result<Vec<String>> {
        let known: std::collections::BTreeSet<&str> =
            layers.iter().map(|l| l.id.as_str()).collect();
        let mut freed = vec![];
        let data = self.dir.join("data");
        let rd = fs::read_dir(&data).map_err(Error::io("listing", &data))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) {
                if let Ok(id) = LayerId::try_from(name.clone()) {
                    if in_flight.contains(&id) {
                        continue;
                    }
                    self.remove_orphan(&id)?;
                    freed.push(format!("layer directory {name}"));
                }
            }
        }
        for l in layers {
            let link = self.dir.join("l").join(Self::link_of(l)?);
            if !self.diff_dir(&l.id).is_dir() || fs::metadata(&link).is_err() {
                return Err(Error::Corrupt {
                    what: format!("layer {}", l.id),
                    reason: "its directory or link is missing".into(),
                });
            }
        }
        Ok(freed)
    }
}
