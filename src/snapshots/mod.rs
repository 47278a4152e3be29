//! containerd's snapshot model on thinlayer's one store.
//!
//! A snapshot is a layer whose record carries containerd's fields
//! ([`SnapshotMeta`]): its key, kind and labels. There is no second
//! database: a committed snapshot is an ordinary layer (in `layer ls`),
//! and the store's journal and recovery cover snapshots as they cover
//! every layer.
//!
//! * **Prepare** makes an *active* snapshot: a new layer over its parent
//!   (a committed snapshot) or over the empty base, mounted writable.
//! * **View** makes a *view*: the same, mounted read-only.
//! * **Commit** turns an active snapshot into a *committed* one under a
//!   new name: its record changes, nothing is copied or diffed (O(1) on
//!   both drivers).
//! * **Remove** removes a snapshot that has no children.
//!
//! Keys and names share one namespace, as in containerd. Errors map to
//! containerd's: [`Error::NotFound`], [`Error::Exists`] (already exists),
//! [`Error::Precondition`]/[`Error::InUse`] (failed precondition),
//! [`Error::Invalid`] (invalid argument).
//!
//! This room stands on the store; the daemon (`snapshotter serve`) is a
//! thin translation of gRPC requests into these calls.

pub mod filter;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::driver::{MountSpec, Usage};
use crate::error::{Error, Result};
use crate::layer::{LayerId, LayerRecord, SnapshotKind, SnapshotMeta};
use crate::store::{Claim, NewLayer, Store};
pub use filter::Filters;

/// The label that sizes a snapshot's filesystem (thin driver): bytes, or a
/// size like `20G`. Larger than the base size grows it.
pub const SIZE_LABEL: &str = "containerd.io/snapshot/thinlayer.size";

/// A snapshot as containerd sees it (`snapshots.Info`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    /// Its key, or its name when committed.
    pub name: String,
    /// Its parent's name; `None` for a snapshot over the empty base.
    pub parent: Option<String>,
    /// Its kind.
    pub kind: SnapshotKind,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was made (nanoseconds since the epoch).
    pub created_ns: i64,
    /// When it last changed (nanoseconds since the epoch).
    pub updated_ns: i64,
    /// The layer behind it.
    pub layer: LayerId,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn not_found(key: &str) -> Error {
    Error::NotFound {
        what: "snapshot",
        name: key.to_string(),
        hint: String::new(),
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("snapshot key", "it is empty"));
    }
    if key.len() > 4096 || key.contains('\0') {
        return Err(Error::invalid(
            "snapshot key",
            "it is longer than 4096 bytes or holds a NUL byte",
        ));
    }
    Ok(())
}

/// The record of the layer that is snapshot `key` (not one a request in
/// flight is removing).
pub fn find<'s>(store: &'s Store, key: &str) -> Result<&'s LayerRecord> {
    store
        .layers()
        .find(|l| l.snapshot.as_ref().is_some_and(|s| s.key == key))
        .filter(|l| !store.being_removed(&l.id))
        .ok_or_else(|| not_found(key))
}

fn info_of(store: &Store, l: &LayerRecord) -> Info {
    let s = l.snapshot.as_ref().expect("a snapshot's layer");
    let parent = l
        .parent
        .as_ref()
        .and_then(|p| store.layer_record(p).ok())
        .and_then(|p| p.snapshot.as_ref())
        .map(|p| p.key.clone());
    Info {
        name: s.key.clone(),
        parent,
        kind: s.kind,
        labels: s.labels.clone(),
        created_ns: s.created_ns,
        updated_ns: s.updated_ns,
        layer: l.id.clone(),
    }
}

/// `Stat`: the snapshot `key`.
pub fn stat(store: &Store, key: &str) -> Result<Info> {
    Ok(info_of(store, find(store, key)?))
}

/// `Walk`: every snapshot the filters match (fields `kind`, `name`,
/// `parent`, `labels.KEY`), ordered by name.
pub fn walk(store: &Store, filters: &Filters) -> Vec<Info> {
    let mut out: Vec<Info> = store
        .layers()
        .filter(|l| l.snapshot.is_some())
        .map(|l| info_of(store, l))
        .filter(|i| {
            filters.matches(|path| match path {
                [f] if f == "kind" => Some(i.kind.as_str().to_string()),
                [f] if f == "name" => Some(i.name.clone()),
                [f] if f == "parent" => i.parent.clone(),
                [f, k] if f == "labels" => i.labels.get(k).cloned(),
                _ => None,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The size `labels` ask for ([`SIZE_LABEL`]), if any.
fn size_of(labels: &BTreeMap<String, String>) -> Result<Option<thinpool::Bytes>> {
    labels
        .get(SIZE_LABEL)
        .map(|v| {
            v.parse::<thinpool::Bytes>()
                .map_err(|e| Error::invalid("snapshot size label", format!("'{v}': {e}")))
        })
        .transpose()
}

/// `Prepare` (`kind` active) and `View` (`kind` view): a new snapshot
/// `key` over committed snapshot `parent` (or the empty base). Returns
/// its mounts. A size label ([`SIZE_LABEL`]), or `default_size` when the
/// labels have none, grows an active snapshot's filesystem (thin driver).
pub fn create(
    store: &mut Store,
    kind: SnapshotKind,
    key: &str,
    parent: Option<&str>,
    labels: BTreeMap<String, String>,
    default_size: Option<thinpool::Bytes>,
) -> Result<Vec<MountSpec>> {
    check_key(key)?;
    if kind == SnapshotKind::Committed {
        return Err(Error::invalid(
            "snapshot kind",
            "only active snapshots and views are made; commit makes committed ones",
        ));
    }
    if find(store, key).is_ok() {
        return Err(Error::Exists {
            what: "snapshot",
            name: key.to_string(),
        });
    }
    let parent_id = match parent.filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => {
            let rec = find(store, p)?;
            let meta = rec.snapshot.as_ref().expect("found by its snapshot");
            if meta.kind != SnapshotKind::Committed {
                return Err(Error::Precondition(format!(
                    "parent snapshot '{p}' is {}, not committed: commit it first",
                    meta.kind.as_str()
                )));
            }
            Some(rec.id.clone())
        }
    };
    let size = match (kind, size_of(&labels)?) {
        (SnapshotKind::Active, Some(s)) => Some(s),
        (SnapshotKind::Active, None) => default_size,
        _ => None,
    };
    if let Some(s) = size {
        store.check_size(s)?;
    }
    let now = now_ns();
    let meta = SnapshotMeta {
        key: key.to_string(),
        kind,
        labels,
        created_ns: now,
        updated_ns: now,
    };
    // With a size to grow to, the layer is not complete at its record:
    // that transaction's journal must survive a power cut.
    let op = format!("prepare snapshot {key}");
    let work = |txn: &mut crate::store::Txn<'_>| {
        // Claims the key and pins the parent while the device is made.
        let id = txn.reserve_layer(Claim {
            parent: parent_id.clone(),
            name: None,
            key: Some(key.to_string()),
        })?;
        txn.make_layer(
            &id,
            NewLayer {
                parent: parent_id.as_ref(),
                snapshot: Some(meta),
                // Its mounts are asked for next, unless it is grown first.
                mount_next: size.is_none(),
                ..NewLayer::default()
            },
        )?;
        if let Some(s) = size {
            txn.resize_layer(&id, s)?;
        }
        Ok(id)
    };
    let id = match size {
        None => store.claims_transaction(op, work)?,
        Some(_) => store.transaction(op, work)?,
    };
    Ok(vec![store.mount_spec(&id, kind == SnapshotKind::Active)?])
}

/// `Mounts`: how to mount active snapshot or view `key`.
pub fn mounts(store: &mut Store, key: &str) -> Result<Vec<MountSpec>> {
    let rec = find(store, key)?;
    let kind = rec.snapshot.as_ref().expect("found by its snapshot").kind;
    if kind == SnapshotKind::Committed {
        return Err(Error::Precondition(format!(
            "snapshot '{key}' is committed: committed snapshots are not mounted; prepare or view one over it"
        )));
    }
    let id = rec.id.clone();
    Ok(vec![store.mount_spec(&id, kind == SnapshotKind::Active)?])
}

/// `Commit`: active snapshot `key` becomes committed snapshot `name`, with
/// `labels` (none: it keeps its own). O(1): only its record changes.
pub fn commit(
    store: &mut Store,
    name: &str,
    key: &str,
    labels: Option<BTreeMap<String, String>>,
) -> Result<Info> {
    check_key(name)?;
    let rec = find(store, key)?.clone();
    let mut meta = rec.snapshot.clone().expect("found by its snapshot");
    if meta.kind != SnapshotKind::Active {
        return Err(Error::Precondition(format!(
            "snapshot '{key}' is {}: only an active snapshot can be committed",
            meta.kind.as_str()
        )));
    }
    if find(store, name).is_ok() {
        return Err(Error::Exists {
            what: "snapshot",
            name: name.to_string(),
        });
    }
    meta.key = name.to_string();
    meta.kind = SnapshotKind::Committed;
    if let Some(l) = labels {
        meta.labels = l;
    }
    // A new committed snapshot, as containerd's own metadata makes it.
    meta.created_ns = now_ns();
    meta.updated_ns = meta.created_ns;
    store.set_snapshot(&rec.id, meta)?;
    stat(store, name)
}

/// Which labels an `Update` changes: all of them, or the named ones
/// (containerd's field paths `labels` and `labels.KEY`).
pub fn update(
    store: &mut Store,
    key: &str,
    labels: BTreeMap<String, String>,
    paths: &[String],
) -> Result<Info> {
    let rec = find(store, key)?.clone();
    let mut meta = rec.snapshot.clone().expect("found by its snapshot");
    if paths.is_empty() {
        meta.labels = labels;
    } else {
        for p in paths {
            if p == "labels" {
                meta.labels = labels.clone();
            } else if let Some(k) = p.strip_prefix("labels.") {
                match labels.get(k) {
                    Some(v) => meta.labels.insert(k.to_string(), v.clone()),
                    None => meta.labels.remove(k),
                };
            } else {
                return Err(Error::invalid(
                    "field path",
                    format!("'{p}' cannot be updated: only labels and labels.KEY can"),
                ));
            }
        }
    }
    meta.updated_ns = now_ns();
    store.set_snapshot(&rec.id, meta)?;
    stat(store, key)
}

/// `Remove`: snapshot `key`, which must have no children.
pub fn remove(store: &mut Store, key: &str) -> Result<()> {
    let rec = find(store, key)?.clone();
    if let Some(child) = store.children(&rec.id).first() {
        return Err(Error::Precondition(format!(
            "snapshot '{key}' has children ({}): remove them first",
            child
                .snapshot
                .as_ref()
                .map(|s| s.key.clone())
                .unwrap_or_else(|| child.label())
        )));
    }
    store.remove_layer(rec.id.as_str()).map(|_| ())
}

/// `Usage`: bytes and inodes the snapshot holds itself.
pub fn usage(store: &mut Store, key: &str) -> Result<Usage> {
    let id = find(store, key)?.id.clone();
    Ok(store.usage(&[id])?.pop().unwrap_or_default())
}
