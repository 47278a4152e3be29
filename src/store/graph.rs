//! Finding things in the graph: layers by id, prefix or name; chains;
//! children; and the rules every layer operation checks first.

use super::Store;
use crate::error::{Error, Result};
use crate::layer::{validate_name, LayerId, LayerRecord};
use crate::util::ids::short;

impl Store {
    /// Finds a layer by id, name, or unique id prefix (4 digits or more).
    pub fn layer(&self, key: &str) -> Result<&LayerRecord> {
        if let Ok(id) = LayerId::try_from(key.to_string()) {
            if let Some(l) = self.layers.get(&id) {
                return Ok(l);
            }
        }
        if let Some(l) = self
            .layers
            .values()
            .find(|l| l.name.as_deref() == Some(key))
        {
            return Ok(l);
        }
        by_id_prefix("layer", key, self.layers.values(), |l| l.id.as_str())
    }

    /// The layer with id `id`, if this read of the store has it.
    pub fn get(&self, id: &LayerId) -> Option<&LayerRecord> {
        self.layers.get(id)
    }

    /// A layer and its ancestors, the layer first.
    pub fn chain(&self, id: &LayerId) -> Result<Vec<&LayerRecord>> {
        let mut out = vec![];
        let mut cur = Some(id.clone());
        while let Some(c) = cur {
            let l = self.layers.get(&c).ok_or_else(|| Error::Corrupt {
                what: format!("layer {id}"),
                reason: format!("its ancestor {c} has no record"),
            })?;
            if out.len() > self.layers.len() {
                return Err(Error::Corrupt {
                    what: format!("layer {id}"),
                    reason: "its parents form a cycle".into(),
                });
            }
            out.push(l);
            cur = l.parent.clone();
        }
        Ok(out)
    }

    /// The chain of `id` as owned records (for driver calls that need the
    /// store mutably at the same time).
    pub(super) fn chain_owned(&self, id: &LayerId) -> Result<Vec<LayerRecord>> {
        Ok(self.chain(id)?.into_iter().cloned().collect())
    }

    /// The layers whose parent is `id`.
    pub fn children(&self, id: &LayerId) -> Vec<&LayerRecord> {
        self.layers
            .values()
            .filter(|l| l.parent.as_ref() == Some(id))
            .collect()
    }

    /// The init layers over `id` that nothing stands on or is about to
    /// (no child, no live transaction's claim): they go with `id`.
    pub(super) fn unused_init_children(&self, id: &LayerId) -> Vec<LayerId> {
        self.children(id)
            .into_iter()
            .filter(|k| {
                k.init
                    && self.children(&k.id).is_empty()
                    && self
                        .claimed_by(|c| c.parent.as_ref() == Some(&k.id))
                        .is_none()
            })
            .map(|k| k.id.clone())
            .collect()
    }

    /// The containers standing on layer `id`: their writable layers are
    /// its children, or children of its init layer.
    pub(super) fn container_users(&self, id: &LayerId) -> Vec<&str> {
        let mut out = vec![];
        for k in self.children(id) {
            if let Some(c) = k.container.as_deref() {
                out.push(c);
            } else if k.init {
                out.extend(
                    self.children(&k.id)
                        .into_iter()
                        .filter_map(|g| g.container.as_deref()),
                );
            }
        }
        out
    }

    pub(super) fn check_new_name(&self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            validate_name(n)?;
            if self.layers.values().any(|l| l.name.as_deref() == Some(n)) {
                return Err(Error::Exists {
                    what: "layer",
                    name: n.into(),
                });
            }
        }
        Ok(())
    }
}

/// Layer commands leave a container's layers alone: they live and die with
/// the container. Nor is a shared init layer built on or mounted (it is
/// removed: with its parent, by `layer prune`, or by `layer rm` while no
/// container uses it).
pub(super) fn refuse_container_layer(l: &LayerRecord, verb: &str) -> Result<()> {
    match &l.container {
        Some(c) => Err(Error::InUse {
            what: format!("layer {}", l.label()),
            reason: format!(
                "it belongs to container {}; {verb} the container's changes with `thinlayer container commit` or remove it with `thinlayer container rm`",
                short(c)
            ),
        }),
        None if l.init && verb != "remove" => Err(Error::InUse {
            what: format!("layer {}", l.label()),
            reason: format!(
                "it is the init layer that containers over layer {} share; {verb} that layer instead",
                l.parent.as_ref().map_or("-", |p| p.short())
            ),
        }),
        None => Ok(()),
    }
}

/// The one item whose id starts with `key` (4 hex digits or more).
pub fn by_id_prefix<'a, T>(
    what: &'static str,
    key: &str,
    items: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> &str,
) -> Result<&'a T> {
    let hex = key.len() >= 4 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let matches: Vec<&T> = if hex {
        items.filter(|i| id(i).starts_with(key)).collect()
    } else {
        vec![]
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::NotFound {
            what,
            name: key.to_string(),
            hint: format!(": list them with `thinlayer {what} ls`"),
        }),
        many => Err(Error::Ambiguous {
            what,
            name: key.to_string(),
            candidates: many
                .iter()
                .map(|i| short(id(i)))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
