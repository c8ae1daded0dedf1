//! Real `orderflow` processes for multi-process tests (`scaled.rs`,
//! `caches.rs`): started with arguments and environment, logging to a file,
//! stopped with SIGTERM (clean) or SIGKILL (a crash), and restarted alike.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// One orderflow process, restartable with the same arguments.
pub struct Process {
    pub name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    pub starts: usize,
}

impl Process {
    pub fn start(name: &str, args: &[&str], env: &[(String, String)], logs: &Path) -> Process {
        let mut process = Process {
            name: name.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.to_vec(),
            log: logs.join(format!("{name}.log")),
            child: None,
            starts: 0,
        };
        process.spawn();
        process
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("process log file");
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL: no shutdown hook runs, in-flight batches are lost mid-way.
    pub async fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL");
        }
    }

    pub async fn restart_after_kill(&mut self) {
        self.kill_hard().await;
        self.spawn();
    }

    /// Fails the test (with the log's tail) when the process died by itself.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited on its own ({status}); its log ends with:\n{}",
                self.name,
                tail(&self.log, 40)
            );
        }
    }

    /// Waits (bounded) until `url` answers 2xx; fails the test with the
    /// log's tail when the process dies or never answers.
    pub async fn wait_ready(&mut self, url: &str) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            self.assert_running();
            if let Ok(response) = http.get(url).send().await
                && response.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready; log:\n{}",
                self.name,
                tail(&self.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// A temporary working directory for a multi-process test and its `logs`
/// folder, made.
pub fn work_dir() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    (work, logs)
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The settings every process of a multi-process test shares: the data
/// dir (the signing keys), the test admin, no rate limits, instant
/// simulated providers, fraud rules no load test's shoppers break (they
/// order many times a minute; the check still judges every order); then
/// `extra`.
pub fn processes_environment(data_dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    [
        ("ORDERFLOW_DATA_DIR", data_dir.to_str().unwrap()),
        ("ORDERFLOW_ADMIN_EMAIL", super::ADMIN_EMAIL),
        ("ORDERFLOW_ADMIN_PASSWORD", super::ADMIN_PASSWORD),
        ("ORDERFLOW_RATE_LIMITS", "off"),
        ("ORDERFLOW_AUTH_RATE_PER_SEC", "0"),
        ("ORDERFLOW_SIM_EMAIL_LATENCY_MS", "0"),
        ("ORDERFLOW_SIM_SMS_LATENCY_MS", "0"),
        ("ORDERFLOW_SIM_PUSH_LATENCY_MS", "0"),
        ("ORDERFLOW_SIM_PAYMENT_LATENCY_MS", "0"),
        ("ORDERFLOW_FRAUD_MAX_ORDERS", "1000000"),
        ("ORDERFLOW_FRAUD_MAX_TOTAL_CENTS", "1000000000000"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs `orderflow ARGS…` to completion with `env`; its stdout.
pub async fn orderflow(args: &[&str], env: &[(String, String)]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .await
        .expect("orderflow runs");
    assert!(
        output.status.success(),
        "orderflow {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An `orderflow` process serving HTTP on a free port: the process and a
/// client for it, once `/readyz` answers.
pub async fn http_process(
    name: &str,
    role: &str,
    env: &[(String, String)],
    logs: &Path,
) -> (Process, super::Client) {
    let listen = format!("127.0.0.1:{}", orderflow_testkit::free_port());
    let mut process = Process::start(name, &["--listen", &listen, role], env, logs);
    let client = super::Client::new(format!("http://{listen}"));
    process.wait_ready(&format!("{}/readyz", client.base)).await;
    (process, client)
}
