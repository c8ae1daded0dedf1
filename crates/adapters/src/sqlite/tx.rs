//! [`SqliteTx`], the unit of work: one `BEGIN IMMEDIATE` transaction holding
//! SQLite's write lock (and this process's writer lock) from the first
//! statement to commit or drop.
//!
//! Holding the write lock for the whole unit of work is what makes the
//! read-then-write steps here safe without row locks: between the `SELECT`
//! that checks stock (or an idempotency key) and the `UPDATE` that takes it,
//! no other writer can run.

use std::collections::BTreeMap;
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

use super::log::partition_for;
use super::store::load_order;
use super::{Inner, Writer, count, db_err, micros, rows, uid};
use crate::{AppendedTopics, SavepointStep};

/// A unit of work on the embedded database. Dropping it without
/// [`StoreTx::commit`] rolls everything back, appended events included.
pub struct SqliteTx {
    writer: Writer,
    inner: Arc<Inner>,
    /// Topics of the events appended so far: counted as published, and
    /// subscribers woken, only once the commit succeeded.
    appended: AppendedTopics,
}

impl SqliteTx {
    async fn savepoint_step(&mut self, step: SavepointStep) -> StoreResult<()> {
        count(step.op());
        sqlx::query(step.sql())
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        self.appended.after(step);
        Ok(())
    }

    pub(crate) fn new(inner: Arc<Inner>, writer: Writer) -> Self {
        Self {
            writer,
            inner,
            appended: AppendedTopics::default(),
        }
    }
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn insert_user(&mut self, user: &UserRecord) -> StoreResult<()> {
        count("insert_user");
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(uid(user.id))
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(micros(user.created_at))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Creates the user as an admin, or, when the e-mail is taken, promotes
    /// that user and leaves everything else (password included) alone.
    async fn upsert_admin(&mut self, user: &UserRecord) -> StoreResult<()> {
        count("upsert_admin");
        sqlx::query(
            "INSERT INTO users (id, email, name, password_hash, role, created_at) VALUES (?, ?, ?, ?, 'admin', ?)
             ON CONFLICT (email) DO UPDATE SET role = 'admin'",
        )
        .bind(uid(user.id))
        .bind(&user.email)
        .bind(&user.name)
        .bind(&user.password_hash)
        .bind(micros(user.created_at))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// A key that was claimed and committed without an answer (which does
    /// not happen when claim and completion commit together, as they should)
    /// comes back as `Existing` with status 0 and a null body: "in progress,
    /// nothing to replay".
    async fn claim_idempotency_key(
        &mut self,
        user_id: UserId,
        key: &str,
        request_hash: &str,
    ) -> StoreResult<IdempotencyClaim> {
        // No race between this SELECT and the INSERT below: the unit of work
        // holds the write lock, so a concurrent claim of the same key waits in
        // `begin` until this one committed and then finds the row.
        count("idempotency_lookup");
        let existing = sqlx::query(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys WHERE user_id = ? AND key = ?",
        )
        .bind(uid(user_id))
        .bind(key)
        .fetch_optional(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        if let Some(row) = existing {
            let body: Option<String> = sqlx::Row::try_get(&row, "response_body").map_err(db_err)?;
            let response_body = match body {
                Some(body) => serde_json::from_str(&body)
                    .map_err(|e| StoreError::Corrupt(format!("idempotency response body: {e}")))?,
                None => serde_json::Value::Null,
            };
            return Ok(IdempotencyClaim::Existing(IdempotencyRecord {
                request_hash: rows::text(&row, "request_hash")?,
                response_status: saved_status(&row)?.unwrap_or(0),
                response_body,
            }));
        }
        count("idempotency_claim");
        sqlx::query("INSERT INTO idempotency_keys (user_id, key, request_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(uid(user_id))
            .bind(key)
            .bind(request_hash)
            .bind(micros(chrono::Utc::now()))
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        Ok(IdempotencyClaim::Claimed)
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
            "UPDATE idempotency_keys SET response_status = ?, response_body = ?, completed_at = ?
             WHERE user_id = ? AND key = ?",
        )
        .bind(i64::from(status))
        .bind(body.to_string())
        .bind(micros(chrono::Utc::now()))
        .bind(uid(user_id))
        .bind(key)
        .execute(&mut *self.writer.tx)
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
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uid(order.id))
        .bind(uid(order.user_id))
        .bind(order.status.as_str())
        .bind(order.total_cents)
        .bind(order.currency.as_str())
        .bind(micros(order.created_at))
        .bind(micros(order.updated_at))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        for (line_no, line) in order.items.iter().enumerate() {
            count("insert_order_item");
            sqlx::query(
                "INSERT INTO order_items
                     (order_id, line_no, product_id, sku, name, quantity, unit_price_cents, line_total_cents)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(uid(order.id))
            .bind(line_no as i64)
            .bind(uid(line.product_id))
            .bind(&line.sku)
            .bind(&line.name)
            .bind(i64::from(line.quantity))
            .bind(line.unit_price_cents)
            .bind(line.line_total_cents)
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        }
        count("insert_order_history");
        sqlx::query("INSERT INTO order_history (order_id, status, at) VALUES (?, ?, ?)")
            .bind(uid(order.id))
            .bind(order.status.as_str())
            .bind(micros(order.created_at))
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// The transaction already holds SQLite's write lock, so a plain read is
    /// as good as `SELECT … FOR UPDATE`: no one else can change the order
    /// before this unit of work ends.
    async fn order_for_update(&mut self, id: OrderId) -> StoreResult<Option<Order>> {
        load_order(&mut self.writer.tx, id).await
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
        let done = sqlx::query("UPDATE orders SET status = ?, updated_at = ? WHERE id = ?")
            .bind(last.as_str())
            .bind(micros(at))
            .bind(uid(id))
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Database(format!("order {id} does not exist")));
        }
        for step in steps {
            count("insert_order_history");
            sqlx::query("INSERT INTO order_history (order_id, status, at) VALUES (?, ?, ?)")
                .bind(uid(id))
                .bind(step.as_str())
                .bind(micros(at))
                .execute(&mut *self.writer.tx)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn reserve_stock(
        &mut self,
        order_id: OrderId,
        lines: &[(ProductId, u32)],
    ) -> StoreResult<Reservation> {
        // A redelivered "order placed" must not take stock twice: any earlier
        // reservation of this order (even one released since) settles it.
        count("reservation_exists");
        let reserved_before = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM stock_reservations WHERE order_id = ?)",
        )
        .bind(uid(order_id))
        .fetch_one(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        if reserved_before {
            return Ok(Reservation::AlreadyReserved);
        }

        // One line per product (the domain merges them already; merging again
        // keeps the per-order, per-product reservation rows unique).
        let mut wanted: BTreeMap<ProductId, u32> = BTreeMap::new();
        for (product_id, quantity) in lines {
            *wanted.entry(*product_id).or_default() += quantity;
        }

        // Check every line before changing any: all or nothing.
        for (product_id, quantity) in &wanted {
            count("stock_of_product");
            let stock = sqlx::query_scalar::<_, i64>("SELECT stock FROM products WHERE id = ?")
                .bind(uid(*product_id))
                .fetch_optional(&mut *self.writer.tx)
                .await
                .map_err(db_err)?;
            match stock {
                None => {
                    return Ok(Reservation::UnknownProduct {
                        product_id: *product_id,
                    });
                }
                Some(available) if available < i64::from(*quantity) => {
                    return Ok(Reservation::Insufficient {
                        product_id: *product_id,
                        available,
                        requested: *quantity,
                    });
                }
                Some(_) => {}
            }
        }

        let now = micros(chrono::Utc::now());
        for (product_id, quantity) in &wanted {
            // `stock >= ?` repeats the check in the statement itself, so even a
            // broken caller could not take stock below zero (the CHECK
            // constraint is the last line).
            count("take_stock");
            let taken =
                sqlx::query("UPDATE products SET stock = stock - ?1 WHERE id = ?2 AND stock >= ?1")
                    .bind(i64::from(*quantity))
                    .bind(uid(*product_id))
                    .execute(&mut *self.writer.tx)
                    .await
                    .map_err(db_err)?;
            if taken.rows_affected() != 1 {
                return Err(StoreError::Database(format!(
                    "stock of product {product_id} changed during its reservation"
                )));
            }
            count("insert_reservation");
            sqlx::query(
                "INSERT INTO stock_reservations (order_id, product_id, quantity, reserved_at) VALUES (?, ?, ?, ?)",
            )
            .bind(uid(order_id))
            .bind(uid(*product_id))
            .bind(i64::from(*quantity))
            .bind(now)
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        }
        Ok(Reservation::Reserved)
    }

    async fn release_stock(&mut self, order_id: OrderId) -> StoreResult<bool> {
        // Give back what this order still holds, per product, in one statement:
        // the correlated subquery picks the order's unreleased quantity for
        // each product row being updated.
        count("return_stock");
        sqlx::query(
            "UPDATE products
             SET stock = stock + (SELECT r.quantity FROM stock_reservations r
                                  WHERE r.order_id = ?1 AND r.product_id = products.id AND r.released_at IS NULL)
             WHERE id IN (SELECT product_id FROM stock_reservations WHERE order_id = ?1 AND released_at IS NULL)",
        )
        .bind(uid(order_id))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        // Marking the rows released is what makes a second release a no-op.
        count("release_reservation");
        let released = sqlx::query(
            "UPDATE stock_reservations SET released_at = ? WHERE order_id = ? AND released_at IS NULL",
        )
        .bind(micros(chrono::Utc::now()))
        .bind(uid(order_id))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        Ok(released.rows_affected() > 0)
    }

    async fn record_payment(&mut self, payment: &PaymentRecord) -> StoreResult<()> {
        count("record_payment");
        sqlx::query(
            "INSERT INTO payments (order_id, succeeded, reference, amount_cents, currency, at)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(uid(payment.order_id))
        .bind(i64::from(payment.succeeded))
        .bind(&payment.reference)
        .bind(payment.amount_cents)
        .bind(&payment.currency)
        .bind(micros(payment.at))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn record_notification(&mut self, notification: &NotificationRecord) -> StoreResult<()> {
        count("record_notification");
        sqlx::query("INSERT INTO notifications (user_id, channel, kind, order_id, sent_at) VALUES (?, ?, ?, ?, ?)")
            .bind(uid(notification.user_id))
            .bind(notification.channel.as_str())
            .bind(notification.kind.as_str())
            .bind(notification.order_id.map(uid))
            .bind(micros(notification.sent_at))
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn add_points(&mut self, user_id: UserId, points: i64) -> StoreResult<()> {
        count("add_points");
        sqlx::query(
            "INSERT INTO loyalty_points (user_id, points) VALUES (?, ?)
             ON CONFLICT (user_id) DO UPDATE SET points = points + excluded.points",
        )
        .bind(uid(user_id))
        .bind(points)
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn record_sale(&mut self, order: &Order, day: chrono::NaiveDate) -> StoreResult<()> {
        count("record_daily_sale");
        sqlx::query(
            "INSERT INTO daily_sales (day, currency, orders, revenue_cents) VALUES (?, ?, 1, ?)
             ON CONFLICT (day, currency) DO UPDATE
             SET orders = orders + 1, revenue_cents = revenue_cents + excluded.revenue_cents",
        )
        .bind(day.format("%Y-%m-%d").to_string())
        .bind(order.currency.as_str())
        .bind(order.total_cents)
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        for line in &order.items {
            count("record_product_sale");
            sqlx::query(
                "INSERT INTO product_sales (product_id, quantity, revenue_cents) VALUES (?, ?, ?)
                 ON CONFLICT (product_id) DO UPDATE
                 SET quantity = quantity + excluded.quantity, revenue_cents = revenue_cents + excluded.revenue_cents",
            )
            .bind(uid(line.product_id))
            .bind(i64::from(line.quantity))
            .bind(line.line_total_cents)
            .execute(&mut *self.writer.tx)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    async fn mark_processed(&mut self, group: &str, event_id: EventId) -> StoreResult<bool> {
        // A duplicate is the expected case (a redelivered event), not an
        // error: DO NOTHING reports it as zero affected rows.
        count("mark_processed");
        let done = sqlx::query(
            "INSERT INTO processed_events (group_name, event_id, processed_at) VALUES (?, ?, ?)
             ON CONFLICT (group_name, event_id) DO NOTHING",
        )
        .bind(group)
        .bind(uid(event_id))
        .bind(micros(chrono::Utc::now()))
        .execute(&mut *self.writer.tx)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(name = "event.append", skip_all, fields(events = events.len()))]
    async fn append(&mut self, events: &[Envelope]) -> StoreResult<()> {
        let now = micros(chrono::Utc::now());
        if self.inner.destination == EventDestination::Outbox {
            // Kafka mode: the rows wait in the outbox for a relay. Partitions
            // and offsets are the broker's business, so nothing else to do;
            // the events count as published once the broker acknowledged them.
            for event in events {
                count("append_outbox");
                sqlx::query(
                    "INSERT INTO outbox (topic, key, event_id, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(event.topic())
                .bind(&event.key)
                .bind(uid(event.id))
                .bind(event.to_json().to_string())
                .bind(now)
                .execute(&mut *self.writer.tx)
                .await
                .map_err(db_err)?;
            }
            return Ok(());
        }
        if events.is_empty() {
            return Ok(());
        }
        // Per event, two statements: take the partition's next offset (the row
        // is created on first use; migrate pre-creates the known topics) and
        // insert the event at it. Inside this transaction, so a rollback gives
        // the offsets back and offsets stay gap-free. All of them go to SQLite
        // in one round trip (sqlx binds `?` across the statements in order):
        // with sqlx a round trip costs more than SQLite's work here.
        const ONE: &str = r#"INSERT INTO log_partitions (topic, "partition", next_offset) VALUES (?, ?, 1)
               ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = next_offset + 1;
             INSERT INTO event_log (topic, "partition", "offset", key, event_id, payload, created_at)
               VALUES (?, ?, (SELECT next_offset - 1 FROM log_partitions WHERE topic = ? AND "partition" = ?),
                       ?, ?, ?, ?);"#;
        let sql = ONE.repeat(events.len());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in events {
            let topic = event.topic();
            let partition = partition_for(&event.key, self.inner.partitions);
            count("next_offset");
            count("append_event");
            query = query
                .bind(topic)
                .bind(partition)
                .bind(topic)
                .bind(partition)
                .bind(topic)
                .bind(partition)
                .bind(&event.key)
                .bind(uid(event.id))
                .bind(event.to_json().to_string())
                .bind(now);
            self.appended.push(topic);
        }
        query.execute(&mut *self.writer.tx).await.map_err(db_err)?;
        Ok(())
    }

    async fn insert_dead_letter(&mut self, dead_letter: &DeadLetter) -> StoreResult<()> {
        count("insert_dead_letter");
        sqlx::query(
            r#"INSERT INTO dead_letters
                   (id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"#,
        )
        .bind(uid(dead_letter.id))
        .bind(&dead_letter.group)
        .bind(&dead_letter.topic)
        .bind(dead_letter.partition)
        .bind(dead_letter.offset)
        .bind(&dead_letter.error)
        .bind(i64::from(dead_letter.attempts))
        .bind(dead_letter.event.to_json().to_string())
        .bind(micros(dead_letter.failed_at))
        .bind(dead_letter.replayed_at.map(micros))
        .execute(&mut *self.writer.tx)
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
            "UPDATE dead_letters SET replayed_at = ? WHERE id = ? AND replayed_at IS NULL",
        )
        .bind(micros(at))
        .bind(uid(id))
        .execute(&mut *self.writer.tx)
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
        let SqliteTx {
            writer,
            inner,
            appended,
        } = *self;
        let appended = appended.into_topics();
        writer.commit().await?;
        if !appended.is_empty() {
            for topic in appended {
                metrics::counter!("orderflow_events_published_total", "topic" => topic)
                    .increment(1);
            }
            // Only now are the events visible to readers; wake the waiting
            // subscriptions so delivery does not wait for their poll timeout.
            inner.wake_subscribers();
        }
        Ok(())
    }
}

/// The saved HTTP status of an idempotency row (NULL while unanswered).
fn saved_status(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Option<u16>> {
    let status: Option<i64> = sqlx::Row::try_get(row, "response_status").map_err(db_err)?;
    status
        .map(|s| u16::try_from(s).map_err(|_| StoreError::Corrupt(format!("HTTP status {s}"))))
        .transpose()
}
