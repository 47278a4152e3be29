//! Entry paths as bytes: checking them, splitting and joining them.

use super::error::{show, ChangesetError};

/// Longest name of one path component (Linux's NAME_MAX).
const NAME_MAX: usize = 255;

/// Splits a path from the archive into its components, refusing what could
/// leave the root. Empty and `.` components are dropped, so `./a//b/` is
/// `["a", "b"]` and `./` is `[]` (the root itself).
///
/// `entry` is the entry's own path (for messages); `what` says what `raw` is
/// when it isn't the entry's path (e.g. "hard link target").
pub(crate) fn check_path(
    entry: &[u8],
    raw: &[u8],
    what: Option<&str>,
    max_len: usize,
) -> Result<Vec<Vec<u8>>, ChangesetError> {
    let subject = match what {
        Some(w) => format!("{w} {:?} ", show(raw)),
        None => String::new(),
    };
    if raw.len() > max_len {
        return Err(ChangesetError::limit(format!(
            "entry {:?}: {subject}path is {} bytes long, more than {max_len}",
            show(&entry[..entry.len().min(200)]),
            raw.len()
        )));
    }
    if raw.is_empty() {
        return Err(ChangesetError::malformed(match what {
            Some(w) => format!("entry {:?} has an empty {w}", show(entry)),
            None => "an entry has an empty path".to_string(),
        }));
    }
    if raw.contains(&0) {
        return Err(ChangesetError::malformed(format!(
            "entry {:?}: {subject}contains a nul byte",
            show(entry)
        )));
    }
    if raw[0] == b'/' {
        return Err(ChangesetError::hostile(
            entry,
            format!("{subject}is an absolute path"),
        ));
    }
    let mut comps: Vec<Vec<u8>> = Vec::new();
    let mut depth = 0usize;
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                let reason = if depth == 0 {
                    format!("{subject}leaves the layer root")
                } else {
                    format!("{subject}contains a \"..\" component")
                };
                return Err(ChangesetError::hostile(entry, reason));
            }
            _ => {
                if c.len() > NAME_MAX {
                    return Err(ChangesetError::limit(format!(
                        "entry {:?}: {subject}has a component longer than {NAME_MAX} bytes",
                        show(&entry[..entry.len().min(200)])
                    )));
                }
                depth += 1;
                comps.push(c.to_vec());
            }
        }
    }
    Ok(comps)
}

/// The components of a key made by [`join`] (not the root's, which has
/// none: the key is empty).
pub(crate) fn split(key: &[u8]) -> Vec<Vec<u8>> {
    key.split(|b| *b == b'/').map(<[u8]>::to_vec).collect()
}

/// `a/b/c` from its components.
pub(crate) fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

/// `dir/name`, where `dir` may be empty (the root).
pub(crate) fn child_key(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        k.extend_from_slice(dir);
        k.push(b'/');
    }
    k.extend_from_slice(name);
    k
}

/// Every proper ancestor of `key`, the root (empty key) included.
pub(crate) fn ancestors(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::once(&key[..0]).chain(
        key.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(move |(i, _)| &key[..i]),
    )
}
