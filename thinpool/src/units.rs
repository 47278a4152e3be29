//! Sizes and ids with their units in the type.
//!
//! A bare `u64` never crosses a module boundary when it has a unit: bytes,
//! pool blocks and thin device ids each get a newtype, and every conversion
//! to the kernel's 512-byte sectors happens here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bytes per kernel sector.
pub const SECTOR: u64 = 512;

/// A size in bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Bytes {
    /// One KiB.
    pub const KIB: Bytes = Bytes(1 << 10);
    /// One MiB.
    pub const MIB: Bytes = Bytes(1 << 20);
    /// One GiB.
    pub const GIB: Bytes = Bytes(1 << 30);

    /// The size in whole 512-byte sectors, rounded down.
    pub fn sectors(self) -> u64 {
        self.0 / SECTOR
    }

    /// The size of `sectors` 512-byte sectors.
    pub fn from_sectors(sectors: u64) -> Bytes {
        Bytes(sectors * SECTOR)
    }

    /// Whether the size is a whole number of `unit`s (never for a zero
    /// unit).
    pub fn is_multiple_of(self, unit: Bytes) -> bool {
        unit.0 != 0 && self.0.is_multiple_of(unit.0)
    }
}

impl fmt::Display for Bytes {
    /// Exact when the size is a whole number of a binary unit (`64K`,
    /// `20G`), otherwise with two decimals (`1.50G`); plain bytes below 1 KiB.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 5] = [
            (1 << 50, "P"),
            (1 << 40, "T"),
            (1 << 30, "G"),
            (1 << 20, "M"),
            (1 << 10, "K"),
        ];
        for (unit, suffix) in UNITS {
            if self.0 >= unit {
                return if self.0.is_multiple_of(unit) {
                    write!(f, "{}{suffix}", self.0 / unit)
                } else {
                    write!(f, "{:.2}{suffix}", self.0 as f64 / unit as f64)
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeParseError {
    /// Nothing but blanks.
    #[error("empty size")]
    Empty,
    /// Not a whole number with an optional binary unit.
    #[error("'{0}' is not a size: use a whole number with an optional unit K, M, G, T or P (powers of 1024), e.g. 512M or 20G")]
    Malformed(String),
    /// More than 2^64 - 1 bytes.
    #[error("'{0}' is too large")]
    Overflow(String),
}

impl FromStr for Bytes {
    type Err = SizeParseError;

    /// Parses `4096`, `512K`, `512M`, `20G`, `1T` (binary units; an optional
    /// trailing `B` or `iB` is accepted, `KiB`, `GB`). Zero parses; callers
    /// decide whether zero is allowed.
    fn from_str(s: &str) -> Result<Bytes, SizeParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(SizeParseError::Empty);
        }
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(SizeParseError::Malformed(s.to_string()));
        }
        let unit = unit.trim();
        let unit = unit
            .strip_suffix("iB")
            .or_else(|| unit.strip_suffix("ib"))
            .or_else(|| unit.strip_suffix(['B', 'b']).filter(|u| !u.is_empty()))
            .unwrap_or(unit);
        let shift = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            "P" => 50,
            _ => return Err(SizeParseError::Malformed(s.to_string())),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| SizeParseError::Overflow(s.to_string()))?;
        n.checked_mul(1u64 << shift)
            .map(Bytes)
            .ok_or_else(|| SizeParseError::Overflow(s.to_string()))
    }
}

/// A requested size that may be absolute (`20G`) or relative to the current
/// size (`+5G`), as `pool grow` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeChange {
    /// Make it this size.
    To(Bytes),
    /// Make it this much larger.
    By(Bytes),
}

impl SizeChange {
    /// The size this change asks for, starting from `current`.
    pub fn target(self, current: Bytes) -> Option<Bytes> {
        match self {
            SizeChange::To(b) => Some(b),
            SizeChange::By(b) => current.0.checked_add(b.0).map(Bytes),
        }
    }
}

impl FromStr for SizeChange {
    type Err = SizeParseError;
    fn from_str(s: &str) -> Result<Self, SizeParseError> {
        match s.trim().strip_prefix('+') {
            Some(rest) => rest.parse().map(SizeChange::By),
            None => s.parse().map(SizeChange::To),
        }
    }
}

/// The pool's allocation unit: a multiple of 64 KiB from 64 KiB to 1 GiB, as
/// the thin-pool target requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct BlockSize(Bytes);

impl BlockSize {
    /// The smallest block size, and the unit of every other.
    pub const MIN: Bytes = Bytes(64 << 10);
    /// The largest block size.
    pub const MAX: Bytes = Bytes(1 << 30);
    /// The block size a create uses when none is given: 64 KiB, as
    /// containerd's devmapper guide and LVM's generic policy. Larger blocks
    /// make filling a layer cheaper (fewer blocks to provision), but a
    /// first write into an inherited file copies a whole block, and a
    /// small write into a new block provisions and zeroes a whole one: a
    /// full benchmark run at 256 KiB gave the import 0.752 of GNU tar's
    /// speed against 0.735, and random 4 KiB writes into new blocks 0.419
    /// of a linear device's against 0.458 (README, "Pool block size").
    pub const DEFAULT: BlockSize = BlockSize(Self::MIN);

    /// Checks the kernel's rule for a thin-pool block size.
    ///
    /// Errors: a sentence saying the rule, for a size that breaks it.
    pub fn new(size: Bytes) -> Result<BlockSize, String> {
        if size < Self::MIN || size > Self::MAX || !size.is_multiple_of(Self::MIN) {
            return Err(format!(
                "block size {size} must be a multiple of 64K between 64K and 1G"
            ));
        }
        Ok(BlockSize(size))
    }

    /// The block size in bytes.
    pub fn bytes(self) -> Bytes {
        self.0
    }

    /// The block size in 512-byte sectors.
    pub fn sectors(self) -> u64 {
        self.0.sectors()
    }
}

impl TryFrom<u64> for BlockSize {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        BlockSize::new(Bytes(v))
    }
}

impl From<BlockSize> for u64 {
    fn from(b: BlockSize) -> u64 {
        b.0 .0
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A thin device's id inside its pool (24 bits in the kernel's metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ThinId(pub u32);

impl ThinId {
    /// The largest id the thin-pool target accepts.
    pub const MAX: ThinId = ThinId((1 << 24) - 1);
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The pool metadata's transaction id, which the record matches at every
/// open (a record and metadata that disagree are not taken for each
/// other). Earlier versions moved it with `set_transaction_id` after
/// every change to the set of thin devices; a record of theirs is
/// settled against it once ([`crate::recovery`]).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TransactionId(pub u64);

impl TransactionId {
    /// The id after this one.
    pub fn next(self) -> TransactionId {
        TransactionId(self.0 + 1)
    }
}

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sizes_parse_with_binary_units() {
        assert_eq!("512M".parse::<Bytes>(), Ok(Bytes(512 << 20)));
        assert_eq!("20G".parse::<Bytes>(), Ok(Bytes(20 << 30)));
        assert_eq!("1T".parse::<Bytes>(), Ok(Bytes(1 << 40)));
        assert_eq!("4096".parse::<Bytes>(), Ok(Bytes(4096)));
        assert_eq!("64k".parse::<Bytes>(), Ok(Bytes(64 << 10)));
        assert_eq!("2GiB".parse::<Bytes>(), Ok(Bytes(2 << 30)));
        assert_eq!("2GB".parse::<Bytes>(), Ok(Bytes(2 << 30)));
        assert_eq!("0".parse::<Bytes>(), Ok(Bytes(0)));
    }

    #[test]
    fn plain_sizes_refuse_garbage_and_overflow() {
        for bad in ["", " ", "G", "1.5G", "-1G", "12X", "1GG", "abc", "1 0"] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            "99999999999P".parse::<Bytes>(),
            Err(SizeParseError::Overflow(_))
        ));
        let msg = "nonsense".parse::<Bytes>().unwrap_err().to_string();
        assert!(msg.contains("512M"), "{msg}");
    }

    #[test]
    fn plain_size_changes_are_absolute_or_relative() {
        assert_eq!("+1G".parse(), Ok(SizeChange::By(Bytes::GIB)));
        assert_eq!("3G".parse(), Ok(SizeChange::To(Bytes(3 << 30))));
        assert_eq!(
            SizeChange::By(Bytes::GIB).target(Bytes::GIB),
            Some(Bytes(2 << 30))
        );
        assert!("+".parse::<SizeChange>().is_err());
    }

    #[test]
    fn plain_sizes_display_exactly_when_whole() {
        assert_eq!(Bytes(64 << 10).to_string(), "64K");
        assert_eq!(Bytes(3 << 29).to_string(), "1.50G");
        assert_eq!(Bytes(100).to_string(), "100B");
        assert_eq!(Bytes(1 << 40).to_string(), "1T");
    }

    #[test]
    fn plain_block_size_follows_the_kernel_rule() {
        assert!(BlockSize::new(Bytes(64 << 10)).is_ok());
        assert!(BlockSize::new(Bytes(1 << 20)).is_ok());
        assert!(BlockSize::new(Bytes(1 << 30)).is_ok());
        assert!(BlockSize::new(Bytes(32 << 10)).is_err());
        assert!(BlockSize::new(Bytes(96 << 10)).is_err());
        assert!(BlockSize::new(Bytes(2 << 30)).is_err());
        assert!(BlockSize::new(Bytes(0)).is_err());
        assert_eq!(BlockSize::DEFAULT.sectors(), 128);
        assert!(serde_json::from_str::<BlockSize>("1000").is_err());
    }
}
