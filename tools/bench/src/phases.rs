//! Where one library call spends its time, phase by phase: the library's
//! own subscriber ([`thinlayer::phase::timing`]), in the harness's units.

use std::collections::BTreeMap;

use anyhow::Result;

pub use thinlayer::phase::timing::{background, BACKGROUND, REST};

/// Runs `f` on this thread with the phases timed: its time in
/// milliseconds, its value, and the milliseconds of each phase met (by
/// name; [`REST`] for this thread's time in none, [`background`] names
/// for phases on other threads).
pub fn timed_phases<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T, BTreeMap<String, f64>)> {
    let t = thinlayer::phase::timing::timed(f);
    let ms = |d: &std::time::Duration| d.as_secs_f64() * 1000.0;
    let phases = t.phases.iter().map(|(k, v)| (k.clone(), ms(v))).collect();
    Ok((ms(&t.total), t.value?, phases))
}
