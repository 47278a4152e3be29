//! Storage drivers: the resource behind each layer.
//!
//! The [`crate::store::Store`] owns the layer graph (ids, names, parents,
//! images, the journal); a driver owns only what one layer is made of. The
//! thin driver's resource is a thin device holding the layer's whole
//! filesystem (a snapshot of its parent's); the overlay driver (later) keeps
//! a directory of the layer's own changes. Every driver is exercised by the
//! same behavioural tests.

pub mod overlay;
pub mod thin;

use std::io::{Read, Write};
use std::path::Path;

use crate::changeset::{ApplyStats, ExportOptions, ExportStats};
use crate::error::Result;
use crate::layer::{LayerId, LayerRecord, Resource};

/// Space a layer takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes only this layer holds (freed by removing it).
    pub exclusive_bytes: u64,
    /// Bytes it shares with other layers.
    pub shared_bytes: u64,
}

/// The resource behind layers. `chain` arguments list a layer and its
/// ancestors, the layer first.
pub trait Driver {
    /// The name users pass to `--driver`.
    fn name(&self) -> &'static str;

    /// Makes the resource of a new layer whose parent is `chain[0]` (an
    /// empty filesystem when `chain` is empty). O(1) where the driver can.
    fn create(&mut self, id: &LayerId, chain: &[&LayerRecord]) -> Result<Resource>;

    /// Applies a changeset to a new layer's resource (before anything else
    /// uses it).
    fn apply(
        &mut self,
        layer: &LayerRecord,
        chain: &[&LayerRecord],
        changeset: &mut dyn Read,
    ) -> Result<ApplyStats>;

    /// Mounts the layer at `target` (an existing directory): read-only,
    /// or `writable` for a container's top layer, which must have no
    /// children (its writes land in the layer itself).
    fn mount(&mut self, chain: &[&LayerRecord], target: &Path, writable: bool) -> Result<()>;

    /// Unmounts what [`Driver::mount`] mounted at `target`.
    fn unmount(&mut self, layer: &LayerRecord, target: &Path) -> Result<()>;

    /// Writes the layer's changes against its parent as an OCI changeset.
    fn export(
        &mut self,
        chain: &[&LayerRecord],
        out: &mut dyn Write,
        opts: &ExportOptions,
    ) -> Result<ExportStats>;

    /// Grows the filesystem of a layer with no children to `size` (the
    /// thin driver's `--size`). Drivers without a per-layer size refuse.
    fn resize(&mut self, layer: &LayerRecord, size: thinpool::Bytes) -> Result<()>;

    /// The thin pool this driver keeps its layers in, if any (thin volumes
    /// live in the same pool and must not open it a second time).
    fn pool_mut(&mut self) -> Option<&mut thinpool::Pool> {
        None
    }

    /// Frees a layer's resource. Fails while it is mounted.
    fn remove(&mut self, layer: &LayerRecord) -> Result<()>;

    /// Frees the resource a killed create may have left for `id`, if any.
    fn remove_orphan(&mut self, id: &LayerId) -> Result<()>;

    /// Space per layer.
    fn usage(&mut self, layers: &[&LayerRecord]) -> Result<Vec<Usage>>;

    /// Frees resources whose layer has no record; returns what it freed.
    /// Fails if a record's resource is missing.
    fn reconcile(&mut self, layers: &[&LayerRecord]) -> Result<Vec<String>>;
}
