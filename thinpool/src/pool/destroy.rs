//! Taking a pool apart: a destroy, finishing a killed one, and undoing a
//! killed create. All three remove the same things in the same order and
//! differ only in what they do to a metadata device the user gave.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

use devicemapper::DM;

use super::devices::{detach_loops, remove_devices};
use super::{BackingKind, Pool, PoolRecord, PoolState, RECORD_FILE};
use crate::error::{Error, Result};
use crate::kernel;
use crate::names::PoolNames;
use crate::record;

/// What a teardown does with a metadata device the user gave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MetadataDevice {
    /// Leave it as it is: a killed create may not yet have checked that
    /// the device was free, so what is on it may be someone else's.
    Keep,
    /// Zero its superblock, so the device is not taken for this pool's
    /// metadata again.
    Wipe,
}

/// Removes the pool's dm devices, its loops, its files, its change log,
/// then its record.
fn teardown(dm: &DM, dir: &Path, record: &PoolRecord, meta: MetadataDevice) -> Result<()> {
    let names = PoolNames::new(record.id.clone());
    remove_devices(dm, &names, record)?;
    detach_loops(record)?;
    for (b, is_metadata) in [(&record.data, false), (&record.metadata, true)] {
        match b.kind {
            BackingKind::File => match fs::remove_file(&b.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", &b.path)(e)),
            },
            BackingKind::Device if is_metadata && meta == MetadataDevice::Wipe => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&b.path)
                    .map_err(Error::io("opening", &b.path))?;
                kernel::wipe_superblock(&mut f, &b.path)?;
            }
            BackingKind::Device => {}
        }
    }
    super::log::remove(dir)?;
    Ok(record::remove(&dir.join(RECORD_FILE))?)
}

/// Removes everything a (possibly killed) create made.
pub(super) fn rollback_create(dm: &DM, dir: &Path, record: &PoolRecord) -> Result<()> {
    teardown(dm, dir, record, MetadataDevice::Keep)
}

/// Completes a destroy: devices, loops, files, then the record.
pub(super) fn finish_destroy(dm: &DM, dir: &Path, record: &PoolRecord) -> Result<()> {
    teardown(dm, dir, record, MetadataDevice::Wipe)
}

impl Pool {
    /// Deactivates the pool and removes its files and record; a metadata
    /// device the user gave has its superblock wiped.
    ///
    /// Errors: [`Error::ThinDevicesRemain`] while thin devices exist,
    /// unless `force`; [`Error::Busy`], whatever `force`, while one is
    /// mounted or open (nothing is removed then).
    pub fn destroy(mut self, force: bool) -> Result<()> {
        let count = self.record.thins.len();
        if count > 0 && !force {
            return Err(Error::ThinDevicesRemain { count });
        }
        self.deactivate()?;
        self.record.state = PoolState::Destroying;
        self.save()?;
        finish_destroy(&self.dm, &self.dir, &self.record)
    }
}
