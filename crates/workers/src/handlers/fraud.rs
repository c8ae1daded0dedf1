//! `fraud`: judges every placed order against the shopper's recent orders
//! ([`FraudRules`], sliding windows of event time) before anything is
//! reserved or charged.
//!
//! - **Clear** (or too late to judge): `OrderCleared` on `order.events`, which
//!   is what `inventory` reserves stock for. The order stays `pending`.
//! - **Flagged**: the order moves to `held`, `OrderHeld` tells the shopper,
//!   and `FraudAlerted` (rule, window, the orders in it) goes on
//!   `fraud.alerts`. Nothing more happens until an admin approves the order
//!   (an `OrderCleared` with `approved_by`) or rejects it.
//! - **Late** (older than the shopper's watermark by more than the grace):
//!   not judged, counted in
//!   `orderflow_stream_late_events_total{group="fraud"}`, and cleared:
//!   holding an order on a window the check may have forgotten would be a
//!   guess.
//!
//! The shopper's orders are remembered in the database (`fraud_orders`), in
//! the same transaction as the verdict's events and the processed mark, so
//! a redelivery or another member finds exactly what this one saw. The
//! shopper is the lane: one shopper's orders are judged one at a time, in
//! log order.
//!
//! The verdict is reached while preparing, outside the group commit: the
//! shopper's history is read from a read connection, so the read never
//! holds SQLite's one writer (measured: it was half of the fraud stage's
//! cost under load). The runtime may prepare a shopper's next order before
//! the previous verdict is committed, so the member also keeps the orders it
//! judged and has not committed yet ([`Uncommitted`]) and judges against
//! both; an effect that is dropped without committing (dead-lettered, or
//! prepared again) takes its order out again.
//!
//! [`FraudHandler::replaying`] is the handler `orderflow rebuild fraud` runs:
//! it remembers the orders the live check remembered (every order it
//! judged) and does nothing else: no status changes, no events, no metrics,
//! since all of that happened when the orders were first judged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::{FraudHistory, Store, StoreTx};
use orderflow_core::services::live::{LiveChannel, LiveHub};
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::fraud::{FraudRules, Rule, Verdict, WindowOrder};
use orderflow_domain::money::Currency;
use orderflow_domain::order::{OrderFact, OrderLine, Transition};
use orderflow_domain::{EventId, OrderId, UserId};

use crate::error::WorkerError;
use crate::runtime::{Applied, Effect, Handler, Prepared};

pub struct FraudHandler {
    rules: FraudRules,
    store: Arc<dyn Store>,
    /// Told of each hold, so the shopper's followers see it at once.
    live: Option<Arc<LiveHub>>,
    /// Rebuilding the remembered orders only (see the module docs).
    replaying: bool,
    uncommitted: Arc<Uncommitted>,
}

/// The orders this member judged, and will remember, whose verdicts are
/// not committed yet, per shopper. Each entry carries the token of the
/// effect that added it, so that an effect dropped after its delivery was
/// prepared again removes its own entry, not the new one.
#[derive(Debug, Default)]
struct Uncommitted {
    next_token: AtomicU64,
    by_shopper: Mutex<HashMap<UserId, Vec<(u64, WindowOrder)>>>,
}

impl Uncommitted {
    fn of(&self, user_id: UserId) -> Vec<WindowOrder> {
        let by_shopper = self
            .by_shopper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        by_shopper.get(&user_id).map_or_else(Vec::new, |orders| {
            orders.iter().map(|(_, order)| order.clone()).collect()
        })
    }

    /// Adds `order` (replacing an entry of the same order); its token.
    fn add(&self, user_id: UserId, order: &WindowOrder) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut by_shopper = self
            .by_shopper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let orders = by_shopper.entry(user_id).or_default();
        orders.retain(|(_, known)| known.order_id != order.order_id);
        orders.push((token, order.clone()));
        token
    }

    fn remove(&self, user_id: UserId, token: u64) {
        let mut by_shopper = self
            .by_shopper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(orders) = by_shopper.get_mut(&user_id) {
            orders.retain(|(known, _)| *known != token);
            if orders.is_empty() {
                by_shopper.remove(&user_id);
            }
        }
    }
}

impl FraudHandler {
    pub fn new(store: Arc<dyn Store>, rules: FraudRules) -> Self {
        Self {
            rules,
            store,
            live: None,
            replaying: false,
            uncommitted: Arc::default(),
        }
    }

    /// The handler of a rebuild: remembers, never acts.
    pub fn replaying(store: Arc<dyn Store>, rules: FraudRules) -> Self {
        Self {
            replaying: true,
            ..Self::new(store, rules)
        }
    }

    /// `order`'s verdict against what is remembered of its shopper around
    /// it: the committed history, and this member's uncommitted orders.
    async fn verdict(&self, user_id: UserId, order: &WindowOrder) -> Result<Verdict, WorkerError> {
        let (from, to) = self.rules.neighbourhood(order.at);
        // The uncommitted orders first, then the database: an order whose
        // verdict commits in between is in one of the two.
        let uncommitted = self.uncommitted.of(user_id);
        if let Some(verdict) = self.verdict_from_sums(user_id, order, &uncommitted).await? {
            return Ok(verdict);
        }
        let FraudHistory {
            mut watermark,
            mut orders,
        } = self.store.fraud_history(user_id, from, to).await?;
        for earlier in uncommitted {
            // Not the order itself (prepared again after a failure).
            if earlier.order_id == order.order_id {
                continue;
            }
            watermark = watermark.max(Some(earlier.at));
            if (from..=to).contains(&earlier.at)
                && !orders
                    .iter()
                    .any(|known| known.order_id == earlier.order_id)
            {
                orders.push(earlier);
            }
        }
        orders.sort_by_key(|known| (known.at, known.order_id));
        Ok(self.rules.check(watermark, &orders, order))
    }

    /// `order`'s verdict from sums alone, when they already say that no
    /// window can break a rule (the usual shopper: a few orders in ten
    /// minutes); `None` when the orders must be read and every window
    /// checked. The sums are an upper bound: an uncommitted order that has
    /// committed meanwhile, or `order` itself remembered by an earlier try,
    /// counts twice, which can only send a verdict to the exact check.
    async fn verdict_from_sums(
        &self,
        user_id: UserId,
        order: &WindowOrder,
        uncommitted: &[WindowOrder],
    ) -> Result<Option<Verdict>, WorkerError> {
        let (from, to) = self.rules.neighbourhood(order.at);
        let currency = &self.rules.currency;
        let summary = self
            .store
            .fraud_summary(user_id, from, to, currency)
            .await?;
        let others = uncommitted
            .iter()
            .filter(|earlier| earlier.order_id != order.order_id);
        let watermark = others
            .clone()
            .map(|earlier| earlier.at)
            .max()
            .max(summary.watermark);
        let in_range: Vec<&WindowOrder> = others
            .filter(|earlier| (from..=to).contains(&earlier.at))
            .chain(std::iter::once(order))
            .collect();
        let orders = summary.orders + in_range.len() as u64;
        let total_cents = summary.total_cents
            + in_range
                .iter()
                .filter(|o| &o.currency == currency)
                .map(|o| o.total_cents)
                .sum::<i64>();
        Ok(self
            .rules
            .cannot_flag(orders, total_cents)
            .then(|| self.rules.check(watermark, &[], order)))
    }

    /// Hands each committed hold's live message to `hub`.
    pub fn with_live(mut self, hub: Option<Arc<LiveHub>>) -> Self {
        self.live = hub;
        self
    }
}

#[async_trait]
impl Handler for FraudHandler {
    fn group(&self) -> &'static str {
        "fraud"
    }

    async fn prepare(&self, delivery: &Delivery) -> Result<Prepared, WorkerError> {
        let event = &delivery.envelope;
        let EventData::OrderPlaced {
            order_id,
            user_id,
            items,
            total_cents,
            currency,
        } = &event.data
        else {
            return Ok(Prepared::Ignored);
        };
        let currency = Currency::parse(currency)
            .map_err(|error| WorkerError::InvalidEvent(format!("order {order_id}: {error}")))?;
        let order = WindowOrder {
            order_id: *order_id,
            at: event.time,
            total_cents: *total_cents,
            currency,
        };
        let verdict = self.verdict(*user_id, &order).await?;
        let uncommitted = match verdict {
            Verdict::Late { .. } => None,
            Verdict::Clear | Verdict::Flagged(_) => Some((
                self.uncommitted.clone(),
                self.uncommitted.add(*user_id, &order),
            )),
        };
        Ok(Prepared::Effect(Box::new(Judge {
            rules: self.rules.clone(),
            user_id: *user_id,
            order,
            verdict,
            items: items.clone(),
            event: event.id,
            traceparent: event.traceparent.clone(),
            live: self.live.clone(),
            replaying: self.replaying,
            outcome: None,
            uncommitted,
        })))
    }
}

/// What a committed verdict did, for `committed`.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Cleared,
    Held(Rule),
    Late,
}

/// Remember one judged order, and let it through or hold it.
struct Judge {
    rules: FraudRules,
    user_id: UserId,
    order: WindowOrder,
    verdict: Verdict,
    items: Vec<OrderLine>,
    event: EventId,
    traceparent: Option<String>,
    live: Option<Arc<LiveHub>>,
    replaying: bool,
    /// Set by `apply` for `committed`.
    outcome: Option<Outcome>,
    /// This order's entry among the member's uncommitted orders, taken out
    /// when the effect goes (committed, or given up).
    uncommitted: Option<(Arc<Uncommitted>, u64)>,
}

impl Drop for Judge {
    fn drop(&mut self) {
        if let Some((uncommitted, token)) = &self.uncommitted {
            uncommitted.remove(self.user_id, *token);
        }
    }
}

impl Judge {
    fn cleared(&self) -> EventData {
        EventData::OrderCleared {
            order_id: self.order.order_id,
            user_id: self.user_id,
            items: self.items.clone(),
            total_cents: self.order.total_cents,
            currency: self.order.currency.to_string(),
            approved_by: None,
        }
    }
}

#[async_trait]
impl Effect for Judge {
    async fn apply(&mut self, tx: &mut dyn StoreTx) -> Result<Applied, WorkerError> {
        self.outcome = None;
        let order_id: OrderId = self.order.order_id;
        if self.replaying {
            if !matches!(self.verdict, Verdict::Late { .. }) {
                tx.remember_for_fraud(self.user_id, &self.order).await?;
            }
            return Ok(Applied::Changed);
        }
        let events = match &self.verdict {
            Verdict::Clear => {
                tx.remember_for_fraud(self.user_id, &self.order).await?;
                self.outcome = Some(Outcome::Cleared);
                vec![self.cleared()]
            }
            Verdict::Late { behind } => {
                tracing::info!(%order_id, behind_ms = behind.num_milliseconds(), "order too late to judge; cleared");
                self.outcome = Some(Outcome::Late);
                vec![self.cleared()]
            }
            Verdict::Flagged(violation) => {
                // Only a hold reads the order (locked until commit): nothing
                // but this group moves a pending order before it is
                // cleared, so a cleared order needs no look.
                let Some(order) = tx.order_for_update(order_id).await? else {
                    return Err(WorkerError::Missing(format!("order {order_id}")));
                };
                let Transition::Apply(steps) = order.status.on(OrderFact::FraudSuspected) else {
                    tracing::info!(%order_id, status = %order.status, event_id = %self.event, "order is no longer pending; not held");
                    return Ok(Applied::Stale);
                };
                tx.remember_for_fraud(self.user_id, &self.order).await?;
                tx.set_order_status(order_id, &steps, chrono::Utc::now())
                    .await?;
                self.outcome = Some(Outcome::Held(violation.rule));
                vec![
                    EventData::OrderHeld {
                        order_id,
                        user_id: self.user_id,
                        rule: violation.rule,
                    },
                    EventData::FraudAlerted {
                        user_id: self.user_id,
                        rule: violation.rule,
                        window_start: violation.window_start,
                        window_end: violation.window_end,
                        orders: violation.orders.clone(),
                        total_cents: violation.total_cents,
                        currency: self.rules.currency.to_string(),
                    },
                ]
            }
        };
        let envelopes: Vec<Envelope> = events
            .into_iter()
            .map(|data| Envelope::new(data, self.traceparent.clone()))
            .collect();
        tx.append(&envelopes).await?;
        Ok(Applied::Changed)
    }

    async fn committed(self: Box<Self>) {
        // Counted after the commit, so a verdict rolled back (and retried)
        // counts once.
        match self.outcome {
            Some(Outcome::Held(rule)) => {
                metrics::counter!("orderflow_fraud_alerts_total", "rule" => rule.as_str())
                    .increment(1);
                if let Some(hub) = &self.live {
                    hub.publish(&LiveChannel::Orders(self.user_id).name());
                }
            }
            Some(Outcome::Late) => {
                metrics::counter!("orderflow_stream_late_events_total", "group" => "fraud")
                    .increment(1);
            }
            Some(Outcome::Cleared) | None => {}
        }
    }
}
