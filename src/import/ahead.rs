//! Reading a layer blob on other cores while the first applies it.
//!
//! Importing a layer is a pipeline: read the blob, hash it (its digest),
//! inflate it, hash the tar (its diff_id) and write its files. Done in one
//! thread, the CPU work of the first four stalls the file writes; GNU tar
//! gets part of that split for free by running gzip as a second process.
//! [`decompressed`] runs read, digest check and decompression in a scoped
//! thread and hands the plain tar over in chunks through a bounded channel,
//! so at most [`DEPTH`] chunks are ever held in memory (behind a gate,
//! below, [`PREFETCH_DEPTH`]); the diff_id is
//! hashed from the same chunks on a third thread ([`DiffIdCheck::Hash`]),
//! so that neither the inflating thread nor the applying one carries it.
//!
//! The chunks' buffers go round: the last holder of a chunk (the
//! applying thread or the hashing one) hands its buffer back to the
//! reader, which fills it again instead of allocating and zeroing a new
//! one for every chunk (a pass over every byte of the layer, and the
//! page faults of fresh memory, for nothing).
//!
//! A layer's reader can wait behind a [`Gate`] that the previous layer's
//! reader opens when its tar has been read to the end: the next blob is
//! then read and inflated while the previous layer's files are still
//! being written out, up to [`PREFETCH_DEPTH`] chunks ahead.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest as _, Sha256};

use crate::changeset::{decompress, read_full, Compression};
use crate::image::{hasher_digest, Digest};
use crate::progress::Progress;

const CHUNK: usize = 256 << 10;
const DEPTH: usize = 8;
/// How far a reader behind a [`Gate`] reads ahead of its layer: 16 MiB,
/// what this machine inflates and hashes in about a third of a second,
/// the time a layer's end (its unmount, flush and records) takes here.
const PREFETCH_DEPTH: usize = 64;

/// What a reader waits on before it reads its blob: the previous layer's
/// tar read to the end. If the [`Opener`] is dropped unopened (that layer
/// failed), the reader stops without reading.
pub(crate) struct Gate(Receiver<()>);

/// Opens a [`Gate`].
pub(crate) struct Opener(SyncSender<()>);

/// A closed gate and what opens it.
pub(crate) fn gate() -> (Opener, Gate) {
    let (tx, rx) = sync_channel(1);
    (Opener(tx), Gate(rx))
}

impl Opener {
    fn open(self) {
        // The reader may be gone (its layer's import ended): nothing to do.
        let _ = self.0.send(());
    }
}

/// One hand-over: the compressed bytes read so far, and the next plain bytes.
type Msg = io::Result<(u64, Arc<Chunk>)>;

/// Plain bytes of the tar, shared by its consumers; its buffer goes back
/// to the reader that filled it when the last of them drops it.
struct Chunk {
    data: Vec<u8>,
    /// Where the buffer goes back to; `None` for a chunk of no buffer.
    back: Option<SyncSender<Vec<u8>>>,
}

impl Chunk {
    fn empty() -> Arc<Chunk> {
        Arc::new(Chunk {
            data: Vec::new(),
            back: None,
        })
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(back) = &self.back {
            // The reader may be gone or have enough spares: then the
            // buffer is freed here.
            let _ = back.try_send(std::mem::take(&mut self.data));
        }
    }
}

/// How the plain tar is checked against its diff_id.
pub(crate) enum DiffIdCheck {
    /// By the blob's own reader: the blob's digest is the diff_id, so the
    /// blob must be the uncompressed tar; a compressed one is an error.
    ByBlob,
    /// Hashed on a thread of its own and compared with `diff_id` at the
    /// end of the stream, where a mismatch is the stream's error, naming
    /// the layer as `what`. With `reader_if_plain`, a blob that turns out
    /// uncompressed is left to its reader, which checks such a blob
    /// against the diff_id itself (a `docker save` layer.tar, which has
    /// no digest of its own).
    Hash {
        diff_id: Digest,
        what: String,
        reader_if_plain: bool,
    },
}

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

/// The diff_id's hashing thread: fed the plain chunks, it returns their
/// digest once the sender is dropped.
struct DiffIdHasher<'scope> {
    tx: SyncSender<Arc<Chunk>>,
    done: ScopedJoinHandle<'scope, Digest>,
    want: Digest,
    what: String,
}

impl<'scope> DiffIdHasher<'scope> {
    fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        want: Digest,
        what: String,
    ) -> DiffIdHasher<'scope> {
        let (tx, rx) = sync_channel::<Arc<Chunk>>(DEPTH);
        let done = scope.spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(&chunk[..]);
            }
            hasher_digest(h)
        });
        DiffIdHasher {
            tx,
            done,
            want,
            what,
        }
    }

    /// The stream's end: an error if the tar's digest is not the diff_id.
    fn finish(self) -> io::Result<()> {
        drop(self.tx);
        let got = self.done.join().map_err(|_| {
            io::Error::other(format!("{}: the thread hashing its tar failed", self.what))
        })?;
        if got != self.want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: its content has diff_id {got}, the image config says {}",
                    self.what, self.want
                ),
            ));
        }
        Ok(())
    }
}

/// Starts reading `blob` in a thread of `scope`, decompressed (gzip, zstd or
/// none, as sniffed), its diff_id checked as `check` says. Errors reach the
/// reader at the point of the stream where they happened: a digest
/// mismatch at the end, like the blob's own reader. Dropping the reader
/// stops the threads. Behind a `gate`, nothing is read until it opens, and
/// then up to [`PREFETCH_DEPTH`] chunks ahead of the reader.
pub(crate) fn decompressed<'scope, 'env, R>(
    scope: &'scope Scope<'scope, 'env>,
    blob: R,
    progress: &'scope dyn Progress,
    check: DiffIdCheck,
    gate: Option<Gate>,
) -> Ahead<'scope>
where
    R: Read + Send + 'scope,
{
    let depth = if gate.is_some() {
        PREFETCH_DEPTH
    } else {
        DEPTH
    };
    let (tx, rx) = sync_channel::<Msg>(depth);
    scope.spawn(move || {
        if let Some(Gate(g)) = gate {
            if g.recv().is_err() {
                // The layer before failed: this one is not imported.
                return;
            }
        }
        let n = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner: blob,
            n: n.clone(),
        };
        let (comp, mut plain) = match decompress(counted) {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    e.to_string(),
                )));
                return;
            }
        };
        let mut hasher = match check {
            DiffIdCheck::ByBlob if comp != Compression::None => {
                let _ = tx.send(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the blob is {comp:?}-compressed, but its digest is its diff_id, \
                         which only an uncompressed tar can have"
                    ),
                )));
                return;
            }
            DiffIdCheck::ByBlob => None,
            DiffIdCheck::Hash {
                reader_if_plain: true,
                ..
            } if comp == Compression::None => None,
            DiffIdCheck::Hash { diff_id, what, .. } => {
                Some(DiffIdHasher::start(scope, diff_id, what))
            }
        };
        // Buffers handed back: at most one per chunk in flight (to the
        // applier and to the hasher) and the one being read into.
        let (back, spare) = sync_channel::<Vec<u8>>(2 * depth + 2);
        loop {
            // Filled before it is handed over: a decoder's read returns
            // what one pass over its input buffer made (tens of KiB), and
            // a chunk, and a message to each consumer, for every such
            // read cost more than the inflating itself.
            let mut buf = spare.try_recv().unwrap_or_default();
            // Zeroes only what was never filled: a buffer back from a full
            // chunk is whole already.
            buf.resize(CHUNK, 0);
            let (k, failed) = read_full(&mut plain, &mut buf);
            if k > 0 {
                buf.truncate(k);
                let buf = Arc::new(Chunk {
                    data: buf,
                    back: Some(back.clone()),
                });
                if let Some(h) = &hasher {
                    if h.tx.send(buf.clone()).is_err() {
                        // The hashing thread is gone, so it failed: its
                        // join says how.
                        let e = hasher.take().and_then(|h| h.finish().err());
                        let _ = tx.send(Err(e.unwrap_or_else(|| {
                            io::Error::other("the diff_id's hashing thread stopped early")
                        })));
                        return;
                    }
                }
                if tx.send(Ok((n.load(Ordering::Relaxed), buf))).is_err() {
                    return;
                }
            }
            match failed {
                // An error reaches the reader after the bytes before it.
                Some(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
                None if k < CHUNK => {
                    let last = match hasher.take().map(DiffIdHasher::finish) {
                        Some(Err(e)) => Err(e),
                        // The last count: what the decoder read after its
                        // last output.
                        _ => Ok((n.load(Ordering::Relaxed), Chunk::empty())),
                    };
                    let _ = tx.send(last);
                    return;
                }
                None => {}
            }
        }
    });
    Ahead {
        rx,
        buf: Chunk::empty(),
        pos: 0,
        reported: 0,
        failed: None,
        progress,
        ended: false,
        at_end: None,
    }
}

/// The consuming end of [`decompressed`].
pub(crate) struct Ahead<'a> {
    rx: Receiver<Msg>,
    buf: Arc<Chunk>,
    pos: usize,
    reported: u64,
    /// A failure, repeated to every later read.
    failed: Option<(io::ErrorKind, String)>,
    progress: &'a dyn Progress,
    /// The last hand-over (empty) arrived.
    ended: bool,
    /// Opened when the last hand-over arrives.
    at_end: Option<Opener>,
}

impl Ahead<'_> {
    /// Opens `next` when this stream has been read to its end (at once if
    /// it has been).
    pub(crate) fn open_at_end(&mut self, next: Opener) {
        self.at_end = Some(next);
        self.open_if_ended();
    }

    /// Opens the gate given to [`Ahead::open_at_end`] now: the layer
    /// succeeded without reading to the end.
    pub(crate) fn open_next(&mut self) {
        if let Some(o) = self.at_end.take() {
            o.open();
        }
    }

    fn open_if_ended(&mut self) {
        if self.ended && self.failed.is_none() {
            self.open_next();
        }
    }
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
                    // Only the last hand-over is empty.
                    self.ended = buf.is_empty();
                    self.buf = buf;
                    self.pos = 0;
                    self.open_if_ended();
                }
                Ok(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                // The thread finished: the end of the stream, if its last
                // hand-over came; if not, it panicked, and the stream is
                // cut short, which must not pass for its end.
                Err(_) if self.ended => return Ok(0),
                Err(_) => {
                    let e = io::Error::other("the thread reading the layer's blob stopped early");
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
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
    use crate::image::sha256_digest;
    use crate::progress::NoProgress;
    use std::cell::Cell;
    use std::io::Write;

    struct Count(Cell<u64>);
    impl Progress for Count {
        fn advance(&self, b: u64) {
            self.0.set(self.0.get() + b);
        }
    }

    /// Hashed here against `data`'s own digest: the check passes.
    fn hashed(data: &[u8]) -> DiffIdCheck {
        DiffIdCheck::Hash {
            diff_id: sha256_digest(data),
            what: "layer 1 of the image".into(),
            reader_if_plain: false,
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
            let mut r = decompressed(s, blob.as_slice(), &count, hashed(&data), None);
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
            let mut r = decompressed(
                s,
                FailsAt(b"plain bytes"),
                &NoProgress,
                hashed(b"plain bytes"),
                None,
            );
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
            let mut r = decompressed(s, &xz[..], &NoProgress, hashed(b""), None);
            let e = r.read(&mut [0u8; 16]).unwrap_err();
            assert!(e.to_string().contains("xz"), "{e}");
        });
    }

    #[test]
    fn plain_a_blob_that_must_be_a_plain_tar_passes_through_or_is_refused_compressed() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
        let got = std::thread::scope(|s| {
            let mut r = decompressed(s, data.as_slice(), &NoProgress, DiffIdCheck::ByBlob, None);
            let mut v = vec![];
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(got, data);
        let blob = gzip(&data);
        std::thread::scope(|s| {
            let mut r = decompressed(s, blob.as_slice(), &NoProgress, DiffIdCheck::ByBlob, None);
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
            let mut r = decompressed(s, data.as_slice(), &NoProgress, hashed(&data), None);
            r.read_exact(&mut [0u8; 10]).unwrap();
            drop(r);
        });
    }

    /// A reader that panics after its bytes, as a bug in a decoder would.
    struct PanicsAfter(io::Cursor<Vec<u8>>);
    impl Read for PanicsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            assert!(n > 0, "a decoder's bug");
            Ok(n)
        }
    }

    #[test]
    fn plain_a_reading_thread_that_panics_cuts_the_stream_with_an_error_not_an_end() {
        // Two full chunks, both handed over before the panic (at the
        // read that would have found the end).
        let data: Vec<u8> = (0..2 * CHUNK as u32).map(|i| (i % 17) as u8).collect();
        let mut seen = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::thread::scope(|s| {
                let check = hashed(b"the whole tar");
                let blob = PanicsAfter(io::Cursor::new(data.clone()));
                let mut r = decompressed(s, blob, &NoProgress, check, None);
                let mut v = vec![];
                let got = r.read_to_end(&mut v).map_err(|e| e.to_string());
                seen = Some((got, v));
            })
        }));
        // The scope passes the reading thread's panic on.
        assert!(r.is_err());
        let (got, v) = seen.expect("the reader returned");
        // Every byte arrived, but not the stream's end: an error still.
        assert!(v == data, "{} bytes arrived of {}", v.len(), data.len());
        let e = got.unwrap_err();
        assert!(e.contains("stopped early"), "{e}");
    }

    /// A reader whose bytes end in an I/O error, as a failing disk's would.
    struct FailsAfter(io::Cursor<Vec<u8>>);
    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other("the disk failed")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn plain_an_error_in_the_middle_of_a_chunk_arrives_after_the_bytes_before_it() {
        // A chunk and a part: the part is handed over, then the error.
        let data: Vec<u8> = (0..CHUNK as u32 + 1000).map(|i| (i % 13) as u8).collect();
        std::thread::scope(|s| {
            // Plain, so left to its reader: the stream is only read here.
            let check = DiffIdCheck::Hash {
                diff_id: sha256_digest(&data),
                what: "layer 1 of the image".into(),
                reader_if_plain: true,
            };
            let mut r = decompressed(
                s,
                FailsAfter(io::Cursor::new(data.clone())),
                &NoProgress,
                check,
                None,
            );
            let mut v = vec![0u8; data.len()];
            r.read_exact(&mut v).unwrap();
            assert!(v == data);
            let e = r.read(&mut [0u8; 1]).unwrap_err();
            assert!(e.to_string().contains("the disk failed"), "{e}");
            // And again at every later read.
            assert!(r.read(&mut [0u8; 1]).is_err());
        });
    }

    #[test]
    fn plain_a_tar_whose_hash_is_not_the_diff_id_fails_after_its_last_byte() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 11 % 241) as u8).collect();
        let blob = gzip(&data);
        let wrong = sha256_digest(b"another tar");
        std::thread::scope(|s| {
            let check = DiffIdCheck::Hash {
                diff_id: wrong.clone(),
                what: "layer 2 of the image".into(),
                reader_if_plain: false,
            };
            let mut r = decompressed(s, blob.as_slice(), &NoProgress, check, None);
            let mut v = vec![];
            let e = r.read_to_end(&mut v).unwrap_err();
            assert_eq!(v, data, "every byte before the end arrives first");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            let want = format!(
                "layer 2 of the image: its content has diff_id {}, the image config says {wrong}",
                sha256_digest(&data)
            );
            assert_eq!(e.to_string(), want);
            assert_eq!(r.read(&mut [0u8; 4]).unwrap_err().to_string(), want);
        });
    }

    #[test]
    fn plain_a_plain_docker_layer_is_left_to_its_reader_and_a_compressed_one_is_hashed() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8).collect();
        let wrong = || DiffIdCheck::Hash {
            diff_id: sha256_digest(b"not this tar"),
            what: "layer 1 of the image".into(),
            reader_if_plain: true,
        };
        // Uncompressed: the blob's reader checks it (not here), so a
        // diff_id this stream does not match is not this stream's error.
        let got = std::thread::scope(|s| {
            let mut r = decompressed(s, data.as_slice(), &NoProgress, wrong(), None);
            let mut v = vec![];
            r.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(got, data);
        let blob = gzip(&data);
        std::thread::scope(|s| {
            let mut r = decompressed(s, blob.as_slice(), &NoProgress, wrong(), None);
            let e = r.read_to_end(&mut vec![]).unwrap_err();
            assert!(e.to_string().contains("its content has diff_id"), "{e}");
        });
    }

    /// A blob that counts the reads made of it.
    struct Watched<'a> {
        data: &'a [u8],
        reads: &'a AtomicU64,
    }
    impl Read for Watched<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.data.read(buf)
        }
    }

    #[test]
    fn plain_a_gated_reader_reads_its_blob_only_once_the_layer_before_is_read_to_its_end() {
        let first: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let second: Vec<u8> = (0..(CHUNK as u32 * 3)).map(|i| (i % 241) as u8).collect();
        let (first_gz, second_gz) = (gzip(&first), gzip(&second));
        let reads = AtomicU64::new(0);
        std::thread::scope(|s| {
            let mut a = decompressed(s, first_gz.as_slice(), &NoProgress, hashed(&first), None);
            let (opener, gate) = gate();
            a.open_at_end(opener);
            let blob = Watched {
                data: &second_gz,
                reads: &reads,
            };
            let mut b = decompressed(s, blob, &NoProgress, hashed(&second), Some(gate));
            // All but the end of the first stream: the second waits.
            let mut head = vec![0u8; first.len()];
            a.read_exact(&mut head).unwrap();
            assert!(head == first);
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert_eq!(
                reads.load(Ordering::SeqCst),
                0,
                "read before its gate opened"
            );
            // The end of the first opens the second's gate, which then
            // reads ahead of its own reader.
            assert_eq!(a.read(&mut [0u8; 16]).unwrap(), 0);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while reads.load(Ordering::SeqCst) == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the gate never opened"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let mut got = vec![];
            b.read_to_end(&mut got).unwrap();
            assert!(got == second);
        });
    }

    #[test]
    fn plain_a_gate_dropped_unopened_stops_its_reader_and_a_success_short_of_the_end_opens_it() {
        let data = b"the next layer".to_vec();
        let reads = AtomicU64::new(0);
        std::thread::scope(|s| {
            // The layer before failed: its opener goes unopened.
            let (opener, gate) = gate();
            let blob = Watched {
                data: &data,
                reads: &reads,
            };
            let mut b = decompressed(s, blob, &NoProgress, hashed(&data), Some(gate));
            drop(opener);
            let e = b.read_to_end(&mut vec![]).unwrap_err();
            assert!(e.to_string().contains("stopped early"), "{e}");
        });
        assert_eq!(reads.load(Ordering::SeqCst), 0);
        std::thread::scope(|s| {
            let mut a = decompressed(s, &b"abc"[..], &NoProgress, hashed(b"abc"), None);
            let (opener, gate) = gate();
            a.open_at_end(opener);
            // Its layer was made without reading the stream's end.
            let mut one = [0u8; 1];
            a.read_exact(&mut one).unwrap();
            a.open_next();
            let mut b = decompressed(s, &data[..], &NoProgress, hashed(&data), Some(gate));
            let mut got = vec![];
            b.read_to_end(&mut got).unwrap();
            assert_eq!(got, data);
        });
    }
}
