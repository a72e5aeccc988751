//! The report: JSON, a markdown table and an SVG chart in the output dir.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One measured figure, with the baseline it is compared to (measured in
/// the same run unless `baseline.measured` is false, i.e. a target).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub id: String,
    pub section: String,
    pub label: String,
    pub value: f64,
    pub unit: String,
    pub higher_is_better: bool,
    pub baseline: Option<Baseline>,
    /// value / baseline.value
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    pub label: String,
    pub value: f64,
    /// False when the "baseline" is a fixed target rather than a measurement.
    pub measured: bool,
}

/// A raw timing or count behind the figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub note: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gb: f64,
    pub kernel: String,
    pub postgres: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Params {
    pub profile: String,
    pub n: usize,
    pub n_rest: usize,
    pub n_down: usize,
    pub latency_seconds: u64,
    pub latency_rate: u64,
    pub pgbench_seconds: u64,
    #[serde(default)]
    pub pgbench_rounds: usize,
    pub idle_cycles: usize,
    #[serde(default)]
    pub bookkeeping_rounds: usize,
    pub batch_size: usize,
    pub service_binary: String,
    pub service_build: String,
    pub cluster_settings: Vec<String>,
    pub sections: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub started_at: String,
    pub total_seconds: f64,
    pub git: String,
    pub machine: Machine,
    pub params: Params,
    pub figures: Vec<Figure>,
    pub stages: Vec<Stage>,
    /// Latency quantiles (percent, ms) per series, for the chart.
    pub latency_quantiles: Vec<(String, Vec<(f64, f64)>)>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn stage(&mut self, name: impl Into<String>, value: f64, unit: &str, note: impl Into<String>) {
        self.stages.push(Stage { name: name.into(), value, unit: unit.into(), note: note.into() });
    }

    #[allow(dead_code, reason = "for tests/it/bench_quick.rs's checks; the bench binary only prints")]
    pub fn figure(&self, id: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.id == id)
    }

    /// Writes report.json, report.md and report.svg into `dir`; returns
    /// their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let json = dir.join("report.json");
        let md = dir.join("report.md");
        let svg = dir.join("report.svg");
        std::fs::write(&json, serde_json::to_string_pretty(self).expect("serializable"))
            .map_err(|e| format!("write {}: {e}", json.display()))?;
        std::fs::write(&md, self.markdown()).map_err(|e| format!("write {}: {e}", md.display()))?;
        self.chart(&svg)?;
        Ok(vec![json, md, svg])
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let p = &self.params;
        let mut s = String::new();
        let _ = writeln!(s, "# centrovision-sync end-to-end benchmark ({})\n", p.profile);
        let _ = writeln!(
            s,
            "- Machine: {} cores ({}), {:.1} GB RAM, {}\n- PostgreSQL: {}\n- Service: `{}` ({}), git {}\n- Started {}, took {:.0} s",
            m.cores,
            m.cpu_model,
            m.memory_gb,
            m.kernel,
            m.postgres,
            p.service_binary,
            p.service_build,
            self.git,
            self.started_at,
            self.total_seconds
        );
        let _ = writeln!(
            s,
            "- N = {} changes (postgres mode drain, capture, trigger design), {} (REST drain), {} upstream rows (initial download); batch_size = {}; latency load {} rows/s for {} s; pgbench -c 2 -j 2 -T {}, {} interleaved round(s); {} idle down cycles per mode; {} round(s) of the drain with/without upstream per-row bookkeeping",
            p.n,
            p.n_rest,
            p.n_down,
            p.batch_size,
            p.latency_rate,
            p.latency_seconds,
            p.pgbench_seconds,
            p.pgbench_rounds.max(1),
            p.idle_cycles,
            p.bookkeeping_rounds
        );
        let _ = writeln!(s, "- Both clusters on this machine (local and upstream): {}\n", p.cluster_settings.join(", "));
        let _ = writeln!(s, "| # | Measure | Value | Baseline (same run) | Ratio | Target | Met |");
        let _ = writeln!(s, "|---|---|---:|---|---:|---|---|");
        for f in &self.figures {
            let base = match &f.baseline {
                Some(b) if b.measured => format!("{}: {}", b.label, fmt_value(b.value, &f.unit)),
                Some(b) => format!("{} (target)", b.label),
                None => "-".into(),
            };
            let ratio = f.ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "-".into());
            let met = match f.met {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "-",
            };
            let label = if f.note.is_empty() { f.label.clone() } else { format!("{} <sub>{}</sub>", f.label, f.note) };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.section,
                label,
                fmt_value(f.value, &f.unit),
                base,
                ratio,
                f.target.as_deref().unwrap_or("-"),
                met
            );
        }
        if !self.stages.is_empty() {
            let _ = writeln!(s, "\n<details><summary>Stage timings and counts</summary>\n");
            let _ = writeln!(s, "| Stage | Value | Note |\n|---|---:|---|");
            for st in &self.stages {
                let _ = writeln!(s, "| {} | {} | {} |", st.name, fmt_value(st.value, &st.unit), st.note);
            }
            let _ = writeln!(s, "\n</details>");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\n**Errors (sections that did not complete):**");
            for e in &self.errors {
                let _ = writeln!(s, "- {}", e.replace('\n', " "));
            }
        }
        s
    }

    fn chart(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
        let bars: Vec<&Figure> = self.figures.iter().filter(|f| f.ratio.is_some_and(f64::is_finite)).collect();
        let bar_h = 34u32;
        let upper_h = 90 + bar_h * bars.len().max(1) as u32;
        let lower_h = 420u32;
        let root = SVGBackend::new(path, (1100, upper_h + lower_h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (upper, lower) = root.split_vertically(upper_h);

        // Ratios to the same-run baselines, one bar each, the label above
        // it; the axis stops at 3x (longer bars are cut, their label still
        // gives the ratio).
        const CAP: f64 = 3.0;
        let max = bars.iter().filter_map(|f| f.ratio).fold(1.2f64, f64::max).min(CAP) * 1.05;
        let n = bars.len().max(1) as f64;
        let mut chart = ChartBuilder::on(&upper)
            .caption(format!("centrovision-sync vs same-run baselines ({}): value / baseline", self.params.profile), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(10)
            .build_cartesian_2d(0f64..max, 0f64..n)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().disable_y_mesh().y_labels(0).x_desc("ratio (1.0 = baseline)").draw().map_err(|e| err(&e))?;
        for (i, f) in bars.iter().enumerate() {
            let y = n - i as f64 - 1.0;
            let r = f.ratio.unwrap_or(0.0).min(max);
            let color = match f.met {
                Some(false) => RGBColor(214, 69, 65),
                Some(true) => RGBColor(46, 139, 87),
                None => RGBColor(70, 130, 180),
            };
            chart.draw_series(std::iter::once(Rectangle::new([(0.0, y + 0.06), (r, y + 0.44)], color.filled()))).map_err(|e| err(&e))?;
            let better = if f.higher_is_better { "higher is better" } else { "lower is better" };
            let base =
                f.baseline.as_ref().map(|b| if b.measured { b.label.clone() } else { format!("target {}", b.label) }).unwrap_or_default();
            chart
                .draw_series(std::iter::once(Text::new(
                    format!(
                        "{}: {:.2}×{}  ({} vs {}: {}; {better})",
                        f.label,
                        f.ratio.unwrap_or(0.0),
                        if f.ratio.unwrap_or(0.0) > CAP { " (bar cut)" } else { "" },
                        fmt_value(f.value, &f.unit),
                        base,
                        f.baseline.as_ref().map(|b| fmt_value(b.value, &f.unit)).unwrap_or_default()
                    ),
                    (max * 0.003, y + 0.97),
                    ("sans-serif", 12).into_font(),
                )))
                .map_err(|e| err(&e))?;
        }
        chart.draw_series(LineSeries::new(vec![(1.0, 0.0), (1.0, n)], BLACK.stroke_width(1))).map_err(|e| err(&e))?;

        // Steady-state latency distribution.
        let series: Vec<&(String, Vec<(f64, f64)>)> = self.latency_quantiles.iter().filter(|(_, q)| !q.is_empty()).collect();
        let xmax = series.iter().flat_map(|(_, q)| q.iter().filter(|(p, _)| *p <= 99.0).map(|(_, ms)| *ms)).fold(10.0f64, f64::max) * 1.2;
        let mut lc = ChartBuilder::on(&lower)
            .caption("Steady-state latency, local commit -> visible upstream (quantiles up to p99)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..xmax, 0f64..100f64)
            .map_err(|e| err(&e))?;
        lc.configure_mesh().x_desc("latency (ms)").y_desc("percentile").draw().map_err(|e| err(&e))?;
        let colors = [RGBColor(46, 139, 87), RGBColor(214, 69, 65), RGBColor(70, 130, 180)];
        for (i, (name, q)) in series.iter().enumerate() {
            let c = colors[i % colors.len()];
            lc.draw_series(LineSeries::new(q.iter().filter(|(p, _)| *p <= 99.0).map(|(p, ms)| (*ms, *p)), c.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        if !series.is_empty() {
            lc.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

/// A value with its unit, rounded sensibly.
pub fn fmt_value(v: f64, unit: &str) -> String {
    let num = if !v.is_finite() {
        format!("{v}")
    } else if v.abs() >= 10_000.0 {
        group(v.round() as i64)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if unit.is_empty() { num } else { format!("{num} {unit}") }
}

fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}
