//! The changeset error type, grouped by what the caller does next.

use std::borrow::Cow;
use std::io;
use std::path::Path;

use crate::text::escape_controls;

/// What went wrong applying or exporting a changeset.
///
/// * [`Hostile`](Self::Hostile), [`Malformed`](Self::Malformed),
///   [`Truncated`](Self::Truncated), [`Unsupported`](Self::Unsupported) and
///   [`Limit`](Self::Limit) are about the input: the changeset (or, for an
///   export, the tree) cannot be used as it is; retrying won't help. The
///   caller discards the half-made layer and reports the input.
/// * [`Io`](Self::Io) is the environment: the disk, the output, a missing
///   privilege. The caller may retry after fixing it.
///
/// Messages are one line, lowercase, and name the entry and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ChangesetError {
    /// The changeset tries to reach outside the layer root (absolute path,
    /// `..`, a path or hard link through a symlink, ...). Reject the image.
    #[error("hostile changeset: entry {entry:?} {reason}")]
    Hostile {
        /// The entry's path as the archive gives it (lossy UTF-8).
        entry: String,
        /// What it tried, e.g. `passes through symlink "a"`.
        reason: String,
    },

    /// The stream is not a valid (or not an unambiguous) tar archive.
    #[error("malformed changeset: {reason}")]
    Malformed {
        /// What is wrong, naming the entry where there is one.
        reason: String,
    },

    /// The stream ends early: mid-header, mid-entry, without end-of-archive
    /// marker, or inside the compressed stream.
    #[error("truncated changeset: {reason}")]
    Truncated {
        /// Where the stream ended.
        reason: String,
    },

    /// A valid archive (or tree, when exporting) uses something this module
    /// does not implement or cannot represent.
    #[error("unsupported: {}{reason}", entry_label(.entry))]
    Unsupported {
        /// The entry's path (in an export: in the tree), or empty when the
        /// stream as a whole is concerned (e.g. its compression).
        entry: String,
        /// What is not supported.
        reason: String,
    },

    /// The input exceeds a limit of [`super::ApplyOptions`].
    #[error("changeset exceeds a limit: {reason}")]
    Limit {
        /// Which limit, and by what.
        reason: String,
    },

    /// A record of a changeset's layout ([`super::split`]) is damaged.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The layer's files do not give back the changeset it was made from
    /// (a file differs from what the changeset wrote, e.g. an archive that
    /// wrote one path twice); nothing that claims its digest may be written.
    #[error("the layer's changeset cannot be reproduced exactly: {reason}")]
    Irreproducible {
        /// Which file or digest differs.
        reason: String,
    },

    /// A system call failed on `path` (relative to the layer root), or on the
    /// input or output stream.
    #[error("io error {op} {path:?}: {source}")]
    Io {
        /// What was being done, e.g. `"creating"`.
        op: &'static str,
        /// On what: a path relative to the root, a tree's host path, or
        /// `changeset input` / `changeset output`.
        path: String,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
}

impl ChangesetError {
    /// True when the input (changeset or tree) is at fault and retrying the
    /// same input cannot succeed; false for [`ChangesetError::Io`] and the
    /// errors of reassembling a recorded changeset.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            ChangesetError::Io { .. }
                | ChangesetError::Corrupt { .. }
                | ChangesetError::Irreproducible { .. }
        )
    }

    pub(crate) fn hostile(entry: &[u8], reason: impl Into<String>) -> Self {
        ChangesetError::Hostile {
            entry: show(entry),
            reason: one_line(reason),
        }
    }

    pub(crate) fn unsupported(entry: &[u8], reason: impl Into<String>) -> Self {
        ChangesetError::Unsupported {
            entry: show(entry),
            reason: one_line(reason),
        }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        ChangesetError::Malformed {
            reason: one_line(reason),
        }
    }

    pub(crate) fn truncated(reason: impl Into<String>) -> Self {
        ChangesetError::Truncated {
            reason: one_line(reason),
        }
    }

    pub(crate) fn limit(reason: impl Into<String>) -> Self {
        ChangesetError::Limit {
            reason: one_line(reason),
        }
    }

    pub(crate) fn io(op: &'static str, path: &[u8], source: io::Error) -> Self {
        ChangesetError::Io {
            op,
            path: show(path),
            source,
        }
    }
}

/// A path or name for messages: lossy UTF-8; `Debug` formatting then quotes
/// and escapes it, so a message stays on one line.
pub(crate) fn show(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        ".".to_string()
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// A reason, made one line: our own reasons quote names with `{:?}`
/// already; this is for other crates' error text that a reason carries,
/// such as the `tar` crate's ("... when getting cksum for a<newline>b").
fn one_line(reason: impl Into<String>) -> String {
    let reason = reason.into();
    match escape_controls(&reason) {
        Cow::Borrowed(_) => reason,
        Cow::Owned(escaped) => escaped,
    }
}

/// `entry "x": `, or nothing when there is no entry (e.g. the compression).
fn entry_label(entry: &str) -> String {
    if entry.is_empty() {
        String::new()
    } else {
        format!("entry {entry:?}: ")
    }
}

/// Shorthand: `io_host("opening tree", path)` as a `map_err` closure, for
/// a host path (a tree's root) rather than a path inside the tree.
pub(crate) fn io_host<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ChangesetError + 'a {
    move |e| ChangesetError::Io {
        op,
        path: path.display().to_string(),
        source: e,
    }
}

/// Shorthand: `io_err("writing", path)` as a `map_err` closure.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a [u8],
) -> impl FnOnce(io::Error) -> ChangesetError + 'a {
    move |e| ChangesetError::io(op, path, e)
}
