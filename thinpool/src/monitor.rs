//! Watching a pool: device-mapper events wake the watcher, which grows
//! the pool by its autoextend settings and reports changes of mode.
//!
//! The kernel raises an event on the pool when its free data blocks fall
//! below the low-water mark (set from the autoextend threshold, see
//! [`crate::config::Threshold::low_water`]), when its metadata runs low,
//! and when its mode changes. The watcher waits for those on the dm
//! control device (`poll`, armed with `DM_DEV_ARM_POLL`, as the
//! devicemapper crate describes), and does nothing between them: a slow
//! timer only checks for a stop request, and looks at the pool again
//! every [`RECHECK`] in case it was activated without an event.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel;
use crate::pool::{Autoextended, Pool, PoolMode};

/// How often the watcher checks for a stop request between events.
pub const STOP_CHECK: Duration = Duration::from_millis(500);
/// How often the watcher looks at the pool without an event: a safety
/// net for an activation or an event raised before it armed.
pub const RECHECK: Duration = Duration::from_secs(30);

/// What the watcher saw or did; one report per change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum MonitorEvent {
    /// The watcher started on the pool.
    Watching {
        /// The pool's id.
        pool: String,
    },
    /// The pool's mode changed (`None`: inactive).
    Mode {
        /// The new mode.
        mode: Option<PoolMode>,
    },
    /// An autoextend grew the pool, or found it at its maximum.
    Autoextend {
        /// What woke the watcher for the check that did it.
        wake: Wake,
        /// What it did.
        #[serde(flatten)]
        done: Autoextended,
    },
    /// A check failed; the watcher goes on.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl std::fmt::Display for MonitorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MonitorEvent::Watching { pool } => write!(f, "watching pool {pool}"),
            MonitorEvent::Mode { mode: Some(m) } => write!(f, "pool mode: {m}"),
            MonitorEvent::Mode { mode: None } => write!(f, "pool inactive"),
            MonitorEvent::Autoextend {
                done: Autoextended::Grew { data, metadata },
                ..
            } => write!(
                f,
                "autoextend: data {} -> {}, metadata {} -> {}",
                data.0, data.1, metadata.0, metadata.1
            ),
            MonitorEvent::Autoextend {
                done: Autoextended::AtMaximum {
                    space,
                    used_percent,
                },
                ..
            } => write!(
                f,
                "autoextend: {space} is {used_percent}% used and at its maximum: raise --autoextend-max or free space"
            ),
            MonitorEvent::Autoextend { done, .. } => write!(f, "autoextend: {done:?}"),
            MonitorEvent::Failed { error } => write!(f, "check failed: {error}"),
        }
    }
}

/// What woke the watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Wake {
    /// Its first check.
    Start,
    /// A device-mapper event.
    Event,
    /// The slow timer ([`RECHECK`]).
    Timer,
}

/// The watcher's state between wake-ups.
struct Watcher {
    pool: Pool,
    mode: Option<Option<PoolMode>>,
    at_max: bool,
}

impl Watcher {
    /// Looks at the pool: reports a new mode, autoextends.
    fn check(&mut self, wake: Wake, report: &mut dyn FnMut(&MonitorEvent)) -> Result<()> {
        self.pool.refresh_devices()?;
        let mode = if self.pool.is_active() {
            self.pool.status()?.mode
        } else {
            None
        };
        if self.mode != Some(mode) {
            self.mode = Some(mode);
            report(&MonitorEvent::Mode { mode });
        }
        if mode.is_none() || mode == Some(PoolMode::Fail) {
            return Ok(());
        }
        match self.pool.autoextend()? {
            done @ Autoextended::Grew { .. } => {
                self.at_max = false;
                report(&MonitorEvent::Autoextend { wake, done });
                // The grow may leave the pool still above the threshold
                // (a step smaller than what was written meanwhile).
                return self.check(wake, report);
            }
            done @ Autoextended::AtMaximum { .. } if !self.at_max => {
                self.at_max = true;
                report(&MonitorEvent::Autoextend { wake, done });
            }
            Autoextended::NotNeeded => self.at_max = false,
            _ => {}
        }
        Ok(())
    }
}

/// Watches the pool in `dir` until `stop` is set, calling `report` for
/// each change. Checks once at start, then on every device-mapper event.
///
/// Errors: those of opening the pool and the dm control device; a failed
/// check is reported ([`MonitorEvent::Failed`]) and the watch goes on.
pub fn watch(dir: &Path, stop: &AtomicBool, report: &mut dyn FnMut(&MonitorEvent)) -> Result<()> {
    let events = kernel::open_dm()?;
    let mut pool = Pool::open(dir)?;
    pool.share();
    report(&MonitorEvent::Watching {
        pool: pool.record().id.to_string(),
    });
    let mut w = Watcher {
        pool,
        mode: None,
        at_max: false,
    };
    let mut woken = Some(Wake::Start);
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if woken.is_none() && last.elapsed() >= RECHECK {
            woken = Some(Wake::Timer);
        }
        if let Some(wake) = woken {
            // Armed before looking, so an event raised while we look
            // wakes the next poll.
            events
                .arm_poll()
                .map_err(Error::dm("arming the dm event poll"))?;
            if let Err(e) = w.check(wake, report) {
                report(&MonitorEvent::Failed {
                    error: e.to_string(),
                });
            }
            last = Instant::now();
        }
        let mut fds = [PollFd::new(events.file().as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(STOP_CHECK.as_millis()).unwrap_or(u16::MAX);
        woken = match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) => (n > 0).then_some(Wake::Event),
            Err(nix::errno::Errno::EINTR) => None,
            Err(e) => {
                return Err(Error::io("polling", kernel::DM_CONTROL)(
                    std::io::Error::from(e),
                ))
            }
        };
    }
    Ok(())
}
