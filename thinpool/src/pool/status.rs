//! What a pool reports: its status, from the record and the kernel, and
//! the space each thin device takes, from `thin_ls`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use devicemapper::{ThinPoolStatus, ThinPoolStatusSummary};
use serde::{Deserialize, Serialize};

use super::{Backing, BackingKind, Pool};
use crate::config::{Autoextend, MinFree, OnFull, QueueTimeout, METADATA_BLOCK};
use crate::error::{Error, Result};
use crate::loopback;
use crate::names::Role;
use crate::units::{Bytes, ThinId, TransactionId};

/// The kernel's view of a pool's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// Working normally.
    Rw,
    /// The data is full: writes to new blocks fail or queue (see
    /// [`OnFull`]) until the pool grows.
    OutOfDataSpace,
    /// The metadata is full or damaged: no block can be allocated.
    ReadOnly,
    /// The kernel has failed the pool.
    Fail,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Rw => "rw",
            PoolMode::OutOfDataSpace => "out-of-data-space",
            PoolMode::ReadOnly => "read-only",
            PoolMode::Fail => "fail",
        })
    }
}

impl From<ThinPoolStatusSummary> for PoolMode {
    fn from(s: ThinPoolStatusSummary) -> PoolMode {
        match s {
            ThinPoolStatusSummary::Good => PoolMode::Rw,
            ThinPoolStatusSummary::OutOfSpace => PoolMode::OutOfDataSpace,
            ThinPoolStatusSummary::ReadOnly => PoolMode::ReadOnly,
        }
    }
}

/// What to do about a pool in `mode` (`None` for `rw`).
pub fn advice(mode: PoolMode, on_full: OnFull, queue_timeout: QueueTimeout) -> Option<String> {
    match mode {
        PoolMode::Rw => None,
        PoolMode::OutOfDataSpace => Some(format!(
            "the data space is full: writes to new blocks {}; run `thinlayer pool grow --data-size +SIZE` (or free space), and the pool returns to rw by itself",
            match on_full {
                OnFull::Error => "fail with ENOSPC".to_string(),
                OnFull::Queue => format!("wait up to {queue_timeout}, then fail"),
            }
        )),
        PoolMode::ReadOnly => Some(
            "the metadata is full or damaged, so no block can be allocated, and the kernel grows no read-only pool: unmount its layers, run `thinlayer pool deactivate`, `thinlayer pool grow --metadata-size +SIZE` and `thinlayer pool activate`; if it stays read-only, deactivate it and run `thinlayer pool repair`".into(),
        ),
        PoolMode::Fail => Some(
            "the kernel has failed the pool: unmount its layers, run `thinlayer pool deactivate`, then `thinlayer pool repair`".into(),
        ),
    }
}

/// A pool's status: what the record says, and what the kernel says when
/// the pool is active. The serialized field names are a stable interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolStatus {
    /// The pool's id.
    pub id: String,
    /// The pool's directory.
    pub dir: PathBuf,
    /// Whether the pool's dm devices are up.
    pub active: bool,
    /// The kernel's view of the pool's health; `None` while inactive.
    pub mode: Option<PoolMode>,
    /// Whether the kernel flagged the metadata for a check; `None` while
    /// inactive.
    pub needs_check: Option<bool>,
    /// The pool's allocation unit.
    pub block_size: Bytes,
    /// What a write to the full pool does.
    pub on_full: OnFull,
    /// The free space below which new thin devices are refused.
    pub min_free: MinFree,
    /// How the pool grows by itself; `None` for never.
    pub autoextend: Option<Autoextend>,
    /// How long a queued write waits in the full pool, as the record asks.
    pub queue_timeout: QueueTimeout,
    /// The kernel's `no_space_timeout` in seconds (one for every pool),
    /// when it can be read.
    pub kernel_queue_timeout: Option<u32>,
    /// What to do about the pool's mode, when it is not `rw`.
    pub advice: Option<String>,
    /// The kernel's transaction id while active, the record's otherwise.
    pub transaction_id: TransactionId,
    /// How many thin devices the record has.
    pub thin_devices: usize,
    /// The data space.
    pub data: SpaceStatus,
    /// The metadata space.
    pub metadata: SpaceStatus,
}

/// The size and use of a pool's data or metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpaceStatus {
    /// Its size: the kernel's while active, the record's otherwise.
    pub total_bytes: Bytes,
    /// How much of it is allocated; `None` while inactive.
    pub used_bytes: Option<Bytes>,
    /// A file of ours or a device of the user's.
    pub backing: BackingKind,
    /// The backing file or device.
    pub path: PathBuf,
    /// The loop device over a backing file, when one is attached.
    pub loop_device: Option<PathBuf>,
}

impl SpaceStatus {
    /// The record's view of a backing: its size, no use known.
    fn of(b: &Backing) -> SpaceStatus {
        let loop_device = match b.kind {
            BackingKind::File => loopback::find(&b.path).ok().flatten().map(|l| l.path),
            BackingKind::Device => None,
        };
        SpaceStatus {
            total_bytes: b.size,
            used_bytes: None,
            backing: b.kind,
            path: b.path.clone(),
            loop_device,
        }
    }
}

/// Space one thin device takes in the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThinUsage {
    /// Bytes of the pool the device maps.
    pub mapped: Bytes,
    /// Bytes only this device maps: freed when it is deleted.
    pub exclusive: Bytes,
    /// Bytes it shares with snapshots or origins.
    pub shared: Bytes,
}

/// Parses `thin_ls --no-headers -o DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES`.
///
/// Errors: [`Error::Tool`] naming the first line that is not four numbers.
pub fn parse_thin_ls(out: &str) -> Result<BTreeMap<ThinId, ThinUsage>> {
    let bad = |line: &str| Error::Tool {
        tool: "thin_ls".into(),
        detail: format!("unexpected output line '{line}'"),
    };
    let mut map = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| -> Result<u64> {
            f.get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(line))
        };
        if f.len() != 4 {
            return Err(bad(line));
        }
        let id = u32::try_from(n(0)?).map_err(|_| bad(line))?;
        map.insert(
            ThinId(id),
            ThinUsage {
                mapped: Bytes(n(1)?),
                exclusive: Bytes(n(2)?),
                shared: Bytes(n(3)?),
            },
        );
    }
    Ok(map)
}

impl Pool {
    /// Bytes each thin device maps, maps alone, and shares with others,
    /// read with `thin_ls` from a metadata snapshot of the live pool.
    ///
    /// Errors: [`Error::Inactive`]; [`Error::Tool`] when `thin_ls` is
    /// missing or fails; [`Error::Dm`] when the snapshot cannot be taken.
    pub fn usage(&mut self) -> Result<BTreeMap<ThinId, ThinUsage>> {
        // One metadata snapshot at a time: under the lock.
        self.exclusive(|p| p.usage_locked())
    }

    pub(super) fn usage_locked(&self) -> Result<BTreeMap<ThinId, ThinUsage>> {
        let meta = self.devnode(Role::Meta)?;
        // A snapshot left held by a killed process blocks a new one.
        let _ = self.message("release_metadata_snap");
        self.message("reserve_metadata_snap")?;
        let out = super::tools::run_ok(
            Command::new("thin_ls")
                .args([
                    "--metadata-snap",
                    "--no-headers",
                    "-o",
                    "DEV,MAPPED_BYTES,EXCLUSIVE_BYTES,SHARED_BYTES",
                ])
                .arg(&meta),
            "thin_ls",
        );
        let released = self.message("release_metadata_snap");
        let out = out?;
        released?;
        parse_thin_ls(&String::from_utf8_lossy(&out.stdout))
    }

    /// The pool's state, from the record and, when active, the kernel.
    ///
    /// Errors: [`Error::Dm`] when the kernel's status cannot be read.
    pub fn status(&self) -> Result<PoolStatus> {
        let r = &self.record;
        let mut st = PoolStatus {
            id: r.id.to_string(),
            dir: self.dir.clone(),
            active: self.active,
            mode: None,
            needs_check: None,
            block_size: r.block_size.bytes(),
            on_full: r.on_full,
            min_free: r.min_free,
            autoextend: r.autoextend,
            queue_timeout: r.queue_timeout,
            kernel_queue_timeout: crate::kernel::no_space_timeout(),
            advice: None,
            transaction_id: r.transaction_id,
            thin_devices: r.thins.len(),
            data: SpaceStatus::of(&r.data),
            metadata: SpaceStatus::of(&r.metadata),
        };
        if self.active {
            match self.kernel_status()? {
                ThinPoolStatus::Working(w) => {
                    let bs = r.block_size.bytes().0;
                    st.transaction_id = TransactionId(w.transaction_id);
                    st.data.used_bytes = Some(Bytes(w.usage.used_data.0 * bs));
                    st.data.total_bytes = Bytes(w.usage.total_data.0 * bs);
                    st.metadata.used_bytes = Some(Bytes(w.usage.used_meta.0 * METADATA_BLOCK.0));
                    st.metadata.total_bytes = Bytes(w.usage.total_meta.0 * METADATA_BLOCK.0);
                    st.needs_check = Some(w.needs_check);
                    st.mode = Some(w.summary.into());
                }
                ThinPoolStatus::Error | ThinPoolStatus::Fail => st.mode = Some(PoolMode::Fail),
            }
        }
        st.advice = st.mode.and_then(|m| advice(m, r.on_full, r.queue_timeout));
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_thin_ls_output_parses_per_device() {
        let m = parse_thin_ls("     0   1048576  65536  983040\n  12  0 0 0\n").unwrap();
        assert_eq!(m[&ThinId(0)].exclusive, Bytes(65536));
        assert_eq!(m[&ThinId(0)].shared, Bytes(983040));
        assert_eq!(m[&ThinId(12)], ThinUsage::default());
        assert!(parse_thin_ls("0 1 2\n").is_err());
        assert!(parse_thin_ls("x 1 2 3\n").is_err());
    }
}
