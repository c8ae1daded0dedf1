//! Placing and reading orders.
//!
//! Events mode (the default, the notes' version 2): one transaction writes the
//! order (pending), its lines, its first history entry, the `OrderPlaced`
//! event (outbox) and the idempotency record; the request answers 201 at once
//! and the consumer groups do the rest.
//!
//! Inline mode (`ORDERFLOW_SIDE_EFFECTS=inline`, the notes' version 1, done
//! honestly): the request itself reserves stock, charges, sends e-mail, SMS
//! and push and adds points before it answers. A failing provider fails the
//! request (502) after compensating what was done: the payment is refunded,
//! the stock released, and the order kept as `payment_failed` or `cancelled`.
//!
//! Idempotency: with an `Idempotency-Key`, the answer is saved with the work.
//! The same key with the same body gets the saved answer again; with another
//! body it is refused; two concurrent requests with one key make one order,
//! because claiming the key is serialized by the database.

use std::collections::HashMap;
use std::sync::Arc;

use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::{
    self, HistoryEntry, Order, OrderFact, OrderStatus, RequestedLine, Transition,
};
use orderflow_domain::{OrderId, ProductId, Timestamp, UserId, ValidationError};

use crate::CoreError;
use crate::ports::providers::{ChargeOutcome, PaymentGateway, ProviderError};
use crate::ports::store::{
    IdempotencyClaim, NotificationRecord, PaymentRecord, Reservation, Store, StoreError, StoreTx,
};
use crate::services::auth::sha256_hex;
use crate::services::catalog::CatalogService;
use crate::services::effects::{self, Notifiers};
use crate::services::live::{LiveChannel, LiveHub};
use orderflow_domain::rules::TextRule;

pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The `Idempotency-Key` header: visible ASCII (no spaces, which proxies may
/// trim), at most 255 characters.
pub static IDEMPOTENCY_KEY: TextRule = TextRule::new(
    1,
    MAX_IDEMPOTENCY_KEY_CHARS,
    Some("^[!-~]+$"),
    "visible ASCII characters",
);
pub const MAX_ORDERS_PAGE: u32 = 100;

/// How the side effects of an order happen.
pub enum SideEffects {
    /// Consumers do them after the order is accepted.
    Events,
    /// The request does them before it answers.
    Inline {
        payment: Arc<dyn PaymentGateway>,
        notifiers: Notifiers,
    },
}

/// A request to place an order.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub user_id: UserId,
    pub idempotency_key: Option<String>,
    pub lines: Vec<RequestedLine>,
    /// W3C trace context of the request, carried into the event.
    pub traceparent: Option<String>,
    /// What a retry with the same key must match to get the saved answer:
    /// the lines by default; a cart checkout's cart token (the retry of a
    /// checkout finds the cart emptied, and is still the same checkout).
    pub fingerprint: Option<String>,
    /// Keeps the keys of one kind of request apart from the others' (the
    /// key is stored as scope + key): a key used for a checkout says
    /// nothing about `POST /orders`. Empty for `POST /orders`.
    pub idempotency_scope: &'static str,
}

/// The idempotency scope of cart checkouts.
pub const CHECKOUT_SCOPE: &str = "checkout:";

/// The answer to a placed order: the HTTP status and body to send, which are
/// also what an idempotent retry gets back.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderAnswer {
    pub status: u16,
    pub body: serde_json::Value,
    /// True when this is a saved answer to an earlier request with the same key.
    pub replayed: bool,
}

pub struct OrderService {
    store: Arc<dyn Store>,
    catalog: Arc<CatalogService>,
    side_effects: SideEffects,
    /// Told of every status change after its commit (the change's live
    /// message is written either way).
    live: Option<Arc<LiveHub>>,
}

impl OrderService {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<CatalogService>,
        side_effects: SideEffects,
    ) -> Self {
        Self {
            store,
            catalog,
            side_effects,
            live: None,
        }
    }

    /// Hands each committed status change's live message to `hub`, so this
    /// process's followers see it at once.
    pub fn with_live(mut self, hub: Arc<LiveHub>) -> Self {
        self.live = Some(hub);
        self
    }

    /// Moves `order` through `steps` in `tx`; returns the live channel the
    /// change shows on, for [`Self::publish`] after the commit.
    async fn move_order(
        tx: &mut dyn StoreTx,
        order: &Order,
        steps: &[OrderStatus],
        at: Timestamp,
    ) -> Result<String, CoreError> {
        tx.set_order_status(order.id, steps, at).await?;
        Ok(LiveChannel::Orders(order.user_id).name())
    }

    /// After a commit: rings the hub for the channels the committed
    /// changes wrote to.
    fn publish(&self, channels: Vec<String>) {
        if let Some(hub) = &self.live {
            for channel in channels {
                hub.publish(&channel);
            }
        }
    }

    pub fn is_inline(&self) -> bool {
        matches!(self.side_effects, SideEffects::Inline { .. })
    }

    /// Validates, prices and places an order.
    #[tracing::instrument(name = "order.place", skip_all, fields(user_id = %request.user_id))]
    pub async fn place(&self, request: PlaceOrder) -> Result<OrderAnswer, CoreError> {
        if let Some(key) = &request.idempotency_key {
            check_idempotency_key(key)?;
        }
        let key = request
            .idempotency_key
            .as_ref()
            .map(|key| format!("{}{key}", request.idempotency_scope));
        let merged = order::validate_request(&request.lines)?;
        let ids: Vec<_> = merged.iter().map(|(id, _)| *id).collect();
        let catalog: HashMap<_, _> = self
            .catalog
            .products(&ids)
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let (lines, total) = order::price(&merged, &catalog)?;
        let now = chrono::Utc::now();
        let order = Order {
            id: uuid::Uuid::now_v7(),
            user_id: request.user_id,
            status: OrderStatus::Pending,
            total_cents: total.cents,
            currency: total.currency,
            items: lines,
            created_at: now,
            updated_at: now,
        };
        let request_hash = match &request.fingerprint {
            Some(fingerprint) => sha256_hex(fingerprint),
            None => sha256_hex(&serde_json::to_string(&request.lines).unwrap_or_default()),
        };

        let mut tx = self.store.begin().await?;
        if let Some(key) = &key
            && let Some(saved) = claim(&mut *tx, request.user_id, key, &request_hash).await?
        {
            return Ok(saved);
        }
        if let SideEffects::Inline { payment, notifiers } = &self.side_effects {
            // Nothing is kept: the rollback frees the claimed key.
            refuse_while_a_breaker_is_open(payment.as_ref(), notifiers)?;
        }
        tx.insert_order(&order).await?;
        let placed = LiveChannel::Orders(order.user_id).name();
        match &self.side_effects {
            SideEffects::Events => {
                tx.append(&[Envelope::new(
                    EventData::OrderPlaced {
                        order_id: order.id,
                        user_id: order.user_id,
                        items: order.items.clone(),
                        total_cents: order.total_cents,
                        currency: order.currency.to_string(),
                    },
                    request.traceparent.clone(),
                )])
                .await?;
                let body = order_body(&order);
                if let Some(key) = &key {
                    tx.complete_idempotency_key(order.user_id, key, 201, &body)
                        .await?;
                }
                tx.commit().await?;
                self.publish(vec![placed]);
                metrics::counter!("orderflow_orders_total", "status" => "placed", "mode" => "events").increment(1);
                Ok(OrderAnswer {
                    status: 201,
                    body,
                    replayed: false,
                })
            }
            SideEffects::Inline { payment, notifiers } => {
                metrics::counter!("orderflow_orders_total", "status" => "placed", "mode" => "inline").increment(1);
                self.place_inline(
                    tx,
                    placed,
                    order,
                    key.as_deref(),
                    payment.as_ref(),
                    notifiers,
                )
                .await
            }
        }
    }

    /// The synchronous path. `tx` holds the claimed key and the inserted order.
    async fn place_inline(
        &self,
        mut tx: Box<dyn StoreTx>,
        placed: String,
        mut order: Order,
        key: Option<&str>,
        payment: &dyn PaymentGateway,
        notifiers: &Notifiers,
    ) -> Result<OrderAnswer, CoreError> {
        let lines: Vec<_> = order
            .items
            .iter()
            .map(|l| (l.product_id, l.quantity))
            .collect();
        let reserved = match tx.reserve_stock(order.id, &lines).await? {
            Reservation::Reserved { products } => Ok(products),
            // The order was inserted in this transaction: neither happens.
            Reservation::AlreadyReserved | Reservation::OrderCancelled => Ok(Vec::new()),
            Reservation::Insufficient {
                product_id,
                available,
                requested,
            } => Err(CoreError::OutOfStock {
                product_id,
                available,
                requested,
            }),
            Reservation::UnknownProduct { product_id } => {
                Err(ValidationError::new("items", format!("unknown product {product_id}")).into())
            }
        };
        let reserved = match reserved {
            Ok(products) => products,
            Err(error) => {
                let rejected = &[OrderStatus::Rejected];
                return self
                    .fail_inline(tx, vec![placed], &order, key, rejected, error)
                    .await;
            }
        };
        let reserved_message = Self::move_order(
            &mut *tx,
            &order,
            &[OrderStatus::Reserved],
            chrono::Utc::now(),
        )
        .await?;
        // The reservation must be visible to other requests while we wait for
        // the providers, so it commits now; the key stays claimed (in progress).
        tx.commit().await?;
        self.publish(vec![placed, reserved_message]);
        self.catalog.products_written(&reserved).await;

        let charge = effects::charge_request(&order, effects::payment_idempotency_key(order.id));
        let charged = match payment.charge(&charge).await {
            Ok(ChargeOutcome::Approved { payment_id }) => Ok(payment_id),
            Ok(ChargeOutcome::Declined { reason }) => Err(CoreError::PaymentDeclined(reason)),
            Err(error) => Err(CoreError::from(error)),
        };
        let payment_id = match charged {
            Ok(payment_id) => payment_id,
            Err(error) => {
                return self
                    .compensate(&order, key, None, OrderStatus::PaymentFailed, error)
                    .await;
            }
        };

        let user = self
            .store
            .user_by_id(order.user_id)
            .await?
            .ok_or(CoreError::NotFound("user"))?;
        for channel in Channel::ALL {
            let message = effects::notification_message(
                NotificationKind::OrderConfirmed,
                &user,
                Some(order.id),
                format!("inline:{}:{}", channel.as_str(), order.id),
            );
            if let Err(error) = notifiers.get(channel).send(&message).await {
                let refund = Some((payment, payment_id.as_str()));
                return self
                    .compensate(&order, key, refund, OrderStatus::Cancelled, error.into())
                    .await;
            }
        }

        let now = chrono::Utc::now();
        let mut tx = self.store.begin().await?;
        tx.record_payment(&PaymentRecord {
            order_id: order.id,
            succeeded: true,
            reference: payment_id,
            amount_cents: order.total_cents,
            currency: order.currency.to_string(),
            at: now,
        })
        .await?;
        let confirmed = Self::move_order(
            &mut *tx,
            &order,
            &[OrderStatus::Paid, OrderStatus::Confirmed],
            now,
        )
        .await?;
        for channel in Channel::ALL {
            tx.record_notification(&NotificationRecord {
                user_id: order.user_id,
                channel,
                kind: NotificationKind::OrderConfirmed,
                order_id: Some(order.id),
                sent_at: now,
            })
            .await?;
        }
        tx.add_points(order.user_id, effects::points_for(&order.total()))
            .await?;
        tx.record_sale(&order, now).await?;
        order.status = OrderStatus::Confirmed;
        order.updated_at = now;
        let body = order_body(&order);
        if let Some(key) = key {
            tx.complete_idempotency_key(order.user_id, key, 201, &body)
                .await?;
        }
        tx.commit().await?;
        self.publish(vec![
            confirmed,
            LiveChannel::Notifications(order.user_id).name(),
        ]);
        metrics::counter!("orderflow_orders_total", "status" => "confirmed", "mode" => "inline")
            .increment(1);
        metrics::counter!("orderflow_revenue_cents_total", "currency" => order.currency.to_string())
            .increment(order.total_cents.max(0) as u64);
        Ok(OrderAnswer {
            status: 201,
            body,
            replayed: false,
        })
    }

    /// Undoes an inline order after a provider failed or declined, and
    /// answers with the problem.
    async fn compensate(
        &self,
        order: &Order,
        key: Option<&str>,
        refund: Option<(&dyn PaymentGateway, &str)>,
        final_status: OrderStatus,
        error: CoreError,
    ) -> Result<OrderAnswer, CoreError> {
        // Refund first, outside any transaction: the database is not held
        // while a provider answers.
        if let Some((payment, payment_id)) = refund {
            // If the refund itself fails the order is still cancelled; the
            // failure is logged loudly for an operator to settle by hand.
            if let Err(refund_error) = payment
                .refund(payment_id, &format!("refund:{}", order.id))
                .await
            {
                tracing::error!(order_id = %order.id, %payment_id, error = %refund_error, "refund failed; settle manually");
                metrics::counter!("orderflow_refunds_failed_total").increment(1);
            }
        }
        let mut tx = self.store.begin().await?;
        let released = tx.release_stock(order.id).await?;
        let answer = self
            .fail_inline(tx, Vec::new(), order, key, &[final_status], error)
            .await;
        if released {
            self.catalog.products_changed(&product_ids(order)).await;
        }
        answer
    }

    /// Records the final state of a failed inline order and answers with the
    /// problem (naming the order), which is also saved as the idempotent answer.
    async fn fail_inline(
        &self,
        mut tx: Box<dyn StoreTx>,
        mut messages: Vec<String>,
        order: &Order,
        key: Option<&str>,
        steps: &[OrderStatus],
        error: CoreError,
    ) -> Result<OrderAnswer, CoreError> {
        messages.push(Self::move_order(&mut *tx, order, steps, chrono::Utc::now()).await?);
        // The order is made and undone: its answer is final and saved under
        // the key, so it is a 502 even when the failure opened a breaker (a
        // 503 would invite a retry that the saved answer then refuses).
        let error = match error {
            CoreError::Provider(failure) => CoreError::Provider(ProviderError {
                circuit_open_for: None,
                ..failure
            }),
            other => other,
        };
        let problem = error.problem();
        let mut body = problem.to_json();
        body["order_id"] = order.id.to_string().into();
        if let Some(key) = key {
            tx.complete_idempotency_key(order.user_id, key, problem.status, &body)
                .await?;
        }
        tx.commit().await?;
        self.publish(messages);
        let status = steps.last().map(|s| s.as_str()).unwrap_or("unknown");
        metrics::counter!("orderflow_orders_total", "status" => status, "mode" => "inline")
            .increment(1);
        tracing::info!(order_id = %order.id, %error, status, "inline order failed");
        Ok(OrderAnswer {
            status: problem.status,
            body,
            replayed: false,
        })
    }

    /// An admin's verdict on a held order: approved, it is pending again and
    /// goes on to `inventory` (an `OrderCleared` naming the admin);
    /// rejected, it ends `rejected` and its shopper is told (an
    /// `OrderRejected`). [`CoreError::OrderNotHeld`] when the order is not
    /// held (any more): a second click, or a decision already made.
    pub async fn review(
        &self,
        admin: UserId,
        order_id: OrderId,
        approve: bool,
        traceparent: Option<String>,
    ) -> Result<Order, CoreError> {
        let mut tx = self.store.begin().await?;
        let Some(mut order) = tx.order_for_update(order_id).await? else {
            return Err(CoreError::NotFound("order"));
        };
        let fact = if approve {
            OrderFact::Approve
        } else {
            OrderFact::Reject
        };
        let Transition::Apply(steps) = order.status.on(fact) else {
            return Err(CoreError::OrderNotHeld {
                order_id,
                status: order.status,
            });
        };
        let now = chrono::Utc::now();
        let channel = Self::move_order(&mut *tx, &order, &steps, now).await?;
        let event = if approve {
            EventData::OrderCleared {
                order_id,
                user_id: order.user_id,
                items: order.items.clone(),
                total_cents: order.total_cents,
                currency: order.currency.to_string(),
                approved_by: Some(admin),
            }
        } else {
            EventData::OrderRejected {
                order_id,
                user_id: order.user_id,
                reason: "refused after a fraud review".into(),
            }
        };
        tx.append(&[Envelope::new(event, traceparent)]).await?;
        tx.commit().await?;
        self.publish(vec![channel]);
        tracing::info!(%order_id, %admin, approve, "held order reviewed");
        if let Some(status) = steps.last() {
            order.status = *status;
            order.updated_at = now;
            if status.is_final() {
                metrics::counter!("orderflow_orders_total", "status" => status.as_str(), "mode" => "events")
                    .increment(1);
            }
        }
        Ok(order)
    }

    /// The shopper cancels their order: it ends `cancelled` and its stock
    /// comes back, in one transaction with an `OrderCancelled` (the shopper
    /// is told; a confirmed order's points are taken back). A charged order
    /// is refunded through the payment provider: a `RefundRequested` for
    /// the `payment` group, in the same transaction, so the refund is never
    /// lost and never the request's wait. Works the same in both modes.
    ///
    /// Races with the consumers are settled under the order's locks: a
    /// reservation that comes later finds the order cancelled and takes
    /// nothing; a charge that lands after the cancellation is refunded by
    /// the `orders` group. Another shopper's order is "not found";
    /// [`CoreError::OrderNotCancellable`] when it has ended otherwise.
    pub async fn cancel(
        &self,
        user_id: UserId,
        order_id: OrderId,
        traceparent: Option<String>,
    ) -> Result<Order, CoreError> {
        let mut tx = self.store.begin().await?;
        let Some(mut order) = tx
            .order_for_update(order_id)
            .await?
            .filter(|order| order.user_id == user_id)
        else {
            return Err(CoreError::NotFound("order"));
        };
        let Transition::Apply(steps) = order.status.on(OrderFact::Cancel) else {
            return Err(CoreError::OrderNotCancellable {
                order_id,
                status: order.status,
            });
        };
        let previous_status = order.status;
        let now = chrono::Utc::now();
        let channel = Self::move_order(&mut *tx, &order, &steps, now).await?;
        let released = tx.release_stock(order_id).await?;
        let mut events = vec![Envelope::new(
            EventData::OrderCancelled {
                order_id,
                user_id,
                previous_status,
                total_cents: order.total_cents,
                currency: order.currency.to_string(),
            },
            traceparent.clone(),
        )];
        if previous_status.is_charged() {
            let Some(payment_id) = tx.charge_of(order_id).await? else {
                return Err(CoreError::Store(StoreError::Database(format!(
                    "order {order_id} is {previous_status} without a recorded charge"
                ))));
            };
            events.push(Envelope::new(
                EventData::RefundRequested {
                    order_id,
                    user_id,
                    payment_id,
                    amount_cents: order.total_cents,
                    currency: order.currency.to_string(),
                },
                traceparent,
            ));
        }
        tx.append(&events).await?;
        tx.commit().await?;
        self.publish(vec![channel]);
        if released {
            self.catalog.products_changed(&product_ids(&order)).await;
        }
        let mode = if self.is_inline() { "inline" } else { "events" };
        metrics::counter!("orderflow_orders_total", "status" => "cancelled", "mode" => mode)
            .increment(1);
        tracing::info!(%order_id, %previous_status, refund = previous_status.is_charged(), "order cancelled by its shopper");
        order.status = OrderStatus::Cancelled;
        order.updated_at = now;
        Ok(order)
    }

    /// One order with its history; another shopper's order is "not found".
    pub async fn get(
        &self,
        user_id: UserId,
        order_id: OrderId,
    ) -> Result<(Order, Vec<HistoryEntry>), CoreError> {
        match self.store.order(order_id).await? {
            Some((order, history)) if order.user_id == user_id => Ok((order, history)),
            _ => Err(CoreError::NotFound("order")),
        }
    }

    /// The fraud review queue: held orders, oldest first, after `after`.
    pub async fn held(
        &self,
        after: Option<OrderId>,
        limit: Option<u32>,
    ) -> Result<Vec<Order>, CoreError> {
        let limit = limit.unwrap_or(20).clamp(1, MAX_ORDERS_PAGE);
        Ok(self.store.held_orders(after, limit).await?)
    }

    /// The shopper's own orders, newest first.
    pub async fn list(
        &self,
        user_id: UserId,
        before: Option<OrderId>,
        limit: Option<u32>,
    ) -> Result<Vec<Order>, CoreError> {
        let limit = limit.unwrap_or(20).clamp(1, MAX_ORDERS_PAGE);
        Ok(self.store.orders_of_user(user_id, before, limit).await?)
    }
}

/// Claims the key; returns the saved answer when the key was used before.
async fn claim(
    tx: &mut dyn StoreTx,
    user_id: UserId,
    key: &str,
    request_hash: &str,
) -> Result<Option<OrderAnswer>, CoreError> {
    match tx.claim_idempotency_key(user_id, key, request_hash).await? {
        IdempotencyClaim::Claimed => Ok(None),
        IdempotencyClaim::Existing(saved) if saved.request_hash != request_hash => {
            Err(CoreError::IdempotencyMismatch)
        }
        IdempotencyClaim::Existing(saved) if saved.response_status == 0 => {
            Err(CoreError::Conflict(
                "a request with this Idempotency-Key is still being processed".into(),
            ))
        }
        IdempotencyClaim::Existing(saved) => {
            metrics::counter!("orderflow_idempotent_replays_total").increment(1);
            Ok(Some(OrderAnswer {
                status: saved.response_status,
                body: saved.response_body,
                replayed: true,
            }))
        }
    }
}

fn check_idempotency_key(key: &str) -> Result<(), ValidationError> {
    IDEMPOTENCY_KEY.check("Idempotency-Key", key).map(drop)
}

/// The JSON shape of an order in answers (and saved idempotent answers).
pub fn order_body(order: &Order) -> serde_json::Value {
    serde_json::to_value(order).expect("orders always serialize")
}

/// The products an order's lines take stock from.
fn product_ids(order: &Order) -> Vec<ProductId> {
    order.items.iter().map(|line| line.product_id).collect()
}

/// Inline orders call every provider before they answer: while one of
/// their circuit breakers is open, the order would only fail after
/// reserving stock, so it is refused up front (503 with `Retry-After`).
fn refuse_while_a_breaker_is_open(
    payment: &dyn PaymentGateway,
    notifiers: &Notifiers,
) -> Result<(), CoreError> {
    let open = std::iter::once((crate::ports::providers::PAYMENT, payment.circuit_open_for()))
        .chain(
            Channel::ALL
                .into_iter()
                .map(|channel| (channel.as_str(), notifiers.get(channel).circuit_open_for())),
        )
        .filter_map(|(provider, open_for)| open_for.map(|wait| (provider, wait)))
        .max_by_key(|(_, wait)| *wait);
    match open {
        Some((provider, wait)) => Err(ProviderError::circuit_open(
            provider,
            wait,
            "not called: its circuit breaker is open",
        )
        .into()),
        None => Ok(()),
    }
}
