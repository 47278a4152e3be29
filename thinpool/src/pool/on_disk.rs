//! The pool's record (`pool.json`) and the changes made to it.
//!
//! These types are the on-disk format: new fields get `#[serde(default)]`
//! so records written before them still read. The changes here are pure
//! (no kernel, no file), so the transaction bookkeeping is tested in the
//! plain tier.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Autoextend, MinFree, OnFull, QueueTimeout};
use crate::error::{Error, Result};
use crate::names::PoolId;
use crate::recovery::PendingOp;
use crate::units::{BlockSize, Bytes, ThinId, TransactionId};

/// The persistent record of a pool (`pool.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// The pool's identity, part of every dm name it uses.
    pub id: PoolId,
    /// Where the pool is in its lifecycle.
    pub state: PoolState,
    /// When the pool was created, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// The pool's allocation unit.
    pub block_size: BlockSize,
    /// What a write to the full pool does.
    pub on_full: OnFull,
    /// The free space below which new thin devices are refused (10% for
    /// a record written before the reserve existed).
    #[serde(default)]
    pub min_free: MinFree,
    /// How the pool grows by itself; `None` for never.
    #[serde(default)]
    pub autoextend: Option<Autoextend>,
    /// How long a queued write waits in the full pool.
    #[serde(default)]
    pub queue_timeout: QueueTimeout,
    /// The data backing.
    pub data: Backing,
    /// The metadata backing.
    pub metadata: Backing,
    /// The kernel metadata's transaction id, which every open checks
    /// ([`crate::recovery`]).
    pub transaction_id: TransactionId,
    /// Ids are handed out in order and never reused.
    pub next_thin_id: ThinId,
    /// The thin devices the kernel has committed.
    #[serde(default)]
    pub thins: BTreeMap<ThinId, ThinRecord>,
    /// A thin-device change recorded before its dm messages were sent;
    /// `None` between operations.
    #[serde(default)]
    pub pending: Option<PendingOp>,
    /// Which entries of the change log (`pool.log`) follow this record:
    /// those of this epoch. Each write of the record moves it on, retiring
    /// the log's entries ([`crate::pool::log`]).
    #[serde(default)]
    pub log_epoch: u64,
}

/// Where a pool is in its lifecycle; anything but `Ready` is finished or
/// undone by the next open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolState {
    /// A create is making the pool; a killed one is undone.
    Creating,
    /// The pool is usable.
    Ready,
    /// A destroy is taking the pool apart; a killed one is finished.
    Destroying,
}

/// Where the data or metadata lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backing {
    /// A file of ours or a device of the user's.
    pub kind: BackingKind,
    /// The file (under the pool directory) or the device node.
    pub path: PathBuf,
    /// How much of it the pool uses.
    pub size: Bytes,
}

/// What a [`Backing`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackingKind {
    /// A sparse file of ours behind a loop device.
    File,
    /// A block device the user gave us.
    Device,
}

/// A thin device known to the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinRecord {
    /// The device's virtual size.
    pub size: Bytes,
    /// The owner's label for the device (opaque to this crate; thinlayer
    /// stores what the device holds).
    pub tag: String,
    /// The device it is a snapshot of, if any.
    #[serde(default)]
    pub origin: Option<ThinId>,
    /// The pool's transaction id when it was created (earlier versions
    /// moved it with every change; it no longer moves).
    pub created_tx: TransactionId,
}

impl PoolRecord {
    /// Hands out the next thin device id. Ids are never reused, so the
    /// record is the only place that knows which ones the kernel may have.
    ///
    /// Errors: [`Error::ThinIdsExhausted`] after 2^24 ids.
    pub fn allocate_thin_id(&mut self) -> Result<ThinId> {
        let id = self.next_thin_id;
        if id > ThinId::MAX {
            return Err(Error::ThinIdsExhausted);
        }
        self.next_thin_id = ThinId(id.0 + 1);
        Ok(id)
    }

    /// Applies the pending operation if the kernel, at transaction
    /// `kernel`, is one transaction past the record: how a change was
    /// committed before the change log ([`crate::recovery`]), which moved
    /// the kernel's transaction id with each one. A pool whose record was
    /// last written that way is read this way once. `kernel` must be read
    /// before the record was. Whether it applied one.
    pub fn settle(&mut self, kernel: TransactionId) -> bool {
        match self.pending.clone() {
            Some(op) if kernel == self.transaction_id.next() => {
                self.commit(op);
                self.transaction_id = kernel;
                true
            }
            _ => false,
        }
    }

    /// Applies a thin-device change the kernel has committed: the record
    /// has it and nothing pending.
    pub fn commit(&mut self, op: PendingOp) {
        let tx = self.transaction_id;
        match op {
            PendingOp::Create { id, size, tag } => {
                self.insert_thin(id, size, tag, None, tx);
            }
            PendingOp::Snapshot {
                id,
                origin,
                size,
                tag,
            } => {
                self.insert_thin(id, size, tag, Some(origin), tx);
            }
            PendingOp::Delete { id } => {
                self.thins.remove(&id);
            }
        }
        self.pending = None;
    }

    /// Replays the change log's entries (in order, those of this record's
    /// epoch) over this record: each entry's pending operation was
    /// committed if another entry follows it (an operation that is undone
    /// is followed by a whole record write, never by an entry). The last
    /// entry's operation stays pending: in flight, or left by a process
    /// that died or lost power before its commit entry, for recovery to
    /// settle against the kernel's metadata.
    ///
    /// Errors: why an entry does not follow the record (a log that was
    /// not written by this protocol).
    pub fn replay(&mut self, entries: &[super::log::LogEntry]) -> std::result::Result<(), String> {
        for e in entries {
            if e.transaction_id != self.transaction_id {
                return Err(format!(
                    "entry {} is at transaction {}, the record before it at {}",
                    e.index, e.transaction_id, self.transaction_id
                ));
            }
            if let Some(op) = self.pending.clone() {
                self.commit(op);
            }
            self.pending = e.pending.clone();
            self.next_thin_id = self.next_thin_id.max(e.next_thin_id);
        }
        Ok(())
    }

    fn insert_thin(
        &mut self,
        id: ThinId,
        size: Bytes,
        tag: String,
        origin: Option<ThinId>,
        created_tx: TransactionId,
    ) {
        self.thins.insert(
            id,
            ThinRecord {
                size,
                tag,
                origin,
                created_tx,
            },
        );
    }

    /// How a thin device is named to a user: its id and its tag.
    pub fn describe_thin(&self, id: ThinId) -> String {
        match self.thins.get(&id) {
            Some(t) => format!("thin device {id} ({})", t.tag),
            None => format!("thin device {id}"),
        }
    }
}

#[cfg(test)]
impl PoolRecord {
    /// A ready pool of file backings `data` and `metadata` with no thin
    /// devices, at `transaction_id`: the pool crate's tests' record.
    pub(crate) fn sample(
        data: Bytes,
        metadata: Bytes,
        transaction_id: TransactionId,
    ) -> PoolRecord {
        let backing = |p: &str, size| Backing {
            kind: BackingKind::File,
            path: PathBuf::from(p),
            size,
        };
        PoolRecord {
            id: PoolId::try_from("0123456789abcdef".to_string()).unwrap(),
            state: PoolState::Ready,
            created_unix: 0,
            block_size: BlockSize::DEFAULT,
            on_full: OnFull::Error,
            min_free: MinFree::DEFAULT,
            autoextend: None,
            queue_timeout: QueueTimeout::DEFAULT,
            data: backing("data", data),
            metadata: backing("metadata", metadata),
            transaction_id,
            next_thin_id: ThinId(0),
            thins: BTreeMap::new(),
            pending: None,
            log_epoch: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PoolRecord {
        PoolRecord::sample(Bytes::GIB, Bytes::GIB, TransactionId(4))
    }

    #[test]
    fn plain_commit_applies_the_change_and_leaves_nothing_pending() {
        let mut r = record();
        let id = r.allocate_thin_id().unwrap();
        r.pending = Some(PendingOp::Create {
            id,
            size: Bytes::MIB,
            tag: "base".into(),
        });
        r.commit(r.pending.clone().unwrap());
        assert_eq!(
            r.transaction_id,
            TransactionId(4),
            "a commit moves no transaction id"
        );
        assert_eq!(r.pending, None);
        assert_eq!(r.thins[&id].created_tx, TransactionId(4));
        assert_eq!(r.thins[&id].origin, None);

        let snap = r.allocate_thin_id().unwrap();
        assert_ne!(snap, id, "an id was handed out twice");
        r.commit(PendingOp::Snapshot {
            id: snap,
            origin: id,
            size: Bytes::MIB,
            tag: "child".into(),
        });
        assert_eq!(r.thins[&snap].origin, Some(id));
        assert_eq!(r.describe_thin(snap), "thin device 1 (child)");

        r.commit(PendingOp::Delete { id });
        assert_eq!(r.thins.keys().copied().collect::<Vec<_>>(), vec![snap]);
        assert_eq!(r.transaction_id, TransactionId(4));
        assert_eq!(r.describe_thin(id), "thin device 0");
    }

    #[test]
    fn plain_a_record_of_the_transaction_id_protocol_settles_once_against_the_kernel() {
        let mut r = record();
        r.pending = Some(PendingOp::Create {
            id: ThinId(0),
            size: Bytes::MIB,
            tag: "old".into(),
        });
        let mut same = r.clone();
        assert!(!same.settle(TransactionId(4)), "the kernel did not move");
        assert!(same.pending.is_some());
        assert!(r.settle(TransactionId(5)));
        assert_eq!(
            (r.transaction_id, r.pending.is_none()),
            (TransactionId(5), true)
        );
        assert!(r.thins.contains_key(&ThinId(0)));
        assert!(!r.settle(TransactionId(6)), "nothing left to settle");
    }

    #[test]
    fn plain_thin_ids_run_out_after_the_kernels_24_bits() {
        let mut r = record();
        r.next_thin_id = ThinId::MAX;
        assert_eq!(r.allocate_thin_id().unwrap(), ThinId::MAX);
        assert!(matches!(r.allocate_thin_id(), Err(Error::ThinIdsExhausted)));
    }
}
