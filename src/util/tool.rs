//! Running the external tools that own a format or a kernel interface
//! (mkfs.*, resize2fs, xfs_growfs, mount(8) for overlay and remote
//! filesystems): one way, with the tool's stderr as the error.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

/// Runs `cmd` to completion; a failure to start it, or a non-zero exit,
/// becomes [`Error::Tool`] naming `name` with the tool's own stderr.
pub fn run(cmd: &mut Command, name: &str) -> Result<()> {
    let out = cmd.output().map_err(|e| Error::Tool {
        tool: name.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::Tool {
            tool: name.to_string(),
            detail: if stderr.is_empty() {
                format!("exited with {}", out.status)
            } else {
                stderr
            },
        });
    }
    Ok(())
}

/// `mount -t FSTYPE [-o OPTS] SOURCE TARGET`, run in `cwd` if given (overlay
/// mounts name their lower directories relative to the store).
pub fn mount(
    fstype: &str,
    source: &str,
    opts: &str,
    target: &Path,
    cwd: Option<&Path>,
) -> Result<()> {
    let mut cmd = Command::new("mount");
    cmd.args(["-t", fstype]);
    if !opts.is_empty() {
        cmd.args(["-o", opts]);
    }
    cmd.arg(source).arg(target);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    run(&mut cmd, &format!("mount -t {fstype}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_a_failing_tool_reports_its_stderr() {
        let err = run(
            Command::new("sh").args(["-c", "echo broken >&2; exit 3"]),
            "sh",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "sh failed: broken");
        let err = run(&mut Command::new("/nonexistent/tool"), "tool")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tool failed: "), "{err}");
        run(&mut Command::new("true"), "true").unwrap();
    }
}
