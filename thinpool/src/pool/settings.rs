//! The settings a pool changes while it runs (reserve, full-pool policy,
//! queue timeout, autoextend), the kernel table that carries them, and
//! the pool growing by itself.

use std::str::FromStr;

use devicemapper::{DataBlocks, TargetParams, ThinPoolStatusSummary, ThinPoolTargetParams};
use serde::Serialize;

use super::create::check_autoextend;
use super::devices::LiveTable;
use super::Pool;
use crate::config::{Autoextend, MinFree, OnFull, QueueTimeout, Threshold};
use crate::error::{Error, Result};
use crate::names::Role;
use crate::units::{BlockSize, Bytes, SizeChange};

/// The threshold an autoextend turned on without one uses.
pub const DEFAULT_THRESHOLD: u8 = 80;
/// The step an autoextend turned on without one uses: this share of the
/// data size (LVM's `thin_pool_autoextend_percent` default).
pub const DEFAULT_STEP_PERCENT: u64 = 20;

/// A change to autoextend: the settings given, merged into the pool's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AutoextendChange {
    /// The new threshold.
    pub threshold: Option<Threshold>,
    /// The new step.
    pub step: Option<Bytes>,
    /// The new maximum data size.
    pub max: Option<Bytes>,
}

impl AutoextendChange {
    /// Whether nothing is asked.
    pub fn is_empty(&self) -> bool {
        *self == AutoextendChange::default()
    }

    /// `current` with this change applied, for a pool of `data` in
    /// `block` blocks; turning autoextend on takes 80% and a step of 20%
    /// of the data unless given, and needs a maximum.
    ///
    /// Errors: [`Error::Invalid`] when the maximum is missing.
    pub fn merge(
        &self,
        current: Option<Autoextend>,
        data: Bytes,
        block: BlockSize,
    ) -> Result<Option<Autoextend>> {
        if self.is_empty() {
            return Ok(current);
        }
        let default_step = || {
            let b = block.bytes().0;
            Bytes((data.0 * DEFAULT_STEP_PERCENT / 100).div_ceil(b).max(1) * b)
        };
        let max = match (self.max, current) {
            (Some(m), _) => m,
            (None, Some(c)) => c.max,
            (None, None) => return Err(Error::invalid(
                "autoextend max",
                "turning autoextend on needs --autoextend-max: the largest the data may grow to",
            )),
        };
        Ok(Some(Autoextend {
            threshold: self
                .threshold
                .or(current.map(|c| c.threshold))
                .unwrap_or(Threshold::new(DEFAULT_THRESHOLD).expect("in range")),
            step: self
                .step
                .or(current.map(|c| c.step))
                .unwrap_or_else(default_step),
            max,
        }))
    }
}

/// A change to a pool's settings; `None` keeps one.
#[derive(Clone, Debug, Default)]
pub struct SettingsChange {
    /// The reserve below which new thin devices are refused.
    pub min_free: Option<MinFree>,
    /// What a write to the full pool does.
    pub on_full: Option<OnFull>,
    /// How long a queued write waits.
    pub queue_timeout: Option<QueueTimeout>,
    /// Changes to autoextend.
    pub autoextend: AutoextendChange,
    /// Turns autoextend off (wins over `autoextend`).
    pub no_autoextend: bool,
}

/// What an autoextend check found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Autoextended {
    /// The pool has no autoextend settings.
    Off,
    /// Neither data nor metadata use has reached the threshold.
    NotNeeded,
    /// The pool grew.
    Grew {
        /// The data size before and after.
        data: (Bytes, Bytes),
        /// The metadata size before and after.
        metadata: (Bytes, Bytes),
    },
    /// Use has reached the threshold but the data is at its maximum (or
    /// the metadata at the target's).
    AtMaximum {
        /// `data` or `metadata`.
        space: &'static str,
        /// How much of it is in use, in percent.
        used_percent: u8,
    },
}

/// `used` of `total` in whole percent.
fn percent(used: u64, total: u64) -> u8 {
    u8::try_from(u128::from(used) * 100 / u128::from(total.max(1))).unwrap_or(100)
}

impl Pool {
    /// Changes the pool's settings; an active pool's kernel table and the
    /// kernel's queue timeout follow at once.
    ///
    /// Errors: [`Error::Invalid`] for autoextend settings the pool cannot
    /// take (a device-backed pool, a maximum below its data size);
    /// those of writing the record and reloading the table.
    pub fn set(&mut self, change: &SettingsChange) -> Result<()> {
        self.exclusive(|p| {
            let mut r = p.record.clone();
            if let Some(m) = change.min_free {
                r.min_free = m;
            }
            if let Some(o) = change.on_full {
                r.on_full = o;
            }
            if let Some(t) = change.queue_timeout {
                r.queue_timeout = t;
            }
            r.autoextend = if change.no_autoextend {
                None
            } else {
                change
                    .autoextend
                    .merge(r.autoextend, r.data.size, r.block_size)?
            };
            if let Some(a) = &r.autoextend {
                check_autoextend(a, r.data.size, r.block_size, [r.data.kind, r.metadata.kind])?;
            }
            p.record = r;
            p.save()?;
            if p.active {
                p.set_inactive();
                p.adopt()?;
            }
            Ok(())
        })
    }

    /// The kernel's low-water mark for this pool, in data blocks: the
    /// free blocks left at the autoextend threshold (0 without one).
    pub(super) fn low_water_blocks(&self) -> u64 {
        let blocks = self.record.data.size.0 / self.record.block_size.bytes().0;
        self.record
            .autoextend
            .map_or(0, |a| a.threshold.low_water(blocks))
    }

    /// Reloads the pool's table if the kernel's low-water mark or
    /// features are not the record's.
    pub(super) fn sync_pool_params(&mut self) -> Result<()> {
        let Some(live) = self.kernel_table(Role::Pool)? else {
            return Ok(());
        };
        let (have, want) = self.pool_params(&live)?;
        if have == want {
            return Ok(());
        }
        self.reload_table(Role::Pool, live.sectors, "thin-pool", &want.param_str())
    }

    /// The parameters of the kernel's pool table `live`, and the same with
    /// the record's low-water mark and features.
    pub(super) fn pool_params(
        &self,
        live: &LiveTable,
    ) -> Result<(ThinPoolTargetParams, ThinPoolTargetParams)> {
        let have = ThinPoolTargetParams::from_str(&format!("thin-pool {}", live.params))
            .map_err(Error::dm("reading the pool's table"))?;
        let want = ThinPoolTargetParams::new(
            have.metadata_dev,
            have.data_dev,
            have.data_block_size,
            DataBlocks(self.low_water_blocks()),
            super::activate::pool_features(self.record.on_full),
        );
        Ok((have, want))
    }

    /// Grows the pool by its autoextend step if its data or metadata use
    /// has reached the threshold: the data by the step (up to the
    /// maximum), the metadata by the step's share of its size, and always
    /// as much as the grown data needs. Takes the pool's lock for the
    /// check and the grow.
    ///
    /// Errors: [`Error::Inactive`]; [`Error::Failed`] for a pool the
    /// kernel failed; those of [`Pool::grow`].
    pub fn autoextend(&mut self) -> Result<Autoextended> {
        self.exclusive(|p| {
            let Some(a) = p.record.autoextend else {
                return Ok(Autoextended::Off);
            };
            let w = p.working_status()?;
            let u = &w.usage;
            let data_hit = a.threshold.is_reached(u.used_data.0, u.total_data.0)
                || w.summary == ThinPoolStatusSummary::OutOfSpace;
            let meta_hit = a.threshold.is_reached(u.used_meta.0, u.total_meta.0);
            if !data_hit && !meta_hit {
                return Ok(Autoextended::NotNeeded);
            }
            let (data, meta, block) = (
                p.record.data.size,
                p.record.metadata.size,
                p.record.block_size,
            );
            let new_data = if data_hit { a.next_data(data) } else { None };
            // The metadata grows when it reached the threshold itself, or
            // when the grown data needs more than it has.
            let data_needs_more = new_data
                .is_some_and(|nd| crate::config::check_metadata_size(meta, nd, block).is_err());
            let new_meta = a
                .next_metadata(meta, data, block)
                .filter(|_| meta_hit || data_needs_more);
            if new_data.is_none() && new_meta.is_none() {
                let (space, used_percent) = if data_hit {
                    ("data", percent(u.used_data.0, u.total_data.0))
                } else {
                    ("metadata", percent(u.used_meta.0, u.total_meta.0))
                };
                return Ok(Autoextended::AtMaximum {
                    space,
                    used_percent,
                });
            }
            p.grow(new_data.map(SizeChange::To), new_meta.map(SizeChange::To))?;
            Ok(Autoextended::Grew {
                data: (data, p.record.data.size),
                metadata: (meta, p.record.metadata.size),
            })
        })
    }
}
