//! Kafka security as an operator sets it: `ORDERFLOW_KAFKA_CONFIG` (and the
//! typed `ORDERFLOW_KAFKA_SASL_*` / `_SSL_*` settings) reach librdkafka
//! unchanged, no secret is ever printed, and the real `orderflow` binary
//! works over SASL SCRAM, or stops at start-up saying the login failed.
//!
//! The broker is `tansu` 0.6 with `--authentication`
//! (`orderflow_testkit::kafka::shared_authenticated`): SASL SCRAM-SHA-256
//! and -512. It serves no TLS itself (its `--cert`/`--key` build a TLS
//! acceptor that its accept loop never uses), so the TLS run goes through
//! the testkit's TLS terminator in front of it (`shared_authenticated_tls`:
//! mutual TLS, a CA made in the test): orderflow's side of TLS is real, a
//! Kafka broker's TLS listener is not tested.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use orderflow::backends::kafka_settings;
use orderflow::cli::Cli;
use orderflow_adapters::kafka::{KafkaEventLog, KafkaSettings};
use orderflow_testkit::kafka as broker;
use orderflow_testkit::pki::TestPki;

mod support;
use support::process::{http_process, processes_environment, tail};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD};

/// Secrets with characters that a careless split, quote or URL-encode
/// would change (`=`, `$`, `/`, `+`, `%`).
const SASL_PASSWORD: &str = "sasl=Pa$$/w+rd%41";
const KEY_PASSWORD: &str = "key-Pa$$word=2";
const KEYSTORE_PASSWORD: &str = "keystore-Pa$$word=3";

/// What librdkafka holds for `name` in the configuration every orderflow
/// Kafka client starts from.
fn in_librdkafka(kafka: &KafkaSettings, name: &str) -> String {
    kafka
        .client_config(&[])
        .create_native_config()
        .expect("librdkafka takes the configuration")
        .get(name)
        .unwrap_or_else(|e| panic!("librdkafka has no {name}: {e}"))
}

/// Every way orderflow could print its settings.
fn printed(cli: &Cli, kafka: &KafkaSettings, log: &KafkaEventLog) -> String {
    format!("{:?}\n{kafka:?}\n{log:?}\n{:?}", cli.settings, cli.command)
}

/// `ORDERFLOW_KAFKA_CONFIG` with SASL_SSL, SCRAM and every TLS setting:
/// librdkafka holds each value exactly as written (read back from
/// librdkafka's own configuration object), a client is created from it
/// (librdkafka loads `ssl.ca.location` when the client is made), and none
/// of the three secrets shows in the `Debug` of the settings, of the Kafka
/// settings or of the log.
///
/// The flag `--kafka-config` is the same clap argument as the variable
/// `ORDERFLOW_KAFKA_CONFIG` (setting variables would leak into the other
/// tests of this process); the binary tests below use the variable.
#[test]
fn kafka_config_reaches_librdkafka_unchanged_and_is_never_printed() {
    let pki = TestPki::generate().unwrap();
    let ca = pki.ca_cert().display().to_string();
    let expected = [
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "orderflow"),
        ("sasl.password", SASL_PASSWORD),
        ("ssl.ca.location", ca.as_str()),
        ("ssl.endpoint.identification.algorithm", "https"),
        ("ssl.key.password", KEY_PASSWORD),
        ("ssl.keystore.password", KEYSTORE_PASSWORD),
    ];
    let config: Vec<String> = expected
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    // Spaces around entries are allowed, and trimmed.
    let config = config.join(" ; ");
    let cli = Cli::try_parse_from([
        "orderflow",
        "--kafka-brokers",
        "127.0.0.1:9",
        "--kafka-config",
        &config,
        "migrate",
    ])
    .unwrap();
    let kafka = kafka_settings(&cli.settings, "127.0.0.1:9").unwrap();
    for (name, value) in expected {
        assert_eq!(in_librdkafka(&kafka, name), value, "{name}");
    }

    // librdkafka makes a client from it: the CA file is read and parsed.
    let log = KafkaEventLog::new(kafka.clone(), BTreeMap::new()).expect("a client is created");
    let shown = printed(&cli, &kafka, &log);
    for secret in [SASL_PASSWORD, KEY_PASSWORD, KEYSTORE_PASSWORD] {
        assert!(!shown.contains(secret), "{secret} is printed:\n{shown}");
    }
    assert!(shown.contains("SCRAM-SHA-512"), "{shown}");
}

/// The typed settings (`ORDERFLOW_KAFKA_SECURITY_PROTOCOL`, `_SASL_*`,
/// `_SSL_*`) for mutual TLS with SASL: the password arrives byte for byte
/// even with a `;` and spaces in and after it (which
/// `ORDERFLOW_KAFKA_CONFIG` would split and trim), librdkafka loads the
/// CA, the client certificate and its key, and a CA path that does not
/// exist fails naming the setting, without a secret in the error.
#[test]
fn typed_settings_reach_librdkafka_unchanged_and_files_are_loaded() {
    let pki = TestPki::generate().unwrap();
    let password = "semi;colon and spaces ";
    let path = |p: std::path::PathBuf| p.display().to_string();
    let (ca, cert, key) = (
        path(pki.ca_cert()),
        path(pki.client_cert()),
        path(pki.client_key()),
    );
    let args = |ca: &str| {
        Cli::try_parse_from([
            "orderflow",
            "--kafka-brokers",
            "127.0.0.1:9",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-256",
            "--kafka-sasl-username",
            "orderflow",
            "--kafka-sasl-password",
            password,
            "--kafka-ssl-ca-location",
            ca,
            "--kafka-ssl-certificate-location",
            &cert,
            "--kafka-ssl-key-location",
            &key,
            "migrate",
        ])
        .unwrap()
    };
    let cli = args(&ca);
    let kafka = kafka_settings(&cli.settings, "127.0.0.1:9").unwrap();
    for (name, value) in [
        // librdkafka answers with its own spelling of an enumeration.
        ("security.protocol", "sasl_ssl"),
        ("sasl.mechanisms", "SCRAM-SHA-256"),
        ("sasl.username", "orderflow"),
        ("sasl.password", password),
        ("ssl.ca.location", ca.as_str()),
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
    ] {
        assert_eq!(in_librdkafka(&kafka, name), value, "{name}");
    }
    // The one change, librdkafka's own: it drops leading white space from
    // every string setting, a password's included (orderflow hands it
    // over as given).
    let mut leading = kafka.clone();
    leading
        .client_config
        .insert("sasl.password".into(), format!(" {password}"));
    assert_eq!(
        leading.client_config(&[]).get("sasl.password"),
        Some(format!(" {password}").as_str())
    );
    assert_eq!(in_librdkafka(&leading, "sasl.password"), password);

    let log = KafkaEventLog::new(kafka.clone(), BTreeMap::new())
        .expect("librdkafka loads the CA, the certificate and the key");
    let shown = printed(&cli, &kafka, &log);
    assert!(
        !shown.contains(password),
        "the password is printed:\n{shown}"
    );

    let cli = args("/nonexistent/ca.pem");
    let kafka = kafka_settings(&cli.settings, "127.0.0.1:9").unwrap();
    let error = KafkaEventLog::new(kafka, BTreeMap::new())
        .expect_err("a missing CA file fails")
        .to_string();
    assert!(error.contains("ssl.ca.location"), "{error}");
    assert!(!error.contains(password), "{error}");
}

/// An entry of `ORDERFLOW_KAFKA_CONFIG` that is not `name=value` is refused
/// by its position, not printed (it may be a password pasted alone).
#[test]
fn a_malformed_kafka_config_entry_is_not_printed() {
    let cli = Cli::try_parse_from([
        "orderflow",
        "--kafka-config",
        "security.protocol=SASL_SSL;hunter2-alone",
        "migrate",
    ])
    .unwrap();
    let error = kafka_settings(&cli.settings, "127.0.0.1:9")
        .expect_err("refused")
        .to_string();
    assert!(error.contains("entry 2"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

/// The environment of an `orderflow` process on `broker` (a fresh topic
/// prefix) with the librdkafka properties `security` and `extra` as one
/// `ORDERFLOW_KAFKA_CONFIG`, with tansu's work-arounds (see `scaled.rs`:
/// one record per batch, sessions long enough for its slow JoinGroup), then
/// the `more` variables.
fn environment(
    data_dir: &std::path::Path,
    broker: &broker::KafkaBroker,
    security: Vec<(String, String)>,
    extra: &str,
    more: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut entries: Vec<String> = security
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    entries.push("batch.num.messages=1".into());
    entries.push("session.timeout.ms=6000".into());
    entries.push("heartbeat.interval.ms=1000".into());
    if !extra.is_empty() {
        entries.push(extra.into());
    }
    let config = entries.join(";");
    let prefix = broker::fresh_prefix();
    let bootstrap = broker.bootstrap();
    let mut variables = vec![
        ("ORDERFLOW_KAFKA_BROKERS", bootstrap.as_str()),
        ("ORDERFLOW_KAFKA_TOPIC_PREFIX", prefix.as_str()),
        ("ORDERFLOW_KAFKA_PARTITIONS", "2"),
        ("ORDERFLOW_KAFKA_CONFIG", config.as_str()),
    ];
    variables.extend_from_slice(more);
    processes_environment(data_dir, &variables)
}

/// The real binary, every role in one process (`orderflow serve`), over
/// SASL SCRAM-SHA-512 inside mutual TLS, every setting in
/// `ORDERFLOW_KAFKA_CONFIG` (`security.protocol=SASL_SSL`, the SASL
/// user and password, `ssl.ca.location`, `ssl.certificate.location`,
/// `ssl.key.location`): an order goes through the outbox relay, Kafka and
/// every consumer group to `confirmed`. Its log says it runs on Kafka, and
/// the password is nowhere in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orderflow_serves_an_order_over_mutual_tls_and_sasl_scram() {
    let broker = tokio::task::spawn_blocking(broker::shared_authenticated_tls)
        .await
        .unwrap()
        .expect("tansu with --authentication behind the TLS terminator");
    let pki = broker.pki().expect("the terminator's certificates");
    let security = broker::sasl_ssl_config(
        broker::Scram::Sha512,
        broker::SASL_USER,
        broker::SASL_PASSWORD,
        pki,
    );
    let work = tempfile::tempdir().unwrap();
    let env = environment(&work.path().join("data"), broker, security, "", &[]);
    let (mut serve, client) = http_process("serve", "serve", &env, work.path()).await;
    let admin = client.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let product = client.product(&admin, "SASL-MUG", 900, 5).await;
    let shopper = client.shopper("sasl@example.com").await;
    let status = client.order_to_the_end(&shopper, &product, 1).await;
    serve.stop().await;
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert_eq!(status, "confirmed", "log:\n{}", tail(&serve.log, 40));
    assert!(
        log.lines()
            .any(|line| line.contains("adapters") && line.contains("kafka")),
        "the start-up line names the adapters:\n{}",
        tail(&serve.log, 40)
    );
    assert!(
        !log.contains(broker::SASL_PASSWORD),
        "the password is in the log"
    );
}

/// A wrong password stops the real binary at start-up, within seconds,
/// with an error that says Kafka authentication failed. librdkafka's debug
/// output is switched on (`debug=security,conf,broker` in
/// `ORDERFLOW_KAFKA_CONFIG`, `librdkafka=debug` in `RUST_LOG`), so its
/// dump of the client configuration and the SASL exchange are in the
/// output too: the password is in none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_stops_orderflow_at_start_up() {
    const WRONG: &str = "wrong=Pa$$word/42";
    let broker = tokio::task::spawn_blocking(broker::shared_authenticated)
        .await
        .unwrap()
        .expect("tansu with --authentication");
    let security = broker::sasl_config(broker::Scram::Sha256, broker::SASL_USER, WRONG);
    let work = tempfile::tempdir().unwrap();
    let env = environment(
        &work.path().join("data"),
        broker,
        security,
        "debug=security,conf,broker",
        &[("RUST_LOG", "info,librdkafka=debug")],
    );
    let listen = format!("127.0.0.1:{}", orderflow_testkit::free_port());
    let started = std::time::Instant::now();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["--listen", &listen, "api"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("orderflow stops within 60 s")
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    eprintln!("stopped after {took:.1?}: {last}");
    assert!(!output.status.success(), "started:\n{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(
        stderr.contains("Kafka authentication failed"),
        "the error says why:\n{stderr}"
    );
    let all = format!("{stdout}{stderr}");
    eprintln!("{all}");
    assert!(
        all.contains("Client configuration") && all.contains("sasl.password = [redacted]"),
        "librdkafka's configuration dump is in the output, the password redacted"
    );
    assert!(!all.contains(WRONG), "the password is printed");
}
