//! Containers: a writable layer over an image, with volumes mounted in it.
//!
//! ```text
//! image top layer ── init layer ── writable layer      (one driver's store)
//!                    /etc/hostname  everything the
//!                    /etc/hosts     container writes
//!                    /etc/resolv.conf
//!
//! <root>/containers/
//!   lock               one command at a time on containers and volumes
//!   <id>/config.json   the record (ContainerRecord)
//!   <id>/rootfs/       where the container is mounted, volumes inside
//!   <id>/pinned        present while `container mount` holds it mounted
//! ```
//!
//! Both layers belong to the container (their records name it), so layer
//! commands refuse them; `commit` makes an ordinary layer of the writable
//! layer's changes over the image's top layer, without the init files.
//!
//! # Crash safety
//!
//! A container's record is written *before* anything is made for it, in
//! state `creating`, naming the volumes the command will create; then the
//! volumes and the two layers (one store transaction) are made; then the
//! state becomes `created`. `rm` writes state `removing` first. Opening
//! the containers ([`Containers::open`]) undoes every `creating` and
//! finishes every `removing`, so a kill at any instant leaves either the
//! whole container or nothing, and never a volume it made half-way.

pub mod exec;
pub mod scoped;
pub mod spec;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};
use thinpool::lock::LockGuard;
use thinpool::{Bytes, Pool};

use crate::changeset::{self, ApplyOptions, ExportOptions, WhiteoutMode};
use crate::driver::overlay::OverlayOptions;
use crate::error::{Error, Result};
use crate::ids::{now_unix, random_hex};
use crate::layer::LayerId;
use crate::mount;
use crate::root::{DriverKind, Root};
use crate::store::{by_id_prefix, Store};
use crate::volume::{NewVolume, PoolAccess, VolumeRecord, Volumes};
use scoped::Make;
use spec::{MountSpec, Source};

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made; undone if found by a later command.
    Creating,
    Created,
    /// Being removed; finished if found by a later command.
    Removing,
}

/// A container's record (`containers/<id>/config.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// `thin` or `overlay`: the store holding its layers.
    pub driver: String,
    pub state: State,
    /// The image it was made from (id and the name given).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_name: Option<String>,
    /// The layer under the init layer: the image's top layer, or the
    /// layer given with `--layer`. Commits are made over it.
    pub parent: LayerId,
    /// `[init, writable]`, once made.
    #[serde(default)]
    pub layers: Vec<LayerId>,
    pub hostname: String,
    #[serde(default)]
    pub size: Option<Bytes>,
    #[serde(default)]
    pub overlay_options: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Volumes this container's `create` makes (undone with it).
    #[serde(default)]
    pub created_volumes: Vec<CreatedVolume>,
    /// `rm -v`: remove its anonymous volumes too.
    #[serde(default)]
    pub remove_volumes: bool,
    pub created_unix: u64,
}

impl ContainerRecord {
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }

    fn driver_kind(&self) -> Result<DriverKind> {
        self.driver.parse().map_err(|e: String| Error::Corrupt {
            what: format!("container {}", self.name),
            reason: e,
        })
    }

    fn writable_layer(&self) -> Result<&LayerId> {
        self.layers.get(1).ok_or_else(|| Error::Corrupt {
            what: format!("container {}", self.name),
            reason: "it has no writable layer".into(),
        })
    }

    /// Names of the volumes it mounts.
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.mounts.iter().filter_map(|m| match &m.source {
            Source::Volume { name } => Some(name.as_str()),
            _ => None,
        })
    }
}

/// A volume made by `container create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedVolume {
    pub name: String,
    /// From `-v /path`, rather than a named volume that did not exist.
    pub anonymous: bool,
}

/// What `container create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewContainer {
    pub name: Option<String>,
    /// `--image NAME[:TAG]` or `--layer L` (exactly one).
    pub image: Option<String>,
    pub layer: Option<String>,
    pub driver: DriverKind,
    pub overlay: OverlayOptions,
    /// `-v` specs, as typed.
    pub volumes: Vec<String>,
    /// `--volumes-from C[:ro|:rw]`, as typed.
    pub volumes_from: Vec<String>,
    pub hostname: Option<String>,
    /// Thin driver: grow the writable layer's filesystem to this size.
    pub size: Option<Bytes>,
}

/// A container as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    #[serde(flatten)]
    pub record: ContainerRecord,
    pub mounted: bool,
    pub rootfs: PathBuf,
}

/// A volume as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeInfo {
    #[serde(flatten)]
    pub record: VolumeRecord,
    pub mountpoint: PathBuf,
    /// Names of the containers that mount it.
    pub used_by: Vec<String>,
    /// Bytes it holds, where that can be told without mounting it.
    pub size_bytes: Option<u64>,
}

/// Checks a container name: Docker's rule, 1 to 128 of `[A-Za-z0-9_.-]`
/// starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    crate::volume::validate_name(name).map_err(|_| {
        Error::invalid(
            "container name",
            format!("'{name}' must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"),
        )
    })
}

/// The stores and the pool, opened when first needed and in the lock
/// order of [`crate::root`].
struct Res<'r> {
    root: &'r Root,
    stores: Vec<(DriverKind, OverlayOptions, Store)>,
    pool: Option<Pool>,
    volumes_dir: PathBuf,
    reconciled: bool,
    repairs: Vec<String>,
}

impl Res<'_> {
    fn store(&mut self, kind: DriverKind, opts: &OverlayOptions) -> Result<&mut Store> {
        let opts = match kind {
            DriverKind::Thin => OverlayOptions::default(),
            DriverKind::Overlay => opts.clone(),
        };
        if let Some(i) = self
            .stores
            .iter()
            .position(|(k, o, _)| *k == kind && *o == opts)
        {
            return Ok(&mut self.stores[i].2);
        }
        // One store per driver at a time (each holds its lock); our own
        // pool handle goes before the thin store takes the pool's lock.
        self.stores.retain(|(k, _, _)| *k != kind);
        if kind == DriverKind::Thin {
            self.pool = None;
        }
        let store = self.root.open_store(kind, &opts)?;
        self.repairs.extend(store.repairs().iter().cloned());
        self.stores.push((kind, opts, store));
        Ok(&mut self.stores.last_mut().expect("just pushed").2)
    }

    fn open_store(&mut self, rec: &ContainerRecord) -> Result<&mut Store> {
        let opts = OverlayOptions::parse(&rec.overlay_options)?;
        self.store(rec.driver_kind()?, &opts)
    }
}

impl PoolAccess for Res<'_> {
    fn pool(&mut self) -> Result<&mut Pool> {
        let thin = self
            .stores
            .iter()
            .position(|(k, _, _)| *k == DriverKind::Thin);
        if self.pool.is_none() && thin.is_none() {
            let p = self.root.open_pool()?;
            if !p.is_active() {
                return Err(thinpool::Error::Inactive.into());
            }
            self.pool = Some(p);
        }
        let pool = match thin {
            Some(i) => self.stores[i]
                .2
                .pool_mut()
                .expect("the thin store has a pool"),
            None => self.pool.as_mut().expect("opened above"),
        };
        if !self.reconciled {
            self.reconciled = true;
            let freed = Volumes::at(&self.volumes_dir).reconcile_thin(pool)?;
            self.repairs
                .extend(freed.into_iter().map(|f| format!("freed {f}")));
        }
        Ok(pool)
    }
}

/// The containers and volumes of a root, open and locked.
pub struct Containers<'r> {
    dir: PathBuf,
    _lock: LockGuard,
    volumes: Volumes,
    records: BTreeMap<String, ContainerRecord>,
    res: Res<'r>,
}

impl<'r> Containers<'r> {
    /// Takes the containers' lock and finishes or undoes whatever a killed
    /// command left.
    pub fn open(root: &'r Root) -> Result<Containers<'r>> {
        root.ensure()?;
        let dir = root.containers_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io("creating", &dir))?;
        let lock = LockGuard::acquire(&dir.join("lock"), root.lock_timeout())?;
        let volumes = Volumes::open(&root.volumes_dir())?;
        let mut records = BTreeMap::new();
        let rd = fs::read_dir(&dir).map_err(Error::io("listing", &dir))?;
        for e in rd.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            match thinpool::record::read::<ContainerRecord>(&p.join("config.json"))? {
                Some(r) => {
                    records.insert(r.id.clone(), r);
                }
                // A removal killed after its record went.
                None if !mount::is_mounted(&p.join("rootfs"))? => {
                    fs::remove_dir_all(&p).map_err(Error::io("removing", &p))?;
                }
                None => {}
            }
        }
        let mut c = Containers {
            dir,
            _lock: lock,
            volumes,
            records,
            res: Res {
                root,
                stores: vec![],
                pool: None,
                volumes_dir: root.volumes_dir(),
                reconciled: false,
                repairs: vec![],
            },
        };
        c.recover()?;
        Ok(c)
    }

    fn recover(&mut self) -> Result<()> {
        // A `pool destroy --force` killed after the pool went: what lived
        // in it is gone too.
        if !self
            .res
            .root
            .pool_dir()
            .join(thinpool::pool::RECORD_FILE)
            .exists()
        {
            let (ctrs, vols) = self.pool_users()?;
            if !(ctrs.is_empty() && vols.is_empty()) {
                self.forget(&ctrs, &vols)?;
                self.res.repairs.push(format!(
                    "forgot {} container(s) and {} thin volume(s) of a destroyed pool",
                    ctrs.len(),
                    vols.len()
                ));
            }
        }
        let unfinished: Vec<ContainerRecord> = self
            .records
            .values()
            .filter(|r| r.state != State::Created)
            .cloned()
            .collect();
        for rec in unfinished {
            match rec.state {
                State::Creating => {
                    self.undo_create(&rec)?;
                    self.res
                        .repairs
                        .push(format!("undid the creation of container {}", rec.name));
                }
                _ => {
                    self.finish_remove(&rec)?;
                    self.res
                        .repairs
                        .push(format!("finished removing container {}", rec.name));
                }
            }
        }
        Ok(())
    }

    /// What opening (and any store or pool opened since) repaired.
    pub fn repairs(&self) -> &[String] {
        &self.res.repairs
    }

    fn cdir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Where a container is mounted.
    pub fn rootfs(&self, rec: &ContainerRecord) -> PathBuf {
        self.cdir(&rec.id).join("rootfs")
    }

    fn save(&self, rec: &ContainerRecord) -> Result<()> {
        let d = self.cdir(&rec.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(Error::io("creating", &d))?;
        Ok(thinpool::record::write(&d.join("config.json"), rec)?)
    }

    /// Finds a container by name, id or unique id prefix.
    pub fn get(&self, key: &str) -> Result<&ContainerRecord> {
        if let Some(r) = self.records.get(key) {
            return Ok(r);
        }
        if let Some(r) = self.records.values().find(|r| r.name == key) {
            return Ok(r);
        }
        by_id_prefix("container", key, self.records.values(), |r| r.id.as_str())
    }

    pub fn is_mounted(&self, rec: &ContainerRecord) -> Result<bool> {
        mount::is_mounted(&self.rootfs(rec))
    }

    pub fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut out: Vec<ContainerInfo> = self
            .records
            .values()
            .map(|r| {
                Ok(ContainerInfo {
                    record: r.clone(),
                    mounted: self.is_mounted(r)?,
                    rootfs: self.rootfs(r),
                })
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| {
            a.record
                .created_unix
                .cmp(&b.record.created_unix)
                .then(a.record.name.cmp(&b.record.name))
        });
        Ok(out)
    }

    pub fn inspect(&self, key: &str) -> Result<ContainerInfo> {
        let r = self.get(key)?;
        Ok(ContainerInfo {
            record: r.clone(),
            mounted: self.is_mounted(r)?,
            rootfs: self.rootfs(r),
        })
    }

    /// Creates a container: checks everything first, then records it
    /// (`creating`), makes its new volumes, its init and writable layers,
    /// fills new empty volumes from the image, and marks it `created`. On
    /// failure nothing is left.
    pub fn create(&mut self, req: &NewContainer) -> Result<ContainerRecord> {
        let id = random_hex(32)?;
        let name = match &req.name {
            Some(n) => {
                validate_name(n)?;
                n.clone()
            }
            None => id[..12].to_string(),
        };
        if self.records.values().any(|r| r.name == name) {
            return Err(Error::Exists {
                what: "container",
                name,
            });
        }
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
        spec::check_hostname(&hostname)?;
        if req.size.is_some() && req.driver == DriverKind::Overlay {
            return Err(Error::invalid(
                "size",
                "the overlay driver has no per-container size limit; use --driver thin for --size",
            ));
        }
        let mut mounts = self.mount_specs(req)?;
        let store = self.res.store(req.driver, &req.overlay)?;
        let (image, image_name, parent) = match (&req.image, &req.layer) {
            (Some(i), None) => {
                let img = store.image(i)?;
                let top =
                    img.layers.last().cloned().ok_or_else(|| {
                        Error::invalid("image", format!("image '{i}' has no layers"))
                    })?;
                (Some(img.id.clone()), Some(i.clone()), top)
            }
            (None, Some(l)) => (None, None, store.layer(l)?.id.clone()),
            _ => {
                return Err(Error::invalid(
                    "container source",
                    "give exactly one of --image and --layer",
                ))
            }
        };
        // Volumes to make: anonymous ones get their names now, so the
        // record can name them before they exist.
        let mut created_volumes = vec![];
        for m in &mut mounts {
            match &m.source {
                Source::Anonymous => {
                    let n = random_hex(32)?;
                    created_volumes.push(CreatedVolume {
                        name: n.clone(),
                        anonymous: true,
                    });
                    m.source = Source::Volume { name: n };
                }
                Source::Volume { name }
                    if self.volumes.find(name)?.is_none()
                        && !created_volumes.iter().any(|c| &c.name == name) =>
                {
                    created_volumes.push(CreatedVolume {
                        name: name.clone(),
                        anonymous: false,
                    });
                }
                _ => {}
            }
        }
        let mut rec = ContainerRecord {
            id: id.clone(),
            name,
            driver: req.driver.as_str().to_string(),
            state: State::Creating,
            image,
            image_name,
            parent,
            layers: vec![],
            hostname,
            size: req.size,
            overlay_options: req.overlay.to_args(),
            mounts,
            created_volumes,
            remove_volumes: false,
            created_unix: now_unix(),
        };
        self.save(&rec)?;
        self.records.insert(id.clone(), rec.clone());
        if let Err(e) = self.make(&mut rec) {
            let undo = self.undo_create(&rec);
            return Err(e.with_rollback(undo));
        }
        rec.state = State::Created;
        self.save(&rec)?;
        self.records.insert(id, rec.clone());
        Ok(rec)
    }

    /// `-v` and `--volumes-from`, checked and merged: `-v` wins over a
    /// volume taken from another container at the same path.
    fn mount_specs(&self, req: &NewContainer) -> Result<Vec<MountSpec>> {
        let mut out: Vec<MountSpec> = vec![];
        for v in &req.volumes {
            let m = spec::parse_volume(v)?;
            if out.iter().any(|o| o.destination == m.destination) {
                return Err(Error::invalid(
                    "volume spec",
                    format!("'{v}': two mounts at {}", m.destination),
                ));
            }
            out.push(m);
        }
        for vf in &req.volumes_from {
            let (c, ro) = spec::parse_volumes_from(vf)?;
            let other = self.get(&c).map_err(|e| match e {
                Error::NotFound { .. } => Error::invalid(
                    "--volumes-from",
                    format!("no container '{c}': list them with `thinlayer container ls`"),
                ),
                e => e,
            })?;
            for m in &other.mounts {
                if out.iter().any(|o| o.destination == m.destination) {
                    continue;
                }
                let mut m = m.clone();
                m.readonly |= ro;
                // The data is already there: never copied again.
                m.nocopy = true;
                out.push(m);
            }
        }
        Ok(out)
    }

    fn make(&mut self, rec: &mut ContainerRecord) -> Result<()> {
        for c in rec.created_volumes.clone() {
            self.volumes.create(
                &NewVolume {
                    name: Some(c.name),
                    anonymous: c.anonymous,
                    ..NewVolume::default()
                },
                &mut self.res,
            )?;
        }
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let init = spec::init_changeset(&rec.hostname, &host_resolv, now_unix());
        let store = self.res.open_store(rec)?;
        let layers =
            store.create_container_layers(&rec.parent, &rec.id, &mut init.as_slice(), rec.size)?;
        rec.layers = layers.to_vec();
        self.save(rec)?;
        self.populate(rec)
    }

    /// Fills each new, empty volume from what the image has at its path
    /// (unless `nocopy`), keeping owners, modes, times and xattrs.
    fn populate(&mut self, rec: &ContainerRecord) -> Result<()> {
        let mut todo = vec![];
        for m in &rec.mounts {
            if let (Source::Volume { name }, false) = (&m.source, m.nocopy) {
                todo.push((self.volumes.get(name)?, m.destination.clone()));
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let scratch = self.cdir(&rec.id).join("rootfs");
        fs::create_dir_all(&scratch).map_err(Error::io("creating", &scratch))?;
        let rw = rec.writable_layer()?.clone();
        self.res.open_store(rec)?.mount_at(&rw, &scratch, false)?;
        let mut result = Ok(());
        for (vol, dest) in &todo {
            result = self.populate_one(&scratch, vol, dest);
            if result.is_err() {
                break;
            }
        }
        let released: Vec<Result<()>> = todo
            .iter()
            .map(|(v, _)| self.release_if_unused(v, None))
            .collect();
        let unmounted = self.res.open_store(rec)?.unmount_at(&rw, &scratch);
        Error::after_cleanup(result, released.into_iter().chain([unmounted]))
    }

    fn populate_one(&mut self, rootfs: &Path, vol: &VolumeRecord, dest: &str) -> Result<()> {
        let src = scoped::resolve(rootfs, dest, None).map_err(Error::io(
            "resolving",
            rootfs.join(dest.trim_start_matches('/')),
        ))?;
        let Some(src) = src else { return Ok(()) };
        let st = crate::fsys::sys::fstat(src.as_fd()).map_err(Error::io(
            "inspecting",
            rootfs.join(dest.trim_start_matches('/')),
        ))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Ok(());
        }
        let data = self.volumes.acquire(vol, &mut self.res)?;
        if !self.volumes.is_empty(vol)? {
            return Ok(());
        }
        copy_tree(&scoped::fd_path(&src), &data)?;
        std::os::unix::fs::chown(&data, Some(st.st_uid), Some(st.st_gid))
            .map_err(Error::io("changing the owner of", &data))?;
        fs::set_permissions(&data, fs::Permissions::from_mode(st.st_mode & 0o7777))
            .map_err(Error::io("changing the mode of", &data))
    }

    /// Removes what a `create` made; safe to run on a partly made one.
    fn undo_create(&mut self, rec: &ContainerRecord) -> Result<()> {
        let mut r = self.unmount_all(rec);
        if r.is_ok() {
            r = self.remove_owned_layers(rec);
        }
        for c in &rec.created_volumes {
            if r.is_err() {
                break;
            }
            if let Some(v) = self.volumes.find(&c.name)? {
                r = self
                    .volumes
                    .release(&v, &mut self.res)
                    .and_then(|()| self.volumes.remove(&v, &mut self.res));
            }
        }
        r?;
        self.remove_record(rec)
    }

    fn remove_record(&mut self, rec: &ContainerRecord) -> Result<()> {
        let d = self.cdir(&rec.id);
        thinpool::record::remove(&d.join("config.json"))?;
        self.records.remove(&rec.id);
        fs::remove_dir_all(&d).map_err(Error::io("removing", &d))
    }

    /// Removes every layer the container owns, children first.
    fn remove_owned_layers(&mut self, rec: &ContainerRecord) -> Result<()> {
        let store = self.res.open_store(rec)?;
        let mut owned: Vec<(LayerId, Option<LayerId>)> = store
            .layers()
            .filter(|l| l.container.as_deref() == Some(rec.id.as_str()))
            .map(|l| (l.id.clone(), l.parent.clone()))
            .collect();
        let mut order = vec![];
        while !owned.is_empty() {
            let parents: Vec<LayerId> = owned.iter().filter_map(|(_, p)| p.clone()).collect();
            let (leaves, rest): (Vec<_>, Vec<_>) =
                owned.into_iter().partition(|(id, _)| !parents.contains(id));
            if leaves.is_empty() {
                break;
            }
            order.extend(leaves.into_iter().map(|(id, _)| id));
            owned = rest;
        }
        store.remove_container_layers(&order)
    }

    /// Mounts the container (its writable layer, then its volumes at their
    /// paths inside) and returns the rootfs; idempotent. `pin`: the mount
    /// is the user's (`container mount`), so `exec` leaves it in place.
    pub fn mount(&mut self, key: &str, pin: bool) -> Result<PathBuf> {
        let rec = self.get(key)?.clone();
        let rootfs = self.rootfs(&rec);
        if !self.is_mounted(&rec)? {
            fs::create_dir_all(&rootfs).map_err(Error::io("creating", &rootfs))?;
            let rw = rec.writable_layer()?.clone();
            self.res.open_store(&rec)?.mount_at(&rw, &rootfs, true)?;
            if let Err(e) = self.mount_volumes(&rec, &rootfs) {
                let undo = self.unmount_all(&rec);
                return Err(e.with_rollback(undo));
            }
        }
        if pin {
            let p = self.cdir(&rec.id).join("pinned");
            fs::write(&p, b"").map_err(Error::io("writing", &p))?;
        }
        Ok(rootfs)
    }

    fn mount_volumes(&mut self, rec: &ContainerRecord, rootfs: &Path) -> Result<()> {
        let mut mounts = rec.mounts.clone();
        // Parents before children: /data before /data/cache.
        mounts.sort_by_key(|m| scoped::components(&m.destination).len());
        for m in &mounts {
            let src = match &m.source {
                Source::Volume { name } => {
                    let v = self.volumes.find(name)?.ok_or_else(|| Error::NotFound {
                        what: "volume",
                        name: name.clone(),
                        hint: format!(
                            " (container {} mounts it at {}): create it again with `thinlayer volume create {name}`",
                            rec.name, m.destination
                        ),
                    })?;
                    self.volumes.acquire(&v, &mut self.res)?
                }
                Source::Bind { path } => PathBuf::from(path),
                Source::Anonymous => unreachable!("named when the container is made"),
            };
            let meta = fs::metadata(&src).map_err(Error::io("using the mount source", &src))?;
            let make = if meta.is_dir() { Make::Dir } else { Make::File };
            let at = rootfs.join(m.destination.trim_start_matches('/'));
            let target = scoped::resolve(rootfs, &m.destination, Some(make))
                .map_err(Error::io("making the mount point", &at))?
                .expect("made when missing");
            let st =
                crate::fsys::sys::fstat(target.as_fd()).map_err(Error::io("inspecting", &at))?;
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir != (make == Make::Dir) {
                return Err(Error::invalid(
                    "volume spec",
                    format!(
                        "{} is a {} in the container but {} is a {}",
                        m.destination,
                        if is_dir { "directory" } else { "file" },
                        src.display(),
                        if meta.is_dir() { "directory" } else { "file" }
                    ),
                ));
            }
            nix::mount::mount(
                Some(&src),
                &scoped::fd_path(&target),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::io(format!("bind-mounting {} on", src.display()), &at)(e.into()))?;
            if m.readonly {
                // The descriptor above is of the covered directory; the
                // new mount is reached by resolving again.
                let top = scoped::resolve(rootfs, &m.destination, None)
                    .map_err(Error::io("resolving", &at))?
                    .expect("just mounted");
                nix::mount::mount(
                    None::<&str>,
                    &scoped::fd_path(&top),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|e| Error::io("making read-only", &at)(e.into()))?;
            }
        }
        Ok(())
    }

    /// Unmounts the container (volumes first) and releases volumes no
    /// other mounted container uses; idempotent.
    pub fn unmount(&mut self, key: &str) -> Result<PathBuf> {
        let rec = self.get(key)?.clone();
        let _ = fs::remove_file(self.cdir(&rec.id).join("pinned"));
        self.unmount_all(&rec)?;
        Ok(self.rootfs(&rec))
    }

    /// Whether `container mount` holds the container mounted.
    pub fn is_pinned(&self, rec: &ContainerRecord) -> bool {
        self.cdir(&rec.id).join("pinned").exists()
    }

    fn unmount_all(&mut self, rec: &ContainerRecord) -> Result<()> {
        let rootfs = self.rootfs(rec);
        let inside: Vec<PathBuf> = mount::mount_points()?
            .into_iter()
            .filter(|m| m.starts_with(&rootfs) && *m != rootfs)
            .collect();
        for m in inside.iter().rev() {
            mount::unmount(m)?;
        }
        if mount::is_mounted(&rootfs)? {
            let rw = rec.writable_layer()?.clone();
            self.res.open_store(rec)?.unmount_at(&rw, &rootfs)?;
        }
        for name in rec.volume_names() {
            if let Some(v) = self.volumes.find(name)? {
                self.release_if_unused(&v, Some(&rec.id))?;
            }
        }
        Ok(())
    }

    /// Releases a volume unless a mounted container (other than `except`)
    /// uses it.
    fn release_if_unused(&mut self, v: &VolumeRecord, except: Option<&str>) -> Result<()> {
        for r in self.records.values() {
            if Some(r.id.as_str()) != except
                && r.volume_names().any(|n| n == v.name)
                && self.is_mounted(r)?
            {
                return Ok(());
            }
        }
        self.volumes.release(v, &mut self.res)
    }

    /// Removes a container's layers, and with `volumes` its anonymous
    /// volumes no other container uses. Refused while it is mounted unless
    /// `force`, which unmounts it first. Returns the removed volumes.
    pub fn remove(&mut self, key: &str, force: bool, volumes: bool) -> Result<Vec<String>> {
        let mut rec = self.get(key)?.clone();
        if self.is_mounted(&rec)? {
            if !force {
                return Err(Error::InUse {
                    what: format!("container {}", rec.name),
                    reason: format!(
                        "it is mounted at {}; run `thinlayer container umount {}` first, or pass -f",
                        self.rootfs(&rec).display(),
                        rec.name
                    ),
                });
            }
            self.unmount(&rec.id)?;
        }
        rec.state = State::Removing;
        rec.remove_volumes = volumes;
        self.save(&rec)?;
        self.records.insert(rec.id.clone(), rec.clone());
        self.finish_remove(&rec)
    }

    fn finish_remove(&mut self, rec: &ContainerRecord) -> Result<Vec<String>> {
        self.unmount_all(rec)?;
        self.remove_owned_layers(rec)?;
        let mut removed = vec![];
        if rec.remove_volumes {
            for name in rec.volume_names() {
                let Some(v) = self.volumes.find(name)? else {
                    continue;
                };
                let shared = self
                    .records
                    .values()
                    .any(|r| r.id != rec.id && r.volume_names().any(|n| n == name));
                if v.anonymous && !shared {
                    self.volumes.remove(&v, &mut self.res)?;
                    removed.push(name.to_string());
                }
            }
        }
        self.remove_record(rec)?;
        Ok(removed)
    }

    /// Makes a layer of the container's changes (without its init files)
    /// over the layer it was made from. Refused while mounted, so the
    /// filesystem is quiet.
    pub fn commit(&mut self, key: &str, name: Option<&str>) -> Result<LayerId> {
        let rec = self.get(key)?.clone();
        if self.is_mounted(&rec)? {
            return Err(Error::InUse {
                what: format!("container {}", rec.name),
                reason: format!(
                    "it is mounted; run `thinlayer container umount {}` first so its filesystem is quiet",
                    rec.name
                ),
            });
        }
        let rw = rec.writable_layer()?.clone();
        let store = self.res.open_store(&rec)?;
        store.commit(&rw, &rec.parent, name, spec::INIT_FILES)
    }

    /// Mounts the container if needed for `exec`; returns what to run it
    /// in and whether this call mounted it.
    pub fn prepare_exec(&mut self, key: &str) -> Result<(ContainerRecord, PathBuf, bool)> {
        let rec = self.get(key)?.clone();
        let was = self.is_mounted(&rec)?;
        let rootfs = self.mount(&rec.id, false)?;
        Ok((rec, rootfs, !was))
    }

    /// After `exec`: unmounts a container that `exec` mounted, unless
    /// `container mount` has pinned it since.
    pub fn finish_exec(&mut self, id: &str) -> Result<()> {
        let Some(rec) = self.records.get(id).cloned() else {
            return Ok(());
        };
        if self.is_pinned(&rec) {
            return Ok(());
        }
        self.unmount_all(&rec)
    }

    // ---- the pool going away --------------------------------------------

    /// Containers of the thin driver and thin volumes: what destroying the
    /// pool takes with it. Refused while any of them is mounted.
    pub fn pool_users(&self) -> Result<(Vec<ContainerRecord>, Vec<VolumeRecord>)> {
        let ctrs: Vec<ContainerRecord> = self
            .records
            .values()
            .filter(|r| r.driver == DriverKind::Thin.as_str())
            .cloned()
            .collect();
        let vols: Vec<VolumeRecord> = self
            .volumes
            .list()?
            .into_iter()
            .filter(|v| v.driver == crate::volume::VolumeDriver::Thin)
            .collect();
        for r in &ctrs {
            if self.is_mounted(r)? {
                return Err(Error::InUse {
                    what: "the pool".into(),
                    reason: format!(
                        "container {} is mounted; run `thinlayer container umount {}` first",
                        r.name, r.name
                    ),
                });
            }
        }
        for v in &vols {
            if mount::is_mounted(&self.volumes.data_path(&v.name))? {
                return Err(Error::InUse {
                    what: "the pool".into(),
                    reason: format!(
                        "thin volume '{}' is mounted by a container; unmount it first",
                        v.name
                    ),
                });
            }
        }
        Ok((ctrs, vols))
    }

    /// Closes the stores and the pool this handle opened (keeping the
    /// containers' lock), so the caller can take them itself.
    pub fn release_pool(&mut self) {
        self.res.stores.clear();
        self.res.pool = None;
    }

    /// Drops the records of containers and volumes whose devices went with
    /// the pool.
    pub fn forget(&mut self, ctrs: &[ContainerRecord], vols: &[VolumeRecord]) -> Result<()> {
        for r in ctrs {
            self.remove_record(r)?;
        }
        for v in vols {
            let dir = self.volumes.data_path(&v.name);
            let dir = dir.parent().expect("a volume's data is in its directory");
            thinpool::record::remove(&dir.join("volume.json"))?;
            fs::remove_dir_all(dir).map_err(Error::io("removing", dir))?;
        }
        Ok(())
    }

    // ---- volumes -------------------------------------------------------

    /// Names of the containers that mount volume `name`.
    pub fn users_of(&self, name: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .records
            .values()
            .filter(|r| r.volume_names().any(|n| n == name))
            .map(|r| r.name.clone())
            .collect();
        users.sort();
        users
    }

    pub fn volume_create(&mut self, v: &NewVolume) -> Result<VolumeRecord> {
        self.volumes.create(v, &mut self.res)
    }

    pub fn volume_clone(
        &mut self,
        src: &str,
        new: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<VolumeRecord> {
        self.volumes.clone_thin(src, new, labels, &mut self.res)
    }

    fn volume_info(&mut self, v: VolumeRecord) -> VolumeInfo {
        let used_by = self.users_of(&v.name);
        let size_bytes = if v.thin_id.is_some() {
            let pool = self.res.pool().ok().map(|p| &*p);
            self.volumes.usage(&v, pool)
        } else {
            self.volumes.usage(&v, None)
        };
        VolumeInfo {
            mountpoint: self.volumes.data_path(&v.name),
            record: v,
            used_by,
            size_bytes,
        }
    }

    /// Volumes, all or only those no container uses (`dangling`) or uses.
    pub fn volume_list(&mut self, dangling: Option<bool>) -> Result<Vec<VolumeInfo>> {
        let mut out = vec![];
        for v in self.volumes.list()? {
            let unused = self.users_of(&v.name).is_empty();
            if dangling.is_none_or(|d| d == unused) {
                out.push(self.volume_info(v));
            }
        }
        Ok(out)
    }

    pub fn volume_inspect(&mut self, name: &str) -> Result<VolumeInfo> {
        let v = self.volumes.get(name)?;
        Ok(self.volume_info(v))
    }

    /// Removes a volume. Refused while a container uses it, unless
    /// `force`; always refused while a mounted container uses it.
    pub fn volume_remove(&mut self, name: &str, force: bool) -> Result<()> {
        let v = self.volumes.get(name)?;
        let users = self.users_of(name);
        if !users.is_empty() && !force {
            return Err(Error::InUse {
                what: format!("volume '{name}'"),
                reason: format!(
                    "container{} {} use{} it; remove {} first, or pass -f",
                    if users.len() == 1 { "" } else { "s" },
                    users.join(", "),
                    if users.len() == 1 { "s" } else { "" },
                    if users.len() == 1 { "it" } else { "them" }
                ),
            });
        }
        for u in &users {
            let r = self.get(u)?.clone();
            if self.is_mounted(&r)? {
                return Err(Error::InUse {
                    what: format!("volume '{name}'"),
                    reason: format!(
                        "container {u} is mounted with it; run `thinlayer container umount {u}` first"
                    ),
                });
            }
        }
        self.volumes.remove(&v, &mut self.res)
    }

    /// Removes unused anonymous volumes, and with `all` unused named ones
    /// too. Returns their names.
    pub fn volume_prune(&mut self, all: bool) -> Result<Vec<String>> {
        let mut removed = vec![];
        for v in self.volumes.list()? {
            if (v.anonymous || all) && self.users_of(&v.name).is_empty() {
                self.volumes.remove(&v, &mut self.res)?;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }
}

/// Copies a directory tree with owners, modes, times, xattrs, links and
/// devices: an export of `src` streamed into an apply at `dst`.
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let (r, w) = std::io::pipe().map_err(Error::io("making a pipe for", dst))?;
    let src_path = src.to_path_buf();
    let exporter = std::thread::spawn(move || {
        changeset::export_diff(None, &src_path, w, &ExportOptions::default())
    });
    let applied = changeset::apply(r, dst, &ApplyOptions::new(WhiteoutMode::Delete));
    let exported = exporter.join().map_err(|_| Error::Corrupt {
        what: format!("the copy into {}", dst.display()),
        reason: "the reading thread panicked".into(),
    })?;
    exported?;
    applied?;
    Ok(())
}
