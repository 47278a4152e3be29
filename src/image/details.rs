//! What an image's config says, as `image inspect` and `image history`
//! show it: the run defaults (entrypoint, cmd, env, ...) and the history.

use std::collections::BTreeMap;

use serde::Serialize;

use super::oci::parse_config;
use super::{ImageConfig, ImageError};

/// An image's config, the parts a user reads (`docker inspect`'s
/// `Config`, and the image's own fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageDetails {
    /// When the image was built, as the config says (RFC 3339).
    pub created: Option<String>,
    /// Who built it.
    pub author: Option<String>,
    /// `architecture`, as written.
    pub architecture: Option<String>,
    /// `os`, as written.
    pub os: Option<String>,
    /// `variant`, as written.
    pub variant: Option<String>,
    /// The default entrypoint.
    pub entrypoint: Vec<String>,
    /// The default command (arguments to the entrypoint).
    pub cmd: Vec<String>,
    /// The default environment, `NAME=value`.
    pub env: Vec<String>,
    /// The default working directory.
    pub working_dir: Option<String>,
    /// The default user (`name`, `uid`, `uid:gid`...).
    pub user: Option<String>,
    /// Ports the image exposes, e.g. `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// Paths the image declares as volumes.
    pub volumes: Vec<String>,
    /// The image's labels.
    pub labels: BTreeMap<String, String>,
    /// The signal that stops its process.
    pub stop_signal: Option<String>,
}

/// One entry of an image's history, as `docker history` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// When the step ran (RFC 3339), as the config says.
    pub created: Option<String>,
    /// The command that made it (`created_by`).
    pub created_by: String,
    /// Its comment.
    pub comment: Option<String>,
    /// The image layer it made, 0 = bottom; `None` for a step that made
    /// no layer (`empty_layer`, e.g. `ENV`), or more steps than layers.
    pub layer: Option<usize>,
}

/// Reads a stored image config (its bytes as imported).
///
/// Errors: [`ImageError`] when it is not a config.
pub fn read_config(raw: Vec<u8>) -> Result<ImageConfig, ImageError> {
    parse_config("the image's config", raw)
}

impl ImageConfig {
    /// The config's user-facing fields.
    pub fn details(&self) -> ImageDetails {
        let f = &self.full;
        let c = f.config().clone().unwrap_or_default();
        let sorted = |v: Option<Vec<String>>| {
            let mut v = v.unwrap_or_default();
            v.sort();
            v
        };
        ImageDetails {
            created: self.created.clone(),
            author: f.author().clone(),
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            exposed_ports: sorted(c.exposed_ports().clone()),
            volumes: sorted(c.volumes().clone()),
            labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
            stop_signal: c.stop_signal().clone(),
        }
    }

    /// The history, newest first, each step with the layer it made: steps
    /// that are not `empty_layer` take the image's layers bottom up, as
    /// Docker pairs them.
    pub fn history(&self) -> Vec<HistoryEntry> {
        let layers = self.diff_ids.len();
        let mut next = 0;
        let mut out: Vec<HistoryEntry> = self
            .full
            .history()
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|h| {
                let layer = match h.empty_layer() {
                    Some(true) => None,
                    _ if next < layers => {
                        next += 1;
                        Some(next - 1)
                    }
                    _ => None,
                };
                HistoryEntry {
                    created: h.created().clone(),
                    created_by: h.created_by().clone().unwrap_or_default(),
                    comment: h.comment().clone().filter(|c| !c.is_empty()),
                    layer,
                }
            })
            .collect();
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config as `docker build` writes one (fields from a real
    /// Dockerfile with FROM, ENV, COPY, VOLUME, EXPOSE, CMD).
    const DOCKER_BUILT: &str = r#"{"architecture":"amd64","os":"linux","created":"2024-05-01T10:00:00Z",
      "author":"ops@example.com",
      "config":{"Env":["PATH=/usr/bin","APP=1"],"Cmd":["serve","--port","80"],"Entrypoint":["/app"],
        "WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"80/tcp":{},"53/udp":{}},
        "Volumes":{"/data":{},"/cache":{}},"Labels":{"org.example.tier":"web"},"StopSignal":"SIGTERM"},
      "rootfs":{"type":"layers","diff_ids":[
        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "sha256:2222222222222222222222222222222222222222222222222222222222222222"]},
      "history":[
        {"created":"2024-04-01T00:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:abc in / "},
        {"created":"2024-05-01T09:59:00Z","created_by":"ENV APP=1","empty_layer":true},
        {"created":"2024-05-01T09:59:30Z","created_by":"COPY app /app # buildkit","comment":"buildkit.dockerfile.v0"},
        {"created":"2024-05-01T10:00:00Z","created_by":"CMD [\"serve\"]","empty_layer":true}]}"#;

    #[test]
    fn plain_details_read_the_run_defaults_of_a_docker_built_config() {
        let c = read_config(DOCKER_BUILT.as_bytes().to_vec()).unwrap();
        let d = c.details();
        assert_eq!(d.entrypoint, ["/app"]);
        assert_eq!(d.cmd, ["serve", "--port", "80"]);
        assert_eq!(d.env, ["PATH=/usr/bin", "APP=1"]);
        assert_eq!(d.working_dir.as_deref(), Some("/srv"));
        assert_eq!(d.user.as_deref(), Some("1000:1000"));
        assert_eq!(d.exposed_ports, ["53/udp", "80/tcp"]);
        assert_eq!(d.volumes, ["/cache", "/data"]);
        assert_eq!(d.labels["org.example.tier"], "web");
        assert_eq!(d.stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(d.author.as_deref(), Some("ops@example.com"));
        assert_eq!(d.created.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert_eq!(
            (d.os.as_deref(), d.architecture.as_deref()),
            (Some("linux"), Some("amd64"))
        );
    }

    #[test]
    fn plain_history_is_newest_first_and_pairs_steps_with_layers() {
        let c = read_config(DOCKER_BUILT.as_bytes().to_vec()).unwrap();
        let h = c.history();
        let got: Vec<(&str, Option<usize>)> =
            h.iter().map(|e| (e.created_by.as_str(), e.layer)).collect();
        assert_eq!(
            got,
            [
                ("CMD [\"serve\"]", None),
                ("COPY app /app # buildkit", Some(1)),
                ("ENV APP=1", None),
                ("/bin/sh -c #(nop) ADD file:abc in / ", Some(0)),
            ]
        );
        assert_eq!(h[1].comment.as_deref(), Some("buildkit.dockerfile.v0"));
    }

    #[test]
    fn plain_a_config_without_config_or_history_has_empty_details() {
        let raw =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = read_config(raw.to_vec()).unwrap();
        assert_eq!(c.details().cmd, Vec::<String>::new());
        assert!(c.history().is_empty());
        assert!(read_config(b"not json".to_vec()).is_err());
    }
}
