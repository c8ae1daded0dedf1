//! The load generator: workloads (what each request is) and pacing (when it
//! is sent).
//!
//! - Closed loop: N simulated users, each sends its next request when the
//!   previous one answered. Throughput is what the server gives back.
//! - Open loop: requests are due at a fixed rate whether or not earlier ones
//!   answered, and each latency is measured from the *intended* send time, so
//!   a stalled server cannot hide its queue (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use tokio::sync::Mutex;

use crate::shop::{Outcome, Shop};
use crate::stats::Latencies;

/// What the simulated users do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Product reads, Zipf-distributed over the catalog (a few products are hot).
    Browse,
    /// Logged-in shoppers placing one-line orders.
    Order,
    /// Browse and order mixed (`--browse-percent`, default 90).
    Mixed,
}

/// When requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    Closed { users: usize },
    Open { rate_per_sec: f64 },
}

/// Everything one load phase needs.
#[derive(Clone)]
pub struct Plan {
    pub workload: Workload,
    pub browse_percent: u8,
    pub pacing: Pacing,
    pub duration: Duration,
    pub seed: u64,
}

/// The catalog and shoppers the requests are drawn from.
pub struct Targets {
    pub products: Vec<uuid::Uuid>,
    pub tokens: Vec<String>,
    zipf: Zipf<f64>,
}

impl Targets {
    pub fn new(products: Vec<uuid::Uuid>, tokens: Vec<String>) -> Self {
        // s = 1.0: the classic web-cache popularity curve.
        let zipf = Zipf::new(products.len().max(1) as f64, 1.0).expect("n >= 1 and s > 0");
        Self {
            products,
            tokens,
            zipf,
        }
    }

    fn popular_product(&self, rng: &mut StdRng) -> uuid::Uuid {
        let rank = self.zipf.sample(rng) as usize; // 1..=n
        self.products[(rank.max(1) - 1).min(self.products.len() - 1)]
    }

    /// Orders spread uniformly, so no product runs out during a run.
    fn any_product(&self, rng: &mut StdRng) -> uuid::Uuid {
        self.products[rng.random_range(0..self.products.len())]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Browse,
    Order,
}

/// What a load phase measured.
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    pub all: Latencies,
    pub browse: Latencies,
    pub order: Latencies,
    pub requests: u64,
    pub errors: u64,
    /// Business refusals (out of stock), not errors.
    pub refused: u64,
    pub order_requests: u64,
    pub order_errors: u64,
    pub elapsed: Duration,
    /// Accepted orders: (shopper index, order id), for the follow-up.
    pub accepted_orders: Vec<(usize, uuid::Uuid)>,
    /// CPU the generator process used during the phase.
    pub generator_cpu: Duration,
    /// Open loop only: requests that were due but could not even be sent
    /// because the generator's in-flight limit was reached.
    pub generator_backlog_peak: usize,
}

impl PhaseResult {
    fn add(
        &mut self,
        kind: Kind,
        latency: Duration,
        outcome: Outcome,
        order: Option<(usize, uuid::Uuid)>,
    ) {
        self.all.record(latency);
        self.requests += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::Refused => self.refused += 1,
            Outcome::Error => self.errors += 1,
        }
        match kind {
            Kind::Browse => self.browse.record(latency),
            Kind::Order => {
                self.order.record(latency);
                self.order_requests += 1;
                if outcome == Outcome::Error {
                    self.order_errors += 1;
                }
            }
        }
        if let Some(order) = order {
            self.accepted_orders.push(order);
        }
    }

    pub fn merge(&mut self, other: PhaseResult) {
        self.all.merge(&other.all);
        self.browse.merge(&other.browse);
        self.order.merge(&other.order);
        self.requests += other.requests;
        self.errors += other.errors;
        self.refused += other.refused;
        self.order_requests += other.order_requests;
        self.order_errors += other.order_errors;
        self.accepted_orders.extend(other.accepted_orders);
    }

    pub fn error_rate(&self) -> f64 {
        crate::stats::ratio(self.errors as f64, self.requests as f64)
    }

    pub fn order_failure_rate(&self) -> f64 {
        crate::stats::ratio(self.order_errors as f64, self.order_requests as f64)
    }
}

/// One request of the workload, chosen with `rng`.
async fn one_request(
    shop: &Shop,
    targets: &Targets,
    plan: &Plan,
    rng: &mut StdRng,
) -> (Kind, Outcome, Option<(usize, uuid::Uuid)>) {
    let kind = match plan.workload {
        Workload::Browse => Kind::Browse,
        Workload::Order => Kind::Order,
        Workload::Mixed => {
            if rng.random_range(0..100u8) < plan.browse_percent {
                Kind::Browse
            } else {
                Kind::Order
            }
        }
    };
    match kind {
        Kind::Browse => (kind, shop.browse(targets.popular_product(rng)).await, None),
        Kind::Order => {
            let shopper = rng.random_range(0..targets.tokens.len());
            let product = targets.any_product(rng);
            let (outcome, id) = shop.order(&targets.tokens[shopper], product, 1).await;
            (kind, outcome, id.map(|id| (shopper, id)))
        }
    }
}

/// Runs one phase and returns what it measured.
pub async fn run(
    shop: &Shop,
    targets: Arc<Targets>,
    plan: &Plan,
    progress: &ProgressBar,
) -> PhaseResult {
    let cpu_before = cpu_time::ProcessTime::try_now().ok();
    let started = Instant::now();
    let mut result = match plan.pacing {
        Pacing::Closed { users } => closed_loop(shop, targets, plan, users, progress).await,
        Pacing::Open { rate_per_sec } => {
            open_loop(shop, targets, plan, rate_per_sec, progress).await
        }
    };
    result.elapsed = started.elapsed();
    result.generator_cpu = cpu_before
        .and_then(|t| t.try_elapsed().ok())
        .unwrap_or_default();
    result
}

async fn closed_loop(
    shop: &Shop,
    targets: Arc<Targets>,
    plan: &Plan,
    users: usize,
    progress: &ProgressBar,
) -> PhaseResult {
    let deadline = Instant::now() + plan.duration;
    let workers = (0..users.max(1)).map(|user| {
        let (shop, targets, plan, progress) = (
            shop.clone(),
            targets.clone(),
            plan.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(user as u64));
            let mut result = PhaseResult::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let (kind, outcome, order) = one_request(&shop, &targets, &plan, &mut rng).await;
                result.add(kind, sent.elapsed(), outcome, order);
                progress.inc(1);
            }
            result
        })
    });
    let mut total = PhaseResult::default();
    for worker in futures::future::join_all(workers).await {
        total.merge(worker.expect("load worker panicked"));
    }
    total
}

/// At most this many requests in flight in the open loop; beyond it, due
/// requests wait (and their wait counts in their latency).
const OPEN_LOOP_MAX_IN_FLIGHT: usize = 2_048;

async fn open_loop(
    shop: &Shop,
    targets: Arc<Targets>,
    plan: &Plan,
    rate: f64,
    progress: &ProgressBar,
) -> PhaseResult {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tokio::time::Instant::now();
    let total_requests = (plan.duration.as_secs_f64() * rate).floor() as u64;
    let shared = Arc::new(Mutex::new(PhaseResult::default()));
    let permits = Arc::new(tokio::sync::Semaphore::new(OPEN_LOOP_MAX_IN_FLIGHT));
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let mut backlog_peak = 0usize;
    for i in 0..total_requests {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        backlog_peak = backlog_peak.max(OPEN_LOOP_MAX_IN_FLIGHT - permits.available_permits());
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (shop, targets, plan, shared, progress) = (
            shop.clone(),
            targets.clone(),
            plan.clone(),
            shared.clone(),
            progress.clone(),
        );
        let mut request_rng = StdRng::seed_from_u64(rng.random());
        tasks.spawn(async move {
            let (kind, outcome, order) =
                one_request(&shop, &targets, &plan, &mut request_rng).await;
            // From the intended send time, not the actual one.
            let latency = intended.elapsed();
            shared.lock().await.add(kind, latency, outcome, order);
            progress.inc(1);
            drop(permit);
        });
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut result = std::mem::take(&mut *shared.lock().await);
    result.generator_backlog_peak = backlog_peak;
    result
}
