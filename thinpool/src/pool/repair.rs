//! Rebuilding damaged metadata with `thin_repair`, as `lvconvert
//! --repair` does: into a fresh metadata file, keeping the damaged one
//! for inspection, then reconciling the record with what survived.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::activate::MetadataCheck;
use super::tools::{on_block_device, run_ok, thin_check};
use super::{BackingKind, Pool};
use crate::error::{Error, Result};
use crate::kernel::Superblock;
use crate::units::ThinId;

/// What [`Pool::repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    /// Where the damaged metadata was kept.
    pub damaged_copy: PathBuf,
    /// Thin devices the record had but the repaired metadata lacks, with
    /// their tags: gone, and dropped from the record.
    pub lost: Vec<(ThinId, String)>,
    /// Thin ids the repaired metadata had but the record did not: freed.
    pub freed: Vec<ThinId>,
}

impl Pool {
    /// Rebuilds the metadata of an inactive, file-backed pool with
    /// `thin_repair` into a fresh file, keeps the damaged one beside it
    /// (`metadata.damaged-<unix time>`), puts the repaired one in its
    /// place, activates the pool (checked again), and reconciles the
    /// record: devices the metadata lost are dropped and reported, ids
    /// it has that the record does not are freed.
    ///
    /// Crash safety: the damaged file is linked to its new name before the
    /// repaired one is renamed over it, so the metadata path always holds
    /// one of the two; a repair killed at any point can be run again.
    ///
    /// Errors: [`Error::Precondition`] for an active pool or metadata on a
    /// device; [`Error::Tool`] when `thin_repair` fails or its output does
    /// not pass `thin_check` (nothing is changed then).
    pub fn repair(&mut self) -> Result<Repaired> {
        if self.active {
            return Err(Error::Precondition(
                "the pool is active; its metadata is repaired only while it is deactivated".into(),
            ));
        }
        if self.record.metadata.kind != BackingKind::File {
            return Err(Error::Precondition(format!(
                "the metadata is on device {}; repair it with thin_repair into another device by hand",
                self.record.metadata.path.display()
            )));
        }
        let meta = self.record.metadata.path.clone();
        let fresh = meta.with_extension("repairing");
        let f = fs::File::create(&fresh).map_err(Error::io("creating", &fresh))?;
        f.set_len(self.record.metadata.size.0)
            .map_err(Error::io("sizing", &fresh))?;
        drop(f);
        let made = on_block_device(&meta, |input| {
            on_block_device(&fresh, |output| {
                run_ok(
                    Command::new("thin_repair")
                        .arg("-i")
                        .arg(input)
                        .arg("-o")
                        .arg(output),
                    "thin_repair",
                )
                .map(drop)
            })
        })
        .and_then(|()| thin_check(&fresh, &[]));
        if let Err(e) = made {
            let _ = fs::remove_file(&fresh);
            return Err(e);
        }
        let sb = Superblock::read(&fresh)?.ok_or_else(|| Error::Tool {
            tool: "thin_repair".into(),
            detail: "its output holds no superblock".into(),
        })?;
        let damaged = meta.with_file_name(format!(
            "{}.damaged-{}",
            meta.file_name().unwrap_or_default().to_string_lossy(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        fs::hard_link(&meta, &damaged)
            .map_err(Error::io("keeping the damaged metadata as", &damaged))?;
        fs::rename(&fresh, &meta).map_err(Error::io("putting the repaired metadata at", &meta))?;
        let parent = meta.parent().unwrap_or(std::path::Path::new("."));
        crate::record::sync_dir(parent).map_err(Error::io("syncing", parent))?;
        // The repaired metadata is the truth now: its transaction, and an
        // operation left in flight is settled by what it holds (below). A
        // change committed under the transaction-id protocol is the
        // record's first.
        self.record.settle(sb.transaction_id);
        self.record.transaction_id = sb.transaction_id;
        let pending = self.record.pending.take();
        self.save()?;
        self.activate_with(MetadataCheck::Full)?;
        let ids = self.metadata_ids()?;
        if let Some(op) = pending {
            // A new device the metadata has was made (its layer may have
            // reported success); a deleted one still there is an orphan,
            // freed below.
            if !op.adds_device() || ids.contains(&op.thin_id()) {
                self.record.commit(op);
            }
        }
        let lost: Vec<(ThinId, String)> = self
            .record
            .thins
            .iter()
            .filter(|(id, _)| !ids.contains(id))
            .map(|(id, t)| (*id, t.tag.clone()))
            .collect();
        for (id, _) in &lost {
            self.record.thins.remove(id);
        }
        self.save()?;
        let freed = self.free_orphan_ids()?;
        Ok(Repaired {
            damaged_copy: damaged,
            lost,
            freed,
        })
    }
}
