//! Line plots of a scenario's series medians against `x`, drawn with
//! plotters' SVG backend.
//!
//! Each driver becomes one line through the medians of its series that
//! carry an `x` (sorted by `x`), with a marker and a p10–p90 error bar at
//! every point, and an entry in a legend right of the plot. This module
//! keeps the data side: which points, which colours, which axis ranges and
//! how tick labels read (`4K`, `1M`, `0.2G`). plotters places the ticks and
//! writes the SVG; its text stays SVG `<text>` for the viewer to set, so no
//! font library is needed. The output starts with `<svg` and never contains
//! `NaN` or `inf`.

use crate::samples::{stats, PlotSpec, Run, Scenario, Unit};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Total SVG width in pixels.
pub const WIDTH: u32 = 720;
/// Total SVG height in pixels.
pub const HEIGHT: u32 = 440;

/// Width of the legend column right of the plot.
const LEGEND_WIDTH: u32 = 160;
/// Share of an axis' span left free at each end, so that markers and error
/// bars at the extremes sit inside the frame.
const PAD: f64 = 0.04;

const FONT: &str = "sans-serif";
// plotters' SVG backend writes `font-size` as the requested size / 1.24:
// these come out at 12, 13 and 16 px.
const TICK_FONT: f64 = 15.0;
const DESC_FONT: f64 = 16.0;
const TITLE_FONT: f64 = 20.0;

const THIN_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const OVERLAY_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const OTHER_COLORS: [RGBColor; 5] = [
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];
const AXIS_COLOR: RGBColor = RGBColor(0x33, 0x33, 0x33);
const GRID_COLOR: RGBColor = RGBColor(0xe6, 0xe6, 0xe6);
const MINOR_GRID_COLOR: RGBColor = RGBColor(0xf4, 0xf4, 0xf4);
const LEGEND_BORDER_COLOR: RGBColor = RGBColor(0x99, 0x99, 0x99);

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
    color: RGBColor,
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

    /// Radix of a log axis: octaves for byte-like values, decades otherwise.
    fn log_radix(self) -> f64 {
        match self {
            Base::Si1000 => 10.0,
            Base::Si1024 => 2.0,
        }
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

/// One axis as handed to plotters: its range in plotted units and how its
/// tick labels read. Which ticks there are is plotters' choice.
#[derive(Clone, Copy, Debug)]
struct Axis {
    /// Range in plotted units (data divided by `base` to the `power`).
    lo: f64,
    hi: f64,
    /// Radix of a log axis; `None` for a linear one.
    log_radix: Option<f64>,
    base: Base,
    /// Power of `base` that data are divided by on a linear axis, so that
    /// plotters' 1-2-5 steps fall on round `K`/`M`/`G` values (0 on log axes).
    power: i32,
}

impl Axis {
    /// The axis for `values`: a log one from the whole power of its radix
    /// at or below the smallest value to the one at or above the largest,
    /// or a linear one over the values (and 0 when `include_zero`), padded
    /// by [`PAD`] at each end. Values that fit no sane range (none finite,
    /// spans beyond `f64`) get 0..1 or 1..10.
    fn new(values: &[f64], log: bool, base: Base, include_zero: bool) -> Axis {
        let finite = || values.iter().copied().filter(|v| v.is_finite());
        let min = finite().fold(f64::INFINITY, f64::min);
        let max = finite().fold(f64::NEG_INFINITY, f64::max);
        let axis = if log {
            let radix = base.log_radix();
            let e_lo = min.log(radix).floor();
            let mut e_hi = max.log(radix).ceil();
            if e_hi <= e_lo {
                e_hi = e_lo + 1.0;
            }
            let pad = (e_hi - e_lo) * PAD;
            Axis {
                lo: radix.powf(e_lo - pad),
                hi: radix.powf(e_hi + pad),
                log_radix: Some(radix),
                base,
                power: 0,
            }
        } else {
            let (mut lo, mut hi) = (min, max);
            let largest = lo.abs().max(hi.abs());
            if include_zero {
                lo = lo.min(0.0);
                hi = hi.max(0.0);
            }
            if hi - lo <= largest * 1e-9 {
                if largest == 0.0 {
                    lo = if include_zero { 0.0 } else { -1.0 };
                    hi = 1.0;
                } else {
                    lo -= largest * 0.1;
                    hi += largest * 0.1;
                }
            }
            // A range that starts or ends at zero keeps it on the frame.
            let pad = (hi - lo) * PAD;
            if !(include_zero && lo == 0.0) {
                lo -= pad;
            }
            if !(include_zero && hi == 0.0) {
                hi += pad;
            }
            let power = base.power_of(largest);
            let unit = base.factor().powi(power);
            Axis {
                lo: lo / unit,
                hi: hi / unit,
                log_radix: None,
                base,
                power,
            }
        };
        if axis.is_sane() {
            axis
        } else {
            Axis::fallback(log, base)
        }
    }

    fn fallback(log: bool, base: Base) -> Axis {
        let (lo, hi) = if log { (1.0, 10.0) } else { (0.0, 1.0) };
        Axis {
            lo,
            hi,
            log_radix: log.then_some(10.0),
            base,
            power: 0,
        }
    }

    fn is_sane(&self) -> bool {
        self.lo.is_finite()
            && self.hi.is_finite()
            && (self.hi - self.lo).is_finite()
            && self.hi > self.lo
            && (self.log_radix.is_none() || self.lo > 0.0)
    }

    /// Where data value `v` is plotted. Only a value that got a fallback
    /// range can lie outside it; it is pinned to the nearer end, since
    /// plotters' pixel mapping overflows far outside.
    fn plotted(&self, v: f64) -> f64 {
        (v / self.base.factor().powi(self.power)).clamp(self.lo, self.hi)
    }

    /// The label of the tick at plotted value `v`.
    fn label(&self, v: f64) -> String {
        if self.log_radix.is_some() {
            return compact(v, self.base);
        }
        // Two decimals below the span's magnitude: enough for plotters'
        // steps (a tenth of it at finest), and float noise in a tick
        // value (0.6000000000000001) rounds away.
        let decimals = (2.0 - (self.hi - self.lo).log10().floor()).clamp(0.0, 20.0) as usize;
        let n = trim_decimal(format!("{v:.decimals$}"));
        if n == "0" || n == "-0" {
            "0".to_string()
        } else {
            format!("{n}{}", self.base.suffix(self.power))
        }
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

/// Renders the scenario's plot as a self-contained SVG document that starts
/// with `<svg` and ends in a newline. `Ok(None)` when the scenario has no
/// plot spec or no series with `x`; an error only if plotters fails to draw,
/// which it should not into a string.
pub fn render(scenario: &Scenario) -> io::Result<Option<String>> {
    let Some(spec) = scenario.plot.as_ref() else {
        return Ok(None);
    };
    let mut lines = collect_lines(scenario);
    if lines.is_empty() {
        return Ok(None);
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
    let x = Axis::new(&xs, spec.log_x, x_base, false);
    let y = Axis::new(&ys, spec.log_y, y_base, true);

    let mut svg = String::new();
    let plot = Plot {
        spec,
        lines: &lines,
        x,
        y,
    };
    // plotters' log and linear coordinates are different types.
    let (xr, yr) = (x.lo..x.hi, y.lo..y.hi);
    let drawn = match (x.log_radix, y.log_radix) {
        (None, None) => plot.draw(&mut svg, xr, yr),
        (Some(rx), None) => plot.draw(&mut svg, xr.log_scale().base(rx), yr),
        (None, Some(ry)) => plot.draw(&mut svg, xr, yr.log_scale().base(ry)),
        (Some(rx), Some(ry)) => {
            plot.draw(&mut svg, xr.log_scale().base(rx), yr.log_scale().base(ry))
        }
    };
    drawn.map_err(|e| io::Error::other(format!("drawing plot {}: {e}", spec.file)))?;
    Ok(Some(svg))
}

/// What one plot shows, ready for plotters.
struct Plot<'a> {
    spec: &'a PlotSpec,
    lines: &'a [Line<'a>],
    x: Axis,
    y: Axis,
}

impl Plot<'_> {
    /// Draws the plot as SVG into `svg`, on coordinates `xc` × `yc`.
    fn draw<X, Y>(&self, svg: &mut String, xc: X, yc: Y) -> Result<(), Box<dyn std::error::Error>>
    where
        X: AsRangedCoord<Value = f64>,
        Y: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let (x, y) = (self.x, self.y);
        let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (chart_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&chart_area)
            .caption(
                &self.spec.title,
                (FONT, TITLE_FONT).into_font().style(FontStyle::Bold),
            )
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(66)
            .build_cartesian_2d(xc, yc)?;

        let x_label = |v: &f64| x.label(*v);
        let y_label = |v: &f64| y.label(*v);
        chart
            .configure_mesh()
            .x_labels(10)
            .y_labels(8)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .x_desc(self.spec.x_label.as_str())
            .y_desc(self.spec.y_label.as_str())
            .label_style((FONT, TICK_FONT))
            .axis_desc_style((FONT, DESC_FONT))
            .axis_style(AXIS_COLOR)
            .bold_line_style(GRID_COLOR)
            .light_line_style(MINOR_GRID_COLOR)
            .max_light_lines(2)
            .draw()?;
        // plotters draws the left and bottom axes; close the frame.
        let frame = chart.plotting_area().strip_coord_spec();
        let (w, h) = frame.dim_in_pixel();
        frame.draw(&Rectangle::new(
            [(0, 0), (w as i32 - 1, h as i32 - 1)],
            AXIS_COLOR,
        ))?;

        for line in self.lines {
            let color = line.color;
            let medians = line
                .points
                .iter()
                .map(|p| (x.plotted(p.x), y.plotted(p.med)));
            chart.draw_series(LineSeries::new(medians, color.stroke_width(2)))?;
            chart.draw_series(line.points.iter().map(|p| {
                ErrorBar::new_vertical(
                    x.plotted(p.x),
                    y.plotted(p.lo),
                    y.plotted(p.med),
                    y.plotted(p.hi),
                    color.filled(),
                    8,
                )
            }))?;
        }

        let top = chart.plotting_area().get_pixel_range().1.start;
        self.draw_legend(&legend_area, top)?;
        root.present()?;
        Ok(())
    }

    /// The legend, in `area` right of the plot, its top at pixel row `top`:
    /// a line and marker in each driver's colour, and its name. plotters'
    /// own legend (`configure_series_labels`) is clipped to the plotting
    /// area, where it would hide data.
    fn draw_legend<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        top: i32,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        const ROW: i32 = 20;
        let (w, _) = area.dim_in_pixel();
        let bottom = top + 10 + ROW * self.lines.len() as i32;
        let outline = [(0, top), (w as i32 - 6, bottom)];
        area.draw(&Rectangle::new(outline, WHITE.filled()))?;
        area.draw(&Rectangle::new(outline, LEGEND_BORDER_COLOR))?;
        let name_style =
            TextStyle::from((FONT, TICK_FONT).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, line) in self.lines.iter().enumerate() {
            let y = top + 15 + ROW * i as i32;
            area.draw(&Rectangle::new(
                [(8, y - 1), (30, y + 1)],
                line.color.filled(),
            ))?;
            area.draw(&Circle::new((19, y), 4, line.color.filled()))?;
            area.draw(&Text::new(line.driver, (36, y), name_style.clone()))?;
        }
        Ok(())
    }
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
        let Some(svg) = render(scenario)? else {
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
            unit: None,
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

    fn svg_of(s: &Scenario) -> String {
        render(s).unwrap().unwrap()
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

    /// The value of attribute `name` in a tag's attribute text `tag`.
    fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
        let key = format!("{name}=\"");
        let start = if tag.starts_with(&key) {
            key.len()
        } else {
            tag.find(&format!(" {key}"))? + key.len() + 1
        };
        Some(&tag[start..start + tag[start..].find('"')?])
    }

    /// Every `<el …>` tag's attribute text, in document order.
    fn tags<'a>(svg: &'a str, el: &str) -> Vec<&'a str> {
        svg.split(&format!("<{el} "))
            .skip(1)
            .map(|t| &t[..t.find('>').unwrap()])
            .collect()
    }

    /// (text-anchor, x, content) of every `<text>`, content trimmed (plotters
    /// puts it on a line of its own) and unescaped.
    fn texts(svg: &str) -> Vec<(String, i32, String)> {
        svg.split("<text ")
            .skip(1)
            .map(|t| {
                let open = &t[..t.find('>').unwrap()];
                let body = &t[open.len() + 1..t.find("</text>").unwrap()];
                (
                    attr(open, "text-anchor").unwrap().to_string(),
                    attr(open, "x").unwrap().parse().unwrap(),
                    body.trim()
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&apos;", "'")
                        .replace("&amp;", "&"),
                )
            })
            .collect()
    }

    fn has_text(svg: &str, content: &str) -> bool {
        texts(svg).iter().any(|(_, _, c)| c == content)
    }

    /// Tick labels of the y axis (right-aligned, left of the plot).
    fn y_ticks(svg: &str) -> Vec<String> {
        texts(svg)
            .into_iter()
            .filter(|(anchor, _, _)| anchor == "end")
            .map(|(_, _, c)| c)
            .collect()
    }

    /// Tick labels of the x axis: centred text other than the title and
    /// the axis names.
    fn x_ticks(s: &Scenario, svg: &str) -> Vec<String> {
        let spec = s.plot.as_ref().unwrap();
        let names = [&spec.title, &spec.x_label, &spec.y_label];
        texts(svg)
            .into_iter()
            .filter(|(anchor, _, c)| anchor == "middle" && !names.contains(&c))
            .map(|(_, _, c)| c)
            .collect()
    }

    /// The data lines: polylines in a colour other than the axes', as
    /// (colour, pixel points).
    fn series_lines(svg: &str) -> Vec<(String, Vec<(i32, i32)>)> {
        let axis = format!(
            "#{:02X}{:02X}{:02X}",
            AXIS_COLOR.0, AXIS_COLOR.1, AXIS_COLOR.2
        );
        tags(svg, "polyline")
            .into_iter()
            .filter(|t| attr(t, "stroke") != Some(axis.as_str()))
            .map(|t| {
                let points = attr(t, "points")
                    .unwrap()
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect();
                (attr(t, "stroke").unwrap().to_string(), points)
            })
            .collect()
    }

    #[test]
    fn plain_svg_structure() {
        let svg = svg_of(&sizes_scenario());
        assert_clean(&svg);
        assert!(svg.contains(r#"width="720" height="440""#));
        assert!(svg.contains(r#"font-family="sans-serif""#));
        // A white background under everything.
        assert!(svg.contains(r##"width="720" height="440" opacity="1" fill="#FFFFFF""##));
        let lines = series_lines(&svg);
        assert_eq!(lines.len(), 3, "{lines:?}");
        // One line per driver through its points, left to right.
        let counts: Vec<usize> = lines.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(counts, [6, 6, 2]);
        for (_, points) in &lines {
            assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "{points:?}");
        }
        assert!(has_text(&svg, "thin"));
        assert!(has_text(&svg, "overlay"));
        assert!(has_text(&svg, "dmsetup"));
        assert!(!svg.contains("gnu-tar"));
        let lower = svg.to_lowercase();
        assert!(
            lower.contains("#1f77b4") && lower.contains("#ff7f0e") && lower.contains("#2ca02c")
        );
        assert!(has_text(&svg, "file size") && has_text(&svg, "time (ms)"));
        assert!(svg.contains("First write &lt;cost&gt; &amp; &quot;copy-up&quot;"));
        // A marker at every point and one in each legend entry.
        assert_eq!(svg.matches("<circle").count(), 6 + 6 + 2 + 3);
    }

    #[test]
    fn plain_legend_names_every_driver_right_of_the_plot() {
        let svg = svg_of(&sizes_scenario());
        let legend_left = (WIDTH - LEGEND_WIDTH) as i32;
        for driver in ["thin", "overlay", "dmsetup"] {
            let at: Vec<i32> = texts(&svg)
                .into_iter()
                .filter(|(_, _, c)| c == driver)
                .map(|(_, x, _)| x)
                .collect();
            assert_eq!(at.len(), 1, "{driver}: {svg}");
            assert!(at[0] > legend_left, "{driver} at x {}", at[0]);
        }
        // The frame, and every data line, ends left of the legend.
        for (_, points) in series_lines(&svg) {
            assert!(points.iter().all(|(x, _)| *x < legend_left), "{points:?}");
        }
    }

    #[test]
    fn plain_error_bars_span_p10_p90() {
        let samples: Vec<f64> = (1..=9).map(|i| i as f64 * 10.0).collect();
        let s = scenario(
            false,
            false,
            vec![
                series("thin", Some(1.0), &samples),
                series("thin", Some(2.0), &[50.0, 50.0]),
            ],
        );
        let st = stats(&samples).unwrap();
        assert!(st.p10 < st.median && st.median < st.p90);
        let svg = svg_of(&s);
        let thin = "#1F77B4";
        let circles: Vec<(i32, i32)> = tags(&svg, "circle")
            .into_iter()
            .filter(|t| attr(t, "fill") == Some(thin))
            .map(|t| {
                let n = |a| attr(t, a).unwrap().parse::<i32>().unwrap();
                (n("cx"), n("cy"))
            })
            .collect();
        // Vertical strokes of the bars: (x, top, bottom).
        let bars: Vec<(i32, i32, i32)> = tags(&svg, "line")
            .into_iter()
            .filter(|t| attr(t, "stroke") == Some(thin) && attr(t, "x1") == attr(t, "x2"))
            .map(|t| {
                let n = |a| attr(t, a).unwrap().parse::<i32>().unwrap();
                (n("x1"), n("y1").min(n("y2")), n("y1").max(n("y2")))
            })
            .collect();
        assert_eq!(bars.len(), 2, "{svg}");
        let (spread, flat) = (bars[0], bars[1]);
        let (cx, cy) = circles[0];
        assert_eq!(spread.0, cx);
        // Symmetric samples: the bar reaches as far above the median as below.
        assert!(spread.1 < cy && cy < spread.2, "{spread:?} {cy}");
        assert!(
            ((cy - spread.1) - (spread.2 - cy)).abs() <= 2,
            "{spread:?} {cy}"
        );
        // Equal samples: no spread to show.
        assert_eq!(flat.1, flat.2);
        assert_eq!(flat.1, circles[1].1);
    }

    #[test]
    fn plain_log_x_bytes_ticks() {
        let s = sizes_scenario();
        let svg = svg_of(&s);
        let ticks = x_ticks(&s, &svg);
        for label in ["4K", "64K", "1M", "64M", "1G"] {
            assert!(
                ticks.iter().any(|t| t == label),
                "missing {label}: {ticks:?}"
            );
        }
        assert!(!has_text(&svg, "1k"));
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
        let svg = svg_of(&s);
        assert_clean(&svg);
        for label in ["1", "10", "100", "1k", "0.1", "10k"] {
            assert!(has_text(&svg, label), "missing {label}: {svg}");
        }
        assert_eq!(x_ticks(&s, &svg), ["1", "10", "100", "1k"]);
        assert_eq!(y_ticks(&svg), ["0.1", "1", "10", "100", "1k", "10k"]);
    }

    #[test]
    fn plain_linear_ticks() {
        // Small values: whole, evenly spaced ticks from 0.
        let s = scenario(false, false, vec![series("thin", Some(1.0), &[0.0, 7.3])]);
        let ticks: Vec<f64> = y_ticks(&svg_of(&s))
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(ticks[0], 0.0, "{ticks:?}");
        assert!(*ticks.last().unwrap() >= 6.0, "{ticks:?}");
        let step = ticks[1] - ticks[0];
        assert!([1.0, 2.0].contains(&step), "{ticks:?}");
        assert!(ticks.windows(2).all(|w| w[1] - w[0] == step), "{ticks:?}");

        // Fractions on x read short.
        let s = scenario(
            false,
            false,
            vec![
                series("thin", Some(0.1), &[1.0]),
                series("thin", Some(0.3), &[1.0]),
            ],
        );
        let ticks = x_ticks(&s, &svg_of(&s));
        assert!(ticks.iter().any(|t| t == "0.2"), "{ticks:?}");
        assert!(ticks.iter().all(|t| t.len() <= 4), "{ticks:?}");

        // Large counts in powers of 1000, bytes in powers of 1024.
        let mut s = scenario(false, false, vec![series("thin", Some(1.0), &[2.5e6])]);
        s.unit = Unit::Count;
        let ticks = y_ticks(&svg_of(&s));
        assert!(ticks.iter().any(|t| t == "1M"), "{ticks:?}");
        let mut s = scenario(
            false,
            false,
            vec![series("thin", Some(1.0), &[3.0 * 1048576.0])],
        );
        s.unit = Unit::Bytes;
        let ticks = y_ticks(&svg_of(&s));
        assert!(ticks.iter().any(|t| t == "1M"), "{ticks:?}");
        assert!(ticks.iter().any(|t| t == "2.5M" || t == "2M"), "{ticks:?}");
    }

    #[test]
    fn plain_short_log_range_ticks() {
        let s = scenario(
            true,
            false,
            vec![
                series("thin", Some(1.0), &[1.0]),
                series("thin", Some(64.0), &[2.0]),
            ],
        );
        // The range widens to whole decades, each labelled.
        assert_eq!(x_ticks(&s, &svg_of(&s)), ["1", "10", "100"]);
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
        assert!(render(&s).unwrap().is_none());
        assert!(!has_points(&s));
        let s = scenario(false, false, vec![series("thin", Some(1.0), &[])]);
        assert!(render(&s).unwrap().is_none());
        let mut s = scenario(false, false, vec![series("thin", Some(1.0), &[1.0])]);
        assert!(has_points(&s));
        s.plot = None;
        assert!(render(&s).unwrap().is_none());
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
            let svg = svg_of(s);
            assert_clean(&svg);
            let drivers = collect_lines(s).len();
            assert_eq!(series_lines(&svg).len(), drivers);
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
                pool_block_bytes: Some(256 << 10),
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
