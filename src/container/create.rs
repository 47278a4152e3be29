//! Making a container: checked first, recorded `creating`, then its
//! volumes and layers, then filled volumes; and undoing a partial one.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use thinpool::lock::LockGuard;

use super::scoped;
use super::spec::{self, MountSpec, Source};
use super::{validate_name, ContainerRecord, Containers, CreatedVolume, NewContainer, State};
use crate::changeset::{self, ApplyOptions, ExportOptions, WhiteoutMode};
use crate::error::{Error, Result};
use crate::util::ids::random_hex;
use crate::util::time::now_unix;
use crate::volume::{NewVolume, VolumeRecord};

impl Containers<'_> {
    /// Creates a container: checks everything first, then records it
    /// (`creating`), makes its new volumes, its writable layer (over the
    /// init layer containers from its image share, made if missing),
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
        self.check_name_free(&name)?;
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
        spec::check_hostname(&hostname)?;
        // Bad mount specs fail before any store is opened.
        self.mount_specs(req)?;
        // What the store says, read without the containers' lock: opening
        // a store (for thin, adopting the pool) is the longest part of
        // this, and other creates go on meanwhile. An image or layer
        // removed before the layers are made fails that step, which undoes
        // the record.
        let source = self.unlocked(|c| c.source_of(req))?;
        // Other commands ran meanwhile: the name and the mounts' sources
        // are checked again on the records as they are now.
        self.check_name_free(&name)?;
        let mut mounts = self.mount_specs(req)?;
        for destination in source.declared {
            if mounts.iter().all(|m| m.destination != destination) {
                mounts.push(MountSpec {
                    source: Source::Anonymous,
                    destination,
                    readonly: false,
                    nocopy: false,
                });
            }
        }
        let (image, image_name, parent) = (source.image, source.image_name, source.parent);
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
            driver: req.driver,
            state: State::Creating,
            image,
            image_name,
            parent,
            layers: vec![],
            hostname,
            size: req.size,
            overlay_options: req.overlay.clone(),
            mounts,
            created_volumes,
            remove_volumes: false,
            created_unix: now_unix(),
        };
        // Held until the record says `created`: while it is, no other
        // process undoes the record, and this one works on the container
        // without the containers' lock.
        let alive = self.liveness_lock(&id);
        let guard = LockGuard::acquire(&alive, Duration::ZERO)?;
        self.save(&rec)?;
        self.records.insert(id.clone(), rec.clone());
        if let Err(e) = self.make(&mut rec) {
            if self.lock.is_none() {
                // The containers' lock could not be taken back: the next
                // command undoes the record once this process is gone.
                return Err(e);
            }
            let undo = self.undo_create(&rec);
            if undo.is_ok() {
                guard.remove();
            }
            return Err(e.with_rollback(undo));
        }
        rec.state = State::Created;
        self.save(&rec)?;
        self.records.insert(id, rec.clone());
        guard.remove();
        Ok(rec)
    }

    fn check_name_free(&self, name: &str) -> Result<()> {
        if self.records.values().any(|r| r.name == name) {
            return Err(Error::Exists {
                what: "container",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The image or layer a new container starts from, its size checked
    /// and the volumes its image declares, as the store has them.
    fn source_of(&mut self, req: &NewContainer) -> Result<SourceOf> {
        let store = self.res.store(req.driver, &req.overlay)?;
        if let Some(size) = req.size {
            store.check_size(size)?;
        }
        match (&req.image, &req.layer) {
            (Some(i), None) => {
                let img = store.image(i)?;
                let top =
                    img.layers.last().cloned().ok_or_else(|| {
                        Error::invalid("image", format!("image '{i}' has no layers"))
                    })?;
                let id = img.id.clone();
                Ok(SourceOf {
                    declared: declared_volumes(store, &id)?,
                    image: Some(id),
                    image_name: Some(i.clone()),
                    parent: top,
                })
            }
            (None, Some(l)) => Ok(SourceOf {
                image: None,
                image_name: None,
                parent: store.layer(l)?.id.clone(),
                declared: vec![],
            }),
            _ => Err(Error::invalid(
                "container source",
                "give exactly one of --image and --layer",
            )),
        }
    }

    /// `-v` and `--volumes-from`, checked and merged: `-v` wins over a
    /// volume taken from another container at the same path.
    pub(super) fn mount_specs(&self, req: &NewContainer) -> Result<Vec<MountSpec>> {
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

    pub(super) fn make(&mut self, rec: &mut ContainerRecord) -> Result<()> {
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
        let init = spec::init_changeset(now_unix());
        // The layers, and filling the volumes from them, without the
        // containers' lock: other creates run meanwhile. The record claims
        // the name and the volumes; the store's journal claims the layers.
        let layers = self.unlocked(|c| {
            let store = c.res.open_store(rec)?;
            let layers = store.create_container_layers(&rec.parent, &rec.id, &init, rec.size)?;
            Ok(layers.to_vec())
        })?;
        rec.layers = layers;
        if !rec.mounts.iter().any(fills) {
            // Nothing to fill: the caller's one write records the layers
            // and `created` together, and the containers' lock is not let
            // go and taken again for nothing.
            return Ok(());
        }
        self.save(rec)?;
        self.unlocked(|c| c.populate(rec))
    }

    /// Fills each new, empty volume from what the image has at its path
    /// (unless `nocopy`), keeping owners, modes, times and xattrs.
    pub(super) fn populate(&mut self, rec: &ContainerRecord) -> Result<()> {
        let mut todo = vec![];
        for m in rec.mounts.iter().filter(|m| fills(m)) {
            if let Source::Volume { name } = &m.source {
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

    pub(super) fn populate_one(
        &mut self,
        rootfs: &Path,
        vol: &VolumeRecord,
        dest: &str,
    ) -> Result<()> {
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
    pub(super) fn undo_create(&mut self, rec: &ContainerRecord) -> Result<()> {
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
}

/// Whether a mount is of a volume filled from the image when new.
fn fills(m: &MountSpec) -> bool {
    matches!(m.source, Source::Volume { .. }) && !m.nocopy
}

/// Where a new container starts: see [`Containers::source_of`].
struct SourceOf {
    image: Option<String>,
    image_name: Option<String>,
    parent: crate::layer::LayerId,
    /// The paths the image declares as volumes.
    declared: Vec<String>,
}

/// The paths the image declares as volumes (`VOLUME`, `config.Volumes`):
/// each that no `-v` or `--volumes-from` mount covers gets an anonymous
/// volume, filled from the image like any new volume, as Docker does.
fn declared_volumes(store: &crate::store::Store, image: &str) -> Result<Vec<String>> {
    let raw = match store.image_config(image) {
        Ok(raw) => raw,
        // An image imported before configs were kept declares nothing
        // thinlayer can read.
        Err(Error::Precondition(_)) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let config = crate::image::read_config(raw)?;
    config
        .details()
        .volumes
        .into_iter()
        .map(|path| {
            spec::container_path(&path, &path).map_err(|e| Error::Corrupt {
                what: format!("the config of image {image}"),
                reason: format!("its declared volume {path:?} is not usable: {e}"),
            })
        })
        .collect()
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
