//! Applying a changeset to a directory.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::rc::Rc;

use tar::EntryType;
use xattr::FileExt as _;

use super::error::{io_err, show, ChangesetError};
use super::path::{self, check_path, child_key, join, Resolver};
use super::stream::{parse_member, InputTap, Monitor, RawMember, Shared};
use super::{
    decompress, is_overlay_xattr, ApplyOptions, ApplyStats, WhiteoutMode, WH_META_PREFIX,
    WH_OPAQUE, WH_PREFIX,
};
use crate::fsys::sys::{self, FileType, OFlags, Stat};
use crate::fsys::walk::Walked;

type Result<T, E = ChangesetError> = std::result::Result<T, E>;

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Applies a (possibly compressed) changeset to the directory `root`.
///
/// On failure the error is returned and `root` is left as it is (the caller
/// discards the half-made layer); nothing outside `root` has been written.
/// See the module documentation for the rules.
pub fn apply(input: impl Read, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    let root_fd = sys::open_root(root).map_err(|e| ChangesetError::Io {
        op: "opening layer root",
        path: root.display().to_string(),
        source: e,
    })?;
    let input_error = Rc::new(RefCell::new(None));
    let tap = InputTap {
        inner: input,
        error: input_error.clone(),
    };
    let (compression, decoded) = decompress(tap)?;
    let shared = Shared::new(opts.max_header_bytes, input_error);
    let mut archive = tar::Archive::new(Monitor::new(decoded, shared.clone()));
    let mut ap = Applier {
        opts,
        overlay: opts.whiteouts == WhiteoutMode::Overlay,
        res: Resolver::new(root_fd),
        mine: HashSet::new(),
        mine_anc: HashSet::new(),
        dirs: BTreeMap::new(),
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
    let (diff_id, bytes) = monitor.finish();
    Ok(ApplyStats {
        entries: count,
        bytes,
        diff_id,
        compression,
    })
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
    /// Paths this archive created or claimed (explicit entries and the
    /// parents it had to make): whiteouts never remove them.
    mine: HashSet<Vec<u8>>,
    /// Every ancestor of a path in `mine`.
    mine_anc: HashSet<Vec<u8>>,
    dirs: BTreeMap<Vec<u8>, DirMeta>,
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
    fn entry(&mut self, entry: &mut dyn ReadEntry, raw: RawMember, shared: &Shared) -> Result<()> {
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

    fn meta(&self, raw: &RawMember, path: &[u8], etype: EntryType) -> Result<Meta> {
        let bad = |what: &str, e: io::Error| {
            ChangesetError::malformed(format!("entry {:?}: bad {what}: {e}", show(path)))
        };
        let id = |pax: Option<u64>, hdr: io::Result<u64>, what: &str| -> Result<u32> {
            let v = match pax {
                Some(v) => v,
                None => hdr.map_err(|e| bad(what, e))?,
            };
            // u32::MAX is chown's "leave it".
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| {
                    ChangesetError::malformed(format!(
                        "entry {:?}: {what} {v} is out of range",
                        show(path)
                    ))
                })
        };
        let mode = raw.header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = id(raw.pax.uid, raw.header.uid(), "uid")?;
        let gid = id(raw.pax.gid, raw.header.gid(), "gid")?;
        let mtime = match raw.pax.mtime {
            Some(t) => t,
            None => {
                let s = raw.header.mtime().map_err(|e| bad("mtime", e))?;
                (i64::try_from(s).unwrap_or(i64::MAX), 0)
            }
        };
        let plain_node =
            !(etype.is_dir() || etype.is_file() || etype.is_contiguous() || etype.is_gnu_sparse());
        let xattrs = raw
            .pax
            .xattrs
            .iter()
            // overlayfs's own namespace is never taken from a changeset;
            // Linux refuses user.* on symlinks and device nodes.
            .filter(|(n, _)| !(is_overlay_xattr(n) || (plain_node && n.starts_with(b"user."))))
            .cloned()
            .collect();
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    fn claim(&mut self, key: &[u8]) {
        // Deepest first: once one is known, so are those above it.
        let ancestors: Vec<&[u8]> = path::ancestors(key).collect();
        for a in ancestors.into_iter().rev() {
            if !self.mine_anc.insert(a.to_vec()) {
                break;
            }
        }
        self.mine.insert(key.to_vec());
    }

    /// Resolves directory `dir` of `entry`. `what` names what is being
    /// resolved when it is not the entry's own parent (for messages).
    fn dir_at(
        &mut self,
        entry: &[u8],
        dir: &[Vec<u8>],
        create: bool,
        what: Option<&str>,
    ) -> Result<Option<OwnedFd>> {
        let mut created = Vec::new();
        let r = self
            .res
            .walk(dir, create, &mut |k| created.push(k.to_vec()))
            .map_err(io_err("resolving the parent of", entry))?;
        for k in created {
            self.claim(&k);
            self.like_lower(entry, &k)?;
        }
        let prefix = |i: usize| show(&join(&dir[..=i]));
        let subject = what.map(|w| format!("{w} ")).unwrap_or_default();
        match r {
            Walked::Found(fd) => {
                if create && !self.overlay {
                    self.keep_mtime(dir, &fd, entry)?;
                }
                Ok(Some(fd))
            }
            Walked::Missing(_) => Ok(None),
            Walked::Symlink(i) => Err(ChangesetError::hostile(
                entry,
                format!("{subject}passes through symlink {:?}", prefix(i)),
            )),
            Walked::NotDir(i) if create => Err(ChangesetError::malformed(format!(
                "entry {:?}: {subject}parent {:?} is not a directory",
                show(entry),
                prefix(i)
            ))),
            Walked::NotDir(_) => Ok(None),
        }
    }

    /// Delete mode: a directory that already existed and whose content this
    /// archive changes without naming it keeps its mode and mtime (set back
    /// at the end), as it keeps them under overlayfs, where the layer holds
    /// a copy-up of it with the lower metadata.
    fn keep_mtime(&mut self, dir: &[Vec<u8>], fd: &OwnedFd, entry: &[u8]) -> Result<()> {
        let key = join(dir);
        if self.dirs.contains_key(&key) || self.mine.contains(&key) {
            return Ok(());
        }
        let st = sys::fstat(fd.as_fd()).map_err(io_err("inspecting the parent of", entry))?;
        self.dirs.insert(
            key,
            DirMeta {
                mode: st.perm(),
                mtime: st.mtime(),
            },
        );
        Ok(())
    }

    /// Gives a parent directory this archive had to make the metadata it has
    /// in the lower layers, and refuses one that is a symlink there.
    fn like_lower(&mut self, entry: &[u8], key: &[u8]) -> Result<()> {
        let Some(lower) = &self.opts.lower else {
            return Ok(());
        };
        let Ok(md) = std::fs::symlink_metadata(lower.join(OsStr::from_bytes(key))) else {
            return Ok(());
        };
        if md.file_type().is_symlink() {
            return Err(ChangesetError::hostile(
                entry,
                format!("passes through symlink {:?} of a lower layer", show(key)),
            ));
        }
        if !md.is_dir() {
            return Ok(());
        }
        use std::os::unix::fs::MetadataExt;
        let comps: Vec<Vec<u8>> = key.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
        let (last, dir) = comps.split_last().expect("a made directory has a name");
        if let Ok(Walked::Found(p)) = self.res.walk(dir, false, &mut |_| {}) {
            let name = sys::cstring(last).map_err(io_err("naming", key))?;
            let f = sys::open_dir_file(p.as_fd(), &name).map_err(io_err("opening", key))?;
            sys::fchown(f.as_fd(), md.uid(), md.gid())
                .map_err(io_err("setting the owner of", key))?;
            self.dirs.insert(
                key.to_vec(),
                DirMeta {
                    mode: md.mode() & 0o7777,
                    mtime: (md.mtime(), md.mtime_nsec() as u32),
                },
            );
        }
        Ok(())
    }

    /// The parent directory of `t`, made if missing.
    fn parent(&mut self, t: &Target) -> Result<OwnedFd> {
        self.dir_at(t.entry, t.dir(), true, None)?.ok_or_else(|| {
            ChangesetError::io(
                "creating the parent of",
                t.entry,
                io::Error::other("it vanished while being made"),
            )
        })
    }

    /// Removes whatever is at `t` (a tree, if a directory).
    fn remove(&mut self, parent: BorrowedFd, t: &Target, st: &Stat) -> Result<()> {
        self.res.invalidate();
        if st.is_dir() {
            remove_tree(parent, &t.name)
        } else {
            sys::unlinkat(parent, &t.name)
        }
        .map_err(io_err("removing", &t.key))
    }

    /// Makes room for a new non-directory at `t`.
    fn clear(&mut self, parent: BorrowedFd, t: &Target) -> Result<()> {
        if let Some(st) = sys::lstatat(parent, &t.name).map_err(io_err("inspecting", &t.key))? {
            self.remove(parent, t, &st)?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        t: &Target,
        meta: Meta,
        data: &mut dyn ReadEntry,
        size: u64,
        shared: &Shared,
    ) -> Result<()> {
        let parent = self.parent(t)?;
        self.clear(parent.as_fd(), t)?;
        let fd = sys::openat(
            parent.as_fd(),
            &t.name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
            0o600,
        )
        .map_err(io_err("creating", &t.key))?;
        let file = File::from(fd);
        write_content(&file, data, size, self.opts.holes, t, shared)?;
        // Owner before mode (chown clears setuid/setgid), xattrs after the
        // owner (chown drops security.capability), mtime last.
        sys::fchown(file.as_fd(), meta.uid, meta.gid)
            .map_err(io_err("setting the owner of", &t.key))?;
        sys::fchmod(file.as_fd(), meta.mode).map_err(io_err("setting the mode of", &t.key))?;
        set_xattrs_fd(&file, &meta.xattrs, false, &t.key)?;
        sys::futimens(file.as_fd(), meta.mtime).map_err(io_err("setting the mtime of", &t.key))?;
        self.claim(&t.key);
        Ok(())
    }

    fn dir(&mut self, t: &Target, meta: Meta) -> Result<()> {
        let parent = self.parent(t)?;
        let existing =
            sys::lstatat(parent.as_fd(), &t.name).map_err(io_err("inspecting", &t.key))?;
        let mut merged = false;
        let mut make_opaque = false;
        match existing {
            Some(st) if st.is_dir() => merged = true,
            Some(st) => {
                self.remove(parent.as_fd(), t, &st)?;
                // In a layer directory, what replaced a lower entry (e.g.
                // its whiteout) must keep hiding it: the directory is opaque.
                make_opaque = self.overlay;
            }
            None => {}
        }
        if !merged {
            sys::mkdirat(parent.as_fd(), &t.name, 0o700).map_err(io_err("creating", &t.key))?;
        }
        let f = sys::open_dir_file(parent.as_fd(), &t.name).map_err(io_err("opening", &t.key))?;
        sys::fchown(f.as_fd(), meta.uid, meta.gid)
            .map_err(io_err("setting the owner of", &t.key))?;
        set_xattrs_fd(&f, &meta.xattrs, merged, &t.key)?;
        if make_opaque {
            f.set_xattr(OPAQUE_XATTR, b"y")
                .map_err(io_err("setting the opaque xattr on", &t.key))?;
        }
        self.dirs.insert(
            t.key.clone(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        self.claim(&t.key);
        Ok(())
    }

    /// A directory entry for the root itself (`./`).
    fn root_dir(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        let f = sys::open_dir_file(self.res.root(), c".").map_err(io_err("opening", path))?;
        sys::fchown(f.as_fd(), meta.uid, meta.gid).map_err(io_err("setting the owner of", path))?;
        set_xattrs_fd(&f, &meta.xattrs, true, b"")?;
        self.dirs.insert(
            Vec::new(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    fn symlink(&mut self, t: &Target, meta: Meta, link: Option<&[u8]>) -> Result<()> {
        let target = link.filter(|l| !l.is_empty()).ok_or_else(|| {
            ChangesetError::malformed(format!("symlink {:?} has no target", show(t.entry)))
        })?;
        if target.len() > self.opts.max_path_len {
            return Err(ChangesetError::limit(format!(
                "symlink {:?}: target is {} bytes long, more than {}",
                show(t.entry),
                target.len(),
                self.opts.max_path_len
            )));
        }
        let ctarget = sys::cstring(target).map_err(|_| {
            ChangesetError::malformed(format!(
                "symlink {:?}: target contains a nul byte",
                show(t.entry)
            ))
        })?;
        let parent = self.parent(t)?;
        self.clear(parent.as_fd(), t)?;
        sys::symlinkat(&ctarget, parent.as_fd(), &t.name).map_err(io_err("creating", &t.key))?;
        self.finish_node(parent.as_fd(), t, &meta, None)?;
        self.claim(&t.key);
        Ok(())
    }

    /// Owner, mode (`chmod_fd`: an O_PATH descriptor of the node, for nodes
    /// that have a mode), xattrs and mtime of a node without a descriptor of
    /// its own: a symlink, device or fifo.
    fn finish_node(
        &self,
        parent: BorrowedFd,
        t: &Target,
        meta: &Meta,
        chmod_fd: Option<BorrowedFd>,
    ) -> Result<()> {
        sys::lchownat(parent, &t.name, meta.uid, meta.gid)
            .map_err(io_err("setting the owner of", &t.key))?;
        if let Some(fd) = chmod_fd {
            sys::chmod_path(&sys::proc_fd_path(fd), meta.mode)
                .map_err(io_err("setting the mode of", &t.key))?;
        }
        if !meta.xattrs.is_empty() {
            let p = sys::proc_path(parent, t.name.as_bytes());
            for (n, v) in &meta.xattrs {
                // The l* variant: the last component is not followed.
                xattr::set(&p, OsStr::from_bytes(n), v)
                    .map_err(io_err("setting an xattr on", &t.key))?;
            }
        }
        sys::lutimensat(parent, &t.name, meta.mtime).map_err(io_err("setting the mtime of", &t.key))
    }

    fn node(
        &mut self,
        t: &Target,
        meta: Meta,
        etype: EntryType,
        header: &tar::Header,
    ) -> Result<()> {
        let kind = if etype.is_fifo() {
            FileType::Fifo
        } else if etype.is_character_special() {
            FileType::CharacterDevice
        } else {
            FileType::BlockDevice
        };
        let dev = if kind == FileType::Fifo {
            0
        } else {
            let num = |r: io::Result<Option<u32>>| -> Result<u32> {
                r.ok().flatten().ok_or_else(|| {
                    ChangesetError::malformed(format!(
                        "device {:?} has no valid device numbers",
                        show(t.entry)
                    ))
                })
            };
            let (major, minor) = (num(header.device_major())?, num(header.device_minor())?);
            if self.overlay && kind == FileType::CharacterDevice && major == 0 && minor == 0 {
                return Err(ChangesetError::unsupported(
                    t.entry,
                    "a character device 0/0 in an overlay layer would be a whiteout",
                ));
            }
            sys::makedev(major, minor)
        };
        let parent = self.parent(t)?;
        self.clear(parent.as_fd(), t)?;
        // Permission bits 0 until finish_node sets them (past the umask).
        sys::mknodat(parent.as_fd(), &t.name, kind, 0, dev).map_err(io_err("creating", &t.key))?;
        let fd = sys::open_node_path(parent.as_fd(), &t.name).map_err(io_err("opening", &t.key))?;
        let st = sys::fstat(fd.as_fd()).map_err(io_err("inspecting", &t.key))?;
        if st.file_type() != kind {
            return Err(ChangesetError::io(
                "creating",
                &t.key,
                io::Error::other("the new node was replaced under us"),
            ));
        }
        self.finish_node(parent.as_fd(), t, &meta, Some(fd.as_fd()))?;
        self.claim(&t.key);
        Ok(())
    }

    fn hardlink(&mut self, t: &Target, link: Option<&[u8]>) -> Result<()> {
        let entry = t.entry;
        let raw_target = link.ok_or_else(|| {
            ChangesetError::malformed(format!("hard link {:?} has no target", show(entry)))
        })?;
        let tcomps = check_path(
            entry,
            raw_target,
            Some("hard link target"),
            self.opts.max_path_len,
        )?;
        let what = format!("hard link target {:?}", show(raw_target));
        let Some((tlast, tdir)) = tcomps.split_last() else {
            return Err(ChangesetError::unsupported(
                entry,
                format!("{what} is the layer root"),
            ));
        };
        if tcomps == t.comps {
            return Err(ChangesetError::malformed(format!(
                "hard link {:?} links to itself",
                show(entry)
            )));
        }
        let missing =
            || ChangesetError::malformed(format!("entry {:?}: {what} does not exist", show(entry)));
        let tparent = self
            .dir_at(entry, tdir, false, Some(&what))?
            .ok_or_else(missing)?;
        let tname = sys::cstring(tlast).map_err(io_err("naming", entry))?;
        let tfd = match sys::open_node_path(tparent.as_fd(), &tname) {
            Ok(fd) => fd,
            Err(e) if sys::is_enoent(&e) => return Err(missing()),
            Err(e) => return Err(ChangesetError::io("opening", raw_target, e)),
        };
        let tst = sys::fstat(tfd.as_fd()).map_err(io_err("inspecting", raw_target))?;
        if tst.file_type() != FileType::RegularFile {
            return Err(ChangesetError::unsupported(
                entry,
                format!("{what} is not a regular file"),
            ));
        }
        let parent = self.parent(t)?;
        if let Some(st) =
            sys::lstatat(parent.as_fd(), &t.name).map_err(io_err("inspecting", &t.key))?
        {
            if st.same_inode(&tst) {
                self.claim(&t.key);
                return Ok(());
            }
            self.remove(parent.as_fd(), t, &st)?;
        }
        // Link exactly the inode checked above; without CAP_DAC_READ_SEARCH
        // (ENOENT) link by name, never following, and check the result.
        match sys::link_fd(tfd.as_fd(), parent.as_fd(), &t.name) {
            Ok(()) => {}
            Err(e) if sys::is_enoent(&e) => {
                sys::linkat(tparent.as_fd(), &tname, parent.as_fd(), &t.name)
                    .map_err(io_err("linking", &t.key))?;
                let st =
                    sys::lstatat(parent.as_fd(), &t.name).map_err(io_err("inspecting", &t.key))?;
                if !st.is_some_and(|s| s.same_inode(&tst)) {
                    let _ = sys::unlinkat(parent.as_fd(), &t.name);
                    return Err(ChangesetError::io(
                        "linking",
                        &t.key,
                        io::Error::other("the link target was replaced under us"),
                    ));
                }
            }
            Err(e) => return Err(ChangesetError::io("linking", &t.key, e)),
        }
        self.claim(&t.key);
        Ok(())
    }

    /// `DIR/.wh.NAME`: removes the lower NAME; in overlay mode also leaves a
    /// whiteout device (or, if this archive made NAME a directory, makes it
    /// opaque).
    fn whiteout(&mut self, path: &[u8], comps: &[Vec<u8>], victim: &[u8]) -> Result<()> {
        let dir = &comps[..comps.len() - 1];
        let Some(parent) = self.dir_at(path, dir, self.overlay, None)? else {
            return Ok(()); // nothing below to hide
        };
        let key = child_key(&join(dir), victim);
        self.remove_lower(parent.as_fd(), victim, &key)?;
        if self.overlay {
            let name = sys::cstring(victim).map_err(io_err("naming", path))?;
            match sys::lstatat(parent.as_fd(), &name).map_err(io_err("inspecting", &key))? {
                Some(st) if st.is_dir() => {
                    let f = sys::open_dir_file(parent.as_fd(), &name)
                        .map_err(io_err("opening", &key))?;
                    f.set_xattr(OPAQUE_XATTR, b"y")
                        .map_err(io_err("setting the opaque xattr on", &key))?;
                }
                // This archive's own entry hides the lower one already.
                Some(_) => {}
                None => sys::mknodat(parent.as_fd(), &name, FileType::CharacterDevice, 0, 0)
                    .map_err(io_err("creating whiteout", &key))?,
            }
        }
        Ok(())
    }

    /// `DIR/.wh..wh..opq`: removes DIR's lower entries; in overlay mode also
    /// marks DIR opaque.
    fn opaque(&mut self, path: &[u8], dir: &[Vec<u8>]) -> Result<()> {
        let key = join(dir);
        let Some(dfd) = self.dir_at(path, dir, self.overlay, None)? else {
            return Ok(());
        };
        for child in sys::list_dir(dfd.as_fd()).map_err(io_err("reading directory", &key))? {
            let ckey = child_key(&key, &child);
            self.remove_lower(dfd.as_fd(), &child, &ckey)?;
        }
        if self.overlay {
            let f = sys::open_dir_file(dfd.as_fd(), c".").map_err(io_err("opening", &key))?;
            f.set_xattr(OPAQUE_XATTR, b"y")
                .map_err(io_err("setting the opaque xattr on", &key))?;
        }
        Ok(())
    }

    /// Removes what is at `parent/name` except what this archive made.
    fn remove_lower(&mut self, parent: BorrowedFd, name: &[u8], key: &[u8]) -> Result<()> {
        let c = sys::cstring(name).map_err(io_err("naming", key))?;
        let Some(st) = sys::lstatat(parent, &c).map_err(io_err("inspecting", key))? else {
            return Ok(());
        };
        let is_mine = self.mine.contains(key);
        if st.is_dir() && (is_mine || self.mine_anc.contains(key)) {
            let sub = sys::open_dir_path(parent, &c).map_err(io_err("opening", key))?;
            for child in sys::list_dir(sub.as_fd()).map_err(io_err("reading directory", key))? {
                let ckey = child_key(key, &child);
                self.remove_lower(sub.as_fd(), &child, &ckey)?;
            }
            return Ok(());
        }
        if is_mine {
            return Ok(());
        }
        self.res.invalidate();
        if st.is_dir() {
            remove_tree(parent, &c)
        } else {
            sys::unlinkat(parent, &c)
        }
        .map_err(io_err("removing", key))
    }

    /// Sets directory modes and mtimes, deepest first.
    fn finish(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (key, m) in dirs.iter().rev() {
            let f = if key.is_empty() {
                sys::open_dir_file(self.res.root(), c".").map_err(io_err("opening", key))?
            } else {
                let comps: Vec<Vec<u8>> = key.split(|b| *b == b'/').map(<[u8]>::to_vec).collect();
                let (last, dir) = comps.split_last().expect("not the root");
                // Gone or moved behind a symlink since: nothing to set.
                let Ok(Walked::Found(p)) = self.res.walk(dir, false, &mut |_| {}) else {
                    continue;
                };
                let name = sys::cstring(last).map_err(io_err("naming", key))?;
                match sys::open_dir_file(p.as_fd(), &name) {
                    Ok(f) => f,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(ChangesetError::io("opening", key, e)),
                }
            };
            sys::fchmod(f.as_fd(), m.mode).map_err(io_err("setting the mode of", key))?;
            sys::futimens(f.as_fd(), m.mtime).map_err(io_err("setting the mtime of", key))?;
        }
        Ok(())
    }
}

/// What `apply` needs from a `tar::Entry` (object-safe).
trait ReadEntry: Read {
    fn tar_path(&self) -> Vec<u8>;
    fn tar_link(&self) -> Option<Vec<u8>>;
    fn size(&self) -> u64;
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
}

/// Reads and discards an entry's data, which must be all there.
fn drain(r: &mut dyn ReadEntry, size: u64, path: &[u8], shared: &Shared) -> Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let mut got = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(shared.classify(e, &format!("in entry {:?}", show(path)))),
        }
    }
    if got < size {
        return Err(shared.short_entry(path, got, size));
    }
    Ok(())
}

const HOLE_BLOCK: usize = 4096;
static ZEROS: [u8; HOLE_BLOCK] = [0; HOLE_BLOCK];

/// Writes `size` bytes of `r` to `file`, leaving aligned zero blocks as
/// holes when `holes`.
fn write_content(
    file: &File,
    r: &mut dyn ReadEntry,
    size: u64,
    holes: bool,
    t: &Target,
    shared: &Shared,
) -> Result<()> {
    let mut buf = vec![
        0u8;
        (256 * 1024)
            .min(size.max(1) as usize)
            .next_multiple_of(HOLE_BLOCK)
    ];
    let mut off = 0u64;
    while off < size {
        let want = (buf.len() as u64).min(size - off) as usize;
        let mut got = 0;
        while got < want {
            match r.read(&mut buf[got..want]) {
                Ok(0) => return Err(shared.short_entry(t.entry, off + got as u64, size)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(shared.classify(e, &format!("in entry {:?}", show(t.entry)))),
            }
        }
        let chunk = &buf[..want];
        let write = |from: usize, to: usize| -> Result<()> {
            file.write_all_at(&chunk[from..to], off + from as u64)
                .map_err(io_err("writing", &t.key))
        };
        if holes {
            // `off` is a multiple of the buffer length, so blocks are aligned.
            let is_zero = |i: usize| {
                let end = (i + HOLE_BLOCK).min(want);
                chunk[i..end] == ZEROS[..end - i]
            };
            let mut i = 0;
            while i < want {
                if is_zero(i) {
                    i += HOLE_BLOCK;
                    continue;
                }
                let mut j = i + HOLE_BLOCK;
                while j < want && !is_zero(j) {
                    j += HOLE_BLOCK;
                }
                write(i, j.min(want))?;
                i = j;
            }
        } else {
            write(0, want)?;
        }
        off += want as u64;
    }
    file.set_len(size)
        .map_err(io_err("setting the size of", &t.key))
}

/// Sets xattrs through a descriptor. With `exact`, xattrs not in the list
/// are removed first (except SELinux labels and overlayfs's own).
fn set_xattrs_fd(f: &File, xattrs: &[(Vec<u8>, Vec<u8>)], exact: bool, key: &[u8]) -> Result<()> {
    if exact {
        let existing = f.list_xattr().map_err(io_err("listing xattrs of", key))?;
        for name in existing {
            let n = name.as_bytes();
            if is_overlay_xattr(n) || n == b"security.selinux" || xattrs.iter().any(|(x, _)| x == n)
            {
                continue;
            }
            f.remove_xattr(&name)
                .map_err(io_err("removing an xattr of", key))?;
        }
    }
    for (n, v) in xattrs {
        f.set_xattr(OsStr::from_bytes(n), v)
            .map_err(io_err("setting an xattr on", key))?;
    }
    Ok(())
}

/// Removes `dir/name` and, if it is a directory, everything in it; never
/// follows a symlink.
fn remove_tree(dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    match sys::rmdirat(dir, name) {
        Ok(()) => return Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return sys::unlinkat(dir, name),
        Err(e) => return Err(e),
    }
    let sub = sys::open_dir_path(dir, name)?;
    for child in sys::list_dir(sub.as_fd())? {
        let c = sys::cstring(&child)?;
        match sys::lstatat(sub.as_fd(), &c)? {
            Some(st) if st.is_dir() => remove_tree(sub.as_fd(), &c)?,
            Some(_) => sys::unlinkat(sub.as_fd(), &c)?,
            None => {}
        }
    }
    sys::rmdirat(dir, name)
}

fn type_name(t: EntryType) -> String {
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
