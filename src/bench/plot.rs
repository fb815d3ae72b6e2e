//! Charts as PNG and SVG with `plotters`: latency by percentile (every run on one chart, the
//! x axis log-scaled in 1/(1-p) the way HdrHistogram's plotter draws it) and throughput over
//! time, and the sync/async ratios by producer count. Every series has its own colour and dash
//! pattern ([`series_style`]); the latency axis is linear or log ([`LatencyAxis`]). PNG text
//! is drawn with DejaVu Sans bundled in the binary, so no system font library is needed.

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// Chart size in pixels (PNG) and user units (SVG).
const CHART_SIZE: (u32, u32) = (1200, 700);

/// The percentile axis ends at 99.999% (1/(1-p) = 10^5).
const PERCENTILE_DECADES: f64 = 5.0;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // The bundled font is valid TrueType; if registration ever failed, PNG text would be
        // missing but the chart still drawn, so the error is ignored rather than fatal.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

/// How the latency axis of the percentile charts is scaled. Log shows a p50 of 100 µs and a
/// p99.99 of 50 ms on one chart without flattening the former into the x axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyAxis {
    #[default]
    Linear,
    Log,
}

/// One line on a chart.
pub struct Series<'a> {
    pub label: String,
    pub histogram: &'a Histogram<u64>,
}

/// Label for a percentile-axis position `x = log10(1/(1-p))`: 0%, 90%, 99%, 99.9%, ...
pub fn percentile_label(x: f64) -> String {
    let decades = x.round() as i32;
    if decades <= 0 {
        return "0%".into();
    }
    let percent = 100.0 - 100.0 / 10f64.powi(decades);
    format!("{percent:.*}%", (decades - 2).max(0) as usize)
}

/// Points (log10(1/(1-p)), value) of a histogram for the percentile chart.
pub fn percentile_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for step in histogram.iter_quantiles(super::histogram::TICKS_PER_HALF_DISTANCE) {
        let q = step.quantile_iterated_to();
        let x = if q < 1.0 {
            (1.0 / (1.0 - q)).log10().min(PERCENTILE_DECADES)
        } else {
            PERCENTILE_DECADES
        };
        points.push((x, step.value_iterated_to() as f64));
    }
    points
}

/// Writes `<stem>.png` and `<stem>.svg` with the latency-by-percentile chart.
pub fn latency_by_percentile(
    out_dir: &Path,
    stem: &str,
    title: &str,
    series: &[Series<'_>],
    axis: LatencyAxis,
) -> Result<(), String> {
    register_font();
    let png = out_dir.join(format!("{stem}.png"));
    let svg = out_dir.join(format!("{stem}.svg"));
    draw_percentiles(
        BitMapBackend::new(&png, CHART_SIZE).into_drawing_area(),
        title,
        series,
        axis,
    )
    .map_err(|e| format!("drawing {}: {e}", png.display()))?;
    draw_percentiles(
        SVGBackend::new(&svg, CHART_SIZE).into_drawing_area(),
        title,
        series,
        axis,
    )
    .map_err(|e| format!("drawing {}: {e}", svg.display()))
}

/// Writes `<stem>.png` and `<stem>.svg` with messages acknowledged per second.
pub fn throughput_over_time(
    out_dir: &Path,
    stem: &str,
    series: &[(String, Vec<u64>)],
) -> Result<(), String> {
    register_font();
    let png = out_dir.join(format!("{stem}.png"));
    let svg = out_dir.join(format!("{stem}.svg"));
    draw_throughput(
        BitMapBackend::new(&png, CHART_SIZE).into_drawing_area(),
        series,
    )
    .map_err(|e| format!("drawing {}: {e}", png.display()))?;
    draw_throughput(
        SVGBackend::new(&svg, CHART_SIZE).into_drawing_area(),
        series,
    )
    .map_err(|e| format!("drawing {}: {e}", svg.display()))
}

/// Ten colours (matplotlib's tab10, which stay apart for most colour-blind readers).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Dash patterns (dash, gap in pixels); `None` is a solid line.
const DASHES: [Option<(u32, u32)>; 4] = [None, Some((14, 6)), Some((3, 4)), Some((20, 5))];

/// Colour and dash pattern of series `index`. Both change from one series to the next (so even
/// a chart of a few runs reads in greyscale), and the dash pattern is shifted by one each time
/// the palette wraps, so the first `PALETTE.len() * DASHES.len()` (40) series are all distinct
/// pairs; only beyond that do pairs repeat.
pub fn series_style(index: usize) -> (RGBColor, Option<(u32, u32)>) {
    let dash = DASHES[(index + index / PALETTE.len()) % DASHES.len()];
    (PALETTE[index % PALETTE.len()], dash)
}

/// Draws one series as a line in its style, with a matching legend entry.
fn draw_line<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    points: Vec<(f64, f64)>,
    index: usize,
    label: &str,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let (colour, dash) = series_style(index);
    let style = colour.stroke_width(2);
    let annotation = match dash {
        None => chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| e.to_string())?,
        Some((size, gap)) => chart
            .draw_series(DashedLineSeries::new(points, size, gap, style))
            .map_err(|e| e.to_string())?,
    };
    annotation
        .label(label.to_string())
        .legend(move |(x, y)| match dash {
            None => PathElement::new(vec![(x, y), (x + 30, y)], style).into_dyn(),
            Some((size, gap)) => {
                DashedPathElement::new(vec![(x, y), (x + 30, y)], size, gap, style).into_dyn()
            }
        });
    Ok(())
}

fn draw_percentiles<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series<'_>],
    axis: LatencyAxis,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let y_max = series
        .iter()
        .map(|s| s.histogram.max())
        .max()
        .unwrap_or(1)
        .max(2) as f64
        * 1.05;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(90);
    match axis {
        LatencyAxis::Linear => {
            let chart = builder
                .build_cartesian_2d(0f64..PERCENTILE_DECADES, 0f64..y_max)
                .map_err(|e| e.to_string())?;
            percentile_lines(chart, &root, series)
        }
        LatencyAxis::Log => {
            // From the decade below the lowest latency drawn (at least 1 µs, the histogram's
            // lowest value), so the lines use the chart's height.
            let lowest = series
                .iter()
                .filter(|s| !s.histogram.is_empty())
                .map(|s| s.histogram.min())
                .min()
                .unwrap_or(1)
                .max(1);
            let y_min = 10f64.powi((lowest as f64).log10().floor() as i32);
            let chart = builder
                .build_cartesian_2d(
                    0f64..PERCENTILE_DECADES,
                    (y_min..y_max.max(y_min * 10.0)).log_scale(),
                )
                .map_err(|e| e.to_string())?;
            percentile_lines(chart, &root, series)
        }
    }
}

/// The mesh and lines of a percentile chart, for either latency axis.
fn percentile_lines<'a, DB, Y>(
    mut chart: ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    root: &DrawingArea<DB, Shift>,
    series: &[Series<'_>],
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_labels(PERCENTILE_DECADES as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .x_desc("Percentile")
        .y_desc("Latency (µs)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, s) in series.iter().enumerate() {
        draw_line(&mut chart, percentile_points(s.histogram), index, &s.label)?;
    }
    finish(&mut chart, root, SeriesLabelPosition::UpperLeft)
}

fn draw_throughput<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[(String, Vec<u64>)],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_max = series
        .iter()
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput over time", ("sans-serif", 26))
        .margin(20)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("Seconds into the measured phase")
        .y_desc("Messages acknowledged per second")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    for (index, (label, values)) in series.iter().enumerate() {
        let points = values
            .iter()
            .enumerate()
            .map(|(second, &count)| (second as f64 + 0.5, count as f64))
            .collect();
        draw_line(&mut chart, points, index, label)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::LowerRight)
}

/// One line of the ratio chart: a label and (producer count, ratio) points.
pub struct RatioSeries {
    pub label: String,
    pub points: Vec<(u32, f64)>,
}

/// Writes `<stem>.png` and `<stem>.svg`: every ratio series against the producer count (evenly
/// spaced, labelled with the counts), with markers (a single producer count is a point, not a
/// line) and the parity line at 1.0.
pub fn ratios_by_producers(
    out_dir: &Path,
    stem: &str,
    series: &[RatioSeries],
) -> Result<(), String> {
    register_font();
    let png = out_dir.join(format!("{stem}.png"));
    let svg = out_dir.join(format!("{stem}.svg"));
    draw_ratios(
        BitMapBackend::new(&png, CHART_SIZE).into_drawing_area(),
        series,
    )
    .map_err(|e| format!("drawing {}: {e}", png.display()))?;
    draw_ratios(
        SVGBackend::new(&svg, CHART_SIZE).into_drawing_area(),
        series,
    )
    .map_err(|e| format!("drawing {}: {e}", svg.display()))
}

fn draw_ratios<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[RatioSeries],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut counts: Vec<u32> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    counts.sort_unstable();
    counts.dedup();
    let position = |count: u32| counts.iter().position(|&c| c == count).unwrap_or(0) as f64;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|r| r.is_finite())
        .fold(1.2f64, f64::max)
        * 1.1;
    let x_max = counts.len().max(1) as f64 - 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("Sync mode ÷ async twin, by producers", ("sans-serif", 26))
        .margin(20)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.5f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    let labels = counts.clone();
    chart
        .configure_mesh()
        .x_labels(counts.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let index = x.round();
            match labels.get(index as usize) {
                Some(count) if (x - index).abs() < 1e-6 && index >= 0.0 => count.to_string(),
                _ => String::new(),
            }
        })
        .x_desc("Producers")
        .y_desc("Ratio (1.0 = no cost)")
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            vec![(-0.5, 1.0), (x_max, 1.0)],
            BLACK.mix(0.5).stroke_width(1),
        ))
        .map_err(|e| e.to_string())?;
    for (index, s) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(count, ratio)| (position(count), ratio))
            .collect();
        let (colour, _) = series_style(index);
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, colour.filled())))
            .map_err(|e| e.to_string())?;
        draw_line(&mut chart, points, index, &s.label)?;
    }
    finish(&mut chart, &root, SeriesLabelPosition::LowerLeft)
}

/// Draws the legend at `position` and writes the chart out: the same for every chart.
fn finish<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &DrawingArea<DB, Shift>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
