//! Volumes: data that outlives containers.
//!
//! ```text
//! <root>/volumes/
//!   <name>/volume.json   the record (VolumeRecord)
//!   <name>/_data/        the data: a directory (local), or where the
//!                        volume's own filesystem is mounted while a
//!                        mounted container uses it (thin, or local with
//!                        type/device/o options)
//! ```
//!
//! Two drivers, as Docker's `--driver`:
//! - `local`: a directory under the root. With `--opt type=T --opt
//!   device=D --opt o=OPTS` it is instead whatever `mount -t T -o OPTS D`
//!   mounts (tmpfs, a filesystem image, NFS), made when a container first
//!   mounts it and unmounted when the last mounted container lets go. A
//!   mount that takes longer than [`LOCAL_MOUNT_TIMEOUT`] (an NFS server
//!   that is down) is killed and fails the container's mount.
//! - `thin`: a thin device of `--size` in the pool with its own ext4, so
//!   its size is a hard limit; `clone` snapshots it in O(1).
//!
//! Volumes are changed only under the containers' lock (see
//! [`crate::container`]), which also guards the references containers hold.
//! A killed `create` leaves a directory without a record, or a thin device
//! tagged `volume:<name>` that no record names: [`Volumes::open`] and
//! [`Volumes::reconcile_thin`] remove them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thinpool::{Bytes, Pool, ThinId};

use crate::error::{Error, Result};
use crate::mount;
use crate::pool::{PoolHandle, ThinOwner};
use crate::util::ids::random_hex;
use crate::util::time::now_unix;
use crate::util::tool;

/// Where a volume's data lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeDriver {
    /// A directory under the root, or a mount made from `--opt`s.
    #[default]
    Local,
    /// A thin device with its own filesystem.
    Thin,
}

impl std::fmt::Display for VolumeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VolumeDriver {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "local" => Ok(VolumeDriver::Local),
            "thin" => Ok(VolumeDriver::Thin),
            _ => Err(format!("'{s}' is not a volume driver: use local or thin")),
        }
    }
}

impl VolumeDriver {
    /// The name `--driver` takes and records use.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeDriver::Local => "local",
            VolumeDriver::Thin => "thin",
        }
    }
}

/// What a local volume that is a mount is: `mount -t FSTYPE [-o OPTIONS]
/// DEVICE` (from `--opt type=…`, `--opt device=…`, `--opt o=…`). Recorded
/// as the map of those options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct LocalMount {
    /// `type`: the filesystem type (tmpfs, ext4, nfs, ...).
    pub fstype: String,
    /// `device`: what is mounted (a device, an image file, `:/export`).
    pub device: String,
    /// `o`: mount options, if any.
    pub options: Option<String>,
}

impl LocalMount {
    /// Reads `--opt key=value` pairs: none is a plain directory; otherwise
    /// `type` and `device` are required, `o` optional, nothing else
    /// allowed, none twice, none empty.
    pub fn from_opts(opts: &[(String, String)]) -> Result<Option<LocalMount>> {
        let map = Self::opts_map(opts)?;
        if map.is_empty() {
            return Ok(None);
        }
        LocalMount::try_from(map).map(Some)
    }

    /// `--opt` pairs as a map: only `type`, `device` and `o`, none twice,
    /// none empty.
    fn opts_map(opts: &[(String, String)]) -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        for (k, val) in opts {
            if !matches!(k.as_str(), "type" | "device" | "o") {
                return Err(Error::invalid(
                    "volume option",
                    format!("unknown option '{k}': the local driver takes type, device and o"),
                ));
            }
            if map.insert(k.clone(), val.clone()).is_some() {
                return Err(Error::invalid(
                    "volume option",
                    format!("'{k}' is given twice"),
                ));
            }
            if val.is_empty() || val.contains('\0') {
                return Err(Error::invalid(
                    "volume option",
                    format!("'{k}' needs a value (--opt {k}=VALUE)"),
                ));
            }
        }
        Ok(map)
    }

    /// Whether this is an NFS mount (`type=nfs` or `nfs4`).
    pub fn is_nfs(&self) -> bool {
        matches!(self.fstype.as_str(), "nfs" | "nfs4")
    }

    /// The value of mount option `key` in `o`, if given.
    fn option(&self, key: &str) -> Option<&str> {
        self.options
            .as_deref()?
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    /// An NFS device split into its server (empty in Docker's `:/export`
    /// form, where `o=addr=` names it) and its path; `None` without a
    /// `:`. An IPv6 server is written in brackets: `[::1]:/export`.
    fn nfs_device(&self) -> Option<(&str, &str)> {
        let d = self.device.as_str();
        if let Some(rest) = d.strip_prefix('[') {
            let (host, path) = rest.split_once("]:")?;
            return Some((host, path));
        }
        d.split_once(':')
    }

    /// The NFS server: the device's host, else `o=addr=`.
    pub fn nfs_server(&self) -> Option<&str> {
        let (host, _) = self.nfs_device()?;
        Some(host)
            .filter(|h| !h.is_empty())
            .or_else(|| self.option("addr"))
    }

    /// What `mount` is given as the source. Docker's local driver passes
    /// `device=:/export` with `o=addr=HOST` to mount(2) itself; mount.nfs
    /// needs the server in the device, so it is put there (`HOST:/export`).
    pub fn mount_source(&self) -> String {
        match self.nfs_device() {
            Some(("", path)) if self.is_nfs() => match self.nfs_server() {
                Some(h) if h.contains(':') => format!("[{h}]:{path}"),
                Some(h) => format!("{h}:{path}"),
                None => self.device.clone(),
            },
            _ => self.device.clone(),
        }
    }

    /// What `mount` is given as `-o`: `o`, and for NFS `retry=0` unless
    /// `o` says otherwise, so that a refused connection fails at once
    /// instead of mount.nfs retrying it for two minutes.
    pub fn mount_options(&self) -> String {
        let o = self.options.clone().unwrap_or_default();
        if !self.is_nfs() || self.option("retry").is_some() {
            return o;
        }
        if o.is_empty() {
            "retry=0".into()
        } else {
            format!("{o},retry=0")
        }
    }

    /// Checks what can be checked before the first mount: an NFS device
    /// names a path and a server (`HOST:/PATH`, or `:/PATH` with
    /// `o=addr=HOST`).
    fn check(&self) -> Result<()> {
        if !self.is_nfs() {
            return Ok(());
        }
        match self.nfs_device() {
            Some((_, path)) if path.starts_with('/') && self.nfs_server().is_some() => Ok(()),
            _ => Err(Error::invalid(
                "volume option",
                format!(
                    "device '{}' is not an NFS export: use --opt device=HOST:/PATH, or --opt device=:/PATH with --opt o=addr=HOST",
                    self.device
                ),
            )),
        }
    }

    /// The error for a mount of volume `name` that did not finish within
    /// `waited`: who did not answer and what to check.
    fn timed_out(&self, name: &str, waited: Duration) -> Error {
        let inspect = format!("`thinlayer volume inspect {name}`");
        match (self.is_nfs(), self.nfs_server(), self.nfs_device()) {
            (true, Some(server), Some((_, path))) => Error::TimedOut {
                what: format!("NFS server {server} of volume '{name}'"),
                waited,
                hint: format!(
                    ": check that it is up and exports {path}, and the volume's --opt o=addr=... and device ({inspect})"
                ),
            },
            _ => Error::TimedOut {
                what: format!("mount -t {} of volume '{name}'", self.fstype),
                waited,
                hint: format!(": check what it mounts and its options ({inspect})"),
            },
        }
    }
}

impl TryFrom<BTreeMap<String, String>> for LocalMount {
    type Error = Error;
    fn try_from(mut m: BTreeMap<String, String>) -> Result<LocalMount> {
        let (Some(fstype), Some(device)) = (m.remove("type"), m.remove("device")) else {
            return Err(Error::invalid(
                "volume option",
                "a local volume that is a mount needs both --opt type=T and --opt device=D",
            ));
        };
        let options = m.remove("o");
        if let Some(k) = m.keys().next() {
            return Err(Error::invalid(
                "volume option",
                format!("unknown option '{k}': the local driver takes type, device and o"),
            ));
        }
        Ok(LocalMount {
            fstype,
            device,
            options,
        })
    }
}

impl From<LocalMount> for BTreeMap<String, String> {
    fn from(l: LocalMount) -> BTreeMap<String, String> {
        let mut m = BTreeMap::from([("type".into(), l.fstype), ("device".into(), l.device)]);
        if let Some(o) = l.options {
            m.insert("o".into(), o);
        }
        m
    }
}

/// A local volume's mount as recorded: the map of its options, empty for
/// a plain directory.
mod mount_map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::LocalMount;

    pub fn serialize<S: Serializer>(m: &Option<LocalMount>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => m.serialize(s),
            None => BTreeMap::<String, String>::new().serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<LocalMount>, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        if map.is_empty() {
            return Ok(None);
        }
        LocalMount::try_from(map)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// A volume's record (`volumes/<name>/volume.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The volume's name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, or 64 hex digits).
    pub name: String,
    /// Where its data lives.
    pub driver: VolumeDriver,
    /// Made for one container's `-v /path`; `container rm -v` and `volume
    /// prune` remove it.
    #[serde(default)]
    pub anonymous: bool,
    /// What a local volume that is a mount mounts (recorded as its
    /// `type`, `device` and `o` options).
    #[serde(default, rename = "options", with = "mount_map")]
    pub mount: Option<LocalMount>,
    #[serde(default)]
    /// `--label KEY=VALUE`s.
    pub labels: BTreeMap<String, String>,
    /// A thin volume's size and device.
    #[serde(default)]
    pub size: Option<Bytes>,
    #[serde(default)]
    /// A thin volume's size.
    pub thin_id: Option<ThinId>,
    /// A thin volume's device in the pool.
    pub created_unix: u64,
}

impl VolumeRecord {
    /// Whether the data directory is a mount point while in use.
    pub fn is_mount(&self) -> bool {
        self.driver == VolumeDriver::Thin || self.mount.is_some()
    }
}

/// What `volume create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewVolume {
    /// None: a generated name (64 hex digits, as Docker's).
    pub name: Option<String>,
    /// `--driver`.
    pub driver: VolumeDriver,
    /// `--size` (thin volumes; 10G by default).
    pub size: Option<Bytes>,
    /// `key=value` pairs of `--opt`.
    pub options: Vec<(String, String)>,
    /// `--label`s.
    pub labels: BTreeMap<String, String>,
    /// Made for one container's `-v /path`.
    pub anonymous: bool,
}

/// Default size of a thin volume (blocks are used only when written).
pub const DEFAULT_THIN_SIZE: Bytes = Bytes(10 << 30);
/// The smallest thin volume: ext4 needs room for its journal and tables.
pub const MIN_THIN_SIZE: Bytes = Bytes(16 << 20);

/// How long a local volume's mount (`mount -t nfs`, cifs, ...) may take
/// when a container first uses the volume. Past it, `mount` and the
/// helpers it started are killed, whatever they got as far as mounting is
/// unmounted, and the container's mount fails with [`Error::TimedOut`].
/// An NFS server that does not answer would otherwise hold `container
/// mount` or `exec` for minutes (a v4 mount waits `timeo` × `retrans`,
/// mount.nfs retries for two minutes); a healthy one answers in well
/// under a second.
pub const LOCAL_MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

const RECORD: &str = "volume.json";
const DATA: &str = "_data";
fn tag(name: &str) -> String {
    ThinOwner::Volume(name.to_string()).tag()
}

/// Checks a volume name: 1 to 128 of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit (Docker's rule), so never `/` or `..`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(Error::invalid(
            "volume name",
            format!("'{name}' must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// Checks `--driver`, `--size` and `--opt` together, before anything is
/// made; returns the local mount the options describe.
pub fn check_new(v: &NewVolume) -> Result<Option<LocalMount>> {
    if let Some(n) = &v.name {
        validate_name(n)?;
    }
    let opts = LocalMount::opts_map(&v.options)?;
    let mut mount = None;
    match v.driver {
        VolumeDriver::Local => {
            if v.size.is_some() {
                return Err(Error::invalid(
                    "volume size",
                    "--size needs --driver thin (a local volume has no size of its own; for tmpfs use --opt o=size=...)",
                ));
            }
            if !opts.is_empty() {
                let m = LocalMount::try_from(opts)?;
                m.check()?;
                mount = Some(m);
            }
        }
        VolumeDriver::Thin => {
            if !opts.is_empty() {
                return Err(Error::invalid(
                    "volume option",
                    "--opt is for the local driver; a thin volume takes only --size",
                ));
            }
            let size = v.size.unwrap_or(DEFAULT_THIN_SIZE);
            if size < MIN_THIN_SIZE {
                return Err(Error::invalid(
                    "volume size",
                    format!("{size} is too small for a filesystem: use at least {MIN_THIN_SIZE}"),
                ));
            }
            if !size.is_multiple_of(Bytes(4096)) {
                return Err(Error::invalid(
                    "volume size",
                    format!("{size} is not a multiple of 4K"),
                ));
            }
        }
    }
    Ok(mount)
}

/// The pool, opened only when a thin volume needs it.
pub trait PoolAccess {
    /// The open pool (the thin driver's, shared).
    fn pool(&mut self) -> Result<PoolHandle>;
}

/// The volumes of one root. Callers hold the containers' lock.
#[derive(Debug)]
pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    /// The volumes in `dir`, without the cleanup of [`Volumes::open`].
    pub(crate) fn at(dir: &Path) -> Volumes {
        Volumes {
            dir: dir.to_path_buf(),
        }
    }

    /// Opens `<root>/volumes`, removing what a killed `create` left of a
    /// local volume (a directory without a record).
    pub fn open(dir: &Path) -> Result<Volumes> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::io("creating", dir))?;
        Ok(Volumes {
            dir: dir.to_path_buf(),
        })
    }

    /// What a volume create or removal killed midway left: directories
    /// without a record (and nothing mounted in them). The caller frees
    /// the thin devices no volume claims ([`Volumes::reconcile_thin`])
    /// before it sweeps them ([`Volumes::sweep`]), so that a kill in
    /// between leaves them for the next command to find again.
    pub fn unfinished(&self) -> Result<Vec<PathBuf>> {
        let mut out = vec![];
        let rd = fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.join(RECORD).exists() && !mount::is_mounted(&p.join(DATA))? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Removes directories [`Volumes::unfinished`] found.
    pub fn sweep(&self, dirs: &[PathBuf]) -> Result<()> {
        for d in dirs {
            fs::remove_dir_all(d).map_err(Error::io("removing", d))?;
        }
        Ok(())
    }

    fn vol_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Where a volume's data is (while in use, for a volume that is a mount).
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.vol_dir(name).join(DATA)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeRecord>> {
        let mut out = vec![];
        let rd = fs::read_dir(&self.dir).map_err(Error::io("listing", &self.dir))?;
        for e in rd.flatten() {
            let p = e.path().join(RECORD);
            if let Some(r) = thinpool::record::read::<VolumeRecord>(&p)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A volume by name; an error naming the command to list them if missing.
    pub fn get(&self, name: &str) -> Result<VolumeRecord> {
        self.find(name)?.ok_or_else(|| Error::NotFound {
            what: "volume",
            name: name.to_string(),
            hint: ": list them with `thinlayer volume ls`".into(),
        })
    }

    /// A volume by name, or `None`.
    pub fn find(&self, name: &str) -> Result<Option<VolumeRecord>> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        Ok(thinpool::record::read(&self.vol_dir(name).join(RECORD))?)
    }

    /// Makes a volume (its directory, or its thin device and filesystem),
    /// then its record: a kill before the record leaves only what
    /// [`Volumes::open`] and [`Volumes::reconcile_thin`] remove.
    pub fn create(&self, v: &NewVolume, pools: &mut dyn PoolAccess) -> Result<VolumeRecord> {
        let mount = check_new(v)?;
        let name = match &v.name {
            Some(n) => n.clone(),
            None => random_hex(32)?,
        };
        let rec = VolumeRecord {
            name: name.clone(),
            driver: v.driver,
            anonymous: v.anonymous,
            mount,
            labels: v.labels.clone(),
            size: None,
            thin_id: None,
            created_unix: now_unix(),
        };
        let thin_size =
            (v.driver == VolumeDriver::Thin).then(|| v.size.unwrap_or(DEFAULT_THIN_SIZE));
        self.make(rec, pools, |rec, pools| {
            if let Some(size) = thin_size {
                let (id, made) = make_thin(&mut pools.pool()?.lock(), &rec.name, size)?;
                rec.size = Some(size);
                rec.thin_id = Some(id);
                made?;
            }
            Ok(())
        })
    }

    /// Makes a new volume `rec` (refused if its name is taken): its data
    /// directory, then `fill` (which makes its thin device, if any, and
    /// records it in `rec`), then its record. On failure what was made is
    /// undone.
    fn make(
        &self,
        mut rec: VolumeRecord,
        pools: &mut dyn PoolAccess,
        fill: impl FnOnce(&mut VolumeRecord, &mut dyn PoolAccess) -> Result<()>,
    ) -> Result<VolumeRecord> {
        if self.find(&rec.name)?.is_some() {
            return Err(Error::Exists {
                what: "volume",
                name: rec.name,
            });
        }
        let dir = self.vol_dir(&rec.name);
        // A directory without a record is what a killed create left.
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(Error::io("removing", &dir))?;
        }
        let made = (|| -> Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir.join(DATA))
                .map_err(Error::io("creating", dir.join(DATA)))?;
            // Durable before a thin device is made: the directory without
            // a record is how the next command knows to look for one no
            // volume claims ([`Volumes::unfinished`]).
            thinpool::record::sync_dir(&self.dir).map_err(Error::io("syncing", &self.dir))?;
            fill(&mut rec, pools)?;
            thinpool::record::write(&dir.join(RECORD), &rec)?;
            Ok(())
        })();
        if let Err(e) = made {
            let undo = self.undo_create(&rec, pools);
            return Err(e.with_rollback(undo));
        }
        Ok(rec)
    }

    fn undo_create(&self, rec: &VolumeRecord, pools: &mut dyn PoolAccess) -> Result<()> {
        if let Some(id) = rec.thin_id {
            let pool = pools.pool()?;
            let mut pool = pool.lock();
            if pool.thins().contains_key(&id) {
                pool.delete_thin(id)?;
            }
        }
        let dir = self.vol_dir(&rec.name);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing", &dir)(e))
            }
            _ => Ok(()),
        }
    }

    /// A new thin volume `new` sharing every block of `src` (O(1); writes
    /// to either copy one pool block at a time). A mounted source is
    /// frozen for the instant of the snapshot.
    pub fn clone_thin(
        &self,
        src: &str,
        new: &str,
        labels: BTreeMap<String, String>,
        pools: &mut dyn PoolAccess,
    ) -> Result<VolumeRecord> {
        validate_name(new)?;
        let s = self.get(src)?;
        let Some(origin) = s.thin_id.filter(|_| s.driver == VolumeDriver::Thin) else {
            return Err(Error::invalid(
                "volume clone",
                format!("volume '{src}' is a local directory; only thin volumes clone (copy a local one with cp -a)"),
            ));
        };
        let rec = VolumeRecord {
            name: new.to_string(),
            labels,
            anonymous: false,
            created_unix: now_unix(),
            thin_id: None,
            ..s.clone()
        };
        self.make(rec, pools, |rec, pools| {
            let pool = pools.pool()?;
            let mut pool = pool.lock();
            if !pool.thins().contains_key(&origin) {
                return Err(missing_thin(&s));
            }
            rec.thin_id = Some(pool.snapshot_thin(origin, &tag(new))?);
            Ok(())
        })
    }

    /// Removes a volume and its data. The caller has checked references;
    /// a volume mounted by a container is refused.
    pub fn remove(&self, rec: &VolumeRecord, pools: &mut dyn PoolAccess) -> Result<()> {
        let data = self.data_path(&rec.name);
        if rec.is_mount() && mount::is_mounted(&data)? {
            return Err(Error::InUse {
                what: format!("volume '{}'", rec.name),
                reason: "a mounted container uses it; unmount the container first".into(),
            });
        }
        let dir = self.vol_dir(&rec.name);
        // The record goes first: from here on, what is left is an orphan
        // that open() or reconcile_thin() removes if this is killed.
        thinpool::record::remove(&dir.join(RECORD))?;
        if let Some(id) = rec.thin_id {
            let pool = pools.pool()?;
            let mut pool = pool.lock();
            if pool.thins().contains_key(&id) {
                pool.delete_thin(id)?;
            }
        }
        fs::remove_dir_all(&dir).map_err(Error::io("removing", &dir))
    }

    /// Makes a volume's data available and returns its path: mounts a thin
    /// volume's filesystem, or a local volume's `type/device/o`, at the
    /// data directory if not mounted yet.
    pub fn acquire(&self, rec: &VolumeRecord, pools: &mut dyn PoolAccess) -> Result<PathBuf> {
        let data = self.data_path(&rec.name);
        if !rec.is_mount() || mount::is_mounted(&data)? {
            return Ok(data);
        }
        match (rec.driver, &rec.mount) {
            (VolumeDriver::Thin, _) => {
                let id = rec.thin_id.ok_or_else(|| missing_thin(rec))?;
                let pool = pools.pool()?;
                let mut pool = pool.lock();
                if !pool.thins().contains_key(&id) {
                    return Err(missing_thin(rec));
                }
                let dev = pool.activate_thin(id)?;
                // The device was never written outside ext4's own tables,
                // which a thin device reads as zeros: no lazy zeroing needed.
                if let Err(e) = mount::mount(&dev, &data, "ext4", false, "noinit_itable") {
                    let _ = pool.deactivate_thin(id);
                    return Err(e);
                }
            }
            (VolumeDriver::Local, Some(m)) => mount_local(rec, m, &data, LOCAL_MOUNT_TIMEOUT)?,
            (VolumeDriver::Local, None) => {}
        }
        Ok(data)
    }

    /// Undoes [`Volumes::acquire`] when no mounted container uses the
    /// volume any more.
    pub fn release(&self, rec: &VolumeRecord, pools: &mut dyn PoolAccess) -> Result<()> {
        let data = self.data_path(&rec.name);
        if !rec.is_mount() || !mount::is_mounted(&data)? {
            return Ok(());
        }
        mount::unmount(&data)?;
        if let Some(id) = rec.thin_id {
            let pool = pools.pool()?;
            let r = pool.lock().deactivate_thin(id);
            match r {
                Ok(())
                | Err(thinpool::Error::Busy { .. })
                | Err(thinpool::Error::NoSuchThin(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Deletes thin devices tagged as a volume's that no record names (a
    /// killed create or clone). Returns what it freed.
    pub fn reconcile_thin(&self, pool: &PoolHandle) -> Result<Vec<String>> {
        let owned: BTreeMap<ThinId, String> = self
            .list()?
            .into_iter()
            .filter_map(|r| r.thin_id.map(|id| (id, tag(&r.name))))
            .collect();
        let mut pool = pool.lock();
        let orphans: Vec<(ThinId, String)> = pool
            .thins()
            .iter()
            .filter(|(id, t)| {
                matches!(ThinOwner::parse(&t.tag), Some(ThinOwner::Volume(_)))
                    && owned.get(id) != Some(&t.tag)
            })
            .map(|(id, t)| (*id, t.tag.clone()))
            .collect();
        let mut freed = vec![];
        for (id, t) in orphans {
            pool.delete_thin(id)?;
            freed.push(format!("thin device {id} ({t}), which no volume claimed"));
        }
        Ok(freed)
    }

    /// Bytes a volume holds: blocks mapped for a thin volume, blocks used
    /// by the directory tree for a local one (None when it is a mount
    /// that is not mounted now).
    pub fn usage(&self, rec: &VolumeRecord, pool: Option<&PoolHandle>) -> Option<u64> {
        match (rec.driver, rec.thin_id) {
            (VolumeDriver::Thin, Some(id)) => pool
                .and_then(|p| p.lock().usage().ok())
                .and_then(|u| u.get(&id).map(|u| u.exclusive.0 + u.shared.0)),
            (VolumeDriver::Local, _) if rec.mount.is_none() => {
                Some(crate::util::du::du(&self.data_path(&rec.name)))
            }
            _ => None,
        }
    }

    /// Whether the volume's data directory has no entries (checked while
    /// acquired).
    pub fn is_empty(&self, rec: &VolumeRecord) -> Result<bool> {
        let data = self.data_path(&rec.name);
        let mut rd = fs::read_dir(&data).map_err(Error::io("listing", &data))?;
        Ok(rd.all(|e| {
            // A fresh ext4 holds lost+found, which is not content.
            e.map(|e| rec.driver == VolumeDriver::Thin && e.file_name() == "lost+found")
                .unwrap_or(false)
        }))
    }
}

/// Mounts local volume `rec`'s `m` at `data`, given `limit` to finish.
fn mount_local(rec: &VolumeRecord, m: &LocalMount, data: &Path, limit: Duration) -> Result<()> {
    let r = tool::mount_within(
        &m.fstype,
        &m.mount_source(),
        &m.mount_options(),
        data,
        limit,
    );
    match r {
        Ok(()) => Ok(()),
        Err(Error::Tool { detail, .. }) => Err(Error::Tool {
            tool: match m.nfs_server().filter(|_| m.is_nfs()) {
                Some(server) => format!("mount of volume '{}' from NFS server {server}", rec.name),
                None => format!("mount of volume '{}'", rec.name),
            },
            detail,
        }),
        Err(Error::TimedOut { waited, .. }) => {
            // Killed at the instant it finished, it may have mounted.
            let undo = match mount::is_mounted(data) {
                Ok(true) => mount::unmount(data),
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            Err(m.timed_out(&rec.name, waited).with_rollback(undo))
        }
        Err(e) => Err(e),
    }
}

fn missing_thin(rec: &VolumeRecord) -> Error {
    Error::Corrupt {
        what: format!("volume '{}'", rec.name),
        reason: "its thin device is not in the pool (was the pool destroyed?); remove the volume and create it again".into(),
    }
}

/// Creates and formats a thin volume's device; the id is returned even
/// when formatting fails, so the caller can undo it.
fn make_thin(pool: &mut Pool, name: &str, size: Bytes) -> Result<(ThinId, Result<()>)> {
    let id = pool.create_thin(size, &tag(name))?;
    let formatted = pool.activate_thin(id).map_err(Error::from).and_then(|dev| {
        // No reserved blocks: the size is what the volume holds. Tables and
        // journal are left as the thin device reads them, zeros, so a
        // volume costs pool blocks only for what is written.
        tool::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-E"])
                .arg("nodiscard,lazy_itable_init=1,lazy_journal_init=1")
                .arg(&dev),
            "mkfs.ext4",
        )
    });
    let deactivated = pool.deactivate_thin(id).map_err(Error::from);
    Ok((id, formatted.and(deactivated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoPool;
    impl PoolAccess for NoPool {
        fn pool(&mut self) -> Result<PoolHandle> {
            Err(Error::invalid("pool", "none in this test"))
        }
    }

    fn local(name: Option<&str>) -> NewVolume {
        NewVolume {
            name: name.map(str::to_string),
            ..NewVolume::default()
        }
    }

    #[test]
    fn plain_volume_names_and_options_are_checked() {
        for good in ["data", "my_vol.1", "A-b", &"a".repeat(128)] {
            validate_name(good).unwrap();
        }
        for bad in ["", "..", "a/b", "/abs", ".x", "-x", "a b", &"a".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        let opt = |k: &str, v: &str| (k.to_string(), v.to_string());
        let err = |v: NewVolume| check_new(&v).unwrap_err().to_string();
        let mut v = local(Some("x"));
        v.options = vec![opt("colour", "red")];
        assert!(err(v.clone()).contains("unknown option 'colour'"));
        v.options = vec![opt("type", "tmpfs")];
        assert!(err(v.clone()).contains("needs both"));
        v.options = vec![
            opt("type", "tmpfs"),
            opt("device", "tmpfs"),
            opt("o", "size=1m"),
        ];
        check_new(&v).unwrap();
        v.size = Some(Bytes(1 << 30));
        assert!(err(v.clone()).contains("--size needs --driver thin"));
        let mut t = local(Some("t"));
        t.driver = VolumeDriver::Thin;
        t.size = Some(Bytes(1 << 20));
        assert!(err(t.clone()).contains("too small for a filesystem"));
        t.size = Some(Bytes((64 << 20) + 512));
        assert!(err(t.clone()).contains("multiple of 4K"));
        t.size = Some(Bytes(64 << 20));
        check_new(&t).unwrap();
        t.options = vec![opt("o", "x")];
        assert!(err(t).contains("only --size"));
        assert_eq!("thin".parse::<VolumeDriver>(), Ok(VolumeDriver::Thin));
        assert!("nfs"
            .parse::<VolumeDriver>()
            .unwrap_err()
            .contains("local or thin"));
    }

    fn nfs(device: &str, o: Option<&str>) -> LocalMount {
        LocalMount {
            fstype: "nfs".into(),
            device: device.into(),
            options: o.map(str::to_string),
        }
    }

    #[test]
    fn plain_nfs_devices_get_their_server_and_a_bounded_mount() {
        // Docker's form: the server in addr=, put into the device for mount.nfs.
        let m = nfs(":/export/a", Some("addr=10.0.0.5,vers=4.2"));
        m.check().unwrap();
        assert_eq!(m.nfs_server(), Some("10.0.0.5"));
        assert_eq!(m.mount_source(), "10.0.0.5:/export/a");
        assert_eq!(m.mount_options(), "addr=10.0.0.5,vers=4.2,retry=0");
        let m6 = nfs(":/e", Some("vers=4,addr=fd00::1"));
        assert_eq!(m6.mount_source(), "[fd00::1]:/e");
        // mount(8)'s form is passed as it is; retry= given is kept.
        let h = nfs("srv:/e", Some("retry=1"));
        h.check().unwrap();
        assert_eq!(
            (h.mount_source().as_str(), h.nfs_server()),
            ("srv:/e", Some("srv"))
        );
        assert_eq!(h.mount_options(), "retry=1");
        assert_eq!(nfs("[::1]:/e", None).nfs_server(), Some("::1"));
        assert_eq!(nfs("srv:/e", None).mount_options(), "retry=0");
        // Not NFS: untouched.
        let t = LocalMount {
            fstype: "tmpfs".into(),
            device: "tmpfs".into(),
            options: None,
        };
        assert_eq!(
            (t.mount_source(), t.mount_options()),
            ("tmpfs".into(), String::new())
        );
        for bad in [
            nfs(":/e", None),
            nfs("/e", Some("addr=h")),
            nfs("h:e", None),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains("is not an NFS export"), "{e}");
        }
        let e = m.timed_out("v", Duration::from_secs(20)).to_string();
        assert!(
            e.starts_with("NFS server 10.0.0.5 of volume 'v' did not answer within 20 s: check that it is up and exports /export/a"),
            "{e}"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn plain_local_volumes_are_made_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let vols = Volumes::open(&dir.path().join("volumes")).unwrap();
        let a = vols.create(&local(Some("a")), &mut NoPool).unwrap();
        assert!(!a.anonymous && a.driver == VolumeDriver::Local);
        let anon = vols
            .create(
                &NewVolume {
                    anonymous: true,
                    ..local(None)
                },
                &mut NoPool,
            )
            .unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(vols.is_empty(&a).unwrap());
        fs::write(vols.data_path("a").join("f"), b"x").unwrap();
        assert!(!vols.is_empty(&a).unwrap());
        let e = vols.create(&local(Some("a")), &mut NoPool).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let names: Vec<String> = vols.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), 2);
        let e = vols
            .clone_thin("a", "b", BTreeMap::new(), &mut NoPool)
            .unwrap_err();
        assert!(e.to_string().contains("only thin volumes clone"), "{e}");
        vols.remove(&a, &mut NoPool).unwrap();
        assert!(vols.find("a").unwrap().is_none());
        assert!(!dir.path().join("volumes/a").exists());
        let e = vols.get("a").unwrap_err().to_string();
        assert!(e.contains("no volume 'a'"), "{e}");
        // A thin volume with no pool: nothing is left behind.
        let mut t = local(Some("t"));
        t.driver = VolumeDriver::Thin;
        assert!(vols.create(&t, &mut NoPool).is_err());
        assert!(!dir.path().join("volumes/t").exists());
    }

    #[test]
    fn plain_what_a_killed_create_left_is_found_then_swept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("volumes");
        let vols = Volumes::open(&root).unwrap();
        vols.create(&local(Some("whole")), &mut NoPool).unwrap();
        fs::create_dir_all(root.join("half/_data")).unwrap();
        let vols = Volumes::open(&root).unwrap();
        // Found, not yet removed: the caller frees unclaimed thin devices
        // first.
        let left = vols.unfinished().unwrap();
        assert_eq!(left, [root.join("half")]);
        vols.sweep(&left).unwrap();
        assert!(!root.join("half").exists());
        let names: Vec<String> = vols.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["whole"]);
    }
}
