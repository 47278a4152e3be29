//! What every scenario needs: one thinlayer root holding both drivers'
//! stores (and the pool), changesets made to order, timing, cache drops.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use thinlayer::container::{Containers, NewContainer};
use thinlayer::driver::overlay::OverlayOptions;
use thinlayer::driver::thin::{FsType, ThinResource};
use thinlayer::driver::DriverKind;
use thinlayer::layer::LayerId;
use thinlayer::{Root, Store};
use thinpool::config::BackingRequest;
use thinpool::{Bytes, CreateOptions};

/// The two drivers under test, in the order a repetition runs them
/// (alternated, so neither always goes first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drv {
    Thin,
    Overlay,
}

impl Drv {
    pub fn name(self) -> &'static str {
        match self {
            Drv::Thin => "thin",
            Drv::Overlay => "overlay",
        }
    }

    pub fn kind(self) -> DriverKind {
        match self {
            Drv::Thin => DriverKind::Thin,
            Drv::Overlay => DriverKind::Overlay,
        }
    }

    /// Both drivers, the first one alternating with `rep`.
    pub fn interleaved(rep: usize) -> [Drv; 2] {
        if rep.is_multiple_of(2) {
            [Drv::Thin, Drv::Overlay]
        } else {
            [Drv::Overlay, Drv::Thin]
        }
    }
}

/// One layer per driver, made from the same changeset.
pub struct Both([LayerId; 2]);

impl Both {
    pub fn of(&self, d: Drv) -> &LayerId {
        &self.0[(d == Drv::Overlay) as usize]
    }
}

/// The benchmark's state: a root with a pool, under a work directory.
pub struct Fixture {
    pub root: Root,
    pub work: PathBuf,
    /// The `thinlayer` binary, for scenarios that run the CLI.
    pub bin: PathBuf,
    /// The size of the pool's base filesystem (every thin layer's size).
    pub base: Bytes,
    /// The pool's block size: what it provisions, and copies on a first
    /// write, at a time.
    pub block: Bytes,
    /// containerd's benchsuite, built by tools/build-containerd-bench.sh
    /// (scenario containerd-bench).
    pub containerd_bench: Option<PathBuf>,
    n: u64,
}

impl Fixture {
    /// A fresh root in `work` with a pool of `data` bytes and a base
    /// filesystem of `base` bytes.
    pub fn new(work: &Path, data: Bytes, base: Bytes, bin: PathBuf) -> Result<Fixture> {
        if work.exists() {
            // A previous run's pool, if any, goes first.
            let old = Root::new(&work.join("root"))?;
            let _ = thinlayer::system::destroy_pool(&old, true);
            for m in thinlayer::mount::mount_points()?.iter().rev() {
                if m.starts_with(work) {
                    let _ = thinlayer::mount::unmount(m);
                }
            }
            fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
        }
        fs::create_dir_all(work)?;
        let root = Root::new(&work.join("root"))?;
        let opts = CreateOptions {
            data: BackingRequest::File(Some(data)),
            ..CreateOptions::default()
        };
        let pool = thinlayer::system::create_pool(&root, &opts, FsType::Ext4, base)
            .context("creating the benchmark's pool")?;
        let block = pool.record().block_size.bytes();
        drop(pool);
        Ok(Fixture {
            root,
            work: work.to_path_buf(),
            bin,
            base,
            block,
            containerd_bench: None,
            n: 0,
        })
    }

    pub fn store(&self, d: Drv) -> Result<Store> {
        Ok(self.root.open_store(d.kind(), &OverlayOptions::default())?)
    }

    pub fn containers(&self) -> Result<Containers<'_>> {
        Ok(Containers::open(&self.root)?)
    }

    /// A path for a scratch file or directory, unique in this run.
    pub fn scratch(&mut self, what: &str) -> PathBuf {
        self.n += 1;
        self.work.join(format!("{what}-{}", self.n))
    }

    /// A layer made from `tar` on `parent` in driver `d`'s store.
    pub fn layer(&self, d: Drv, parent: Option<&LayerId>, tar: &Path) -> Result<LayerId> {
        let mut store = self.store(d)?;
        let mut f = io::BufReader::new(File::open(tar)?);
        let parent = parent.map(|p| p.to_string());
        Ok(store.create_layer(parent.as_deref(), None, Some(&mut f))?)
    }

    /// A bottom layer made from `cs` in each driver's store.
    pub fn base_layers(&mut self, cs: &Changeset) -> Result<Both> {
        let tar = self.scratch("base.tar");
        cs.write(&tar)?;
        let made = (|| {
            Ok(Both([
                self.layer(Drv::Thin, None, &tar)?,
                self.layer(Drv::Overlay, None, &tar)?,
            ]))
        })();
        fs::remove_file(&tar)?;
        made
    }

    /// A chain of `depth` layers: the first from `bottom`, each further one
    /// adding one small file. Returns the top.
    pub fn chain(&mut self, d: Drv, bottom: &Path, depth: usize) -> Result<LayerId> {
        let mut top = self.layer(d, None, bottom)?;
        for i in 1..depth {
            let t = self.scratch("step.tar");
            Changeset::new()
                .file(&format!("step/{i}"), 16, i as u64)
                .write(&t)?;
            top = self.layer(d, Some(&top), &t)?;
            fs::remove_file(&t)?;
        }
        Ok(top)
    }

    /// Creates a container from `layer` (with `overlay` options for the
    /// overlay driver), mounts it, and returns its name and rootfs.
    pub fn container(
        &mut self,
        d: Drv,
        layer: &LayerId,
        overlay: OverlayOptions,
    ) -> Result<(String, PathBuf)> {
        self.n += 1;
        let name = format!("bench-{}", self.n);
        let mut c = self.containers()?;
        c.create(&NewContainer {
            name: Some(name.clone()),
            layer: Some(layer.to_string()),
            driver: d.kind(),
            overlay,
            ..NewContainer::default()
        })?;
        let rootfs = c.mount(&name, true)?;
        Ok((name, rootfs))
    }

    pub fn remove_container(&self, name: &str) -> Result<()> {
        self.containers()?.remove(name, true, true)?;
        Ok(())
    }

    /// The thin device behind a thin-store layer.
    pub fn thin_of(&self, layer: &LayerId) -> Result<thinpool::ThinId> {
        let store = self.store(Drv::Thin)?;
        let l = store.layer(layer.as_str())?;
        Ok(l.resource.decode::<ThinResource>(&l.id)?.thin_id)
    }
}

/// Milliseconds since `start`.
pub fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Runs `f` and returns how long it took, in milliseconds.
pub fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let start = Instant::now();
    let v = f()?;
    Ok((ms(start), v))
}

/// Writes dirty data back and empties the page cache, so the next
/// measurement reads from the devices.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", b"3").context("dropping the page cache")?;
    Ok(())
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes that do not compress and are never all zero (a changeset's zero
/// blocks would become holes, and a hole is not a fully written file).
pub struct Noise {
    state: u64,
}

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(buf.len())
    }
}

/// An OCI changeset (tar) built to order.
#[derive(Default)]
pub struct Changeset {
    entries: Vec<(String, u64, u64)>,
}

impl Changeset {
    pub fn new() -> Changeset {
        Changeset::default()
    }

    /// A regular file of `size` bytes of noise from `seed`.
    pub fn file(mut self, path: &str, size: u64, seed: u64) -> Changeset {
        self.entries.push((path.to_string(), size, seed));
        self
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut b = tar::Builder::new(BufWriter::new(File::create(path)?));
        let mut dirs = std::collections::BTreeSet::new();
        for (p, size, seed) in &self.entries {
            let mut acc = String::new();
            for comp in p.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
                acc = if acc.is_empty() {
                    comp.to_string()
                } else {
                    format!("{acc}/{comp}")
                };
                if dirs.insert(acc.clone()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_size(0);
                    h.set_mtime(1);
                    b.append_data(&mut h, format!("{acc}/"), io::empty())?;
                }
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(*size);
            h.set_mtime(1);
            b.append_data(&mut h, p, Noise::new(*seed).take(*size))?;
        }
        b.into_inner()?.flush()?;
        Ok(())
    }
}
