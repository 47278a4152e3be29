//! Raw benchmark data: the JSON schema written by the benchmark harness and
//! read back by the report and plot renderers, plus summary statistics.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// One complete benchmark run: where it ran and every scenario measured.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Run {
    /// The machine and invocation the run happened on.
    pub environment: Environment,
    /// Scenarios in report order.
    pub scenarios: Vec<Scenario>,
}

/// Description of the machine and invocation of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Environment {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Number of online CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// True when run in QEMU TCG: absolute times are meaningless, only ratios within the run.
    pub emulated: bool,
    /// True for a reduced ("quick") run.
    pub quick: bool,
    /// Start of the run, seconds since the Unix epoch (UTC).
    pub started_unix: u64,
    /// Wall-clock duration of the whole run in seconds.
    pub duration_secs: f64,
    /// Version of thinlayer that was measured.
    pub thinlayer_version: String,
    /// Command line that produced the run.
    pub command: String,
    /// Free-form remarks shown as a bullet list.
    #[serde(default)]
    pub notes: Vec<String>,
    /// The benchmark pool's block size in bytes, as its record says
    /// (absent from runs made before it was recorded).
    #[serde(default)]
    pub pool_block_bytes: Option<u64>,
}

/// The unit all samples of a scenario are expressed in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Milliseconds (`"millis"`).
    Millis,
    /// Microseconds (`"micros"`).
    Micros,
    /// Bytes (`"bytes"`).
    Bytes,
    /// Bytes per second (`"bytespersec"`; `"bytes_per_sec"` is accepted on input).
    #[serde(alias = "bytes_per_sec")]
    BytesPerSec,
    /// A plain count (`"count"`).
    Count,
}

/// One measured scenario (numbered as in the benchmark issue).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Short machine name, e.g. `"provision"`.
    pub id: String,
    /// Scenario number, 1..9.
    pub number: u32,
    /// Human title.
    pub title: String,
    /// Markdown paragraph: what is measured and how.
    pub description: String,
    /// Unit of every sample in this scenario.
    pub unit: Unit,
    /// Measured series; one table cell each.
    pub series: Vec<Series>,
    /// Derived ratios between series medians.
    #[serde(default)]
    pub ratios: Vec<Ratio>,
    /// Optional plot of the series that carry an `x`.
    #[serde(default)]
    pub plot: Option<PlotSpec>,
    /// Markdown sentences: what the numbers mean, why a target is missed.
    #[serde(default)]
    pub findings: Vec<String>,
}

/// Samples of one driver under one variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Series {
    /// Driver or tool, e.g. `"thin"`, `"overlay"`, `"dmsetup"`.
    pub driver: String,
    /// Row label, e.g. `"depth 16"`.
    pub variant: String,
    /// Numeric x position for plots (depth, file size in bytes, ...).
    #[serde(default)]
    pub x: Option<f64>,
    /// Raw samples in the scenario's unit, or in `unit` if set.
    pub samples: Vec<f64>,
    /// This series' own unit, where it is not the scenario's (CPU time
    /// beside a throughput).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
}

/// Names one series of a scenario by driver and variant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SeriesRef {
    /// Driver of the referenced series.
    pub driver: String,
    /// Variant of the referenced series.
    pub variant: String,
}

/// Ratio of the medians of two series of the same scenario.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Ratio {
    /// Display name, e.g. `"thin provisioning / dmsetup floor, depth 1"`.
    pub name: String,
    /// Series whose median is the numerator.
    pub numerator: SeriesRef,
    /// Series whose median is the denominator.
    pub denominator: SeriesRef,
    /// Optional target the ratio is checked against.
    #[serde(default)]
    pub target: Option<Target>,
    /// Shown in the report's headline table.
    #[serde(default)]
    pub headline: bool,
}

/// Comparison operator of a [`Target`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TargetOp {
    /// Met when the value is less than or equal to the target (`"le"`).
    Le,
    /// Met when the value is greater than or equal to the target (`"ge"`).
    Ge,
}

/// A goal for a ratio, e.g. "≤ 1.5".
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Target {
    /// How the value is compared.
    pub op: TargetOp,
    /// The bound.
    pub value: f64,
    /// Display text, e.g. `"≤ 1.5 (issue target)"`.
    pub text: String,
}

/// What to plot for a scenario and how.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PlotSpec {
    /// Output file name, relative to the report directory, e.g. `"provision.svg"`.
    pub file: String,
    /// Plot title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
}

/// Summary statistics of a sample set (NaN samples excluded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    /// Number of non-NaN samples.
    pub n: usize,
    /// 50th percentile.
    pub median: f64,
    /// 10th percentile.
    pub p10: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Percentile `p` (0..=1) of sorted, non-empty `sorted` by linear
/// interpolation between the closest ranks.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len() - 1;
    let rank = p.clamp(0.0, 1.0) * last as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (sorted[lo.min(last)], sorted[hi.min(last)]);
    if lo == hi || a == b {
        a
    } else {
        a + (b - a) * (rank - lo as f64)
    }
}

/// Summary statistics of `samples`; NaN samples are ignored.
/// Returns `None` when no non-NaN sample is left.
pub fn stats(samples: &[f64]) -> Option<Stats> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mean = sorted.iter().sum::<f64>() / n as f64;
    Some(Stats {
        n,
        median: percentile(&sorted, 0.5),
        p10: percentile(&sorted, 0.1),
        p90: percentile(&sorted, 0.9),
        min: sorted[0],
        max: sorted[n - 1],
        mean,
    })
}

fn invalid_data(path: &Path, err: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {}", path.display(), err),
    )
}

impl Run {
    /// Reads a run from a JSON file.
    pub fn read(path: impl AsRef<Path>) -> io::Result<Run> {
        let path = path.as_ref();
        let text = fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| invalid_data(path, e))
    }

    /// Writes the run as pretty JSON; the data goes to a temporary file in the
    /// same directory which is then renamed over `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let path = path.as_ref();
        let mut json = serde_json::to_string_pretty(self).map_err(|e| invalid_data(path, e))?;
        json.push('\n');
        let name = path
            .file_name()
            .ok_or_else(|| invalid_data(path, "not a file path"))?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{}.tmp-{}", name, std::process::id()));
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(json.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Scenario {
    /// The first series with this driver and variant.
    pub fn series(&self, driver: &str, variant: &str) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.driver == driver && s.variant == variant)
    }

    fn series_ref(&self, r: &SeriesRef) -> Option<&Series> {
        self.series(&r.driver, &r.variant)
    }
}

impl Series {
    /// Summary statistics of this series' samples.
    pub fn stats(&self) -> Option<Stats> {
        stats(&self.samples)
    }
}

impl Ratio {
    /// median(numerator) / median(denominator); `None` if either series is
    /// missing or has no samples, the denominator median is 0, or the result
    /// is not finite.
    pub fn value(&self, scenario: &Scenario) -> Option<f64> {
        let num = scenario.series_ref(&self.numerator)?.stats()?.median;
        let den = scenario.series_ref(&self.denominator)?.stats()?.median;
        if den == 0.0 {
            return None;
        }
        let v = num / den;
        v.is_finite().then_some(v)
    }
}

impl Target {
    /// Whether `v` satisfies the target (false for NaN).
    pub fn met(&self, v: f64) -> bool {
        match self.op {
            TargetOp::Le => v <= self.value,
            TargetOp::Ge => v >= self.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_run() -> Run {
        Run {
            environment: Environment {
                kernel: "6.1.0-test".into(),
                cpus: 2,
                memory_bytes: 24 << 30,
                emulated: true,
                quick: false,
                started_unix: 1_700_000_000,
                duration_secs: 123.5,
                thinlayer_version: "0.1.0".into(),
                command: "thinlayer bench --out x".into(),
                notes: vec!["a note".into()],
                pool_block_bytes: Some(256 << 10),
            },
            scenarios: vec![Scenario {
                id: "provision".into(),
                number: 1,
                title: "Provisioning".into(),
                description: "Time to provision.".into(),
                unit: Unit::BytesPerSec,
                series: vec![
                    Series {
                        driver: "thin".into(),
                        variant: "depth 1".into(),
                        x: Some(1.0),
                        samples: vec![3.0, 1.0, 2.0],
                        unit: None,
                    },
                    Series {
                        driver: "dmsetup".into(),
                        variant: "depth 1".into(),
                        x: None,
                        samples: vec![2.0, 2.0],
                        unit: None,
                    },
                ],
                ratios: vec![Ratio {
                    name: "thin / dmsetup".into(),
                    numerator: SeriesRef {
                        driver: "thin".into(),
                        variant: "depth 1".into(),
                    },
                    denominator: SeriesRef {
                        driver: "dmsetup".into(),
                        variant: "depth 1".into(),
                    },
                    target: Some(Target {
                        op: TargetOp::Le,
                        value: 1.5,
                        text: "≤ 1.5".into(),
                    }),
                    headline: true,
                }],
                plot: Some(PlotSpec {
                    file: "provision.svg".into(),
                    title: "Provisioning".into(),
                    x_label: "depth".into(),
                    y_label: "ms".into(),
                    log_x: true,
                    log_y: false,
                }),
                findings: vec!["Fine.".into()],
            }],
        }
    }

    #[test]
    fn plain_stats_odd_count() {
        let s = stats(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.n, 5);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert_eq!(s.mean, 3.0);
        // rank 0.4 between 1 and 2; rank 3.6 between 4 and 5
        assert!((s.p10 - 1.4).abs() < 1e-12);
        assert!((s.p90 - 4.6).abs() < 1e-12);
    }

    #[test]
    fn plain_stats_even_count() {
        let s = stats(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.n, 4);
        assert_eq!(s.median, 2.5);
        assert!((s.p10 - 1.3).abs() < 1e-12);
        assert!((s.p90 - 3.7).abs() < 1e-12);
        assert_eq!(s.mean, 2.5);
    }

    #[test]
    fn plain_stats_percentiles_eleven() {
        let v: Vec<f64> = (0..=10).rev().map(f64::from).collect();
        let s = stats(&v).unwrap();
        assert_eq!(s.p10, 1.0);
        assert_eq!(s.median, 5.0);
        assert_eq!(s.p90, 9.0);
    }

    #[test]
    fn plain_stats_single_and_empty() {
        let s = stats(&[7.0]).unwrap();
        assert_eq!((s.n, s.median, s.p10, s.p90), (1, 7.0, 7.0, 7.0));
        assert_eq!(stats(&[]), None);
        assert_eq!(stats(&[f64::NAN, f64::NAN]), None);
    }

    #[test]
    fn plain_stats_nan_ignored() {
        let s = stats(&[f64::NAN, 1.0, 3.0, f64::NAN, 2.0]).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.median, 2.0);
        assert_eq!(s.mean, 2.0);
        assert_eq!(s.max, 3.0);
    }

    #[test]
    fn plain_json_round_trip() {
        let run = sample_run();
        let json = serde_json::to_string_pretty(&run).unwrap();
        assert!(json.contains("\"bytespersec\""));
        assert!(json.contains("\"le\""));
        let back: Run = serde_json::from_str(&json).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn plain_json_defaults_and_aliases() {
        let json = r#"{
            "environment": {"kernel": "k", "cpus": 1, "memory_bytes": 1, "emulated": false,
                "quick": true, "started_unix": 0, "duration_secs": 1.0,
                "thinlayer_version": "v", "command": "c"},
            "scenarios": [{"id": "a", "number": 1, "title": "t", "description": "d",
                "unit": "bytes_per_sec",
                "series": [{"driver": "thin", "variant": "v", "samples": [1.0]}]}]
        }"#;
        let run: Run = serde_json::from_str(json).unwrap();
        assert!(run.environment.notes.is_empty());
        let sc = &run.scenarios[0];
        assert_eq!(sc.unit, Unit::BytesPerSec);
        assert!(sc.ratios.is_empty() && sc.plot.is_none() && sc.findings.is_empty());
        assert_eq!(sc.series[0].x, None);
    }

    #[test]
    fn plain_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("bench-report-samples-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.json");
        let run = sample_run();
        run.write(&path).unwrap();
        assert_eq!(Run::read(&path).unwrap(), run);
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary file left behind");
        fs::write(&path, "{").unwrap();
        let err = Run::read(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_ratio_value() {
        let run = sample_run();
        let sc = &run.scenarios[0];
        let r = &sc.ratios[0];
        assert_eq!(r.value(sc), Some(1.0));
        assert!(sc.series("thin", "depth 1").is_some());
        assert!(sc.series("thin", "depth 2").is_none());

        let mut missing = r.clone();
        missing.denominator.variant = "nope".into();
        assert_eq!(missing.value(sc), None);

        let mut zero = sc.clone();
        zero.series[1].samples = vec![0.0, 0.0];
        assert_eq!(r.value(&zero), None);

        let mut empty = sc.clone();
        empty.series[0].samples.clear();
        assert_eq!(r.value(&empty), None);
    }

    #[test]
    fn plain_target_met() {
        let le = Target {
            op: TargetOp::Le,
            value: 1.5,
            text: String::new(),
        };
        assert!(le.met(1.5) && le.met(0.1));
        assert!(!le.met(1.51) && !le.met(f64::NAN));
        let ge = Target {
            op: TargetOp::Ge,
            value: 2.0,
            text: String::new(),
        };
        assert!(ge.met(2.0) && ge.met(10.0));
        assert!(!ge.met(1.99) && !ge.met(f64::NAN));
    }
}
