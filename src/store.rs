//! The layer store: the graph of layers and images, shared by all drivers.
//!
//! ```text
//! <root>/<driver>/          e.g. <root>/thin
//!   lock                    flock: one command at a time on this store
//!   journal.json            the operation in flight, if any
//!   layers/<id>.json        one record per layer (crate::layer::LayerRecord)
//!   images/<id>.json        one record per image
//!   mnt/<id>/               where `layer mount` mounts a layer
//!   tmp/                    scratch mount points of running commands
//! ```
//!
//! # Transactions
//!
//! Every mutating command is one transaction:
//!
//! 1. **intent**: `journal.json` names the layers it will create and the
//!    layers and image it will remove;
//! 2. **work**: the driver makes or frees resources (for the thin driver,
//!    thin devices tagged with their layer's id, each committed with the
//!    pool's `set_transaction_id`: see `thinpool::recovery`);
//! 3. **commit**: layer and image records are written (atomically), then
//!    the journal is removed.
//!
//! [`recover`] runs whenever a store is opened and a journal is present: a
//! layer being created that has no record is undone (its resource, found by
//! tag, is freed); a layer being created that has a record is kept only if
//! the whole operation committed (the journal was removed), so an import
//! killed half-way leaves none of its layers; removals are finished. Then
//! the driver frees resources no record claims, so there is never a thin
//! device without a layer, nor a layer without its device.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thinpool::lock::LockGuard;

use crate::changeset::{ExportOptions, ExportStats};
use crate::driver::{Driver, Usage};
use crate::error::{Error, Result};
use crate::ids::now_unix;
use crate::image::{ImageArchive, ImageManifest};
use crate::layer::{validate_name, LayerId, LayerRecord};
use crate::mount;

pub const JOURNAL: &str = "journal.json";

/// The operation in flight (`journal.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// What the command was doing, for messages.
    pub op: String,
    /// Layers being created, in order.
    #[serde(default)]
    pub create: Vec<LayerId>,
    /// Layers being removed.
    #[serde(default)]
    pub remove: Vec<LayerId>,
    /// An image being created (undone) ...
    #[serde(default)]
    pub create_image: Option<String>,
    /// ... or removed (finished).
    #[serde(default)]
    pub remove_image: Option<String>,
}

/// An image's record (`images/<id>.json`; the id is the config digest's hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub names: Vec<String>,
    /// Bottom to top.
    pub layers: Vec<LayerId>,
    pub created_unix: u64,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
}

/// What recovery did, for the user to see.
pub type Repairs = Vec<String>;

/// Progress of a long operation (image import).
pub trait Progress {
    fn layer_start(&self, _index: usize, _count: usize, _size: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn layer_done(&self, _index: usize, _reused: bool) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

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

/// Layers and images of one driver, open and locked.
pub struct Store {
    dir: PathBuf,
    _lock: LockGuard,
    driver: Box<dyn Driver>,
    layers: BTreeMap<LayerId, LayerRecord>,
    images: BTreeMap<String, ImageRecord>,
    repairs: Repairs,
}

/// Takes the store's lock, making its directories (mode 0700).
pub fn lock_store(dir: &Path, timeout: Duration) -> Result<LockGuard> {
    for sub in ["", "layers", "images", "mnt", "tmp"] {
        let p = dir.join(sub);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&p)
            .map_err(Error::io("creating", &p))?;
    }
    Ok(LockGuard::acquire(&dir.join("lock"), timeout)?)
}

fn read_dir_records<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut out = vec![];
    let rd = fs::read_dir(dir).map_err(Error::io("listing", dir))?;
    for e in rd {
        let p = e.map_err(Error::io("listing", dir))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(r) = thinpool::record::read(&p)? {
                out.push(r);
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Opens the store in `dir` with `driver`, holding `lock` (from
    /// [`lock_store`]), and recovers whatever a killed command left.
    pub fn open(dir: &Path, lock: LockGuard, driver: Box<dyn Driver>) -> Result<Store> {
        let layers = read_dir_records::<LayerRecord>(&dir.join("layers"))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let images = read_dir_records::<ImageRecord>(&dir.join("images"))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let mut store = Store {
            dir: dir.to_path_buf(),
            _lock: lock,
            driver,
            layers,
            images,
            repairs: vec![],
        };
        store.recover()?;
        Ok(store)
    }

    /// What opening the store repaired.
    pub fn repairs(&self) -> &[String] {
        &self.repairs
    }

    pub fn driver_name(&self) -> &'static str {
        self.driver.name()
    }

    pub fn layers(&self) -> impl Iterator<Item = &LayerRecord> {
        self.layers.values()
    }

    pub fn images(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    fn layer_path(&self, id: &LayerId) -> PathBuf {
        self.dir.join("layers").join(format!("{id}.json"))
    }

    fn image_path(&self, id: &str) -> PathBuf {
        self.dir.join("images").join(format!("{id}.json"))
    }

    /// Where `layer mount` mounts a layer.
    pub fn mount_point(&self, id: &LayerId) -> PathBuf {
        self.dir.join("mnt").join(id.as_str())
    }

    fn begin(&self, j: &Journal) -> Result<()> {
        Ok(thinpool::record::write(&self.journal_path(), j)?)
    }

    fn end(&self) -> Result<()> {
        Ok(thinpool::record::remove(&self.journal_path())?)
    }

    fn recover(&mut self) -> Result<()> {
        // Scratch mounts of a killed command.
        let tmp = self.dir.join("tmp");
        for m in mount::mount_points()? {
            if m.starts_with(&tmp) {
                mount::unmount(&m)?;
                self.repairs.push(format!("unmounted {}", m.display()));
            }
        }
        if let Some(j) = thinpool::record::read::<Journal>(&self.journal_path())? {
            let done = recover(
                &j,
                &mut self.layers,
                &mut self.images,
                self.driver.as_mut(),
                &self.dir,
            )?;
            self.repairs.extend(done);
            self.end()?;
        }
        let all: Vec<&LayerRecord> = self.layers.values().collect();
        let freed = self.driver.reconcile(&all)?;
        self.repairs.extend(
            freed
                .into_iter()
                .map(|f| format!("freed {f}, which no layer claimed")),
        );
        Ok(())
    }

    /// Finds a layer by id, name, or unique id prefix (4 digits or more).
    pub fn layer(&self, key: &str) -> Result<&LayerRecord> {
        if let Ok(id) = LayerId::try_from(key.to_string()) {
            if let Some(l) = self.layers.get(&id) {
                return Ok(l);
            }
        }
        if let Some(l) = self
            .layers
            .values()
            .find(|l| l.name.as_deref() == Some(key))
        {
            return Ok(l);
        }
        by_id_prefix("layer", key, self.layers.values(), |l| l.id.as_str())
    }

    /// A layer and its ancestors, the layer first.
    pub fn chain(&self, id: &LayerId) -> Result<Vec<&LayerRecord>> {
        let mut out = vec![];
        let mut cur = Some(id.clone());
        while let Some(c) = cur {
            let l = self.layers.get(&c).ok_or_else(|| Error::Corrupt {
                what: format!("layer {id}"),
                reason: format!("its ancestor {c} has no record"),
            })?;
            if out.len() > self.layers.len() {
                return Err(Error::Corrupt {
                    what: format!("layer {id}"),
                    reason: "its parents form a cycle".into(),
                });
            }
            out.push(l);
            cur = l.parent.clone();
        }
        Ok(out)
    }

    pub fn children(&self, id: &LayerId) -> Vec<&LayerRecord> {
        self.layers
            .values()
            .filter(|l| l.parent.as_ref() == Some(id))
            .collect()
    }

    fn check_new_name(&self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            validate_name(n)?;
            if self.layers.values().any(|l| l.name.as_deref() == Some(n)) {
                return Err(Error::Exists {
                    what: "layer",
                    name: n.into(),
                });
            }
        }
        Ok(())
    }

    /// Makes one layer (resource, optional changeset, record) inside an
    /// open transaction; on failure frees what it made.
    fn make_layer(
        &mut self,
        id: &LayerId,
        parent: Option<&LayerId>,
        name: Option<&str>,
        chain_id: Option<String>,
        changeset: Option<&mut dyn Read>,
        container: Option<&str>,
    ) -> Result<(LayerRecord, Option<String>)> {
        let chain: Vec<LayerRecord> = match parent {
            Some(p) => self.chain(p)?.into_iter().cloned().collect(),
            None => vec![],
        };
        let chain_refs: Vec<&LayerRecord> = chain.iter().collect();
        let resource = self.driver.create(id, &chain_refs)?;
        let mut rec = LayerRecord {
            id: id.clone(),
            name: name.map(str::to_string),
            parent: parent.cloned(),
            created_unix: now_unix(),
            diff_id: None,
            chain_id,
            resource,
            container: container.map(str::to_string),
        };
        let mut applied = None;
        if let Some(cs) = changeset {
            match self.driver.apply(&rec, &chain_refs, cs) {
                Ok(stats) => {
                    rec.diff_id = Some(stats.diff_id.clone());
                    applied = Some(stats.diff_id);
                }
                Err(e) => {
                    let undo = self.driver.remove(&rec);
                    return Err(e.with_rollback(undo));
                }
            }
        }
        Ok((rec, applied))
    }

    /// Creates a layer: a snapshot of `parent` (an empty filesystem when
    /// `None`), with `changeset` (an OCI layer tar, plain or compressed)
    /// applied. Returns its id. On any failure nothing is left.
    pub fn create_layer(
        &mut self,
        parent: Option<&str>,
        name: Option<&str>,
        changeset: Option<&mut dyn Read>,
    ) -> Result<LayerId> {
        self.check_new_name(name)?;
        let parent = match parent {
            Some(p) => {
                let l = self.layer(p)?;
                refuse_container_layer(l, "snapshot")?;
                Some(l.id.clone())
            }
            None => None,
        };
        let id = LayerId::generate()?;
        self.begin(&Journal {
            op: "create layer".into(),
            create: vec![id.clone()],
            ..Journal::default()
        })?;
        let made = self.make_layer(&id, parent.as_ref(), name, None, changeset, None);
        let rec = match made {
            Ok((rec, _)) => rec,
            Err(e) => {
                let undo = self.driver.remove_orphan(&id).and_then(|()| self.end());
                return Err(e.with_rollback(undo));
            }
        };
        thinpool::record::write(&self.layer_path(&id), &rec)?;
        self.layers.insert(id.clone(), rec);
        self.end()?;
        Ok(id)
    }

    /// Removes a layer. Refused while it has children, is mounted, or is
    /// part of an image.
    pub fn remove_layer(&mut self, key: &str) -> Result<LayerId> {
        let rec = self.layer(key)?.clone();
        refuse_container_layer(&rec, "remove")?;
        let what = || format!("layer {}", display_layer(&rec));
        let kids = self.children(&rec.id);
        if !kids.is_empty() {
            return Err(Error::InUse {
                what: what(),
                reason: format!(
                    "it is the parent of {} ({}); remove {} first",
                    if kids.len() == 1 {
                        "1 layer".to_string()
                    } else {
                        format!("{} layers", kids.len())
                    },
                    kids.iter()
                        .map(|k| display_layer(k))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if kids.len() == 1 { "it" } else { "them" }
                ),
            });
        }
        let mp = self.mount_point(&rec.id);
        if mount::is_mounted(&mp)? {
            return Err(Error::InUse {
                what: what(),
                reason: format!(
                    "it is mounted at {}; run `thinlayer layer umount {key}` first",
                    mp.display()
                ),
            });
        }
        if let Some(img) = self.images.values().find(|i| i.layers.contains(&rec.id)) {
            return Err(Error::InUse {
                what: what(),
                reason: format!(
                    "it belongs to image {}; remove the image instead",
                    display_image(img)
                ),
            });
        }
        self.begin(&Journal {
            op: "remove layer".into(),
            remove: vec![rec.id.clone()],
            ..Journal::default()
        })?;
        self.driver.remove(&rec)?;
        thinpool::record::remove(&self.layer_path(&rec.id))?;
        self.layers.remove(&rec.id);
        self.end()?;
        Ok(rec.id)
    }

    /// Mounts a layer read-only at its mount point; idempotent. Returns the
    /// mount point.
    pub fn mount_layer(&mut self, key: &str) -> Result<PathBuf> {
        let l = self.layer(key)?;
        refuse_container_layer(l, "mount")?;
        let id = l.id.clone();
        let mp = self.mount_point(&id);
        if mount::is_mounted(&mp)? {
            return Ok(mp);
        }
        fs::create_dir_all(&mp).map_err(Error::io("creating", &mp))?;
        let chain: Vec<LayerRecord> = self.chain(&id)?.into_iter().cloned().collect();
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        self.driver.mount(&refs, &mp, false)?;
        Ok(mp)
    }

    /// Unmounts a layer mounted by [`Store::mount_layer`]; idempotent.
    pub fn unmount_layer(&mut self, key: &str) -> Result<PathBuf> {
        let rec = self.layer(key)?.clone();
        let mp = self.mount_point(&rec.id);
        self.driver.unmount(&rec, &mp)?;
        Ok(mp)
    }

    pub fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        mount::is_mounted(&self.mount_point(id))
    }

    /// Writes a layer's changes against its parent as an OCI changeset.
    pub fn diff(
        &mut self,
        key: &str,
        out: &mut dyn Write,
        opts: &ExportOptions,
    ) -> Result<ExportStats> {
        let id = self.layer(key)?.id.clone();
        let chain: Vec<LayerRecord> = self.chain(&id)?.into_iter().cloned().collect();
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        self.driver.export(&refs, out, opts)
    }

    /// Space per layer, in the order given.
    pub fn usage(&mut self, ids: &[LayerId]) -> Result<Vec<Usage>> {
        let recs: Vec<LayerRecord> = ids
            .iter()
            .filter_map(|i| self.layers.get(i).cloned())
            .collect();
        let refs: Vec<&LayerRecord> = recs.iter().collect();
        self.driver.usage(&refs)
    }

    /// Creates a container's two layers in one transaction: its init layer
    /// (`init`, a changeset over `parent`) and its writable layer over it,
    /// grown to `size` if given. Both are owned by `container`. Returns
    /// `[init, writable]`; on any failure neither is left.
    pub fn create_container_layers(
        &mut self,
        parent: &LayerId,
        container: &str,
        init: &mut dyn Read,
        size: Option<thinpool::Bytes>,
    ) -> Result<[LayerId; 2]> {
        let parent = self.layer(parent.as_str())?;
        refuse_container_layer(parent, "snapshot")?;
        let parent = parent.id.clone();
        let ids = [LayerId::generate()?, LayerId::generate()?];
        self.begin(&Journal {
            op: format!("create container {}", &container[..12.min(container.len())]),
            create: ids.to_vec(),
            ..Journal::default()
        })?;
        if let Err(e) = self.make_container_layers(&ids, &parent, container, init, size) {
            let undo = self.undo_creates(&ids).and_then(|()| self.end());
            return Err(e.with_rollback(undo));
        }
        self.end()?;
        Ok(ids)
    }

    fn make_container_layers(
        &mut self,
        [init_id, rw_id]: &[LayerId; 2],
        parent: &LayerId,
        container: &str,
        init: &mut dyn Read,
        size: Option<thinpool::Bytes>,
    ) -> Result<()> {
        let (init_rec, _) = self.make_layer(
            init_id,
            Some(parent),
            None,
            None,
            Some(init),
            Some(container),
        )?;
        thinpool::record::write(&self.layer_path(init_id), &init_rec)?;
        self.layers.insert(init_id.clone(), init_rec);
        let (rw, _) = self.make_layer(rw_id, Some(init_id), None, None, None, Some(container))?;
        thinpool::record::write(&self.layer_path(rw_id), &rw)?;
        self.layers.insert(rw_id.clone(), rw.clone());
        if let Some(size) = size {
            self.driver.resize(&rw, size)?;
        }
        Ok(())
    }

    /// Removes layers of a container, given top first; layers already gone
    /// are skipped (so a killed removal can be finished).
    pub fn remove_container_layers(&mut self, ids: &[LayerId]) -> Result<()> {
        let present: Vec<LayerId> = ids
            .iter()
            .filter(|i| self.layers.contains_key(*i))
            .cloned()
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        self.begin(&Journal {
            op: "remove container layers".into(),
            remove: present.clone(),
            ..Journal::default()
        })?;
        for id in &present {
            if let Some(rec) = self.layers.get(id).cloned() {
                self.driver.remove(&rec)?;
                thinpool::record::remove(&self.layer_path(id))?;
                self.layers.remove(id);
            }
        }
        self.end()
    }

    /// Mounts layer `id` (read-only, or `writable` if it is a container's
    /// writable layer) at `target`, an existing directory.
    pub fn mount_at(&mut self, id: &LayerId, target: &Path, writable: bool) -> Result<()> {
        let chain: Vec<LayerRecord> = self.chain(id)?.into_iter().cloned().collect();
        if writable && (chain[0].container.is_none() || !self.children(id).is_empty()) {
            return Err(Error::InUse {
                what: format!("layer {}", display_layer(&chain[0])),
                reason: "only a container's writable layer is mounted writable".into(),
            });
        }
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        self.driver.mount(&refs, target, writable)
    }

    /// Unmounts what [`Store::mount_at`] mounted at `target`.
    pub fn unmount_at(&mut self, id: &LayerId, target: &Path) -> Result<()> {
        let rec = self
            .layers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: "layer",
                name: id.to_string(),
                hint: String::new(),
            })?;
        self.driver.unmount(&rec, target)
    }

    /// Makes a new layer over `parent` holding the changes of the
    /// container layer `rw` against its own parent, leaving out `skip`
    /// (the init layer's files). Returns the new layer's id.
    pub fn commit(
        &mut self,
        rw: &LayerId,
        parent: &LayerId,
        name: Option<&str>,
        skip: &'static [&'static str],
    ) -> Result<LayerId> {
        self.check_new_name(name)?;
        let spool = self.dir.join("tmp").join(format!("commit-{rw}.tar"));
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&spool)
            .map_err(Error::io("creating", &spool))?;
        // The spool is only a buffer: unlinked now, freed on close or kill.
        let _ = fs::remove_file(&spool);
        let opts = ExportOptions {
            skip,
            ..ExportOptions::default()
        };
        let chain: Vec<LayerRecord> = self.chain(rw)?.into_iter().cloned().collect();
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        self.driver.export(&refs, &mut f, &opts)?;
        use std::io::Seek;
        f.rewind().map_err(Error::io("reading", &spool))?;
        let mut r = std::io::BufReader::new(f);
        self.create_layer(Some(parent.as_str()), name, Some(&mut r))
    }

    /// The pool the driver keeps its layers in (thin driver only).
    pub fn pool_mut(&mut self) -> Option<&mut thinpool::Pool> {
        self.driver.pool_mut()
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Finds an image by `name[:tag]` (tag defaults to `latest`), id
    /// (`sha256:` optional), or unique id prefix.
    pub fn image(&self, key: &str) -> Result<&ImageRecord> {
        let full = normalize_image_name(key).ok();
        if let Some(i) = self
            .images
            .values()
            .find(|i| full.as_ref().is_some_and(|f| i.names.contains(f)))
        {
            return Ok(i);
        }
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        by_id_prefix("image", hex, self.images.values(), |i| i.id.as_str())
    }

    /// Imports every image in a `docker save` archive or OCI layout (tar or
    /// directory). Layers already in the store (same chain id) are reused.
    /// `name` replaces the archive's names. Returns the image ids.
    pub fn import_image(
        &mut self,
        path: &Path,
        name: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let name = name.map(normalize_image_name).transpose()?;
        let archive = ImageArchive::open(path)?;
        if archive.images().is_empty() {
            return Err(Error::invalid(
                "image archive",
                format!("{} holds no image", path.display()),
            ));
        }
        if name.is_some() && archive.images().len() > 1 {
            return Err(Error::invalid(
                "image name",
                format!(
                    "{} holds {} images; --name needs exactly one",
                    path.display(),
                    archive.images().len()
                ),
            ));
        }
        let mut ids = vec![];
        for m in archive.images() {
            let names = match &name {
                Some(n) => vec![n.clone()],
                None => m
                    .names
                    .iter()
                    .map(|n| normalize_image_name(n))
                    .collect::<Result<_>>()?,
            };
            ids.push(self.import_one(&archive, m, names, progress)?);
        }
        Ok(ids)
    }

    fn import_one(
        &mut self,
        archive: &ImageArchive,
        m: &ImageManifest,
        names: Vec<String>,
        progress: &dyn Progress,
    ) -> Result<String> {
        let id = m.config_digest.hex().to_string();
        let mut journal = Journal {
            op: format!("import image {}", &id[..12]),
            create_image: (!self.images.contains_key(&id)).then(|| id.clone()),
            ..Journal::default()
        };
        self.begin(&journal)?;
        let result = self.import_layers(archive, m, &mut journal, progress);
        let layers = match result {
            Ok(l) => l,
            Err(e) => {
                let undo = self.undo_creates(&journal.create).and_then(|()| self.end());
                return Err(e.with_rollback(undo));
            }
        };
        let mut rec = self.images.get(&id).cloned().unwrap_or(ImageRecord {
            id: id.clone(),
            names: vec![],
            layers,
            created_unix: now_unix(),
            architecture: m.config.architecture.clone(),
            os: m.config.os.clone(),
        });
        // A name moves to the newly imported image, as a tag does in Docker.
        for other in self.images.values_mut().filter(|i| i.id != id) {
            let before = other.names.len();
            other.names.retain(|n| !names.contains(n));
            if other.names.len() != before {
                thinpool::record::write(
                    &self.dir.join("images").join(format!("{}.json", other.id)),
                    &*other,
                )?;
            }
        }
        for n in names {
            if !rec.names.contains(&n) {
                rec.names.push(n);
            }
        }
        thinpool::record::write(&self.image_path(&id), &rec)?;
        self.images.insert(id.clone(), rec);
        self.end()?;
        Ok(id)
    }

    fn import_layers(
        &mut self,
        archive: &ImageArchive,
        m: &ImageManifest,
        journal: &mut Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<LayerId>> {
        let mut parent: Option<LayerId> = None;
        let mut out = vec![];
        let count = m.layers.len();
        for (i, lr) in m.layers.iter().enumerate() {
            let chain_id = lr.chain_id.to_string();
            if let Some(existing) = self
                .layers
                .values()
                .find(|l| l.chain_id.as_deref() == Some(chain_id.as_str()))
            {
                let id = existing.id.clone();
                progress.layer_done(i, true);
                out.push(id.clone());
                parent = Some(id);
                continue;
            }
            progress.layer_start(i, count, lr.size);
            let id = LayerId::generate()?;
            journal.create.push(id.clone());
            self.begin(journal)?;
            let blob = archive.open_layer(lr)?;
            // The blob is read, checked and inflated on a second core.
            let (rec, applied) = std::thread::scope(|s| {
                let mut plain = crate::image::ahead::decompressed(s, blob, progress);
                self.make_layer(
                    &id,
                    parent.as_ref(),
                    None,
                    Some(chain_id),
                    Some(&mut plain),
                    None,
                )
            })?;
            let applied = applied.unwrap_or_default();
            if applied != lr.diff_id.to_string() {
                let undo = self.driver.remove(&rec);
                return Err(Error::Corrupt {
                    what: format!("layer {} of the image", i + 1),
                    reason: format!(
                        "its content has diff_id {applied}, the image config says {}",
                        lr.diff_id
                    ),
                }
                .with_rollback(undo));
            }
            thinpool::record::write(&self.layer_path(&id), &rec)?;
            self.layers.insert(id.clone(), rec);
            progress.layer_done(i, false);
            out.push(id.clone());
            parent = Some(id);
        }
        Ok(out)
    }

    /// Removes the layers an unfinished transaction created, newest first.
    fn undo_creates(&mut self, ids: &[LayerId]) -> Result<()> {
        for id in ids.iter().rev() {
            match self.layers.remove(id) {
                Some(rec) => self.driver.remove(&rec)?,
                None => self.driver.remove_orphan(id)?,
            }
            thinpool::record::remove(&self.layer_path(id))?;
        }
        Ok(())
    }

    /// Removes an image and those of its layers nothing else uses (another
    /// image, a child layer outside it, a mount). Returns the removed layers.
    pub fn remove_image(&mut self, key: &str) -> Result<Vec<LayerId>> {
        let img = self.image(key)?.clone();
        let users: Vec<&str> = self
            .layers
            .values()
            .filter(|l| l.parent.as_ref().is_some_and(|p| img.layers.contains(p)))
            .filter_map(|l| l.container.as_deref())
            .collect();
        if !users.is_empty() {
            return Err(Error::InUse {
                what: format!("image {}", display_image(&img)),
                reason: format!(
                    "container {} uses it; remove the container first (`thinlayer container rm`)",
                    users
                        .iter()
                        .map(|c| &c[..12.min(c.len())])
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let mut remove: Vec<LayerId> = vec![];
        for id in img.layers.iter().rev() {
            let used_elsewhere = self
                .images
                .values()
                .any(|i| i.id != img.id && i.layers.contains(id));
            let other_kids = self.children(id).iter().any(|k| !remove.contains(&k.id));
            if used_elsewhere || other_kids || self.is_mounted(id)? {
                break;
            }
            remove.push(id.clone());
        }
        self.begin(&Journal {
            op: format!("remove image {}", &img.id[..12]),
            remove: remove.clone(),
            remove_image: Some(img.id.clone()),
            ..Journal::default()
        })?;
        thinpool::record::remove(&self.image_path(&img.id))?;
        self.images.remove(&img.id);
        for id in &remove {
            if let Some(rec) = self.layers.get(id).cloned() {
                self.driver.remove(&rec)?;
                thinpool::record::remove(&self.layer_path(id))?;
                self.layers.remove(id);
            }
        }
        self.end()?;
        Ok(remove)
    }
}

/// Layer commands leave a container's layers alone: they live and die with
/// the container.
fn refuse_container_layer(l: &LayerRecord, verb: &str) -> Result<()> {
    match &l.container {
        Some(c) => Err(Error::InUse {
            what: format!("layer {}", display_layer(l)),
            reason: format!(
                "it belongs to container {}; {verb} the container's changes with `thinlayer container commit` or remove it with `thinlayer container rm`",
                &c[..12.min(c.len())]
            ),
        }),
        None => Ok(()),
    }
}

/// The one item whose id starts with `key` (4 hex digits or more).
pub(crate) fn by_id_prefix<'a, T>(
    what: &'static str,
    key: &str,
    items: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    let hex = key.len() >= 4 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let matches: Vec<&T> = if hex {
        items.filter(|i| id(i).starts_with(key)).collect()
    } else {
        vec![]
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NotFound {
            what,
            name: key.to_string(),
            hint: format!(": list them with `thinlayer {what} ls`"),
        }),
        many => Err(Error::Ambiguous {
            what,
            name: key.to_string(),
            candidates: many
                .iter()
                .map(|i| &id(i)[..12])
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Finishes or undoes the transaction in `j`, given the records as they
/// are on disk. Pure but for the driver and record files, so every
/// kill point can be replayed in a test.
pub fn recover(
    j: &Journal,
    layers: &mut BTreeMap<LayerId, LayerRecord>,
    images: &mut BTreeMap<String, ImageRecord>,
    driver: &mut dyn Driver,
    dir: &Path,
) -> Result<Repairs> {
    let mut done = vec![];
    let layer_path = |id: &LayerId| dir.join("layers").join(format!("{id}.json"));
    let image_path = |id: &str| dir.join("images").join(format!("{id}.json"));
    // An image being created is dropped: its layers go below.
    if let Some(img) = &j.create_image {
        if images.remove(img).is_some() {
            thinpool::record::remove(&image_path(img))?;
        }
    }
    if let Some(img) = &j.remove_image {
        if images.remove(img).is_some() {
            thinpool::record::remove(&image_path(img))?;
        }
        done.push(format!(
            "finished removing image {}",
            &img[..img.len().min(12)]
        ));
    }
    // Layers being created, newest first: the transaction did not commit.
    for id in j.create.iter().rev() {
        match layers.remove(id) {
            Some(rec) => driver.remove(&rec)?,
            None => driver.remove_orphan(id)?,
        }
        thinpool::record::remove(&layer_path(id))?;
        done.push(format!(
            "undid the creation of layer {} ({})",
            id.short(),
            j.op
        ));
    }
    for id in &j.remove {
        if let Some(rec) = layers.remove(id) {
            driver.remove(&rec)?;
        }
        thinpool::record::remove(&layer_path(id))?;
        done.push(format!("finished removing layer {} ({})", id.short(), j.op));
    }
    Ok(done)
}

/// `name` or `name:tag` → `name:tag` (tag `latest` by default). Names are
/// lowercase path components of `[a-z0-9._-]` separated by `/`, with an
/// optional registry `host[:port]/` first; tags are up to 128 of
/// `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn normalize_image_name(s: &str) -> Result<String> {
    let bad = |why: &str| Error::invalid("image name", format!("'{s}' {why}"));
    let (repo, tag) = match s.rfind(':') {
        Some(i) if !s[i + 1..].contains('/') => (&s[..i], &s[i + 1..]),
        _ => (s, "latest"),
    };
    if repo.is_empty() {
        return Err(bad("has no name"));
    }
    // Docker's familiar form: `docker.io/library/alpine` is `alpine`.
    let repo = repo
        .strip_prefix("docker.io/")
        .or_else(|| repo.strip_prefix("index.docker.io/"))
        .map(|r| match r.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short,
            _ => r,
        })
        .unwrap_or(repo);
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if !tag_ok {
        return Err(bad(
            "has a bad tag: use up to 128 letters, digits, '_', '.' or '-'",
        ));
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    let host_ok = |h: &str| {
        let (name, port) = h.split_once(':').unwrap_or((h, "0"));
        let labels_ok = name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        labels_ok && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    };
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        if !host_ok(parts[0]) {
            return Err(bad("has a bad registry host"));
        }
        parts.remove(0);
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(bad("is not a valid image name: use lowercase letters, digits and '.', '_', '-' between '/'"));
        }
    }
    Ok(format!("{repo}:{tag}"))
}

/// `name (id)` or the short id.
pub fn display_layer(l: &LayerRecord) -> String {
    match &l.name {
        Some(n) => format!("{n} ({})", l.id.short()),
        None => l.id.short().to_string(),
    }
}

pub fn display_image(i: &ImageRecord) -> String {
    match i.names.first() {
        Some(n) => format!("{n} ({})", &i.id[..12]),
        None => i.id[..12].to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! The store's transactions against an in-memory driver: every kill
    //! point of every operation, replayed by reopening the store.

    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::rc::Rc;

    use sha2::{Digest as _, Sha256};
    use thinpool::ThinId;

    use super::*;
    use crate::changeset::{ApplyStats, Compression};
    use crate::layer::Resource;

    #[derive(Default)]
    struct FakeState {
        next: u32,
        /// thin id -> owner tag, like the pool's record
        devices: BTreeMap<ThinId, String>,
        calls: usize,
        /// Panic (the test's stand-in for SIGKILL) at this mutating call.
        crash_at: Option<usize>,
    }

    #[derive(Clone, Default)]
    struct Fake(Rc<RefCell<FakeState>>);

    impl Fake {
        fn step(&self) {
            let mut s = self.0.borrow_mut();
            let n = s.calls;
            s.calls += 1;
            if s.crash_at == Some(n) {
                drop(s);
                panic!("killed at step {n}");
            }
        }
        fn tags(&self) -> Vec<String> {
            self.0.borrow().devices.values().cloned().collect()
        }
    }

    fn tag(id: &LayerId) -> String {
        format!("layer:{id}")
    }

    fn thin(l: &LayerRecord) -> ThinId {
        match l.resource {
            Resource::Thin { thin_id } => thin_id,
            Resource::Dir { .. } => unreachable!(),
        }
    }

    impl Driver for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn create(&mut self, id: &LayerId, _chain: &[&LayerRecord]) -> Result<Resource> {
            self.step();
            let mut s = self.0.borrow_mut();
            let t = ThinId(s.next);
            s.next += 1;
            s.devices.insert(t, tag(id));
            Ok(Resource::Thin { thin_id: t })
        }
        fn apply(
            &mut self,
            _l: &LayerRecord,
            _c: &[&LayerRecord],
            cs: &mut dyn Read,
        ) -> Result<ApplyStats> {
            self.step();
            let mut buf = vec![];
            cs.read_to_end(&mut buf)
                .map_err(Error::io("reading", "changeset"))?;
            if buf == b"bad" {
                return Err(Error::invalid("changeset", "bad"));
            }
            Ok(ApplyStats {
                entries: 1,
                bytes: buf.len() as u64,
                diff_id: format!("sha256:{:x}", Sha256::digest(&buf)),
                compression: Compression::None,
            })
        }
        fn mount(&mut self, _c: &[&LayerRecord], _t: &Path, _w: bool) -> Result<()> {
            Ok(())
        }
        fn resize(&mut self, _l: &LayerRecord, size: thinpool::Bytes) -> Result<()> {
            self.step();
            if size.0 < 64 << 20 {
                return Err(Error::invalid("size", "too small"));
            }
            Ok(())
        }
        fn unmount(&mut self, _l: &LayerRecord, _t: &Path) -> Result<()> {
            Ok(())
        }
        fn export(
            &mut self,
            _c: &[&LayerRecord],
            _o: &mut dyn Write,
            _e: &ExportOptions,
        ) -> Result<ExportStats> {
            unreachable!("not used by these tests")
        }
        fn remove(&mut self, layer: &LayerRecord) -> Result<()> {
            self.step();
            self.0.borrow_mut().devices.remove(&thin(layer));
            Ok(())
        }
        fn remove_orphan(&mut self, id: &LayerId) -> Result<()> {
            self.step();
            self.0.borrow_mut().devices.retain(|_, t| *t != tag(id));
            Ok(())
        }
        fn usage(&mut self, layers: &[&LayerRecord]) -> Result<Vec<Usage>> {
            Ok(vec![Usage::default(); layers.len()])
        }
        fn reconcile(&mut self, layers: &[&LayerRecord]) -> Result<Vec<String>> {
            let owned: Vec<String> = layers.iter().map(|l| tag(&l.id)).collect();
            let mut s = self.0.borrow_mut();
            let before = s.devices.len();
            s.devices.retain(|_, t| owned.contains(t));
            let freed = (0..before - s.devices.len())
                .map(|i| format!("orphan {i}"))
                .collect();
            for l in layers {
                if !s.devices.contains_key(&thin(l)) {
                    return Err(Error::Corrupt {
                        what: format!("layer {}", l.id),
                        reason: "its resource is missing".into(),
                    });
                }
            }
            Ok(freed)
        }
    }

    fn open(dir: &Path, fake: &Fake) -> Result<Store> {
        let lock = lock_store(dir, Duration::ZERO)?;
        Store::open(dir, lock, Box::new(fake.clone()))
    }

    /// Runs `op` on a store whose driver panics at mutating call `k`;
    /// returns whether it ran to completion.
    fn run_killed_at(dir: &Path, fake: &Fake, k: usize, op: &dyn Fn(&mut Store)) -> bool {
        let at = fake.0.borrow().calls + k;
        fake.0.borrow_mut().crash_at = Some(at);
        let mut store = open(dir, fake).unwrap();
        let done = catch_unwind(AssertUnwindSafe(|| op(&mut store))).is_ok();
        fake.0.borrow_mut().crash_at = None;
        drop(store); // a killed process drops its lock too
        done
    }

    fn assert_consistent(store: &Store, fake: &Fake) {
        let owned: Vec<String> = store.layers().map(|l| tag(&l.id)).collect();
        let mut devs = fake.tags();
        devs.sort();
        let mut want = owned.clone();
        want.sort();
        assert_eq!(devs, want, "devices and layer records disagree");
        assert!(!store.dir.join(JOURNAL).exists());
    }

    #[test]
    fn plain_store_create_killed_at_every_step_leaves_no_trace() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let base = open(t.path(), &fake)
            .unwrap()
            .create_layer(None, Some("base"), None)
            .unwrap();
        let mut steps = 0;
        loop {
            let done = run_killed_at(t.path(), &fake, steps, &|s| {
                s.create_layer(Some("base"), Some("child"), Some(&mut &b"content"[..]))
                    .unwrap();
            });
            let store = open(t.path(), &fake).unwrap();
            assert_consistent(&store, &fake);
            if done {
                assert!(store.layer("child").is_ok());
                break;
            }
            assert!(
                store.layer("child").is_err(),
                "a killed create left its layer"
            );
            assert_eq!(store.layers().count(), 1);
            assert_eq!(store.layer("base").unwrap().id, base);
            steps += 1;
        }
        assert_eq!(steps, 2, "create and apply are the two kill points");
    }

    #[test]
    fn plain_store_create_killed_after_its_record_is_undone() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let id = open(t.path(), &fake)
            .unwrap()
            .create_layer(None, Some("x"), None)
            .unwrap();
        // As if killed between writing the record and removing the journal.
        let j = Journal {
            op: "create layer".into(),
            create: vec![id.clone()],
            ..Journal::default()
        };
        thinpool::record::write(&t.path().join(JOURNAL), &j).unwrap();
        let store = open(t.path(), &fake).unwrap();
        assert_eq!(store.layers().count(), 0);
        assert_eq!(store.repairs().len(), 1, "{:?}", store.repairs());
        assert!(store.repairs()[0].contains("undid the creation"));
        assert_consistent(&store, &fake);
    }

    #[test]
    fn plain_store_remove_killed_at_every_step_is_finished() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        open(t.path(), &fake)
            .unwrap()
            .create_layer(None, Some("gone"), None)
            .unwrap();
        let done = run_killed_at(t.path(), &fake, 0, &|s| {
            s.remove_layer("gone").unwrap();
        });
        assert!(!done);
        let store = open(t.path(), &fake).unwrap();
        assert!(
            store.layer("gone").is_err(),
            "a killed remove was not finished"
        );
        assert!(store.repairs()[0].contains("finished removing"));
        assert_consistent(&store, &fake);
    }

    #[test]
    fn plain_store_failed_changeset_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let mut store = open(t.path(), &fake).unwrap();
        let err = store
            .create_layer(None, Some("bad"), Some(&mut &b"bad"[..]))
            .unwrap_err();
        assert!(err.to_string().contains("invalid changeset"), "{err}");
        assert_eq!(store.layers().count(), 0);
        assert_consistent(&store, &fake);
    }

    #[test]
    fn plain_store_refuses_what_would_lose_layers() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let mut store = open(t.path(), &fake).unwrap();
        let a = store.create_layer(None, Some("a"), None).unwrap();
        store.create_layer(Some("a"), Some("b"), None).unwrap();
        let err = store.remove_layer("a").unwrap_err().to_string();
        assert!(
            err.contains("is in use") && err.contains("parent of 1 layer (b"),
            "{err}"
        );
        let err = store
            .create_layer(None, Some("a"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        let err = store
            .create_layer(Some("nope"), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no layer 'nope'"), "{err}");
        let err = store
            .create_layer(None, Some("../x"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid layer name"), "{err}");
        assert_eq!(store.layer(&a.as_str()[..6]).unwrap().id, a);
        assert_eq!(store.layers().count(), 2);
        assert_consistent(&store, &fake);
        store.remove_layer("b").unwrap();
        store.remove_layer("a").unwrap();
        assert_consistent(&store, &fake);
    }

    #[test]
    fn plain_store_frees_orphans_and_reports_missing_resources() {
        let t = tempfile::tempdir().unwrap();
        let fake = Fake::default();
        let id = open(t.path(), &fake)
            .unwrap()
            .create_layer(None, Some("a"), None)
            .unwrap();
        fake.0
            .borrow_mut()
            .devices
            .insert(ThinId(99), "layer:0123456789abcdef0123456789abcdef".into());
        let store = open(t.path(), &fake).unwrap();
        assert!(
            store
                .repairs()
                .iter()
                .any(|r| r.contains("no layer claimed")),
            "{:?}",
            store.repairs()
        );
        assert_consistent(&store, &fake);
        drop(store);
        fake.0.borrow_mut().devices.clear();
        let err = open(t.path(), &fake).unwrap_err().to_string();
        assert!(
            err.contains(&format!("layer {id}")) && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn plain_image_names_normalize_to_name_and_tag() {
        assert_eq!(normalize_image_name("alpine").unwrap(), "alpine:latest");
        assert_eq!(
            normalize_image_name("docker.io/library/alpine:3").unwrap(),
            "alpine:3"
        );
        assert_eq!(
            normalize_image_name("docker.io/example/app:1.0").unwrap(),
            "example/app:1.0"
        );
        assert_eq!(
            normalize_image_name("library/alpine:3.19").unwrap(),
            "library/alpine:3.19"
        );
        assert_eq!(
            normalize_image_name("localhost:5000/app:v1").unwrap(),
            "localhost:5000/app:v1"
        );
        assert_eq!(
            normalize_image_name("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        for bad in [
            "", ":tag", "UPPER", "a//b", "a:", "a:-x", "a b", "../x", "-a",
        ] {
            assert!(normalize_image_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
