//! Applying a changeset to a directory: the reading loop and the state of
//! one apply here, one job per file below.
//!
//! * [`entry`]: the checks every member passes, and dispatch by type;
//! * [`parents`]: resolving (and making) parent directories under the root;
//! * [`nodes`]: making files, directories, symlinks, devices and fifos;
//! * [`content`]: writing a file's content, sparse;
//! * [`hardlink`]: hard-link entries;
//! * [`whiteout`]: whiteouts and opaque markers;
//! * [`meta`]: owners, modes, times and xattrs.

mod content;
mod entry;
mod hardlink;
mod meta;
mod nodes;
mod parents;
mod whiteout;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;

use super::error::{io_err, io_host, show, ChangesetError};
use super::path::{self, join};
use super::split::Recorder;
use super::stream::{parse_member, InputTap, Monitor, Shared};
use super::Compression;
use super::{decompress, ApplyOptions, ApplyStats, WhiteoutMode};
use crate::fsys::sys;
use parents::Resolver;

type Result<T, E = ChangesetError> = std::result::Result<T, E>;

/// Applies a (possibly compressed) changeset to the directory `root`.
///
/// `root` is trusted (symlinks in its own path are followed); nothing below
/// it is. On failure the error is returned and `root` is left as it is (the
/// caller discards the half-made layer); nothing outside `root` has been
/// written. See the [module documentation](crate::changeset) for the rules.
///
/// # Errors
/// [`ChangesetError::Io`] when `root` cannot be opened or a system call
/// fails; the input kinds ([`ChangesetError::is_bad_input`]) when the
/// changeset is hostile, malformed, truncated, unsupported or over a limit
/// of `opts`.
pub fn apply(input: impl Read, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    apply_inner(input, root, opts, None)
}

/// [`apply()`], recording the changeset's layout to `record` as it goes
/// (see [`crate::changeset::split`]), so that
/// [`crate::changeset::split::reassemble`] can give back its exact bytes
/// from the tree. The record is complete when this returns `Ok`.
///
/// # Errors
/// As [`apply()`]; writing the record is [`ChangesetError::Io`].
pub fn apply_recording(
    input: impl Read,
    root: &Path,
    opts: &ApplyOptions,
    record: &mut dyn Write,
) -> Result<ApplyStats> {
    apply_inner(input, root, opts, Some(record))
}

fn apply_inner<'a>(
    input: impl Read + 'a,
    root: &Path,
    opts: &ApplyOptions,
    record: Option<&'a mut dyn Write>,
) -> Result<ApplyStats> {
    let record = record
        .map(Recorder::new)
        .transpose()
        .map_err(|e| ChangesetError::Io {
            op: "recording the layout of",
            path: "the changeset".to_string(),
            source: e,
        })?;
    let root_fd = sys::open_root(root).map_err(io_host("opening layer root", root))?;
    let input_error = Rc::new(RefCell::new(None));
    let tap = InputTap {
        inner: input,
        error: input_error.clone(),
    };
    let (compression, decoded) = decompress(tap)?;
    let known = match (&opts.known_diff_id, compression) {
        (Some(d), Compression::None) => Some(digest_bytes(d).ok_or_else(|| {
            ChangesetError::malformed(format!(
                "the diff_id given for the stream, {d}, is not a sha256 digest"
            ))
        })?),
        _ => None,
    };
    let shared = Shared::new(opts.max_header_bytes, input_error);
    let mut archive = tar::Archive::new(Monitor::new(decoded, shared.clone(), record, known));
    let mut ap = Applier {
        opts,
        overlay: opts.whiteouts == WhiteoutMode::Overlay,
        res: Resolver::new(root_fd),
        // Absent or unreadable: nothing to copy from it, as before.
        lower: opts.lower.as_deref().and_then(|l| sys::open_root(l).ok()),
        mine: HashSet::new(),
        mine_anc: HashSet::new(),
        leaves: HashSet::new(),
        dirs: BTreeMap::new(),
        content_buf: Vec::new(),
    };
    let mut last: Option<Vec<u8>> = None;
    let mut count = 0u64;
    {
        let mut entries = archive
            .entries()
            .map_err(|e| shared.classify(e, "at the start of the archive"))?;
        loop {
            let start = shared.begin_capture();
            let next = entries.next();
            let captured = shared.end_capture();
            let ctx = ctx_after(&last);
            match next {
                None => {
                    // The `tar` crate stops at a zero block or at EOF on a
                    // block boundary; only the former reads a whole block.
                    if captured.len() < 512 {
                        return Err(ChangesetError::truncated(format!(
                            "no end-of-archive marker {ctx}"
                        )));
                    }
                    break;
                }
                Some(Err(e)) => return Err(shared.classify(e, &ctx)),
                Some(Ok(mut entry)) => {
                    count += 1;
                    if count > opts.max_entries {
                        return Err(ChangesetError::limit(format!(
                            "more than {} entries ({ctx})",
                            opts.max_entries
                        )));
                    }
                    let raw = parse_member(&captured, start, entry.raw_header_position())
                        .map_err(|r| ChangesetError::malformed(format!("{r} ({ctx})")))?;
                    let path = raw.path.clone();
                    ap.entry(&mut entry, raw, &shared)?;
                    last = Some(path);
                }
            }
        }
    }
    let mut monitor = archive.into_inner();
    monitor.drain_trailer(&ctx_after(&last))?;
    ap.finish()?;
    let (diff_id, bytes) = monitor.finish()?;
    Ok(ApplyStats {
        entries: count,
        bytes,
        diff_id,
        compression,
    })
}

/// The 32 bytes of a `sha256:<64 hex digits>` digest.
fn digest_bytes(d: &str) -> Option<[u8; 32]> {
    let hex = d.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn ctx_after(last: &Option<Vec<u8>>) -> String {
    match last {
        Some(p) => format!("after entry {:?}", show(p)),
        None => "before the first entry".to_string(),
    }
}

/// Metadata of one entry, as it will be applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A directory's mode and mtime, set after everything else.
struct DirMeta {
    mode: u32,
    mtime: (i64, u32),
}

struct Applier<'o> {
    opts: &'o ApplyOptions,
    overlay: bool,
    res: Resolver,
    /// The merged tree of the lower layers ([`ApplyOptions::lower`]), if
    /// given and there.
    lower: Option<OwnedFd>,
    /// Paths this archive created or claimed (explicit entries and the
    /// parents it had to make): whiteouts never remove them.
    mine: HashSet<Vec<u8>>,
    /// Every ancestor of a path in `mine`.
    mine_anc: HashSet<Vec<u8>>,
    /// The paths in `mine` that are not directories (files, links,
    /// devices): a whiteout below one of them is redundant.
    leaves: HashSet<Vec<u8>>,
    dirs: BTreeMap<Vec<u8>, DirMeta>,
    /// The buffer files' content passes through ([`content::write_content`]).
    content_buf: Vec<u8>,
}

/// An entry's path split into its parent directory and its name.
struct Target<'p> {
    /// The entry's path as the archive gives it (for messages).
    entry: &'p [u8],
    comps: &'p [Vec<u8>],
    key: Vec<u8>,
    name: CString,
}

impl<'p> Target<'p> {
    fn new(entry: &'p [u8], comps: &'p [Vec<u8>]) -> Result<Self> {
        let name = comps.last().expect("not the root");
        Ok(Target {
            entry,
            comps,
            key: join(comps),
            name: sys::cstring(name).map_err(io_err("naming", entry))?,
        })
    }

    fn dir(&self) -> &'p [Vec<u8>] {
        &self.comps[..self.comps.len() - 1]
    }
}

impl Applier<'_> {
    fn claim(&mut self, key: &[u8]) {
        // Deepest first: once one is known, so are those above it.
        let ancestors: Vec<&[u8]> = path::ancestors(key).collect();
        for a in ancestors.into_iter().rev() {
            if !self.mine_anc.insert(a.to_vec()) {
                break;
            }
        }
        self.mine.insert(key.to_vec());
        self.leaves.remove(key);
    }

    /// [`Applier::claim`] for a non-directory this archive made.
    fn claim_leaf(&mut self, key: &[u8]) {
        self.claim(key);
        self.leaves.insert(key.to_vec());
    }

    /// Whether this archive replaced `dir` or one of its ancestors with a
    /// non-directory. What was below it is gone already, so whiteouts
    /// there are redundant: umoci writes them when a directory becomes a
    /// symlink (and usrmerge images carry them), and they apply as no-ops.
    fn under_leaf(&self, dir: &[Vec<u8>]) -> bool {
        (1..=dir.len()).any(|i| self.leaves.contains(&join(&dir[..i])))
    }
}
