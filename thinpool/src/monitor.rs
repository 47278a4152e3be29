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
//!
//! That poll wakes on every device's events, not the pool's alone: each
//! thin device made, activated or removed raises one. So a wake-up first
//! reads the pool device's event counter ([`EventMark`], one ioctl), and
//! looks at the pool only when it moved: a snapshotter preparing layers
//! then does not pay, on its two CPUs, for a check of the pool (status,
//! devices, the pool's lock) after each of them.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::kernel;
use crate::pool::{Autoextended, EventMark, Pool, PoolMode};

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
    /// The pool's [`EventMark`] at the last check that succeeded (the
    /// inner `None`: no pool device); `None` before one.
    checked: Option<Option<EventMark>>,
}

/// Whether a wake-up looks at the pool: always at the start and on the
/// timer; on a device-mapper event only when the pool's own mark moved
/// since the last check that succeeded, or cannot be read (`now`: `None`).
fn needs_check(
    wake: Wake,
    checked: Option<Option<EventMark>>,
    now: Option<Option<EventMark>>,
) -> bool {
    match (wake, checked, now) {
        (Wake::Event, Some(before), Some(now)) => before != now,
        _ => true,
    }
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
        // Off in the record just read: no need for the pool's lock.
        if self.pool.record().autoextend.is_none() {
            self.at_max = false;
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
/// each change. Checks once at start, then on every device-mapper event
/// that moved the pool's [`EventMark`], and at least every [`RECHECK`].
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
        checked: None,
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
            let mark = w.pool.event_mark().ok();
            if needs_check(wake, w.checked, mark) {
                w.checked = match w.check(wake, report) {
                    Ok(()) => mark,
                    Err(e) => {
                        report(&MonitorEvent::Failed {
                            error: e.to_string(),
                        });
                        None
                    }
                };
                last = Instant::now();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use devicemapper::Device;

    fn mark(minor: u32, event_nr: u32) -> EventMark {
        EventMark {
            device: Device { major: 253, minor },
            event_nr,
        }
    }

    #[test]
    fn plain_an_event_of_another_device_does_not_look_at_the_pool_but_the_pools_own_does() {
        let seen = Some(Some(mark(3, 7)));
        // Another device's event: the pool's mark did not move.
        assert!(!needs_check(Wake::Event, seen, Some(Some(mark(3, 7)))));
        // The pool's own event (low water, a mode change) moves it.
        assert!(needs_check(Wake::Event, seen, Some(Some(mark(3, 8)))));
        // Deactivated, or activated again as another device.
        assert!(needs_check(Wake::Event, seen, Some(None)));
        assert!(needs_check(Wake::Event, seen, Some(Some(mark(4, 7)))));
        assert!(needs_check(Wake::Event, Some(None), Some(Some(mark(4, 0)))));
        // Still inactive: nothing to look at.
        assert!(!needs_check(Wake::Event, Some(None), Some(None)));
        // The mark unreadable, or no check succeeded yet: look.
        assert!(needs_check(Wake::Event, seen, None));
        assert!(needs_check(Wake::Event, None, Some(Some(mark(3, 7)))));
        // The start and the timer always look.
        assert!(needs_check(Wake::Start, seen, Some(Some(mark(3, 7)))));
        assert!(needs_check(Wake::Timer, seen, Some(Some(mark(3, 7)))));
    }
}
