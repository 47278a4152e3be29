//! Starting and stopping a pool's dm devices.
//!
//! Starting is `setup` in devicemapper's sense: a device that exists is
//! adopted after its table is checked against the record, one that does
//! not is created. So the same code activates a pool after a reboot, takes
//! over an active one on open, and finishes a create.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use devicemapper::{
    DataBlocks, Device, LinearDev, LinearDevTargetParams, LinearTargetParams, Sectors, TargetLine,
    ThinPoolDev, ThinPoolWorkingStatus,
};

use super::devices::{detach_loops, remove_devices, Listed, LiveTable};
use super::tools::thin_check;
use super::{Backing, BackingKind, Pool};
use crate::config::{OnFull, METADATA_BLOCK};
use crate::error::{Error, Result};
use crate::kernel::{self, Superblock};
use crate::loopback;
use crate::names::Role;
use crate::units::{Bytes, ThinId, TransactionId};

/// How [`Pool::activate_with`] checks the metadata before loading it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MetadataCheck {
    /// `thin_check` the whole metadata (LVM does it on every activation).
    #[default]
    Full,
    /// Trust it, unless the kernel flagged it for a check.
    Skip,
}

/// What [`Pool::activate_with`] did besides activating.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activated {
    /// `thin_check` passed on the metadata.
    pub checked: bool,
    /// The kernel's `needs_check` flag was set and is now cleared.
    pub cleared_needs_check: bool,
    /// Thin ids the metadata held that the record did not, now deleted.
    pub freed_orphans: Vec<ThinId>,
}

/// The table of a linear device over the whole of `size` of `device`.
fn linear_table(device: Device, size: Bytes) -> Vec<TargetLine<LinearDevTargetParams>> {
    vec![TargetLine::new(
        Sectors(0),
        Sectors(size.sectors()),
        LinearDevTargetParams::Linear(LinearTargetParams::new(device, Sectors(0))),
    )]
}

/// The device a single-line linear table maps from its start
/// (`<major>:<minor> 0`); `None` for any other table.
pub(super) fn linear_source(table: &LiveTable) -> Option<Device> {
    if table.target != "linear" {
        return None;
    }
    table.params.strip_suffix(" 0")?.parse().ok()
}

/// The device number of the block device at `path`.
fn device_of(path: &Path) -> Result<Device> {
    let meta = fs::metadata(path).map_err(Error::io("inspecting", path))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::invalid(
            "device",
            format!("{} is not a block device", path.display()),
        ));
    }
    Ok(Device::from(meta.rdev()))
}

/// The thin-pool target's feature arguments for a full-pool policy.
pub(super) fn pool_features(on_full: OnFull) -> Vec<String> {
    match on_full {
        OnFull::Error => vec!["error_if_no_space".to_string()],
        OnFull::Queue => vec![],
    }
}

/// Checks that a backing is there and, for a file, at least as large as
/// the record says (a smaller one would cut off data the pool mapped).
fn check_backing(b: &Backing) -> Result<()> {
    let meta = fs::metadata(&b.path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Mismatch {
                what: "backing".into(),
                reason: format!("{} is missing", b.path.display()),
            }
        } else {
            Error::io("inspecting", b.path.clone())(e)
        }
    })?;
    if b.kind == BackingKind::File && meta.len() < b.size.0 {
        return Err(Error::Mismatch {
            what: "backing file".into(),
            reason: format!(
                "{} holds {} but the record says {}",
                b.path.display(),
                Bytes(meta.len()),
                b.size
            ),
        });
    }
    Ok(())
}

impl Pool {
    /// Attaches loops and creates (or adopts) the linear and pool devices.
    pub(super) fn start_devices(&mut self) -> Result<()> {
        let meta_dev = self.backing_device(&self.record.metadata)?;
        let data_dev = self.backing_device(&self.record.data)?;
        self.start_devices_on(meta_dev, data_dev)
    }

    /// [`Pool::start_devices`] over backing devices already found.
    fn start_devices_on(&mut self, meta_dev: Device, data_dev: Device) -> Result<()> {
        self.dev = Some(self.setup_devices(meta_dev, data_dev)?);
        self.active = true;
        // An adopted pool keeps its old low-water mark and features
        // (devicemapper compares neither): bring them to the record's.
        self.sync_pool_params()?;
        if self.record.on_full == OnFull::Queue {
            kernel::set_no_space_timeout(self.record.queue_timeout.secs())?;
        }
        Ok(())
    }

    /// The pool's three dm devices over the given backing devices: made
    /// where missing, taken over (their tables checked) where they exist.
    pub(super) fn setup_devices(&self, meta_dev: Device, data_dev: Device) -> Result<ThinPoolDev> {
        let meta = LinearDev::setup(
            &self.dm,
            &self.names.name(Role::Meta),
            Some(&self.names.uuid(Role::Meta)),
            linear_table(meta_dev, self.record.metadata.size),
        )
        .map_err(Error::dm("creating the metadata linear device"))?;
        let data = LinearDev::setup(
            &self.dm,
            &self.names.name(Role::Data),
            Some(&self.names.uuid(Role::Data)),
            linear_table(data_dev, self.record.data.size),
        )
        .map_err(Error::dm("creating the data linear device"))?;
        ThinPoolDev::setup(
            &self.dm,
            &self.names.name(Role::Pool),
            Some(&self.names.uuid(Role::Pool)),
            meta,
            data,
            Sectors(self.record.block_size.sectors()),
            DataBlocks(self.low_water_blocks()),
            pool_features(self.record.on_full),
        )
        .map_err(Error::dm("creating the thin-pool device"))
    }

    /// The block device under a backing: its loop device for a file
    /// (attached if needed, capacity refreshed if the file grew), or the
    /// device itself.
    fn backing_device(&self, b: &Backing) -> Result<Device> {
        match b.kind {
            BackingKind::File => {
                let lo = loopback::attach(&b.path)
                    .map_err(Error::io("attaching a loop device to", &b.path))?;
                if lo.size().map_err(Error::io("sizing", &lo.path))? < b.size {
                    lo.refresh_capacity()
                        .map_err(Error::io("refreshing the capacity of", &lo.path))?;
                }
                device_of(&lo.path)
            }
            BackingKind::Device => device_of(&b.path),
        }
    }

    /// Takes over an active pool, rolling forward a grow that was killed
    /// between recording the new size and reloading the tables.
    pub(super) fn adopt(&mut self) -> Result<()> {
        let mut found = vec![];
        for (role, b) in [
            (Role::Meta, &self.record.metadata),
            (Role::Data, &self.record.data),
        ] {
            let want = self.backing_device(b)?;
            found.push(want);
            let mismatch = |reason: String| Error::Mismatch {
                what: format!("device {}", self.names.name_string(role)),
                reason,
            };
            let Some(table) = self.kernel_table(role)? else {
                return Err(mismatch(
                    "the pool is active but this device is missing".into(),
                ));
            };
            let want_params = format!("{want} 0");
            if table.target != "linear" || table.params != want_params {
                return Err(mismatch(format!(
                    "its table is '{} {}', expected 'linear {want_params}'",
                    table.target, table.params
                )));
            }
            match table.sectors.cmp(&b.size.sectors()) {
                std::cmp::Ordering::Less => self.reload_length(role, b.size.sectors(), &table)?,
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => {
                    return Err(mismatch(format!(
                        "it maps {} but the record says {}",
                        Bytes::from_sectors(table.sectors),
                        b.size
                    )))
                }
            }
        }
        if let Some(table) = self.kernel_table(Role::Pool)? {
            // The pool takes a grown data or metadata device when its
            // table is loaded and resumed again (its preresume resizes
            // both); a metadata-only grow, or one killed before the pool
            // took it, reloads the same table.
            let meta_short =
                self.kernel_metadata_blocks()? < self.record.metadata.size.0 / METADATA_BLOCK.0;
            if table.sectors < self.record.data.size.sectors() || meta_short {
                let sectors = table.sectors.max(self.record.data.size.sectors());
                self.reload_length(Role::Pool, sectors, &table)?;
            }
        }
        // The backings just checked: finding them again would scan every
        // loop device twice more.
        self.start_devices_on(found[0], found[1])
    }

    /// [`Pool::adopt`] for a reader, holding the lock shared: takes over
    /// an active pool whose devices are exactly as the record says,
    /// changing nothing, and returns the pool's status. `listed` is what
    /// the kernel has (one `DM_LIST_DEVICES`, taken under the lock).
    /// `None` (nothing taken) when anything needs the writer's adoption: a
    /// device missing or not mapped as recorded, a backing file without
    /// its loop device or short of its size, a grow the pool has not
    /// taken, a table whose parameters are not the record's.
    ///
    /// Errors: [`Error::Failed`] for a pool the kernel failed.
    pub(super) fn adopt_unchanged(
        &mut self,
        listed: &Listed,
    ) -> Result<Option<ThinPoolWorkingStatus>> {
        for (role, b) in [
            (Role::Meta, &self.record.metadata),
            (Role::Data, &self.record.data),
        ] {
            let Some(table) = self.listed_table(role, listed)? else {
                return Ok(None);
            };
            // The device the linear table maps is the one to check: a
            // loop device is asked whether it is bound to the backing
            // file, instead of every loop device being asked.
            let Some(dev) = linear_source(&table) else {
                return Ok(None);
            };
            if table.sectors != b.size.sectors() {
                return Ok(None);
            }
            let ours = match b.kind {
                BackingKind::File => loopback::bound_at(dev.major, dev.minor, &b.path)
                    .ok()
                    .flatten()
                    .is_some_and(|lo| lo.size().is_ok_and(|size| size >= b.size)),
                BackingKind::Device => device_of(&b.path)? == dev,
            };
            if !ours {
                return Ok(None);
            }
        }
        let Some(table) = self.listed_table(Role::Pool, listed)? else {
            return Ok(None);
        };
        if table.sectors < self.record.data.size.sectors() {
            return Ok(None);
        }
        // The pool maps our two linear devices, in the record's blocks,
        // with the record's low-water mark and features.
        let (have, want) = self.pool_params(&table)?;
        if have != want
            || have.data_block_size != Sectors(self.record.block_size.sectors())
            || Some(have.metadata_dev) != self.listed_device(Role::Meta, listed)
            || Some(have.data_dev) != self.listed_device(Role::Data, listed)
        {
            return Ok(None);
        }
        // devicemapper's handle is taken when something needs it
        // (`Pool::pool_dev`): a status read or a message goes by name, and
        // a thin device's table names the pool by the number listed here.
        self.pool_devno = self.listed_device(Role::Pool, listed);
        self.active = true;
        let status = self.working_status()?;
        if status.usage.total_meta.0 < self.record.metadata.size.0 / METADATA_BLOCK.0 {
            self.set_inactive();
            return Ok(None);
        }
        Ok(Some(status))
    }

    /// Activates an inactive pool after checking its backings and metadata
    /// against the record, then finishes whatever a killed command left in
    /// flight; idempotent.
    ///
    /// Errors: [`Error::Mismatch`] (nothing started) when a backing is
    /// missing or short, or the metadata's block size or transaction id
    /// is not the record's; [`Error::Dm`] when the kernel refuses a
    /// device, after stopping what was started ([`Error::Rollback`] if
    /// that failed too).
    pub fn activate(&mut self) -> Result<()> {
        self.activate_with(MetadataCheck::Full).map(drop)
    }

    /// [`Pool::activate`], with the metadata checked first as `check`
    /// says, and then thin ids the metadata holds but the record does not
    /// know freed (what a failed rollback of an older thinlayer, or a
    /// record lost with its operation, left).
    ///
    /// Errors: besides [`Pool::activate`]'s, [`Error::MetadataDamaged`]
    /// when `thin_check` finds damage, [`Error::NeedsCheck`] when the
    /// check is skipped but the kernel flagged the metadata, and
    /// [`Error::Tool`] when `thin_check` cannot run; nothing is started.
    pub fn activate_with(&mut self, check: MetadataCheck) -> Result<Activated> {
        let mut done = Activated::default();
        if self.active {
            return Ok(done);
        }
        let meta = self.record.metadata.path.clone();
        // A metadata file cut short is damage thin_repair mends: checked
        // before the backing's size is, so the refusal names the repair.
        if check == MetadataCheck::Full && meta.exists() {
            thin_check(&meta, &[])?;
        }
        for b in [&self.record.data, &self.record.metadata] {
            check_backing(b)?;
        }
        let flagged = Superblock::read(&meta)?.is_some_and(|sb| sb.needs_check);
        match check {
            MetadataCheck::Full => {
                done.checked = true;
                if flagged {
                    thin_check(&meta, &["--clear-needs-check-flag"])?;
                    done.cleared_needs_check = true;
                }
            }
            MetadataCheck::Skip if flagged => return Err(Error::NeedsCheck { path: meta }),
            MetadataCheck::Skip => {}
        }
        let sb = Superblock::read(&self.record.metadata.path)?;
        let r = self.record.transaction_id;
        let allowed: Vec<TransactionId> = match self.record.pending {
            Some(_) => vec![r, r.next()],
            None => vec![r],
        };
        kernel::check_superblock(sb.as_ref(), self.record.block_size, &allowed).map_err(
            |reason| Error::Mismatch {
                what: format!("metadata {}", self.record.metadata.path.display()),
                reason,
            },
        )?;
        if let Err(causal) = self.start_devices() {
            self.set_inactive();
            return match self.stop_devices() {
                Ok(()) => Err(causal),
                Err(rollback) => Err(Error::Rollback {
                    causal: Box::new(causal),
                    rollback: Box::new(rollback),
                }),
            };
        }
        self.recover()?;
        done.freed_orphans = self.free_orphan_ids()?;
        Ok(done)
    }

    /// Removes every dm device of this pool (thin devices first) and
    /// detaches the loop devices it owns; idempotent.
    ///
    /// Errors: [`Error::Busy`], without removing the pool, while a thin
    /// device is mounted or open.
    pub fn deactivate(&mut self) -> Result<()> {
        let result = self.stop_devices();
        if result.is_ok() || !self.kernel_has(Role::Pool).unwrap_or(true) {
            self.set_inactive();
        }
        result
    }

    /// Removes the dm devices, then the loops under them.
    pub(super) fn stop_devices(&mut self) -> Result<()> {
        remove_devices(&self.dm, &self.names, &self.record)?;
        detach_loops(&self.record)
    }
}
