//! Markdown rendering of a benchmark [`Run`](crate::samples::Run).
//!
//! The output is deterministic: it depends only on the run's contents and
//! their order, never on hash-map iteration order or the current time.

use crate::samples::{stats, Environment, Ratio, Run, Scenario, Stats, Unit};
use crate::scenarios::size_label;

/// Sentence shown when the run happened under emulation.
pub const EMULATION_NOTE: &str =
    "Timings under emulation (QEMU TCG) are comparable only as ratios within this run.";

/// Placeholder for a missing value.
const MISSING: &str = "–";

/// Renders the complete Markdown report of `run` (ends with one newline).
pub fn render(run: &Run) -> String {
    let mut blocks: Vec<String> = vec!["# thinlayer benchmark report".to_string()];
    render_environment(&run.environment, &mut blocks);
    render_headline(run, &mut blocks);
    let mut last = None;
    for scenario in &run.scenarios {
        render_scenario(scenario, last == Some(scenario.number), &mut blocks);
        last = Some(scenario.number);
    }
    let mut out = blocks.join("\n\n");
    out.push('\n');
    out
}

fn render_environment(env: &Environment, blocks: &mut Vec<String>) {
    blocks.push("## Environment".to_string());
    let command = if env.command.contains('`') {
        format!("`` {} ``", env.command)
    } else {
        format!("`{}`", env.command)
    };
    let rows: Vec<(&str, String)> = vec![
        ("Kernel", env.kernel.clone()),
        ("CPUs", env.cpus.to_string()),
        (
            "Memory",
            format!("{:.1} GiB", env.memory_bytes as f64 / (1u64 << 30) as f64),
        ),
        (
            "Emulated",
            if env.emulated {
                "yes (QEMU TCG)".to_string()
            } else {
                "no".to_string()
            },
        ),
        ("Mode", if env.quick { "quick" } else { "full" }.to_string()),
        (
            "Pool block size",
            env.pool_block_bytes
                .map_or("not recorded".to_string(), size_label),
        ),
        ("Duration", format_duration(env.duration_secs)),
        ("Command", command),
        ("thinlayer version", env.thinlayer_version.clone()),
        ("Date (UTC)", format_utc(env.started_unix)),
    ];
    let mut table = String::from("| Property | Value |\n| --- | --- |");
    for (key, value) in rows {
        table.push_str(&format!("\n| {} | {} |", key, escape_cell(&value)));
    }
    blocks.push(table);
    if env.emulated {
        blocks.push(format!("> **Note:** {}", EMULATION_NOTE));
    }
    if !env.notes.is_empty() {
        let list: Vec<String> = env
            .notes
            .iter()
            .map(|n| format!("- {}", one_line(n)))
            .collect();
        blocks.push(format!("Notes:\n\n{}", list.join("\n")));
    }
}

fn render_headline(run: &Run, blocks: &mut Vec<String>) {
    blocks.push("## Headline".to_string());
    let mut table = String::from(
        "| Scenario | Ratio | Value | Target | Met |\n| --- | --- | ---: | --- | :---: |",
    );
    let mut any = false;
    for scenario in &run.scenarios {
        for ratio in scenario.ratios.iter().filter(|r| r.headline) {
            any = true;
            let value = ratio.value(scenario);
            let (target, met) = match &ratio.target {
                None => (MISSING.to_string(), MISSING),
                Some(t) => (
                    t.text.clone(),
                    match value {
                        Some(v) if t.met(v) => "✅",
                        Some(_) => "❌",
                        None => MISSING,
                    },
                ),
            };
            table.push_str(&format!(
                "\n| {} | {} | {} | {} | {} |",
                escape_cell(&format!("{}. {}", scenario.number, scenario.title)),
                escape_cell(&ratio.name),
                value.map_or_else(|| MISSING.to_string(), format_sig3),
                escape_cell(&target),
                met
            ));
        }
    }
    if any {
        blocks.push(table);
    } else {
        blocks.push("_No headline ratios._".to_string());
    }
}

/// Pushes `item` unless an equal one is already present (keeps first-appearance order).
fn push_unique<'a>(list: &mut Vec<&'a str>, item: &'a str) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Renders one scenario. One that `continues` the one before (the same
/// number: scenario 7's container, then deleting it) is a part of it, under
/// a heading of its own below the number's.
fn render_scenario(scenario: &Scenario, continues: bool, blocks: &mut Vec<String>) {
    blocks.push(match continues {
        false => format!("## {}. {}", scenario.number, one_line(&scenario.title)),
        true => format!("### {}", one_line(&scenario.title)),
    });
    if !scenario.description.trim().is_empty() {
        blocks.push(scenario.description.trim().to_string());
    }

    let mut variants: Vec<&str> = Vec::new();
    let mut drivers: Vec<&str> = Vec::new();
    for s in &scenario.series {
        push_unique(&mut variants, &s.variant);
        push_unique(&mut drivers, &s.driver);
    }
    if variants.is_empty() {
        blocks.push("_No samples recorded._".to_string());
    } else {
        let mut table = String::from("| Variant |");
        for d in &drivers {
            table.push_str(&format!(" {} |", escape_cell(d)));
        }
        table.push_str("\n| --- |");
        for _ in &drivers {
            table.push_str(" ---: |");
        }
        for v in &variants {
            table.push_str(&format!("\n| {} |", escape_cell(v)));
            for d in &drivers {
                let cell = scenario
                    .series(d, v)
                    .and_then(|s| Some((s.unit.unwrap_or(scenario.unit), stats(&s.samples)?)))
                    .map_or_else(|| MISSING.to_string(), |(unit, st)| format_cell(unit, &st));
                table.push_str(&format!(" {} |", escape_cell(&cell)));
            }
        }
        blocks.push(table);
    }

    if !scenario.ratios.is_empty() {
        let list: Vec<String> = scenario
            .ratios
            .iter()
            .map(|r| ratio_bullet(r, scenario))
            .collect();
        blocks.push(list.join("\n"));
    }

    // Only link plots that plot::write_all actually writes.
    if let Some(plot) = scenario
        .plot
        .as_ref()
        .filter(|_| crate::plot::has_points(scenario))
    {
        let alt = one_line(&plot.title)
            .replace('[', "\\[")
            .replace(']', "\\]");
        let file = if plot.file.contains([' ', '(', ')']) {
            format!("<{}>", plot.file)
        } else {
            plot.file.clone()
        };
        blocks.push(format!("![{}]({})", alt, file));
    }

    for finding in &scenario.findings {
        if !finding.trim().is_empty() {
            blocks.push(finding.trim().to_string());
        }
    }
}

fn ratio_bullet(ratio: &Ratio, scenario: &Scenario) -> String {
    let value = ratio.value(scenario);
    let mut line = format!(
        "- {}: {}",
        one_line(&ratio.name),
        value.map_or_else(|| MISSING.to_string(), format_sig3)
    );
    if let Some(t) = &ratio.target {
        let verdict = match value {
            Some(v) if t.met(v) => "met",
            Some(_) => "missed",
            None => MISSING,
        };
        line.push_str(&format!(" ({}: {})", one_line(&t.text), verdict));
    }
    line
}

/// Collapses line breaks so the text stays on one Markdown line.
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Makes `s` safe inside a Markdown table cell: one line, `|` escaped.
pub fn escape_cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

/// Formats `v` with `sig` significant digits (integers of more digits keep all
/// of them, e.g. `1234`); `–` for non-finite values.
pub fn format_sig(v: f64, sig: i32) -> String {
    if !v.is_finite() {
        return MISSING.to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let mag = v.abs().log10().floor() as i32;
    let decimals = (sig - 1 - mag).max(0) as usize;
    let s = format!("{:.*}", decimals, v);
    // Rounding may carry into the next power of ten (9.996 -> 10.00).
    match s.parse::<f64>() {
        Ok(r) if r != 0.0 && (r.abs().log10().floor() as i32) > mag => {
            format!("{:.*}", (sig - 2 - mag).max(0) as usize, v)
        }
        _ => s,
    }
}

/// Formats `v` with 3 significant digits: `0.0123`, `1.42`, `12.3`, `123`.
pub fn format_sig3(v: f64) -> String {
    format_sig(v, 3)
}

fn trim_decimal(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn format_time(v: f64, mut idx: usize) -> String {
    const UNITS: [&str; 4] = ["ns", "µs", "ms", "s"];
    if v == 0.0 {
        return format!("0 {}", UNITS[idx]);
    }
    let mut x = v;
    while x.abs() >= 9999.5 && idx + 1 < UNITS.len() {
        x /= 1000.0;
        idx += 1;
    }
    while x.abs() < 1.0 && idx > 0 {
        x *= 1000.0;
        idx -= 1;
    }
    format!("{} {}", format_sig3(x), UNITS[idx])
}

fn format_bytes(v: f64, suffix: &str) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if v.abs() < 1023.5 {
        return format!("{} B{}", v.round() as i64, suffix);
    }
    let mut x = v / 1024.0;
    let mut idx = 0;
    while x.abs() >= 1023.95 && idx + 1 < UNITS.len() {
        x /= 1024.0;
        idx += 1;
    }
    format!("{:.1} {}{}", x, UNITS[idx], suffix)
}

/// Formats one value in `unit`: `12.3 ms`, `500 µs`, `12.0 s`, `1.5 KiB`,
/// `3.0 MiB/s`, `42`. Time units switch up at ≥ 10000 and down below 1.
pub fn format_value(unit: Unit, v: f64) -> String {
    if !v.is_finite() {
        return MISSING.to_string();
    }
    match unit {
        Unit::Millis => format_time(v, 2),
        Unit::Micros => format_time(v, 1),
        Unit::Bytes => format_bytes(v, ""),
        Unit::BytesPerSec => format_bytes(v, "/s"),
        Unit::Count => {
            if v.fract() == 0.0 && v.abs() < 1e15 {
                format!("{}", v as i64)
            } else {
                trim_decimal(format_sig3(v))
            }
        }
    }
}

/// Formats a table cell as `median (p10–p90)`, or just the median when all
/// samples are equal (or the percentiles would print identically).
pub fn format_cell(unit: Unit, st: &Stats) -> String {
    let median = format_value(unit, st.median);
    let p10 = format_value(unit, st.p10);
    let p90 = format_value(unit, st.p90);
    if st.min == st.max || (p10 == median && p90 == median) {
        median
    } else {
        format!("{} ({}–{})", median, p10, p90)
    }
}

fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return MISSING.to_string();
    }
    if secs < 60.0 {
        return format!("{:.1} s", secs);
    }
    let total = secs.round() as u64;
    let (h, m, s) = (total / 3600, (total / 60) % 60, total % 60);
    if h > 0 {
        format!("{} h {} min {} s", h, m, s)
    } else {
        format!("{} min {} s", m, s)
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year,
    // then split into 400-year eras of 146097 days each.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats a Unix timestamp as UTC `YYYY-MM-DD HH:MM`.
pub fn format_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        y,
        m,
        d,
        rem / 3600,
        (rem / 60) % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::{PlotSpec, Series, SeriesRef, Target, TargetOp};

    fn series(driver: &str, variant: &str, samples: &[f64]) -> Series {
        Series {
            driver: driver.into(),
            variant: variant.into(),
            x: None,
            samples: samples.to_vec(),
            unit: None,
        }
    }

    fn sref(driver: &str, variant: &str) -> SeriesRef {
        SeriesRef {
            driver: driver.into(),
            variant: variant.into(),
        }
    }

    fn two_scenario_run() -> Run {
        Run {
            environment: Environment {
                kernel: "6.1.0-18-amd64".into(),
                cpus: 2,
                memory_bytes: 24 << 30,
                emulated: true,
                quick: true,
                started_unix: 1_700_000_000,
                duration_secs: 3725.0,
                thinlayer_version: "0.3.0".into(),
                command: "thinlayer bench --quick | tee".into(),
                notes: vec!["loop devices backed by tmpfs".into()],
                pool_block_bytes: Some(256 << 10),
            },
            scenarios: vec![
                Scenario {
                    id: "provision".into(),
                    number: 1,
                    title: "Provisioning".into(),
                    description: "Time to create a writable layer.".into(),
                    unit: Unit::Millis,
                    series: vec![
                        Series {
                            x: Some(1.0),
                            ..series("thin", "depth 1", &[10.0, 12.0, 14.0])
                        },
                        series("overlay", "depth 1", &[20.0, 24.0, 28.0]),
                        series("thin", "depth a|b", &[0.5, 0.5]),
                        series("dmsetup", "depth 1", &[8.0]),
                    ],
                    ratios: vec![
                        Ratio {
                            name: "thin / overlay, depth 1".into(),
                            numerator: sref("thin", "depth 1"),
                            denominator: sref("overlay", "depth 1"),
                            target: Some(Target {
                                op: TargetOp::Le,
                                value: 1.5,
                                text: "≤ 1.5 (issue target)".into(),
                            }),
                            headline: true,
                        },
                        Ratio {
                            name: "thin / dmsetup floor".into(),
                            numerator: sref("thin", "depth 1"),
                            denominator: sref("dmsetup", "depth 1"),
                            target: Some(Target {
                                op: TargetOp::Le,
                                value: 1.2,
                                text: "≤ 1.2".into(),
                            }),
                            headline: false,
                        },
                    ],
                    plot: Some(PlotSpec {
                        file: "provision.svg".into(),
                        title: "Provisioning time".into(),
                        x_label: "depth".into(),
                        y_label: "ms".into(),
                        log_x: false,
                        log_y: false,
                    }),
                    findings: vec!["Thin is faster.".into(), "Second paragraph.".into()],
                },
                Scenario {
                    id: "space".into(),
                    number: 2,
                    title: "Space".into(),
                    description: "Bytes used.".into(),
                    unit: Unit::Bytes,
                    series: vec![
                        series("thin", "1 MiB file", &[1536.0, 1536.0]),
                        series("overlay", "1 MiB file", &[1_048_576.0]),
                    ],
                    ratios: vec![Ratio {
                        name: "overlay / thin".into(),
                        numerator: sref("overlay", "1 MiB file"),
                        denominator: sref("thin", "1 MiB file"),
                        target: None,
                        headline: true,
                    }],
                    plot: None,
                    findings: vec![],
                },
            ],
        }
    }

    #[test]
    fn plain_renders_two_scenarios() {
        let md = render(&two_scenario_run());
        assert!(md.starts_with("# thinlayer benchmark report\n"));
        assert!(md.ends_with('\n') && !md.ends_with("\n\n"));
        assert!(md.contains("| Kernel | 6.1.0-18-amd64 |"));
        assert!(md.contains("| Memory | 24.0 GiB |"));
        assert!(md.contains("| Mode | quick |"));
        assert!(md.contains("| Duration | 1 h 2 min 5 s |"));
        assert!(md.contains("| Date (UTC) | 2023-11-14 22:13 |"));
        assert!(md.contains(EMULATION_NOTE));
        assert!(md.contains("- loop devices backed by tmpfs"));
        assert!(md.contains("\n## 1. Provisioning\n\nTime to create a writable layer.\n"));
        assert!(md.contains("\n## 2. Space\n\nBytes used.\n"));
        assert!(md.contains("| Variant | thin | overlay | dmsetup |"));
        assert!(md.contains(
            "| depth 1 | 12.0 ms (10.4 ms–13.6 ms) | 24.0 ms (20.8 ms–27.2 ms) | 8.00 ms |"
        ));
        assert!(md.contains("- thin / overlay, depth 1: 0.500 (≤ 1.5 (issue target): met)"));
        assert!(md.contains("- thin / dmsetup floor: 1.50 (≤ 1.2: missed)"));
        assert!(md.contains("![Provisioning time](provision.svg)"));
        assert!(md.contains("\n\nThin is faster.\n\nSecond paragraph.\n"));
        assert!(md.contains("| 1 MiB file | 1.5 KiB | 1.0 MiB |"));
        assert!(md.find("## 1.").unwrap() < md.find("## 2.").unwrap());
        assert!(md.find("## Headline").unwrap() < md.find("## 1.").unwrap());
    }

    #[test]
    fn plain_a_scenario_with_the_number_of_the_one_before_is_a_part_of_it() {
        let mut run = two_scenario_run();
        run.scenarios[1].number = 1;
        let md = render(&run);
        assert!(md.contains("\n## 1. Provisioning\n"));
        assert!(md.contains("\n### Space\n\nBytes used.\n"), "{md}");
        assert_eq!(md.matches("\n## 1.").count(), 1, "{md}");
    }

    #[test]
    fn plain_plot_link_only_with_points() {
        let mut run = two_scenario_run();
        run.scenarios[0].series[0].x = None;
        assert!(!render(&run).contains("provision.svg"));
    }

    #[test]
    fn plain_not_emulated_has_no_note() {
        let mut run = two_scenario_run();
        run.environment.emulated = false;
        run.environment.quick = false;
        let md = render(&run);
        assert!(!md.contains(EMULATION_NOTE));
        assert!(md.contains("| Emulated | no |"));
        assert!(md.contains("| Mode | full |"));
    }

    #[test]
    fn plain_headline_table() {
        let md = render(&two_scenario_run());
        assert!(md.contains("| Scenario | Ratio | Value | Target | Met |"));
        assert!(md.contains(
            "| 1. Provisioning | thin / overlay, depth 1 | 0.500 | ≤ 1.5 (issue target) | ✅ |"
        ));
        assert!(md.contains("| 2. Space | overlay / thin | 683 | – | – |"));
        assert!(!md.contains("| thin / dmsetup floor |"));
        let mut run = two_scenario_run();
        run.scenarios[0].ratios[0].target.as_mut().unwrap().value = 0.1;
        assert!(render(&run).contains("| 0.500 | ≤ 1.5 (issue target) | ❌ |"));
        for s in &mut run.scenarios {
            s.ratios.clear();
        }
        assert!(render(&run).contains("_No headline ratios._"));
    }

    #[test]
    fn plain_cell_formatting_per_unit() {
        assert_eq!(format_value(Unit::Millis, 0.5), "500 µs");
        assert_eq!(format_value(Unit::Millis, 12000.0), "12.0 s");
        assert_eq!(format_value(Unit::Millis, 12.34), "12.3 ms");
        assert_eq!(format_value(Unit::Millis, 5000.0), "5000 ms");
        assert_eq!(format_value(Unit::Millis, 0.0), "0 ms");
        assert_eq!(format_value(Unit::Micros, 0.25), "250 ns");
        assert_eq!(format_value(Unit::Micros, 20000.0), "20.0 ms");
        assert_eq!(format_value(Unit::Micros, 42.0), "42.0 µs");
        assert_eq!(format_value(Unit::Micros, 2e7), "20.0 s");
        assert_eq!(format_value(Unit::Bytes, 1536.0), "1.5 KiB");
        assert_eq!(format_value(Unit::Bytes, 512.0), "512 B");
        assert_eq!(
            format_value(Unit::Bytes, 3.0 * 1024.0 * 1024.0 * 1024.0),
            "3.0 GiB"
        );
        assert_eq!(
            format_value(Unit::BytesPerSec, 3.0 * 1024.0 * 1024.0),
            "3.0 MiB/s"
        );
        assert_eq!(format_value(Unit::BytesPerSec, 100.0), "100 B/s");
        assert_eq!(format_value(Unit::Count, 42.0), "42");
        assert_eq!(format_value(Unit::Count, 2.5), "2.5");
        assert_eq!(format_value(Unit::Count, f64::NAN), "–");
    }

    #[test]
    fn plain_sig3() {
        assert_eq!(format_sig3(0.012345), "0.0123");
        assert_eq!(format_sig3(1.4249), "1.42");
        assert_eq!(format_sig3(12.34), "12.3");
        assert_eq!(format_sig3(123.4), "123");
        assert_eq!(format_sig3(1234.0), "1234");
        assert_eq!(format_sig3(9.996), "10.0");
        assert_eq!(format_sig3(0.0), "0");
        assert_eq!(format_sig3(-1.5), "-1.50");
    }

    #[test]
    fn plain_cell_equal_samples_and_ranges() {
        let st = stats(&[3.0, 3.0, 3.0]).unwrap();
        assert_eq!(format_cell(Unit::Millis, &st), "3.00 ms");
        let st = stats(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(format_cell(Unit::Count, &st), "2 (1.2–2.8)");
    }

    #[test]
    fn plain_missing_cells_show_dash() {
        let md = render(&two_scenario_run());
        // "depth a|b" only has a thin series.
        assert!(md.contains("| depth a\\|b | 500 µs | – | – |"));
        let mut run = two_scenario_run();
        run.scenarios[1].series[1].samples = vec![f64::NAN];
        let md = render(&run);
        assert!(md.contains("| 1 MiB file | 1.5 KiB | – |"));
        assert!(md.contains("| 2. Space | overlay / thin | – | – | – |"));
        assert!(md.contains("- overlay / thin: –"));
    }

    #[test]
    fn plain_pipes_escaped() {
        let md = render(&two_scenario_run());
        assert!(md.contains("depth a\\|b"));
        assert!(md.contains("`thinlayer bench --quick \\| tee`"));
        assert!(!md.contains("depth a|b"));
        assert_eq!(escape_cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn plain_deterministic() {
        let run = two_scenario_run();
        assert_eq!(render(&run), render(&run));
        assert_eq!(render(&run), render(&run.clone()));
    }

    #[test]
    fn plain_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(format_utc(951_868_800 - 60), "2000-02-29 23:59");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(format_utc(4_107_542_400), "2100-03-01 00:00");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
