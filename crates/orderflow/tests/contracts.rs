//! The published contracts are usable by tools nobody here wrote:
//!
//! - a TypeScript client generated from `/openapi.json` by
//!   `openapi-typescript`, used through `openapi-fetch` and type-checked by
//!   `tsc --strict`, runs an order flow against the real server;
//! - `/asyncapi.json` passes the AsyncAPI initiative's own parser
//!   (`@asyncapi/parser`: the spec's JSON Schema and its semantic rules);
//! - every record on the Kafka topics decodes with the CloudEvents Python
//!   SDK (`cloudevents` + `confluent-kafka`) by the Kafka protocol binding,
//!   and validates against its AsyncAPI payload schema; every event type
//!   of the domain shows up.
//!
//! The node tools are pinned in `tests/contracts/package.json` and the
//! Python ones in `scripts/test.sh`, which installs both; a missing tool
//! fails the test and says how to install it. Each test starts its own
//! server on a free loopback port (and tansu for the Kafka test) and stops
//! only what it started.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orderflow_domain::events::EventData;
use orderflow_testkit::kafka::KafkaBroker;
use serde_json::{Value, json};
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Server, command, run};

/// `tests/contracts`: the node project and the scripts.
fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contracts")
}

/// The node project's packages, or a panic that says how to install them.
fn node_modules() -> PathBuf {
    let path = tools().join("node_modules");
    assert!(
        path.join(".package-lock.json").exists(),
        "{} is missing: run ./scripts/test.sh, or `npm ci` in {}",
        path.display(),
        tools().display()
    );
    path
}

/// A program of the node project.
fn node_bin(name: &str) -> PathBuf {
    node_modules().join(".bin").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_openapi_json_runs_an_order_flow() {
    let server = Server::start(&[]).await;
    // The generated types, the flow and its tsconfig in a scratch directory
    // (nothing written to the source tree), resolving packages from
    // tests/contracts/node_modules.
    let work = tempfile::tempdir().unwrap();
    for file in ["client-flow.ts", "tsconfig.json", "package.json"] {
        std::fs::copy(tools().join(file), work.path().join(file)).unwrap();
    }
    std::os::unix::fs::symlink(node_modules(), work.path().join("node_modules")).unwrap();
    let limit = Duration::from_secs(120);
    let openapi = format!("{}/openapi.json", server.base);
    let generator = node_bin("openapi-typescript");
    let args = [openapi.as_str(), "--output", "api.d.ts"];
    run(
        command(&generator, &args, work.path()),
        "openapi-typescript",
        limit,
    )
    .await;
    let tsc = command(&node_bin("tsc"), &["-p", "."], work.path());
    run(tsc, "tsc", limit).await;
    let args = [
        "out/client-flow.js",
        &server.base,
        ADMIN_EMAIL,
        ADMIN_PASSWORD,
    ];
    let flow = command(Path::new("node"), &args, work.path());
    let out = run(flow, "the generated client's flow", limit).await;
    assert!(out.contains("confirmed"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncapi_json_passes_the_asyncapi_parser() {
    node_modules();
    let server = Server::start(&[]).await;
    let url = format!("{}/asyncapi.json", server.base);
    let validate = command(
        Path::new("node"),
        &["validate-asyncapi.mjs", &url],
        &tools(),
    );
    let out = run(validate, "the AsyncAPI parser", Duration::from_secs(60)).await;
    assert!(out.contains("valid AsyncAPI 3.0.0: 7 channels"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kafka_record_decodes_with_the_cloudevents_sdk() {
    let python = Path::new("python3");
    let has_sdk = std::process::Command::new(python)
        .args([
            "-c",
            "import cloudevents.core.bindings.kafka, confluent_kafka, jsonschema",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_sdk,
        "the CloudEvents SDK is missing: run ./scripts/test.sh, or \
         `python3 -m pip install cloudevents==2.2.0 confluent-kafka==2.16.1`"
    );
    let kafka = KafkaBroker::start().expect("tansu starts");
    let bootstrap = kafka.bootstrap();
    let prefix = format!("ce{}.", uuid::Uuid::now_v7().simple());
    // Every kind of event: a confirmed order (then cancelled), an
    // out-of-stock one, a declined payment, a held one, a product view, and (the e-mail
    // provider always failing, one attempt) dead letters on failed.messages.
    let server = Server::start(&[
        "--kafka-brokers",
        &bootstrap,
        "--kafka-topic-prefix",
        &prefix,
        // tansu 0.6 mis-serves fetches inside multi-record batches (see
        // scaled.rs); one record per batch. Real Kafka needs no such setting.
        "--kafka-config",
        "batch.num.messages=1",
        "--sim-email-failure-rate",
        "1",
        "--retry-max-attempts",
        "1",
        "--sim-payment-decline-above-cents",
        "5000",
    ])
    .await;

    let admin = server.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let shopper = server.shopper("ce@example.com").await;
    let product = server.product(&admin, "CE-1", 1000, 20).await;
    let ring = server.product(&admin, "CE-2", 1_000_001, 1).await;
    // A product read: a view, which the API flushes as product.viewed.
    server.get(&format!("/products/{product}"), &shopper).await;
    let mut orders = Vec::new();
    // 2 × 10 € confirmed; 9 × 10 € declined (over 50 €); 19 units with
    // at most 18 left: out of stock; one ring over 10,000 €: held by the
    // fraud check (order.held, fraud.alerted).
    for (product, quantity) in [(&product, 2), (&product, 9), (&product, 19), (&ring, 1)] {
        let body = json!({"items": [{"product_id": product, "quantity": quantity}]});
        let order: Value = server
            .post("/orders", body, Some(&shopper))
            .await
            .json()
            .await
            .unwrap();
        orders.push(order["id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &orders {
        loop {
            let order = server.get(&format!("/orders/{id}"), &shopper).await;
            if ["confirmed", "rejected", "payment_failed", "held"]
                .contains(&order["status"].as_str().unwrap())
            {
                break;
            }
            assert!(Instant::now() < deadline, "order {id} stuck: {order}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The confirmed order, cancelled: order.cancelled and, since it was
    // charged, payment.refund_requested.
    let cancel = server
        .post(
            &format!("/orders/{}/cancel", orders[0]),
            json!({}),
            Some(&shopper),
        )
        .await;
    assert_eq!(cancel.status(), 200, "{}", cancel.text().await.unwrap());

    // Read everything on the topics; again until the relay has published
    // every event type (the dead letters come last).
    let script = tools().join("read_cloudevents.py");
    let asyncapi = format!("{}/asyncapi.json", server.base);
    let all_types: Vec<&str> = EventData::examples()
        .iter()
        .map(EventData::type_name)
        .collect();
    let summary = loop {
        let args = [script.to_str().unwrap(), &bootstrap, &prefix, &asyncapi];
        let reader = command(python, &args, &tools());
        let out = run(reader, "the CloudEvents reader", Duration::from_secs(120)).await;
        let summary: Value = serde_json::from_str(out.trim()).unwrap();
        let missing: Vec<&&str> = all_types
            .iter()
            .filter(|t| summary["types"][**t].as_u64().unwrap_or(0) == 0)
            .collect();
        if missing.is_empty() {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "no {missing:?} on the topics after 90 s: {summary}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("decoded with the CloudEvents SDK: {summary}");
    server.stop().await;
    drop(kafka);
}
