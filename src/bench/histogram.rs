//! Latency histograms and the two HdrHistogram file formats the bench writes.
//!
//! Every latency is recorded in microseconds into an [`hdrhistogram::Histogram`]. A run's totals
//! leave as a `.hgrm` percentile distribution (the text `outputPercentileDistribution` writes in
//! HdrHistogram's Java library, which its plotter reads), and its per-second histograms as an
//! interval log (`.hlog`, V2 deflate encoding) for HdrHistogram's log tools.

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

/// Largest latency a histogram tracks exactly: 120 s, four times the client's read timeout, so
/// no answered request is ever clamped. Larger values are clamped to this.
pub const LATENCY_MAX_US: u64 = 120_000_000;

/// Three significant digits: values are exact below 2048 µs and within 0.1% above.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// `outputPercentileDistribution`'s default: 5 reporting points per halving of the distance to
/// 100%.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Records `count` observations of `latency` in microseconds, clamped to the tracked range.
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration, count: u64) {
    let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
    histogram
        .record_n(us, count)
        .expect("value clamped into the histogram's range");
}

/// The summary percentiles of one histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let at = |q: f64| histogram.value_at_quantile(q);
        Percentiles {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p95_us: at(0.95),
            p99_us: at(0.99),
            p99_9_us: at(0.999),
            p99_99_us: at(0.9999),
            max_us: histogram.max(),
        }
    }
}

/// HdrHistogram's sub-bucket count for `digits` significant digits, as its footer reports it:
/// the power of two at or above `2 * 10^digits`.
fn sub_bucket_count(digits: u8) -> u64 {
    (2 * 10u64.pow(u32::from(digits))).next_power_of_two()
}

/// Writes `histogram` exactly as Java's `outputPercentileDistribution(out, 1.0)` does: a header,
/// one line per reporting point (value, percentile as a fraction, cumulative count,
/// 1/(1-percentile)), the 100% line without the last column, and the three `#[...]` footers.
pub fn write_percentile_distribution(
    histogram: &Histogram<u64>,
    out: &mut impl Write,
) -> io::Result<()> {
    let digits = usize::from(histogram.sigfig());
    write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total_count = 0u64;
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total_count += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:12.digits$} {quantile:2.12} {total_count:10} {:14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:12.digits$} {quantile:2.12} {total_count:10}")?;
        }
    }
    let (mean, deviation) = if histogram.is_empty() {
        (0.0, 0.0)
    } else {
        (histogram.mean(), histogram.stdev())
    };
    writeln!(
        out,
        "#[Mean    = {mean:12.digits$}, StdDeviation   = {deviation:12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {:12.digits$}, Total count    = {:12}]",
        histogram.max() as f64,
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    )
}

/// One tagged series of per-second histograms: `intervals[n]` covers `[n s, n+1 s)` after the
/// measured phase began.
pub struct IntervalSeries<'a> {
    pub tag: &'a str,
    pub intervals: &'a [Histogram<u64>],
}

/// Writes an interval log (`.hlog`) with `StartTime` and `BaseTime` at `start`; intervals of all
/// series are interleaved in start order, each tagged with its series name. Empty intervals are
/// written too, so a stall shows as a gap in the counts rather than as a missing line.
pub fn write_interval_log(
    out: &mut impl Write,
    start: SystemTime,
    comment: &str,
    series: &[IntervalSeries<'_>],
) -> io::Result<()> {
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment(comment)
        .add_comment("values are microseconds")
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(out, &mut serializer)?;
    let seconds = series.iter().map(|s| s.intervals.len()).max().unwrap_or(0);
    for second in 0..seconds {
        for s in series {
            let Some(histogram) = s.intervals.get(second) else {
                continue;
            };
            let tag = Tag::new(s.tag).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("interval log tag `{}` has spaces or commas", s.tag),
                )
            })?;
            log.write_histogram(
                histogram,
                Duration::from_secs(second as u64),
                Duration::from_secs(1),
                Some(tag),
            )
            .map_err(|e| io::Error::other(format!("writing interval log: {e:?}")))?;
        }
    }
    Ok(())
}

/// Adds `source` into `target[index]`, growing `target` with empty histograms as needed.
pub fn add_interval(target: &mut Vec<Histogram<u64>>, index: usize, source: &Histogram<u64>) {
    while target.len() <= index {
        target.push(new_latency_histogram());
    }
    target[index]
        .add(source)
        .expect("histograms share the same bounds");
}

/// Merges per-second series element-wise.
pub fn merge_intervals(target: &mut Vec<Histogram<u64>>, source: &[Histogram<u64>]) {
    for (index, histogram) in source.iter().enumerate() {
        add_interval(target, index, histogram);
    }
}
