//! Layer operations: create, remove, mount, export, and a container's own
//! layers. Each mutating one is a [`super::Txn`].

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::graph::refuse_container_layer;
use super::{CommitOf, NewLayer, Store, Txn};
use crate::changeset::{ChangesetError, Encoder, ExportOptions};
use crate::driver::{MountSpec, Usage};
use crate::error::{Error, Result};
use crate::layer::{LayerId, LayerRecord, SnapshotMeta};
use crate::mount;
use crate::util::ids::short;

/// What [`Store::diff`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDiff {
    /// Length of the uncompressed changeset.
    pub bytes: u64,
    /// `sha256:<hex>` of the uncompressed changeset.
    pub diff_id: String,
    /// Whether it is the exact changeset the layer was imported from (an
    /// image's layer), rather than one exported from its tree.
    pub exact: bool,
}

impl Store {
    /// The record of layer `id` (an exact id, as records name layers).
    pub fn layer_record(&self, id: &LayerId) -> Result<&LayerRecord> {
        self.layers.get(id).ok_or_else(|| Error::NotFound {
            what: "layer",
            name: id.to_string(),
            hint: String::new(),
        })
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
        self.new_layer(
            "create layer",
            parent,
            name,
            NewLayer {
                changeset,
                ..NewLayer::default()
            },
        )
    }

    /// Makes an empty layer over `parent` (as [`Store::create_layer`]) and
    /// mounts it (as [`Store::mount_layer`]): for thin, the device is
    /// activated while the layer's record is made durable. Returns the
    /// layer and where it is mounted. A failed mount leaves the layer made.
    pub fn create_and_mount_layer(
        &mut self,
        parent: Option<&str>,
        name: Option<&str>,
    ) -> Result<(LayerId, PathBuf)> {
        let id = self.new_layer(
            "create layer",
            parent,
            name,
            NewLayer {
                mount_next: true,
                ..NewLayer::default()
            },
        )?;
        let mp = self.mount_layer(id.as_str())?;
        Ok((id, mp))
    }

    /// Makes `new` over `parent` with `name` (which it sets, after
    /// checking them) in a transaction of its own, called `op`.
    fn new_layer(
        &mut self,
        op: &str,
        parent: Option<&str>,
        name: Option<&str>,
        new: NewLayer<'_, '_>,
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
        self.claims_transaction(op, |txn| {
            let id = txn.reserve_layer(super::Claim {
                parent: parent.clone(),
                name: name.map(str::to_string),
                key: None,
            })?;
            txn.make_layer(
                &id,
                NewLayer {
                    parent: parent.as_ref(),
                    name,
                    ..new
                },
            )?;
            Ok(id)
        })
    }

    /// Removes a layer. Refused while it has children, is mounted, or is
    /// part of an image.
    pub fn remove_layer(&mut self, key: &str) -> Result<LayerId> {
        let rec = self.layer(key)?.clone();
        refuse_container_layer(&rec, "remove")?;
        let what = || format!("layer {}", rec.label());
        let inits = self.unused_init_children(&rec.id);
        let kids: Vec<&LayerRecord> = self
            .children(&rec.id)
            .into_iter()
            .filter(|k| !inits.contains(&k.id))
            .collect();
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
                        .map(|k| k.label())
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
                    img.label()
                ),
            });
        }
        // Its unused init layers go with it, children first.
        let mut remove = inits;
        remove.push(rec.id.clone());
        self.transaction("remove layer", |txn| {
            txn.intend_removal(&remove, None)?;
            remove.iter().try_for_each(|id| txn.remove_layer(id))
        })?;
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
        let chain = self.chain_owned(&id)?;
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

    /// Whether `layer mount` has the layer mounted.
    pub fn is_mounted(&self, id: &LayerId) -> Result<bool> {
        mount::is_mounted(&self.mount_point(id))
    }

    /// Writes a layer's changes against its parent as an OCI changeset.
    /// An image's layer gives back the exact changeset it was imported
    /// from (its digest is the image's diff_id); other layers are exported
    /// from their trees, deterministically.
    ///
    /// # Errors
    /// Besides the driver's, [`Error::Changeset`] with
    /// `ChangesetError::Irreproducible` when an image layer's files no
    /// longer give its bytes back; part of the output may have been
    /// written, and must be discarded.
    pub fn diff(
        &mut self,
        key: &str,
        out: &mut dyn Write,
        opts: &ExportOptions,
    ) -> Result<LayerDiff> {
        let id = self.layer(key)?.id.clone();
        let chain = self.chain_owned(&id)?;
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        let rec = refs[0];
        if !rec.layout {
            let st = self.driver.export(&refs, out, opts)?;
            return Ok(LayerDiff {
                bytes: st.bytes,
                diff_id: st.diff_id,
                exact: false,
            });
        }
        let path = self.layout_path(&id);
        let mut layout = match fs::File::open(&path) {
            Ok(f) => std::io::BufReader::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Corrupt {
                    what: format!("layer {}", rec.label()),
                    reason: format!(
                        "its changeset layout {} is missing, so its exact bytes cannot be given",
                        path.display()
                    ),
                })
            }
            Err(e) => return Err(Error::io("opening", &path)(e)),
        };
        let out_err = |e| Error::io("writing", "the changeset output")(e);
        let mut enc = Encoder::new(out, opts.compression).map_err(out_err)?;
        let r = self.driver.reassemble(&refs, &mut layout, &mut enc)?;
        enc.finish().map_err(out_err)?;
        if rec.diff_id.as_deref() != Some(r.diff_id.as_str()) {
            return Err(ChangesetError::Irreproducible {
                reason: format!(
                    "layer {} reassembles to {}, its record says {}",
                    rec.label(),
                    r.diff_id,
                    rec.diff_id.as_deref().unwrap_or("nothing")
                ),
            }
            .into());
        }
        Ok(LayerDiff {
            bytes: r.bytes,
            diff_id: r.diff_id,
            exact: true,
        })
    }

    /// How to mount layer `id` (read-only, or `writable` for a layer with
    /// no children), for a caller that mounts it itself.
    pub fn mount_spec(&mut self, id: &LayerId, writable: bool) -> Result<MountSpec> {
        let chain = self.chain_owned(id)?;
        // Activating a thin device is dm work: not under the store's lock.
        self.unlocked(|d| {
            let refs: Vec<&LayerRecord> = chain.iter().collect();
            d.mount_spec(&refs, writable)
        })?
    }

    /// The length of the changeset an image's layer was imported from (its
    /// uncompressed tar, as `docker history` sizes a layer); `None` for a
    /// layer without a recorded layout.
    pub fn changeset_length(&self, id: &LayerId) -> Result<Option<u64>> {
        let rec = self.layer_record(id)?;
        if !rec.layout {
            return Ok(None);
        }
        let path = self.layout_path(id);
        crate::changeset::split::recorded_length(&path).map_err(Error::io("reading", &path))
    }

    /// Replaces the snapshot fields of layer `id`'s record (one atomic
    /// record write: a commit or a label change).
    pub fn set_snapshot(&mut self, id: &LayerId, meta: SnapshotMeta) -> Result<()> {
        if self.being_removed(id) {
            return Err(Error::NotFound {
                what: "snapshot",
                name: meta.key,
                hint: ": another request is removing it".into(),
            });
        }
        if let Some(j) = self.claimed_by(|c| c.key.as_deref() == Some(meta.key.as_str())) {
            return Err(Error::Exists {
                what: "snapshot",
                name: format!("{} (being made by: {})", meta.key, j.op),
            });
        }
        let mut rec = self.layer_record(id)?.clone();
        rec.snapshot = Some(meta);
        thinpool::record::write(&self.layer_path(id), &rec)?;
        self.layers.insert(id.clone(), rec);
        Ok(())
    }

    /// Space per layer, in the order given.
    pub fn usage(&mut self, ids: &[LayerId]) -> Result<Vec<Usage>> {
        let recs: Vec<LayerRecord> = ids
            .iter()
            .filter_map(|i| self.layers.get(i).cloned())
            .collect();
        // thin_ls or a walk of the layer's files: not under the store's lock.
        self.unlocked(|d| {
            let refs: Vec<&LayerRecord> = recs.iter().collect();
            d.usage(&refs)
        })?
    }

    /// Whether this store's layers can be grown to `size` (checked before
    /// anything is made for a container).
    pub fn check_size(&self, size: thinpool::Bytes) -> Result<()> {
        self.driver.check_size(size)
    }

    /// Creates a container's writable layer over the init layer that every
    /// container over `parent` shares (made from `init`, a changeset of
    /// placeholders, if there is none yet), grown to `size` if given,
    /// owned by `container`. Returns `[init, writable]`; on any failure no
    /// writable layer is left (an init layer made on the way stays, for
    /// the next container: `layer prune` removes it while none uses it).
    pub fn create_container_layers(
        &mut self,
        parent: &LayerId,
        container: &str,
        init: &[u8],
        size: Option<thinpool::Bytes>,
    ) -> Result<[LayerId; 2]> {
        let parent = self.layer(parent.as_str())?;
        refuse_container_layer(parent, "snapshot")?;
        let parent = parent.id.clone();
        let init_id = self.shared_init_layer(&parent, init)?;
        let op = format!("create container {}", short(container));
        let work = |txn: &mut Txn<'_>| {
            // make_layer names the init layer as the new layer's parent in
            // the journal before the store's lock is let go: from then on
            // prune and layer removal leave it alone.
            let rw_id = txn.reserve_layers(1)?.remove(0);
            txn.make_layer(
                &rw_id,
                NewLayer {
                    parent: Some(&init_id),
                    container: Some(container),
                    ..NewLayer::default()
                },
            )?;
            if let Some(size) = size {
                txn.resize_layer(&rw_id, size)?;
            }
            Ok([init_id.clone(), rw_id])
        };
        // Without a resize the layer's record is the last change: the
        // journal only claims (see `claims_transaction`), and the
        // container's own record, durable before this, has the layer
        // undone if the create does not finish.
        match size {
            None => self.claims_transaction(op, work),
            Some(_) => self.transaction(op, work),
        }
    }

    /// The init layer shared by containers over `parent`, made from `init`
    /// if there is none. Processes making containers over the same parent
    /// at once make one between them: the first takes a lock named after
    /// the parent and makes it; the others wait for it (without the
    /// store's lock) and find it made.
    fn shared_init_layer(&mut self, parent: &LayerId, init: &[u8]) -> Result<LayerId> {
        if let Some(id) = self.init_layer_of(parent) {
            return Ok(id);
        }
        let dir = self.dir.join("locks");
        fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join(format!("init-{parent}.lock"));
        let timeout = self.lock_timeout;
        let guard = self.unlocked(|_| thinpool::lock::LockGuard::acquire(&path, timeout))??;
        let made = match self.init_layer_of(parent) {
            Some(id) => Ok(id),
            None => self.claims_transaction(
                format!("make the init layer over {}", parent.short()),
                |txn| {
                    let id = txn.reserve_layers(1)?.remove(0);
                    txn.make_layer(
                        &id,
                        NewLayer {
                            parent: Some(parent),
                            changeset: Some(&mut &init[..]),
                            keep_existing_dirs: true,
                            init: true,
                            ..NewLayer::default()
                        },
                    )?;
                    Ok(id)
                },
            ),
        };
        guard.remove();
        made
    }

    /// The init layer over `parent`, if there is one no one is removing.
    fn init_layer_of(&self, parent: &LayerId) -> Option<LayerId> {
        self.children(parent)
            .into_iter()
            .find(|l| l.init && !self.being_removed(&l.id))
            .map(|l| l.id.clone())
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
        self.transaction("remove container layers", |txn| {
            txn.intend_removal(&present, None)?;
            present.iter().try_for_each(|id| txn.remove_layer(id))
        })
    }

    /// Mounts layer `id` (read-only, or `writable` if it is a container's
    /// writable layer) at `target`, an existing directory.
    pub fn mount_at(&mut self, id: &LayerId, target: &Path, writable: bool) -> Result<()> {
        let chain = self.chain_owned(id)?;
        if writable && (chain[0].container.is_none() || !self.children(id).is_empty()) {
            return Err(Error::InUse {
                what: format!("layer {}", chain[0].label()),
                reason: "only a container's writable layer is mounted writable".into(),
            });
        }
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        self.driver.mount(&refs, target, writable)
    }

    /// Unmounts what [`Store::mount_at`] mounted at `target`.
    pub fn unmount_at(&mut self, id: &LayerId, target: &Path) -> Result<()> {
        let rec = self.layer_record(id)?.clone();
        self.driver.unmount(&rec, target)
    }

    /// Makes a new layer over `parent` holding the changes of the
    /// container layer `rw` against the layer below it (its init layer,
    /// over `parent`), leaving out `files` (the init layer's files);
    /// `dirs` are the directories the init layer may have made. The
    /// driver makes it without copying the changed files where it can
    /// ([`crate::driver::Driver::copy_commit`]), else it is exported and
    /// applied. Returns the new layer's id.
    pub fn commit(
        &mut self,
        rw: &LayerId,
        parent: &LayerId,
        name: Option<&str>,
        files: &'static [&'static str],
        dirs: &'static [&'static str],
    ) -> Result<LayerId> {
        let chain = self.chain_owned(rw)?;
        let spool = super::scratch_dir(&self.dir)?.join(format!("commit-{rw}.tar"));
        self.new_layer(
            "commit",
            Some(parent.as_str()),
            name,
            NewLayer {
                commit: Some(CommitOf {
                    chain: &chain,
                    files,
                    dirs,
                    spool: &spool,
                }),
                ..NewLayer::default()
            },
        )
    }
}
