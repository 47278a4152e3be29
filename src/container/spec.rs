//! What users write on `container create`: `-v` specs, `--volumes-from`,
//! hostnames; and the files of a container's init layer.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::volume;

/// Where a container mount's data comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Source {
    /// A volume, by name.
    Volume {
        /// The volume's name.
        name: String,
    },
    /// A host path, bind-mounted.
    Bind {
        /// The host path (absolute).
        path: String,
    },
    /// A new anonymous volume (only in a parsed spec; creating the
    /// container names it).
    Anonymous,
}

/// One mount of a container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    #[serde(flatten)]
    /// Where the data comes from.
    pub source: Source,
    /// Absolute path inside the container, normalized.
    pub destination: String,
    #[serde(default)]
    /// Mounted read-only (`:ro`).
    pub readonly: bool,
    /// Do not fill a new, empty volume from the image's content.
    #[serde(default)]
    pub nocopy: bool,
}

fn bad(spec: &str, why: impl std::fmt::Display) -> Error {
    Error::invalid("volume spec", format!("'{spec}': {why}"))
}

/// Normalizes an in-container path: absolute, no `..`, not `/` itself.
pub fn container_path(spec: &str, p: &str) -> Result<String> {
    if !p.starts_with('/') {
        return Err(bad(
            spec,
            format!("the path in the container, '{p}', is not absolute"),
        ));
    }
    let comps: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if comps.contains(&"..") {
        return Err(bad(
            spec,
            format!("the path in the container, '{p}', has '..'"),
        ));
    }
    if comps.is_empty() {
        return Err(bad(
            spec,
            "a volume cannot be mounted over the container's root",
        ));
    }
    if p.contains('\0') {
        return Err(bad(spec, "the path has a NUL byte"));
    }
    Ok(format!("/{}", comps.join("/")))
}

/// Parses `-v`: `NAME:/path[:opts]` (a named volume), `/host:/path[:opts]`
/// (a bind mount of an existing host path), `/path` (a new anonymous
/// volume). Options, comma-separated: `ro`, `rw`, `nocopy` (volumes only).
pub fn parse_volume(spec: &str) -> Result<MountSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [dst] => (None, *dst, None),
        [src, dst] => (Some(*src), *dst, None),
        [src, dst, opts] => (Some(*src), *dst, Some(*opts)),
        _ => {
            return Err(bad(
                spec,
                "use NAME:/path[:ro], /host/path:/path[:ro] or /path",
            ))
        }
    };
    let destination = container_path(spec, dst)?;
    let source = match src {
        None => Source::Anonymous,
        Some(s) if s.starts_with('/') => {
            let meta = std::fs::metadata(s).map_err(|e| {
                bad(
                    spec,
                    format!(
                        "the host path {s} cannot be used: {e}; bind mounts need an existing path"
                    ),
                )
            })?;
            if !(meta.is_dir() || meta.is_file()) {
                return Err(bad(
                    spec,
                    format!("the host path {s} is neither a directory nor a file"),
                ));
            }
            Source::Bind {
                path: s.to_string(),
            }
        }
        Some(s) => {
            if s.starts_with('.') || s.contains('/') || s.starts_with('~') {
                return Err(bad(
                    spec,
                    format!("'{s}' is a relative path; give a host path as an absolute path, or a volume name"),
                ));
            }
            volume::validate_name(s).map_err(|e| bad(spec, e))?;
            Source::Volume {
                name: s.to_string(),
            }
        }
    };
    let mut m = MountSpec {
        source,
        destination,
        readonly: false,
        nocopy: false,
    };
    for o in opts.into_iter().flat_map(|o| o.split(',')) {
        match o {
            "ro" => m.readonly = true,
            "rw" => m.readonly = false,
            "nocopy" if matches!(m.source, Source::Bind { .. }) => {
                return Err(bad(spec, "nocopy applies to volumes, not bind mounts"))
            }
            "nocopy" => m.nocopy = true,
            _ => {
                return Err(bad(
                    spec,
                    format!("unknown option '{o}': use ro, rw or nocopy"),
                ))
            }
        }
    }
    Ok(m)
}

/// Parses `--volumes-from C[:ro|:rw]`: the container and whether to force
/// read-only.
pub fn parse_volumes_from(spec: &str) -> Result<(String, bool)> {
    let (name, ro) = match spec.rsplit_once(':') {
        Some((n, "ro")) => (n, true),
        Some((n, "rw")) => (n, false),
        Some((_, o)) => {
            return Err(Error::invalid(
                "--volumes-from",
                format!("'{spec}': unknown mode '{o}': use ro or rw"),
            ))
        }
        None => (spec, false),
    };
    if name.is_empty() {
        return Err(Error::invalid(
            "--volumes-from",
            format!("'{spec}' names no container"),
        ));
    }
    Ok((name.to_string(), ro))
}

/// Checks a hostname: an RFC 1123 label of 1 to 63 letters, digits and
/// '-', not starting or ending with '-'.
pub fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if !ok {
        return Err(Error::invalid(
            "hostname",
            format!(
                "'{h}' must be 1 to 63 letters, digits or '-', not starting or ending with '-'"
            ),
        ));
    }
    Ok(())
}

/// The files of a container's init layer, as Docker writes them: they
/// belong to this container, not to the image, and a commit leaves them
/// out.
pub const INIT_FILES: &[&str] = &["etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"];

/// `/etc/resolv.conf` for a container from the host's: nameservers on the
/// host's loopback cannot be reached from a container, so they are dropped,
/// and Google's public servers are used if none is left (Docker's rule).
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            if addr.starts_with("127.") || addr == "::1" {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// The mount points a process needs (Docker's init layer makes the same):
/// made where the image has none, left as they are where it has them.
pub const INIT_DIRS: [&str; 5] = ["dev", "dev/pts", "dev/shm", "proc", "sys"];

/// The init layer as a changeset, the same for every container over a
/// layer (so they share one): the mount points in [`INIT_DIRS`] (mode
/// 0755, applied with `keep_existing_dirs`, so an image's own keep their
/// metadata), `/etc/mtab` -> `/proc/mounts`, and empty `/etc/hostname`,
/// `/etc/hosts` and `/etc/resolv.conf`, owned by root, mode 0644: the
/// places where each container's own files ([`container_files`]) are
/// bind-mounted, as Docker's init layer has them. No entry for `/etc`
/// itself, so an image's `/etc` keeps its metadata. Its times are `mtime`.
pub fn init_changeset(mtime: u64) -> Vec<u8> {
    let header = |kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    for dir in INIT_DIRS {
        let mut h = header(tar::EntryType::Directory, 0o755);
        b.append_data(&mut h, dir, std::io::empty())
            .expect("writing to memory");
    }
    let mut h = header(tar::EntryType::Symlink, 0o777);
    b.append_link(&mut h, "etc/mtab", "/proc/mounts")
        .expect("writing to memory");
    for (_, path, _) in CONTAINER_FILES {
        let mut h = header(tar::EntryType::Regular, 0o644);
        b.append_data(&mut h, path, std::io::empty())
            .expect("writing to memory");
    }
    b.into_inner().expect("writing to memory")
}

/// A container's own files: the name in its directory, where it is
/// bind-mounted in the container, and its mode.
pub const CONTAINER_FILES: [(&str, &str, u32); 3] = [
    ("hostname", "etc/hostname", 0o644),
    ("hosts", "etc/hosts", 0o644),
    ("resolv.conf", "etc/resolv.conf", 0o644),
];

/// The contents of a container's own files, in the order of
/// [`CONTAINER_FILES`]: its hostname, `/etc/hosts` naming it, and
/// `/etc/resolv.conf` from the host's ([`resolv_conf`]).
pub fn container_files(hostname: &str, host_resolv: &str) -> [String; 3] {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n127.0.1.1\t{hostname}\n"
    );
    [format!("{hostname}\n"), hosts, resolv_conf(host_resolv)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_volume_specs_parse_as_docker_reads_them() {
        let v = parse_volume("data:/var/lib/data:ro,nocopy").unwrap();
        assert_eq!(
            v,
            MountSpec {
                source: Source::Volume {
                    name: "data".into()
                },
                destination: "/var/lib/data".into(),
                readonly: true,
                nocopy: true,
            }
        );
        let a = parse_volume("/cache//x/").unwrap();
        assert_eq!(a.source, Source::Anonymous);
        assert_eq!(a.destination, "/cache/x");
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_str().unwrap();
        let b = parse_volume(&format!("{host}:/mnt:ro")).unwrap();
        assert_eq!(b.source, Source::Bind { path: host.into() });
        assert!(b.readonly);
        let err = |s: &str| parse_volume(s).unwrap_err().to_string();
        assert!(err("data:relative").contains("is not absolute"));
        assert!(err("relative").contains("is not absolute"));
        assert!(err("./data:/x").contains("relative path"));
        assert!(err("a/b:/x").contains("relative path"));
        assert!(err("..:/x").contains("relative path"));
        assert!(err("-x:/x").contains("volume name"));
        assert!(err("/no/such/host/path:/x").contains("bind mounts need an existing path"));
        assert!(err(&format!("{host}:/x:nocopy")).contains("not bind mounts"));
        assert!(err("v:/x:rx").contains("unknown option 'rx'"));
        assert!(err("v:/").contains("over the container's root"));
        assert!(err("v:/a/../b").contains("'..'"));
        assert!(err("a:b:c:d").contains("use NAME:/path"));
    }

    #[test]
    fn plain_volumes_from_and_hostnames_are_checked() {
        assert_eq!(parse_volumes_from("web").unwrap(), ("web".into(), false));
        assert_eq!(parse_volumes_from("web:ro").unwrap(), ("web".into(), true));
        assert_eq!(parse_volumes_from("web:rw").unwrap(), ("web".into(), false));
        assert!(parse_volumes_from("web:x")
            .unwrap_err()
            .to_string()
            .contains("unknown mode"));
        assert!(parse_volumes_from(":ro").is_err());
        check_hostname("web-1").unwrap();
        for bad in ["", "-a", "a-", "a.b", "a_b", &"h".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_init_layer_holds_placeholders_and_the_files_are_the_containers_own() {
        let r = resolv_conf("# c\nnameserver 127.0.0.53\nsearch lan\nnameserver 10.0.0.1\n");
        assert_eq!(r, "# c\nsearch lan\nnameserver 10.0.0.1\n");
        let r = resolv_conf("nameserver 127.0.0.53\noptions edns0\n");
        assert!(
            r.ends_with("nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
            "{r}"
        );
        let [hostname, hosts, resolv] = container_files("box", "nameserver 10.0.0.1\n");
        assert_eq!(hostname, "box\n");
        assert!(hosts.contains("127.0.1.1\tbox\n"), "{hosts}");
        assert_eq!(resolv, "nameserver 10.0.0.1\n");
        let tar_bytes = init_changeset(7);
        let mut a = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = vec![];
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            assert_eq!(e.header().mtime().unwrap(), 7);
            assert_eq!(e.header().uid().unwrap(), 0);
            if INIT_DIRS.contains(&p.trim_end_matches('/')) {
                assert!(e.header().entry_type().is_dir(), "{p}");
                assert_eq!(e.header().mode().unwrap(), 0o755);
                continue;
            }
            if p == "etc/mtab" {
                let target = e.link_name().unwrap().unwrap();
                assert_eq!(target.to_str(), Some("/proc/mounts"));
                seen.push(p);
                continue;
            }
            // The same for every container: empty places to bind-mount on.
            assert_eq!(e.header().mode().unwrap(), 0o644);
            assert_eq!(s, "", "{p}");
            seen.push(p);
        }
        seen.sort();
        let mut want = INIT_FILES.to_vec();
        want.sort();
        assert_eq!(seen, want);
    }
}
