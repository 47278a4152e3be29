//! Where one call spends its time: a `tracing` subscriber that times the
//! phases thinlayer's library marks with spans ([`crate::phase`],
//! [`thinpool::phase`]), each phase by its own time (its span's time less
//! that of the spans inside it). The phases on the calling thread and the
//! rest (time in none) add up to the call's time; phases on threads the
//! library started for the call (it passes them the subscriber) are
//! reported apart, as [`background`] phases, which ran alongside.
//!
//! The benchmark harness times library calls with [`timed`]; the
//! `thinlayer` command times itself when [`ENV`] names a file, and appends
//! a [`PhaseLine`] to it, so that commands run as processes (a burst of
//! container creates) can be timed phase by phase too.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// The environment variable that makes the `thinlayer` command time its
/// phases: the file it appends one [`PhaseLine`] (a JSON line) to.
pub const ENV: &str = "THINLAYER_PHASES";

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
        if stack.is_empty() {
            // Threads come and go (one per background activation): a
            // long-lived process keeps no entry for each.
            s.stacks.remove(&thread);
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

/// A call timed phase by phase.
#[derive(Debug)]
pub struct Timed<T> {
    /// The call's whole time.
    pub total: Duration,
    /// What the call returned.
    pub value: T,
    /// Each phase's own time, by name: the calling thread's phases and
    /// [`REST`] add up to `total`; [`background`] phases ran alongside.
    pub phases: BTreeMap<String, Duration>,
}

/// Runs `f` on this thread with its phases timed.
pub fn timed<T>(f: impl FnOnce() -> T) -> Timed<T> {
    let phases = Phases::new();
    let start = Instant::now();
    let value = tracing::subscriber::with_default(phases.clone(), f);
    let total = start.elapsed();
    let mut out = phases.state().own.clone();
    let inside: Duration = out
        .iter()
        .filter(|(k, _)| !k.ends_with(BACKGROUND))
        .map(|(_, v)| *v)
        .sum();
    out.insert(REST.to_string(), total.saturating_sub(inside));
    Timed {
        total,
        value,
        phases: out,
    }
}

/// What the `thinlayer` command appends to the file [`ENV`] names: one
/// JSON object on a line of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseLine {
    /// The command's arguments (without the program's name).
    pub args: Vec<String>,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its time from parsed arguments to its result, in milliseconds.
    pub ms: f64,
    /// Each phase's own time in milliseconds, as [`Timed::phases`].
    pub phases: BTreeMap<String, f64>,
}

impl PhaseLine {
    /// The line of a command run with `args` and timed as `timed`.
    pub fn new<T, E>(args: Vec<String>, timed: &Timed<Result<T, E>>) -> PhaseLine {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        PhaseLine {
            args,
            ok: timed.value.is_ok(),
            ms: ms(&timed.total),
            phases: timed
                .phases
                .iter()
                .map(|(k, v)| (k.clone(), ms(v)))
                .collect(),
        }
    }

    /// Appends the line to `path` with one write, so that processes
    /// appending to the same file at once do not interleave.
    pub fn append(&self, path: &Path) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?
            .write_all(&line)
    }

    /// Every line of file `path`.
    ///
    /// Errors: the file cannot be read, or a line is not a [`PhaseLine`].
    pub fn read_all(path: &Path) -> std::io::Result<Vec<PhaseLine>> {
        std::fs::read_to_string(path)?
            .lines()
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[test]
    fn plain_phases_partition_the_call_and_count_own_time() {
        let t = timed(|| {
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
        });
        let p: BTreeMap<&str, f64> = t.phases.iter().map(|(k, v)| (k.as_str(), ms(*v))).collect();
        assert!(p["inner"] >= 30.0, "{p:?}");
        // Its own time: without the inner span's 30 ms.
        assert!(p["outer"] >= 20.0 && p["outer"] < 50.0, "{p:?}");
        assert!(!p.contains_key("other"), "{p:?}");
        assert!(p[background("inner").as_str()] >= 5.0, "{p:?}");
        // The join is in no phase: the rest holds the other span and it.
        assert!(p[REST] >= 15.0, "{p:?}");
        let sum: f64 = p
            .iter()
            .filter(|(k, _)| !k.ends_with(BACKGROUND))
            .map(|(_, v)| v)
            .sum();
        assert!(
            (sum - ms(t.total)).abs() < 0.01,
            "{sum} against {:?}",
            t.total
        );
    }

    #[test]
    fn plain_phase_lines_append_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phases.jsonl");
        let ok: Timed<Result<(), ()>> = timed(|| {
            tracing::trace_span!(target: "thinlayer::x", "work")
                .in_scope(|| std::thread::sleep(Duration::from_millis(2)));
            Ok(())
        });
        let failed: Timed<Result<(), ()>> = timed(|| Err(()));
        let lines = [
            PhaseLine::new(vec!["container".into(), "create".into()], &ok),
            PhaseLine::new(vec!["image".into(), "ls".into()], &failed),
        ];
        for l in &lines {
            l.append(&path).unwrap();
        }
        let back = PhaseLine::read_all(&path).unwrap();
        // Read back as written, to the last digit or so (JSON's decimal
        // floats).
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert_eq!(back.len(), lines.len());
        for (b, l) in back.iter().zip(&lines) {
            assert_eq!((&b.args, b.ok), (&l.args, l.ok));
            assert!(close(b.ms, l.ms), "{b:?} against {l:?}");
            assert!(b.phases.keys().eq(l.phases.keys()), "{b:?} against {l:?}");
            assert!(b
                .phases
                .values()
                .zip(l.phases.values())
                .all(|(x, y)| close(*x, *y)));
        }
        assert!(back[0].ok && !back[1].ok);
        assert!(back[0].phases["work"] >= 2.0, "{back:?}");
        assert!(back[0].phases.contains_key(REST), "{back:?}");
        // A line that is not one is an error, not a line skipped.
        std::fs::write(&path, "{\"ms\": 1}\n").unwrap();
        assert!(PhaseLine::read_all(&path).is_err());
    }
}
