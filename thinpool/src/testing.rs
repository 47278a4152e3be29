//! Test support for the root and dm tiers, shared by this crate's and
//! thinlayer's integration tests (feature `testing`).
//!
//! A tier that cannot run fails loudly: [`require_root`] and [`require_dm`]
//! panic with the command that runs the tier, so nothing passes by being
//! skipped. [`Scratch`] makes a directory for one test and, on drop, tears
//! down only what was made under it: dm devices of pools recorded there
//! and loop devices bound to its files.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use devicemapper::{DevId, DmNameBuf, DmOptions, DM};

use crate::loopback::{self, LoopDev};
use crate::names::{PoolNames, Role, PREFIX};
use crate::pool::{log, PoolRecord, RECORD_FILE};
use crate::record;

/// Panics unless the test runs as root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test is in the root tier and needs uid 0: run `tools/test.sh root` as root");
    }
}

/// The record of the pool in `dir` as a reader sees it, without opening
/// the pool (which would recover whatever a kill left): a pending
/// operation the kernel's active pool has committed is applied
/// ([`PoolRecord::settle`]). Panics when there is no record.
pub fn settled_record(dir: &Path) -> PoolRecord {
    let kernel = DM::new().ok().and_then(|dm| {
        let probe: PoolRecord = record::read(&dir.join(RECORD_FILE)).ok()??;
        let name = PoolNames::new(probe.id).name(Role::Pool);
        let flags = DmOptions::default().set_flags(devicemapper::DmFlags::DM_NOFLUSH);
        let (_, lines) = dm.table_status(&DevId::Name(&name), flags).ok()?;
        let tx = lines.first()?.3.split_whitespace().next()?.parse().ok()?;
        Some(crate::units::TransactionId(tx))
    });
    let (mut rec, _) = log::read(dir)
        .expect("reading the pool record")
        .expect("a pool record");
    if let Some(k) = kernel {
        rec.settle(k);
    }
    rec
}

/// Replaces the record of the pool in `dir` with `rec`, as a checkpoint
/// does: the change log's entries are retired, so `rec` alone is what the
/// next reader sees. For tests that doctor a record.
pub fn write_record(dir: &Path, rec: &PoolRecord) {
    let mut rec = rec.clone();
    rec.log_epoch += 1;
    record::write(&dir.join(RECORD_FILE), &rec).expect("writing the pool record");
}

/// Panics unless the kernel has device-mapper with the thin-pool target.
pub fn require_dm() {
    require_root();
    if let Err(e) = crate::kernel::open_dm() {
        panic!("this test is in the dm tier and needs a kernel with dm-thin ({e}): run it in the VM with `vm-tests/dm-tier.sh`");
    }
}

/// A scratch directory for one test, cleaned up with everything made in it.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Makes a fresh directory named after `label` under
    /// `$THINLAYER_TEST_DIR` (or the system's temp directory).
    ///
    /// Panics when the directory cannot be made.
    pub fn new(label: &str) -> Scratch {
        let base = std::env::var_os("THINLAYER_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&base).expect("making the test base directory");
        let dir = tempfile::Builder::new()
            .prefix(&format!("thinlayer-{label}-"))
            .tempdir_in(base)
            .expect("making a scratch directory");
        Scratch { dir }
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A sparse file `name` of `size` bytes bound to a loop device; returns
    /// the loop device's path. Panics when either cannot be made.
    pub fn loop_device(&self, name: &str, size: u64) -> PathBuf {
        let file = self.path().join(name);
        let f = fs::File::create(&file).expect("creating a loop backing file");
        f.set_len(size).expect("sizing a loop backing file");
        loopback::attach(&file)
            .expect("attaching a loop device")
            .path
    }

    /// Names of every dm device the kernel has whose name starts with ours.
    pub fn our_dm_devices() -> Vec<String> {
        let Ok(dm) = DM::new() else {
            return vec![];
        };
        dm.list_devices()
            .unwrap_or_default()
            .into_iter()
            .map(|(n, _, _)| n.to_string())
            .filter(|n| n.starts_with(PREFIX))
            .collect()
    }

    /// Loop devices bound to files under this scratch directory.
    pub fn loops_under(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        for f in walk(self.path()) {
            if let Ok(Some(l)) = loopback::find(&f) {
                out.push(l.path);
            }
        }
        out
    }

    /// Dm devices of every pool recorded under this directory: every name
    /// with one of their prefixes.
    pub fn dm_devices_under(&self) -> Vec<String> {
        self.devices_under()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// The dm devices of every pool recorded under this directory, with
    /// the role each plays in its pool (`None` for a name with a pool's
    /// prefix that no role of it has).
    fn devices_under(&self) -> Vec<(DmNameBuf, Option<Role>)> {
        let pools: Vec<PoolNames> = walk(self.path())
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == RECORD_FILE))
            .filter_map(|p| record::read::<PoolRecord>(&p).ok().flatten())
            .map(|r| PoolNames::new(r.id))
            .collect();
        let Ok(dm) = DM::new() else { return vec![] };
        dm.list_devices()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, _, _)| {
                let pool = pools
                    .iter()
                    .find(|p| name.to_string().starts_with(&p.prefix()))?;
                Some((name.clone(), pool.role_of(&name)))
            })
            .collect()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Unmount anything left mounted under the scratch directory.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let base = self.path().to_string_lossy().into_owned();
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|m| m.starts_with(&base))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for m in points {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        if let Ok(dm) = DM::new() {
            let mut devs = self.devices_under();
            devs.sort_by_key(|(_, role)| role.map_or(u8::MAX, Role::removal_order));
            for (name, _) in devs {
                let _ = dm.device_remove(&DevId::Name(&name), DmOptions::default());
            }
        }
        for l in self.loops_under() {
            let _ = LoopDev::from_path(l).detach();
        }
    }
}
