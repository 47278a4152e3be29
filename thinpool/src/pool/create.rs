//! Making a new pool: checking the options, then the files and devices.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use devicemapper::DM;

use super::{
    destroy, lock_dir, Backing, BackingKind, Pool, PoolOpenOptions, PoolRecord, PoolState,
};
use super::{DATA_FILE, METADATA_FILE, RECORD_FILE};
use crate::config::{self, BackingRequest, CreateOptions, METADATA_BLOCK};
use crate::error::{Error, Result};
use crate::kernel::{self, Superblock};
use crate::names::PoolId;
use crate::record;
use crate::units::{Bytes, ThinId, TransactionId};

/// A backing resolved at create time: its size and, for devices, the open
/// exclusive handle that proves nobody else holds it.
struct ResolvedBacking {
    kind: BackingKind,
    path: PathBuf,
    size: Bytes,
    _excl: Option<fs::File>,
}

impl ResolvedBacking {
    fn backing(&self) -> Backing {
        Backing {
            kind: self.kind,
            path: self.path.clone(),
            size: self.size,
        }
    }
}

/// A backing before its size is settled: the size asked for, or for a
/// device its whole size.
struct Located {
    kind: BackingKind,
    path: PathBuf,
    size: Option<Bytes>,
    excl: Option<fs::File>,
}

impl Located {
    fn sized(self, size: Bytes) -> ResolvedBacking {
        ResolvedBacking {
            kind: self.kind,
            path: self.path,
            size,
            _excl: self.excl,
        }
    }
}

/// Where a backing will be: a file `file` under `dir`, or the device asked
/// for, opened exclusively and checked to hold the size asked for.
fn locate(req: &BackingRequest, dir: &Path, file: &str, what: &'static str) -> Result<Located> {
    match req {
        BackingRequest::File(size) => Ok(Located {
            kind: BackingKind::File,
            path: dir.join(file),
            size: *size,
            excl: None,
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
            Ok(Located {
                kind: BackingKind::Device,
                path,
                size: Some(size),
                excl: Some(file),
            })
        }
    }
}

/// Checks create options without changing anything: sizes, and that named
/// devices exist, are block devices and are not in use.
///
/// Errors: [`Error::Invalid`] for a size or device that cannot be used,
/// [`Error::Busy`] for a device someone else holds.
pub fn check_create_options(opts: &CreateOptions) -> Result<()> {
    plan(Path::new("/"), opts).map(|_| ())
}

/// Checks autoextend settings for a pool of `data` in `block` blocks on
/// backings of `kinds`: only files grow by themselves.
///
/// Errors: [`Error::Invalid`].
pub(super) fn check_autoextend(
    a: &config::Autoextend,
    data: Bytes,
    block: crate::units::BlockSize,
    kinds: [BackingKind; 2],
) -> Result<()> {
    if kinds.contains(&BackingKind::Device) {
        return Err(Error::invalid(
            "autoextend",
            "it grows the pool's files, and this pool is on block devices: grow the devices, then run `thinlayer pool grow`",
        ));
    }
    a.check(data, block)
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
    let data = locate(&opts.data, dir, DATA_FILE, "data device")?;
    let meta = locate(&opts.metadata, dir, METADATA_FILE, "metadata device")?;
    let data_size = data.size.unwrap_or(config::DEFAULT_DATA_SIZE);
    let data_size = if data.kind == BackingKind::Device && opts.data.size().is_none() {
        // A whole device: use every full block of it.
        let bs = opts.block_size.bytes().0;
        Bytes(data_size.0 / bs * bs)
    } else {
        data_size
    };
    config::check_data_size(data_size, opts.block_size)?;
    let meta_size = match (meta.size, meta.kind) {
        (Some(s), BackingKind::Device) if opts.metadata.size().is_none() => {
            let s = Bytes(s.0 / METADATA_BLOCK.0 * METADATA_BLOCK.0);
            s.min(config::MAX_METADATA)
        }
        (Some(s), _) => s,
        (None, _) => config::default_metadata(data_size, opts.block_size),
    };
    config::check_metadata_size(meta_size, data_size, opts.block_size)?;
    if let Some(a) = &opts.autoextend {
        check_autoextend(a, data_size, opts.block_size, [data.kind, meta.kind])?;
    }
    Ok((data.sized(data_size), meta.sized(meta_size)))
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pool {
    /// Creates a pool in `dir` (made with mode 0700 if missing) and leaves
    /// it active. Validates everything it can before touching anything; on
    /// any failure removes all it made.
    ///
    /// Errors: those of [`check_create_options`]; [`Error::PoolExists`]
    /// when `dir` already holds a pool; [`Error::StrayBacking`] when a
    /// backing file is in the way; [`Error::MetadataInUse`] when the
    /// metadata device holds another pool's metadata; the kernel's
    /// ([`Error::NoDeviceMapper`], [`Error::Dm`]); [`Error::Rollback`] when
    /// cleaning up after a failure failed too.
    pub fn create(dir: &Path, opts: &CreateOptions) -> Result<Pool> {
        Self::create_with(dir, opts, &PoolOpenOptions::default())
    }

    /// [`Pool::create`] with explicit open options.
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
            .map_err(Error::io("creating", dir))?;
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
                PoolState::Creating => destroy::rollback_create(&dm, dir, &existing)?,
                PoolState::Destroying => destroy::finish_destroy(&dm, dir, &existing)?,
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
            id: PoolId::generate().map_err(Error::io("reading", "/dev/urandom"))?,
            state: PoolState::Creating,
            created_unix: now_unix(),
            block_size: opts.block_size,
            on_full: opts.on_full,
            min_free: opts.min_free,
            autoextend: opts.autoextend,
            queue_timeout: opts.queue_timeout,
            data: data.backing(),
            metadata: meta.backing(),
            transaction_id: TransactionId(0),
            next_thin_id: ThinId(0),
            thins: BTreeMap::new(),
            pending: None,
            log_epoch: 0,
        };
        record::write(&dir.join(RECORD_FILE), &record)?;
        let mut pool = Pool::with_record(dir, lock, record, dm);
        // The exclusive opens are released only now, just before dm takes
        // the devices, so nobody can grab them in between.
        drop((data, meta));
        match pool.make_devices() {
            Ok(()) => {
                pool.record.state = PoolState::Ready;
                pool.save()?;
                Ok(pool)
            }
            Err(causal) => match destroy::rollback_create(&pool.dm, dir, &pool.record) {
                Ok(()) => Err(causal),
                Err(rollback) => Err(Error::Rollback {
                    causal: Box::new(causal),
                    rollback: Box::new(rollback),
                }),
            },
        }
    }

    /// Makes the backing files, readies a metadata device and starts the
    /// dm devices.
    fn make_devices(&mut self) -> Result<()> {
        for b in [&self.record.data, &self.record.metadata] {
            match b.kind {
                BackingKind::File => {
                    let f = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&b.path)
                        .map_err(Error::io("creating", &b.path))?;
                    f.set_len(b.size.0).map_err(Error::io("sizing", &b.path))?;
                    f.sync_all().map_err(Error::io("syncing", &b.path))?;
                }
                BackingKind::Device => {}
            }
        }
        record::sync_dir(&self.dir).map_err(Error::io("syncing", &self.dir))?;
        if self.record.metadata.kind == BackingKind::Device {
            let path = &self.record.metadata.path;
            if Superblock::read(path)?.is_some() {
                return Err(Error::MetadataInUse { path: path.clone() });
            }
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(Error::io("opening", path))?;
            kernel::wipe_superblock(&mut f, path)?;
        }
        self.start_devices()
    }
}
