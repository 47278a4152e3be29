//! Content digests (`sha256:<hex>`), chain ids, and the digest-verifying reader.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A content digest, always `sha256:<64 lowercase hex>`.
///
/// Parsing validates the form; other algorithms (`sha512:…`, `blake3:…`) are refused with a
/// message saying only sha256 is supported.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest '{input}': {reason}")]
pub struct DigestParseError {
    /// The refused string (its first 100 characters).
    pub input: String,
    /// Why it was refused.
    pub reason: String,
}

impl Digest {
    /// The 64 lowercase hex characters after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Builds a digest from a bare hex string.
    ///
    /// # Errors
    ///
    /// [`DigestParseError`] unless `hex` is exactly 64 lowercase hex characters.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestParseError> {
        if is_sha256_hex(hex) {
            Ok(Digest(format!("sha256:{hex}")))
        } else {
            Err(DigestParseError {
                input: hex.chars().take(100).collect(),
                reason: "expected 64 lowercase hex characters".into(),
            })
        }
    }
}

/// True if `s` is exactly 64 lowercase hex characters.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Digest, DigestParseError> {
        let err = |reason: String| DigestParseError {
            input: s.chars().take(100).collect(),
            reason,
        };
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(err("expected 'sha256:<64 hex characters>'".into()));
        };
        if algo != "sha256" {
            return Err(err(format!(
                "unsupported digest algorithm '{}' (only sha256 is supported)",
                algo.chars().take(32).collect::<String>()
            )));
        }
        if !is_sha256_hex(hex) {
            return Err(err(
                "a sha256 digest needs exactly 64 lowercase hex characters".into(),
            ));
        }
        Ok(Digest(s.to_string()))
    }
}

/// oci-spec's digest, which may name any algorithm, as a sha256 [`Digest`]: refused with the
/// same message as [`str::parse`] unless it is `sha256:<64 lowercase hex>`.
impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestParseError;

    fn try_from(d: &oci_spec::image::Digest) -> Result<Digest, DigestParseError> {
        d.as_ref().parse()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The sha256 digest of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    hasher_digest(Sha256::new_with_prefix(bytes))
}

/// The `sha256:<hex>` digest of what `h` was fed.
pub(crate) fn hasher_digest(h: Sha256) -> Digest {
    let out = h.finalize();
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in out {
        s.push_str(&format!("{b:02x}"));
    }
    Digest(s)
}

/// Chain ids of a layer stack, bottom to top (OCI image spec, config.md):
/// `chain_id[0] = diff_id[0]`, `chain_id[n] = sha256(chain_id[n-1] + " " + diff_id[n])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// What a [`VerifyingReader`] checks at EOF.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// The stream must hash to `digest` (and be `size` bytes long when known).
    Blob { digest: Digest, size: Option<u64> },
    /// Legacy docker `layer.tar` without a content digest: if the stream does not start with a
    /// compression magic it is the uncompressed layer itself and must hash to the diff_id.
    DiffIdIfUncompressed { diff_id: Digest, size: Option<u64> },
}

enum State {
    Reading,
    Done,
    Failed(String),
}

/// Passes bytes through, counting and hashing them; the read that hits EOF fails with
/// `InvalidData` if the size or digest differ from what is expected.
pub(crate) struct VerifyingReader<R> {
    inner: R,
    what: String,
    expect: Expect,
    hasher: Sha256,
    count: u64,
    prefix: [u8; 6],
    prefix_len: usize,
    state: State,
}

/// Magic numbers of the compressions a layer blob may use.
pub(crate) fn looks_compressed(prefix: &[u8]) -> bool {
    const MAGICS: &[&[u8]] = &[
        &[0x1f, 0x8b],                         // gzip
        &[0x28, 0xb5, 0x2f, 0xfd],             // zstd
        b"BZh",                                // bzip2
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00], // xz
    ];
    MAGICS.iter().any(|m| prefix.starts_with(m))
}

impl<R: Read> VerifyingReader<R> {
    pub(crate) fn new(inner: R, what: String, expect: Expect) -> Self {
        VerifyingReader {
            inner,
            what,
            expect,
            hasher: Sha256::new(),
            count: 0,
            prefix: [0; 6],
            prefix_len: 0,
            state: State::Reading,
        }
    }

    fn fail(&mut self, msg: String) -> io::Error {
        self.state = State::Failed(msg.clone());
        io::Error::new(io::ErrorKind::InvalidData, msg)
    }

    fn finish(&mut self) -> io::Result<()> {
        let actual = hasher_digest(std::mem::take(&mut self.hasher));
        let (expected, size) = match &self.expect {
            Expect::Blob { digest, size } => (Some(digest.clone()), *size),
            Expect::DiffIdIfUncompressed { diff_id, size } => {
                let compressed = looks_compressed(&self.prefix[..self.prefix_len]);
                ((!compressed).then(|| diff_id.clone()), *size)
            }
        };
        let size_bad = size.is_some_and(|s| s != self.count);
        let digest_bad = expected.as_ref().is_some_and(|e| *e != actual);
        if size_bad || digest_bad {
            let expected_s = match &expected {
                Some(e) => e.to_string(),
                None => "(no digest)".to_string(),
            };
            let size_note = match size {
                Some(s) => format!("{} bytes read, {s} expected", self.count),
                None => format!("{} bytes read", self.count),
            };
            let msg = format!(
                "{}: blob verification failed: expected {expected_s}, actual {actual} \
                 ({size_note})",
                self.what
            );
            return Err(self.fail(msg));
        }
        self.state = State::Done;
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Done => return Ok(0),
            State::Failed(msg) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, msg.clone()))
            }
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.finish()?;
            return Ok(0);
        }
        let chunk = &buf[..n];
        let size = match &self.expect {
            Expect::Blob { size, .. } | Expect::DiffIdIfUncompressed { size, .. } => *size,
        };
        if let Some(size) = size {
            if self.count + n as u64 > size {
                let expected = match &self.expect {
                    Expect::Blob { digest, .. } => digest.to_string(),
                    Expect::DiffIdIfUncompressed { diff_id, .. } => diff_id.to_string(),
                };
                let msg = format!(
                    "{}: blob verification failed: expected {expected} of {size} bytes, \
                     actual blob is longer",
                    self.what
                );
                return Err(self.fail(msg));
            }
        }
        if self.prefix_len < self.prefix.len() {
            let take = (self.prefix.len() - self.prefix_len).min(n);
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
        }
        self.hasher.update(chunk);
        self.count += n as u64;
        Ok(n)
    }
}
