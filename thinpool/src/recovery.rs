//! What to do with a thin-device operation a killed process left in flight.
//!
//! Every change to the pool's set of thin devices follows one protocol:
//!
//! 1. the record is written with the operation as `pending` and the
//!    transaction id it will reach (`record tx + 1`);
//! 2. the dm messages are sent: the change itself (`create_thin`,
//!    `create_snap`, `delete`), then `set_transaction_id R R+1`; the
//!    thin-pool target commits its metadata after each message;
//! 3. once `set_transaction_id` returns, the kernel has committed R+1 with
//!    the change: that is the commit. The record is not written again
//!    (one durable write per change); the next change writes it with this
//!    one applied, and meanwhile every reader that finds the kernel at
//!    R+1 applies the pending operation as committed.
//!
//! A process killed anywhere leaves the kernel at transaction R (the change
//! may or may not have been committed) or R+1 (it was). [`decide`] maps that
//! to an action, and the pool applies it the next time it is opened (or, for
//! a commit, whenever it reads the record).

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

/// What recovery does with a pending operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The kernel committed it: apply it to the record.
    Commit,
    /// The kernel may have half of it: delete the new thin id (ignoring
    /// "no such device") and drop the operation.
    Undo,
    /// Finish it: send the messages again (ignoring "no such device"),
    /// then commit. Used for deletes, which the user already asked for.
    Redo,
    /// The kernel is at a transaction the protocol cannot reach.
    Inconsistent {
        /// The record's committed transaction id.
        record: TransactionId,
        /// The kernel's.
        kernel: TransactionId,
    },
}

/// Decides the recovery of `op`, given the record's committed transaction
/// id and the one the kernel reports.
pub fn decide(op: &PendingOp, record: TransactionId, kernel: TransactionId) -> Recovery {
    if kernel == record.next() {
        Recovery::Commit
    } else if kernel == record {
        match op {
            PendingOp::Create { .. } | PendingOp::Snapshot { .. } => Recovery::Undo,
            PendingOp::Delete { .. } => Recovery::Redo,
        }
    } else {
        Recovery::Inconsistent { record, kernel }
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
    fn plain_recovery_commits_what_the_kernel_committed() {
        let r = TransactionId(7);
        assert_eq!(decide(&create(), r, TransactionId(8)), Recovery::Commit);
        assert_eq!(
            decide(&PendingOp::Delete { id: ThinId(1) }, r, TransactionId(8)),
            Recovery::Commit
        );
    }

    #[test]
    fn plain_recovery_undoes_creates_and_redoes_deletes_left_half_done() {
        let r = TransactionId(7);
        assert_eq!(decide(&create(), r, r), Recovery::Undo);
        let snap = PendingOp::Snapshot {
            id: ThinId(4),
            origin: ThinId(3),
            size: Bytes::GIB,
            tag: "s".into(),
        };
        assert_eq!(decide(&snap, r, r), Recovery::Undo);
        assert_eq!(
            decide(&PendingOp::Delete { id: ThinId(1) }, r, r),
            Recovery::Redo
        );
    }

    #[test]
    fn plain_recovery_refuses_transactions_the_protocol_cannot_reach() {
        let r = TransactionId(7);
        for k in [0, 6, 9, 100] {
            assert_eq!(
                decide(&create(), r, TransactionId(k)),
                Recovery::Inconsistent {
                    record: r,
                    kernel: TransactionId(k)
                }
            );
        }
    }
}
