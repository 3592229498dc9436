//! The lab's bar charts (plotters, SVG backend only): one chart per
//! plotted metric and side, groups of bars by workload (and protection,
//! for kernel runs; the kernel's replay of a trace is `trace <name>`),
//! one bar per strategy.
//!
//! What this module promises: a strategy has the same colour in every
//! chart (its place in [`STRATEGIES`], Okabe-Ito), every bar carries its
//! value (the strategies differ by orders of magnitude, so a short bar
//! still says what it is), and a metric no run has gives no chart.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::tables::number;
use super::{HOST_PROTECTION, Metric, RunResult, STRATEGIES, Status};

/// Colour of the strategy called `name` (Okabe-Ito, by its place in
/// [`STRATEGIES`]; a name not there gets the last colour).
fn strategy_colour(name: &str) -> RGBColor {
    const PALETTE: [RGBColor; 7] = [
        RGBColor(0x00, 0x72, 0xb2),
        RGBColor(0xd5, 0x5e, 0x00),
        RGBColor(0x00, 0x9e, 0x73),
        RGBColor(0xcc, 0x79, 0xa7),
        RGBColor(0xe6, 0x9f, 0x00),
        RGBColor(0x56, 0xb4, 0xe9),
        RGBColor(0xf0, 0xe4, 0x42),
    ];
    let i = STRATEGIES
        .iter()
        .position(|s| s.name == name)
        .unwrap_or(PALETTE.len() - 1);
    PALETTE[i % PALETTE.len()]
}

/// A grouped bar chart of `metric` over the `runs` that have it, titled
/// for `side` (`host` or `kernel`): one group per workload (and
/// protection), one bar per strategy. `None` when no run has the metric.
pub fn plot(metric: &Metric, side: &str, runs: &[RunResult]) -> Result<Option<String>, String> {
    let have: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.status == Status::Ok && r.metrics.contains_key(metric.key))
        .collect();
    if have.is_empty() {
        return Ok(None);
    }
    let group_of = |r: &RunResult| {
        if r.protection == HOST_PROTECTION {
            r.workload.clone()
        } else {
            format!("{} ({})", r.workload_label(), r.protection)
        }
    };
    let mut groups: Vec<String> = Vec::new();
    let mut strategies: Vec<&str> = Vec::new();
    for r in &have {
        let g = group_of(r);
        if !groups.contains(&g) {
            groups.push(g);
        }
        if !strategies.contains(&r.strategy.as_str()) {
            strategies.push(&r.strategy);
        }
    }
    // Legend and bars in the matrix's order, whatever order runs came in.
    strategies.sort_by_key(|name| {
        STRATEGIES
            .iter()
            .position(|s| s.name == *name)
            .unwrap_or(usize::MAX)
    });
    let max = have
        .iter()
        .filter_map(|r| r.metrics.get(metric.key).copied())
        .fold(0.0f64, f64::max);
    // Room above the tallest bar for its label.
    let top = if max > 0.0 { max * 1.12 } else { 1.0 };
    let mut svg = String::new();
    let width = (160 + 150 * groups.len() as u32).clamp(720, 1800) + LEGEND_WIDTH;
    {
        let root = SVGBackend::with_string(&mut svg, (width, 460)).into_drawing_area();
        let chart = Chart {
            metric,
            side,
            groups: &groups,
            strategies: &strategies,
            runs: &have,
            group_of: &group_of,
            top,
        };
        chart.draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

/// A bar's value, short enough to sit above a narrow bar: whole above
/// 100, as the tables show it below.
fn bar_label(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        number(value)
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Pixels right of the chart for the legend, which inside it would hide
/// the bars of the last group.
const LEGEND_WIDTH: u32 = 200;

/// What one chart shows.
struct Chart<'c> {
    metric: &'c Metric,
    side: &'c str,
    groups: &'c [String],
    strategies: &'c [&'c str],
    runs: &'c [&'c RunResult],
    group_of: &'c dyn Fn(&RunResult) -> String,
    top: f64,
}

impl Chart<'_> {
    fn draw(&self, root: &Area<'_>) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
        root.fill(&WHITE)?;
        let (width, _) = root.dim_in_pixel();
        let (area, legend) = root.split_horizontally(width.saturating_sub(LEGEND_WIDTH));
        self.draw_legend(&legend)?;
        let n = self.groups.len() as i32;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{} ({}), {} runs",
                    self.metric.heading, self.metric.key, self.side
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            // plotters' integer ranges are closed: 0..n-1 is n segments.
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..self.top)?;
        let groups = self.groups;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_max_light_lines(1)
            .x_labels(groups.len() + 1)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => groups.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| number(*v))
            .y_desc(self.metric.heading)
            .draw()?;
        let (plot_width, _) = chart.plotting_area().dim_in_pixel();
        let segment = f64::from(plot_width) / f64::from(n.max(1));
        let bar = segment * 0.8 / self.strategies.len().max(1) as f64;
        let label_style = TextStyle::from(("sans-serif", 10).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (si, strategy) in self.strategies.iter().enumerate() {
            let colour = strategy_colour(strategy);
            let left = segment * 0.1 + si as f64 * bar;
            let right = (segment - segment * 0.1 - (si + 1) as f64 * bar).max(0.0);
            let values: Vec<(i32, f64)> = self
                .runs
                .iter()
                .filter(|r| r.strategy == *strategy)
                .filter_map(|r| {
                    let g = self.groups.iter().position(|g| *g == (self.group_of)(r))? as i32;
                    Some((g, *r.metrics.get(self.metric.key)?))
                })
                .collect();
            let bars = values.iter().map(|&(g, v)| {
                let mut rect = Rectangle::new(
                    [
                        (SegmentValue::Exact(g), 0.0),
                        (SegmentValue::Exact(g + 1), v),
                    ],
                    colour.filled(),
                );
                rect.set_margin(0, 0, left.round() as u32, right.round() as u32);
                rect
            });
            chart.draw_series(bars)?;
            let labels = values.iter().map(|&(g, v)| {
                EmptyElement::at((SegmentValue::Exact(g), v))
                    + Text::new(
                        bar_label(v),
                        ((left + bar / 2.0).round() as i32, -2),
                        label_style.clone(),
                    )
            });
            chart.draw_series(labels)?;
        }
        Ok(())
    }

    /// A swatch and a name per strategy, top down.
    fn draw_legend(&self, area: &Area<'_>) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
        let style =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, strategy) in self.strategies.iter().enumerate() {
            let y = 60 + 22 * i as i32;
            area.draw(&Rectangle::new(
                [(8, y - 6), (20, y + 6)],
                strategy_colour(strategy).filled(),
            ))?;
            area.draw(&Text::new(strategy.to_string(), (28, y), style.clone()))?;
        }
        Ok(())
    }
}
