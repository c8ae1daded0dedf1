//! Kafka security settings against the test broker, and what goes wrong
//! with them: a wrong password, a mechanism the broker does not offer.
//! (The log contract over SASL SCRAM is in `contract_kafka.rs`; that the
//! operator's settings reach librdkafka unchanged and are never printed is
//! in `crates/orderflow/tests/kafka_security.rs`, from the settings on.)
//!
//! The broker is `tansu` 0.6 with `--authentication`
//! (`orderflow_testkit::kafka::shared_authenticated`): SASL SCRAM-SHA-256
//! and SCRAM-SHA-512. It offers no SASL/PLAIN, so PLAIN is not tested. It
//! serves no TLS either: the TLS tests go through the testkit's TLS
//! terminator in front of it (`shared_authenticated_tls`, mutual TLS with a
//! CA made in the test), which checks the client's side of TLS for real.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orderflow_adapters::kafka::{KafkaEventLog, KafkaSettings, ensure_topics};
use orderflow_core::ports::log::{EventLog, LogError};
use orderflow_testkit::kafka::{self as broker, Scram};
use orderflow_testkit::pki::TestPki;

/// Well under librdkafka's own time-outs (a minute for a request): a
/// refused login must not look like a slow broker.
const AT_ONCE: Duration = Duration::from_secs(5);

async fn authenticated_broker() -> &'static broker::KafkaBroker {
    tokio::task::spawn_blocking(broker::shared_authenticated)
        .await
        .expect("broker start task")
        .expect("tansu with --authentication")
}

/// Settings for the authenticated broker with `config` on top.
async fn settings_with(config: Vec<(String, String)>) -> KafkaSettings {
    let broker = authenticated_broker().await;
    let mut settings = KafkaSettings::new(broker.bootstrap());
    settings.topic_prefix = broker::fresh_prefix();
    settings.partitions = 2;
    settings.client_config.extend(config);
    settings
}

fn message(error: &LogError) -> String {
    error.to_string()
}

/// A wrong password, with either mechanism: start-up's first call
/// (`ensure_topics`) and the readiness check (`ping`) fail within seconds,
/// say that authentication failed, and do not print the password. Without
/// the connection check, both waited for librdkafka's time-out (60 s for
/// the topic creation) and said only "Local: Timed out".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_fails_at_once_naming_authentication() {
    const WRONG: &str = "not-the-password-Zq81";
    for mechanism in [Scram::Sha256, Scram::Sha512] {
        let settings =
            settings_with(broker::sasl_config(mechanism, broker::SASL_USER, WRONG)).await;

        let started = Instant::now();
        let error = ensure_topics(&settings)
            .await
            .expect_err("a wrong password is refused");
        let took = started.elapsed();
        let text = message(&error);
        eprintln!("{mechanism:?}, ensure_topics after {took:.1?}: {text}");
        assert!(took < AT_ONCE, "{mechanism:?}: took {took:?}");
        assert!(
            text.contains("Kafka authentication failed") && text.contains("SASL"),
            "{mechanism:?}: {text}"
        );
        assert!(matches!(error, LogError::Backend(_)), "not worth retrying");
        assert!(!text.contains(WRONG), "the password is printed: {text}");

        let log = KafkaEventLog::new(settings, BTreeMap::new()).expect("the log is made");
        let started = Instant::now();
        let error = log.ping().await.expect_err("ping is refused too");
        let text = message(&error);
        assert!(started.elapsed() < AT_ONCE, "{mechanism:?}: {text}");
        assert!(
            text.contains("Kafka authentication failed"),
            "{mechanism:?}: {text}"
        );
        assert!(!text.contains(WRONG), "the password is printed: {text}");
    }
}

/// An unknown user is refused the same way as a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_user_is_refused() {
    let settings = settings_with(broker::sasl_config(
        Scram::Sha512,
        "nobody",
        broker::SASL_PASSWORD,
    ))
    .await;
    let error = ensure_topics(&settings)
        .await
        .expect_err("an unknown user is refused");
    let text = message(&error);
    assert!(text.contains("Kafka authentication failed"), "{text}");
    assert!(!text.contains(broker::SASL_PASSWORD), "{text}");
}

/// The right user and password work with both mechanisms: topics are
/// created and `ping` answers. (The whole log contract over SCRAM is in
/// `contract_kafka.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_right_password_works_with_both_mechanisms() {
    for mechanism in [Scram::Sha256, Scram::Sha512] {
        let settings = settings_with(broker::sasl_config(
            mechanism,
            broker::SASL_USER,
            broker::SASL_PASSWORD,
        ))
        .await;
        ensure_topics(&settings)
            .await
            .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
        let log = KafkaEventLog::new(settings, BTreeMap::new()).expect("log");
        log.ping()
            .await
            .unwrap_or_else(|e| panic!("{mechanism:?}: {e}"));
    }
}

/// SASL/PLAIN is what this test broker cannot check: tansu 0.6 builds its
/// SASL server with SCRAM and OAUTHBEARER only and drops the connection on
/// a PLAIN handshake. This pins that fact (so the README's "not tested"
/// stays true, and this test fails the day tansu offers PLAIN), and shows
/// the refusal is reported as an authentication failure at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tansu_offers_no_plain_and_the_refusal_is_clear() {
    let mut config = broker::sasl_config(Scram::Sha512, broker::SASL_USER, broker::SASL_PASSWORD);
    for (name, value) in &mut config {
        if name == "sasl.mechanism" {
            *value = "PLAIN".into();
        }
    }
    let settings = settings_with(config).await;
    let started = Instant::now();
    let error = ensure_topics(&settings)
        .await
        .expect_err("tansu refuses PLAIN");
    let text = message(&error);
    assert!(started.elapsed() < AT_ONCE, "{text}");
    assert!(
        text.contains("Kafka authentication failed") && text.contains("PLAIN"),
        "{text}"
    );
    assert!(!text.contains(broker::SASL_PASSWORD), "{text}");
}

async fn tls_broker() -> &'static broker::KafkaBroker {
    tokio::task::spawn_blocking(broker::shared_authenticated_tls)
        .await
        .expect("broker start task")
        .expect("tansu with --authentication behind the TLS terminator")
}

/// Settings for the broker behind TLS: SCRAM-SHA-512 inside mutual TLS
/// with its certificates, then `change` applied to the librdkafka
/// properties.
async fn tls_settings(change: impl Fn(&mut BTreeMap<String, String>)) -> KafkaSettings {
    let broker = tls_broker().await;
    let pki = broker.pki().expect("the terminator's certificates");
    let mut settings = KafkaSettings::new(broker.bootstrap());
    settings.topic_prefix = broker::fresh_prefix();
    settings.partitions = 2;
    settings.client_config.extend(broker::sasl_ssl_config(
        Scram::Sha512,
        broker::SASL_USER,
        broker::SASL_PASSWORD,
        pki,
    ));
    change(&mut settings.client_config);
    settings
}

/// What the TLS tests accept as a clear failure: quick, saying TLS failed,
/// no secret in it.
async fn fails_naming_tls(settings: &KafkaSettings) -> String {
    let started = Instant::now();
    let error = ensure_topics(settings).await.expect_err("refused");
    let text = message(&error);
    eprintln!("after {:.1?}: {text}", started.elapsed());
    assert!(started.elapsed() < AT_ONCE, "{text}");
    assert!(text.contains("TLS with Kafka failed"), "{text}");
    assert!(!text.contains(broker::SASL_PASSWORD), "{text}");
    text
}

/// With its own certificates the client gets through the terminator (the
/// contract over TLS is in `contract_kafka.rs`); trusting another CA, it
/// refuses the broker at once, saying TLS failed and why (the certificate
/// does not verify), so `ssl.ca.location` is really what decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_is_verified_against_ssl_ca_location() {
    ensure_topics(&tls_settings(|_| {}).await)
        .await
        .expect("the test CA verifies the broker");

    let other = TestPki::generate().unwrap();
    let ca = other.ca_cert().display().to_string();
    let settings = tls_settings(|config| {
        config.insert("ssl.ca.location".into(), ca.clone());
    })
    .await;
    let text = fails_naming_tls(&settings).await;
    assert!(text.contains("certificate verify failed"), "{text}");
}

/// The terminator requires a client certificate: a client without one
/// (no `ssl.certificate.location` / `ssl.key.location`) is refused, and
/// the failure says TLS failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let settings = tls_settings(|config| {
        config.remove("ssl.certificate.location");
        config.remove("ssl.key.location");
    })
    .await;
    fails_naming_tls(&settings).await;
}

/// A wrong password inside TLS: the handshake succeeds, the login does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_inside_tls_names_authentication() {
    let settings = tls_settings(|config| {
        config.insert("sasl.password".into(), "not-it".into());
    })
    .await;
    let error = ensure_topics(&settings).await.expect_err("refused");
    let text = message(&error);
    assert!(text.contains("Kafka authentication failed"), "{text}");
    assert!(text.contains("sasl_ssl://"), "{text}");
}

/// The bundled librdkafka (rdkafka-sys, built with OpenSSL) has what the
/// security settings need: SSL, SASL PLAIN and SCRAM. Read from librdkafka
/// itself (`builtin.features`), so a build without them fails here instead
/// of at an operator's start-up ("No provider for SASL mechanism").
#[test]
fn librdkafka_is_built_with_ssl_and_sasl_scram() {
    let (_, version) = rdkafka::util::get_rdkafka_version();
    let features = KafkaSettings::new("127.0.0.1:9")
        .client_config(&[])
        .create_native_config()
        .expect("a native configuration")
        .get("builtin.features")
        .expect("builtin.features");
    eprintln!("librdkafka {version}: {features}");
    let features: Vec<&str> = features.split(',').collect();
    for needed in ["ssl", "sasl", "sasl_plain", "sasl_scram"] {
        assert!(
            features.contains(&needed),
            "librdkafka {version} lacks {needed}: {features:?}"
        );
    }
}
