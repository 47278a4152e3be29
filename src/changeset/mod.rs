//! OCI layer changesets: applying them to a directory and exporting them.
//!
//! A changeset is a tar archive (plain, gzip or zstd) of the entries a layer
//! adds or changes, plus *whiteouts* (`.wh.NAME`: NAME is deleted) and
//! *opaque markers* (`DIR/.wh..wh..opq`: DIR's lower content is hidden), as
//! the OCI image spec's `layer.md` describes.
//!
//! * [`apply()`] writes a changeset into a directory: a merged tree
//!   ([`WhiteoutMode::Delete`], the thin driver) or an overlayfs layer
//!   directory ([`WhiteoutMode::Overlay`]).
//! * [`export_diff`] writes the changeset between two merged trees;
//!   [`export_overlay_layer`] the one an overlayfs upper directory holds.
//! * [`decompress`] sniffs and undoes the compression.
//! * [`apply_recording`] also records the changeset's layout, and
//!   [`split::reassemble`] gives its exact bytes back from the tree.
//!
//! # Apply: safety
//!
//! Nothing is ever written outside the root, whatever the archive says:
//!
//! * entry paths and hard-link targets are checked before anything happens:
//!   absolute paths and `..` components are refused (not sanitized);
//! * every path is resolved from an `O_PATH` descriptor of the root by the
//!   shared walker ([`crate::fsys::walk`]): `openat2` with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` where the kernel has it, one
//!   component at a time with `openat(O_NOFOLLOW)` otherwise; a symlink in
//!   the middle of a path (made by this archive or already in the tree, or
//!   in overlay mode in the lower layers) is refused;
//! * the last component is always handled relative to its parent's
//!   descriptor with calls that never follow it (`O_CREAT|O_EXCL|O_NOFOLLOW`,
//!   `mkdirat`, `mknodat`, `symlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`,
//!   `fchownat`/`utimensat` with `AT_SYMLINK_NOFOLLOW`, `l*xattr` through
//!   `/proc/self/fd/DIRFD/NAME`); modes and xattrs of files and directories
//!   are set through their own descriptors.
//!
//! The archive is read with the `tar` crate, but everything it reads while
//! looking for the next entry (the headers, PAX records, GNU long names, GNU
//! sparse maps) is captured below it and parsed again here: PAX records by
//! their length prefix (the `tar` crate splits them at newlines, which binary
//! xattr values break), and an entry whose path, link or size the two parses
//! disagree on is refused as ambiguous. The same capture bounds the memory
//! one entry's headers can take ([`ApplyOptions::max_header_bytes`]).
//!
//! Other rules, beyond the OCI spec's:
//!
//! * directory, link, device and fifo entries must have size 0 (other tar
//!   readers ignore their size, the `tar` crate does not: a differential);
//! * an archive may end with an end-of-archive block, followed only by zero
//!   bytes (tar record padding), or simply stop between two members (as
//!   umoci 0.4 writes them); stopping inside a member is truncation;
//! * PAX sparse files (`GNU.sparse.*`), aufs metadata (`.wh..wh.*` other than
//!   the opaque marker), `.wh.` in a directory component and archive member
//!   types other than file, directory, symlink, hard link, char/block device
//!   and fifo are refused as unsupported; PAX global headers are ignored;
//! * xattrs in the overlayfs namespaces (`trusted.overlay.*`,
//!   `user.overlay.*`) are dropped from the input: they are overlayfs's own
//!   and could redirect lookups into other layers. `user.*` xattrs on
//!   symlinks and device nodes (which Linux refuses) are dropped too;
//! * hard links must point at an existing regular file in the tree (in
//!   overlay mode: in the layer directory, i.e. this archive);
//! * in [`WhiteoutMode::Overlay`], a character device 0/0 in the archive is
//!   refused (overlayfs would read it as a whiteout).
//!
//! # Whiteouts
//!
//! Whiteouts and opaque markers hide only *lower* content, never what the
//! same archive creates, before or after them. In `Delete` mode the hidden
//! content is removed; in `Overlay` mode it is also removed from the layer
//! directory (where lower content should not exist) and the marker is
//! recorded the overlayfs way: a 0/0 character device, or
//! `trusted.overlay.opaque=y`. A whiteout whose name this archive itself
//! creates makes that directory opaque in `Overlay` mode, and a directory
//! entry that replaces a non-directory (such as a whiteout device) is made
//! opaque, so the layer hides exactly what the `Delete` mode removes.
//!
//! # Metadata
//!
//! Mode (with setuid/setgid/sticky), numeric owner, mtime (PAX fractional
//! mtimes honored), xattrs (`SCHILY.xattr.*`) and device numbers are
//! applied. A directory entry that meets an existing directory keeps it and
//! makes its metadata the entry's, including its xattr set (except
//! `security.selinux` and the overlayfs namespaces, which are left alone).
//! Directory modes and mtimes are set last, deepest first. Parent
//! directories missing from the archive are created 0755, owned by root
//! (when running as root), with the current time as mtime; so is the mtime
//! of an existing directory the archive changes without naming it.
//! Hard-link entries change nothing of their target's metadata. Regular
//! files are written sparse: 4 KiB blocks of zeros are left as holes
//! ([`ApplyOptions::holes`]).
//!
//! # Limits
//!
//! * `/proc` must be mounted (xattrs of symlinks and device nodes, modes of
//!   device nodes);
//! * a filesystem that refuses an xattr of the archive fails the apply;
//! * memory grows with the number of entries (the paths this archive made,
//!   for the same-archive whiteout rule) and with one entry's headers;
//! * directory removal holds one descriptor per level of depth.
//!
//! # Export: the byte format
//!
//! The output is deterministic: the same trees give the same bytes.
//!
//! * order: depth first; in a directory: the directory's own entry, then its
//!   opaque marker, then its whiteouts (sorted by name), then its children
//!   sorted by name bytes, each followed by its own content;
//! * headers: GNU format (`tar::Header::new_gnu`), numeric uid/gid (base-256
//!   when large), empty user/group names, mtime in whole seconds (negative
//!   mtimes as 0; no nanoseconds, atime or ctime anywhere), mode & 07777,
//!   device numbers for devices; directories end in `/`; names longer than
//!   100 bytes as GNU `L` records and link targets as GNU `K` records (the
//!   `tar` crate's format, link targets byte-exact);
//! * xattrs as one PAX `x` record per entry before its header, keys
//!   `SCHILY.xattr.NAME` sorted by name, except `trusted.overlay.*`,
//!   `user.overlay.*` and `security.selinux` (host-specific);
//! * whiteouts and opaque markers: empty regular files, mode 0, owner 0:0,
//!   mtime 0;
//! * hard links among the emitted regular files: the first path in order is
//!   a file, the others link entries to it (mode, owner, mtime, no xattrs);
//! * sockets are skipped (tar cannot hold them), in both trees;
//! * gzip: no name, mtime 0, level 6; zstd: level 3 with checksum. Their
//!   bytes are stable for a given build of the compression libraries.
//!
//! `export_diff` tells a replaced directory by its inode number. A
//! filesystem may give a directory that was removed and made again its old
//! number (ext4 often does); the export then lists the old entries as
//! whiteouts instead of one opaque marker: the same result, more entries.

mod apply;
mod compress;
mod error;
mod export;
mod path;
pub mod split;
mod stream;
pub mod summary;
mod tree;
mod unlayer;

#[cfg(test)]
mod tests;

pub use apply::{apply, apply_recording};
pub use compress::decompress;
pub(crate) use compress::read_full;
pub(crate) use compress::Encoder;
pub use error::ChangesetError;
pub use export::{export_diff, export_overlay_layer};
pub use unlayer::unlayer;

/// How a changeset stream is (or is to be) compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// A plain tar stream.
    #[default]
    None,
    /// gzip (`application/vnd.oci.image.layer.v1.tar+gzip`).
    Gzip,
    /// zstd (`application/vnd.oci.image.layer.v1.tar+zstd`).
    Zstd,
}

/// What whiteouts become when a changeset is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhiteoutMode {
    /// The target is a merged tree (the thin driver: a layer's filesystem
    /// holds parent + changes): `.wh.NAME` deletes NAME (recursively),
    /// `.wh..wh..opq` deletes the directory's existing entries (those not
    /// created by this same archive).
    Delete,
    /// The target is an overlayfs layer directory (upperdir-style):
    /// `.wh.NAME` becomes a character device 0/0 named NAME; `.wh..wh..opq`
    /// sets xattr `trusted.overlay.opaque=y` on the directory.
    Overlay,
}

/// How [`apply()`] treats whiteouts, and its limits against absurd input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// What whiteouts and opaque markers become: the target is a merged
    /// tree or an overlayfs layer directory.
    pub whiteouts: WhiteoutMode,
    /// Largest (logical) size of one file entry. Default 64 GiB.
    pub max_entry_size: u64,
    /// Most archive members (after extension headers). Default 10 million.
    pub max_entries: u64,
    /// Longest entry path or link target, in bytes. Default 4096.
    pub max_path_len: usize,
    /// Most bytes of headers one member may bring (its own header, PAX
    /// records, GNU long names, GNU sparse maps); they are held in memory.
    /// Default 16 MiB.
    pub max_header_bytes: usize,
    /// Leave 4 KiB-aligned blocks of zeros as holes in regular files (keeps
    /// sparse entries sparse, and zero runs off a thin pool). Default true.
    pub holes: bool,
    /// Overlay mode: the merged tree of the layers below (mounted
    /// read-only). A parent directory the archive does not name is made
    /// with the owner, mode and mtime it has there, as overlayfs' own
    /// copy-up does, and a path that passes through a symlink there is
    /// refused, as it is in Delete mode. Default none.
    pub lower: Option<std::path::PathBuf>,
    /// A directory entry where a directory already is (in the target, or
    /// in [`ApplyOptions::lower`]) leaves it as it is: its owner, mode,
    /// times and xattrs stay. For changesets that make what is missing, as
    /// a container's init layer does with its mount points. Default false
    /// (an archive's directory entry sets the directory's metadata).
    pub keep_existing_dirs: bool,
    /// The stream's diff_id, which its reader checks as it goes (an
    /// uncompressed image layer blob, whose digest is its diff_id, read
    /// through a reader that fails at its end if the bytes do not hash to
    /// it): the stream is not hashed a second time, and its stats carry
    /// this. Ignored for a compressed stream. Default none.
    pub known_diff_id: Option<String>,
    /// Start writing each file of 64 KiB or more to its device as soon as
    /// it is written, for a target flushed as a whole when the apply ends
    /// (a thin layer's filesystem, unmounted): the device works while the
    /// archive is still being read, and the flush finds less to write.
    /// Default false.
    pub start_writeback: bool,
}

impl ApplyOptions {
    /// The defaults, with this whiteout mode.
    pub fn new(whiteouts: WhiteoutMode) -> Self {
        ApplyOptions {
            whiteouts,
            max_entry_size: 64 << 30,
            max_entries: 10_000_000,
            max_path_len: 4096,
            max_header_bytes: 16 << 20,
            holes: true,
            lower: None,
            keep_existing_dirs: false,
            known_diff_id: None,
            start_writeback: false,
        }
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions::new(WhiteoutMode::Delete)
    }
}

/// What [`apply()`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyStats {
    /// Archive members (after extension headers), whiteouts included.
    pub entries: u64,
    /// Length of the uncompressed tar stream, trailing padding included.
    pub bytes: u64,
    /// sha256 of the *uncompressed* tar stream, `"sha256:<hex>"` (the OCI
    /// diff_id): every byte read, through the end-of-archive blocks and any
    /// padding after them.
    pub diff_id: String,
    /// The compression the input had (sniffed from its first bytes).
    pub compression: Compression,
}

/// How [`export_diff`] and [`export_overlay_layer`] write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportOptions {
    /// How the output is compressed.
    pub compression: Compression,
    /// Non-directory paths (relative, like `etc/hosts`) left out of the
    /// export, whether changed or deleted: a container's commit skips the
    /// files its init layer owns.
    pub skip: &'static [&'static str],
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportStats {
    /// Archive members written (extension headers not counted).
    pub entries: u64,
    /// Length of the uncompressed tar stream.
    pub bytes: u64,
    /// sha256 of the uncompressed tar stream, `"sha256:<hex>"`.
    pub diff_id: String,
}

/// The whiteout prefix and the opaque marker's name.
pub(crate) const WH_PREFIX: &[u8] = b".wh.";
pub(crate) const WH_META_PREFIX: &[u8] = b".wh..wh.";
pub(crate) const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// The namespaces of overlayfs's own xattrs: `trusted.overlay.`, and
/// `user.overlay.` for an unprivileged mount (`userxattr`).
const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// The xattr that makes an overlayfs directory opaque (value `y`), as
/// apply sets it.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Xattrs that belong to overlayfs and are never taken from or put into a
/// changeset.
pub(crate) fn is_overlay_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES
        .iter()
        .any(|p| name.starts_with(p.as_bytes()))
}

/// The names overlayfs xattr `NAME` has, in each of its namespaces.
pub(crate) fn overlay_xattr_names(name: &str) -> [String; 2] {
    OVERLAY_XATTR_PREFIXES.map(|p| format!("{p}{name}"))
}

/// Xattrs an export writes (and a tree comparison looks at).
pub(crate) fn is_exported_xattr(name: &[u8]) -> bool {
    !is_overlay_xattr(name) && name != b"security.selinux"
}
