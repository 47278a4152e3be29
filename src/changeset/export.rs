//! Exporting changesets: the difference of two merged trees, or an overlayfs
//! layer directory.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use tar::{EntryType, Header};

use super::compress::{Encoder, HashWriter};
use super::error::{io_err, io_host, show, ChangesetError};
use super::path::child_key;
use super::tree::{list, open_sub, same_meta, Node};
use super::{overlay_xattr_names, ExportOptions, ExportStats, WH_OPAQUE, WH_PREFIX};
use crate::fsys::sys::{self, FileType, OFlags};

type Result<T, E = ChangesetError> = std::result::Result<T, E>;

/// Writes the changes that turn tree `parent` (None = empty tree) into tree
/// `child`, both merged trees (full filesystems), as an OCI changeset.
///
/// Neither tree's symlinks are followed, neither walk leaves its tree's
/// filesystem, and `lost+found` at the top of either tree is skipped. An
/// entry is changed when its type or metadata differ (type, mode, owner,
/// size, mtime with nanoseconds, symlink target, device numbers, exported
/// xattrs; directories: mode, owner, mtime, xattrs); contents are not
/// compared. Deleted paths become `.wh.NAME` (the topmost only). A directory
/// whose inode number differs between the trees was replaced: it is written
/// with `.wh..wh..opq` and all its content. Every written entry's ancestors
/// are written too, with the child's metadata. See the module documentation
/// for the byte format.
///
/// Neither tree may change during the export (a file that does is an
/// error, not a torn entry).
///
/// # Errors
/// [`ChangesetError::Io`] when a tree cannot be read, a file changes while
/// it is read, or `out` fails; [`ChangesetError::Unsupported`] for a name
/// tar cannot carry as such (one with the whiteout prefix `.wh.`) or an
/// xattr name that is not UTF-8.
pub fn export_diff(
    parent: Option<&Path>,
    child: &Path,
    out: impl Write,
    opts: &ExportOptions,
) -> Result<ExportStats> {
    let croot = open_tree(child)?;
    let cdev = tree_dev(&croot, child)?;
    let proot = parent.map(open_tree).transpose()?;
    let pdev = match (&proot, parent) {
        (Some(fd), Some(p)) => tree_dev(fd, p)?,
        _ => 0,
    };
    let mut walk = DiffWalk {
        em: Emitter::new(out, opts)?,
        cdev,
        pdev,
    };
    walk.dir(b"", croot.as_fd(), proot.as_ref().map(|p| p.as_fd()), true)?;
    walk.em.finish()
}

/// Writes an overlayfs layer directory (whiteouts as 0/0 char devices, opaque
/// dirs by xattr) as an OCI changeset.
///
/// Every entry of the directory is written; a 0/0 character device becomes
/// `.wh.NAME`; a directory with `trusted.overlay.opaque=y` (or the
/// `user.overlay.` one) is written with `.wh..wh..opq`; overlayfs xattrs are
/// not exported. Directories renamed by overlayfs (`redirect`) and
/// metadata-only copy-ups (`metacopy`) cannot be exported from the layer
/// alone and are refused. Same byte format as [`export_diff`]: a layer made
/// by applying an `export_diff` output without opaque markers exports to the
/// same bytes. It differs where the layer holds more than the changes: a
/// directory copied up but not changed, a whiteout for a name no lower layer
/// has, or an opaque directory where `export_diff` (which sees only inode
/// numbers) would write whiteouts for the deleted entries.
///
/// # Errors
/// Those of [`export_diff`]; [`ChangesetError::Unsupported`] also for a
/// `redirect` or `metacopy` directory and an opaque xattr other than `y`.
pub fn export_overlay_layer(
    layer_dir: &Path,
    out: impl Write,
    opts: &ExportOptions,
) -> Result<ExportStats> {
    let root = open_tree(layer_dir)?;
    let dev = tree_dev(&root, layer_dir)?;
    let mut walk = OverlayWalk {
        em: Emitter::new(out, opts)?,
        dev,
    };
    // The layer root itself may be opaque.
    if root_is_opaque(root.as_fd(), layer_dir)? {
        walk.em.opaque(b"")?;
    }
    walk.dir(b"", root.as_fd())?;
    walk.em.finish()
}

fn open_tree(p: &Path) -> Result<std::os::fd::OwnedFd> {
    sys::open_root(p).map_err(io_host("opening tree", p))
}

fn tree_dev(fd: &std::os::fd::OwnedFd, p: &Path) -> Result<u64> {
    sys::fstat(fd.as_fd())
        .map(|st| st.st_dev)
        .map_err(io_host("inspecting tree", p))
}

/// Names the tar format reserves for whiteouts cannot be exported.
fn check_name(key: &[u8], name: &[u8]) -> Result<()> {
    if name.starts_with(WH_PREFIX) {
        return Err(ChangesetError::unsupported(
            key,
            "the name has the reserved whiteout prefix and cannot be represented",
        ));
    }
    Ok(())
}

struct DiffWalk<W: Write> {
    em: Emitter<W>,
    cdev: u64,
    pdev: u64,
}

impl<W: Write> DiffWalk<W> {
    /// Directory `key`, present in the child as `cdir` and in the parent as
    /// `pdir` (the same inode number, or the root).
    fn dir(
        &mut self,
        key: &[u8],
        cdir: BorrowedFd,
        pdir: Option<BorrowedFd>,
        top: bool,
    ) -> Result<()> {
        let cnodes = list(cdir, key, self.cdev, top)?;
        let pnodes: BTreeMap<Vec<u8>, Node> = match pdir {
            Some(p) => list(p, key, self.pdev, top)?
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            None => BTreeMap::new(),
        };
        // Deletions first (sorted, as `pnodes` is).
        let mut ci = cnodes.iter().map(|n| n.name.as_slice()).peekable();
        for name in pnodes.keys() {
            while ci.next_if(|c| *c < name.as_slice()).is_some() {}
            if ci.peek() != Some(&name.as_slice()) {
                let k = child_key(key, name);
                check_name(&k, name)?;
                self.em.whiteout(key, name)?;
            }
        }
        for c in cnodes {
            let ckey = child_key(key, &c.name);
            check_name(&ckey, &c.name)?;
            match pnodes.get(&c.name) {
                Some(p) if p.kind == FileType::Directory && c.kind == FileType::Directory => {
                    if p.ino != c.ino {
                        // Removed and made again: hide all the lower content.
                        self.added(cdir, ckey, c, true)?;
                        continue;
                    }
                    let changed = !same_meta(p, &c);
                    let csub = open_sub(cdir, &c.name, &ckey)?;
                    let psub = open_sub(pdir.expect("p came from pdir"), &p.name, &ckey)?;
                    self.em.push_dir(ckey.clone(), c);
                    self.dir(&ckey, csub.as_fd(), Some(psub.as_fd()), false)?;
                    self.em.pop_dir(changed)?;
                }
                Some(p) if p.kind == c.kind => {
                    if !same_meta(p, &c) {
                        self.em.node(cdir, &ckey, &c)?;
                    }
                }
                // New, or of another type (the new entry replaces).
                _ => self.added(cdir, ckey, c, false)?,
            }
        }
        Ok(())
    }

    /// A node that is new in the child, with everything below it.
    fn added(&mut self, dir: BorrowedFd, key: Vec<u8>, node: Node, opaque: bool) -> Result<()> {
        if node.kind != FileType::Directory {
            return self.em.node(dir, &key, &node);
        }
        let sub = open_sub(dir, &node.name, &key)?;
        self.em.push_dir(key.clone(), node);
        self.em.flush()?;
        if opaque {
            self.em.opaque(&key)?;
        }
        for c in list(sub.as_fd(), &key, self.cdev, false)? {
            let ckey = child_key(&key, &c.name);
            check_name(&ckey, &c.name)?;
            self.added(sub.as_fd(), ckey, c, false)?;
        }
        self.em.pop_dir(false)
    }
}

struct OverlayWalk<W: Write> {
    em: Emitter<W>,
    dev: u64,
}

impl<W: Write> OverlayWalk<W> {
    fn dir(&mut self, key: &[u8], dir: BorrowedFd) -> Result<()> {
        let nodes = list(dir, key, self.dev, false)?;
        let (whiteouts, others): (Vec<Node>, Vec<Node>) = nodes
            .into_iter()
            .partition(|n| n.kind == FileType::CharacterDevice && n.rdev == 0);
        for w in &whiteouts {
            check_name(&child_key(key, &w.name), &w.name)?;
            self.em.whiteout(key, &w.name)?;
        }
        for n in others {
            let nkey = child_key(key, &n.name);
            check_name(&nkey, &n.name)?;
            if n.overlay_attr("redirect").is_some() {
                return Err(ChangesetError::unsupported(
                    &nkey,
                    "overlayfs renamed this directory (redirect xattr); export the merged tree instead",
                ));
            }
            if n.overlay_attr("metacopy").is_some() {
                return Err(ChangesetError::unsupported(
                    &nkey,
                    "a metadata-only copy-up (metacopy xattr) has no data in the layer",
                ));
            }
            if n.kind != FileType::Directory {
                self.em.node(dir, &nkey, &n)?;
                continue;
            }
            let opaque = match n.overlay_attr("opaque") {
                None => false,
                Some(b"y") => true,
                Some(v) => {
                    return Err(ChangesetError::unsupported(
                        &nkey,
                        format!(
                            "overlayfs opaque xattr {:?} (only \"y\" is supported)",
                            show(v)
                        ),
                    ))
                }
            };
            let sub = open_sub(dir, &n.name, &nkey)?;
            self.em.push_dir(nkey.clone(), n);
            self.em.flush()?;
            if opaque {
                self.em.opaque(&nkey)?;
            }
            self.dir(&nkey, sub.as_fd())?;
            self.em.pop_dir(false)?;
        }
        Ok(())
    }
}

/// Whether the layer root is opaque.
fn root_is_opaque(root: BorrowedFd, p: &Path) -> Result<bool> {
    use xattr::FileExt as _;
    let f = sys::open_dir_file(root, c".").map_err(io_host("opening tree", p))?;
    for name in overlay_xattr_names("opaque") {
        match f.get_xattr(&name) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
            Err(e) => return Err(ChangesetError::io("reading an xattr of", b"", e)),
        }
    }
    Ok(false)
}

/// A directory whose entry is written only once something below it is (or
/// when it changed itself).
struct Pending {
    key: Vec<u8>,
    node: Node,
    written: bool,
}

/// Writes entries in the module's byte format.
struct Emitter<W: Write> {
    tar: tar::Builder<HashWriter<Encoder<W>>>,
    entries: u64,
    pending: Vec<Pending>,
    /// (dev, ino) of multiply-linked files written → their path.
    links: HashMap<(u64, u64), Vec<u8>>,
    skip: &'static [&'static str],
}

fn out_err(e: io::Error) -> ChangesetError {
    ChangesetError::Io {
        op: "writing",
        path: "changeset output".to_string(),
        source: e,
    }
}

impl<W: Write> Emitter<W> {
    fn new(out: W, opts: &ExportOptions) -> Result<Self> {
        let enc = Encoder::new(out, opts.compression).map_err(out_err)?;
        Ok(Emitter {
            tar: tar::Builder::new(HashWriter::new(enc)),
            entries: 0,
            pending: Vec::new(),
            links: HashMap::new(),
            skip: opts.skip,
        })
    }

    fn push_dir(&mut self, key: Vec<u8>, node: Node) {
        self.pending.push(Pending {
            key,
            node,
            written: false,
        });
    }

    /// Leaves the innermost pending directory, writing it (after its
    /// unwritten ancestors) if it `changed` and nothing below it was
    /// written.
    fn pop_dir(&mut self, changed: bool) -> Result<()> {
        let written = self.pending.last().expect("pop_dir after push_dir").written;
        if changed && !written {
            self.flush()?;
        }
        self.pending.pop();
        Ok(())
    }

    /// Writes the pending directories not written yet, outermost first.
    fn flush(&mut self) -> Result<()> {
        for i in 0..self.pending.len() {
            if !self.pending[i].written {
                let (key, node) = (self.pending[i].key.clone(), self.pending[i].node.clone());
                self.write_dir(&key, &node)?;
                self.pending[i].written = true;
            }
        }
        Ok(())
    }

    fn base_header(node: &Node, ty: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(node.mode);
        h.set_uid(node.uid as u64);
        h.set_gid(node.gid as u64);
        h.set_mtime(node.mtime.0.max(0) as u64);
        h.set_size(0);
        h
    }

    fn pax(&mut self, key: &[u8], node: &Node) -> Result<()> {
        if node.xattrs.is_empty() {
            return Ok(());
        }
        let mut records = Vec::with_capacity(node.xattrs.len());
        for (n, v) in &node.xattrs {
            let n = std::str::from_utf8(n).map_err(|_| {
                ChangesetError::unsupported(key, format!("xattr name {:?} is not UTF-8", show(n)))
            })?;
            records.push((format!("SCHILY.xattr.{n}"), v.as_slice()));
        }
        self.tar
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(out_err)
    }

    /// The link target of `h`: in the header if it fits, else in a GNU `K`
    /// record before it (the `tar` crate's format), byte for byte.
    fn link_name(&mut self, h: &mut Header, target: &[u8]) -> Result<()> {
        if target.len() <= 100 {
            return h.set_link_name_literal(target).map_err(out_err);
        }
        let mut k = Header::new_gnu();
        k.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
        k.set_mode(0o644);
        k.set_uid(0);
        k.set_gid(0);
        k.set_mtime(0);
        k.set_size(target.len() as u64 + 1);
        k.set_entry_type(EntryType::GNULongLink);
        k.set_cksum();
        let data = [target, b"\0"].concat();
        self.tar.append(&k, data.as_slice()).map_err(out_err)
    }

    fn append(&mut self, h: &mut Header, path: &[u8], data: impl Read) -> Result<()> {
        self.tar
            .append_data(h, Path::new(OsStr::from_bytes(path)), data)
            .map_err(out_err)?;
        self.entries += 1;
        Ok(())
    }

    fn write_dir(&mut self, key: &[u8], node: &Node) -> Result<()> {
        let mut h = Self::base_header(node, EntryType::Directory);
        self.pax(key, node)?;
        let path = [key, b"/"].concat();
        self.append(&mut h, &path, io::empty())
    }

    /// Writes non-directory `node` at `key`; its content is read from
    /// `dir/NAME`.
    fn node(&mut self, dir: BorrowedFd, key: &[u8], node: &Node) -> Result<()> {
        if self.skipped(key) {
            return Ok(());
        }
        self.flush()?;
        match node.kind {
            FileType::Directory => unreachable!("directories go through push_dir"),
            FileType::Socket | FileType::Unknown => unreachable!("sockets are not listed"),
            FileType::RegularFile => {
                if node.nlink > 1 {
                    if let Some(first) = self.links.get(&(node.dev, node.ino)).cloned() {
                        let mut h = Self::base_header(node, EntryType::Link);
                        self.link_name(&mut h, &first)?;
                        return self.append(&mut h, key, io::empty());
                    }
                    self.links.insert((node.dev, node.ino), key.to_vec());
                }
                self.file(dir, key, node)
            }
            FileType::Symlink => {
                let mut h = Self::base_header(node, EntryType::Symlink);
                self.pax(key, node)?;
                self.link_name(&mut h, &node.target)?;
                self.append(&mut h, key, io::empty())
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                let ty = if node.kind == FileType::CharacterDevice {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                let mut h = Self::base_header(node, ty);
                h.set_device_major(sys::dev_major(node.rdev))
                    .map_err(out_err)?;
                h.set_device_minor(sys::dev_minor(node.rdev))
                    .map_err(out_err)?;
                self.pax(key, node)?;
                self.append(&mut h, key, io::empty())
            }
            FileType::Fifo => {
                let mut h = Self::base_header(node, EntryType::Fifo);
                self.pax(key, node)?;
                self.append(&mut h, key, io::empty())
            }
        }
    }

    fn file(&mut self, dir: BorrowedFd, key: &[u8], node: &Node) -> Result<()> {
        let c = sys::cstring(&node.name).map_err(io_err("naming", key))?;
        let fd = sys::openat(dir, &c, OFlags::RDONLY | OFlags::NOFOLLOW, 0)
            .map_err(io_err("opening", key))?;
        let file = File::from(fd);
        let st = sys::fstat(file.as_fd()).map_err(io_err("inspecting", key))?;
        if st.file_type() != FileType::RegularFile
            || st.st_ino != node.ino
            || st.st_size != node.size
        {
            return Err(ChangesetError::io(
                "reading",
                key,
                io::Error::other("the file changed during the export"),
            ));
        }
        let mut h = Self::base_header(node, EntryType::Regular);
        h.set_size(node.size);
        self.pax(key, node)?;
        let failed = Rc::new(Cell::new(false));
        let reader = io::BufReader::with_capacity(
            256 * 1024,
            Exact {
                inner: file,
                left: node.size,
                failed: failed.clone(),
            },
        );
        match self.append(&mut h, key, reader) {
            Err(ChangesetError::Io { source, .. }) if failed.get() => {
                Err(ChangesetError::io("reading", key, source))
            }
            r => r,
        }
    }

    /// `DIR/.wh.NAME`.
    fn whiteout(&mut self, dir_key: &[u8], name: &[u8]) -> Result<()> {
        if self.skipped(&child_key(dir_key, name)) {
            return Ok(());
        }
        self.flush()?;
        let wh = [WH_PREFIX, name].concat();
        self.marker(&child_key(dir_key, &wh))
    }

    fn skipped(&self, key: &[u8]) -> bool {
        self.skip.iter().any(|s| s.as_bytes() == key)
    }

    /// `DIR/.wh..wh..opq`.
    fn opaque(&mut self, dir_key: &[u8]) -> Result<()> {
        self.flush()?;
        self.marker(&child_key(dir_key, WH_OPAQUE))
    }

    fn marker(&mut self, path: &[u8]) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.append(&mut h, path, io::empty())
    }

    fn finish(mut self) -> Result<ExportStats> {
        self.tar.finish().map_err(out_err)?;
        let hw = self.tar.into_inner().map_err(out_err)?;
        let (enc, diff_id, bytes) = hw.finish();
        enc.finish().map_err(out_err)?;
        Ok(ExportStats {
            entries: self.entries,
            bytes,
            diff_id,
        })
    }
}

/// Reads exactly `left` bytes of a file: ends there even if the file grew,
/// fails if it shrank.
struct Exact {
    inner: File,
    left: u64,
    failed: Rc<Cell<bool>>,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.left) as usize;
        match self.inner.read(&mut buf[..want]) {
            Ok(0) => {
                self.failed.set(true);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank during the export",
                ))
            }
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed.set(true);
                }
                Err(e)
            }
        }
    }
}
