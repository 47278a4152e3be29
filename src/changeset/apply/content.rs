//! A regular file's content: written from the archive, zero blocks left as
//! holes.

use std::fs::File;
use std::os::unix::fs::FileExt as _;

use super::entry::{in_entry, ReadEntry};
use super::{Result, Target};
use crate::changeset::error::io_err;
use crate::changeset::stream::Shared;

const HOLE_BLOCK: usize = 4096;

static ZEROS: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];

/// The most of a file's content read and written at once.
const CONTENT_BUF: usize = 256 * 1024;

/// Writes `size` bytes of `r` to `file`, leaving aligned zero blocks as
/// holes when `holes`. `scratch` is the buffer the bytes pass through,
/// kept by the caller from file to file: grown (and zeroed) once, not
/// allocated and zeroed again for every file.
pub(super) fn write_content(
    file: &File,
    r: &mut dyn ReadEntry,
    size: u64,
    holes: bool,
    t: &Target,
    shared: &Shared,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let len = CONTENT_BUF
        .min(size.max(1) as usize)
        .next_multiple_of(HOLE_BLOCK);
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let buf = &mut scratch[..len];
    let mut off = 0u64;
    while off < size {
        let want = (buf.len() as u64).min(size - off) as usize;
        let mut got = 0;
        while got < want {
            match shared.read_some(r, &mut buf[got..want], || in_entry(t.entry))? {
                0 => return Err(shared.short_entry(t.entry, off + got as u64, size)),
                n => got += n,
            }
        }
        let chunk = &buf[..want];
        let write = |from: usize, to: usize| -> Result<()> {
            file.write_all_at(&chunk[from..to], off + from as u64)
                .map_err(io_err("writing", &t.key))
        };
        if holes {
            // `off` is a multiple of the buffer length, so blocks are aligned.
            let is_zero = |i: usize| {
                let end = (i + HOLE_BLOCK).min(want);
                chunk[i..end] == ZEROS[..end - i]
            };
            let mut i = 0;
            while i < want {
                if is_zero(i) {
                    i += HOLE_BLOCK;
                    continue;
                }
                let mut j = i + HOLE_BLOCK;
                while j < want && !is_zero(j) {
                    j += HOLE_BLOCK;
                }
                write(i, j.min(want))?;
                i = j;
            }
        } else {
            write(0, want)?;
        }
        off += want as u64;
    }
    file.set_len(size)
        .map_err(io_err("setting the size of", &t.key))
}

/// Files from this size on have their writeback started as soon as they
/// are written ([`start_writeback`]); smaller ones go with the rest.
pub(super) const EARLY_WRITEBACK_FROM: u64 = 64 << 10;

/// Starts writing `file`'s dirty pages to its device, without waiting for
/// them: the device works while the archive is read on, instead of all at
/// the flush that ends the apply. Best effort: the flush at the end still
/// makes every byte durable, so a failure here only loses the head start.
pub(super) fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is
    // `file`'s, open for the whole call.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}
