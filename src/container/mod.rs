//! Containers: a writable layer over an image, with volumes mounted in it.
//!
//! ```text
//! image top layer ── init layer ───┬── writable layer   (one driver's store)
//!                    mount points  ├── writable layer   everything a
//!                    placeholders  └── ...              container writes
//!
//! <root>/containers/
//!   lock               one command at a time on containers and volumes
//!   <id>/config.json   the record (ContainerRecord)
//!   <id>/hostname, hosts, resolv.conf
//!                      its own files, written at each mount and
//!                      bind-mounted over the init layer's placeholders
//!   <id>/rootfs/       where the container is mounted, volumes inside
//!   <id>/pinned        present while `container mount` holds it mounted
//! ```
//!
//! The init layer holds what Docker's does (mount points, `/etc/mtab`,
//! empty `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`), the same
//! for every container over a layer, so they share one: a container costs
//! one snapshot. The writable layer belongs to the container (its record
//! names it), so layer commands refuse it; `commit` makes an ordinary
//! layer of its changes over the image's top layer, without the init
//! files. Containers made before the init layer was shared own theirs.
//!
//! # Crash safety
//!
//! A container's record is written *before* anything is made for it, in
//! state `creating`, naming the volumes the command will create; then the
//! volumes and the writable layer (one store transaction; the shared init
//! layer first, in one of its own, if there is none) are made; then the
//! state becomes `created`. `rm` writes state `removing` first. Opening
//! the containers ([`Containers::open`]) undoes every `creating` and
//! finishes every `removing`, so a kill at any instant leaves either the
//! whole container or nothing, and never a volume it made half-way.
//!
//! The files: [`record`] (what is recorded), `res` (the stores and the
//! pool, opened on demand in lock order), `create`, `mounts`, `remove`
//! and `volumes` (the operations, all on [`Containers`]), [`spec`] (`-v`
//! specs, the init layer), [`scoped`] (paths inside a rootfs), [`exec`].

pub mod cp;
pub mod exec;
pub mod record;
pub mod scoped;
pub mod spec;

mod create;
mod mounts;
mod remove;
mod res;
mod volumes;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use thinpool::lock::LockGuard;

use crate::error::{Error, Result};
use crate::layer::LayerId;
use crate::mount;
use crate::root::Root;
use crate::store::changes::Change;
use crate::store::graph::by_id_prefix;
use crate::util::time::rfc3339;
use crate::volume::Volumes;
pub use record::{
    validate_name, ContainerInfo, ContainerRecord, CreatedVolume, MountInfo, NewContainer, State,
    VolumeInfo,
};
use res::Res;

/// The containers and volumes of a root, open and locked.
pub struct Containers<'r> {
    dir: PathBuf,
    /// The containers' lock; `None` only inside [`Containers::unlocked`].
    lock: Option<LockGuard>,
    volumes: Volumes,
    records: BTreeMap<String, ContainerRecord>,
    res: Res<'r>,
}

impl<'r> Containers<'r> {
    /// Takes the containers' lock and finishes or undoes whatever a killed
    /// command left.
    pub fn open(root: &'r Root) -> Result<Containers<'r>> {
        let _phase = tracing::trace_span!(crate::phase::CONTAINERS_OPEN).entered();
        root.ensure()?;
        let dir = root.containers_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io("creating", &dir))?;
        let lock = tracing::trace_span!(crate::phase::CONTAINERS_LOCK)
            .in_scope(|| LockGuard::acquire(&dir.join("lock"), root.lock_timeout()))?;
        let volumes = Volumes::open(&root.volumes_dir())?;
        let records = read_records(&dir)?;
        let mut c = Containers {
            dir,
            lock: Some(lock),
            volumes,
            records,
            res: Res::new(root),
        };
        c.recover()?;
        Ok(c)
    }

    /// Runs `work` without the containers' lock, so that other container
    /// and volume commands go on meanwhile, then lets go of the stores'
    /// locks, keeping the stores to take again when needed (a store's
    /// lock is never held while waiting for the containers': the lock
    /// order), takes the lock again and reads the
    /// records and volumes anew, unless no other process took the lock
    /// meanwhile (container and volume records change only under it). What
    /// `work` touches must be claimed by a record of this process (a
    /// container being created, its liveness lock held:
    /// [`Self::liveness_lock`]).
    ///
    /// Errors: `work`'s; then the lock cannot be taken again, or the
    /// records cannot be read.
    pub(super) fn unlocked<T>(&mut self, work: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        // The stores already open stay open for `work`: letting go of the
        // containers' lock while holding a store's waits on nobody, and a
        // store opened under the containers' lock is current. Reopening it
        // would read its records and open the pool a second time.
        let before = self.lock.take().and_then(|g| g.generation());
        let out = work(self);
        self.res.park();
        let lock = tracing::trace_span!(crate::phase::CONTAINERS_LOCK).in_scope(|| {
            LockGuard::acquire(&self.dir.join("lock"), self.res.root.lock_timeout())
        })?;
        let untouched = lock.follows(before);
        self.lock = Some(lock);
        if !untouched {
            let _phase = tracing::trace_span!(crate::phase::CONTAINERS_OPEN).entered();
            self.records = read_records(&self.dir)?;
            self.volumes = Volumes::open(&self.res.root.volumes_dir())?;
        }
        out
    }

    /// The lock a process holds while it creates container `id` without
    /// the containers' lock: recovery leaves a `creating` record alone
    /// while it is held.
    pub(super) fn liveness_lock(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.lock"))
    }

    fn recover(&mut self) -> Result<()> {
        self.finish_volumes()?;
        self.sweep_liveness_locks()?;
        // A `pool destroy --force` killed after the pool went: what lived
        // in it is gone too.
        if !self.res.root.has_pool() {
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
        self.unmount_unfinished()?;
        let unfinished: Vec<ContainerRecord> = self
            .records
            .values()
            .filter(|r| r.state != State::Created)
            .cloned()
            .collect();
        for rec in unfinished {
            match rec.state {
                State::Creating => {
                    // A live creator holds it: not ours to undo.
                    let lock = self.liveness_lock(&rec.id);
                    let Some(guard) = LockGuard::try_acquire(&lock)? else {
                        continue;
                    };
                    self.undo_create(&rec)?;
                    guard.remove();
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

    /// Undoes the mounts of containers whose mount or unmount a killed
    /// command left unfinished: a rootfs mounted without the marker of a
    /// whole mount, with some of its volumes perhaps. A container would
    /// otherwise look mounted without its volumes, and run without them.
    fn unmount_unfinished(&mut self) -> Result<()> {
        let mounted: BTreeSet<PathBuf> = mount::mount_points()?.into_iter().collect();
        let half: Vec<ContainerRecord> = self
            .records
            .values()
            .filter(|r| {
                r.state == State::Created
                    && mounted.contains(&self.rootfs(r))
                    && !self.whole_marker(r).exists()
            })
            .cloned()
            .collect();
        for rec in half {
            self.unmount_all(&rec)?;
            self.res.repairs.push(format!(
                "unmounted container {}, whose mount or unmount a killed command left unfinished",
                rec.name
            ));
        }
        Ok(())
    }

    /// Removes liveness locks no live creator holds and no `creating`
    /// record needs: what a create killed before its record, or after it
    /// was marked `created`, left.
    fn sweep_liveness_locks(&mut self) -> Result<()> {
        let rd = fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".lock") else {
                continue;
            };
            if self
                .records
                .get(id)
                .is_some_and(|r| r.state == State::Creating)
            {
                continue;
            }
            LockGuard::remove_if_free(&e.path())?;
        }
        Ok(())
    }

    /// Finishes volume creates and removals a kill interrupted: a thin
    /// volume's device may outlive its record (a create killed before the
    /// record, a removal after it), so thin devices no volume claims are
    /// freed first, then what is left of the volumes' directories goes.
    /// With the pool inactive the devices cannot go: all of it waits for
    /// a command that finds the pool active.
    fn finish_volumes(&mut self) -> Result<()> {
        let unfinished = self.volumes.unfinished()?;
        if unfinished.is_empty() {
            return Ok(());
        }
        if self.res.root.has_pool() {
            match crate::volume::PoolAccess::pool(&mut self.res) {
                Ok(_) => {}
                Err(Error::Pool(thinpool::Error::Inactive)) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.volumes.sweep(&unfinished)?;
        for d in &unfinished {
            let name = d.file_name().unwrap_or_default().to_string_lossy();
            self.res.repairs.push(format!(
                "removed what an interrupted create or removal of volume {name} left"
            ));
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
        let _phase = tracing::trace_span!(crate::phase::CONTAINERS_RECORD).entered();
        let d = self.cdir(&rec.id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)
            .map_err(Error::io("creating", &d))?;
        Ok(thinpool::record::write(&d.join("config.json"), rec)?)
    }

    /// Finds a container by name, id or unique id prefix; one another
    /// command is still creating is refused.
    pub fn get(&self, key: &str) -> Result<&ContainerRecord> {
        let r = if let Some(r) = self.records.get(key) {
            r
        } else if let Some(r) = self.records.values().find(|r| r.name == key) {
            r
        } else {
            by_id_prefix("container", key, self.records.values(), |r| r.id.as_str())?
        };
        if r.state == State::Creating {
            return Err(Error::InUse {
                what: format!("container {}", r.name),
                reason: "another command is still creating it; retry when it is done".into(),
            });
        }
        Ok(r)
    }

    /// Whether the container is mounted: its rootfs, and everything
    /// inside it (the mount finished: [`Self::whole_marker`]).
    pub fn is_mounted(&self, rec: &ContainerRecord) -> Result<bool> {
        Ok(self.whole_marker(rec).exists() && mount::is_mounted(&self.rootfs(rec))?)
    }

    /// The file that says a container's mount is whole: written after the
    /// last of its mounts, removed before the first unmount. A rootfs
    /// mounted without it is a mount a killed command left unfinished,
    /// or an unmount it left unfinished, which the next command finishes
    /// undoing ([`Self::recover`]). Mounts do not outlive the machine, so
    /// neither needs the file to be durable: one left by a power cut goes
    /// with the next mount.
    fn whole_marker(&self, rec: &ContainerRecord) -> PathBuf {
        self.cdir(&rec.id).join("mounted")
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<ContainerInfo>> {
        let mut out: Vec<ContainerInfo> = self
            .records
            .values()
            .map(|r| self.info(r))
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| {
            a.record
                .created_unix
                .cmp(&b.record.created_unix)
                .then(a.record.name.cmp(&b.record.name))
        });
        Ok(out)
    }

    /// One container, by name, id or unique id prefix.
    pub fn inspect(&self, key: &str) -> Result<ContainerInfo> {
        self.info(self.get(key)?)
    }

    fn info(&self, r: &ContainerRecord) -> Result<ContainerInfo> {
        Ok(ContainerInfo {
            created: rfc3339(r.created_unix),
            record: r.clone(),
            mounted: self.is_mounted(r)?,
            rootfs: self.rootfs(r),
            docker_mounts: self.mount_infos(r)?,
        })
    }

    /// A container's mounts, shaped as `docker inspect` shows them.
    fn mount_infos(&self, r: &ContainerRecord) -> Result<Vec<MountInfo>> {
        r.mounts
            .iter()
            .map(|m| {
                let mut modes = vec![];
                if m.readonly {
                    modes.push("ro");
                }
                if m.nocopy {
                    modes.push("nocopy");
                }
                let (kind, name, source, driver, propagation) = match &m.source {
                    spec::Source::Volume { name } => {
                        let driver = self.volumes.find(name)?.map(|v| v.driver.to_string());
                        let data = self.volumes.data_path(name);
                        ("volume", Some(name.clone()), data, driver, "")
                    }
                    spec::Source::Bind { path } => ("bind", None, path.into(), None, "rprivate"),
                    spec::Source::Anonymous => {
                        return Err(Error::Corrupt {
                            what: format!("container {}", r.name),
                            reason: format!("its mount at {} names no volume", m.destination),
                        })
                    }
                };
                Ok(MountInfo {
                    kind,
                    name,
                    source,
                    destination: m.destination.clone(),
                    driver,
                    mode: modes.join(","),
                    rw: !m.readonly,
                    propagation,
                })
            })
            .collect()
    }

    /// Makes a layer of the container's changes (without its init files)
    /// over the layer it was made from. Refused while mounted, so the
    /// filesystem is quiet.
    pub fn commit(&mut self, key: &str, name: Option<&str>) -> Result<LayerId> {
        let rec = self.quiet(key)?;
        let rw = rec.writable_layer()?.clone();
        let store = self.res.open_store(&rec)?;
        store.commit(&rw, &rec.parent, name, spec::INIT_FILES, &spec::INIT_DIRS)
    }

    /// The container's changes against its image (`docker diff`), without
    /// its init files, from the same change detection as [`Self::commit`].
    /// Refused while mounted, so the filesystem is quiet.
    pub fn diff(&mut self, key: &str) -> Result<Vec<Change>> {
        let rec = self.quiet(key)?;
        let rw = rec.writable_layer()?.clone();
        let store = self.res.open_store(&rec)?;
        store.changes(&rw, spec::INIT_FILES)
    }

    /// A container that is not mounted, whose layers can be read whole.
    fn quiet(&self, key: &str) -> Result<ContainerRecord> {
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
        Ok(rec)
    }
}

/// Every container record in `dir`; a directory left without its record
/// by a killed removal is swept.
fn read_records(dir: &Path) -> Result<BTreeMap<String, ContainerRecord>> {
    let mut records = BTreeMap::new();
    let rd = fs::read_dir(dir).map_err(Error::io("listing", dir))?;
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
    Ok(records)
}
