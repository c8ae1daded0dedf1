//! [`SqlTx`], the unit of work, for both engines: one write transaction from
//! [`Store::begin`](orderflow_core::ports::store::Store::begin) (or a group
//! commit) to commit or drop.
//!
//! Why the read-then-write steps are safe on each engine:
//! - SQLite: the transaction holds the database's single writer (`BEGIN
//!   IMMEDIATE` behind the in-process queue) from its first statement, so
//!   between the statement that checks stock (or an idempotency key) and the
//!   one that takes it, no other writer can run.
//! - PostgreSQL: other units of work run at the same time, so each step
//!   protects itself with a row lock: the conditional `UPDATE … WHERE stock
//!   >= n` waits for a concurrent reservation's row lock and re-checks the
//!   committed stock; `INSERT … ON CONFLICT DO NOTHING` waits for an
//!   uncommitted claim of the same key; `order_for_update` reads with
//!   `FOR UPDATE`; one order's reservation and release take an advisory lock
//!   ([`Engine::lock_order_stock`]).
//!
//! The statements are the same on both: they are correct under either kind
//! of locking.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ports::outbox::EventDestination;
use orderflow_core::ports::store::{
    DeadLetter, IdempotencyClaim, NotificationRecord, PaymentRecord, Reservation, StoreError,
    StoreResult, StoreTx, UserRecord,
};
use orderflow_domain::events::Envelope;
use orderflow_domain::fraud::WindowOrder;
use orderflow_domain::order::{Order, OrderStatus};
use orderflow_domain::sales::Granularity;
use orderflow_domain::{EventId, OrderId, ProductId, Timestamp, UserId};

use crate::sqlite::partition_for;

use super::log::OUTBOX_SIGNAL;
use super::rows::{self, product_columns};
use super::store::load_order;
use super::tail::TailEvent;
use super::{
    Appended, Engine, Exec, LogAppend, SavepointStep, ShopperWrites, Sql, SqlRow, Stmt, WriteTx,
    per, stmt, values_list,
};

/// How often a claim retries when the row it lost to vanished before it
/// could read it (only possible if keys are ever purged).
const CLAIM_ATTEMPTS: usize = 3;

/// [`LogAppend::OffsetReadBack`]'s first statement: takes `$3` offsets of
/// the partition at once (`$1` topic, `$2` partition; the row is created on
/// first use); answers the first of them as `offset`.
pub(crate) const TAKE_OFFSETS: &str = r#"INSERT INTO log_partitions (topic, "partition", next_offset)
       VALUES ($1, $2, $3)
       ON CONFLICT (topic, "partition") DO UPDATE SET next_offset = log_partitions.next_offset + $3
       RETURNING next_offset - $3 AS "offset""#;

/// [`LogAppend::OffsetReadBack`]'s second statement, for this many rows of
/// (topic, partition, offset, key, event id, payload, created at).
fn insert_events_at(rows: usize) -> String {
    format!(
        r#"INSERT INTO event_log (topic, "partition", "offset", key, event_id, payload, created_at)
           VALUES {}"#,
        values_list(rows, 7, 1)
    )
}

/// Row counts of the event inserts a flush is split into (largest first,
/// as many of each as fit): a handful of statement texts for the
/// connection's statement cache, whatever the number of events.
const EVENT_INSERT_ROWS: [usize; 5] = [64, 16, 4, 2, 1];

/// An event appended to the embedded log whose offset is taken when the
/// unit of work next sends its writes ([`SqlTx::write_log_appends`]).
struct PendingAppend {
    topic: &'static str,
    partition: i32,
    payload: serde_json::Value,
    envelope: Envelope,
}

/// A unit of work. Dropping it without [`StoreTx::commit`] rolls everything
/// back, appended events included.
pub(crate) struct SqlTx<E: Engine> {
    write: E::Write,
    engine: Arc<E>,
    destination: EventDestination,
    /// The events appended so far: counted as published, and this process's
    /// subscribers woken, only once the commit succeeded.
    appended: Appended,
    /// Rows went to the outbox: relays are signalled after the commit (a
    /// signal for rows a rolled-back savepoint removed costs one empty claim).
    appended_to_outbox: bool,
    /// Writes whose answer nobody waits for (see [`SqlTx::defer`]), sent
    /// together before the next statement that answers, a savepoint step or
    /// the commit.
    deferred: Vec<Stmt>,
    /// Writes of shoppers' live messages, run at commit after the turns.
    shopper_writes: ShopperWrites,
    /// Events for the embedded log, in append order, whose offsets are
    /// taken with the next writes sent ([`LogAppend::OffsetReadBack`]).
    log_appends: Vec<PendingAppend>,
}

impl<E: Engine> std::fmt::Debug for SqlTx<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTx")
            .field("dialect", &E::DIALECT)
            .field("destination", &self.destination)
            .field("appended", &self.appended.len())
            .field("deferred", &self.deferred.len())
            .finish_non_exhaustive()
    }
}

impl<E: Engine> SqlTx<E> {
    pub(crate) fn new(engine: Arc<E>, write: E::Write, destination: EventDestination) -> Self {
        Self {
            write,
            engine,
            destination,
            appended: Appended::default(),
            appended_to_outbox: false,
            deferred: Vec::new(),
            shopper_writes: ShopperWrites::default(),
            log_appends: Vec::new(),
        }
    }

    /// Queues a write whose answer nobody needs (an insert of a record, an
    /// upsert of a counter, an appended event). Statements run in the order
    /// they were issued either way; what changes is that SQLite gets all
    /// queued statements in one round trip (with sqlx a round trip costs far
    /// more than SQLite's work for an insert), which is what lets a group
    /// commit of many effects write in a few round trips. A queued write that
    /// fails reports its error at the next statement that answers, savepoint
    /// step or commit, still inside this unit of work.
    fn defer(&mut self, stmt: Stmt) {
        self.deferred.push(stmt);
    }

    /// The connection, once every queued write has run: for a statement
    /// whose answer is read (it may depend on them).
    async fn conn(&mut self) -> StoreResult<&mut E::WriteConn> {
        if !self.deferred.is_empty() {
            let batch = std::mem::take(&mut self.deferred);
            E::exec_batch(&mut self.write, batch).await?;
        }
        if !self.log_appends.is_empty() {
            self.write_log_appends().await?;
        }
        Ok(&mut self.write)
    }

    /// Writes the events appended since the last writes were sent
    /// ([`LogAppend::OffsetReadBack`]): one statement per partition takes
    /// all of its offsets, and a few multi-row inserts write the events, in
    /// append order (which `seq` keeps). Why batched: a group commit
    /// appends an event per effect, and one offset statement and one insert
    /// per event took 0.60 s of the 4.66 s the writer was held in 6 s of the
    /// default bench (docs/benchmarks.md, "Fewer statements under the
    /// writer").
    async fn write_log_appends(&mut self) -> StoreResult<()> {
        let appends = std::mem::take(&mut self.log_appends);
        // Events per partition, in the order the partitions first appear.
        let mut partitions: Vec<(&'static str, i32, i64)> = Vec::new();
        for append in &appends {
            match partitions.iter_mut().find(|(topic, partition, _)| {
                *topic == append.topic && *partition == append.partition
            }) {
                Some((_, _, count)) => *count += 1,
                None => partitions.push((append.topic, append.partition, 1)),
            }
        }
        // The next offset of each partition, from its first one taken.
        let mut next: Vec<(&'static str, i32, i64)> = Vec::with_capacity(partitions.len());
        for (topic, partition, count) in partitions {
            let first = self
                .write
                .query_one(stmt(
                    "take_offsets",
                    TAKE_OFFSETS,
                    (topic, partition, count),
                ))
                .await?
                .int("offset")?;
            next.push((topic, partition, first));
        }
        let now = chrono::Utc::now();
        let mut rest = appends.into_iter();
        for rows in EVENT_INSERT_ROWS {
            while rest.len() >= rows {
                let mut insert = stmt("append_events", insert_events_at(rows), ());
                for append in rest.by_ref().take(rows) {
                    let (_, _, offset) = next
                        .iter_mut()
                        .find(|(topic, partition, _)| {
                            *topic == append.topic && *partition == append.partition
                        })
                        .expect("every partition's offsets were taken");
                    insert = insert
                        .bind(append.topic)
                        .bind(append.partition)
                        .bind(*offset)
                        .bind(&append.envelope.key)
                        .bind(append.envelope.id)
                        .bind(append.payload)
                        .bind(now);
                    self.appended.push(
                        append.topic,
                        Some(TailEvent {
                            topic: append.topic,
                            partition: append.partition,
                            offset: *offset,
                            envelope: Arc::new(append.envelope),
                        }),
                    );
                    *offset += 1;
                }
                self.write.exec(insert).await?;
            }
        }
        Ok(())
    }

    /// Runs a statement in this unit of work; how many rows it changed.
    async fn run(&mut self, stmt: Stmt) -> StoreResult<u64> {
        self.conn().await?.exec(stmt).await
    }

    async fn savepoint_step(&mut self, step: SavepointStep) -> StoreResult<()> {
        if step == SavepointStep::RollBack {
            // Queued writes were issued after the savepoint (every step
            // sends what is queued): they are undone without being sent.
            self.deferred.clear();
            self.log_appends.clear();
        }
        self.run(stmt(step.op(), step.sql(), ())).await?;
        self.appended.after(step);
        self.shopper_writes.after(step);
        Ok(())
    }

    /// Kafka mode: the rows wait in the outbox for a relay. Partitions and
    /// offsets are the broker's business; the events count as published once
    /// the broker acknowledged them. One statement for all events.
    fn append_to_outbox(&mut self, events: &[Envelope]) {
        if !self.appended_to_outbox {
            self.appended_to_outbox = true;
            for notice in E::append_notices(&[OUTBOX_SIGNAL]) {
                self.defer(notice);
            }
        }
        let now = chrono::Utc::now();
        let mut insert = stmt(
            "append_outbox",
            format!(
                "INSERT INTO outbox (topic, key, event_id, payload, created_at) VALUES {}",
                values_list(events.len(), 5, 1)
            ),
            (),
        );
        for event in events {
            insert = insert
                .bind(event.topic())
                .bind(&event.key)
                .bind(event.id)
                .bind(event.to_json())
                .bind(now);
        }
        self.defer(insert);
    }

    /// Per event: take the partition's next offset (the row is created on
    /// first use; migrate pre-creates the known topics) and insert the event
    /// at it; with [`LogAppend::OffsetReadBack`] both happen when the unit
    /// of work next sends its writes, for all events appended until then
    /// ([`SqlTx::write_log_appends`]). Inside the unit of work, so a
    /// rollback gives the offsets back and offsets stay gap-free. On
    /// PostgreSQL the partition's row stays locked until the transaction
    /// ends, so appends to one partition commit in offset order and a reader
    /// never sees offset n+1 before n; SQLite's one writer does the same.
    async fn append_to_log(&mut self, events: &[Envelope]) -> StoreResult<()> {
        let now = chrono::Utc::now();
        let mut topics = Vec::new();
        for event in events {
            let topic = event.topic();
            if !topics.contains(&topic) {
                topics.push(topic);
            }
            let partition = partition_for(&event.key, self.engine.core().partitions);
            match E::LOG_APPEND {
                LogAppend::Queued(sql) => {
                    self.defer(stmt(
                        "append_event",
                        sql,
                        (topic, partition, &event.key, event.id, event.to_json(), now),
                    ));
                    self.appended.push(topic, None);
                }
                LogAppend::OffsetReadBack => self.log_appends.push(PendingAppend {
                    topic,
                    partition,
                    payload: event.to_json(),
                    envelope: event.clone(),
                }),
            }
        }
        for notice in E::append_notices(&topics) {
            self.defer(notice);
        }
        Ok(())
    }

    /// Appends one history row per step, in step order, at commit (see
    /// [`ShopperWrites`]).
    fn insert_history(&mut self, order_id: OrderId, steps: &[OrderStatus], at: Timestamp) {
        let mut insert = stmt(
            "insert_order_history",
            format!(
                "INSERT INTO order_history (order_id, status, at) VALUES {}",
                values_list(steps.len(), 3, 1)
            ),
            (),
        );
        for step in steps {
            insert = insert.bind(order_id).bind(step.as_str()).bind(at);
        }
        self.shopper_writes.of_order(order_id, insert);
    }
}

#[async_trait]
impl<E: Engine> StoreTx for SqlTx<E> {
    async fn insert_user(&mut self, user: &UserRecord) -> StoreResult<()> {
        self.run(stmt(
            "insert_user",
            "INSERT INTO users (id, email, name, password_hash, role, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
            (
                user.id,
                &user.email,
                &user.name,
                &user.password_hash,
                user.role.as_str(),
                user.created_at,
            ),
        ))
        .await?;
        Ok(())
    }

    /// Creates the user as an admin, or, when the e-mail is taken, promotes
    /// that user and leaves everything else (password included) alone.
    async fn upsert_admin(&mut self, user: &UserRecord) -> StoreResult<()> {
        self.run(stmt(
            "upsert_admin",
            "INSERT INTO users (id, email, name, password_hash, role, created_at)
                     VALUES ($1, $2, $3, $4, 'admin', $5)
                     ON CONFLICT (email) DO UPDATE SET role = 'admin'",
            (
                user.id,
                &user.email,
                &user.name,
                &user.password_hash,
                user.created_at,
            ),
        ))
        .await?;
        Ok(())
    }

    /// `INSERT … ON CONFLICT DO NOTHING` is the claim. On SQLite the unit of
    /// work holds the writer, so nobody else claims in between. On
    /// PostgreSQL, when another transaction inserted the same key and has
    /// not committed, this insert waits for it: after its commit the insert
    /// does nothing and the read below (a fresh snapshot at READ COMMITTED)
    /// sees its answer; after its rollback the insert goes through. A key
    /// claimed and committed without an answer comes back as `Existing` with
    /// status 0 and a null body: "in progress, nothing to replay".
    async fn claim_idempotency_key(
        &mut self,
        user_id: UserId,
        key: &str,
        request_hash: &str,
    ) -> StoreResult<IdempotencyClaim> {
        for _ in 0..CLAIM_ATTEMPTS {
            let inserted = self
                .conn()
                .await?
                .exec(stmt(
                    "idempotency_claim",
                    "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (user_id, key) DO NOTHING",
                    (user_id, key, request_hash, chrono::Utc::now()),
                ))
                .await?;
            if inserted == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
            let existing = self
                .conn()
                .await?
                .query_opt(super::store::idempotency_lookup(user_id, key))
                .await?;
            let Some(row) = existing else {
                // Purged between the two statements: claim again.
                continue;
            };
            return Ok(IdempotencyClaim::Existing(super::rows::idempotency(&row)?));
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
        let done = self
            .conn()
            .await?
            .exec(stmt(
                "idempotency_complete",
                "UPDATE idempotency_keys SET response_status = $1, response_body = $2,
                        completed_at = $3
                     WHERE user_id = $4 AND key = $5",
                (
                    i32::from(status),
                    body.clone(),
                    chrono::Utc::now(),
                    user_id,
                    key,
                ),
            ))
            .await?;
        if done == 0 {
            return Err(StoreError::Database(format!(
                "idempotency key {key:?} of user {user_id} was not claimed in this transaction"
            )));
        }
        Ok(())
    }

    async fn insert_order(&mut self, order: &Order) -> StoreResult<()> {
        self.defer(stmt(
            "insert_order",
            "INSERT INTO orders (id, user_id, status, total_cents, currency, created_at,
                updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            (
                order.id,
                order.user_id,
                order.status.as_str(),
                order.total_cents,
                order.currency.as_str(),
                order.created_at,
                order.updated_at,
            ),
        ));
        if !order.items.is_empty() {
            // All lines in one statement.
            let mut insert = stmt(
                "insert_order_item",
                format!(
                    "INSERT INTO order_items (order_id, line_no, product_id, sku, name,
                         quantity, unit_price_cents, line_total_cents)
                     VALUES {}",
                    values_list(order.items.len(), 8, 1)
                ),
                (),
            );
            for (line_no, line) in order.items.iter().enumerate() {
                let line_no = i32::try_from(line_no).map_err(|_| {
                    StoreError::Database(format!("order {} has too many lines", order.id))
                })?;
                insert = insert
                    .bind(order.id)
                    .bind(line_no)
                    .bind(line.product_id)
                    .bind(&line.sku)
                    .bind(&line.name)
                    .bind(i64::from(line.quantity))
                    .bind(line.unit_price_cents)
                    .bind(line.line_total_cents);
            }
            self.defer(insert);
        }
        self.insert_history(order.id, &[order.status], order.created_at);
        Ok(())
    }

    /// On PostgreSQL `SELECT … FOR UPDATE`: a concurrent transition of the
    /// same order (a redelivery, another consumer) waits until this unit of
    /// work ends, then reads the state it left. On SQLite the transaction
    /// holds the writer, so a plain read is as good.
    async fn order_for_update(&mut self, id: OrderId) -> StoreResult<Option<Order>> {
        load_order(self.conn().await?, id, true).await
    }

    async fn order_status_for_update(&mut self, id: OrderId) -> StoreResult<Option<OrderStatus>> {
        let sql = Sql::Built(format!(
            "SELECT status FROM orders WHERE id = $1{}",
            E::DIALECT.for_update()
        ));
        self.conn()
            .await?
            .query_opt(stmt("order_status", sql, (id,)))
            .await?
            .map(|row| rows::status(&row, "status"))
            .transpose()
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
        let done = self
            .conn()
            .await?
            .exec(stmt(
                "set_order_status",
                "UPDATE orders SET status = $1, updated_at = $2 WHERE id = $3",
                (last.as_str(), at, id),
            ))
            .await?;
        if done == 0 {
            return Err(StoreError::Database(format!("order {id} does not exist")));
        }
        self.insert_history(id, steps, at);
        Ok(())
    }

    async fn reserve_stock(
        &mut self,
        order_id: OrderId,
        lines: &[(ProductId, u32)],
    ) -> StoreResult<Reservation> {
        E::lock_order_stock(self.conn().await?, order_id).await?;
        // A redelivered "order placed" must not take stock twice: any earlier
        // reservation of this order (even one released since) settles it.
        // Nor may a cancelled order take any: a cancellation releases under
        // the same lock, so it either finds this reservation to release or
        // is seen here. Authoritative: the lock above keeps any other
        // reservation or release of this order out until this transaction
        // ends.
        let before = self
            .conn()
            .await?
            .query_one(stmt(
                "reservation_exists",
                "SELECT EXISTS (SELECT 1 FROM stock_reservations WHERE order_id = $1) AS found,
                        EXISTS (SELECT 1 FROM orders WHERE id = $1 AND status = 'cancelled') AS cancelled",
                (order_id,),
            ))
            .await?;
        if before.bool("found")? {
            return Ok(Reservation::AlreadyReserved);
        }
        if before.bool("cancelled")? {
            return Ok(Reservation::OrderCancelled);
        }

        // One line per product, in product-id order: every reservation locks
        // product rows in the same order, so two of them never deadlock.
        let mut wanted: BTreeMap<ProductId, u32> = BTreeMap::new();
        for (product_id, quantity) in lines {
            *wanted.entry(*product_id).or_default() += quantity;
        }

        // All or nothing: the lines are taken inside a savepoint, and the
        // first one that cannot be taken rolls the earlier ones back.
        self.run(stmt("savepoint", "SAVEPOINT orderflow_reservation", ()))
            .await?;
        let mut products = Vec::with_capacity(wanted.len());
        for (product_id, quantity) in &wanted {
            // The conditional UPDATE is the check: `stock >= n` is evaluated
            // against the committed stock (on PostgreSQL after waiting for a
            // concurrent reservation's row lock), so stock never goes below
            // zero; the CHECK constraint is the last line. It bumps the
            // version itself, so the row it returns is the one the caches
            // must show (SQLite's RETURNING does not see what a trigger
            // changed; the trigger sees the version moved and leaves it).
            let taken = self
                .conn()
                .await?
                .query_opt(stmt(
                    "take_stock",
                    concat!(
                        "UPDATE products SET stock = stock - $1, version = version + 1, updated_at = $3
                         WHERE id = $2 AND stock >= $1 RETURNING ",
                        product_columns!()
                    ),
                    (i64::from(*quantity), *product_id, chrono::Utc::now()),
                ))
                .await?;
            if let Some(row) = taken {
                products.push(super::rows::product(&row)?);
                continue;
            }
            let available = self
                .conn()
                .await?
                .query_opt(stmt(
                    "stock_of_product",
                    "SELECT stock FROM products WHERE id = $1",
                    (*product_id,),
                ))
                .await?
                .map(|row| row.int("stock"))
                .transpose()?;
            self.run(stmt(
                "rollback_reservation",
                "ROLLBACK TO SAVEPOINT orderflow_reservation",
                (),
            ))
            .await?;
            self.run(stmt(
                "release_savepoint",
                "RELEASE SAVEPOINT orderflow_reservation",
                (),
            ))
            .await?;
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
        let now = chrono::Utc::now();
        let mut insert = stmt(
            "insert_reservation",
            format!(
                "INSERT INTO stock_reservations (order_id, product_id, quantity,
                    reserved_at) VALUES {}",
                values_list(wanted.len(), 4, 1)
            ),
            (),
        );
        for (product_id, quantity) in &wanted {
            insert = insert
                .bind(order_id)
                .bind(*product_id)
                .bind(i64::from(*quantity))
                .bind(now);
        }
        self.run(insert).await?;
        self.run(stmt(
            "release_savepoint",
            "RELEASE SAVEPOINT orderflow_reservation",
            (),
        ))
        .await?;
        Ok(Reservation::Reserved { products })
    }

    async fn release_stock(&mut self, order_id: OrderId) -> StoreResult<bool> {
        E::lock_order_stock(self.conn().await?, order_id).await?;
        // Marking the rows released is what makes a second release a no-op.
        let released = self
            .conn()
            .await?
            .query_all(stmt(
                "release_reservation",
                "UPDATE stock_reservations SET released_at = $2
                     WHERE order_id = $1 AND released_at IS NULL
                     RETURNING product_id, quantity",
                (order_id, chrono::Utc::now()),
            ))
            .await?;
        let mut give_back: BTreeMap<ProductId, i64> = BTreeMap::new();
        for row in &released {
            *give_back.entry(row.uuid("product_id")?).or_default() += row.int("quantity")?;
        }
        // In product-id order, like reservations, so the two never deadlock.
        for (product_id, quantity) in &give_back {
            self.defer(stmt(
                "return_stock",
                "UPDATE products SET stock = stock + $1, updated_at = $3 WHERE id = $2",
                (*quantity, *product_id, chrono::Utc::now()),
            ));
        }
        Ok(!released.is_empty())
    }

    async fn charge_of(&mut self, order_id: OrderId) -> StoreResult<Option<String>> {
        let row = self
            .conn()
            .await?
            .query_opt(stmt(
                "charge_of",
                "SELECT reference FROM payments
                     WHERE order_id = $1 AND succeeded AND amount_cents >= 0
                     ORDER BY seq LIMIT 1",
                (order_id,),
            ))
            .await?;
        row.map(|row| row.text("reference")).transpose()
    }

    async fn record_payment(&mut self, payment: &PaymentRecord) -> StoreResult<()> {
        self.defer(stmt(
            "record_payment",
            "INSERT INTO payments (order_id, succeeded, reference, amount_cents, currency, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
            (
                payment.order_id,
                payment.succeeded,
                &payment.reference,
                payment.amount_cents,
                &payment.currency,
                payment.at,
            ),
        ));
        Ok(())
    }

    async fn record_notification(&mut self, notification: &NotificationRecord) -> StoreResult<()> {
        self.shopper_writes.of_user(
            notification.user_id,
            stmt(
                "record_notification",
                "INSERT INTO notifications (user_id, channel, kind, order_id, sent_at)
                     VALUES ($1, $2, $3, $4, $5)",
                (
                    notification.user_id,
                    notification.channel.as_str(),
                    notification.kind.as_str(),
                    notification.order_id,
                    notification.sent_at,
                ),
            ),
        );
        Ok(())
    }

    async fn add_points(&mut self, user_id: UserId, points: i64) -> StoreResult<()> {
        self.defer(stmt(
            "add_points",
            "INSERT INTO loyalty_points (user_id, points) VALUES ($1, $2)
                     ON CONFLICT (user_id) DO UPDATE
                     SET points = loyalty_points.points + excluded.points",
            (user_id, points),
        ));
        Ok(())
    }

    async fn record_sale(&mut self, order: &Order, at: Timestamp) -> StoreResult<()> {
        let currency = order.currency.as_str();
        self.defer(stmt(
            "record_daily_sale",
            "INSERT INTO daily_sales (day, currency, orders, revenue_cents) VALUES ($1, $2, 1, $3)
                     ON CONFLICT (day, currency) DO UPDATE
                     SET orders = daily_sales.orders + 1,
                         revenue_cents = daily_sales.revenue_cents + excluded.revenue_cents",
            (at.date_naive(), currency, order.total_cents),
        ));
        // Per product, in product-id order (upserts lock rows; a fixed order
        // keeps two sales of overlapping products from deadlocking).
        let mut per_product: BTreeMap<ProductId, (i64, i64)> = BTreeMap::new();
        for line in &order.items {
            let entry = per_product.entry(line.product_id).or_default();
            entry.0 += i64::from(line.quantity);
            entry.1 += line.line_total_cents;
        }
        for (product_id, (quantity, revenue)) in &per_product {
            self.defer(stmt(
                "record_product_sale",
                "INSERT INTO product_sales (product_id, quantity,
                            revenue_cents) VALUES ($1, $2, $3)
                         ON CONFLICT (product_id) DO UPDATE
                         SET quantity = product_sales.quantity + excluded.quantity,
                             revenue_cents = product_sales.revenue_cents + excluded.revenue_cents",
                (*product_id, *quantity, *revenue),
            ));
        }
        let units: i64 = per_product.values().map(|(quantity, _)| quantity).sum();
        for granularity in Granularity::ALL {
            let window_start = granularity.window_start(at);
            self.defer(stmt(
                "record_sales_window",
                "INSERT INTO sales_windows (granularity, window_start, currency, orders, units,
                            revenue_cents) VALUES ($1, $2, $3, 1, $4, $5)
                         ON CONFLICT (granularity, window_start, currency) DO UPDATE
                         SET orders = sales_windows.orders + 1,
                             units = sales_windows.units + excluded.units,
                             revenue_cents = sales_windows.revenue_cents + excluded.revenue_cents",
                (
                    granularity.as_str(),
                    window_start,
                    currency,
                    units,
                    order.total_cents,
                ),
            ));
            for (product_id, (quantity, revenue)) in &per_product {
                self.defer(stmt(
                    "record_product_sales_window",
                    "INSERT INTO product_sales_windows (granularity, window_start, product_id,
                                currency, orders, units, revenue_cents)
                             VALUES ($1, $2, $3, $4, 1, $5, $6)
                             ON CONFLICT (granularity, window_start, product_id, currency)
                             DO UPDATE
                             SET orders = product_sales_windows.orders + 1,
                                 units = product_sales_windows.units + excluded.units,
                                 revenue_cents = product_sales_windows.revenue_cents
                                                 + excluded.revenue_cents",
                    (
                        granularity.as_str(),
                        window_start,
                        *product_id,
                        currency,
                        *quantity,
                        *revenue,
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn add_product_views(
        &mut self,
        product_id: ProductId,
        views: u64,
        at: Timestamp,
    ) -> StoreResult<()> {
        let views = i64::try_from(views).unwrap_or(i64::MAX);
        self.defer(stmt(
            "add_product_views",
            "INSERT INTO product_views (product_id, views) VALUES ($1, $2)
                 ON CONFLICT (product_id) DO UPDATE
                 SET views = product_views.views + excluded.views",
            (product_id, views),
        ));
        self.defer(stmt(
            "add_product_view_minute",
            "INSERT INTO product_view_minutes (minute_start, product_id, views)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (minute_start, product_id) DO UPDATE
                 SET views = product_view_minutes.views + excluded.views",
            (Granularity::Minute.window_start(at), product_id, views),
        ));
        Ok(())
    }

    async fn add_product_viewers(
        &mut self,
        day: chrono::NaiveDate,
        product_id: ProductId,
        viewers: &[String],
    ) -> StoreResult<()> {
        if viewers.is_empty() {
            return Ok(());
        }
        self.defer(stmt(
            "add_product_viewers",
            per(
                "INSERT INTO product_viewers (day, product_id, viewer)
                 SELECT $1, $2, value FROM json_each($3) WHERE true
                 ON CONFLICT DO NOTHING",
                "INSERT INTO product_viewers (day, product_id, viewer)
                 SELECT $1, $2, unnest($3::text[])
                 ON CONFLICT DO NOTHING",
            ),
            (day, product_id, viewers.to_vec()),
        ));
        Ok(())
    }

    async fn remember_for_fraud(
        &mut self,
        user_id: UserId,
        order: &WindowOrder,
    ) -> StoreResult<()> {
        self.defer(stmt(
            "remember_for_fraud",
            "INSERT INTO fraud_orders (order_id, user_id, placed_at, total_cents, currency)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (order_id) DO NOTHING",
            (
                order.order_id,
                user_id,
                order.at,
                order.total_cents,
                order.currency.as_str(),
            ),
        ));
        Ok(())
    }

    /// A duplicate is the expected case (a redelivered event), not an error:
    /// DO NOTHING reports it as zero affected rows. On PostgreSQL a
    /// concurrent mark of the same event waits for this one's outcome.
    async fn mark_processed(&mut self, group: &str, event_id: EventId) -> StoreResult<bool> {
        let done = self
            .conn()
            .await?
            .exec(stmt(
                "mark_processed",
                "INSERT INTO processed_events (group_name, event_id,
                        processed_at) VALUES ($1, $2, $3)
                     ON CONFLICT (group_name, event_id) DO NOTHING",
                (group, event_id, chrono::Utc::now()),
            ))
            .await?;
        Ok(done == 1)
    }

    /// One statement for the whole list: `RETURNING` names the events this
    /// call marked; an id repeated in the list counts at its first place.
    async fn mark_processed_many(
        &mut self,
        group: &str,
        event_ids: &[EventId],
    ) -> StoreResult<Vec<bool>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = chrono::Utc::now();
        let mut insert = stmt(
            "mark_processed",
            format!(
                "INSERT INTO processed_events (group_name, event_id, processed_at) VALUES {}
                 ON CONFLICT (group_name, event_id) DO NOTHING RETURNING event_id",
                values_list(event_ids.len(), 3, 1)
            ),
            (),
        );
        for id in event_ids {
            insert = insert.bind(group).bind(*id).bind(now);
        }
        let mut marked: std::collections::HashSet<EventId> = self
            .conn()
            .await?
            .query_all(insert)
            .await?
            .iter()
            .map(|row| row.uuid("event_id"))
            .collect::<StoreResult<_>>()?;
        Ok(event_ids.iter().map(|id| marked.remove(id)).collect())
    }

    #[tracing::instrument(name = "event.append", skip_all, fields(events = events.len()))]
    async fn append(&mut self, events: &[Envelope]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        match self.destination {
            EventDestination::EmbeddedLog => self.append_to_log(events).await,
            EventDestination::Outbox => {
                self.append_to_outbox(events);
                Ok(())
            }
        }
    }

    /// `ON CONFLICT … DO NOTHING` on the partial unique index of unreplayed
    /// dead letters per (group, event): a redelivered event that fails
    /// again is not filed twice.
    async fn insert_dead_letter(&mut self, dead_letter: &DeadLetter) -> StoreResult<bool> {
        let inserted = self
            .run(stmt(
                "insert_dead_letter",
                r#"INSERT INTO dead_letters
                   (id, group_name, topic, "partition", "offset", error, attempts, event,
                    failed_at, replayed_at, event_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (group_name, event_id) WHERE replayed_at IS NULL DO NOTHING"#,
                (
                    dead_letter.id,
                    &dead_letter.group,
                    &dead_letter.topic,
                    dead_letter.partition,
                    dead_letter.offset,
                    &dead_letter.error,
                    i64::from(dead_letter.attempts),
                    dead_letter.event.to_json(),
                    dead_letter.failed_at,
                    dead_letter.replayed_at,
                    dead_letter.event.id,
                ),
            ))
            .await?;
        Ok(inserted == 1)
    }

    async fn mark_dead_letter_replayed(
        &mut self,
        id: uuid::Uuid,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let done = self
            .conn()
            .await?
            .exec(stmt(
                "mark_dead_letter_replayed",
                "UPDATE dead_letters SET replayed_at = $1 WHERE id = $2 AND replayed_at IS NULL",
                (at, id),
            ))
            .await?;
        Ok(done == 1)
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

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        let shopper_writes = std::mem::take(&mut self.shopper_writes);
        self.deferred.extend(shopper_writes.into_statements::<E>());
        self.conn().await?;
        let SqlTx {
            write,
            engine,
            appended,
            appended_to_outbox,
            ..
        } = *self;
        let (appended, events) = appended.into_parts();
        // The tail takes the events in commit order: still under the writer.
        if engine.core().tail.is_some() && !events.is_empty() {
            let engine = engine.clone();
            write
                .commit_then(move || {
                    if let Some(tail) = &engine.core().tail {
                        tail.add(events);
                    }
                })
                .await?;
        } else {
            write.commit().await?;
        }
        // Outbox rows are published (and counted) by the relay, once the
        // broker has them; events in the embedded log are published now.
        if !appended.is_empty() {
            for topic in &appended {
                metrics::counter!("orderflow_events_published_total", "topic" => *topic)
                    .increment(1);
            }
            // Only now are the events visible to readers; wake this process's
            // waiting subscriptions of those topics so delivery does not wait
            // for their poll timeout (PostgreSQL's NOTIFY reaches the other
            // processes).
            let mut topics = appended;
            topics.sort_unstable();
            topics.dedup();
            engine.wake_subscribers(&topics);
        }
        if appended_to_outbox {
            engine.wake_subscribers(&[OUTBOX_SIGNAL]);
        }
        Ok(())
    }
}
