//! Fuzzes the whole API from its own OpenAPI document with schemathesis
//! (PyPI; `scripts/test.sh` installs the pinned version).
//!
//! The app runs in-process on a free port with a fresh data dir, a shopper
//! is registered and logged in, and schemathesis sends generated valid and
//! invalid requests to every operation with that shopper's token, running
//! every check it has: no 5xx, every status code, content type, header and
//! body as the document declares them, invalid input refused, auth not
//! ignored. Any failure fails this test with schemathesis' report.
//!
//! A missing schemathesis fails the test (it never silently skips): the
//! fuzz run is part of the "done".

use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use orderflow::App;
use orderflow::cli::Cli;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The version `scripts/test.sh` installs; the one this test was written against.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Examples per operation and phase: enough to find shape mismatches and
/// 500s, small enough for the whole run to take about a minute.
const MAX_EXAMPLES: &str = "60";
/// The run is killed (and the test fails) past this.
const RUN_LIMIT: Duration = Duration::from_secs(240);

const PASSWORD: &str = "a long enough password";

fn schemathesis() -> std::path::PathBuf {
    let found = std::process::Command::new("schemathesis")
        .arg("--version")
        .output();
    match found {
        Ok(output) if output.status.success() => "schemathesis".into(),
        _ => panic!(
            "schemathesis is not installed, so the API fuzz run cannot happen. \
             Run ./scripts/test.sh (it installs it) or `python3 -m pip install \
             schemathesis=={SCHEMATHESIS_VERSION}`."
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_no_server_error_and_no_response_that_breaks_the_document() {
    let program = schemathesis();
    let data_dir = tempfile::tempdir().unwrap();
    let cli = Cli::try_parse_from([
        "orderflow",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-email",
        "admin@example.com",
        "--admin-password",
        "admin-password-for-tests",
        // The fuzzer's request rate would trip every limit; limits are
        // tested on their own, here the contract is.
        "--auth-rate-per-sec",
        "0",
        "--rate-limits",
        "off",
        "serve",
    ])
    .unwrap();
    let app = std::sync::Arc::new(App::build(cli.settings).await.unwrap());
    let listener = app.bind().await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { app.run(listener, true, shutdown).await })
    };

    // A shopper to fuzz as, and one product so order operations have
    // something real to reach.
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value, token: Option<&str>| {
        let mut request = http.post(format!("{base}/api/v1{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let registered = post(
        "/auth/register",
        json!({"email": "fuzz@example.com", "password": PASSWORD, "name": "Fuzz"}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(registered.status(), 201);
    let login = |email: &'static str, password: &'static str| {
        let post = &post;
        async move {
            let body: Value = post(
                "/auth/login",
                json!({"email": email, "password": password, "device": "fuzz"}),
                None,
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let token = login("fuzz@example.com", PASSWORD).await;
    let admin = login("admin@example.com", "admin-password-for-tests").await;
    let product = post(
        "/products",
        json!({"sku": "FUZZ-1", "name": "Fuzz", "price_cents": 100, "currency": "EUR", "stock": 1000}),
        Some(&admin),
    )
    .await
    .unwrap();
    assert_eq!(product.status(), 201);

    let report_dir = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new(program);
    command
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["--checks", "all"])
        // "Schema-valid request accepted" cannot hold for rules JSON Schema
        // does not express (a common password, an e-mail without a dot in
        // its domain, an order of an unknown product): those are refused
        // with 422 by design, and the refusal itself is checked (status,
        // content type, problem document) by the other checks.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--seed", "6"])
        // One worker: Python 3.11's `ast` is not thread-safe, and hypothesis
        // parses lambdas with it ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        // Logging out (this device, all devices, or this session by id,
        // which schemathesis finds in GET /me/sessions) revokes the token
        // every other operation is fuzzed with, turning the rest of the run
        // into 401s; those routes are covered by the API tests.
        .args(["--exclude-path-regex", "logout|/me/sessions/"])
        .args(["--report-dir", report_dir.path().to_str().unwrap()])
        // Nothing left behind in the source tree: no example database, and
        // the run's working directory is a temporary one.
        .args(["--generation-database", "none"])
        .current_dir(report_dir.path())
        .arg("--no-color")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("schemathesis did not finish within {RUN_LIMIT:?}"))
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "schemathesis took {:?}\n{stdout}\n{stderr}",
        started.elapsed()
    );

    shutdown.cancel();
    server.await.unwrap().unwrap();
    assert!(
        output.status.success(),
        "schemathesis found problems (exit {:?}); its report is above",
        output.status.code()
    );
}
