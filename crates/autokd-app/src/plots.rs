//! Charts of a search and of an experiment, drawn with `plotters` into SVG text: `rewards.svg`
//! (every trial's proxy reward, the best so far of the search and of random search, the named
//! baselines as reference lines), and for an experiment `top1.svg` (mean test top-1 per
//! distiller with ± one standard deviation) and `fidelity.svg` (proxy reward against trained
//! top-1). Text is left to the viewer's fonts; plotters sizes the labels by its own estimate.
//!
//! No value is silently clipped: the reward axis spans the accepted rewards down to the lower
//! fence `Q1 − 3·IQR`, and the trials below it (a diverging loss that was still accepted) are
//! drawn as triangles on the bottom edge and counted in the legend, with the lowest value.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::error::{AppError, Result};
use crate::experiment::ExperimentReport;
use crate::search::{NamedBaseline, TrialRecord, best_so_far};

const BLUE_: RGBColor = RGBColor(68, 119, 170);
const RED_: RGBColor = RGBColor(238, 102, 119);
const GREEN_: RGBColor = RGBColor(34, 136, 51);
const ORANGE_: RGBColor = RGBColor(204, 102, 0);
const GREY_: RGBColor = RGBColor(120, 120, 120);
/// Reference-line colours of the named baselines, in order.
const PALETTE: [RGBColor; 6] = [
    RGBColor(102, 204, 238),
    RGBColor(170, 51, 119),
    RGBColor(204, 187, 68),
    RGBColor(0, 68, 136),
    RGBColor(153, 153, 51),
    RGBColor(136, 34, 85),
];

fn plot_error(e: impl std::fmt::Display) -> AppError {
    AppError::Invalid(format!("drawing a chart: {e}"))
}

/// The `q`-quantile of sorted values (linear interpolation).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    let next = sorted.get(i + 1).copied().unwrap_or(sorted[i]);
    sorted[i] + frac * (next - sorted[i])
}

/// The reward axis: `(low, high)` of the drawn range and the fence under which values are
/// outliers. `values` are every accepted reward shown.
fn reward_axis(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let (Some(&min), Some(&max)) = (v.first(), v.last()) else {
        return (-1.0, 1.0, f64::NEG_INFINITY);
    };
    let (q1, q3) = (quantile(&v, 0.25), quantile(&v, 0.75));
    let fence = q1 - 3.0 * (q3 - q1);
    let low = if min < fence { fence } else { min };
    let span = if max > low { max - low } else { 1.0 };
    (low - 0.08 * span, max + 0.05 * span, low)
}

/// One search's rewards as a chart: `label` names its strategy.
pub struct RewardSeries<'a> {
    /// `mcts`, `random`, …
    pub label: &'a str,
    /// Its trials in order.
    pub records: &'a [TrialRecord],
}

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
enum Mark {
    Dot(RGBColor),
    Triangle(RGBColor),
    Cross(RGBColor),
    Line(RGBColor),
    Dashed(RGBColor),
    Bar(RGBColor),
}

/// Width of the legend column right of every chart.
const LEGEND_WIDTH: u32 = 250;

/// The legend, in its own column beside the plot so that it never hides a point.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(Mark, String)],
) -> Result<()> {
    for (k, (mark, label)) in entries.iter().enumerate() {
        let (x, y) = (8, 48 + 20 * k as i32);
        let segment =
            |c: &RGBColor, w: u32| PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(w));
        match mark {
            Mark::Dot(c) => area.draw(&Circle::new((x + 11, y), 4, c.filled())),
            Mark::Triangle(c) => area.draw(&TriangleMarker::new((x + 11, y), 5, c.filled())),
            Mark::Cross(c) => area.draw(&Cross::new((x + 11, y), 4, c.stroke_width(2))),
            Mark::Line(c) => area.draw(&segment(c, 2)),
            Mark::Dashed(c) => area
                .draw(&PathElement::new(
                    vec![(x, y), (x + 8, y)],
                    c.stroke_width(2),
                ))
                .and_then(|_| {
                    area.draw(&PathElement::new(
                        vec![(x + 14, y), (x + 22, y)],
                        c.stroke_width(2),
                    ))
                }),
            Mark::Bar(c) => area.draw(&Rectangle::new(
                [(x + 4, y - 6), (x + 18, y + 6)],
                c.filled(),
            )),
        }
        .map_err(plot_error)?;
        area.draw(&Text::new(
            label.clone(),
            (x + 30, y - 7),
            ("sans-serif", 12),
        ))
        .map_err(plot_error)?;
    }
    Ok(())
}

/// `rewards.svg`: the search's accepted trials (dots), rejected trials (crosses on the bottom
/// edge), outliers (triangles on the bottom edge), the best so far of the search and of the
/// random baseline when it ran, and the named baselines' proxy rewards as dashed lines.
pub fn rewards_svg(
    search: &RewardSeries<'_>,
    random: Option<&RewardSeries<'_>>,
    named: &[NamedBaseline],
) -> Result<String> {
    let accepted = |records: &[TrialRecord]| -> Vec<(f64, f64)> {
        records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.trial.reward.map(|v| ((i + 1) as f64, v)))
            .collect()
    };
    let points = accepted(search.records);
    let mut all: Vec<f64> = points.iter().map(|p| p.1).collect();
    if let Some(r) = random {
        all.extend(accepted(r.records).iter().map(|p| p.1));
    }
    all.extend(named.iter().filter_map(|b| b.outcome.reward));
    let (y0, y1, fence) = reward_axis(&all);
    let edge = y0 + 0.25 * (fence - y0).max(0.0);
    let n = search
        .records
        .len()
        .max(random.map_or(0, |r| r.records.len()))
        .max(2);
    let x1 = n as f64 + 0.5;
    let mut legend: Vec<(Mark, String)> = Vec::new();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560 + LEGEND_WIDTH, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (plot, side) = root.split_horizontally(560);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("proxy reward per trial ({})", search.label),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.5..x1, y0..y1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("trial")
            .y_desc("reward (higher is better)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_error)?;

        let inside: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1 >= fence).collect();
        let below: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1 < fence).collect();
        chart
            .draw_series(
                inside
                    .iter()
                    .map(|&p| Circle::new(p, 3, BLUE_.mix(0.7).filled())),
            )
            .map_err(plot_error)?;
        legend.push((Mark::Dot(BLUE_), format!("{} trial", search.label)));
        if let Some(lowest) = below.iter().map(|p| p.1).min_by(f64::total_cmp) {
            chart
                .draw_series(
                    below
                        .iter()
                        .map(|p| TriangleMarker::new((p.0, edge), 5, ORANGE_.filled())),
                )
                .map_err(plot_error)?;
            legend.push((
                Mark::Triangle(ORANGE_),
                format!("{} below the axis (lowest {lowest:.4})", below.len()),
            ));
        }
        let rejected: Vec<f64> = search
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.trial.reward.is_none())
            .map(|(i, _)| (i + 1) as f64)
            .collect();
        if !rejected.is_empty() {
            chart
                .draw_series(
                    rejected
                        .iter()
                        .map(|&x| Cross::new((x, edge), 4, RED_.stroke_width(2))),
                )
                .map_err(plot_error)?;
            legend.push((Mark::Cross(RED_), format!("{} rejected", rejected.len())));
        }
        let curve = |records: &[TrialRecord]| -> Vec<(f64, f64)> {
            best_so_far(records)
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| ((i + 1) as f64, v.max(edge))))
                .collect()
        };
        chart
            .draw_series(LineSeries::new(curve(search.records), RED_.stroke_width(2)))
            .map_err(plot_error)?;
        legend.push((Mark::Line(RED_), format!("{}, best so far", search.label)));
        if let Some(r) = random {
            chart
                .draw_series(LineSeries::new(curve(r.records), GREEN_.stroke_width(2)))
                .map_err(plot_error)?;
            legend.push((Mark::Line(GREEN_), format!("{}, best so far", r.label)));
        }
        for (k, b) in named.iter().enumerate() {
            let colour = PALETTE[k % PALETTE.len()];
            let Some(v) = b.outcome.reward else {
                legend.push((Mark::Dashed(GREY_), format!("{}: rejected", b.name)));
                continue;
            };
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.5, v.max(edge)), (x1, v.max(edge))],
                    6,
                    4,
                    colour.stroke_width(2),
                ))
                .map_err(plot_error)?;
            let below = if v >= fence { "" } else { " (below the axis)" };
            legend.push((Mark::Dashed(colour), format!("{} {v:.4}{below}", b.name)));
        }
        draw_legend(&side, &legend)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

type Row<'a> = &'a crate::experiment::DistillerResult;

/// Accuracies are fractions in the report and percentages on the charts.
fn pct(d: Row<'_>) -> (f64, f64) {
    (100.0 * d.top1.mean, 100.0 * d.top1.std)
}

/// `top1.svg`: each distiller's mean test top-1 (bars from just under the lowest whisker) with
/// ± one standard deviation over seeds, searched and named distillers in two colours, best
/// first, and the teacher's top-1 as a dashed line.
pub fn top1_svg(report: &ExperimentReport) -> Result<String> {
    let rows: Vec<Row<'_>> = report
        .distillers
        .iter()
        .filter(|d| !d.runs.is_empty())
        .collect();
    let n = rows.len().max(1);
    let teacher = 100.0 * report.teacher_top1;
    let low = rows
        .iter()
        .map(|d| pct(d).0 - pct(d).1)
        .fold(f64::INFINITY, f64::min);
    let high = rows
        .iter()
        .map(|d| pct(d).0 + pct(d).1)
        .fold(teacher, f64::max);
    let (low, high) = if low.is_finite() && high > low {
        (low, high)
    } else {
        (0.0, 100.0)
    };
    let span = high - low;
    let (y0, y1) = (
        (low - 0.15 * span).floor().max(0.0),
        (high + 0.1 * span).min(100.0),
    );
    let names: Vec<String> = rows.iter().map(|d| d.name.clone()).collect();
    let width = (70 * n as u32 + 120).max(480);
    // Names fit under their bars up to 14 bars; more are written downwards.
    let rotate = n > 14;
    let mut legend: Vec<(Mark, String)> = Vec::new();
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width + LEGEND_WIDTH, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (plot, side) = root.split_horizontally(width);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!(
                    "{} → {} on {}: test {}, mean ± std over seeds",
                    report.teacher,
                    report.student,
                    // The dataset's name without its path (`fashion-mnist:/usr/share/…`).
                    report.dataset.split(':').next().unwrap_or_default(),
                    report.metric
                ),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(if rotate { 90 } else { 40 })
            .y_label_area_size(56)
            .build_cartesian_2d((0u32..n as u32 - 1).into_segmented(), y0..y1)
            .map_err(plot_error)?;
        // An integer range is inclusive in plotters: `0..n − 1` holds the `n` bars.
        let label_of = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(n)
            .x_label_formatter(&label_of)
            .y_desc(format!("test {} (%)", report.metric))
            .light_line_style(WHITE.mix(0.0))
            .disable_x_mesh();
        if rotate {
            mesh.x_label_style(
                ("sans-serif", 11)
                    .into_font()
                    .transform(FontTransform::Rotate90),
            );
        }
        mesh.draw().map_err(plot_error)?;
        for (kind, colour) in [("searched", BLUE_), ("baseline", GREY_)] {
            let data: Vec<(u32, f64)> = rows
                .iter()
                .enumerate()
                .filter(|(_, d)| d.kind == kind)
                .map(|(i, d)| (i as u32, pct(d).0))
                .collect();
            if data.is_empty() {
                continue;
            }
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(colour.mix(0.8).filled())
                        .baseline(y0)
                        .margin(8)
                        .data(data),
                )
                .map_err(plot_error)?;
            legend.push((Mark::Bar(colour), kind.to_string()));
        }
        chart
            .draw_series(rows.iter().enumerate().map(|(i, d)| {
                let (m, s) = pct(d);
                ErrorBar::new_vertical(
                    SegmentValue::CenterOf(i as u32),
                    m - s,
                    m,
                    m + s,
                    BLACK.stroke_width(1),
                    8,
                )
            }))
            .map_err(plot_error)?;
        legend.push((Mark::Line(BLACK), "± one std over seeds".into()));
        chart
            .draw_series(DashedLineSeries::new(
                [
                    (SegmentValue::Exact(0), teacher),
                    (SegmentValue::Last, teacher),
                ],
                6,
                4,
                RED_.stroke_width(2),
            ))
            .map_err(plot_error)?;
        legend.push((Mark::Dashed(RED_), format!("teacher {teacher:.2}%")));
        draw_legend(&side, &legend)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// The distillers `fidelity.svg` shows: trained, with a finite proxy reward (it is drawn when
/// there are two or more).
pub fn fidelity_points(report: &ExperimentReport) -> Vec<Row<'_>> {
    report
        .distillers
        .iter()
        .filter(|d| !d.runs.is_empty() && d.proxy_reward.is_some_and(f64::is_finite))
        .collect()
}

/// `fidelity.svg`: each distiller with a proxy reward, its reward against its mean test top-1
/// (± one standard deviation); searched distillers as dots, named baselines as labelled
/// triangles; the caption gives the rank correlations when the report has them. `None` when
/// fewer than two distillers have both numbers.
pub fn fidelity_svg(report: &ExperimentReport) -> Result<Option<String>> {
    let rows = fidelity_points(report);
    if rows.len() < 2 {
        return Ok(None);
    }
    let xs: Vec<f64> = rows.iter().filter_map(|d| d.proxy_reward).collect();
    let xmin = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let xmax = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = 0.06 * (xmax - xmin).max(1e-6);
    let low = rows
        .iter()
        .map(|d| pct(d).0 - pct(d).1)
        .fold(f64::INFINITY, f64::min);
    let high = rows
        .iter()
        .map(|d| pct(d).0 + pct(d).1)
        .fold(f64::NEG_INFINITY, f64::max);
    let ypad = 0.08 * (high - low).max(0.1);
    let mut legend: Vec<(Mark, String)> = Vec::new();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560 + LEGEND_WIDTH, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (plot, side) = root.split_horizontally(560);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("proxy reward against trained {}", report.metric),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((xmin - pad)..(xmax + pad), (low - ypad)..(high + ypad))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("proxy reward")
            .y_desc(format!("test {} (%), mean ± std", report.metric))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(rows.iter().filter_map(|d| {
                let (m, s) = pct(d);
                d.proxy_reward
                    .map(|x| ErrorBar::new_vertical(x, m - s, m, m + s, GREY_.stroke_width(1), 6))
            }))
            .map_err(plot_error)?;
        let searched: Vec<(f64, f64)> = rows
            .iter()
            .filter(|d| d.kind != "baseline")
            .filter_map(|d| d.proxy_reward.map(|x| (x, pct(d).0)))
            .collect();
        if !searched.is_empty() {
            chart
                .draw_series(searched.iter().map(|&p| Circle::new(p, 4, BLUE_.filled())))
                .map_err(plot_error)?;
            legend.push((Mark::Dot(BLUE_), "searched".into()));
        }
        let named: Vec<(f64, f64, String)> = rows
            .iter()
            .filter(|d| d.kind == "baseline")
            .filter_map(|d| d.proxy_reward.map(|x| (x, pct(d).0, d.name.clone())))
            .collect();
        if !named.is_empty() {
            chart
                .draw_series(named.into_iter().map(|(x, y, name)| {
                    EmptyElement::at((x, y))
                        + TriangleMarker::new((0, 0), 5, ORANGE_.filled())
                        + Text::new(name, (7, -14), ("sans-serif", 11))
                }))
                .map_err(plot_error)?;
            legend.push((Mark::Triangle(ORANGE_), "named baseline".into()));
        }
        legend.push((Mark::Line(GREY_), "± one std over seeds".into()));
        if let Some(f) = &report.fidelity {
            legend.push((
                Mark::Dot(WHITE),
                format!("{} searched distillers:", f.distillers),
            ));
            legend.push((
                Mark::Dot(WHITE),
                format!(
                    "Kendall τ {:.2} [{:.2}, {:.2}]",
                    f.kendall, f.kendall_ci.0, f.kendall_ci.1
                ),
            ));
            legend.push((
                Mark::Dot(WHITE),
                format!(
                    "Spearman ρ {:.2} [{:.2}, {:.2}]",
                    f.spearman, f.spearman_ci.0, f.spearman_ci.1
                ),
            ));
        }
        draw_legend(&side, &legend)?;
        root.present().map_err(plot_error)?;
    }
    Ok(Some(svg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_distill::DistillerSpec;
    use autokd_search::Trial;
    use autokd_train::TrialOutcome;

    fn record(index: usize, reward: Option<f64>) -> TrialRecord {
        TrialRecord {
            trial: Trial {
                index,
                choices: vec![0],
                reward,
            },
            spec: DistillerSpec::baseline("kd").unwrap(),
            outcome: TrialOutcome {
                reward,
                ..TrialOutcome::default()
            },
        }
    }

    #[test]
    fn quantiles_and_the_fence_by_hand() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&v, 0.25), 2.0);
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert!((quantile(&[0.0, 10.0], 0.3) - 3.0).abs() < 1e-12);
        // Sane rewards −2 … −0.4 and one −4000: Q1 −1.6, Q3 −0.8 (of the 9 values below),
        // fence −1.6 − 3·0.8 = −4.0; the axis stops there, not at −4000.
        let mut r = vec![-2.0, -1.8, -1.6, -1.4, -1.2, -1.0, -0.8, -0.6, -0.4];
        r.push(-4000.0);
        let (y0, y1, fence) = reward_axis(&r);
        let mut sorted = r.clone();
        sorted.sort_by(f64::total_cmp);
        let (q1, q3) = (quantile(&sorted, 0.25), quantile(&sorted, 0.75));
        assert!((fence - (q1 - 3.0 * (q3 - q1))).abs() < 1e-12);
        assert!(
            fence > -10.0 && y0 < fence && y0 > -10.0 && y1 > -0.4,
            "{y0} {y1} {fence}"
        );
    }

    /// An outlier is marked and counted, not clipped away; rejected trials and the named
    /// baselines appear with their labels; the output is one SVG document.
    #[test]
    fn the_reward_chart_marks_outliers_and_baselines() {
        let mut records: Vec<TrialRecord> = (0..12)
            .map(|i| record(i, Some(-2.0 + 0.1 * i as f64)))
            .collect();
        records.push(record(12, Some(-4000.0)));
        records.push(record(13, None));
        let random: Vec<TrialRecord> = (0..14)
            .map(|i| record(i, Some(-1.9 + 0.05 * i as f64)))
            .collect();
        let named = vec![NamedBaseline {
            name: "kd".into(),
            distiller: "L = task + 1·KL_T4(logits)".into(),
            outcome: TrialOutcome {
                reward: Some(-1.25),
                ..TrialOutcome::default()
            },
            rank: Some(7),
            accepted: 13,
        }];
        let svg = rewards_svg(
            &RewardSeries {
                label: "mcts",
                records: &records,
            },
            Some(&RewardSeries {
                label: "random search",
                records: &random,
            }),
            &named,
        )
        .unwrap();
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "1 below the axis (lowest -4000.0000)",
            "1 rejected",
            "kd -1.2500",
            "mcts, best so far",
            "random search, best so far",
            "reward (higher is better)",
        ] {
            assert!(svg.contains(text), "missing `{text}`");
        }
        // Tick labels stay in the sane range: none near the outlier.
        assert!(!svg.contains(">-4000<") && !svg.contains(">-3000<"));
    }

    fn report() -> ExperimentReport {
        use crate::experiment::{DistillerResult, MeanStd, RunResult};
        let row = |name: &str, kind: &'static str, proxy: Option<f64>, top1: [f64; 3]| {
            let runs: Vec<RunResult> = top1
                .iter()
                .enumerate()
                .map(|(seed, &t)| RunResult {
                    seed: seed as u64,
                    top1: t,
                    best_epoch: 1,
                    last_top1: t,
                    seconds: 1.0,
                })
                .collect();
            DistillerResult {
                name: name.into(),
                kind,
                distiller: String::new(),
                spec: DistillerSpec::baseline("kd").unwrap(),
                proxy_reward: proxy,
                proxy_rank: proxy.map(|_| 1),
                top1: MeanStd::of(&top1),
                last_top1: MeanStd::of(&top1),
                runs,
            }
        };
        ExperimentReport {
            teacher: "resnet20".into(),
            student: "resnet8".into(),
            dataset: "fashion-mnist".into(),
            metric: "top-1".into(),
            teacher_top1: 0.8967,
            recipe: autokd_train::Recipe::digits(),
            images: (800, 200, 10_000),
            distillers: vec![
                row("trial-3", "searched", Some(-0.9), [0.84, 0.85, 0.86]),
                row("kd", "baseline", Some(-1.1), [0.83, 0.84, 0.82]),
                row("trial-9", "searched", Some(-1.3), [0.80, 0.81, 0.83]),
                row("vanilla", "baseline", None, [0.78, 0.79, 0.77]),
            ],
            fidelity: None,
            complete: true,
        }
    }

    /// The experiment's charts name every distiller, in percent, with the teacher's line; the
    /// scatter leaves out the distiller without a proxy reward and labels the baseline.
    #[test]
    fn the_experiment_charts_show_every_distiller() {
        let r = report();
        let bars = top1_svg(&r).unwrap();
        for text in [
            "trial-3",
            "kd",
            "trial-9",
            "vanilla",
            "teacher 89.67%",
            "searched",
            "baseline",
        ] {
            assert!(bars.contains(text), "top1.svg lacks `{text}`");
        }
        let scatter = fidelity_svg(&r).unwrap().unwrap();
        assert!(scatter.contains("\nkd\n") && !scatter.contains("vanilla"));
        assert_eq!(fidelity_points(&r).len(), 3);
        // One point is not a scatter.
        let mut one = r.clone();
        one.distillers.truncate(1);
        assert!(fidelity_svg(&one).unwrap().is_none());
        // A segmentation experiment names its score in the charts and in results.md.
        let seg = ExperimentReport {
            metric: "mIoU".into(),
            ..r.clone()
        };
        assert!(top1_svg(&seg).unwrap().contains("test mIoU (%)"));
        let md = crate::experiment::results_markdown(&seg);
        assert!(
            md.contains("(test mIoU 89.67%)")
                && md.contains("| mIoU | last |")
                && md.contains("mIoU is the test mIoU at the epoch with the best validation mIoU"),
            "{md}"
        );
        assert!(crate::experiment::results_markdown(&r).contains("Top-1 is the test accuracy"));
    }
}
