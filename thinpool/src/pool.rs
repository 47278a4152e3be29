//! A thin pool and its thin devices.
//!
//! # Layout
//!
//! A pool lives in one directory (thinlayer uses `<root>/pool`):
//!
//! ```text
//! pool.json   the record: parameters, thin devices, transaction id, state
//! data        sparse data file (loop-backed pools only)
//! metadata    sparse metadata file (loop-backed pools only)
//! lock        flock'ed by every command for its whole run; never removed
//! ```
//!
//! In the kernel a pool is three dm devices, all named by [`PoolNames`]:
//! a linear device over the metadata backing, one over the data backing,
//! and the `thin-pool` target over those two. Thin devices are activated
//! on demand, as `thin` targets named after their id.
//!
//! # Crash safety
//!
//! * `pool create` writes the record in state `creating` before it makes
//!   anything, and `ready` when all is made. Any later command that finds
//!   `creating` removes whatever a killed create made (dm devices by name
//!   prefix, loop devices by backing file, the files) and the record.
//! * `pool destroy` deactivates first (so a mounted device stops it before
//!   anything is lost), then records `destroying`; any later command that
//!   finds that state finishes the job.
//! * `pool grow` extends the backing first, then records the new size, then
//!   reloads the tables; activation rolls a half-done grow forward.
//! * Thin device changes follow the transaction protocol in
//!   [`crate::recovery`].

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devicemapper::{
    DataBlocks, DevId, Device, DmDevice, DmFlags, DmOptions, LinearDev, LinearDevTargetParams,
    LinearTargetParams, Sectors, TargetLine, ThinDev, ThinDevId, ThinPoolDev, ThinPoolStatus,
    ThinPoolStatusSummary, DM,
};
use serde::{Deserialize, Serialize};

use crate::config::{self, BackingRequest, CreateOptions, OnFull, METADATA_BLOCK};
use crate::error::{Error, Result};
use crate::kernel::{self, Superblock};
use crate::lock::LockGuard;
use crate::loopback::{self, LoopDev};
use crate::names::{PoolId, PoolNames, Role};
use crate::record;
use crate::recovery::{self, PendingOp, Recovery};
use crate::units::{BlockSize, Bytes, SizeChange, ThinId, TransactionId};

pub const RECORD_FILE: &str = "pool.json";
pub const DATA_FILE: &str = "data";
pub const METADATA_FILE: &str = "metadata";
pub const LOCK_FILE: &str = "lock";

/// How long a command waits for another one holding the pool's lock.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// The persistent record of a pool (`pool.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub id: PoolId,
    pub state: PoolState,
    pub created_unix: u64,
    pub block_size: BlockSize,
    pub on_full: OnFull,
    pub data: Backing,
    pub metadata: Backing,
    /// The last transaction id this record and the kernel agree on.
    pub transaction_id: TransactionId,
    /// Ids are handed out in order and never reused.
    pub next_thin_id: ThinId,
    #[serde(default)]
    pub thins: BTreeMap<ThinId, ThinRecord>,
    #[serde(default)]
    pub pending: Option<PendingOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolState {
    Creating,
    Ready,
    Destroying,
}

/// Where the data or metadata lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backing {
    pub kind: BackingKind,
    pub path: PathBuf,
    pub size: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackingKind {
    /// A sparse file of ours behind a loop device.
    File,
    /// A block device the user gave us.
    Device,
}

/// A thin device known to the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinRecord {
    pub size: Bytes,
    /// The owner's label for the device (thinlayer stores its layer id).
    pub tag: String,
    #[serde(default)]
    pub origin: Option<ThinId>,
    pub created_tx: TransactionId,
}

/// The kernel's view of a pool's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    Rw,
    OutOfDataSpace,
    ReadOnly,
    Fail,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Rw => "rw",
            PoolMode::OutOfDataSpace => "out-of-data-space",
            PoolMode::ReadOnly => "read-only",
            PoolMode::Fail => "fail",
        })
    }
}

/// `pool status`: what the record says, and what the kernel says when the
/// pool is active. The serialized field names are a stable interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    pub id: String,
    pub dir: PathBuf,
    pub active: bool,
    /// `None` while inactive.
    pub mode: Option<PoolMode>,
    pub needs_check: Option<bool>,
    pub block_size: Bytes,
    pub on_full: OnFull,
    pub transaction_id: TransactionId,
    pub thin_devices: usize,
    pub data: SpaceStatus,
    pub metadata: SpaceStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpaceStatus {
    pub total_bytes: Bytes,
    /// `None` while inactive.
    pub used_bytes: Option<Bytes>,
    pub backing: BackingKind,
    pub path: PathBuf,
    pub loop_device: Option<PathBuf>,
}

/// An open pool, holding its lock until dropped.
pub struct Pool {
    dir: PathBuf,
    _lock: LockGuard,
    record: PoolRecord,
    names: PoolNames,
    dm: DM,
    /// The kernel's pool device, when the pool is active.
    dev: Option<ThinPoolDev>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("dir", &self.dir)
            .field("id", &self.record.id)
            .field("active", &self.dev.is_some())
            .finish()
    }
}

/// Options for opening a pool directory.
#[derive(Clone, Debug)]
pub struct PoolOpenOptions {
    pub lock_timeout: Duration,
}

impl Default for PoolOpenOptions {
    fn default() -> Self {
        PoolOpenOptions {
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn io_err(op: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    Error::io(op.to_string(), path.to_path_buf())
}

/// A backing resolved at create time: its size and, for devices, the open
/// exclusive handle that proves nobody else holds it.
struct ResolvedBacking {
    kind: BackingKind,
    path: PathBuf,
    size: Option<Bytes>,
    _excl: Option<fs::File>,
}

fn resolve(
    req: &BackingRequest,
    dir: &Path,
    file: &str,
    what: &'static str,
) -> Result<ResolvedBacking> {
    match req {
        BackingRequest::File(size) => Ok(ResolvedBacking {
            kind: BackingKind::File,
            path: dir.join(file),
            size: *size,
            _excl: None,
        }),
        BackingRequest::Device(path, size) => {
            let path = fs::canonicalize(path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::invalid(what, format!("{} does not exist", path.display()))
                } else {
                    Error::io("resolving", path.clone())(e)
                }
            })?;
            let (file, dev_size) = kernel::open_exclusive_blockdev(&path, what)?;
            let size = match size {
                Some(s) if *s > dev_size => {
                    return Err(Error::invalid(
                        what,
                        format!(
                            "{} holds only {dev_size}, less than the {s} asked for",
                            path.display()
                        ),
                    ))
                }
                Some(s) => *s,
                None => dev_size,
            };
            Ok(ResolvedBacking {
                kind: BackingKind::Device,
                path,
                size: Some(size),
                _excl: Some(file),
            })
        }
    }
}

/// Checks `pool create` options without changing anything: sizes, and
/// that named devices exist, are block devices and are not in use.
pub fn check_create_options(opts: &CreateOptions) -> Result<()> {
    plan(Path::new("/"), opts).map(|_| ())
}

/// Resolves and checks the backings of a pool to be created in `dir`.
fn plan(dir: &Path, opts: &CreateOptions) -> Result<(ResolvedBacking, ResolvedBacking)> {
    if let (BackingRequest::Device(d, _), BackingRequest::Device(m, _)) =
        (&opts.data, &opts.metadata)
    {
        if d == m
            || fs::canonicalize(d)
                .ok()
                .is_some_and(|d| fs::canonicalize(m).ok() == Some(d))
        {
            return Err(Error::invalid(
                "metadata device",
                "the data and metadata devices must differ",
            ));
        }
    }
    let mut data = resolve(&opts.data, dir, DATA_FILE, "data device")?;
    let mut meta = resolve(&opts.metadata, dir, METADATA_FILE, "metadata device")?;
    let data_size = data.size.unwrap_or(config::DEFAULT_DATA_SIZE);
    let data_size = if data.kind == BackingKind::Device && opts_size(&opts.data).is_none() {
        // A whole device: use every full block of it.
        let bs = opts.block_size.bytes().0;
        Bytes(data_size.0 / bs * bs)
    } else {
        data_size
    };
    config::check_data_size(data_size, opts.block_size)?;
    let meta_size = match (meta.size, meta.kind) {
        (Some(s), BackingKind::Device) if opts_size(&opts.metadata).is_none() => {
            let s = Bytes(s.0 / METADATA_BLOCK.0 * METADATA_BLOCK.0);
            s.min(config::MAX_METADATA)
        }
        (Some(s), _) => s,
        (None, _) => config::default_metadata(data_size, opts.block_size),
    };
    config::check_metadata_size(meta_size, data_size, opts.block_size)?;
    data.size = Some(data_size);
    meta.size = Some(meta_size);

    Ok((data, meta))
}

fn lock_dir(dir: &Path, timeout: Duration) -> Result<LockGuard> {
    Ok(LockGuard::acquire(&dir.join(LOCK_FILE), timeout)?)
}

fn linear_table(device: Device, size: Bytes) -> Vec<TargetLine<LinearDevTargetParams>> {
    vec![TargetLine::new(
        Sectors(0),
        Sectors(size.sectors()),
        LinearDevTargetParams::Linear(LinearTargetParams::new(device, Sectors(0))),
    )]
}

fn device_of(path: &Path) -> Result<Device> {
    let meta = fs::metadata(path).map_err(io_err("inspecting", path))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::invalid(
            "device",
            format!("{} is not a block device", path.display()),
        ));
    }
    Ok(Device::from(meta.rdev()))
}

fn thin_dev_id(id: ThinId) -> ThinDevId {
    ThinDevId::new_u64(u64::from(id.0)).expect("thin ids are checked against ThinId::MAX")
}

fn pool_features(on_full: OnFull) -> Vec<String> {
    match on_full {
        OnFull::Error => vec!["error_if_no_space".to_string()],
        OnFull::Queue => vec![],
    }
}

impl Pool {
    /// Creates a pool in `dir` (made with mode 0700 if missing). Validates
    /// everything it can before touching anything; on any failure removes
    /// all it made.
    pub fn create(dir: &Path, opts: &CreateOptions) -> Result<Pool> {
        Self::create_with(dir, opts, &PoolOpenOptions::default())
    }

    pub fn create_with(dir: &Path, opts: &CreateOptions, open: &PoolOpenOptions) -> Result<Pool> {
        let (data, meta) = plan(dir, opts)?;
        let dm = kernel::open_dm()?;

        // Everything that can be refused without side effects was checked
        // above. From here a failed create leaves at most this directory and
        // its lock file: removing them could pull the lock from under a
        // concurrent create, or the directory from under its pool.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("creating", dir))?;
        Self::create_locked(dir, dm, data, meta, opts, open)
    }

    fn create_locked(
        dir: &Path,
        dm: DM,
        data: ResolvedBacking,
        meta: ResolvedBacking,
        opts: &CreateOptions,
        open: &PoolOpenOptions,
    ) -> Result<Pool> {
        let lock = lock_dir(dir, open.lock_timeout)?;
        if let Some(existing) = record::read::<PoolRecord>(&dir.join(RECORD_FILE))? {
            match existing.state {
                PoolState::Ready => {
                    return Err(Error::PoolExists {
                        dir: dir.to_path_buf(),
                        id: existing.id,
                    })
                }
                PoolState::Creating => rollback_create(&dm, dir, &existing)?,
                PoolState::Destroying => finish_destroy(&dm, dir, &existing)?,
            }
        }
        for b in [&data, &meta] {
            if b.kind == BackingKind::File && b.path.exists() {
                return Err(Error::StrayBacking {
                    path: b.path.clone(),
                });
            }
        }
        let record = PoolRecord {
            id: PoolId::generate().map_err(io_err("reading", Path::new("/dev/urandom")))?,
            state: PoolState::Creating,
            created_unix: now_unix(),
            block_size: opts.block_size,
            on_full: opts.on_full,
            data: Backing {
                kind: data.kind,
                path: data.path.clone(),
                size: data.size.expect("resolved"),
            },
            metadata: Backing {
                kind: meta.kind,
                path: meta.path.clone(),
                size: meta.size.expect("resolved"),
            },
            transaction_id: TransactionId(0),
            next_thin_id: ThinId(0),
            thins: BTreeMap::new(),
            pending: None,
        };
        record::write(&dir.join(RECORD_FILE), &record)?;
        let mut pool = Pool {
            dir: dir.to_path_buf(),
            _lock: lock,
            names: PoolNames::new(record.id.clone()),
            record,
            dm,
            dev: None,
        };
        // The exclusive opens are released only now, just before dm takes
        // the devices, so nobody can grab them in between.
        drop((data, meta));
        match pool.make_devices() {
            Ok(()) => {
                pool.record.state = PoolState::Ready;
                pool.save()?;
                Ok(pool)
            }
            Err(causal) => match rollback_create(&pool.dm, dir, &pool.record) {
                Ok(()) => Err(causal),
                Err(rollback) => Err(Error::Rollback {
                    causal: Box::new(causal),
                    rollback: Box::new(rollback),
                }),
            },
        }
    }

    fn make_devices(&mut self) -> Result<()> {
        for b in [&self.record.data, &self.record.metadata] {
            match b.kind {
                BackingKind::File => {
                    let f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&b.path)
                        .map_err(io_err("creating", &b.path))?;
                    f.set_len(b.size.0).map_err(io_err("sizing", &b.path))?;
                    f.sync_all().map_err(io_err("syncing", &b.path))?;
                }
                BackingKind::Device => {}
            }
        }
        record::sync_dir(&self.dir).map_err(io_err("syncing", &self.dir))?;
        if self.record.metadata.kind == BackingKind::Device {
            let path = &self.record.metadata.path;
            if Superblock::read(path)?.is_some() {
                return Err(Error::MetadataInUse { path: path.clone() });
            }
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err("opening", path))?;
            kernel::wipe_superblock(&mut f, path)?;
        }
        self.start_devices()
    }

    /// Attaches loops and creates (or adopts) the linear and pool devices.
    fn start_devices(&mut self) -> Result<()> {
        let meta_dev = self.backing_device(&self.record.metadata.clone())?;
        let data_dev = self.backing_device(&self.record.data.clone())?;
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
        let dev = ThinPoolDev::setup(
            &self.dm,
            &self.names.name(Role::Pool),
            Some(&self.names.uuid(Role::Pool)),
            meta,
            data,
            Sectors(self.record.block_size.sectors()),
            DataBlocks(0),
            pool_features(self.record.on_full),
        )
        .map_err(Error::dm("creating the thin-pool device"))?;
        self.dev = Some(dev);
        Ok(())
    }

    /// The block device under a backing: its loop device for a file
    /// (attached if needed, capacity refreshed if the file grew), or the
    /// device itself.
    fn backing_device(&self, b: &Backing) -> Result<Device> {
        match b.kind {
            BackingKind::File => {
                let lo = loopback::attach(&b.path)
                    .map_err(io_err("attaching a loop device to", &b.path))?;
                if lo.size().map_err(io_err("sizing", &lo.path))? < b.size {
                    lo.refresh_capacity()
                        .map_err(io_err("refreshing the capacity of", &lo.path))?;
                }
                device_of(&lo.path)
            }
            BackingKind::Device => device_of(&b.path),
        }
    }

    /// Opens the pool in `dir`, finishing or undoing whatever a killed
    /// command left in flight. Does not activate an inactive pool.
    pub fn open(dir: &Path) -> Result<Pool> {
        Self::open_with(dir, &PoolOpenOptions::default())
    }

    pub fn open_with(dir: &Path, open: &PoolOpenOptions) -> Result<Pool> {
        let no_pool = || Error::NoPool {
            dir: dir.to_path_buf(),
        };
        if !dir.join(RECORD_FILE).exists() {
            return Err(no_pool());
        }
        let lock = lock_dir(dir, open.lock_timeout)?;
        let record: PoolRecord = record::read(&dir.join(RECORD_FILE))?.ok_or_else(no_pool)?;
        let dm = kernel::open_dm()?;
        match record.state {
            PoolState::Creating => {
                rollback_create(&dm, dir, &record)?;
                return Err(no_pool());
            }
            PoolState::Destroying => {
                finish_destroy(&dm, dir, &record)?;
                return Err(no_pool());
            }
            PoolState::Ready => {}
        }
        let mut pool = Pool {
            dir: dir.to_path_buf(),
            _lock: lock,
            names: PoolNames::new(record.id.clone()),
            record,
            dm,
            dev: None,
        };
        if pool.kernel_has(Role::Pool)? {
            pool.adopt()?;
            pool.recover()?;
        }
        Ok(pool)
    }

    pub fn record(&self) -> &PoolRecord {
        &self.record
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_active(&self) -> bool {
        self.dev.is_some()
    }

    pub fn thins(&self) -> &BTreeMap<ThinId, ThinRecord> {
        &self.record.thins
    }

    fn save(&self) -> Result<()> {
        Ok(record::write(&self.dir.join(RECORD_FILE), &self.record)?)
    }

    fn kernel_has(&self, role: Role) -> Result<bool> {
        devicemapper::device_exists(&self.dm, &self.names.name(role))
            .map_err(Error::dm("looking up devices"))
    }

    /// The kernel's live table of one of our devices, if it exists.
    fn kernel_table(&self, role: Role) -> Result<Option<(u64, String, String)>> {
        if !self.kernel_has(role)? {
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
            [(0, len, ty, params)] => Ok(Some((*len, ty.clone(), params.clone()))),
            _ => Err(Error::Mismatch {
                what: format!("device {}", &*name),
                reason: format!("it has {} table lines, expected one", lines.len()),
            }),
        }
    }

    /// Reloads a device's single-line table with a new length (same target
    /// and parameters) and resumes it.
    fn reload_length(&self, role: Role, len: u64, ty: &str, params: &str) -> Result<()> {
        let name = self.names.name(role);
        let id = DevId::Name(&name);
        self.dm
            .table_load(
                &id,
                &[(0, len, ty.to_string(), params.to_string())],
                DmOptions::default(),
            )
            .map_err(Error::dm(format!("reloading {}", &*name)))?;
        self.dm
            .device_suspend(&id, DmOptions::default())
            .map_err(Error::dm(format!("resuming {}", &*name)))?;
        Ok(())
    }

    /// Takes over an active pool, rolling forward a grow that was killed
    /// between recording the new size and reloading the tables.
    fn adopt(&mut self) -> Result<()> {
        for (role, b) in [
            (Role::Meta, self.record.metadata.clone()),
            (Role::Data, self.record.data.clone()),
        ] {
            let want = self.backing_device(&b)?;
            let Some((len, ty, params)) = self.kernel_table(role)? else {
                return Err(Error::Mismatch {
                    what: format!("device {}", self.names.name_string(role)),
                    reason: "the pool is active but this device is missing".into(),
                });
            };
            let want_params = format!("{want} 0");
            if ty != "linear" || params != want_params {
                return Err(Error::Mismatch {
                    what: format!("device {}", self.names.name_string(role)),
                    reason: format!(
                        "its table is '{ty} {params}', expected 'linear {want_params}'"
                    ),
                });
            }
            match len.cmp(&b.size.sectors()) {
                std::cmp::Ordering::Less => {
                    self.reload_length(role, b.size.sectors(), &ty, &params)?
                }
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Greater => {
                    return Err(Error::Mismatch {
                        what: format!("device {}", self.names.name_string(role)),
                        reason: format!(
                            "it maps {} but the record says {}",
                            Bytes::from_sectors(len),
                            b.size
                        ),
                    })
                }
            }
        }
        if let Some((len, ty, params)) = self.kernel_table(Role::Pool)? {
            if len < self.record.data.size.sectors() {
                self.reload_length(Role::Pool, self.record.data.size.sectors(), &ty, &params)?;
            }
        }
        self.start_devices()
    }

    /// Activates an inactive pool after checking its metadata against the
    /// record; idempotent.
    pub fn activate(&mut self) -> Result<()> {
        if self.dev.is_some() {
            return Ok(());
        }
        for b in [&self.record.data, &self.record.metadata] {
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
            self.dev = None;
            return match self.stop_devices() {
                Ok(()) => Err(causal),
                Err(rollback) => Err(Error::Rollback {
                    causal: Box::new(causal),
                    rollback: Box::new(rollback),
                }),
            };
        }
        self.recover()
    }

    /// Removes every dm device of this pool (thin devices first) and
    /// detaches the loop devices it owns; idempotent. Fails without
    /// removing the pool if a thin device is mounted or open.
    pub fn deactivate(&mut self) -> Result<()> {
        let result = self.stop_devices();
        if result.is_ok() || !self.kernel_has(Role::Pool).unwrap_or(true) {
            self.dev = None;
        }
        result
    }

    fn stop_devices(&mut self) -> Result<()> {
        remove_devices(&self.dm, &self.names, &self.record)?;
        detach_loops(&self.record)
    }

    fn pool_dev(&self) -> Result<&ThinPoolDev> {
        self.dev.as_ref().ok_or(Error::Inactive)
    }

    fn kernel_status(&self) -> Result<ThinPoolStatus> {
        self.pool_dev()?
            .status(&self.dm, DmOptions::default())
            .map_err(Error::dm("reading the pool status"))
    }

    fn kernel_transaction(&self) -> Result<TransactionId> {
        match self.kernel_status()? {
            ThinPoolStatus::Working(w) => Ok(TransactionId(w.transaction_id)),
            _ => Err(Error::Failed),
        }
    }

    /// Finishes or undoes a pending thin operation and removes thin dm
    /// devices whose id the record does not know.
    fn recover(&mut self) -> Result<()> {
        let kernel = self.kernel_transaction()?;
        let record = self.record.transaction_id;
        if let Some(op) = self.record.pending.clone() {
            match recovery::decide(&op, record, kernel) {
                Recovery::Commit => self.commit(op),
                Recovery::Undo => {
                    let id = match op {
                        PendingOp::Create { id, .. } | PendingOp::Snapshot { id, .. } => id,
                        PendingOp::Delete { id } => id,
                    };
                    self.remove_thin_dev(id)?;
                    let _ = self.message(&format!("delete {id}"));
                    self.record.pending = None;
                }
                Recovery::Redo => {
                    if let PendingOp::Delete { id } = op {
                        self.remove_thin_dev(id)?;
                        let _ = self.message(&format!("delete {id}"));
                        self.set_transaction(record)?;
                        self.commit(op);
                    }
                }
                Recovery::Inconsistent { record, kernel } => {
                    return Err(Error::Mismatch {
                        what: "transaction id".into(),
                        reason: format!("the kernel is at {kernel}, the record at {record} with an operation in flight"),
                    })
                }
            }
            self.save()?;
        } else if kernel != record {
            return Err(Error::Mismatch {
                what: "transaction id".into(),
                reason: format!("the kernel is at {kernel}, the record at {record}"),
            });
        }
        for (name, _, _) in self
            .dm
            .list_devices()
            .map_err(Error::dm("listing devices"))?
        {
            if let Some(Role::Thin(id)) = self.names.role_of(&name) {
                if !self.record.thins.contains_key(&id) {
                    self.remove_thin_dev(id)?;
                }
            }
        }
        Ok(())
    }

    /// Applies a pending operation to the record (the kernel has it).
    fn commit(&mut self, op: PendingOp) {
        let tx = self.record.transaction_id.next();
        match op {
            PendingOp::Create { id, size, tag } => {
                self.record.thins.insert(
                    id,
                    ThinRecord {
                        size,
                        tag,
                        origin: None,
                        created_tx: tx,
                    },
                );
            }
            PendingOp::Snapshot {
                id,
                origin,
                size,
                tag,
            } => {
                self.record.thins.insert(
                    id,
                    ThinRecord {
                        size,
                        tag,
                        origin: Some(origin),
                        created_tx: tx,
                    },
                );
            }
            PendingOp::Delete { id } => {
                self.record.thins.remove(&id);
            }
        }
        self.record.transaction_id = tx;
        self.record.pending = None;
    }

    fn message(&self, msg: &str) -> Result<()> {
        devicemapper::message(&self.dm, self.pool_dev()?, msg)
            .map_err(Error::dm(format!("message '{msg}'")))
    }

    fn set_transaction(&self, from: TransactionId) -> Result<()> {
        self.message(&format!("set_transaction_id {from} {}", from.next()))
    }

    /// Refuses new devices on a pool the kernel has stopped writing to.
    fn check_writable(&self) -> Result<()> {
        match self.kernel_status()? {
            ThinPoolStatus::Working(w) => match w.summary {
                ThinPoolStatusSummary::Good | ThinPoolStatusSummary::OutOfSpace => Ok(()),
                ThinPoolStatusSummary::ReadOnly => Err(Error::ReadOnly),
            },
            _ => Err(Error::Failed),
        }
    }

    /// Runs one thin-device change through the transaction protocol
    /// ([`crate::recovery`]): record it as pending, send `msg` and
    /// `set_transaction_id`, then commit it to the record.
    fn transact(
        &mut self,
        op: PendingOp,
        msg: &str,
        before: impl FnOnce(&Self) -> Result<()>,
        after: impl FnOnce(&Self),
    ) -> Result<()> {
        self.check_writable()?;
        let r = self.record.transaction_id;
        self.record.pending = Some(op.clone());
        self.save()?;
        let sent = before(self).and_then(|()| {
            let sent = self.message(msg);
            after(self);
            sent
        });
        let result = sent.and_then(|()| self.set_transaction(r));
        match result {
            Ok(()) => {
                self.commit(op);
                self.save()
            }
            Err(causal) => {
                // Undo what the kernel may have done; a delete is left
                // pending and finished by the next open.
                if let PendingOp::Create { id, .. } | PendingOp::Snapshot { id, .. } = op {
                    let _ = self.message(&format!("delete {id}"));
                    self.record.pending = None;
                    self.save()?;
                }
                Err(causal)
            }
        }
    }

    fn next_id(&mut self) -> Result<ThinId> {
        let id = self.record.next_thin_id;
        if id > ThinId::MAX {
            return Err(Error::ThinIdsExhausted);
        }
        self.record.next_thin_id = ThinId(id.0 + 1);
        Ok(id)
    }

    /// Creates an empty thin device of `size` (a whole number of 512-byte
    /// sectors), labelled with `tag`. The pool must be active.
    pub fn create_thin(&mut self, size: Bytes, tag: &str) -> Result<ThinId> {
        if size.0 == 0 || !size.is_multiple_of(Bytes(512)) {
            return Err(Error::invalid(
                "thin device size",
                format!("{size} is not a positive multiple of 512 bytes"),
            ));
        }
        self.pool_dev()?;
        let id = self.next_id()?;
        let op = PendingOp::Create {
            id,
            size,
            tag: tag.to_string(),
        };
        self.transact(op, &format!("create_thin {id}"), |_| Ok(()), |_| {})?;
        Ok(id)
    }

    /// Creates a thin device sharing all of `origin`'s blocks (O(1), copy
    /// on write per pool block). An active origin is suspended, with its
    /// filesystem frozen and flushed, while the snapshot is taken.
    pub fn snapshot_thin(&mut self, origin: ThinId, tag: &str) -> Result<ThinId> {
        let size = self
            .record
            .thins
            .get(&origin)
            .ok_or(Error::NoSuchThin(origin))?
            .size;
        self.pool_dev()?;
        let id = self.next_id()?;
        let op = PendingOp::Snapshot {
            id,
            origin,
            size,
            tag: tag.to_string(),
        };
        let origin_name = self.names.name(Role::Thin(origin));
        let active = self.kernel_has(Role::Thin(origin))?;
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
    /// maps. Fails with [`Error::Busy`] while it is mounted or open.
    pub fn delete_thin(&mut self, id: ThinId) -> Result<()> {
        if !self.record.thins.contains_key(&id) {
            return Err(Error::NoSuchThin(id));
        }
        self.pool_dev()?;
        self.remove_thin_dev(id)?;
        self.transact(
            PendingOp::Delete { id },
            &format!("delete {id}"),
            |_| Ok(()),
            |_| {},
        )
    }

    /// Activates a thin device and returns its device node (`/dev/dm-N`,
    /// which exists with or without udev); idempotent.
    pub fn activate_thin(&mut self, id: ThinId) -> Result<PathBuf> {
        let rec = self.record.thins.get(&id).ok_or(Error::NoSuchThin(id))?;
        let dev = ThinDev::setup(
            &self.dm,
            &self.names.name(Role::Thin(id)),
            Some(&self.names.uuid(Role::Thin(id))),
            Sectors(rec.size.sectors()),
            self.pool_dev()?,
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
    pub fn grow_thin(&mut self, id: ThinId, size: Bytes) -> Result<()> {
        let cur = self
            .record
            .thins
            .get(&id)
            .ok_or(Error::NoSuchThin(id))?
            .size;
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
        if let Some((_, ty, params)) = self.kernel_table(Role::Thin(id))? {
            self.reload_length(Role::Thin(id), size.sectors(), &ty, &params)?;
        }
        Ok(())
    }

    /// Deactivates a thin device; idempotent. Fails with [`Error::Busy`]
    /// while it is mounted or open.
    pub fn deactivate_thin(&mut self, id: ThinId) -> Result<()> {
        if !self.record.thins.contains_key(&id) {
            return Err(Error::NoSuchThin(id));
        }
        self.remove_thin_dev(id)
    }

    fn remove_thin_dev(&self, id: ThinId) -> Result<()> {
        remove_device(&self.dm, &self.names, Role::Thin(id), &self.record)
    }

    /// Grows the data and/or metadata of the pool online. Shrinking is
    /// refused; a loop-backed pool's files are extended, a device-backed
    /// pool's devices must already be large enough.
    pub fn grow(&mut self, data: Option<SizeChange>, metadata: Option<SizeChange>) -> Result<()> {
        let target =
            |what: &'static str, change: Option<SizeChange>, cur: Bytes| -> Result<Bytes> {
                let Some(change) = change else { return Ok(cur) };
                let t = change
                    .target(cur)
                    .ok_or_else(|| Error::invalid(what, "the new size overflows".to_string()))?;
                if t < cur {
                    return Err(Error::invalid(
                        what,
                        format!(
                        "{t} is smaller than the current {cur}; shrinking a pool is not supported"
                    ),
                    ));
                }
                Ok(t)
            };
        let new_data = target("data size", data, self.record.data.size)?;
        let new_meta = target("metadata size", metadata, self.record.metadata.size)?;
        config::check_data_size(new_data, self.record.block_size)?;
        if new_meta != self.record.metadata.size || new_data != self.record.data.size {
            config::check_metadata_size(new_meta, new_data, self.record.block_size).map_err(
                |e| match e {
                    Error::Invalid { reason, .. } if metadata.is_none() => {
                        Error::GrowNeedsMetadata { reason }
                    }
                    e => e,
                },
            )?;
        }
        self.pool_dev()?;
        for (b, new) in [
            (self.record.data.clone(), new_data),
            (self.record.metadata.clone(), new_meta),
        ] {
            if new == b.size {
                continue;
            }
            match b.kind {
                BackingKind::File => {
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&b.path)
                        .map_err(io_err("opening", &b.path))?;
                    if f.metadata().map_err(io_err("inspecting", &b.path))?.len() < new.0 {
                        f.set_len(new.0).map_err(io_err("extending", &b.path))?;
                        f.sync_all().map_err(io_err("syncing", &b.path))?;
                    }
                }
                BackingKind::Device => {
                    let f = fs::File::open(&b.path).map_err(io_err("opening", &b.path))?;
                    let have = kernel::blockdev_size(&f).map_err(io_err("sizing", &b.path))?;
                    if have < new {
                        return Err(Error::DeviceTooSmall {
                            path: b.path.clone(),
                            have,
                            want: new,
                        });
                    }
                }
            }
        }
        self.record.data.size = new_data;
        self.record.metadata.size = new_meta;
        self.save()?;
        self.dev = None;
        self.adopt()
    }

    /// Deactivates the pool and removes its files and record. Refused while
    /// thin devices exist unless `force`; always refused while one is in use.
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

    /// Bytes each thin device maps, maps alone, and shares with others,
    /// read with `thin_ls` from a metadata snapshot of the live pool.
    pub fn usage(&self) -> Result<BTreeMap<ThinId, ThinUsage>> {
        let meta = self.pool_dev()?.meta_dev().devnode();
        // A snapshot left held by a killed process blocks a new one.
        let _ = self.message("release_metadata_snap");
        self.message("reserve_metadata_snap")?;
        let out = Command::new("thin_ls")
            .args([
                "--metadata-snap",
                "--no-headers",
                "-o",
                "DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES",
            ])
            .arg(&meta)
            .output();
        let released = self.message("release_metadata_snap");
        let out = out.map_err(|e| Error::Tool {
            tool: "thin_ls".into(),
            detail: format!("{e} (install thin-provisioning-tools)"),
        })?;
        released?;
        if !out.status.success() {
            return Err(Error::Tool {
                tool: "thin_ls".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        parse_thin_ls(&String::from_utf8_lossy(&out.stdout))
    }

    /// The pool's state, from the record and, when active, the kernel.
    pub fn status(&self) -> Result<PoolStatus> {
        let loop_of = |b: &Backing| -> Option<PathBuf> {
            (b.kind == BackingKind::File)
                .then(|| {
                    loopback::find(&b.path)
                        .ok()
                        .flatten()
                        .map(|l: LoopDev| l.path)
                })
                .flatten()
        };
        let space = |b: &Backing, used: Option<Bytes>, total: Bytes| SpaceStatus {
            total_bytes: total,
            used_bytes: used,
            backing: b.kind,
            path: b.path.clone(),
            loop_device: loop_of(b),
        };
        let r = &self.record;
        let mut st = PoolStatus {
            id: r.id.to_string(),
            dir: self.dir.clone(),
            active: self.dev.is_some(),
            mode: None,
            needs_check: None,
            block_size: r.block_size.bytes(),
            on_full: r.on_full,
            transaction_id: r.transaction_id,
            thin_devices: r.thins.len(),
            data: space(&r.data, None, r.data.size),
            metadata: space(&r.metadata, None, r.metadata.size),
        };
        if self.dev.is_some() {
            match self.kernel_status()? {
                ThinPoolStatus::Working(w) => {
                    let bs = r.block_size.bytes().0;
                    st.transaction_id = TransactionId(w.transaction_id);
                    st.data.used_bytes = Some(Bytes(w.usage.used_data.0 * bs));
                    st.data.total_bytes = Bytes(w.usage.total_data.0 * bs);
                    st.metadata.used_bytes = Some(Bytes(w.usage.used_meta.0 * METADATA_BLOCK.0));
                    st.metadata.total_bytes = Bytes(w.usage.total_meta.0 * METADATA_BLOCK.0);
                    st.needs_check = Some(w.needs_check);
                    st.mode = Some(match w.summary {
                        ThinPoolStatusSummary::Good => PoolMode::Rw,
                        ThinPoolStatusSummary::OutOfSpace => PoolMode::OutOfDataSpace,
                        ThinPoolStatusSummary::ReadOnly => PoolMode::ReadOnly,
                    });
                }
                ThinPoolStatus::Error | ThinPoolStatus::Fail => st.mode = Some(PoolMode::Fail),
            }
        }
        Ok(st)
    }
}

/// Space one thin device takes in the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinUsage {
    /// Bytes of the pool the device maps.
    pub mapped: Bytes,
    /// Bytes only this device maps: freed when it is deleted.
    pub exclusive: Bytes,
    /// Bytes it shares with snapshots or origins.
    pub shared: Bytes,
}

/// Parses `thin_ls --no-headers -o DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES`.
pub fn parse_thin_ls(out: &str) -> Result<BTreeMap<ThinId, ThinUsage>> {
    let bad = |line: &str| Error::Tool {
        tool: "thin_ls".into(),
        detail: format!("unexpected output line '{line}'"),
    };
    let mut map = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> Result<u64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(line))
        };
        if f.len() != 4 {
            return Err(bad(line));
        }
        let id = u32::try_from(n(0)?).map_err(|_| bad(line))?;
        map.insert(
            ThinId(id),
            ThinUsage {
                mapped: Bytes(n(1)?),
                exclusive: Bytes(n(2)?),
                shared: Bytes(n(3)?),
            },
        );
    }
    Ok(map)
}

fn opts_size(req: &BackingRequest) -> Option<Bytes> {
    match req {
        BackingRequest::File(s) | BackingRequest::Device(_, s) => *s,
    }
}

/// Removes one of our devices if the kernel has it.
fn remove_device(dm: &DM, names: &PoolNames, role: Role, record: &PoolRecord) -> Result<()> {
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
                    Role::Thin(id) => format!(
                        "thin device {id}{}",
                        record
                            .thins
                            .get(&id)
                            .map(|t| format!(" ({})", t.tag))
                            .unwrap_or_default()
                    ),
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

/// Removes every device named with this pool's prefix: thin devices, then
/// the pool, then its linear devices.
fn remove_devices(dm: &DM, names: &PoolNames, record: &PoolRecord) -> Result<()> {
    let mut ours: Vec<Role> = dm
        .list_devices()
        .map_err(Error::dm("listing devices"))?
        .iter()
        .filter_map(|(name, _, _)| names.role_of(name))
        .collect();
    let rank = |r: &Role| match r {
        Role::Thin(_) => 0,
        Role::Pool => 1,
        Role::Data => 2,
        Role::Meta => 3,
    };
    ours.sort_by_key(rank);
    for role in ours {
        remove_device(dm, names, role, record)?;
    }
    Ok(())
}

fn detach_loops(record: &PoolRecord) -> Result<()> {
    for b in [&record.data, &record.metadata] {
        if b.kind == BackingKind::File {
            loopback::detach_file(&b.path)
                .map_err(io_err("detaching the loop device of", &b.path))?;
        }
    }
    Ok(())
}

/// Removes everything a (possibly killed) `pool create` made.
fn rollback_create(dm: &DM, dir: &Path, record: &PoolRecord) -> Result<()> {
    let names = PoolNames::new(record.id.clone());
    remove_devices(dm, &names, record)?;
    for b in [&record.data, &record.metadata] {
        if b.kind == BackingKind::File && b.path.exists() {
            loopback::detach_file(&b.path)
                .map_err(io_err("detaching the loop device of", &b.path))?;
            fs::remove_file(&b.path).map_err(io_err("removing", &b.path))?;
        }
    }
    Ok(record::remove(&dir.join(RECORD_FILE))?)
}

/// Completes a destroy: devices, loops, files, then the record.
fn finish_destroy(dm: &DM, dir: &Path, record: &PoolRecord) -> Result<()> {
    let names = PoolNames::new(record.id.clone());
    remove_devices(dm, &names, record)?;
    detach_loops(record)?;
    for b in [&record.data, &record.metadata] {
        match b.kind {
            BackingKind::File => match fs::remove_file(&b.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &b.path)(e)),
            },
            BackingKind::Device if std::ptr::eq(b, &record.metadata) => {
                // So the device is not taken for this pool's metadata again.
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&b.path)
                    .map_err(io_err("opening", &b.path))?;
                kernel::wipe_superblock(&mut f, &b.path)?;
            }
            BackingKind::Device => {}
        }
    }
    Ok(record::remove(&dir.join(RECORD_FILE))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_thin_ls_output_parses_per_device() {
        let m = parse_thin_ls("     0   1048576  65536  983040\n  12  0 0 0\n").unwrap();
        assert_eq!(m[&ThinId(0)].exclusive, Bytes(65536));
        assert_eq!(m[&ThinId(0)].shared, Bytes(983040));
        assert_eq!(m[&ThinId(12)], ThinUsage::default());
        assert!(parse_thin_ls("0 1 2\n").is_err());
        assert!(parse_thin_ls("x 1 2 3\n").is_err());
    }
}
