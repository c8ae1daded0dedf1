//! The browser front in a real headless Chromium: a shopper's and an
//! admin's whole journey (`tests/browser/journey.py`, Playwright for Python
//! pointed at Debian's `chromium`), every page checked with axe-core and
//! for what its first load transfers, and failing on any console error or
//! failed request. Screenshots of every step go to
//! `$CARGO_TARGET_TMPDIR/browser-journey/`.
//!
//! The server is orderflow in this process with a small catalog in two
//! categories, a payment provider slow enough (1.5 s) that an order page
//! shows `pending` before it turns `confirmed` by itself, a fraud rule that
//! holds a shopper's third order within five minutes, and quick retries, so
//! a failing SMS reaches the dead-letter queue in seconds.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::{ADMIN_EMAIL, ADMIN_PASSWORD, Server, command, run};

/// `tests/browser`: the journey, and the vendored axe-core.
fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("ORDERFLOW_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test.sh, or `apt-get install chromium`",
        path.display()
    );
    path
}

fn playwright() {
    let found = std::process::Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "Playwright for Python is missing: run ./scripts/test.sh, or \
         `python3 -m pip install playwright==1.65.2` (it drives Debian's chromium, so no \
         `playwright install`)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shopper_and_an_admin_go_through_the_shop_and_the_console() {
    let chromium = chromium();
    playwright();
    let server = Server::start(&[
        "--sim-payment-latency-ms",
        "1500",
        "--sim-sms-latency-ms",
        "50",
        "--fraud-max-orders",
        "2",
        "--retry-max-attempts",
        "2",
        "--retry-base-ms",
        "100",
        "--retry-max-ms",
        "200",
    ])
    .await;
    let admin = server.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    for (sku, name, price, category, description) in [
        (
            "WEB-KETTLE",
            "Steel Kettle",
            4_500,
            "Kitchen",
            "Boils a litre in two minutes.",
        ),
        (
            "WEB-MUG",
            "Blue Mug",
            1_200,
            "Kitchen",
            "Stoneware, 300 ml.",
        ),
        ("WEB-POT", "Tea Pot", 2_900, "Kitchen", "For four cups."),
        (
            "WEB-LAMP",
            "Desk Lamp",
            3_900,
            "Home",
            "Warm light for late reading.",
        ),
        (
            "WEB-CANDLE",
            "Scented Candle",
            900,
            "Home",
            "Forty hours of cedar.",
        ),
    ] {
        let body = json!({"sku": sku, "name": name, "price_cents": price, "currency": "EUR",
            "stock": 50, "category": category, "description": description});
        let created = server.post("/products", body, Some(&admin)).await;
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    }

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-journey");
    let _ = std::fs::remove_dir_all(&out);
    let script = tools().join("journey.py");
    let mut journey = command(
        Path::new("python3"),
        &[
            script.to_str().unwrap(),
            &server.base,
            ADMIN_EMAIL,
            ADMIN_PASSWORD,
            out.to_str().unwrap(),
        ],
        &tools(),
    );
    journey.env("ORDERFLOW_CHROMIUM", &chromium);
    run(journey, "the browser journey", Duration::from_secs(300)).await;
    let shots = std::fs::read_dir(&out).unwrap().count();
    assert!(shots >= 22, "{shots} screenshots in {}", out.display());
    eprintln!("screenshots: {}", out.display());
    server.stop().await;
}
