//! The transaction API: every change to the store goes through a [`Txn`],
//! which records its intent in the journal before any work and removes the
//! journal only when every record is written.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use thinpool::killpoint;
use thinpool::lock::LockGuard;
use thinpool::record::Durability;

use super::journal::{self, Claim, Journal};
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
    /// A shared init layer ([`LayerRecord::init`]).
    pub init: bool,
    /// Made as a container's commit, instead of from `changeset`.
    pub commit: Option<CommitOf<'a>>,
    /// Mounted (or its mount asked for) as soon as it is made: a layer
    /// with nothing to write has its mount prepared
    /// ([`crate::driver::Driver::prepare_mount`]) while its record is made
    /// durable.
    pub mount_next: bool,
}

/// A commit: the changes of a container's writable layer, over the layer
/// below it (its init layer, over the new layer's parent), without that
/// layer's paths. The driver copies it where it can
/// ([`crate::driver::Driver::copy_commit`]); otherwise it is exported and
/// applied.
pub struct CommitOf<'a> {
    /// The writable layer and its ancestors, the layer first.
    pub chain: &'a [LayerRecord],
    /// The files the layer below made, left out (the init layer's).
    pub files: &'static [&'static str],
    /// The directories the layer below may have made.
    pub dirs: &'static [&'static str],
    /// Where the changes are spooled if the driver cannot copy them: a
    /// file in the process's scratch directory ([`crate::mount::scratch_dir`]),
    /// swept if a kill leaves it.
    pub spool: &'a std::path::Path,
}

/// A changeset's required diff_id, and how to name the layer if it differs.
pub struct ExpectDiffId<'a> {
    /// `sha256:<hex>` of the uncompressed changeset.
    pub diff_id: &'a str,
    /// The layer as the error names it, e.g. `layer 2 of the image`.
    pub what: String,
    /// The changeset's reader checks its bytes against `diff_id` as it
    /// goes and fails at their end if they differ (an uncompressed blob
    /// whose digest is its diff_id): they are not hashed a second time.
    pub checked_by_reader: bool,
}

/// One transaction on an open store; see [`Store::transaction`].
pub struct Txn<'s> {
    store: &'s mut Store,
    journal: Journal,
    /// Its id and the lock that says it is alive, from its first journal
    /// write.
    live: Option<(String, LockGuard)>,
    /// A claims-only transaction ([`Store::claims_transaction`]).
    claims_only: bool,
    /// A claims-only transaction wrote layer records whose names are
    /// synced when it ends.
    records_unsynced: bool,
}

/// The end of a claims-only transaction's id (and so of its journal's
/// and lock's names): its journal is written without fsync, so a power
/// cut can leave it torn, and the next open drops it then.
pub(super) const CLAIMS_SUFFIX: &str = "-claims";

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        // A journal left behind (removals to finish) is now a dead
        // transaction's: the next load finishes it.
        self.store.own_txn = None;
    }
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
        self.transaction_as(op, false, work)
    }

    /// [`Store::transaction`] for one that makes layers and whose last
    /// change is their records: `create layer`, a snapshot's prepare. Its
    /// journal only tells other live processes what it claims, and a
    /// killed process's journal is undone as any; so it is written
    /// without fsync. After a power cut it may be lost or torn: then a
    /// layer whose record was written is complete and stays, and one
    /// whose record was not is an orphan resource that the next open
    /// frees (`Driver::reconcile`). The records' directory and the
    /// journal's removal are synced together as it ends, before it
    /// returns: what it reports made survives a power cut.
    pub fn claims_transaction<T>(
        &mut self,
        op: impl Into<String>,
        work: impl FnOnce(&mut Txn<'_>) -> Result<T>,
    ) -> Result<T> {
        self.transaction_as(op, true, work)
    }

    fn transaction_as<T>(
        &mut self,
        op: impl Into<String>,
        claims_only: bool,
        work: impl FnOnce(&mut Txn<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut txn = Txn {
            store: self,
            journal: Journal {
                op: op.into(),
                ..Journal::default()
            },
            live: None,
            claims_only,
            records_unsynced: false,
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
        let _phase = tracing::trace_span!(crate::phase::JOURNAL).entered();
        if self.live.is_none() {
            // The lock first: a journal is never seen without it held.
            let mut id = LayerId::generate()?.as_str()[..16].to_string();
            if self.claims_only {
                id.push_str(CLAIMS_SUFFIX);
            }
            let lock = self.store.dir.join(journal::DIR).join(format!("{id}.lock"));
            // The id is fresh: only a sweeper of dead transactions' locks
            // can hold it, for a moment, and the lock then moves to a
            // fresh file.
            let guard = LockGuard::acquire(&lock, std::time::Duration::from_secs(10))?;
            self.store.own_txn = Some(id.clone());
            self.live = Some((id, guard));
        }
        let id = &self.live.as_ref().expect("made above").0;
        let durability = match self.claims_only {
            true => Durability::Volatile,
            false => Durability::Durable,
        };
        thinpool::record::write_as(&self.store.journal_path(id), &self.journal, durability)?;
        killpoint::here(killpoint::STORE_JOURNAL_WRITTEN);
        Ok(())
    }

    /// Records the intent to create `n` layers and returns their new ids:
    /// one journal write however many. Each is claimed (parent, name, key)
    /// when it is made ([`Txn::make_layer`]).
    pub fn reserve_layers(&mut self, n: usize) -> Result<Vec<LayerId>> {
        let ids = (0..n)
            .map(|_| LayerId::generate())
            .collect::<Result<Vec<_>>>()?;
        self.journal.create.extend(ids.iter().cloned());
        self.write_journal()?;
        Ok(ids)
    }

    /// Records the intent to create one layer that will be `claim` (its
    /// name and key unique, its parent present and staying), and returns
    /// its new id: one journal write.
    ///
    /// Errors: [`Error::Exists`] for a name or key another layer has or is
    /// being given; [`Error::NotFound`] for a parent that is gone or being
    /// removed.
    pub fn reserve_layer(&mut self, claim: Claim) -> Result<LayerId> {
        self.check_claim(&claim)?;
        let id = LayerId::generate()?;
        self.journal.create.push(id.clone());
        self.journal.claims.insert(id.clone(), claim);
        self.write_journal()?;
        Ok(id)
    }

    /// Whether `claim` can be made now, given the records and what other
    /// live transactions claim.
    fn check_claim(&self, claim: &Claim) -> Result<()> {
        let store = &*self.store;
        if let Some(n) = &claim.name {
            if store.layers.values().any(|l| l.name.as_ref() == Some(n))
                || store.claimed_by(|c| c.name.as_ref() == Some(n)).is_some()
            {
                return Err(Error::Exists {
                    what: "layer",
                    name: n.clone(),
                });
            }
        }
        if let Some(k) = &claim.key {
            if store
                .layers
                .values()
                .any(|l| l.snapshot.as_ref().is_some_and(|s| &s.key == k))
                || store.claimed_by(|c| c.key.as_ref() == Some(k)).is_some()
            {
                return Err(Error::Exists {
                    what: "snapshot",
                    name: k.clone(),
                });
            }
        }
        if let Some(p) = &claim.parent {
            let ours = self.journal.create.contains(p);
            if !ours
                && (!store.layers.contains_key(p) || store.being_removed(p) || store.being_made(p))
            {
                return Err(Error::NotFound {
                    what: "layer",
                    name: p.to_string(),
                    hint: ": it was removed meanwhile, or is not made yet".into(),
                });
            }
        }
        Ok(())
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
    ///
    /// Errors: [`Error::NotFound`] for a layer another transaction is
    /// removing; [`Error::InUse`] for one a live transaction is making a
    /// layer on.
    pub fn intend_removal(&mut self, layers: &[LayerId], image: Option<&str>) -> Result<()> {
        for id in layers {
            let gone = |hint: &str| Error::NotFound {
                what: "layer",
                name: id.to_string(),
                hint: hint.into(),
            };
            if self.store.being_removed(id) || !self.store.layers.contains_key(id) {
                return Err(gone(": another command is removing it"));
            }
            if self.store.being_made(id) {
                return Err(gone(": another command is still making it"));
            }
            if let Some(j) = self.store.claimed_by(|c| c.parent.as_ref() == Some(id)) {
                return Err(Error::InUse {
                    what: format!("layer {}", id.short()),
                    reason: format!(
                        "another command ({}) is making a layer on it; retry when it is done",
                        j.op
                    ),
                });
            }
        }
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
        let claim = Claim {
            parent: new.parent.cloned(),
            name: new.name.map(str::to_string),
            key: new.snapshot.as_ref().map(|s| s.key.clone()),
        };
        // A parent this transaction makes is its own already (others
        // leave layers being created alone): a claim is written only for
        // what others could take.
        let own_parent = claim
            .parent
            .as_ref()
            .is_some_and(|p| self.journal.create.contains(p));
        let needed =
            claim.name.is_some() || claim.key.is_some() || (claim.parent.is_some() && !own_parent);
        if needed && !self.journal.claims.contains_key(id) {
            self.check_claim(&claim)?;
            self.journal.claims.insert(id.clone(), claim);
            self.write_journal()?;
        }
        let chain = match new.parent {
            Some(p) => self.store.chain_owned(p)?,
            None => vec![],
        };
        let layout = self.store.layout_path(id);
        // The driver's work, without the store's lock: the claim keeps the
        // parent and the name ours meanwhile.
        let rec = self
            .store
            .unlocked(|driver| make_resource(driver, id, &chain, &layout, new))??;
        killpoint::here(killpoint::STORE_RESOURCE_MADE);
        let path = self.store.layer_path(id);
        let _phase = tracing::trace_span!(crate::phase::RECORD).entered();
        if self.claims_only {
            // Its name is synced as the transaction ends, with the
            // journal's removal.
            thinpool::record::write_as(&path, &rec, Durability::NameUnsynced)?;
            self.records_unsynced = true;
        } else {
            thinpool::record::write(&path, &rec)?;
        }
        killpoint::here(killpoint::STORE_LAYER_RECORDED);
        Ok(self.store.layers.entry(id.clone()).or_insert(rec))
    }

    /// Grows a layer made in this transaction to `size`.
    pub fn resize_layer(&mut self, id: &LayerId, size: thinpool::Bytes) -> Result<()> {
        let rec = self.store.layer_record(id)?.clone();
        self.store.unlocked(|d| d.resize(&rec, size))?
    }

    /// Removes a layer recorded with [`Txn::intend_removal`]: its resource
    /// (without the store's lock), then its record.
    pub fn remove_layer(&mut self, id: &LayerId) -> Result<()> {
        if let Some(rec) = self.store.layers.get(id).cloned() {
            self.store.unlocked(|d| d.remove(&rec))??;
            killpoint::here(killpoint::STORE_RESOURCE_REMOVED);
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
        let _phase = tracing::trace_span!(crate::phase::END).entered();
        if let Some((id, guard)) = self.live.take() {
            let journal = self.store.journal_path(&id);
            if self.claims_only {
                // The records' names and the journal's removal, synced
                // after both are made: on a journaling filesystem the first
                // sync commits both, and the journal is never gone while a
                // record it made is not there (unless that record's name is
                // lost too, and the layer not reported: its resource is an
                // orphan, freed at the next open).
                thinpool::record::remove_unsynced(&journal)?;
                let layers = std::mem::take(&mut self.records_unsynced)
                    .then(|| self.store.dir.join("layers"));
                let journals = self.store.dir.join(journal::DIR);
                for dir in layers.iter().chain([&journals]) {
                    thinpool::record::sync_dir(dir).map_err(Error::io("syncing", dir))?;
                }
            } else {
                thinpool::record::remove(&journal)?;
            }
            guard.remove();
            self.store.own_txn = None;
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

/// A commit's changes as a changeset, spooled to `c.spool` (unlinked at
/// once, so freed on close or kill) and read from its start.
fn export_commit(
    driver: &mut dyn crate::driver::Driver,
    of: &[&LayerRecord],
    c: &CommitOf<'_>,
) -> Result<std::io::BufReader<std::fs::File>> {
    use std::io::Seek;
    let path = c.spool;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("creating", path))?;
    // Only a buffer: unlinked now.
    let _ = std::fs::remove_file(path);
    let opts = crate::changeset::ExportOptions {
        skip: c.files,
        ..crate::changeset::ExportOptions::default()
    };
    driver.export(of, &mut f, &opts)?;
    f.rewind().map_err(Error::io("reading", path))?;
    Ok(std::io::BufReader::new(f))
}

/// Makes layer `id`'s resource over `chain` and applies its changeset,
/// or makes it as a commit ([`CommitOf`]): the driver's part of
/// [`Txn::make_layer`], run without the store's lock. On failure the
/// resource is freed.
fn make_resource(
    driver: &mut dyn crate::driver::Driver,
    id: &LayerId,
    chain: &[LayerRecord],
    layout: &std::path::Path,
    new: NewLayer<'_, '_>,
) -> Result<LayerRecord> {
    let chain_refs: Vec<&LayerRecord> = chain.iter().collect();
    // A commit the driver copies is made whole; otherwise its changes are
    // exported, to be applied as any changeset.
    let (mut copied, mut spool) = (None, None);
    if let Some(c) = &new.commit {
        let of: Vec<&LayerRecord> = c.chain.iter().collect();
        copied = driver.copy_commit(id, &of, &chain_refs, c.files, c.dirs)?;
        if copied.is_none() {
            spool = Some(export_commit(driver, &of, c)?);
        }
    }
    let changeset: Option<&mut dyn Read> = match spool.as_mut() {
        Some(r) => Some(r),
        None => new.changeset,
    };
    let resource = match copied {
        Some(r) => r,
        None => driver.create(id, &chain_refs)?,
    };
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
        init: new.init,
    };
    let Some(cs) = changeset else {
        if new.mount_next {
            driver.prepare_mount(&rec);
        }
        return Ok(rec);
    };
    let mut record = match new.keep_layout {
        true => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(layout)
                .map_err(Error::io("creating", layout))?,
        ),
        false => None,
    };
    let with = ApplyWith {
        keep_existing_dirs: new.keep_existing_dirs,
        record: record.as_mut().map(|f| f as &mut dyn std::io::Write),
        known_diff_id: new
            .expect
            .as_ref()
            .filter(|e| e.checked_by_reader)
            .map(|e| e.diff_id.to_string()),
    };
    let applied = driver
        .apply(&rec, &chain_refs, cs, with)
        .and_then(|stats| {
            // Durable before the record that points at it.
            if let Some(f) = &record {
                f.sync_all().map_err(Error::io("syncing", layout))?;
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
            Ok(rec)
        }
        Err(e) => {
            drop(record);
            let _ = std::fs::remove_file(layout);
            let undo = driver.remove(&rec);
            Err(e.with_rollback(undo))
        }
    }
}
