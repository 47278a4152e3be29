//! A changeset's exact bytes, kept without keeping its content twice
//! (Docker's "tar-split"). While a changeset is applied, everything but the
//! content of its regular files is recorded: headers, extension records,
//! padding, the end-of-archive blocks and whatever followed them; in place
//! of each file's content, the path it was written to and its length.
//! [`reassemble`] puts the stream back together from that record and the
//! files in the layer, and checks it against the digest the record ends
//! with: a stream that would differ is refused, never written as if right.
//!
//! The record (gzip-compressed, so the mostly-zero headers cost little):
//!
//! ```text
//! MAGIC
//! 'R' u64le:LEN BYTES          raw bytes of the stream
//! 'F' u64le:SIZE u32le:LEN PATH  SIZE bytes of the file at PATH
//! 'E' u64le:TOTAL [32]SHA256   the end: the stream's length and digest
//! ```

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use flate2::read::GzDecoder;
use rustix::fs::OFlags;
use sha2::{Digest, Sha256};

use super::compress::{finish_gzip, gzip_writer, sha256_string, GzipWriter};
use super::error::{io_host, show, ChangesetError};
use super::path::split;
use crate::fsys::sys::{self, FileType};
use crate::fsys::walk::{Links, Walked, Walker};

const MAGIC: &[u8; 16] = b"thinlayer-split1";

/// Raw bytes are buffered up to this much before a record is written.
const RAW_CHUNK: usize = 64 * 1024;

/// Writes the record while a changeset is applied (see the module
/// documentation). Errors are kept and reported by [`Recorder::finish`]
/// and by the reader that feeds it.
pub(crate) struct Recorder<'w> {
    out: GzipWriter<BufWriter<&'w mut dyn Write>>,
    raw: Vec<u8>,
    /// Bytes of file content still to leave out of the record.
    skip: u64,
}

impl<'w> Recorder<'w> {
    pub(crate) fn new(out: &'w mut dyn Write) -> io::Result<Self> {
        let mut out = gzip_writer(BufWriter::new(out), flate2::Compression::fast(), RAW_CHUNK);
        out.write_all(MAGIC)?;
        Ok(Recorder {
            out,
            raw: Vec::with_capacity(RAW_CHUNK),
            skip: 0,
        })
    }

    fn flush_raw(&mut self) -> io::Result<()> {
        if !self.raw.is_empty() {
            self.out.write_all(b"R")?;
            self.out.write_all(&(self.raw.len() as u64).to_le_bytes())?;
            self.out.write_all(&self.raw)?;
            self.raw.clear();
        }
        Ok(())
    }

    /// The next `size` bytes of the stream are the content of the file
    /// written at `key` (relative to the layer's root).
    pub(crate) fn file(&mut self, key: &[u8], size: u64) -> io::Result<()> {
        self.flush_raw()?;
        self.out.write_all(b"F")?;
        self.out.write_all(&size.to_le_bytes())?;
        self.out.write_all(&(key.len() as u32).to_le_bytes())?;
        self.out.write_all(key)?;
        self.skip = size;
        Ok(())
    }

    /// Bytes of the stream, in order.
    pub(crate) fn bytes(&mut self, mut b: &[u8]) -> io::Result<()> {
        let skipped = (self.skip.min(b.len() as u64)) as usize;
        self.skip -= skipped as u64;
        b = &b[skipped..];
        self.raw.extend_from_slice(b);
        if self.raw.len() >= RAW_CHUNK {
            self.flush_raw()?;
        }
        Ok(())
    }

    /// Ends the record with the stream's length and digest.
    pub(crate) fn finish(mut self, total: u64, digest: &[u8; 32]) -> io::Result<()> {
        if self.skip != 0 {
            return Err(io::Error::other("the stream ended inside a file's content"));
        }
        self.flush_raw()?;
        self.out.write_all(b"E")?;
        self.out.write_all(&total.to_le_bytes())?;
        self.out.write_all(digest)?;
        finish_gzip(self.out)?.flush()
    }
}

/// What [`reassemble`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// Length of the stream.
    pub bytes: u64,
    /// `"sha256:<hex>"` of the stream: the diff_id it was recorded with.
    pub diff_id: String,
}

fn corrupt(reason: impl Into<String>) -> ChangesetError {
    ChangesetError::Corrupt {
        what: "the changeset's recorded layout".into(),
        reason: reason.into(),
    }
}

fn mismatch(reason: String) -> ChangesetError {
    ChangesetError::Irreproducible { reason }
}

/// Writes the changeset recorded in `record` to `out`, reading file
/// content from the tree at `root` (trusted; nothing below it is: no
/// symlink is followed). Checks every file's length and, at the end, the
/// stream's length and digest against the record.
///
/// # Errors
/// [`ChangesetError::Irreproducible`] when a file is missing or differs in
/// length, or the stream's digest is not the recorded one (the caller must
/// discard what was written); [`ChangesetError::Corrupt`] for a damaged
/// record; [`ChangesetError::Io`] for the files and `out`.
pub fn reassemble(
    record: impl Read,
    root: &Path,
    out: &mut dyn Write,
) -> Result<Reassembled, ChangesetError> {
    let root_fd = sys::open_root(root).map_err(io_host("opening layer root", root))?;
    let mut r = BufReader::new(GzDecoder::new(record));
    let rd = |r: &mut BufReader<GzDecoder<_>>, buf: &mut [u8]| {
        r.read_exact(buf)
            .map_err(|e| corrupt(format!("it cannot be read: {e}")))
    };
    let mut magic = [0u8; 16];
    rd(&mut r, &mut magic)?;
    if &magic != MAGIC {
        return Err(corrupt("it does not start with the format's magic"));
    }
    let out_err = |e: io::Error| ChangesetError::Io {
        op: "writing",
        path: "the changeset output".into(),
        source: e,
    };
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut tag = [0u8; 1];
        rd(&mut r, &mut tag)?;
        let mut n8 = [0u8; 8];
        rd(&mut r, &mut n8)?;
        let n = u64::from_le_bytes(n8);
        match tag[0] {
            b'R' => {
                let mut left = n;
                while left > 0 {
                    let chunk = left.min(buf.len() as u64) as usize;
                    rd(&mut r, &mut buf[..chunk])?;
                    hasher.update(&buf[..chunk]);
                    out.write_all(&buf[..chunk]).map_err(out_err)?;
                    left -= chunk as u64;
                }
                total += n;
            }
            b'F' => {
                let mut l4 = [0u8; 4];
                rd(&mut r, &mut l4)?;
                let len = u32::from_le_bytes(l4) as usize;
                if len > 64 * 1024 {
                    return Err(corrupt("a path longer than 64 KiB"));
                }
                let mut key = vec![0u8; len];
                rd(&mut r, &mut key)?;
                let file = open_file(&root_fd, &key, n)?;
                let mut file = BufReader::with_capacity(256 * 1024, file).take(n);
                let mut got = 0u64;
                loop {
                    let k = match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(ChangesetError::io("reading", &key, e)),
                    };
                    hasher.update(&buf[..k]);
                    out.write_all(&buf[..k]).map_err(out_err)?;
                    got += k as u64;
                }
                if got != n {
                    return Err(mismatch(format!(
                        "file {:?} ended after {got} of its {n} bytes",
                        show(&key)
                    )));
                }
                total += n;
            }
            b'E' => {
                let mut want = [0u8; 32];
                rd(&mut r, &mut want)?;
                let got: [u8; 32] = hasher.finalize().into();
                if n != total || got != want {
                    return Err(mismatch(format!(
                        "the reassembled stream ({total} bytes, {}) is not the recorded one ({n} bytes, {})",
                        sha256_string(&got),
                        sha256_string(&want)
                    )));
                }
                out.flush().map_err(out_err)?;
                return Ok(Reassembled {
                    bytes: total,
                    diff_id: sha256_string(&got),
                });
            }
            t => return Err(corrupt(format!("unknown record type {t:#x}"))),
        }
    }
}

/// Opens the regular file at `key` under `root`, never following a
/// symlink; it must be `size` bytes long.
fn open_file(root: &OwnedFd, key: &[u8], size: u64) -> Result<File, ChangesetError> {
    let comps = split(key);
    let gone = |why: &str| {
        mismatch(format!(
            "file {:?} of the changeset {why} in the layer",
            show(key)
        ))
    };
    let fd = match Walker::new(root.as_fd(), Links::Refuse)
        .walk(&comps, OFlags::RDONLY | OFlags::NOFOLLOW, None)
        .map_err(|e| ChangesetError::io("opening", key, e))?
    {
        Walked::Found(fd) => fd,
        _ => return Err(gone("is not")),
    };
    let st = sys::fstat(fd.as_fd()).map_err(|e| ChangesetError::io("inspecting", key, e))?;
    if st.file_type() != FileType::RegularFile {
        return Err(gone("is not a regular file"));
    }
    if st.st_size as u64 != size {
        return Err(mismatch(format!(
            "file {:?} has {} bytes in the layer, {size} in the changeset",
            show(key),
            st.st_size
        )));
    }
    Ok(File::from(fd))
}
/// The length of the stream `record` describes (its end: `'E'` TOTAL
/// SHA256), without the layer's files: the changeset's uncompressed size.
/// `None` for a record that does not end as one.
///
/// Errors: the record cannot be read or is not gzip.
pub fn recorded_length(record: &Path) -> io::Result<Option<u64>> {
    let mut all = vec![];
    GzDecoder::new(BufReader::new(File::open(record)?)).read_to_end(&mut all)?;
    let Some(end) = all.len().checked_sub(41) else {
        return Ok(None);
    };
    if all[end] != b'E' {
        return Ok(None);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&all[end + 1..end + 9]);
    Ok(Some(u64::from_le_bytes(n)))
}
