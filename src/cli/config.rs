//! The configuration file on the command line: its values become the
//! defaults of the flags they stand for, before the command line is parsed.
//! clap then takes a flag given, else its environment variable, else the
//! file's value, else the built-in default; and `--help` shows the file's
//! values as the defaults they are.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Command, CommandFactory, FromArgMatches};
use thinlayer::config::{Config, DEFAULT_PATH};
use thinlayer::driver::DriverKind;

use super::Cli;

/// The environment variable naming the configuration file.
const ENV: &str = "THINLAYER_CONFIG";

/// Each key of the file that stands for one flag: the key, the subcommand
/// the flag belongs to (none: the top level) and the flag's id.
const FLAGS: &[(&str, &[&str], &str)] = &[
    ("root", &[], "root"),
    ("driver", &[], "driver"),
    ("lock_timeout", &[], "lock_timeout"),
    ("pool.data_size", &["pool", "create"], "data_size"),
    ("pool.metadata_size", &["pool", "create"], "metadata_size"),
    ("pool.block_size", &["pool", "create"], "block_size"),
    ("pool.on_full", &["pool", "create"], "on_full"),
    ("pool.fs", &["pool", "create"], "fs"),
    ("pool.base_size", &["pool", "create"], "base_size"),
    ("pool.min_free", &["pool", "create"], "min_free"),
    (
        "pool.autoextend_threshold",
        &["pool", "create"],
        "autoextend_threshold",
    ),
    (
        "pool.autoextend_step",
        &["pool", "create"],
        "autoextend_step",
    ),
    ("pool.autoextend_max", &["pool", "create"], "autoextend_max"),
    ("pool.queue_timeout", &["pool", "create"], "queue_timeout"),
    ("snapshotter.socket", &["snapshotter", "serve"], "address"),
    (
        "snapshotter.default_size",
        &["snapshotter", "serve"],
        "default_size",
    ),
];

/// Parses the process's command line with the configuration file's
/// defaults. A usage error exits (status 2) as clap's do.
///
/// Errors: the configuration file named by `--config` or `THINLAYER_CONFIG`
/// cannot be read, or any configuration file is malformed.
pub fn parse() -> Result<Cli> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let named = named_file(&args);
    let cfg = load(named.as_ref())?;
    let mut cli = parse_with(&args, &cfg);
    // The file was found before clap parsed; if clap disagrees about which
    // (an odd command line), clap is right: read that one.
    if cli.config != named.unwrap_or_else(|| DEFAULT_PATH.into()) {
        let cfg = load(Some(&cli.config))?;
        cli = parse_with(&args, &cfg);
    }
    Ok(cli)
}

fn parse_with(args: &[OsString], cfg: &Config) -> Cli {
    let matches = with_defaults(Cli::command(), cfg).get_matches_from(args);
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A list, and only for the overlay driver: taken here rather than as
    // clap's default, so that `--overlay-opt needs --driver overlay` still
    // speaks of the command line only.
    if cli.overlay_opts.is_empty() && cli.driver == DriverKind::Overlay {
        cli.overlay_opts = cfg.overlay.options.clone();
    }
    cli
}

/// The file named on the command line (`--config FILE`, `--config=FILE`,
/// before any `--`) or by `THINLAYER_CONFIG`; `None`: the default file.
fn named_file(args: &[OsString]) -> Option<PathBuf> {
    let mut named = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else { continue };
        if s == "--" {
            break;
        } else if s == "--config" {
            named = it.next().map(PathBuf::from);
        } else if let Some(v) = s.strip_prefix("--config=") {
            named = Some(PathBuf::from(v));
        }
    }
    named.or_else(|| std::env::var_os(ENV).map(PathBuf::from))
}

/// A named file must exist; the default one may be missing.
fn load(named: Option<&PathBuf>) -> Result<Config> {
    Ok(match named {
        Some(p) => Config::load(p)?,
        None => Config::load_if_exists(DEFAULT_PATH.as_ref())?,
    })
}

/// `cmd` with the file's values as its flags' defaults.
fn with_defaults(mut cmd: Command, cfg: &Config) -> Command {
    for (key, value) in cfg.flag_values() {
        let (_, path, id) = FLAGS
            .iter()
            .find(|(k, ..)| *k == key)
            .unwrap_or_else(|| panic!("configuration key {key} stands for no flag"));
        cmd = set_default(cmd, path, id, value);
    }
    cmd
}

fn set_default(cmd: Command, path: &[&str], id: &str, value: String) -> Command {
    match path.split_first() {
        None => cmd.mut_arg(id, |a| a.default_value(value)),
        Some((sub, rest)) => cmd.mut_subcommand(sub, |c| set_default(c, rest, id, value)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// contrib/config.toml with its `#key = value` lines uncommented.
    fn contrib() -> (String, Config) {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/config.toml"),
        )
        .unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = Config::parse(&uncommented, Path::new("contrib/config.toml")).unwrap();
        (uncommented, cfg)
    }

    fn arg_default(mut cmd: &Command, path: &[&str], id: &str) -> Option<String> {
        for p in path {
            cmd = cmd.find_subcommand(p).unwrap();
        }
        let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
        arg.get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned())
    }

    #[test]
    fn plain_config_contrib_example_has_every_key_at_its_default() {
        let (text, cfg) = contrib();
        let flags = cfg.flag_values();
        let pristine = Cli::command();
        for (key, path, id) in FLAGS {
            let (_, value) = flags
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("contrib/config.toml has no {key}:\n{text}"));
            // Keys without a fixed default show what the default comes to
            // for a file-backed pool of the default sizes.
            let default = arg_default(&pristine, path, id).unwrap_or_else(|| {
                use thinlayer::thinpool::config::{default_metadata, DEFAULT_DATA_SIZE};
                use thinlayer::thinpool::BlockSize;
                match *key {
                    "pool.data_size" => DEFAULT_DATA_SIZE.to_string(),
                    "pool.metadata_size" => {
                        default_metadata(DEFAULT_DATA_SIZE, BlockSize::DEFAULT).to_string()
                    }
                    "snapshotter.default_size" => {
                        arg_default(&pristine, &["pool", "create"], "base_size").unwrap()
                    }
                    // Autoextend is off unless set; turned on, it takes
                    // these for what is not given, except the maximum,
                    // which it always needs (any example will do).
                    "pool.autoextend_threshold" => {
                        thinlayer::thinpool::pool::DEFAULT_AUTOEXTEND_THRESHOLD.to_string()
                    }
                    "pool.autoextend_step" => thinlayer::thinpool::Bytes(
                        DEFAULT_DATA_SIZE.0 / 100
                            * thinlayer::thinpool::pool::DEFAULT_AUTOEXTEND_STEP_PERCENT,
                    )
                    .to_string(),
                    "pool.autoextend_max" => value.clone(),
                    _ => panic!("{key}: no default to compare with"),
                }
            });
            assert_eq!(value, &default, "{key} in contrib/config.toml");
        }
        assert_eq!(flags.len(), FLAGS.len(), "a key stands for no flag");
        assert!(
            cfg.overlay.options.is_empty(),
            "overlay options are off by default"
        );
        assert!(text.lines().any(|l| l == "options = []"), "{text}");
    }

    #[test]
    fn plain_config_values_become_the_flags_defaults() {
        let (_, mut cfg) = contrib();
        cfg.root = Some("/srv/tl".into());
        cfg.pool.block_size = Some(thinpool::Bytes(1 << 20));
        cfg.snapshotter.socket = Some("/run/t.sock".into());
        let cmd = with_defaults(Cli::command(), &cfg);
        assert_eq!(arg_default(&cmd, &[], "root").as_deref(), Some("/srv/tl"));
        assert_eq!(
            arg_default(&cmd, &["pool", "create"], "block_size").as_deref(),
            Some("1M")
        );
        let m = cmd
            .try_get_matches_from(["thinlayer", "--root", "/x", "snapshotter", "serve"])
            .unwrap();
        let cli = Cli::from_arg_matches(&m).unwrap();
        assert_eq!(cli.root, Path::new("/x"));
        let super::super::Command::Snapshotter(s) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert!(format!("{s:?}").contains("/run/t.sock"), "{s:?}");
    }

    #[test]
    fn plain_config_file_named_on_the_command_line() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            named_file(&args(&["thinlayer", "--config", "/a", "layer", "ls"])),
            Some("/a".into())
        );
        assert_eq!(
            named_file(&args(&["thinlayer", "layer", "ls", "--config=/b"])),
            Some("/b".into())
        );
        assert_eq!(
            named_file(&args(&[
                "thinlayer",
                "container",
                "exec",
                "c",
                "--",
                "x",
                "--config",
                "/c"
            ]))
            .filter(|p| p == Path::new("/c")),
            None
        );
    }
}
