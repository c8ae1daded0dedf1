//! The soak's external providers: SMS, push and payment, served by the
//! bench over the webhook protocol orderflow's real adapters speak
//! (`orderflow_adapters::providers::webhook`), so the server under test
//! reaches them exactly as it would reach a production bridge.
//!
//! Each provider behaves like a real one:
//! - it answers after a short latency ([`LATENCY`]);
//! - it deduplicates by idempotency key: a request with a key it has seen
//!   is answered like the first (the same payment id), and counted as a
//!   repeat, never as a second effect;
//! - it can be made to fail (`503`) for a burst, with a probability per
//!   request, which is how the soak's provider faults are injected.
//!
//! What each accepted, keeping per order the distinct keys it took, is the
//! effect side of the soak's accounting: a confirmed order must have been
//! charged under exactly one key, and sent exactly one `order_confirmed`
//! SMS and push message.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::{Value, json};

use crate::BenchError;

/// How long each provider takes to answer an accepted request.
pub const LATENCY: Duration = Duration::from_millis(10);

/// The providers the bench serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Sms,
    Push,
    Payment,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Sms, Provider::Push, Provider::Payment];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Sms => "sms",
            Provider::Push => "push",
            Provider::Payment => "payment",
        }
    }
}

/// One provider's state: its failure probability and what it accepted.
#[derive(Default)]
struct Endpoint {
    /// The share of requests answered 503, in millionths.
    failing_ppm: AtomicU32,
    /// Requests answered 503.
    refused: AtomicU64,
    /// Requests that repeated a key already accepted.
    repeats: AtomicU64,
    /// Per order id, the distinct idempotency keys of its effect accepted
    /// (`order_confirmed` messages; charges).
    by_order: Mutex<HashMap<String, BTreeMap<String, u64>>>,
}

impl Endpoint {
    /// Refuses the request with the current failure probability.
    fn refuses(&self) -> bool {
        let ppm = self.failing_ppm.load(Ordering::Relaxed);
        let refused = ppm > 0 && rand::rng().random_range(0..1_000_000) < ppm;
        if refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        refused
    }

    /// Records `key` for `order`; a key seen before counts as a repeat.
    fn accept(&self, order: &str, key: &str) {
        let mut by_order = self.by_order.lock().expect("not poisoned");
        let calls = by_order
            .entry(order.to_owned())
            .or_default()
            .entry(key.to_owned())
            .or_default();
        *calls += 1;
        if *calls > 1 {
            self.repeats.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The bench's provider services, on one loopback listener.
#[derive(Clone)]
pub struct Providers {
    endpoints: Arc<BTreeMap<Provider, Endpoint>>,
}

/// What one provider saw, for the accounting.
#[derive(Debug, Clone)]
pub struct ProviderTally {
    pub refused: u64,
    pub repeats: u64,
    /// Per order id, how many distinct keys were accepted for it.
    pub keys_per_order: HashMap<String, usize>,
}

impl Default for Providers {
    fn default() -> Self {
        Self::new()
    }
}

impl Providers {
    pub fn new() -> Self {
        Self {
            endpoints: Arc::new(
                Provider::ALL
                    .into_iter()
                    .map(|p| (p, Endpoint::default()))
                    .collect(),
            ),
        }
    }

    fn endpoint(&self, provider: Provider) -> &Endpoint {
        &self.endpoints[&provider]
    }

    /// Serves on a free loopback port; the environment that points
    /// orderflow's SMS, push and payment adapters at it.
    pub async fn serve(&self) -> Result<Vec<(&'static str, String)>, BenchError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError::Setup(format!("provider listener: {e}")))?;
        let base = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(|e| BenchError::Setup(e.to_string()))?
        );
        let app = axum::Router::new()
            .route("/sms", axum::routing::post(sms))
            .route("/push", axum::routing::post(push))
            .route("/payment/charges", axum::routing::post(charge))
            .route("/payment/refunds", axum::routing::post(refund))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(vec![
            ("ORDERFLOW_SMS_WEBHOOK_URL", format!("{base}/sms")),
            ("ORDERFLOW_PUSH_WEBHOOK_URL", format!("{base}/push")),
            ("ORDERFLOW_PAYMENT_WEBHOOK_URL", format!("{base}/payment")),
        ])
    }

    /// From now on `provider` answers this share of its requests with 503
    /// (0 heals it).
    pub fn fail(&self, provider: Provider, share: f64) {
        let ppm = (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u32;
        self.endpoint(provider)
            .failing_ppm
            .store(ppm, Ordering::Relaxed);
    }

    pub fn tally(&self, provider: Provider) -> ProviderTally {
        let endpoint = self.endpoint(provider);
        ProviderTally {
            refused: endpoint.refused.load(Ordering::Relaxed),
            repeats: endpoint.repeats.load(Ordering::Relaxed),
            keys_per_order: endpoint
                .by_order
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|(order, keys)| (order.clone(), keys.len()))
                .collect(),
        }
    }
}

/// The idempotency key in a request's body (the webhook adapters send the
/// same key in the `Idempotency-Key` header).
fn idempotency_key(body: &Value) -> String {
    body["idempotency_key"].as_str().unwrap_or("").to_owned()
}

async fn notify(providers: &Providers, provider: Provider, message: &Value) -> StatusCode {
    let endpoint = providers.endpoint(provider);
    if endpoint.refuses() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    tokio::time::sleep(LATENCY).await;
    if message["kind"] == "order_confirmed"
        && let Some(order) = message["order_id"].as_str()
    {
        endpoint.accept(order, &idempotency_key(message));
    }
    StatusCode::OK
}

async fn sms(State(providers): State<Providers>, Json(message): Json<Value>) -> StatusCode {
    notify(&providers, Provider::Sms, &message).await
}

async fn push(State(providers): State<Providers>, Json(message): Json<Value>) -> StatusCode {
    notify(&providers, Provider::Push, &message).await
}

/// Approves every charge; the payment id is derived from the key, so a
/// repeated key gets the same answer.
async fn charge(State(providers): State<Providers>, Json(request): Json<Value>) -> Response {
    let endpoint = providers.endpoint(Provider::Payment);
    if endpoint.refuses() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    tokio::time::sleep(LATENCY).await;
    let key = idempotency_key(&request);
    let order = request["order_id"].as_str().unwrap_or("");
    endpoint.accept(order, &key);
    Json(json!({"status": "approved", "payment_id": format!("pay-{key}")})).into_response()
}

/// The soak cancels nothing, so a refund is unexpected: accepted (a real
/// provider would), and visible in the server's log.
async fn refund(State(providers): State<Providers>) -> StatusCode {
    if providers.endpoint(Provider::Payment).refuses() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    StatusCode::OK
}
