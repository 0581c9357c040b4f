//! Run plots as self-contained SVG: validation scores over steps, the schedule as a timeline
//! coloured by class, and the variance diagnostics.
//!
//! Written by hand rather than with plotters: plotters needs a system font backend to lay out
//! text (fontconfig at build time), which a clean CI machine does not have; SVG text needs none.

use crate::metrics::StepMetrics;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Colour-blind-safe palette (Okabe–Ito), one colour per class in class order.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000",
];

/// One line of a chart, with an optional band (e.g. a 95% interval) around it.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
    /// (x, low, high) per point.
    pub band: Vec<(f64, f64, f64)>,
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, color: &str, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            color: color.to_string(),
            points,
            band: Vec::new(),
            dashed: false,
        }
    }
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
}

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round tick positions covering [lo, hi].
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + 1e-9 * span {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn svg_open(out: &mut String, title: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{}</text>
"#,
        (LEFT + W - RIGHT) / 2.0,
        esc(title)
    );
}

impl LineChart<'_> {
    pub fn to_svg(&self) -> String {
        let xs = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.0)
                .chain(s.band.iter().map(|b| b.0))
        });
        let ys = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        });
        let finite = |it: &mut dyn Iterator<Item = f64>| -> (f64, f64) {
            it.filter(|v| v.is_finite())
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                    (a.min(v), b.max(v))
                })
        };
        let (mut x0, mut x1) = finite(&mut xs.into_iter());
        let (mut y0, mut y1) = finite(&mut ys.into_iter());
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if !y0.is_finite() {
            (y0, y1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        (y0, y1) = (y0 - pad, y1 + pad);
        let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
        let py = |y: f64| H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM);

        let mut s = String::new();
        svg_open(&mut s, self.title);
        // grid and ticks
        for t in ticks(y0, y1) {
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#e5e5e5"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                py(t) + 4.0,
                fmt_tick(t),
                y = py(t)
            );
        }
        for t in ticks(x0, x1) {
            let _ = writeln!(
                s,
                r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#999"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 5.0,
                H - BOTTOM + 18.0,
                fmt_tick(t),
                x = px(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"##,
            W - LEFT - RIGHT,
            H - TOP - BOTTOM,
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0,
            esc(self.x_label),
            (TOP + H - BOTTOM) / 2.0,
            (TOP + H - BOTTOM) / 2.0,
            esc(self.y_label)
        );
        for (i, ser) in self.series.iter().enumerate() {
            let band: Vec<&(f64, f64, f64)> = ser
                .band
                .iter()
                .filter(|b| b.1.is_finite() && b.2.is_finite())
                .collect();
            if band.len() >= 2 {
                let upper = band
                    .iter()
                    .map(|b| format!("{:.1},{:.1}", px(b.0), py(b.2)));
                let lower = band
                    .iter()
                    .rev()
                    .map(|b| format!("{:.1},{:.1}", px(b.0), py(b.1)));
                let pts: Vec<String> = upper.chain(lower).collect();
                let _ = writeln!(
                    s,
                    r#"<polygon points="{}" fill="{}" fill-opacity="0.18" stroke="none"/>"#,
                    pts.join(" "),
                    ser.color
                );
            }
            let pts: Vec<String> = ser
                .points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
                .collect();
            let dash = if ser.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                pts.join(" "),
                ser.color
            );
            if pts.len() == 1 {
                let (x, y) = pts[0].split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                    ser.color
                );
            }
            legend_entry(&mut s, i, &ser.name, &ser.color, ser.dashed);
        }
        s.push_str("</svg>\n");
        s
    }
}

fn legend_entry(s: &mut String, i: usize, name: &str, color: &str, dashed: bool) {
    let y = TOP + 12.0 + 20.0 * i as f64;
    let x = W - RIGHT + 14.0;
    let dash = if dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    let _ = writeln!(
        s,
        r#"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"#,
        x + 22.0,
        x + 28.0,
        y + 4.0,
        esc(name)
    );
}

/// The schedule as a strip: one cell per step, coloured by the class that drove it.
pub fn timeline_svg(title: &str, steps: &[(u64, Option<String>)], classes: &[String]) -> String {
    let mut s = String::new();
    svg_open(&mut s, title);
    let n = steps.len().max(1) as f64;
    let width = W - LEFT - RIGHT;
    let (y, h) = (TOP + 40.0, 80.0);
    for (i, (_, class)) in steps.iter().enumerate() {
        let color = class
            .as_ref()
            .and_then(|c| classes.iter().position(|k| k == c))
            .map(|k| PALETTE[k % PALETTE.len()])
            .unwrap_or("#bbbbbb");
        let _ = writeln!(
            s,
            r#"<rect x="{:.2}" y="{y}" width="{:.2}" height="{h}" fill="{color}"/>"#,
            LEFT + width * i as f64 / n,
            width / n + 0.5
        );
    }
    let first = steps.first().map(|s| s.0).unwrap_or(0);
    let last = steps.last().map(|s| s.0).unwrap_or(0);
    for t in ticks(first as f64, last.max(first + 1) as f64) {
        let x = LEFT + width * (t - first as f64 + 0.5) / n;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#333"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            y + h,
            y + h + 5.0,
            y + h + 18.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">training step</text>
<text x="{}" y="{}" text-anchor="start">active class (colour)</text>"#,
        LEFT + width / 2.0,
        y + h + 40.0,
        LEFT,
        y - 8.0
    );
    for (k, c) in classes.iter().enumerate() {
        legend_entry(&mut s, k, c, PALETTE[k % PALETTE.len()], false);
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `validation.svg`, `schedule.svg` and `variance.svg` for a run; returns their paths.
pub fn write_run_plots(
    dir: &Path,
    metrics: &[StepMetrics],
    classes: &[String],
) -> std::io::Result<Vec<PathBuf>> {
    let color = |k: usize| PALETTE[k % PALETTE.len()];
    let mut out = Vec::new();
    let mut save = |name: &str, svg: String| -> std::io::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, svg)?;
        out.push(p);
        Ok(())
    };

    let vals: Vec<(f64, &crate::eval::EvalReport)> = metrics
        .iter()
        .filter_map(|m| m.val.as_ref().map(|v| (m.step as f64, v)))
        .collect();
    let mut series = vec![Series {
        band: vals
            .iter()
            .map(|(x, v)| {
                (
                    *x,
                    v.overall.score - 1.96 * v.overall.std,
                    v.overall.score + 1.96 * v.overall.std,
                )
            })
            .collect(),
        ..Series::new(
            "overall",
            "#000000",
            vals.iter().map(|(x, v)| (*x, v.overall.score)).collect(),
        )
    }];
    for (k, c) in classes.iter().enumerate() {
        let pts: Vec<(f64, f64)> = vals
            .iter()
            .filter_map(|(x, v)| v.classes.get(c).map(|s| (*x, s.score)))
            .collect();
        if !pts.is_empty() {
            series.push(Series {
                dashed: true,
                ..Series::new(c.clone(), color(k), pts)
            });
        }
    }
    save(
        "validation.svg",
        LineChart {
            title: "Validation score (overall with 95% band; classes dashed)",
            x_label: "training step",
            y_label: "HealthBench-style score",
            series,
        }
        .to_svg(),
    )?;

    let steps: Vec<(u64, Option<String>)> = metrics
        .iter()
        .map(|m| (m.step, m.active_class.clone()))
        .collect();
    save(
        "schedule.svg",
        timeline_svg("Schedule: class optimized at each step", &steps, classes),
    )?;

    let pick = |f: &dyn Fn(&StepMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| f(m).map(|v| (m.step as f64, v)))
            .collect()
    };
    let mut series = vec![
        Series::new(
            "overall (points)",
            "#000000",
            pick(&|m| m.overall.group_std),
        ),
        Series {
            dashed: true,
            ..Series::new(
                "driving reward",
                "#777777",
                pick(&|m| Some(m.objective_group_std)),
            )
        },
    ];
    for (k, c) in classes.iter().enumerate() {
        let pts = pick(&|m| m.classes.get(c).and_then(|s| s.group_std));
        if !pts.is_empty() {
            series.push(Series::new(c.clone(), color(k), pts));
        }
    }
    series.push(Series {
        dashed: true,
        ..Series::new(
            "zero-spread share",
            "#999999",
            pick(&|m| Some(m.zero_spread_share)),
        )
    });
    save(
        "variance.svg",
        LineChart {
            title: "Within-group reward std per step (and zero-spread share)",
            x_label: "training step",
            y_label: "std within group / share",
            series,
        }
        .to_svg(),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover() {
        let t = ticks(0.0, 1.0);
        assert_eq!(t.len(), 6);
        assert!((t[1] - 0.2).abs() < 1e-12 && (t[5] - 1.0).abs() < 1e-12);
        let t = ticks(3.0, 47.0);
        assert!(t.first().unwrap() >= &3.0 && t.last().unwrap() <= &47.0 && t.len() >= 4);
    }

    #[test]
    fn chart_has_axes_legend_and_series() {
        let svg = LineChart {
            title: "T",
            x_label: "step",
            y_label: "score",
            series: vec![
                Series::new("a<b", "#000", vec![(0.0, 0.1), (1.0, 0.5)]),
                Series::new("c", "#111", vec![(0.0, f64::NAN), (1.0, 0.2)]),
            ],
        }
        .to_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains(">step<") && svg.contains(">score<") && svg.contains("a&lt;b"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        let tl = timeline_svg("S", &[(1, Some("x".into())), (2, None)], &["x".into()]);
        assert!(tl.contains("#0072B2") && tl.contains("#bbbbbb") && tl.contains(">x<"));
    }
}
