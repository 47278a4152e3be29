//! What to type next: the libraries say what is wrong; the command line
//! adds the command or step that helps, from the error's type. Each hint
//! is appended to the whole message (`thinlayer: <context>: <cause><hint>`).

use thinpool::Error as PoolError;

/// A suffix saying what to do about `e`, or nothing.
pub fn hint(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(h) = cause.downcast_ref::<thinlayer::Error>().and_then(for_error) {
            return h;
        }
        if let Some(h) = cause.downcast_ref::<PoolError>().and_then(for_pool) {
            return h;
        }
    }
    String::new()
}

/// `e` and its causes on one line, as `{:#}` prints them, except that a
/// cause whose text already ends the line is not said twice (an error that
/// prints its source in its own message and also gives it as its cause).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

const CREATE: &str = ": create one with `thinlayer pool create`";
const IN_THE_VM: &str = "run thinlayer in the VM with `vm-tests/run.sh -- thinlayer ...`";

fn for_error(e: &thinlayer::Error) -> Option<String> {
    match e {
        thinlayer::Error::NoPool { .. } => Some(CREATE.into()),
        thinlayer::Error::Pool(p) => for_pool(p),
        thinlayer::Error::Rollback { causal, .. } => for_error(causal),
        _ => None,
    }
}

fn for_pool(e: &PoolError) -> Option<String> {
    Some(match e {
        PoolError::NoPool { .. } => CREATE.into(),
        PoolError::PoolExists { .. } => {
            ": use it, remove it with `thinlayer pool destroy`, or choose another --root".into()
        }
        PoolError::Inactive => ": run `thinlayer pool activate`".into(),
        PoolError::NoDeviceMapper { .. } => format!(
            "; thinlayer needs the dm-thin target: on this machine {}",
            IN_THE_VM.replacen("run thinlayer", "run it", 1)
        ),
        PoolError::NoThinTarget { .. } => {
            format!("; load it with `modprobe dm-thin-pool`, or {IN_THE_VM}")
        }
        PoolError::Mismatch { .. } => {
            " (inspect with `thin_check`, and restore the record or the devices)".into()
        }
        PoolError::ThinDevicesRemain { count } => format!(
            ", or pass --force to destroy {} with the pool",
            if *count == 1 { "it" } else { "them" }
        ),
        PoolError::ReadOnly => {
            ": grow the metadata with `thinlayer pool grow --metadata-size`, or check it with thin_check".into()
        }
        PoolError::Failed => {
            ": deactivate it and run `thinlayer pool repair`, which keeps the damaged metadata".into()
        }
        PoolError::BelowReserve { space, .. } => format!(
            ": remove containers, images or volumes, grow it with `thinlayer pool grow --{}-size`, or lower the reserve with `thinlayer pool set --min-free`",
            if *space == "data" { "data" } else { "metadata" }
        ),
        PoolError::MetadataDamaged { .. } => {
            ": run `thinlayer pool repair` (it rebuilds the metadata with thin_repair and keeps the damaged copy)".into()
        }
        PoolError::NeedsCheck { .. } => ": run `thinlayer pool activate` without --skip-check".into(),
        PoolError::UndoPending { .. } => {
            ": free space or fix what blocks the delete (a device still open?), then retry".into()
        }
        PoolError::OutOfDataSpace => {
            ": remove containers, images or volumes, or grow it with `thinlayer pool grow --data-size`".into()
        }
        PoolError::MetadataInUse { path } => format!(
            "; if it is no longer needed, zero its first 4K (dd if=/dev/zero of={} bs=4k count=1) and retry",
            path.display()
        ),
        PoolError::DeviceTooSmall { .. } => " (e.g. lvextend), then run pool grow".into(),
        PoolError::GrowNeedsMetadata { .. } => " with --metadata-size".into(),
        PoolError::Rollback { causal, .. } => return for_pool(causal),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(e: impl Into<anyhow::Error>) -> String {
        hint(&e.into().context("doing something"))
    }

    #[test]
    fn plain_a_cause_the_message_already_ends_with_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "layer 3: bad diff_id");
        let e = anyhow::Error::new(thinlayer::changeset::ChangesetError::Io {
            op: "reading",
            path: "changeset input".into(),
            source: io,
        })
        .context("importing /x");
        assert_eq!(
            one_line(&e),
            "importing /x: io error reading \"changeset input\": layer 3: bad diff_id"
        );
        // Causes that are not in the message yet are all said, in order.
        let e = anyhow::anyhow!("no space")
            .context("writing a")
            .context("importing /x");
        assert_eq!(one_line(&e), "importing /x: writing a: no space");
        assert_eq!(one_line(&e), format!("{e:#}"));
    }

    #[test]
    fn plain_pool_errors_get_the_command_that_helps() {
        assert_eq!(of(PoolError::Inactive), ": run `thinlayer pool activate`");
        assert!(of(thinlayer::Error::Pool(PoolError::Inactive)).contains("pool activate"));
        assert_eq!(
            of(thinlayer::Error::NoPool { dir: "/x".into() }),
            ": create one with `thinlayer pool create`"
        );
        assert!(
            of(PoolError::ThinDevicesRemain { count: 2 }).ends_with("destroy them with the pool")
        );
        assert!(of(PoolError::ThinDevicesRemain { count: 1 }).ends_with("destroy it with the pool"));
        assert!(of(PoolError::ReadOnly).contains("pool grow --metadata-size"));
        assert!(of(PoolError::MetadataDamaged {
            path: "/m".into(),
            detail: "bad checksum".into()
        })
        .contains("thinlayer pool repair"));
        assert!(of(PoolError::NeedsCheck { path: "/m".into() }).contains("without --skip-check"));
        // Errors that need no hint get none.
        assert_eq!(of(thinlayer::Error::invalid("size", "too small")), "");
    }
}
