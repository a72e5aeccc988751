//! The page's two charts as inline SVG, drawn here so the page needs no
//! chart script and no network: rows synced per hour (up above the axis,
//! down below it, so both directions read at a glance whatever the range)
//! and the journal backlog over time. Presentation only: colours come from
//! the stylesheet through class names.

use chrono::{DateTime, Local, TimeZone, Timelike, Utc};

use super::tr;
use crate::config::Language;
use crate::store::HourSample;

const W: f64 = 600.0;
const H: f64 = 160.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 28.0;

fn hour_label(hour: i64, l: Language, days: bool) -> String {
    let t = Local.timestamp_opt(hour, 0).single().unwrap_or_else(|| Utc::now().with_timezone(&Local));
    if days {
        match l {
            Language::Es => t.format("%d/%m").to_string(),
            Language::En => t.format("%m-%d").to_string(),
        }
    } else {
        t.format("%H:00").to_string()
    }
}

/// Where the x-axis labels go: every 6 hours over a day, every midnight
/// over a week.
fn ticks(samples: &[HourSample]) -> Vec<usize> {
    let days = samples.len() > 48;
    samples
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            let h = Local.timestamp_opt(s.hour, 0).single().map(|t| t.hour()).unwrap_or(0);
            if days { h == 0 } else { h % 6 == 0 }
        })
        .map(|(i, _)| i)
        .collect()
}

fn axis_labels(o: &mut String, samples: &[HourSample], l: Language, step: f64) {
    let days = samples.len() > 48;
    for i in ticks(samples) {
        let x = LEFT + step * i as f64;
        o.push_str(&format!(
            "<line class=\"tick\" x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"{:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            H - BOTTOM,
            x + 3.0,
            H - 6.0,
            hour_label(samples[i].hour, l, days)
        ));
    }
}

fn empty(l: Language) -> String {
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} 40\" role=\"img\"><text x=\"{LEFT}\" y=\"24\">{}</text></svg>",
        tr(l, "Sin datos todavía", "No data yet")
    )
}

/// Rows sent (above the axis) and received (below) per hour.
pub fn rows_chart(samples: &[HourSample], l: Language, _now: DateTime<Utc>) -> String {
    if samples.is_empty() {
        return empty(l);
    }
    let max = samples.iter().map(|s| s.rows_up.max(s.rows_down)).max().unwrap_or(0).max(1) as f64;
    let plot_h = H - BOTTOM;
    let mid = plot_h / 2.0;
    let step = (W - LEFT) / samples.len() as f64;
    let bar = (step * 0.8).max(0.5);
    let mut o = format!(
        "<svg class=\"chart rows\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        tr(l, "Filas sincronizadas por hora", "Rows synced per hour")
    );
    o.push_str(&format!("<line class=\"axis\" x1=\"{LEFT}\" y1=\"{mid:.1}\" x2=\"{W}\" y2=\"{mid:.1}\"/>"));
    o.push_str(&format!("<text x=\"2\" y=\"18\">{}</text><text x=\"2\" y=\"{:.1}\">{}</text>", max as i64, plot_h - 4.0, max as i64));
    o.push_str(&format!("<text x=\"2\" y=\"{:.1}\">0</text>", mid + 6.0));
    for (i, s) in samples.iter().enumerate() {
        let x = LEFT + step * i as f64 + (step - bar) / 2.0;
        if s.rows_up > 0 {
            let hgt = (s.rows_up as f64 / max * (mid - 2.0)).max(1.0);
            o.push_str(&format!(
                "<rect class=\"up\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{hgt:.1}\"><title>{} ↑</title></rect>",
                mid - hgt,
                s.rows_up
            ));
        }
        if s.rows_down > 0 {
            let hgt = (s.rows_down as f64 / max * (mid - 2.0)).max(1.0);
            o.push_str(&format!(
                "<rect class=\"down\" x=\"{x:.1}\" y=\"{mid:.1}\" width=\"{bar:.1}\" height=\"{hgt:.1}\"><title>{} ↓</title></rect>",
                s.rows_down
            ));
        }
    }
    axis_labels(&mut o, samples, l, step);
    o.push_str("</svg>");
    o
}

/// The largest backlog sampled in each hour, as a filled line (gaps where
/// the service did not run).
pub fn backlog_chart(samples: &[HourSample], l: Language, _now: DateTime<Utc>) -> String {
    if samples.is_empty() {
        return empty(l);
    }
    let max = samples.iter().filter_map(|s| s.max_backlog).max().unwrap_or(0).max(1) as f64;
    let plot_h = H - BOTTOM;
    let step = (W - LEFT) / samples.len() as f64;
    let mut o = format!(
        "<svg class=\"chart backlog\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\">",
        tr(l, "Cambios en espera", "Changes waiting")
    );
    o.push_str(&format!("<line class=\"axis\" x1=\"{LEFT}\" y1=\"{plot_h:.1}\" x2=\"{W}\" y2=\"{plot_h:.1}\"/>"));
    o.push_str(&format!("<text x=\"2\" y=\"18\">{}</text><text x=\"2\" y=\"{:.1}\">0</text>", max as i64, plot_h));
    // One polygon per run of hours that have a sample.
    let mut run: Vec<(f64, f64)> = Vec::new();
    let flush = |run: &mut Vec<(f64, f64)>, o: &mut String| {
        if run.is_empty() {
            return;
        }
        let (x0, x1) = (run[0].0, run[run.len() - 1].0 + step);
        let mut pts = format!("{x0:.1},{plot_h:.1} ");
        for (x, y) in run.iter() {
            pts.push_str(&format!("{x:.1},{y:.1} {:.1},{y:.1} ", x + step));
        }
        pts.push_str(&format!("{x1:.1},{plot_h:.1}"));
        o.push_str(&format!("<polygon class=\"area\" points=\"{pts}\"/>"));
        run.clear();
    };
    for (i, s) in samples.iter().enumerate() {
        match s.max_backlog {
            Some(b) => run.push((LEFT + step * i as f64, plot_h - b as f64 / max * (plot_h - 14.0))),
            None => flush(&mut run, &mut o),
        }
    }
    flush(&mut run, &mut o);
    axis_labels(&mut o, samples, l, step);
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_of_history_draws_one_bar_per_direction_and_busy_hour() {
        let base = 1_764_633_600; // an hour boundary
        let samples: Vec<HourSample> = (0..24)
            .map(|i| HourSample {
                hour: base + i * 3600,
                rows_up: if i == 3 { 40 } else { 0 },
                rows_down: if i == 5 { 10 } else { 0 },
                max_backlog: Some(i),
            })
            .collect();
        let svg = rows_chart(&samples, Language::Es, Utc::now());
        assert_eq!(svg.matches("class=\"up\"").count(), 1, "{svg}");
        assert_eq!(svg.matches("class=\"down\"").count(), 1, "{svg}");
        assert!(svg.contains(">40 ↑<") && svg.contains(">10 ↓<"), "{svg}");
        let b = backlog_chart(&samples, Language::Es, Utc::now());
        assert_eq!(b.matches("<polygon").count(), 1, "{b}");
    }
}
