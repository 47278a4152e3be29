//! The pool's change log (`pool.log`): where a thin-device change is
//! recorded as pending, at the cost of one sector and one `fdatasync`
//! instead of a whole durable record write.
//!
//! `pool.json` is the checkpoint: every field of the pool, written
//! atomically and durably (temp file, fsync, rename, fsync of the
//! directory: two journal commits on ext4). A change to the set of thin
//! devices only needs its pending operation recorded durably before its
//! dm messages go out ([`crate::recovery`]), so it appends an entry here
//! instead: the record's transaction id and next free thin id at that
//! moment, and the operation. The log is a file of 128 sectors,
//! written in full (zeros) when it is made, so an entry overwrites blocks
//! that are already allocated and its `fdatasync` flushes the sector alone
//! with no metadata to commit.
//!
//! Each entry fills its own sector (a torn write cannot touch another
//! entry's), and carries the pool's id, the checkpoint's epoch
//! ([`PoolRecord::log_epoch`]), its index and a CRC. A reader takes the
//! entries in order from the first sector and stops at the first that is
//! unwritten, torn, of another pool or of an older epoch. A checkpoint
//! writes `pool.json` with the next epoch, which retires every entry at
//! once: a power cut leaves the old checkpoint and its entries, or the new
//! one and none.
//!
//! An operation's commit, once the kernel has it, is one more entry,
//! written without a sync ([`crate::recovery`]). Replaying the entries over
//! the checkpoint ([`PoolRecord::replay`]) is what the writer had in
//! memory: each entry's pending operation was committed if another entry
//! follows it; the last one's is in flight, or left by a process that
//! died or lost power before its commit entry, and recovery asks the
//! kernel's metadata.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PoolRecord, RECORD_FILE};
use crate::error::{Error, Result};
use crate::names::PoolId;
use crate::record::{self, RecordError};
use crate::recovery::PendingOp;
use crate::units::{ThinId, TransactionId};

/// The pool's change log, in its directory.
pub const LOG_FILE: &str = "pool.log";

/// The size of one entry: a sector, the unit a disk writes whole.
const SLOT: usize = 512;
/// How many entries the log holds before a checkpoint.
pub const SLOTS: usize = 128;
const MAGIC: &[u8; 4] = b"TLL1";
/// Magic, payload length and CRC.
const HEADER: usize = 12;

/// One change recorded in the log: the record's state when it was
/// written, and the operation about to be sent to the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The pool it belongs to.
    pub pool: PoolId,
    /// The checkpoint it follows ([`PoolRecord::log_epoch`]).
    pub epoch: u64,
    /// Its place in the log, from 0.
    pub index: u32,
    /// The record's transaction id when it was written, every earlier
    /// entry's operation settled.
    pub transaction_id: TransactionId,
    /// The record's next free thin id.
    pub next_thin_id: ThinId,
    /// The operation about to be sent.
    pub pending: Option<PendingOp>,
}

impl LogEntry {
    /// The entry for `rec` as it stands, at `index`.
    pub fn of(rec: &PoolRecord, index: usize) -> LogEntry {
        LogEntry {
            pool: rec.id.clone(),
            epoch: rec.log_epoch,
            index: index as u32,
            transaction_id: rec.transaction_id,
            next_thin_id: rec.next_thin_id,
            pending: rec.pending.clone(),
        }
    }

    /// The entry as one sector; `None` if it does not fit in one.
    fn encode(&self) -> Option<[u8; SLOT]> {
        let json = serde_json::to_vec(self).expect("log entries serialize to JSON");
        if json.len() > SLOT - HEADER {
            return None;
        }
        let mut out = [0u8; SLOT];
        out[..4].copy_from_slice(MAGIC);
        out[4..8].copy_from_slice(&(json.len() as u32).to_le_bytes());
        out[8..12].copy_from_slice(&crc32fast::hash(&json).to_le_bytes());
        out[HEADER..HEADER + json.len()].copy_from_slice(&json);
        Some(out)
    }

    /// The entry in a sector, if one was written there whole.
    fn decode(slot: &[u8]) -> Option<LogEntry> {
        if slot.len() < HEADER || &slot[..4] != MAGIC {
            return None;
        }
        let len = u32::from_le_bytes(slot[4..8].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(slot[8..12].try_into().ok()?);
        let json = slot.get(HEADER..HEADER + len)?;
        if crc32fast::hash(json) != crc {
            return None;
        }
        serde_json::from_slice(json).ok()
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(LOG_FILE)
}

/// What a reader decoded last time: the checkpoint's bytes with their
/// record, and each log sector with its entry. A process reads the record
/// again before every change (others change it in between); what is
/// byte for byte as it was is not decoded again. Decoding is the cost of
/// a read (the log holds up to [`SLOTS`] entries), and the answer is the
/// one a fresh read gives, since only identical bytes are reused.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadCache {
    checkpoint: Option<(Vec<u8>, PoolRecord)>,
    entries: Vec<(Box<[u8]>, LogEntry)>,
}

impl ReadCache {
    /// The record `bytes` (of `path`) decode to.
    fn checkpoint(&mut self, bytes: Vec<u8>, path: &Path) -> Result<PoolRecord> {
        if let Some((b, rec)) = &self.checkpoint {
            if *b == bytes {
                return Ok(rec.clone());
            }
        }
        let rec: PoolRecord = record::decode(&bytes, path)?;
        self.checkpoint = Some((bytes, rec.clone()));
        Ok(rec)
    }

    /// The entry in sector `i` of the log, holding `slot`, if one was
    /// written there whole.
    fn entry(&mut self, i: usize, slot: &[u8]) -> Option<LogEntry> {
        if let Some((b, e)) = self.entries.get(i) {
            if **b == *slot {
                return Some(e.clone());
            }
        }
        self.entries.truncate(i);
        let e = LogEntry::decode(slot)?;
        self.entries.push((slot.into(), e.clone()));
        Some(e)
    }
}

/// The entries of the log in `dir` that follow checkpoint `rec`, in order:
/// up to the first sector that is not one of them. None when there is no
/// log.
fn entries(dir: &Path, rec: &PoolRecord, cache: &mut ReadCache) -> Result<Vec<LogEntry>> {
    let path = log_path(dir);
    let mut bytes = Vec::with_capacity(SLOT * SLOTS);
    match File::open(&path) {
        Ok(f) => {
            f.take((SLOT * SLOTS) as u64)
                .read_to_end(&mut bytes)
                .map_err(Error::io("reading", &path))?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io("opening", &path)(e)),
    }
    Ok(bytes
        .chunks_exact(SLOT)
        .enumerate()
        .map_while(|(i, slot)| cache.entry(i, slot))
        .enumerate()
        .take_while(|(i, e)| e.pool == rec.id && e.epoch == rec.log_epoch && e.index as usize == *i)
        .map(|(_, e)| e)
        .collect())
}

/// Whether [`append`] syncs its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// `fdatasync`: the entry survives a power cut once written.
    Data,
    /// No sync: other processes, and the next one after a kill, read it;
    /// a power cut may lose it.
    None,
}

/// Writes `entry` into its sector, synced as `sync` says: `Ok(false)`,
/// with nothing written, when there is no log ready for it (none made
/// yet, full, or the entry does not fit in a sector), and the caller
/// checkpoints instead.
///
/// Errors: [`Error::Io`] when the log cannot be written or synced.
pub fn append(dir: &Path, entry: &LogEntry, sync: Sync) -> Result<bool> {
    let path = log_path(dir);
    let Some(slot) = entry.encode() else {
        return Ok(false);
    };
    let f = match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("opening", &path)(e)),
    };
    let len = f.metadata().map_err(Error::io("reading", &path))?.len();
    if len != (SLOT * SLOTS) as u64 || entry.index as usize >= SLOTS {
        return Ok(false);
    }
    f.write_all_at(&slot, entry.index as u64 * SLOT as u64)
        .map_err(Error::io("writing", &path))?;
    if sync == Sync::Data {
        f.sync_data().map_err(Error::io("syncing", &path))?;
    }
    Ok(true)
}

/// Makes an empty log in `dir` (every sector written, so that entries
/// overwrite allocated blocks), atomically and durably, replacing any
/// log there. Its entries are retired by the checkpoint written before.
///
/// Errors: [`Error::Io`]; any log there before is intact.
pub fn make(dir: &Path) -> Result<()> {
    let zeros = [0u8; SLOT * SLOTS];
    Ok(record::write_bytes_as(
        &log_path(dir),
        &zeros,
        record::Durability::Durable,
    )?)
}

/// Whether `dir` has a log entries can be appended to.
pub(crate) fn ready(dir: &Path) -> bool {
    fs::metadata(log_path(dir)).is_ok_and(|m| m.len() == (SLOT * SLOTS) as u64)
}

/// Removes the log, and a new one a killed [`make`] left, if there are
/// any (before its pool's record).
pub(crate) fn remove(dir: &Path) -> Result<()> {
    record::remove_unsynced(&record::tmp_path(&log_path(dir)))?;
    Ok(record::remove(&log_path(dir))?)
}

/// The pool's record as its last change left it: the checkpoint with the
/// log's entries replayed, and how many there are (where the next one
/// goes). `None` when `dir` has no record.
///
/// Read without the lock, a checkpoint may replace `pool.json` between
/// reading it and reading the log; the record is read again then.
pub fn read(dir: &Path) -> Result<Option<(PoolRecord, usize)>> {
    read_cached(dir, &mut ReadCache::default())
}

/// [`read`], decoding only what changed since `cache` was filled.
pub(crate) fn read_cached(
    dir: &Path,
    cache: &mut ReadCache,
) -> Result<Option<(PoolRecord, usize)>> {
    let path = dir.join(RECORD_FILE);
    loop {
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("opening", &path)(e)),
        };
        let mut bytes = vec![];
        f.read_to_end(&mut bytes)
            .map_err(Error::io("reading", &path))?;
        let ino = f.metadata().map_err(Error::io("reading", &path))?.ino();
        let mut rec = cache.checkpoint(bytes, &path)?;
        let entries = entries(dir, &rec, cache)?;
        match fs::metadata(&path) {
            Ok(m) if m.ino() == ino => {}
            // Replaced meanwhile: its entries may be the new one's.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", &path)(e)),
        }
        let n = entries.len();
        rec.replay(&entries).map_err(|reason| {
            Error::Record(RecordError::Corrupt {
                path: log_path(dir),
                reason,
            })
        })?;
        return Ok(Some((rec, n)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Bytes;

    fn pool_dir() -> (tempfile::TempDir, PoolRecord) {
        let d = tempfile::tempdir().unwrap();
        let rec = PoolRecord::sample(Bytes::GIB, Bytes::GIB, TransactionId(3));
        record::write(&d.path().join(RECORD_FILE), &rec).unwrap();
        (d, rec)
    }

    fn snapshot(rec: &mut PoolRecord) -> PendingOp {
        let id = rec.allocate_thin_id().unwrap();
        PendingOp::Snapshot {
            id,
            origin: ThinId(0),
            size: Bytes::MIB,
            tag: format!("layer:{id}"),
        }
    }

    #[test]
    fn plain_a_log_entry_round_trips_through_its_sector_and_a_torn_one_reads_as_none() {
        let (_d, mut rec) = pool_dir();
        rec.pending = Some(snapshot(&mut rec));
        let e = LogEntry::of(&rec, 5);
        let slot = e.encode().unwrap();
        assert_eq!(LogEntry::decode(&slot), Some(e.clone()));
        let len = u32::from_le_bytes(slot[4..8].try_into().unwrap()) as usize;
        for cut in [0, 4, HEADER, HEADER + 10, HEADER + len - 1] {
            let mut torn = slot;
            torn[cut..].fill(0);
            assert_eq!(LogEntry::decode(&torn), None, "cut at {cut}");
        }
        let mut flipped = slot;
        flipped[HEADER + 3] ^= 1;
        assert_eq!(LogEntry::decode(&flipped), None);
        rec.pending = Some(PendingOp::Create {
            id: ThinId(1),
            size: Bytes::MIB,
            tag: "x".repeat(600),
        });
        assert!(
            LogEntry::of(&rec, 0).encode().is_none(),
            "fits in no sector"
        );
    }

    #[test]
    fn plain_a_cached_read_answers_as_a_fresh_read_after_every_change() {
        let (d, mut rec) = pool_dir();
        make(d.path()).unwrap();
        let mut cache = ReadCache::default();
        let check = |cache: &mut ReadCache| {
            let fresh = format!("{:?}", read(d.path()));
            assert_eq!(format!("{:?}", read_cached(d.path(), cache)), fresh);
        };
        check(&mut cache);
        for n in 0..6 {
            rec.pending = Some(snapshot(&mut rec));
            assert!(append(d.path(), &LogEntry::of(&rec, n), Sync::None).unwrap());
            check(&mut cache);
        }
        // A sector written again with other bytes, and one torn: the
        // entries from there on are decoded again.
        rec.pending = Some(PendingOp::Delete { id: ThinId(0) });
        assert!(append(d.path(), &LogEntry::of(&rec, 3), Sync::None).unwrap());
        check(&mut cache);
        let log = OpenOptions::new()
            .write(true)
            .open(d.path().join(LOG_FILE))
            .unwrap();
        log.write_all_at(&[0u8; 8], 2 * SLOT as u64 + 20).unwrap();
        check(&mut cache);
        assert_eq!(read_cached(d.path(), &mut cache).unwrap().unwrap().1, 2);
        // A new checkpoint retires them all.
        rec.pending = None;
        rec.log_epoch += 1;
        record::write(&d.path().join(RECORD_FILE), &rec).unwrap();
        check(&mut cache);
        assert_eq!(
            read_cached(d.path(), &mut cache).unwrap().unwrap(),
            (rec, 0)
        );
    }

    #[test]
    fn plain_entries_replay_over_the_checkpoint_as_the_writer_had_them() {
        let (d, mut rec) = pool_dir();
        assert!(
            !append(d.path(), &LogEntry::of(&rec, 0), Sync::Data).unwrap(),
            "no log yet"
        );
        make(d.path()).unwrap();
        assert_eq!(read(d.path()).unwrap().unwrap(), (rec.clone(), 0));
        let mut n = 0;
        let mut put = |rec: &PoolRecord, sync| {
            assert!(append(d.path(), &LogEntry::of(rec, n), sync).unwrap());
            n += 1;
            let (read_back, len) = read(d.path()).unwrap().unwrap();
            assert_eq!((&read_back, len), (rec, n));
        };
        for round in 0..5 {
            // Each change: pending, synced; then, once the kernel has it,
            // committed in memory and its commit entry, not synced.
            let op = if round == 3 {
                PendingOp::Delete { id: ThinId(0) }
            } else {
                snapshot(&mut rec)
            };
            rec.pending = Some(op.clone());
            put(&rec, Sync::Data);
            rec.commit(op);
            put(&rec, Sync::None);
        }
        // The next change's entry commits the last one as well.
        let op = snapshot(&mut rec);
        rec.pending = Some(op.clone());
        put(&rec, Sync::Data);
        rec.commit(op);
        rec.pending = Some(snapshot(&mut rec));
        put(&rec, Sync::Data);
        assert_eq!(n, 12);
        assert_eq!(
            rec.thins.len(),
            4,
            "five snapshots and a delete; the last one pending"
        );
        // A checkpoint (once the last change is settled) retires the
        // entries: the record alone is the state.
        let last = rec.pending.clone().unwrap();
        rec.commit(last);
        rec.log_epoch += 1;
        record::write(&d.path().join(RECORD_FILE), &rec).unwrap();
        assert_eq!(read(d.path()).unwrap().unwrap(), (rec.clone(), 0));
        // A new entry at index 0 of the new epoch; the old ones after it
        // are of the old epoch and stop the reader.
        rec.pending = Some(snapshot(&mut rec));
        assert!(append(d.path(), &LogEntry::of(&rec, 0), Sync::Data).unwrap());
        assert_eq!(read(d.path()).unwrap().unwrap(), (rec.clone(), 1));
    }

    #[test]
    fn plain_a_torn_last_entry_leaves_the_state_before_it() {
        let (d, mut rec) = pool_dir();
        make(d.path()).unwrap();
        let op = snapshot(&mut rec);
        rec.pending = Some(op.clone());
        append(d.path(), &LogEntry::of(&rec, 0), Sync::Data).unwrap();
        let before = rec.clone();
        rec.commit(op);
        rec.pending = Some(snapshot(&mut rec));
        let mut slot = LogEntry::of(&rec, 1).encode().unwrap();
        slot[HEADER + 20..].fill(0xff);
        let f = OpenOptions::new()
            .write(true)
            .open(log_path(d.path()))
            .unwrap();
        f.write_all_at(&slot, SLOT as u64).unwrap();
        assert_eq!(read(d.path()).unwrap().unwrap(), (before, 1));
    }

    #[test]
    fn plain_an_entry_out_of_sequence_is_reported_as_corrupt_not_replayed() {
        let (d, mut rec) = pool_dir();
        make(d.path()).unwrap();
        rec.transaction_id = TransactionId(9);
        append(d.path(), &LogEntry::of(&rec, 0), Sync::Data).unwrap();
        let err = read(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("pool.log") && err.contains("transaction 9"),
            "{err}"
        );
    }
}
