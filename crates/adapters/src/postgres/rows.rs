//! Decoding rows into domain types. Every column is read by name, and any
//! value that does not fit (an unknown status, an out-of-range number) is
//! reported as [`StoreError::Corrupt`] rather than a panic: it means a bug or
//! a hand edit.

use orderflow_core::ports::store::{
    DeadLetter, NotificationRecord, SessionRecord, StoreError, StoreResult, UserRecord,
};
use orderflow_domain::Timestamp;
use orderflow_domain::events::Envelope;
use orderflow_domain::money::Currency;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::{HistoryEntry, Order, OrderLine, OrderStatus};
use orderflow_domain::product::Product;
use orderflow_domain::user::Role;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::db_err;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(crate) fn text(row: &PgRow, column: &str) -> StoreResult<String> {
    row.try_get::<String, _>(column).map_err(db_err)
}

pub(crate) fn int(row: &PgRow, column: &str) -> StoreResult<i64> {
    row.try_get::<i64, _>(column).map_err(db_err)
}

pub(crate) fn int4(row: &PgRow, column: &str) -> StoreResult<i32> {
    row.try_get::<i32, _>(column).map_err(db_err)
}

pub(crate) fn uuid(row: &PgRow, column: &str) -> StoreResult<uuid::Uuid> {
    row.try_get::<uuid::Uuid, _>(column).map_err(db_err)
}

pub(crate) fn opt_uuid(row: &PgRow, column: &str) -> StoreResult<Option<uuid::Uuid>> {
    row.try_get::<Option<uuid::Uuid>, _>(column).map_err(db_err)
}

pub(crate) fn time(row: &PgRow, column: &str) -> StoreResult<Timestamp> {
    row.try_get::<Timestamp, _>(column).map_err(db_err)
}

pub(crate) fn opt_time(row: &PgRow, column: &str) -> StoreResult<Option<Timestamp>> {
    row.try_get::<Option<Timestamp>, _>(column).map_err(db_err)
}

pub(crate) fn json(row: &PgRow, column: &str) -> StoreResult<serde_json::Value> {
    row.try_get::<serde_json::Value, _>(column).map_err(db_err)
}

pub(crate) fn currency(row: &PgRow, column: &str) -> StoreResult<Currency> {
    Currency::parse(&text(row, column)?).map_err(corrupt)
}

pub(crate) fn status(row: &PgRow, column: &str) -> StoreResult<OrderStatus> {
    let value = text(row, column)?;
    OrderStatus::parse(&value).ok_or_else(|| corrupt(format!("unknown order status {value:?}")))
}

pub(crate) fn user(row: &PgRow) -> StoreResult<UserRecord> {
    let role = text(row, "role")?;
    Ok(UserRecord {
        id: uuid(row, "id")?,
        email: text(row, "email")?,
        name: text(row, "name")?,
        password_hash: text(row, "password_hash")?,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}")))?,
        created_at: time(row, "created_at")?,
    })
}

pub(crate) fn session(row: &PgRow) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        id: uuid(row, "id")?,
        user_id: uuid(row, "user_id")?,
        device: text(row, "device")?,
        created_at: time(row, "created_at")?,
        last_used_at: time(row, "last_used_at")?,
        expires_at: time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

pub(crate) fn product(row: &PgRow) -> StoreResult<Product> {
    Ok(Product {
        id: uuid(row, "id")?,
        sku: text(row, "sku")?,
        name: text(row, "name")?,
        price_cents: int(row, "price_cents")?,
        currency: currency(row, "currency")?,
        stock: int(row, "stock")?,
        updated_at: time(row, "updated_at")?,
    })
}

/// An order without its lines (they are loaded separately and attached).
pub(crate) fn order_head(row: &PgRow) -> StoreResult<Order> {
    Ok(Order {
        id: uuid(row, "id")?,
        user_id: uuid(row, "user_id")?,
        status: status(row, "status")?,
        total_cents: int(row, "total_cents")?,
        currency: currency(row, "currency")?,
        items: Vec::new(),
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn order_line(row: &PgRow) -> StoreResult<OrderLine> {
    let quantity = int(row, "quantity")?;
    Ok(OrderLine {
        product_id: uuid(row, "product_id")?,
        sku: text(row, "sku")?,
        name: text(row, "name")?,
        quantity: u32::try_from(quantity)
            .map_err(|_| corrupt(format!("line quantity {quantity}")))?,
        unit_price_cents: int(row, "unit_price_cents")?,
        line_total_cents: int(row, "line_total_cents")?,
    })
}

pub(crate) fn history_entry(row: &PgRow) -> StoreResult<HistoryEntry> {
    Ok(HistoryEntry {
        status: status(row, "status")?,
        at: time(row, "at")?,
    })
}

pub(crate) fn notification(row: &PgRow) -> StoreResult<NotificationRecord> {
    let channel = text(row, "channel")?;
    let kind = text(row, "kind")?;
    Ok(NotificationRecord {
        user_id: uuid(row, "user_id")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| corrupt(format!("unknown channel {channel:?}")))?,
        kind: NotificationKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("unknown notification kind {kind:?}")))?,
        order_id: opt_uuid(row, "order_id")?,
        sent_at: time(row, "sent_at")?,
    })
}

/// An event stored as JSONB (structured-mode CloudEvents).
pub(crate) fn envelope(row: &PgRow, column: &str) -> StoreResult<Envelope> {
    Envelope::from_json(json(row, column)?).map_err(corrupt)
}

pub(crate) fn dead_letter(row: &PgRow) -> StoreResult<DeadLetter> {
    let attempts = int(row, "attempts")?;
    Ok(DeadLetter {
        id: uuid(row, "id")?,
        group: text(row, "group_name")?,
        topic: text(row, "topic")?,
        partition: int4(row, "partition")?,
        offset: int(row, "offset")?,
        error: text(row, "error")?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt(format!("attempts {attempts}")))?,
        event: envelope(row, "event")?,
        failed_at: time(row, "failed_at")?,
        replayed_at: opt_time(row, "replayed_at")?,
    })
}
