//! The report: per architecture, side by side with the improvement (a factor,
//! or for shares the change "100% → 0.01%"), shaped like the notes' table;
//! with one architecture (`--target`), a one-column table. The sustained
//! mode's steps and highest rates held have tables of their own. Also
//! written as JSON.

use serde::Serialize;

use crate::stats::{LatencySummary, improvement};
use crate::sustained::SustainedRun;

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
    /// Followed orders (see `follow`): from order accepted (`pending` in its
    /// history) to `reserved`.
    pub reserved_p50_ms: Option<f64>,
    pub reserved_p99_ms: Option<f64>,
    /// From order accepted to `confirmed`.
    pub confirm_p50_ms: Option<f64>,
    pub confirm_p99_ms: Option<f64>,
    /// From order accepted to the confirmation e-mail sent (`sent_at`).
    pub email_p50_ms: Option<f64>,
    pub email_p99_ms: Option<f64>,
    /// From order accepted to the confirmation SMS sent.
    pub sms_p50_ms: Option<f64>,
    pub sms_p99_ms: Option<f64>,
    /// From order accepted to the push message sent.
    pub push_p50_ms: Option<f64>,
    pub push_p99_ms: Option<f64>,
    /// From the order request sent to the first `/me/points` read showing the
    /// shopper's total grown (an upper bound, within 5% or 10 ms).
    pub points_p50_ms: Option<f64>,
    pub points_p99_ms: Option<f64>,
    pub followed_orders: usize,
    /// Followed orders that ended rejected, payment_failed or cancelled.
    pub followed_not_confirmed: usize,
    /// Followed orders with a milestone still missing when the bench stopped
    /// waiting (counted with the time waited: a lower bound).
    pub followed_unfinished: usize,
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
    /// `--sustained`: per architecture, the steps and the highest rate held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sustained: Vec<SustainedRun>,
    /// `--read-ceiling`: the three servers' throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<crate::ceiling::CeilingRun>,
    /// `--staleness`: reads checked against the database, per setup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staleness: Option<crate::staleness::StalenessRun>,
    /// `bench live`: the live channels under load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live::LiveRun>,
    /// `--soak`: the long run with faults, and its accounting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::soak::SoakRun>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub os: String,
    pub arch: String,
}

impl ArchitectureReport {
    /// `name: label`, for headings and legends.
    pub fn title(&self) -> String {
        format!("{}: {}", self.name, self.label)
    }
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
    compare: Compare,
}

/// What the improvement column shows for a row.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// How many times better: "12.2×", "2.0× worse".
    Factor,
    /// A share (0..=1): "100% → 0.01%".
    Share,
    /// Nothing: the values are not better or worse (how many orders were followed).
    None,
}

impl Row {
    /// The improvement column: a factor, or for shares "before → after".
    fn change(&self, before: f64, after: f64) -> String {
        let (shown_before, shown_after) = ((self.format)(before), (self.format)(after));
        if shown_before == shown_after {
            return "same".into();
        }
        // A factor of two shares ("15792.0×" for 100% → 0.0063%) says
        // nothing a reader can use; the two shares do. So for a value that
        // shows as zero ("0.0 s" → "21.2 s" is not "19398.4× worse").
        let zero = (self.format)(0.0);
        match self.compare {
            Compare::None => return "—".into(),
            Compare::Share => return format!("{shown_before} → {shown_after}"),
            Compare::Factor if shown_before == zero || shown_after == zero => {
                return format!("{shown_before} → {shown_after}");
            }
            Compare::Factor => {}
        }
        improvement(before, after, self.lower_is_better)
            .map(|f| {
                if f >= 1.0 {
                    format!("{f:.1}×")
                } else {
                    format!("{:.1}× worse", 1.0 / f)
                }
            })
            .unwrap_or_else(|| {
                if after == before {
                    "same".into()
                } else {
                    "—".into()
                }
            })
    }
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
    share(v)
}

/// A share (0..=1) as a percentage with three significant digits and no
/// trailing zeros: 1 → "100%", 0.05 → "5%", 0.1234 → "12.3%",
/// 0.0001 → "0.01%". Never rounded to 0% or 100% when it is neither:
/// more decimals are used (up to four), then "<0.0001%" / ">99.9999%".
pub fn share(v: f64) -> String {
    let p = v * 100.0;
    if !p.is_finite() {
        return "n/a".into();
    }
    if p == 0.0 || p == 100.0 {
        return format!("{p:.0}%");
    }
    let magnitude = p.abs().log10().floor() as i32;
    let mut decimals = (2 - magnitude).clamp(0, 4) as usize;
    loop {
        let text = format!("{p:.decimals$}");
        let rounded: f64 = text.parse().unwrap_or(p);
        let misleading = (rounded == 0.0 && p != 0.0) || (rounded == 100.0 && p != 100.0);
        if !misleading {
            let text = if text.contains('.') {
                text.trim_end_matches('0').trim_end_matches('.').to_owned()
            } else {
                text
            };
            return format!("{text}%");
        }
        if decimals == 4 {
            return if rounded == 0.0 {
                "<0.0001%".into()
            } else {
                ">99.9999%".into()
            };
        }
        decimals += 1;
    }
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
        compare: Compare::Factor,
    },
    Row {
        metric: "response time p95",
        value: |r| Some(r.latency.p95_ms),
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "response time p99",
        value: |r| Some(r.latency.p99_ms),
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "response time max",
        value: |r| Some(r.latency.max_ms),
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "order request p99",
        value: |r| Some(r.order_latency.p99_ms),
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "throughput",
        value: |r| Some(r.throughput_rps),
        format: rps,
        lower_is_better: false,
        compare: Compare::Factor,
    },
    Row {
        metric: "error rate",
        value: |r| Some(r.error_rate),
        format: pct,
        lower_is_better: true,
        compare: Compare::Share,
    },
    Row {
        metric: "catalog reads hitting the DB",
        value: |r| Some(r.catalog_reads_from_db),
        format: pct,
        lower_is_better: true,
        compare: Compare::Share,
    },
    Row {
        metric: "DB queries per request (all)",
        value: |r| Some(r.db_queries_per_request),
        format: num,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "cache hit ratio",
        value: |r| Some(r.cache_hit_ratio),
        format: pct,
        lower_is_better: false,
        compare: Compare::Share,
    },
    Row {
        metric: "consumer backlog drained after",
        value: |r| r.backlog_drain_secs,
        format: secs,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "events still queued after the wait",
        value: |r| r.backlog_left_after_wait.map(|n| n as f64),
        format: count,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → reserved p50",
        value: |r| r.reserved_p50_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → reserved p99",
        value: |r| r.reserved_p99_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → confirmed p50",
        value: |r| r.confirm_p50_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → confirmed p99",
        value: |r| r.confirm_p99_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → e-mail sent p50",
        value: |r| r.email_p50_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → e-mail sent p99",
        value: |r| r.email_p99_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → SMS sent p50",
        value: |r| r.sms_p50_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → SMS sent p99",
        value: |r| r.sms_p99_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → push sent p50",
        value: |r| r.push_p50_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → push sent p99",
        value: |r| r.push_p99_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → points p50",
        value: |r| r.points_p50_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "accepted → points p99",
        value: |r| r.points_p99_ms,
        format: ms,
        lower_is_better: true,
        compare: Compare::Factor,
    },
    Row {
        metric: "followed orders",
        value: |r| (r.followed_orders > 0).then_some(r.followed_orders as f64),
        format: count,
        lower_is_better: false,
        compare: Compare::None,
    },
    Row {
        metric: "followed orders unfinished at the wait",
        value: |r| (r.followed_orders > 0).then_some(r.followed_unfinished as f64),
        format: count,
        lower_is_better: true,
        compare: Compare::None,
    },
    Row {
        metric: "orders failed, failing provider",
        value: |r| r.order_failure_rate_with_failing_provider,
        format: pct,
        lower_is_better: true,
        compare: Compare::Share,
    },
    Row {
        metric: "highest load held (sweep)",
        value: |r| r.max_held_rps,
        format: rps,
        lower_is_better: false,
        compare: Compare::Factor,
    },
];

impl BenchReport {
    /// Everything the terminal shows: the comparison table (when the
    /// comparison ran) and the sustained tables (when `--sustained` ran).
    pub fn table(&self) -> String {
        let mut parts = Vec::new();
        if !self.architectures.is_empty() {
            parts.push(self.comparison_table());
        }
        if !self.sustained.is_empty() {
            parts.push(crate::sustained::tables(&self.sustained));
        }
        if let Some(ceiling) = &self.ceiling {
            parts.push(ceiling.table());
        }
        if let Some(staleness) = &self.staleness {
            parts.push(staleness.table());
        }
        if let Some(live) = &self.live {
            parts.push(live.table());
        }
        if let Some(soak) = &self.soak {
            parts.push(soak.table());
        }
        parts.join("\n\n")
    }

    /// The notes' table: metric, one column per architecture, and with two
    /// architectures the improvement of the second over the first.
    pub fn comparison_table(&self) -> String {
        let archs = &self.architectures;
        let compare = archs.len() == 2;
        let mut header: Vec<String> = vec!["metric".into()];
        header.extend(archs.iter().map(|a| a.name.clone()));
        if compare {
            header.push("improvement".into());
        }
        let mut rows: Vec<Vec<String>> = Vec::new();
        for row in ROWS {
            let values: Vec<Option<f64>> = archs.iter().map(|a| (row.value)(a)).collect();
            if values.iter().all(Option::is_none) {
                continue;
            }
            let show = |v: &Option<f64>| v.map(row.format).unwrap_or_else(|| "n/a".into());
            let mut cells = vec![row.metric.to_owned()];
            cells.extend(values.iter().map(show));
            if compare {
                cells.push(match (values[0], values[1]) {
                    (Some(b), Some(a)) => row.change(b, a),
                    _ => "—".into(),
                });
            }
            rows.push(cells);
        }
        let mut lines = vec![boxed(&header, &rows)];
        lines.extend(archs.iter().map(ArchitectureReport::title));
        lines.join("\n")
    }
}

/// A box-drawn table: the first column left-aligned, the others right-aligned.
pub fn boxed(header: &[String], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let cell = cells.get(i).map_or("", String::as_str);
                if i == 0 {
                    format!(" {cell:<w$} ")
                } else {
                    format!(" {cell:>w$} ")
                }
            })
            .collect();
        format!("│{}│", cells.join("│"))
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
    let mut lines = vec![rule("┌", "┬", "┐"), line(header), rule("├", "┼", "┤")];
    lines.extend(rows.iter().map(|r| line(r)));
    lines.push(rule("└", "┴", "┘"));
    lines.join("\n")
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
            sustained: vec![],
            ceiling: None,
            staleness: None,
            live: None,
            soak: None,
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
        assert!(
            table.contains("5% → 0%") && !table.contains("worse"),
            "a share is compared as before → after: {table}"
        );
        assert!(
            table.contains("\nv1: before\nv2: after") && !table.contains("v1: v1"),
            "each architecture named once: {table}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["architectures"][1]["throughput_rps"], 5000.0);
        assert!(json.get("sustained").is_none(), "absent unless it ran");
    }

    #[test]
    fn shares_read_as_percentages() {
        assert_eq!(share(1.0), "100%");
        assert_eq!(share(0.0), "0%");
        assert_eq!(share(0.05), "5%");
        assert_eq!(share(0.1234), "12.3%");
        assert_eq!(share(0.0001), "0.01%");
        assert_eq!(share(0.00006332), "0.0063%");
        assert_eq!(share(0.5), "50%");
        assert_eq!(share(0.996), "99.6%");
        assert_eq!(share(0.99996), "99.996%", "not rounded up to 100%");
        assert_eq!(share(0.000_000_1), "<0.0001%");
        assert_eq!(share(f64::NAN), "n/a");
    }

    #[test]
    fn catalog_reads_compare_as_shares_not_as_a_factor() {
        let row = ROWS
            .iter()
            .find(|r| r.metric == "catalog reads hitting the DB")
            .unwrap();
        assert_eq!(row.change(1.0, 1.0 / 15792.0), "100% → 0.0063%");
        assert_eq!(row.change(0.5, 0.5), "same");
        let latency = ROWS
            .iter()
            .find(|r| r.metric == "response time p99")
            .unwrap();
        assert_eq!(latency.change(100.0, 10.0), "10.0×");
        assert_eq!(latency.change(10.0, 20.0), "2.0× worse");
        assert_eq!(latency.change(10.0, 10.001), "same", "as shown");
        let drained = ROWS
            .iter()
            .find(|r| r.metric == "consumer backlog drained after")
            .unwrap();
        assert_eq!(
            drained.change(0.001, 21.2),
            "0.0 s → 21.2 s",
            "no factor against zero"
        );
        let followed = ROWS.iter().find(|r| r.metric == "followed orders").unwrap();
        assert_eq!(followed.change(10.0, 12.0), "—");
    }

    #[test]
    fn one_architecture_is_a_one_column_table() {
        let target = ArchitectureReport {
            name: "target".into(),
            label: "the deployment at http://shop.example".into(),
            latency: LatencySummary {
                count: 10,
                p50_ms: 3.0,
                p95_ms: 9.0,
                p99_ms: 12.5,
                max_ms: 30.0,
            },
            throughput_rps: 2500.0,
            catalog_reads_from_db: 0.0001,
            confirm_p99_ms: Some(140.0),
            points_p99_ms: Some(180.0),
            followed_orders: 20,
            ..Default::default()
        };
        let report = BenchReport {
            started_at: chrono::Utc::now(),
            command: "orderflow bench --target http://shop.example".into(),
            machine: Machine::this(),
            settings: serde_json::json!({}),
            architectures: vec![target],
            sustained: vec![],
            ceiling: None,
            staleness: None,
            live: None,
            soak: None,
            notes: vec![],
        };
        let table = report.table();
        assert!(
            !table.contains("ArchitectureReport"),
            "no debug dump: {table}"
        );
        assert!(
            !table.contains("improvement"),
            "nothing to compare: {table}"
        );
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].starts_with("│ metric") && lines[1].ends_with(" target │"),
            "{table}"
        );
        for line in lines.iter().filter(|l| l.starts_with('│')) {
            assert_eq!(line.matches('│').count(), 3, "two columns: {line}");
        }
        assert!(table.contains("2500 req/s"), "{table}");
        assert!(table.contains("0.01%"), "{table}");
        assert!(table.contains("accepted → points p99"), "{table}");
        assert!(
            table.ends_with("target: the deployment at http://shop.example"),
            "{table}"
        );
    }
}
