//! Charts as PNG and SVG with `plotters`: latency by percentile (every run on one chart, the
//! x axis log-scaled in 1/(1-p) the way HdrHistogram's plotter draws it) and throughput over
//! time. PNG text is drawn with DejaVu Sans bundled in the binary, so no system font library
//! is needed.

use hdrhistogram::Histogram;
use plotters::coord::Shift;
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
) -> Result<(), String> {
    register_font();
    let png = out_dir.join(format!("{stem}.png"));
    let svg = out_dir.join(format!("{stem}.svg"));
    draw_percentiles(
        BitMapBackend::new(&png, CHART_SIZE).into_drawing_area(),
        title,
        series,
    )
    .map_err(|e| format!("drawing {}: {e}", png.display()))?;
    draw_percentiles(
        SVGBackend::new(&svg, CHART_SIZE).into_drawing_area(),
        title,
        series,
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

fn color(index: usize) -> RGBColor {
    const PALETTE: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    PALETTE[index % PALETTE.len()]
}

fn draw_percentiles<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series<'_>],
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
        .max(1) as f64
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .margin_right(60)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..PERCENTILE_DECADES, 0f64..y_max)
        .map_err(|e| e.to_string())?;
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
        let style = color(index).stroke_width(2);
        chart
            .draw_series(LineSeries::new(percentile_points(s.histogram), style))
            .map_err(|e| e.to_string())?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    finish(&mut chart, &root, SeriesLabelPosition::UpperLeft)
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
        let style = color(index).stroke_width(2);
        let points = values
            .iter()
            .enumerate()
            .map(|(second, &count)| (second as f64 + 0.5, count as f64));
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(|e| e.to_string())?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    finish(&mut chart, &root, SeriesLabelPosition::LowerRight)
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
