//! `orderflow bench`: the comparison the notes promise, measured.
//!
//! The notes end with a table (the same order system without Redis and Kafka,
//! then with them) whose numbers were expected, never measured. This crate
//! measures them on the user's own machine: it starts the system under test
//! once per architecture (v1: cache off, inline side effects; v2: cache on,
//! events), seeds the same catalog and shoppers, runs the same seeded
//! workload, reads the server's own metrics, and prints the table.
//!
//! Map of the crate:
//! - [`sut`]: the system under test (a child `orderflow serve --demo`, or `--target URL`).
//! - [`shop`]: the HTTP client: setup, workload requests, follow-up reads, `/metrics`.
//! - [`load`]: workloads (browse with Zipf popularity, order, mixed) and pacing
//!   (closed loop; open loop measured from the intended send time).
//! - [`follow`]: followed orders, timed to reserved, confirmed, e-mail, SMS,
//!   push and points.
//! - [`sustained`]: `--sustained`, the highest order rate the pipeline keeps
//!   up with (lag bounded and drained, confirmations in time).
//! - [`ceiling`]: `--read-ceiling`, a product read, `/healthz` and a bare axum
//!   listener answering the same bytes, side by side.
//! - [`staleness`]: `--staleness`, reads checked against the database while
//!   orders and edits change the products (one process, then two on Redis).
//! - [`live`]: `orderflow bench live`, the live channels' commit → client
//!   latency and server memory per connection under 10,000 WebSocket clients.
//! - [`soak`]: `--soak DURATION`, a long mixed load with faults on a seeded
//!   schedule (providers down, a worker SIGKILLed, Redis restarted): memory
//!   and lag over time, and the exact accounting of every order.
//! - [`priority`]: the load generator's threads run at a lower priority than
//!   the servers they measure, which are started from a thread that was not
//!   lowered.
//! - [`stats`]: HdrHistogram latencies, throughput and ratio arithmetic (unit-tested).
//! - [`report`]: the per-architecture report, the tables, the JSON.
//! - [`plot`]: SVG and PNG plots.
//! - [`BenchError`]: the one error type of this crate.

pub mod ceiling;
pub mod follow;
pub mod live;
pub mod load;
pub mod plot;
pub mod priority;
pub mod report;
pub mod shop;
pub mod soak;
pub mod staleness;
pub mod stats;
pub mod sustained;
pub mod sut;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::follow::{Followers, Milestones};
use crate::load::{Pacing, PhaseResult, Plan, Targets, Workload};
use crate::report::{ArchitectureReport, BenchReport, Machine, SweepStep};
use crate::shop::{MetricsSnapshot, Shop};
use crate::stats::ratio;
use crate::sut::{Architecture, FailSpec, Server, V1, V2};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("system under test: {0}")]
    Server(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("writing results: {0}")]
    Output(String),
    /// The run finished but a verdict it checks was not held.
    #[error("not held: {0}")]
    NotHeld(String),
}

/// `orderflow bench` options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Another benchmark instead of the comparison (with no subcommand:
    /// v1 against v2, or the mode a flag below selects).
    #[command(subcommand)]
    pub mode: Option<BenchMode>,
    /// Benchmark a running orderflow at this URL instead of starting one per
    /// architecture (one column, named "target"; --architectures is ignored).
    #[arg(long)]
    pub target: Option<String>,
    /// Which architectures to start and run: v1 (cache off, inline), v2 (cache on, events).
    #[arg(long, value_delimiter = ',', default_value = "v1,v2")]
    pub architectures: Vec<String>,
    #[arg(long, value_enum, default_value = "mixed")]
    pub workload: Workload,
    /// Share of browse requests in the mixed workload.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub browse_percent: u8,
    /// Closed loop: this many simulated users, each waiting for its answer.
    #[arg(long, default_value_t = 32)]
    pub users: usize,
    /// Open loop: this many requests per second, whatever the server does (replaces --users).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds per architecture.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Unmeasured seconds before (fills caches and connection pools).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Shoppers registered for the order requests (events of one shopper
    /// are handled in order, so fewer shoppers means less parallelism).
    #[arg(long, default_value_t = 100)]
    pub shoppers: usize,
    /// Orders followed to reserved, confirmed, e-mail, SMS, push and points,
    /// per architecture: placed during the measured load by shoppers of
    /// their own, spread evenly over it.
    #[arg(long, default_value_t = 40)]
    pub follow_orders: usize,
    /// A failing provider for the failure phase (repeatable): PROVIDER=RATE.
    #[arg(long = "fail", default_values = ["sms=0.05"])]
    pub fail: Vec<FailSpec>,
    /// Seconds of order traffic with the failing provider; 0 skips the phase.
    #[arg(long, default_value_t = 5)]
    pub fail_secs: u64,
    /// After the load, wait at most this long for the consumers to catch up
    /// before following orders (a backlog left is reported).
    #[arg(long, default_value_t = 10)]
    pub drain_timeout_secs: u64,
    /// Step the open-loop load up until p99 passes the target or errors pass 1%.
    #[arg(long)]
    pub sweep: bool,
    #[arg(long, default_value_t = 100.0)]
    pub sweep_p99_target_ms: f64,
    #[arg(long, default_value_t = 4)]
    pub sweep_step_secs: u64,
    /// Sustained mode instead of the comparison: open-loop orders in steps of
    /// rising rate until the event pipeline no longer keeps up (see the
    /// `sustained` module docs for the rules); reports the highest rate held.
    #[arg(long)]
    pub sustained: bool,
    /// Read-ceiling mode instead of the comparison: a product read from L1,
    /// `/healthz` of the same server and a bare axum listener answering the
    /// same bytes, side by side (see the `ceiling` module docs); `--users`
    /// connections, `--duration-secs` each, two rounds.
    #[arg(long, conflicts_with = "sustained")]
    pub read_ceiling: bool,
    /// Staleness mode instead of the comparison: `--users` readers of the
    /// hot products, open-loop orders (`--rate`, default 100/s) and admin
    /// edits at once, every version a read showed checked against the
    /// database; on one `serve`, then on two API processes sharing Redis
    /// (see the `staleness` module docs). `--duration-secs` measured.
    #[arg(long, conflicts_with_all = ["sustained", "read_ceiling", "target"])]
    pub staleness: bool,
    /// Soak mode instead of the comparison: `--rate` requests per second
    /// (default 200, `--browse-percent` reads) for this long (`10m`, `1h`),
    /// with faults injected on a schedule seeded by `--seed` (see the `soak`
    /// module docs); memory, lag and p99 over time, and at the end the
    /// accounting of every order. Fails (exit 1) when a verdict is not held.
    #[arg(long, value_parser = humantime::parse_duration,
          conflicts_with_all = ["sustained", "read_ceiling", "staleness", "target"])]
    pub soak: Option<Duration>,
    /// Internal: run as the read ceiling's bare listener on this address.
    #[arg(long, hide = true, requires = "bare_body")]
    pub bare_listener: Option<String>,
    /// Internal: the bytes the bare listener answers.
    #[arg(long, hide = true)]
    pub bare_body: Option<PathBuf>,
    /// First rate of the sustained ladder, orders per second.
    #[arg(long, default_value_t = 250.0)]
    pub sustained_start: f64,
    /// Each step offers this many times the last (rounded to two significant digits).
    #[arg(long, default_value_t = 1.5)]
    pub sustained_factor: f64,
    /// Highest rate offered, orders per second.
    #[arg(long, default_value_t = 20_000.0)]
    pub sustained_max: f64,
    /// The rates to offer instead of start/factor/max: e.g. 250,500,1000,1500,2000,3000.
    #[arg(long, value_delimiter = ',')]
    pub sustained_rates: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 5.0)]
    pub sustained_step_secs: f64,
    /// (b) After a step, the lag must reach 0 within this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub sustained_drain_secs: f64,
    /// (c) accepted → confirmed p99 target of a step's followed orders
    /// [default: the simulated payment latency (ORDERFLOW_SIM_PAYMENT_LATENCY_MS, else 50 ms) + 100 ms].
    #[arg(long)]
    pub sustained_confirm_p99_ms: Option<f64>,
    /// (a) The late half of a step's lag may exceed the early half by this share...
    #[arg(long, default_value_t = 0.5)]
    pub sustained_lag_growth: f64,
    /// (a) ...plus this many events.
    #[arg(long, default_value_t = 50.0)]
    pub sustained_lag_slack: f64,
    /// (d) Most request errors a step may have, as a share.
    #[arg(long, default_value_t = 0.01)]
    pub sustained_max_error_rate: f64,
    /// Orders followed per step (for (c)).
    #[arg(long, default_value_t = 20)]
    pub sustained_follow: usize,
    /// Where report.json and the plots go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Seed of the workload's random choices (same seed, same requests).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The load generator's threads run this many nice steps below the
    /// servers the bench starts, so that on a shared machine the servers get
    /// the CPU first, as with load from other machines (see the `priority`
    /// module); 0: the generator competes for the cores as an equal. Not
    /// applied in --read-ceiling and `bench live`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub generator_nice: i32,
}

impl BenchArgs {
    /// How many nice steps the generator's threads actually run below the
    /// servers: `--generator-nice`, except where the result is bounded by
    /// how fast the clients themselves go, so lowering them would change
    /// what is measured, not just whose turn it is:
    /// - `--read-ceiling`: the bare listener answers as fast as the
    ///   generator sends; lowered, its best round fell from 79,657 to
    ///   56,797 req/s, which flattered the product read's share (42% →
    ///   50%) without the product read getting faster;
    /// - `bench live`: its latency is the clients' own receipt of a message;
    /// - the bare listener's own process is a server, never lowered.
    pub fn effective_generator_nice(&self) -> i32 {
        if self.read_ceiling || self.mode.is_some() || self.bare_listener.is_some() {
            0
        } else {
            self.generator_nice
        }
    }
}

/// Benchmarks of their own, with their own options.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchMode {
    /// Live channels: 10,000 WebSocket clients each on its own `orders:{user}`
    /// and a shared `product:{id}` while orders are placed; commit → client
    /// latency, messages per second, server memory per connection.
    Live(live::LiveArgs),
}

/// Runs the benchmark; `server_binary` is the `orderflow` executable to start.
pub async fn run(args: &BenchArgs, server_binary: PathBuf) -> Result<BenchReport, BenchError> {
    let architectures = match &args.target {
        _ if args.read_ceiling || args.staleness || args.soak.is_some() || args.mode.is_some() => {
            Vec::new()
        }
        Some(url) => vec![Architecture::target(url)],
        None => selected_architectures(&args.architectures)?,
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut notes = Vec::new();
    notes.extend(priority_note().await);
    let mut reports = Vec::new();
    let mut sustained_runs = Vec::new();
    for architecture in &architectures {
        println!("\n▶ {}", architecture.title());
        if args.sustained {
            let run = sustained::run(args, &server_binary, architecture, &run_id).await?;
            notes.extend(run.notes.iter().cloned());
            sustained_runs.push(run);
            continue;
        }
        let mut report = measure(args, &server_binary, architecture, &run_id).await?;
        if args.fail_secs > 0 {
            if args.target.is_some() {
                notes.push("failure phase skipped: a --target server's providers cannot be made to fail from here".into());
            } else {
                failure_phase(args, &server_binary, architecture, &run_id, &mut report).await?;
            }
        }
        if args.sweep {
            sweep(args, &server_binary, architecture, &run_id, &mut report).await?;
        }
        if report.generator_saturated {
            notes.push(format!(
                "{}: the load generator used {:.2} of {} cores; it may have been the bottleneck",
                architecture.name,
                report.generator_cpu_cores,
                Machine::this().cpus
            ));
        }
        reports.push(report);
    }
    let ceiling = match args.read_ceiling {
        true => Some(ceiling::run(args, &server_binary).await?),
        false => None,
    };
    let staleness = match args.staleness {
        true => Some(staleness::run(args, &server_binary).await?),
        false => None,
    };
    let live = match &args.mode {
        Some(BenchMode::Live(live)) => Some(live::run(args, live, &server_binary).await?),
        None => None,
    };
    let soak = match args.soak {
        Some(duration) => Some(soak::run(args, duration, &server_binary).await?),
        None => None,
    };
    let report = BenchReport {
        started_at: chrono::Utc::now(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: Machine::this(),
        settings: serde_json::json!({
            "workload": args.workload, "browse_percent": args.browse_percent, "users": args.users,
            "rate": args.rate, "duration_secs": args.duration_secs, "warmup_secs": args.warmup_secs,
            "shoppers": args.shoppers, "follow_orders": args.follow_orders,
            "fail": args.fail.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "fail_secs": args.fail_secs, "sweep": args.sweep, "sweep_p99_target_ms": args.sweep_p99_target_ms,
            "sustained": args.sustained, "sustained_step_secs": args.sustained_step_secs,
            "sustained_follow": args.sustained_follow,
            "sustained_rates": sustained::ladder(args.sustained_start, args.sustained_factor, args.sustained_max, &args.sustained_rates),
            "seed": args.seed, "target": args.target, "read_ceiling": args.read_ceiling, "staleness": args.staleness,
            "soak_secs": args.soak.map(|d| d.as_secs_f64()),
            "generator_nice": args.effective_generator_nice(),
        }),
        architectures: reports,
        sustained: sustained_runs,
        ceiling,
        staleness,
        live,
        soak,
        notes,
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| BenchError::Output(format!("{}: {e}", args.out.display())))?;
    let json_path = args.out.join("report.json");
    std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&report).expect("reports serialize"),
    )
    .map_err(|e| BenchError::Output(format!("{}: {e}", json_path.display())))?;
    let plots = plot::write_all(&report, &args.out)?;
    println!("\n{}", report.table());
    for note in &report.notes {
        println!("note: {note}");
    }
    println!("\nreport: {}", json_path.display());
    for plot in plots {
        println!("plot:   {}", plot.display());
    }
    if let Some(soak) = &report.soak
        && !soak.passed()
    {
        return Err(BenchError::NotHeld(
            "the soak's memory, lag or accounting verdict (see the table above)".into(),
        ));
    }
    Ok(report)
}

fn selected_architectures(names: &[String]) -> Result<Vec<Architecture>, BenchError> {
    names
        .iter()
        .map(|name| match name.trim() {
            "v1" => Ok(V1),
            "v2" => Ok(V2),
            other => Err(BenchError::Setup(format!(
                "unknown architecture {other:?}: use v1 and/or v2"
            ))),
        })
        .collect()
}

/// What the report says about the priorities: the generator's threads (a
/// runtime worker's nice value) against the servers' (the launcher's, which
/// is this thread's: `main` is never lowered).
async fn priority_note() -> Option<String> {
    let servers = priority::this_thread_nice()?;
    let generator = tokio::spawn(async { priority::this_thread_nice() })
        .await
        .ok()
        .flatten()?;
    Some(if generator > servers {
        format!(
            "the load generator ran at nice {generator}, the servers it started at {servers}: \
             they get the cores first, as with load from other machines (--generator-nice 0: equal)"
        )
    } else {
        format!("the load generator and the servers it started shared the cores at nice {servers}")
    })
}

/// The server for one phase, the client and the targets, set up.
pub(crate) struct Session {
    server: Server,
    shop: Shop,
    targets: Arc<Targets>,
}

impl Session {
    /// Runs one load phase behind a progress bar (with a length when the
    /// open loop knows how many requests are due).
    async fn run(&self, label: &str, plan: &Plan) -> PhaseResult {
        let expected = match plan.pacing {
            Pacing::Open { rate_per_sec } => {
                Some((rate_per_sec * plan.duration.as_secs_f64()) as u64)
            }
            Pacing::Closed { .. } => None,
        };
        let bar = load_bar(label, expected);
        let phase = load::run(&self.shop, self.targets.clone(), plan, &bar).await;
        bar.finish_and_clear();
        phase
    }
}

pub(crate) async fn start_session(
    args: &BenchArgs,
    binary: &std::path::Path,
    architecture: &Architecture,
    failures: &[FailSpec],
    shoppers: usize,
    run_id: &str,
) -> Result<Session, BenchError> {
    let spinner = spinner("starting the server and seeding");
    let server = match &args.target {
        Some(url) => Server::external(url),
        None => Server::start(binary, architecture, failures).await?,
    };
    let shop = Shop::new(&server.base_url, args.users.max(64));
    spinner.set_message(format!("registering {shoppers} shoppers"));
    let products = shop.product_ids().await?;
    let tokens = shop.shoppers(shoppers.max(1), run_id).await?;
    spinner.finish_and_clear();
    Ok(Session {
        server,
        shop,
        targets: Arc::new(Targets::new(products, tokens)),
    })
}

pub(crate) fn plan(
    args: &BenchArgs,
    workload: Workload,
    pacing: Pacing,
    duration: Duration,
) -> Plan {
    Plan {
        workload,
        browse_percent: args.browse_percent,
        pacing,
        duration,
        seed: args.seed,
    }
}

fn pacing(args: &BenchArgs) -> Pacing {
    match args.rate {
        Some(rate) => Pacing::Open { rate_per_sec: rate },
        None => Pacing::Closed { users: args.users },
    }
}

/// The main phase: warm-up, measured load (with the followed orders placed
/// alongside), metrics, backlog, follow-up.
async fn measure(
    args: &BenchArgs,
    binary: &std::path::Path,
    architecture: &Architecture,
    run_id: &str,
) -> Result<ArchitectureReport, BenchError> {
    let session = start_session(args, binary, architecture, &[], args.shoppers, run_id).await?;
    let followers = Followers::register(
        &session.shop,
        session.targets.products.clone(),
        args.follow_orders,
        run_id,
    )
    .await?;
    let pacing = pacing(args);
    if args.warmup_secs > 0 {
        let warmup = plan(
            args,
            args.workload,
            pacing,
            Duration::from_secs(args.warmup_secs),
        );
        session.run("warming up", &warmup).await;
    }
    let before = session.shop.metrics().await?;
    let duration = Duration::from_secs(args.duration_secs);
    let measured = plan(args, args.workload, pacing, duration);
    // Points are watched live; give them as long as the backlog gets, and a bit.
    let points_deadline = tokio::time::Instant::now()
        + duration
        + Duration::from_secs(args.drain_timeout_secs)
        + Duration::from_secs(5);
    let following = followers.spawn(args.follow_orders, duration, points_deadline, args.seed);
    let phase = session
        .run(&format!("{} load", architecture.name), &measured)
        .await;
    let after = session.shop.metrics().await?;
    let (drained, left) = wait_for_backlog(
        &session.shop,
        session.server.admin.as_ref(),
        Duration::from_secs(args.drain_timeout_secs),
    )
    .await?;
    let bar = spinner("following the orders to confirmed, e-mail, SMS, push and points");
    let followed = following.await.expect("followers do not panic");
    let milestones = followers
        .milestones(
            &followed,
            tokio::time::Instant::now() + Duration::from_secs(5),
        )
        .await;
    bar.finish_and_clear();
    session.server.stop().await?;
    let mut report = architecture_report(architecture, &phase, &after.since(&before), &milestones);
    report.backlog_drain_secs = drained;
    report.backlog_left_after_wait = left;
    println!(
        "  {} requests in {:.1} s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {:.2}%; load generator used {:.2} CPU cores",
        phase.requests,
        phase.elapsed.as_secs_f64(),
        report.throughput_rps,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.error_rate * 100.0,
        report.generator_cpu_cores
    );
    if milestones.followed > 0 {
        println!(
            "  {} orders followed: {} confirmed, {} not, {} unfinished at the wait",
            milestones.followed,
            milestones.confirmed_orders,
            milestones.not_confirmed,
            milestones.unfinished
        );
    }
    Ok(report)
}

fn architecture_report(
    architecture: &Architecture,
    phase: &PhaseResult,
    metrics: &MetricsSnapshot,
    milestones: &Milestones,
) -> ArchitectureReport {
    let cores =
        phase.generator_cpu.as_secs_f64() / phase.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let browse_requests = phase.browse.count() as f64;
    let (reserved_p50_ms, reserved_p99_ms) = Milestones::p50_p99(&milestones.reserved);
    let (confirm_p50_ms, confirm_p99_ms) = Milestones::p50_p99(&milestones.confirmed);
    let (email_p50_ms, email_p99_ms) = Milestones::p50_p99(&milestones.email);
    let (sms_p50_ms, sms_p99_ms) = Milestones::p50_p99(&milestones.sms);
    let (push_p50_ms, push_p99_ms) = Milestones::p50_p99(&milestones.push);
    let (points_p50_ms, points_p99_ms) = Milestones::p50_p99(&milestones.points);
    ArchitectureReport {
        name: architecture.name.to_string(),
        label: architecture.label.to_string(),
        latency: phase.all.summary(),
        percentiles: phase.all.percentile_curve(),
        browse_latency: phase.browse.summary(),
        order_latency: phase.order.summary(),
        requests: phase.requests,
        throughput_rps: stats::throughput(phase.requests, phase.elapsed),
        error_rate: phase.error_rate(),
        db_queries_per_request: ratio(metrics.db_queries, phase.requests as f64),
        catalog_reads_from_db: ratio(metrics.catalog_db_reads, browse_requests).min(1.0),
        cache_hit_ratio: ratio(
            metrics.cache_hits,
            metrics.cache_hits + metrics.cache_misses,
        ),
        reserved_p50_ms,
        reserved_p99_ms,
        confirm_p50_ms,
        confirm_p99_ms,
        email_p50_ms,
        email_p99_ms,
        sms_p50_ms,
        sms_p99_ms,
        push_p50_ms,
        push_p99_ms,
        points_p50_ms,
        points_p99_ms,
        followed_orders: milestones.followed,
        followed_not_confirmed: milestones.not_confirmed,
        followed_unfinished: milestones.unfinished,
        generator_cpu_cores: cores,
        generator_saturated: cores >= 0.9 * Machine::this().cpus as f64,
        ..Default::default()
    }
}

/// Waits (up to `timeout`) until the pipeline has caught up, so the
/// follow-up sees final states; returns how long that took, or the events
/// still waiting at the time-out. The lag is read from `/metrics` (every
/// consumer group plus the outbox, see [`MetricsSnapshot::pipeline_lag`]),
/// so a `--target` is waited for too; where no lag is exported, from the
/// admin API of a server the bench started (`admin_credentials`);
/// otherwise not at all.
pub(crate) async fn wait_for_backlog(
    shop: &Shop,
    admin_credentials: Option<&(String, String)>,
    timeout: Duration,
) -> Result<(Option<f64>, Option<i64>), BenchError> {
    // Logged in only when needed (v1 exports no lag): a login writes to the
    // database, which a server catching up on its backlog answers slowly.
    let mut admin: Option<String> = None;
    let mut lag = async || -> Result<Option<i64>, BenchError> {
        if let Some(lag) = shop.metrics().await?.pipeline_lag() {
            return Ok(Some(lag.round() as i64));
        }
        let Some((email, password)) = admin_credentials else {
            return Ok(None);
        };
        if admin.is_none() {
            admin = Some(shop.login(email, password).await?);
        }
        let token = admin.as_deref().expect("logged in above");
        Ok(Some(shop.total_lag(token).await?))
    };
    let started = std::time::Instant::now();
    let bar = spinner("waiting for the consumers to catch up");
    loop {
        let Some(lag) = lag().await? else {
            bar.finish_and_clear();
            return Ok((None, None));
        };
        bar.set_message(format!(
            "waiting for the consumers to catch up: {lag} events behind"
        ));
        if lag == 0 {
            bar.finish_and_clear();
            return Ok((Some(started.elapsed().as_secs_f64()), Some(0)));
        }
        if started.elapsed() > timeout {
            bar.finish_and_clear();
            println!(
                "  the consumers were still {lag} events behind {timeout:?} after the load stopped"
            );
            return Ok((None, Some(lag)));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Order traffic with a failing provider: v1 fails the order, v2 accepts it
/// and retries the provider in the background.
async fn failure_phase(
    args: &BenchArgs,
    binary: &std::path::Path,
    architecture: &Architecture,
    run_id: &str,
    report: &mut ArchitectureReport,
) -> Result<(), BenchError> {
    let specs: Vec<String> = args.fail.iter().map(|f| f.to_string()).collect();
    let session = start_session(
        args,
        binary,
        architecture,
        &args.fail,
        args.shoppers,
        &format!("{run_id}f"),
    )
    .await?;
    let users = args.users.clamp(1, 16);
    let orders = plan(
        args,
        Workload::Order,
        Pacing::Closed { users },
        Duration::from_secs(args.fail_secs),
    );
    let label = format!("{} orders with {}", architecture.name, specs.join(", "));
    let phase = session.run(&label, &orders).await;
    session.server.stop().await?;
    println!(
        "  failing {}: {} orders, {:.2}% failed",
        specs.join(", "),
        phase.order_requests,
        phase.order_failure_rate() * 100.0
    );
    report.failure_spec = specs;
    report.failing_phase_orders = phase.order_requests;
    report.order_failure_rate_with_failing_provider = Some(phase.order_failure_rate());
    Ok(())
}

/// Open-loop steps, doubling the rate, until p99 passes the target or errors pass 1%.
async fn sweep(
    args: &BenchArgs,
    binary: &std::path::Path,
    architecture: &Architecture,
    run_id: &str,
    report: &mut ArchitectureReport,
) -> Result<(), BenchError> {
    let session = start_session(
        args,
        binary,
        architecture,
        &[],
        args.shoppers,
        &format!("{run_id}s"),
    )
    .await?;
    let mut rate = 25.0;
    let step = Duration::from_secs(args.sweep_step_secs.max(1));
    while rate <= 25_600.0 {
        let offered = plan(
            args,
            args.workload,
            Pacing::Open { rate_per_sec: rate },
            step,
        );
        let label = format!("{} sweep at {rate:.0} req/s", architecture.name);
        let phase = session.run(&label, &offered).await;
        let p99 = phase.all.quantile_ms(0.99);
        let held = p99 <= args.sweep_p99_target_ms && phase.error_rate() <= 0.01;
        println!(
            "  sweep {rate:>6.0} req/s offered: {:>7.0} achieved, p99 {p99:>8.2} ms, errors {:.2}% {}",
            stats::throughput(phase.requests, phase.elapsed),
            phase.error_rate() * 100.0,
            if held { "held" } else { "NOT held" }
        );
        report.sweep.push(SweepStep {
            offered_rps: rate,
            achieved_rps: stats::throughput(phase.requests, phase.elapsed),
            p99_ms: p99,
            error_rate: phase.error_rate(),
            held,
        });
        if !held {
            break;
        }
        report.max_held_rps = Some(rate);
        rate *= 2.0;
    }
    session.server.stop().await?;
    Ok(())
}

pub(crate) fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

pub(crate) fn load_bar(message: &str, length: Option<u64>) -> ProgressBar {
    let bar = match length {
        Some(n) => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template(
                    "  {msg} [{bar:30}] {pos}/{len} ({per_sec}, {elapsed})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "  {spinner} {msg}: {pos} requests ({per_sec}, {elapsed})",
                )
                .expect("valid template"),
            );
            bar
        }
    };
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
