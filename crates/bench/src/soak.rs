//! `orderflow bench --soak DURATION`: a steady mixed load for a long time,
//! faults injected on a seeded schedule, and at the end the exact
//! accounting of every order.
//!
//! # The system under test
//! The embedded setup split in two processes, as a shop that keeps its
//! API up while its workers restart runs it: one `orderflow api` and one
//! `orderflow worker` (every consumer group) on the same SQLite database,
//! with Redis as the shared cache. One worker, not two: the embedded log
//! has no partition assignment, so two members of a group would both
//! handle every event (one worker per group per database; see
//! `orderflow_adapters::sqlite::log`). Killing it stops the pipeline until
//! it is back, and its deliveries in flight are delivered again (the
//! providers see those calls twice, under the same idempotency key). SMS,
//! push and payment go through orderflow's real webhook adapters to
//! providers the bench serves ([`providers`]); e-mail stays on the
//! simulated provider, failing 2% of its calls throughout (retried).
//!
//! # The load
//! Open loop at `--rate` requests per second (default [`DEFAULT_RATE`]),
//! `--browse-percent` of them product reads (Zipf-popular), the rest
//! one-line orders by `--shoppers` shoppers, measured in windows of
//! [`WINDOW`]: throughput, p99 and errors per window. Every product is
//! restocked before the load, so no order is refused for stock.
//!
//! # The faults ([`schedule`])
//! After a warm-up (a tenth of the run, 10 to 60 s) and until a quiet tail
//! (a sixth, 15 to 90 s) in which the system must recover, one fault per
//! slot (about a minute each), the kinds in a seeded order, cycled:
//! - an SMS, push or payment provider down (every call 503) for 8–20 s;
//! - a provider flaky (half its calls 503) for 15–25 s;
//! - the worker process SIGKILLed, and started again 2–6 s later;
//! - Redis stopped and started again, empty, 2–6 s later.
//!
//! The same seed gives the same schedule (and the same requests).
//!
//! # What is sampled
//! Every [`SAMPLE_EVERY`]: the pipeline lag and the dead letters (the
//! server's `/metrics`), and the resident memory of both processes.
//!
//! # The verdicts
//! - **memory** ([`MemoryCheck`]): the `api` process's resident memory at
//!   the end of the load is within [`MEMORY_TOLERANCE`] of its value after
//!   the warm-up; so is each worker life's. The worker is killed on
//!   purpose, so each process it runs as is judged from its own start, at
//!   the end of its life against its value a worker warm-up
//!   ([`worker_warmup`]) after its start; a life that does not last a
//!   warm-up past that is reported, not judged. Each level is the median
//!   of 30 s of readings, not one reading (file pages swing).
//! - **lag**: the pipeline lag is back to 0 within [`DRAIN_TIMEOUT`] of
//!   the end of the load;
//! - **accounting** ([`Accounting`]), read from the database file and the
//!   providers once drained: every order answered 201 is in the database
//!   and final; every confirmed order was charged once, and sent one
//!   `order_confirmed` e-mail, SMS and push, no more; every shopper holds
//!   exactly the points of their confirmed orders; every product's stock
//!   plus its confirmed units is the stock set at the start.

pub mod providers;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sqlx::Row;
use tokio::process::Child;
use tokio::time::Instant;

use self::providers::{Provider, Providers};
use crate::load::{Pacing, PhaseResult, Targets, Workload};
use crate::report::boxed;
use crate::shop::Shop;
use crate::stats::LatencySummary;
use crate::sut::{FailSpec, Role, Server, V2, WorkerCommand, terminate};
use crate::{BenchArgs, BenchError, load_bar, plan, spinner};

/// Requests per second when `--rate` is not given.
pub const DEFAULT_RATE: f64 = 200.0;
/// The load is measured in windows of this length.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How often lag, dead letters and memory are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The memory verdict: end of the load against after the warm-up.
pub const MEMORY_TOLERANCE: f64 = 0.10;
/// A memory level is the median of the readings over this long (see
/// [`MemoryCheck::judge`]).
pub const MEMORY_LEVEL_OVER: Duration = Duration::from_secs(30);
/// How long the pipeline may take to drain after the load.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);
/// Access tokens live 15 minutes; shoppers log in again this often.
const RELOGIN_EVERY: Duration = Duration::from_secs(10 * 60);
/// Stock set on every product before the load.
const RESTOCK: i64 = 100_000_000;
/// The simulated e-mail provider's failure rate throughout.
const EMAIL_FAILURE_RATE: f64 = 0.02;
/// The length of a fault slot when the run is long enough.
const SLOT: Duration = Duration::from_secs(60);
/// The shortest slot a short run gets.
const MIN_SLOT: Duration = Duration::from_secs(20);

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Every call to the provider answered 503.
    ProviderDown { provider: Provider },
    /// Half the calls to the provider answered 503.
    ProviderFlaky { provider: Provider },
    /// The worker process SIGKILLed; started again when the fault ends.
    WorkerKilled,
    /// Redis stopped; started again (empty) when the fault ends.
    RedisRestarted,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::ProviderDown { provider } => write!(f, "{} provider down", provider.name()),
            Fault::ProviderFlaky { provider } => {
                write!(f, "{} provider failing half its calls", provider.name())
            }
            Fault::WorkerKilled => f.write_str("worker SIGKILLed"),
            Fault::RedisRestarted => f.write_str("Redis stopped and restarted empty"),
        }
    }
}

impl Fault {
    /// A few words for a chart.
    pub fn short(&self) -> String {
        match self {
            Fault::ProviderDown { provider } => format!("{} down", provider.name()),
            Fault::ProviderFlaky { provider } => format!("{} 50%", provider.name()),
            Fault::WorkerKilled => "worker kill".into(),
            Fault::RedisRestarted => "Redis".into(),
        }
    }
}

/// A fault, when it starts and how long it lasts (seconds since the load started).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScheduledFault {
    pub fault: Fault,
    pub at_secs: f64,
    pub lasts_secs: f64,
}

/// The warm-up of a run of `duration`: faults start after it, and the
/// memory baseline is read at its end.
pub fn warmup(duration: Duration) -> Duration {
    (duration / 10).clamp(Duration::from_secs(10), SLOT)
}

/// How long a worker process warms up at `rate` requests per second: the
/// embedded log keeps the newest 1,024 events of each of its 18 partitions
/// decoded in memory (`sql::tail`), about 14 MiB once full, and at the
/// default rate (about 100 events a second) that takes some three minutes;
/// growth before then is that cache filling, not a leak. The time scales
/// with the rate; never shorter than the run's own warm-up.
pub fn worker_warmup(duration: Duration, rate: f64) -> Duration {
    const AT_DEFAULT_RATE: Duration = Duration::from_secs(180);
    AT_DEFAULT_RATE
        .mul_f64(DEFAULT_RATE / rate.max(1.0))
        .max(warmup(duration))
}

/// The quiet tail of a run of `duration`: no fault starts or lasts in it.
pub fn quiet_tail(duration: Duration) -> Duration {
    (duration / 6).clamp(Duration::from_secs(15), Duration::from_secs(90))
}

/// The faults of a run of `duration` with `seed`: one per slot between the
/// warm-up and the quiet tail, kinds in a seeded order, cycled; none
/// overlap. Empty when the run is too short for one slot.
pub fn schedule(seed: u64, duration: Duration) -> Vec<ScheduledFault> {
    let start = warmup(duration);
    let Some(span) = duration.checked_sub(start + quiet_tail(duration)) else {
        return Vec::new();
    };
    if span < MIN_SLOT {
        return Vec::new();
    }
    let slots = (span.as_secs_f64() / SLOT.as_secs_f64()).floor() as usize;
    let slots = if slots >= 6 {
        slots
    } else {
        ((span.as_secs_f64() / MIN_SLOT.as_secs_f64()).floor() as usize).clamp(1, 6)
    };
    let slot = span.as_secs_f64() / slots as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds = [
        Fault::ProviderDown {
            provider: Provider::Sms,
        },
        Fault::ProviderDown {
            provider: Provider::Push,
        },
        Fault::ProviderDown {
            provider: Provider::Payment,
        },
        Fault::ProviderFlaky {
            provider: Provider::ALL[rng.random_range(0..Provider::ALL.len())],
        },
        Fault::WorkerKilled,
        Fault::RedisRestarted,
    ];
    kinds.shuffle(&mut rng);
    (0..slots)
        .map(|n| {
            let fault = kinds[n % kinds.len()];
            let (low, high) = match fault {
                Fault::ProviderDown { .. } => (8.0, 20.0),
                Fault::ProviderFlaky { .. } => (15.0, 25.0),
                Fault::WorkerKilled | Fault::RedisRestarted => (2.0, 6.0),
            };
            let lasts: f64 = rng.random_range(low..=high);
            let lasts = lasts.min(slot * 0.6);
            let at = start.as_secs_f64() + slot * n as f64 + rng.random_range(0.0..=slot * 0.3);
            ScheduledFault {
                fault,
                at_secs: (at * 10.0).round() / 10.0,
                lasts_secs: (lasts * 10.0).round() / 10.0,
            }
        })
        .collect()
}

/// One measured window of the load.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// When the window ended, seconds since the load started.
    pub ended_secs: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub p99_ms: f64,
    pub order_p99_ms: f64,
    pub errors: u64,
    pub orders_accepted: u64,
}

/// One reading of the server's state.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_secs: f64,
    /// Consumer lag plus outbox backlog; None when `/metrics` did not answer.
    pub lag: Option<f64>,
    pub dead_letters: Option<f64>,
    pub api_rss_kib: Option<u64>,
    /// The anonymous part of it (heap, stacks; no mapped files).
    pub api_anon_kib: Option<u64>,
    /// The worker process read; None while it is down (killed, not yet
    /// started again).
    pub worker_pid: Option<u32>,
    pub worker_rss_kib: Option<u64>,
    pub worker_anon_kib: Option<u64>,
}

/// One process's resident memory over its part of the load: one warm-up
/// after it started, and at its end (the end of the load, or its kill),
/// judged when at least the run's warm-up lies between the two.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryCheck {
    /// `api`, or `worker (pid N)`.
    pub process: String,
    /// When it was first and last read (seconds since the load started).
    pub first_read_secs: f64,
    pub last_read_secs: f64,
    pub after_warmup_kib: Option<u64>,
    pub at_end_kib: Option<u64>,
    /// Within [`MEMORY_TOLERANCE`]; None when the process did not live
    /// long enough past its warm-up to judge.
    pub held: Option<bool>,
}

impl MemoryCheck {
    /// Judges `readings` (seconds since the load started, KiB) of one
    /// process, read from its start until its end: the level `warmup`
    /// after its start against the level at its end, when the end is at
    /// least `judged_over` after that. A level is the median of the
    /// readings over [`MEMORY_LEVEL_OVER`] (from the first reading past the
    /// warm-up; up to the last reading): resident memory includes file
    /// pages (SQLite's shared WAL index, the binary), which swing by
    /// several MiB from one reading to the next under load, and one
    /// reading taken in such a swing is no level.
    pub fn judge(
        process: String,
        readings: &[(f64, u64)],
        warmup: f64,
        judged_over: f64,
    ) -> MemoryCheck {
        let level_over = MEMORY_LEVEL_OVER.as_secs_f64();
        let first = readings.first().map_or(0.0, |r| r.0);
        let last = readings.last().map_or(0.0, |r| r.0);
        let baseline_at = readings.iter().find(|r| r.0 >= first + warmup).map(|r| r.0);
        let baseline = baseline_at.and_then(|at| median(readings, at, at + level_over));
        let end = baseline_at
            .filter(|at| last >= at + judged_over)
            .and_then(|_| median(readings, last - level_over, last + 0.001));
        MemoryCheck {
            process,
            first_read_secs: first,
            last_read_secs: last,
            after_warmup_kib: baseline,
            at_end_kib: end,
            held: end.zip(baseline).map(|(end, baseline)| {
                (end as f64 - baseline as f64).abs() <= MEMORY_TOLERANCE * baseline as f64
            }),
        }
    }

    pub fn change(&self) -> Option<f64> {
        let (warm, end) = (self.after_warmup_kib?, self.at_end_kib?);
        Some((end as f64 - warm as f64) / warm as f64)
    }

    /// For the table: the two readings, the change and the verdict.
    fn describe(&self) -> String {
        let mib =
            |kib: Option<u64>| kib.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let verdict = match self.held {
            Some(true) => "held",
            Some(false) => "NOT held",
            None => "not judged (too short a life past its warm-up)",
        };
        format!(
            "{:.0}–{:.0} s: {} after warm-up, {} at the end ({}): {verdict}",
            self.first_read_secs,
            self.last_read_secs,
            mib(self.after_warmup_kib),
            mib(self.at_end_kib),
            self.change()
                .map_or("-".into(), |c| format!("{:+.1}%", c * 100.0)),
        )
    }
}

/// The median of the readings taken in `[from, to)` (the upper one of the
/// two middle readings of an even count); None when there are none.
fn median(readings: &[(f64, u64)], from: f64, to: f64) -> Option<u64> {
    let mut levels: Vec<u64> = readings
        .iter()
        .filter(|r| r.0 >= from && r.0 < to)
        .map(|r| r.1)
        .collect();
    levels.sort_unstable();
    levels.get(levels.len() / 2).copied()
}

/// The memory checks of a run: `api` over the load from `warmup`, then
/// each worker life (the samples of one worker pid) from its own
/// `worker_warmup`, in the order they lived; each judged over at least
/// `warmup`.
pub fn memory_checks(
    samples: &[Sample],
    warmup: f64,
    worker_warmup: f64,
    load_secs: f64,
) -> Vec<MemoryCheck> {
    let during_load = || samples.iter().filter(|s| s.at_secs <= load_secs);
    let api: Vec<(f64, u64)> = during_load()
        .filter_map(|s| Some((s.at_secs, s.api_rss_kib?)))
        .collect();
    let mut checks = vec![MemoryCheck::judge("api".into(), &api, warmup, warmup)];
    let mut lives: Vec<(u32, Vec<(f64, u64)>)> = Vec::new();
    for sample in during_load() {
        let (Some(pid), Some(rss)) = (sample.worker_pid, sample.worker_rss_kib) else {
            continue;
        };
        match lives.last_mut() {
            Some((life, readings)) if *life == pid => readings.push((sample.at_secs, rss)),
            _ => lives.push((pid, vec![(sample.at_secs, rss)])),
        }
    }
    checks.extend(lives.iter().map(|(pid, readings)| {
        let process = format!("worker (pid {pid})");
        MemoryCheck::judge(process, readings, worker_warmup, warmup)
    }));
    checks
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub fault: Fault,
    pub started_secs: f64,
    pub ended_secs: f64,
    /// What went wrong injecting or healing it, if anything.
    pub trouble: Option<String>,
}

/// One effect checked per confirmed order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EffectCheck {
    pub effect: String,
    /// Confirmed orders (each should have the effect once).
    pub expected: u64,
    pub once: u64,
    pub missing: u64,
    pub more_than_once: u64,
    /// Orders with the effect that are not confirmed.
    pub unexpected: u64,
    /// Calls the provider refused (503) during the faults.
    pub refused_calls: u64,
    /// Calls that repeated a key the provider had accepted (deduplicated).
    pub repeated_calls: u64,
}

impl EffectCheck {
    fn exact(&self) -> bool {
        self.once == self.expected
            && self.missing == 0
            && self.more_than_once == 0
            && self.unexpected == 0
    }
}

/// The end-of-run accounting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accounting {
    /// Orders answered 201.
    pub accepted: u64,
    /// Orders in the database.
    pub in_database: u64,
    /// Answered 201, not in the database: lost.
    pub missing: u64,
    /// In the database, but the bench saw no 201 (the answer was lost, e.g.
    /// a client time-out): not lost, still checked like the others.
    pub unacknowledged: u64,
    /// Orders not in a final state after the drain.
    pub not_final: u64,
    pub by_status: BTreeMap<String, u64>,
    pub effects: Vec<EffectCheck>,
    /// Shoppers whose points are not those of their confirmed orders.
    pub points_wrong: u64,
    /// Products whose stock plus confirmed units is not the stock set at the start.
    pub stock_wrong: u64,
    pub dead_letters: u64,
}

impl Accounting {
    /// Nothing lost, nothing stuck, every effect once.
    pub fn exact(&self) -> bool {
        self.missing == 0
            && self.not_final == 0
            && self.points_wrong == 0
            && self.stock_wrong == 0
            && self.dead_letters == 0
            && self.effects.iter().all(EffectCheck::exact)
    }
}

/// The whole soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    pub duration_secs: f64,
    pub rate: f64,
    pub browse_percent: u8,
    pub seed: u64,
    pub warmup_secs: f64,
    pub faults: Vec<FaultRecord>,
    pub windows: Vec<Window>,
    pub samples: Vec<Sample>,
    pub requests: u64,
    pub errors: u64,
    pub throughput_rps: f64,
    pub latency: LatencySummary,
    pub order_latency: LatencySummary,
    pub lag_max: f64,
    /// Resident memory of `api` and of each worker life.
    pub memory: Vec<MemoryCheck>,
    /// `api`'s check and every judged worker life's held.
    pub memory_held: bool,
    /// Seconds from the end of the load until the lag was 0 (None: not within the timeout).
    pub drained_after_secs: Option<f64>,
    pub lag_left: Option<i64>,
    pub accounting: Accounting,
}

impl SoakRun {
    /// Every verdict held.
    pub fn passed(&self) -> bool {
        self.memory_held && self.drained_after_secs.is_some() && self.accounting.exact()
    }

    /// The readable summary: faults, windows (about 20 of them, evenly
    /// spaced, and the last), verdicts, accounting.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let faults: Vec<Vec<String>> = self
            .faults
            .iter()
            .map(|f| {
                vec![
                    format!("{:.0}", f.started_secs),
                    format!("{:.1}", f.ended_secs - f.started_secs),
                    f.fault.to_string(),
                    f.trouble.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&boxed(
            &[
                "at (s)".into(),
                "lasted (s)".into(),
                "fault".into(),
                "trouble".into(),
            ],
            &faults,
        ));
        out.push('\n');
        let every = (self.windows.len() / 20).max(1);
        let windows: Vec<Vec<String>> = self
            .windows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % every == 0 || *i + 1 == self.windows.len())
            .map(|(_, w)| {
                let sample = self
                    .samples
                    .iter()
                    .rev()
                    .find(|s| s.at_secs <= w.ended_secs);
                let mib =
                    |resident: Option<u64>, anonymous: Option<u64>| match (resident, anonymous) {
                        (Some(r), Some(a)) => {
                            format!("{:.1} ({:.1})", r as f64 / 1024.0, a as f64 / 1024.0)
                        }
                        _ => "-".into(),
                    };
                vec![
                    format!("{:.0}", w.ended_secs),
                    format!("{:.0}", w.throughput_rps),
                    format!("{:.1}", w.p99_ms),
                    format!("{:.1}", w.order_p99_ms),
                    w.errors.to_string(),
                    sample
                        .and_then(|s| s.lag)
                        .map_or("-".into(), |l| format!("{l:.0}")),
                    sample
                        .and_then(|s| s.dead_letters)
                        .map_or("-".into(), |d| format!("{d:.0}")),
                    mib(
                        sample.and_then(|s| s.api_rss_kib),
                        sample.and_then(|s| s.api_anon_kib),
                    ),
                    mib(
                        sample.and_then(|s| s.worker_rss_kib),
                        sample.and_then(|s| s.worker_anon_kib),
                    ),
                ]
            })
            .collect();
        out.push_str(&boxed(
            &[
                "t (s)",
                "req/s",
                "p99 ms",
                "order p99 ms",
                "errors",
                "lag",
                "dead letters",
                "api MiB (anon)",
                "worker MiB (anon)",
            ]
            .map(String::from),
            &windows,
        ));
        out.push('\n');
        let a = &self.accounting;
        let mut rows = vec![
            vec![
                "requests".into(),
                format!(
                    "{} in {:.0} s: {:.0} req/s, p99 {:.1} ms (orders {:.1} ms), {} errors",
                    self.requests,
                    self.duration_secs,
                    self.throughput_rps,
                    self.latency.p99_ms,
                    self.order_latency.p99_ms,
                    self.errors
                ),
            ],
            vec![
                "lag".into(),
                match self.drained_after_secs {
                    Some(secs) => format!(
                        "at most {:.0}; 0 again {secs:.1} s after the load: held",
                        self.lag_max
                    ),
                    None => format!(
                        "at most {:.0}; still {} after {:?}: NOT held",
                        self.lag_max,
                        self.lag_left.map_or("?".into(), |l| l.to_string()),
                        DRAIN_TIMEOUT
                    ),
                },
            ],
            vec![
                "orders".into(),
                format!(
                    "{} accepted, {} in the database, {} missing, {} answered without a 201, {} not final; {}",
                    a.accepted,
                    a.in_database,
                    a.missing,
                    a.unacknowledged,
                    a.not_final,
                    a.by_status
                        .iter()
                        .map(|(s, n)| format!("{s} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ],
        ];
        for (i, check) in self.memory.iter().enumerate() {
            rows.insert(
                1 + i,
                vec![format!("memory ({})", check.process), check.describe()],
            );
        }
        for effect in &a.effects {
            rows.push(vec![
                effect.effect.clone(),
                format!(
                    "{} of {} once, {} missing, {} more than once, {} unexpected ({} calls refused, {} repeats deduplicated)",
                    effect.once,
                    effect.expected,
                    effect.missing,
                    effect.more_than_once,
                    effect.unexpected,
                    effect.refused_calls,
                    effect.repeated_calls
                ),
            ]);
        }
        rows.push(vec![
            "points, stock, dead letters".into(),
            format!(
                "{} shoppers with wrong points, {} products with wrong stock, {} dead letters",
                a.points_wrong, a.stock_wrong, a.dead_letters
            ),
        ]);
        rows.push(vec![
            "accounting".into(),
            if a.exact() { "exact" } else { "NOT exact" }.into(),
        ]);
        out.push_str(&boxed(&["soak".into(), "result".into()], &rows));
        out
    }
}

/// The worker process and its pid for the sampler (0 while it is down).
struct WorkerSlot {
    child: Option<Child>,
    pid: Arc<AtomicU32>,
}

/// Runs the soak for `duration`.
pub async fn run(
    args: &BenchArgs,
    duration: Duration,
    binary: &Path,
) -> Result<SoakRun, BenchError> {
    let rate = args.rate.unwrap_or(DEFAULT_RATE);
    let faults = schedule(args.seed, duration);
    println!(
        "\n▶ soak: {:.0} s at {rate:.0} req/s ({}% reads), seed {}, {} faults:",
        duration.as_secs_f64(),
        args.browse_percent,
        args.seed,
        faults.len()
    );
    for fault in &faults {
        println!(
            "  at {:>5.0} s for {:>4.1} s: {}",
            fault.at_secs, fault.lasts_secs, fault.fault
        );
    }

    let bar = spinner("starting Redis, the providers, orderflow api and a worker");
    let redis = crate::sut::start_redis().await?;
    let redis = Arc::new(Mutex::new(redis));
    let providers = Providers::new();
    let mut env: Vec<(&str, String)> = providers.serve().await?;
    env.push((
        "ORDERFLOW_REDIS_URL",
        redis.lock().expect("not poisoned").url(),
    ));
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let failures = [FailSpec {
        provider: "email".into(),
        rate: EMAIL_FAILURE_RATE,
    }];
    let server = Server::start_role(binary, Role::Api, &V2, &failures, &env).await?;
    let api_pid = server.pid().unwrap_or(0);
    let workers = server.worker_command(binary, &V2, &failures, &env)?;
    let worker = workers.spawn().await?;
    let worker = Arc::new(tokio::sync::Mutex::new(WorkerSlot {
        pid: Arc::new(AtomicU32::new(worker.id().unwrap_or(0))),
        child: Some(worker),
    }));
    let worker_pid = worker.lock().await.pid.clone();

    bar.set_message(format!("registering {} shoppers", args.shoppers));
    let shop = Shop::new(&server.base_url, 256);
    let (admin_email, admin_password) = server.admin.clone().expect("the bench started it");
    let admin = shop.login(&admin_email, &admin_password).await?;
    let products = shop.product_ids().await?;
    shop.restock_all(&admin, &products, RESTOCK).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let tokens = shop.shoppers(args.shoppers.max(1), &run_id).await?;
    let (targets_tx, targets_rx) =
        tokio::sync::watch::channel(Arc::new(Targets::new(products.clone(), tokens)));
    bar.finish_and_clear();

    let started = Instant::now();
    let since = move || started.elapsed().as_secs_f64();
    // A watch, not a Notify: a stop sent while a task is busy (not yet
    // waiting) is still seen when it next waits.
    let (stop, stopped) = tokio::sync::watch::channel(false);

    // Shoppers log in again before their tokens expire.
    let relogin = {
        let (shop, products, run_id, mut stopped) = (
            shop.clone(),
            products.clone(),
            run_id.clone(),
            stopped.clone(),
        );
        let shoppers = args.shoppers.max(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RELOGIN_EVERY) => {}
                    _ = stopped.changed() => return,
                }
                if let Ok(tokens) = shop.shoppers(shoppers, &run_id).await {
                    let _ = targets_tx.send(Arc::new(Targets::new(products.clone(), tokens)));
                }
            }
        })
    };

    let sampler = {
        let (shop, mut stopped, worker_pid) = (shop.clone(), stopped.clone(), worker_pid.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                samples.push(sample(&shop, api_pid, &worker_pid, since()).await);
                tokio::select! {
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                    _ = stopped.changed() => return samples,
                }
            }
        })
    };

    let injector = {
        let (providers, redis, worker) = (providers.clone(), redis.clone(), worker.clone());
        let faults = faults.clone();
        tokio::spawn(async move {
            let mut records = Vec::new();
            for planned in faults {
                tokio::time::sleep_until(started + Duration::from_secs_f64(planned.at_secs)).await;
                let started_secs = since();
                let trouble = inject(planned.fault, &providers, &redis, &worker).await;
                tokio::time::sleep(Duration::from_secs_f64(planned.lasts_secs)).await;
                let healed = heal(planned.fault, &providers, &redis, &worker, &workers).await;
                records.push(FaultRecord {
                    fault: planned.fault,
                    started_secs,
                    ended_secs: since(),
                    trouble: trouble.or(healed),
                });
            }
            records
        })
    };

    // The load, window after window.
    let total_requests = (rate * duration.as_secs_f64()) as u64;
    let bar = load_bar("soak", Some(total_requests));
    let mut windows = Vec::new();
    let mut all = PhaseResult::default();
    let mut index = 0u64;
    while started.elapsed() < duration {
        let length = (duration - started.elapsed()).min(WINDOW);
        if length < Duration::from_millis(500) {
            break;
        }
        let mut window_plan = plan(
            args,
            Workload::Mixed,
            Pacing::Open { rate_per_sec: rate },
            length,
        );
        window_plan.seed = args.seed.wrapping_add(index);
        index += 1;
        let targets = targets_rx.borrow().clone();
        let phase = crate::load::run(&shop, targets, &window_plan, &bar).await;
        let window = Window {
            ended_secs: since(),
            requests: phase.requests,
            throughput_rps: crate::stats::throughput(phase.requests, phase.elapsed),
            p99_ms: phase.all.quantile_ms(0.99),
            order_p99_ms: phase.order.quantile_ms(0.99),
            errors: phase.errors,
            orders_accepted: phase.accepted_orders.len() as u64,
        };
        bar.set_message(format!(
            "soak {:.0}/{:.0} s: {:.0} req/s, p99 {:.1} ms, {} errors",
            window.ended_secs,
            duration.as_secs_f64(),
            window.throughput_rps,
            window.p99_ms,
            window.errors
        ));
        windows.push(window);
        all.merge(phase);
    }
    bar.finish_and_clear();
    let load_secs = since();
    let fault_records = injector
        .await
        .map_err(|e| BenchError::Server(format!("the fault injector failed: {e}")))?;

    let (drained_after_secs, lag_left) =
        crate::wait_for_backlog(&shop, server.admin.as_ref(), DRAIN_TIMEOUT).await?;
    let _ = stop.send(true);
    let samples = sampler
        .await
        .map_err(|e| BenchError::Server(format!("the sampler failed: {e}")))?;
    relogin
        .await
        .map_err(|e| BenchError::Server(format!("the shoppers' log-in task failed: {e}")))?;

    let bar = spinner("accounting");
    let accepted: Vec<uuid::Uuid> = all.accepted_orders.iter().map(|(_, id)| *id).collect();
    let database = server
        .data_dir()
        .expect("the bench started it")
        .join("orderflow.db");
    let accounting = account(&database, &accepted, &providers).await?;
    bar.finish_and_clear();

    if let Some(mut child) = worker.lock().await.child.take() {
        terminate(&mut child).await?;
    }
    server.stop().await?;
    drop(redis);

    let warm = warmup(duration).as_secs_f64();
    let memory = memory_checks(
        &samples,
        warm,
        worker_warmup(duration, rate).as_secs_f64(),
        load_secs,
    );
    let run = SoakRun {
        duration_secs: load_secs,
        rate,
        browse_percent: args.browse_percent,
        seed: args.seed,
        warmup_secs: warm,
        faults: fault_records,
        windows,
        lag_max: samples.iter().filter_map(|s| s.lag).fold(0.0, f64::max),
        samples,
        requests: all.requests,
        errors: all.errors,
        throughput_rps: crate::stats::throughput(all.requests, Duration::from_secs_f64(load_secs)),
        latency: all.all.summary(),
        order_latency: all.order.summary(),
        memory_held: memory.first().is_some_and(|api| api.held == Some(true))
            && memory.iter().all(|check| check.held != Some(false)),
        memory,
        drained_after_secs,
        lag_left,
        accounting,
    };
    Ok(run)
}

/// Reads the lag and dead letters from `/metrics` and both processes' memory.
async fn sample(shop: &Shop, api_pid: u32, worker_pid: &AtomicU32, at_secs: f64) -> Sample {
    let metrics = shop.metrics().await.ok();
    let pid = worker_pid.load(Ordering::SeqCst);
    let api = crate::live::memory_kib(api_pid).ok();
    let worker = (pid != 0)
        .then(|| crate::live::memory_kib(pid).ok())
        .flatten();
    Sample {
        at_secs,
        lag: metrics.as_ref().and_then(|m| m.pipeline_lag()),
        dead_letters: metrics
            .as_ref()
            .and_then(|m| m.by_name.get("orderflow_dead_letters").copied()),
        api_rss_kib: api.map(|m| m.resident),
        api_anon_kib: api.map(|m| m.anonymous),
        worker_pid: worker.is_some().then_some(pid),
        worker_rss_kib: worker.map(|m| m.resident),
        worker_anon_kib: worker.map(|m| m.anonymous),
    }
}

/// Starts `fault`; what went wrong, if anything.
async fn inject(
    fault: Fault,
    providers: &Providers,
    redis: &Arc<Mutex<orderflow_testkit::redis::RedisServer>>,
    worker: &tokio::sync::Mutex<WorkerSlot>,
) -> Option<String> {
    match fault {
        Fault::ProviderDown { provider } => providers.fail(provider, 1.0),
        Fault::ProviderFlaky { provider } => providers.fail(provider, 0.5),
        Fault::WorkerKilled => {
            let mut slot = worker.lock().await;
            slot.pid.store(0, Ordering::SeqCst);
            let Some(mut child) = slot.child.take() else {
                return Some("no worker to kill".into());
            };
            // `kill` is SIGKILL, then waits for the process.
            if let Err(e) = child.kill().await {
                return Some(format!("SIGKILL: {e}"));
            }
        }
        Fault::RedisRestarted => {
            let redis = redis.clone();
            if let Err(e) =
                tokio::task::spawn_blocking(move || redis.lock().expect("not poisoned").stop())
                    .await
            {
                return Some(format!("stopping Redis: {e}"));
            }
        }
    }
    None
}

/// Ends `fault`; what went wrong, if anything.
async fn heal(
    fault: Fault,
    providers: &Providers,
    redis: &Arc<Mutex<orderflow_testkit::redis::RedisServer>>,
    worker: &tokio::sync::Mutex<WorkerSlot>,
    workers: &WorkerCommand,
) -> Option<String> {
    match fault {
        Fault::ProviderDown { provider } | Fault::ProviderFlaky { provider } => {
            providers.fail(provider, 0.0);
            None
        }
        Fault::WorkerKilled => match workers.spawn().await {
            Ok(child) => {
                let mut slot = worker.lock().await;
                slot.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
                slot.child = Some(child);
                None
            }
            Err(e) => Some(format!("starting the worker again: {e}")),
        },
        Fault::RedisRestarted => {
            let redis = redis.clone();
            // Redis is part of the system under test: restarted at its priority.
            match crate::priority::at_server_priority(move || {
                redis.lock().expect("not poisoned").restart()
            })
            .await
            {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("starting Redis again: {e:#}")),
                Err(e) => Some(format!("starting Redis again: {e}")),
            }
        }
    }
}

/// The accounting, from the database file and what the providers accepted.
async fn account(
    database: &Path,
    accepted: &[uuid::Uuid],
    providers: &Providers,
) -> Result<Accounting, BenchError> {
    let pool = crate::staleness::read_only_pool(database).await?;
    let query_error = |e: sqlx::Error| BenchError::Setup(format!("reading the database: {e}"));
    let orders = sqlx::query("SELECT id, user_id, status, total_cents FROM orders")
        .fetch_all(&pool)
        .await
        .map_err(query_error)?;
    let mut status_of: HashMap<String, String> = HashMap::new();
    let mut expected_points: HashMap<String, i64> = HashMap::new();
    let mut accounting = Accounting::default();
    for row in &orders {
        let (id, user, status, total): (String, String, String, i64) = (
            row.get("id"),
            row.get("user_id"),
            row.get("status"),
            row.get("total_cents"),
        );
        *accounting.by_status.entry(status.clone()).or_default() += 1;
        if !crate::follow::FINAL.contains(&status.as_str()) {
            accounting.not_final += 1;
        }
        let points = expected_points.entry(user).or_default();
        if status == "confirmed" {
            // `points_for`: whole currency units of the total.
            *points += total.div_euclid(100);
        }
        status_of.insert(id, status);
    }
    accounting.in_database = status_of.len() as u64;
    accounting.accepted = accepted.len() as u64;
    let accepted_ids: std::collections::HashSet<String> =
        accepted.iter().map(uuid::Uuid::to_string).collect();
    accounting.missing = accepted_ids
        .iter()
        .filter(|id| !status_of.contains_key(*id))
        .count() as u64;
    accounting.unacknowledged = status_of
        .keys()
        .filter(|id| !accepted_ids.contains(*id))
        .count() as u64;

    let expected = status_of.values().filter(|s| *s == "confirmed").count() as u64;
    let check = |effect: &str, per_order: &HashMap<String, usize>| {
        let mut check = EffectCheck {
            effect: effect.into(),
            expected,
            ..Default::default()
        };
        for (id, status) in &status_of {
            let count = per_order.get(id).copied().unwrap_or(0);
            match (status == "confirmed", count) {
                (true, 0) => check.missing += 1,
                (true, 1) => check.once += 1,
                (true, _) => check.more_than_once += 1,
                (false, 0) => {}
                (false, _) => check.unexpected += 1,
            }
        }
        check.unexpected += per_order
            .keys()
            .filter(|id| !status_of.contains_key(*id))
            .count() as u64;
        check
    };
    let emails: HashMap<String, usize> = sqlx::query(
        "SELECT order_id, COUNT(*) AS sent FROM notifications \
         WHERE channel = 'email' AND kind = 'order_confirmed' AND order_id IS NOT NULL \
         GROUP BY order_id",
    )
    .fetch_all(&pool)
    .await
    .map_err(query_error)?
    .iter()
    .map(|row| (row.get("order_id"), row.get::<i64, _>("sent") as usize))
    .collect();
    accounting
        .effects
        .push(check("e-mail (order_confirmed, recorded)", &emails));
    for (provider, effect) in [
        (Provider::Payment, "charge (payment provider)"),
        (Provider::Sms, "SMS (order_confirmed, provider)"),
        (Provider::Push, "push (order_confirmed, provider)"),
    ] {
        let tally = providers.tally(provider);
        let mut effect = check(effect, &tally.keys_per_order);
        effect.refused_calls = tally.refused;
        effect.repeated_calls = tally.repeats;
        accounting.effects.push(effect);
    }

    let points: HashMap<String, i64> = sqlx::query("SELECT user_id, points FROM loyalty_points")
        .fetch_all(&pool)
        .await
        .map_err(query_error)?
        .iter()
        .map(|row| (row.get("user_id"), row.get("points")))
        .collect();
    accounting.points_wrong = expected_points
        .iter()
        .filter(|(user, expected)| points.get(*user).copied().unwrap_or(0) != **expected)
        .count() as u64;

    let stock_wrong: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM products p WHERE p.stock + COALESCE((\
           SELECT SUM(i.quantity) FROM order_items i JOIN orders o ON o.id = i.order_id \
           WHERE i.product_id = p.id AND o.status = 'confirmed'), 0) != ?",
    )
    .bind(RESTOCK)
    .fetch_one(&pool)
    .await
    .map_err(query_error)?;
    accounting.stock_wrong = stock_wrong as u64;
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .map_err(query_error)?;
    accounting.dead_letters = dead as u64;
    pool.close().await;
    Ok(accounting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_seeded_bounded_and_without_overlap() {
        let ten_minutes = Duration::from_secs(600);
        let faults = schedule(7, ten_minutes);
        assert_eq!(faults, schedule(7, ten_minutes), "same seed, same schedule");
        assert_ne!(
            faults,
            schedule(8, ten_minutes),
            "another seed, another one"
        );
        assert!(faults.len() >= 6, "{faults:?}");
        let start = warmup(ten_minutes).as_secs_f64();
        let end = (ten_minutes - quiet_tail(ten_minutes)).as_secs_f64();
        for pair in faults.windows(2) {
            assert!(
                pair[0].at_secs + pair[0].lasts_secs <= pair[1].at_secs,
                "{pair:?}"
            );
        }
        for fault in &faults {
            assert!(fault.at_secs >= start && fault.at_secs + fault.lasts_secs <= end + 0.1);
        }
        for kind in [
            "ProviderDown { provider: Sms }",
            "ProviderDown { provider: Push }",
            "ProviderDown { provider: Payment }",
            "ProviderFlaky",
            "WorkerKilled",
            "RedisRestarted",
        ] {
            assert!(
                faults
                    .iter()
                    .any(|f| format!("{:?}", f.fault).starts_with(kind)),
                "a 10-minute soak has {kind}: {faults:?}"
            );
        }
    }

    #[test]
    fn a_worker_warms_up_longer_at_lower_rates_never_shorter_than_the_run() {
        let ten_minutes = Duration::from_secs(600);
        assert_eq!(
            worker_warmup(ten_minutes, DEFAULT_RATE),
            Duration::from_secs(180)
        );
        assert_eq!(worker_warmup(ten_minutes, 100.0), Duration::from_secs(360));
        assert_eq!(worker_warmup(ten_minutes, 4_000.0), warmup(ten_minutes));
    }

    #[test]
    fn short_runs_get_fewer_faults_and_tiny_ones_none() {
        assert!(schedule(1, Duration::from_secs(20)).is_empty());
        let two_minutes = schedule(1, Duration::from_secs(120));
        assert!((1..=6).contains(&two_minutes.len()), "{two_minutes:?}");
    }

    fn sample(at_secs: f64, api: u64, worker: Option<(u32, u64)>) -> Sample {
        Sample {
            at_secs,
            lag: None,
            dead_letters: None,
            api_rss_kib: Some(api),
            api_anon_kib: None,
            worker_pid: worker.map(|w| w.0),
            worker_rss_kib: worker.map(|w| w.1),
            worker_anon_kib: None,
        }
    }

    #[test]
    fn memory_is_judged_per_process_life_from_its_own_warm_up() {
        let mut samples = Vec::new();
        for t in 0..=60 {
            let at = t as f64 * 2.0;
            // The first worker grows 1 KiB/s past its warm-up of 20 s,
            // until it is killed at 80 s; the second starts at 84 s and is
            // flat but for a start-up below its warm-up level.
            let worker = match at {
                at if at <= 80.0 => Some((7, 1_000 + at as u64)),
                at if at < 84.0 => None,
                at if at < 94.0 => Some((8, 500)),
                _ => Some((8, 1_000)),
            };
            samples.push(sample(at, 10_000 + (t % 3), worker));
        }
        let checks = memory_checks(&samples, 10.0, 20.0, 120.0);
        let summary: Vec<_> = checks
            .iter()
            .map(|c| (c.process.as_str(), c.after_warmup_kib, c.at_end_kib, c.held))
            .collect();
        // Levels are medians of 30 s: the linear growth's middle readings.
        assert_eq!(
            summary,
            [
                ("api", Some(10_001), Some(10_001), Some(true)),
                ("worker (pid 7)", Some(1_034), Some(1_066), Some(true)),
                ("worker (pid 8)", Some(1_000), Some(1_000), Some(true)),
            ],
            "{checks:#?}"
        );
        assert!((checks[1].change().unwrap() - 32.0 / 1_034.0).abs() < 1e-9);

        // Past the tolerance: 10% of the warm level and one KiB more.
        let grown: Vec<(f64, u64)> = vec![(0.0, 50), (10.0, 1_000), (50.0, 1_101)];
        let check = MemoryCheck::judge("worker (pid 9)".into(), &grown, 10.0, 10.0);
        assert_eq!(check.held, Some(false));
        let shrunk: Vec<(f64, u64)> = vec![(10.0, 1_000), (20.0, 1_000), (60.0, 900)];
        assert_eq!(
            MemoryCheck::judge("api".into(), &shrunk, 10.0, 10.0).held,
            Some(true)
        );

        // One reading in a swing of file pages is not the level; a level
        // that moved is.
        let mut spiked: Vec<(f64, u64)> = (0..60).map(|t| (f64::from(t) * 2.0, 1_000)).collect();
        spiked.last_mut().unwrap().1 = 1_300;
        let check = MemoryCheck::judge("worker (pid 9)".into(), &spiked, 20.0, 20.0);
        assert_eq!((check.at_end_kib, check.held), (Some(1_000), Some(true)));
        for reading in spiked.iter_mut().rev().take(8) {
            reading.1 = 1_300;
        }
        let check = MemoryCheck::judge("worker (pid 9)".into(), &spiked, 20.0, 20.0);
        assert_eq!((check.at_end_kib, check.held), (Some(1_300), Some(false)));

        // A life that ends too soon after its warm-up is not judged
        // either way.
        let short: Vec<(f64, u64)> = vec![(0.0, 1_000), (10.0, 1_000), (19.0, 9_000)];
        let check = MemoryCheck::judge("worker (pid 9)".into(), &short, 10.0, 10.0);
        assert_eq!((check.at_end_kib, check.held), (None, None));
    }

    #[test]
    fn accounting_is_exact_only_when_nothing_is_off() {
        let mut accounting = Accounting {
            accepted: 3,
            in_database: 3,
            effects: vec![EffectCheck {
                effect: "sms".into(),
                expected: 3,
                once: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(accounting.exact());
        accounting.effects[0].more_than_once = 1;
        accounting.effects[0].once = 2;
        assert!(!accounting.exact());
        accounting.effects[0] = EffectCheck {
            effect: "sms".into(),
            expected: 3,
            once: 3,
            ..Default::default()
        };
        accounting.missing = 1;
        assert!(!accounting.exact());
    }
}
