//! What is recorded of a container, and what callers ask for and get back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thinpool::Bytes;

use super::spec::{MountSpec, Source};
use crate::driver::overlay::OverlayOptions;
use crate::driver::DriverKind;
use crate::error::{Error, Result};
use crate::layer::LayerId;
use crate::util::ids::short;
use crate::volume::VolumeRecord;

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made; undone if found by a later command.
    Creating,
    /// Made and usable.
    Created,
    /// Being removed; finished if found by a later command.
    Removing,
}

/// A container's record (`containers/<id>/config.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex digits.
    pub id: String,
    /// Its name (unique; the short id when none was given).
    pub name: String,
    /// The driver whose store holds its layers.
    pub driver: DriverKind,
    /// Where it is in its life.
    pub state: State,
    /// The image it was made from (id and the name given).
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    /// The name it was created from (`--image`), as given.
    pub image_name: Option<String>,
    /// The layer under the init layer: the image's top layer, or the
    /// layer given with `--layer`. Commits are made over it.
    pub parent: LayerId,
    /// `[init, writable]`, once made: the init layer is shared with the
    /// other containers over `parent` (its own, for a container made
    /// before init layers were shared).
    #[serde(default)]
    pub layers: Vec<LayerId>,
    /// Its `--hostname` (the short id by default).
    pub hostname: String,
    #[serde(default)]
    /// `--size`: the writable layer's filesystem size, thin driver only.
    pub size: Option<Bytes>,
    /// Mount options of its overlay layers (recorded as their
    /// `--overlay-opt` values).
    #[serde(default)]
    pub overlay_options: OverlayOptions,
    #[serde(default)]
    /// Its mounts: volumes and bind mounts, with `--volumes-from` merged.
    pub mounts: Vec<MountSpec>,
    /// Volumes this container's `create` makes (undone with it).
    #[serde(default)]
    pub created_volumes: Vec<CreatedVolume>,
    /// `rm -v`: remove its anonymous volumes too.
    #[serde(default)]
    pub remove_volumes: bool,
    /// When it was created (seconds since the epoch).
    pub created_unix: u64,
}

impl ContainerRecord {
    /// The first 12 digits of its id.
    pub fn short_id(&self) -> &str {
        short(&self.id)
    }

    pub(super) fn writable_layer(&self) -> Result<&LayerId> {
        self.layers.get(1).ok_or_else(|| Error::Corrupt {
            what: format!("container {}", self.name),
            reason: "it has no writable layer".into(),
        })
    }

    /// Names of the volumes it mounts.
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.mounts.iter().filter_map(|m| match &m.source {
            Source::Volume { name } => Some(name.as_str()),
            _ => None,
        })
    }
}

/// A volume made by `container create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedVolume {
    /// The volume's name.
    pub name: String,
    /// From `-v /path`, rather than a named volume that did not exist.
    pub anonymous: bool,
}

/// What `container create` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewContainer {
    /// `--name`; the short id when `None`.
    pub name: Option<String>,
    /// `--image NAME[:TAG]` or `--layer L` (exactly one).
    pub image: Option<String>,
    /// `--layer L`: a layer instead of an image.
    pub layer: Option<String>,
    /// The driver whose store gets its layers.
    pub driver: DriverKind,
    /// Mount options for overlay layers.
    pub overlay: OverlayOptions,
    /// `-v` specs, as typed.
    pub volumes: Vec<String>,
    /// `--volumes-from C[:ro|:rw]`, as typed.
    pub volumes_from: Vec<String>,
    /// `--hostname`; the short id when `None`.
    pub hostname: Option<String>,
    /// Thin driver: grow the writable layer's filesystem to this size.
    pub size: Option<Bytes>,
}

/// A container as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerInfo {
    #[serde(flatten)]
    /// The container's record.
    pub record: ContainerRecord,
    /// When it was created, RFC 3339.
    pub created: String,
    /// Whether its rootfs is mounted.
    pub mounted: bool,
    /// Where its rootfs is mounted while it is.
    pub rootfs: PathBuf,
    /// Its mounts as `docker inspect` shows them (`.Mounts`).
    #[serde(rename = "Mounts")]
    pub docker_mounts: Vec<MountInfo>,
}

/// One mount as `docker inspect -f '{{json .Mounts}}'` shows it, with
/// Docker's field names, so scripts written for Docker read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountInfo {
    /// `volume` or `bind`.
    #[serde(rename = "Type")]
    pub kind: &'static str,
    /// The volume's name (volumes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where the data is on the host.
    pub source: PathBuf,
    /// Where it is mounted inside the container.
    pub destination: String,
    /// The volume's driver, `local` or `thin` (volumes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The mode given with it: `ro`, `nocopy`, or empty.
    pub mode: String,
    /// Whether it is mounted read-write.
    #[serde(rename = "RW")]
    pub rw: bool,
    /// Mount propagation: `rprivate` for binds (thinlayer's only), empty
    /// for volumes, as Docker prints them.
    pub propagation: &'static str,
}

/// A volume as listings show it.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeInfo {
    #[serde(flatten)]
    /// The volume's record.
    pub record: VolumeRecord,
    /// When it was created, RFC 3339.
    pub created: String,
    /// Where its data is (while in use, for a volume that is a mount).
    pub mountpoint: PathBuf,
    /// Names of the containers that mount it.
    pub used_by: Vec<String>,
    /// Bytes it holds, where that can be told without mounting it.
    pub size_bytes: Option<u64>,
}

/// Checks a container name: Docker's rule, 1 to 128 of `[A-Za-z0-9_.-]`
/// starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    crate::volume::validate_name(name).map_err(|_| {
        Error::invalid(
            "container name",
            format!("'{name}' must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"),
        )
    })
}
