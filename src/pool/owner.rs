//! Who owns a thin device: the tag recorded with it in the pool's record.

use std::fmt;

use crate::layer::LayerId;

/// The owner of a thin device, recorded as its tag (`base`, `layer:<id>`,
/// `volume:<name>`), so the pool's record alone tells which layer or volume
/// a device belongs to and recovery can free devices no record claims.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThinOwner {
    /// The thin driver's base filesystem, of which parentless layers are
    /// snapshots.
    Base,
    /// A layer of the thin driver's store.
    Layer(LayerId),
    /// A thin volume, by name.
    Volume(String),
}

const BASE: &str = "base";
const LAYER: &str = "layer:";
const VOLUME: &str = "volume:";

impl ThinOwner {
    /// The tag to record with the device.
    pub fn tag(&self) -> String {
        self.to_string()
    }

    /// Reads a recorded tag; `None` for a tag thinlayer did not write.
    pub fn parse(tag: &str) -> Option<ThinOwner> {
        if tag == BASE {
            return Some(ThinOwner::Base);
        }
        if let Some(id) = tag.strip_prefix(LAYER) {
            return LayerId::try_from(id.to_string()).ok().map(ThinOwner::Layer);
        }
        tag.strip_prefix(VOLUME)
            .filter(|n| !n.is_empty())
            .map(|n| ThinOwner::Volume(n.to_string()))
    }
}

impl fmt::Display for ThinOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThinOwner::Base => f.write_str(BASE),
            ThinOwner::Layer(id) => write!(f, "{LAYER}{id}"),
            ThinOwner::Volume(n) => write!(f, "{VOLUME}{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_thin_owner_tags_round_trip_in_their_recorded_form() {
        let id = LayerId::try_from("0123456789abcdef0123456789abcdef".to_string()).unwrap();
        for (owner, tag) in [
            (ThinOwner::Base, "base".to_string()),
            (ThinOwner::Layer(id.clone()), format!("layer:{id}")),
            (ThinOwner::Volume("data".into()), "volume:data".to_string()),
        ] {
            assert_eq!(owner.tag(), tag);
            assert_eq!(ThinOwner::parse(&tag), Some(owner));
        }
        for foreign in ["", "layer:xyz", "volume:", "lvm", "Base"] {
            assert_eq!(ThinOwner::parse(foreign), None, "{foreign:?}");
        }
    }
}
