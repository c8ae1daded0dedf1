//! `impl Store for SqliteStore`: stand-alone reads, and the session and
//! catalog writes the port keeps outside a unit of work.
//!
//! Reads go straight to the pool (WAL readers never wait for the writer).
//! Writes take the in-process writer lock first (see the module docs of
//! [`super`]); the ones that read before they write (refresh rotation) run in
//! a `BEGIN IMMEDIATE` transaction.

use async_trait::async_trait;
use orderflow_core::ports::store::{
    DailySales, DeadLetter, LeaderboardEntry, NotificationRecord, PointsStanding, RefreshRotation,
    SessionRecord, Store, StoreError, StoreResult, StoreTx, UserRecord,
};
use orderflow_domain::order::{HistoryEntry, Order, OrderStatus};
use orderflow_domain::product::{Product, ProductDraft};
use orderflow_domain::{EventId, OrderId, ProductId, Timestamp, UserId};
use sqlx::sqlite::SqliteConnection;

use super::rows;
use super::tx::SqliteTx;
use super::{SqliteStore, WritePriority, count, db_err, json_ids, micros, uid};

const USER_BY_EMAIL: &str =
    "SELECT id, email, name, password_hash, role, created_at FROM users WHERE email = ?";
const USER_BY_ID: &str =
    "SELECT id, email, name, password_hash, role, created_at FROM users WHERE id = ?";

const SESSION_BY_REFRESH_HASH: &str =
    "SELECT id, user_id, device, created_at, last_used_at, expires_at, revoked_at
     FROM sessions WHERE refresh_hash = ?";

/// Loads the lines of `orders` (one query for all of them) and attaches them
/// in line order.
pub(crate) async fn attach_items(
    conn: &mut SqliteConnection,
    orders: &mut [Order],
) -> StoreResult<()> {
    if orders.is_empty() {
        return Ok(());
    }
    let ids: Vec<OrderId> = orders.iter().map(|o| o.id).collect();
    count("order_items");
    let rows = sqlx::query(
        "SELECT order_id, product_id, sku, name, quantity, unit_price_cents, line_total_cents
         FROM order_items
         WHERE order_id IN (SELECT value FROM json_each(?))
         ORDER BY order_id, line_no",
    )
    .bind(json_ids(&ids))
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
/// connection of a unit of work).
pub(crate) async fn load_order(
    conn: &mut SqliteConnection,
    id: OrderId,
) -> StoreResult<Option<Order>> {
    count("order");
    let row = sqlx::query(
        "SELECT id, user_id, status, total_cents, currency, created_at, updated_at FROM orders WHERE id = ?",
    )
    .bind(uid(id))
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let mut orders = [rows::order_head(&row)?];
    attach_items(conn, &mut orders).await?;
    let [order] = orders;
    Ok(Some(order))
}

impl SqliteStore {
    async fn conn(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        self.inner().pool.acquire().await.map_err(db_err)
    }

    async fn user_where(
        &self,
        op: &'static str,
        sql: &'static str,
        value: String,
    ) -> StoreResult<Option<UserRecord>> {
        count(op);
        let row = sqlx::query(sql)
            .bind(value)
            .fetch_optional(&self.inner().pool)
            .await
            .map_err(db_err)?;
        row.as_ref().map(rows::user).transpose()
    }
}

#[async_trait]
impl Store for SqliteStore {
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
        let writer = self.inner().begin_write(WritePriority::Request).await?;
        Ok(Box::new(SqliteTx::new(self.inner().clone(), writer)))
    }

    /// A background writer: one writer per database already, so the group
    /// needs no lock of its own.
    async fn begin_group_commit(&self, _group: &str) -> StoreResult<Box<dyn StoreTx>> {
        let writer = self.inner().begin_write(WritePriority::Background).await?;
        Ok(Box::new(SqliteTx::new(self.inner().clone(), writer)))
    }

    // --- users and sessions ---

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        self.user_where("user_by_email", USER_BY_EMAIL, email.to_owned())
            .await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.user_where("user_by_id", USER_BY_ID, id.to_string())
            .await
    }

    async fn create_session(&self, session: &SessionRecord, refresh_hash: &str) -> StoreResult<()> {
        let _writer = self.inner().write_lock(WritePriority::Request).await?;
        count("create_session");
        sqlx::query(
            "INSERT INTO sessions (id, user_id, device, refresh_hash, created_at, last_used_at, expires_at, revoked_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(uid(session.id))
        .bind(uid(session.user_id))
        .bind(&session.device)
        .bind(refresh_hash)
        .bind(micros(session.created_at))
        .bind(micros(session.last_used_at))
        .bind(micros(session.expires_at))
        .bind(session.revoked_at.map(micros))
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
        // Read-then-write: the whole exchange runs under the write lock, so
        // two requests presenting the same token cannot both rotate it; the
        // second one sees the token as rotated away (reuse).
        let mut w = self.inner().begin_write(WritePriority::Request).await?;
        count("session_by_refresh_hash");
        let current = sqlx::query(SESSION_BY_REFRESH_HASH)
            .bind(presented_hash)
            .fetch_optional(&mut *w.tx)
            .await
            .map_err(db_err)?;
        if let Some(row) = current {
            let mut session = rows::session(&row)?;
            if session.revoked_at.is_some() || session.expires_at <= now {
                return Ok(RefreshRotation::Invalid);
            }
            count("insert_rotated_refresh_token");
            sqlx::query("INSERT INTO rotated_refresh_tokens (refresh_hash, session_id, rotated_at) VALUES (?, ?, ?)")
                .bind(presented_hash)
                .bind(uid(session.id))
                .bind(micros(now))
                .execute(&mut *w.tx)
                .await
                .map_err(db_err)?;
            count("rotate_session");
            sqlx::query("UPDATE sessions SET refresh_hash = ?, last_used_at = ?, expires_at = ? WHERE id = ?")
                .bind(new_hash)
                .bind(micros(now))
                .bind(micros(new_expires_at))
                .bind(uid(session.id))
                .execute(&mut *w.tx)
                .await
                .map_err(db_err)?;
            w.commit().await?;
            session.last_used_at = now;
            session.expires_at = new_expires_at;
            return Ok(RefreshRotation::Rotated { session });
        }

        count("rotated_refresh_token");
        let rotated = sqlx::query(
            "SELECT s.id, s.user_id
             FROM rotated_refresh_tokens r JOIN sessions s ON s.id = r.session_id
             WHERE r.refresh_hash = ?",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *w.tx)
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
        sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(micros(now))
            .bind(uid(session_id))
            .execute(&mut *w.tx)
            .await
            .map_err(db_err)?;
        w.commit().await?;
        Ok(RefreshRotation::ReuseDetected {
            session_id,
            user_id,
        })
    }

    async fn session(&self, id: uuid::Uuid) -> StoreResult<Option<SessionRecord>> {
        count("session");
        let row = sqlx::query(
            "SELECT id, user_id, device, created_at, last_used_at, expires_at, revoked_at FROM sessions WHERE id = ?",
        )
        .bind(uid(id))
        .fetch_optional(&self.inner().pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(rows::session).transpose()
    }

    /// All sessions of the user, revoked and expired ones included, newest first.
    async fn sessions_of_user(&self, user_id: UserId) -> StoreResult<Vec<SessionRecord>> {
        count("sessions_of_user");
        let rows = sqlx::query(
            "SELECT id, user_id, device, created_at, last_used_at, expires_at, revoked_at
             FROM sessions WHERE user_id = ? ORDER BY created_at DESC, id DESC",
        )
        .bind(uid(user_id))
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter().map(rows::session).collect()
    }

    async fn revoke_session(&self, id: uuid::Uuid, now: Timestamp) -> StoreResult<bool> {
        let _writer = self.inner().write_lock(WritePriority::Request).await?;
        count("revoke_session");
        let done =
            sqlx::query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(micros(now))
                .bind(uid(id))
                .execute(&self.inner().pool)
                .await
                .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_all_sessions(&self, user_id: UserId, now: Timestamp) -> StoreResult<u64> {
        let _writer = self.inner().write_lock(WritePriority::Request).await?;
        count("revoke_all_sessions");
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        )
        .bind(micros(now))
        .bind(uid(user_id))
        .execute(&self.inner().pool)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    // --- revoked access tokens ---

    async fn insert_revocation(&self, jti: &str, expires_at: Timestamp) -> StoreResult<()> {
        let mut w = self.inner().begin_write(WritePriority::Request).await?;
        // Entries past their token's expiry protect nothing; dropping them here
        // keeps the table (and the warm-up copy) as small as the live set.
        count("purge_revocations");
        sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= ?")
            .bind(micros(chrono::Utc::now()))
            .execute(&mut *w.tx)
            .await
            .map_err(db_err)?;
        // Revoking twice keeps the later expiry: a revocation never shrinks.
        count("insert_revocation");
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?)
             ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
        )
        .bind(jti)
        .bind(micros(expires_at))
        .execute(&mut *w.tx)
        .await
        .map_err(db_err)?;
        w.commit().await
    }

    async fn is_revoked(&self, jti: &str, now: Timestamp) -> StoreResult<bool> {
        count("is_revoked");
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ? AND expires_at > ?)",
        )
        .bind(jti)
        .bind(micros(now))
        .fetch_one(&self.inner().pool)
        .await
        .map_err(db_err)
    }

    async fn active_revocations(&self, now: Timestamp) -> StoreResult<Vec<(String, Timestamp)>> {
        count("active_revocations");
        let rows = sqlx::query(
            "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ? ORDER BY expires_at",
        )
        .bind(micros(now))
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| Ok((rows::text(row, "jti")?, rows::time(row, "expires_at")?)))
            .collect()
    }

    async fn set_tokens_valid_after(&self, user_id: UserId, after: Timestamp) -> StoreResult<()> {
        let _writer = self.inner().write_lock(WritePriority::Request).await?;
        count("set_tokens_valid_after");
        sqlx::query("UPDATE users SET tokens_valid_after = ? WHERE id = ?")
            .bind(micros(after))
            .bind(uid(user_id))
            .execute(&self.inner().pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn tokens_valid_after(&self, user_id: UserId) -> StoreResult<Option<Timestamp>> {
        count("tokens_valid_after");
        let row = sqlx::query("SELECT tokens_valid_after FROM users WHERE id = ?")
            .bind(uid(user_id))
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
        // however deep the cursor.
        let query = match after {
            Some(after) => sqlx::query(
                "SELECT id, sku, name, price_cents, currency, stock, updated_at
                 FROM products WHERE id > ? ORDER BY id LIMIT ?",
            )
            .bind(uid(after)),
            None => sqlx::query(
                "SELECT id, sku, name, price_cents, currency, stock, updated_at FROM products ORDER BY id LIMIT ?",
            ),
        };
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.inner().pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(rows::product).collect()
    }

    async fn product(&self, id: ProductId) -> StoreResult<Option<Product>> {
        count("product");
        let row = sqlx::query("SELECT id, sku, name, price_cents, currency, stock, updated_at FROM products WHERE id = ?")
            .bind(uid(id))
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
        let rows = sqlx::query(
            "SELECT id, sku, name, price_cents, currency, stock, updated_at
             FROM products WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
        )
        .bind(json_ids(ids))
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
        let _writer = self.inner().write_lock(WritePriority::Request).await?;
        count("insert_product");
        let row = sqlx::query(
            "INSERT INTO products (id, sku, name, price_cents, currency, stock, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             RETURNING id, sku, name, price_cents, currency, stock, updated_at",
        )
        .bind(uid(id))
        .bind(&draft.sku)
        .bind(&draft.name)
        .bind(draft.price_cents)
        .bind(draft.currency.as_str())
        .bind(draft.stock)
        .bind(micros(now))
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
        let _writer = self.inner().write_lock(WritePriority::Request).await?;
        count("update_product");
        let row = sqlx::query(
            "UPDATE products SET sku = ?, name = ?, price_cents = ?, currency = ?, stock = ?, updated_at = ?
             WHERE id = ?
             RETURNING id, sku, name, price_cents, currency, stock, updated_at",
        )
        .bind(&draft.sku)
        .bind(&draft.name)
        .bind(draft.price_cents)
        .bind(draft.currency.as_str())
        .bind(draft.stock)
        .bind(micros(now))
        .bind(uid(id))
        .fetch_optional(&self.inner().pool)
        .await
        .map_err(db_err)?;
        row.as_ref().map(rows::product).transpose()
    }

    // --- orders ---

    async fn order(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<HistoryEntry>)>> {
        let mut conn = self.conn().await?;
        let Some(order) = load_order(&mut conn, id).await? else {
            return Ok(None);
        };
        count("order_history");
        let rows =
            sqlx::query("SELECT status, at FROM order_history WHERE order_id = ? ORDER BY seq")
                .bind(uid(id))
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
                sqlx::query(
                    "SELECT id, user_id, status, total_cents, currency, created_at, updated_at
                     FROM orders WHERE user_id = ?
                     ORDER BY created_at DESC, id DESC LIMIT ?",
                )
                .bind(uid(user_id))
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
                let cursor =
                    sqlx::query_scalar::<_, i64>("SELECT created_at FROM orders WHERE id = ?")
                        .bind(uid(before))
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(db_err)?;
                count("orders_of_user");
                match cursor {
                    Some(created_at) => sqlx::query(
                        "SELECT id, user_id, status, total_cents, currency, created_at, updated_at
                             FROM orders
                             WHERE user_id = ? AND (created_at, id) < (?, ?)
                             ORDER BY created_at DESC, id DESC LIMIT ?",
                    )
                    .bind(uid(user_id))
                    .bind(created_at)
                    .bind(uid(before))
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await,
                    None => sqlx::query(
                        "SELECT id, user_id, status, total_cents, currency, created_at, updated_at
                             FROM orders
                             WHERE user_id = ? AND id < ?
                             ORDER BY created_at DESC, id DESC LIMIT ?",
                    )
                    .bind(uid(user_id))
                    .bind(uid(before))
                    .bind(limit)
                    .fetch_all(&mut *conn)
                    .await,
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
             WHERE user_id = ? ORDER BY sent_at DESC, seq DESC LIMIT ?",
        )
        .bind(uid(user_id))
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
             FROM loyalty_points p WHERE p.user_id = ?",
        )
        .bind(uid(user_id))
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
                   WHERE points > 0 ORDER BY points DESC, user_id LIMIT ?) AS top
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
             WHERE day >= ? ORDER BY day DESC, currency",
        )
        .bind(first.format("%Y-%m-%d").to_string())
        .fetch_all(&self.inner().pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let day = rows::text(row, "day")?;
                Ok(DailySales {
                    day: day.parse().map_err(|_| {
                        StoreError::Corrupt(format!("daily_sales.day holds {day:?}"))
                    })?,
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
            "SELECT EXISTS (SELECT 1 FROM processed_events WHERE group_name = ? AND event_id = ?)",
        )
        .bind(group)
        .bind(uid(event_id))
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
        let query = if include_replayed {
            sqlx::query(
                r#"SELECT id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at
                   FROM dead_letters ORDER BY failed_at DESC, id DESC LIMIT ?"#,
            )
        } else {
            sqlx::query(
                r#"SELECT id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at
                   FROM dead_letters WHERE replayed_at IS NULL ORDER BY failed_at DESC, id DESC LIMIT ?"#,
            )
        };
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.inner().pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(rows::dead_letter).collect()
    }

    async fn dead_letter(&self, id: uuid::Uuid) -> StoreResult<Option<DeadLetter>> {
        count("dead_letter");
        let row = sqlx::query(
            r#"SELECT id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at
               FROM dead_letters WHERE id = ?"#,
        )
        .bind(uid(id))
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

impl From<SqliteStore> for std::sync::Arc<dyn Store> {
    fn from(store: SqliteStore) -> Self {
        std::sync::Arc::new(store)
    }
}
