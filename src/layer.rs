//! Layers: ids, names and their persistent records.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A layer's id: 32 lowercase hex digits, random. Commands accept the id,
/// a unique prefix of it (at least 4 digits), or the layer's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId(String);

impl LayerId {
    /// Digits in an id.
    pub const LEN: usize = 32;

    /// A new random id.
    pub fn generate() -> Result<LayerId> {
        Ok(LayerId(crate::util::ids::random_hex(16)?))
    }

    /// The whole id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, as listings show it.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    /// Whether `s` has the form of a full id.
    pub fn is_id(s: &str) -> bool {
        s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl TryFrom<String> for LayerId {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        if LayerId::is_id(&s) {
            Ok(LayerId(s))
        } else {
            Err(format!("'{s}' is not a layer id"))
        }
    }
}

impl From<LayerId> for String {
    fn from(id: LayerId) -> String {
        id.0
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a layer name: 1 to 128 of `[A-Za-z0-9_.-]`, starting with a
/// letter or digit, and not of the form of a full id (names are looked up
/// before id prefixes, so other hex-looking names are fine).
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 128 || !ok_chars || !first_ok {
        return Err(Error::invalid(
            "layer name",
            format!("'{name}' must be 1 to 128 letters, digits, '_', '.' or '-', starting with a letter or digit"),
        ));
    }
    if LayerId::is_id(name) {
        return Err(Error::invalid(
            "layer name",
            format!("'{name}' reads as a layer id; use a name with other characters"),
        ));
    }
    Ok(())
}

/// The resource behind a layer, as its driver recorded it. The store keeps
/// it without looking inside; each driver reads its own kind with
/// [`Resource::decode`] (on disk: `{"driver": KIND, ...the driver's fields}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Resource(serde_json::Map<String, serde_json::Value>);

/// A driver's own description of a layer's resource.
pub trait DriverResource: Serialize + DeserializeOwned {
    /// The value of the record's `driver` key for this kind of resource.
    const KIND: &'static str;
}

impl Resource {
    /// Records `r` as a resource of kind `T::KIND`.
    pub fn new<T: DriverResource>(r: &T) -> Resource {
        let mut map = match serde_json::to_value(r) {
            Ok(serde_json::Value::Object(m)) => m,
            // A resource is a struct of plain fields: always an object.
            _ => serde_json::Map::new(),
        };
        map.insert("driver".into(), T::KIND.into());
        Resource(map)
    }

    /// The kind of resource recorded (`thin`, `dir`, ...).
    pub fn kind(&self) -> Option<&str> {
        self.0.get("driver").and_then(|v| v.as_str())
    }

    /// Reads the resource as a `T`; a record of another kind, or with
    /// fields `T` does not have, is a corrupt record of `layer`.
    pub fn decode<T: DriverResource>(&self, layer: &LayerId) -> Result<T> {
        let corrupt = |reason: String| Error::Corrupt {
            what: format!("layer {layer}"),
            reason,
        };
        if self.kind() != Some(T::KIND) {
            return Err(corrupt(format!(
                "its record names a {} resource, not a {} one: it belongs to another driver's store",
                self.kind().unwrap_or("unknown"),
                T::KIND
            )));
        }
        serde_json::from_value(serde_json::Value::Object(self.0.clone()))
            .map_err(|e| corrupt(format!("its {} resource cannot be read: {e}", T::KIND)))
    }
}

/// A layer's record (`layers/<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer's id.
    pub id: LayerId,
    #[serde(default)]
    /// Its name, if given.
    pub name: Option<String>,
    #[serde(default)]
    /// Its parent; `None` for a layer made from the empty base.
    pub parent: Option<LayerId>,
    /// When it was made (seconds since the epoch).
    pub created_unix: u64,
    /// sha256 of the uncompressed changeset applied to make this layer.
    #[serde(default)]
    pub diff_id: Option<String>,
    /// The OCI chain id, for layers made by an image import.
    #[serde(default)]
    pub chain_id: Option<String>,
    /// What the driver keeps it in; opaque to the store.
    pub resource: Resource,
    /// The container whose init or writable layer this is: such layers are
    /// made and removed only with their container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Whether the layout of the changeset it was made from was recorded
    /// (an image's layer): its exact bytes can be given back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub layout: bool,
    /// containerd's view of the layer, for a layer made through the
    /// snapshotter ([`crate::snapshots`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotMeta>,
    /// A shared init layer: the mount points and placeholder files that
    /// every container over its parent starts from (as Docker's init
    /// layer, whose files the container's own are bind-mounted over).
    /// Made by the first such container, kept while any stands on it,
    /// removed with its parent or by `layer prune`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init: bool,
}

/// What kind of snapshot a layer is, in containerd's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    /// Writable, mounted by its key; becomes committed by a commit.
    Active,
    /// Read-only, mounted by its key.
    View,
    /// Read-only, never mounted itself; the parent of other snapshots.
    Committed,
}

impl SnapshotKind {
    /// containerd's name of the kind (`active`, `view`, `committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Active => "active",
            SnapshotKind::View => "view",
            SnapshotKind::Committed => "committed",
        }
    }
}

/// A snapshot's own fields in its layer's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Its key (active, view) or name (committed): unique in the store.
    pub key: String,
    /// Its kind.
    pub kind: SnapshotKind,
    /// Its labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// When it was made, in nanoseconds since the epoch.
    pub created_ns: i64,
    /// When it last changed (commit, labels), in nanoseconds since the epoch.
    pub updated_ns: i64,
}

impl LayerRecord {
    /// `name (short id)`, or the short id: how messages name a layer.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.id.short()),
            None => self.id.short().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_layer_ids_are_random_hex_with_a_short_form() {
        let a = LayerId::generate().unwrap();
        let b = LayerId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.short().len(), 12);
        assert!(LayerId::try_from(a.to_string()).is_ok());
        assert!(LayerId::try_from("xyz".to_string()).is_err());
        assert!(LayerId::try_from("A".repeat(32)).is_err());
    }

    #[test]
    fn plain_layer_names_are_checked() {
        for good in ["base", "ubuntu-22.04", "my_layer.v2", "L1"] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            "-x",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "caf\u{e9}",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_name("deadbeef").unwrap();
        let msg = validate_name(&"ab".repeat(16)).unwrap_err().to_string();
        assert!(msg.contains("reads as a layer id"), "{msg}");
    }
}
