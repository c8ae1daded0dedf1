//! Latency and throughput arithmetic: HdrHistogram for latencies (microsecond
//! resolution, 3 significant digits, up to 60 s), and the plain ratios the
//! report prints. Kept apart from the load generator so it is unit-tested.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track (anything slower is clamped to it).
const MAX_TRACKED_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_MICROS, 3)
                .expect("valid histogram bounds"),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_TRACKED_MICROS);
        self.histogram
            .record(micros)
            .expect("value is within bounds");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.histogram.add(&other.histogram).expect("same bounds");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at `quantile` (0.0..=1.0) in milliseconds; 0 when empty.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.histogram.is_empty() {
            return 0.0;
        }
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        if self.histogram.is_empty() {
            0.0
        } else {
            self.histogram.max() as f64 / 1000.0
        }
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_ms: self.quantile_ms(0.50),
            p95_ms: self.quantile_ms(0.95),
            p99_ms: self.quantile_ms(0.99),
            max_ms: self.max_ms(),
        }
    }

    /// (percentile, latency ms) points for a percentile curve plot.
    pub fn percentile_curve(&self) -> Vec<(f64, f64)> {
        [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0]
            .iter()
            .map(|p| (*p, self.quantile_ms(p / 100.0)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Requests per second over a wall-clock span.
pub fn throughput(requests: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        requests as f64 / seconds
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub fn ratio(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 { 0.0 } else { part / whole }
}

/// How many times better `after` is than `before`. For "lower is better"
/// metrics (latency, errors, queries) that is before/after, otherwise
/// after/before. `None` when the division means nothing (a zero).
pub fn improvement(before: f64, after: f64, lower_is_better: bool) -> Option<f64> {
    let (numerator, denominator) = if lower_is_better {
        (before, after)
    } else {
        (after, before)
    };
    (numerator > 0.0 && denominator > 0.0).then(|| numerator / denominator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latencies = Latencies::new();
        // 1 ms .. 100 ms, one each.
        for ms in 1..=100 {
            latencies.record(Duration::from_millis(ms));
        }
        let s = latencies.summary();
        assert_eq!(s.count, 100);
        // Three significant digits: within 0.1% of the exact value.
        assert!((s.p50_ms - 50.0).abs() <= 0.05, "{s:?}");
        assert!((s.p95_ms - 95.0).abs() <= 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() <= 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() <= 0.1, "{s:?}");
    }

    #[test]
    fn merged_histograms_count_both() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(9));
        b.record(Duration::from_millis(10));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert!((a.quantile_ms(0.5) - 9.0).abs() < 0.01);
    }

    #[test]
    fn empty_and_extreme_values_do_not_panic() {
        let mut latencies = Latencies::new();
        assert_eq!(latencies.summary(), LatencySummary::default());
        latencies.record(Duration::ZERO);
        latencies.record(Duration::from_secs(3600));
        assert_eq!(latencies.count(), 2);
        assert!(
            (latencies.max_ms() - 60_000.0).abs() / 60_000.0 < 0.001,
            "clamped to 60 s"
        );
    }

    #[test]
    fn throughput_and_ratios() {
        assert_eq!(throughput(500, Duration::from_secs(2)), 250.0);
        assert_eq!(throughput(10, Duration::ZERO), 0.0);
        assert_eq!(ratio(1.0, 4.0), 0.25);
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(improvement(800.0, 55.0, true), Some(800.0 / 55.0));
        assert_eq!(improvement(100.0, 5000.0, false), Some(50.0));
        assert_eq!(improvement(0.05, 0.0, true), None);
    }
}
