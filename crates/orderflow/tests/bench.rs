//! `orderflow bench` itself, checked against a short real run: both
//! architectures started as child processes, every report field present and
//! plausible, the JSON and the plots written.

use std::path::Path;
use std::process::Command;

/// Runs `orderflow bench --out DIR ARGS` to completion and checks that it
/// succeeded: its stdout, its report.json and the dir (kept for the plots).
fn bench(args: &[&str]) -> (String, serde_json::Value, tempfile::TempDir) {
    let (succeeded, stdout, report, out) = bench_run(args);
    assert!(succeeded, "orderflow bench {args:?} failed:\n{stdout}");
    (stdout, report, out)
}

/// Runs `orderflow bench --out DIR ARGS` to completion: whether it exited
/// 0, its stdout (with its stderr after it), its report.json and the dir.
fn bench_run(args: &[&str]) -> (bool, String, serde_json::Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("bench")
        .arg("--out")
        .arg(out.path())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("orderflow bench runs");
    let stdout = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read(out.path().join("report.json"))
        .unwrap_or_else(|e| panic!("no report.json ({e}):\n{stdout}"));
    let report = serde_json::from_slice(&report).unwrap();
    (output.status.success(), stdout, report, out)
}

/// The plot `name` in `out` is a PNG with something drawn in it.
/// Whether one of the report's notes starts with `prefix`.
fn has_note(report: &serde_json::Value, prefix: &str) -> bool {
    report["notes"]
        .as_array()
        .expect("the report has notes")
        .iter()
        .any(|note| note.as_str().is_some_and(|note| note.starts_with(prefix)))
}

fn assert_png(out: &Path, name: &str) {
    let bytes = std::fs::read(out.join(name)).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 1_000,
        "{name}"
    );
}

#[test]
fn a_short_bench_run_reports_every_field_and_writes_plots() {
    let (stdout, report, out) = bench(&[
        "--duration-secs",
        "2",
        "--warmup-secs",
        "1",
        "--users",
        "2",
        "--shoppers",
        "3",
        "--follow-orders",
        "3",
        "--fail-secs",
        "2",
        "--fail",
        "sms=0.5",
        "--browse-percent",
        "80",
        // Wait for the consumers to finish everything (bounded), so the
        // followed orders have their confirmation and e-mail whatever the
        // machine's speed; the figures themselves are not asserted.
        "--drain-timeout-secs",
        "240",
    ]);
    for metric in [
        "response time p99",
        "throughput",
        "catalog reads hitting the DB",
        "orders failed, failing provider",
    ] {
        assert!(stdout.contains(metric), "the table has {metric}:\n{stdout}");
    }

    // The generator yields the cores to the servers (the priority module).
    assert_eq!(report["settings"]["generator_nice"], 10, "{report}");
    assert!(
        has_note(&report, "the load generator ran at nice"),
        "the report says the generator ran lowered: {}",
        report["notes"]
    );

    let architectures = report["architectures"].as_array().unwrap();
    assert_eq!(architectures.len(), 2);
    let (v1, v2) = (&architectures[0], &architectures[1]);
    assert_eq!(
        (v1["name"].as_str(), v2["name"].as_str()),
        (Some("v1"), Some("v2"))
    );
    for arch in architectures {
        assert!(arch["requests"].as_u64().unwrap() > 0, "{arch}");
        assert!(arch["throughput_rps"].as_f64().unwrap() > 0.0);
        let latency = &arch["latency"];
        let (p50, p99, max) = (
            latency["p50_ms"].as_f64().unwrap(),
            latency["p99_ms"].as_f64().unwrap(),
            latency["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{latency}");
        assert!(
            arch["error_rate"].as_f64().unwrap() <= 0.01,
            "no errors without failing providers: {arch}"
        );
        assert!(arch["db_queries_per_request"].as_f64().unwrap() > 0.0);
        assert!(
            arch["confirm_p50_ms"].as_f64().unwrap() > 0.0,
            "orders were followed to confirmed: {arch}"
        );
        assert!(
            arch["email_p50_ms"].as_f64().is_some(),
            "and to their e-mail: {arch}"
        );
        for milestone in ["reserved", "sms", "push", "points"] {
            for percentile in ["p50", "p99"] {
                let field = format!("{milestone}_{percentile}_ms");
                assert!(
                    arch[&field].as_f64().is_some_and(|ms| ms >= 0.0),
                    "{field} was measured: {arch}"
                );
            }
        }
        assert!(
            arch["order_failure_rate_with_failing_provider"]
                .as_f64()
                .is_some()
        );
        assert!(arch["failing_phase_orders"].as_u64().unwrap() > 0);
    }
    // The architectures differ the way they must: v1 reads the catalog from the
    // database every time, v2 from its cache; with the SMS provider failing
    // half the calls, v1 fails orders and v2 accepts them all.
    assert_eq!(v1["catalog_reads_from_db"].as_f64().unwrap(), 1.0);
    assert_eq!(v1["cache_hit_ratio"].as_f64().unwrap(), 0.0);
    assert!(v2["cache_hit_ratio"].as_f64().unwrap() > 0.5, "{v2}");
    assert!(
        v1["order_failure_rate_with_failing_provider"]
            .as_f64()
            .unwrap()
            > 0.0,
        "{v1}"
    );
    assert_eq!(
        v2["order_failure_rate_with_failing_provider"]
            .as_f64()
            .unwrap(),
        0.0,
        "{v2}"
    );

    let svg = std::fs::read(out.path().join("latency-percentiles.svg")).unwrap();
    assert!(svg.len() > 1_000, "the SVG has content");
    assert_png(out.path(), "latency-percentiles.png");
}

/// `--sustained` on v2 with a tiny ladder: every step is reported with its
/// verdict and the reason when not held, the highest rate held is consistent
/// with the steps, and the plots are written.
#[test]
fn a_short_sustained_run_reports_every_step() {
    let (stdout, report, out) = bench(&[
        "--sustained",
        "--architectures",
        "v2",
        "--sustained-rates",
        "5,10",
        "--sustained-step-secs",
        "2",
        "--shoppers",
        "4",
    ]);
    assert!(stdout.contains("highest order rate held"), "{stdout}");

    let sustained = report["sustained"].as_array().expect("a sustained section");
    assert_eq!(sustained.len(), 1);
    let v2 = &sustained[0];
    assert_eq!(v2["name"].as_str(), Some("v2"));
    assert_eq!(v2["lag_exported"].as_bool(), Some(true), "{v2}");
    let steps = v2["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "{v2}");
    assert_eq!(steps[0]["offered_rps"].as_f64(), Some(5.0));
    for step in steps {
        assert!(step["requests"].as_u64().unwrap() > 0, "{step}");
        assert!(
            step["lag_samples"]
                .as_array()
                .is_some_and(|samples| !samples.is_empty()),
            "lag was sampled during the step: {step}"
        );
        let held = step["held"].as_bool().unwrap();
        assert_eq!(
            held,
            step["not_held_because"]
                .as_array()
                .is_none_or(|reasons| reasons.is_empty()),
            "a step not held says why: {step}"
        );
    }
    let highest_held = steps
        .iter()
        .take_while(|step| step["held"].as_bool() == Some(true))
        .filter_map(|step| step["offered_rps"].as_f64())
        .last();
    assert_eq!(v2["max_held_rps"].as_f64(), highest_held, "{v2}");
    for plot in ["sustained-confirm-p99.png", "sustained-lag.png"] {
        assert_png(out.path(), plot);
    }
}

/// `--read-ceiling`: the product read, `/healthz` and the bare listener are
/// each measured in both rounds without errors, the product read answered
/// the same bytes the bare listener serves, shares are taken of the bare
/// listener, the table is printed and the plot written.
#[test]
fn a_short_read_ceiling_run_measures_three_servers() {
    let (stdout, report, out) = bench(&[
        "--read-ceiling",
        "--users",
        "4",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "1",
    ]);
    assert!(stdout.contains("read ceiling: 4 connections"), "{stdout}");

    // Not lowered here: the bare listener answers as fast as the clients send.
    assert_eq!(report["settings"]["generator_nice"], 0, "{report}");
    assert!(
        has_note(
            &report,
            "the load generator and the servers it started shared the cores"
        ),
        "{}",
        report["notes"]
    );

    let ceiling = &report["ceiling"];
    let rows = ceiling["rows"].as_array().expect("a ceiling section");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["product read", "healthz", "bare axum"], "{ceiling}");
    for row in rows {
        let rounds = row["requests_per_sec"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{row}");
        assert!(
            rounds.iter().all(|r| r.as_f64().unwrap() > 0.0),
            "every round answered: {row}"
        );
        assert_eq!(row["errors"].as_u64(), Some(0), "{row}");
        let cpu = row["cpu_us_per_request"].as_array().unwrap();
        assert_eq!(cpu.len(), 2, "{row}");
        assert!(
            cpu.iter().all(|us| us.as_f64().is_some_and(|us| us > 0.0)),
            "every round's CPU per request was read: {row}"
        );
    }
    assert!(
        rows[0]["url"]
            .as_str()
            .unwrap()
            .contains("/api/v1/products/"),
        "{ceiling}"
    );
    assert!(ceiling["body_bytes"].as_u64().unwrap() > 50, "{ceiling}");
    assert_png(out.path(), "read-ceiling.png");
}

/// `--staleness`: both setups (one `serve`; `serve` + `api` on Redis) read,
/// order and edit at once without errors, every read is judged against the
/// reference reads of the database, the table is printed and the plot
/// written. How stale the reads were is a measurement, not asserted here.
#[test]
fn a_short_staleness_run_judges_every_read_of_both_setups() {
    let (stdout, report, out) = bench(&[
        "--staleness",
        "--users",
        "4",
        "--rate",
        "20",
        "--shoppers",
        "3",
        "--duration-secs",
        "2",
        "--warmup-secs",
        "1",
    ]);
    assert!(
        stdout.contains("staleness: 4 readers, 20 orders/s"),
        "{stdout}"
    );

    let run = &report["staleness"];
    let scenarios = run["scenarios"].as_array().expect("a staleness section");
    let names: Vec<&str> = scenarios
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["embedded", "two APIs on Redis"], "{run}");
    for (scenario, processes) in scenarios.iter().zip([1, 2]) {
        let count = |field: &str| {
            scenario[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field}: {scenario}"))
        };
        assert_eq!(count("api_processes"), processes, "{scenario}");
        for errors in ["read_errors", "order_errors", "edit_errors"] {
            assert_eq!(count(errors), 0, "{scenario}");
        }
        assert!(
            count("reads") > 0 && count("read_requests") > 0,
            "{scenario}"
        );
        assert!(
            count("orders_accepted") > 0 && count("admin_edits") > 0,
            "{scenario}"
        );
        assert!(count("reference_reads") > 0, "{scenario}");
        // Orders and edits went on during the measured seconds, and the
        // reference reader saw the versions they made.
        assert!(count("changes") > 0, "{scenario}");
        // A read certainly stale was certainly behind; no read counts twice.
        assert!(
            count("stale_certain") <= count("behind_at_all"),
            "{scenario}"
        );
        assert!(
            count("stale_certain") + count("stale_possible") <= count("reads"),
            "{scenario}"
        );
        assert_eq!(
            scenario["behind_at_most"]["count"].as_u64(),
            Some(count("reads")),
            "every read is judged: {scenario}"
        );
        let ratio = scenario["served_without_database"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{scenario}");
    }
    assert_png(out.path(), "staleness.png");
}

/// `bench live`: every connection opens and stays open, and each accepted
/// order's four steps (pending, reserved, paid, confirmed) reach its
/// shopper's connection, in order, at every rate; the memory per idle
/// connection is measured, the table printed and the plots written.
#[test]
fn a_short_live_run_delivers_every_order_step_to_its_shopper() {
    let (stdout, report, out) = bench(&[
        "live",
        "--connections",
        "200",
        "--shoppers",
        "10",
        "--rate",
        "20,40",
        "--duration-secs",
        "2",
        "--idle-secs",
        "1",
        "--drain-secs",
        "3",
    ]);
    assert!(
        stdout.contains("live: 200 of 200 connections open"),
        "{stdout}"
    );
    let live = &report["live"];
    assert_eq!(live["connections_open"], 200, "{live}");
    assert_eq!(live["connect_errors"], 0, "{live}");
    assert_eq!(live["dropped"], 0, "no connection ended by itself: {live}");
    assert_eq!(live["closed"], serde_json::json!({}), "none closed: {live}");
    assert!(live["idle_kib_per_connection"].is_f64(), "{live}");
    let steps = live["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "one step per rate: {live}");
    for step in steps {
        let accepted = step["orders_accepted"].as_u64().unwrap();
        assert!(accepted > 0, "{step}");
        assert_eq!(step["order_errors"], 0, "{step}");
        assert_eq!(
            step["order_messages"]["count"].as_u64().unwrap(),
            4 * accepted,
            "every step of every order reached its shopper: {step}"
        );
        assert_eq!(step["out_of_order"], 0, "{step}");
        assert!(step["messages_per_sec"].as_f64().unwrap() > 0.0, "{step}");
    }
    assert_png(out.path(), "live-latency.png");
    assert_png(out.path(), "live-messages.png");
}

/// A short soak (75 s, seed 4: the payment provider down for 15 s and the
/// worker process SIGKILLed): both faults injected and healed, the lag
/// drained, the accounting exact, the plots written. Memory is not judged:
/// 75 s of a debug build is no soak (its verdict is reported, and a run
/// that fails only on it still ends with exit 1, so it is checked that
/// nothing else failed).
#[test]
fn a_short_soak_injects_its_faults_and_accounts_for_every_order() {
    let (succeeded, stdout, report, out) = bench_run(&[
        "--soak",
        "75s",
        "--rate",
        "40",
        "--shoppers",
        "10",
        "--seed",
        "4",
    ]);
    let soak = &report["soak"];
    assert!(
        succeeded || soak["memory_held"] == false,
        "only the memory verdict may fail a run this short:\n{stdout}"
    );
    let faults: Vec<&str> = soak["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fault"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(faults, ["worker_killed", "provider_down"], "{stdout}");
    for fault in soak["faults"].as_array().unwrap() {
        assert!(fault["trouble"].is_null(), "{fault}");
    }
    assert!(soak["drained_after_secs"].is_number(), "{stdout}");
    let accounting = &soak["accounting"];
    let accepted = accounting["accepted"].as_u64().unwrap();
    assert!(accepted > 100, "{stdout}");
    for zero in [
        "missing",
        "not_final",
        "points_wrong",
        "stock_wrong",
        "dead_letters",
    ] {
        assert_eq!(accounting[zero], 0, "{zero}:\n{stdout}");
    }
    let confirmed = accounting["by_status"]["confirmed"].as_u64().unwrap();
    assert!(confirmed >= accepted, "{stdout}");
    let effects = accounting["effects"].as_array().unwrap();
    assert_eq!(effects.len(), 4, "e-mail, charge, SMS, push");
    for effect in effects {
        assert_eq!(effect["expected"].as_u64(), Some(confirmed), "{effect}");
        assert_eq!(effect["once"].as_u64(), Some(confirmed), "{effect}");
        assert_eq!(effect["more_than_once"], 0, "{effect}");
        assert_eq!(effect["unexpected"], 0, "{effect}");
    }
    let charges = effects
        .iter()
        .find(|e| e["effect"].as_str().unwrap().starts_with("charge"))
        .unwrap();
    assert!(
        charges["refused_calls"].as_u64().unwrap() > 0,
        "the payment provider was down: {charges}"
    );
    let samples = soak["samples"].as_array().unwrap();
    assert!(samples.len() > 20, "{}", samples.len());
    assert!(
        samples.iter().any(|s| s["worker_rss_kib"].is_null()),
        "the worker was down for a while"
    );
    let lives: Vec<&str> = soak["memory"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["process"].as_str().unwrap())
        .collect();
    assert_eq!(lives.len(), 3, "api and the worker's two lives: {lives:?}");
    assert!(
        lives[1].starts_with("worker (pid ") && lives[1] != lives[2],
        "{lives:?}"
    );
    for table in [
        "accounting",
        "memory (api)",
        "memory (worker (pid",
        "worker SIGKILLed",
    ] {
        assert!(stdout.contains(table), "{table}:\n{stdout}");
    }
    for plot in ["soak-memory.png", "soak-lag.png", "soak-p99.png"] {
        assert_png(out.path(), plot);
    }
}
