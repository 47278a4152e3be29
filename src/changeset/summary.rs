//! What a changeset touches, read from its headers alone: the paths it
//! writes, the paths its whiteouts delete and the directories it makes
//! opaque. `container diff` classifies these against the parent's tree.

use std::io::Read;

use super::error::ChangesetError;
use super::{WH_META_PREFIX, WH_OPAQUE, WH_PREFIX};

/// The paths a changeset touches, relative (`etc/hosts`), in stream order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Entries written (files, directories, links, devices).
    pub written: Vec<String>,
    /// Paths a whiteout deletes.
    pub deleted: Vec<String>,
    /// Directories whose lower content an opaque marker hides.
    pub opaque: Vec<String>,
}

/// Reads the headers of the uncompressed changeset `r`, skipping the
/// contents.
///
/// # Errors
/// [`ChangesetError::Malformed`] for a stream that is not a tar or a path
/// that is not UTF-8; [`ChangesetError::Io`] from reading.
pub fn touched(r: impl Read) -> Result<Touched, ChangesetError> {
    let mut out = Touched::default();
    let mut ar = tar::Archive::new(r);
    let entries = ar
        .entries()
        .map_err(|e| ChangesetError::malformed(format!("not a tar stream: {e}")))?;
    for e in entries {
        let e = e.map_err(|e| ChangesetError::malformed(format!("a bad tar header: {e}")))?;
        let raw = e.path_bytes();
        let path = std::str::from_utf8(&raw)
            .map_err(|_| ChangesetError::malformed("a path that is not UTF-8"))?
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path.as_str()),
        };
        let join = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        if name.as_bytes() == WH_OPAQUE {
            out.opaque.push(dir.clone());
        } else if name.as_bytes().starts_with(WH_META_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping: nothing changes.
        } else if let Some(gone) = name.as_bytes().strip_prefix(WH_PREFIX) {
            // A suffix of a str after an ASCII prefix: still UTF-8.
            out.deleted.push(join(&String::from_utf8_lossy(gone)));
        } else if !path.is_empty() {
            out.written.push(path.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, t) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_size(if *t == tar::EntryType::Regular { 3 } else { 0 });
            h.set_mode(0o644);
            let data: &[u8] = if *t == tar::EntryType::Regular {
                b"abc"
            } else {
                b""
            };
            b.append_data(&mut h, p, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn plain_touched_sorts_writes_whiteouts_and_opaque_markers() {
        use tar::EntryType::{Directory, Regular};
        let t = touched(
            &tar_of(&[
                ("etc/", Directory),
                ("etc/new.conf", Regular),
                ("etc/.wh.old.conf", Regular),
                (".wh.gone", Regular),
                ("var/", Directory),
                ("var/cache/", Directory),
                ("var/cache/.wh..wh..opq", Regular),
                ("var/cache/.wh..wh.plnk", Directory),
                ("var/cache/x", Regular),
            ])[..],
        )
        .unwrap();
        assert_eq!(
            t.written,
            ["etc", "etc/new.conf", "var", "var/cache", "var/cache/x"]
        );
        assert_eq!(t.deleted, ["etc/old.conf", "gone"]);
        assert_eq!(t.opaque, ["var/cache"]);
    }

    #[test]
    fn plain_touched_refuses_what_is_not_a_tar() {
        let err = touched(&b"this is not a tar stream at all, just text"[..]).unwrap_err();
        assert!(matches!(err, ChangesetError::Malformed { .. }), "{err}");
    }
}
