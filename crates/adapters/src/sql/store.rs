//! `impl Store for SqlStore<E>`: stand-alone reads, and the session,
//! revocation and catalog writes the port keeps outside a unit of work, for
//! both engines.
//!
//! Reads go straight to a pooled connection (SQLite's WAL readers never wait
//! for the writer; PostgreSQL's never wait for row locks). A write that is a
//! single statement runs on a pooled connection too, holding what the engine
//! needs for it ([`Engine::single_write`]: SQLite's writer, on PostgreSQL
//! nothing, since every statement is atomic). Writes that read first
//! (refresh-token rotation) run in a write transaction.

use async_trait::async_trait;
use orderflow_core::ports::store::{
    ChangesPage, DailySales, DeadLetter, FraudHistory, FraudSummary, IdempotencyRecord,
    LeaderboardEntry, NotificationChange, NotificationRecord, OrderChange, PointsStanding,
    ProductSales, Prunable, Rebuildable, RefreshRotation, SalesWindow, SessionRecord, Since, Store,
    StoreError, StoreResult, StoreTx, UserRecord,
};
use orderflow_domain::events::topics;
use orderflow_domain::money::Currency;
use orderflow_domain::order::{HistoryEntry, Order, OrderStatus};
use orderflow_domain::product::{Product, ProductDraft, ProductSearch, ProductSort};
use orderflow_domain::sales::WindowRange;
use orderflow_domain::{EventId, OrderId, ProductId, Timestamp, UserId};

use super::rows::product_columns;
use super::rows::{
    self, DEAD_LETTER_COLUMNS, ORDER_COLUMNS, PRODUCT_COLUMNS, SESSION_COLUMNS, USER_COLUMNS,
};
use super::tx::SqlTx;
use super::{Arg, Dialect, Engine, Exec, Sql, SqlRow, SqlStore, Stmt, WritePriority, per, stmt};

/// A live channel's newest `$limit` rows of `$select` (which names its
/// position column `seq`) by `$order`, in one statement (one snapshot),
/// oldest first. A macro, so the statement is a `&'static str` made at
/// compile time.
macro_rules! newest {
    ($select:expr, $order:literal, $limit:literal) => {
        concat!(
            "SELECT * FROM (",
            $select,
            " ORDER BY ",
            $order,
            " DESC LIMIT ",
            $limit,
            ") AS latest ORDER BY seq"
        )
    };
}

/// `SELECT <columns> FROM <rest>`: the column lists are constants of
/// [`rows`], so the statement is as fixed as a literal.
pub(crate) fn select(columns: &str, rest: &str) -> Sql {
    Sql::Built(format!("SELECT {columns} FROM {rest}"))
}

/// Loads the lines of `orders` (one query for all of them) and attaches them
/// in line order.
pub(crate) async fn attach_items<C: Exec + ?Sized>(
    conn: &mut C,
    orders: &mut [Order],
) -> StoreResult<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
    let rows = conn
        .query_all(stmt(
            "order_items",
            per(
                "SELECT order_id, product_id, sku, name, quantity, unit_price_cents,
                        line_total_cents
                     FROM order_items WHERE order_id IN (SELECT value FROM json_each($1))
                     ORDER BY order_id, line_no",
                "SELECT order_id, product_id, sku, name, quantity, unit_price_cents,
                        line_total_cents
                     FROM order_items WHERE order_id = ANY($1)
                     ORDER BY order_id, line_no",
            ),
            (ids,),
        ))
        .await?;
    for row in &rows {
        let order_id = row.uuid("order_id")?;
        let line = rows::order_line(row)?;
        if let Some(order) = orders.iter_mut().find(|o| o.id == order_id) {
            order.items.push(line);
        }
    }
    Ok(())
}

/// One order with its lines, read on `conn` (a pooled connection or the
/// connection of a unit of work). `locking` is the statement for a unit of
/// work that changes the order: on PostgreSQL `FOR UPDATE` locks the row
/// until it ends; SQLite's unit of work holds the writer already.
pub(crate) async fn load_order<C: Exec + ?Sized>(
    conn: &mut C,
    id: OrderId,
    locking: bool,
) -> StoreResult<Option<Order>> {
    let lock = if locking { C::DIALECT.for_update() } else { "" };
    let sql = Sql::Built(format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1{lock}"
    ));
    let Some(row) = conn.query_opt(stmt("order", sql, (id,))).await? else {
        return Ok(None);
    };
    let mut orders = [rows::order_head(&row)?];
    attach_items(conn, &mut orders).await?;
    let [order] = orders;
    Ok(Some(order))
}

/// Reads at most one row on a pooled connection.
async fn read_one<E: Engine, T>(
    engine: &E,
    stmt: Stmt,
    map: impl Fn(&<E::ReadConn as Exec>::Row) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut conn = engine.read().await?;
    conn.query_opt(stmt).await?.as_ref().map(map).transpose()
}

/// The integer column `column` of the row `stmt` reads, 0 when it reads
/// none: a count, a balance, a tally not started yet.
async fn read_int_or_zero<E: Engine>(
    engine: &E,
    stmt: Stmt,
    column: &'static str,
) -> StoreResult<i64> {
    Ok(read_one(engine, stmt, |row| row.int(column))
        .await?
        .unwrap_or(0))
}

/// The statement that reads one idempotency record.
pub(crate) fn idempotency_lookup(user_id: UserId, key: &str) -> Stmt {
    stmt(
        "idempotency_lookup",
        "SELECT request_hash, response_status, response_body FROM idempotency_keys
             WHERE user_id = $1 AND key = $2",
        (user_id, key),
    )
}

/// A search's statement: the full-text match when there are words (the
/// one part written per engine), then the filters, the order and the page.
/// The words are letters and digits only (`search_words`), each matched
/// as a prefix; the other values are bound.
fn search_statement<E: Engine>(search: &ProductSearch) -> Stmt {
    let mut args: Vec<Arg> = Vec::new();
    let mut bind = |value: Arg| {
        args.push(value);
        format!("${}", args.len())
    };
    let mut sql = String::from("SELECT p.id FROM products p");
    let mut conditions = Vec::new();
    let matching = !search.words.is_empty();
    if matching {
        match E::DIALECT {
            Dialect::Sqlite => {
                let query: Vec<String> = search.words.iter().map(|w| format!("\"{w}\"*")).collect();
                sql.push_str(&format!(
                    " JOIN products_search ON products_search.rowid = p.rowid \
                     AND products_search MATCH {}",
                    bind(Arg::Text(query.join(" ")))
                ));
            }
            Dialect::Postgres => {
                let query: Vec<String> = search.words.iter().map(|w| format!("{w}:*")).collect();
                sql.push_str(&format!(
                    ", to_tsquery('simple', {}) AS q",
                    bind(Arg::Text(query.join(" & ")))
                ));
                conditions.push("p.search @@ q".to_owned());
            }
        }
    }
    if let Some(category) = &search.category {
        conditions.push(format!(
            "p.category = {}",
            bind(Arg::Text(category.clone()))
        ));
    }
    if let Some(min) = search.min_price_cents {
        conditions.push(format!("p.price_cents >= {}", bind(Arg::Int(min))));
    }
    if let Some(max) = search.max_price_cents {
        conditions.push(format!("p.price_cents <= {}", bind(Arg::Int(max))));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let order = match (search.sort, matching, E::DIALECT) {
        (ProductSort::Relevance, true, Dialect::Sqlite) => "products_search.rank, p.id",
        (ProductSort::Relevance, true, Dialect::Postgres) => "ts_rank(p.search, q) DESC, p.id",
        (ProductSort::Relevance, false, _) => "p.id",
        (ProductSort::PriceAsc, ..) => "p.price_cents, p.id",
        (ProductSort::PriceDesc, ..) => "p.price_cents DESC, p.id",
        (ProductSort::Name, ..) => "p.name, p.id",
        (ProductSort::Newest, ..) => "p.created_at DESC, p.id DESC",
    };
    sql.push_str(&format!(
        " ORDER BY {order} LIMIT {} OFFSET {}",
        bind(Arg::Int(i64::from(search.limit))),
        bind(Arg::Int(i64::from(search.offset)))
    ));
    Stmt {
        op: "search_products",
        sql: Sql::Built(sql),
        args,
    }
}

async fn read_all<E: Engine, T>(
    engine: &E,
    stmt: Stmt,
    map: impl Fn(&<E::ReadConn as Exec>::Row) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut conn = engine.read().await?;
    conn.query_all(stmt).await?.iter().map(map).collect()
}

/// The statements of a partial reset: the windows from `since`'s day on,
/// and what they added to the all-time totals (the windows of the day
/// granularity are kept forever, the minute ones longer than the log keeps
/// events, so the sums are exact for any day a rebuild can replay).
fn reset_since(what: Rebuildable, since: Since) -> Vec<Stmt> {
    let (day, start) = (since.day, since.start());
    match what {
        Rebuildable::Analytics => vec![
            stmt(
                "reset_daily_sales_since",
                "DELETE FROM daily_sales WHERE day >= $1",
                (day,),
            ),
            stmt(
                "reset_product_sales_since",
                "UPDATE product_sales SET
                     quantity = quantity - COALESCE((SELECT SUM(w.units) FROM product_sales_windows w
                         WHERE w.product_id = product_sales.product_id
                           AND w.granularity = 'day' AND w.window_start >= $1), 0),
                     revenue_cents = revenue_cents - COALESCE((SELECT SUM(w.revenue_cents)
                         FROM product_sales_windows w
                         WHERE w.product_id = product_sales.product_id
                           AND w.granularity = 'day' AND w.window_start >= $1), 0)",
                (start,),
            ),
            stmt(
                "reset_sales_windows_since",
                "DELETE FROM sales_windows WHERE window_start >= $1",
                (start,),
            ),
            stmt(
                "reset_product_sales_windows_since",
                "DELETE FROM product_sales_windows WHERE window_start >= $1",
                (start,),
            ),
        ],
        Rebuildable::Fraud => vec![stmt(
            "reset_fraud_orders_since",
            "DELETE FROM fraud_orders WHERE placed_at >= $1",
            (start,),
        )],
        Rebuildable::Trending => vec![
            stmt(
                "reset_product_views_since",
                "UPDATE product_views SET views = views - COALESCE((SELECT SUM(m.views)
                     FROM product_view_minutes m
                     WHERE m.product_id = product_views.product_id AND m.minute_start >= $1), 0)",
                (start,),
            ),
            stmt(
                "reset_view_minutes_since",
                "DELETE FROM product_view_minutes WHERE minute_start >= $1",
                (start,),
            ),
            stmt(
                "reset_product_viewers_since",
                "DELETE FROM product_viewers WHERE day >= $1",
                (day,),
            ),
        ],
    }
}

/// When the order `id` was created: the keyset cursor of the order lists
/// (`None` for an id that names no order, deleted or made up).
async fn order_created_at<C: Exec>(conn: &mut C, id: OrderId) -> StoreResult<Option<Timestamp>> {
    conn.query_opt(stmt(
        "order_cursor",
        "SELECT created_at FROM orders WHERE id = $1",
        (id,),
    ))
    .await?
    .map(|row| row.time("created_at"))
    .transpose()
}

/// Runs a single-statement write outside a unit of work; how many rows it
/// changed.
async fn write<E: Engine>(engine: &E, stmt: Stmt) -> StoreResult<u64> {
    engine.single_write().await?.exec(stmt).await
}

/// Runs a single-statement write that returns at most one row.
async fn write_returning<E: Engine, T>(
    engine: &E,
    stmt: Stmt,
    map: impl Fn(&<E::WriteConn as Exec>::Row) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut conn = engine.single_write().await?;
    conn.query_opt(stmt).await?.as_ref().map(map).transpose()
}

#[async_trait]
impl<E: Engine> Store for SqlStore<E> {
    async fn migrate(&self) -> StoreResult<()> {
        self.engine.migrate().await
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.engine.read().await?;
        conn.exec(stmt("ping", "SELECT 1", ())).await?;
        Ok(())
    }

    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>> {
        let write = self.engine.begin_write(WritePriority::Request).await?;
        Ok(Box::new(SqlTx::new(
            self.engine.clone(),
            write,
            self.destination,
        )))
    }

    async fn begin_group_commit(&self, group: &str) -> StoreResult<Box<dyn StoreTx>> {
        let write = self.engine.begin_group_commit(group).await?;
        Ok(Box::new(SqlTx::new(
            self.engine.clone(),
            write,
            self.destination,
        )))
    }

    async fn begin_background(&self) -> StoreResult<Box<dyn StoreTx>> {
        let write = self.engine.begin_write(WritePriority::Background).await?;
        Ok(Box::new(SqlTx::new(
            self.engine.clone(),
            write,
            self.destination,
        )))
    }

    // --- users and sessions ---

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        read_one(
            &*self.engine,
            stmt(
                "user_by_email",
                select(USER_COLUMNS, "users WHERE email = $1"),
                (email,),
            ),
            rows::user,
        )
        .await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        read_one(
            &*self.engine,
            stmt(
                "user_by_id",
                select(USER_COLUMNS, "users WHERE id = $1"),
                (id,),
            ),
            rows::user,
        )
        .await
    }

    async fn create_session(&self, session: &SessionRecord, refresh_hash: &str) -> StoreResult<()> {
        write(
            &*self.engine,
            stmt(
                "create_session",
                "INSERT INTO sessions (id, user_id, device, refresh_hash, created_at,
                    last_used_at, expires_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                (
                    session.id,
                    session.user_id,
                    &session.device,
                    refresh_hash,
                    session.created_at,
                    session.last_used_at,
                    session.expires_at,
                    session.revoked_at,
                ),
            ),
        )
        .await?;
        Ok(())
    }

    /// Read-then-write in one write transaction. On SQLite the transaction
    /// holds the writer, so two requests presenting the same token cannot
    /// both rotate it. On PostgreSQL `FOR UPDATE` locks the session row: a
    /// second presentation of the same token waits there; when the first
    /// commits, PostgreSQL re-checks `refresh_hash = $1` against the new row
    /// version, finds it changed, and the second one falls through to the
    /// reuse check below, which then sees the committed rotation.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        now: Timestamp,
        new_expires_at: Timestamp,
    ) -> StoreResult<RefreshRotation> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        let current = w
            .query_opt(stmt(
                "session_by_refresh_hash",
                Sql::Built(format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE refresh_hash = $1{}",
                    E::DIALECT.for_update()
                )),
                (presented_hash,),
            ))
            .await?;
        if let Some(row) = current {
            let mut session = rows::session(&row)?;
            if session.revoked_at.is_some() || session.expires_at <= now {
                return Ok(RefreshRotation::Invalid);
            }
            w.exec(stmt(
                "insert_rotated_refresh_token",
                "INSERT INTO rotated_refresh_tokens (refresh_hash, session_id,
                        rotated_at) VALUES ($1, $2, $3)",
                (presented_hash, session.id, now),
            ))
            .await?;
            w.exec(stmt(
                "rotate_session",
                "UPDATE sessions SET refresh_hash = $1, last_used_at = $2,
                        expires_at = $3 WHERE id = $4",
                (new_hash, now, new_expires_at, session.id),
            ))
            .await?;
            super::WriteTx::commit(w).await?;
            session.last_used_at = now;
            session.expires_at = new_expires_at;
            return Ok(RefreshRotation::Rotated { session });
        }

        let rotated = w
            .query_opt(stmt(
                "rotated_refresh_token",
                "SELECT s.id, s.user_id
                     FROM rotated_refresh_tokens r JOIN sessions s ON s.id = r.session_id
                     WHERE r.refresh_hash = $1",
                (presented_hash,),
            ))
            .await?;
        let Some(row) = rotated else {
            return Ok(RefreshRotation::Invalid);
        };
        let session_id = row.uuid("id")?;
        let user_id = row.uuid("user_id")?;
        // A token that was already exchanged came back: whoever holds the
        // current one may be the thief, so the whole session dies.
        w.exec(stmt(
            "revoke_session",
            "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            (now, session_id),
        ))
        .await?;
        super::WriteTx::commit(w).await?;
        Ok(RefreshRotation::ReuseDetected {
            session_id,
            user_id,
        })
    }

    async fn session(&self, id: uuid::Uuid) -> StoreResult<Option<SessionRecord>> {
        read_one(
            &*self.engine,
            stmt(
                "session",
                select(SESSION_COLUMNS, "sessions WHERE id = $1"),
                (id,),
            ),
            rows::session,
        )
        .await
    }

    /// All sessions of the user, revoked and expired ones included, newest first.
    async fn sessions_of_user(&self, user_id: UserId) -> StoreResult<Vec<SessionRecord>> {
        read_all(
            &*self.engine,
            stmt(
                "sessions_of_user",
                select(
                    SESSION_COLUMNS,
                    "sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
                ),
                (user_id,),
            ),
            rows::session,
        )
        .await
    }

    async fn revoke_session(&self, id: uuid::Uuid, now: Timestamp) -> StoreResult<bool> {
        let changed = write(
            &*self.engine,
            stmt(
                "revoke_session",
                "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                (now, id),
            ),
        )
        .await?;
        Ok(changed == 1)
    }

    async fn revoke_all_sessions(&self, user_id: UserId, now: Timestamp) -> StoreResult<u64> {
        write(
            &*self.engine,
            stmt(
                "revoke_all_sessions",
                "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
                (now, user_id),
            ),
        )
        .await
    }

    // --- revoked access tokens ---

    async fn insert_revocation(&self, jti: &str, expires_at: Timestamp) -> StoreResult<()> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        // Entries past their token's expiry protect nothing; dropping them here
        // keeps the table (and the warm-up copy) as small as the live set.
        w.exec(stmt(
            "purge_revocations",
            "DELETE FROM revoked_tokens WHERE expires_at <= $1",
            (chrono::Utc::now(),),
        ))
        .await?;
        // Revoking twice keeps the later expiry: a revocation never shrinks.
        w.exec(stmt(
            "insert_revocation",
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)
                 ON CONFLICT (jti) DO UPDATE SET expires_at = CASE
                     WHEN excluded.expires_at > revoked_tokens.expires_at THEN excluded.expires_at
                     ELSE revoked_tokens.expires_at END",
            (jti, expires_at),
        ))
        .await?;
        super::WriteTx::commit(w).await
    }

    async fn is_revoked(&self, jti: &str, now: Timestamp) -> StoreResult<bool> {
        let found = read_one(
            &*self.engine,
            stmt(
                "is_revoked",
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens
                                   WHERE jti = $1 AND expires_at > $2) AS found",
                (jti, now),
            ),
            |row| row.bool("found"),
        )
        .await?;
        Ok(found == Some(true))
    }

    async fn active_revocations(&self, now: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        read_all(
            &*self.engine,
            stmt(
                "active_revocations",
                "SELECT jti,
                    expires_at FROM revoked_tokens WHERE expires_at > $1 ORDER BY expires_at",
                (now,),
            ),
            |row| Ok((row.text("jti")?, row.time("expires_at")?)),
        )
        .await
    }

    async fn set_tokens_valid_after(&self, user_id: UserId, after: Timestamp) -> StoreResult<()> {
        write(
            &*self.engine,
            stmt(
                "set_tokens_valid_after",
                "UPDATE users SET tokens_valid_after = $1 WHERE id = $2",
                (after, user_id),
            ),
        )
        .await?;
        Ok(())
    }

    async fn tokens_valid_after(&self, user_id: UserId) -> StoreResult<Option<Timestamp>> {
        let after = read_one(
            &*self.engine,
            stmt(
                "tokens_valid_after",
                "SELECT tokens_valid_after FROM users WHERE id = $1",
                (user_id,),
            ),
            |row| row.opt_time("tokens_valid_after"),
        )
        .await?;
        Ok(after.flatten())
    }

    // --- catalog ---

    /// Keyset paging on the primary key: each page is an index range scan,
    /// however deep the cursor. Two statements rather than one with
    /// `$1 IS NULL OR id > $1`, which a generic plan cannot turn into a
    /// range scan.
    async fn list_products(
        &self,
        after: Option<ProductId>,
        limit: u32,
    ) -> StoreResult<Vec<Product>> {
        let limit = i64::from(limit);
        let query = match after {
            Some(after) => stmt(
                "list_products",
                select(
                    PRODUCT_COLUMNS,
                    "products WHERE id > $2 ORDER BY id LIMIT $1",
                ),
                (limit, after),
            ),
            None => stmt(
                "list_products",
                select(PRODUCT_COLUMNS, "products ORDER BY id LIMIT $1"),
                (limit,),
            ),
        };
        read_all(&*self.engine, query, rows::product).await
    }

    async fn search_products(&self, search: &ProductSearch) -> StoreResult<Vec<ProductId>> {
        read_all(&*self.engine, search_statement::<E>(search), |row| {
            row.uuid("id")
        })
        .await
    }

    async fn idempotency_record(
        &self,
        user_id: UserId,
        key: &str,
    ) -> StoreResult<Option<IdempotencyRecord>> {
        read_one(
            &*self.engine,
            idempotency_lookup(user_id, key),
            rows::idempotency,
        )
        .await
    }

    async fn categories(&self) -> StoreResult<Vec<(String, i64)>> {
        read_all(
            &*self.engine,
            stmt(
                "categories",
                "SELECT category, count(*) AS products FROM products
                     WHERE category IS NOT NULL GROUP BY category ORDER BY category",
                (),
            ),
            |row| Ok((row.text("category")?, row.int("products")?)),
        )
        .await
    }

    async fn product(&self, id: ProductId) -> StoreResult<Option<Product>> {
        read_one(
            &*self.engine,
            stmt(
                "product",
                select(PRODUCT_COLUMNS, "products WHERE id = $1"),
                (id,),
            ),
            rows::product,
        )
        .await
    }

    /// The products that exist among `ids`, ordered by id; unknown ids are
    /// simply absent.
    async fn products_by_ids(&self, ids: &[ProductId]) -> StoreResult<Vec<Product>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read_all(
            &*self.engine,
            stmt(
                "products_by_ids",
                per(
                    concat!(
                        "SELECT ",
                        product_columns!(),
                        " FROM products WHERE id IN (SELECT value FROM json_each($1)) ORDER BY id"
                    ),
                    concat!(
                        "SELECT ",
                        product_columns!(),
                        " FROM products WHERE id = ANY($1) ORDER BY id"
                    ),
                ),
                (ids.to_vec(),),
            ),
            rows::product,
        )
        .await
    }

    async fn count_products(&self) -> StoreResult<i64> {
        read_int_or_zero(
            &*self.engine,
            stmt("count_products", "SELECT COUNT(*) AS n FROM products", ()),
            "n",
        )
        .await
    }

    async fn insert_product(
        &self,
        id: ProductId,
        draft: &ProductDraft,
        now: Timestamp,
    ) -> StoreResult<Product> {
        let product = write_returning(
            &*self.engine,
            stmt(
                "insert_product",
                concat!(
                    "INSERT INTO products (id, sku, name, price_cents, currency, stock,
                        description, category, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $8, $9, $7, $7) RETURNING ",
                    product_columns!()
                ),
                (
                    id,
                    &draft.sku,
                    &draft.name,
                    draft.price_cents,
                    draft.currency.as_str(),
                    draft.stock,
                    now,
                    &draft.description,
                    draft.category.clone(),
                ),
            ),
            rows::product,
        )
        .await?;
        product.ok_or_else(|| {
            orderflow_core::ports::store::StoreError::Database(
                "insert_product returned no row".into(),
            )
        })
    }

    /// Replaces every field, stock included (an admin's stock count wins over
    /// whatever reservations did before it).
    async fn update_product(
        &self,
        id: ProductId,
        draft: &ProductDraft,
        now: Timestamp,
    ) -> StoreResult<Option<Product>> {
        write_returning(
            &*self.engine,
            stmt(
                "update_product",
                concat!(
                    "UPDATE products SET sku = $1, name = $2, price_cents = $3, currency = $4,
                        stock = $5, updated_at = $6, version = version + 1,
                        description = $8, category = $9
                     WHERE id = $7 RETURNING ",
                    product_columns!()
                ),
                (
                    &draft.sku,
                    &draft.name,
                    draft.price_cents,
                    draft.currency.as_str(),
                    draft.stock,
                    now,
                    id,
                    &draft.description,
                    draft.category.clone(),
                ),
            ),
            rows::product,
        )
        .await
    }

    /// One write transaction for the whole batch: an import is all or
    /// nothing per call. A SKU that exists keeps its id and gets the new
    /// fields (and a new version, set here so `RETURNING` reports it on
    /// SQLite too; the version trigger then leaves it alone).
    async fn import_products(
        &self,
        products: &[(ProductId, ProductDraft)],
        now: Timestamp,
    ) -> StoreResult<Vec<Product>> {
        let mut w = self.engine.begin_write(WritePriority::Request).await?;
        let mut stored = Vec::with_capacity(products.len());
        for (id, draft) in products {
            let row = w
                .query_one(stmt(
                    "import_product",
                    concat!(
                        "INSERT INTO products (id, sku, name, price_cents, currency, stock,
                            description, category, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $8, $9, $7, $7)
                         ON CONFLICT (sku) DO UPDATE SET name = excluded.name,
                            price_cents = excluded.price_cents, currency = excluded.currency,
                            stock = excluded.stock, description = excluded.description,
                            category = excluded.category, updated_at = excluded.updated_at,
                            version = products.version + 1
                         RETURNING ",
                        product_columns!()
                    ),
                    (
                        *id,
                        &draft.sku,
                        &draft.name,
                        draft.price_cents,
                        draft.currency.as_str(),
                        draft.stock,
                        now,
                        &draft.description,
                        draft.category.clone(),
                    ),
                ))
                .await?;
            stored.push(rows::product(&row)?);
        }
        super::WriteTx::commit(w).await?;
        Ok(stored)
    }

    async fn most_viewed(
        &self,
        from: Timestamp,
        to: Timestamp,
        top: u32,
    ) -> StoreResult<Vec<(ProductId, i64)>> {
        read_all(
            &*self.engine,
            stmt(
                "most_viewed",
                "SELECT product_id, CAST(SUM(views) AS BIGINT) AS views
                 FROM product_view_minutes
                 WHERE minute_start >= $1 AND minute_start < $2
                 GROUP BY product_id
                 ORDER BY views DESC, product_id
                 LIMIT $3",
                (from, to, i64::from(top)),
            ),
            |row| Ok((row.uuid("product_id")?, row.int("views")?)),
        )
        .await
    }

    async fn fraud_history(
        &self,
        user_id: UserId,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<FraudHistory> {
        // One statement: the watermark, joined to the orders in the range;
        // a shopper with none in it still has the watermark's row (its
        // order columns NULL).
        let rows = read_all(
            &*self.engine,
            stmt(
                "fraud_history",
                "SELECT w.watermark, f.order_id, f.placed_at, f.total_cents, f.currency
                 FROM (SELECT MAX(placed_at) AS watermark FROM fraud_orders
                       WHERE user_id = $1) w
                 LEFT JOIN fraud_orders f
                   ON f.user_id = $1 AND f.placed_at >= $2 AND f.placed_at <= $3
                 ORDER BY f.placed_at, f.order_id",
                (user_id, from, to),
            ),
            |row| {
                let order = match row.opt_uuid("order_id")? {
                    Some(_) => Some(rows::window_order(row)?),
                    None => None,
                };
                Ok((row.opt_time("watermark")?, order))
            },
        )
        .await?;
        Ok(FraudHistory {
            watermark: rows.first().and_then(|(watermark, _)| *watermark),
            orders: rows.into_iter().filter_map(|(_, order)| order).collect(),
        })
    }

    async fn fraud_summary(
        &self,
        user_id: UserId,
        from: Timestamp,
        to: Timestamp,
        currency: &Currency,
    ) -> StoreResult<FraudSummary> {
        // An aggregate always answers one row.
        let summary = read_one(
            &*self.engine,
            stmt(
                "fraud_summary",
                "SELECT (SELECT MAX(placed_at) FROM fraud_orders WHERE user_id = $1) AS watermark,
                        COUNT(*) AS orders,
                        CAST(COALESCE(SUM(CASE WHEN currency = $4 THEN total_cents ELSE 0 END), 0)
                             AS BIGINT) AS total_cents
                 FROM fraud_orders
                 WHERE user_id = $1 AND placed_at >= $2 AND placed_at <= $3",
                (user_id, from, to, currency.as_str()),
            ),
            |row| {
                Ok(FraudSummary {
                    watermark: row.opt_time("watermark")?,
                    orders: u64::try_from(row.int("orders")?).unwrap_or_default(),
                    total_cents: row.int("total_cents")?,
                })
            },
        )
        .await?;
        Ok(summary.unwrap_or_default())
    }

    async fn unique_viewers(&self, day: chrono::NaiveDate, product: ProductId) -> StoreResult<i64> {
        read_int_or_zero(
            &*self.engine,
            stmt(
                "unique_viewers",
                "SELECT COUNT(*) AS n FROM product_viewers WHERE day = $1 AND product_id = $2",
                (day, product),
            ),
            "n",
        )
        .await
    }

    async fn viewer_salt(&self, day: chrono::NaiveDate, candidate: &str) -> StoreResult<String> {
        let mut w = self.engine.begin_write(WritePriority::Background).await?;
        w.exec(stmt(
            "insert_viewer_salt",
            "INSERT INTO viewer_salts (day, salt) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING",
            (day, candidate),
        ))
        .await?;
        super::WriteTx::commit(w).await?;
        read_one(
            &*self.engine,
            stmt(
                "viewer_salt",
                "SELECT salt FROM viewer_salts WHERE day = $1",
                (day,),
            ),
            |row| row.text("salt"),
        )
        .await?
        .ok_or_else(|| StoreError::Database(format!("the visitor-id salt of {day} vanished")))
    }

    async fn product_views(&self, id: ProductId) -> StoreResult<i64> {
        read_int_or_zero(
            &*self.engine,
            stmt(
                "product_views",
                "SELECT views FROM product_views WHERE product_id = $1",
                (id,),
            ),
            "views",
        )
        .await
    }

    // --- orders ---

    async fn order(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<HistoryEntry>)>> {
        let mut conn = self.engine.read().await?;
        let Some(order) = load_order(&mut *conn, id, false).await? else {
            return Ok(None);
        };
        let history = conn
            .query_all(stmt(
                "order_history",
                "SELECT status, at FROM order_history WHERE order_id = $1 ORDER BY seq",
                (id,),
            ))
            .await?
            .iter()
            .map(rows::history_entry)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((order, history)))
    }

    async fn order_without_history(&self, id: OrderId) -> StoreResult<Option<Order>> {
        let mut conn = self.engine.read().await?;
        load_order(&mut *conn, id, false).await
    }

    async fn orders_of_user(
        &self,
        user_id: UserId,
        before: Option<OrderId>,
        limit: u32,
    ) -> StoreResult<Vec<Order>> {
        let mut conn = self.engine.read().await?;
        let limit = i64::from(limit);
        let query = match before {
            None => stmt(
                "orders_of_user",
                select(
                    ORDER_COLUMNS,
                    "orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
                ),
                (user_id, limit),
            ),
            Some(before) => {
                // Keyset paging on (created_at, id), the index order, so ties
                // in created_at neither repeat nor skip orders. A cursor that
                // names no order (deleted, or made up) falls back to comparing
                // ids, which for UUID v7 ids also means "created earlier".
                match order_created_at(&mut *conn, before).await? {
                    Some(created_at) => stmt(
                        "orders_of_user",
                        select(
                            ORDER_COLUMNS,
                            "orders WHERE user_id = $1 AND (created_at, id) < ($2, $3)
                             ORDER BY created_at DESC, id DESC LIMIT $4",
                        ),
                        (user_id, created_at, before, limit),
                    ),
                    None => stmt(
                        "orders_of_user",
                        select(
                            ORDER_COLUMNS,
                            "orders WHERE user_id = $1 AND id < $2
                             ORDER BY created_at DESC, id DESC LIMIT $3",
                        ),
                        (user_id, before, limit),
                    ),
                }
            }
        };
        let mut orders = conn
            .query_all(query)
            .await?
            .iter()
            .map(rows::order_head)
            .collect::<StoreResult<Vec<_>>>()?;
        attach_items(&mut *conn, &mut orders).await?;
        Ok(orders)
    }

    async fn held_orders(&self, after: Option<OrderId>, limit: u32) -> StoreResult<Vec<Order>> {
        let mut conn = self.engine.read().await?;
        let limit = i64::from(limit);
        // Every form reads the partial index `orders_held`.
        let cursor = match after {
            Some(after) => order_created_at(&mut *conn, after)
                .await?
                .map(|created_at| (created_at, after)),
            None => None,
        };
        let query = match (after, cursor) {
            (None, _) => stmt(
                "held_orders",
                select(
                    ORDER_COLUMNS,
                    "orders WHERE status = 'held' ORDER BY created_at, id LIMIT $1",
                ),
                (limit,),
            ),
            (Some(_), Some((created_at, after))) => stmt(
                "held_orders",
                select(
                    ORDER_COLUMNS,
                    "orders WHERE status = 'held' AND (created_at, id) > ($1, $2)
                     ORDER BY created_at, id LIMIT $3",
                ),
                (created_at, after, limit),
            ),
            // A cursor that names no order: UUID v7 ids are in creation order.
            (Some(after), None) => stmt(
                "held_orders",
                select(
                    ORDER_COLUMNS,
                    "orders WHERE status = 'held' AND id > $1 ORDER BY created_at, id LIMIT $2",
                ),
                (after, limit),
            ),
        };
        let mut orders = conn
            .query_all(query)
            .await?
            .iter()
            .map(rows::order_head)
            .collect::<StoreResult<Vec<_>>>()?;
        attach_items(&mut *conn, &mut orders).await?;
        Ok(orders)
    }

    async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
        read_all(
            &*self.engine,
            stmt(
                "count_orders_by_status",
                "SELECT status, COUNT(*) AS n FROM orders GROUP BY status ORDER BY status",
                (),
            ),
            |row| Ok((rows::status(row, "status")?, row.int("n")?)),
        )
        .await
    }

    // --- read models ---

    async fn notifications_of_user(
        &self,
        user_id: UserId,
        limit: u32,
    ) -> StoreResult<Vec<NotificationRecord>> {
        read_all(
            &*self.engine,
            stmt(
                "notifications_of_user",
                "SELECT user_id, channel, kind, order_id, sent_at FROM notifications
                 WHERE user_id = $1 ORDER BY sent_at DESC, seq DESC LIMIT $2",
                (user_id, i64::from(limit)),
            ),
            rows::notification,
        )
        .await
    }

    async fn order_changes(
        &self,
        user_id: Option<UserId>,
        page: ChangesPage,
        limit: u32,
    ) -> StoreResult<Vec<OrderChange>> {
        macro_rules! changes {
            () => {
                "SELECT h.seq, h.order_id, o.user_id, h.status, h.at
                 FROM orders o JOIN order_history h ON h.order_id = o.id"
            };
        }
        let limit = i64::from(limit);
        let statement = match (user_id, page) {
            (Some(user_id), ChangesPage::After(after)) => stmt(
                "order_changes",
                concat!(
                    changes!(),
                    " WHERE o.user_id = $1 AND h.seq > $2 ORDER BY h.seq LIMIT $3"
                ),
                (user_id, after, limit),
            ),
            (None, ChangesPage::After(after)) => stmt(
                "all_order_changes",
                concat!(changes!(), " WHERE h.seq > $1 ORDER BY h.seq LIMIT $2"),
                (after, limit),
            ),
            (Some(user_id), ChangesPage::Latest) => stmt(
                "latest_order_changes",
                newest!(concat!(changes!(), " WHERE o.user_id = $1"), "h.seq", "$2"),
                (user_id, limit),
            ),
            (None, ChangesPage::Latest) => stmt(
                "latest_order_changes_of_anyone",
                newest!(changes!(), "h.seq", "$1"),
                (limit,),
            ),
        };
        read_all(&*self.engine, statement, rows::order_change).await
    }

    async fn last_order_change(&self, user_id: Option<UserId>) -> StoreResult<i64> {
        let statement = match user_id {
            Some(user_id) => stmt(
                "last_order_change",
                "SELECT COALESCE(MAX(h.seq), 0) AS last
                 FROM orders o JOIN order_history h ON h.order_id = o.id
                 WHERE o.user_id = $1",
                (user_id,),
            ),
            None => stmt(
                "last_order_change_of_anyone",
                "SELECT COALESCE(MAX(seq), 0) AS last FROM order_history",
                (),
            ),
        };
        let last = read_all(&*self.engine, statement, |row| row.int("last")).await?;
        Ok(last.first().copied().unwrap_or(0))
    }

    async fn notification_changes(
        &self,
        user_id: UserId,
        page: ChangesPage,
        limit: u32,
    ) -> StoreResult<Vec<NotificationChange>> {
        macro_rules! changes {
            () => {
                "SELECT seq, user_id, channel, kind, order_id, sent_at FROM notifications"
            };
        }
        let limit = i64::from(limit);
        let statement = match page {
            ChangesPage::After(after) => stmt(
                "notification_changes",
                concat!(
                    changes!(),
                    " WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ),
                (user_id, after, limit),
            ),
            ChangesPage::Latest => stmt(
                "latest_notification_changes",
                newest!(concat!(changes!(), " WHERE user_id = $1"), "seq", "$2"),
                (user_id, limit),
            ),
        };
        read_all(&*self.engine, statement, |row| {
            Ok(NotificationChange {
                position: row.int("seq")?,
                notification: rows::notification(row)?,
            })
        })
        .await
    }

    async fn last_notification(&self, user_id: UserId) -> StoreResult<i64> {
        let last = read_all(
            &*self.engine,
            stmt(
                "last_notification",
                "SELECT COALESCE(MAX(seq), 0) AS last FROM notifications WHERE user_id = $1",
                (user_id,),
            ),
            |row| row.int("last"),
        )
        .await?;
        Ok(last.first().copied().unwrap_or(0))
    }

    async fn points(&self, user_id: UserId) -> StoreResult<PointsStanding> {
        // Rank = 1 + how many users have strictly more points (ties share a
        // rank), answered from the points index.
        let standing = read_one(
            &*self.engine,
            stmt(
                "points",
                "SELECT p.points,
                            (SELECT COUNT(*) FROM loyalty_points o
                             WHERE o.points > p.points) AS ahead
                     FROM loyalty_points p WHERE p.user_id = $1",
                (user_id,),
            ),
            |row| {
                let points = row.int("points")?;
                let rank = (points > 0)
                    .then(|| row.int("ahead").map(|ahead| ahead + 1))
                    .transpose()?;
                Ok(PointsStanding { points, rank })
            },
        )
        .await?;
        Ok(standing.unwrap_or(PointsStanding {
            points: 0,
            rank: None,
        }))
    }

    async fn point_balance(&self, user_id: UserId) -> StoreResult<i64> {
        read_int_or_zero(
            &*self.engine,
            stmt(
                "point_balance",
                "SELECT points FROM loyalty_points WHERE user_id = $1",
                (user_id,),
            ),
            "points",
        )
        .await
    }

    async fn leaderboard(&self, limit: u32) -> StoreResult<Vec<LeaderboardEntry>> {
        // The inner query takes the top `limit` from the points index; RANK()
        // over that prefix equals the global rank, because everyone with more
        // points than a member of the prefix is in the prefix too.
        read_all(
            &*self.engine,
            stmt(
                "leaderboard",
                "SELECT top.user_id, COALESCE(u.name, '') AS name, top.points,
                        RANK() OVER (ORDER BY top.points DESC) AS rank
                 FROM (SELECT user_id, points FROM loyalty_points
                       WHERE points > 0 ORDER BY points DESC, user_id LIMIT $1) AS top
                 LEFT JOIN users u ON u.id = top.user_id
                 ORDER BY top.points DESC, top.user_id",
                (i64::from(limit),),
            ),
            |row| {
                Ok(LeaderboardEntry {
                    user_id: row.uuid("user_id")?,
                    name: row.text("name")?,
                    points: row.int("points")?,
                    rank: row.int("rank")?,
                })
            },
        )
        .await
    }

    /// The last `days` UTC calendar days (today included) that had sales,
    /// newest day first, one row per currency.
    async fn daily_sales(&self, days: u32) -> StoreResult<Vec<DailySales>> {
        if days == 0 {
            return Ok(Vec::new());
        }
        let today = chrono::Utc::now().date_naive();
        let first = today - chrono::Days::new(u64::from(days) - 1);
        read_all(
            &*self.engine,
            stmt(
                "daily_sales",
                "SELECT day, currency, orders, revenue_cents FROM daily_sales
                 WHERE day >= $1 ORDER BY day DESC, currency",
                (first,),
            ),
            |row| {
                Ok(DailySales {
                    day: row.date("day")?,
                    currency: row.text("currency")?,
                    orders: row.int("orders")?,
                    revenue_cents: row.int("revenue_cents")?,
                })
            },
        )
        .await
    }

    async fn sales(&self, range: WindowRange) -> StoreResult<Vec<SalesWindow>> {
        read_all(
            &*self.engine,
            stmt(
                "sales_windows",
                "SELECT granularity, window_start, currency, orders, units, revenue_cents
                 FROM sales_windows
                 WHERE granularity = $1 AND window_start >= $2 AND window_start < $3
                 ORDER BY window_start, currency",
                (range.granularity.as_str(), range.from, range.to),
            ),
            rows::sales_window,
        )
        .await
    }

    /// Sums per product and currency (`CAST`: PostgreSQL's SUM of BIGINT is
    /// NUMERIC), numbers them by revenue within each currency, keeps the
    /// first `top` of each.
    async fn top_products(&self, range: WindowRange, top: u32) -> StoreResult<Vec<ProductSales>> {
        read_all(
            &*self.engine,
            stmt(
                "top_products",
                "SELECT ranked.product_id, p.name, ranked.currency, ranked.orders, ranked.units,
                        ranked.revenue_cents, ranked.place
                 FROM (SELECT product_id, currency, orders, units, revenue_cents,
                              ROW_NUMBER() OVER (PARTITION BY currency
                                                 ORDER BY revenue_cents DESC, product_id) AS place
                       FROM (SELECT product_id, currency,
                                    CAST(SUM(orders) AS BIGINT) AS orders,
                                    CAST(SUM(units) AS BIGINT) AS units,
                                    CAST(SUM(revenue_cents) AS BIGINT) AS revenue_cents
                             FROM product_sales_windows
                             WHERE granularity = $1 AND window_start >= $2 AND window_start < $3
                             GROUP BY product_id, currency) AS totals) AS ranked
                 LEFT JOIN products p ON p.id = ranked.product_id
                 WHERE ranked.place <= $4
                 ORDER BY ranked.currency, ranked.place",
                (
                    range.granularity.as_str(),
                    range.from,
                    range.to,
                    i64::from(top),
                ),
            ),
            rows::product_sales,
        )
        .await
    }

    async fn processed_among(
        &self,
        group: &str,
        event_ids: &[EventId],
    ) -> StoreResult<std::collections::HashSet<EventId>> {
        if event_ids.is_empty() {
            return Ok(Default::default());
        }
        let found = read_all(
            &*self.engine,
            stmt(
                "processed_among",
                per(
                    "SELECT event_id FROM processed_events
                     WHERE group_name = $1 AND event_id IN (SELECT value FROM json_each($2))",
                    "SELECT event_id FROM processed_events
                     WHERE group_name = $1 AND event_id = ANY($2)",
                ),
                (group, event_ids.to_vec()),
            ),
            |row| row.uuid("event_id"),
        )
        .await?;
        Ok(found.into_iter().collect())
    }

    // --- dead letters ---

    async fn dead_letters(
        &self,
        limit: u32,
        include_replayed: bool,
    ) -> StoreResult<Vec<DeadLetter>> {
        let rest = if include_replayed {
            "dead_letters ORDER BY failed_at DESC, id DESC LIMIT $1"
        } else {
            "dead_letters WHERE replayed_at IS NULL ORDER BY failed_at DESC, id DESC LIMIT $1"
        };
        read_all(
            &*self.engine,
            stmt(
                "dead_letters",
                select(DEAD_LETTER_COLUMNS, rest),
                (i64::from(limit),),
            ),
            rows::dead_letter,
        )
        .await
    }

    async fn dead_letter(&self, id: uuid::Uuid) -> StoreResult<Option<DeadLetter>> {
        read_one(
            &*self.engine,
            stmt(
                "dead_letter",
                select(DEAD_LETTER_COLUMNS, "dead_letters WHERE id = $1"),
                (id,),
            ),
            rows::dead_letter,
        )
        .await
    }

    /// Dead letters still waiting (not replayed): the size of the queue an
    /// operator has to look at.
    async fn count_dead_letters(&self) -> StoreResult<i64> {
        read_int_or_zero(
            &*self.engine,
            stmt(
                "count_dead_letters",
                "SELECT COUNT(*) AS n FROM dead_letters WHERE replayed_at IS NULL",
                (),
            ),
            "n",
        )
        .await
    }

    async fn reset_state(&self, what: Rebuildable, since: Option<Since>) -> StoreResult<()> {
        let mut statements: Vec<Stmt> = match since {
            None => {
                let tables: &[&'static str] = match what {
                    Rebuildable::Analytics => &[
                        "DELETE FROM daily_sales",
                        "DELETE FROM product_sales",
                        "DELETE FROM sales_windows",
                        "DELETE FROM product_sales_windows",
                    ],
                    Rebuildable::Fraud => &["DELETE FROM fraud_orders"],
                    Rebuildable::Trending => &[
                        "DELETE FROM product_views",
                        "DELETE FROM product_view_minutes",
                        "DELETE FROM product_viewers",
                    ],
                };
                tables
                    .iter()
                    .map(|sql| stmt("reset_state", *sql, ()))
                    .collect()
            }
            Some(since) => reset_since(what, since),
        };
        statements.push(match since {
            None => stmt(
                "reset_processed_marks",
                "DELETE FROM processed_events WHERE group_name = $1",
                (what.group(),),
            ),
            Some(since) => stmt(
                "reset_processed_marks_since",
                "DELETE FROM processed_events WHERE group_name = $1 AND processed_at >= $2",
                (what.group(), since.marks_from),
            ),
        });
        self.delete_batch(statements).await.map(|_| ())
    }

    /// One `DELETE … WHERE key IN (SELECT key … LIMIT n)` (the form both
    /// engines take), in a background write: on SQLite requests go first.
    async fn prune(&self, what: Prunable<'_>, before: Timestamp, limit: u32) -> StoreResult<u64> {
        let limit = i64::from(limit);
        let statement = match what {
            Prunable::Events { subscriptions } => {
                return self.prune_events(subscriptions, before, limit).await;
            }
            Prunable::ProcessedMarks => stmt(
                "prune_processed_marks",
                "DELETE FROM processed_events WHERE (group_name, event_id) IN
                     (SELECT group_name, event_id FROM processed_events
                      WHERE processed_at < $1 LIMIT $2)",
                (before, limit),
            ),
            Prunable::IdempotencyKeys => stmt(
                "prune_idempotency_keys",
                "DELETE FROM idempotency_keys WHERE (user_id, key) IN
                     (SELECT user_id, key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
                (before, limit),
            ),
            // SQLite's relay deletes what it published (see `sqlite::outbox`).
            Prunable::SentOutbox if E::DIALECT == super::Dialect::Sqlite => return Ok(0),
            Prunable::SentOutbox => stmt(
                "prune_sent_outbox",
                "DELETE FROM outbox WHERE seq IN
                     (SELECT seq FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT $2)",
                (before, limit),
            ),
            Prunable::ReplayedDeadLetters => stmt(
                "prune_replayed_dead_letters",
                "DELETE FROM dead_letters WHERE id IN
                     (SELECT id FROM dead_letters
                      WHERE replayed_at IS NOT NULL AND replayed_at < $1 LIMIT $2)",
                (before, limit),
            ),
            Prunable::FraudOrders => stmt(
                "prune_fraud_orders",
                "DELETE FROM fraud_orders WHERE order_id IN
                     (SELECT order_id FROM fraud_orders WHERE placed_at < $1 LIMIT $2)",
                (before, limit),
            ),
            Prunable::ProductViewers => stmt(
                "prune_product_viewers",
                "DELETE FROM product_viewers WHERE (day, product_id, viewer) IN
                     (SELECT day, product_id, viewer FROM product_viewers WHERE day < $1 LIMIT $2)",
                (before.date_naive(), limit),
            ),
            Prunable::ViewerSalts => stmt(
                "prune_viewer_salts",
                "DELETE FROM viewer_salts WHERE day IN
                     (SELECT day FROM viewer_salts WHERE day < $1 LIMIT $2)",
                (before.date_naive(), limit),
            ),
            // The lines of the carts the second statement deletes (the same
            // ones: the same rows, in the same order, in one background
            // write), then the carts.
            // Counted in carts, not lines.
            Prunable::Carts => {
                let mut w = self.engine.begin_write(WritePriority::Background).await?;
                w.exec(stmt(
                    "prune_cart_lines",
                    "DELETE FROM cart_lines WHERE user_id IN
                         (SELECT user_id FROM carts WHERE updated_at < $1
                          ORDER BY user_id LIMIT $2)",
                    (before, limit),
                ))
                .await?;
                let carts = w
                    .exec(stmt(
                        "prune_carts",
                        "DELETE FROM carts WHERE user_id IN
                             (SELECT user_id FROM carts WHERE updated_at < $1
                              ORDER BY user_id LIMIT $2)",
                        (before, limit),
                    ))
                    .await?;
                super::WriteTx::commit(w).await?;
                return Ok(carts);
            }
            // The three tables in one batch: a batch short of the limit
            // then means all are done.
            Prunable::MinuteWindows => {
                return self
                    .delete_batch([
                        stmt(
                            "prune_minute_product_sales",
                            "DELETE FROM product_sales_windows
                             WHERE (granularity, window_start, product_id, currency) IN
                                 (SELECT granularity, window_start, product_id, currency
                                  FROM product_sales_windows
                                  WHERE granularity = 'minute' AND window_start < $1 LIMIT $2)",
                            (before, limit),
                        ),
                        stmt(
                            "prune_minute_sales",
                            "DELETE FROM sales_windows
                             WHERE (granularity, window_start, currency) IN
                                 (SELECT granularity, window_start, currency FROM sales_windows
                                  WHERE granularity = 'minute' AND window_start < $1 LIMIT $2)",
                            (before, limit),
                        ),
                        stmt(
                            "prune_view_minutes",
                            "DELETE FROM product_view_minutes
                             WHERE (minute_start, product_id) IN
                                 (SELECT minute_start, product_id FROM product_view_minutes
                                  WHERE minute_start < $1 LIMIT $2)",
                            (before, limit),
                        ),
                    ])
                    .await;
            }
        };
        self.delete_batch([statement]).await
    }
}

impl<E: Engine> SqlStore<E> {
    /// Runs `statements` in one background write; the rows they deleted.
    async fn delete_batch(&self, statements: impl IntoIterator<Item = Stmt>) -> StoreResult<u64> {
        let mut w = self.engine.begin_write(WritePriority::Background).await?;
        let mut deleted = 0;
        for statement in statements {
            deleted += w.exec(statement).await?;
        }
        super::WriteTx::commit(w).await?;
        Ok(deleted)
    }

    /// Per partition of every topic: up to the lowest offset all of its
    /// readers have committed (none, when one of them has committed
    /// nothing there), and only what was appended before `before`. At most
    /// `limit` events per partition.
    async fn prune_events(
        &self,
        subscriptions: &[(&str, &[&str])],
        before: Timestamp,
        limit: i64,
    ) -> StoreResult<u64> {
        let mut deleted = 0;
        for topic in topics::ALL {
            let readers: Vec<String> = subscriptions
                .iter()
                .filter(|(_, topics)| topics.contains(&topic))
                .map(|(group, _)| (*group).to_owned())
                .collect();
            let reader_count = readers.len() as i64;
            let committed: Vec<(i32, Option<i64>)> = if readers.is_empty() {
                (0..self.engine.core().partitions)
                    .map(|partition| (partition, None))
                    .collect()
            } else {
                read_all(
                    &*self.engine,
                    stmt(
                        "committed_by_every_reader",
                        per(
                            r#"SELECT "partition", MIN(next_offset) AS low, COUNT(*) AS n
                               FROM consumer_offsets
                               WHERE topic = $1 AND group_name IN (SELECT value FROM json_each($2))
                               GROUP BY "partition""#,
                            r#"SELECT "partition", MIN(next_offset) AS low, COUNT(*) AS n
                               FROM consumer_offsets
                               WHERE topic = $1 AND group_name = ANY($2)
                               GROUP BY "partition""#,
                        ),
                        (topic, readers),
                    ),
                    |row| {
                        Ok((
                            i32::try_from(row.int("partition")?).unwrap_or(i32::MAX),
                            row.int("n")?,
                            row.int("low")?,
                        ))
                    },
                )
                .await?
                .into_iter()
                .filter(|(_, n, _)| *n == reader_count)
                .map(|(partition, _, low)| (partition, Some(low)))
                .collect()
            };
            for (partition, below) in committed {
                deleted += self
                    .delete_batch([stmt(
                        "prune_events",
                        r#"DELETE FROM event_log WHERE seq IN
                               (SELECT seq FROM event_log
                                WHERE topic = $1 AND "partition" = $2 AND "offset" < $3
                                  AND created_at < $4
                                ORDER BY "offset" LIMIT $5)"#,
                        (topic, partition, below.unwrap_or(i64::MAX), before, limit),
                    )])
                    .await?;
            }
        }
        Ok(deleted)
    }
}

impl<E: Engine> From<SqlStore<E>> for std::sync::Arc<dyn Store> {
    fn from(store: SqlStore<E>) -> Self {
        std::sync::Arc::new(store)
    }
}
