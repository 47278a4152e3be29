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

use linux_raw_sys::loop_device::loop_info64;

use crate::units::Bytes;

/// The one loop ioctl issued here; attaching, detaching and resizing go
/// through loopdev-3, which has no call for reading a device's status.
mod sys {
    use linux_raw_sys::loop_device::{loop_info64, LOOP_GET_STATUS64};

    nix::ioctl_read_bad!(loop_get_status64, LOOP_GET_STATUS64, loop_info64);
}

/// What the loop device open as `dev` is bound to (`LOOP_GET_STATUS64`).
fn status(dev: &File) -> io::Result<loop_info64> {
    let mut info = loop_info64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: 0,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // SAFETY: `dev` stays open for the call, and LOOP_GET_STATUS64 writes
    // one `struct loop_info64` through its argument, which points at one we
    // own; the type is linux-raw-sys's binding of the kernel's own header,
    // so its size and layout are the ones the kernel writes.
    unsafe { sys::loop_get_status64(dev.as_raw_fd(), &mut info) }.map_err(io::Error::from)?;
    Ok(info)
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
    /// The loop device at `path` (`/dev/loopN`); its name is the file name.
    pub fn from_path(path: PathBuf) -> LoopDev {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        LoopDev { path, name }
    }

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

    /// Unbinds the device from its file, and waits (up to 2 s) until the
    /// kernel has: while another opener (a probe by udev or blkid, or
    /// [`find`] itself) holds the device, `LOOP_CLR_FD` only marks it,
    /// and the binding stays visible until the last close.
    pub fn detach(&self) -> io::Result<()> {
        let was = File::open(&self.path)
            .and_then(|f| status(&f))
            .map(|i| (i.lo_device, i.lo_inode))?;
        loopdev::LoopDevice::open(&self.path)?.detach()?;
        for _ in 0..200 {
            // Unbound, or already bound again to another file by someone
            // else's attach: either way no longer ours.
            let now = File::open(&self.path)
                .and_then(|f| status(&f))
                .map(|i| (i.lo_device, i.lo_inode));
            if now.map_or(true, |n| n != was) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(io::Error::other(format!(
            "{} is still bound 2 s after it was detached; something holds it open",
            self.path.display()
        )))
    }
}

/// The kernel's `new_encode_dev` form of a device number, as loop reports it.
fn decode_dev(dev: u64) -> (u64, u64) {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

/// The loop device bound to `file`, if any.
///
/// A device whose sysfs `backing_file` names `file` is checked first (one
/// open and one ioctl); only when none does (the file was bound under
/// another name: a bind mount, another mount namespace) is every loop
/// device opened and asked. The answer is always the kernel's binding by
/// device and inode, never the name alone.
pub fn find(file: &Path) -> io::Result<Option<LoopDev>> {
    let meta = fs::metadata(file)?;
    let want = (
        libc::major(meta.dev()) as u64,
        libc::minor(meta.dev()) as u64,
        meta.ino(),
    );
    let mut loops = vec![];
    for e in fs::read_dir("/sys/block")? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") {
            loops.push(name);
        }
    }
    let named = fs::canonicalize(file).ok();
    let by_name = loops.iter().filter(|name| {
        let backing = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file"));
        backing.is_ok_and(|b| Some(Path::new(b.trim_end_matches('\n'))) == named.as_deref())
    });
    if let Some(dev) = bound_to(by_name, want, file)? {
        return Ok(Some(dev));
    }
    bound_to(&loops, want, file)
}

/// The loop device numbered `major:minor`, if it is one and is bound to
/// `file`: [`find`] for a caller that already knows which device to ask
/// (the one a dm table maps), at the cost of one device opened and asked
/// instead of every loop device's sysfs entry read.
pub fn bound_at(major: u32, minor: u32, file: &Path) -> io::Result<Option<LoopDev>> {
    let meta = fs::metadata(file)?;
    let want = (
        libc::major(meta.dev()) as u64,
        libc::minor(meta.dev()) as u64,
        meta.ino(),
    );
    // /sys/dev/block/M:m links to the device's sysfs directory, named as
    // the device is (`loopN`, with its node at /dev/loopN).
    let Ok(link) = fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
        return Ok(None);
    };
    let Some(name) = link.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    if !name.starts_with("loop") {
        return Ok(None);
    }
    bound_to([&name], want, file)
}

/// Which of the loop devices `names` is bound to the file with device
/// and inode `want`, asking the kernel.
fn bound_to<'a>(
    names: impl IntoIterator<Item = &'a String>,
    want: (u64, u64, u64),
    file: &Path,
) -> io::Result<Option<LoopDev>> {
    let mut found = None;
    for name in names {
        if !Path::new(&format!("/sys/block/{name}/loop")).exists() {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(dev) = File::open(&path) else { continue };
        let Ok(info) = status(&dev) else {
            continue; // detached meanwhile
        };
        let (major, minor) = decode_dev(info.lo_device);
        if (major, minor, info.lo_inode) == want {
            if found.is_some() {
                return Err(io::Error::other(format!(
                    "{} is bound to more than one loop device; detach the extra ones with losetup -d",
                    file.display()
                )));
            }
            found = Some(LoopDev {
                path,
                name: name.to_string(),
            });
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
                return Ok(LoopDev::from_path(path));
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
