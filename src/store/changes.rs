//! A container's changes against its image, as `docker diff` lists them:
//! `A` added, `C` changed, `D` deleted. Read from the same export that
//! `commit` makes, then classified against the parent layer's tree.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::Store;
use crate::changeset::summary::{touched, Touched};
use crate::changeset::ExportOptions;
use crate::error::{Error, Result};
use crate::layer::{LayerId, LayerRecord};

/// What happened to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum ChangeKind {
    /// The parent has no such path (`A`).
    #[serde(rename = "A")]
    Added,
    /// The parent has it and the layer wrote it again (`C`).
    #[serde(rename = "C")]
    Changed,
    /// The layer deleted it (`D`).
    #[serde(rename = "D")]
    Deleted,
}

impl ChangeKind {
    /// The letter `docker diff` prints.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Change {
    /// Absolute path inside the layer's tree.
    pub path: String,
    /// What happened to it.
    pub kind: ChangeKind,
}

impl Store {
    /// The changes of layer `id` against its parent, sorted by path,
    /// leaving out `skip` (a container's init files). The parent is
    /// mounted read-only in this process's scratch directory to tell an
    /// added path from a changed one.
    ///
    /// # Errors
    /// Those of the driver's export and mount.
    pub fn changes(&mut self, id: &LayerId, skip: &'static [&'static str]) -> Result<Vec<Change>> {
        let chain = self.chain_owned(id)?;
        let refs: Vec<&LayerRecord> = chain.iter().collect();
        let opts = ExportOptions {
            skip,
            ..ExportOptions::default()
        };
        let (mut r, mut w) = std::io::pipe().map_err(Error::io("making a pipe for", "diff"))?;
        let reader = std::thread::spawn(move || {
            let t = touched(&mut r);
            // Read to the end even after a bad header, so the export never
            // writes into a closed pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
            t
        });
        let exported = self.driver.export(&refs, &mut w, &opts);
        drop(w);
        let touched = reader.join().map_err(|_| Error::Corrupt {
            what: format!("the changes of layer {}", chain[0].label()),
            reason: "the reading thread panicked".into(),
        })?;
        exported?;
        let touched = touched?;
        let Some(parent) = chain.get(1) else {
            return Ok(classify(&touched, None));
        };
        let base = super::scratch_dir(&self.dir)?.join(format!("diff-{}", chain[0].id));
        fs::create_dir_all(&base).map_err(Error::io("creating", &base))?;
        self.mount_at(&parent.id, &base, false)?;
        let out = classify(&touched, Some(&base));
        let unmounted = self.unmount_at(&parent.id, &base);
        let _ = fs::remove_dir(&base);
        unmounted?;
        Ok(out)
    }
}

/// Sorts what a changeset touched into changes, looking up each written
/// path in `base` (the parent's tree; `None`: no parent, all added).
fn classify(t: &Touched, base: Option<&Path>) -> Vec<Change> {
    let written: BTreeSet<&str> = t.written.iter().map(String::as_str).collect();
    let mut out: BTreeSet<Change> = BTreeSet::new();
    let change = |p: &str, kind| Change {
        path: format!("/{p}"),
        kind,
    };
    for p in &t.written {
        let kind = match base {
            Some(b) if exists_beneath(b, p) => ChangeKind::Changed,
            _ => ChangeKind::Added,
        };
        out.insert(change(p, kind));
    }
    for p in &t.deleted {
        out.insert(change(p, ChangeKind::Deleted));
    }
    // An opaque directory hides every lower child it did not write again.
    for d in &t.opaque {
        let Some(b) = base else { continue };
        if !is_dir_beneath(b, d) {
            continue;
        }
        let Ok(rd) = fs::read_dir(b.join(d)) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let p = if d.is_empty() { n } else { format!("{d}/{n}") };
            if !written.contains(p.as_str()) {
                out.insert(change(&p, ChangeKind::Deleted));
            }
        }
    }
    // One line per path: a path both deleted and written was replaced.
    let mut seen = BTreeSet::new();
    out.into_iter()
        .filter(|c| seen.insert(c.path.clone()))
        .map(|mut c| {
            if c.kind == ChangeKind::Deleted && written.contains(&c.path[1..]) {
                c.kind = ChangeKind::Changed;
            }
            c
        })
        .collect()
}

/// Whether relative path `p` names something under `base`, every
/// directory on the way a real directory (never a symlink followed).
fn exists_beneath(base: &Path, p: &str) -> bool {
    let mut cur = base.to_path_buf();
    let comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if i + 1 == comps.len() || m.is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Whether relative path `p` is a real directory under `base`.
fn is_dir_beneath(base: &Path, p: &str) -> bool {
    exists_beneath(base, p) && fs::symlink_metadata(base.join(p)).is_ok_and(|m| m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_changes_are_added_changed_or_deleted_against_the_parent() {
        let s = thinpool::testing::Scratch::new("changes");
        let b = s.path();
        fs::create_dir_all(b.join("etc")).unwrap();
        fs::write(b.join("etc/passwd"), "root").unwrap();
        fs::create_dir_all(b.join("cache/old")).unwrap();
        fs::write(b.join("cache/a"), "a").unwrap();
        fs::write(b.join("cache/keep"), "k").unwrap();
        std::os::unix::fs::symlink("/etc", b.join("link")).unwrap();
        let t = Touched {
            written: vec![
                "etc".into(),
                "etc/passwd".into(),
                "etc/new".into(),
                "cache".into(),
                "cache/keep".into(),
                // Through a symlink in the parent: not the same path.
                "link".into(),
            ],
            deleted: vec!["gone".into()],
            opaque: vec!["cache".into()],
        };
        let got: Vec<String> = classify(&t, Some(b))
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path))
            .collect();
        assert_eq!(
            got,
            [
                "C /cache",
                "D /cache/a",
                "C /cache/keep",
                "D /cache/old",
                "C /etc",
                "A /etc/new",
                "C /etc/passwd",
                "D /gone",
                "C /link",
            ]
        );
        assert!(!exists_beneath(b, "link/passwd"));
        let all_new = classify(&t, None);
        assert!(all_new
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted)
            .all(|c| c.kind == ChangeKind::Added));
    }
}
