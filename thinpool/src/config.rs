//! The pool's parameters, their defaults and the rules that check them.
//!
//! Everything here is pure, so the rules are tested without a kernel.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::units::{BlockSize, Bytes};

/// Data size of a loop-backed pool when none is given. The file is sparse,
/// so only written blocks take space on the host.
pub const DEFAULT_DATA_SIZE: Bytes = Bytes(100 << 30);
/// The kernel's guidance gives tiny metadata for small pools; below this
/// much there is no headroom for snapshots' btrees.
pub const DEFAULT_MIN_METADATA: Bytes = Bytes(16 << 20);
/// Smallest metadata device the thin-pool target works with.
pub const MIN_METADATA: Bytes = Bytes(2 << 20);
/// Largest metadata device the thin-pool target uses
/// (THIN_METADATA_MAX_SECTORS: 255 * 2^14 blocks of 4 KiB).
pub const MAX_METADATA: Bytes = Bytes(255 * (1 << 14) * 4096);
/// Thin-pool metadata is kept in 4 KiB blocks.
pub const METADATA_BLOCK: Bytes = Bytes(4096);

/// What a write to a full pool does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Fail the write with ENOSPC (the kernel's `error_if_no_space`).
    #[default]
    Error,
    /// Queue writes until the pool is grown (the kernel's default; writers
    /// hang meanwhile).
    Queue,
}

impl std::str::FromStr for OnFull {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "error" => Ok(OnFull::Error),
            "queue" => Ok(OnFull::Queue),
            _ => Err(format!(
                "'{s}' is not a full-pool policy: use error or queue"
            )),
        }
    }
}

/// The share of the pool's data and metadata space kept free: below it,
/// new thin devices are refused (Docker's `dm.min_free_space`), so the
/// devices already made keep room to write. 0 to 50 percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MinFree(u8);

impl MinFree {
    /// Docker's default: 10%.
    pub const DEFAULT: MinFree = MinFree(10);

    /// `percent`, checked: 0 to 50.
    pub fn new(percent: u8) -> std::result::Result<MinFree, String> {
        if percent > 50 {
            return Err(format!(
                "a reserve of {percent}% would refuse new devices in a half-empty pool: use 0 to 50"
            ));
        }
        Ok(MinFree(percent))
    }

    /// The share, in percent.
    pub fn percent(self) -> u8 {
        self.0
    }

    /// Whether `free` of `total` is below the reserve.
    pub fn is_above(self, free: u64, total: u64) -> bool {
        u128::from(free) * 100 >= u128::from(total) * u128::from(self.0)
    }
}

impl Default for MinFree {
    fn default() -> Self {
        MinFree::DEFAULT
    }
}

/// `s` as a whole percentage (`10` or `10%`); `example` is shown in the
/// error.
fn parse_percent(s: &str, example: u8) -> std::result::Result<u8, String> {
    s.trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("'{s}' is not a percentage: use e.g. {example} or {example}%"))
}

impl std::str::FromStr for MinFree {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        MinFree::new(parse_percent(s, 10)?)
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl std::fmt::Display for OnFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFull::Error => "error",
            OnFull::Queue => "queue",
        })
    }
}

/// When and how far a pool grows by itself (LVM's
/// `thin_pool_autoextend_threshold` and `_percent`): once the data or
/// metadata in use crosses `threshold` percent, a loop-backed pool's
/// files grow online by `step` (the metadata by the same share of its
/// size), the data never beyond `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Autoextend {
    /// The share of data or metadata in use that triggers a grow.
    pub threshold: Threshold,
    /// How much data each grow adds.
    pub step: Bytes,
    /// The largest the data grows to.
    pub max: Bytes,
}

impl Autoextend {
    /// The data size a grow from `data` reaches, `None` at the maximum.
    pub fn next_data(&self, data: Bytes) -> Option<Bytes> {
        let next = Bytes(data.0.saturating_add(self.step.0).min(self.max.0));
        (next > data).then_some(next)
    }

    /// The metadata size a grow from `meta` reaches when the data grows
    /// from `data`: the step's share of the metadata, at least 1 MiB, and
    /// always what the grown data needs; `None` at the target's maximum.
    pub fn next_metadata(&self, meta: Bytes, data: Bytes, block: BlockSize) -> Option<Bytes> {
        let share = u128::from(meta.0) * u128::from(self.step.0) / u128::from(data.0.max(1));
        let grown = meta
            .0
            .saturating_add(u64::try_from(share).unwrap_or(u64::MAX).max(1 << 20));
        let need = guided_metadata(self.next_data(data).unwrap_or(data), block).0;
        let next = round_up(Bytes(grown.max(need)), METADATA_BLOCK).min(MAX_METADATA);
        (next > meta).then_some(next)
    }

    /// Checks the settings against each other and the pool's block size.
    ///
    /// Errors: [`Error::Invalid`] for a step that is not a whole number
    /// of blocks, or a maximum that is not one or is below the data size
    /// `data` the pool has now.
    pub fn check(&self, data: Bytes, block: BlockSize) -> Result<()> {
        if self.step.0 == 0 || !self.step.is_multiple_of(block.bytes()) {
            return Err(Error::invalid(
                "autoextend step",
                format!(
                    "{} is not a positive whole number of the pool's {block} blocks",
                    self.step
                ),
            ));
        }
        check_data_size(self.max, block).map_err(|e| match e {
            Error::Invalid { reason, .. } => Error::invalid("autoextend max", reason),
            e => e,
        })?;
        if self.max < data {
            return Err(Error::invalid(
                "autoextend max",
                format!(
                    "{} is below the pool's data size {data}; a pool never shrinks",
                    self.max
                ),
            ));
        }
        Ok(())
    }
}

/// The share of space in use that triggers an autoextend: 50 to 99
/// percent (LVM takes 50 to 100, where 100 turns it off; here that is
/// no [`Autoextend`] at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Threshold(u8);

impl Threshold {
    /// `percent`, checked: 50 to 99.
    pub fn new(percent: u8) -> std::result::Result<Threshold, String> {
        if !(50..=99).contains(&percent) {
            return Err(format!(
                "an autoextend threshold of {percent}% is out of range: use 50 to 99 (LVM's range; leave autoextend off instead of 100)"
            ));
        }
        Ok(Threshold(percent))
    }

    /// The share, in percent.
    pub fn percent(self) -> u8 {
        self.0
    }

    /// Whether `used` of `total` has reached the threshold.
    pub fn is_reached(self, used: u64, total: u64) -> bool {
        u128::from(used) * 100 >= u128::from(total) * u128::from(self.0)
    }

    /// The kernel's low-water mark for `blocks` data blocks: the free
    /// blocks left when the threshold is reached (the pool raises a
    /// device-mapper event when fewer are free).
    pub fn low_water(self, blocks: u64) -> u64 {
        let used = (u128::from(blocks) * u128::from(self.0)).div_ceil(100);
        blocks - u64::try_from(used).unwrap_or(blocks).min(blocks)
    }
}

impl std::str::FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Threshold::new(parse_percent(s, 80)?)
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl std::fmt::Display for Autoextend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at {} used, by {} up to {}",
            self.threshold, self.step, self.max
        )
    }
}

/// How long a write to a full pool in [`OnFull::Queue`] mode waits before
/// it fails: the kernel's `dm_thin_pool` `no_space_timeout`, which is one
/// setting for every pool on the machine (0 waits forever, which is
/// refused here; the kernel's default is 60 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueTimeout(u32);

impl QueueTimeout {
    /// The kernel's default: 60 seconds.
    pub const DEFAULT: QueueTimeout = QueueTimeout(60);

    /// `secs`, checked: 1 second to 1 day.
    pub fn new(secs: u32) -> std::result::Result<QueueTimeout, String> {
        if !(1..=86_400).contains(&secs) {
            return Err(format!(
                "a queue timeout of {secs}s is out of range: use 1 to 86400 seconds (a writer must not wait forever)"
            ));
        }
        Ok(QueueTimeout(secs))
    }

    /// The timeout in seconds.
    pub fn secs(self) -> u32 {
        self.0
    }
}

impl Default for QueueTimeout {
    fn default() -> Self {
        QueueTimeout::DEFAULT
    }
}

impl std::str::FromStr for QueueTimeout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let n = s.trim().trim_end_matches('s');
        let secs: u32 = n
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds: use e.g. 30 or 30s"))?;
        QueueTimeout::new(secs)
    }
}

impl std::fmt::Display for QueueTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// Where the pool's data or metadata lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackingRequest {
    /// A sparse file under the pool directory, attached to a loop device;
    /// `None` takes the default size.
    File(Option<Bytes>),
    /// An existing block device, used whole unless a size is given.
    Device(PathBuf, Option<Bytes>),
}

impl BackingRequest {
    /// The size asked for; `None` for the default (a file) or the whole
    /// device.
    pub fn size(&self) -> Option<Bytes> {
        match self {
            BackingRequest::File(s) | BackingRequest::Device(_, s) => *s,
        }
    }
}

/// What a pool create is asked for.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Where the data lives.
    pub data: BackingRequest,
    /// Where the metadata lives; its default size follows the data's.
    pub metadata: BackingRequest,
    /// The pool's allocation unit.
    pub block_size: BlockSize,
    /// What a write to the full pool does.
    pub on_full: OnFull,
    /// The free space below which new thin devices are refused.
    pub min_free: MinFree,
    /// How the pool grows by itself; `None` for never.
    pub autoextend: Option<Autoextend>,
    /// How long a queued write waits in a full pool ([`OnFull::Queue`]).
    pub queue_timeout: QueueTimeout,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            data: BackingRequest::File(None),
            metadata: BackingRequest::File(None),
            block_size: BlockSize::DEFAULT,
            on_full: OnFull::Error,
            min_free: MinFree::DEFAULT,
            autoextend: None,
            queue_timeout: QueueTimeout::DEFAULT,
        }
    }
}

/// The kernel's guidance for metadata: 48 bytes per data block.
pub fn guided_metadata(data: Bytes, block: BlockSize) -> Bytes {
    let blocks = data.0.div_ceil(block.bytes().0);
    round_up(Bytes(48 * blocks), METADATA_BLOCK)
}

/// The metadata size a create uses when none is given.
pub fn default_metadata(data: Bytes, block: BlockSize) -> Bytes {
    round_up(
        guided_metadata(data, block).max(DEFAULT_MIN_METADATA),
        Bytes::MIB,
    )
    .min(MAX_METADATA)
}

fn round_up(b: Bytes, unit: Bytes) -> Bytes {
    Bytes(b.0.div_ceil(unit.0) * unit.0)
}

/// Checks a data size against the block size.
///
/// Errors: [`Error::Invalid`] for zero, a size that is not a whole number
/// of blocks (naming the nearest ones that are), or fewer than 2 blocks.
pub fn check_data_size(data: Bytes, block: BlockSize) -> Result<()> {
    if data.0 == 0 {
        return Err(Error::invalid("data size", "it must be greater than 0"));
    }
    if !data.is_multiple_of(block.bytes()) {
        let down = Bytes(data.0 / block.bytes().0 * block.bytes().0);
        let up = round_up(data, block.bytes());
        return Err(Error::invalid(
            "data size",
            format!(
                "{data} ({} bytes) is not a whole number of {} blocks; use {} or {}",
                data.0,
                block,
                if down.0 == 0 { up } else { down },
                up
            ),
        ));
    }
    if data.0 / block.bytes().0 < 2 {
        return Err(Error::invalid(
            "data size",
            format!("{data} holds fewer than 2 blocks of {block}"),
        ));
    }
    Ok(())
}

/// Checks a metadata size against the data it must map.
///
/// Errors: [`Error::Invalid`] for zero, a size not a multiple of 4K, one
/// below the kernel's guidance for `data` (naming the minimum), or one
/// above what the thin-pool target uses.
pub fn check_metadata_size(meta: Bytes, data: Bytes, block: BlockSize) -> Result<()> {
    if meta.0 == 0 {
        return Err(Error::invalid("metadata size", "it must be greater than 0"));
    }
    if !meta.is_multiple_of(METADATA_BLOCK) {
        return Err(Error::invalid(
            "metadata size",
            format!("{meta} is not a multiple of 4K"),
        ));
    }
    let need = guided_metadata(data, block).max(MIN_METADATA);
    if meta < need {
        return Err(Error::invalid(
            "metadata size",
            format!(
                "{meta} is too small for {data} of data in {block} blocks; it needs at least {need} (or leave it out for the default)"
            ),
        ));
    }
    if meta > MAX_METADATA {
        return Err(Error::invalid(
            "metadata size",
            format!("{meta} is more than the thin-pool target can use ({MAX_METADATA})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_autoextend_steps_to_its_maximum_and_checks_its_settings() {
        let bs = BlockSize::DEFAULT;
        let a = Autoextend {
            threshold: "80".parse().unwrap(),
            step: Bytes(64 << 20),
            max: Bytes(160 << 20),
        };
        a.check(Bytes(64 << 20), bs).unwrap();
        assert_eq!(a.next_data(Bytes(64 << 20)), Some(Bytes(128 << 20)));
        assert_eq!(a.next_data(Bytes(128 << 20)), Some(Bytes(160 << 20)));
        assert_eq!(a.next_data(Bytes(160 << 20)), None);
        // The metadata grows by the step's share (100% here), and by at
        // least 1 MiB.
        let m = a
            .next_metadata(Bytes(4 << 20), Bytes(64 << 20), bs)
            .unwrap();
        assert_eq!(m, Bytes(8 << 20));
        let m = a
            .next_metadata(Bytes(48 << 20), Bytes(64 << 30), bs)
            .unwrap();
        assert_eq!(m, Bytes(49 << 20));
        // And at least what the data needs.
        let m = a
            .next_metadata(Bytes(2 << 20), Bytes(64 << 30), bs)
            .unwrap();
        assert_eq!(m, Bytes(48 << 20));
        assert_eq!(a.next_metadata(MAX_METADATA, Bytes(1 << 30), bs), None);

        let bad = Autoextend {
            step: Bytes(1000),
            ..a
        };
        assert!(bad
            .check(Bytes(64 << 20), bs)
            .unwrap_err()
            .to_string()
            .contains("blocks"));
        let err = a.check(Bytes(1 << 30), bs).unwrap_err().to_string();
        assert!(err.contains("below the pool's data size"), "{err}");

        let t: Threshold = "80%".parse().unwrap();
        assert!(t.is_reached(80, 100) && !t.is_reached(79, 100));
        assert_eq!(t.low_water(1000), 200);
        assert_eq!(t.low_water(3), 0);
        assert!("100".parse::<Threshold>().unwrap_err().contains("50 to 99"));
        assert!("40".parse::<Threshold>().unwrap_err().contains("50 to 99"));
        assert_eq!("30s".parse::<QueueTimeout>().unwrap().secs(), 30);
        assert!("0".parse::<QueueTimeout>().unwrap_err().contains("forever"));
    }

    #[test]
    fn plain_min_free_reads_percentages_and_bounds_them() {
        assert_eq!("10".parse::<MinFree>().unwrap(), MinFree::DEFAULT);
        assert_eq!("25%".parse::<MinFree>().unwrap().percent(), 25);
        assert!("51".parse::<MinFree>().unwrap_err().contains("0 to 50"));
        assert!("x".parse::<MinFree>().unwrap_err().contains("percentage"));
        let m = MinFree::DEFAULT;
        assert!(m.is_above(10, 100) && !m.is_above(9, 100));
        assert!(MinFree::new(0).unwrap().is_above(0, 100));
    }

    #[test]
    fn plain_default_metadata_follows_kernel_guidance_with_a_floor() {
        let bs = BlockSize::DEFAULT;
        assert_eq!(default_metadata(Bytes::GIB, bs), Bytes(16 << 20));
        // 100G / 64K = 1638400 blocks * 48 = 75 MiB
        assert_eq!(default_metadata(DEFAULT_DATA_SIZE, bs), Bytes(75 << 20));
        assert_eq!(default_metadata(Bytes(1 << 50), bs), MAX_METADATA);
        let big = BlockSize::new(Bytes(1 << 20)).unwrap();
        assert!(default_metadata(DEFAULT_DATA_SIZE, big) < default_metadata(DEFAULT_DATA_SIZE, bs));
    }

    #[test]
    fn plain_data_size_must_fill_whole_blocks() {
        let bs = BlockSize::DEFAULT;
        assert!(check_data_size(Bytes::GIB, bs).is_ok());
        let msg = check_data_size(Bytes(100 << 10), bs)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("64K") && msg.contains("128K"), "{msg}");
        assert!(check_data_size(Bytes(0), bs)
            .unwrap_err()
            .to_string()
            .contains("greater than 0"));
        assert!(check_data_size(Bytes(64 << 10), bs).is_err());
    }

    #[test]
    fn plain_metadata_too_small_for_data_is_refused_with_the_minimum() {
        let bs = BlockSize::DEFAULT;
        let msg = check_metadata_size(Bytes(4 << 20), Bytes(1 << 40), bs)
            .unwrap_err()
            .to_string();
        // 1T / 64K * 48 = 768 MiB
        assert!(msg.contains("at least 768M"), "{msg}");
        assert!(check_metadata_size(Bytes(768 << 20), Bytes(1 << 40), bs).is_ok());
        assert!(check_metadata_size(Bytes(1 << 20), Bytes::GIB, bs).is_err());
        assert!(check_metadata_size(Bytes(5000), Bytes::GIB, bs).is_err());
        assert!(check_metadata_size(Bytes(32 << 30), Bytes::GIB, bs).is_err());
    }

    #[test]
    fn plain_on_full_parses_both_policies() {
        assert_eq!("error".parse(), Ok(OnFull::Error));
        assert_eq!("queue".parse(), Ok(OnFull::Queue));
        assert!("panic"
            .parse::<OnFull>()
            .unwrap_err()
            .contains("error or queue"));
    }
}
