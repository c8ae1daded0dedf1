//! Followed orders: a few orders placed during a load phase by shoppers the
//! load itself never uses, each followed to every milestone its shopper sees:
//! reserved, confirmed, the e-mail, the SMS, the push message and the points.
//!
//! How each milestone is timed, from "accepted":
//! - reserved and confirmed: the order's history (`GET /orders/{id}`) carries
//!   the server's timestamp of every status; measured from `pending` (the
//!   order's creation, inside the request that placed it).
//! - e-mail, SMS, push: `/me/notifications` carries `sent_at` per channel;
//!   measured from `pending`, for the `order_confirmed` message.
//! - points: `/me/points` is a running total with no timestamp, so it is
//!   watched live. The follower reads the total before placing the order,
//!   then reads it again and again until it has grown; the time is from
//!   sending the order request to the answer of the read that first showed
//!   the larger total. That is an upper bound: the reads are spaced by 5% of
//!   the time waited so far (at least 10 ms, at most 200 ms), so it is at
//!   most about 5% (or 10 ms) late. It starts on the bench's clock when the
//!   request is sent, which is at most the request's queueing earlier than
//!   the server's `pending` stamp.
//!
//! Why dedicated shoppers: a total can only be attributed to one order if it
//! is the shopper's only order in flight, so each follower has one order at a
//! time, and a follower whose points had not arrived by the deadline is not
//! used again. A side effect to keep in mind: events are handled in order per
//! shopper, and a follower (like a real shopper, who orders now and then) has
//! no earlier events of its own to wait behind, while the load's shoppers
//! place many orders a second each.
//!
//! A milestone still missing at the deadline counts with the time waited so
//! far (a lower bound, so a backlog can only look better than it is by the
//! deadline, never be hidden) and the order counts as unfinished.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::BenchError;
use crate::shop::Shop;
use crate::stats::{Latencies, LatencySummary};

/// Order states after which nothing changes.
pub(crate) const FINAL: [&str; 4] = ["confirmed", "rejected", "payment_failed", "cancelled"];

/// The notification channels a confirmed order is announced on.
pub const CHANNELS: [&str; 3] = ["email", "sms", "push"];

/// What the follower saw of one order's points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PointsSeen {
    /// From sending the order request to the first read showing the total grown.
    Arrived(Duration),
    /// Not there by the deadline, after waiting this long (a lower bound).
    Waiting(Duration),
    /// None due: the order ended without confirmation, earns no points, or
    /// the total could not be read.
    NotDue,
}

/// One followed order, as placed.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Index of the follower shopper.
    pub shopper: usize,
    pub id: uuid::Uuid,
    pub points: PointsSeen,
}

/// The orders one [`Followers::spawn`] placed.
#[derive(Debug, Clone, Default)]
pub struct FollowRun {
    pub placed: Vec<Placed>,
    /// Due but not placed: no follower was free, or the order was not accepted.
    pub not_placed: usize,
}

/// The follower shoppers and the products they order.
#[derive(Clone)]
pub struct Followers {
    shop: Shop,
    products: Arc<Vec<uuid::Uuid>>,
    tokens: Arc<Vec<String>>,
    free: Arc<Mutex<Vec<usize>>>,
    /// Signalled when a follower is given back (a permit is kept when nobody
    /// waits, so a release between the look and the wait is not missed).
    released: Arc<tokio::sync::Notify>,
}

impl Followers {
    /// Registers `count` follower shoppers (apart from the load's).
    pub async fn register(
        shop: &Shop,
        products: Vec<uuid::Uuid>,
        count: usize,
        run_id: &str,
    ) -> Result<Self, BenchError> {
        let tokens = if count == 0 {
            Vec::new()
        } else {
            shop.shoppers(count, &format!("{run_id}-follow")).await?
        };
        Ok(Self {
            shop: shop.clone(),
            products: Arc::new(products),
            free: Arc::new(Mutex::new((0..tokens.len()).rev().collect())),
            released: Arc::new(tokio::sync::Notify::new()),
            tokens: Arc::new(tokens),
        })
    }

    /// Places `orders` orders spread evenly over `span` from now, each by a
    /// free follower, and watches each one's points until they arrived, the
    /// order ended unconfirmed, or `deadline`. The handle answers once every
    /// order is settled or the deadline passed.
    pub fn spawn(
        &self,
        orders: usize,
        span: Duration,
        deadline: Instant,
        seed: u64,
    ) -> JoinHandle<FollowRun> {
        let followers = self.clone();
        tokio::spawn(async move {
            let mut run = FollowRun::default();
            if orders == 0 || followers.tokens.is_empty() {
                return run;
            }
            let start = Instant::now();
            let end = start + span;
            let interval = span.div_f64(orders as f64);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut watching = tokio::task::JoinSet::new();
            for i in 0..orders {
                tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
                let product = followers.products[rng.random_range(0..followers.products.len())];
                // Wait for a free follower rather than skip: skipping exactly
                // when the pipeline is slow would bias the sample.
                let shopper = loop {
                    if let Some(shopper) = followers.free.lock().expect("not poisoned").pop() {
                        break Some(shopper);
                    }
                    let released = followers.released.notified();
                    if tokio::time::timeout_at(end, released).await.is_err() {
                        break None;
                    }
                };
                let Some(shopper) = shopper else {
                    run.not_placed += 1;
                    continue;
                };
                let followers = followers.clone();
                watching
                    .spawn(async move { followers.follow_one(shopper, product, deadline).await });
            }
            while let Some(done) = watching.join_next().await {
                match done.expect("follower panicked") {
                    Some(placed) => run.placed.push(placed),
                    None => run.not_placed += 1,
                }
            }
            run
        })
    }

    /// Places one order and watches its points; gives the shopper back when
    /// its total can no longer change because of this order.
    async fn follow_one(
        &self,
        shopper: usize,
        product: uuid::Uuid,
        deadline: Instant,
    ) -> Option<Placed> {
        let token = &self.tokens[shopper];
        let before = self.shop.points(token).await.ok();
        let sent = Instant::now();
        let (_, accepted) = self.shop.place(token, product, 1).await;
        let Some((id, total_cents)) = accepted else {
            self.release(shopper);
            return None;
        };
        let points = match before {
            Some(before) if total_cents >= 100 => {
                self.watch_points(token, id, before, sent, deadline).await
            }
            _ => PointsSeen::NotDue,
        };
        // A follower whose points may still come would mislead the next order.
        if !matches!(points, PointsSeen::Waiting(_)) {
            self.release(shopper);
        }
        Some(Placed {
            shopper,
            id,
            points,
        })
    }

    fn release(&self, shopper: usize) {
        self.free.lock().expect("not poisoned").push(shopper);
        self.released.notify_one();
    }

    async fn watch_points(
        &self,
        token: &str,
        id: uuid::Uuid,
        before: i64,
        sent: Instant,
        deadline: Instant,
    ) -> PointsSeen {
        let mut status_checked = Instant::now();
        loop {
            match self.shop.points(token).await {
                Ok(now) if now > before => return PointsSeen::Arrived(sent.elapsed()),
                Ok(_) => {}
                Err(_) => return PointsSeen::NotDue,
            }
            if Instant::now() >= deadline {
                return PointsSeen::Waiting(sent.elapsed());
            }
            // An order that ends unconfirmed earns nothing: stop waiting.
            if status_checked.elapsed() >= Duration::from_millis(200) {
                status_checked = Instant::now();
                if let Ok(order) = self.shop.get_order(token, id).await {
                    let status = order["status"].as_str().unwrap_or("");
                    if FINAL.contains(&status) && status != "confirmed" {
                        return PointsSeen::NotDue;
                    }
                }
            }
            tokio::time::sleep(poll_interval(sent.elapsed())).await;
        }
    }

    pub fn token(&self, shopper: usize) -> &str {
        &self.tokens[shopper]
    }

    /// Reads every placed order's history and its shopper's notifications
    /// (waiting, until `deadline`, for orders not final yet and messages not
    /// sent yet) and gathers the milestones.
    pub async fn milestones(&self, run: &FollowRun, deadline: Instant) -> Milestones {
        let mut m = Milestones {
            followed: run.placed.len(),
            not_placed: run.not_placed,
            ..Default::default()
        };
        let mut unfinished: BTreeSet<uuid::Uuid> = BTreeSet::new();
        // Orders that were (or may yet be) confirmed, per shopper, with their `pending` time.
        let mut announced: BTreeMap<usize, Vec<(uuid::Uuid, DateTime<Utc>)>> = BTreeMap::new();
        for placed in &run.placed {
            match placed.points {
                PointsSeen::Arrived(d) => m.points.record(d),
                PointsSeen::Waiting(d) => {
                    m.points.record(d);
                    unfinished.insert(placed.id);
                }
                PointsSeen::NotDue => {}
            }
            let token = self.token(placed.shopper);
            let order = loop {
                let Ok(order) = self.shop.get_order(token, placed.id).await else {
                    break None;
                };
                let status = order["status"].as_str().unwrap_or("").to_owned();
                if FINAL.contains(&status.as_str()) || Instant::now() >= deadline {
                    break Some((order, status));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            };
            let Some((order, status)) = order else {
                continue;
            };
            let Some(pending) = history_at(&order, "pending") else {
                continue;
            };
            let waited = since(pending, Utc::now());
            let finished = FINAL.contains(&status.as_str());
            match history_at(&order, "reserved") {
                Some(at) => m.reserved.record(since(pending, at)),
                None if !finished => m.reserved.record(waited),
                None => {}
            }
            match history_at(&order, "confirmed") {
                Some(at) => {
                    m.confirmed.record(since(pending, at));
                    m.confirmed_orders += 1;
                }
                None if !finished => {
                    m.confirmed.record(waited);
                    unfinished.insert(placed.id);
                }
                None => m.not_confirmed += 1,
            }
            if !finished || status == "confirmed" {
                announced
                    .entry(placed.shopper)
                    .or_default()
                    .push((placed.id, pending));
            }
        }
        for (shopper, orders) in announced {
            let token = self.token(shopper);
            let mut missing: Vec<(uuid::Uuid, DateTime<Utc>, &str)> = orders
                .iter()
                .flat_map(|(id, pending)| CHANNELS.iter().map(move |c| (*id, *pending, *c)))
                .collect();
            while !missing.is_empty() {
                let Ok(list) = self.shop.notifications(token).await else {
                    break;
                };
                missing.retain(
                    |(id, pending, channel)| match sent_at(&list, *id, channel) {
                        Some(at) => {
                            m.channel_mut(channel).record(since(*pending, at));
                            false
                        }
                        None => true,
                    },
                );
                if missing.is_empty() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for (id, pending, channel) in missing {
                m.channel_mut(channel).record(since(pending, Utc::now()));
                unfinished.insert(id);
            }
        }
        m.unfinished = unfinished.len();
        m
    }
}

/// The spacing of points reads: 5% of the time waited, 10 ms to 200 ms.
pub fn poll_interval(waited: Duration) -> Duration {
    (waited / 20).clamp(Duration::from_millis(10), Duration::from_millis(200))
}

fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

/// When the order entered `status`, from its history.
fn history_at(order: &Value, status: &str) -> Option<DateTime<Utc>> {
    order["history"]
        .as_array()?
        .iter()
        .find(|h| h["status"] == status)?["at"]
        .as_str()?
        .parse()
        .ok()
}

/// When the `order_confirmed` message of `order` went out on `channel`.
fn sent_at(list: &Value, order: uuid::Uuid, channel: &str) -> Option<DateTime<Utc>> {
    let order = order.to_string();
    list["items"]
        .as_array()?
        .iter()
        .filter(|n| n["channel"] == channel && n["order_id"] == order.as_str())
        .filter(|n| n["kind"] == "order_confirmed")
        .filter_map(|n| n["sent_at"].as_str()?.parse::<DateTime<Utc>>().ok())
        .min()
}

/// Milestone latencies of the followed orders.
#[derive(Debug, Clone, Default)]
pub struct Milestones {
    pub reserved: Latencies,
    pub confirmed: Latencies,
    pub email: Latencies,
    pub sms: Latencies,
    pub push: Latencies,
    pub points: Latencies,
    /// Orders placed and followed.
    pub followed: usize,
    pub confirmed_orders: usize,
    /// Ended rejected, payment_failed or cancelled.
    pub not_confirmed: usize,
    /// With a milestone still missing at the deadline (counted with the time waited).
    pub unfinished: usize,
    pub not_placed: usize,
}

impl Milestones {
    fn channel_mut(&mut self, channel: &str) -> &mut Latencies {
        match channel {
            "email" => &mut self.email,
            "sms" => &mut self.sms,
            _ => &mut self.push,
        }
    }

    /// `(p50, p99)` in milliseconds, `None` without samples.
    pub fn p50_p99(latencies: &Latencies) -> (Option<f64>, Option<f64>) {
        if latencies.count() == 0 {
            (None, None)
        } else {
            (
                Some(latencies.quantile_ms(0.5)),
                Some(latencies.quantile_ms(0.99)),
            )
        }
    }

    pub fn confirmed_summary(&self) -> Option<LatencySummary> {
        (self.confirmed.count() > 0).then(|| self.confirmed.summary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_read_at_five_percent_of_the_wait() {
        assert_eq!(poll_interval(Duration::ZERO), Duration::from_millis(10));
        assert_eq!(
            poll_interval(Duration::from_millis(1000)),
            Duration::from_millis(50)
        );
        assert_eq!(
            poll_interval(Duration::from_secs(60)),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn history_and_notifications_give_the_times() {
        let order = serde_json::json!({"status": "confirmed", "history": [
            {"status": "pending", "at": "2026-01-01T00:00:00Z"},
            {"status": "reserved", "at": "2026-01-01T00:00:00.020Z"},
            {"status": "confirmed", "at": "2026-01-01T00:00:00.090Z"},
        ]});
        let pending = history_at(&order, "pending").unwrap();
        let confirmed = history_at(&order, "confirmed").unwrap();
        assert_eq!(since(pending, confirmed), Duration::from_millis(90));
        assert_eq!(history_at(&order, "paid"), None);
        assert_eq!(since(confirmed, pending), Duration::ZERO, "never negative");

        let id = uuid::Uuid::new_v4();
        let list = serde_json::json!({"items": [
            {"channel": "email", "kind": "welcome", "order_id": null, "sent_at": "2025-12-31T00:00:00Z"},
            {"channel": "sms", "kind": "order_confirmed", "order_id": uuid::Uuid::new_v4(), "sent_at": "2026-01-01T00:00:00.100Z"},
            {"channel": "email", "kind": "order_confirmed", "order_id": id, "sent_at": "2026-01-01T00:00:00.300Z"},
        ]});
        let email = sent_at(&list, id, "email").unwrap();
        assert_eq!(since(pending, email), Duration::from_millis(300));
        assert_eq!(sent_at(&list, id, "sms"), None, "another order's SMS");
    }
}
