//! A tiny dependency-free SVG line chart for the benchmarks: panels in a grid, each with a
//! log2 x axis, a linear or log10 y axis, one polyline per series (solid or dashed) with point
//! markers, labelled axes and a legend under the plot; a title and a subtitle above the grid.
//!
//! Included by a benchmark with `#[path = "common/plot.rs"] mod plot;`.
#![allow(dead_code)] // not every benchmark uses every knob

use std::fmt::Write as _;

/// One series.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) label: String,
    /// An SVG colour, e.g. `#d62728`.
    pub(crate) color: &'static str,
    pub(crate) dashed: bool,
    /// (x, y); x > 0 (log2 axis). Points with a y the axis cannot show are skipped.
    pub(crate) points: Vec<(f64, f64)>,
}

/// How a panel's y axis maps values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum YScale {
    /// From 0 to a rounded-up maximum.
    Linear,
    /// Whole decades around the data.
    Log10,
}

/// One plot of the grid.
#[derive(Debug, Clone)]
pub(crate) struct Panel {
    pub(crate) title: String,
    pub(crate) x_label: String,
    pub(crate) y_label: String,
    pub(crate) y_scale: YScale,
    pub(crate) lines: Vec<Line>,
}

/// Panels in a grid of `columns`, row by row.
#[derive(Debug, Clone)]
pub(crate) struct Chart {
    pub(crate) title: String,
    pub(crate) subtitle: String,
    pub(crate) columns: usize,
    pub(crate) panels: Vec<Panel>,
}

// Geometry, in SVG user units (px).
const PLOT_W: f64 = 470.0;
const PLOT_H: f64 = 280.0;
const MARGIN_L: f64 = 78.0;
const MARGIN_R: f64 = 24.0;
const MARGIN_T: f64 = 34.0;
const MARGIN_B: f64 = 50.0;
const LEGEND_ROW: f64 = 18.0;
const LEGEND_COL: f64 = 190.0;
const HEADER: f64 = 62.0;

impl Chart {
    /// The chart as a standalone SVG document.
    pub(crate) fn svg(&self) -> String {
        let columns = self.columns.clamp(1, self.panels.len().max(1));
        let rows = self.panels.len().div_ceil(columns).max(1);
        let per_row = ((PLOT_W / LEGEND_COL).floor() as usize).max(1);
        let legend_rows = self
            .panels
            .iter()
            .map(|p| p.lines.len().div_ceil(per_row))
            .max()
            .unwrap_or(0);
        let cell_w = MARGIN_L + PLOT_W + MARGIN_R;
        let cell_h = MARGIN_T + PLOT_H + MARGIN_B + legend_rows as f64 * LEGEND_ROW + 8.0;
        let width = cell_w * columns as f64 + 10.0;
        let height = HEADER + cell_h * rows as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="24" font-size="17" font-weight="bold" text-anchor="middle">{}</text>"#,
            width / 2.0,
            escape(&self.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="46" font-size="12" fill="#444" text-anchor="middle">{}</text>"##,
            width / 2.0,
            escape(&self.subtitle)
        );
        for (i, panel) in self.panels.iter().enumerate() {
            let x0 = 5.0 + (i % columns) as f64 * cell_w;
            let y0 = HEADER + (i / columns) as f64 * cell_h;
            panel.draw(&mut s, x0 + MARGIN_L, y0 + MARGIN_T, per_row);
        }
        s.push_str("</svg>\n");
        s
    }
}

impl Panel {
    /// Draws the panel with its plot area's top-left corner at (`left`, `top`).
    fn draw(&self, s: &mut String, left: f64, top: f64, per_row: usize) {
        let (right, bottom) = (left + PLOT_W, top + PLOT_H);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold" text-anchor="middle">{}</text>"#,
            left + PLOT_W / 2.0,
            top - 12.0,
            escape(&self.title)
        );
        let xs: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .filter(|x| *x > 0.0 && x.is_finite())
            .collect();
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|y| y.is_finite() && (self.y_scale == YScale::Linear || *y > 0.0))
            .collect();
        // x: log2, half an octave of room on each side.
        let (lo, hi) = xs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x.log2()), b.max(x.log2()))
            });
        let (lo, hi) = if lo.is_finite() {
            (lo - 0.5, hi.max(lo + 1.0) + 0.5)
        } else {
            (-0.5, 1.5)
        };
        let px = |x: f64| left + (x.log2() - lo) / (hi - lo) * PLOT_W;
        // y: linear from 0, or whole decades.
        let (y_lo, y_hi, ticks) = match self.y_scale {
            YScale::Linear => {
                let max = ys.iter().copied().fold(0.0, f64::max).max(1e-9) * 1.08;
                let step = nice_step(max / 5.0);
                let top_tick = (max / step).ceil() * step;
                let ticks: Vec<f64> = (0..=((top_tick / step).round() as usize))
                    .map(|i| i as f64 * step)
                    .collect();
                (0.0, top_tick, ticks)
            }
            YScale::Log10 => {
                let min = ys.iter().copied().fold(f64::INFINITY, f64::min);
                let max = ys.iter().copied().fold(0.0, f64::max);
                let (a, b) = if min.is_finite() && max > 0.0 {
                    (
                        min.log10().floor(),
                        max.log10().ceil().max(min.log10().floor() + 1.0),
                    )
                } else {
                    (0.0, 1.0)
                };
                let decades = (b - a) as i32;
                let mut ticks = Vec::new();
                for d in (a as i32)..=(b as i32) {
                    let base = 10f64.powi(d);
                    ticks.push(base);
                    if decades <= 4 && d < b as i32 {
                        ticks.push(2.0 * base);
                        ticks.push(5.0 * base);
                    }
                }
                (10f64.powf(a), 10f64.powf(b), ticks)
            }
        };
        let py = |y: f64| match self.y_scale {
            YScale::Linear => bottom - (y - y_lo) / (y_hi - y_lo) * PLOT_H,
            YScale::Log10 => {
                bottom - (y.log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()) * PLOT_H
            }
        };
        let _ = writeln!(
            s,
            r##"<rect x="{left:.1}" y="{top:.1}" width="{PLOT_W:.1}" height="{PLOT_H:.1}" fill="#fcfcfc" stroke="#999"/>"##
        );
        // Grid and tick labels.
        for t in &ticks {
            let y = py(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
                left - 6.0,
                y + 4.0,
                tick_label(*t)
            );
        }
        let mut power = lo.ceil() as i32;
        while f64::from(power) <= hi {
            let x = left + (f64::from(power) - lo) / (hi - lo) * PLOT_W;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e3e3e3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#333">{}</text>"##,
                bottom + 16.0,
                tick_label(2f64.powi(power))
            );
            power += 1;
        }
        // Axis labels.
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + PLOT_W / 2.0,
            bottom + 36.0,
            escape(&self.x_label)
        );
        let (lx, ly) = (left - 56.0, top + PLOT_H / 2.0);
        let _ = writeln!(
            s,
            r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
            escape(&self.y_label)
        );
        // Series.
        for line in &self.lines {
            let pts: Vec<(f64, f64)> = line
                .points
                .iter()
                .filter(|(x, y)| {
                    *x > 0.0
                        && x.is_finite()
                        && y.is_finite()
                        && (self.y_scale == YScale::Linear || *y > 0.0)
                })
                .map(|&(x, y)| (px(x), py(y)))
                .collect();
            let dash = if line.dashed {
                r#" stroke-dasharray="7 4""#
            } else {
                ""
            };
            if pts.len() > 1 {
                let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                    path.join(" "),
                    line.color
                );
            }
            let fill = if line.dashed { "white" } else { line.color };
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.2" fill="{fill}" stroke="{}" stroke-width="1.5"/>"#,
                    line.color
                );
            }
        }
        // Legend under the x axis label.
        for (i, line) in self.lines.iter().enumerate() {
            let x = left + (i % per_row) as f64 * LEGEND_COL;
            let y = bottom + MARGIN_B + (i / per_row) as f64 * LEGEND_ROW;
            let dash = if line.dashed {
                r#" stroke-dasharray="7 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                x + 26.0,
                line.color,
                x + 32.0,
                y + 4.0,
                escape(&line.label)
            );
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * base)
}

/// `1500` → `1.5k`, `20000` → `20k`, `0.5` → `0.5`.
fn tick_label(v: f64) -> String {
    let trim = |t: String| {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            t
        }
    };
    if v >= 1e6 {
        format!("{}M", trim(format!("{:.1}", v / 1e6)))
    } else if v >= 1e3 {
        format!("{}k", trim(format!("{:.1}", v / 1e3)))
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.2}"))
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}
