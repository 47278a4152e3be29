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

impl std::str::FromStr for MinFree {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let n = s.trim().trim_end_matches('%');
        let p: u8 = n
            .parse()
            .map_err(|_| format!("'{s}' is not a percentage: use e.g. 10 or 10%"))?;
        MinFree::new(p)
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
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            data: BackingRequest::File(None),
            metadata: BackingRequest::File(None),
            block_size: BlockSize::DEFAULT,
            on_full: OnFull::Error,
            min_free: MinFree::DEFAULT,
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
