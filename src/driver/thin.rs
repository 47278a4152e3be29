//! The thin driver: every layer is a thin device in the pool.
//!
//! A base filesystem (ext4 or xfs, `--base-size`) is made once per pool on
//! a thin device tagged `base`. A layer with no parent is a snapshot of the
//! base; any other layer is a snapshot of its parent's device, tagged
//! `layer:<id>`, so the pool's record alone says which layer owns which
//! device. A snapshot is O(1) and later writes copy one pool block (64 KiB
//! by default) at a time. Devices are activated only while mounted.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use thinpool::{Bytes, Pool, ThinId};

use crate::changeset::split::Reassembled;
use crate::changeset::{self, ApplyOptions, ApplyStats, ExportOptions, ExportStats, WhiteoutMode};
use crate::driver::{ApplyWith, Driver, MountSpec, Usage};
use crate::error::{Error, Result};
use crate::layer::{DriverResource, LayerId, LayerRecord, Resource};
use crate::mount;
use crate::pool::{PoolHandle, ThinOwner};
use crate::util::tool;

/// The filesystem on the base device (and so on every layer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// ext4 (the default).
    #[default]
    Ext4,
    /// xfs, mounted with `nouuid` since snapshots share the uuid.
    Xfs,
}

impl std::str::FromStr for FsType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ext4" => Ok(FsType::Ext4),
            "xfs" => Ok(FsType::Xfs),
            _ => Err(format!(
                "'{s}' is not a supported filesystem: use ext4 or xfs"
            )),
        }
    }
}

impl FsType {
    /// The name `--fs` takes and mount(2) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Mount options: snapshots of one xfs share its uuid, so xfs needs
    /// `nouuid` to mount two layers at once.
    pub fn mount_data(self) -> &'static str {
        match self {
            FsType::Ext4 => "",
            FsType::Xfs => "nouuid",
        }
    }

    /// Mount options for thinlayer's own writing into a layer (applying a
    /// changeset), which flushes the device once when it is done
    /// ([`flush_device`]): ext4 without journal barriers. Each barrier
    /// is a flush of the thin device, and each flush of a thin device is
    /// a commit of the pool's metadata (with a flush of its data device
    /// first), down to the files under the loop devices; one flush at the
    /// end makes the same writes durable. The layer is made again from
    /// scratch if it is cut short, so the order of its writes before that
    /// flush does not matter. xfs has no such option.
    fn apply_mount_data(self) -> &'static str {
        match self {
            FsType::Ext4 => "nobarrier",
            FsType::Xfs => "nouuid",
        }
    }

    fn mkfs(self, dev: &Path) -> Result<()> {
        let mut cmd = match self {
            // A fresh thin device reads as zeros where nothing was
            // written, so the inode tables and the journal are zero
            // already: mke2fs neither writes them (which would provision
            // a quarter of a gigabyte of pool per 10G base) nor leaves
            // them to the kernel's lazy init (which would write them later
            // in every snapshot); it marks them zeroed
            // (assume_storage_prezeroed, e2fsprogs 1.47).
            FsType::Ext4 => {
                let mut c = Command::new("mkfs.ext4");
                c.args([
                    "-q",
                    "-F",
                    "-E",
                    "nodiscard,lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1",
                ]);
                c
            }
            FsType::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.args(["-q", "-f", "-K"]);
                c
            }
        };
        tool::run(cmd.arg(dev), &format!("mkfs.{}", self.as_str()))
    }

    /// Removes what mkfs put in the root directory that no image has:
    /// ext4's `lost+found`. Every layer is a snapshot of the base, so a
    /// layer's tree is then exactly its image's (containerd's devmapper
    /// snapshotter does the same); e2fsck makes it again should it ever
    /// need to reconnect an orphan. `mnt` is an empty scratch directory.
    fn remove_lost_found(self, dev: &Path, mnt: &Path) -> Result<()> {
        if self != FsType::Ext4 {
            return Ok(());
        }
        mount::mount(dev, mnt, self.as_str(), false, self.mount_data())?;
        let lf = mnt.join("lost+found");
        let removed = match fs::remove_dir(&lf) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing", &lf)(e))
            }
            _ => Ok(()),
        };
        let unmounted = mount::unmount(mnt);
        Error::after_cleanup(removed, [unmounted])
    }
}

/// Flushes a block device's volatile write cache: for a thin device, a
/// commit of the pool's metadata, with its data device flushed first.
fn flush_device(dev: &Path) -> Result<()> {
    fs::File::open(dev)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("flushing", dev))
}

/// Default size of the base filesystem (and so of every layer).
pub const DEFAULT_BASE_SIZE: Bytes = Bytes(10 << 30);

/// The thin driver's own record (`<root>/thin/driver.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinDriverRecord {
    /// The filesystem of the base (and so of every layer).
    pub fs: FsType,
    /// The base filesystem's size: every layer's, unless grown.
    pub base_size: Bytes,
    /// The base device, once made and formatted.
    #[serde(default)]
    pub base: Option<ThinId>,
}

impl Default for ThinDriverRecord {
    fn default() -> Self {
        ThinDriverRecord {
            fs: FsType::Ext4,
            base_size: DEFAULT_BASE_SIZE,
            base: None,
        }
    }
}

/// What the thin driver records as a layer's resource: its thin device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinResource {
    /// The layer's thin device in the pool.
    pub thin_id: ThinId,
}

impl DriverResource for ThinResource {
    const KIND: &'static str = "thin";
}

fn layer_tag(id: &LayerId) -> String {
    ThinOwner::Layer(id.clone()).tag()
}

/// Checks a base size: room for a filesystem, whole 4K blocks.
pub fn check_base_size(size: Bytes) -> Result<()> {
    if size < Bytes(64 << 20) || !size.is_multiple_of(Bytes(4096)) {
        return Err(Error::invalid(
            "base size",
            format!("{size} must be at least 64M and a multiple of 4K"),
        ));
    }
    Ok(())
}

/// The thin driver over an open, active pool.
pub struct ThinDriver {
    pool: PoolHandle,
    dir: PathBuf,
    rec: ThinDriverRecord,
    /// A device being activated in the background
    /// ([`Driver::prepare_mount`]): its thin id and the thread.
    activating: Option<(ThinId, std::thread::JoinHandle<thinpool::Result<PathBuf>>)>,
}

impl Drop for ThinDriver {
    fn drop(&mut self) {
        // No activation outlives the driver: its result is the device's
        // state, active until unmounted, deactivated or deleted.
        self.settle();
    }
}

impl ThinDriver {
    /// The driver's record file in its store directory.
    pub const RECORD: &'static str = "driver.json";

    /// Opens the driver over the active pool, making the base filesystem
    /// if a previous command did not finish it.
    pub fn open(pool: PoolHandle, dir: &Path) -> Result<ThinDriver> {
        pool.lock().require_active()?;
        // A command killed while it had a device mounted for scratch work
        // (the base while it is made) left it mounted: nothing can be
        // deleted or remade while it is. The caller holds the store's lock.
        crate::mount::sweep_scratch(dir)?;
        let rec: ThinDriverRecord =
            thinpool::record::read(&dir.join(Self::RECORD))?.unwrap_or_default();
        let mut d = ThinDriver {
            pool,
            dir: dir.to_path_buf(),
            rec,
            activating: None,
        };
        d.ensure_base()?;
        Ok(d)
    }

    /// Records the base filesystem's parameters before the pool is made.
    pub fn write_params(dir: &Path, fs: FsType, base_size: Bytes) -> Result<()> {
        check_base_size(base_size)?;
        thinpool::record::write(
            &dir.join(Self::RECORD),
            &ThinDriverRecord {
                fs,
                base_size,
                base: None,
            },
        )?;
        Ok(())
    }

    /// The base filesystem's parameters and device.
    pub fn record(&self) -> &ThinDriverRecord {
        &self.rec
    }

    /// The pool, once a background activation started by
    /// [`Driver::prepare_mount`] is done: every use of the pool settles it
    /// first ([`ThinDriver::settle`]), so none is forgotten.
    fn pool(&mut self) -> std::sync::MutexGuard<'_, Pool> {
        self.settle();
        self.pool.lock()
    }

    /// Waits for the background activation, if one was started; the node
    /// of device `id` if that activation was `id`'s and succeeded (`None`
    /// asks for no device: it only waits).
    fn activated(&mut self, id: Option<ThinId>) -> Option<PathBuf> {
        let (of, thread) = self.activating.take()?;
        let _phase = tracing::trace_span!(crate::phase::ACTIVATION_WAIT).entered();
        let dev = thread.join().ok()?.ok()?;
        (Some(of) == id).then_some(dev)
    }

    /// Waits for a background activation before other work on the pool:
    /// its device is then only the state it left (active until unmounted,
    /// deactivated or deleted), and a later mount never takes its node
    /// after that work deactivated or deleted the device.
    fn settle(&mut self) {
        let _ = self.activated(None);
    }

    /// Activates thin device `id`, or takes the node a background
    /// activation of it made.
    fn activate(&mut self, id: ThinId) -> Result<PathBuf> {
        match self.activated(Some(id)) {
            Some(dev) => Ok(dev),
            // None started, or it failed: this one says why.
            None => Ok(self.pool().activate_thin(id)?),
        }
    }

    fn ensure_base(&mut self) -> Result<()> {
        if let Some(id) = self.rec.base {
            if self.pool().thins().contains_key(&id) {
                return Ok(());
            }
            return Err(Error::Corrupt {
                what: "the thin driver".into(),
                reason: format!("its base device {id} is not in the pool"),
            });
        }
        // A base device without a record was left unformatted by a killed
        // command: make it again.
        let scratch = self.scratch("base")?;
        // At open: no background activation has started to settle.
        let mut pool = self.pool.lock();
        let stale: Vec<ThinId> = pool
            .thins()
            .iter()
            .filter(|(_, t)| ThinOwner::parse(&t.tag) == Some(ThinOwner::Base))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            pool.delete_thin(id)?;
        }
        let id = pool.create_thin(self.rec.base_size, &ThinOwner::Base.tag())?;
        let fs = self.rec.fs;
        let made = pool.activate_thin(id).map_err(Error::from).and_then(|dev| {
            fs.mkfs(&dev)?;
            fs.remove_lost_found(&dev, &scratch)
        });
        let _ = fs::remove_dir(&scratch);
        let _ = pool.deactivate_thin(id);
        if let Err(e) = made {
            let undo = pool.delete_thin(id).map_err(Error::from);
            return Err(e.with_rollback(undo));
        }
        self.rec.base = Some(id);
        thinpool::record::write(&self.dir.join(Self::RECORD), &self.rec)?;
        Ok(())
    }

    fn thin_of(layer: &LayerRecord) -> Result<ThinId> {
        Ok(layer.resource.decode::<ThinResource>(&layer.id)?.thin_id)
    }

    fn scratch(&self, name: &str) -> Result<PathBuf> {
        let p = crate::mount::scratch_dir(&self.dir)?.join(name);
        fs::create_dir_all(&p).map_err(Error::io("creating", &p))?;
        Ok(p)
    }

    /// Mounts a thin device at `target`.
    fn mount_thin(&mut self, id: ThinId, target: &Path, readonly: bool) -> Result<()> {
        let data = self.rec.fs.mount_data();
        self.mount_thin_with(id, target, readonly, data).map(drop)
    }

    /// [`ThinDriver::mount_thin`] with mount options `data`; returns the
    /// device.
    fn mount_thin_with(
        &mut self,
        id: ThinId,
        target: &Path,
        readonly: bool,
        data: &str,
    ) -> Result<PathBuf> {
        let dev = self.activate(id)?;
        let fs = self.rec.fs;
        mount::mount(&dev, target, fs.as_str(), readonly, data).inspect_err(|_| {
            let _ = self.pool().deactivate_thin(id);
        })?;
        Ok(dev)
    }

    /// Unmounts `target` and deactivates the device unless it is still
    /// mounted elsewhere.
    fn unmount_thin(&mut self, id: ThinId, target: &Path) -> Result<()> {
        mount::unmount(target)?;
        self.release_thin(id, target)
    }

    /// What follows an unmount: the mount point goes, and the device is
    /// deactivated unless it is still mounted elsewhere.
    fn release_thin(&mut self, id: ThinId, target: &Path) -> Result<()> {
        let _ = fs::remove_dir(target);
        match self.pool().deactivate_thin(id) {
            Ok(()) | Err(thinpool::Error::Busy { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes out of the new thin device `new` (a snapshot of a container
    /// layer over `over`) what `over` made over `base`
    /// ([`crate::changeset::unlayer`]), then flushes it, as
    /// [`Driver::apply`] does.
    fn unlayer(
        &mut self,
        id: &LayerId,
        new: ThinId,
        over: ThinId,
        base: ThinId,
        files: &[&str],
        dirs: &[&str],
    ) -> Result<()> {
        let target = self.scratch(id.as_str())?;
        let over_dir = self.scratch(&format!("{id}-over"))?;
        let base_dir = self.scratch(&format!("{id}-base"))?;
        let data = self.rec.fs.apply_mount_data();
        let dev = self.mount_thin_with(new, &target, false, data)?;
        let mut mounted = vec![];
        let result = self
            .mount_thin(over, &over_dir, true)
            .inspect(|()| mounted.push((over, over_dir.clone())))
            .and_then(|()| self.mount_thin(base, &base_dir, true))
            .inspect(|()| mounted.push((base, base_dir.clone())))
            .and_then(|()| {
                thinpool::killpoint::here(thinpool::killpoint::CONTAINER_COMMIT_UNLAYERING);
                crate::changeset::unlayer(&target, &over_dir, &base_dir, files, dirs)
                    .map_err(Error::from)
            });
        let mut undo: Vec<Result<()>> = mounted
            .into_iter()
            .map(|(t, dir)| self.unmount_thin(t, &dir))
            .collect();
        // Unmounted, the filesystem's writes are all on the device; one
        // flush makes them durable before the layer is recorded.
        undo.push(mount::unmount(&target).and_then(|()| {
            let flushed = flush_device(&dev);
            let released = self.release_thin(new, &target);
            flushed.and(released)
        }));
        Error::after_cleanup(result, undo)
    }

    fn base(&self) -> ThinId {
        self.rec
            .base
            .expect("the base is made when the driver opens")
    }
}

impl Driver for ThinDriver {
    fn name(&self) -> &'static str {
        "thin"
    }

    fn create(&mut self, id: &LayerId, chain: &[&LayerRecord]) -> Result<Resource> {
        let origin = match chain.first() {
            Some(p) => Self::thin_of(p)?,
            None => self.base(),
        };
        let thin_id = self.pool().snapshot_thin(origin, &layer_tag(id))?;
        Ok(Resource::new(&ThinResource { thin_id }))
    }

    fn copy_commit(
        &mut self,
        id: &LayerId,
        of: &[&LayerRecord],
        base: &[&LayerRecord],
        files: &[&str],
        dirs: &[&str],
    ) -> Result<Option<Resource>> {
        let ([rw, over, ..], [parent, ..]) = (of, base) else {
            return Ok(None);
        };
        if over.parent.as_ref() != Some(&parent.id) {
            return Ok(None);
        }
        let (rw_id, over_id, base_id) = (
            Self::thin_of(rw)?,
            Self::thin_of(over)?,
            Self::thin_of(parent)?,
        );
        // A container grown past its image's size would make a layer of
        // its size; the export and apply keep the parent's.
        let sizes: Vec<Option<thinpool::Bytes>> = {
            let pool = self.pool();
            [rw_id, base_id]
                .iter()
                .map(|t| pool.thins().get(t).map(|r| r.size))
                .collect()
        };
        if sizes[0].is_none() || sizes[0] != sizes[1] {
            return Ok(None);
        }
        let thin_id = self.pool().snapshot_thin(rw_id, &layer_tag(id))?;
        let made = self.unlayer(id, thin_id, over_id, base_id, files, dirs);
        match made {
            Ok(()) => Ok(Some(Resource::new(&ThinResource { thin_id }))),
            Err(e) => {
                let undo = self.pool().delete_thin(thin_id).map_err(Error::from);
                match e {
                    Error::Changeset(crate::changeset::ChangesetError::Unsupported { .. }) => {
                        undo.map(|()| None)
                    }
                    e => Err(e.with_rollback(undo)),
                }
            }
        }
    }

    fn apply(
        &mut self,
        layer: &LayerRecord,
        _chain: &[&LayerRecord],
        changeset: &mut dyn Read,
        with: ApplyWith<'_>,
    ) -> Result<ApplyStats> {
        let id = Self::thin_of(layer)?;
        let target = self.scratch(layer.id.as_str())?;
        let data = self.rec.fs.apply_mount_data();
        let dev = self.mount_thin_with(id, &target, false, data)?;
        let applied = with.apply(
            changeset,
            &target,
            ApplyOptions {
                start_writeback: true,
                ..ApplyOptions::new(WhiteoutMode::Delete)
            },
        );
        // Unmounted, the filesystem's writes are all on the device; one
        // flush makes them durable before the layer is recorded. A device
        // that will not unmount is left as `unmount_thin` leaves it.
        let done = mount::unmount(&target).and_then(|()| {
            let flushed = flush_device(&dev);
            let released = self.release_thin(id, &target);
            flushed.and(released)
        });
        Error::after_cleanup(applied, [done])
    }

    fn reassemble(
        &mut self,
        chain: &[&LayerRecord],
        record: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<Reassembled> {
        let layer = chain[0];
        let id = Self::thin_of(layer)?;
        let target = self.scratch(&format!("{}-reassemble", layer.id))?;
        self.mount_thin(id, &target, true)?;
        let result = changeset::split::reassemble(record, &target, out).map_err(Error::from);
        let unmounted = self.unmount_thin(id, &target);
        Error::after_cleanup(result, [unmounted])
    }

    fn mount(&mut self, chain: &[&LayerRecord], target: &Path, writable: bool) -> Result<()> {
        self.mount_thin(Self::thin_of(chain[0])?, target, !writable)
    }

    fn mount_spec(&mut self, chain: &[&LayerRecord], writable: bool) -> Result<MountSpec> {
        let dev = self.activate(Self::thin_of(chain[0])?)?;
        let mut options = vec![if writable { "rw" } else { "ro" }.to_string()];
        let data = self.rec.fs.mount_data();
        if !data.is_empty() {
            options.push(data.to_string());
        }
        Ok(MountSpec {
            fstype: self.rec.fs.as_str().to_string(),
            source: dev.display().to_string(),
            options,
        })
    }

    fn prepare_mount(&mut self, layer: &LayerRecord) {
        self.settle();
        let Ok(id) = Self::thin_of(layer) else {
            return;
        };
        let pool = self.pool.clone();
        // The caller's tracing subscriber (a benchmark's) sees the thread's
        // phases too.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        // If no thread can be had, the mount activates the device itself.
        if let Ok(thread) = std::thread::Builder::new()
            .name(format!("activate {id}"))
            .spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || pool.lock().activate_thin(id))
            })
        {
            self.activating = Some((id, thread));
        }
    }

    fn check_size(&self, size: Bytes) -> Result<()> {
        check_base_size(size)?;
        if size < self.rec.base_size {
            return Err(Error::invalid(
                "size",
                format!(
                    "{size} is smaller than the base filesystem ({}); a layer can only grow",
                    self.rec.base_size
                ),
            ));
        }
        Ok(())
    }

    fn resize(&mut self, layer: &LayerRecord, size: Bytes) -> Result<()> {
        self.check_size(size)?;
        let id = Self::thin_of(layer)?;
        self.pool().grow_thin(id, size)?;
        // Online growth: both filesystems grow while mounted, and ext4
        // needs no fsck first that way.
        let target = self.scratch(&format!("{}-resize", layer.id))?;
        self.mount_thin(id, &target, false)?;
        let dev = self.pool().activate_thin(id)?;
        let (name, arg) = match self.rec.fs {
            FsType::Ext4 => ("resize2fs", dev.clone()),
            FsType::Xfs => ("xfs_growfs", target.clone()),
        };
        let grown = tool::run(Command::new(name).arg(&arg), name);
        let unmounted = self.unmount_thin(id, &target);
        Error::after_cleanup(grown, [unmounted])
    }

    fn unmount(&mut self, layer: &LayerRecord, target: &Path) -> Result<()> {
        self.unmount_thin(Self::thin_of(layer)?, target)
    }

    fn export(
        &mut self,
        chain: &[&LayerRecord],
        out: &mut dyn Write,
        opts: &ExportOptions,
    ) -> Result<ExportStats> {
        let layer = chain[0];
        let child_id = Self::thin_of(layer)?;
        let parent_id = match chain.get(1) {
            Some(p) => Self::thin_of(p)?,
            None => self.base(),
        };
        let child = self.scratch(&format!("{}-export", layer.id))?;
        let parent = self.scratch(&format!("{}-export-parent", layer.id))?;
        self.mount_thin(child_id, &child, true)?;
        let result = self.mount_thin(parent_id, &parent, true).and_then(|()| {
            changeset::export_diff(Some(&parent), &child, out, opts).map_err(Error::from)
        });
        let u1 = self.unmount_thin(parent_id, &parent);
        let u2 = self.unmount_thin(child_id, &child);
        Error::after_cleanup(result, [u1, u2])
    }

    fn remove(&mut self, layer: &LayerRecord) -> Result<()> {
        let id = Self::thin_of(layer)?;
        let mut pool = self.pool();
        if pool.thins().contains_key(&id) {
            pool.delete_thin(id)?;
        }
        Ok(())
    }

    fn remove_orphan(&mut self, id: &LayerId) -> Result<()> {
        let tag = layer_tag(id);
        let mut pool = self.pool();
        let ids: Vec<ThinId> = pool
            .thins()
            .iter()
            .filter(|(_, t)| t.tag == tag)
            .map(|(id, _)| *id)
            .collect();
        for thin in ids {
            pool.delete_thin(thin)?;
        }
        Ok(())
    }

    fn usage(&mut self, layers: &[&LayerRecord]) -> Result<Vec<Usage>> {
        let all = self.pool().usage()?;
        layers
            .iter()
            .map(|l| {
                let u = all.get(&Self::thin_of(l)?).copied().unwrap_or_default();
                Ok(Usage {
                    exclusive_bytes: u.exclusive.0,
                    shared_bytes: u.shared.0,
                    inodes: None,
                })
            })
            .collect()
    }

    fn reconcile(
        &mut self,
        layers: &[&LayerRecord],
        in_flight: &std::collections::BTreeSet<LayerId>,
    ) -> Result<Vec<String>> {
        let mut freed = vec![];
        let owned: std::collections::BTreeSet<&LayerId> = layers
            .iter()
            .map(|l| &l.id)
            .chain(in_flight.iter())
            .collect();
        let mut pool = self.pool();
        pool.refresh()?;
        let orphans: Vec<(ThinId, String)> = pool
            .thins()
            .iter()
            .filter(|(_, t)| {
                matches!(ThinOwner::parse(&t.tag), Some(ThinOwner::Layer(id)) if !owned.contains(&id))
            })
            .map(|(id, t)| (*id, t.tag.clone()))
            .collect();
        for (id, tag) in orphans {
            pool.delete_thin(id)?;
            freed.push(format!("thin device {id} ({tag})"));
        }
        for l in layers {
            let id = Self::thin_of(l)?;
            if !pool.thins().contains_key(&id) {
                return Err(Error::Corrupt {
                    what: format!("layer {}", l.id),
                    reason: format!("its thin device {id} is not in the pool"),
                });
            }
        }
        Ok(freed)
    }

    fn revalidate(&mut self) -> Result<bool> {
        // A failure here (the pool destroyed, its devices gone) is the
        // fresh open's to report.
        let mut pool = self.pool();
        Ok(pool.refresh_devices().is_ok() && pool.is_active())
    }
}
