//! Compression: sniffing and undoing it on input, doing it on output, and
//! hashing the uncompressed bytes on the way out.

use std::io::{self, Cursor, Read, Write};

use sha2::{Digest, Sha256};

use super::error::ChangesetError;
use super::Compression;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
/// "BZh", a level digit, then the first block's magic (pi in BCD).
const BZIP2_BLOCK_MAGIC: &[u8] = &[0x31, 0x41, 0x59, 0x26, 0x53, 0x59];

/// Reads `r` into `buf` until it is full or the stream ends: the bytes
/// read, and the error that stopped it early, if one did.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut k = 0;
    while k < buf.len() {
        match r.read(&mut buf[k..]) {
            Ok(0) => break,
            Ok(got) => k += got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (k, Some(e)),
        }
    }
    (k, None)
}

/// Sniffs magic bytes (gzip 1f 8b, zstd 28 b5 2f fd, else plain tar) and
/// returns a decompressing reader. Concatenated gzip members and zstd frames
/// are read as one stream, as other OCI tools do. xz and bzip2 are
/// recognized and refused as unsupported.
///
/// Reads the first ten bytes of `r` before returning.
///
/// # Errors
/// [`ChangesetError::Unsupported`] for xz and bzip2;
/// [`ChangesetError::Io`] when reading `r` fails or zstd cannot start. A
/// corrupt compressed stream shows up later, as errors of the reader.
pub fn decompress<'a, R: Read + 'a>(
    r: R,
) -> Result<(Compression, Box<dyn Read + 'a>), ChangesetError> {
    let mut r = r;
    let mut head = [0u8; 10];
    let (n, failed) = read_full(&mut r, &mut head);
    if let Some(e) = failed {
        return Err(ChangesetError::Io {
            op: "reading",
            path: "changeset input".to_string(),
            source: e,
        });
    }
    let head = &head[..n];
    let unsupported = |what: &str| ChangesetError::Unsupported {
        entry: String::new(),
        reason: format!("{what}-compressed changesets are not supported (gzip, zstd or none)"),
    };
    if head.starts_with(XZ_MAGIC) {
        return Err(unsupported("xz"));
    }
    if head.len() == 10
        && head.starts_with(b"BZh")
        && head[3].is_ascii_digit()
        && &head[4..] == BZIP2_BLOCK_MAGIC
    {
        return Err(unsupported("bzip2"));
    }
    let whole = Cursor::new(head.to_vec()).chain(r);
    if head.starts_with(GZIP_MAGIC) {
        Ok((
            Compression::Gzip,
            Box::new(flate2::read::MultiGzDecoder::new(whole)),
        ))
    } else if head.starts_with(ZSTD_MAGIC) {
        let d = zstd::stream::read::Decoder::new(whole).map_err(|e| ChangesetError::Io {
            op: "starting zstd decompression of",
            path: "changeset input".to_string(),
            source: e,
        })?;
        Ok((Compression::Zstd, Box::new(d)))
    } else {
        Ok((Compression::None, Box::new(whole)))
    }
}

/// A gzip writer (no name, mtime 0) that gathers `input` bytes before
/// gzip is given them: flate2 zeroes its whole output buffer (32 KiB) on
/// every write, and archives and records come a header (512 bytes), a
/// copy buffer (8 KiB) or a few bytes at a time.
pub(crate) type GzipWriter<W> = io::BufWriter<flate2::write::GzEncoder<W>>;

/// A [`GzipWriter`] of `level`, gathering `input` bytes.
pub(crate) fn gzip_writer<W: Write>(
    w: W,
    level: flate2::Compression,
    input: usize,
) -> GzipWriter<W> {
    io::BufWriter::with_capacity(input, flate2::GzBuilder::new().mtime(0).write(w, level))
}

/// Ends a [`GzipWriter`]'s stream: what it gathered, then gzip's trailer.
pub(crate) fn finish_gzip<W: Write>(g: GzipWriter<W>) -> io::Result<W> {
    g.into_inner().map_err(|e| e.into_error())?.finish()
}

/// What an export gathers before gzip: a few copy buffers.
const GZIP_INPUT: usize = 256 << 10;

/// The compressing end of an export.
pub(crate) enum Encoder<W: Write> {
    None(W),
    Gzip(GzipWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub(crate) fn new(w: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(w),
            // No name, mtime 0, fixed level: the same input, the same bytes.
            Compression::Gzip => {
                Encoder::Gzip(gzip_writer(w, flate2::Compression::new(6), GZIP_INPUT))
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, 3)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Encoder::Gzip(e) => {
                let mut w = finish_gzip(e)?;
                w.flush()?;
                Ok(w)
            }
            Encoder::Zstd(e) => {
                let mut w = e.finish()?;
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// Hashes and counts what passes through to `inner`.
pub(crate) struct HashWriter<W: Write> {
    pub(crate) inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// (inner, `"sha256:<hex>"`, length).
    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, digest_string(self.hasher), self.len)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn digest_string(h: Sha256) -> String {
    sha256_string(&h.finalize())
}

/// `"sha256:<hex>"` of a finished digest.
pub(crate) fn sha256_string(digest: &[u8]) -> String {
    let mut s = String::with_capacity(7 + 2 * digest.len());
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
