//! The floors and peers set beside thinlayer in the same run: the raw
//! device-mapper sequence a snapshot needs (by `dmsetup` and by in-process
//! ioctls), LVM's thin snapshots, and a plain linear device.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use devicemapper::{DevId, DmNameBuf, DmOptions, DM};
use thinpool::loopback::{self, LoopDev};
use thinpool::names::{PoolNames, Role};
use thinpool::{Bytes, ThinId};

use crate::fixture::{run, Fixture};

/// The mkfs.ext4 options thinlayer's thin driver uses for its base
/// filesystem, so every peer formats alike.
const MKFS_EXT4: &[&str] = &[
    "-q",
    "-F",
    "-E",
    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
];

pub fn mount_ext4(dev: &Path, target: &Path, readonly: bool) -> Result<()> {
    let flags = if readonly {
        nix::mount::MsFlags::MS_RDONLY
    } else {
        nix::mount::MsFlags::empty()
    };
    nix::mount::mount(Some(dev), target, Some("ext4"), flags, None::<&str>)
        .with_context(|| format!("mounting {}", dev.display()))
}

/// The raw device-mapper sequence a snapshot needs (the floor under
/// thinlayer's own overhead): a `create_snap` message, a thin target
/// loaded with `dmsetup create`, a mount. Undone after timing.
pub struct DmFloor {
    pool: String,
    /// `major:minor` of the pool device (thinlayer makes no /dev/mapper nodes).
    pool_dev: String,
    sectors: u64,
    /// The pool's first thin device: its base filesystem.
    pub base: ThinId,
}

impl DmFloor {
    pub fn new(f: &Fixture) -> Result<DmFloor> {
        Self::of_root(&f.root)
    }

    /// The floor on `root`'s pool, over its base filesystem's size.
    pub fn of_root(root: &thinlayer::root::Root) -> Result<DmFloor> {
        let pool = root.open_pool()?;
        let names = PoolNames::new(pool.record().id.clone());
        let (base, size) = pool
            .thins()
            .iter()
            .next()
            .map(|(id, t)| (*id, t.size))
            .context("the pool has no thin device")?;
        let pool_name = names.name_string(Role::Pool);
        let dev = Self::dmsetup(&[
            "info",
            "-c",
            "--noheadings",
            "-o",
            "major,minor",
            &pool_name,
        ])?;
        Ok(DmFloor {
            pool: pool_name,
            pool_dev: dev.trim().to_string(),
            sectors: size.sectors(),
            base,
        })
    }

    /// A thin id far above the ones thinlayer hands out.
    pub fn id(k: u32) -> ThinId {
        ThinId(ThinId::MAX.0 - k)
    }

    fn name(k: u32) -> String {
        format!("thinlayer-bench-floor-{k}")
    }

    fn dmsetup(args: &[&str]) -> Result<String> {
        run(Command::new("dmsetup")
            .args(args)
            .env("DM_DISABLE_UDEV", "1"))
    }

    pub fn provision(&self, k: u32, origin: ThinId, target: &Path) -> Result<()> {
        let id = Self::id(k);
        Self::dmsetup(&[
            "message",
            &self.pool,
            "0",
            &format!("create_snap {} {}", id.0, origin.0),
        ])?;
        let table = format!("0 {} thin {} {}", self.sectors, self.pool_dev, id.0);
        Self::dmsetup(&["create", &Self::name(k), "--table", &table])?;
        let dev = format!("/dev/mapper/{}", Self::name(k));
        mount_ext4(Path::new(&dev), target, true)?;
        Ok(())
    }

    /// The same sequence as [`DmFloor::provision`] with the ioctls made
    /// in this process (no dmsetup processes): the true floor.
    pub fn provision_ioctl(&self, dm: &DM, k: u32, origin: ThinId, target: &Path) -> Result<()> {
        let dev = self.activate_snapshot(dm, k, origin)?;
        mount_ext4(&dev, target, true)?;
        Ok(())
    }

    /// Snapshot `origin` (inactive) as floor device `k` and activate it,
    /// with ioctls from this process: `create_snap`, create, load, resume.
    /// Returns the device's node.
    pub fn activate_snapshot(&self, dm: &DM, k: u32, origin: ThinId) -> Result<PathBuf> {
        self.activate_snapshot_of(dm, k, origin, None)
    }

    /// [`DmFloor::activate_snapshot`] of an origin that may be active as
    /// floor device `active_origin`: suspended around `create_snap` and
    /// resumed, as the kernel requires of an active origin.
    pub fn activate_snapshot_of(
        &self,
        dm: &DM,
        k: u32,
        origin: ThinId,
        active_origin: Option<u32>,
    ) -> Result<PathBuf> {
        let id = Self::id(k);
        let pool = DmNameBuf::new(self.pool.clone())?;
        let origin_name = active_origin
            .map(|o| DmNameBuf::new(Self::name(o)))
            .transpose()?;
        if let Some(o) = &origin_name {
            dm.device_suspend(
                &DevId::Name(o),
                DmOptions::default().set_flags(devicemapper::DmFlags::DM_SUSPEND),
            )?;
        }
        let sent = dm.target_msg(
            &DevId::Name(&pool),
            None,
            &format!("create_snap {} {}", id.0, origin.0),
        );
        if let Some(o) = &origin_name {
            dm.device_suspend(&DevId::Name(o), DmOptions::default())?;
        }
        sent?;
        let name = DmNameBuf::new(Self::name(k))?;
        let info = dm.device_create(&name, None, DmOptions::default())?;
        let table = [(
            0,
            self.sectors,
            "thin".to_string(),
            format!("{} {}", self.pool_dev, id.0),
        )];
        dm.table_load(&DevId::Name(&name), &table, DmOptions::default())?;
        dm.device_suspend(&DevId::Name(&name), DmOptions::default())?;
        Ok(PathBuf::from(format!("/dev/dm-{}", info.device().minor)))
    }

    /// The kernel's part of one thin `container create` whose init layer
    /// is `origin` (already made: containers over a layer share it), as
    /// floor device `k`: `create_snap` of it, the container's writable
    /// layer. Its own control fd, so threads run it at once.
    pub fn container_create(&self, k: u32, origin: ThinId) -> Result<()> {
        let dm = DM::new().context("opening /dev/mapper/control")?;
        let pool = DmNameBuf::new(self.pool.clone())?;
        dm.target_msg(
            &DevId::Name(&pool),
            None,
            &format!("create_snap {} {}", Self::id(k).0, origin.0),
        )?;
        Ok(())
    }

    /// Removes floor device `k`'s dm device (its thin id stays), by ioctl.
    pub fn deactivate(&self, dm: &DM, k: u32) -> Result<()> {
        let name = DmNameBuf::new(Self::name(k))?;
        dm.device_remove(&DevId::Name(&name), DmOptions::default())?;
        Ok(())
    }

    /// Deletes floor device `k`'s thin id from the pool, by ioctl.
    pub fn delete(&self, dm: &DM, k: u32) -> Result<()> {
        let pool = DmNameBuf::new(self.pool.clone())?;
        dm.target_msg(
            &DevId::Name(&pool),
            None,
            &format!("delete {}", Self::id(k).0),
        )?;
        Ok(())
    }

    pub fn undo(&self, k: u32, target: &Path) -> Result<()> {
        nix::mount::umount(target).context("unmounting the floor's mount")?;
        Self::dmsetup(&["remove", &Self::name(k)])?;
        Self::dmsetup(&[
            "message",
            &self.pool,
            "0",
            &format!("delete {}", Self::id(k).0),
        ])?;
        Ok(())
    }
}

/// LVM thin snapshots (`lvcreate -s` of a thin LV, Debian's lvm2) over a
/// loop device of their own, with a private configuration: no udev, no
/// metadata backups, only that loop device scanned.
pub struct Lvm {
    dir: PathBuf,
    file: PathBuf,
    dev: LoopDev,
    vg: String,
}

impl Lvm {
    /// Whether lvm2's tools are installed.
    pub fn available() -> bool {
        Command::new("lvm")
            .arg("version")
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A volume group in `dir` holding a thin pool and a thin LV `base`
    /// of `base` bytes with ext4 made like thinlayer's base.
    pub fn new(dir: &Path, base: Bytes) -> Result<Lvm> {
        fs::create_dir_all(dir.join("etc"))?;
        let file = dir.join("pv.img");
        let pool = Bytes(base.0 + (base.0 / 2).max(256 << 20));
        fs::File::create(&file)?.set_len(pool.0 + (256 << 20))?;
        let dev = loopback::attach(&file).context("attaching LVM's loop device")?;
        let conf = format!(
            "devices {{ dir = \"/dev\" obtain_device_list_from_udev = 0 external_device_info_source = \"none\" \
             filter = [ \"a|^{}$|\", \"r|.*|\" ] }}\n\
             activation {{ udev_sync = 0 udev_rules = 0 monitoring = 0 }}\n\
             backup {{ backup = 0 archive = 0 }}\n\
             global {{ locking_dir = \"{}\" }}\n",
            dev.path.display(),
            dir.join("lock").display()
        );
        fs::write(dir.join("etc/lvm.conf"), conf)?;
        let lvm = Lvm {
            dir: dir.to_path_buf(),
            file,
            dev,
            vg: "thinlayerbench".into(),
        };
        if Path::new("/dev").join(&lvm.vg).exists() {
            bail!(
                "a volume group '{}' is active already: remove it (vgremove -f {})",
                lvm.vg,
                lvm.vg
            );
        }
        let pv = lvm.dev.path.to_string_lossy().into_owned();
        lvm.lvm(&["pvcreate", "-q", &pv])?;
        lvm.lvm(&["vgcreate", "-q", &lvm.vg, &pv])?;
        let vgpool = format!("{}/pool", lvm.vg);
        lvm.lvm(&[
            "lvcreate",
            "-q",
            "-L",
            &format!("{}b", pool.0),
            "--chunksize",
            "64k",
            "-Zy",
            "-T",
            &vgpool,
        ])?;
        lvm.lvm(&[
            "lvcreate",
            "-q",
            "-V",
            &format!("{}b", base.0),
            "-T",
            &vgpool,
            "-n",
            "base",
        ])?;
        run(Command::new("mkfs.ext4")
            .args(MKFS_EXT4)
            .arg(lvm.device("base")))?;
        Ok(lvm)
    }

    fn lvm(&self, args: &[&str]) -> Result<String> {
        run(Command::new("lvm")
            .args(args)
            .env("LVM_SYSTEM_DIR", self.dir.join("etc"))
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    }

    /// The device node of logical volume `lv`.
    pub fn device(&self, lv: &str) -> PathBuf {
        PathBuf::from(format!("/dev/mapper/{}-{lv}", self.vg))
    }

    /// A thin snapshot `name` of `origin`, active.
    pub fn snapshot(&self, origin: &str, name: &str) -> Result<()> {
        self.lvm(&[
            "lvcreate",
            "-q",
            "-s",
            "-kn",
            "-n",
            name,
            &format!("{}/{origin}", self.vg),
        ])?;
        Ok(())
    }

    /// A snapshot of `origin` mounted read-only on `target`: what a
    /// layer's provisioning is.
    pub fn provision(&self, origin: &str, name: &str, target: &Path) -> Result<()> {
        self.snapshot(origin, name)?;
        mount_ext4(&self.device(name), target, true)
    }

    pub fn undo(&self, name: &str, target: &Path) -> Result<()> {
        nix::mount::umount(target).context("unmounting the LVM snapshot")?;
        self.lvm(&["lvremove", "-q", "-f", &format!("{}/{name}", self.vg)])?;
        Ok(())
    }

    /// A chain of `depth` LVs ending in the returned one: `base`, then
    /// snapshots of snapshots.
    pub fn chain(&self, depth: usize) -> Result<String> {
        let mut top = "base".to_string();
        for i in 1..depth {
            let name = format!("d{depth}s{i}");
            self.snapshot(&top, &name)?;
            top = name;
        }
        Ok(top)
    }

    /// Removes the volume group and its loop device.
    pub fn close(self) -> Result<()> {
        self.lvm(&["vgremove", "-q", "-f", &self.vg])?;
        self.dev.detach()?;
        fs::remove_file(&self.file)?;
        Ok(())
    }
}

/// A plain linear device-mapper device over a loop device on a sparse
/// file, ext4 made like thinlayer's base and mounted read-write: the same
/// stack as a thin layer without dm-thin's block provisioning.
pub struct Linear {
    file: PathBuf,
    dev: LoopDev,
    name: DmNameBuf,
    pub mnt: PathBuf,
}

impl Linear {
    pub fn new(dm: &DM, dir: &Path, size: Bytes) -> Result<Linear> {
        fs::create_dir_all(dir)?;
        let file = dir.join("linear.img");
        fs::File::create(&file)?.set_len(size.0)?;
        let dev = loopback::attach(&file).context("attaching the linear device's loop device")?;
        let name = DmNameBuf::new("thinlayer-bench-linear".into())?;
        let info = dm.device_create(&name, None, DmOptions::default())?;
        let table = [(
            0,
            size.sectors(),
            "linear".to_string(),
            format!("{} 0", dev.path.display()),
        )];
        dm.table_load(&DevId::Name(&name), &table, DmOptions::default())?;
        dm.device_suspend(&DevId::Name(&name), DmOptions::default())?;
        let node = PathBuf::from(format!("/dev/dm-{}", info.device().minor));
        run(Command::new("mkfs.ext4").args(MKFS_EXT4).arg(&node))?;
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt)?;
        mount_ext4(&node, &mnt, false)?;
        Ok(Linear {
            file,
            dev,
            name,
            mnt,
        })
    }

    pub fn close(self, dm: &DM) -> Result<()> {
        nix::mount::umount(&self.mnt).context("unmounting the linear device")?;
        dm.device_remove(&DevId::Name(&self.name), DmOptions::default())?;
        self.dev.detach()?;
        fs::remove_file(&self.file)?;
        Ok(())
    }
}
