//! [`PostgresTx`], the unit of work: one READ COMMITTED transaction on a
//! pooled connection, from [`Store::begin`](orderflow_core::ports::store::Store::begin)
//! to commit or drop.
//!
//! Other units of work run at the same time, in this process and in others,
//! so every step that reads and then writes protects itself with a row lock
//! (or, for one order's reservation, an advisory lock); see the module docs
//! of [`super`] for which lock guards what.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::outbox::EventDestination;
use orderflow_core::ports::store::{
    DeadLetter, IdempotencyClaim, IdempotencyRecord, NotificationRecord, PaymentRecord,
    Reservation, StoreError, StoreResult, StoreTx, UserRecord,
};
use orderflow_domain::events::Envelope;
use orderflow_domain::order::{Order, OrderStatus};
use orderflow_domain::{EventId, OrderId, ProductId, Timestamp, UserId};
use sqlx::{Connection, Postgres, Transaction};

use super::store::load_order;
use super::{Inner, NOTIFY_CHANNEL, count, db_err, partition_for, rows};
use crate::{AppendedTopics, SavepointStep};

/// First key of the advisory locks that serialise the reservation and
/// release of one order (the second key is a hash of the order id). An
/// arbitrary constant, so these locks cannot collide with other users of
/// advisory locks in the same database.
const ORDER_STOCK_LOCK: i32 = 0x0_5707;

/// How often a claim retries when the row it lost to vanished before it
/// could read it (only possible if keys are ever purged).
const CLAIM_ATTEMPTS: usize = 3;

/// A unit of work on PostgreSQL. Dropping it without [`StoreTx::commit`]
/// rolls everything back, appended events included.
pub struct PostgresTx {
    tx: Transaction<'static, Postgres>,
    inner: Arc<Inner>,
    destination: EventDestination,
    /// Topics of the events appended so far: counted as published, and this
    /// process's subscribers woken, only once the commit succeeded.
    appended: AppendedTopics,
}

impl std::fmt::Debug for PostgresTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTx")
            .field("destination", &self.destination)
            .field("appended", &self.appended.len())
            .finish_non_exhaustive()
    }
}

impl PostgresTx {
    pub(crate) fn new(
        inner: Arc<Inner>,
        tx: Transaction<'static, Postgres>,
        destination: EventDestination,
    ) -> Self {
        Self {
            tx,
            inner,
            destination,
            appended: AppendedTopics::default(),
        }
    }

    async fn savepoint_step(&mut self, step: SavepointStep) -> StoreResult<()> {
        count(step.op());
        sqlx::query(step.sql())
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        self.appended.after(step);
        Ok(())
    }

    /// Serialises reservation and release of one order across every
    /// connection, until this transaction ends. Without it, two deliveries of
    /// the same "order placed" could both find no reservation and both take
    /// stock.
    async fn lock_order_stock(&mut self, order_id: OrderId) -> StoreResult<()> {
        count("lock_order_stock");
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(ORDER_STOCK_LOCK)
            .bind(order_id.to_string())
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn append_to_log(&mut self, events: &[Envelope]) -> StoreResult<()> {
        let now = chrono::Utc::now();
        for event in events {
            let topic = event.topic();
            let partition = partition_for(&event.key, self.inner.partitions);
            // Take the partition's next offset and bump it in one statement.
            // The row stays locked until this transaction ends, so appends to
            // one partition commit in offset order and a reader never sees
            // offset n+1 before n; a rollback gives the offset back, so
            // offsets stay gap-free.
            count("next_offset");
            let offset = sqlx::query_scalar::<_, i64>(
                r#"INSERT INTO log_partitions AS l (topic, "partition", next_offset) VALUES ($1, $2, 1)
                   ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = l.next_offset + 1
                   RETURNING next_offset - 1"#,
            )
            .bind(topic)
            .bind(partition)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(db_err)?;
            count("append_event");
            sqlx::query(
                r#"INSERT INTO event_log (topic, "partition", "offset", key, event_id, payload, created_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
            )
            .bind(topic)
            .bind(partition)
            .bind(offset)
            .bind(&event.key)
            .bind(event.id)
            .bind(event.to_json())
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
            self.appended.push(topic);
        }
        // Delivered by the server when (and only if) this transaction
        // commits: wakes the subscriptions of every process.
        let topics: BTreeSet<&str> = events.iter().map(Envelope::topic).collect();
        for topic in topics {
            count("notify");
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(topic)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn append_to_outbox(&mut self, events: &[Envelope]) -> StoreResult<()> {
        let now = chrono::Utc::now();
        for event in events {
            count("append_outbox");
            sqlx::query(
                "INSERT INTO outbox (topic, key, event_id, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(event.topic())
            .bind(&event.key)
            .bind(event.id)
            .bind(event.to_json())
            .bind(now)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }
}

#[async_trait]
impl StoreTx for PostgresTx {
    async fn insert_user(&mut self, user: &UserRecord) -> StoreResult<()> {
        count("insert_user");
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.created_at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Creates the user as an admin, or, when the e-mail is taken, promotes
    /// that user and leaves everything else (password included) alone.
    async fn upsert_admin(&mut self, user: &UserRecord) -> StoreResult<()> {
        count("upsert_admin");
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, 'admin', $5)
             ON CONFLICT (email) DO UPDATE SET role = 'admin'",
        )
        .bind(user.id)
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.created_at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// `INSERT … ON CONFLICT DO NOTHING` is the claim. When another
    /// transaction inserted the same key and has not committed, PostgreSQL
    /// makes this insert wait for it: after its commit the insert does
    /// nothing and the read below (a fresh snapshot at READ COMMITTED) sees
    /// its answer; after its rollback the insert goes through. A key claimed
    /// and committed without an answer comes back as `Existing` with status 0
    /// and a null body: "in progress, nothing to replay".
    async fn claim_idempotency_key(
        &mut self,
        user_id: UserId,
        key: &str,
        request_hash: &str,
    ) -> StoreResult<IdempotencyClaim> {
        for _ in 0..CLAIM_ATTEMPTS {
            count("idempotency_claim");
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (user_id, key) DO NOTHING",
            )
            .bind(user_id)
            .bind(key)
            .bind(request_hash)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
            if inserted.rows_affected() == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
            count("idempotency_lookup");
            let existing = sqlx::query(
                "SELECT request_hash, response_status, response_body FROM idempotency_keys
                 WHERE user_id = $1 AND key = $2",
            )
            .bind(user_id)
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db_err)?;
            let Some(row) = existing else {
                // Purged between the two statements: claim again.
                continue;
            };
            let status: Option<i32> =
                sqlx::Row::try_get(&row, "response_status").map_err(db_err)?;
            let body: Option<serde_json::Value> =
                sqlx::Row::try_get(&row, "response_body").map_err(db_err)?;
            return Ok(IdempotencyClaim::Existing(IdempotencyRecord {
                request_hash: rows::text(&row, "request_hash")?,
                response_status: status
                    .map(|s| {
                        u16::try_from(s)
                            .map_err(|_| StoreError::Corrupt(format!("HTTP status {s}")))
                    })
                    .transpose()?
                    .unwrap_or(0),
                response_body: body.unwrap_or(serde_json::Value::Null),
            }));
        }
        Err(StoreError::Database(format!(
            "idempotency key {key:?} of user {user_id} kept vanishing while being claimed"
        )))
    }

    async fn complete_idempotency_key(
        &mut self,
        user_id: UserId,
        key: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> StoreResult<()> {
        count("idempotency_complete");
        let done = sqlx::query(
            "UPDATE idempotency_keys SET response_status = $1, response_body = $2, completed_at = now()
             WHERE user_id = $3 AND key = $4",
        )
        .bind(i32::from(status))
        .bind(body)
        .bind(user_id)
        .bind(key)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Database(format!(
                "idempotency key {key:?} of user {user_id} was not claimed in this transaction"
            )));
        }
        Ok(())
    }

    async fn insert_order(&mut self, order: &Order) -> StoreResult<()> {
        count("insert_order");
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, total_cents, currency, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(order.id)
        .bind(order.user_id)
        .bind(order.status.as_str())
        .bind(order.total_cents)
        .bind(order.currency.as_str())
        .bind(order.created_at)
        .bind(order.updated_at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        if !order.items.is_empty() {
            // All lines in one statement, from parallel arrays.
            let mut line_nos = Vec::with_capacity(order.items.len());
            let mut product_ids = Vec::with_capacity(order.items.len());
            let mut skus = Vec::with_capacity(order.items.len());
            let mut names = Vec::with_capacity(order.items.len());
            let mut quantities = Vec::with_capacity(order.items.len());
            let mut unit_prices = Vec::with_capacity(order.items.len());
            let mut line_totals = Vec::with_capacity(order.items.len());
            for (line_no, line) in order.items.iter().enumerate() {
                line_nos.push(i32::try_from(line_no).map_err(|_| {
                    StoreError::Database(format!("order {} has too many lines", order.id))
                })?);
                product_ids.push(line.product_id);
                skus.push(line.sku.as_str());
                names.push(line.name.as_str());
                quantities.push(i64::from(line.quantity));
                unit_prices.push(line.unit_price_cents);
                line_totals.push(line.line_total_cents);
            }
            count("insert_order_item");
            sqlx::query(
                "INSERT INTO order_items
                     (order_id, line_no, product_id, sku, name, quantity, unit_price_cents, line_total_cents)
                 SELECT $1, * FROM unnest($2::int[], $3::uuid[], $4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[])",
            )
            .bind(order.id)
            .bind(line_nos)
            .bind(product_ids)
            .bind(skus)
            .bind(names)
            .bind(quantities)
            .bind(unit_prices)
            .bind(line_totals)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        count("insert_order_history");
        sqlx::query("INSERT INTO order_history (order_id, status, at) VALUES ($1, $2, $3)")
            .bind(order.id)
            .bind(order.status.as_str())
            .bind(order.created_at)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// `SELECT … FOR UPDATE`: a concurrent transition of the same order (a
    /// redelivery, another consumer) waits here until this unit of work ends,
    /// then reads the state it left.
    async fn order_for_update(&mut self, id: OrderId) -> StoreResult<Option<Order>> {
        load_order(&mut self.tx, id, true).await
    }

    async fn set_order_status(
        &mut self,
        id: OrderId,
        steps: &[OrderStatus],
        at: Timestamp,
    ) -> StoreResult<()> {
        let Some(last) = steps.last() else {
            return Ok(());
        };
        count("set_order_status");
        let done = sqlx::query("UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(last.as_str())
            .bind(at)
            .bind(id)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Database(format!("order {id} does not exist")));
        }
        // One row per step, in step order (the identity column keeps it).
        let statuses: Vec<&str> = steps.iter().map(|s| s.as_str()).collect();
        count("insert_order_history");
        sqlx::query(
            "INSERT INTO order_history (order_id, status, at)
             SELECT $1, status, $3 FROM unnest($2::text[]) WITH ORDINALITY AS s(status, n) ORDER BY n",
        )
        .bind(id)
        .bind(statuses)
        .bind(at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn reserve_stock(
        &mut self,
        order_id: OrderId,
        lines: &[(ProductId, u32)],
    ) -> StoreResult<Reservation> {
        self.lock_order_stock(order_id).await?;
        // A redelivered "order placed" must not take stock twice: any earlier
        // reservation of this order (even one released since) settles it.
        // Authoritative: the advisory lock above keeps any other reservation
        // of this order out until this transaction ends.
        count("reservation_exists");
        let reserved_before = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM stock_reservations WHERE order_id = $1)",
        )
        .bind(order_id)
        .fetch_one(&mut *self.tx)
        .await
        .map_err(db_err)?;
        if reserved_before {
            return Ok(Reservation::AlreadyReserved);
        }

        // One line per product, in product-id order: every reservation locks
        // product rows in the same order, so two of them never deadlock.
        let mut wanted: BTreeMap<ProductId, u32> = BTreeMap::new();
        for (product_id, quantity) in lines {
            *wanted.entry(*product_id).or_default() += quantity;
        }

        // All or nothing: the lines are taken inside a savepoint, and the
        // first one that cannot be taken rolls the earlier ones back.
        let mut savepoint = Connection::begin(&mut *self.tx).await.map_err(db_err)?;
        for (product_id, quantity) in &wanted {
            // The conditional UPDATE is the check: it waits for a concurrent
            // reservation's row lock, then re-evaluates `stock >= n` against
            // the committed stock, so stock never goes below zero.
            count("take_stock");
            let taken =
                sqlx::query("UPDATE products SET stock = stock - $1 WHERE id = $2 AND stock >= $1")
                    .bind(i64::from(*quantity))
                    .bind(*product_id)
                    .execute(&mut *savepoint)
                    .await
                    .map_err(db_err)?;
            if taken.rows_affected() == 1 {
                continue;
            }
            count("stock_of_product");
            let available =
                sqlx::query_scalar::<_, i64>("SELECT stock FROM products WHERE id = $1")
                    .bind(*product_id)
                    .fetch_optional(&mut *savepoint)
                    .await
                    .map_err(db_err)?;
            count("rollback_reservation");
            savepoint.rollback().await.map_err(db_err)?;
            return Ok(match available {
                None => Reservation::UnknownProduct {
                    product_id: *product_id,
                },
                Some(available) => Reservation::Insufficient {
                    product_id: *product_id,
                    available,
                    requested: *quantity,
                },
            });
        }
        let products: Vec<ProductId> = wanted.keys().copied().collect();
        let quantities: Vec<i64> = wanted.values().map(|q| i64::from(*q)).collect();
        count("insert_reservation");
        sqlx::query(
            "INSERT INTO stock_reservations (order_id, product_id, quantity, reserved_at)
             SELECT $1, product_id, quantity, now() FROM unnest($2::uuid[], $3::bigint[]) AS r(product_id, quantity)",
        )
        .bind(order_id)
        .bind(products)
        .bind(quantities)
        .execute(&mut *savepoint)
        .await
        .map_err(db_err)?;
        count("release_savepoint");
        savepoint.commit().await.map_err(db_err)?;
        Ok(Reservation::Reserved)
    }

    async fn release_stock(&mut self, order_id: OrderId) -> StoreResult<bool> {
        self.lock_order_stock(order_id).await?;
        // Marking the rows released is what makes a second release a no-op.
        count("release_reservation");
        let released = sqlx::query(
            "UPDATE stock_reservations SET released_at = now()
             WHERE order_id = $1 AND released_at IS NULL
             RETURNING product_id, quantity",
        )
        .bind(order_id)
        .fetch_all(&mut *self.tx)
        .await
        .map_err(db_err)?;
        let mut give_back: BTreeMap<ProductId, i64> = BTreeMap::new();
        for row in &released {
            *give_back.entry(rows::uuid(row, "product_id")?).or_default() +=
                rows::int(row, "quantity")?;
        }
        // In product-id order, like reservations, so the two never deadlock.
        for (product_id, quantity) in &give_back {
            count("return_stock");
            sqlx::query("UPDATE products SET stock = stock + $1 WHERE id = $2")
                .bind(*quantity)
                .bind(*product_id)
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        Ok(!released.is_empty())
    }

    async fn record_payment(&mut self, payment: &PaymentRecord) -> StoreResult<()> {
        count("record_payment");
        sqlx::query(
            "INSERT INTO payments (order_id, succeeded, reference, amount_cents, currency, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(payment.order_id)
        .bind(payment.succeeded)
        .bind(&payment.reference)
        .bind(payment.amount_cents)
        .bind(&payment.currency)
        .bind(payment.at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn record_notification(&mut self, notification: &NotificationRecord) -> StoreResult<()> {
        count("record_notification");
        sqlx::query(
            "INSERT INTO notifications (user_id, channel, kind, order_id, sent_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(notification.user_id)
        .bind(notification.channel.as_str())
        .bind(notification.kind.as_str())
        .bind(notification.order_id)
        .bind(notification.sent_at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn add_points(&mut self, user_id: UserId, points: i64) -> StoreResult<()> {
        count("add_points");
        sqlx::query(
            "INSERT INTO loyalty_points AS l (user_id, points) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET points = l.points + excluded.points",
        )
        .bind(user_id)
        .bind(points)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn record_sale(&mut self, order: &Order, day: chrono::NaiveDate) -> StoreResult<()> {
        count("record_daily_sale");
        sqlx::query(
            "INSERT INTO daily_sales AS d (day, currency, orders, revenue_cents) VALUES ($1, $2, 1, $3)
             ON CONFLICT (day, currency) DO UPDATE
             SET orders = d.orders + 1, revenue_cents = d.revenue_cents + excluded.revenue_cents",
        )
        .bind(day)
        .bind(order.currency.as_str())
        .bind(order.total_cents)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        // Per product, in product-id order (upserts lock rows; a fixed order
        // keeps two sales of overlapping products from deadlocking).
        let mut per_product: BTreeMap<ProductId, (i64, i64)> = BTreeMap::new();
        for line in &order.items {
            let entry = per_product.entry(line.product_id).or_default();
            entry.0 += i64::from(line.quantity);
            entry.1 += line.line_total_cents;
        }
        for (product_id, (quantity, revenue)) in per_product {
            count("record_product_sale");
            sqlx::query(
                "INSERT INTO product_sales AS s (product_id, quantity, revenue_cents) VALUES ($1, $2, $3)
                 ON CONFLICT (product_id) DO UPDATE
                 SET quantity = s.quantity + excluded.quantity, revenue_cents = s.revenue_cents + excluded.revenue_cents",
            )
            .bind(product_id)
            .bind(quantity)
            .bind(revenue)
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    async fn mark_processed(&mut self, group: &str, event_id: EventId) -> StoreResult<bool> {
        // A duplicate is the expected case (a redelivered event), not an
        // error: DO NOTHING reports it as zero affected rows. A concurrent
        // mark of the same event waits for this one's outcome.
        count("mark_processed");
        let done = sqlx::query(
            "INSERT INTO processed_events (group_name, event_id, processed_at) VALUES ($1, $2, now())
             ON CONFLICT (group_name, event_id) DO NOTHING",
        )
        .bind(group)
        .bind(event_id)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "event.append", skip_all, fields(events = events.len()))]
    async fn append(&mut self, events: &[Envelope]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        match self.destination {
            EventDestination::EmbeddedLog => self.append_to_log(events).await,
            EventDestination::Outbox => self.append_to_outbox(events).await,
        }
    }

    async fn insert_dead_letter(&mut self, dead_letter: &DeadLetter) -> StoreResult<()> {
        count("insert_dead_letter");
        sqlx::query(
            r#"INSERT INTO dead_letters
                   (id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"#,
        )
        .bind(dead_letter.id)
        .bind(&dead_letter.group)
        .bind(&dead_letter.topic)
        .bind(dead_letter.partition)
        .bind(dead_letter.offset)
        .bind(&dead_letter.error)
        .bind(i64::from(dead_letter.attempts))
        .bind(dead_letter.event.to_json())
        .bind(dead_letter.failed_at)
        .bind(dead_letter.replayed_at)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn mark_dead_letter_replayed(
        &mut self,
        id: uuid::Uuid,
        at: Timestamp,
    ) -> StoreResult<bool> {
        count("mark_dead_letter_replayed");
        let done = sqlx::query(
            "UPDATE dead_letters SET replayed_at = $1 WHERE id = $2 AND replayed_at IS NULL",
        )
        .bind(at)
        .bind(id)
        .execute(&mut *self.tx)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn savepoint(&mut self) -> StoreResult<()> {
        self.savepoint_step(SavepointStep::Open).await
    }

    async fn release_savepoint(&mut self) -> StoreResult<()> {
        self.savepoint_step(SavepointStep::Release).await
    }

    async fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.savepoint_step(SavepointStep::RollBack).await
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        let PostgresTx {
            tx,
            inner,
            destination,
            appended,
        } = *self;
        let appended = appended.into_topics();
        count("commit");
        tx.commit().await.map_err(db_err)?;
        // Outbox rows are published (and counted) by the relay, once the
        // broker has them; events in the embedded log are published now.
        if destination == EventDestination::EmbeddedLog && !appended.is_empty() {
            for topic in appended {
                metrics::counter!("orderflow_events_published_total", "topic" => topic)
                    .increment(1);
            }
            // The NOTIFY reaches other processes; this process's waiting
            // subscriptions need not wait for the round trip.
            inner.wake_subscribers();
        }
        Ok(())
    }
}
