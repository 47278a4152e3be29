//! Mounting a container: its writable layer at its rootfs, then its
//! volumes and its own files (hostname, hosts, resolv.conf) at their paths
//! inside, resolved as the container would.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use thinpool::killpoint;

use super::scoped::{self, Make};
use super::spec::{self, MountSpec, Source};
use super::{ContainerRecord, Containers};
use crate::error::{Error, Result};
use crate::mount;
use crate::volume::VolumeRecord;

impl Containers<'_> {
    /// Mounts the container (its writable layer, then its volumes at their
    /// paths inside) and returns the rootfs; idempotent. `pin`: the mount
    /// is the user's (`container mount`), so `exec` leaves it in place.
    pub fn mount(&mut self, key: &str, pin: bool) -> Result<PathBuf> {
        let rec = self.get(key)?.clone();
        let rootfs = self.rootfs(&rec);
        if !self.is_mounted(&rec)? {
            // A rootfs mounted without the marker (a mount or an unmount
            // left unfinished, which the next command's recovery undoes
            // anyway) goes first: the mount is made whole from the start.
            if mount::is_mounted(&rootfs)? {
                self.unmount_all(&rec)?;
            }
            fs::create_dir_all(&rootfs).map_err(Error::io("creating", &rootfs))?;
            let rw = rec.writable_layer()?.clone();
            self.res.open_store(&rec)?.mount_at(&rw, &rootfs, true)?;
            let marker = self.whole_marker(&rec);
            let made = self.mount_volumes(&rec, &rootfs).and_then(|()| {
                killpoint::here(killpoint::CONTAINER_MOUNTS_MADE);
                fs::write(&marker, b"").map_err(Error::io("writing", &marker))
            });
            if let Err(e) = made {
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

    /// Writes the container's own files ([`spec::CONTAINER_FILES`]) into
    /// its directory, afresh at each mount as Docker does at each start;
    /// returns the bind mounts that put them over the init layer's
    /// placeholders, leaving out any path a volume or bind mount of the
    /// container's covers.
    fn own_files(&self, rec: &ContainerRecord) -> Result<Vec<MountSpec>> {
        let dir = self.cdir(&rec.id);
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let contents = spec::container_files(&rec.hostname, &host_resolv);
        let mut out = vec![];
        for ((name, path, mode), content) in spec::CONTAINER_FILES.iter().zip(contents) {
            let destination = format!("/{path}");
            if rec.mounts.iter().any(|m| m.destination == destination) {
                continue;
            }
            let file = dir.join(name);
            let tmp = dir.join(format!("{name}.tmp"));
            fs::write(&tmp, content).map_err(Error::io("writing", &tmp))?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode))
                .map_err(Error::io("changing the mode of", &tmp))?;
            fs::rename(&tmp, &file).map_err(Error::io("writing", &file))?;
            out.push(MountSpec {
                source: Source::Bind {
                    path: file.to_string_lossy().into_owned(),
                },
                destination,
                readonly: false,
                nocopy: true,
            });
        }
        Ok(out)
    }

    pub(super) fn mount_volumes(&mut self, rec: &ContainerRecord, rootfs: &Path) -> Result<()> {
        let mut mounts = rec.mounts.clone();
        mounts.extend(self.own_files(rec)?);
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
                .ok_or_else(|| {
                    Error::io("making the mount point", &at)(std::io::ErrorKind::NotFound.into())
                })?;
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
                    .ok_or_else(|| {
                        Error::io("resolving", &at)(std::io::ErrorKind::NotFound.into())
                    })?;
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

    pub(super) fn unmount_all(&mut self, rec: &ContainerRecord) -> Result<()> {
        let marker = self.whole_marker(rec);
        match fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", &marker)(e))
            }
            _ => {}
        }
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
    pub(super) fn release_if_unused(
        &mut self,
        v: &VolumeRecord,
        except: Option<&str>,
    ) -> Result<()> {
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
}
