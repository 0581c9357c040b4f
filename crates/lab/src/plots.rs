//! Run plots as self-contained SVG, drawn with plotters' SVG backend: validation scores over
//! steps, the schedule as a timeline coloured by class, and the variance diagnostics.
//!
//! plotters is built without its `ttf` feature: the SVG backend writes text as `<text>`
//! elements that the viewer renders, and lays labels out with plotters' built-in width
//! estimate, so no system font, font file or font library is needed to build or to draw.

use anyhow::{Context, Result};
use arl::eval::EvalReport;
use arl::metrics::StepMetrics;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Colour-blind-safe palette (Okabe–Ito), one colour per class in class order.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000",
];

/// One line of a chart, with an optional band (e.g. a 95% interval) around it.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// `#rrggbb`.
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

const W: u32 = 760;
const H: u32 = 420;
/// Width of the legend column right of the plot.
const LEGEND: u32 = 200;
const FONT: &str = "sans-serif";

/// `#rrggbb` to a colour; anything else is grey (the palette and callers use `#rrggbb`).
fn rgb(hex: &str) -> RGBColor {
    let h = hex.trim_start_matches('#');
    let byte = |i: usize| {
        h.get(i..i + 2)
            .and_then(|b| u8::from_str_radix(b, 16).ok())
            .unwrap_or(0x99)
    };
    RGBColor(byte(0), byte(2), byte(4))
}

/// Tick labels without trailing zeros ("0.2", "15", not "0.200", "15.000").
fn fmt_tick(v: &f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { *v };
    if v.abs() >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Smallest and largest finite value, or None.
fn finite_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |r, v| match r {
        None => Some((v, v)),
        Some((a, b)) => Some((a.min(v), b.max(v))),
    })
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Area<'b> = DrawingArea<SVGBackend<'b>, Shift>;

/// One picture `height` px tall: the title, a plot over `x` × `y` that `draw` fills, and the
/// legend column right of it, which `draw` also gets.
fn picture(
    height: u32,
    title: &str,
    x: Range<f64>,
    y: Range<f64>,
    draw: impl FnOnce(&mut Chart<'_, '_>, &Area<'_>) -> Result<()>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 19).into_font().style(FontStyle::Bold))?;
        let (plot, legend) = root.split_horizontally(W - LEGEND);
        let mut chart = ChartBuilder::on(&plot)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(x, y)?;
        draw(&mut chart, &legend)?;
        root.present()?;
    }
    Ok(svg)
}

/// Draws a legend (one short line and a name per entry) into the column right of a plot.
fn draw_legend(area: &Area<'_>, entries: &[(&str, RGBColor, bool)]) -> Result<()> {
    for (i, (name, color, dashed)) in entries.iter().enumerate() {
        let y = 52 + 20 * i as i32;
        let line = vec![(10, y), (34, y)];
        let style = color.stroke_width(3);
        if *dashed {
            area.draw(&DashedPathElement::new(line, 6, 3, style))?;
        } else {
            area.draw(&PathElement::new(line, style))?;
        }
        let text = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        area.draw(&Text::new(name.to_string(), (40, y), text))?;
    }
    Ok(())
}

impl LineChart<'_> {
    pub fn to_svg(&self) -> Result<String> {
        let xs = self.series.iter().flat_map(|s| {
            let band = s.band.iter().map(|b| b.0);
            s.points.iter().map(|p| p.0).chain(band)
        });
        let ys = self.series.iter().flat_map(|s| {
            let band = s.band.iter().flat_map(|b| [b.1, b.2]);
            s.points.iter().map(|p| p.1).chain(band)
        });
        let (x0, mut x1) = finite_range(xs).unwrap_or((0.0, 1.0));
        let (y0, y1) = finite_range(ys).unwrap_or((0.0, 1.0));
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        picture(
            H,
            self.title,
            x0..x1,
            (y0 - pad)..(y1 + pad),
            |chart, legend| {
                chart
                    .configure_mesh()
                    .x_desc(self.x_label)
                    .y_desc(self.y_label)
                    // at most one label per unit: steps are whole numbers
                    .x_labels(((x1 - x0).round() as usize + 1).clamp(2, 10))
                    .x_label_formatter(&fmt_tick)
                    .y_label_formatter(&fmt_tick)
                    .disable_x_mesh()
                    .max_light_lines(0)
                    .bold_line_style(RGBColor(0xe5, 0xe5, 0xe5))
                    .label_style((FONT, 15))
                    .axis_desc_style((FONT, 15))
                    .draw()?;
                let mut entries = Vec::new();
                for ser in &self.series {
                    let color = rgb(&ser.color);
                    let band: Vec<(f64, f64, f64)> = ser
                        .band
                        .iter()
                        .filter(|b| b.1.is_finite() && b.2.is_finite())
                        .copied()
                        .collect();
                    if band.len() >= 2 {
                        let upper = band.iter().map(|b| (b.0, b.2));
                        let lower = band.iter().rev().map(|b| (b.0, b.1));
                        let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
                        let fill = color.mix(0.18).filled();
                        chart.draw_series(std::iter::once(Polygon::new(outline, fill)))?;
                    }
                    // a missing value is left out, the line joins its neighbours
                    let pts: Vec<(f64, f64)> = ser
                        .points
                        .iter()
                        .filter(|p| p.0.is_finite() && p.1.is_finite())
                        .copied()
                        .collect();
                    let style = color.stroke_width(2);
                    if ser.dashed {
                        chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))?;
                    } else {
                        chart.draw_series(LineSeries::new(pts.clone(), style))?;
                    }
                    if let [only] = pts[..] {
                        chart.draw_series(std::iter::once(Circle::new(only, 3, color.filled())))?;
                    }
                    entries.push((ser.name.as_str(), color, ser.dashed));
                }
                draw_legend(legend, &entries)
            },
        )
    }
}

/// The schedule as a strip: one cell per step, coloured by the class that drove it (grey: none).
pub fn timeline_svg(
    title: &str,
    steps: &[(u64, Option<String>)],
    classes: &[String],
) -> Result<String> {
    let first = steps.first().map_or(0, |s| s.0) as f64;
    let last = steps.last().map_or(0, |s| s.0) as f64;
    // as tall as the legend needs, no more: the strip fills the plot
    let height = (70 + 20 * classes.len() as u32).max(180);
    let x = (first - 0.5)..(last + 0.5);
    picture(height, title, x, 0.0..1.0, |chart, legend| {
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("active class")
            .x_labels(steps.len().clamp(2, 10))
            .x_label_formatter(&fmt_tick)
            .y_labels(0)
            .disable_mesh()
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 15))
            .draw()?;
        let color_of = |class: &Option<String>| {
            class
                .as_ref()
                .and_then(|c| classes.iter().position(|k| k == c))
                .map_or(RGBColor(0xbb, 0xbb, 0xbb), |k| {
                    rgb(PALETTE[k % PALETTE.len()])
                })
        };
        chart.draw_series(steps.iter().map(|(step, class)| {
            let x = *step as f64;
            Rectangle::new([(x - 0.5, 0.0), (x + 0.5, 1.0)], color_of(class).filled())
        }))?;
        let entries: Vec<(&str, RGBColor, bool)> = classes
            .iter()
            .enumerate()
            .map(|(k, c)| (c.as_str(), rgb(PALETTE[k % PALETTE.len()]), false))
            .collect();
        draw_legend(legend, &entries)
    })
}

/// Writes `validation.svg`, `schedule.svg` and `variance.svg` for a run; returns their paths.
/// `evals` are the run's validations in step order (from `eval.jsonl`, step 0 included: the
/// per-step metrics only hold the validations made after a training step).
pub fn write_run_plots(
    dir: &Path,
    metrics: &[StepMetrics],
    evals: &[(u64, &EvalReport)],
    classes: &[String],
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut save = |name: &str, svg: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, svg).with_context(|| format!("cannot write {}", p.display()))?;
        out.push(p);
        Ok(())
    };

    let series = validation_series(evals, classes);
    save(
        "validation.svg",
        LineChart {
            title: "Validation score (overall with 95% band; classes dashed)",
            x_label: "training step",
            y_label: "HealthBench-style score",
            series,
        }
        .to_svg()?,
    )?;

    let steps: Vec<(u64, Option<String>)> = metrics
        .iter()
        .map(|m| (m.step, m.active_class.clone()))
        .collect();
    save(
        "schedule.svg",
        timeline_svg("Schedule: class optimized at each step", &steps, classes)?,
    )?;

    let series = variance_series(metrics, classes);
    save(
        "variance.svg",
        LineChart {
            title: "Within-group reward std per step (and zero-spread share)",
            x_label: "training step",
            y_label: "std within group / share",
            series,
        }
        .to_svg()?,
    )?;
    Ok(out)
}

/// The overall validation score with its 95% band, and each class's score dashed.
fn validation_series(evals: &[(u64, &EvalReport)], classes: &[String]) -> Vec<Series> {
    let mut series = vec![Series {
        band: evals
            .iter()
            .map(|(x, v)| {
                let (s, d) = (v.overall.score, 1.96 * v.overall.std);
                (*x as f64, s - d, s + d)
            })
            .collect(),
        ..Series::new(
            "overall",
            "#000000",
            evals
                .iter()
                .map(|(x, v)| (*x as f64, v.overall.score))
                .collect(),
        )
    }];
    for (k, c) in classes.iter().enumerate() {
        let pts: Vec<(f64, f64)> = evals
            .iter()
            .filter_map(|(x, v)| v.classes.get(c).map(|s| (*x as f64, s.score)))
            .collect();
        if !pts.is_empty() {
            series.push(Series {
                dashed: true,
                ..Series::new(c.clone(), PALETTE[k % PALETTE.len()], pts)
            });
        }
    }
    series
}

/// The within-group reward std per step: overall, driving reward, each class, and the
/// zero-spread share.
fn variance_series(metrics: &[StepMetrics], classes: &[String]) -> Vec<Series> {
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
            series.push(Series::new(c.clone(), PALETTE[k % PALETTE.len()], pts));
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
    series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_axes_legend_and_series() {
        let svg = LineChart {
            title: "T",
            x_label: "step",
            y_label: "score",
            series: vec![
                Series::new("a<b", "#000000", vec![(0.0, 0.1), (1.0, 0.5)]),
                Series::new("c", "#0072B2", vec![(0.0, f64::NAN), (1.0, 0.2)]),
            ],
        }
        .to_svg()
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(has_text(&svg, "step") && has_text(&svg, "score") && has_text(&svg, "a&lt;b"));
        assert!(has_text(&svg, "c") && svg.contains("#0072B2"));
        let tl = timeline_svg("S", &[(1, Some("x".into())), (2, None)], &["x".into()]).unwrap();
        assert!(tl.contains("#0072B2") && tl.contains("#BBBBBB") && has_text(&tl, "x"));
    }

    /// Whether the SVG has a text element reading exactly `text` (plotters puts it on its own line).
    fn has_text(svg: &str, text: &str) -> bool {
        svg.contains(&format!(">\n{text}\n<"))
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(fmt_tick(&0.2), "0.2");
        assert_eq!(fmt_tick(&15.0), "15");
        assert_eq!(fmt_tick(&-1e-15), "0");
    }

    /// Horizontal extent (min, max) of the shapes drawn in `color`, from the SVG text.
    fn x_extent(svg: &str, color: &str) -> (f64, f64) {
        let mut xs = Vec::new();
        for el in svg.split('<').filter(|e| e.contains(color)) {
            let num = |key: &str| -> Option<f64> {
                let rest = el.split(&format!(" {key}=\"")).nth(1)?;
                rest.split('"').next()?.parse().ok()
            };
            if let (Some(x), Some(w)) = (num("x"), num("width")) {
                xs.extend([x, x + w]);
            }
            if let Some(points) = el.split(" points=\"").nth(1) {
                let points = points.split('"').next().unwrap_or_default();
                xs.extend(
                    points
                        .split(' ')
                        .filter_map(|p| p.split(',').next()?.parse::<f64>().ok()),
                );
            }
        }
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    }

    fn report(score: f64) -> EvalReport {
        let s = format!(
            r#"{{"overall": {{"score": {score}, "std": 0.01, "n": 4}}, "classes": {{"a": {{"score": {score}, "std": 0.01, "n": 4}}}}, "responses": 4, "excluded": 0, "failed_verdicts": 0}}"#
        );
        serde_json::from_str(&s).unwrap()
    }

    #[test]
    fn run_plots_start_at_step_0_and_fill_their_width() {
        let dir = tempfile::tempdir().unwrap();
        let metric = |step: u64, val: Option<EvalReport>| StepMetrics {
            step,
            phase: 0,
            active_class: Some("a".into()),
            lr: 0.0,
            overall: Default::default(),
            objective_group_std: 0.1,
            classes: Default::default(),
            groups: 1,
            zero_spread_share: 0.0,
            resample: None,
            samples: 2,
            excluded_samples: 0,
            failed_verdicts: 0,
            retried_verdicts: 0,
            judge: Default::default(),
            train_verdicts: 0,
            update: Default::default(),
            val,
            judge_noise: None,
            time_s: Default::default(),
            generated_tokens: 0,
        };
        // validation before training (step 0, only in eval.jsonl) and after steps 2 and 4
        let (r0, r2, r4) = (report(0.2), report(0.4), report(0.6));
        let metrics: Vec<StepMetrics> = (1..=4)
            .map(|s| {
                metric(
                    s,
                    [(2, &r2), (4, &r4)]
                        .iter()
                        .find(|v| v.0 == s)
                        .map(|v| v.1.clone()),
                )
            })
            .collect();
        let evals = [(0, &r0), (2, &r2), (4, &r4)];
        write_run_plots(dir.path(), &metrics, &evals, &["a".to_string()]).unwrap();

        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let val = read("validation.svg");
        // the overall line (black) starts where the x axis starts: the step-0 validation is on it
        let (lo, hi) = x_extent(&val, "#000000\" stroke-width=\"2\"");
        let (band_lo, _) = x_extent(&val, "opacity=\"0.18\"");
        assert!(
            lo < hi && (lo - band_lo).abs() < 1.0,
            "line {lo}..{hi}, band from {band_lo}"
        );
        // ... at the tick labelled 0 (plotters writes `<text x=".." ..>\n0\n</text>`)
        let tick0: Vec<f64> = val
            .split("<text x=\"")
            .filter(|t| t.contains(">\n0\n<"))
            .filter_map(|t| t.split('"').next()?.parse().ok())
            .collect();
        assert!(
            tick0.iter().any(|x| (x - lo).abs() < 1.0),
            "line starts at {lo}, tick 0 at {tick0:?}"
        );

        assert!(!has_text(&val, "1.5"), "fractional step ticks"); // (scores stay in 0.1..0.7)

        // the schedule strip spans the plot's width and most of the picture's height
        let sched = read("schedule.svg");
        let (lo, hi) = x_extent(&sched, "fill=\"#0072B2\"");
        assert!(hi - lo > 0.6 * W as f64, "strip {lo}..{hi}");
        let height: f64 = sched
            .split("height=\"")
            .nth(1)
            .and_then(|h| h.split('"').next()?.parse().ok())
            .unwrap();
        assert!(height <= 200.0, "schedule picture {height} px tall");
    }
}
