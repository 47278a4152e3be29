//! The configuration file: the defaults an operator sets once for a node.
//!
//! `/etc/thinlayer/config.toml` ([`DEFAULT_PATH`]) unless another file is
//! named (the CLI's `--config`, env `THINLAYER_CONFIG`). Every key is
//! optional; a key that is absent keeps the built-in default. A value given
//! on the command line or in the environment wins over the file's:
//!
//! ```toml
//! root = "/var/lib/thinlayer"
//! driver = "thin"            # or "overlay"
//! lock_timeout = 30          # seconds
//!
//! [overlay]
//! options = ["metacopy=on"]  # used when the driver is overlay
//!
//! [pool]                     # `pool create`
//! data_size = "100G"
//! metadata_size = "16M"
//! block_size = "64K"
//! on_full = "error"          # or "queue"
//! fs = "ext4"                # or "xfs"
//! base_size = "10G"
//! min_free = 10              # percent kept free: new devices refused below
//! autoextend_threshold = 80  # percent used at which the pool grows itself
//! autoextend_step = "10G"    # how much each grow adds
//! autoextend_max = "500G"    # the largest the data grows to
//! queue_timeout = 60         # seconds a queued write waits (on_full = "queue")
//!
//! [snapshotter]              # `snapshotter serve`
//! socket = "/run/thinlayer/snapshotter.sock"
//! default_size = "20G"
//! ```
//!
//! Unknown keys are refused (a misspelt key would otherwise be silently
//! ignored), and so is a value of the wrong kind: [`ConfigError`] names the
//! file, the line and the key. Values are checked as their flags check
//! them, so a file that loads gives no error later for its own values'
//! form (a size a create then finds too small is still refused there).

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use thinpool::{BlockSize, Bytes, MinFree, OnFull, QueueTimeout, Threshold};

use crate::driver::overlay::OverlayOptions;
use crate::driver::thin::FsType;
use crate::driver::DriverKind;

/// Where the configuration file is read from when none is named.
pub const DEFAULT_PATH: &str = "/etc/thinlayer/config.toml";

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (for a file that was named: also when it
    /// does not exist).
    #[error("reading configuration file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The file is not valid TOML, has a key thinlayer does not know, or a
    /// value of the wrong kind.
    #[error("configuration file {}{}: {}{reason}",
        .path.display(),
        .line.map(|l| format!(", line {l}")).unwrap_or_default(),
        .key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line the error is at (1-based), where the parser knows it.
        line: Option<usize>,
        /// The key that is unknown or whose value is wrong
        /// (`pool.block_size`), or none for a syntax error.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },
}

/// The configuration file's content. Every field is optional: `None` (or
/// an empty list) keeps the built-in default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The state directory (`--root`); must be absolute.
    #[serde(default, deserialize_with = "absolute")]
    pub root: Option<PathBuf>,
    /// The storage driver for layers, images and new containers
    /// (`--driver`).
    pub driver: Option<DriverKind>,
    /// Seconds to wait for another process's lock (`--lock-timeout`).
    pub lock_timeout: Option<u64>,
    /// The overlay driver's options.
    #[serde(default)]
    pub overlay: OverlayConfig,
    /// Defaults of `pool create`.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Defaults of `snapshotter serve`.
    #[serde(default)]
    pub snapshotter: SnapshotterConfig,
}

/// `[overlay]`: the overlay driver's mount options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    /// Mount options (`--overlay-opt`: `index=off`, `metacopy=on`,
    /// `volatile`), used when the driver is overlay and none is given on
    /// the command line.
    #[serde(default, deserialize_with = "overlay_options")]
    pub options: Vec<String>,
}

/// `[pool]`: defaults of `pool create`'s flags of the same names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// `--data-size`.
    #[serde(default, deserialize_with = "size")]
    pub data_size: Option<Bytes>,
    /// `--metadata-size`.
    #[serde(default, deserialize_with = "size")]
    pub metadata_size: Option<Bytes>,
    /// `--block-size`: a multiple of 64K from 64K to 1G.
    #[serde(default, deserialize_with = "block_size")]
    pub block_size: Option<Bytes>,
    /// `--on-full`.
    pub on_full: Option<OnFull>,
    /// `--fs`.
    pub fs: Option<FsType>,
    /// `--base-size`.
    #[serde(default, deserialize_with = "size")]
    pub base_size: Option<Bytes>,
    /// `--min-free`: a percentage, `10` or `"10%"`.
    #[serde(default, deserialize_with = "percent")]
    pub min_free: Option<MinFree>,
    /// `--autoextend-threshold`: a percentage, `80` or `"80%"`.
    #[serde(default, deserialize_with = "percent")]
    pub autoextend_threshold: Option<Threshold>,
    /// `--autoextend-step`.
    #[serde(default, deserialize_with = "size")]
    pub autoextend_step: Option<Bytes>,
    /// `--autoextend-max`.
    #[serde(default, deserialize_with = "size")]
    pub autoextend_max: Option<Bytes>,
    /// `--queue-timeout`, in seconds.
    #[serde(default, deserialize_with = "seconds")]
    pub queue_timeout: Option<QueueTimeout>,
}

/// `[snapshotter]`: defaults of `snapshotter serve`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotterConfig {
    /// The unix socket to listen on (`--address`); must be absolute.
    #[serde(default, deserialize_with = "absolute")]
    pub socket: Option<PathBuf>,
    /// `--default-size`.
    #[serde(default, deserialize_with = "size")]
    pub default_size: Option<Bytes>,
}

impl Config {
    /// Reads the file at `path`, which must exist.
    ///
    /// Errors: [`ConfigError::Read`] if it cannot be read,
    /// [`ConfigError::Invalid`] if its content is refused.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Reads the file at `path` if it exists, or gives the built-in
    /// defaults if it does not (the file at [`DEFAULT_PATH`] is optional).
    ///
    /// Errors: as [`Config::load`], except for a missing file.
    pub fn load_if_exists(path: &Path) -> Result<Config, ConfigError> {
        match Config::load(path) {
            Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            r => r,
        }
    }

    /// Parses `text`, the content of the file at `path` (named in errors).
    ///
    /// Errors: [`ConfigError::Invalid`], with the line and key.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| invalid(path, text, None, &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            // The unknown key, or the key whose value is refused.
            let key = e.path().to_string();
            let key = (key != ".").then_some(key);
            invalid(path, text, key, e.inner())
        })
    }

    /// Every key the file sets that stands for a single command-line
    /// flag, with its value spelt as the flag takes it: `("pool.block_size",
    /// "1M")`. (`overlay.options` is a list; see [`OverlayConfig`].)
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let size = |b: &Option<Bytes>| b.map(size_arg);
        let all = [
            ("root", path(&self.root)),
            ("driver", self.driver.map(|d| d.to_string())),
            ("lock_timeout", self.lock_timeout.map(|t| t.to_string())),
            ("pool.data_size", size(&self.pool.data_size)),
            ("pool.metadata_size", size(&self.pool.metadata_size)),
            ("pool.block_size", size(&self.pool.block_size)),
            ("pool.on_full", self.pool.on_full.map(|o| o.to_string())),
            ("pool.fs", self.pool.fs.map(|f| f.as_str().to_string())),
            ("pool.base_size", size(&self.pool.base_size)),
            (
                "pool.min_free",
                self.pool.min_free.map(|m| m.percent().to_string()),
            ),
            (
                "pool.autoextend_threshold",
                self.pool
                    .autoextend_threshold
                    .map(|t| t.percent().to_string()),
            ),
            ("pool.autoextend_step", size(&self.pool.autoextend_step)),
            ("pool.autoextend_max", size(&self.pool.autoextend_max)),
            (
                "pool.queue_timeout",
                self.pool.queue_timeout.map(|t| t.secs().to_string()),
            ),
            ("snapshotter.socket", path(&self.snapshotter.socket)),
            (
                "snapshotter.default_size",
                size(&self.snapshotter.default_size),
            ),
        ];
        all.into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }
}

/// A size as a flag takes it: `64K` where exact, else in bytes (a size's
/// display may round: `1.50G`).
fn size_arg(b: Bytes) -> String {
    let shown = b.to_string();
    if shown.parse::<Bytes>() == Ok(b) {
        shown
    } else {
        b.0.to_string()
    }
}

fn invalid(path: &Path, text: &str, key: Option<String>, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        key,
        // toml's messages may run over lines ("..., expected X\nWhile
        // parsing Y"); the error is one line.
        reason: e.message().trim().replace('\n', "; "),
    }
}

/// A size: a string as the flags take it (`512M`, `20G`) or a number of
/// bytes.
fn percent<'de, D, P>(d: D) -> Result<Option<P>, D::Error>
where
    D: Deserializer<'de>,
    P: std::str::FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Percent {
        Number(u8),
        Text(String),
    }
    match Percent::deserialize(d)? {
        Percent::Number(n) => n.to_string().parse().map(Some),
        Percent::Text(s) => s.parse().map(Some),
    }
    .map_err(serde::de::Error::custom)
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<QueueTimeout>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Secs {
        Number(u32),
        Text(String),
    }
    match Secs::deserialize(d)? {
        Secs::Number(n) => QueueTimeout::new(n).map(Some),
        Secs::Text(s) => s.parse().map(Some),
    }
    .map_err(serde::de::Error::custom)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(Bytes(n))),
        Size::Text(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

fn block_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    let Some(b) = size(d)? else { return Ok(None) };
    BlockSize::new(b).map_err(serde::de::Error::custom)?;
    Ok(Some(b))
}

fn absolute<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if !p.is_absolute() {
        return Err(serde::de::Error::custom(format!(
            "'{}' is not an absolute path",
            p.display()
        )));
    }
    Ok(Some(p))
}

fn overlay_options<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    OverlayOptions::parse(&v).map_err(serde::de::Error::custom)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/t.toml"))
    }

    fn refused(text: &str) -> String {
        parse(text).expect_err(text).to_string()
    }

    #[test]
    fn plain_config_reads_every_key() {
        let c = parse(
            r#"
            root = "/srv/tl"
            driver = "overlay"
            lock_timeout = 5
            [overlay]
            options = ["metacopy=on", "index=off"]
            [pool]
            data_size = "20G"
            metadata_size = 33554432
            block_size = "1M"
            on_full = "queue"
            fs = "xfs"
            base_size = "1.5G"
            [snapshotter]
            socket = "/run/t.sock"
            default_size = "20G"
            "#,
        )
        .unwrap_err();
        // 1.5G is not a size the flags take either.
        assert!(c.to_string().contains("'1.5G' is not a size"), "{c}");

        let c = parse(
            r#"
            root = "/srv/tl"
            driver = "overlay"
            lock_timeout = 5
            [overlay]
            options = ["metacopy=on", "index=off"]
            [pool]
            data_size = "20G"
            metadata_size = 33554432
            block_size = "1M"
            on_full = "queue"
            fs = "xfs"
            base_size = 1610612736
            min_free = "5%"
            [snapshotter]
            socket = "/run/t.sock"
            default_size = "20G"
            "#,
        )
        .unwrap();
        assert_eq!(c.root.as_deref(), Some(Path::new("/srv/tl")));
        assert_eq!(c.driver, Some(DriverKind::Overlay));
        assert_eq!(c.overlay.options, ["metacopy=on", "index=off"]);
        assert_eq!(c.pool.metadata_size, Some(Bytes(32 << 20)));
        assert_eq!(c.pool.on_full, Some(OnFull::Queue));
        assert_eq!(c.pool.fs, Some(FsType::Xfs));
        let flags = c.flag_values();
        let get = |k| flags.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(flags.len(), 12);
        assert_eq!(get("pool.min_free"), "5");
        assert_eq!(get("pool.metadata_size"), "32M");
        assert_eq!(get("pool.block_size"), "1M");
        // Not a whole number of any unit: given in bytes, which the flag takes.
        assert_eq!(get("pool.base_size"), "1610612736");
        assert_eq!(get("lock_timeout"), "5");
        assert_eq!(get("driver"), "overlay");
    }

    #[test]
    fn plain_config_empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(parse("# nothing\n[pool]\n").unwrap(), Config::default());
        assert!(Config::default().flag_values().is_empty());
    }

    #[test]
    fn plain_config_refusals_name_file_line_and_key() {
        let e = refused("driver = \"thin\"\n[pool]\nblock_size = \"96K\"\n");
        assert!(
            e.starts_with("configuration file /etc/t.toml, line 3: "),
            "{e}"
        );
        assert!(e.contains("key `pool.block_size`"), "{e}");
        assert!(e.contains("multiple of 64K"), "{e}");

        let e = refused("driver = \"zfs\"\n");
        assert!(e.contains("line 1") && e.contains("key `driver`"), "{e}");
        assert!(e.contains("zfs"), "{e}");

        let e = refused("[pool]\ncolour = \"blue\"\n");
        assert!(e.contains("line 2") && e.contains("colour"), "{e}");

        let e = refused("lock_timeout = -1\n");
        assert!(e.contains("key `lock_timeout`"), "{e}");
        let e = refused("root = \"var/lib\"\n");
        assert!(
            e.contains("key `root`") && e.contains("not an absolute path"),
            "{e}"
        );
        let e = refused("[overlay]\noptions = [\"redirect_dir=on\"]\n");
        assert!(
            e.contains("key `overlay.options`") && e.contains("redirect_dir"),
            "{e}"
        );
        let e = refused("[snapshotter]\ndefault_size = \"lots\"\n");
        assert!(e.contains("key `snapshotter.default_size`"), "{e}");

        let e = refused("root = \n");
        assert!(e.contains("line 1"), "{e}");
        for e in [e, refused("[pool\n")] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn plain_config_missing_file_is_defaults_only_where_optional() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("none.toml");
        assert_eq!(Config::load_if_exists(&p).unwrap(), Config::default());
        let e = Config::load(&p).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e.to_string().contains("none.toml"), "{e}");
    }
}
