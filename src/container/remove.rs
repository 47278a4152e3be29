//! Removing a container (recorded `removing` first, so a killed removal
//! is finished), and forgetting what went with a destroyed pool.

use std::fs;

use super::{ContainerRecord, Containers, State};
use crate::driver::DriverKind;
use crate::error::{Error, Result};
use crate::layer::LayerId;
use crate::mount;
use crate::volume::VolumeRecord;

impl Containers<'_> {
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

    pub(super) fn finish_remove(&mut self, rec: &ContainerRecord) -> Result<Vec<String>> {
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

    pub(super) fn remove_record(&mut self, rec: &ContainerRecord) -> Result<()> {
        let d = self.cdir(&rec.id);
        thinpool::record::remove(&d.join("config.json"))?;
        self.records.remove(&rec.id);
        fs::remove_dir_all(&d).map_err(Error::io("removing", &d))
    }

    /// Removes every layer the container owns, children first.
    pub(super) fn remove_owned_layers(&mut self, rec: &ContainerRecord) -> Result<()> {
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

    /// Containers of the thin driver and thin volumes: what destroying the
    /// pool takes with it. Refused while any of them is mounted.
    pub fn pool_users(&self) -> Result<(Vec<ContainerRecord>, Vec<VolumeRecord>)> {
        let ctrs: Vec<ContainerRecord> = self
            .records
            .values()
            .filter(|r| r.driver == DriverKind::Thin)
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
        self.res.release();
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
}
