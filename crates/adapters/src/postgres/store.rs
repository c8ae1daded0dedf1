//! `impl Store for PostgresStore`: stand-alone reads, and the session and
//! catalog writes the port keeps outside a unit of work.
//!
//! Single-statement writes run straight on the pool (PostgreSQL makes each
//! statement atomic). The one read-then-write exchange here, refresh-token
//! rotation, runs in a transaction that locks the session row.

use async_trait::async_trait;
use orderflow_core::ports::store::{
    DailySales, DeadLetter, LeaderboardEntry, NotificationRecord, PointsStanding, RefreshRotation,
    SessionRecord, Store, StoreResult, StoreTx, UserRecord,
};
use orderflow_domain::order::{HistoryEntry, Order, OrderStatus};
use orderflow_domain::product::{Product, ProductDraft};
use orderflow_domain::{EventId, OrderId, ProductId, Timestamp, UserId};
use sqlx::postgres::PgConnection;

use super::tx::PostgresTx;
use super::{PostgresStore, count, db_err, rows};

const USER_COLUMNS: &str = "id, email, name, password_hash, role, created_at";
const SESSION_COLUMNS: &str =
    "id, user_id, device, created_at, last_used_at, expires_at, revoked_at";
const PRODUCT_COLUMNS: &str = "id, sku, name, price_cents, currency, stock, updated_at";
const ORDER_COLUMNS: &str = "id, user_id, status, total_cents, currency, created_at, updated_at";
const DEAD_LETTER_COLUMNS: &str = r#"id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at"#;

/// Loads the lines of `orders` (one query for all of them) and attaches them
/// in line order.
pub(crate) async fn attach_items(conn: &mut PgConnection, orders: &mut [Order]) -> StoreResult<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
    count("order_items");
    let rows = sqlx::query(
        "SELECT order_id, product_id, sku, name, quantity, unit_price_cents, line_total_cents
         FROM order_items
         WHERE order_id = ANY($1)
         ORDER BY order_id, line_no",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_err)?;
    for row in &rows {
        let order_id = rows::uuid(row, "order_id")?;
        let line = rows::order_line(row)?;
        if let Some(order) = orders.iter_mut().find(|o| o.id == order_id) {
            order.items.push(line);
        }
    }
    Ok(())
}

/// One order with its lines, read on `conn` (a pooled connection or the
/// connection of a unit of work); `FOR UPDATE` locks the order row until the
/// unit of work ends.
pub(crate) async fn load_order(
    conn: &mut PgConnection,
    id: OrderId,
    for_update: bool,
) -> StoreResult<Option<Order>> {
    count("order");
    let query = if for_update {
        sqlx::query(
            "SELECT id, user_id, status, total_cents, currency, created_at, updated_at
             FROM orders WHERE id = $1 FOR UPDATE",
        )
    } else {
        sqlx::query(
            "SELECT id, user_id, status, total_cents, currency, created_at, updated_at
             FROM orders WHERE id = $1",
        )
    };
    let row = query
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let mut orders = [rows::order_head(&row)?];
    attach_items(conn, &mut orders).await?;
    let [order] = orders;
    Ok(Some(order))
}

/// `SELECT <columns> FROM <rest>`: the column lists are constants of this
/// module, so the assembled statement is as static as a literal.
fn select(columns: &'static str, rest: &'static str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {columns} FROM {rest}"))
}

impl PostgresStore {
    async fn conn(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.inner().pool.acquire().await.map_err(db_err)
    }
}

/// First key of the advisory locks that serialise one consumer group's
/// group commits across processes (the second is a hash of the group name).
/// An arbitrary constant, apart from the other advisory locks orderflow takes.
const GROUP_COMMIT_LOCK: i32 = 0x0_6C0D;

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.inner().migrate().await
    }

    async fn ping(&self) -> StoreResult<()> {
        count("ping");
        sqlx::query("SELECT 1")
            .execute(&self.inner().pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>> {
        count("begin");
        let tx = self.inner().pool.begin().await.map_err(db_err)?;
        Ok(Box::new(PostgresTx::new(
            self.inner().clone(),
            tx,
            self.event_destination(),
        )))
    }

    /// Takes `pg_advisory_xact_lock(GROUP_COMMIT_LOCK, hashtext(group))`
    /// first, so the group commits of one group's members serialise (see the
    /// port); it is released with the transaction.
    async fn begin_group_commit(&self, group: &str) -> StoreResult<Box<dyn StoreTx>> {
        count("begin");
        let mut tx = self.inner().pool.begin().await.map_err(db_err)?;
        count("group_commit_lock");
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(GROUP_COMMIT_LOCK)
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Ok(Box::new(PostgresTx::new(
            self.inner().clone(),
            tx,
            self.event_destination(),
        )))
    }

    // --- users and sessions ---

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        count("user_by_email");
        let row = sqlx::query(select(USER_COLUMNS, "users WHERE email = $1"))
            .bind(email)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::user).transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        count("user_by_id");
        let row = sqlx::query(select(USER_COLUMNS, "users WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::user).transpose()
    }

    async fn create_session(&self, session: &SessionRecord, refresh_hash: &str) -> StoreResult<()> {
        count("create_session");
        sqlx::query(
            "INSERT INTO sessions (id, user_id, device, refresh_hash, created_at, last_used_at, expires_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(&session.device)
        .bind(refresh_hash)
        .bind(session.created_at)
        .bind(session.last_used_at)
        .bind(session.expires_at)
        .bind(session.revoked_at)
        .execute(&self.inner().pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        new_hash: &str,
        now: Timestamp,
        new_expires_at: Timestamp,
    ) -> StoreResult<RefreshRotation> {
        // `FOR UPDATE` locks the session row holding the presented token. A
        // second presentation of the same token waits here; when the first
        // commits, PostgreSQL re-checks `refresh_hash = $1` against the new
        // row version, finds it changed, and the second one falls through to
        // the reuse check below, which then sees the committed rotation.
        count("begin");
        let mut tx = self.inner().pool.begin().await.map_err(db_err)?;
        count("session_by_refresh_hash");
        let current = sqlx::query(select(
            SESSION_COLUMNS,
            "sessions WHERE refresh_hash = $1 FOR UPDATE",
        ))
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(row) = current {
            let mut session = rows::session(&row)?;
            if session.revoked_at.is_some() || session.expires_at <= now {
                return Ok(RefreshRotation::Invalid);
            }
            count("insert_rotated_refresh_token");
            sqlx::query(
                "INSERT INTO rotated_refresh_tokens (refresh_hash, session_id, rotated_at) VALUES ($1, $2, $3)",
            )
            .bind(presented_hash)
            .bind(session.id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            count("rotate_session");
            sqlx::query(
                "UPDATE sessions SET refresh_hash = $1, last_used_at = $2, expires_at = $3 WHERE id = $4",
            )
            .bind(new_hash)
            .bind(now)
            .bind(new_expires_at)
            .bind(session.id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            count("commit");
            tx.commit().await.map_err(db_err)?;
            session.last_used_at = now;
            session.expires_at = new_expires_at;
            return Ok(RefreshRotation::Rotated { session });
        }

        count("rotated_refresh_token");
        let rotated = sqlx::query(
            "SELECT s.id, s.user_id
             FROM rotated_refresh_tokens r JOIN sessions s ON s.id = r.session_id
             WHERE r.refresh_hash = $1",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let Some(row) = rotated else {
            return Ok(RefreshRotation::Invalid);
        };
        let session_id = rows::uuid(&row, "id")?;
        let user_id = rows::uuid(&row, "user_id")?;
        // A token that was already exchanged came back: whoever holds the
        // current one may be the thief, so the whole session dies.
        count("revoke_session");
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(session_id)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        count("commit");
        tx.commit().await.map_err(db_err)?;
        Ok(RefreshRotation::ReuseDetected {
            session_id,
            user_id,
        })
    }

    async fn session(&self, id: uuid::Uuid) -> StoreResult<Option<SessionRecord>> {
        count("session");
        let row = sqlx::query(select(SESSION_COLUMNS, "sessions WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::session).transpose()
    }

    /// All sessions of the user, revoked and expired ones included, newest first.
    async fn sessions_of_user(&self, user_id: UserId) -> StoreResult<Vec<SessionRecord>> {
        count("sessions_of_user");
        let rows = sqlx::query(select(
            SESSION_COLUMNS,
            "sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
        ))
        .bind(user_id)
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rows::session).collect()
    }

    async fn revoke_session(&self, id: uuid::Uuid, now: Timestamp) -> StoreResult<bool> {
        count("revoke_session");
        let done =
            sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.inner().pool)
                .await
                .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_all_sessions(&self, user_id: UserId, now: Timestamp) -> StoreResult<u64> {
        count("revoke_all_sessions");
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(user_id)
        .execute(&self.inner().pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    // --- revoked access tokens ---

    async fn insert_revocation(&self, jti: &str, expires_at: Timestamp) -> StoreResult<()> {
        // Entries past their token's expiry protect nothing; dropping them here
        // keeps the table (and the warm-up copy) as small as the live set.
        count("purge_revocations");
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= now()")
            .execute(&self.inner().pool)
            .await
            .map_err(db_err)?;
        // Revoking twice keeps the later expiry: a revocation never shrinks.
        count("insert_revocation");
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)
             ON CONFLICT (jti) DO UPDATE
             SET expires_at = GREATEST(revoked_tokens.expires_at, excluded.expires_at)",
        )
        .bind(jti)
        .bind(expires_at)
        .execute(&self.inner().pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn is_revoked(&self, jti: &str, now: Timestamp) -> StoreResult<bool> {
        count("is_revoked");
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = $1 AND expires_at > $2)",
        )
        .bind(jti)
        .bind(now)
        .fetch_one(&self.inner().pool)
        .await
        .map_err(db_err)
    }

    async fn active_revocations(&self, now: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        count("active_revocations");
        let rows = sqlx::query(
            "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1 ORDER BY expires_at",
        )
        .bind(now)
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| Ok((rows::text(row, "jti")?, rows::time(row, "expires_at")?)))
            .collect()
    }

    async fn set_tokens_valid_after(&self, user_id: UserId, after: Timestamp) -> StoreResult<()> {
        count("set_tokens_valid_after");
        sqlx::query("UPDATE users SET tokens_valid_after = $1 WHERE id = $2")
            .bind(after)
            .bind(user_id)
            .execute(&self.inner().pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn tokens_valid_after(&self, user_id: UserId) -> StoreResult<Option<Timestamp>> {
        count("tokens_valid_after");
        let row = sqlx::query("SELECT tokens_valid_after FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some(row) => rows::opt_time(&row, "tokens_valid_after"),
        }
    }

    // --- catalog ---

    async fn list_products(
        &self,
        after: Option<ProductId>,
        limit: u32,
    ) -> StoreResult<Vec<Product>> {
        count("list_products");
        // Keyset paging on the primary key: each page is an index range scan,
        // however deep the cursor. Two statements rather than one with
        // `$1 IS NULL OR id > $1`, which a generic plan cannot turn into a
        // range scan.
        let query = match after {
            Some(after) => sqlx::query(select(
                PRODUCT_COLUMNS,
                "products WHERE id > $2 ORDER BY id LIMIT $1",
            ))
            .bind(i64::from(limit))
            .bind(after),
            None => sqlx::query(select(PRODUCT_COLUMNS, "products ORDER BY id LIMIT $1"))
                .bind(i64::from(limit)),
        };
        let rows = query.fetch_all(&self.inner().pool).await.map_err(db_err)?;
        rows.iter().map(rows::product).collect()
    }

    async fn product(&self, id: ProductId) -> StoreResult<Option<Product>> {
        count("product");
        let row = sqlx::query(select(PRODUCT_COLUMNS, "products WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::product).transpose()
    }

    /// The products that exist among `ids`, ordered by id; unknown ids are
    /// simply absent.
    async fn products_by_ids(&self, ids: &[ProductId]) -> StoreResult<Vec<Product>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        count("products_by_ids");
        let rows = sqlx::query(select(
            PRODUCT_COLUMNS,
            "products WHERE id = ANY($1) ORDER BY id",
        ))
        .bind(ids)
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rows::product).collect()
    }

    async fn count_products(&self) -> StoreResult<i64> {
        count("count_products");
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM products")
            .fetch_one(&self.inner().pool)
            .await
            .map_err(db_err)
    }

    async fn insert_product(
        &self,
        id: ProductId,
        draft: &ProductDraft,
        now: Timestamp,
    ) -> StoreResult<Product> {
        count("insert_product");
        let row = sqlx::query(
            "INSERT INTO products (id, sku, name, price_cents, currency, stock, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
             RETURNING id, sku, name, price_cents, currency, stock, updated_at",
        )
        .bind(id)
        .bind(&draft.sku)
        .bind(&draft.name)
        .bind(draft.price_cents)
        .bind(draft.currency.as_str())
        .bind(draft.stock)
        .bind(now)
        .fetch_one(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows::product(&row)
    }

    /// Replaces every field, stock included (an admin's stock count wins over
    /// whatever reservations did before it).
    async fn update_product(
        &self,
        id: ProductId,
        draft: &ProductDraft,
        now: Timestamp,
    ) -> StoreResult<Option<Product>> {
        count("update_product");
        let row = sqlx::query(
            "UPDATE products SET sku = $1, name = $2, price_cents = $3, currency = $4, stock = $5, updated_at = $6
             WHERE id = $7
             RETURNING id, sku, name, price_cents, currency, stock, updated_at",
        )
        .bind(&draft.sku)
        .bind(&draft.name)
        .bind(draft.price_cents)
        .bind(draft.currency.as_str())
        .bind(draft.stock)
        .bind(now)
        .bind(id)
        .fetch_optional(&self.inner().pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(rows::product).transpose()
    }

    // --- orders ---

    async fn order(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<HistoryEntry>)>> {
        let mut conn = self.conn().await?;
        let Some(order) = load_order(&mut conn, id, false).await? else {
            return Ok(None);
        };
        count("order_history");
        let rows =
            sqlx::query("SELECT status, at FROM order_history WHERE order_id = $1 ORDER BY seq")
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?;
        let history = rows
            .iter()
            .map(rows::history_entry)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Some((order, history)))
    }

    async fn orders_of_user(
        &self,
        user_id: UserId,
        before: Option<OrderId>,
        limit: u32,
    ) -> StoreResult<Vec<Order>> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let rows = match before {
            None => {
                count("orders_of_user");
                sqlx::query(select(
                    ORDER_COLUMNS,
                    "orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
                ))
                .bind(user_id)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
            }
            Some(before) => {
                // Keyset paging on (created_at, id), the index order, so ties
                // in created_at neither repeat nor skip orders. A cursor that
                // names no order (deleted, or made up) falls back to comparing
                // ids, which for UUID v7 ids also means "created earlier".
                count("order_cursor");
                let cursor = sqlx::query_scalar::<_, Timestamp>(
                    "SELECT created_at FROM orders WHERE id = $1",
                )
                .bind(before)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db_err)?;
                count("orders_of_user");
                match cursor {
                    Some(created_at) => {
                        sqlx::query(select(
                            ORDER_COLUMNS,
                            "orders WHERE user_id = $1 AND (created_at, id) < ($2, $3)
                             ORDER BY created_at DESC, id DESC LIMIT $4",
                        ))
                        .bind(user_id)
                        .bind(created_at)
                        .bind(before)
                        .bind(limit)
                        .fetch_all(&mut *conn)
                        .await
                    }
                    None => {
                        sqlx::query(select(
                            ORDER_COLUMNS,
                            "orders WHERE user_id = $1 AND id < $2
                             ORDER BY created_at DESC, id DESC LIMIT $3",
                        ))
                        .bind(user_id)
                        .bind(before)
                        .bind(limit)
                        .fetch_all(&mut *conn)
                        .await
                    }
                }
            }
        }
        .map_err(db_err)?;
        let mut orders = rows
            .iter()
            .map(rows::order_head)
            .collect::<StoreResult<Vec<_>>>()?;
        attach_items(&mut conn, &mut orders).await?;
        Ok(orders)
    }

    async fn count_orders_by_status(&self) -> StoreResult<Vec<(OrderStatus, i64)>> {
        count("count_orders_by_status");
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status ORDER BY status")
                .fetch_all(&self.inner().pool)
                .await
                .map_err(db_err)?;
        rows.iter()
            .map(|row| Ok((rows::status(row, "status")?, rows::int(row, "n")?)))
            .collect()
    }

    // --- read models ---

    async fn notifications_of_user(
        &self,
        user_id: UserId,
        limit: u32,
    ) -> StoreResult<Vec<NotificationRecord>> {
        count("notifications_of_user");
        let rows = sqlx::query(
            "SELECT user_id, channel, kind, order_id, sent_at FROM notifications
             WHERE user_id = $1 ORDER BY sent_at DESC, seq DESC LIMIT $2",
        )
        .bind(user_id)
        .bind(i64::from(limit))
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rows::notification).collect()
    }

    async fn points(&self, user_id: UserId) -> StoreResult<PointsStanding> {
        count("points");
        // Rank = 1 + how many users have strictly more points (ties share a
        // rank), answered from the points index.
        let row = sqlx::query(
            "SELECT p.points,
                    (SELECT COUNT(*) FROM loyalty_points o WHERE o.points > p.points) AS ahead
             FROM loyalty_points p WHERE p.user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.inner().pool)
        .await
        .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(PointsStanding {
                points: 0,
                rank: None,
            });
        };
        let points = rows::int(&row, "points")?;
        let rank = (points > 0)
            .then(|| rows::int(&row, "ahead").map(|ahead| ahead + 1))
            .transpose()?;
        Ok(PointsStanding { points, rank })
    }

    async fn leaderboard(&self, limit: u32) -> StoreResult<Vec<LeaderboardEntry>> {
        count("leaderboard");
        // The inner query takes the top `limit` from the points index; RANK()
        // over that prefix equals the global rank, because everyone with more
        // points than a member of the prefix is in the prefix too.
        let rows = sqlx::query(
            "SELECT top.user_id, COALESCE(u.name, '') AS name, top.points,
                    RANK() OVER (ORDER BY top.points DESC) AS rank
             FROM (SELECT user_id, points FROM loyalty_points
                   WHERE points > 0 ORDER BY points DESC, user_id LIMIT $1) AS top
             LEFT JOIN users u ON u.id = top.user_id
             ORDER BY top.points DESC, top.user_id",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(LeaderboardEntry {
                    user_id: rows::uuid(row, "user_id")?,
                    name: rows::text(row, "name")?,
                    points: rows::int(row, "points")?,
                    rank: rows::int(row, "rank")?,
                })
            })
            .collect()
    }

    /// The last `days` UTC calendar days (today included) that had sales,
    /// newest day first, one row per currency.
    async fn daily_sales(&self, days: u32) -> StoreResult<Vec<DailySales>> {
        if days == 0 {
            return Ok(Vec::new());
        }
        let today = chrono::Utc::now().date_naive();
        let first = today - chrono::Days::new(u64::from(days) - 1);
        count("daily_sales");
        let rows = sqlx::query(
            "SELECT day, currency, orders, revenue_cents FROM daily_sales
             WHERE day >= $1 ORDER BY day DESC, currency",
        )
        .bind(first)
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                Ok(DailySales {
                    day: sqlx::Row::try_get(row, "day").map_err(db_err)?,
                    currency: rows::text(row, "currency")?,
                    orders: rows::int(row, "orders")?,
                    revenue_cents: rows::int(row, "revenue_cents")?,
                })
            })
            .collect()
    }

    async fn is_processed(&self, group: &str, event_id: EventId) -> StoreResult<bool> {
        count("is_processed");
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE group_name = $1 AND event_id = $2)",
        )
        .bind(group)
        .bind(event_id)
        .fetch_one(&self.inner().pool)
        .await
        .map_err(db_err)
    }

    // --- dead letters ---

    async fn dead_letters(
        &self,
        limit: u32,
        include_replayed: bool,
    ) -> StoreResult<Vec<DeadLetter>> {
        count("dead_letters");
        let rows = sqlx::query(select(
            DEAD_LETTER_COLUMNS,
            "dead_letters WHERE ($1 OR replayed_at IS NULL)
             ORDER BY failed_at DESC, id DESC LIMIT $2",
        ))
        .bind(include_replayed)
        .bind(i64::from(limit))
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rows::dead_letter).collect()
    }

    async fn dead_letter(&self, id: uuid::Uuid) -> StoreResult<Option<DeadLetter>> {
        count("dead_letter");
        let row = sqlx::query(select(DEAD_LETTER_COLUMNS, "dead_letters WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::dead_letter).transpose()
    }

    /// Dead letters still waiting (not replayed): the size of the queue an
    /// operator has to look at.
    async fn count_dead_letters(&self) -> StoreResult<i64> {
        count("count_dead_letters");
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM dead_letters WHERE replayed_at IS NULL")
            .fetch_one(&self.inner().pool)
            .await
            .map_err(db_err)
    }
}

impl From<PostgresStore> for std::sync::Arc<dyn Store> {
    fn from(store: PostgresStore) -> Self {
        std::sync::Arc::new(store)
    }
}
