//! This pool's dm devices as the kernel has them: whether they exist,
//! their tables and status, messages to the pool, and their removal.

use std::path::PathBuf;

use devicemapper::{
    DevId, Device, DmDevice, DmFlags, DmName, DmNameBuf, DmOptions, ThinPoolDev, ThinPoolStatus, DM,
};

use super::{BackingKind, Pool, PoolRecord};
use crate::error::{Error, Result};
use crate::lock::LockGuard;
use crate::loopback;
use crate::names::{PoolNames, Role};

/// The live table of a device with a single target line starting at 0.
pub(super) struct LiveTable {
    /// Its length in 512-byte sectors.
    pub(super) sectors: u64,
    /// The target type, e.g. `linear`.
    pub(super) target: String,
    /// The target's parameters, as the kernel prints them.
    pub(super) params: String,
}

/// The dm devices the kernel has (names and device numbers), read once:
/// for a series of checks that nothing changes in between (the pool's
/// lock is held).
pub(super) struct Listed(Vec<(DmNameBuf, Device)>);

impl Listed {
    fn device(&self, name: &DmName) -> Option<Device> {
        self.0.iter().find(|(n, _)| **n == *name).map(|(_, d)| *d)
    }

    /// Every listed name.
    pub(super) fn names(&self) -> impl Iterator<Item = &DmName> {
        self.0.iter().map(|(n, _)| &**n)
    }
}

/// Where the pool device's events stand: its device number and the
/// kernel's event counter for it. The counter goes up on every event the
/// pool raises (its low-water mark, its metadata running low, a change of
/// mode: drivers/md/dm-thin.c calls dm_table_event, which counts), and not
/// on the events of other devices, which wake a `DM_DEV_ARM_POLL` waiter
/// too. A new activation is a new device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventMark {
    /// The pool device's number.
    pub device: Device,
    /// Its event counter.
    pub event_nr: u32,
}

impl Pool {
    /// The pool device's [`EventMark`] now (one `DM_DEV_STATUS`), `None`
    /// when the kernel has no pool device.
    pub fn event_mark(&self) -> Result<Option<EventMark>> {
        let name = self.names.name(Role::Pool);
        match self.dm.device_info(&DevId::Name(&name)) {
            Ok(info) => Ok(Some(EventMark {
                device: info.device(),
                event_nr: info.event_nr(),
            })),
            // Gone (ENXIO), or another error: the listing tells which.
            Err(e) => {
                if self.kernel_has(Role::Pool)? {
                    Err(Error::dm(format!("reading the status of {}", &*name))(e))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Whether the kernel has our device of `role`.
    pub(super) fn kernel_has(&self, role: Role) -> Result<bool> {
        devicemapper::device_exists(&self.dm, &self.names.name(role))
            .map_err(Error::dm("looking up devices"))
    }

    /// The dm devices the kernel has now (one `DM_LIST_DEVICES`).
    pub(super) fn listed(&self) -> Result<Listed> {
        let devices = self
            .dm
            .list_devices()
            .map_err(Error::dm("listing devices"))?;
        Ok(Listed(
            devices
                .into_iter()
                .map(|(name, device, _)| (name, device))
                .collect(),
        ))
    }

    /// Whether `listed` has our device of `role`.
    pub(super) fn listed_has(&self, role: Role, listed: &Listed) -> bool {
        self.listed_device(role, listed).is_some()
    }

    /// The device number of our device of `role`, if `listed` has it.
    pub(super) fn listed_device(&self, role: Role, listed: &Listed) -> Option<Device> {
        listed.device(&self.names.name(role))
    }

    /// The kernel's live table of one of our devices, if it exists.
    pub(super) fn kernel_table(&self, role: Role) -> Result<Option<LiveTable>> {
        self.listed_table(role, &self.listed()?)
    }

    /// [`Pool::kernel_table`], for a device that exists if `listed` has it.
    pub(super) fn listed_table(&self, role: Role, listed: &Listed) -> Result<Option<LiveTable>> {
        if !self.listed_has(role, listed) {
            return Ok(None);
        }
        let name = self.names.name(role);
        let (_, lines) = self
            .dm
            .table_status(
                &DevId::Name(&name),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(Error::dm(format!("reading the table of {}", &*name)))?;
        match lines.as_slice() {
            [(0, sectors, target, params)] => Ok(Some(LiveTable {
                sectors: *sectors,
                target: target.clone(),
                params: params.clone(),
            })),
            _ => Err(Error::Mismatch {
                what: format!("device {}", &*name),
                reason: format!("it has {} table lines, expected one", lines.len()),
            }),
        }
    }

    /// Reloads a device's single-line table with a new length (same target
    /// and parameters) and resumes it.
    pub(super) fn reload_length(&self, role: Role, sectors: u64, table: &LiveTable) -> Result<()> {
        self.reload_table(role, sectors, &table.target, &table.params)
    }

    /// Reloads a device's single-line table and resumes it.
    pub(super) fn reload_table(
        &self,
        role: Role,
        sectors: u64,
        target: &str,
        params: &str,
    ) -> Result<()> {
        let name = self.names.name(role);
        let id = DevId::Name(&name);
        self.dm
            .table_load(
                &id,
                &[(0, sectors, target.to_string(), params.to_string())],
                DmOptions::default(),
            )
            .map_err(Error::dm(format!("reloading {}", &*name)))?;
        self.dm
            .device_suspend(&id, DmOptions::default())
            .map_err(Error::dm(format!("resuming {}", &*name)))?;
        Ok(())
    }

    /// The metadata blocks the kernel's pool uses (from its status line,
    /// read by name: for adopting, before this handle has the device);
    /// `u64::MAX` when the status says none (a failed pool: nothing to
    /// resize). Read with `noflush`, as [`Pool::kernel_status`] is.
    pub(super) fn kernel_metadata_blocks(&self) -> Result<u64> {
        let name = self.names.name(Role::Pool);
        let (_, lines) = self
            .dm
            .table_status(
                &DevId::Name(&name),
                DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
            )
            .map_err(Error::dm(format!("reading the status of {}", &*name)))?;
        let total = lines
            .first()
            .and_then(|(_, _, _, status)| status.split_whitespace().nth(1))
            .and_then(|f| f.split_once('/'))
            .and_then(|(_, total)| total.parse().ok());
        Ok(total.unwrap_or(u64::MAX))
    }

    /// devicemapper's handle on the pool's devices, taken over now if
    /// this handle has not yet (under the lock, held shared if this
    /// handle does not hold it: no writer removes or reloads the devices
    /// meanwhile); [`Error::Inactive`] while the pool is not active.
    pub(super) fn pool_dev(&mut self) -> Result<&ThinPoolDev> {
        if !self.active {
            return Err(Error::Inactive);
        }
        if self.dev.is_none() {
            let _shared = match self.lock {
                Some(_) => None,
                None => Some(LockGuard::acquire_shared(
                    &self.dir.join(super::LOCK_FILE),
                    self.lock_timeout,
                )?),
            };
            // The record as it is now: another process may have grown
            // the pool since this one read it.
            self.refresh()?;
            let listed = self.listed()?;
            let (Some(meta), Some(data), true) = (
                self.listed_table(Role::Meta, &listed)?,
                self.listed_table(Role::Data, &listed)?,
                self.listed_has(Role::Pool, &listed),
            ) else {
                // Deactivated by another process since this one opened it.
                self.set_inactive();
                return Err(Error::Inactive);
            };
            // The backings the linear devices map: devicemapper checks
            // every table against the one it would make from them.
            let source = |role, table: &LiveTable| {
                super::activate::linear_source(table).ok_or_else(|| Error::Mismatch {
                    what: format!("device {}", self.names.name_string(role)),
                    reason: format!(
                        "its table is '{} {}', not a linear device",
                        table.target, table.params
                    ),
                })
            };
            let (meta, data) = (source(Role::Meta, &meta)?, source(Role::Data, &data)?);
            self.dev = Some(self.setup_devices(meta, data)?);
        }
        self.dev.as_ref().ok_or(Error::Inactive)
    }

    /// The device number of the active pool's thin-pool device, what a
    /// thin device's table names: one `DM_DEV_STATUS` the first time,
    /// kept while the pool stays active (its number changes only when it
    /// is deactivated and made again).
    pub(super) fn pool_device(&mut self) -> Result<Device> {
        self.require_active()?;
        if let Some(d) = self.dev.as_ref().map(|d| d.device()).or(self.pool_devno) {
            return Ok(d);
        }
        let name = self.names.name(Role::Pool);
        match self.dm.device_info(&DevId::Name(&name)) {
            Ok(info) => {
                self.pool_devno = Some(info.device());
                Ok(info.device())
            }
            Err(e) => {
                if self.kernel_has(Role::Pool)? {
                    Err(Error::dm(format!("looking up {}", &*name))(e))
                } else {
                    // Deactivated by another process since this one opened it.
                    self.set_inactive();
                    Err(Error::Inactive)
                }
            }
        }
    }

    /// Marks the pool inactive, letting go of devicemapper's handle.
    pub(super) fn set_inactive(&mut self) {
        self.active = false;
        self.dev = None;
        self.pool_devno = None;
    }

    /// The device node (`/dev/dm-N`, made with or without udev) of our
    /// device of `role`.
    pub(super) fn devnode(&self, role: Role) -> Result<PathBuf> {
        let name = self.names.name(role);
        let info = self
            .dm
            .device_info(&DevId::Name(&name))
            .map_err(Error::dm(format!("looking up {}", &*name)))?;
        Ok(PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
    }

    /// The thin-pool target's status line, parsed. Read with `noflush`:
    /// without it the kernel commits the pool's metadata for every status
    /// read (a flush down to the metadata file), and nothing here needs
    /// that: the counts and the transaction id are the kernel's in-core
    /// ones either way, and every change commits by itself.
    pub(super) fn kernel_status(&self) -> Result<ThinPoolStatus> {
        self.require_active()?;
        let name = self.names.name(Role::Pool);
        let (_, lines) = self
            .dm
            .table_status(
                &DevId::Name(&name),
                DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
            )
            .map_err(Error::dm("reading the pool status"))?;
        let [(_, _, _, status)] = lines.as_slice() else {
            return Err(Error::Mismatch {
                what: format!("device {}", &*name),
                reason: format!("it has {} status lines, expected one", lines.len()),
            });
        };
        status.parse().map_err(Error::dm("reading the pool status"))
    }

    /// Sends a message to the thin-pool target.
    pub(super) fn message(&self, msg: &str) -> Result<()> {
        self.require_active()?;
        self.dm
            .target_msg(&DevId::Name(&self.names.name(Role::Pool)), None, msg)
            .map(drop)
            .map_err(Error::dm(format!("message '{msg}'")))
    }
}

/// Removes one of our devices if the kernel has it.
///
/// Errors: [`Error::Busy`] while it is mounted or open.
pub(super) fn remove_device(
    dm: &DM,
    names: &PoolNames,
    role: Role,
    record: &PoolRecord,
) -> Result<()> {
    let name = names.name(role);
    if !devicemapper::device_exists(dm, &name).map_err(Error::dm("looking up devices"))? {
        return Ok(());
    }
    dm.device_remove(&DevId::Name(&name), DmOptions::default())
        .map(|_| ())
        .map_err(|e| {
            let err = Error::dm(format!("removing {}", &*name))(e);
            if err.errno() == Some(libc::EBUSY) {
                let what = match role {
                    Role::Thin(id) => record.describe_thin(id),
                    _ => format!("pool device {}", &*name),
                };
                Error::Busy {
                    what,
                    hint: "it is mounted or open; unmount or close it first".into(),
                }
            } else {
                err
            }
        })
}

/// Removes every device named with this pool's prefix, in
/// [`Role::removal_order`].
pub(super) fn remove_devices(dm: &DM, names: &PoolNames, record: &PoolRecord) -> Result<()> {
    let mut ours: Vec<Role> = dm
        .list_devices()
        .map_err(Error::dm("listing devices"))?
        .iter()
        .filter_map(|(name, _, _)| names.role_of(name))
        .collect();
    ours.sort_by_key(|r| r.removal_order());
    for role in ours {
        remove_device(dm, names, role, record)?;
    }
    Ok(())
}

/// Detaches the loop devices over the pool's backing files, if attached.
pub(super) fn detach_loops(record: &PoolRecord) -> Result<()> {
    for b in [&record.data, &record.metadata] {
        if b.kind == BackingKind::File {
            loopback::detach_file(&b.path)
                .map_err(Error::io("detaching the loop device of", &b.path))?;
        }
    }
    Ok(())
}
