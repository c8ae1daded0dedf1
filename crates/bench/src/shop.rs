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

/// A shopper the bench registered: its user id (unknown for an account
/// that existed already) and its access token.
#[derive(Debug, Clone)]
pub struct Shopper {
    pub id: Option<uuid::Uuid>,
    pub token: String,
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

    /// `GET path` (as `token`'s user when given), a success expected: the
    /// JSON body.
    async fn get_json(&self, path: &str, token: Option<&str>) -> Result<Value, BenchError> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(request.send().await?.error_for_status()?.json().await?)
    }

    /// Every product id, in catalog order.
    pub async fn product_ids(&self) -> Result<Vec<uuid::Uuid>, BenchError> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/api/v1/products?limit=100".to_owned();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get_json(&path, None).await?;
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
        let shoppers = self.registered_shoppers(count, run_id).await?;
        Ok(shoppers.into_iter().map(|shopper| shopper.token).collect())
    }

    /// Registers (or reuses) and logs in `count` shoppers.
    pub async fn registered_shoppers(
        &self,
        count: usize,
        run_id: &str,
    ) -> Result<Vec<Shopper>, BenchError> {
        let logins = (0..count).map(|i| async move {
            let email = format!("bench-{run_id}-{i}@example.com");
            let registered = self
                .http
                .post(self.url("/api/v1/auth/register"))
                .json(&json!({"email": email, "password": SHOPPER_PASSWORD, "name": format!("Bench shopper {i}")}))
                .send()
                .await?;
            let id = match registered.status() {
                StatusCode::CREATED => registered.json::<Value>().await?["id"]
                    .as_str()
                    .and_then(|id| id.parse().ok()),
                StatusCode::CONFLICT => None,
                status => {
                    return Err(BenchError::Setup(format!("registering {email}: HTTP {status}")));
                }
            };
            let token = self.login(&email, SHOPPER_PASSWORD).await?;
            Ok(Shopper { id, token })
        });
        // A few at a time: password hashing is deliberately slow.
        use futures::StreamExt;
        let results: Vec<_> = futures::stream::iter(logins).buffered(4).collect().await;
        results.into_iter().collect()
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
        let (outcome, accepted) = self.place(token, product_id, quantity).await;
        (outcome, accepted.map(|(id, _)| id))
    }

    /// Places a one-line order; (order id, total in cents) when it was accepted.
    pub async fn place(
        &self,
        token: &str,
        product_id: uuid::Uuid,
        quantity: u32,
    ) -> (Outcome, Option<(uuid::Uuid, i64)>) {
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
                let accepted = match response.json::<Value>().await {
                    Ok(body) if outcome == Outcome::Ok => body["id"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .map(|id| (id, body["total_cents"].as_i64().unwrap_or(0))),
                    _ => None,
                };
                (outcome, accepted)
            }
            Err(_) => (Outcome::Error, None),
        }
    }

    /// The caller's loyalty points (`/me/points`).
    pub async fn points(&self, token: &str) -> Result<i64, BenchError> {
        let view = self.get_json("/api/v1/me/points", Some(token)).await?;
        view["points"]
            .as_i64()
            .ok_or_else(|| BenchError::Setup("/me/points answered without points".into()))
    }

    /// Sets each product's stock (admin only), a few at a time: reads the
    /// product and writes it back with `stock` changed.
    pub async fn restock_all(
        &self,
        admin_token: &str,
        products: &[uuid::Uuid],
        stock: i64,
    ) -> Result<(), BenchError> {
        use futures::StreamExt;
        let updates = products.iter().map(|id| {
            self.edit_product(admin_token, *id, |product| product["stock"] = json!(stock))
        });
        let results: Vec<_> = futures::stream::iter(updates)
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// An admin edit: reads the product, applies `change` to it and writes
    /// every field back (`PUT`). Fields the product has but `change` leaves
    /// alone are written as read, so edit only products nothing else writes
    /// meanwhile when `stock` is among them.
    pub async fn edit_product(
        &self,
        admin_token: &str,
        product_id: uuid::Uuid,
        change: impl FnOnce(&mut Value),
    ) -> Result<(), BenchError> {
        let path = format!("/api/v1/products/{product_id}");
        let mut product = self.get_json(&path, None).await?;
        change(&mut product);
        self.http
            .put(self.url(&path))
            .bearer_auth(admin_token)
            .json(&json!({
                "sku": product["sku"], "name": product["name"], "price_cents": product["price_cents"],
                "currency": product["currency"], "stock": product["stock"],
            }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// `GET /products/{id}`: the version it showed.
    pub async fn product_version(&self, product_id: uuid::Uuid) -> Result<i64, BenchError> {
        let product = self
            .get_json(&format!("/api/v1/products/{product_id}"), None)
            .await?;
        product["version"]
            .as_i64()
            .ok_or_else(|| BenchError::Setup(format!("product {product_id} has no version")))
    }

    /// The first page of the product list (`limit` items): each item's id
    /// and the version the page showed.
    pub async fn page_versions(&self, limit: usize) -> Result<Vec<(uuid::Uuid, i64)>, BenchError> {
        let page = self
            .get_json(&format!("/api/v1/products?limit={limit}"), None)
            .await?;
        Ok(page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let id = item["id"].as_str()?.parse().ok()?;
                Some((id, item["version"].as_i64()?))
            })
            .collect())
    }

    pub async fn get_order(&self, token: &str, id: uuid::Uuid) -> Result<Value, BenchError> {
        self.get_json(&format!("/api/v1/orders/{id}"), Some(token))
            .await
    }

    pub async fn notifications(&self, token: &str) -> Result<Value, BenchError> {
        self.get_json("/api/v1/me/notifications?limit=200", Some(token))
            .await
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
        let consumers = self
            .get_json("/api/v1/admin/consumers", Some(admin_token))
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
    /// The catalog's read-path loads among them (`product`, `list_products`):
    /// a cache miss, a refresh-ahead, or a read with the cache off; not the
    /// read-back of a change (`products_by_ids`).
    pub catalog_db_loads: f64,
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
                    if ["op=\"product\"", "op=\"list_products\""]
                        .iter()
                        .any(|op| series.contains(op))
                    {
                        snapshot.catalog_db_loads += value;
                    }
                }
                "orderflow_cache_hits_total" => snapshot.cache_hits += value,
                "orderflow_cache_misses_total" => snapshot.cache_misses += value,
                _ => {}
            }
        }
        snapshot
    }

    /// Events the pipeline has not handled yet: every consumer group's lag
    /// (`orderflow_consumer_lag`, summed over group, topic and partition) plus
    /// the outbox rows not yet relayed to the log (`orderflow_outbox_backlog`,
    /// exported only where a relay runs). `None` when the server exports
    /// neither (no consumers: v1, or metrics off). `/metrics` reads the lag
    /// afresh on every scrape, so this is current, not up to 5 s old; the
    /// outbox gauge is refreshed by the relay after every batch.
    pub fn pipeline_lag(&self) -> Option<f64> {
        let lag = self.by_name.get("orderflow_consumer_lag");
        let outbox = self.by_name.get("orderflow_outbox_backlog");
        match (lag, outbox) {
            (None, None) => None,
            (lag, outbox) => Some(lag.copied().unwrap_or(0.0) + outbox.copied().unwrap_or(0.0)),
        }
    }

    /// `self - earlier`, counter by counter.
    pub fn since(&self, earlier: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            db_queries: self.db_queries - earlier.db_queries,
            catalog_db_reads: self.catalog_db_reads - earlier.catalog_db_reads,
            catalog_db_loads: self.catalog_db_loads - earlier.catalog_db_loads,
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
            orderflow_db_queries_total{op=\"products_by_ids\"} 2\n\
            orderflow_cache_hits_total{layer=\"l1\",kind=\"product\"} 90\n\
            orderflow_cache_misses_total{layer=\"l1\",kind=\"product\"} 10\n\
            orderflow_dead_letters 2\n";
        let s = MetricsSnapshot::parse(text);
        assert_eq!(s.db_queries, 12.0);
        assert_eq!(s.catalog_db_reads, 9.0);
        assert_eq!(s.catalog_db_loads, 7.0, "a change's read-back is no load");
        assert_eq!((s.cache_hits, s.cache_misses), (90.0, 10.0));
        assert_eq!(s.by_name["orderflow_dead_letters"], 2.0);
        let later = MetricsSnapshot::parse(&text.replace("} 7", "} 9"));
        assert_eq!(later.since(&s).db_queries, 2.0);
        assert_eq!(s.pipeline_lag(), None, "no lag exported");
    }

    #[test]
    fn pipeline_lag_is_consumer_lag_plus_the_outbox() {
        let text = "orderflow_consumer_lag{group=\"payment\",topic=\"order.events\",partition=\"0\"} 12\n\
            orderflow_consumer_lag{group=\"email\",topic=\"order.events\",partition=\"1\"} 3\n\
            orderflow_consumer_group_lag{group=\"payment\"} 12\n";
        assert_eq!(MetricsSnapshot::parse(text).pipeline_lag(), Some(15.0));
        let with_outbox = format!("{text}orderflow_outbox_backlog 5\n");
        assert_eq!(
            MetricsSnapshot::parse(&with_outbox).pipeline_lag(),
            Some(20.0)
        );
        let idle = "orderflow_consumer_lag{group=\"payment\",topic=\"t\",partition=\"0\"} 0\n";
        assert_eq!(MetricsSnapshot::parse(idle).pipeline_lag(), Some(0.0));
    }
}
