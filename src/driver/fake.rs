//! An in-memory driver for the plain tier: the store's and the containers'
//! transactions run against it without root, and it can stand in for a
//! SIGKILL at any of its mutating calls.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::changeset::split::Reassembled;
use crate::changeset::{ApplyStats, Compression, ExportOptions, ExportStats};
use crate::driver::{ApplyWith, Driver, MountSpec, Usage};
use crate::error::{Error, Result};
use crate::layer::{DriverResource, LayerId, LayerRecord, Resource};

/// The fake's resource: a numbered device, as a thin id would be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeResource {
    /// The device's number.
    pub dev: u32,
}

impl DriverResource for FakeResource {
    const KIND: &'static str = "fake";
}

/// The devices the fake holds, like a pool's record.
#[derive(Debug, Default)]
pub struct FakeState {
    next: u32,
    /// device -> the layer id it was made for
    pub devices: BTreeMap<u32, LayerId>,
    /// Mutating calls so far.
    pub calls: usize,
    /// Panic (the test's stand-in for SIGKILL) at this mutating call.
    pub crash_at: Option<usize>,
    /// Makes the next `create` wait, as a slow device would: it sends on
    /// the sender when it starts, then waits for the receiver.
    pub hold_next_create: Option<Hold>,
    /// The same for the next `usage`, which the store calls without its
    /// lock: other commands change the store meanwhile.
    pub hold_next_usage: Option<Hold>,
}

/// A call held open by a test: the fake sends on the sender when the call
/// starts, then waits for the receiver before it goes on.
pub type Hold = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

/// Waits out `hold`, if the test set one.
fn wait_out(hold: Option<Hold>) {
    if let Some((started, go)) = hold {
        let _ = started.send(());
        let _ = go.recv();
    }
}

/// An in-memory driver; clones share their state, so a test keeps one
/// clone to look at what a store did with another.
#[derive(Clone, Debug, Default)]
pub struct Fake(pub Arc<Mutex<FakeState>>);

impl Fake {
    /// The shared state.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn step(&self) {
        let mut s = self.state();
        let n = s.calls;
        s.calls += 1;
        if s.crash_at == Some(n) {
            drop(s);
            panic!("killed at step {n}");
        }
    }

    /// The layers that own a device, sorted.
    pub fn owners(&self) -> Vec<LayerId> {
        let mut v: Vec<LayerId> = self.state().devices.values().cloned().collect();
        v.sort();
        v
    }

    fn dev(l: &LayerRecord) -> Result<u32> {
        Ok(l.resource.decode::<FakeResource>(&l.id)?.dev)
    }
}

impl Driver for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn create(&mut self, id: &LayerId, _chain: &[&LayerRecord]) -> Result<Resource> {
        let hold = self.state().hold_next_create.take();
        wait_out(hold);
        self.step();
        let mut s = self.state();
        let dev = s.next;
        s.next += 1;
        s.devices.insert(dev, id.clone());
        Ok(Resource::new(&FakeResource { dev }))
    }

    fn apply(
        &mut self,
        _l: &LayerRecord,
        _c: &[&LayerRecord],
        cs: &mut dyn Read,
        _with: ApplyWith<'_>,
    ) -> Result<ApplyStats> {
        self.step();
        let mut buf = vec![];
        cs.read_to_end(&mut buf)
            .map_err(Error::io("reading", "changeset"))?;
        if buf == b"bad" {
            return Err(Error::invalid("changeset", "bad"));
        }
        Ok(ApplyStats {
            entries: 1,
            bytes: buf.len() as u64,
            diff_id: format!("sha256:{:x}", Sha256::digest(&buf)),
            compression: Compression::None,
        })
    }

    fn reassemble(
        &mut self,
        _c: &[&LayerRecord],
        _r: &mut dyn Read,
        _o: &mut dyn Write,
    ) -> Result<Reassembled> {
        Err(Error::invalid("layer", "the fake driver keeps no files"))
    }

    fn mount_spec(&mut self, c: &[&LayerRecord], w: bool) -> Result<MountSpec> {
        self.step();
        Ok(MountSpec {
            fstype: "fake".into(),
            source: c[0].id.to_string(),
            options: vec![if w { "rw" } else { "ro" }.into()],
        })
    }

    fn mount(&mut self, _c: &[&LayerRecord], _t: &Path, _w: bool) -> Result<()> {
        Ok(())
    }

    fn check_size(&self, size: thinpool::Bytes) -> Result<()> {
        if size.0 < 64 << 20 {
            return Err(Error::invalid("size", "too small"));
        }
        Ok(())
    }

    fn resize(&mut self, _l: &LayerRecord, size: thinpool::Bytes) -> Result<()> {
        self.step();
        self.check_size(size)
    }

    fn unmount(&mut self, _l: &LayerRecord, _t: &Path) -> Result<()> {
        Ok(())
    }

    fn export(
        &mut self,
        _c: &[&LayerRecord],
        out: &mut dyn Write,
        _e: &ExportOptions,
    ) -> Result<ExportStats> {
        // An empty tar: two zero blocks.
        let end = [0u8; 1024];
        out.write_all(&end)
            .map_err(Error::io("writing", "export"))?;
        Ok(ExportStats {
            entries: 0,
            bytes: end.len() as u64,
            diff_id: format!("sha256:{:x}", Sha256::digest(end)),
        })
    }

    fn remove(&mut self, layer: &LayerRecord) -> Result<()> {
        self.step();
        let dev = Self::dev(layer)?;
        self.state().devices.remove(&dev);
        Ok(())
    }

    fn remove_orphan(&mut self, id: &LayerId) -> Result<()> {
        self.step();
        self.state().devices.retain(|_, owner| owner != id);
        Ok(())
    }

    fn usage(&mut self, layers: &[&LayerRecord]) -> Result<Vec<Usage>> {
        let hold = self.state().hold_next_usage.take();
        wait_out(hold);
        Ok(vec![Usage::default(); layers.len()])
    }

    fn reconcile(
        &mut self,
        layers: &[&LayerRecord],
        in_flight: &std::collections::BTreeSet<LayerId>,
    ) -> Result<Vec<String>> {
        let mut s = self.state();
        let before = s.devices.len();
        s.devices
            .retain(|_, owner| in_flight.contains(owner) || layers.iter().any(|l| &l.id == owner));
        let freed = (0..before - s.devices.len())
            .map(|i| format!("orphan {i}"))
            .collect();
        for l in layers {
            if !s.devices.contains_key(&Self::dev(l)?) {
                return Err(Error::Corrupt {
                    what: format!("layer {}", l.id),
                    reason: "its resource is missing".into(),
                });
            }
        }
        Ok(freed)
    }
}
