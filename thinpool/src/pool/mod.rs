//! A thin pool and its thin devices.
//!
//! # Layout
//!
//! A pool lives in one directory (the caller chooses it; thinlayer uses
//! `<root>/pool`):
//!
//! ```text
//! pool.json   the record: parameters, thin devices, transaction id, state
//! pool.log    the change log: thin-device changes since pool.json was written
//! data        sparse data file (loop-backed pools only)
//! metadata    sparse metadata file (loop-backed pools only)
//! lock        flock'ed by every change to the pool; never removed
//! ```
//!
//! In the kernel a pool is three dm devices, all named by [`PoolNames`]:
//! a linear device over the metadata backing, one over the data backing,
//! and the `thin-pool` target over those two. Thin devices are activated
//! on demand, as `thin` targets named after their id.
//!
//! # Crash safety
//!
//! * A create writes the record in state `creating` before it makes
//!   anything, and `ready` when all is made. Any later open that finds
//!   `creating` removes whatever a killed create made (dm devices by name
//!   prefix, loop devices by backing file, the files) and the record.
//! * A destroy deactivates first (so a mounted device stops it before
//!   anything is lost), then records `destroying`; any later open that
//!   finds that state finishes the job.
//! * A grow extends the backing first, then records the new size, then
//!   reloads the tables; activation rolls a half-done grow forward.
//! * Thin device changes follow the transaction protocol in
//!   [`crate::recovery`].
//!
//! # Where each job lives
//!
//! * this file: the [`Pool`] handle, opening a pool and its accessors;
//! * `on_disk`: the record (`pool.json`) and the pure changes made to it;
//! * `log`: the change log, where a thin-device change is recorded as
//!   pending with one sector and one `fdatasync`;
//! * `create`: checking create options and making a new pool;
//! * `activate`: starting the dm devices (after a reboot, or adopting
//!   active ones), stopping them;
//! * `devices`: this pool's dm devices as the kernel has them: tables,
//!   status, messages, removal;
//! * `transaction`: the pool's side of the recovery protocol;
//! * `thin`: thin devices: create, snapshot, delete, activate, grow;
//! * `grow`: growing the pool's data and metadata online;
//! * `destroy`: taking a pool apart, and undoing a killed create;
//! * `status`: the pool's status and the space each thin device takes.

mod activate;
mod create;
mod destroy;
mod devices;
mod grow;
pub mod log;
mod on_disk;
mod repair;
mod settings;
mod status;
mod thin;
mod tools;
mod transaction;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use devicemapper::{ThinPoolDev, DM};

use crate::error::{Error, Result};
use crate::kernel;
use crate::lock::LockGuard;
use crate::names::{PoolNames, Role};
use crate::record;
use crate::units::{ThinId, TransactionId};

pub use activate::{Activated, MetadataCheck};
pub use create::check_create_options;
pub use devices::EventMark;
pub use on_disk::{Backing, BackingKind, PoolRecord, PoolState, ThinRecord};
pub use repair::Repaired;
pub use settings::{
    AutoextendChange, Autoextended, SettingsChange,
    DEFAULT_STEP_PERCENT as DEFAULT_AUTOEXTEND_STEP_PERCENT,
    DEFAULT_THRESHOLD as DEFAULT_AUTOEXTEND_THRESHOLD,
};
pub use status::{parse_thin_ls, PoolMode, PoolStatus, SpaceStatus, ThinUsage};

/// The pool's record, in its directory.
pub const RECORD_FILE: &str = "pool.json";
/// The sparse data file of a loop-backed pool, in its directory.
pub const DATA_FILE: &str = "data";
/// The sparse metadata file of a loop-backed pool, in its directory.
pub const METADATA_FILE: &str = "metadata";
/// The lock file every open holds, in the pool's directory.
pub const LOCK_FILE: &str = "lock";

/// How long a command waits for another one holding the pool's lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// An open pool.
///
/// Every method that changes the pool or its thin devices goes through
/// this handle, and the pool's lock serializes them across processes. A
/// pool is opened holding its lock, which it keeps until dropped (pool
/// administration: grow, deactivate, destroy); [`Pool::share`] lets it
/// go, and from then on each change takes the lock for its own duration
/// only (the dm messages and the record writes), so thin devices of other
/// processes are made, activated and deleted in between.
pub struct Pool {
    dir: PathBuf,
    lock: Option<LockGuard>,
    lock_timeout: Duration,
    record: PoolRecord,
    /// How many entries the change log holds after `record` was written:
    /// where the next one goes.
    log_len: usize,
    names: PoolNames,
    dm: DM,
    /// Whether the pool's dm devices are up (checked against the record
    /// when the pool was opened or activated).
    active: bool,
    /// devicemapper's handle on the active pool's devices, taken when a
    /// thin device is activated or the pool administered: a status read
    /// or a message to the pool goes by its name, and needs none.
    dev: Option<ThinPoolDev>,
    /// The active pool's device number, looked up by the first thin
    /// activation ([`Pool::pool_device`]) when `dev` is not taken.
    pool_devno: Option<devicemapper::Device>,
    /// What the last read of the record decoded.
    cache: log::ReadCache,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("dir", &self.dir)
            .field("id", &self.record.id)
            .field("active", &self.active)
            .finish()
    }
}

/// Options for opening (or creating) a pool directory.
#[derive(Clone, Debug)]
pub struct PoolOpenOptions {
    /// How long to wait for another process holding the pool's lock
    /// before failing with [`Error::Lock`].
    pub lock_timeout: Duration,
}

impl Default for PoolOpenOptions {
    fn default() -> Self {
        PoolOpenOptions {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

/// Takes the lock of the pool directory `dir`.
fn lock_dir(dir: &Path, timeout: Duration) -> Result<LockGuard> {
    Ok(LockGuard::acquire(&dir.join(LOCK_FILE), timeout)?)
}

impl Pool {
    /// A handle on the pool of `record`, not yet adopted from the kernel.
    fn with_record(dir: &Path, lock: LockGuard, record: PoolRecord, dm: DM) -> Pool {
        Pool {
            dir: dir.to_path_buf(),
            lock: Some(lock),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            names: PoolNames::new(record.id.clone()),
            record,
            log_len: 0,
            dm,
            active: false,
            dev: None,
            pool_devno: None,
            cache: log::ReadCache::default(),
        }
    }

    /// Opens the pool in `dir`, finishing or undoing whatever a killed
    /// command left in flight. Does not activate an inactive pool.
    ///
    /// Errors: [`Error::NoPool`] when `dir` holds no pool (or held one a
    /// killed create or destroy left, now cleaned up); [`Error::Lock`]
    /// after [`DEFAULT_LOCK_TIMEOUT`]; [`Error::NoDeviceMapper`] and
    /// [`Error::NoThinTarget`] on a kernel without dm-thin;
    /// [`Error::Mismatch`] when an active pool contradicts its record.
    pub fn open(dir: &Path) -> Result<Pool> {
        Self::open_with(dir, &PoolOpenOptions::default())
    }

    /// [`Pool::open`] with explicit options.
    pub fn open_with(dir: &Path, open: &PoolOpenOptions) -> Result<Pool> {
        let no_pool = || Error::NoPool {
            dir: dir.to_path_buf(),
        };
        if !dir.join(RECORD_FILE).exists() {
            return Err(no_pool());
        }
        let _phase = tracing::trace_span!(crate::phase::OPEN).entered();
        let lock = tracing::trace_span!(crate::phase::LOCK)
            .in_scope(|| lock_dir(dir, open.lock_timeout))?;
        let mut cache = log::ReadCache::default();
        let (record, log_len) = tracing::trace_span!(crate::phase::READ)
            .in_scope(|| log::read_cached(dir, &mut cache))?
            .ok_or_else(no_pool)?;
        let dm = kernel::open_dm()?;
        match record.state {
            PoolState::Creating => {
                destroy::rollback_create(&dm, dir, &record)?;
                return Err(no_pool());
            }
            PoolState::Destroying => {
                destroy::finish_destroy(&dm, dir, &record)?;
                return Err(no_pool());
            }
            PoolState::Ready => {}
        }
        let mut pool = Pool::with_record(dir, lock, record, dm);
        pool.log_len = log_len;
        pool.cache = cache;
        pool.lock_timeout = open.lock_timeout;
        if pool.kernel_has(Role::Pool)? {
            pool.adopt()?;
            pool.recover()?;
        }
        Ok(pool)
    }

    /// Opens the pool in `dir` to share it: [`Pool::open_with`] then
    /// [`Pool::share`], except that an active pool with nothing to finish
    /// is taken over under the lock held shared, so that processes opening
    /// the pool at once do so side by side instead of one after another,
    /// each waiting for the lock only to find nothing to change. Anything
    /// else (an inactive pool, a change a dead process left, a grow the
    /// kernel has not taken, a device a dead process left) goes to the
    /// exclusive open, which finishes it.
    ///
    /// Errors: those of [`Pool::open_with`].
    pub fn open_shared(dir: &Path, open: &PoolOpenOptions) -> Result<Pool> {
        if let Some(pool) = Self::adopt_shared(dir, open)? {
            return Ok(pool);
        }
        let mut pool = Self::open_with(dir, open)?;
        pool.share();
        Ok(pool)
    }

    /// The reader's side of [`Pool::open_shared`]: the pool, taken over
    /// holding its lock shared, or `None` if it needs the writer's open.
    fn adopt_shared(dir: &Path, open: &PoolOpenOptions) -> Result<Option<Pool>> {
        let path = dir.join(RECORD_FILE);
        if !path.exists() {
            return Ok(None);
        }
        // Shared with other readers: no change is in flight meanwhile, so
        // a pending operation the kernel has not committed is a dead
        // process's, and a thin device the record does not know is one a
        // dead process left.
        let _phase = tracing::trace_span!(crate::phase::OPEN).entered();
        let _shared = tracing::trace_span!(crate::phase::LOCK)
            .in_scope(|| LockGuard::acquire_shared(&dir.join(LOCK_FILE), open.lock_timeout))?;
        let mut cache = log::ReadCache::default();
        let read = tracing::trace_span!(crate::phase::READ)
            .in_scope(|| log::read_cached(dir, &mut cache))?;
        let Some((record, log_len)) = read else {
            return Ok(None);
        };
        if record.state != PoolState::Ready {
            return Ok(None);
        }
        // The control device alone: a kernel that has this pool's device
        // has dm-thin, and one that does not is the writer's to activate
        // (or to explain why it cannot, after `kernel::open_dm`'s checks).
        let Ok(dm) = DM::new() else {
            return Ok(None);
        };
        let mut pool = Pool {
            dir: dir.to_path_buf(),
            lock: None,
            lock_timeout: open.lock_timeout,
            names: PoolNames::new(record.id.clone()),
            record,
            log_len,
            dm,
            active: false,
            dev: None,
            pool_devno: None,
            cache,
        };
        // What the kernel has, listed once: no writer changes it while
        // the lock is shared.
        let listed = pool.listed()?;
        if !pool.listed_has(Role::Pool, &listed) {
            return Ok(None);
        }
        let Some(status) = pool.adopt_unchanged(&listed)? else {
            return Ok(None);
        };
        let kernel = TransactionId(status.transaction_id);
        pool.record.settle(kernel);
        if pool.record.pending.is_some()
            || pool.record.transaction_id != kernel
            || !pool.unknown_thin_devices(&listed).is_empty()
        {
            return Ok(None);
        }
        Ok(Some(pool))
    }

    /// The pool's record as last written.
    pub fn record(&self) -> &PoolRecord {
        &self.record
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the pool's dm devices are up.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Fails with [`Error::Inactive`] unless the pool's devices exist:
    /// for callers that need an active pool before they start.
    pub fn require_active(&self) -> Result<()> {
        if self.is_active() {
            Ok(())
        } else {
            Err(Error::Inactive)
        }
    }

    /// The pool's thin devices, by id.
    pub fn thins(&self) -> &BTreeMap<ThinId, ThinRecord> {
        &self.record.thins
    }

    /// Lets go of the pool's lock: from now on each change takes it for
    /// its own duration only, first reading the record again (other
    /// processes change it in between) and finishing a change a killed
    /// process left in flight.
    pub fn share(&mut self) {
        self.lock = None;
    }

    /// Runs `f` holding the pool's lock, over the record as it is on disk
    /// (a shared pool takes the lock for `f` alone).
    pub(crate) fn exclusive<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if self.lock.is_some() {
            return f(self);
        }
        self.lock = Some({
            let _phase = tracing::trace_span!(crate::phase::LOCK).entered();
            lock_dir(&self.dir, self.lock_timeout)?
        });
        let r = self.reload().and_then(|()| f(self));
        self.lock = None;
        r
    }

    /// Reads the record again, holding the lock: a pending change in it
    /// was left by a killed process, and is finished or undone.
    fn reload(&mut self) -> Result<()> {
        (self.record, self.log_len) = {
            let _phase = tracing::trace_span!(crate::phase::READ).entered();
            self.read_record()?
        };
        if self.record.pending.is_some() && self.active {
            self.recover()?;
        }
        Ok(())
    }

    /// The record as it is on disk; [`Error::NoPool`] when the pool was
    /// destroyed (or another made in its place) since it was opened.
    /// With the number of entries in its change log.
    fn read_record(&mut self) -> Result<(PoolRecord, usize)> {
        let gone = || Error::NoPool {
            dir: self.dir.clone(),
        };
        let (rec, log_len) = log::read_cached(&self.dir, &mut self.cache)?.ok_or_else(gone)?;
        if rec.state != PoolState::Ready || rec.id != self.record.id {
            return Err(gone());
        }
        Ok((rec, log_len))
    }

    /// A shared pool reads its record again (without the lock; records are
    /// replaced atomically), to see thin devices other processes made or
    /// deleted since. A pool holding its lock has nothing to learn.
    pub fn refresh(&mut self) -> Result<()> {
        if self.lock.is_some() {
            return Ok(());
        }
        // A pending operation is in flight, or a dead process's, settled
        // by the next change under the lock; a committed one has its
        // commit entry in the log. A record of the transaction-id
        // protocol settles against the kernel, read first: a record is
        // written before the kernel moves on.
        let kernel = if self.active {
            let _phase = tracing::trace_span!(crate::phase::CHECK).entered();
            Some(TransactionId(self.working_status()?.transaction_id))
        } else {
            None
        };
        let (mut record, log_len) =
            tracing::trace_span!(crate::phase::READ).in_scope(|| self.read_record())?;
        if let Some(kernel) = kernel {
            record.settle(kernel);
        }
        self.record = record;
        self.log_len = log_len;
        Ok(())
    }

    /// [`Pool::refresh`], and follows the kernel: a pool another process
    /// activated is adopted (under the lock), one it deactivated is let go.
    ///
    /// Errors: those of reading the record and adopting the pool.
    pub fn refresh_devices(&mut self) -> Result<()> {
        self.refresh()?;
        match (self.kernel_has(Role::Pool)?, self.active) {
            (true, false) => self.exclusive(|p| {
                if p.kernel_has(Role::Pool)? {
                    p.adopt()?;
                }
                Ok(())
            }),
            (false, true) => {
                self.set_inactive();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Writes the whole record, atomically and durably: a checkpoint,
    /// which retires the change log's entries (and makes the log, for a
    /// pool that has none yet).
    fn save(&mut self) -> Result<()> {
        let mut rec = self.record.clone();
        rec.log_epoch += 1;
        record::write(&self.dir.join(RECORD_FILE), &rec)?;
        self.record.log_epoch = rec.log_epoch;
        self.log_len = 0;
        if !log::ready(&self.dir) {
            log::make(&self.dir)?;
        }
        Ok(())
    }

    /// Records the pending operation durably, as [`Pool::save`] would, with
    /// one entry in the change log when there is room for it, or else a
    /// checkpoint. What changed since the record was last read or written
    /// is the pending operation, its id, and operations the kernel
    /// committed meanwhile: all that an entry carries.
    fn save_pending(&mut self) -> Result<()> {
        self.log_or_save(log::Sync::Data)
    }

    /// Records that the pending operation was committed by the kernel: an
    /// entry in the change log, not synced (a power cut may lose it, and
    /// recovery asks the kernel's metadata then), or a checkpoint when the
    /// log is full.
    fn save_committed(&mut self) -> Result<()> {
        self.log_or_save(log::Sync::None)
    }

    fn log_or_save(&mut self, sync: log::Sync) -> Result<()> {
        let entry = log::LogEntry::of(&self.record, self.log_len);
        if log::append(&self.dir, &entry, sync)? {
            self.log_len += 1;
            return Ok(());
        }
        self.save()
    }
}
