//! Thin devices: create, snapshot, delete, activate, deactivate, grow.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use devicemapper::{
    DevId, DmDevice, DmFlags, DmOptions, Sectors, TargetTable, ThinDev, ThinDevId,
    ThinDevTargetTable, ThinTargetParams,
};

use super::devices::remove_device;
use super::Pool;
use crate::error::{Error, Result};
use crate::kernel;
use crate::names::Role;
use crate::recovery::PendingOp;
use crate::units::{Bytes, ThinId};

/// The kernel's form of a thin id.
fn thin_dev_id(id: ThinId) -> ThinDevId {
    ThinDevId::new_u64(u64::from(id.0)).expect("thin ids are checked against ThinId::MAX")
}

impl Pool {
    /// The recorded size of thin device `id`.
    fn thin_size(&self, id: ThinId) -> Result<Bytes> {
        Ok(self
            .record
            .thins
            .get(&id)
            .ok_or(Error::NoSuchThin(id))?
            .size)
    }

    /// Creates an empty thin device of `size` (a whole number of 512-byte
    /// sectors), labelled with `tag`. The pool must be active.
    ///
    /// Errors: [`Error::Invalid`] for a bad size; [`Error::Inactive`];
    /// [`Error::ReadOnly`] or [`Error::Failed`] when the kernel stopped
    /// writing to the pool; [`Error::ThinIdsExhausted`].
    pub fn create_thin(&mut self, size: Bytes, tag: &str) -> Result<ThinId> {
        if size.0 == 0 || !size.is_multiple_of(Bytes(512)) {
            return Err(Error::invalid(
                "thin device size",
                format!("{size} is not a positive multiple of 512 bytes"),
            ));
        }
        self.require_active()?;
        self.exclusive(|p| {
            let id = p.record.allocate_thin_id()?;
            let op = PendingOp::Create {
                id,
                size,
                tag: tag.to_string(),
            };
            p.transact(op, &format!("create_thin {id}"), |_| Ok(()), |_| {})?;
            Ok(id)
        })
    }

    /// Creates a thin device sharing all of `origin`'s blocks (O(1), copy
    /// on write per pool block). An active origin is suspended, with its
    /// filesystem frozen and flushed, while the snapshot is taken.
    ///
    /// Errors: [`Error::NoSuchThin`] for an unknown origin; otherwise as
    /// [`Pool::create_thin`].
    pub fn snapshot_thin(&mut self, origin: ThinId, tag: &str) -> Result<ThinId> {
        self.exclusive(|p| p.snapshot_thin_locked(origin, tag))
    }

    fn snapshot_thin_locked(&mut self, origin: ThinId, tag: &str) -> Result<ThinId> {
        let size = self.thin_size(origin)?;
        self.require_active()?;
        let id = self.record.allocate_thin_id()?;
        let op = PendingOp::Snapshot {
            id,
            origin,
            size,
            tag: tag.to_string(),
        };
        let origin_name = self.names.name(Role::Thin(origin));
        let active = tracing::trace_span!(crate::phase::CHECK)
            .in_scope(|| self.kernel_has(Role::Thin(origin)))?;
        let suspend = |p: &Self| -> Result<()> {
            if active {
                p.dm.device_suspend(
                    &DevId::Name(&origin_name),
                    DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
                )
                .map_err(Error::dm(format!("suspending {}", &*origin_name)))?;
            }
            Ok(())
        };
        let resume = |p: &Self| {
            if active {
                let _ =
                    p.dm.device_suspend(&DevId::Name(&origin_name), DmOptions::default());
            }
        };
        self.transact(op, &format!("create_snap {id} {origin}"), suspend, resume)?;
        Ok(id)
    }

    /// Deactivates and deletes a thin device, freeing the blocks only it
    /// maps.
    ///
    /// Errors: [`Error::NoSuchThin`]; [`Error::Inactive`]; [`Error::Busy`]
    /// while it is mounted or open; [`Error::ReadOnly`] or
    /// [`Error::Failed`].
    pub fn delete_thin(&mut self, id: ThinId) -> Result<()> {
        self.refresh()?;
        if !self.record.thins.contains_key(&id) {
            return Err(Error::NoSuchThin(id));
        }
        self.require_active()?;
        // Its blocks go back to the host before the device goes: the
        // delete frees them in the pool only, and a loop-backed pool's
        // file would keep them allocated for good.
        self.discard_thin(id);
        // Deactivation (which may wait for the device to close) outside
        // the lock; the delete itself under it.
        self.remove_thin_dev(id)?;
        self.exclusive(|p| {
            if !p.record.thins.contains_key(&id) {
                return Err(Error::NoSuchThin(id));
            }
            p.remove_thin_dev(id)?;
            p.transact(
                PendingOp::Delete { id },
                &format!("delete {id}"),
                |_| Ok(()),
                |_| {},
            )
        })
    }

    /// Discards the whole of thin device `id` (activating it if needed):
    /// the pool frees the blocks it alone maps and passes the discards
    /// down to the data device, so a loop-backed pool's file gives the
    /// space back to the host filesystem (containerd's devmapper
    /// snapshotter's `discard_blocks`). Best effort: a device that is
    /// open elsewhere, or a pool whose data device takes no discards,
    /// keeps its blocks until the delete frees them in the pool.
    fn discard_thin(&mut self, id: ThinId) {
        let Some(size) = self.record.thins.get(&id).map(|t| t.size) else {
            return;
        };
        let Ok(dev) = self.activate_thin(id) else {
            return;
        };
        // O_EXCL: never under a mounted filesystem or another opener.
        if let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev)
        {
            let _ = kernel::discard(&f, Bytes(0), size);
        }
    }

    /// Activates a thin device and returns its device node (`/dev/dm-N`,
    /// which exists with or without udev); idempotent.
    ///
    /// Errors: [`Error::NoSuchThin`]; [`Error::Inactive`]; [`Error::Dm`].
    pub fn activate_thin(&mut self, id: ThinId) -> Result<PathBuf> {
        let _phase = tracing::trace_span!(crate::phase::ACTIVATE).entered();
        if !self.record.thins.contains_key(&id) {
            self.refresh()?;
        }
        let size = self.thin_size(id)?;
        let pool = self.pool_device()?;
        let name = self.names.name(Role::Thin(id));
        let dev = DevId::Name(&name);
        let failed = || Error::dm(format!("activating thin device {id}"));
        let table = ThinDevTargetTable::new(
            Sectors(0),
            Sectors(size.sectors()),
            ThinTargetParams::new(pool, thin_dev_id(id), None),
        );
        // The kernel's three steps and nothing more (the in-process floor's
        // own): create, load, resume. devicemapper's `ThinDev::setup`
        // would list every dm device first, and its handle needs the
        // pool's (its tables read back and checked) once per process.
        if let Err(e) = self.dm.device_create(
            &name,
            Some(&self.names.uuid(Role::Thin(id))),
            DmOptions::default(),
        ) {
            let err = failed()(e);
            if err.errno() != Some(libc::EBUSY) {
                return Err(err);
            }
            // There already: active (mounted elsewhere), checked against
            // the table it should have; or with no live table, left by a
            // process killed while it activated it, and finished here.
            let (_, lines) = self
                .dm
                .table_status(
                    &dev,
                    DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
                )
                .map_err(failed())?;
            if !lines.is_empty() {
                return self.adopt_thin(id, size);
            }
        }
        crate::killpoint::here(crate::killpoint::POOL_THIN_DEVICE_MADE);
        let loaded = self
            .dm
            .table_load(&dev, &table.to_raw_table(), DmOptions::default())
            .and_then(|_| self.dm.device_suspend(&dev, DmOptions::default()));
        match loaded {
            Ok(info) => Ok(PathBuf::from(format!("/dev/dm-{}", info.device().minor))),
            Err(e) => {
                // No half-made device stays: one without a table would be
                // in the way of the next activation.
                let _ = self.dm.device_remove(&dev, DmOptions::default());
                Err(failed()(e))
            }
        }
    }

    /// The node of thin device `id`, already active, once its table is
    /// checked against the one it should have (`size` over this pool).
    fn adopt_thin(&mut self, id: ThinId, size: Bytes) -> Result<PathBuf> {
        self.pool_dev()?;
        let pool = self.dev.as_ref().ok_or(Error::Inactive)?;
        let dev = ThinDev::setup(
            &self.dm,
            &self.names.name(Role::Thin(id)),
            Some(&self.names.uuid(Role::Thin(id))),
            Sectors(size.sectors()),
            pool,
            thin_dev_id(id),
        )
        .map_err(Error::dm(format!("activating thin device {id}")))?;
        Ok(dev.devnode())
    }

    /// Grows a thin device's virtual size to `size` (a multiple of 512
    /// bytes); the same size is a no-op, a smaller one is refused. Blocks
    /// are still allocated only when written. The record is written first:
    /// the pool's metadata holds no size, so a kill before an active
    /// device's table is reloaded leaves nothing wrong (the next activation
    /// uses the new size).
    ///
    /// Errors: [`Error::NoSuchThin`]; [`Error::Invalid`] for a smaller or
    /// unaligned size.
    pub fn grow_thin(&mut self, id: ThinId, size: Bytes) -> Result<()> {
        self.exclusive(|p| p.grow_thin_locked(id, size))
    }

    fn grow_thin_locked(&mut self, id: ThinId, size: Bytes) -> Result<()> {
        let cur = self.thin_size(id)?;
        if size < cur || !size.is_multiple_of(Bytes(512)) {
            return Err(Error::invalid(
                "thin device size",
                format!("{size} must be a multiple of 512 bytes and at least its size now, {cur}"),
            ));
        }
        if size == cur {
            return Ok(());
        }
        if let Some(t) = self.record.thins.get_mut(&id) {
            t.size = size;
        }
        self.save()?;
        if let Some(table) = self.kernel_table(Role::Thin(id))? {
            self.reload_length(Role::Thin(id), size.sectors(), &table)?;
        }
        Ok(())
    }

    /// Deactivates a thin device; idempotent.
    ///
    /// Errors: [`Error::NoSuchThin`]; [`Error::Busy`] while it is mounted
    /// or open.
    pub fn deactivate_thin(&mut self, id: ThinId) -> Result<()> {
        if !self.record.thins.contains_key(&id) {
            self.refresh()?;
        }
        if !self.record.thins.contains_key(&id) {
            return Err(Error::NoSuchThin(id));
        }
        self.remove_thin_dev(id)
    }

    /// Removes a thin device's dm device, if the kernel has it.
    pub(super) fn remove_thin_dev(&self, id: ThinId) -> Result<()> {
        remove_device(&self.dm, &self.names, Role::Thin(id), &self.record)
    }
}
