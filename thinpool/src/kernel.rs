//! What the running kernel offers, and what is on a device before we use it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

use devicemapper::DM;

use crate::error::{Error, Result};
use crate::units::{BlockSize, Bytes, TransactionId};

/// Where the kernel's dm control node lives.
pub const DM_CONTROL: &str = "/dev/mapper/control";

/// Opens the device-mapper control device and checks that the thin-pool
/// target is available, loading its module if the kernel allows that.
///
/// Errors: [`Error::NoDeviceMapper`]; [`Error::NoThinTarget`].
pub fn open_dm() -> Result<DM> {
    dm_available(Path::new(DM_CONTROL))?;
    let dm = DM::new().map_err(|e| Error::NoDeviceMapper {
        detail: format!("opening {DM_CONTROL}: {e}"),
    })?;
    if !has_thin_pool(&dm)? {
        // Targets are modules; the kernel may not have loaded this one yet.
        let _ = Command::new("modprobe")
            .args(["-q", "dm-thin-pool"])
            .status();
        if !has_thin_pool(&dm)? {
            let targets = dm
                .list_versions()
                .map_err(Error::dm("listing targets"))?
                .into_iter()
                .map(|t| t.0)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NoThinTarget { targets });
        }
    }
    Ok(dm)
}

/// The thin-pool target's `no_space_timeout` parameter: how long a write
/// to a full pool in queue mode waits before it fails. One value for the
/// whole kernel.
pub const NO_SPACE_TIMEOUT: &str = "/sys/module/dm_thin_pool/parameters/no_space_timeout";

/// Sets the kernel's [`NO_SPACE_TIMEOUT`] to `secs`.
///
/// Errors: [`Error::Io`] when the parameter cannot be written.
pub fn set_no_space_timeout(secs: u32) -> Result<()> {
    std::fs::write(NO_SPACE_TIMEOUT, secs.to_string())
        .map_err(Error::io("writing", NO_SPACE_TIMEOUT))
}

/// The kernel's [`NO_SPACE_TIMEOUT`] in seconds, if it can be read.
pub fn no_space_timeout() -> Option<u32> {
    std::fs::read_to_string(NO_SPACE_TIMEOUT)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the running kernel has the device-mapper driver (a control
/// node alone proves nothing: tools create it even where the driver is
/// missing).
pub fn has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc")
        .map(|m| m.lines().any(|l| l.trim_end().ends_with(" device-mapper")))
        .unwrap_or(false)
}

/// Fails with [`Error::NoDeviceMapper`] unless the kernel has the
/// device-mapper driver and `control` exists.
pub fn dm_available(control: &Path) -> Result<()> {
    if !has_device_mapper() {
        // A kernel with dm built as a module registers it once loaded.
        let _ = Command::new("modprobe").args(["-q", "dm-mod"]).status();
    }
    if !has_device_mapper() {
        return Err(Error::NoDeviceMapper {
            detail: "/proc/misc lists no device-mapper driver".into(),
        });
    }
    if !control.exists() {
        return Err(Error::NoDeviceMapper {
            detail: format!("{} is missing", control.display()),
        });
    }
    Ok(())
}

fn has_thin_pool(dm: &DM) -> Result<bool> {
    Ok(dm
        .list_versions()
        .map_err(Error::dm("listing targets"))?
        .iter()
        .any(|t| t.0 == "thin-pool"))
}

/// The block-device ioctls issued here.
mod sys {
    use linux_raw_sys::ioctl::{BLKDISCARD, BLKGETSIZE64};

    // The kernel declares it `_IOR(0x12, 114, size_t)` but always writes a
    // u64, on 32-bit machines too.
    nix::ioctl_read_bad!(blkgetsize64, BLKGETSIZE64, u64);
    // `_IO(0x12, 119)`, reading a `{start, length}` pair of u64 in bytes.
    nix::ioctl_write_ptr_bad!(blkdiscard, BLKDISCARD, [u64; 2]);
}

/// Discards `len` bytes from `start` of the block device open (for
/// writing) as `file`: `BLKDISCARD`. On a thin device, blocks it alone
/// maps are freed in the pool and the discard passes down to the data
/// device (a loop device punches holes in its file).
///
/// Errors: `EOPNOTSUPP` where the device takes no discards; `EINVAL` for a
/// range not aligned to its sectors.
pub fn discard(file: &File, start: Bytes, len: Bytes) -> io::Result<()> {
    let range = [start.0, len.0];
    // SAFETY: `file` stays open for the call, and BLKDISCARD reads two
    // u64 through its argument, which points at an array we own.
    unsafe { sys::blkdiscard(file.as_raw_fd(), &range) }.map_err(io::Error::from)?;
    Ok(())
}

/// Size of the block device open as `file`, from `BLKGETSIZE64`.
///
/// Errors: `ENOTTY` when `file` is not a block device.
pub fn blockdev_size(file: &File) -> io::Result<Bytes> {
    let mut size: u64 = 0;
    // SAFETY: `file` stays open for the call, and BLKGETSIZE64 writes one
    // u64 through its argument, which points at one we own.
    unsafe { sys::blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(Bytes(size))
}

/// Opens a block device the user named for exclusive use: it must exist,
/// be a block device, and not be mounted or held by another device.
/// Returns the open device, which holds it until dropped, and its size.
///
/// Errors: [`Error::Invalid`] (as argument `what`) when it is missing or
/// not a block device; [`Error::Busy`] when someone holds it.
pub fn open_exclusive_blockdev(path: &Path, what: &'static str) -> Result<(File, Bytes)> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::invalid(what, format!("{} does not exist", path.display()))
        } else {
            Error::io("inspecting", path)(e)
        }
    })?;
    if !meta.file_type().is_block_device() {
        return Err(Error::invalid(
            what,
            format!("{} is not a block device", path.display()),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                Error::Busy {
                    what: path.display().to_string(),
                    hint: "it is mounted or held by another device; release it or choose another device".into(),
                }
            } else {
                Error::io("opening", path)(e)
            }
        })?;
    let size = blockdev_size(&file).map_err(Error::io("reading the size of", path))?;
    Ok((file, size))
}

/// The fields of a thin-pool metadata superblock that we check against
/// the pool's record (layout: `struct thin_disk_superblock` in the kernel's
/// dm-thin-metadata.c).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// The last transaction id the kernel committed.
    pub transaction_id: TransactionId,
    /// The pool's block size.
    pub data_block_size: Bytes,
    /// The kernel flagged the metadata for a check (`NEEDS_CHECK`, bit 0
    /// of the superblock's flags): it met an error and put the pool
    /// read-only.
    pub needs_check: bool,
}

const THIN_SUPERBLOCK_MAGIC: u64 = 27022010;
/// The superblock's size: the first block of the metadata device.
pub const SUPERBLOCK_BYTES: usize = 4096;

impl Superblock {
    /// Parses the first 4 KiB of a metadata device; `None` when it holds
    /// no thin-pool superblock.
    pub fn parse(block: &[u8]) -> Option<Superblock> {
        let u64_at = |o: usize| u64::from_le_bytes(block[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(block[o..o + 4].try_into().unwrap());
        if block.len() < 512 || u64_at(32) != THIN_SUPERBLOCK_MAGIC {
            return None;
        }
        Some(Superblock {
            transaction_id: TransactionId(u64_at(48)),
            data_block_size: Bytes::from_sectors(u64::from(u32_at(336))),
            needs_check: u32_at(4) & 1 != 0,
        })
    }

    /// Reads and parses the superblock of the metadata device or file at
    /// `path`; `None` when it holds none.
    ///
    /// Errors: [`Error::Io`] when it cannot be opened or is shorter than a
    /// superblock.
    pub fn read(path: &Path) -> Result<Option<Superblock>> {
        let mut f = File::open(path).map_err(Error::io("opening", path))?;
        let mut buf = vec![0u8; SUPERBLOCK_BYTES];
        f.read_exact(&mut buf)
            .map_err(Error::io("reading the superblock of", path))?;
        Ok(Superblock::parse(&buf))
    }

    /// Encodes the checked fields at their offsets (for tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_BYTES];
        b[32..40].copy_from_slice(&THIN_SUPERBLOCK_MAGIC.to_le_bytes());
        b[48..56].copy_from_slice(&self.transaction_id.0.to_le_bytes());
        b[336..340].copy_from_slice(&(self.data_block_size.sectors() as u32).to_le_bytes());
        b[4..8].copy_from_slice(&u32::from(self.needs_check).to_le_bytes());
        b
    }
}

/// Zeroes the first 4 KiB of a device so the thin-pool target formats fresh
/// metadata there (and so a destroyed pool's metadata is not found again).
pub fn wipe_superblock(file: &mut File, path: &Path) -> Result<()> {
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&[0u8; SUPERBLOCK_BYTES]))
        .and_then(|_| file.sync_all())
        .map_err(Error::io("wiping the metadata header of", path))
}

/// Checks a superblock against the block size and transaction ids a record
/// allows (the committed one, and the next one while an operation is in
/// flight).
pub fn check_superblock(
    sb: Option<&Superblock>,
    block_size: BlockSize,
    allowed_tx: &[TransactionId],
) -> std::result::Result<(), String> {
    let sb = sb.ok_or("the metadata holds no thin-pool superblock (wiped, or never written)")?;
    if sb.data_block_size != block_size.bytes() {
        return Err(format!(
            "metadata says block size {}, record says {}",
            sb.data_block_size,
            block_size.bytes()
        ));
    }
    if !allowed_tx.contains(&sb.transaction_id) {
        return Err(format!(
            "metadata is at transaction {}, record expects {}",
            sb.transaction_id,
            allowed_tx
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_missing_control_node_is_no_device_mapper() {
        let err = dm_available(Path::new("/nonexistent/mapper/control")).unwrap_err();
        assert!(matches!(err, Error::NoDeviceMapper { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("no device-mapper"), "{msg}");
    }

    #[test]
    fn plain_superblock_fields_are_read_and_checked() {
        let sb = Superblock {
            transaction_id: TransactionId(5),
            data_block_size: Bytes(64 << 10),
            needs_check: false,
        };
        let parsed = Superblock::parse(&sb.encode()).unwrap();
        assert_eq!(parsed, sb);
        let flagged = Superblock {
            needs_check: true,
            ..sb.clone()
        };
        assert!(Superblock::parse(&flagged.encode()).unwrap().needs_check);
        assert_eq!(Superblock::parse(&[0u8; 4096]), None);

        let bs = BlockSize::DEFAULT;
        assert!(check_superblock(Some(&sb), bs, &[TransactionId(5)]).is_ok());
        assert!(check_superblock(Some(&sb), bs, &[TransactionId(4), TransactionId(5)]).is_ok());
        let e = check_superblock(Some(&sb), bs, &[TransactionId(3)]).unwrap_err();
        assert!(
            e.contains("transaction 5") && e.contains("expects 3"),
            "{e}"
        );
        let big = BlockSize::new(Bytes(1 << 20)).unwrap();
        assert!(check_superblock(Some(&sb), big, &[TransactionId(5)])
            .unwrap_err()
            .contains("block size"));
        assert!(check_superblock(None, bs, &[TransactionId(5)])
            .unwrap_err()
            .contains("no thin-pool superblock"));
    }
}
