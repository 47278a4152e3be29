//! Running the tools of thin-provisioning-tools (`thin_ls`, `thin_check`,
//! `thin_repair`), which own the metadata's format: one way to start them,
//! to read their failure, and to give them a block device.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::error::{Error, Result};
use crate::loopback;

/// Runs a thin tool, as a helper ([`crate::helper`]); one that cannot
/// start is [`Error::Tool`] naming the package to install.
pub(super) fn run(cmd: &mut Command, tool: &str) -> Result<Output> {
    crate::helper::output(cmd).map_err(|e| Error::Tool {
        tool: tool.into(),
        detail: format!("{e} (install thin-provisioning-tools)"),
    })
}

/// [`run`], and a failure is [`Error::Tool`] with what the tool said.
pub(super) fn run_ok(cmd: &mut Command, tool: &str) -> Result<Output> {
    let out = run(cmd, tool)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(Error::Tool {
        tool: tool.into(),
        detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `f` on a block device holding `path`: `path` itself if it is
/// one, the loop device bound to it if there is one, else a loop device
/// attached for the call. The thin tools open what they read and write
/// with `O_DIRECT`, which a file on tmpfs (before Linux 6.6) refuses; a
/// loop device takes it on any filesystem. A loop device a killed call
/// leaves is found and reused by the next attach of the same file.
pub(super) fn on_block_device<T>(path: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let meta = fs::metadata(path).map_err(Error::io("inspecting", path))?;
    if meta.file_type().is_block_device() {
        return f(path);
    }
    if let Some(dev) =
        loopback::find(path).map_err(Error::io("finding the loop device of", path))?
    {
        return f(&dev.path);
    }
    let dev = loopback::attach(path).map_err(Error::io("attaching a loop device to", path))?;
    let out = f(&dev.path);
    let detached = dev
        .detach()
        .map_err(Error::io("detaching the loop device of", path));
    match (out, detached) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

/// Runs `thin_check` (with `extra` options) on metadata `path`, through a
/// block device ([`on_block_device`]); damage is
/// [`Error::MetadataDamaged`] naming `path`.
pub(super) fn thin_check(path: &Path, extra: &[&str]) -> Result<()> {
    let out = on_block_device(path, |dev| {
        run(
            Command::new("thin_check").args(extra).arg(dev),
            "thin_check",
        )
    })?;
    if out.status.success() {
        return Ok(());
    }
    // What it found is on stderr (its progress lines on stdout); the
    // first few lines name the damage.
    let said = String::from_utf8_lossy(&out.stderr);
    let detail = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::MetadataDamaged {
        path: path.to_path_buf(),
        detail: if detail.is_empty() {
            format!("thin_check exited with {}", out.status)
        } else {
            detail
        },
    })
}
