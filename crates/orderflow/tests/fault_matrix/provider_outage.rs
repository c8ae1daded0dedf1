//! The SMS provider down for 20 s under load (issue 16's first fault case).
//!
//! The SMS provider is a real HTTP service (the webhook adapter's contract,
//! served by this test): it answers 503 while "down", and otherwise accepts
//! each message once per idempotency key, as a real provider does. One
//! `orderflow serve` process (SQLite, the default breakers) sends its SMS
//! there while shoppers keep ordering. Checks:
//! - the SMS breaker opens (its metric), and no event is dead-lettered;
//! - the other groups carry on: orders placed during the outage are
//!   confirmed while it lasts;
//! - once the provider is back, every confirmed order's SMS arrives, each
//!   exactly once (one idempotency key per order).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::metric;
use crate::support::process::{http_process, processes_environment};
use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// How long the provider is down.
const OUTAGE: Duration = Duration::from_secs(20);
/// Load before and after the outage.
const CALM: Duration = Duration::from_secs(5);
const SHOPPERS: usize = 3;

/// The test's SMS provider.
#[derive(Clone, Default)]
struct SmsProvider {
    down: Arc<AtomicBool>,
    /// Calls answered 503.
    refused: Arc<AtomicUsize>,
    /// Per order, the idempotency keys of the `order_confirmed` messages
    /// accepted, and how many calls carried them.
    accepted: Arc<Mutex<BTreeMap<String, BTreeMap<String, usize>>>>,
}

async fn receive_sms(
    State(provider): State<SmsProvider>,
    Json(message): Json<Value>,
) -> StatusCode {
    if provider.down.load(Ordering::SeqCst) {
        provider.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if message["kind"] == "order_confirmed" {
        let order = message["order_id"].as_str().unwrap_or_default().to_owned();
        let key = message["idempotency_key"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *provider
            .accepted
            .lock()
            .unwrap()
            .entry(order)
            .or_default()
            .entry(key)
            .or_default() += 1;
    }
    StatusCode::OK
}

impl SmsProvider {
    /// Serves on a free loopback port; its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sms", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/sms", axum::routing::post(receive_sms))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn orders_with_sms(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        self.accepted.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_provider_down_for_20_s_opens_its_breaker_and_loses_nothing() {
    let _turn = super::ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let sms = SmsProvider::default();
    let sms_url = sms.serve().await;
    let data = tempfile::tempdir().unwrap();
    let env = processes_environment(data.path(), &[("ORDERFLOW_SMS_WEBHOOK_URL", &sms_url)]);
    let (mut serve, client) = http_process("serve", "serve", &env, data.path()).await;
    let admin = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let product = client.product(&admin, "SMS-OUTAGE", 250, 1_000_000).await;
    let mut shoppers = Vec::new();
    for n in 0..SHOPPERS {
        shoppers.push(client.shopper(&format!("sms-outage-{n}@example.com")).await);
    }

    // Shoppers order one after the other, each with a fresh key.
    let stop = Arc::new(AtomicBool::new(false));
    let placed: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let mut load = Vec::new();
    for token in shoppers.clone() {
        let (client, stop, placed, product) = (
            client.clone(),
            stop.clone(),
            placed.clone(),
            product.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client
                    .http
                    .post(format!("{}/api/v1/orders", client.base))
                    .bearer_auth(&token)
                    .header("idempotency-key", uuid::Uuid::now_v7().to_string())
                    .json(&json!({"items": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 201, "orders are accepted throughout");
                let id = answer.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                placed
                    .lock()
                    .unwrap()
                    .push((id, token.clone(), Instant::now()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    tokio::time::sleep(CALM).await;
    sms.down.store(true, Ordering::SeqCst);
    let outage_started = Instant::now();
    eprintln!("[fault-matrix] sms: provider down");
    tokio::time::sleep(OUTAGE / 2).await;
    // Orders placed in the first half of the outage must be confirmed
    // before it ends: the SMS group's trouble holds no other group up.
    let early: Vec<(String, String)> = placed
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, at)| *at > outage_started)
        .map(|(id, token, _)| (id.clone(), token.clone()))
        .collect();
    tokio::time::sleep(OUTAGE / 2 - Duration::from_secs(1)).await;
    let mut confirmed_during_outage = 0;
    for (id, token) in &early {
        let order = client.get(&format!("/orders/{id}"), token).await;
        confirmed_during_outage += usize::from(order["status"] == "confirmed");
    }
    let metrics_during = client.metrics().await;
    let opened = metric(
        &metrics_during,
        "orderflow_circuit_breaker_transitions_total",
        r#"provider="sms",to="open""#,
    );
    let refused_while_down = sms.refused.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sms.down.store(false, Ordering::SeqCst);
    let back = Instant::now();
    eprintln!("[fault-matrix] sms: provider back");
    tokio::time::sleep(CALM).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let placed: Vec<(String, String)> = placed
        .lock()
        .unwrap()
        .iter()
        .map(|(id, token, _)| (id.clone(), token.clone()))
        .collect();

    // Every order ends confirmed, and its SMS arrives (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_sms_at = None;
    loop {
        let with_sms = sms.orders_with_sms();
        let missing: Vec<_> = placed
            .iter()
            .filter(|(id, _)| !with_sms.contains_key(id))
            .collect();
        if missing.is_empty() {
            last_sms_at.get_or_insert(back.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} orders never got their SMS; first: {:?}",
            missing.len(),
            placed.len(),
            missing.first()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = BTreeMap::<String, usize>::new();
    for (id, token) in &placed {
        let order = client.get(&format!("/orders/{id}"), token).await;
        *statuses
            .entry(order["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let metrics_after = client.metrics().await;
    let dead_letters = client.get("/admin/dlq", &admin).await;
    let with_sms = sms.orders_with_sms();
    let keys: BTreeSet<usize> = with_sms.values().map(BTreeMap::len).collect();
    let calls_per_key: usize = with_sms.values().flat_map(|k| k.values()).sum();
    let rejected = metric(
        &metrics_after,
        "orderflow_circuit_breaker_rejected_total",
        r#"provider="sms""#,
    );
    eprintln!(
        "[fault-matrix] sms: {} orders ({} placed in the outage's first half, {} of them confirmed during it); \
         provider refused {} calls while down; breaker opened {} times, refused {} calls unmade; \
         every SMS in {:.1} s after the provider was back; {} SMS calls for {} orders; statuses {:?}; took {:.1} s",
        placed.len(),
        early.len(),
        confirmed_during_outage,
        refused_while_down,
        opened,
        rejected,
        last_sms_at.unwrap().as_secs_f64(),
        calls_per_key,
        with_sms.len(),
        statuses,
        started.elapsed().as_secs_f64()
    );

    assert!(opened >= 1.0, "the SMS breaker opened during the outage");
    assert!(
        !early.is_empty() && confirmed_during_outage == early.len(),
        "orders placed during the outage were confirmed during it: {confirmed_during_outage} of {}",
        early.len()
    );
    assert_eq!(
        statuses.get("confirmed"),
        Some(&placed.len()),
        "{statuses:?}"
    );
    assert_eq!(
        keys,
        BTreeSet::from([1]),
        "each order's SMS is one message (one idempotency key)"
    );
    assert_eq!(
        dead_letters["items"].as_array().map(Vec::len),
        Some(0),
        "nothing was dead-lettered: {dead_letters}"
    );
    assert_eq!(
        metric(&metrics_after, "orderflow_events_dead_lettered_total", ""),
        0.0
    );
    serve.stop().await;
}
