//! Circuit breakers in front of the outside providers (payment, e-mail, SMS,
//! push): when a provider is down, stop calling it for a while instead of
//! burning every delivery's retries and time-outs on it.
//!
//! A [`Breaker`] is failsafe's state machine (the design of Twitter's
//! Finagle) with two of its failure policies:
//! - **closed**: calls go through. It opens when, over the last `window`, at
//!   least `min_calls` calls were made and the (exponentially weighted)
//!   failure ratio is at least `failure_ratio`, or after
//!   `consecutive_failures` failures in a row. Only *transient* failures
//!   count (a time-out, a 5xx, connection refused): a permanent error (a 4xx,
//!   a bad address) or a declined card means the provider answered.
//! - **open** for `open_for`: calls are refused without being made, with a
//!   [`ProviderError`] whose `circuit_open_for` says how long is left.
//! - **half-open** after that: calls go through again as probes; the first
//!   success closes it, the first failure opens it again.
//!
//! A failure that opens the breaker, or that comes back while it is open
//! (calls made just before it opened), is reported as "circuit open" too:
//! the consumer runtime then parks the delivery until the breaker may close,
//! without spending one of its attempts, so an outage fills no dead-letter
//! queue (see `orderflow-workers`' runtime). Inline orders ask
//! [`PaymentGateway::circuit_open_for`] first and answer 503 with
//! `Retry-After` while a breaker is open.
//!
//! Metrics, per provider:
//! - `orderflow_circuit_breaker_state{provider}`: 0 closed, 1 half-open, 2 open;
//! - `orderflow_circuit_breaker_transitions_total{provider, to}`;
//! - `orderflow_circuit_breaker_rejected_total{provider}`: calls refused while open.
//!
//! Settings: [`BreakerSpec`], `ORDERFLOW_BREAKERS` (README, "Resilience").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use failsafe::FailurePolicy as _;
use failsafe::StateMachine;
use failsafe::backoff::{self, Constant};
use failsafe::failure_policy::{self, ConsecutiveFailures, OrElse, SuccessRateOverTimeWindow};
use orderflow_core::ports::providers::{
    ChargeOutcome, ChargeRequest, Notifier, OutgoingMessage, PaymentGateway, ProviderError,
};
use orderflow_domain::notification::Channel;

/// The breakers orderflow runs with when `ORDERFLOW_BREAKERS` is not set:
/// [`BreakerSettings::default`] for every provider.
pub const DEFAULT_BREAKER_SPEC: &str = "*=ratio:0.5,calls:20,window:10s,consecutive:5,open:5s";

/// Metric names.
pub mod metric {
    pub const STATE: &str = "orderflow_circuit_breaker_state";
    pub const TRANSITIONS: &str = "orderflow_circuit_breaker_transitions_total";
    pub const REJECTED: &str = "orderflow_circuit_breaker_rejected_total";
}

/// When one provider's breaker opens and for how long. It opens on either
/// rule: a failure ratio over a window (a flaky provider), or a run of
/// consecutive failures (a dead one: the ratio, weighted over the window,
/// takes seconds to react, longer than a delivery's retries last).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// `ratio`: opens when at least this fraction of recent calls failed, in `(0, 1]`...
    pub failure_ratio: f64,
    /// `calls`: ... and at least this many calls were made in the window.
    pub min_calls: u32,
    /// `window`: how far back calls count (whole seconds; the ratio is
    /// weighted towards recent calls). The ratio rule also waits this long
    /// after the breaker is created or closes.
    pub window: Duration,
    /// `consecutive`: opens after this many failures in a row (0: never).
    /// At most the retry attempts, so a dead provider opens the breaker
    /// before a delivery runs out of attempts.
    pub consecutive_failures: u32,
    /// `open`: how long it refuses calls before probing.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            consecutive_failures: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// `ORDERFLOW_BREAKERS`: `PROVIDER=KEY:VALUE,…;…`, where `PROVIDER` is
/// `payment`, `email`, `sms`, `push` or `*` (every provider), and the keys
/// are those of [`BreakerSettings`] (`ratio`, `calls`, `window`,
/// `consecutive`, `open`). A provider's keys override `*`'s, which override
/// the defaults. `PROVIDER=off` runs that provider without a breaker; `off`
/// alone switches them all off. Example:
/// `*=ratio:0.5,calls:20,window:10s,consecutive:5,open:5s;sms=open:2s;payment=off`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BreakerSpec {
    all_off: bool,
    /// `*`'s keys, then each named provider's (`None`: `off`).
    every: Option<Overrides>,
    providers: BTreeMap<String, Option<Overrides>>,
}

/// The keys one spec entry sets.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Overrides {
    failure_ratio: Option<f64>,
    min_calls: Option<u32>,
    window: Option<Duration>,
    consecutive_failures: Option<u32>,
    open_for: Option<Duration>,
}

impl Overrides {
    fn apply(&self, to: BreakerSettings) -> BreakerSettings {
        BreakerSettings {
            failure_ratio: self.failure_ratio.unwrap_or(to.failure_ratio),
            min_calls: self.min_calls.unwrap_or(to.min_calls),
            window: self.window.unwrap_or(to.window),
            consecutive_failures: self.consecutive_failures.unwrap_or(to.consecutive_failures),
            open_for: self.open_for.unwrap_or(to.open_for),
        }
    }
}

/// The providers a spec may name.
const PROVIDERS: [&str; 4] = ["payment", "email", "sms", "push"];

impl std::str::FromStr for BreakerSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut parsed = BreakerSpec::default();
        if spec.trim() == "off" {
            parsed.all_off = true;
            return Ok(parsed);
        }
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (provider, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not PROVIDER=KEY:VALUE,…"))?;
            let overrides = match value.trim() {
                "off" => None,
                value => Some(parse_overrides(value)?),
            };
            match provider.trim() {
                "*" => match overrides {
                    Some(overrides) => parsed.every = Some(overrides),
                    None => parsed.all_off = true,
                },
                name if PROVIDERS.contains(&name) => {
                    parsed.providers.insert(name.to_owned(), overrides);
                }
                other => {
                    return Err(format!(
                        "unknown provider {other:?}; expected *, {}",
                        PROVIDERS.join(", ")
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

fn parse_overrides(value: &str) -> Result<Overrides, String> {
    let mut overrides = Overrides::default();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, text) = pair
            .split_once(':')
            .ok_or_else(|| format!("{pair:?} is not KEY:VALUE"))?;
        let text = text.trim();
        let whole = |what: &str| {
            text.parse::<u32>()
                .map_err(|_| format!("{what} {text:?} is not a whole number"))
        };
        let duration = |what: &str| {
            humantime::parse_duration(text).map_err(|e| format!("{what} {text:?}: {e}"))
        };
        match key.trim() {
            "ratio" => {
                let ratio: f64 = text
                    .parse()
                    .map_err(|_| format!("ratio {text:?} is not a number"))?;
                if !(ratio > 0.0 && ratio <= 1.0) {
                    return Err(format!("ratio {text} must be in (0, 1]"));
                }
                overrides.failure_ratio = Some(ratio);
            }
            "calls" => overrides.min_calls = Some(whole("calls")?),
            "consecutive" => overrides.consecutive_failures = Some(whole("consecutive")?),
            "window" => {
                let window = duration("window")?;
                if window < Duration::from_secs(1) {
                    return Err(format!("window {text} must be at least 1s"));
                }
                overrides.window = Some(window);
            }
            "open" => {
                let open_for = duration("open")?;
                if open_for.is_zero() {
                    return Err("open must be longer than zero".into());
                }
                overrides.open_for = Some(open_for);
            }
            other => {
                return Err(format!(
                    "unknown key {other:?}; expected ratio, calls, window, consecutive, open"
                ));
            }
        }
    }
    Ok(overrides)
}

impl BreakerSpec {
    /// The settings of `provider`'s breaker; `None` runs it without one.
    pub fn for_provider(&self, provider: &str) -> Option<BreakerSettings> {
        if self.all_off {
            return None;
        }
        let every = self
            .every
            .unwrap_or_default()
            .apply(BreakerSettings::default());
        match self.providers.get(provider) {
            Some(Some(named)) => Some(named.apply(every)),
            Some(None) => None,
            None => Some(every),
        }
    }
}

/// Records transitions as metrics and remembers until when the breaker is
/// open (failsafe keeps that to itself).
#[derive(Debug, Clone)]
struct Transitions {
    provider: &'static str,
    open_for: Duration,
    open_until: Arc<Mutex<Option<Instant>>>,
    /// The state last recorded (the gauge's value), so the creation of a
    /// breaker, which failsafe reports as "closed", is not counted as a
    /// transition.
    state: Arc<AtomicU8>,
}

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

impl Transitions {
    /// Records entering `state`; whether it was a change.
    fn record(&self, to: &'static str, state: u8) -> bool {
        metrics::gauge!(metric::STATE, "provider" => self.provider).set(f64::from(state));
        let changed = self.state.swap(state, Ordering::Relaxed) != state;
        if changed {
            metrics::counter!(metric::TRANSITIONS, "provider" => self.provider, "to" => to)
                .increment(1);
        }
        changed
    }

    fn set_open_until(&self, until: Option<Instant>) {
        *self.open_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }
}

impl failsafe::Instrument for Transitions {
    fn on_call_rejected(&self) {
        metrics::counter!(metric::REJECTED, "provider" => self.provider).increment(1);
    }

    fn on_open(&self) {
        self.set_open_until(Some(Instant::now() + self.open_for));
        if self.record("open", OPEN) {
            tracing::warn!(provider = self.provider, open_for = ?self.open_for, "circuit breaker opened: calls to the provider wait");
        }
    }

    fn on_half_open(&self) {
        self.set_open_until(None);
        self.record("half_open", HALF_OPEN);
        tracing::debug!(
            provider = self.provider,
            "circuit breaker half-open: probing the provider"
        );
    }

    fn on_closed(&self) {
        self.set_open_until(None);
        if self.record("closed", CLOSED) {
            tracing::info!(
                provider = self.provider,
                "circuit breaker closed: the provider answers again"
            );
        }
    }
}

type BreakerPolicy = OrElse<SuccessRateOverTimeWindow<Constant>, ConsecutiveFailures<Constant>>;

/// One provider's circuit breaker (see the module docs). Cloning shares it.
#[derive(Clone)]
pub struct Breaker {
    provider: &'static str,
    machine: StateMachine<BreakerPolicy, Transitions>,
    transitions: Transitions,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("provider", &self.provider)
            .field("open_for", &self.open_for())
            .finish()
    }
}

impl Breaker {
    pub fn new(provider: &'static str, settings: BreakerSettings) -> Self {
        let open_for = backoff::constant(settings.open_for);
        let ratio = failure_policy::success_rate_over_time_window(
            1.0 - settings.failure_ratio,
            settings.min_calls,
            settings.window,
            open_for.clone(),
        );
        let consecutive = failure_policy::consecutive_failures(
            match settings.consecutive_failures {
                0 => u32::MAX,
                n => n,
            },
            open_for,
        );
        let transitions = Transitions {
            provider,
            open_for: settings.open_for,
            open_until: Arc::new(Mutex::new(None)),
            state: Arc::new(AtomicU8::new(CLOSED)),
        };
        Self {
            provider,
            machine: StateMachine::new(ratio.or_else(consecutive), transitions.clone()),
            transitions,
        }
    }

    /// How long the breaker still refuses calls; `None` when closed,
    /// half-open, or when its open time is over (the next call probes).
    pub fn open_for(&self) -> Option<Duration> {
        let until = *self
            .transitions
            .open_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Makes `call` unless the breaker is open, and counts its outcome.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        if !self.machine.is_call_permitted() {
            return Err(self.refused("not called: its circuit breaker is open"));
        }
        match call.await {
            Ok(value) => {
                self.machine.on_success();
                Ok(value)
            }
            Err(error) if error.retryable => {
                self.machine.on_error();
                match self.open_for() {
                    Some(_) => {
                        Err(self
                            .refused(&format!("{} (its circuit breaker is open)", error.message)))
                    }
                    None => Err(error),
                }
            }
            Err(error) => {
                // A permanent error is an answer: the provider is up.
                self.machine.on_success();
                Err(error)
            }
        }
    }

    fn refused(&self, message: &str) -> ProviderError {
        // At least a moment: zero would have the caller spin until a call
        // moves the breaker to half-open.
        let wait = self
            .open_for()
            .unwrap_or_default()
            .max(Duration::from_millis(50));
        ProviderError::circuit_open(self.provider, wait, message)
    }
}

/// A provider behind its [`Breaker`]: implements the same port, so the
/// consumers and the inline order path do not know it is there.
pub struct WithBreaker<P: ?Sized> {
    inner: Arc<P>,
    breaker: Breaker,
}

impl<P: ?Sized> WithBreaker<P> {
    pub fn new(inner: Arc<P>, breaker: Breaker) -> Self {
        Self { inner, breaker }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

/// `provider` behind a breaker made from `spec`, or as it is when the spec
/// switches its breaker off.
pub fn notifier_with_breaker(spec: &BreakerSpec, notifier: Arc<dyn Notifier>) -> Arc<dyn Notifier> {
    let provider = super::channel_provider(notifier.channel());
    match spec.for_provider(provider) {
        Some(settings) => Arc::new(WithBreaker::new(notifier, Breaker::new(provider, settings))),
        None => notifier,
    }
}

/// The payment gateway behind a breaker made from `spec` (or as it is).
pub fn payment_with_breaker(
    spec: &BreakerSpec,
    payment: Arc<dyn PaymentGateway>,
) -> Arc<dyn PaymentGateway> {
    match spec.for_provider(super::PAYMENT) {
        Some(settings) => Arc::new(WithBreaker::new(
            payment,
            Breaker::new(super::PAYMENT, settings),
        )),
        None => payment,
    }
}

#[async_trait]
impl Notifier for WithBreaker<dyn Notifier> {
    fn channel(&self) -> Channel {
        self.inner.channel()
    }

    async fn send(&self, message: &OutgoingMessage) -> Result<(), ProviderError> {
        self.breaker.call(self.inner.send(message)).await
    }

    fn circuit_open_for(&self) -> Option<Duration> {
        self.breaker.open_for()
    }
}

#[async_trait]
impl PaymentGateway for WithBreaker<dyn PaymentGateway> {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, ProviderError> {
        self.breaker.call(self.inner.charge(request)).await
    }

    async fn refund(&self, payment_id: &str, idempotency_key: &str) -> Result<(), ProviderError> {
        self.breaker
            .call(self.inner.refund(payment_id, idempotency_key))
            .await
    }

    fn circuit_open_for(&self) -> Option<Duration> {
        self.breaker.open_for()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{SimulatedNotifier, SimulationSettings};
    use orderflow_domain::notification::NotificationKind;

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            idempotency_key: uuid::Uuid::now_v7().to_string(),
            user_id: uuid::Uuid::now_v7(),
            email: "shopper@example.com".into(),
            name: "Shopper".into(),
            kind: NotificationKind::OrderConfirmed,
            order_id: None,
            subject: "subject".into(),
            body: "body".into(),
        }
    }

    /// Closed → open (after the window, at the failure ratio) → refusing
    /// without calling → half-open after the open time → closed on a success.
    #[tokio::test]
    async fn a_failing_provider_opens_the_breaker_and_a_success_closes_it() {
        let sms = Arc::new(SimulatedNotifier::new(
            Channel::Sms,
            SimulationSettings::new(Duration::ZERO, 1.0),
        ));
        let settings = BreakerSettings {
            failure_ratio: 0.5,
            min_calls: 3,
            window: Duration::from_secs(1),
            consecutive_failures: 0,
            open_for: Duration::from_millis(400),
        };
        let guarded = WithBreaker::new(
            sms.clone() as Arc<dyn Notifier>,
            Breaker::new("sms", settings),
        );
        // Within the first window the breaker never opens: each failure is
        // the provider's own, to be retried.
        for _ in 0..3 {
            let error = guarded.send(&message()).await.unwrap_err();
            assert_eq!(error.circuit_open_for, None, "{error}");
        }
        // After it, the breaker opens once `min_calls` calls in the window
        // failed (the ones above have left the window by now).
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        for _ in 1..settings.min_calls {
            let error = guarded.send(&message()).await.unwrap_err();
            assert_eq!(error.circuit_open_for, None, "{error}");
        }
        let opened = guarded.send(&message()).await.unwrap_err();
        let wait = opened
            .circuit_open_for
            .expect("the third failure in the window opened the breaker");
        assert!(wait <= settings.open_for, "{wait:?}");
        assert!(guarded.circuit_open_for().is_some());

        // While open, calls are refused without reaching the provider.
        sms.controls().set_failure_rate(0.0);
        let refused = guarded.send(&message()).await.unwrap_err();
        assert!(refused.circuit_open_for.is_some(), "{refused}");
        assert!(
            sms.delivered().is_empty(),
            "a refused call reached the provider"
        );

        // After the open time a probe goes through and closes it.
        tokio::time::sleep(settings.open_for).await;
        guarded.send(&message()).await.expect("the probe succeeds");
        assert_eq!(sms.delivered().len(), 1);
        assert_eq!(guarded.circuit_open_for(), None);
        guarded.send(&message()).await.expect("closed again");
    }

    #[tokio::test]
    async fn a_dead_provider_opens_it_after_consecutive_failures_and_a_failed_probe_reopens_it() {
        let push = Arc::new(SimulatedNotifier::new(
            Channel::Push,
            SimulationSettings::new(Duration::ZERO, 1.0),
        ));
        let settings = BreakerSettings {
            consecutive_failures: 3,
            open_for: Duration::from_millis(200),
            ..BreakerSettings::default()
        };
        let guarded = WithBreaker::new(
            push.clone() as Arc<dyn Notifier>,
            Breaker::new("push", settings),
        );
        // No window to wait for: the third failure in a row opens it.
        for _ in 1..settings.consecutive_failures {
            let error = guarded.send(&message()).await.unwrap_err();
            assert_eq!(error.circuit_open_for, None, "{error}");
        }
        let opened = guarded.send(&message()).await.unwrap_err();
        assert!(opened.circuit_open_for.is_some(), "{opened}");
        // Half-open: the probe fails, so the breaker opens again at once.
        tokio::time::sleep(settings.open_for).await;
        let probe = guarded.send(&message()).await.unwrap_err();
        assert!(probe.circuit_open_for.is_some(), "{probe}");
        assert!(guarded.circuit_open_for().unwrap() > Duration::from_millis(100));
    }

    #[test]
    fn the_default_spec_gives_every_provider_the_default_breaker() {
        let spec: BreakerSpec = DEFAULT_BREAKER_SPEC.parse().unwrap();
        for provider in PROVIDERS {
            assert_eq!(
                spec.for_provider(provider),
                Some(BreakerSettings::default())
            );
        }
        assert_eq!(
            BreakerSpec::default().for_provider("sms"),
            Some(BreakerSettings::default())
        );
    }

    #[test]
    fn a_named_provider_overrides_the_keys_it_names_and_off_switches_off() {
        let spec: BreakerSpec = "*=calls:10,open:3s; sms=ratio:0.25,open:500ms; payment=off"
            .parse()
            .unwrap();
        assert_eq!(spec.for_provider("payment"), None);
        let sms = spec.for_provider("sms").unwrap();
        assert_eq!(sms.failure_ratio, 0.25);
        assert_eq!(sms.min_calls, 10, "from *");
        assert_eq!(sms.open_for, Duration::from_millis(500));
        assert_eq!(sms.window, Duration::from_secs(10), "the default");
        let email = spec.for_provider("email").unwrap();
        assert_eq!(
            (email.min_calls, email.open_for),
            (10, Duration::from_secs(3))
        );
        for off in ["off", "*=off"] {
            let off: BreakerSpec = off.parse().unwrap();
            assert!(PROVIDERS.iter().all(|p| off.for_provider(p).is_none()));
        }
    }

    #[test]
    fn a_bad_spec_says_what_is_wrong() {
        for (spec, says) in [
            ("fax=open:5s", "unknown provider"),
            ("sms=speed:5", "unknown key"),
            ("sms=ratio", "KEY:VALUE"),
            ("sms=ratio:1.5", "must be in (0, 1]"),
            ("sms=calls:many", "not a whole number"),
            ("sms=window:100ms", "at least 1s"),
            ("sms=open:soon", "open"),
            ("sms", "PROVIDER="),
        ] {
            let error = spec.parse::<BreakerSpec>().unwrap_err();
            assert!(error.contains(says), "{spec}: {error}");
        }
    }
}
