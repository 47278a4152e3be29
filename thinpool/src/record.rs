//! Crash-safe, checksummed JSON records.
//!
//! A record file is one header line followed by pretty JSON:
//!
//! ```text
//! thinlayer-record v1 crc32=1a2b3c4d len=812
//! { ...JSON... }
//! ```
//!
//! The checksum covers the JSON bytes, so a torn or edited file is reported
//! as corrupt instead of being half-believed, and the JSON stays readable
//! with `tail -n +2`. Writes go to a temp file in the same directory, which
//! is fsynced, renamed over the old record and followed by an fsync of the
//! directory: a reader (or the next process after a power cut) sees the old
//! record or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

const MAGIC: &str = "thinlayer-record";
const VERSION: u32 = 1;

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read, written, renamed or synced.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `reading`.
        op: &'static str,
        /// The record, its temp file or its directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file is not a record this version writes, or is damaged.
    #[error("record {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Encodes a value as a record: header line plus JSON.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut json = serde_json::to_vec_pretty(value).expect("records serialize to JSON");
    json.push(b'\n');
    let mut out = format!(
        "{MAGIC} v{VERSION} crc32={:08x} len={}\n",
        crc32fast::hash(&json),
        json.len()
    )
    .into_bytes();
    out.extend_from_slice(&json);
    out
}

/// Decodes bytes written by [`encode`], checking header, length and checksum.
///
/// Errors: [`RecordError::Corrupt`], naming `path` and what is wrong.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| corrupt("no header line".into()))?;
    let header =
        std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("header is not text".into()))?;
    let body = &bytes[nl + 1..];
    let mut parts = header.split(' ');
    if parts.next() != Some(MAGIC) {
        return Err(corrupt("not a thinlayer record".into()));
    }
    match parts.next() {
        Some(v) if v == format!("v{VERSION}") => {}
        Some(v) => return Err(corrupt(format!("unsupported record version {v}"))),
        None => return Err(corrupt("no version in header".into())),
    }
    let field = |p: Option<&str>, key: &str| -> Result<String, RecordError> {
        p.and_then(|s| s.strip_prefix(key))
            .map(str::to_string)
            .ok_or_else(|| corrupt(format!("header has no {key}")))
    };
    let crc = u32::from_str_radix(&field(parts.next(), "crc32=")?, 16)
        .map_err(|_| corrupt("bad checksum field".into()))?;
    let len: usize = field(parts.next(), "len=")?
        .parse()
        .map_err(|_| corrupt("bad length field".into()))?;
    if body.len() != len {
        return Err(corrupt(format!(
            "truncated or extended: {} bytes of JSON, header says {len}",
            body.len()
        )));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(corrupt(format!(
            "checksum mismatch (stored {crc:08x}, computed {actual:08x})"
        )));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(format!("bad JSON: {e}")))
}

/// Reads a record; `Ok(None)` when the file does not exist.
///
/// Errors: [`RecordError::Io`]; [`RecordError::Corrupt`].
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RecordError> {
    match fs::read(path) {
        Ok(bytes) => decode(&bytes, path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io {
            op: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces the record at `path` atomically and durably.
///
/// Errors: [`RecordError::Io`], after which the old record is intact.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    write_as(path, value, Durability::Durable)
}

/// How far [`write_as`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The record and its name survive a power cut once the write returns.
    Durable,
    /// The record's bytes are synced, its name is not: it survives a power
    /// cut once the caller syncs the directory ([`sync_dir`]), which can
    /// then cover several changes in it (or, on a journaling filesystem,
    /// in others) with one commit.
    NameUnsynced,
    /// Nothing is synced: other processes see the whole record or the old
    /// one, but a power cut may lose it or leave it torn (read back as
    /// [`RecordError::Corrupt`]). For what only live processes read.
    Volatile,
}

/// Replaces the record at `path` atomically for readers, as durably as
/// `durability` says.
///
/// Errors: [`RecordError::Io`], after which the old record is intact.
pub fn write_as<T: Serialize>(
    path: &Path,
    value: &T,
    durability: Durability,
) -> Result<(), RecordError> {
    write_bytes_as(path, &encode(value), durability)
}

/// Replaces the file at `path` with `bytes` as [`write_as`] replaces a
/// record (temporary file, rename), as durably as `durability` says: for
/// files of a pool that are not records (its change log).
///
/// Errors: [`RecordError::Io`], after which the old file is intact.
pub fn write_bytes_as(
    path: &Path,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), RecordError> {
    let io_err = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| RecordError::Io {
            op,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    if durability != Durability::Volatile {
        f.sync_all().map_err(io_err("syncing", &tmp))?;
    }
    drop(f);
    fs::rename(&tmp, path).map_err(io_err("renaming into place", path))?;
    if durability == Durability::Durable {
        sync_dir(dir).map_err(io_err("syncing directory", dir))?;
    }
    Ok(())
}

/// Removes a record durably; a missing record is not an error.
pub fn remove(path: &Path) -> Result<(), RecordError> {
    remove_unsynced(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).map_err(|source| RecordError::Io {
        op: "syncing directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Removes a record (and a temp file a killed write left); durable once
/// the caller syncs the directory ([`sync_dir`]). A missing record is not
/// an error.
pub fn remove_unsynced(path: &Path) -> Result<(), RecordError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RecordError::Io {
                op: "removing",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let _ = fs::remove_file(tmp_path(path));
    Ok(())
}

/// The temporary file a write of `path` goes through, which a killed
/// write leaves behind.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// fsync a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Sample {
        name: String,
        n: u64,
    }

    fn sample() -> Sample {
        Sample {
            name: "pool".into(),
            n: 42,
        }
    }

    #[test]
    fn plain_record_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        assert!(read::<Sample>(&path).unwrap().is_none());
        write(&path, &sample()).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap(), Some(sample()));
        let next = Sample {
            name: "x".into(),
            n: 1,
        };
        write(&path, &next).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap(), Some(next));
        assert!(!tmp_path(&path).exists());
        remove(&path).unwrap();
        assert!(read::<Sample>(&path).unwrap().is_none());
        remove(&path).unwrap();
    }

    #[test]
    fn plain_record_detects_every_kind_of_damage() {
        let path = Path::new("/x/r.json");
        let good = encode(&sample());
        let decode_err = |b: &[u8]| decode::<Sample>(b, path).unwrap_err().to_string();

        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert!(decode_err(&flipped).contains("checksum mismatch"));

        let truncated = &good[..good.len() - 5];
        assert!(decode_err(truncated).contains("truncated"));

        assert!(decode_err(b"").contains("no header"));
        assert!(decode_err(b"{\"name\":\"pool\"}\n").contains("not a thinlayer record"));
        let v2 = String::from_utf8(good.clone())
            .unwrap()
            .replacen("v1", "v9", 1);
        assert!(decode_err(v2.as_bytes()).contains("unsupported record version v9"));
        assert!(decode::<Sample>(&good, path).is_ok());
    }

    #[test]
    fn plain_record_keeps_json_readable_after_the_header() {
        let bytes = encode(&sample());
        let text = String::from_utf8(bytes).unwrap();
        let (_, json) = text.split_once('\n').unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["n"], 42);
    }
}
