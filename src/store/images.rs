//! Image records: which layers make an image, and its names.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::graph::by_id_prefix;
use super::Store;
use crate::error::{Error, Result};
use crate::layer::LayerId;
use crate::util::ids::short;

/// An image's record (`images/<id>.json`; the id is the config digest's hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest's hex (64 digits).
    pub id: String,
    /// `name:tag`s, normalized ([`normalize_image_name`]).
    pub names: Vec<String>,
    /// Bottom to top.
    pub layers: Vec<LayerId>,
    /// When it was imported.
    pub created_unix: u64,
    /// The config's architecture, if it names one.
    #[serde(default)]
    pub architecture: Option<String>,
    /// The config's OS, if it names one.
    #[serde(default)]
    pub os: Option<String>,
}

impl ImageRecord {
    /// `first name (short id)`, or the short id: how messages name an image.
    pub fn label(&self) -> String {
        match self.names.first() {
            Some(n) => format!("{n} ({})", short(&self.id)),
            None => short(&self.id).to_string(),
        }
    }
}

/// Where an image's config is kept, byte for byte as it was imported (its
/// sha256 is the image id).
pub(super) fn config_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("images").join(format!("{id}.config"))
}

impl Store {
    /// The config of image `id` (a full id), byte for byte as imported:
    /// its sha256 is the id.
    ///
    /// # Errors
    /// [`Error::Precondition`] when none was kept (an image imported by a
    /// thinlayer before 0.2); [`Error::Corrupt`] when it does not match
    /// the id.
    pub fn image_config(&self, id: &str) -> Result<Vec<u8>> {
        let img = self.images.get(id).ok_or_else(|| Error::NotFound {
            what: "image",
            name: id.into(),
            hint: String::new(),
        })?;
        let path = config_path(&self.dir, id);
        let raw = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Precondition(format!(
                    "image {} has no stored config (it was imported by an older thinlayer); remove it and import it again",
                    img.label()
                )))
            }
            Err(e) => return Err(Error::io("reading", &path)(e)),
        };
        let digest = format!("{:x}", Sha256::digest(&raw));
        if digest != id {
            return Err(Error::Corrupt {
                what: format!("image {}", img.label()),
                reason: format!(
                    "its stored config {} has digest sha256:{digest}",
                    path.display()
                ),
            });
        }
        Ok(raw)
    }

    /// Finds an image by `name[:tag]` (tag defaults to `latest`), id
    /// (`sha256:` optional), or unique id prefix.
    pub fn image(&self, key: &str) -> Result<&ImageRecord> {
        let full = normalize_image_name(key).ok();
        if let Some(i) = self
            .images
            .values()
            .find(|i| full.as_ref().is_some_and(|f| i.names.contains(f)))
        {
            return Ok(i);
        }
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        by_id_prefix("image", hex, self.images.values(), |i| i.id.as_str())
    }

    /// Removes an image and those of its layers nothing else uses (another
    /// image, a child layer outside it, a mount). Named by one of several
    /// names, only that name goes, as `docker rmi` untags: the image stays
    /// under its other names (even while a container uses it).
    pub fn remove_image(&mut self, key: &str) -> Result<ImageRemoval> {
        let img = self.image(key)?.clone();
        if let Ok(name) = normalize_image_name(key) {
            if img.names.len() > 1 && img.names.contains(&name) {
                let mut rec = img.clone();
                rec.names.retain(|n| *n != name);
                self.transaction(format!("untag image {}", short(&img.id)), |txn| {
                    txn.put_image(rec)
                })?;
                return Ok(ImageRemoval::Untagged(name));
            }
        }
        let users: Vec<&str> = img
            .layers
            .iter()
            .flat_map(|id| self.container_users(id))
            .collect();
        if !users.is_empty() {
            return Err(Error::InUse {
                what: format!("image {}", img.label()),
                reason: format!(
                    "container {} uses it; remove the container first (`thinlayer container rm`)",
                    users
                        .iter()
                        .map(|c| short(c))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let mut remove: Vec<LayerId> = vec![];
        for id in img.layers.iter().rev() {
            let used_elsewhere = self
                .images
                .values()
                .any(|i| i.id != img.id && i.layers.contains(id));
            let inits = self.unused_init_children(id);
            let other_kids = self
                .children(id)
                .iter()
                .any(|k| !remove.contains(&k.id) && !inits.contains(&k.id));
            if used_elsewhere || other_kids || self.is_mounted(id)? {
                break;
            }
            // Its unused init layers go with it, before it.
            remove.extend(inits);
            remove.push(id.clone());
        }
        self.transaction(format!("remove image {}", short(&img.id)), |txn| {
            txn.intend_removal(&remove, Some(&img.id))?;
            txn.remove_image(&img.id)?;
            remove.iter().try_for_each(|id| txn.remove_layer(id))
        })?;
        Ok(ImageRemoval::Removed(remove))
    }
}

/// What [`Store::remove_image`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRemoval {
    /// The image keeps its other names; this one went.
    Untagged(String),
    /// The image went, with these of its layers.
    Removed(Vec<LayerId>),
}

/// `name` or `name:tag` → `name:tag` (tag `latest` by default). Names are
/// lowercase path components of `[a-z0-9._-]` separated by `/`, with an
/// optional registry `host[:port]/` first; tags are up to 128 of
/// `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn normalize_image_name(s: &str) -> Result<String> {
    let bad = |why: &str| Error::invalid("image name", format!("'{s}' {why}"));
    let (repo, tag) = match s.rfind(':') {
        Some(i) if !s[i + 1..].contains('/') => (&s[..i], &s[i + 1..]),
        _ => (s, "latest"),
    };
    if repo.is_empty() {
        return Err(bad("has no name"));
    }
    // Docker's familiar form: `docker.io/library/alpine` is `alpine`.
    let repo = repo
        .strip_prefix("docker.io/")
        .or_else(|| repo.strip_prefix("index.docker.io/"))
        .map(|r| match r.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short,
            _ => r,
        })
        .unwrap_or(repo);
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    if !tag_ok {
        return Err(bad(
            "has a bad tag: use up to 128 letters, digits, '_', '.' or '-'",
        ));
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    let host_ok = |h: &str| {
        let (name, port) = h.split_once(':').unwrap_or((h, "0"));
        let labels_ok = name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        labels_ok && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    };
    if parts.len() > 1
        && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
    {
        if !host_ok(parts[0]) {
            return Err(bad("has a bad registry host"));
        }
        parts.remove(0);
    }
    for p in parts {
        let ok = !p.is_empty()
            && p.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(bad("is not a valid image name: use lowercase letters, digits and '.', '_', '-' between '/'"));
        }
    }
    Ok(format!("{repo}:{tag}"))
}
