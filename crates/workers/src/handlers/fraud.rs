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
//! [`FraudHandler::replaying`] is the handler `orderflow rebuild fraud` runs:
//! it remembers the orders the live check remembered (every order it
//! judged) and does nothing else: no status changes, no events, no metrics,
//! since all of that happened when the orders were first judged.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::log::Delivery;
use orderflow_core::ports::store::StoreTx;
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
    /// Told of each hold, so the shopper's followers see it at once.
    live: Option<Arc<LiveHub>>,
    /// Rebuilding the remembered orders only (see the module docs).
    replaying: bool,
}

impl FraudHandler {
    pub fn new(rules: FraudRules) -> Self {
        Self {
            rules,
            live: None,
            replaying: false,
        }
    }

    /// The handler of a rebuild: remembers, never acts.
    pub fn replaying(rules: FraudRules) -> Self {
        Self {
            replaying: true,
            ..Self::new(rules)
        }
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
        Ok(Prepared::Effect(Box::new(Judge {
            rules: self.rules.clone(),
            user_id: *user_id,
            order: WindowOrder {
                order_id: *order_id,
                at: event.time,
                total_cents: *total_cents,
                currency,
            },
            items: items.clone(),
            event: event.id,
            traceparent: event.traceparent.clone(),
            live: self.live.clone(),
            replaying: self.replaying,
            outcome: None,
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

/// Judge one placed order, remember it, and let it through or hold it.
struct Judge {
    rules: FraudRules,
    user_id: UserId,
    order: WindowOrder,
    items: Vec<OrderLine>,
    event: EventId,
    traceparent: Option<String>,
    live: Option<Arc<LiveHub>>,
    replaying: bool,
    /// Set by `apply` for `committed`.
    outcome: Option<Outcome>,
}

impl Judge {
    /// The order against what is remembered of its shopper around it.
    async fn verdict(&self, tx: &mut dyn StoreTx) -> Result<Verdict, WorkerError> {
        let (from, to) = self.rules.neighbourhood(self.order.at);
        let history = tx.fraud_history(self.user_id, from, to).await?;
        Ok(self
            .rules
            .check(history.watermark, &history.orders, &self.order))
    }

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
            if !matches!(self.verdict(tx).await?, Verdict::Late { .. }) {
                tx.remember_for_fraud(self.user_id, &self.order).await?;
            }
            return Ok(Applied::Changed);
        }
        let events = match self.verdict(tx).await? {
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
                        orders: violation.orders,
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
