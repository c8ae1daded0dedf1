//! Simulated providers: e-mail, SMS, push and payment without an outside service.
//!
//! These are a feature, not a test stub. The demo runs on them (nobody has an
//! SMTP relay and a card gateway on their laptop) and the benchmark uses them
//! to reproduce the comparison the notes make: a synchronous order handler
//! that waits 200 ms for e-mail, 300 ms for SMS and 100 ms for push, versus one
//! that hands those calls to consumers. The defaults are those numbers.
//!
//! Each provider has a latency (a `tokio::time::sleep`, so thousands of
//! simulated calls in flight cost nothing) and a failure rate: that fraction
//! of calls fails with a *transient* "simulated outage", which consumers retry
//! and finally dead-letter. Both live in a shared [`SimulationControls`] that
//! can be changed while the system runs, so an end-to-end test (or an
//! operator during a demo) can make e-mail fail every call, watch the retries
//! and the dead-letter queue fill, then set the rate back to zero and replay.
//!
//! [`SimulatedPayment`] behaves like a real gateway where it matters to the
//! order flow: it answers the same result for a repeated idempotency key, it
//! records refunds, and with `decline_above_cents` it declines large charges,
//! which is how tests and the multi-process run produce `payment_failed`
//! orders deterministically.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use orderflow_core::ports::providers::{
    ChargeOutcome, ChargeRequest, Notifier, OutgoingMessage, PaymentGateway, ProviderControls,
    ProviderError, SimulatedProvider,
};
use orderflow_domain::notification::Channel;
use rand::Rng;

use super::{PAYMENT, channel_provider, instrumented};

/// The message of an injected failure.
pub const SIMULATED_OUTAGE: &str = "simulated outage";
/// The reason of a charge above `decline_above_cents`.
pub const SIMULATED_DECLINE: &str = "insufficient funds (simulated card limit)";

/// How many idempotency keys [`SimulatedPayment`] remembers. Real gateways keep
/// keys for about a day; a bound keeps a long benchmark from growing memory
/// without limit. A redelivery comes long before 100 000 newer charges.
const REMEMBERED_CHARGES: usize = 100_000;
/// How many delivered messages a [`SimulatedNotifier`] keeps for inspection.
const REMEMBERED_MESSAGES: usize = 1_000;

/// Starting latency and failure rate of one simulated provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulationSettings {
    /// How long each call takes.
    pub latency: Duration,
    /// Fraction of calls, in `[0, 1]`, that fail with a transient error.
    pub failure_rate: f64,
}

impl SimulationSettings {
    pub fn new(latency: Duration, failure_rate: f64) -> Self {
        Self {
            latency,
            failure_rate,
        }
    }

    /// E-mail: 200 ms, never fails (the notes' figure).
    pub fn email() -> Self {
        Self::new(Duration::from_millis(200), 0.0)
    }

    /// SMS: 300 ms, never fails (the notes' figure).
    pub fn sms() -> Self {
        Self::new(Duration::from_millis(300), 0.0)
    }

    /// Push: 100 ms, never fails (the notes' figure).
    pub fn push() -> Self {
        Self::new(Duration::from_millis(100), 0.0)
    }

    /// Payment: 50 ms, never fails.
    pub fn payment() -> Self {
        Self::new(Duration::from_millis(50), 0.0)
    }

    /// The default for a notification channel.
    pub fn for_channel(channel: Channel) -> Self {
        match channel {
            Channel::Email => Self::email(),
            Channel::Sms => Self::sms(),
            Channel::Push => Self::push(),
        }
    }

    /// No latency and no failures: for tests that care about the flow, not the wait.
    pub fn instant() -> Self {
        Self::new(Duration::ZERO, 0.0)
    }
}

/// The knobs and counters of one simulated provider, shared (behind an `Arc`)
/// between the provider and whoever steers it. Lock-free, so reading the
/// counters from a test or a metrics scrape never slows the calls down.
#[derive(Debug)]
pub struct SimulationControls {
    latency_nanos: AtomicU64,
    /// An `f64` stored as its bits.
    failure_rate_bits: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    successes: AtomicU64,
    declines: AtomicU64,
}

impl SimulationControls {
    pub fn new(settings: SimulationSettings) -> Arc<Self> {
        let controls = Self {
            latency_nanos: AtomicU64::new(0),
            failure_rate_bits: AtomicU64::new(0f64.to_bits()),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            declines: AtomicU64::new(0),
        };
        controls.set_latency(settings.latency);
        controls.set_failure_rate(settings.failure_rate);
        Arc::new(controls)
    }

    /// Sets the fraction of calls that fail; clamped to `[0, 1]` (NaN means 0).
    pub fn set_failure_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.failure_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    pub fn failure_rate(&self) -> f64 {
        f64::from_bits(self.failure_rate_bits.load(Ordering::Relaxed))
    }

    /// Sets the latency of the following calls (calls already waiting keep theirs).
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    pub fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    /// Every call made, whatever its outcome (`failures() + successes()`, once
    /// the calls in flight have finished).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls that returned an error: the simulated outage, or a permanent
    /// refusal (an e-mail address without a domain, an unknown payment id).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Calls the provider answered: messages delivered, charges approved or
    /// declined, refunds done.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Charges declined (a subset of [`successes`](Self::successes); payment only).
    pub fn declines(&self) -> u64 {
        self.declines.load(Ordering::Relaxed)
    }

    /// Plays the start of one call: counts it, waits the latency, and decides
    /// whether the outage strikes. The dice are rolled after the wait, so a
    /// rate changed while calls are in flight applies to them.
    async fn begin_call(&self, provider: &'static str) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let rate = self.failure_rate();
        // `random::<f64>()` is in [0, 1): a rate of 1 always fails, 0 never does.
        if rate > 0.0 && rand::rng().random::<f64>() < rate {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(ProviderError::transient(provider, SIMULATED_OUTAGE));
        }
        Ok(())
    }

    fn succeeded(&self) {
        self.successes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a call that was refused for a permanent reason (a bad address):
    /// the provider answered, so it is neither an outage nor a delivery.
    fn rejected(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// A simulated e-mail, SMS or push provider.
#[derive(Debug)]
pub struct SimulatedNotifier {
    channel: Channel,
    controls: Arc<SimulationControls>,
    delivered: Mutex<VecDeque<OutgoingMessage>>,
}

impl SimulatedNotifier {
    pub fn new(channel: Channel, settings: SimulationSettings) -> Self {
        Self::with_controls(channel, SimulationControls::new(settings))
    }

    /// With the channel's default settings (see [`SimulationSettings::for_channel`]).
    pub fn with_defaults(channel: Channel) -> Self {
        Self::new(channel, SimulationSettings::for_channel(channel))
    }

    /// With controls the caller already holds (to steer several providers at once).
    pub fn with_controls(channel: Channel, controls: Arc<SimulationControls>) -> Self {
        Self {
            channel,
            controls,
            delivered: Mutex::new(VecDeque::new()),
        }
    }

    pub fn controls(&self) -> Arc<SimulationControls> {
        Arc::clone(&self.controls)
    }

    /// The last messages delivered (up to 1 000), oldest first: what the
    /// shopper would have received.
    pub fn delivered(&self) -> Vec<OutgoingMessage> {
        lock(&self.delivered).iter().cloned().collect()
    }

    async fn deliver(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        let provider = channel_provider(self.channel);
        self.controls.begin_call(provider).await?;
        // A real mail server refuses an address without a domain for good;
        // retrying would not help, so this is the permanent failure path.
        if self.channel == Channel::Email && !looks_like_address(&message.email) {
            self.controls.rejected();
            return Err(ProviderError::permanent(
                provider,
                format!("invalid recipient address {:?}", message.email),
            ));
        }
        self.controls.succeeded();
        let mut delivered = lock(&self.delivered);
        if delivered.len() == REMEMBERED_MESSAGES {
            delivered.pop_front();
        }
        delivered.push_back(message.clone());
        Ok(())
    }
}

#[async_trait]
impl Notifier for SimulatedNotifier {
    fn channel(&self) -> Channel {
        self.channel
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        instrumented(channel_provider(self.channel), self.deliver(message)).await
    }
}

/// A simulated card gateway.
#[derive(Debug)]
pub struct SimulatedPayment {
    controls: Arc<SimulationControls>,
    decline_above_cents: Option<i64>,
    ledger: Mutex<Ledger>,
}

/// What the simulated gateway remembers.
#[derive(Debug, Default)]
struct Ledger {
    /// The answer given to each idempotency key, so a retried charge is not
    /// charged twice.
    charges: HashMap<String, ChargeOutcome>,
    /// Keys in arrival order, to forget the oldest first.
    order: VecDeque<String>,
    /// Approved payments, by payment id: the amount charged.
    payments: HashMap<String, i64>,
    /// Refunded payment ids.
    refunded: HashSet<String>,
}

impl SimulatedPayment {
    /// `decline_above_cents`: charges with an amount above it are declined.
    pub fn new(settings: SimulationSettings, decline_above_cents: Option<i64>) -> Self {
        Self::with_controls(SimulationControls::new(settings), decline_above_cents)
    }

    /// 50 ms, never fails, never declines.
    pub fn with_defaults() -> Self {
        Self::new(SimulationSettings::payment(), None)
    }

    pub fn with_controls(
        controls: Arc<SimulationControls>,
        decline_above_cents: Option<i64>,
    ) -> Self {
        Self {
            controls,
            decline_above_cents,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    pub fn controls(&self) -> Arc<SimulationControls> {
        Arc::clone(&self.controls)
    }

    pub fn decline_above_cents(&self) -> Option<i64> {
        self.decline_above_cents
    }

    /// How many distinct charges (idempotency keys) were answered.
    pub fn charge_count(&self) -> usize {
        lock(&self.ledger).charges.len()
    }

    /// Whether the payment was refunded.
    pub fn is_refunded(&self, payment_id: &str) -> bool {
        lock(&self.ledger).refunded.contains(payment_id)
    }

    /// Every refunded payment id.
    pub fn refunds(&self) -> Vec<String> {
        lock(&self.ledger).refunded.iter().cloned().collect()
    }

    async fn do_charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        self.controls.begin_call(PAYMENT).await?;
        if request.amount_cents < 0 {
            self.controls.rejected();
            return Err(ProviderError::permanent(
                PAYMENT,
                format!("invalid amount {} cents", request.amount_cents),
            ));
        }
        let mut ledger = lock(&self.ledger);
        if let Some(previous) = ledger.charges.get(&request.idempotency_key) {
            // The same key again: answer what was answered, charge nothing.
            let previous = previous.clone();
            drop(ledger);
            self.count_answer(&previous);
            return Ok(previous);
        }
        let outcome = match self.decline_above_cents {
            Some(limit) if request.amount_cents > limit => ChargeOutcome::Declined {
                reason: SIMULATED_DECLINE.to_owned(),
            },
            _ => {
                let payment_id = format!("sim_pay_{}", uuid::Uuid::now_v7().simple());
                ledger
                    .payments
                    .insert(payment_id.clone(), request.amount_cents);
                ChargeOutcome::Approved { payment_id }
            }
        };
        ledger.remember(request.idempotency_key.clone(), outcome.clone());
        drop(ledger);
        self.count_answer(&outcome);
        Ok(outcome)
    }

    fn count_answer(&self, outcome: &ChargeOutcome) {
        self.controls.succeeded();
        if matches!(outcome, ChargeOutcome::Declined { .. }) {
            self.controls.declines.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn do_refund(&self, payment_id: &str) -> Result<(), ProviderError> {
        self.controls.begin_call(PAYMENT).await?;
        let mut ledger = lock(&self.ledger);
        if !ledger.payments.contains_key(payment_id) {
            drop(ledger);
            self.controls.rejected();
            return Err(ProviderError::permanent(
                PAYMENT,
                format!("no such payment {payment_id:?}"),
            ));
        }
        // Refunding twice (a retried compensation) is not an error: the
        // money went back once.
        ledger.refunded.insert(payment_id.to_owned());
        drop(ledger);
        self.controls.succeeded();
        Ok(())
    }
}

impl Ledger {
    fn remember(&mut self, key: String, outcome: ChargeOutcome) {
        if self.order.len() == REMEMBERED_CHARGES
            && let Some(oldest) = self.order.pop_front()
            && let Some(ChargeOutcome::Approved { payment_id }) = self.charges.remove(&oldest)
        {
            self.payments.remove(&payment_id);
            self.refunded.remove(&payment_id);
        }
        self.order.push_back(key.clone());
        self.charges.insert(key, outcome);
    }
}

#[async_trait]
impl PaymentGateway for SimulatedPayment {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        instrumented(PAYMENT, self.do_charge(request)).await
    }

    async fn refund(&self, payment_id: &str, _idempotency_key: &str) -> Result<(), ProviderError> {
        // Refunds are idempotent by payment id, so the key adds nothing here.
        instrumented(PAYMENT, self.do_refund(payment_id)).await
    }
}

/// The four simulated providers with their default settings, for wiring the
/// demo in one line. Each keeps its own controls.
#[derive(Debug, Clone)]
pub struct SimulatedProviders {
    pub email: Arc<SimulatedNotifier>,
    pub sms: Arc<SimulatedNotifier>,
    pub push: Arc<SimulatedNotifier>,
    pub payment: Arc<SimulatedPayment>,
}

impl SimulatedProviders {
    /// The notes' latencies, no failures, no declines.
    pub fn with_defaults() -> Self {
        Self {
            email: Arc::new(SimulatedNotifier::with_defaults(Channel::Email)),
            sms: Arc::new(SimulatedNotifier::with_defaults(Channel::Sms)),
            push: Arc::new(SimulatedNotifier::with_defaults(Channel::Push)),
            payment: Arc::new(SimulatedPayment::with_defaults()),
        }
    }

    /// Every provider with the same settings (e.g. [`SimulationSettings::instant`]).
    pub fn uniform(settings: SimulationSettings, decline_above_cents: Option<i64>) -> Self {
        Self {
            email: Arc::new(SimulatedNotifier::new(Channel::Email, settings)),
            sms: Arc::new(SimulatedNotifier::new(Channel::Sms, settings)),
            push: Arc::new(SimulatedNotifier::new(Channel::Push, settings)),
            payment: Arc::new(SimulatedPayment::new(settings, decline_above_cents)),
        }
    }

    /// The notifier of a channel.
    pub fn notifier(&self, channel: Channel) -> Arc<SimulatedNotifier> {
        match channel {
            Channel::Email => Arc::clone(&self.email),
            Channel::Sms => Arc::clone(&self.sms),
            Channel::Push => Arc::clone(&self.push),
        }
    }
}

/// `local@domain`, nothing more: the simulation's stand-in for a server
/// refusing an address.
fn looks_like_address(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty() && !domain.contains('@'),
        None => false,
    }
}

/// Locks, ignoring poisoning: the data behind these locks stays consistent
/// even if a holder panicked (every update is a single insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`ProviderControls`] over the simulated providers that are in use (a
/// provider configured for real keeps its simulated twin out of the list).
pub struct SimulatedControls {
    providers: SimulatedProviders,
    in_use: Vec<&'static str>,
}

impl SimulatedControls {
    pub fn new(providers: SimulatedProviders, in_use: Vec<&'static str>) -> Self {
        Self { providers, in_use }
    }

    fn controls_of(&self, name: &str) -> Option<Arc<SimulationControls>> {
        if !self.in_use.contains(&name) {
            return None;
        }
        Some(match name {
            "email" => self.providers.email.controls(),
            "sms" => self.providers.sms.controls(),
            "push" => self.providers.push.controls(),
            "payment" => self.providers.payment.controls(),
            _ => return None,
        })
    }
}

impl ProviderControls for SimulatedControls {
    fn providers(&self) -> Vec<SimulatedProvider> {
        self.in_use
            .iter()
            .filter_map(|name| {
                let controls = self.controls_of(name)?;
                Some(SimulatedProvider {
                    name,
                    latency: controls.latency(),
                    failure_rate: controls.failure_rate(),
                })
            })
            .collect()
    }

    fn set(&self, name: &str, latency: Duration, failure_rate: f64) -> bool {
        let Some(controls) = self.controls_of(name) else {
            return false;
        };
        controls.set_latency(latency);
        controls.set_failure_rate(failure_rate);
        tracing::info!(
            provider = name,
            ?latency,
            failure_rate,
            "simulated provider changed"
        );
        true
    }
}
