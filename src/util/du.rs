//! Bytes a directory tree holds on disk.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes the tree at `dir` holds on disk (allocated blocks; hard-linked
/// files counted once; symlinks not followed). Unreadable entries count 0.
pub fn du(dir: &Path) -> u64 {
    du_inodes(dir).0
}

/// [`du`], and the number of inodes under `dir` (each hard-linked file
/// once; `dir` itself not counted), as containerd's `Usage` reports them.
pub fn du_inodes(dir: &Path) -> (u64, u64) {
    let mut total = 0;
    let mut inodes = 0;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (total, inodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_du_counts_hard_links_once() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("d")).unwrap();
        fs::write(t.path().join("d/f"), vec![1u8; 64 << 10]).unwrap();
        let one = du(t.path());
        assert!(one >= 64 << 10, "{one}");
        assert_eq!(du_inodes(t.path()).1, 2);
        fs::hard_link(t.path().join("d/f"), t.path().join("g")).unwrap();
        assert_eq!(du(t.path()), one);
        assert_eq!(du_inodes(t.path()).1, 2, "a hard link is not a new inode");
    }
}
