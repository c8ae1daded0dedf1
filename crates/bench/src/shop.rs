//! The bench's HTTP client for orderflow: setup (catalog ids, shoppers), the
//! requests of the workloads, the follow-up reads, and `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::BenchError;

#[derive(Clone)]
pub struct Shop {
    http: reqwest::Client,
    base: String,
}

/// What one workload request ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A refusal that is a business answer, not a failure (out of stock).
    Refused,
    Error,
}

impl Outcome {
    fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 | 304 => Outcome::Ok,
            409 => Outcome::Refused,
            _ => Outcome::Error,
        }
    }
}

pub const SHOPPER_PASSWORD: &str = "bench-shopper-password";

impl Shop {
    pub fn new(base: &str, connections: usize) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("a default HTTP client builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Every product id, in catalog order.
    pub async fn product_ids(&self) -> Result<Vec<uuid::Uuid>, BenchError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url("/api/v1/products?limit=100");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = self
                .http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(id) = item["id"].as_str().and_then(|s| s.parse().ok()) {
                    ids.push(id);
                }
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        if ids.is_empty() {
            return Err(BenchError::Setup(
                "the catalog is empty; seed it (`orderflow seed`)".into(),
            ));
        }
        Ok(ids)
    }

    /// Registers (or reuses) and logs in `count` shoppers; returns their access tokens.
    pub async fn shoppers(&self, count: usize, run_id: &str) -> Result<Vec<String>, BenchError> {
        let logins = (0..count).map(|i| async move {
            let email = format!("bench-{run_id}-{i}@example.com");
            let registered = self
                .http
                .post(self.url("/api/v1/auth/register"))
                .json(&json!({"email": email, "password": SHOPPER_PASSWORD, "name": format!("Bench shopper {i}")}))
                .send()
                .await?;
            if !(registered.status() == StatusCode::CREATED || registered.status() == StatusCode::CONFLICT) {
                return Err(BenchError::Setup(format!("registering {email}: HTTP {}", registered.status())));
            }
            self.login(&email, SHOPPER_PASSWORD).await
        });
        // A few at a time: password hashing is deliberately slow.
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(logins).buffered(4).collect().await;
        let tokens = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(tokens)
    }

    pub async fn browse(&self, product_id: uuid::Uuid) -> Outcome {
        match self
            .http
            .get(self.url(&format!("/api/v1/products/{product_id}")))
            .send()
            .await
        {
            Ok(response) => {
                let outcome = Outcome::of(response.status());
                // Read the body so the connection is reused.
                let _ = response.bytes().await;
                outcome
            }
            Err(_) => Outcome::Error,
        }
    }

    /// Places a one-line order; the order id when it was accepted.
    pub async fn order(
        &self,
        token: &str,
        product_id: uuid::Uuid,
        quantity: u32,
    ) -> (Outcome, Option<uuid::Uuid>) {
        let response = self
            .http
            .post(self.url("/api/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"items": [{"product_id": product_id, "quantity": quantity}]}))
            .send()
            .await;
        match response {
            Ok(response) => {
                let outcome = Outcome::of(response.status());
                let id = match response.json::<Value>().await {
                    Ok(body) if outcome == Outcome::Ok => {
                        body["id"].as_str().and_then(|s| s.parse().ok())
                    }
                    _ => None,
                };
                (outcome, id)
            }
            Err(_) => (Outcome::Error, None),
        }
    }

    pub async fn get_order(&self, token: &str, id: uuid::Uuid) -> Result<Value, BenchError> {
        Ok(self
            .http
            .get(self.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub async fn notifications(&self, token: &str) -> Result<Value, BenchError> {
        Ok(self
            .http
            .get(self.url("/api/v1/me/notifications?limit=200"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// An admin's access token.
    pub async fn login(&self, email: &str, password: &str) -> Result<String, BenchError> {
        let login: Value = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password, "device": "bench"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        login["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Setup("login answered without a token".into()))
    }

    /// Events not yet handled, summed over every consumer group (admin only).
    pub async fn total_lag(&self, admin_token: &str) -> Result<i64, BenchError> {
        let consumers: Value = self
            .http
            .get(self.url("/api/v1/admin/consumers"))
            .bearer_auth(admin_token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(consumers["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g["lag"].as_i64())
            .sum())
    }

    pub async fn metrics(&self) -> Result<MetricsSnapshot, BenchError> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(MetricsSnapshot::parse(&text))
    }
}

/// The server's own counters the report needs, summed over their labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub db_queries: f64,
    /// Queries that read the catalog (product by id, by ids, pages).
    pub catalog_db_reads: f64,
    pub cache_hits: f64,
    pub cache_misses: f64,
    pub by_name: BTreeMap<String, f64>,
}

impl MetricsSnapshot {
    /// Parses Prometheus text format (only the samples, not the comments).
    pub fn parse(text: &str) -> Self {
        let mut snapshot = MetricsSnapshot::default();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            *snapshot.by_name.entry(name.to_owned()).or_default() += value;
            match name {
                "orderflow_db_queries_total" => {
                    snapshot.db_queries += value;
                    if [
                        "op=\"product\"",
                        "op=\"products_by_ids\"",
                        "op=\"list_products\"",
                    ]
                    .iter()
                    .any(|op| series.contains(op))
                    {
                        snapshot.catalog_db_reads += value;
                    }
                }
                "orderflow_cache_hits_total" => snapshot.cache_hits += value,
                "orderflow_cache_misses_total" => snapshot.cache_misses += value,
                _ => {}
            }
        }
        snapshot
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            db_queries: self.db_queries - earlier.db_queries,
            catalog_db_reads: self.catalog_db_reads - earlier.catalog_db_reads,
            cache_hits: self.cache_hits - earlier.cache_hits,
            cache_misses: self.cache_misses - earlier.cache_misses,
            by_name: self
                .by_name
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v - earlier.by_name.get(k).copied().unwrap_or(0.0),
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP x\n# TYPE orderflow_db_queries_total counter\n\
            orderflow_db_queries_total{op=\"product\"} 7\n\
            orderflow_db_queries_total{op=\"insert_order\"} 3\n\
            orderflow_cache_hits_total{layer=\"l1\",kind=\"product\"} 90\n\
            orderflow_cache_misses_total{layer=\"l1\",kind=\"product\"} 10\n\
            orderflow_dead_letters 2\n";
        let s = MetricsSnapshot::parse(text);
        assert_eq!(s.db_queries, 10.0);
        assert_eq!(s.catalog_db_reads, 7.0);
        assert_eq!((s.cache_hits, s.cache_misses), (90.0, 10.0));
        assert_eq!(s.by_name["orderflow_dead_letters"], 2.0);
        let later = MetricsSnapshot::parse(&text.replace("} 7", "} 9"));
        assert_eq!(later.since(&s).db_queries, 2.0);
    }
}
