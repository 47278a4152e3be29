//! Loop devices over the pool's sparse backing files.
//!
//! A loop device is found again by the file it is bound to (device and
//! inode, read with `LOOP_GET_STATUS64`), never by a number kept in a
//! record: loop numbers change across reboots, and a crash between attach
//! and record would otherwise leave a loop device nobody knows about. With
//! this lookup, "attach" is idempotent and cleanup after a crash can always
//! find what a killed command attached.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::units::Bytes;

const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;

/// The kernel's `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// A loop device bound to a backing file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopDev {
    /// `/dev/loopN`
    pub path: PathBuf,
    /// `loopN`
    pub name: String,
}

impl LoopDev {
    /// The device's current size as the kernel sees it.
    pub fn size(&self) -> io::Result<Bytes> {
        let s = fs::read_to_string(format!("/sys/block/{}/size", self.name))?;
        s.trim()
            .parse::<u64>()
            .map(Bytes::from_sectors)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Makes the kernel re-read the backing file's size after it grew.
    pub fn refresh_capacity(&self) -> io::Result<()> {
        loopdev::LoopDevice::open(&self.path)?.set_capacity()
    }

    /// Unbinds the device from its file.
    pub fn detach(&self) -> io::Result<()> {
        loopdev::LoopDevice::open(&self.path)?.detach()
    }
}

/// The kernel's `new_encode_dev` form of a device number, as loop reports it.
fn decode_dev(dev: u64) -> (u64, u64) {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

/// The loop device bound to `file`, if any.
pub fn find(file: &Path) -> io::Result<Option<LoopDev>> {
    let meta = fs::metadata(file)?;
    let want = (
        libc::major(meta.dev()) as u64,
        libc::minor(meta.dev()) as u64,
        meta.ino(),
    );
    let mut found = None;
    for entry in fs::read_dir("/sys/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") || !Path::new(&format!("/sys/block/{name}/loop")).exists() {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(dev) = File::open(&path) else { continue };
        // SAFETY: the kernel fills a loop_info64 we own.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_GET_STATUS64 as _, &mut info) };
        if r != 0 {
            continue; // detached meanwhile
        }
        let (major, minor) = decode_dev(info.lo_device);
        if (major, minor, info.lo_inode) == want {
            if found.is_some() {
                return Err(io::Error::other(format!(
                    "{} is bound to more than one loop device; detach the extra ones with losetup -d",
                    file.display()
                )));
            }
            found = Some(LoopDev { path, name });
        }
    }
    Ok(found)
}

/// The loop device bound to `file`, attaching a free one if there is none.
pub fn attach(file: &Path) -> io::Result<LoopDev> {
    if let Some(dev) = find(file)? {
        return Ok(dev);
    }
    let control = loopdev::LoopControl::open()?;
    // Another process may take the free device between GET_FREE and SET_FD;
    // the kernel then answers EBUSY and we ask again.
    for _ in 0..16 {
        let dev = control.next_free()?;
        let path = dev
            .path()
            .ok_or_else(|| io::Error::other("loop device without a path"))?;
        let backing = OpenOptions::new().read(true).write(true).open(file)?;
        match dev.with().autoclear(false).attach_fd(backing) {
            Ok(()) => {
                // Direct I/O to the backing file: without it every block read
                // through the pool is cached twice, by the filesystem on the
                // thin device and again as the backing file's pages (the
                // benchmark's page-cache scenario measured 2x). A backing
                // filesystem without O_DIRECT (tmpfs) refuses: stay buffered.
                let _ = dev.set_direct_io(true);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Ok(LoopDev { path, name });
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free loop device after 16 tries"))
}

/// Detaches the loop device bound to `file`, if any.
pub fn detach_file(file: &Path) -> io::Result<()> {
    match find(file) {
        Ok(Some(dev)) => dev.detach(),
        Ok(None) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_device_numbers_decode_like_the_kernel_encodes() {
        // new_encode_dev(MKDEV(7, 3)) and MKDEV(259, 300000)
        assert_eq!(decode_dev((7 << 8) | 3), (7, 3));
        let (major, minor) = (259u64, 300_000u64);
        let enc = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        assert_eq!(decode_dev(enc), (major, minor));
    }
}
