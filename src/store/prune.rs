//! Layer garbage collection: the layers nothing keeps, as `docker image
//! prune` finds dangling images. A layer is kept by an image that lists
//! it, a container that owns it, its name, containerd (a snapshot's
//! metadata), a mount, another command's transaction, or a kept child.

use std::collections::BTreeSet;

use super::Store;
use crate::error::Result;
use crate::layer::LayerId;

impl Store {
    /// The layers nothing keeps, children before their parents (the order
    /// they can be removed in).
    pub fn prunable(&self) -> Result<Vec<LayerId>> {
        let mut kept: BTreeSet<LayerId> = BTreeSet::new();
        for img in self.images.values() {
            kept.extend(img.layers.iter().cloned());
        }
        for l in self.layers.values() {
            let claimed = self
                .claimed_by(|c| c.parent.as_ref() == Some(&l.id))
                .is_some();
            if l.container.is_some()
                || l.name.is_some()
                || l.snapshot.is_some()
                || claimed
                || self.being_made(&l.id)
                || self.being_removed(&l.id)
                || crate::mount::is_mounted(&self.mount_point(&l.id))?
            {
                kept.insert(l.id.clone());
            }
        }
        // What a kept layer stands on is kept.
        let roots: Vec<LayerId> = kept.iter().cloned().collect();
        for id in roots {
            for a in self.chain(&id)? {
                kept.insert(a.id.clone());
            }
        }
        let mut out: Vec<(usize, LayerId)> = self
            .layers
            .values()
            .filter(|l| !kept.contains(&l.id))
            .map(|l| Ok((self.chain(&l.id)?.len(), l.id.clone())))
            .collect::<Result<_>>()?;
        // Deepest first: every child goes before its parent.
        out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    /// Removes the layers [`Store::prunable`] finds, each in its own
    /// transaction; returns each one's id with the bytes it held alone
    /// when it went (measured just before, once its children were gone,
    /// so blocks it shared only with them count). A layer another command
    /// took in the meantime (as a parent, say) is refused as `layer rm`
    /// would refuse it, and the layers removed before it stay removed.
    pub fn prune(&mut self) -> Result<Vec<(LayerId, u64)>> {
        let mut removed = vec![];
        for id in self.prunable()? {
            let held = self
                .usage(std::slice::from_ref(&id))?
                .first()
                .map_or(0, |u| u.exclusive_bytes);
            self.remove_layer(id.as_str())?;
            removed.push((id, held));
        }
        Ok(removed)
    }
}
