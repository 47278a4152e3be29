//! The input side: a reader between the decompressor and the `tar` crate
//! that hashes every byte (the diff_id), captures the headers the `tar` crate
//! reads while it looks for the next entry, and remembers why a read failed;
//! and the parse of those captured headers.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::error::{show, ChangesetError};

const BLOCK: u64 = 512;

/// Why the stream under the `tar` crate failed.
pub(crate) enum Failure {
    /// The caller's reader failed.
    Input(io::Error),
    /// The decompressor refused the stream.
    Decode(io::Error),
    /// The headers of one member exceeded the budget.
    HeaderLimit,
    /// Writing the layout record ([`super::split`]) failed.
    Record(io::Error),
}

/// State shared between [`Monitor`] (owned by the `tar` archive) and the
/// apply loop.
pub(crate) struct Shared {
    pos: Cell<u64>,
    capturing: Cell<bool>,
    capture_start: Cell<u64>,
    capture: RefCell<Vec<u8>>,
    capture_limit: usize,
    eof: Cell<bool>,
    /// A file whose content the next bytes are (its key, its size), for
    /// the layout record.
    content: RefCell<Option<(Vec<u8>, u64)>>,
    recording: Cell<bool>,
    failure: RefCell<Option<Failure>>,
    input_error: Rc<RefCell<Option<io::Error>>>,
}

impl Shared {
    pub(crate) fn new(
        capture_limit: usize,
        input_error: Rc<RefCell<Option<io::Error>>>,
    ) -> Rc<Self> {
        Rc::new(Shared {
            pos: Cell::new(0),
            capturing: Cell::new(false),
            capture_start: Cell::new(0),
            capture: RefCell::new(Vec::new()),
            capture_limit,
            eof: Cell::new(false),
            content: RefCell::new(None),
            recording: Cell::new(false),
            failure: RefCell::new(None),
            input_error,
        })
    }

    /// Starts capturing what is read; returns the stream position.
    pub(crate) fn begin_capture(&self) -> u64 {
        self.capture.borrow_mut().clear();
        self.capturing.set(true);
        self.capture_start.set(self.pos.get());
        self.pos.get()
    }

    pub(crate) fn end_capture(&self) -> Vec<u8> {
        self.capturing.set(false);
        std::mem::take(&mut *self.capture.borrow_mut())
    }

    /// Tells the layout record that the `size` bytes at `file_pos` are the
    /// content of the file written at `key`. Only when nothing of it has
    /// been read yet; otherwise the bytes stay in the record as they are.
    pub(crate) fn file_content(&self, key: &[u8], size: u64, file_pos: u64) {
        if self.recording.get() && size > 0 && file_pos == self.pos.get() {
            *self.content.borrow_mut() = Some((key.to_vec(), size));
        }
    }

    /// Turns an error that came out of the `tar` crate (or out of reading an
    /// entry) into ours; `ctx` says where ("after entry \"x\"").
    pub(crate) fn classify(&self, e: io::Error, ctx: &str) -> ChangesetError {
        match self.failure.borrow_mut().take() {
            Some(Failure::Input(src)) => ChangesetError::Io {
                op: "reading",
                path: "changeset input".to_string(),
                source: src,
            },
            Some(Failure::Decode(src)) => {
                if src.kind() == io::ErrorKind::UnexpectedEof {
                    ChangesetError::truncated(format!("compressed stream ends early {ctx}: {src}"))
                } else {
                    ChangesetError::malformed(format!("invalid compressed stream {ctx}: {src}"))
                }
            }
            Some(Failure::HeaderLimit) => ChangesetError::limit(format!(
                "headers of the member {ctx} take more than {} bytes",
                self.capture_limit
            )),
            Some(Failure::Record(src)) => ChangesetError::Io {
                op: "recording the layout of",
                path: "the changeset".to_string(),
                source: src,
            },
            None if self.eof.get() => {
                ChangesetError::truncated(format!("unexpected end of archive {ctx}"))
            }
            None => ChangesetError::malformed(format!("{e} ({ctx})")),
        }
    }

    /// The error for a member whose data ends before its size.
    /// One `read` of `r` for the archive's reader: retried when a signal
    /// interrupts it, a failure classified (`ctx` says where, for
    /// messages). `Ok(0)` is the end of `r`.
    pub(crate) fn read_some(
        &self,
        r: &mut dyn Read,
        buf: &mut [u8],
        ctx: impl FnOnce() -> String,
    ) -> Result<usize, ChangesetError> {
        loop {
            match r.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.classify(e, &ctx())),
                Ok(n) => return Ok(n),
            }
        }
    }

    pub(crate) fn short_entry(&self, entry: &[u8], got: u64, size: u64) -> ChangesetError {
        ChangesetError::truncated(format!(
            "unexpected end of archive in entry {:?} ({got} of {size} bytes)",
            show(entry)
        ))
    }
}

/// Records errors of the caller's reader, so that they are told apart from
/// the decompressor's.
pub(crate) struct InputTap<R> {
    pub(crate) inner: R,
    pub(crate) error: Rc<RefCell<Option<io::Error>>>,
}

impl<R: Read> Read for InputTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.error.borrow_mut() = Some(e);
                Err(copy)
            }
            r => r,
        }
    }
}

/// How a [`Monitor`] comes by the stream's sha256.
enum StreamDigest {
    /// Hashing every byte read.
    Hashing(Sha256),
    /// Given by the caller, whose reader checks it.
    Known([u8; 32]),
}

/// The reader the `tar` crate reads from.
pub(crate) struct Monitor<'a> {
    inner: Box<dyn Read + 'a>,
    digest: StreamDigest,
    record: Option<super::split::Recorder<'a>>,
    shared: Rc<Shared>,
    /// Zeros still to hand out after the input ended between members.
    synthetic: u64,
}

impl<'a> Monitor<'a> {
    /// A monitor of `inner`, whose sha256 is `known` if the caller vouches
    /// for it (then nothing is hashed here).
    pub(crate) fn new(
        inner: Box<dyn Read + 'a>,
        shared: Rc<Shared>,
        record: Option<super::split::Recorder<'a>>,
        known: Option<[u8; 32]>,
    ) -> Self {
        shared.recording.set(record.is_some());
        Monitor {
            inner,
            digest: match known {
                Some(d) => StreamDigest::Known(d),
                None => StreamDigest::Hashing(Sha256::new()),
            },
            record,
            shared,
            synthetic: 0,
        }
    }

    /// Reads the rest of the stream after the end-of-archive block into the
    /// hash; it must be zeros.
    pub(crate) fn drain_trailer(&mut self, ctx: &str) -> Result<(), ChangesetError> {
        let mut buf = vec![0u8; 64 * 1024];
        let shared = self.shared.clone();
        loop {
            let n = match shared.read_some(self, &mut buf, || ctx.to_string())? {
                0 => return Ok(()),
                n => n,
            };
            if buf[..n].iter().any(|b| *b != 0) {
                return Err(ChangesetError::malformed(format!(
                    "data after the end-of-archive marker ({ctx})"
                )));
            }
        }
    }

    /// (`"sha256:<hex>"`, stream length), after ending the layout record.
    pub(crate) fn finish(self) -> Result<(String, u64), ChangesetError> {
        let total = self.shared.pos.get();
        let digest: [u8; 32] = match self.digest {
            StreamDigest::Hashing(h) => h.finalize().into(),
            StreamDigest::Known(d) => d,
        };
        if let Some(r) = self.record {
            r.finish(total, &digest).map_err(|e| ChangesetError::Io {
                op: "recording the layout of",
                path: "the changeset".to_string(),
                source: e,
            })?;
        }
        Ok((super::compress::sha256_string(&digest), total))
    }
}

impl Read for Monitor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let capturing = shared.capturing.get();
        let mut len = buf.len();
        if capturing {
            let room = shared
                .capture_limit
                .saturating_sub(shared.capture.borrow().len());
            if room == 0 && len > 0 {
                *shared.failure.borrow_mut() = Some(Failure::HeaderLimit);
                return Err(io::Error::other("member headers exceed the limit"));
            }
            len = len.min(room);
        }
        if self.synthetic > 0 && len > 0 {
            let n = len.min(self.synthetic as usize);
            buf[..n].fill(0);
            self.synthetic -= n as u64;
            if capturing {
                shared.capture.borrow_mut().extend_from_slice(&buf[..n]);
            }
            return Ok(n);
        }
        match self.inner.read(&mut buf[..len]) {
            Ok(0) => {
                // Some writers (umoci 0.4) end the archive right after the
                // last member's data, without its padding or the two zero
                // blocks. Ending *between members* loses nothing, so it is
                // completed here with zeros (not hashed: the diff_id stays
                // that of the bytes given). Ending inside a member's data or
                // header is still an error.
                let between = capturing
                    && shared.pos.get() > 0
                    && shared.capture.borrow().iter().all(|b| *b == 0);
                if len > 0 && between && !shared.eof.get() {
                    shared.eof.set(true);
                    self.synthetic = (BLOCK - shared.pos.get() % BLOCK) % BLOCK + 2 * BLOCK;
                    return self.read(buf);
                }
                if len > 0 {
                    shared.eof.set(true);
                }
                Ok(0)
            }
            Ok(n) => {
                if let Some(r) = &mut self.record {
                    let recorded = match shared.content.borrow_mut().take() {
                        Some((key, size)) => r.file(&key, size),
                        None => Ok(()),
                    }
                    .and_then(|()| r.bytes(&buf[..n]));
                    if let Err(e) = recorded {
                        let copy = io::Error::new(e.kind(), e.to_string());
                        *shared.failure.borrow_mut() = Some(Failure::Record(e));
                        return Err(copy);
                    }
                }
                if let StreamDigest::Hashing(h) = &mut self.digest {
                    h.update(&buf[..n]);
                }
                shared.pos.set(shared.pos.get() + n as u64);
                if capturing {
                    shared.capture.borrow_mut().extend_from_slice(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let f = match shared.input_error.borrow_mut().take() {
                    Some(src) => Failure::Input(src),
                    None => Failure::Decode(io::Error::new(e.kind(), e.to_string())),
                };
                *shared.failure.borrow_mut() = Some(f);
                Err(e)
            }
        }
    }
}

/// A member's metadata, parsed from the raw bytes the `tar` crate read.
pub(crate) struct RawMember {
    /// The member's own header block.
    pub(crate) header: tar::Header,
    pub(crate) path: Vec<u8>,
    pub(crate) link: Option<Vec<u8>>,
    pub(crate) pax: Pax,
}

/// The PAX records this module looks at.
#[derive(Default)]
pub(crate) struct Pax {
    pub(crate) path: Option<Vec<u8>>,
    pub(crate) linkpath: Option<Vec<u8>>,
    pub(crate) size: Option<u64>,
    pub(crate) uid: Option<u64>,
    pub(crate) gid: Option<u64>,
    pub(crate) mtime: Option<(i64, u32)>,
    /// (name, value), in archive order, names unique.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `GNU.sparse.*` records: a PAX-format sparse file.
    pub(crate) sparse: bool,
}

fn align(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Parses what was captured while the `tar` crate found the member whose
/// header is at `header_pos`: from the first block boundary at or after
/// `start`, extension members (`x`, `L`, `K`) and then the header.
pub(crate) fn parse_member(
    captured: &[u8],
    start: u64,
    header_pos: u64,
) -> Result<RawMember, String> {
    let block_at = |pos: u64| -> Result<&[u8], String> {
        let outside = || "framing: header outside what was read".to_string();
        let off = pos
            .checked_sub(start)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(outside)?;
        captured.get(off..off + BLOCK as usize).ok_or_else(outside)
    };
    // What the `tar` crate read bounds the sizes: no overflow past here.
    let body_at = |pos: u64, size: u64| -> Result<&[u8], String> {
        let outside = || "framing: extension data outside what was read".to_string();
        let off = usize::try_from(pos - start).map_err(|_| outside())?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|n| off.checked_add(n))
            .ok_or_else(outside)?;
        captured.get(off..end).ok_or_else(outside)
    };
    let mut h = align(start);
    let mut pax_raw: Option<&[u8]> = None;
    let mut long_name: Option<&[u8]> = None;
    let mut long_link: Option<&[u8]> = None;
    while h < header_pos {
        let block = block_at(h)?;
        let hdr = tar::Header::from_byte_slice(block);
        let size = hdr.entry_size().map_err(|e| e.to_string())?;
        let body = body_at(h + BLOCK, size)?;
        let slot = match block[156] {
            b'x' => &mut pax_raw,
            b'L' => &mut long_name,
            b'K' => &mut long_link,
            t => {
                return Err(format!(
                    "unexpected member type {:?} before an entry",
                    t as char
                ))
            }
        };
        if slot.is_some() {
            return Err("two extension members of one kind describe the same entry".into());
        }
        *slot = Some(body);
        h += BLOCK + align(size);
    }
    if h != header_pos {
        return Err("framing: the entry's header is not where its extension members end".into());
    }
    let header = tar::Header::from_byte_slice(block_at(h)?).clone();
    let pax = match pax_raw {
        Some(raw) => parse_pax(raw)?,
        None => Pax::default(),
    };
    // GNU long names end with a NUL the `tar` crate strips (one).
    let strip = |b: &[u8]| -> Vec<u8> { b.strip_suffix(b"\0").unwrap_or(b).to_vec() };
    let path = match (long_name, &pax.path) {
        (Some(l), Some(p)) if strip(l) != *p => {
            return Err("a GNU long name and a PAX path disagree".into());
        }
        (Some(l), _) => strip(l),
        (None, Some(p)) => p.clone(),
        (None, None) => header.path_bytes().into_owned(),
    };
    let link = match (long_link, &pax.linkpath) {
        (Some(l), Some(p)) if strip(l) != *p => {
            return Err("a GNU long link name and a PAX linkpath disagree".into());
        }
        (Some(l), _) => Some(strip(l)),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => header.link_name_bytes().map(|b| b.into_owned()),
    };
    Ok(RawMember {
        header,
        path,
        link,
        pax,
    })
}

/// Parses PAX records by their length prefixes ("LEN KEY=VALUE\n").
fn parse_pax(mut data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    let bad = || "malformed pax record".to_string();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let sp = data
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let kv = &data[sp + 1..len - 1];
        let eq = kv.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        data = &data[len..];
        let dup = || format!("duplicate pax record {:?}", show(key));
        let number = |v: &[u8]| -> Result<u64, String> {
            std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("pax record {:?} is not a number", show(key)))
        };
        match key {
            b"path" | b"linkpath" => {
                let slot = if key == b"path" {
                    &mut pax.path
                } else {
                    &mut pax.linkpath
                };
                if slot.replace(value.to_vec()).is_some() {
                    return Err(dup());
                }
            }
            b"size" | b"uid" | b"gid" => {
                let n = number(value)?;
                let slot = match key {
                    b"size" => &mut pax.size,
                    b"uid" => &mut pax.uid,
                    _ => &mut pax.gid,
                };
                if slot.replace(n).is_some() {
                    return Err(dup());
                }
            }
            b"mtime" => {
                let t = parse_pax_time(value)
                    .ok_or_else(|| "pax record \"mtime\" is not a time".to_string())?;
                if pax.mtime.replace(t).is_some() {
                    return Err(dup());
                }
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() {
                        return Err("pax xattr record without a name".into());
                    }
                    if pax.xattrs.iter().any(|(n, _)| n == name) {
                        return Err(dup());
                    }
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                } else if key.starts_with(b"GNU.sparse.") {
                    pax.sparse = true;
                }
            }
        }
    }
    Ok(pax)
}

/// "SECONDS[.FRACTION]", possibly negative, to (seconds, nanoseconds >= 0).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if !neg {
        Some((secs, nanos))
    } else if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn plain_pax_time_parses() {
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567899"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }

    #[test]
    fn plain_pax_records_parse_by_length() {
        // A value with a newline inside, and a fake "path" record in it.
        let mut rec = Vec::new();
        let value = b"a\n11 path=x\n";
        let body = [b"SCHILY.xattr.user.v=".as_slice(), value, b"\n"].concat();
        let len = body.len() + 3; // "NN " + body, two digits
        rec.extend_from_slice(format!("{len} ").as_bytes());
        rec.extend_from_slice(&body);
        assert_eq!(rec.len(), len);
        let pax = parse_pax(&rec).unwrap();
        assert_eq!(pax.path, None);
        assert_eq!(pax.xattrs, vec![(b"user.v".to_vec(), value.to_vec())]);
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"10 size=1\n").is_ok());
        assert!(parse_pax(b"10 size=1\n10 size=1\n").is_err());
    }
}
