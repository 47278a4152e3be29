//! Reading a layer blob on a second core while the first applies it.
//!
//! Importing a layer is a pipeline: read the blob, hash it (its digest),
//! inflate it, then hash the tar (its diff_id) and write its files. Done in
//! one thread, the CPU work of the first three stalls the file writes; GNU
//! tar gets the same split for free by running gzip as a second process.
//! [`decompressed`] runs read, digest check and decompression in a scoped
//! thread and hands the plain tar over in chunks through a bounded channel,
//! so at most [`DEPTH`] chunks are ever held in memory.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::Scope;

use crate::changeset::{decompress, Compression};
use crate::progress::Progress;

const CHUNK: usize = 256 << 10;
const DEPTH: usize = 8;

/// One hand-over: the compressed bytes read so far, and the next plain bytes.
type Msg = io::Result<(u64, Vec<u8>)>;

/// Counts the bytes read from the blob (for progress, which is in blob bytes).
struct Counted<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// Starts reading `blob` in a thread of `scope`, decompressed (gzip, zstd or
/// none, as sniffed). Errors reach the reader at the point of the stream
/// where they happened: a digest mismatch at the end, like the blob's own
/// reader. Dropping the reader stops the thread. With `plain`, the blob
/// must be uncompressed (its digest is its diff_id, so its bytes are the
/// tar): a compressed one is an error.
pub(crate) fn decompressed<'scope, 'env, R>(
    scope: &'scope Scope<'scope, 'env>,
    blob: R,
    progress: &'scope dyn Progress,
    plain: bool,
) -> Ahead<'scope>
where
    R: Read + Send + 'scope,
{
    let (tx, rx) = sync_channel::<Msg>(DEPTH);
    scope.spawn(move || {
        let n = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner: blob,
            n: n.clone(),
        };
        let mut plain = match decompress(counted) {
            Ok((comp, _)) if plain && comp != Compression::None => {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the blob is {comp:?}-compressed, but its digest is its diff_id, \
                         which only an uncompressed tar can have"
                    ),
                )));
                return;
            }
            Ok((_, r)) => r,
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e.to_string(),
                )));
                return;
            }
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            match plain.read(&mut buf) {
                Ok(0) => {
                    // The last count: what the decoder read after its last output.
                    let _ = tx.send(Ok((n.load(Ordering::Relaxed), Vec::new())));
                    return;
                }
                Ok(k) => {
                    buf.truncate(k);
                    if tx.send(Ok((n.load(Ordering::Relaxed), buf))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    Ahead {
        rx,
        buf: Vec::new(),
        pos: 0,
        reported: 0,
        failed: None,
        progress,
    }
}

/// The consuming end of [`decompressed`].
pub(crate) struct Ahead<'a> {
    rx: Receiver<Msg>,
    buf: Vec<u8>,
    pos: usize,
    reported: u64,
    /// A failure, repeated to every later read.
    failed: Option<(io::ErrorKind, String)>,
    progress: &'a dyn Progress,
}

impl Read for Ahead<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok((read, buf))) => {
                    self.progress.advance(read - self.reported);
                    self.reported = read;
                    self.buf = buf;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                // The thread finished: end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let k = out.len().min(self.buf.len() - self.pos);
        out[..k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::cell::Cell;
    use std::io::Write;

    struct Count(Cell<u64>);
    impl Progress for Count {
        fn advance(&self, b: u64) {
            self.0.set(self.0.get() + b);
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn plain_gzip_in_plain_out_with_progress_in_blob_bytes() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = gzip(&data);
        let count = Count(Cell::new(0));
        let got = std::thread::scope(|s| {
            let mut r = decompressed(s, blob.as_slice(), &count, false);
            let mut v = vec![];
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(got, data);
        assert_eq!(count.0.get(), blob.len() as u64);
    }

    /// A reader that fails after some bytes, as a digest check does at EOF.
    struct FailsAt(&'static [u8]);
    impl Read for FailsAt {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "digest mismatch",
                ));
            }
            let k = buf.len().min(self.0.len());
            buf[..k].copy_from_slice(&self.0[..k]);
            self.0 = &self.0[k..];
            Ok(k)
        }
    }

    #[test]
    fn plain_an_error_arrives_after_the_data_before_it_and_repeats() {
        std::thread::scope(|s| {
            let mut r = decompressed(s, FailsAt(b"plain bytes"), &NoProgress, false);
            let mut v = vec![];
            let e = r.read_to_end(&mut v).unwrap_err();
            assert_eq!(v, b"plain bytes");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("digest mismatch"));
            let again = r.read(&mut [0u8; 4]).unwrap_err();
            assert!(again.to_string().contains("digest mismatch"));
        });
    }

    #[test]
    fn plain_an_unsupported_compression_is_an_error_at_the_first_read() {
        let xz = b"\xfd7zXZ\x00 rest of it";
        std::thread::scope(|s| {
            let mut r = decompressed(s, &xz[..], &NoProgress, false);
            let e = r.read(&mut [0u8; 16]).unwrap_err();
            assert!(e.to_string().contains("xz"), "{e}");
        });
    }

    #[test]
    fn plain_a_blob_that_must_be_a_plain_tar_passes_through_or_is_refused_compressed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let got = std::thread::scope(|s| {
            let mut r = decompressed(s, data.as_slice(), &NoProgress, true);
            let mut v = vec![];
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(got, data);
        let blob = gzip(&data);
        std::thread::scope(|s| {
            let mut r = decompressed(s, blob.as_slice(), &NoProgress, true);
            let e = r.read(&mut [0u8; 16]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(
                e.to_string().contains("Gzip-compressed") && e.to_string().contains("diff_id"),
                "{e}"
            );
        });
    }

    #[test]
    fn plain_dropping_the_reader_early_stops_the_thread() {
        let data = vec![1u8; 64 * CHUNK];
        std::thread::scope(|s| {
            let mut r = decompressed(s, data.as_slice(), &NoProgress, false);
            r.read_exact(&mut [0u8; 10]).unwrap();
            drop(r);
        });
    }
}
