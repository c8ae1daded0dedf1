//! `orderflow bench --sustained`: the highest order rate the event pipeline
//! keeps up with, per architecture.
//!
//! Open-loop order-only load in steps of rising rate (`--sustained-start`,
//! times `--sustained-factor` each step up to `--sustained-max`, or the list
//! `--sustained-rates`), `--sustained-step-secs` each. A step is **held**
//! when all of these are true ([`Criteria::verdict`]):
//!
//! - (a) **lag bounded**: the pipeline lag (every consumer group's lag plus
//!   the outbox rows not yet relayed, read from `/metrics` every 250 ms, see
//!   [`MetricsSnapshot::pipeline_lag`](crate::shop::MetricsSnapshot::pipeline_lag))
//!   does not keep growing during the step. The samples of the first second
//!   are left out (the lag rises from 0 to the level the rate implies), the
//!   rest are split into an early and a late half, and the late half's mean
//!   may exceed the early half's by at most `--sustained-lag-growth` (a
//!   share, default 50%) plus `--sustained-lag-slack` events (default 50,
//!   for the noise of batching at low rates). A pipeline that keeps up
//!   hovers around a level; one that falls behind by D events/s grows by D
//!   every second, which the late half shows.
//! - (b) **drained**: after the step's last request answered, the lag
//!   reaches 0 within `--sustained-drain-secs` (default 2 s).
//! - (c) **confirmed in time**: the p99 of accepted → confirmed over the
//!   step's followed orders (see [`crate::follow`]) is within
//!   `--sustained-confirm-p99-ms` (default: the simulated payment latency,
//!   `ORDERFLOW_SIM_PAYMENT_LATENCY_MS` or 50 ms, plus 100 ms). Orders not
//!   confirmed by then count with the time waited.
//! - (d) **the rate was served**: the API answered at least 90% of the
//!   offered rate and at most `--sustained-max-error-rate` (default 1%) of
//!   the requests failed. Without it a saturated API that accepts fewer
//!   orders than offered would make the pipeline look as if it kept up.
//!
//! The ladder stops at the first step not held; the highest rate held is
//! reported per architecture. For v1 (inline side effects) there are no
//! consumers: the lag is 0 and orders are confirmed when the request
//! answers, so v1 is limited by (c) and (d).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::follow::{Followers, Milestones};
use crate::load::{Pacing, Workload};
use crate::report::{boxed, share};
use crate::sut::Architecture;
use crate::{BenchArgs, BenchError, Session, load_bar, plan, spinner, start_session, stats};

/// How often the lag is read during a step.
pub const LAG_SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Lag samples this early in a step are left out of rule (a).
pub const LAG_RAMP: Duration = Duration::from_secs(1);
/// Rule (d): the API must answer at least this share of the offered rate.
pub const MIN_SERVED_SHARE: f64 = 0.9;
/// Stock set on every product before the ladder (when the bench knows the
/// admin), so orders are never refused for stock: a refused order is cheaper
/// than a confirmed one and would flatter the pipeline.
const RESTOCK: i64 = 100_000_000;

/// What a step must meet to be held (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Criteria {
    pub lag_growth: f64,
    pub lag_slack: f64,
    pub drain_secs: f64,
    pub confirm_p99_ms: f64,
    pub max_error_rate: f64,
    pub min_served_share: f64,
}

/// One step of the ladder, measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SustainedStep {
    pub offered_rps: f64,
    /// Order requests answered per second of the step.
    pub achieved_rps: f64,
    pub requests: u64,
    pub request_p50_ms: f64,
    pub request_p99_ms: f64,
    pub error_rate: f64,
    /// Orders refused for stock (409), not errors.
    pub refused: u64,
    /// (seconds into the step, pipeline lag in events), every 250 ms.
    pub lag_samples: Vec<(f64, f64)>,
    pub lag_max: f64,
    /// Rule (a): mean lag of the early and the late half of the step (after the first second).
    pub lag_early_mean: f64,
    pub lag_late_mean: f64,
    pub lag_bounded: bool,
    /// Rule (b): seconds after the step until the lag was 0 (None: not within the window).
    pub drained_after_secs: Option<f64>,
    /// The lag when the drain window ended (0 when drained).
    pub lag_left: f64,
    /// Rule (c): accepted → confirmed of the step's followed orders.
    pub followed_orders: usize,
    pub followed_unfinished: usize,
    pub confirm_p50_ms: Option<f64>,
    pub confirm_p99_ms: Option<f64>,
    pub generator_cpu_cores: f64,
    pub held: bool,
    /// Why not, in words (empty when held).
    pub not_held_because: Vec<String>,
}

/// The ladder of one architecture.
#[derive(Debug, Clone, Serialize)]
pub struct SustainedRun {
    pub name: String,
    pub label: String,
    pub criteria: Criteria,
    /// Whether the server exports a lag at all (v1 has no consumers: 0 assumed).
    pub lag_exported: bool,
    pub steps: Vec<SustainedStep>,
    /// The highest offered order rate held (None: not even the first step).
    pub max_held_rps: Option<f64>,
    pub notes: Vec<String>,
}

/// The rates to offer: `--sustained-rates` as given, or `start`, then times
/// `factor` (rounded to two significant digits) while not above `max`.
pub fn ladder(start: f64, factor: f64, max: f64, explicit: &[f64]) -> Vec<f64> {
    if !explicit.is_empty() {
        return explicit.iter().copied().filter(|r| *r > 0.0).collect();
    }
    let mut rates = Vec::new();
    let mut rate = start;
    while rate > 0.0 && rate <= max && factor > 1.0 {
        let rounded = two_significant(rate);
        if rates.last() != Some(&rounded) {
            rates.push(rounded);
        }
        rate *= factor;
    }
    if rates.is_empty() && start > 0.0 && start <= max {
        rates.push(start);
    }
    rates
}

fn two_significant(v: f64) -> f64 {
    if v < 100.0 {
        return v.round();
    }
    let unit = 10f64.powi(v.log10().floor() as i32 - 1);
    (v / unit).round() * unit
}

/// Rule (a)'s two means: samples before `ramp_secs` left out (unless that
/// leaves fewer than 2), the rest split in an early and a late half by count.
pub fn lag_halves(samples: &[(f64, f64)], ramp_secs: f64) -> (f64, f64) {
    let after_ramp: Vec<f64> = samples
        .iter()
        .filter(|(t, _)| *t >= ramp_secs)
        .map(|(_, lag)| *lag)
        .collect();
    let values: Vec<f64> = if after_ramp.len() >= 2 {
        after_ramp
    } else {
        samples.iter().map(|(_, lag)| *lag).collect()
    };
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let (early, late) = values.split_at(values.len() / 2);
    if early.is_empty() {
        (mean(late), mean(late))
    } else {
        (mean(early), mean(late))
    }
}

impl Criteria {
    /// Rule (a) on two means.
    pub fn lag_bounded(&self, early_mean: f64, late_mean: f64) -> bool {
        late_mean <= early_mean * (1.0 + self.lag_growth) + self.lag_slack
    }

    /// Whether `step` held, and if not, why (every rule it broke).
    pub fn verdict(&self, step: &SustainedStep) -> (bool, Vec<String>) {
        let mut why = Vec::new();
        if !step.lag_bounded {
            why.push(format!(
                "(a) lag grew during the step: {:.0} → {:.0} events (allowed {:.0})",
                step.lag_early_mean,
                step.lag_late_mean,
                step.lag_early_mean * (1.0 + self.lag_growth) + self.lag_slack
            ));
        }
        if step.drained_after_secs.is_none() {
            why.push(format!(
                "(b) {:.0} events still behind {} s after the step",
                step.lag_left, self.drain_secs
            ));
        }
        match step.confirm_p99_ms {
            Some(p99) if p99 > self.confirm_p99_ms => why.push(format!(
                "(c) accepted → confirmed p99 {p99:.0} ms > {:.0} ms",
                self.confirm_p99_ms
            )),
            Some(_) => {}
            None if step.followed_orders > 0 => {
                why.push("(c) no followed order was confirmed".into())
            }
            None => {}
        }
        if step.achieved_rps < self.min_served_share * step.offered_rps {
            why.push(format!(
                "(d) the API answered {:.0} of {:.0} orders/s",
                step.achieved_rps, step.offered_rps
            ));
        }
        if step.error_rate > self.max_error_rate {
            why.push(format!(
                "(d) {} of the requests failed",
                share(step.error_rate)
            ));
        }
        (why.is_empty(), why)
    }
}

/// The accepted → confirmed target when `--sustained-confirm-p99-ms` is not
/// given: the simulated payment latency (as the started servers get it from
/// the environment) plus 100 ms.
pub fn default_confirm_target_ms() -> f64 {
    let payment = std::env::var("ORDERFLOW_SIM_PAYMENT_LATENCY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(50.0);
    payment + 100.0
}

/// The criteria the tests (here and of the plots) judge by.
#[cfg(test)]
impl Criteria {
    pub(crate) fn for_tests() -> Self {
        Criteria {
            lag_growth: 0.5,
            lag_slack: 50.0,
            drain_secs: 2.0,
            confirm_p99_ms: 150.0,
            max_error_rate: 0.01,
            min_served_share: 0.9,
        }
    }
}

pub fn criteria(args: &BenchArgs) -> Criteria {
    Criteria {
        lag_growth: args.sustained_lag_growth,
        lag_slack: args.sustained_lag_slack,
        drain_secs: args.sustained_drain_secs,
        confirm_p99_ms: args
            .sustained_confirm_p99_ms
            .unwrap_or_else(default_confirm_target_ms),
        max_error_rate: args.sustained_max_error_rate,
        min_served_share: MIN_SERVED_SHARE,
    }
}

/// Runs the ladder against one architecture.
pub async fn run(
    args: &BenchArgs,
    binary: &std::path::Path,
    architecture: &Architecture,
    run_id: &str,
) -> Result<SustainedRun, BenchError> {
    let criteria = criteria(args);
    let rates = ladder(
        args.sustained_start,
        args.sustained_factor,
        args.sustained_max,
        &args.sustained_rates,
    );
    if rates.is_empty() {
        return Err(BenchError::Setup(
            "no rate to offer: --sustained-start is above --sustained-max".into(),
        ));
    }
    let session = start_session(args, binary, architecture, &[], args.shoppers, run_id).await?;
    let mut result = SustainedRun {
        name: architecture.name.to_string(),
        label: architecture.label.to_string(),
        criteria,
        lag_exported: false,
        steps: Vec::new(),
        max_held_rps: None,
        notes: Vec::new(),
    };
    restock(&session, &mut result).await?;
    let followers = Followers::register(
        &session.shop,
        session.targets.products.clone(),
        args.sustained_follow,
        &format!("{run_id}-sustained"),
    )
    .await?;
    let step_length = Duration::from_secs_f64(args.sustained_step_secs.max(0.5));
    if args.warmup_secs > 0
        && let Some(first) = rates.first()
    {
        let warmup = plan(
            args,
            Workload::Order,
            Pacing::Open {
                rate_per_sec: *first,
            },
            Duration::from_secs(args.warmup_secs),
        );
        session.run("warming up", &warmup).await;
        drain(&session, Duration::from_secs(args.drain_timeout_secs)).await?;
    }
    for (index, rate) in rates.iter().copied().enumerate() {
        let label = format!(
            "{} step {}/{}: {rate:.0} orders/s",
            architecture.name,
            index + 1,
            rates.len()
        );
        let step = step(
            args,
            &session,
            &followers,
            &criteria,
            &label,
            rate,
            step_length,
            index as u64,
        )
        .await?;
        result.lag_exported |= step.lag_samples.iter().any(|(_, lag)| !lag.is_nan());
        println!(
            "  {rate:>6.0} orders/s: {:>6.0} answered/s, request p99 {}, errors {}, lag max {:.0}, drained {}, confirmed p99 {} → {}",
            step.achieved_rps,
            ms(step.request_p99_ms),
            share(step.error_rate),
            step.lag_max,
            step.drained_after_secs
                .map_or("no".into(), |s| format!("in {s:.2} s")),
            step.confirm_p99_ms.map_or("n/a".into(), ms),
            if step.held {
                "held".to_owned()
            } else {
                format!("NOT held: {}", step.not_held_because.join("; "))
            }
        );
        if step.refused > 0 {
            println!(
                "  {rate:>6.0} orders/s: {} orders refused for stock",
                step.refused
            );
        }
        if step.generator_cpu_cores >= 0.9 * crate::report::Machine::this().cpus as f64 {
            result.notes.push(format!(
                "{}: at {rate:.0} orders/s the load generator used {:.2} cores; it may have been the bottleneck",
                architecture.name, step.generator_cpu_cores
            ));
        }
        let held = step.held;
        result.steps.push(step);
        if !held {
            break;
        }
        result.max_held_rps = Some(rate);
    }
    if !result.lag_exported {
        result.notes.push(format!(
            "{}: the server exports no consumer lag (no consumers, e.g. inline side effects): lag taken as 0",
            architecture.name
        ));
    }
    if result.steps.last().is_some_and(|s| s.held) {
        result.notes.push(format!(
            "{}: every step was held; raise --sustained-max to find the limit",
            architecture.name
        ));
    }
    session.server.stop().await?;
    Ok(result)
}

/// Sets every product's stock high, where the bench knows the admin; notes
/// otherwise (a `--target` may run out of stock during a long ladder).
async fn restock(session: &Session, result: &mut SustainedRun) -> Result<(), BenchError> {
    let Some((email, password)) = &session.server.admin else {
        result.notes.push(format!(
            "{}: stock not raised (no admin for a --target server); refused orders are counted per step",
            result.name
        ));
        return Ok(());
    };
    let bar = spinner("raising every product's stock");
    let token = session.shop.login(email, password).await?;
    let restocked = session
        .shop
        .restock_all(&token, &session.targets.products, RESTOCK)
        .await;
    bar.finish_and_clear();
    restocked?;
    Ok(())
}

/// The pipeline lag now; NaN when the server exports none.
async fn lag(session: &Session) -> Result<f64, BenchError> {
    Ok(session
        .shop
        .metrics()
        .await?
        .pipeline_lag()
        .unwrap_or(f64::NAN))
}

/// Waits until the lag is 0 (or not exported), at most `window`; how long it took.
async fn drain(session: &Session, window: Duration) -> Result<(Option<f64>, f64), BenchError> {
    let started = Instant::now();
    loop {
        let now = lag(session).await?;
        if now.is_nan() || now <= 0.0 {
            return Ok((Some(started.elapsed().as_secs_f64()), 0.0));
        }
        if started.elapsed() >= window {
            return Ok((None, now));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn step(
    args: &BenchArgs,
    session: &Session,
    followers: &Followers,
    criteria: &Criteria,
    label: &str,
    rate: f64,
    length: Duration,
    index: u64,
) -> Result<SustainedStep, BenchError> {
    let drain_window = Duration::from_secs_f64(criteria.drain_secs.max(0.0));
    // Points still missing after the drain window (and a second more) are
    // far past any target; the step's verdict does not wait for them.
    let points_deadline = Instant::now() + length + drain_window + Duration::from_secs(1);
    let following = followers.spawn(
        args.sustained_follow,
        length,
        points_deadline,
        args.seed.wrapping_add(1_000 + index),
    );
    // The lag, read every 250 ms on the side, shown on the progress bar.
    let bar = load_bar(label, Some((rate * length.as_secs_f64()) as u64));
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, f64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (shop, samples, stop, bar, label) = (
            session.shop.clone(),
            samples.clone(),
            stop.clone(),
            bar.clone(),
            label.to_owned(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let mut every = tokio::time::interval(LAG_SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                every.tick().await;
                if let Ok(metrics) = shop.metrics().await {
                    let lag = metrics.pipeline_lag().unwrap_or(f64::NAN);
                    samples
                        .lock()
                        .expect("not poisoned")
                        .push((started.elapsed().as_secs_f64(), lag));
                    if !lag.is_nan() {
                        bar.set_message(format!("{label}, lag {lag:.0}"));
                    }
                }
            }
        })
    };
    let orders = plan(
        args,
        Workload::Order,
        Pacing::Open { rate_per_sec: rate },
        length,
    );
    let phase = crate::load::run(&session.shop, session.targets.clone(), &orders, &bar).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    bar.set_message(format!("{label}: waiting for the lag to drain"));
    let (drained_after_secs, lag_left) = drain(session, drain_window).await?;
    bar.set_message(format!("{label}: reading the followed orders"));
    let run = following.await.expect("followers do not panic");
    let milestones = followers
        .milestones(&run, Instant::now() + Duration::from_secs(1))
        .await;
    bar.finish_and_clear();

    let lag_samples: Vec<(f64, f64)> = std::mem::take(&mut *samples.lock().expect("not poisoned"));
    let exported: Vec<(f64, f64)> = lag_samples
        .iter()
        .copied()
        .filter(|(_, lag)| !lag.is_nan())
        .collect();
    let (lag_early_mean, lag_late_mean) = lag_halves(&exported, LAG_RAMP.as_secs_f64());
    let (confirm_p50_ms, confirm_p99_ms) = Milestones::p50_p99(&milestones.confirmed);
    let span = phase.elapsed.max(length);
    let mut step = SustainedStep {
        offered_rps: rate,
        achieved_rps: stats::throughput(phase.requests, span),
        requests: phase.requests,
        request_p50_ms: phase.order.quantile_ms(0.5),
        request_p99_ms: phase.order.quantile_ms(0.99),
        error_rate: phase.error_rate(),
        refused: phase.refused,
        lag_max: exported.iter().map(|(_, l)| *l).fold(0.0, f64::max),
        lag_samples,
        lag_early_mean,
        lag_late_mean,
        lag_bounded: criteria.lag_bounded(lag_early_mean, lag_late_mean),
        drained_after_secs,
        lag_left,
        followed_orders: milestones.followed,
        followed_unfinished: milestones.unfinished,
        confirm_p50_ms,
        confirm_p99_ms,
        generator_cpu_cores: phase.generator_cpu.as_secs_f64()
            / phase.elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        held: false,
        not_held_because: Vec::new(),
    };
    (step.held, step.not_held_because) = criteria.verdict(&step);
    Ok(step)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// The sustained tables: every step per architecture, then the highest rate
/// held side by side.
pub fn tables(runs: &[SustainedRun]) -> String {
    let mut parts = Vec::new();
    for run in runs {
        let header: Vec<String> = [
            "orders/s offered",
            "answered/s",
            "request p99",
            "errors",
            "lag max",
            "lag early → late",
            "drained after",
            "confirmed p99",
            "held",
        ]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
        let rows: Vec<Vec<String>> = run
            .steps
            .iter()
            .map(|s| {
                vec![
                    format!("{:.0}", s.offered_rps),
                    format!("{:.0}", s.achieved_rps),
                    ms(s.request_p99_ms),
                    share(s.error_rate),
                    format!("{:.0}", s.lag_max),
                    format!("{:.0} → {:.0}", s.lag_early_mean, s.lag_late_mean),
                    s.drained_after_secs
                        .map_or("not in time".into(), |d| format!("{d:.2} s")),
                    s.confirm_p99_ms.map_or("n/a".into(), ms),
                    if s.held { "yes".into() } else { "no".into() },
                ]
            })
            .collect();
        let mut text = format!(
            "sustained, {}: {}\n{}",
            run.name,
            run.label,
            boxed(&header, &rows)
        );
        if let Some(last) = run.steps.last().filter(|s| !s.held) {
            for why in &last.not_held_because {
                text.push_str(&format!(
                    "\n  not held at {:.0} orders/s: {why}",
                    last.offered_rps
                ));
            }
        }
        parts.push(text);
    }
    let mut header = vec!["sustained".to_owned()];
    header.extend(runs.iter().map(|r| r.name.clone()));
    let held_step = |r: &SustainedRun| r.steps.iter().rev().find(|s| s.held).cloned();
    let row = |metric: &str, cell: &dyn Fn(&SustainedRun) -> String| {
        let mut cells = vec![metric.to_owned()];
        cells.extend(runs.iter().map(cell));
        cells
    };
    let rows = vec![
        row("highest order rate held", &|r| {
            r.max_held_rps
                .map_or("none".into(), |v| format!("{v:.0} orders/s"))
        }),
        row("confirmed p99 at that rate", &|r| {
            held_step(r)
                .and_then(|s| s.confirm_p99_ms)
                .map_or("n/a".into(), ms)
        }),
        row("request p99 at that rate", &|r| {
            held_step(r).map_or("n/a".into(), |s| ms(s.request_p99_ms))
        }),
        row("lag max at that rate", &|r| {
            held_step(r).map_or("n/a".into(), |s| format!("{:.0}", s.lag_max))
        }),
        row("first rate not held", &|r| {
            r.steps
                .iter()
                .find(|s| !s.held)
                .map_or("none".into(), |s| format!("{:.0} orders/s", s.offered_rps))
        }),
    ];
    let criteria = runs.first().map(|r| r.criteria);
    let mut summary = boxed(&header, &rows);
    if let Some(c) = criteria {
        summary.push_str(&format!(
            "\nheld = (a) lag late half ≤ early half × {:.2} + {:.0} events, (b) drained within {} s, \
             (c) accepted → confirmed p99 ≤ {:.0} ms, (d) ≥ {:.0}% of the rate answered and errors ≤ {}",
            1.0 + c.lag_growth,
            c.lag_slack,
            c.drain_secs,
            c.confirm_p99_ms,
            c.min_served_share * 100.0,
            share(c.max_error_rate)
        ));
    }
    parts.push(summary);
    parts.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_step() -> SustainedStep {
        SustainedStep {
            offered_rps: 500.0,
            achieved_rps: 498.0,
            requests: 2490,
            error_rate: 0.0,
            lag_early_mean: 200.0,
            lag_late_mean: 220.0,
            lag_bounded: true,
            drained_after_secs: Some(0.3),
            followed_orders: 20,
            confirm_p99_ms: Some(120.0),
            ..Default::default()
        }
    }

    #[test]
    fn the_ladder_multiplies_and_rounds_or_takes_the_list() {
        assert_eq!(
            ladder(250.0, 2.0, 3000.0, &[]),
            vec![250.0, 500.0, 1000.0, 2000.0]
        );
        assert_eq!(
            ladder(250.0, 1.5, 2000.0, &[]),
            vec![250.0, 380.0, 560.0, 840.0, 1300.0, 1900.0]
        );
        assert_eq!(
            ladder(250.0, 2.0, 100.0, &[]),
            Vec::<f64>::new(),
            "start above max"
        );
        assert_eq!(
            ladder(10.0, 1.0, 100.0, &[]),
            vec![10.0],
            "a factor ≤ 1 runs one step"
        );
        assert_eq!(
            ladder(250.0, 2.0, 3000.0, &[250.0, 500.0, 1500.0]),
            vec![250.0, 500.0, 1500.0]
        );
    }

    #[test]
    fn lag_halves_leave_out_the_ramp() {
        // 250 ms samples over 5 s; the first second ramps up, then flat at 100.
        let flat: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                let t = i as f64 * 0.25;
                (t, if t < 1.0 { t * 100.0 } else { 100.0 })
            })
            .collect();
        assert_eq!(lag_halves(&flat, 1.0), (100.0, 100.0));
        assert!(Criteria::for_tests().lag_bounded(100.0, 100.0));
        // Falling behind by 400 events/s: grows linearly.
        let growing: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                let t = i as f64 * 0.25;
                (t, t * 400.0)
            })
            .collect();
        let (early, late) = lag_halves(&growing, 1.0);
        assert!(late > early * 1.5 + 50.0, "{early} → {late}");
        assert!(!Criteria::for_tests().lag_bounded(early, late));
        // Noise at a low level passes thanks to the slack.
        assert!(Criteria::for_tests().lag_bounded(2.0, 40.0));
        assert_eq!(lag_halves(&[], 1.0), (0.0, 0.0));
        assert_eq!(
            lag_halves(&[(0.1, 7.0)], 1.0),
            (7.0, 7.0),
            "too few after the ramp: all"
        );
    }

    #[test]
    fn a_step_is_held_only_when_every_rule_holds() {
        let c = Criteria::for_tests();
        assert_eq!(c.verdict(&good_step()), (true, vec![]));

        let mut growing = good_step();
        growing.lag_bounded = false;
        let (held, why) = c.verdict(&growing);
        assert!(
            !held && why.len() == 1 && why[0].starts_with("(a)"),
            "{why:?}"
        );

        let mut not_drained = good_step();
        not_drained.drained_after_secs = None;
        not_drained.lag_left = 1234.0;
        let (held, why) = c.verdict(&not_drained);
        assert!(
            !held && why[0].contains("1234 events still behind 2 s"),
            "{why:?}"
        );

        let mut slow = good_step();
        slow.confirm_p99_ms = Some(151.0);
        assert!(!c.verdict(&slow).0);
        slow.confirm_p99_ms = Some(150.0);
        assert!(c.verdict(&slow).0, "the target itself is held");

        let mut none_confirmed = good_step();
        none_confirmed.confirm_p99_ms = None;
        assert!(!c.verdict(&none_confirmed).0);
        none_confirmed.followed_orders = 0;
        assert!(
            c.verdict(&none_confirmed).0,
            "nothing followed: (c) not judged"
        );

        let mut unserved = good_step();
        unserved.achieved_rps = 440.0;
        let (held, why) = c.verdict(&unserved);
        assert!(
            !held && why[0].starts_with("(d) the API answered 440 of 500"),
            "{why:?}"
        );

        let mut failing = good_step();
        failing.error_rate = 0.02;
        let (held, why) = c.verdict(&failing);
        assert!(
            !held && why[0] == "(d) 2% of the requests failed",
            "{why:?}"
        );

        let mut everything = good_step();
        everything.lag_bounded = false;
        everything.drained_after_secs = None;
        everything.confirm_p99_ms = Some(900.0);
        assert_eq!(
            c.verdict(&everything).1.len(),
            3,
            "every broken rule is named"
        );
    }

    #[test]
    fn the_sustained_tables_show_steps_and_the_highest_rate_held() {
        let mut failed = good_step();
        failed.offered_rps = 1000.0;
        failed.drained_after_secs = None;
        failed.lag_left = 5000.0;
        (failed.held, failed.not_held_because) = Criteria::for_tests().verdict(&failed);
        let mut held = good_step();
        held.held = true;
        let runs = vec![SustainedRun {
            name: "v2".into(),
            label: "cache on, events".into(),
            criteria: Criteria::for_tests(),
            lag_exported: true,
            steps: vec![held, failed],
            max_held_rps: Some(500.0),
            notes: vec![],
        }];
        let text = tables(&runs);
        assert!(text.contains("sustained, v2: cache on, events"), "{text}");
        assert!(text.contains("not in time"), "{text}");
        assert!(text.contains("not held at 1000 orders/s: (b)"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("│ highest order rate held ")
                    && l.ends_with(" 500 orders/s │")),
            "{text}"
        );
        assert!(text.contains("first rate not held"), "{text}");
        assert!(text.contains("≤ 150 ms"), "{text}");
    }
}
