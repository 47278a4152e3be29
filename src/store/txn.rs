//! The transaction API: every change to the store goes through a [`Txn`],
//! which records its intent in the journal before any work and removes the
//! journal only when every record is written.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use super::journal::{self, Journal};
use super::{ImageRecord, Store};
use crate::driver::ApplyWith;
use crate::error::{Error, Result};
use crate::layer::{LayerId, LayerRecord};
use crate::util::time::now_unix;

/// A layer to make inside a transaction. `'a` is how long the borrows
/// last, `'r` what the changeset reader may borrow.
#[derive(Default)]
pub struct NewLayer<'a, 'r> {
    /// Its parent (an empty filesystem when `None`).
    pub parent: Option<&'a LayerId>,
    /// A name, checked by the caller ([`Store::check_new_name`]).
    pub name: Option<&'a str>,
    /// The OCI chain id, for a layer of an image.
    pub chain_id: Option<String>,
    /// An OCI changeset (tar, plain or compressed) to apply to it.
    pub changeset: Option<&'a mut (dyn Read + 'r)>,
    /// The container it belongs to, for a container's own layers.
    pub container: Option<&'a str>,
    /// The diff_id the changeset must have (an image's config names it);
    /// any other is refused and the layer undone.
    pub expect: Option<ExpectDiffId<'a>>,
    /// Directories already in the parent keep their metadata (a
    /// container's init layer, which makes only what is missing).
    pub keep_existing_dirs: bool,
    /// Record the changeset's layout (`layers/<id>.split`), so that
    /// `layer diff` and `image save` give back its exact bytes: an image's
    /// layers.
    pub keep_layout: bool,
    /// containerd's fields, for a layer made by the snapshotter.
    pub snapshot: Option<crate::layer::SnapshotMeta>,
}

/// A changeset's required diff_id, and how to name the layer if it differs.
pub struct ExpectDiffId<'a> {
    /// `sha256:<hex>` of the uncompressed changeset.
    pub diff_id: &'a str,
    /// The layer as the error names it, e.g. `layer 2 of the image`.
    pub what: String,
}

/// One transaction on an open store; see [`Store::transaction`].
pub struct Txn<'s> {
    store: &'s mut Store,
    journal: Journal,
    begun: bool,
}

impl Store {
    /// Runs `work` as one transaction named `op`. If `work` fails, the
    /// layers it created are undone (and an image it was creating); if
    /// undoing fails too, both errors are returned and the journal stays
    /// for the next open to finish. Removals it recorded are finished by
    /// the next open, never undone.
    pub fn transaction<T>(
        &mut self,
        op: impl Into<String>,
        work: impl FnOnce(&mut Txn<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut txn = Txn {
            store: self,
            journal: Journal {
                op: op.into(),
                ..Journal::default()
            },
            begun: false,
        };
        match work(&mut txn) {
            Ok(v) => {
                txn.end()?;
                Ok(v)
            }
            Err(e) => {
                let undo = txn.rollback();
                Err(e.with_rollback(undo))
            }
        }
    }
}

impl Txn<'_> {
    /// The store as it stands inside the transaction.
    pub fn store(&self) -> &Store {
        self.store
    }

    fn write_journal(&mut self) -> Result<()> {
        thinpool::record::write(&self.store.journal_path(), &self.journal)?;
        self.begun = true;
        Ok(())
    }

    /// Records the intent to create `n` layers and returns their new ids:
    /// one journal write however many.
    pub fn reserve_layers(&mut self, n: usize) -> Result<Vec<LayerId>> {
        let ids = (0..n)
            .map(|_| LayerId::generate())
            .collect::<Result<Vec<_>>>()?;
        self.journal.create.extend(ids.iter().cloned());
        self.write_journal()?;
        Ok(ids)
    }

    /// Records the intent to create image `id` (undone unless the
    /// transaction commits), or to re-tag it if it exists.
    pub fn intend_image(&mut self, id: &str) -> Result<()> {
        if !self.store.images.contains_key(id) {
            self.journal.create_image = Some(id.to_string());
        }
        self.write_journal()
    }

    /// Records the intent to remove `layers` (top first) and `image`: from
    /// here on the removal is finished by the next open if not by this
    /// command.
    pub fn intend_removal(&mut self, layers: &[LayerId], image: Option<&str>) -> Result<()> {
        self.journal.remove.extend(layers.iter().cloned());
        self.journal.remove_image = image.map(str::to_string);
        self.write_journal()
    }

    /// Makes layer `id` (reserved with [`Txn::reserve_layers`]): its
    /// resource, its changeset, its record. On failure its resource is
    /// freed; the record is never written.
    pub fn make_layer(&mut self, id: &LayerId, new: NewLayer<'_, '_>) -> Result<&LayerRecord> {
        if !self.journal.create.contains(id) {
            return Err(Error::Corrupt {
                what: format!("layer {id}"),
                reason: "made without being reserved in the transaction".into(),
            });
        }
        let chain = match new.parent {
            Some(p) => self.store.chain_owned(p)?,
            None => vec![],
        };
        let chain_refs: Vec<&LayerRecord> = chain.iter().collect();
        let resource = self.store.driver.create(id, &chain_refs)?;
        let mut rec = LayerRecord {
            id: id.clone(),
            name: new.name.map(str::to_string),
            parent: new.parent.cloned(),
            created_unix: now_unix(),
            diff_id: None,
            chain_id: new.chain_id,
            resource,
            container: new.container.map(str::to_string),
            layout: false,
            snapshot: new.snapshot,
        };
        if let Some(cs) = new.changeset {
            let layout = self.store.layout_path(id);
            let mut record = match new.keep_layout {
                true => Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&layout)
                        .map_err(Error::io("creating", &layout))?,
                ),
                false => None,
            };
            let with = ApplyWith {
                keep_existing_dirs: new.keep_existing_dirs,
                record: record.as_mut().map(|f| f as &mut dyn std::io::Write),
            };
            let applied = self
                .store
                .driver
                .apply(&rec, &chain_refs, cs, with)
                .and_then(|stats| {
                    // Durable before the record that points at it.
                    if let Some(f) = &record {
                        f.sync_all().map_err(Error::io("syncing", &layout))?;
                    }
                    Ok(stats)
                })
                .and_then(|stats| match new.expect {
                    Some(want) if want.diff_id != stats.diff_id => Err(Error::Corrupt {
                        what: want.what,
                        reason: format!(
                            "its content has diff_id {}, the image config says {}",
                            stats.diff_id, want.diff_id
                        ),
                    }),
                    _ => Ok(stats),
                });
            match applied {
                Ok(stats) => {
                    rec.diff_id = Some(stats.diff_id);
                    rec.layout = record.is_some();
                }
                Err(e) => {
                    drop(record);
                    let _ = std::fs::remove_file(&layout);
                    let undo = self.store.driver.remove(&rec);
                    return Err(e.with_rollback(undo));
                }
            }
        }
        thinpool::record::write(&self.store.layer_path(id), &rec)?;
        Ok(self.store.layers.entry(id.clone()).or_insert(rec))
    }

    /// Grows a layer made in this transaction to `size`.
    pub fn resize_layer(&mut self, id: &LayerId, size: thinpool::Bytes) -> Result<()> {
        let rec = self.store.layer_record(id)?.clone();
        self.store.driver.resize(&rec, size)
    }

    /// Removes a layer recorded with [`Txn::intend_removal`]: its resource,
    /// then its record.
    pub fn remove_layer(&mut self, id: &LayerId) -> Result<()> {
        if let Some(rec) = self.store.layers.get(id).cloned() {
            self.store.driver.remove(&rec)?;
            thinpool::record::remove(&self.store.layer_path(id))?;
            // Without its record, a layout left by a kill is swept at open.
            thinpool::record::remove(&self.store.layout_path(id))?;
            self.store.layers.remove(id);
        }
        Ok(())
    }

    /// Removes an image's record (recorded with [`Txn::intend_removal`]).
    pub fn remove_image(&mut self, id: &str) -> Result<()> {
        thinpool::record::remove(&self.store.image_path(id))?;
        thinpool::record::remove(&super::images::config_path(&self.store.dir, id))?;
        self.store.images.remove(id);
        Ok(())
    }

    /// Keeps image `id`'s config, byte for byte (its sha256 must be the
    /// id), for [`Store::image_config`]. Before [`Txn::put_image`].
    pub fn put_image_config(&mut self, id: &str, raw: &[u8]) -> Result<()> {
        use sha2::{Digest, Sha256};
        if format!("{:x}", Sha256::digest(raw)) != id {
            return Err(Error::Corrupt {
                what: format!("image {}", crate::util::ids::short(id)),
                reason: "its config does not have the image's digest".into(),
            });
        }
        let path = super::images::config_path(&self.store.dir, id);
        if std::fs::read(&path).is_ok_and(|b| b == raw) {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("creating", &path))?;
        std::io::Write::write_all(&mut f, raw).map_err(Error::io("writing", &path))?;
        // Durable before the record; the record's write syncs the directory.
        f.sync_all().map_err(Error::io("syncing", &path))
    }

    /// Writes an image's record. Its names move to it from any other image,
    /// as a tag does in Docker.
    pub fn put_image(&mut self, rec: ImageRecord) -> Result<()> {
        let dir = self.store.dir.clone();
        for other in self.store.images.values_mut().filter(|i| i.id != rec.id) {
            let before = other.names.len();
            other.names.retain(|n| !rec.names.contains(n));
            if other.names.len() != before {
                thinpool::record::write(&super::image_path(&dir, &other.id), &*other)?;
            }
        }
        thinpool::record::write(&self.store.image_path(&rec.id), &rec)?;
        self.store.images.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Commits: the journal goes, and with it any way back.
    fn end(&mut self) -> Result<()> {
        if self.begun {
            thinpool::record::remove(&self.store.journal_path())?;
            self.begun = false;
        }
        Ok(())
    }

    /// Undoes what the transaction created; removals stay for the next
    /// open to finish.
    fn rollback(&mut self) -> Result<()> {
        let store = &mut *self.store;
        if let Some(img) = &self.journal.create_image {
            if store.images.remove(img).is_some() {
                thinpool::record::remove(&store.image_path(img))?;
            }
            thinpool::record::remove(&super::images::config_path(&store.dir, img))?;
        }
        journal::undo_creates(
            &self.journal.create,
            &mut store.layers,
            store.driver.as_mut(),
            &store.dir,
        )?;
        if self.journal.remove.is_empty() && self.journal.remove_image.is_none() {
            self.end()?;
        }
        Ok(())
    }
}
