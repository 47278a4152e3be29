//! Where one library call spends its time: a `tracing` subscriber that
//! times the phases thinlayer's library marks with spans
//! ([`thinlayer::phase`], [`thinpool::phase`]), each phase by its own time
//! (its span's time less that of the spans inside it). The phases on the
//! calling thread and the rest (time in none) add up to the call's time;
//! phases on threads the library started for the call (it passes them the
//! subscriber) are reported apart, as [`background`] phases, which ran
//! alongside.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The name of the time the calling thread spent in no phase.
pub const REST: &str = "rest (in no phase)";
/// What a background phase's name ends with.
pub const BACKGROUND: &str = " (in the background)";

/// The name of phase `name` run on another thread than the caller's.
pub fn background(name: &str) -> String {
    format!("{name}{BACKGROUND}")
}

/// An entered span: its id, when, and the time of the spans inside it.
type Entered = (u64, Instant, Duration);

struct State {
    caller: ThreadId,
    next: u64,
    names: HashMap<u64, &'static str>,
    /// Each thread's spans entered and not left.
    stacks: HashMap<ThreadId, Vec<Entered>>,
    own: BTreeMap<String, Duration>,
}

/// The subscriber: cheap to clone, every clone shares the times.
#[derive(Clone)]
struct Phases(Arc<Mutex<State>>);

impl Phases {
    fn new() -> Phases {
        Phases(Arc::new(Mutex::new(State {
            caller: std::thread::current().id(),
            next: 0,
            names: HashMap::new(),
            stacks: HashMap::new(),
            own: BTreeMap::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Subscriber for Phases {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.is_span() && (m.target().starts_with("thinlayer") || m.target().starts_with("thinpool"))
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut s = self.state();
        s.next += 1;
        let id = s.next;
        s.names.insert(id, span.metadata().name());
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, span: &Id) {
        let thread = std::thread::current().id();
        self.state().stacks.entry(thread).or_default().push((
            span.into_u64(),
            Instant::now(),
            Duration::ZERO,
        ));
    }

    fn exit(&self, span: &Id) {
        let now = Instant::now();
        let thread = std::thread::current().id();
        let mut s = self.state();
        let Some(stack) = s.stacks.get_mut(&thread) else {
            return;
        };
        let Some(at) = stack.iter().rposition(|e| e.0 == span.into_u64()) else {
            return;
        };
        let (id, start, inner) = stack.remove(at);
        let spent = now - start;
        if let Some(parent) = at.checked_sub(1).and_then(|p| stack.get_mut(p)) {
            parent.2 += spent;
        }
        if let Some(&name) = s.names.get(&id) {
            let name = match thread == s.caller {
                true => name.to_string(),
                false => background(name),
            };
            *s.own.entry(name).or_default() += spent.saturating_sub(inner);
        }
    }

    fn try_close(&self, span: Id) -> bool {
        self.state().names.remove(&span.into_u64());
        true
    }
}

/// Runs `f` on this thread with the phases timed: its time in
/// milliseconds, its value, and the milliseconds of each phase met (by
/// name; [`REST`] for this thread's time in none, [`background`] names
/// for phases on other threads).
pub fn timed_phases<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T, BTreeMap<String, f64>)> {
    let phases = Phases::new();
    let (t, v) = tracing::subscriber::with_default(phases.clone(), || crate::fixture::timed(f))?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out: BTreeMap<String, f64> = phases
        .state()
        .own
        .iter()
        .map(|(k, v)| (k.clone(), ms(*v)))
        .collect();
    let inside: f64 = out
        .iter()
        .filter(|(k, _)| !k.ends_with(BACKGROUND))
        .map(|(_, v)| v)
        .sum();
    out.insert(REST.to_string(), (t - inside).max(0.0));
    Ok((t, v, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_phases_partition_the_call_and_count_own_time() {
        let (t, (), p) = timed_phases(|| {
            let outer = tracing::trace_span!(target: "thinlayer::x", "outer").entered();
            std::thread::sleep(Duration::from_millis(20));
            tracing::trace_span!(target: "thinpool::y", "inner")
                .in_scope(|| std::thread::sleep(Duration::from_millis(30)));
            drop(outer);
            // Another crate's span is no phase: its time is the rest's.
            tracing::trace_span!(target: "tonic", "other")
                .in_scope(|| std::thread::sleep(Duration::from_millis(10)));
            // A thread given the subscriber: its phase is a background one.
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    tracing::trace_span!(target: "thinpool::z", "inner")
                        .in_scope(|| std::thread::sleep(Duration::from_millis(5)))
                })
            })
            .join()
            .unwrap();
            Ok(())
        })
        .unwrap();
        assert!(p["inner"] >= 30.0, "{p:?}");
        // Its own time: without the inner span's 30 ms.
        assert!(p["outer"] >= 20.0 && p["outer"] < 50.0, "{p:?}");
        assert!(!p.contains_key("other"), "{p:?}");
        assert!(p[&background("inner")] >= 5.0, "{p:?}");
        // The join is in no phase: the rest holds the other span and it.
        assert!(p[REST] >= 15.0, "{p:?}");
        let sum: f64 = p
            .iter()
            .filter(|(k, _)| !k.ends_with(BACKGROUND))
            .map(|(_, v)| v)
            .sum();
        assert!((sum - t).abs() < 0.01, "{sum} against {t}");
    }
}
