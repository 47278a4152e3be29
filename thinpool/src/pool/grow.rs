//! Growing a pool's data and metadata online.

use std::fs::{self, OpenOptions};

use super::{Backing, BackingKind, Pool, PoolRecord};
use crate::config;
use crate::error::{Error, Result};
use crate::kernel;
use crate::units::{Bytes, SizeChange};

/// The size `change` asks for `what`, growing from `cur`.
fn target(what: &'static str, change: Option<SizeChange>, cur: Bytes) -> Result<Bytes> {
    let Some(change) = change else { return Ok(cur) };
    let t = change
        .target(cur)
        .ok_or_else(|| Error::invalid(what, "the new size overflows".to_string()))?;
    if t < cur {
        return Err(Error::invalid(
            what,
            format!("{t} is smaller than the current {cur}; shrinking a pool is not supported"),
        ));
    }
    Ok(t)
}

/// The data and metadata sizes a grow of `record`'s pool asks for, checked
/// against the thin-pool target's rules; nothing is changed.
fn plan(
    record: &PoolRecord,
    data: Option<SizeChange>,
    metadata: Option<SizeChange>,
) -> Result<(Bytes, Bytes)> {
    let new_data = target("data size", data, record.data.size)?;
    let new_meta = target("metadata size", metadata, record.metadata.size)?;
    config::check_data_size(new_data, record.block_size)?;
    if new_meta != record.metadata.size || new_data != record.data.size {
        config::check_metadata_size(new_meta, new_data, record.block_size).map_err(
            |e| match e {
                Error::Invalid { reason, .. } if metadata.is_none() => {
                    Error::GrowNeedsMetadata { reason }
                }
                e => e,
            },
        )?;
    }
    Ok((new_data, new_meta))
}

/// Makes a backing hold at least `new`: extends a file of ours, checks
/// that a device has already been grown.
fn extend_backing(b: &Backing, new: Bytes) -> Result<()> {
    match b.kind {
        BackingKind::File => {
            let f = OpenOptions::new()
                .write(true)
                .open(&b.path)
                .map_err(Error::io("opening", &b.path))?;
            if f.metadata()
                .map_err(Error::io("inspecting", &b.path))?
                .len()
                < new.0
            {
                f.set_len(new.0).map_err(Error::io("extending", &b.path))?;
                f.sync_all().map_err(Error::io("syncing", &b.path))?;
            }
        }
        BackingKind::Device => {
            let f = fs::File::open(&b.path).map_err(Error::io("opening", &b.path))?;
            let have = kernel::blockdev_size(&f).map_err(Error::io("sizing", &b.path))?;
            if have < new {
                return Err(Error::DeviceTooSmall {
                    path: b.path.clone(),
                    have,
                    want: new,
                });
            }
        }
    }
    Ok(())
}

impl Pool {
    /// Grows the data and/or metadata of the pool (`None` keeps a size):
    /// online when it is active; when it is not, the next activation
    /// loads the grown devices (the way back for a pool the kernel turned
    /// read-only when its metadata ran out, which it will not grow while
    /// read-only). A loop-backed pool's files are extended; a
    /// device-backed pool's devices must already be large enough.
    ///
    /// Errors: [`Error::Invalid`] for a shrink or a size the rules refuse;
    /// [`Error::GrowNeedsMetadata`] when only the data grows and the
    /// metadata would be too small for it; [`Error::DeviceTooSmall`].
    pub fn grow(&mut self, data: Option<SizeChange>, metadata: Option<SizeChange>) -> Result<()> {
        let (new_data, new_meta) = plan(&self.record, data, metadata)?;
        for (b, new) in [
            (&self.record.data, new_data),
            (&self.record.metadata, new_meta),
        ] {
            if new != b.size {
                extend_backing(b, new)?;
            }
        }
        self.record.data.size = new_data;
        self.record.metadata.size = new_meta;
        self.save()?;
        if !self.active {
            return Ok(());
        }
        self.set_inactive();
        self.adopt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::TransactionId;

    fn record(data: Bytes, metadata: Bytes) -> PoolRecord {
        PoolRecord::sample(data, metadata, TransactionId(0))
    }

    #[test]
    fn plain_grow_plan_refuses_shrinking_and_asks_for_more_metadata() {
        let r = record(Bytes::GIB, Bytes(16 << 20));
        let grown = plan(&r, Some(SizeChange::By(Bytes::GIB)), None).unwrap();
        assert_eq!(grown, (Bytes(2 << 30), Bytes(16 << 20)));
        assert_eq!(plan(&r, None, None).unwrap(), (Bytes::GIB, Bytes(16 << 20)));

        let err = plan(&r, Some(SizeChange::To(Bytes(512 << 20))), None).unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("shrinking a pool is not supported"),
            "{err}"
        );

        // 1T of 64K blocks needs 768M of metadata.
        let err = plan(&r, Some(SizeChange::To(Bytes(1 << 40))), None).unwrap_err();
        assert!(matches!(err, Error::GrowNeedsMetadata { .. }), "{err}");
        assert!(err.to_string().contains("grow the metadata too"), "{err}");
        let err = plan(
            &r,
            Some(SizeChange::To(Bytes(1 << 40))),
            Some(SizeChange::To(Bytes(32 << 20))),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Invalid {
                    what: "metadata size",
                    ..
                }
            ),
            "{err}"
        );
        assert!(plan(
            &r,
            Some(SizeChange::To(Bytes(1 << 40))),
            Some(SizeChange::To(Bytes(768 << 20))),
        )
        .is_ok());
    }
}
