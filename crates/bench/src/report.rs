//! The report: per architecture, side by side with the improvement factor,
//! shaped like the notes' table; also written as JSON.

use serde::Serialize;

use crate::stats::{LatencySummary, improvement};

/// Everything measured for one architecture.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchitectureReport {
    pub name: String,
    pub label: String,
    pub latency: LatencySummary,
    /// (percentile, milliseconds) for the percentile plot.
    pub percentiles: Vec<(f64, f64)>,
    pub browse_latency: LatencySummary,
    pub order_latency: LatencySummary,
    pub requests: u64,
    pub throughput_rps: f64,
    pub error_rate: f64,
    /// Every database query the server made (API and consumers) per request.
    pub db_queries_per_request: f64,
    /// Share of catalog reads that reached the database.
    pub catalog_reads_from_db: f64,
    pub cache_hit_ratio: f64,
    /// From order accepted to `confirmed` (sampled orders).
    pub confirm_p50_ms: Option<f64>,
    pub confirm_p99_ms: Option<f64>,
    /// From order accepted to the e-mail sent.
    pub email_p50_ms: Option<f64>,
    pub email_p99_ms: Option<f64>,
    pub followed_orders: usize,
    /// Seconds after the load stopped until every consumer group had caught up.
    pub backlog_drain_secs: Option<f64>,
    /// Events still waiting when the bench stopped waiting (0 when drained).
    pub backlog_left_after_wait: Option<i64>,
    /// The failing-provider phase: share of order requests that failed.
    pub failure_spec: Vec<String>,
    pub order_failure_rate_with_failing_provider: Option<f64>,
    pub failing_phase_orders: u64,
    /// Load generator CPU as a share of one core, and whether it saturated.
    pub generator_cpu_cores: f64,
    pub generator_saturated: bool,
    /// Highest load held in the sweep (requests/s), if a sweep ran.
    pub sweep: Vec<SweepStep>,
    pub max_held_rps: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepStep {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub p99_ms: f64,
    pub error_rate: f64,
    pub held: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub command: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub architectures: Vec<ArchitectureReport>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub os: String,
    pub arch: String,
}

impl Machine {
    pub fn this() -> Self {
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

/// One row of the table: how to read a value, and whether lower is better.
struct Row {
    metric: &'static str,
    value: fn(&ArchitectureReport) -> Option<f64>,
    format: fn(f64) -> String,
    lower_is_better: bool,
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.2} ms")
    }
}
fn rps(v: f64) -> String {
    format!("{v:.0} req/s")
}
fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}
fn count(v: f64) -> String {
    format!("{v:.0}")
}
fn secs(v: f64) -> String {
    format!("{v:.1} s")
}
fn num(v: f64) -> String {
    format!("{v:.2}")
}

const ROWS: &[Row] = &[
    Row {
        metric: "response time p50",
        value: |r| Some(r.latency.p50_ms),
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "response time p95",
        value: |r| Some(r.latency.p95_ms),
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "response time p99",
        value: |r| Some(r.latency.p99_ms),
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "response time max",
        value: |r| Some(r.latency.max_ms),
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "order request p99",
        value: |r| Some(r.order_latency.p99_ms),
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "throughput",
        value: |r| Some(r.throughput_rps),
        format: rps,
        lower_is_better: false,
    },
    Row {
        metric: "error rate",
        value: |r| Some(r.error_rate),
        format: pct,
        lower_is_better: true,
    },
    Row {
        metric: "catalog reads hitting the DB",
        value: |r| Some(r.catalog_reads_from_db),
        format: pct,
        lower_is_better: true,
    },
    Row {
        metric: "DB queries per request (all)",
        value: |r| Some(r.db_queries_per_request),
        format: num,
        lower_is_better: true,
    },
    Row {
        metric: "cache hit ratio",
        value: |r| Some(r.cache_hit_ratio),
        format: pct,
        lower_is_better: false,
    },
    Row {
        metric: "consumer backlog drained after",
        value: |r| r.backlog_drain_secs,
        format: secs,
        lower_is_better: true,
    },
    Row {
        metric: "events still queued after the wait",
        value: |r| r.backlog_left_after_wait.map(|n| n as f64),
        format: count,
        lower_is_better: true,
    },
    Row {
        metric: "accepted → confirmed p50",
        value: |r| r.confirm_p50_ms,
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "accepted → confirmed p99",
        value: |r| r.confirm_p99_ms,
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "accepted → e-mail sent p50",
        value: |r| r.email_p50_ms,
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "accepted → e-mail sent p99",
        value: |r| r.email_p99_ms,
        format: ms,
        lower_is_better: true,
    },
    Row {
        metric: "orders failed, failing provider",
        value: |r| r.order_failure_rate_with_failing_provider,
        format: pct,
        lower_is_better: true,
    },
    Row {
        metric: "highest load held (sweep)",
        value: |r| r.max_held_rps,
        format: rps,
        lower_is_better: false,
    },
];

impl BenchReport {
    /// The notes' table: metric, v1, v2, improvement.
    pub fn table(&self) -> String {
        let (Some(before), Some(after)) = (self.architectures.first(), self.architectures.get(1))
        else {
            return self
                .architectures
                .iter()
                .map(|a| format!("{a:#?}"))
                .collect();
        };
        let mut lines = Vec::new();
        let header = [
            "metric",
            before.name.as_str(),
            after.name.as_str(),
            "improvement",
        ];
        let mut rows: Vec<[String; 4]> = Vec::new();
        for row in ROWS {
            let (b, a) = ((row.value)(before), (row.value)(after));
            if b.is_none() && a.is_none() {
                continue;
            }
            let show = |v: Option<f64>| v.map(row.format).unwrap_or_else(|| "n/a".into());
            let factor = match (b, a) {
                (Some(b), Some(a)) => improvement(b, a, row.lower_is_better)
                    .map(|f| {
                        if f >= 1.0 {
                            format!("{f:.1}×")
                        } else {
                            format!("{:.1}× worse", 1.0 / f)
                        }
                    })
                    .unwrap_or_else(|| if a == b { "same".into() } else { "—".into() }),
                _ => "—".into(),
            };
            rows.push([row.metric.to_owned(), show(b), show(a), factor]);
        }
        let widths: Vec<usize> = (0..4)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: [&str; 4]| {
            format!(
                "│ {:<w0$} │ {:>w1$} │ {:>w2$} │ {:>w3$} │",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            )
        };
        let rule = |l: &str, m: &str, r: &str| {
            format!(
                "{l}{}{r}",
                widths
                    .iter()
                    .map(|w| "─".repeat(w + 2))
                    .collect::<Vec<_>>()
                    .join(m)
            )
        };
        lines.push(rule("┌", "┬", "┐"));
        lines.push(line(header));
        lines.push(rule("├", "┼", "┤"));
        for r in &rows {
            lines.push(line([&r[0], &r[1], &r[2], &r[3]]));
        }
        lines.push(rule("└", "┴", "┘"));
        lines.push(format!("{}: {}", before.name, before.label));
        lines.push(format!("{}: {}", after.name, after.label));
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_metric_with_the_factor() {
        let v1 = ArchitectureReport {
            name: "v1".into(),
            label: "before".into(),
            latency: LatencySummary {
                count: 10,
                p50_ms: 800.0,
                p95_ms: 900.0,
                p99_ms: 1000.0,
                max_ms: 1200.0,
            },
            throughput_rps: 100.0,
            error_rate: 0.05,
            ..Default::default()
        };
        let v2 = ArchitectureReport {
            name: "v2".into(),
            label: "after".into(),
            latency: LatencySummary {
                count: 10,
                p50_ms: 8.0,
                p95_ms: 9.0,
                p99_ms: 10.0,
                max_ms: 12.0,
            },
            throughput_rps: 5000.0,
            error_rate: 0.0,
            ..Default::default()
        };
        let report = BenchReport {
            started_at: chrono::Utc::now(),
            command: "orderflow bench".into(),
            machine: Machine::this(),
            settings: serde_json::json!({}),
            architectures: vec![v1, v2],
            notes: vec![],
        };
        let table = report.table();
        assert!(table.contains("response time p50"), "{table}");
        assert!(
            table.contains("800 ms") && table.contains("8.00 ms") && table.contains("100.0×"),
            "{table}"
        );
        assert!(table.contains("50.0×"), "throughput factor: {table}");
        assert!(
            !table.contains("highest load held"),
            "rows without data are left out: {table}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["architectures"][1]["throughput_rps"], 5000.0);
    }
}
