//! What to do with a thin-device operation a killed process left in flight.
//!
//! Every change to the pool's set of thin devices follows one protocol:
//!
//! 1. the operation is recorded durably as `pending`: an entry in the
//!    pool's change log ([`crate::pool::log`], one sector and one
//!    `fdatasync`), or a whole record write when the log is full;
//! 2. its dm message is sent (`create_thin`, `create_snap`, `delete`); the
//!    thin-pool target commits its metadata before the message returns,
//!    so from then on the change survives a power cut;
//! 3. a commit entry follows in the log, written without a sync: any
//!    later reader sees the operation committed, and one that finds no
//!    entry after it (a process killed before writing it, or a power cut
//!    that lost it) asks the kernel's metadata.
//!
//! Nothing here moves the kernel's transaction id: a `set_transaction_id`
//! after each change would be a second metadata commit, as costly as the
//! change itself. The record's transaction id stays the kernel's, checked
//! at every open. A record written by the earlier protocol, which moved it
//! with each change, still reads: a kernel one transaction past it
//! committed its pending operation.
//!
//! So a pending operation that no entry follows is settled by whether its
//! thin id is in the kernel's metadata, read from a metadata snapshot
//! ([`decide_by_metadata`]): a new device that is there was made (the
//! layer that asked for it may have reported success before the power
//! went), one that is not was never made; a deleted device that is still
//! there is deleted again. The pool applies this the next time it is
//! opened, or changed, holding its lock: no writer is alive then.

use serde::{Deserialize, Serialize};

use crate::units::{Bytes, ThinId, TransactionId};

/// An operation recorded before its dm messages are sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PendingOp {
    /// `create_thin`: a new empty thin device.
    Create {
        /// The new device's id.
        id: ThinId,
        /// Its virtual size.
        size: Bytes,
        /// Its owner's label.
        tag: String,
    },
    /// `create_snap`: a new thin device sharing `origin`'s blocks.
    Snapshot {
        /// The new device's id.
        id: ThinId,
        /// The device it is a snapshot of.
        origin: ThinId,
        /// Its virtual size (the origin's).
        size: Bytes,
        /// Its owner's label.
        tag: String,
    },
    /// `delete`: a thin device and the blocks only it maps.
    Delete {
        /// The device's id.
        id: ThinId,
    },
}

impl PendingOp {
    /// Whether the operation makes a new thin device (and so needs room
    /// in the pool).
    pub fn adds_device(&self) -> bool {
        !matches!(self, PendingOp::Delete { .. })
    }

    /// The thin device the operation makes or deletes.
    pub fn thin_id(&self) -> ThinId {
        match self {
            PendingOp::Create { id, .. }
            | PendingOp::Snapshot { id, .. }
            | PendingOp::Delete { id } => *id,
        }
    }
}

/// What recovery does with a pending operation, from transaction ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The kernel committed it under the transaction-id protocol: apply
    /// it to the record.
    Commit,
    /// Whether the kernel committed it is in its metadata: read whether
    /// the thin id is there, then [`decide_by_metadata`].
    AskMetadata,
    /// The kernel is at a transaction the protocol cannot reach.
    Inconsistent {
        /// The record's transaction id.
        record: TransactionId,
        /// The kernel's.
        kernel: TransactionId,
    },
}

/// Decides the recovery of a pending operation from the record's
/// transaction id and the one the kernel reports: the same one asks the
/// metadata; one past it is a commit of the earlier protocol, which moved
/// it with each change.
pub fn decide(record: TransactionId, kernel: TransactionId) -> Recovery {
    if kernel == record.next() {
        Recovery::Commit
    } else if kernel == record {
        Recovery::AskMetadata
    } else {
        Recovery::Inconsistent { record, kernel }
    }
}

/// How a pending operation is settled once the kernel's metadata has
/// been read ([`decide_by_metadata`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// The kernel committed it: apply it to the record.
    Commit,
    /// The kernel never made the new device: drop the operation.
    Drop,
    /// Finish it: send the delete again, then commit. For deletes, which
    /// the user already asked for.
    Redo,
}

/// Settles `op` once the kernel's metadata says whether its thin id is
/// there (`present`).
pub fn decide_by_metadata(op: &PendingOp, present: bool) -> Settlement {
    match (op.adds_device(), present) {
        (true, true) | (false, false) => Settlement::Commit,
        (true, false) => Settlement::Drop,
        (false, true) => Settlement::Redo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> PendingOp {
        PendingOp::Create {
            id: ThinId(3),
            size: Bytes::GIB,
            tag: "t".into(),
        }
    }

    #[test]
    fn plain_recovery_asks_the_metadata_and_commits_what_the_kernel_made() {
        let r = TransactionId(7);
        assert_eq!(decide(r, r), Recovery::AskMetadata);
        let snap = PendingOp::Snapshot {
            id: ThinId(4),
            origin: ThinId(3),
            size: Bytes::GIB,
            tag: "s".into(),
        };
        let delete = PendingOp::Delete { id: ThinId(1) };
        assert_eq!(decide_by_metadata(&create(), true), Settlement::Commit);
        assert_eq!(decide_by_metadata(&snap, true), Settlement::Commit);
        assert_eq!(decide_by_metadata(&snap, false), Settlement::Drop);
        assert_eq!(decide_by_metadata(&delete, true), Settlement::Redo);
        assert_eq!(decide_by_metadata(&delete, false), Settlement::Commit);
    }

    #[test]
    fn plain_recovery_commits_what_the_transaction_id_protocol_committed() {
        let r = TransactionId(7);
        assert_eq!(decide(r, TransactionId(8)), Recovery::Commit);
    }

    #[test]
    fn plain_recovery_refuses_transactions_the_protocol_cannot_reach() {
        let r = TransactionId(7);
        for k in [0, 6, 9, 100] {
            assert_eq!(
                decide(r, TransactionId(k)),
                Recovery::Inconsistent {
                    record: r,
                    kernel: TransactionId(k)
                }
            );
        }
    }
}
