//! The layer store: the graph of layers and images, shared by all drivers.
//!
//! ```text
//! <root>/<driver>/          e.g. <root>/thin
//!   lock                    flock: held while records are read or written
//!   journals/<txn>.json     one per transaction in flight
//!   journals/<txn>.lock     flock: held by that transaction while it lives
//!   layers/<id>.json        one record per layer (crate::layer::LayerRecord)
//!   layers/<id>.split       an image layer's changeset layout (crate::changeset::split)
//!   images/<id>.json        one record per image (ImageRecord)
//!   locks/init-<id>.lock    flock: held while the init layer over <id> is made
//!   mnt/<id>/               where `layer mount` mounts a layer
//!   tmp/<pid>/              scratch mount points of process <pid>
//!   tmp/<pid>.lock          flock: held by process <pid> while it lives
//! ```
//!
//! # Transactions
//!
//! Every mutating operation is one [`Txn`] ([`Store::transaction`]):
//!
//! 1. **intent**: its journal names the layers it will create (and what
//!    they will be: parent, name, key) and the layers and image it will
//!    remove ([`journal`]);
//! 2. **work**: the driver makes or frees resources (for the thin driver,
//!    thin devices tagged with their layer's id, each recorded as pending
//!    in the pool's change log before the kernel makes it: see
//!    `thinpool::recovery`);
//! 3. **commit**: layer and image records are written (atomically), then
//!    the journal is removed.
//!
//! [`journal::recover`] runs whenever a store is opened (or its lock taken
//! again) and finds the journal of a dead transaction: a layer being
//! created is undone whether or not its record was written (the whole
//! operation did not commit, so an import killed half-way leaves none of
//! its layers); removals are finished. Then the driver frees resources no
//! record or live transaction claims, so there is never a thin device
//! without a layer, nor a layer without its device.
//!
//! # Concurrency
//!
//! The store's lock is held while records are read, checked and written,
//! not while the driver works: [`Store::unlocked`] lets it go around
//! driver calls (making and freeing devices and directories, applying
//! changesets, mounts, usage) and takes it again after, reading the
//! records anew. What a transaction in flight has claimed in its journal
//! stays its own meanwhile: its new layers' names, keys and parents, and
//! the layers it removes ([`Txn::reserve_layer`], [`Txn::intend_removal`]).
//! So operations on different layers, in one process (the snapshotter
//! daemon's requests) or several (the CLI beside it), run at the same
//! time.
//!
//! The store's files: [`graph`] (finding layers, chains, names), [`layers`]
//! (layer operations), [`images`] (image records), [`txn`] (the
//! transaction API that those and `crate::image::import` use).

pub mod changes;
pub mod graph;
pub mod images;
pub mod journal;
pub mod layers;
pub mod lost;
pub mod prune;
pub mod txn;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thinpool::lock::LockGuard;

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::layer::{LayerId, LayerRecord};

pub use crate::mount::{scratch_dir, sweep_scratch};
pub use images::{normalize_image_name, ImageRecord, ImageRemoval};
pub use journal::{Claim, Journal};
pub use layers::LayerDiff;
pub use txn::{CommitOf, ExpectDiffId, NewLayer, Txn};

/// What recovery did, for the user to see.
pub type Repairs = Vec<String>;

/// Layers and images of one driver, open.
pub struct Store {
    dir: PathBuf,
    /// The store's lock, held except while the driver works unlocked.
    lock: Option<LockGuard>,
    lock_timeout: Duration,
    driver: Box<dyn Driver>,
    layers: BTreeMap<LayerId, LayerRecord>,
    images: BTreeMap<String, ImageRecord>,
    /// The journals of other live transactions: what they claim.
    pending: Vec<Journal>,
    /// This store's own transaction in flight, if any.
    own_txn: Option<String>,
    repairs: Repairs,
    /// The layer and image records as last read from their files.
    layer_files: RecordCache<LayerRecord>,
    image_files: RecordCache<ImageRecord>,
}

/// A store between two uses by the process that opened it, its lock let
/// go ([`Store::park`]).
#[derive(Debug)]
pub struct ParkedStore {
    store: Store,
    /// The lock's count of holders when it was let go.
    generation: Option<u64>,
}

impl ParkedStore {
    /// Takes the store's lock back. The store as it was parked, if no one
    /// else took the lock meanwhile (every change to the records is made
    /// under it), no other process had a transaction live then (whose
    /// death only a fresh read would notice), and its driver finds the
    /// system as it left it ([`crate::driver::Driver::revalidate`]).
    /// Otherwise `None`: the caller opens the store anew, which rereads
    /// the records and recovers what others left.
    ///
    /// Errors: the lock cannot be taken ([`Error::Lock`]), or the driver
    /// cannot look.
    pub fn resume(self) -> Result<Option<Store>> {
        self.take_back(false)
    }

    /// Takes the store's lock back, as [`ParkedStore::resume`], but when
    /// others held the lock meanwhile reads the records anew, finishing
    /// the transactions of dead processes (as [`Store::unlocked`] does),
    /// over the same driver (whose opening, for thin adopting the pool,
    /// is most of a store's). `None` only when the driver no longer finds
    /// the system as it left it, or this store was parked inside its own
    /// transaction: the caller opens the store anew.
    ///
    /// Errors: the lock cannot be taken ([`Error::Lock`]), the driver
    /// cannot look, or the records cannot be read or recovered.
    pub fn reopen(self) -> Result<Option<Store>> {
        self.take_back(true)
    }

    /// [`ParkedStore::resume`], or with `reread` [`ParkedStore::reopen`].
    fn take_back(self, reread: bool) -> Result<Option<Store>> {
        let _phase = tracing::trace_span!(crate::phase::STORE_OPEN).entered();
        let ParkedStore {
            mut store,
            generation,
        } = self;
        if store.own_txn.is_some() || (!reread && !store.pending.is_empty()) {
            return Ok(None);
        }
        // A store that is reread asks its driver first, without the
        // store's lock: what the driver looks at (for thin, the pool, which
        // has its own lock) is not the records', and other processes then
        // wait for the store's lock only while its records are read.
        if reread && !store.driver.revalidate()? {
            return Ok(None);
        }
        let untouched = store.take_lock_back(generation)?;
        if !untouched && !reread {
            return Ok(None);
        }
        if !reread && !store.driver.revalidate()? {
            return Ok(None);
        }
        if !untouched || !store.pending.is_empty() {
            store.load()?;
        }
        Ok(Some(store))
    }

    /// Whether this store held the lock after `other` did: of two parked
    /// stores, only the later can still resume.
    pub fn is_later_than(&self, other: &ParkedStore) -> bool {
        self.generation > other.generation
    }
}

/// A store's lock, taken by [`lock_store`] before the store is opened,
/// and how long to wait when it is taken again.
#[derive(Debug)]
pub struct StoreLock {
    guard: LockGuard,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("driver", &self.driver.name())
            .field("layers", &self.layers.len())
            .field("images", &self.images.len())
            .finish()
    }
}

/// Takes the store's lock, making its directories (mode 0700).
pub fn lock_store(dir: &Path, timeout: Duration) -> Result<StoreLock> {
    for sub in ["", "layers", "images", "mnt", "tmp", journal::DIR] {
        let p = dir.join(sub);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&p)
            .map_err(Error::io("creating", &p))?;
    }
    let guard = tracing::trace_span!(crate::phase::LOCK)
        .in_scope(|| LockGuard::acquire(&dir.join("lock"), timeout))?;
    Ok(StoreLock { guard, timeout })
}

/// Every record in `dir` (its `*.json` files).
fn read_dir_records<T: serde::de::DeserializeOwned + Clone>(dir: &Path) -> Result<Vec<T>> {
    RecordCache::default().read_dir(dir)
}

/// What a store decoded when it last read a directory of records: each
/// record file's bytes with its record. A store reads its records again
/// every time it takes its lock back after another process held it (three
/// times in a container create beside others), and most of them are as
/// they were: a file whose bytes are the ones decoded before is not
/// decoded again. Only identical bytes are reused, so what a read returns
/// is what a fresh read would.
struct RecordCache<T> {
    files: HashMap<OsString, (Vec<u8>, T)>,
}

impl<T> Default for RecordCache<T> {
    fn default() -> Self {
        RecordCache {
            files: HashMap::new(),
        }
    }
}

impl<T: serde::de::DeserializeOwned + Clone> RecordCache<T> {
    /// Every record in `dir` (its `*.json` files), decoding only the files
    /// that changed since the last read, and forgetting those gone.
    fn read_dir(&mut self, dir: &Path) -> Result<Vec<T>> {
        let mut out = vec![];
        let mut seen = HashMap::with_capacity(self.files.len());
        let rd = fs::read_dir(dir).map_err(Error::io("listing", dir))?;
        for e in rd {
            let e = e.map_err(Error::io("listing", dir))?;
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = match fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("reading", &p)(e)),
            };
            let name = e.file_name();
            let rec = match self.files.remove(&name) {
                Some((b, rec)) if b == bytes => rec,
                _ => thinpool::record::decode(&bytes, &p)?,
            };
            out.push(rec.clone());
            seen.insert(name, (bytes, rec));
        }
        self.files = seen;
        Ok(out)
    }
}

impl Store {
    /// Opens the store in `dir` with `driver`, holding `lock` (from
    /// [`lock_store`]), and recovers whatever a killed command left.
    pub fn open(dir: &Path, lock: StoreLock, driver: Box<dyn Driver>) -> Result<Store> {
        let mut store = Store {
            dir: dir.to_path_buf(),
            lock: Some(lock.guard),
            lock_timeout: lock.timeout,
            driver,
            layers: BTreeMap::new(),
            images: BTreeMap::new(),
            pending: vec![],
            own_txn: None,
            repairs: vec![],
            layer_files: RecordCache::default(),
            image_files: RecordCache::default(),
        };
        store.recover()?;
        Ok(store)
    }

    /// Reads the records, finishing or undoing the transactions of dead
    /// processes and noting those of live ones. Holding the lock.
    fn load(&mut self) -> Result<()> {
        self.layers = self
            .layer_files
            .read_dir(&self.dir.join("layers"))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        self.images = self
            .image_files
            .read_dir(&self.dir.join("images"))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        self.pending.clear();
        let legacy = self.dir.join(journal::LEGACY_FILE);
        if let Some(j) = thinpool::record::read::<Journal>(&legacy)? {
            self.finish(&j)?;
            thinpool::record::remove(&legacy)?;
        }
        let jdir = self.dir.join(journal::DIR);
        let mut names: Vec<String> = match fs::read_dir(&jdir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(Error::io("listing", &jdir)(e)),
        };
        names.sort();
        for name in &names {
            let Some(txn) = name.strip_suffix(".json") else {
                continue;
            };
            if self.own_txn.as_deref() == Some(txn) {
                continue;
            }
            let path = jdir.join(name);
            let lock = jdir.join(format!("{txn}.lock"));
            match LockGuard::try_acquire(&lock)? {
                None => {
                    if let Some(j) = thinpool::record::read::<Journal>(&path)? {
                        self.pending.push(j);
                    }
                }
                Some(guard) => {
                    match thinpool::record::read::<Journal>(&path) {
                        Ok(Some(j)) => self.finish(&j)?,
                        Ok(None) => {}
                        // A claims-only journal is written without fsync: a
                        // power cut can tear it. Its layers are complete
                        // (their records were written) or orphan resources,
                        // which `recover` frees once the records are read.
                        Err(thinpool::record::RecordError::Corrupt { .. })
                            if txn.ends_with(txn::CLAIMS_SUFFIX) =>
                        {
                            self.repairs.push(format!(
                                "dropped the torn claims journal of a transaction cut off by a power loss ({txn})"
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                    thinpool::record::remove(&path)?;
                    guard.remove();
                }
            }
        }
        // Locks whose journal is gone: a transaction killed as it ended.
        for name in &names {
            let Some(txn) = name.strip_suffix(".lock") else {
                continue;
            };
            if self.own_txn.as_deref() == Some(txn) || names.contains(&format!("{txn}.json")) {
                continue;
            }
            LockGuard::remove_if_free(&jdir.join(name))?;
        }
        Ok(())
    }

    /// Finishes or undoes dead transaction `j`.
    fn finish(&mut self, j: &Journal) -> Result<()> {
        let done = journal::recover(
            j,
            &mut self.layers,
            &mut self.images,
            self.driver.as_mut(),
            &self.dir,
        )?;
        self.repairs.extend(done);
        Ok(())
    }

    /// Lets go of the store's lock and keeps what it read, for a process
    /// that serves one request after another (`snapshotter serve`):
    /// [`ParkedStore::resume`] takes the lock back. What opening repaired
    /// has been reported by then, and is forgotten.
    pub fn park(mut self) -> ParkedStore {
        let generation = self.lock.take().and_then(|g| g.generation());
        self.repairs.clear();
        ParkedStore {
            store: self,
            generation,
        }
    }

    /// Runs `work` on the driver without the store's lock, so that other
    /// operations go on meanwhile, then takes the lock again and reads the
    /// records anew, unless no other process took the lock meanwhile
    /// (every change to the records is made under it, so they are as this
    /// store last read them). What `work` touches must be claimed by this
    /// store's transaction (or be read-only). Errors: the lock cannot be
    /// taken again ([`Error::Lock`]), or the records cannot be read.
    pub fn unlocked<T>(&mut self, work: impl FnOnce(&mut dyn Driver) -> T) -> Result<T> {
        let before = self.lock.take().and_then(|g| g.generation());
        let out =
            tracing::trace_span!(crate::phase::DRIVER).in_scope(|| work(self.driver.as_mut()));
        if !self.take_lock_back(before)? {
            self.load()?;
        }
        Ok(out)
    }

    /// Takes the store's lock again after letting go of it at generation
    /// `before`; whether no one else held it meanwhile, so that what this
    /// store read is still true.
    fn take_lock_back(&mut self, before: Option<u64>) -> Result<bool> {
        let _phase = tracing::trace_span!(crate::phase::LOCK).entered();
        let lock = LockGuard::acquire(&self.dir.join("lock"), self.lock_timeout)?;
        let untouched = lock.follows(before);
        self.lock = Some(lock);
        Ok(untouched)
    }

    /// Whether a live transaction of another store is removing layer `id`.
    pub fn being_removed(&self, id: &LayerId) -> bool {
        self.pending.iter().any(|j| j.remove.contains(id))
    }

    /// Whether a live transaction of another store is making layer `id`
    /// (its record, if written, is not committed yet).
    pub(crate) fn being_made(&self, id: &LayerId) -> bool {
        self.pending.iter().any(|j| j.create.contains(id))
    }

    /// The live transaction of another store that holds a claim `matches`
    /// accepts (a name, a key, a parent), if any.
    pub(crate) fn claimed_by(&self, matches: impl Fn(&Claim) -> bool) -> Option<&Journal> {
        self.pending
            .iter()
            .find(|j| j.claims.values().any(&matches))
    }

    /// What opening the store repaired.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// The driver's name (`thin`, `overlay`).
    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    /// Every layer, by id.
    pub fn layers(&self) -> impl Iterator<Item = &LayerRecord> {
        self.layers.values()
    }

    /// Every image, by id.
    pub fn images(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn journal_path(&self, txn: &str) -> PathBuf {
        self.dir.join(journal::DIR).join(format!("{txn}.json"))
    }

    fn layer_path(&self, id: &LayerId) -> PathBuf {
        layer_path(&self.dir, id)
    }

    fn layout_path(&self, id: &LayerId) -> PathBuf {
        layout_path(&self.dir, id)
    }

    fn image_path(&self, id: &str) -> PathBuf {
        image_path(&self.dir, id)
    }

    /// Where `layer mount` mounts a layer.
    pub fn mount_point(&self, id: &LayerId) -> PathBuf {
        self.dir.join("mnt").join(id.as_str())
    }

    fn recover(&mut self) -> Result<()> {
        // Scratch mounts of killed commands.
        for m in sweep_scratch(&self.dir)? {
            self.repairs.push(format!("unmounted {}", m.display()));
        }
        self.load()?;
        self.sweep_files()?;
        let in_flight: std::collections::BTreeSet<LayerId> = self
            .pending
            .iter()
            .flat_map(|j| j.create.iter().chain(j.remove.iter()).cloned())
            .collect();
        let all: Vec<&LayerRecord> = self
            .layers
            .values()
            .filter(|l| !in_flight.contains(&l.id))
            .collect();
        let freed = self.driver.reconcile(&all, &in_flight)?;
        self.repairs.extend(
            freed
                .into_iter()
                .map(|f| format!("freed {f}, which no layer claimed")),
        );
        Ok(())
    }
}

impl Store {
    /// Removes files a killed command left beside the records: layouts
    /// of layers that have no record, configs of images that have none.
    fn sweep_files(&mut self) -> Result<()> {
        for (sub, ext) in [("layers", "split"), ("images", "config")] {
            let dir = self.dir.join(sub);
            let rd = fs::read_dir(&dir).map_err(Error::io("listing", &dir))?;
            for e in rd {
                let p = e.map_err(Error::io("listing", &dir))?.path();
                if p.extension().is_none_or(|x| x != ext) {
                    continue;
                }
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let owned = match sub {
                    "layers" => {
                        self.layers.keys().any(|k| k.as_str() == stem)
                            || LayerId::try_from(stem.to_string())
                                .is_ok_and(|id| self.being_made(&id))
                    }
                    _ => {
                        self.images.contains_key(stem)
                            || self
                                .pending
                                .iter()
                                .any(|j| j.create_image.as_deref() == Some(stem))
                    }
                };
                if !owned {
                    thinpool::record::remove(&p)?;
                    self.repairs
                        .push(format!("removed {}, which no record claimed", p.display()));
                }
            }
        }
        Ok(())
    }
}

fn layout_path(dir: &Path, id: &LayerId) -> PathBuf {
    dir.join("layers").join(format!("{id}.split"))
}

fn layer_path(dir: &Path, id: &LayerId) -> PathBuf {
    dir.join("layers").join(format!("{id}.json"))
}

fn image_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("images").join(format!("{id}.json"))
}
