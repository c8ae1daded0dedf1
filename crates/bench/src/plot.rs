//! Plots, as SVG and PNG: latency percentiles per architecture; for the
//! sweep, achieved throughput and p99 against the offered load; for the
//! sustained mode, accepted → confirmed p99 and the pipeline lag against the
//! offered order rate.
//!
//! PNG text needs a font; DejaVu Sans is bundled (assets/, with its licence)
//! so plots render the same on a machine without fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use crate::BenchError;
use crate::report::BenchReport;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (960, 540);
const COLORS: [RGBColor; 4] = [
    RGBColor(214, 69, 65),
    RGBColor(38, 115, 191),
    RGBColor(235, 150, 140),
    RGBColor(140, 180, 225),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let registered =
            plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok();
        assert!(registered, "the bundled font parses");
    });
}

/// Writes every plot the report has data for; returns the files written.
pub fn write_all(report: &BenchReport, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    register_font();
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::Output(format!("{}: {e}", dir.display())))?;
    let mut charts = Vec::new();
    if !report.architectures.is_empty() {
        charts.push(("latency-percentiles", Chart::Latency));
    }
    if report.sustained.iter().any(|s| !s.steps.is_empty()) {
        charts.push((
            "sustained-confirm-p99",
            Chart::Sustained(SustainedAxis::ConfirmP99),
        ));
        charts.push(("sustained-lag", Chart::Sustained(SustainedAxis::LagMax)));
    }
    if report.ceiling.is_some() {
        charts.push(("read-ceiling", Chart::Ceiling));
    }
    if report.staleness.is_some() {
        charts.push(("staleness", Chart::Staleness));
    }
    if report.live.is_some() {
        charts.push(("live-latency", Chart::LiveLatency));
        charts.push(("live-messages", Chart::LiveMessages));
    }
    if report.soak.is_some() {
        charts.push(("soak-memory", Chart::Soak(SoakAxis::Memory)));
        charts.push(("soak-lag", Chart::Soak(SoakAxis::Lag)));
        charts.push(("soak-p99", Chart::Soak(SoakAxis::P99)));
    }
    if report.architectures.iter().any(|a| !a.sweep.is_empty()) {
        charts.push(("sweep-throughput", Chart::Sweep(SweepAxis::Throughput)));
        charts.push(("sweep-p99", Chart::Sweep(SweepAxis::P99)));
    }
    let mut written = Vec::new();
    for (name, chart) in charts {
        let svg = dir.join(format!("{name}.svg"));
        let png = dir.join(format!("{name}.png"));
        render(
            SVGBackend::new(&svg, SIZE).into_drawing_area(),
            report,
            chart,
        )?;
        render(
            BitMapBackend::new(&png, SIZE).into_drawing_area(),
            report,
            chart,
        )?;
        written.extend([svg, png]);
    }
    Ok(written)
}

/// One of the charts a report can have.
#[derive(Clone, Copy)]
enum Chart {
    Latency,
    Sustained(SustainedAxis),
    Sweep(SweepAxis),
    Ceiling,
    Staleness,
    LiveLatency,
    LiveMessages,
    Soak(SoakAxis),
}

/// What a soak chart shows over time.
#[derive(Clone, Copy)]
enum SoakAxis {
    Memory,
    Lag,
    P99,
}

/// Draws `chart` on a white `root` and writes it out.
fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &BenchReport,
    chart: Chart,
) -> Result<(), BenchError> {
    root.fill(&WHITE)
        .map_err(|e| BenchError::Output(e.to_string()))?;
    match chart {
        Chart::Latency => latency_chart(report, &root),
        Chart::Sustained(axis) => sustained_chart(report, &root, axis),
        Chart::Sweep(axis) => sweep_chart(report, &root, axis),
        Chart::Ceiling => ceiling_chart(report, &root),
        Chart::Staleness => staleness_chart(report, &root),
        Chart::LiveLatency => live_latency_chart(report, &root),
        Chart::LiveMessages => live_messages_chart(report, &root),
        Chart::Soak(axis) => soak_chart(report, &root, axis),
    }
    .map_err(BenchError::Output)?;
    root.present()
        .map_err(|e| BenchError::Output(e.to_string()))
}

/// A chart with `caption` and the room every chart here leaves for labels.
fn builder<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(caption, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70);
    builder
}

const PERCENTILES: [f64; 8] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

fn latency_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let lines = report
        .architectures
        .iter()
        .map(|arch| (arch.title(), arch.percentiles.as_slice()))
        .collect();
    percentile_chart(
        root,
        "Response time by percentile (lower is better)",
        "milliseconds (log scale)",
        lines,
    )
}

fn staleness_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let Some(run) = &report.staleness else {
        return Ok(());
    };
    let lines = run
        .scenarios
        .iter()
        .map(|s| (s.name.clone(), s.behind_at_most_percentiles.as_slice()))
        .collect();
    percentile_chart(
        root,
        "How far behind the database reads were, at most (lower is better)",
        "milliseconds (log scale; 0 drawn at 0.01)",
        lines,
    )
}

fn live_latency_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let Some(run) = &report.live else {
        return Ok(());
    };
    let lines = run
        .steps
        .iter()
        .flat_map(|step| {
            [
                (
                    format!("orders:{{user}}, {:.0} orders/s", step.order_rate),
                    step.order_message_percentiles.as_slice(),
                ),
                (
                    format!("product:{{id}} (shared), {:.0} orders/s", step.order_rate),
                    step.product_message_percentiles.as_slice(),
                ),
            ]
        })
        .collect();
    percentile_chart(
        root,
        &format!(
            "Commit → client over {} connections (lower is better)",
            run.connections_open
        ),
        "milliseconds (log scale)",
        lines,
    )
}

fn live_messages_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let Some(run) = &report.live else {
        return Ok(());
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = run
        .steps
        .iter()
        .map(|step| {
            let points = step
                .messages_each_second
                .iter()
                .enumerate()
                .map(|(second, n)| (second as f64, *n as f64))
                .collect();
            (format!("{:.0} orders/s", step.order_rate), points)
        })
        .collect();
    let seconds = lines.iter().map(|(_, p)| p.len()).max().unwrap_or(0).max(2);
    let max = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(_, n)| *n))
        .fold(1.0, f64::max);
    let mut chart = builder(root, "Messages delivered to the clients, each second")
        .build_cartesian_2d(0.0..seconds as f64, 0.0..max * 1.2)
        .map_err(|e| e.to_string())?;
    draw_mesh(
        &mut chart,
        "seconds since the step's orders started",
        "messages in that second",
    )?;
    draw_lines(&mut chart, lines)
}

/// `--soak`: memory, lag or p99 over the run, the faults shaded.
fn soak_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
    axis: SoakAxis,
) -> Result<(), String> {
    let Some(run) = &report.soak else {
        return Ok(());
    };
    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    let series = |value: &dyn Fn(&crate::soak::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        run.samples
            .iter()
            .filter_map(|s| Some((s.at_secs, value(s)?)))
            .collect()
    };
    let (caption, y_desc, lines): (&str, &str, Vec<Line<f64, f64>>) = match axis {
        SoakAxis::Memory => (
            "Resident memory during the soak (faults shaded)",
            "MiB",
            vec![
                ("orderflow api".into(), series(&|s| mib(s.api_rss_kib))),
                (
                    "orderflow worker (restarted after a kill)".into(),
                    series(&|s| mib(s.worker_rss_kib)),
                ),
                (
                    "api, anonymous (heap)".into(),
                    series(&|s| mib(s.api_anon_kib)),
                ),
                (
                    "worker, anonymous (heap)".into(),
                    series(&|s| mib(s.worker_anon_kib)),
                ),
            ],
        ),
        SoakAxis::Lag => (
            "Pipeline lag and dead letters during the soak (faults shaded)",
            "events",
            vec![
                ("lag (consumer groups + outbox)".into(), series(&|s| s.lag)),
                ("dead letters".into(), series(&|s| s.dead_letters)),
            ],
        ),
        SoakAxis::P99 => (
            "p99 response time per 10 s window (faults shaded)",
            "milliseconds",
            vec![
                (
                    "all requests".into(),
                    run.windows
                        .iter()
                        .map(|w| (w.ended_secs, w.p99_ms))
                        .collect(),
                ),
                (
                    "orders".into(),
                    run.windows
                        .iter()
                        .map(|w| (w.ended_secs, w.order_p99_ms))
                        .collect(),
                ),
            ],
        ),
    };
    let end = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(t, _)| *t))
        .fold(run.duration_secs, f64::max)
        .max(1.0);
    let top = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(_, v)| *v))
        .fold(1.0, f64::max);
    // Headroom above the lines for the faults' names and the legend.
    let ceiling = top * 1.45;
    let mut chart = builder(root, caption)
        .build_cartesian_2d(0.0..end, 0.0..ceiling)
        .map_err(|e| e.to_string())?;
    draw_mesh(&mut chart, "seconds since the load started", y_desc)?;
    chart
        .draw_series(run.faults.iter().map(|fault| {
            Rectangle::new(
                [(fault.started_secs, 0.0), (fault.ended_secs, ceiling)],
                RGBColor(250, 200, 80).mix(0.3).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(run.faults.iter().map(|fault| {
            Text::new(
                fault.fault.short(),
                (fault.started_secs, ceiling * 0.985),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| e.to_string())?;
    for (index, (label, points)) in lines.into_iter().enumerate() {
        draw_line(&mut chart, label, points, COLORS[index % COLORS.len()])?;
    }
    // Below the row of fault names.
    draw_legend_at(&mut chart, SeriesLabelPosition::Coordinate(12, 28))
}

/// One line per `(title, [(percentile, ms)])` over [`PERCENTILES`], on a
/// log scale.
fn percentile_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    lines: Vec<(String, &[(f64, f64)])>,
) -> Result<(), String> {
    let values = || lines.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v));
    let max = values().fold(1.0f64, f64::max);
    let min = values().filter(|v| *v > 0.0).fold(max, f64::min);
    let mut chart = builder(root, caption)
        .build_cartesian_2d(
            0usize..PERCENTILES.len() - 1,
            ((min * 0.8).max(0.01)..max * 1.25).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(PERCENTILES.len())
        .x_label_formatter(&|i| {
            PERCENTILES
                .get(*i)
                .map(|p| format!("p{p}"))
                .unwrap_or_default()
        })
        .y_desc(y_desc)
        .x_desc("percentile")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let lines = lines.into_iter().map(|(title, percentiles)| {
        let points = percentiles
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (i, v.max(0.01)));
        (title, points.collect())
    });
    draw_lines(&mut chart, lines.collect())
}

#[derive(Clone, Copy)]
enum SweepAxis {
    Throughput,
    P99,
}

fn sweep_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
    axis: SweepAxis,
) -> Result<(), String> {
    let steps = report.architectures.iter().flat_map(|a| a.sweep.iter());
    let max_offered = steps.clone().map(|s| s.offered_rps).fold(1.0f64, f64::max);
    let value = |s: &crate::report::SweepStep| match axis {
        SweepAxis::Throughput => s.achieved_rps,
        SweepAxis::P99 => s.p99_ms,
    };
    let max_value = steps.map(value).fold(1.0f64, f64::max);
    let (caption, y_desc) = match axis {
        SweepAxis::Throughput => (
            "Achieved throughput against offered load",
            "achieved requests/s",
        ),
        SweepAxis::P99 => (
            "p99 response time against offered load",
            "p99 milliseconds (log scale)",
        ),
    };
    let mut chart = builder(root, caption)
        .build_cartesian_2d(
            (1.0f64..max_offered * 1.5).log_scale(),
            (0.1f64..max_value * 1.5).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    draw_mesh(&mut chart, "offered load, requests/s (log scale)", y_desc)?;
    let lines = report.architectures.iter().map(|arch| {
        let points = arch
            .sweep
            .iter()
            .map(|s| (s.offered_rps, value(s).max(0.1)));
        (arch.title(), points.collect())
    });
    draw_lines(&mut chart, lines.collect())
}

#[derive(Clone, Copy)]
enum SustainedAxis {
    ConfirmP99,
    LagMax,
}

/// Per architecture, one point per step: the offered order rate against the
/// step's accepted → confirmed p99 (with the target as a dashed line) or its
/// highest lag; a hollow dot marks the step not held.
fn sustained_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
    axis: SustainedAxis,
) -> Result<(), String> {
    let value = |s: &crate::sustained::SustainedStep| match axis {
        // Log scales: a floor keeps 0 (v1's lag) on the chart.
        SustainedAxis::ConfirmP99 => s.confirm_p99_ms.unwrap_or(0.0).max(0.1),
        SustainedAxis::LagMax => s.lag_max.max(0.0) + 1.0,
    };
    let steps = report.sustained.iter().flat_map(|r| r.steps.iter());
    let max_offered = steps.clone().map(|s| s.offered_rps).fold(1.0f64, f64::max);
    let target = report
        .sustained
        .first()
        .map(|r| r.criteria.confirm_p99_ms)
        .unwrap_or(150.0);
    let mut max_value = steps.clone().map(value).fold(1.0f64, f64::max);
    let mut min_value = steps.map(value).fold(max_value, f64::min);
    if let SustainedAxis::ConfirmP99 = axis {
        max_value = max_value.max(target);
        min_value = min_value.min(target);
    }
    let (caption, y_desc) = match axis {
        SustainedAxis::ConfirmP99 => (
            "Accepted → confirmed p99 against the offered order rate",
            "p99 milliseconds (log scale)",
        ),
        SustainedAxis::LagMax => (
            "Highest pipeline lag during each step",
            "events behind + 1 (log scale)",
        ),
    };
    // Linear rates (a log axis over less than a decade has no labels);
    // headroom above the highest value for the legend.
    let x_range = 0.0..max_offered * 1.1;
    let mut chart = builder(root, caption)
        .build_cartesian_2d(
            x_range.clone(),
            ((min_value * 0.5).max(0.1)..max_value * 8.0).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    draw_mesh(
        &mut chart,
        "offered orders/s (hollow dot: not held)",
        y_desc,
    )?;
    if let SustainedAxis::ConfirmP99 = axis {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x_range.start, target), (x_range.end, target)],
                8,
                6,
                BLACK.mix(0.6).stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(format!("target {target:.0} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    for (index, run) in report.sustained.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        let points: Vec<(f64, f64)> = run
            .steps
            .iter()
            .map(|s| (s.offered_rps, value(s)))
            .collect();
        draw_line(
            &mut chart,
            format!("{}: {}", run.name, run.label),
            points,
            color,
        )?;
        chart
            .draw_series(run.steps.iter().map(|s| {
                let style = if s.held {
                    color.filled()
                } else {
                    color.stroke_width(2)
                };
                Circle::new((s.offered_rps, value(s)), 5, style)
            }))
            .map_err(|e| e.to_string())?;
    }
    draw_legend(&mut chart)
}

/// A labelled series of (x, y) points.
type Line<X, Y> = (String, Vec<(X, Y)>);

/// One line with dots per architecture, in the architecture's colour, and the legend.
fn draw_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: Vec<Line<X::ValueType, Y::ValueType>>,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    for (index, (label, points)) in lines.into_iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        draw_line(chart, label, points.clone(), color)?;
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
            .map_err(|e| e.to_string())?;
    }
    draw_legend(chart)
}

/// The grid, with the axes described.
fn draw_mesh<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    x_desc: &str,
    y_desc: &str,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged + ValueFormatter<X::ValueType>,
    Y: Ranged + ValueFormatter<Y::ValueType>,
{
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| e.to_string())
}

/// A line in `color`, with its entry in the legend.
fn draw_line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    label: String,
    points: Vec<(X::ValueType, Y::ValueType)>,
    color: RGBColor,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(3)))
        .map_err(|e| e.to_string())?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
    Ok(())
}

/// The legend, in the upper left corner.
fn draw_legend<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
{
    draw_legend_at(chart, SeriesLabelPosition::UpperLeft)
}

/// The legend at `position`.
fn draw_legend_at<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(position)
        .draw()
        .map_err(|e| e.to_string())
}

/// `--read-ceiling`: every round's throughput per server, as bars (one
/// colour per round).
fn ceiling_chart<DB: DrawingBackend>(
    report: &BenchReport,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), String> {
    let Some(run) = &report.ceiling else {
        return Ok(());
    };
    let top = run.rows.iter().map(|r| r.best()).fold(1.0f64, f64::max);
    let names: Vec<&str> = run.rows.iter().map(|r| r.name).collect();
    let mut chart = builder(
        root,
        "Read path throughput: round 1 red, round 2 blue (higher is better)",
    )
    .build_cartesian_2d(0.0..names.len() as f64, 0.0..top * 1.15)
    .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len() * 2 + 1)
        .x_label_formatter(&|x| {
            // Only the segment centres carry a name.
            let centre = x - x.floor();
            match names.get(x.floor() as usize) {
                Some(name) if (centre - 0.5).abs() < 1e-6 => (*name).to_owned(),
                _ => String::new(),
            }
        })
        .y_desc("requests/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, row) in run.rows.iter().enumerate() {
        let rounds = row.requests_per_sec.len().max(1) as f64;
        let width = 0.8 / rounds;
        for (round, rate) in row.requests_per_sec.iter().enumerate() {
            let left = i as f64 + 0.1 + width * round as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left, 0.0), (left + width * 0.9, *rate)],
                    COLORS[round % COLORS.len()].filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Machine;
    use crate::sustained::{Criteria, SustainedRun, SustainedStep};

    fn step(rate: f64, lag: f64, p99: Option<f64>, held: bool) -> SustainedStep {
        SustainedStep {
            offered_rps: rate,
            lag_max: lag,
            confirm_p99_ms: p99,
            held,
            ..Default::default()
        }
    }

    #[test]
    fn sustained_plots_render_zero_lag_and_missing_p99() {
        let criteria = Criteria::for_tests();
        let run = |name: &str, steps| SustainedRun {
            name: name.into(),
            label: "test".into(),
            criteria,
            lag_exported: true,
            steps,
            max_held_rps: None,
            notes: vec![],
        };
        let report = BenchReport {
            started_at: chrono::Utc::now(),
            command: "orderflow bench --sustained".into(),
            machine: Machine::this(),
            settings: serde_json::json!({}),
            architectures: vec![],
            sustained: vec![
                run("v1", vec![step(250.0, 0.0, None, false)]),
                run(
                    "v2",
                    vec![
                        step(250.0, 120.0, Some(90.0), true),
                        step(380.0, 9000.0, Some(2400.0), false),
                    ],
                ),
            ],
            ceiling: None,
            staleness: None,
            live: None,
            soak: None,
            notes: vec![],
        };
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(&report, dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "sustained-confirm-p99.svg",
                "sustained-confirm-p99.png",
                "sustained-lag.svg",
                "sustained-lag.png"
            ],
            "no latency plot without the comparison"
        );
        let svg = std::fs::read_to_string(dir.path().join("sustained-confirm-p99.svg")).unwrap();
        assert!(
            svg.contains("target 150 ms") && svg.contains("v2: test"),
            "legend"
        );
    }
}
