//! The `reflex bench` plot: one SVG a person reads to see whether the bundle holds its rate.
//!
//! Drawn with `plotters` through its SVG backend only: no font crate is linked (text layout
//! uses plotters' built-in estimate, the SVG viewer draws the text with its own sans-serif), so it
//! builds without fontconfig or freetype. From top to bottom:
//! - a summary: per stage, a bar from p50 to p99 and a line from min to max, on one log-scale
//!   time axis with the tick budget, the frame-to-command budget and the control period as
//!   vertical lines;
//! - one histogram per stage: counts on the y axis, p50 and p99 markers, the stage's budget (or,
//!   when it is far off the scale, an arrow with its value), log scale on an axis whose spread
//!   needs it (x beyond [`LOG_X_SPREAD`], counts beyond [`LOG_Y_SPREAD`]);
//! - the tick period timeline over the run's time, with the nominal period.
//!
//! Bins come from the report (`StageStats::bins`, the HDR buckets of [`crate::timing`], 0.1%
//! wide); a panel regroups them into at most [`DISPLAY_BINS`] bars of equal width on its axis.

use super::{BenchReport, StageStats};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of the image, pixels.
pub const WIDTH: u32 = 1200;
/// Most bars in one histogram.
pub const DISPLAY_BINS: usize = 48;
/// A latency axis turns logarithmic when its largest value is this many times its smallest.
pub const LOG_X_SPREAD: f64 = 30.0;
/// A count axis turns logarithmic when its tallest bar is this many times its shortest (a bar
/// under 5% of the tallest, a tail, would be a few pixels on a linear axis).
pub const LOG_Y_SPREAD: f64 = 20.0;
/// Floor of a logarithmic count axis: low enough that a single sample shared by two bars shows.
const LOG_Y_FLOOR: f64 = 0.1;
/// A budget further than this factor beyond a histogram's data is marked, not drawn to scale.
const BUDGET_IN_RANGE: f64 = 3.0;

const TITLE_H: u32 = 70;
const SUMMARY_ROW_H: u32 = 34;
const SUMMARY_EXTRA_H: u32 = 110;
const HIST_H: u32 = 250;
const TIMELINE_H: u32 = 290;
const FONT: &str = "sans-serif";

const BAR: RGBColor = RGBColor(70, 130, 180);
const P50: RGBColor = RGBColor(0, 140, 60);
const P99: RGBColor = RGBColor(230, 120, 0);
const BUDGET: RGBColor = RGBColor(200, 0, 0);
const LATENCY_BUDGET: RGBColor = RGBColor(140, 0, 160);
const NOMINAL: RGBColor = RGBColor(110, 110, 110);
const PERIOD: RGBColor = RGBColor(255, 140, 0);

/// Drawing the plot failed (plotters' SVG backend writing into a string; not expected).
#[derive(Debug, thiserror::Error)]
#[error("drawing the bench plot: {0}")]
pub struct PlotError(#[source] DrawingAreaErrorKind<std::io::Error>);

impl From<DrawingAreaErrorKind<std::io::Error>> for PlotError {
    fn from(e: DrawingAreaErrorKind<std::io::Error>) -> Self {
        PlotError(e)
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The SVG document for `report`.
pub fn render(report: &BenchReport) -> Result<String, PlotError> {
    let stages: Vec<&StageStats> = report
        .stages
        .iter()
        .filter(|s| s.stage != "period")
        .collect();
    let hist_rows = stages.len().div_ceil(2) as u32;
    let summary_h = SUMMARY_EXTRA_H + SUMMARY_ROW_H * stages.len().max(1) as u32;
    let height = TITLE_H + summary_h + hist_rows * HIST_H + TIMELINE_H;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, rest) = root.split_vertically(TITLE_H);
        draw_title(&title, report)?;
        let (summary, rest) = rest.split_vertically(summary_h);
        draw_summary(&summary, report, &stages)?;
        let (hists, timeline) = rest.split_vertically(hist_rows * HIST_H);
        if !stages.is_empty() {
            let panels = hists.split_evenly((hist_rows as usize, 2));
            for (panel, st) in panels.iter().zip(&stages) {
                draw_histogram(panel, report, st)?;
            }
        }
        draw_timeline(&timeline, report)?;
        root.present()?;
    }
    Ok(svg)
}

fn draw_title(area: &Area, r: &BenchReport) -> Result<(), PlotError> {
    let verdict = if r.verdict.pass { "PASS" } else { "FAIL" };
    area.draw(&Text::new(
        format!(
            "reflex bench: {} ({} via {}, {:.1} Hz, {} ticks) - {verdict}",
            r.bundle, r.mode, r.backend, r.rate_hz, r.ticks
        ),
        (20, 12),
        (FONT, 22)
            .into_font()
            .color(if r.verdict.pass { &BLACK } else { &BUDGET }),
    ))?;
    area.draw(&Text::new(
        r.verdict.reason.clone(),
        (20, 44),
        (FONT, 14).into_font(),
    ))?;
    Ok(())
}

/// Per-stage p50..p99 bars and min..max lines against the budgets, log time axis.
fn draw_summary(area: &Area, r: &BenchReport, stages: &[&StageStats]) -> Result<(), PlotError> {
    let area = area.margin(0, 10, 10, 20);
    if stages.is_empty() {
        area.draw(&Text::new("no stage samples", (60, 30), (FONT, 16)))?;
        return Ok(());
    }
    let mut lines: Vec<(f64, String, RGBColor)> = vec![];
    if !r.is_model_only() {
        lines.push((
            r.tick_budget_ms,
            format!("tick budget {}", fmt_dur(r.tick_budget_ms)),
            BUDGET,
        ));
        lines.push((
            r.period_ms,
            format!("control period {}", fmt_dur(r.period_ms)),
            NOMINAL,
        ));
    }
    lines.push((
        r.latency_budget_ms,
        format!(
            "frame-to-command budget {} ({} period(s) less {:.0}% margin)",
            fmt_dur(r.latency_budget_ms),
            r.steps_per_inference,
            r.margin * 100.0
        ),
        LATENCY_BUDGET,
    ));
    // The legend: one row under the caption, drawn in pixels.
    let (legend, area) = area.split_vertically(50);
    legend.draw(&Text::new(
        "p50 to p99 per stage (bar), min to max (line), against the budgets",
        (WIDTH as i32 / 2 - 20, 4),
        TextStyle::from((FONT, 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    let mut x = 130;
    for (_, label, color) in &lines {
        legend.draw(&PathElement::new(
            vec![(x, 36), (x + 24, 36)],
            color.stroke_width(3),
        ))?;
        legend.draw(&Text::new(
            label.clone(),
            (x + 30, 36),
            (FONT, 13)
                .into_font()
                .color(color)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += 50 + 7 * label.len() as i32;
    }
    let lo = stages
        .iter()
        .map(|s| positive_floor(s.min_ms, s))
        .fold(f64::INFINITY, f64::min);
    let hi = stages
        .iter()
        .map(|s| s.max_ms)
        .chain(lines.iter().map(|l| l.0))
        .fold(0.0, f64::max);
    let (lo, hi) = (lo / 2.0, hi.max(lo * 10.0) * 2.0);
    let names: Vec<String> = stages.iter().map(|s| s.stage.clone()).collect();
    let n = stages.len();
    // plotters' integer ranges include their end: `0..n - 1` is n rows.
    let mut chart = ChartBuilder::on(&area)
        .margin(5)
        .x_label_area_size(40)
        .y_label_area_size(110)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("milliseconds (log scale)")
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .draw()?;
    for (i, s) in stages.iter().enumerate() {
        let mid = || SegmentValue::CenterOf(i);
        let (min, max) = (positive_floor(s.min_ms, s), s.max_ms.max(lo));
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(min, mid()), (max, mid())],
            BLACK.stroke_width(1),
        )))?;
        let mut bar = Rectangle::new(
            [
                (s.median_ms.max(lo), SegmentValue::Exact(i)),
                (s.p99_ms.max(lo) * 1.02, SegmentValue::Exact(i + 1)),
            ],
            BAR.filled(),
        );
        bar.set_margin(7, 7, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        chart.draw_series(std::iter::once(
            EmptyElement::at((max, mid()))
                + Text::new(
                    format!("p99 {}", fmt_dur(s.p99_ms)),
                    (8, 0),
                    TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
                ),
        ))?;
    }
    for (x, _, color) in &lines {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*x, SegmentValue::Exact(0)), (*x, SegmentValue::Exact(n))],
            color.stroke_width(2),
        )))?;
    }
    Ok(())
}

/// The budget a stage is held to: frame-to-command for inference and end-to-end, the tick for
/// the stages the loop thread runs every tick. `(ms, label)`.
fn stage_budget(r: &BenchReport, stage: &str) -> Option<(f64, &'static str)> {
    match stage {
        "end_to_end" | "inference" => Some((r.latency_budget_ms, "frame-to-command budget")),
        "period" => None,
        _ if r.is_model_only() => None,
        _ => Some((r.tick_budget_ms, "tick budget")),
    }
}

/// One stage's histogram: bars, p50/p99 markers, its budget.
fn draw_histogram(area: &Area, r: &BenchReport, st: &StageStats) -> Result<(), PlotError> {
    let area = area.margin(5, 5, 10, 20);
    // Microseconds when the whole stage is under a millisecond.
    let (scale, unit) = if st.max_ms < 1.0 {
        (1e3, "µs")
    } else {
        (1.0, "ms")
    };
    let first = st.bins.first().map_or(st.min_ms, |b| b[0]);
    let last = st.bins.last().map_or(st.max_ms, |b| b[1]);
    let lo_pos = positive_floor(first, st) * scale;
    let mut hi = last.max(st.max_ms) * scale;
    let budget = stage_budget(r, &st.stage).map(|(b, l)| (b * scale, l));
    if let Some((b, _)) = budget {
        if b <= hi * BUDGET_IN_RANGE {
            hi = hi.max(b * 1.04);
        }
    }
    let log_x = hi / lo_pos > LOG_X_SPREAD;
    // Linear axis: the data (and a budget in range) plus 5% each side.
    let span = hi - first * scale;
    let lo_lin = (first * scale - span * 0.05).max(0.0);
    let hi_lin = hi + span * 0.05;
    let (lo_log, hi_log) = (lo_pos / 1.2, hi * 1.2);
    let axis = if log_x {
        (lo_log, hi_log)
    } else {
        (lo_lin, hi_lin)
    };
    let bins = display_bins(&st.bins, scale, log_x, DISPLAY_BINS, axis);
    let (cmin, cmax) = bins.iter().fold((f64::INFINITY, 1.0f64), |(a, b), x| {
        (a.min(x.2), b.max(x.2))
    });
    // Split buckets make fractional bars; the shortest that counts is one sample.
    let log_y = cmax >= LOG_Y_SPREAD * cmin.max(1.0);
    let caption = format!(
        "{}: n {}, p50 {}, p99 {}, max {}",
        st.stage,
        st.n,
        fmt_unit(st.median_ms * scale, unit),
        fmt_unit(st.p99_ms * scale, unit),
        fmt_unit(st.max_ms * scale, unit)
    );
    let x_desc = format!("latency ({unit}{})", if log_x { ", log scale" } else { "" });
    let y_desc = if log_y { "count (log scale)" } else { "count" };
    let p = HistParts {
        bins: &bins,
        p50: st.median_ms * scale,
        p99: st.p99_ms * scale,
        budget,
        scale,
    };
    let chart = (&area, caption.as_str());
    match (log_x, log_y) {
        (false, false) => hist_chart(
            chart,
            RangedCoordf64::from(lo_lin..hi_lin),
            RangedCoordf64::from(0.0..cmax * 1.5),
            0.0,
            &x_desc,
            y_desc,
            &p,
        ),
        (false, true) => hist_chart(
            chart,
            RangedCoordf64::from(lo_lin..hi_lin),
            LogCoord::from((LOG_Y_FLOOR..cmax * 12.0).log_scale()),
            LOG_Y_FLOOR,
            &x_desc,
            y_desc,
            &p,
        ),
        (true, false) => hist_chart(
            chart,
            LogCoord::from((lo_log..hi_log).log_scale()),
            RangedCoordf64::from(0.0..cmax * 1.5),
            0.0,
            &x_desc,
            y_desc,
            &p,
        ),
        (true, true) => hist_chart(
            chart,
            LogCoord::from((lo_log..hi_log).log_scale()),
            LogCoord::from((LOG_Y_FLOOR..cmax * 12.0).log_scale()),
            LOG_Y_FLOOR,
            &x_desc,
            y_desc,
            &p,
        ),
    }
}

/// What a histogram panel draws, in the panel's unit.
struct HistParts<'a> {
    bins: &'a [(f64, f64, f64)],
    p50: f64,
    p99: f64,
    budget: Option<(f64, &'static str)>,
    /// Axis units per millisecond.
    scale: f64,
}

fn hist_chart<X, Y>(
    (area, caption): (&Area, &str),
    x: X,
    y: Y,
    y_floor: f64,
    x_desc: &str,
    y_desc: &str,
    p: &HistParts,
) -> Result<(), PlotError>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (x0, x1) = (x.range().start, x.range().end);
    let y_top = y.range().end;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 15))
        .margin(5)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_count(*v))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    // On a log axis a bar under its floor is not drawn.
    let bars = || p.bins.iter().filter(|b| b.2 > y_floor);
    chart.draw_series(
        bars().map(|&(l, h, c)| Rectangle::new([(l, y_floor), (h, c)], BAR.filled())),
    )?;
    chart.draw_series(
        bars().map(|&(l, h, c)| Rectangle::new([(l, y_floor), (h, c)], WHITE.stroke_width(1))),
    )?;
    // Marker labels in rows at the top (p50, p99, budget), beside their line: right of it,
    // or left when the line is in the right third of the plot.
    let (px, _) = chart.plotting_area().get_pixel_range();
    let mut marker = |x: f64, row: i32, color: RGBColor, text: String| {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, y_floor), (x, y_top)],
            color.stroke_width(2),
        )))?;
        let at = chart.backend_coord(&(x, y_top)).0;
        let left = at > px.start + (px.end - px.start) * 2 / 3;
        let (dx, hpos) = if left {
            (-4, HPos::Right)
        } else {
            (4, HPos::Left)
        };
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y_top))
                + Text::new(
                    text,
                    (dx, 2 + 15 * row),
                    (FONT, 12)
                        .into_font()
                        .color(&color)
                        .pos(Pos::new(hpos, VPos::Top)),
                ),
        ))?;
        Ok::<(), PlotError>(())
    };
    marker(p.p50, 0, P50, format!("p50 {}", fmt_num(p.p50)))?;
    marker(p.p99, 1, P99, format!("p99 {}", fmt_num(p.p99)))?;
    if let Some((b, label)) = p.budget {
        if b < x0 {
            // Below the data: every sample is over budget.
            chart.draw_series(std::iter::once(
                EmptyElement::at((x0, y_top))
                    + Text::new(
                        format!(
                            "\u{2190} {label} {} (p99 is {:.0}x it)",
                            fmt_dur(b / p.scale),
                            p.p99 / b.max(f64::MIN_POSITIVE)
                        ),
                        (4, 2 + 15 * 2),
                        (FONT, 12)
                            .into_font()
                            .color(&BUDGET)
                            .pos(Pos::new(HPos::Left, VPos::Top)),
                    ),
            ))?;
        } else if b <= x1 {
            marker(b, 2, BUDGET, format!("{label} {}", fmt_num(b)))?;
        } else {
            // Off the scale: say where, at the right edge.
            chart.draw_series(std::iter::once(
                EmptyElement::at((x1, y_top))
                    + Text::new(
                        format!(
                            "{label} {} \u{2192} ({:.0}x p99)",
                            fmt_dur(b / p.scale),
                            b / p.p99.max(f64::MIN_POSITIVE)
                        ),
                        (-4, 2 + 15 * 2),
                        (FONT, 12)
                            .into_font()
                            .color(&BUDGET)
                            .pos(Pos::new(HPos::Right, VPos::Top)),
                    ),
            ))?;
        }
    }
    Ok(())
}

/// The tick period over the run's time, with the nominal period.
fn draw_timeline(area: &Area, r: &BenchReport) -> Result<(), PlotError> {
    let area = area.margin(5, 15, 10, 20);
    let mut t = 0.0;
    let points: Vec<(f64, f64)> = r
        .periods_ms
        .iter()
        .map(|&p| {
            t += p / 1e3;
            (t, p)
        })
        .collect();
    let end = t.max(r.period_ms / 1e3).max(1e-3);
    // Zoomed on the periods (and the nominal one), so jitter shows; the axis says where.
    let (lo, hi) = points.iter().fold((r.period_ms, r.period_ms), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    let pad = ((hi - lo) * 0.1).max(r.period_ms * 0.005).max(1e-6);
    let (bottom, top) = ((lo - pad).max(0.0), hi + pad);
    let caption = if points.is_empty() {
        "tick period: none recorded (model-only run)".to_string()
    } else {
        format!(
            "tick period over the run: nominal {}, max {}, {} missed deadline(s), {} overrun(s)",
            fmt_dur(r.period_ms),
            fmt_dur(points.iter().map(|p| p.1).fold(0.0, f64::max)),
            r.missed_deadlines,
            r.overruns
        )
    };
    if points.is_empty() {
        area.draw(&Text::new(caption, (60, 20), (FONT, 15)))?;
        return Ok(());
    }
    let mut chart = ChartBuilder::on(&area)
        .caption(caption, (FONT, 15))
        .margin(5)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, bottom..top)?;
    chart
        .configure_mesh()
        .x_desc("time since the first timed tick (s)")
        .y_desc("period (ms)")
        .x_label_formatter(&|v| fmt_num(*v))
        .y_label_formatter(&|v| fmt_num(*v))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, r.period_ms), (end, r.period_ms)],
        NOMINAL.stroke_width(2),
    )))?;
    chart.draw_series(std::iter::once(Text::new(
        format!("nominal {}", fmt_dur(r.period_ms)),
        (end, r.period_ms),
        (FONT, 12)
            .into_font()
            .color(&NOMINAL)
            .pos(Pos::new(HPos::Right, VPos::Bottom)),
    )))?;
    chart.draw_series(LineSeries::new(points, PERIOD.stroke_width(1)))?;
    Ok(())
}

/// `bins` (`[lower_ms, upper_ms, count]`) regrouped for display in the axis unit (`scale` per
/// ms): at most `n` bars of equal width on the axis (in log space when `log`), a bucket that
/// straddles bars shared between them in proportion to the overlap (so a bar's count may be
/// fractional; the total is kept). Bars are at least as wide as the widest bucket and as
/// `1/n` of the panel's `axis` range (axis unit), so that data far narrower than the axis (a
/// budget in range well above the samples) still draws visible bars.
/// Returns `(lower, upper, count)`, non-empty bars only, ascending.
fn display_bins(
    bins: &[[f64; 3]],
    scale: f64,
    log: bool,
    n: usize,
    axis: (f64, f64),
) -> Vec<(f64, f64, f64)> {
    let scaled: Vec<(f64, f64, f64)> = bins
        .iter()
        .map(|b| {
            let (l, h) = (b[0] * scale, b[1] * scale);
            // A bucket from 0 (a 0 ns sample) has no log: start it at half its upper edge.
            let l = if log && l <= 0.0 { h / 2.0 } else { l };
            (l, h, b[2])
        })
        .collect();
    let (Some(first), Some(last)) = (scaled.first(), scaled.last()) else {
        return vec![];
    };
    let t = |v: f64| if log { v.ln() } else { v };
    let inv = |v: f64| if log { v.exp() } else { v };
    let (t0, t1) = (t(first.0), t(last.1));
    // Bars no narrower than the widest bucket, so none is spread thinner than it was measured.
    let widest = scaled.iter().map(|b| t(b.1) - t(b.0)).fold(0.0, f64::max);
    let axis_bar = if axis.0 > 0.0 || !log {
        (t(axis.1) - t(axis.0)).max(0.0) / n.max(1) as f64
    } else {
        0.0
    };
    let width = ((t1 - t0) / n.max(1) as f64).max(widest).max(axis_bar);
    if n == 0 || width <= 0.0 {
        return scaled;
    }
    let n = ((t1 - t0) / width).ceil().max(1.0) as usize;
    let mut counts = vec![0.0; n];
    for &(l, h, c) in &scaled {
        // Shared between the bars it overlaps, in proportion to the overlap.
        let (a, b) = (t(l) - t0, t(h) - t0);
        let first = ((a / width).floor().max(0.0) as usize).min(n - 1);
        let last = ((b / width).ceil().max(1.0) as usize).min(n);
        for (i, slot) in counts.iter_mut().enumerate().take(last).skip(first) {
            let (s, e) = (i as f64 * width, (i + 1) as f64 * width);
            let overlap = (b.min(e) - a.max(s)).max(0.0);
            *slot += c * overlap / (b - a);
        }
    }
    counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0.0)
        .map(|(i, &c)| {
            (
                inv(t0 + i as f64 * width),
                inv(t0 + (i + 1) as f64 * width),
                c,
            )
        })
        .collect()
}

/// `v` if positive, else the smallest positive bin edge of `st` (or 1 ns): a log axis' floor.
fn positive_floor(v: f64, st: &StageStats) -> f64 {
    if v > 0.0 {
        return v;
    }
    st.bins
        .iter()
        .flat_map(|b| [b[0], b[1]])
        .find(|&e| e > 0.0)
        .unwrap_or(1e-6)
}

/// A tick label: three significant digits, trailing zeros dropped (`0.001`, `12.5`, `250`).
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - a.log10().floor() as i32).clamp(0, 9) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn fmt_unit(v: f64, unit: &str) -> String {
    format!("{} {unit}", fmt_num(v))
}

/// A duration given in ms, in the unit that reads best (µs, ms or s).
fn fmt_dur(ms: f64) -> String {
    if ms < 1.0 {
        fmt_unit(ms * 1e3, "µs")
    } else if ms >= 1e4 {
        fmt_unit(ms / 1e3, "s")
    } else {
        fmt_unit(ms, "ms")
    }
}

/// A count label: integers only (a log axis also has ticks between them).
fn fmt_count(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{stage_stats, verdict};
    use crate::timing::{Stage, StageTimings};

    /// A 20 Hz pipeline run, 4 steps per inference, 20% margin: tick budget 40 ms, latency
    /// budget 160 ms. `e2e_ms`: the slowest end-to-end sample.
    fn report(e2e_ms: u64) -> BenchReport {
        let mut t = StageTimings::new();
        // A fixed scramble of 0..n, so runs are identical.
        let spread = |i: u64, n: u64| i * 7919 % n;
        for i in 0..1000 {
            t.record(Stage::CaptureWait, 10_000 + spread(i, 990_000));
            t.record(Stage::Preprocess, 600_000 + spread(i, 60_000));
            t.record(Stage::Send, 250 + spread(i, 50));
            t.record(Stage::Tick, 700_000 + spread(i, 100_000));
            t.record(Stage::Period, 50_000_000 + spread(i, 200_000));
        }
        for i in 0..250 {
            t.record(Stage::Inference, 8_000_000 + spread(i, 4_000_000));
            t.record(Stage::EndToEnd, 9_000_000 + spread(i, 4_000_000));
        }
        t.record(Stage::EndToEnd, e2e_ms * 1_000_000);
        let stages = stage_stats(&t);
        let verdict = verdict(&stages, 50.0, 4, 0.2, false);
        BenchReport {
            schema: crate::bench::SCHEMA.into(),
            mode: "pipeline".into(),
            bundle: "test-bundle".into(),
            backend: "tract".into(),
            backend_reason: "test".into(),
            board: reflex_board::BoardIdentity {
                cpu_model: "test cpu".into(),
                cores: 2,
                ..Default::default()
            },
            rate_hz: 20.0,
            period_ms: 50.0,
            steps_per_inference: 4,
            margin: 0.2,
            tick_budget_ms: 40.0,
            latency_budget_ms: 160.0,
            ticks: 1000,
            duration_s: 50.0,
            throughput_hz: 20.0,
            inferences_per_s: 5.0,
            peak_rss_kib: None,
            stages,
            missed_deadlines: 0,
            overruns: 0,
            periods_ms: (0..1000).map(|i| 50.0 + (i % 7) as f64 * 0.01).collect(),
            model_output: None,
            verdict,
        }
    }

    fn texts(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or("").trim().to_string())
            .collect()
    }

    #[test]
    fn draws_axes_markers_budgets_and_the_timeline() {
        let svg = render(&report(60)).expect("renders");
        let t = texts(&svg);
        let has = |p: &str| t.iter().any(|x| x.starts_with(p));
        assert!(
            has("reflex bench: test-bundle") && t[0].ends_with("PASS"),
            "{t:?}"
        );
        for st in [
            "capture_wait",
            "preprocess",
            "inference",
            "send",
            "tick",
            "end_to_end",
        ] {
            assert!(has(&format!("{st}: n ")), "{st} caption: {t:?}");
        }
        assert!(has("inference: n 250, p50"), "{t:?}");
        // Wide spread (10 us to 1 ms): log; narrow (250-300 ns): linear, in microseconds.
        assert!(
            has("latency (µs, log scale)") && has("latency (µs)"),
            "{t:?}"
        );
        assert!(has("count"));
        // The 160 ms budget is within 3x of the 60 ms end-to-end tail: drawn as a marker; the
        // 40 ms tick budget is far beyond the 1 ms preprocessing: an arrow with the ratio.
        // Inference (12 ms at most) names the 160 ms budget off its scale.
        assert!(
            t.iter().any(|x| x == "frame-to-command budget 160"),
            "{t:?}"
        );
        let arrows = |p: &str| t.iter().filter(|x| x.starts_with(p)).count();
        assert_eq!(
            arrows("frame-to-command budget 160 ms \u{2192}"),
            1,
            "{t:?}"
        );
        assert!(has("tick budget 40 ms \u{2192}"), "{t:?}");
        assert!(has("p50 ") && has("p99 "));
        assert!(has("time since the first timed tick (s)") && has("nominal 50 ms"));
        // Summary legend.
        assert!(has("tick budget 40 ms") && has("control period 50 ms"));
        assert!(svg.contains("<polyline"));
    }

    #[test]
    fn a_budget_far_off_every_scale_is_still_named() {
        let t = texts(&render(&report(13)).expect("renders"));
        let arrows = t.iter().filter(|x| x.contains('\u{2192}')).count();
        // Every pipeline stage's histogram names its budget off the scale.
        assert_eq!(arrows, 6, "{t:?}");
    }

    #[test]
    fn display_bins_keep_every_count_and_have_width() {
        // 3% buckets from 1 ms to ~100 ms: regrouped into DISPLAY_BINS bars, counts kept.
        let mut bins = vec![];
        let mut lo = 1.0;
        while lo < 100.0 {
            bins.push([lo, lo * 1.03, 2.0]);
            lo *= 1.03;
        }
        for log in [false, true] {
            let d = display_bins(&bins, 1.0, log, DISPLAY_BINS, (1.0, 100.0));
            assert!(d.len() <= DISPLAY_BINS && d.len() > 10, "{}", d.len());
            let total: f64 = d.iter().map(|b| b.2).sum();
            assert!((total - 2.0 * bins.len() as f64).abs() < 1e-9, "{total}");
            assert!(d.windows(2).all(|w| w[0].1 <= w[1].0 + 1e-9));
        }
        // One narrow bucket (a `send` at ~300 ns): kept with its own, non-zero width.
        let one = display_bins(
            &[[0.000_3, 0.000_31, 12.0]],
            1e3,
            false,
            DISPLAY_BINS,
            (0.3, 0.31),
        );
        assert_eq!(one.len(), 1);
        assert!(one[0].1 - one[0].0 > 0.009, "{one:?}");
        assert_eq!(one[0].2, 12.0);
        // A bucket from zero on a log axis starts above zero.
        let zero = display_bins(
            &[[0.0, 1e-6, 1.0], [1e-3, 1.1e-3, 1.0]],
            1.0,
            true,
            4,
            (5e-7, 1.1e-3),
        );
        assert!(zero.iter().all(|b| b.0 > 0.0), "{zero:?}");
        // Samples of 50.8-58.6 ms in 0.1% buckets on an axis stretched to a 160 ms budget: the
        // bars are at least 1/48 of the axis wide (visible), and every count is kept.
        let mut narrow = vec![];
        let mut lo = 50.8;
        while lo < 58.6 {
            narrow.push([lo, lo * 1.001, 1.0]);
            lo *= 1.001;
        }
        let d = display_bins(&narrow, 1.0, false, DISPLAY_BINS, (50.4, 166.0));
        assert!(
            d.iter().all(|b| b.1 - b.0 >= (166.0 - 50.4) / 48.0 - 1e-9),
            "{d:?}"
        );
        let total: f64 = d.iter().map(|b| b.2).sum();
        assert!((total - narrow.len() as f64).abs() < 1e-9, "{total}");
    }

    #[test]
    fn labels_use_the_digits_they_need() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(250.0), "250");
        assert_eq!(fmt_num(1234.0), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.5), "1.5");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(0.001), "0.001");
        assert_eq!(fmt_num(0.000_456_7), "0.000457");
        assert_eq!(fmt_dur(0.0009), "0.9 µs");
        assert_eq!(fmt_dur(40.0), "40 ms");
        assert_eq!(fmt_dur(25_000.0), "25 s");
        assert_eq!(fmt_count(3.0), "3");
        assert_eq!(fmt_count(2.5), "");
    }
}
