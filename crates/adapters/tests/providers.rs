//! The provider adapters.
//!
//! - Simulated providers: run on tokio's paused clock, so a 300 ms SMS costs
//!   nothing and latencies can be checked exactly on the virtual clock.
//! - Webhooks: a real axum server on `127.0.0.1:0`, started inside each test,
//!   records what arrives and answers as the test tells it.
//! - SMTP: a minimal SMTP server on a loopback port (enough of RFC 5321 for
//!   one plain-text message) records the envelope and the DATA.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use orderflow_adapters::providers::simulated::{SIMULATED_DECLINE, SIMULATED_OUTAGE};
use orderflow_adapters::providers::{
    SimulatedNotifier, SimulatedPayment, SimulatedProviders, SimulationControls,
    SimulationSettings, SmtpNotifier, SmtpSettings, SmtpTls, WebhookNotifier, WebhookPayment,
    WebhookSettings,
};
use orderflow_core::ports::providers::{
    ChargeOutcome, ChargeRequest, Notifier, OutgoingMessage, PaymentGateway, ProviderError,
};
use orderflow_domain::notification::{Channel, NotificationKind};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use uuid::Uuid;

fn message(key: &str) -> OutgoingMessage {
    OutgoingMessage {
        idempotency_key: key.to_owned(),
        user_id: Uuid::now_v7(),
        email: "ada@example.com".to_owned(),
        name: "Ada Lovelace".to_owned(),
        kind: NotificationKind::OrderConfirmed,
        order_id: Some(Uuid::now_v7()),
        subject: "Your order is confirmed".to_owned(),
        body: "Thank you for your order.\nIt is on its way.".to_owned(),
    }
}

fn charge(key: &str, amount_cents: i64) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        order_id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        amount_cents,
        currency: "EUR".to_owned(),
    }
}

fn approved_id(outcome: ChargeOutcome) -> String {
    match outcome {
        ChargeOutcome::Approved { payment_id } => payment_id,
        other => panic!("expected an approval, got {other:?}"),
    }
}

// ======================= simulated providers =======================

#[test]
fn default_settings_are_the_notes_figures() {
    assert_eq!(
        SimulationSettings::email(),
        SimulationSettings::new(Duration::from_millis(200), 0.0)
    );
    assert_eq!(
        SimulationSettings::sms(),
        SimulationSettings::new(Duration::from_millis(300), 0.0)
    );
    assert_eq!(
        SimulationSettings::push(),
        SimulationSettings::new(Duration::from_millis(100), 0.0)
    );
    assert_eq!(
        SimulationSettings::payment(),
        SimulationSettings::new(Duration::from_millis(50), 0.0)
    );
    assert_eq!(
        SimulationSettings::for_channel(Channel::Sms),
        SimulationSettings::sms()
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_takes_the_configured_latency() {
    let sms = SimulatedNotifier::with_defaults(Channel::Sms);
    assert_eq!(sms.channel(), Channel::Sms);
    let started = tokio::time::Instant::now();
    sms.send(&message("k1")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(300));

    // Adjusted at run time.
    sms.controls().set_latency(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    sms.send(&message("k2")).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_one_fails_every_call_transiently() {
    let email = SimulatedNotifier::new(
        Channel::Email,
        SimulationSettings::new(Duration::from_millis(200), 1.0),
    );
    for i in 0..50 {
        let error = email.send(&message(&format!("k{i}"))).await.unwrap_err();
        assert_eq!(error, ProviderError::transient("email", SIMULATED_OUTAGE));
    }
    let controls = email.controls();
    assert_eq!(
        (controls.calls(), controls.failures(), controls.successes()),
        (50, 50, 0)
    );
    assert!(email.delivered().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failure_rate_zero_fails_no_call() {
    let push = SimulatedNotifier::with_defaults(Channel::Push);
    for i in 0..50 {
        push.send(&message(&format!("k{i}"))).await.unwrap();
    }
    let controls = push.controls();
    assert_eq!(
        (controls.calls(), controls.failures(), controls.successes()),
        (50, 0, 50)
    );
    assert_eq!(push.delivered().len(), 50);
    assert_eq!(push.delivered()[0].idempotency_key, "k0");
}

#[tokio::test(start_paused = true)]
async fn an_outage_can_be_switched_on_and_off_while_running() {
    let providers = SimulatedProviders::with_defaults();
    let email = providers.notifier(Channel::Email);
    let controls = email.controls();

    controls.set_failure_rate(1.0);
    assert!(email.send(&message("k")).await.unwrap_err().retryable);
    assert!(email.send(&message("k")).await.unwrap_err().retryable);
    controls.set_failure_rate(0.0);
    email.send(&message("k")).await.unwrap();
    assert_eq!(
        (controls.calls(), controls.failures(), controls.successes()),
        (3, 2, 1)
    );

    // Other providers are unaffected.
    assert_eq!(providers.sms.controls().calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_partial_failure_rate_fails_some_calls() {
    let controls = SimulationControls::new(SimulationSettings::new(Duration::ZERO, 0.5));
    let sms = SimulatedNotifier::with_controls(Channel::Sms, controls.clone());
    for i in 0..400 {
        let _ = sms.send(&message(&format!("k{i}"))).await;
    }
    // 400 fair coin flips: all heads or all tails has probability 2^-399.
    assert_eq!(controls.calls(), 400);
    assert_eq!(controls.failures() + controls.successes(), 400);
    assert!(controls.failures() > 0 && controls.successes() > 0);
}

#[test]
fn failure_rates_are_clamped() {
    let controls = SimulationControls::new(SimulationSettings::instant());
    controls.set_failure_rate(7.0);
    assert_eq!(controls.failure_rate(), 1.0);
    controls.set_failure_rate(-1.0);
    assert_eq!(controls.failure_rate(), 0.0);
    controls.set_failure_rate(f64::NAN);
    assert_eq!(controls.failure_rate(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_simulated_email_to_a_malformed_address_fails_permanently() {
    let email = SimulatedNotifier::with_defaults(Channel::Email);
    let mut bad = message("k");
    bad.email = "not-an-address".to_owned();
    let error = email.send(&bad).await.unwrap_err();
    assert!(!error.retryable);
    assert_eq!(error.provider, "email");
}

#[tokio::test(start_paused = true)]
async fn charges_above_the_card_limit_are_declined() {
    let payment = SimulatedPayment::new(SimulationSettings::payment(), Some(10_000));
    let outcome = payment.charge(&charge("big", 10_001)).await.unwrap();
    assert_eq!(
        outcome,
        ChargeOutcome::Declined {
            reason: SIMULATED_DECLINE.to_owned()
        }
    );
    assert_eq!(
        SIMULATED_DECLINE,
        "insufficient funds (simulated card limit)"
    );
    // At the limit is fine.
    approved_id(payment.charge(&charge("edge", 10_000)).await.unwrap());
    let controls = payment.controls();
    assert_eq!(
        (
            controls.calls(),
            controls.successes(),
            controls.declines(),
            controls.failures()
        ),
        (2, 2, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_repeated_idempotency_key_returns_the_first_result() {
    let payment = SimulatedPayment::new(SimulationSettings::payment(), Some(500));
    let first = approved_id(payment.charge(&charge("order-1", 100)).await.unwrap());
    let again = approved_id(payment.charge(&charge("order-1", 100)).await.unwrap());
    assert_eq!(first, again);
    let other = approved_id(payment.charge(&charge("order-2", 100)).await.unwrap());
    assert_ne!(first, other);

    // A decline is remembered too.
    let declined = payment.charge(&charge("order-3", 900)).await.unwrap();
    assert_eq!(
        payment.charge(&charge("order-3", 900)).await.unwrap(),
        declined
    );
    assert_eq!(payment.charge_count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_charge_charges_nothing_and_can_be_retried() {
    let payment = SimulatedPayment::with_defaults();
    payment.controls().set_failure_rate(1.0);
    let error = payment.charge(&charge("order-1", 100)).await.unwrap_err();
    assert_eq!(error, ProviderError::transient("payment", SIMULATED_OUTAGE));
    assert_eq!(payment.charge_count(), 0);
    payment.controls().set_failure_rate(0.0);
    approved_id(payment.charge(&charge("order-1", 100)).await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn refunds_are_recorded() {
    let payment = SimulatedPayment::with_defaults();
    let id = approved_id(payment.charge(&charge("order-1", 100)).await.unwrap());
    assert!(!payment.is_refunded(&id));
    payment.refund(&id, "refund-1").await.unwrap();
    // A retried compensation is fine.
    payment.refund(&id, "refund-1").await.unwrap();
    assert!(payment.is_refunded(&id));
    assert_eq!(payment.refunds(), vec![id]);

    let error = payment
        .refund("sim_pay_unknown", "refund-2")
        .await
        .unwrap_err();
    assert!(!error.retryable);
}

#[test]
fn calls_are_counted_in_the_provider_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let email = SimulatedNotifier::with_defaults(Channel::Email);
            email.send(&message("a")).await.unwrap();
            email.send(&message("b")).await.unwrap();
            email.controls().set_failure_rate(1.0);
            email.send(&message("c")).await.unwrap_err();
            let payment = SimulatedPayment::new(SimulationSettings::payment(), Some(0));
            payment.charge(&charge("d", 100)).await.unwrap();
        })
    });
    let text = handle.render();
    let value = |name: &str, labels: &[&str]| -> Option<String> {
        text.lines()
            .find(|line| {
                line.starts_with(&format!("{name}{{")) && labels.iter().all(|l| line.contains(l))
            })
            .and_then(|line| line.rsplit(' ').next().map(str::to_owned))
    };
    let calls = "orderflow_provider_calls_total";
    assert_eq!(
        value(calls, &[r#"provider="email""#, r#"outcome="success""#]).as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        value(
            calls,
            &[r#"provider="email""#, r#"outcome="transient_error""#]
        )
        .as_deref(),
        Some("1")
    );
    assert_eq!(
        value(calls, &[r#"provider="payment""#, r#"outcome="declined""#]).as_deref(),
        Some("1")
    );
    let seconds = "orderflow_provider_call_seconds_count";
    assert_eq!(
        value(seconds, &[r#"provider="email""#]).as_deref(),
        Some("3"),
        "{text}"
    );
}

// ======================= webhooks =======================

/// One request the fake provider received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Value,
}

/// The fake provider: records requests, answers with `reply`, or never
/// answers when `hang` is set.
#[derive(Clone)]
struct FakeProvider {
    received: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<(StatusCode, Value)>>,
    hang: bool,
}

impl FakeProvider {
    fn answering(status: StatusCode, body: Value) -> Self {
        Self {
            received: Arc::default(),
            reply: Arc::new(Mutex::new((status, body))),
            hang: false,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Serves on a free loopback port; returns the base URL.
    async fn start(self) -> String {
        async fn handle(
            State(fake): State<FakeProvider>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            Json(body): Json<Value>,
        ) -> (StatusCode, Json<Value>) {
            fake.received.lock().unwrap().push(Received {
                path: uri.path().to_owned(),
                headers,
                body,
            });
            if fake.hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let (status, body) = fake.reply.lock().unwrap().clone();
            (status, Json(body))
        }
        let app = Router::new()
            .route("/notify", post(handle))
            .route("/pay/charges", post(handle))
            .route("/pay/refunds", post(handle))
            .with_state(self);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}")
    }
}

fn header<'a>(request: &'a Received, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn a_webhook_notification_posts_the_message_as_json() {
    let fake = FakeProvider::answering(StatusCode::ACCEPTED, json!({}));
    let url = fake.clone().start().await;
    let settings =
        WebhookSettings::new(format!("{url}/notify")).with_bearer_token("s3cret-token".into());
    let sms = WebhookNotifier::new(Channel::Sms, settings).unwrap();
    assert_eq!(sms.channel(), Channel::Sms);

    let sent = message("sms:0190");
    sms.send(&sent).await.unwrap();

    let received = fake.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.path, "/notify");
    assert_eq!(header(request, "idempotency-key"), Some("sms:0190"));
    assert_eq!(
        header(request, "authorization"),
        Some("Bearer s3cret-token")
    );
    assert_eq!(header(request, "content-type"), Some("application/json"));
    assert_eq!(
        request.body,
        json!({
            "idempotency_key": "sms:0190",
            "channel": "sms",
            "user_id": sent.user_id,
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "kind": "order_confirmed",
            "order_id": sent.order_id,
            "subject": "Your order is confirmed",
            "body": "Thank you for your order.\nIt is on its way.",
        })
    );
}

#[tokio::test]
async fn without_a_token_no_authorization_header_is_sent() {
    let fake = FakeProvider::answering(StatusCode::OK, json!({}));
    let url = fake.clone().start().await;
    let push =
        WebhookNotifier::new(Channel::Push, WebhookSettings::new(format!("{url}/notify"))).unwrap();
    push.send(&message("push:1")).await.unwrap();
    assert_eq!(header(&fake.received()[0], "authorization"), None);
    assert_eq!(fake.received()[0].body["channel"], "push");
}

#[tokio::test]
async fn webhook_server_errors_are_retryable_and_client_errors_are_not() {
    let cases = [
        (StatusCode::INTERNAL_SERVER_ERROR, true),
        (StatusCode::SERVICE_UNAVAILABLE, true),
        (StatusCode::TOO_MANY_REQUESTS, true),
        (StatusCode::REQUEST_TIMEOUT, true),
        (StatusCode::BAD_REQUEST, false),
        (StatusCode::UNAUTHORIZED, false),
        (StatusCode::UNPROCESSABLE_ENTITY, false),
    ];
    for (status, retryable) in cases {
        let fake = FakeProvider::answering(status, json!({"error": "nope"}));
        let url = fake.clone().start().await;
        let sms = WebhookNotifier::new(Channel::Sms, WebhookSettings::new(format!("{url}/notify")))
            .unwrap();
        let error = sms.send(&message("k")).await.unwrap_err();
        assert_eq!(error.retryable, retryable, "{status}: {error}");
        assert_eq!(error.provider, "sms");
        assert!(error.message.contains(status.as_str()), "{error}");
        assert!(
            error.message.contains("nope"),
            "the provider's answer is kept: {error}"
        );
    }
}

#[tokio::test]
async fn a_webhook_that_does_not_answer_in_time_is_retryable() {
    let fake = FakeProvider {
        hang: true,
        ..FakeProvider::answering(StatusCode::OK, json!({}))
    };
    let url = fake.clone().start().await;
    let settings =
        WebhookSettings::new(format!("{url}/notify")).with_timeout(Duration::from_millis(200));
    let push = WebhookNotifier::new(Channel::Push, settings).unwrap();
    let error = push.send(&message("k")).await.unwrap_err();
    assert!(error.retryable, "{error}");
    assert!(error.message.contains("timed out"), "{error}");
}

#[tokio::test]
async fn a_webhook_that_refuses_connections_is_retryable() {
    let address = free_port().await;
    let sms = WebhookNotifier::new(
        Channel::Sms,
        WebhookSettings::new(format!("http://{address}/notify")),
    )
    .unwrap();
    let error = sms.send(&message("k")).await.unwrap_err();
    assert!(error.retryable, "{error}");
}

#[test]
fn webhook_settings_are_checked_and_the_token_never_prints() {
    assert!(WebhookNotifier::new(Channel::Sms, WebhookSettings::new("not a url")).is_err());
    assert!(WebhookPayment::new(WebhookSettings::new("ftp://example.com")).is_err());
    assert!(
        WebhookPayment::new(
            WebhookSettings::new("http://example.com").with_timeout(Duration::ZERO)
        )
        .is_err()
    );

    let settings =
        WebhookSettings::new("https://pay.example.com").with_bearer_token("s3cret-token".into());
    let payment = WebhookPayment::new(settings.clone()).unwrap();
    for printed in [format!("{settings:?}"), format!("{payment:?}")] {
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("pay.example.com"), "{printed}");
    }
}

#[tokio::test]
async fn an_approved_charge_posts_the_charge_and_returns_the_payment_id() {
    let fake = FakeProvider::answering(
        StatusCode::OK,
        json!({"status": "approved", "payment_id": "pay_123"}),
    );
    let url = fake.clone().start().await;
    // A trailing slash on the base URL does not double.
    let payment = WebhookPayment::new(WebhookSettings::new(format!("{url}/pay/"))).unwrap();
    let request = charge("payment:0190", 4_250);
    let outcome = payment.charge(&request).await.unwrap();
    assert_eq!(
        outcome,
        ChargeOutcome::Approved {
            payment_id: "pay_123".into()
        }
    );

    let received = fake.received();
    assert_eq!(received[0].path, "/pay/charges");
    assert_eq!(
        header(&received[0], "idempotency-key"),
        Some("payment:0190")
    );
    assert_eq!(
        received[0].body,
        json!({
            "idempotency_key": "payment:0190",
            "order_id": request.order_id,
            "user_id": request.user_id,
            "amount_cents": 4250,
            "currency": "EUR",
        })
    );
}

#[tokio::test]
async fn a_declined_charge_is_an_answer_not_an_error() {
    for status in [StatusCode::OK, StatusCode::PAYMENT_REQUIRED] {
        let fake = FakeProvider::answering(
            status,
            json!({"status": "declined", "reason": "card expired"}),
        );
        let url = fake.clone().start().await;
        let payment = WebhookPayment::new(WebhookSettings::new(format!("{url}/pay"))).unwrap();
        let outcome = payment.charge(&charge("k", 100)).await.unwrap();
        assert_eq!(
            outcome,
            ChargeOutcome::Declined {
                reason: "card expired".into()
            },
            "{status}"
        );
    }
}

#[tokio::test]
async fn charge_failures_are_sorted_by_retryability() {
    let cases = [
        (StatusCode::BAD_GATEWAY, json!({}), true),
        (StatusCode::BAD_REQUEST, json!({"error": "currency"}), false),
        // 200 with a body that is not a reply: asking again is safe.
        (StatusCode::OK, json!({"what": "?"}), true),
    ];
    for (status, body, retryable) in cases {
        let fake = FakeProvider::answering(status, body);
        let url = fake.clone().start().await;
        let payment = WebhookPayment::new(WebhookSettings::new(format!("{url}/pay"))).unwrap();
        let error = payment.charge(&charge("k", 100)).await.unwrap_err();
        assert_eq!(error.retryable, retryable, "{status}: {error}");
        assert_eq!(error.provider, "payment");
    }
}

#[tokio::test]
async fn a_refund_posts_the_payment_id() {
    let fake = FakeProvider::answering(StatusCode::OK, json!({"status": "refunded"}));
    let url = fake.clone().start().await;
    let payment = WebhookPayment::new(
        WebhookSettings::new(format!("{url}/pay")).with_bearer_token("tok".into()),
    )
    .unwrap();
    payment.refund("pay_123", "refund:0190").await.unwrap();
    let received = fake.received();
    assert_eq!(received[0].path, "/pay/refunds");
    assert_eq!(header(&received[0], "idempotency-key"), Some("refund:0190"));
    assert_eq!(header(&received[0], "authorization"), Some("Bearer tok"));
    assert_eq!(
        received[0].body,
        json!({"payment_id": "pay_123", "idempotency_key": "refund:0190"})
    );

    *fake.reply.lock().unwrap() = (StatusCode::NOT_FOUND, json!({"error": "no such payment"}));
    assert!(
        !payment
            .refund("pay_404", "refund:2")
            .await
            .unwrap_err()
            .retryable
    );
}

// ======================= SMTP =======================

/// What the fake SMTP server received in one transaction.
#[derive(Debug, Clone, Default)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A minimal SMTP server: greets, accepts EHLO, MAIL, RCPT (answered with
/// `rcpt_reply`, to play a refusal), DATA and QUIT, and records each mail.
async fn smtp_server(rcpt_reply: &'static str) -> (SocketAddr, Arc<Mutex<Vec<Mail>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let store = mails.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut mail = Mail::default();
                write.write_all(b"220 fake.test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply = match verb.as_str() {
                        "EHLO" | "HELO" => "250 fake.test\r\n",
                        "MAIL" => {
                            mail.from = line[10..].to_owned();
                            "250 OK\r\n"
                        }
                        "RCPT" => {
                            mail.to.push(line[8..].to_owned());
                            rcpt_reply
                        }
                        "DATA" => {
                            write
                                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                                .await
                                .unwrap();
                            while let Ok(Some(data)) = lines.next_line().await {
                                if data == "." {
                                    break;
                                }
                                mail.data.push_str(&data);
                                mail.data.push('\n');
                            }
                            store.lock().unwrap().push(std::mem::take(&mut mail));
                            "250 OK: queued\r\n"
                        }
                        "RSET" | "NOOP" => "250 OK\r\n",
                        "QUIT" => {
                            let _ = write.write_all(b"221 Bye\r\n").await;
                            return;
                        }
                        _ => "502 Command not implemented\r\n",
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (address, mails)
}

fn smtp_settings(address: SocketAddr) -> SmtpSettings {
    SmtpSettings::new(
        address.ip().to_string(),
        address.port(),
        SmtpTls::None,
        "Shop <shop@orderflow.test>",
    )
    .with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn an_email_is_delivered_over_smtp() {
    let (address, mails) = smtp_server("250 OK\r\n").await;
    let email = SmtpNotifier::new(smtp_settings(address)).unwrap();
    assert_eq!(email.channel(), Channel::Email);
    email.send(&message("email:0190-abc")).await.unwrap();

    let mails = mails.lock().unwrap().clone();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "<shop@orderflow.test>");
    assert_eq!(mail.to, vec!["<ada@example.com>".to_owned()]);
    assert!(
        mail.data.contains("From: Shop <shop@orderflow.test>"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("To: \"Ada Lovelace\" <ada@example.com>"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("Subject: Your order is confirmed"),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .contains("Message-ID: <email-0190-abc@orderflow.test>"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("Content-Type: text/plain"),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .contains("Thank you for your order.\nIt is on its way."),
        "{}",
        mail.data
    );
}

#[tokio::test]
async fn a_permanent_smtp_rejection_is_not_retryable() {
    let (address, _) = smtp_server("550 5.1.1 No such user\r\n").await;
    let email = SmtpNotifier::new(smtp_settings(address)).unwrap();
    let error = email.send(&message("k")).await.unwrap_err();
    assert!(!error.retryable, "{error}");
    assert_eq!(error.provider, "email");
}

#[tokio::test]
async fn a_transient_smtp_rejection_is_retryable() {
    let (address, _) = smtp_server("451 4.3.0 Mailbox busy, try later\r\n").await;
    let email = SmtpNotifier::new(smtp_settings(address)).unwrap();
    let error = email.send(&message("k")).await.unwrap_err();
    assert!(error.retryable, "{error}");
}

#[tokio::test]
async fn a_refused_smtp_connection_is_retryable() {
    let address = free_port().await;
    let email = SmtpNotifier::new(smtp_settings(address)).unwrap();
    let error = email.send(&message("k")).await.unwrap_err();
    assert!(error.retryable, "{error}");
}

#[tokio::test]
async fn a_malformed_recipient_is_a_permanent_failure() {
    let address = free_port().await;
    let email = SmtpNotifier::new(smtp_settings(address)).unwrap();
    let mut bad = message("k");
    bad.email = "not an address".into();
    assert!(!email.send(&bad).await.unwrap_err().retryable);
}

#[test]
fn smtp_settings_are_checked_and_the_password_never_prints() {
    let settings = SmtpSettings::new(
        "smtp.example.com",
        587,
        SmtpTls::StartTls,
        "shop@example.com",
    )
    .with_credentials("shop", "hunter2-very-secret".into());
    let notifier = SmtpNotifier::new(settings.clone()).unwrap();
    for printed in [format!("{settings:?}"), format!("{notifier:?}")] {
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("smtp.example.com"), "{printed}");
    }
    let bad_from = SmtpSettings::new("smtp.example.com", 465, SmtpTls::Tls, "nobody");
    assert!(SmtpNotifier::new(bad_from).is_err());
}

/// A loopback address nothing listens on.
async fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    address
}
