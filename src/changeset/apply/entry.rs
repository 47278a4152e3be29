//! One archive member: the checks every member passes, then dispatch by
//! type (whiteouts and opaque markers included).

use std::io::Read;

use tar::EntryType;

use super::{Applier, Result, Target};
use crate::changeset::error::{show, ChangesetError};
use crate::changeset::path::check_path;
use crate::changeset::stream::{RawMember, Shared};
use crate::changeset::{WH_META_PREFIX, WH_OPAQUE, WH_PREFIX};

impl Applier<'_> {
    pub(super) fn entry(
        &mut self,
        entry: &mut dyn ReadEntry,
        raw: RawMember,
        shared: &Shared,
    ) -> Result<()> {
        let path = raw.path.as_slice();
        // The `tar` crate's own view must agree with the length-prefixed one.
        if *entry.tar_path() != *path {
            return Err(ChangesetError::malformed(format!(
                "entry {:?}: its path is ambiguous (inconsistent pax records)",
                show(path)
            )));
        }
        if entry.tar_link() != raw.link {
            return Err(ChangesetError::malformed(format!(
                "entry {:?}: its link target is ambiguous (inconsistent pax records)",
                show(path)
            )));
        }
        let mut etype = raw.header.entry_type();
        let size = entry.size();
        if let Some(ps) = raw.pax.size {
            if !etype.is_gnu_sparse() && ps != size {
                return Err(ChangesetError::malformed(format!(
                    "entry {:?}: its size is ambiguous (inconsistent pax records)",
                    show(path)
                )));
            }
        }
        if raw.pax.sparse {
            return Err(ChangesetError::unsupported(
                path,
                "pax-format sparse files (GNU.sparse.*)",
            ));
        }
        if etype.is_pax_global_extensions() {
            // Ignored, as docker and containerd do.
            return drain(entry, size, path, shared);
        }
        // A pre-POSIX directory: type NUL and a trailing slash.
        if raw.header.as_bytes()[156] == 0 && path.ends_with(b"/") {
            etype = EntryType::Directory;
        }
        let comps = check_path(path, path, None, self.opts.max_path_len)?;
        if let Some((last, dirs)) = comps.split_last() {
            if let Some(c) = dirs.iter().find(|c| c.starts_with(WH_PREFIX)) {
                return Err(ChangesetError::unsupported(
                    path,
                    format!("directory {:?} has the reserved whiteout prefix", show(c)),
                ));
            }
            if last.as_slice() == WH_OPAQUE {
                drain(entry, size, path, shared)?;
                return self.opaque(path, dirs);
            }
            if last.starts_with(WH_META_PREFIX) {
                return Err(ChangesetError::unsupported(
                    path,
                    "aufs metadata (.wh..wh.*)",
                ));
            }
            if let Some(victim) = last.strip_prefix(WH_PREFIX) {
                match victim {
                    b"" | b"." => {
                        return Err(ChangesetError::malformed(format!(
                            "whiteout {:?} names no entry",
                            show(path)
                        )))
                    }
                    b".." => {
                        return Err(ChangesetError::hostile(
                            path,
                            "whites out the parent directory",
                        ))
                    }
                    _ => {}
                }
                drain(entry, size, path, shared)?;
                return self.whiteout(path, &comps, victim);
            }
        }

        let header_only = etype.is_dir()
            || etype.is_symlink()
            || etype.is_hard_link()
            || etype.is_character_special()
            || etype.is_block_special()
            || etype.is_fifo();
        if header_only && size != 0 {
            return Err(ChangesetError::malformed(format!(
                "entry {:?}: a {} entry with size {size}",
                show(path),
                type_name(etype)
            )));
        }
        if size > self.opts.max_entry_size {
            return Err(ChangesetError::limit(format!(
                "entry {:?}: size {size} is more than {}",
                show(path),
                self.opts.max_entry_size
            )));
        }
        let meta = self.meta(&raw, path, etype)?;
        if comps.is_empty() {
            return if etype.is_dir() {
                self.root_dir(path, meta)
            } else {
                Err(ChangesetError::hostile(path, "replaces the layer root"))
            };
        }
        let t = Target::new(path, &comps)?;
        if etype.is_file() || etype.is_contiguous() || etype.is_gnu_sparse() {
            // A sparse entry's data is not the file's bytes: it stays in
            // the layout record as it is.
            if !etype.is_gnu_sparse() {
                shared.file_content(&t.key, size, entry.file_position());
            }
            self.file(&t, meta, entry, size, shared)
        } else if etype.is_dir() {
            self.dir(&t, meta)
        } else if etype.is_symlink() {
            self.symlink(&t, meta, raw.link.as_deref())
        } else if etype.is_hard_link() {
            self.hardlink(&t, raw.link.as_deref())
        } else if etype.is_character_special() || etype.is_block_special() || etype.is_fifo() {
            self.node(&t, meta, etype, &raw.header)
        } else {
            Err(ChangesetError::unsupported(
                path,
                format!("member type {}", type_name(etype)),
            ))
        }
    }
}

/// What `apply` needs from a `tar::Entry` (object-safe).
pub(super) trait ReadEntry: Read {
    fn tar_path(&self) -> Vec<u8>;
    fn tar_link(&self) -> Option<Vec<u8>>;
    fn size(&self) -> u64;
    /// Where the entry's data starts in the stream.
    fn file_position(&self) -> u64;
}

impl<R: Read> ReadEntry for tar::Entry<'_, R> {
    fn tar_path(&self) -> Vec<u8> {
        self.path_bytes().into_owned()
    }
    fn tar_link(&self) -> Option<Vec<u8>> {
        self.link_name_bytes().map(|b| b.into_owned())
    }
    fn size(&self) -> u64 {
        tar::Entry::size(self)
    }
    fn file_position(&self) -> u64 {
        self.raw_file_position()
    }
}

/// Reads and discards an entry's data, which must be all there.
pub(super) fn drain(r: &mut dyn ReadEntry, size: u64, path: &[u8], shared: &Shared) -> Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let mut got = 0u64;
    loop {
        match shared.read_some(r, &mut buf, || in_entry(path))? {
            0 => break,
            n => got += n as u64,
        }
    }
    if got < size {
        return Err(shared.short_entry(path, got, size));
    }
    Ok(())
}

/// Where a read failed, for messages.
pub(super) fn in_entry(path: &[u8]) -> String {
    format!("in entry {:?}", show(path))
}

pub(super) fn type_name(t: EntryType) -> String {
    match t {
        EntryType::Regular => "file".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Symlink => "symlink".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Fifo => "fifo".into(),
        EntryType::Continuous => "contiguous file".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("{:?}", other.as_byte() as char),
    }
}
