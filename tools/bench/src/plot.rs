//! Hand-written SVG line plots of a scenario's series medians against `x`.
//!
//! Each driver becomes one polyline through the medians of its series that
//! carry an `x` (sorted by `x`), with a marker and a p10–p90 error bar at
//! every point. The output never contains `NaN` or `inf`.

use crate::samples::{stats, Run, Scenario, Unit};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Total SVG width in pixels.
pub const WIDTH: f64 = 720.0;
/// Total SVG height in pixels.
pub const HEIGHT: f64 = 440.0;

const PLOT_LEFT: f64 = 78.0;
const PLOT_RIGHT: f64 = 550.0;
const PLOT_TOP: f64 = 46.0;
const PLOT_BOTTOM: f64 = 378.0;
const LEGEND_LEFT: f64 = 562.0;
/// Inset of the x axis range from the frame so edge markers stay inside.
const X_INSET: f64 = 12.0;

const THIN_COLOR: &str = "#1f77b4";
const OVERLAY_COLOR: &str = "#ff7f0e";
const OTHER_COLORS: [&str; 5] = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];

/// One plotted point: x, median and the p10/p90 error bar.
#[derive(Clone, Copy, Debug)]
struct Point {
    x: f64,
    med: f64,
    lo: f64,
    hi: f64,
}

#[derive(Debug)]
struct Line<'a> {
    driver: &'a str,
    color: &'static str,
    points: Vec<Point>,
}

/// How tick labels are abbreviated.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Base {
    /// `1k`, `1M`, `1G` (powers of 1000).
    Si1000,
    /// `4K`, `1M`, `1G` (powers of 1024).
    Si1024,
}

impl Base {
    fn factor(self) -> f64 {
        match self {
            Base::Si1000 => 1000.0,
            Base::Si1024 => 1024.0,
        }
    }

    fn suffix(self, power: i32) -> &'static str {
        const S1000: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
        const S1024: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
        let i = power.clamp(0, 6) as usize;
        match self {
            Base::Si1000 => S1000[i],
            Base::Si1024 => S1024[i],
        }
    }

    /// Largest power p (0..=6) with base^p <= |v|.
    fn power_of(self, v: f64) -> i32 {
        let mut p = 0;
        let mut a = v.abs();
        while a >= self.factor() && p < 6 {
            a /= self.factor();
            p += 1;
        }
        p
    }
}

#[derive(Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    /// (value, label) of each tick, all within [lo, hi].
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// Position of `v` as a fraction of the axis length (0 at `lo`).
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        if f.is_finite() {
            f
        } else {
            0.0
        }
    }

    fn fallback(log: bool) -> Axis {
        if log {
            Axis {
                lo: 1.0,
                hi: 10.0,
                log,
                ticks: vec![(1.0, "1".into()), (10.0, "10".into())],
            }
        } else {
            Axis {
                lo: 0.0,
                hi: 1.0,
                log,
                ticks: vec![(0.0, "0".into()), (0.5, "0.5".into()), (1.0, "1".into())],
            }
        }
    }

    fn is_sane(&self) -> bool {
        self.lo.is_finite()
            && self.hi.is_finite()
            && self.hi > self.lo
            && (!self.log || self.lo > 0.0)
            && !self.ticks.is_empty()
            && self.ticks.iter().all(|(v, _)| v.is_finite())
    }
}

/// Trims trailing zeros (and a trailing dot) of a decimal number.
fn trim_decimal(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Compact label with up to 4 significant digits: `1`, `10`, `1k`, `1.5M`, `4K`, `0.01`.
fn compact(v: f64, base: Base) -> String {
    if v == 0.0 || !v.is_finite() {
        return "0".to_string();
    }
    let p = base.power_of(v);
    let m = v / base.factor().powi(p);
    let mag = m.abs().log10().floor() as i32;
    let decimals = (3 - mag).clamp(0, 20) as usize;
    format!(
        "{}{}",
        trim_decimal(format!("{:.*}", decimals, m)),
        base.suffix(p)
    )
}

/// 1, 2 or 5 times a power of ten, close to `span / target`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn linear_axis(values: &[f64], base: Base, include_zero: bool) -> Axis {
    let mut lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let scale = lo.abs().max(hi.abs());
    if hi - lo <= scale * 1e-9 {
        if scale == 0.0 {
            lo = if include_zero { 0.0 } else { -1.0 };
            hi = 1.0;
        } else {
            let pad = scale * 0.1;
            lo -= pad;
            hi += pad;
        }
    }
    let span = hi - lo;
    if !span.is_finite() || span <= 0.0 {
        return Axis::fallback(false);
    }
    let power = base.power_of(lo.abs().max(hi.abs()));
    let unit = base.factor().powi(power);
    let step = nice_step(span / unit, 6.0) * unit;
    let lo = (lo / step).floor() * step;
    let hi = (hi / step).ceil() * step;
    let count = ((hi - lo) / step).round();
    if !(count.is_finite() && (1.0..=100.0).contains(&count)) {
        return Axis::fallback(false);
    }
    let decimals = (-(step / unit).log10().floor()).clamp(0.0, 20.0) as usize;
    let ticks = (0..=count as usize)
        .map(|i| {
            let mut v = lo + i as f64 * step;
            if v.abs() < step * 1e-9 {
                v = 0.0;
            }
            let label = if v == 0.0 {
                "0".to_string()
            } else {
                format!(
                    "{}{}",
                    trim_decimal(format!("{:.*}", decimals, v / unit)),
                    base.suffix(power)
                )
            };
            (v, label)
        })
        .collect();
    Axis {
        lo,
        hi,
        log: false,
        ticks,
    }
}

fn log_axis(values: &[f64], base: Base) -> Axis {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !(min > 0.0 && max.is_finite()) {
        return Axis::fallback(true);
    }
    // Ticks at decades, or at powers of two for byte-like values.
    let (radix, max_exp, strides): (f64, i32, &[i32]) = match base {
        Base::Si1000 => (10.0, 307, &[1, 2, 3, 5, 10, 20, 50, 100]),
        Base::Si1024 => (2.0, 1022, &[1, 2, 5, 10, 20, 30, 50, 100, 200]),
    };
    let exp_of = |v: f64| v.ln() / radix.ln();
    // Tiny tolerance so exact powers are not pushed to the next exponent.
    let mut l = (exp_of(min) + 1e-9).floor() as i32;
    let mut h = (exp_of(max) - 1e-9).ceil() as i32;
    if h <= l {
        l -= 1;
        h += 1;
    }
    let l = l.clamp(-max_exp, max_exp - 1);
    let h = h.clamp(l + 1, max_exp);
    let stride = strides
        .iter()
        .copied()
        .find(|s| (h.div_euclid(*s) - (l + s - 1).div_euclid(*s)) < 10)
        .unwrap_or(1000);
    let first = (l + stride - 1).div_euclid(stride) * stride;
    // Short decade ranges also get 2× and 5× ticks (1, 2, 5, 10, 20, 50, 100).
    let multiples: &[f64] = if base == Base::Si1000 && h - l <= 2 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let hi = radix.powi(h);
    let ticks: Vec<(f64, String)> = (0..)
        .map(|i| first + i * stride)
        .take_while(|e| *e <= h)
        .flat_map(|e| multiples.iter().map(move |m| m * radix.powi(e)))
        .filter(|v| *v <= hi * (1.0 + 1e-9))
        .map(|v| (v, compact(v, base)))
        .collect();
    let axis = Axis {
        lo: radix.powi(l),
        hi,
        log: true,
        ticks,
    };
    if axis.is_sane() {
        axis
    } else {
        Axis::fallback(true)
    }
}

fn build_axis(values: &[f64], log: bool, base: Base, include_zero: bool) -> Axis {
    let axis = if log {
        log_axis(values, base)
    } else {
        linear_axis(values, base, include_zero)
    };
    if axis.is_sane() {
        axis
    } else {
        Axis::fallback(log)
    }
}

/// Escapes `<`, `&`, `>`, `"` and `'` for SVG text and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// A pixel coordinate with one decimal; never `NaN`/`inf`.
fn px(v: f64) -> String {
    let v = if v.is_finite() {
        v.clamp(-1e6, 1e6)
    } else {
        0.0
    };
    let s = format!("{:.1}", v);
    if s == "-0.0" {
        "0.0".to_string()
    } else {
        s
    }
}

/// Groups the scenario's series with a finite `x` and samples into one line
/// per driver (first-appearance order), points sorted by `x`.
fn collect_lines(scenario: &Scenario) -> Vec<Line<'_>> {
    let mut lines: Vec<Line<'_>> = Vec::new();
    let mut others = 0;
    for series in &scenario.series {
        let Some(x) = series.x.filter(|x| x.is_finite()) else {
            continue;
        };
        let Some(st) = stats(&series.samples).filter(|st| st.median.is_finite()) else {
            continue;
        };
        let finite_or = |v: f64| if v.is_finite() { v } else { st.median };
        let point = Point {
            x,
            med: st.median,
            lo: finite_or(st.p10).min(st.median),
            hi: finite_or(st.p90).max(st.median),
        };
        match lines.iter_mut().find(|l| l.driver == series.driver) {
            Some(line) => line.points.push(point),
            None => {
                let color = match series.driver.as_str() {
                    "thin" => THIN_COLOR,
                    "overlay" => OVERLAY_COLOR,
                    _ => {
                        others += 1;
                        OTHER_COLORS[(others - 1) % OTHER_COLORS.len()]
                    }
                };
                lines.push(Line {
                    driver: &series.driver,
                    color,
                    points: vec![point],
                });
            }
        }
    }
    for line in &mut lines {
        line.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    lines
}

/// Whether [`render`] would produce a plot: the scenario has a plot spec and
/// at least one series with a finite `x` and a usable sample.
pub fn has_points(scenario: &Scenario) -> bool {
    scenario.plot.is_some() && !collect_lines(scenario).is_empty()
}

/// Replaces values that cannot be shown on a log axis (≤ 0) by half the
/// smallest positive value seen (or 0.5 when there is none).
fn clamp_positive<'a>(values: impl Iterator<Item = &'a mut f64>) {
    let values: Vec<&mut f64> = values.collect();
    let min_pos = values
        .iter()
        .map(|v| **v)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = if min_pos.is_finite() {
        min_pos / 2.0
    } else {
        0.5
    };
    for v in values {
        if *v <= 0.0 {
            *v = floor;
        }
    }
}

fn is_bytes_like(xs: &[f64]) -> bool {
    !xs.is_empty()
        && xs.iter().all(|&x| {
            (1024.0..=9.2e18).contains(&x) && x.fract() == 0.0 && (x as u64).is_power_of_two()
        })
}

/// Renders the scenario's plot as a self-contained SVG document (ending in a
/// newline). `None` when the scenario has no plot spec or no series with `x`.
pub fn render(scenario: &Scenario) -> Option<String> {
    let spec = scenario.plot.as_ref()?;
    let mut lines = collect_lines(scenario);
    if lines.is_empty() {
        return None;
    }

    let raw_xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.x))
        .collect();
    let x_base = if is_bytes_like(&raw_xs) {
        Base::Si1024
    } else {
        Base::Si1000
    };
    let y_base = match scenario.unit {
        Unit::Bytes | Unit::BytesPerSec => Base::Si1024,
        _ => Base::Si1000,
    };
    if spec.log_x {
        clamp_positive(
            lines
                .iter_mut()
                .flat_map(|l| l.points.iter_mut().map(|p| &mut p.x)),
        );
    }
    if spec.log_y {
        clamp_positive(
            lines
                .iter_mut()
                .flat_map(|l| l.points.iter_mut())
                .flat_map(|p| [&mut p.med, &mut p.lo, &mut p.hi]),
        );
    }
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.x))
        .collect();
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().flat_map(|p| [p.med, p.lo, p.hi]))
        .collect();
    let x_axis = build_axis(&xs, spec.log_x, x_base, false);
    let y_axis = build_axis(&ys, spec.log_y, y_base, true);

    let to_px =
        |x: f64| PLOT_LEFT + X_INSET + x_axis.frac(x) * (PLOT_RIGHT - PLOT_LEFT - 2.0 * X_INSET);
    let to_py = |y: f64| PLOT_BOTTOM - y_axis.frac(y) * (PLOT_BOTTOM - PLOT_TOP);
    let mid_x = (PLOT_LEFT + PLOT_RIGHT) / 2.0;
    let mid_y = (PLOT_TOP + PLOT_BOTTOM) / 2.0;

    let mut svg = String::new();
    // Writing to a String cannot fail; results are ignored below.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#,
        w = WIDTH,
        h = HEIGHT
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"#,
        WIDTH, HEIGHT
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="26" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        px(mid_x),
        escape(&spec.title)
    );

    // Grid, ticks and tick labels.
    svg.push_str("<g class=\"x-axis\">\n");
    for (v, label) in &x_axis.ticks {
        let x = px(to_px(*v));
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{t}" x2="{x}" y2="{b}" stroke="#e6e6e6"/><line x1="{x}" y1="{b}" x2="{x}" y2="{b5}" stroke="#333"/><text x="{x}" y="{ty}" text-anchor="middle">{l}</text>"##,
            x = x,
            t = px(PLOT_TOP),
            b = px(PLOT_BOTTOM),
            b5 = px(PLOT_BOTTOM + 5.0),
            ty = px(PLOT_BOTTOM + 19.0),
            l = escape(label)
        );
    }
    svg.push_str("</g>\n<g class=\"y-axis\">\n");
    for (v, label) in &y_axis.ticks {
        let y = px(to_py(*v));
        let _ = writeln!(
            svg,
            r##"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}" stroke="#e6e6e6"/><line x1="{l5}" y1="{y}" x2="{l}" y2="{y}" stroke="#333"/><text x="{tx}" y="{ty}" text-anchor="end">{s}</text>"##,
            y = y,
            l = px(PLOT_LEFT),
            r = px(PLOT_RIGHT),
            l5 = px(PLOT_LEFT - 5.0),
            tx = px(PLOT_LEFT - 8.0),
            ty = px(to_py(*v) + 4.0),
            s = escape(label)
        );
    }
    svg.push_str("</g>\n");
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        px(PLOT_LEFT),
        px(PLOT_TOP),
        px(PLOT_RIGHT - PLOT_LEFT),
        px(PLOT_BOTTOM - PLOT_TOP)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>"#,
        px(mid_x),
        px(HEIGHT - 16.0),
        escape(&spec.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{y}" text-anchor="middle" font-size="13" transform="rotate(-90 20 {y})">{}</text>"#,
        escape(&spec.y_label),
        y = px(mid_y)
    );

    // Data.
    for line in &lines {
        let _ = writeln!(
            svg,
            r#"<g class="series" data-driver="{}" stroke="{c}" fill="{c}">"#,
            escape(line.driver),
            c = line.color
        );
        for p in &line.points {
            let (x, lo, hi) = (to_px(p.x), to_py(p.lo), to_py(p.hi));
            if (lo - hi).abs() >= 0.5 {
                let _ = writeln!(
                    svg,
                    r#"<path d="M{xl} {lo}H{xr}M{x} {lo}V{hi}M{xl} {hi}H{xr}" fill="none" stroke-width="1.2"/>"#,
                    x = px(x),
                    xl = px(x - 4.0),
                    xr = px(x + 4.0),
                    lo = px(lo),
                    hi = px(hi)
                );
            }
        }
        let points: Vec<String> = line
            .points
            .iter()
            .map(|p| format!("{},{}", px(to_px(p.x)), px(to_py(p.med))))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for p in &line.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{}" cy="{}" r="3.5"/>"#,
                px(to_px(p.x)),
                px(to_py(p.med))
            );
        }
        svg.push_str("</g>\n");
    }

    // Legend.
    let entry_h = 20.0;
    let _ = writeln!(
        svg,
        r##"<g class="legend"><rect x="{}" y="{}" width="{}" height="{}" fill="white" stroke="#999"/>"##,
        px(LEGEND_LEFT),
        px(PLOT_TOP),
        px(WIDTH - LEGEND_LEFT - 6.0),
        px(lines.len() as f64 * entry_h + 10.0)
    );
    for (i, line) in lines.iter().enumerate() {
        let y = PLOT_TOP + 15.0 + i as f64 * entry_h;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="2"/><circle cx="{}" cy="{y}" r="3.5" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            px(LEGEND_LEFT + 8.0),
            px(LEGEND_LEFT + 30.0),
            px(LEGEND_LEFT + 19.0),
            px(LEGEND_LEFT + 36.0),
            px(y + 4.0),
            escape(line.driver),
            y = px(y),
            c = line.color
        );
    }
    svg.push_str("</g>\n</svg>\n");
    Some(svg)
}

/// Writes every scenario's plot to `dir/<plot.file>` (creating directories)
/// and returns the paths written. Scenarios without a plot spec or without
/// plottable series are skipped. A `plot.file` that is absolute or contains
/// `..` is rejected with `InvalidInput`.
pub fn write_all(run: &Run, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for scenario in &run.scenarios {
        let Some(spec) = &scenario.plot else {
            continue;
        };
        let rel = Path::new(&spec.file);
        let plain = rel.components().count() > 0
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "scenario {}: plot file {:?} must be a relative path without ..",
                    scenario.id, spec.file
                ),
            ));
        }
        let Some(svg) = render(scenario) else {
            continue;
        };
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&path, svg)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{Environment, PlotSpec, Series};

    fn series(driver: &str, x: Option<f64>, samples: &[f64]) -> Series {
        Series {
            driver: driver.into(),
            variant: format!("{} {:?}", driver, x),
            x,
            samples: samples.to_vec(),
        }
    }

    fn scenario(log_x: bool, log_y: bool, series: Vec<Series>) -> Scenario {
        Scenario {
            id: "write".into(),
            number: 3,
            title: "Write".into(),
            description: String::new(),
            unit: Unit::Millis,
            series,
            ratios: vec![],
            plot: Some(PlotSpec {
                file: "write.svg".into(),
                title: "First write <cost> & \"copy-up\"".into(),
                x_label: "file size".into(),
                y_label: "time (ms)".into(),
                log_x,
                log_y,
            }),
            findings: vec![],
        }
    }

    fn sizes_scenario() -> Scenario {
        let sizes = [
            4096.0,
            65536.0,
            1048576.0,
            16777216.0,
            67108864.0,
            1073741824.0,
        ];
        let mut s = Vec::new();
        for (i, x) in sizes.iter().enumerate() {
            let t = (i + 1) as f64;
            s.push(series("thin", Some(*x), &[t, t * 1.1, t * 0.9]));
            s.push(series("overlay", Some(*x), &[t * 3.0, t * 3.3, t * 2.7]));
        }
        s.push(series("gnu-tar", None, &[5.0]));
        // Out of order on purpose.
        s.push(series("dmsetup", Some(1073741824.0), &[2.0]));
        s.push(series("dmsetup", Some(4096.0), &[1.0]));
        scenario(true, false, s)
    }

    fn assert_clean(svg: &str) {
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.ends_with("</svg>\n"), "{svg}");
        assert!(!svg.contains("NaN"), "{svg}");
        assert!(!svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        // Every tag opened is closed or self-closing, roughly.
        assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    }

    #[test]
    fn plain_svg_structure() {
        let svg = render(&sizes_scenario()).unwrap();
        assert_clean(&svg);
        assert!(svg.contains(r#"width="720" height="440""#));
        assert!(svg.contains(r#"font-family="sans-serif""#));
        assert!(svg.contains(r#"fill="white""#));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains(">thin</text>"));
        assert!(svg.contains(">overlay</text>"));
        assert!(svg.contains(">dmsetup</text>"));
        assert!(!svg.contains("gnu-tar"));
        assert!(svg.contains("#1f77b4") && svg.contains("#ff7f0e") && svg.contains("#2ca02c"));
        assert!(svg.contains(">file size</text>") && svg.contains(">time (ms)</text>"));
        assert!(svg.contains("First write &lt;cost&gt; &amp; &quot;copy-up&quot;"));
        assert_eq!(svg.matches("<circle").count(), 6 + 6 + 2 + 3);
    }

    #[test]
    fn plain_log_x_bytes_ticks() {
        let svg = render(&sizes_scenario()).unwrap();
        for label in ["4K", "64K", "1M", "64M", "1G"] {
            assert!(
                svg.contains(&format!(">{label}</text>")),
                "missing {label}: {svg}"
            );
        }
        assert!(!svg.contains(">1k</text>"));
    }

    #[test]
    fn plain_log_decade_ticks() {
        let s = scenario(
            true,
            true,
            vec![
                series("thin", Some(1.0), &[0.5]),
                series("thin", Some(1000.0), &[2000.0]),
                series("overlay", Some(10.0), &[3.0]),
            ],
        );
        let svg = render(&s).unwrap();
        assert_clean(&svg);
        for label in ["1", "10", "100", "1k", "0.1", "10k"] {
            assert!(
                svg.contains(&format!(">{label}</text>")),
                "missing {label}: {svg}"
            );
        }
    }

    #[test]
    fn plain_linear_ticks() {
        let axis = build_axis(&[0.0, 7.3], false, Base::Si1000, true);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0", "2", "4", "6", "8"]);
        let axis = build_axis(&[0.1, 0.3], false, Base::Si1000, false);
        assert!(axis.ticks.iter().any(|(_, l)| l == "0.2"));
        assert!(axis.ticks.iter().all(|(_, l)| l.len() <= 4), "{axis:?}");
        let axis = build_axis(&[0.0, 2.5e6], false, Base::Si1000, true);
        assert!(axis.ticks.iter().any(|(_, l)| l == "1M"), "{axis:?}");
        let axis = build_axis(&[0.0, 3.0 * 1048576.0], false, Base::Si1024, true);
        assert!(axis.ticks.iter().any(|(_, l)| l == "1M"), "{axis:?}");
        assert!(
            axis.ticks.iter().any(|(_, l)| l == "2.5M" || l == "2M"),
            "{axis:?}"
        );
    }

    #[test]
    fn plain_short_log_range_gets_2_5_ticks() {
        let axis = build_axis(&[1.0, 64.0], true, Base::Si1000, false);
        let labels: Vec<&str> = axis.ticks.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5", "10", "20", "50", "100"]);
    }

    #[test]
    fn plain_compact_labels() {
        assert_eq!(compact(1.0, Base::Si1000), "1");
        assert_eq!(compact(1000.0, Base::Si1000), "1k");
        assert_eq!(compact(1e6, Base::Si1000), "1M");
        assert_eq!(compact(1e9, Base::Si1000), "1G");
        assert_eq!(compact(0.01, Base::Si1000), "0.01");
        assert_eq!(compact(4096.0, Base::Si1024), "4K");
        assert_eq!(compact(67108864.0, Base::Si1024), "64M");
        assert_eq!(compact(1073741824.0, Base::Si1024), "1G");
    }

    #[test]
    fn plain_none_without_x() {
        let s = scenario(false, false, vec![series("thin", None, &[1.0])]);
        assert!(render(&s).is_none());
        assert!(!has_points(&s));
        let s = scenario(false, false, vec![series("thin", Some(1.0), &[])]);
        assert!(render(&s).is_none());
        let mut s = scenario(false, false, vec![series("thin", Some(1.0), &[1.0])]);
        assert!(has_points(&s));
        s.plot = None;
        assert!(render(&s).is_none());
    }

    #[test]
    fn plain_degenerate_inputs() {
        let cases = vec![
            // single point, every axis mode
            scenario(false, false, vec![series("thin", Some(3.0), &[7.0])]),
            scenario(true, true, vec![series("thin", Some(3.0), &[7.0])]),
            scenario(true, false, vec![series("thin", Some(4096.0), &[7.0])]),
            // all-equal values
            scenario(
                false,
                false,
                vec![
                    series("thin", Some(2.0), &[5.0, 5.0]),
                    series("thin", Some(2.0), &[5.0]),
                    series("overlay", Some(2.0), &[5.0]),
                ],
            ),
            scenario(
                false,
                true,
                vec![
                    series("thin", Some(1.0), &[0.0, 0.0]),
                    series("thin", Some(2.0), &[0.0]),
                ],
            ),
            // zeros and negatives on log axes
            scenario(
                true,
                true,
                vec![
                    series("thin", Some(0.0), &[0.0, 1.0]),
                    series("thin", Some(-4.0), &[-3.0]),
                    series("overlay", Some(8.0), &[100.0, 0.0, 200.0]),
                ],
            ),
            scenario(true, true, vec![series("thin", Some(0.0), &[0.0])]),
            // all zero on linear axes, NaN and infinite samples
            scenario(
                false,
                false,
                vec![
                    series("thin", Some(0.0), &[0.0, f64::NAN]),
                    series("overlay", Some(f64::INFINITY), &[1.0]),
                    series("overlay", Some(1.0), &[f64::INFINITY, 1.0, 2.0]),
                ],
            ),
            // extreme magnitudes
            scenario(
                false,
                false,
                vec![
                    series("thin", Some(-1e308), &[1e308]),
                    series("thin", Some(1e308), &[-1e308]),
                ],
            ),
            scenario(
                true,
                true,
                vec![series("thin", Some(1e-320), &[1e308, 1e-320])],
            ),
        ];
        for s in &cases {
            let svg = render(s).unwrap();
            assert_clean(&svg);
            let drivers = collect_lines(s).len();
            assert_eq!(svg.matches("<polyline").count(), drivers);
        }
    }

    #[test]
    fn plain_write_all() {
        let dir = std::env::temp_dir().join(format!("bench-report-plot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut no_x = scenario(false, false, vec![series("thin", None, &[1.0])]);
        no_x.plot.as_mut().unwrap().file = "nox.svg".into();
        let mut nested = sizes_scenario();
        nested.plot.as_mut().unwrap().file = "plots/sizes.svg".into();
        let mut run = Run {
            environment: Environment {
                kernel: "k".into(),
                cpus: 2,
                memory_bytes: 1,
                emulated: false,
                quick: true,
                started_unix: 0,
                duration_secs: 1.0,
                thinlayer_version: "v".into(),
                command: "c".into(),
                notes: vec![],
            },
            scenarios: vec![sizes_scenario(), no_x, nested],
        };
        let written = write_all(&run, &dir).unwrap();
        assert_eq!(
            written,
            vec![dir.join("write.svg"), dir.join("plots/sizes.svg")]
        );
        let text = fs::read_to_string(&written[0]).unwrap();
        assert_clean(&text);
        assert!(!dir.join("nox.svg").exists());

        run.scenarios[0].plot.as_mut().unwrap().file = "../escape.svg".into();
        let err = write_all(&run, &dir).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        fs::remove_dir_all(&dir).unwrap();
    }
}
