//! Volume operations, under the containers' lock (which guards the
//! references containers hold to volumes).

use std::collections::BTreeMap;

use super::{Containers, VolumeInfo};
use crate::error::{Error, Result};
use crate::volume::{NewVolume, PoolAccess, VolumeRecord};

impl Containers<'_> {
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

    /// Creates a volume (`volume create`).
    pub fn volume_create(&mut self, v: &NewVolume) -> Result<VolumeRecord> {
        self.volumes.create(v, &mut self.res)
    }

    /// A thin volume `new` sharing every block of thin volume `src` (O(1)).
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
            let pool = self.res.pool().ok();
            self.volumes.usage(&v, pool.as_ref())
        } else {
            self.volumes.usage(&v, None)
        };
        VolumeInfo {
            created: crate::util::time::rfc3339(v.created_unix),
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

    /// One volume, by name.
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
        self.release_and_remove(&v)
    }

    /// Removes a volume no mounted container uses. It is released first:
    /// a command killed after it mounted the volume for a container, and
    /// before the container was mounted, left it mounted for no one.
    fn release_and_remove(&mut self, v: &VolumeRecord) -> Result<()> {
        self.volumes.release(v, &mut self.res)?;
        self.volumes.remove(v, &mut self.res)
    }

    /// Removes unused anonymous volumes, and with `all` unused named ones
    /// too. Returns their names.
    pub fn volume_prune(&mut self, all: bool) -> Result<Vec<String>> {
        let mut removed = vec![];
        for v in self.volumes.list()? {
            if (v.anonymous || all) && self.users_of(&v.name).is_empty() {
                self.release_and_remove(&v)?;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }
}
