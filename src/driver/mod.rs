//! Storage drivers: the resource behind each layer.
//!
//! The [`crate::store::Store`] owns the layer graph (ids, names, parents,
//! images, the journal); a driver owns only what one layer is made of, and
//! records it as an opaque [`Resource`] that only the driver reads. The
//! thin driver's resource is a thin device holding the layer's whole
//! filesystem (a snapshot of its parent's); the overlay driver's is a
//! directory of the layer's own changes. Every driver is exercised by the
//! same behavioural suites (`tests/conformance.rs`, `tests/containers.rs`);
//! the in-memory [`fake`] driver lets the store's and the containers'
//! transactions be tested without root.

#[cfg(test)]
pub mod fake;
pub mod overlay;
pub mod thin;

use std::io::{Read, Write};
use std::path::Path;

use crate::changeset::split::Reassembled;
use crate::changeset::{ApplyOptions, ApplyStats, ExportOptions, ExportStats};
use crate::error::Result;
use crate::layer::{LayerId, LayerRecord, Resource};

/// Which driver's store a command works on (`--driver`), as recorded in a
/// container's record (`"thin"`, `"overlay"`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Layers are thin snapshots in the pool.
    #[default]
    Thin,
    /// Layers are directories stacked with overlayfs.
    Overlay,
}

impl DriverKind {
    /// The name `--driver` takes and records use.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Thin => "thin",
            DriverKind::Overlay => "overlay",
        }
    }
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DriverKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "thin" => Ok(DriverKind::Thin),
            "overlay" => Ok(DriverKind::Overlay),
            _ => Err(format!("'{s}' is not a driver: use thin or overlay")),
        }
    }
}

/// How [`Driver::apply`] applies a changeset.
#[derive(Default)]
pub struct ApplyWith<'a> {
    /// Directories already in the tree keep their metadata
    /// ([`ApplyOptions::keep_existing_dirs`]): a container's init layer.
    pub keep_existing_dirs: bool,
    /// Where to record the changeset's layout
    /// ([`crate::changeset::split`]), so that its exact bytes can be given
    /// back: an image's layers.
    pub record: Option<&'a mut dyn Write>,
    /// The changeset's diff_id, checked by its reader as it goes
    /// ([`ApplyOptions::known_diff_id`]): not hashed again.
    pub known_diff_id: Option<String>,
}

impl ApplyWith<'_> {
    /// Applies `changeset` to `root` with `opts` and what this says.
    pub(crate) fn apply(
        self,
        changeset: &mut dyn Read,
        root: &Path,
        mut opts: ApplyOptions,
    ) -> Result<ApplyStats> {
        opts.keep_existing_dirs = self.keep_existing_dirs;
        opts.known_diff_id = self.known_diff_id;
        Ok(match self.record {
            Some(r) => crate::changeset::apply_recording(changeset, root, &opts, r)?,
            None => crate::changeset::apply(changeset, root, &opts)?,
        })
    }
}

/// A mount as mount(2) takes it: what containerd's `Mount` carries.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MountSpec {
    /// The filesystem type (`ext4`, `xfs`, `overlay`).
    pub fstype: String,
    /// The source (a device node, or `overlay`).
    pub source: String,
    /// Mount options (`ro`, `lowerdir=...`).
    pub options: Vec<String>,
}

/// Space a layer takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes only this layer holds (freed by removing it).
    pub exclusive_bytes: u64,
    /// Bytes it shares with other layers.
    pub shared_bytes: u64,
    /// Inodes only this layer holds, where the driver can count them
    /// without mounting (overlay: the entries of its directory; thin: not
    /// known, as in containerd's devmapper snapshotter).
    pub inodes: Option<u64>,
}

/// The resource behind layers. `chain` arguments list a layer and its
/// ancestors, the layer first. `Send`, so a store can move to the thread
/// that serves a request.
pub trait Driver: Send {
    /// The name users pass to `--driver`.
    fn name(&self) -> &'static str;

    /// Makes the resource of a new layer whose parent is `chain[0]` (an
    /// empty filesystem when `chain` is empty). O(1) where the driver can.
    fn create(&mut self, id: &LayerId, chain: &[&LayerRecord]) -> Result<Resource>;

    /// Makes the resource of a new layer `id` over `base[0]` holding the
    /// changes of the container layer `of[0]` against `of[1]` (a layer
    /// over `base[0]` that made at most `files` and `dirs`), without
    /// `files`: a commit, as [`Driver::export`] then [`Driver::apply`]
    /// would make it, but without copying the changed files. `None` when
    /// the driver cannot (the caller then exports and applies); nothing
    /// is left then. The thin driver snapshots `of[0]` and takes out what
    /// `of[1]` made ([`crate::changeset::unlayer`]).
    fn copy_commit(
        &mut self,
        _id: &LayerId,
        _of: &[&LayerRecord],
        _base: &[&LayerRecord],
        _files: &[&str],
        _dirs: &[&str],
    ) -> Result<Option<Resource>> {
        Ok(None)
    }

    /// Applies a changeset to a new layer's resource (before anything else
    /// uses it), as `with` says.
    fn apply(
        &mut self,
        layer: &LayerRecord,
        chain: &[&LayerRecord],
        changeset: &mut dyn Read,
        with: ApplyWith<'_>,
    ) -> Result<ApplyStats>;

    /// Writes the exact changeset `chain[0]` was made from, from the layout
    /// `record`ed when it was applied ([`ApplyWith::record`]) and the
    /// layer's files. Fails, having written part of it, when the layer
    /// cannot give those bytes back.
    fn reassemble(
        &mut self,
        chain: &[&LayerRecord],
        record: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<Reassembled>;

    /// Mounts the layer at `target` (an existing directory): read-only,
    /// or `writable` for a container's top layer, which must have no
    /// children (its writes land in the layer itself).
    fn mount(&mut self, chain: &[&LayerRecord], target: &Path, writable: bool) -> Result<()>;

    /// What mounting the layer takes, for a caller that mounts it itself
    /// (containerd): read-only, or `writable` as [`Driver::mount`]. The
    /// thin driver activates the layer's device (its node is the source).
    fn mount_spec(&mut self, chain: &[&LayerRecord], writable: bool) -> Result<MountSpec>;

    /// Starts in the background what mounting `layer` will take, for a
    /// caller that mounts it (or asks for its [`Driver::mount_spec`]) as
    /// soon as it is made: the store makes the layer's record durable
    /// meanwhile. The thin driver activates the layer's device, which is
    /// kernel work (mostly waiting); the next mount of that layer waits
    /// for it, and activates the device itself if it failed. Nothing by
    /// default.
    fn prepare_mount(&mut self, _layer: &LayerRecord) {}

    /// Unmounts what [`Driver::mount`] mounted at `target`.
    fn unmount(&mut self, layer: &LayerRecord, target: &Path) -> Result<()>;

    /// Writes the layer's changes against its parent as an OCI changeset.
    fn export(
        &mut self,
        chain: &[&LayerRecord],
        out: &mut dyn Write,
        opts: &ExportOptions,
    ) -> Result<ExportStats>;

    /// Whether a layer of this driver can be grown to `size` (the thin
    /// driver's `--size`), checked before anything is made. Drivers without
    /// a per-layer size refuse any size.
    fn check_size(&self, size: thinpool::Bytes) -> Result<()>;

    /// Grows the filesystem of a layer with no children to `size`, after
    /// [`Driver::check_size`].
    fn resize(&mut self, layer: &LayerRecord, size: thinpool::Bytes) -> Result<()>;

    /// Frees a layer's resource. Fails while it is mounted.
    fn remove(&mut self, layer: &LayerRecord) -> Result<()>;

    /// Frees the resource a killed create may have left for `id`, if any.
    fn remove_orphan(&mut self, id: &LayerId) -> Result<()>;

    /// Space per layer.
    fn usage(&mut self, layers: &[&LayerRecord]) -> Result<Vec<Usage>>;

    /// Frees resources whose layer has no record and is not `in_flight`
    /// (being made or removed by a live transaction); returns what it
    /// freed. Fails if a record's resource is missing.
    fn reconcile(
        &mut self,
        layers: &[&LayerRecord],
        in_flight: &std::collections::BTreeSet<LayerId>,
    ) -> Result<Vec<String>>;

    /// Whether what the driver keeps of the system is still so after its
    /// store was let go for a while ([`crate::store::ParkedStore`]): the
    /// thin driver's pool still active and its record the same pool's.
    /// `false` asks the caller to open the store anew. Asked with or
    /// without the store's lock ([`crate::store::ParkedStore::reopen`]
    /// asks before taking it): it looks at what the driver keeps, never
    /// at the records.
    fn revalidate(&mut self) -> Result<bool> {
        Ok(true)
    }
}
