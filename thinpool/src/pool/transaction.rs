//! The pool's side of the thin-device transaction protocol
//! ([`crate::recovery`]): running one change through it, and recovering
//! one a killed process left in flight.

use devicemapper::{ThinPoolStatus, ThinPoolStatusSummary, ThinPoolWorkingStatus};

use super::devices::Listed;
use super::Pool;
use crate::error::{Error, Result};
use crate::killpoint;
use crate::names::Role;
use crate::recovery::{self, PendingOp, Recovery, Settlement};
use std::collections::BTreeSet;

use crate::units::{Bytes, ThinId, TransactionId};

impl Pool {
    /// The kernel's status of a working pool; [`Error::Failed`] when the
    /// kernel has failed it.
    pub(super) fn working_status(&self) -> Result<ThinPoolWorkingStatus> {
        match self.kernel_status()? {
            ThinPoolStatus::Working(w) => Ok(*w),
            ThinPoolStatus::Error | ThinPoolStatus::Fail => Err(Error::Failed),
        }
    }

    /// Refuses changes to a pool the kernel has stopped writing to, and,
    /// for a change that adds a device (`adds_device`), a pool whose data
    /// space is full: the new device's first write would fail (as Docker's
    /// devicemapper driver refuses them). Below the reserve
    /// ([`crate::MinFree`]) of data or metadata space, new devices are
    /// refused too, while there is still room for the devices already
    /// made to write. One status read for all of it.
    fn check_writable(&self, adds_device: bool) -> Result<()> {
        let w = self.working_status()?;
        match w.summary {
            ThinPoolStatusSummary::ReadOnly => return Err(Error::ReadOnly),
            ThinPoolStatusSummary::OutOfSpace if adds_device => return Err(Error::OutOfDataSpace),
            _ => {}
        }
        if !adds_device {
            return Ok(());
        }
        let reserve = self.record.min_free;
        let block = self.record.block_size.bytes().0;
        let meta_block = crate::config::METADATA_BLOCK.0;
        let u = &w.usage;
        for (space, used, total, unit) in [
            ("data", u.used_data.0, u.total_data.0, block),
            ("metadata", u.used_meta.0, u.total_meta.0, meta_block),
        ] {
            let free = total.saturating_sub(used);
            if !reserve.is_above(free, total) {
                return Err(Error::BelowReserve {
                    space,
                    free: Bytes(free * unit),
                    total: Bytes(total * unit),
                    reserve,
                });
            }
        }
        Ok(())
    }

    /// Finishes or drops a pending thin operation a dead process left
    /// (the lock is held: no writer is alive) and removes thin dm devices
    /// whose id the record does not know.
    pub(super) fn recover(&mut self) -> Result<()> {
        let kernel = TransactionId(self.working_status()?.transaction_id);
        let record = self.record.transaction_id;
        if self.record.pending.is_some() {
            match recovery::decide(record, kernel) {
                Recovery::Inconsistent { record, kernel } => {
                    return Err(Error::Mismatch {
                        what: "transaction id".into(),
                        reason: format!("the kernel is at {kernel}, the record at {record} with an operation in flight"),
                    })
                }
                // Committed under the transaction-id protocol: applied as
                // every reader applies it, and written whole, since the
                // change log's entries follow the record's transaction id.
                Recovery::Commit => {
                    self.record.settle(kernel);
                    self.save()?;
                }
                Recovery::AskMetadata => {
                    // A pending operation the metadata cannot be read for
                    // (a read-only pool takes no metadata snapshot) stays
                    // pending: opening still works (status, grow); new
                    // changes are refused until it is settled.
                    let _ = self.settle_by_metadata();
                }
            }
        } else if kernel != record {
            return Err(Error::Mismatch {
                what: "transaction id".into(),
                reason: format!("the kernel is at {kernel}, the record at {record}"),
            });
        }
        for id in self.unknown_thin_devices(&self.listed()?) {
            self.remove_thin_dev(id)?;
        }
        Ok(())
    }

    /// Settles the pending operation by whether its thin id is in the
    /// kernel's metadata ([`recovery::decide_by_metadata`]), and writes the
    /// record.
    fn settle_by_metadata(&mut self) -> Result<()> {
        let Some(op) = self.record.pending.clone() else {
            return Ok(());
        };
        let id = op.thin_id();
        let present = self.metadata_ids()?.contains(&id);
        match recovery::decide_by_metadata(&op, present) {
            Settlement::Commit => self.record.commit(op),
            Settlement::Drop => {
                self.remove_thin_dev(id)?;
                self.record.pending = None;
            }
            Settlement::Redo => {
                self.remove_thin_dev(id)?;
                self.delete_if_present(id)?;
                self.record.commit(op);
            }
        }
        self.save()
    }

    /// The thin devices the kernel has for this pool whose ids the record
    /// does not know: what a dead process left ([`Pool::recover`] removes
    /// them).
    /// `listed` is what the kernel has.
    pub(super) fn unknown_thin_devices(&self, listed: &Listed) -> Vec<ThinId> {
        listed
            .names()
            .filter_map(|name| match self.names.role_of(name) {
                Some(Role::Thin(id)) if !self.record.thins.contains_key(&id) => Some(id),
                _ => None,
            })
            .collect()
    }

    /// Runs one thin-device change through the protocol of
    /// [`crate::recovery`]: record it as pending (one entry in the change
    /// log, synced), send `msg` (the kernel commits it), then write its
    /// commit entry (not synced: a reader that finds no commit asks the
    /// metadata) and commit it in memory. `before` runs just before `msg`
    /// is sent, `after` just after (to suspend and resume an origin
    /// around a snapshot).
    pub(super) fn transact(
        &mut self,
        op: PendingOp,
        msg: &str,
        before: impl FnOnce(&Self) -> Result<()>,
        after: impl FnOnce(&Self),
    ) -> Result<()> {
        tracing::trace_span!(crate::phase::CHECK)
            .in_scope(|| self.check_writable(op.adds_device()))?;
        self.finish_pending()?;
        self.record.pending = Some(op.clone());
        tracing::trace_span!(crate::phase::LOG).in_scope(|| self.save_pending())?;
        killpoint::here(killpoint::POOL_PENDING_RECORDED);
        let sent = tracing::trace_span!(crate::phase::MESSAGE).in_scope(|| {
            before(self).and_then(|()| {
                let sent = self.message(msg);
                after(self);
                sent
            })
        });
        match sent {
            Ok(()) => {
                killpoint::here(killpoint::POOL_MESSAGE_SENT);
                self.record.commit(op);
                tracing::trace_span!(crate::phase::LOG).in_scope(|| self.save_committed())?;
                killpoint::here(killpoint::POOL_COMMIT_LOGGED);
                Ok(())
            }
            Err(causal) => {
                // Undo what the kernel may have done; a delete is left
                // pending and finished by the next open. A new device whose
                // delete fails stays pending too, so no id is forgotten in
                // the metadata: the next open (or change) settles it.
                if let PendingOp::Create { id, .. } | PendingOp::Snapshot { id, .. } = op {
                    if let Err(undo) = self.delete_if_present(id) {
                        return Err(Error::Rollback {
                            causal: Box::new(causal),
                            rollback: Box::new(undo),
                        });
                    }
                    self.record.pending = None;
                    self.save()?;
                }
                Err(causal)
            }
        }
    }

    /// Deletes thin id `id` from the pool's metadata, if it is there: a
    /// failed `delete` is checked against the metadata (`thin_ls`), so "no
    /// such device" is success and any other failure is reported.
    fn delete_if_present(&self, id: ThinId) -> Result<()> {
        let Err(e) = self.message(&format!("delete {id}")) else {
            return Ok(());
        };
        match self.metadata_ids() {
            Ok(ids) if !ids.contains(&id) => Ok(()),
            Ok(_) => Err(e),
            Err(check) => Err(Error::Rollback {
                causal: Box::new(e),
                rollback: Box::new(check),
            }),
        }
    }

    /// Settles an operation left pending by a dead process (or by an
    /// undo whose delete failed) before a new one, and refuses the new one
    /// while it cannot be settled.
    fn finish_pending(&mut self) -> Result<()> {
        let Some(op) = self.record.pending.clone() else {
            return Ok(());
        };
        self.settle_by_metadata().map_err(|e| Error::UndoPending {
            id: op.thin_id(),
            reason: e.to_string(),
        })
    }

    /// Every thin id in the pool's metadata, active or not, read with
    /// `thin_ls` from a metadata snapshot.
    pub(super) fn metadata_ids(&self) -> Result<BTreeSet<ThinId>> {
        Ok(self.usage_locked()?.into_keys().collect())
    }

    /// Deletes thin ids the metadata holds that the record does not know
    /// (neither a device nor the pending operation's): what an older
    /// rollback or a lost record left. Returns what it freed.
    pub fn free_orphan_ids(&mut self) -> Result<Vec<ThinId>> {
        self.exclusive(|p| {
            // A read-only pool takes no metadata snapshot and no delete:
            // the orphans wait for an activation that finds it writable.
            if p.working_status()?.summary == ThinPoolStatusSummary::ReadOnly {
                return Ok(vec![]);
            }
            let pending = p.record.pending.as_ref().map(PendingOp::thin_id);
            let orphans: Vec<ThinId> = p
                .metadata_ids()?
                .into_iter()
                .filter(|id| !p.record.thins.contains_key(id) && Some(*id) != pending)
                .collect();
            for id in &orphans {
                p.remove_thin_dev(*id)?;
                p.delete_if_present(*id)?;
            }
            Ok(orphans)
        })
    }
}
