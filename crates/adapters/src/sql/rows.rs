//! Decoding rows into domain types, for both engines. Every column is read by
//! name through [`SqlRow`], and any value that does not fit (an unknown
//! status, a malformed id, an out-of-range number) is reported as
//! [`StoreError::Corrupt`] rather than a panic: it means a bug or a hand edit.

use orderflow_core::ports::outbox::OutboxEvent;
use orderflow_core::ports::store::{
    DeadLetter, IdempotencyRecord, NotificationRecord, OrderChange, ProductSales, SalesWindow,
    SessionRecord, StoreError, StoreResult, UserRecord,
};
use orderflow_domain::events::Envelope;
use orderflow_domain::fraud::WindowOrder;
use orderflow_domain::money::Currency;
use orderflow_domain::notification::{Channel, NotificationKind};
use orderflow_domain::order::{HistoryEntry, Order, OrderLine, OrderStatus};
use orderflow_domain::product::Product;
use orderflow_domain::sales::Granularity;
use orderflow_domain::user::Role;

use super::SqlRow;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The column lists the mappings below read, for `SELECT {COLUMNS} FROM …`.
pub(crate) const USER_COLUMNS: &str = "id, email, name, password_hash, role, created_at";
pub(crate) const SESSION_COLUMNS: &str =
    "id, user_id, device, created_at, last_used_at, expires_at, revoked_at";
/// A product's columns as a literal, for statements that `concat!` them
/// (`RETURNING`, `SELECT` with a per-engine tail).
macro_rules! product_columns {
    () => {
        "id, sku, name, price_cents, currency, stock, description, category, updated_at, version"
    };
}
pub(crate) use product_columns;
pub(crate) const PRODUCT_COLUMNS: &str = product_columns!();
pub(crate) const ORDER_COLUMNS: &str =
    "id, user_id, status, total_cents, currency, created_at, updated_at";
pub(crate) const DEAD_LETTER_COLUMNS: &str = r#"id, group_name, topic, "partition", "offset", error, attempts, event, failed_at, replayed_at"#;

pub(crate) fn currency(row: &impl SqlRow, column: &str) -> StoreResult<Currency> {
    Currency::parse(&row.text(column)?).map_err(corrupt)
}

/// A `fraud_orders` row as the fraud rules see it.
pub(crate) fn window_order(row: &impl SqlRow) -> StoreResult<WindowOrder> {
    Ok(WindowOrder {
        order_id: row.uuid("order_id")?,
        at: row.time("placed_at")?,
        total_cents: row.int("total_cents")?,
        currency: currency(row, "currency")?,
    })
}

pub(crate) fn status(row: &impl SqlRow, column: &str) -> StoreResult<OrderStatus> {
    let value = row.text(column)?;
    OrderStatus::parse(&value).ok_or_else(|| corrupt(format!("unknown order status {value:?}")))
}

fn unsigned(row: &impl SqlRow, column: &str) -> StoreResult<u32> {
    let value = row.int(column)?;
    u32::try_from(value).map_err(|_| corrupt(format!("column {column} holds {value}")))
}

pub(crate) fn user(row: &impl SqlRow) -> StoreResult<UserRecord> {
    let role = row.text("role")?;
    Ok(UserRecord {
        id: row.uuid("id")?,
        email: row.text("email")?,
        name: row.text("name")?,
        password_hash: row.text("password_hash")?,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}")))?,
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn session(row: &impl SqlRow) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        id: row.uuid("id")?,
        user_id: row.uuid("user_id")?,
        device: row.text("device")?,
        created_at: row.time("created_at")?,
        last_used_at: row.time("last_used_at")?,
        expires_at: row.time("expires_at")?,
        revoked_at: row.opt_time("revoked_at")?,
    })
}

pub(crate) fn product(row: &impl SqlRow) -> StoreResult<Product> {
    Ok(Product {
        id: row.uuid("id")?,
        sku: row.text("sku")?,
        name: row.text("name")?,
        price_cents: row.int("price_cents")?,
        currency: currency(row, "currency")?,
        stock: row.int("stock")?,
        description: row.text("description")?,
        category: row.opt_text("category")?,
        updated_at: row.time("updated_at")?,
        version: row.int("version")?,
    })
}

/// An idempotency record; status 0 while its request is in progress.
pub(crate) fn idempotency(row: &impl SqlRow) -> StoreResult<IdempotencyRecord> {
    let status = row
        .opt_int("response_status")?
        .map(|s| u16::try_from(s).map_err(|_| corrupt(format!("HTTP status {s}"))))
        .transpose()?;
    Ok(IdempotencyRecord {
        request_hash: row.text("request_hash")?,
        response_status: status.unwrap_or(0),
        response_body: row
            .opt_json("response_body")?
            .unwrap_or(serde_json::Value::Null),
    })
}

/// An order without its lines (they are loaded separately and attached).
pub(crate) fn order_head(row: &impl SqlRow) -> StoreResult<Order> {
    Ok(Order {
        id: row.uuid("id")?,
        user_id: row.uuid("user_id")?,
        status: status(row, "status")?,
        total_cents: row.int("total_cents")?,
        currency: currency(row, "currency")?,
        items: Vec::new(),
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

pub(crate) fn order_line(row: &impl SqlRow) -> StoreResult<OrderLine> {
    Ok(OrderLine {
        product_id: row.uuid("product_id")?,
        sku: row.text("sku")?,
        name: row.text("name")?,
        quantity: unsigned(row, "quantity")?,
        unit_price_cents: row.int("unit_price_cents")?,
        line_total_cents: row.int("line_total_cents")?,
    })
}

pub(crate) fn history_entry(row: &impl SqlRow) -> StoreResult<HistoryEntry> {
    Ok(HistoryEntry {
        status: status(row, "status")?,
        at: row.time("at")?,
    })
}

pub(crate) fn notification(row: &impl SqlRow) -> StoreResult<NotificationRecord> {
    let channel = row.text("channel")?;
    let kind = row.text("kind")?;
    Ok(NotificationRecord {
        user_id: row.uuid("user_id")?,
        channel: Channel::parse(&channel)
            .ok_or_else(|| corrupt(format!("unknown channel {channel:?}")))?,
        kind: NotificationKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("unknown notification kind {kind:?}")))?,
        order_id: row.opt_uuid("order_id")?,
        sent_at: row.time("sent_at")?,
    })
}

/// One step of an order's history with its position.
pub(crate) fn order_change(row: &impl SqlRow) -> StoreResult<OrderChange> {
    Ok(OrderChange {
        position: row.int("seq")?,
        order_id: row.uuid("order_id")?,
        user_id: row.uuid("user_id")?,
        status: status(row, "status")?,
        at: row.time("at")?,
    })
}

/// An event stored as structured-mode CloudEvents JSON.
pub(crate) fn envelope(row: &impl SqlRow, column: &str) -> StoreResult<Envelope> {
    Envelope::from_json(row.json(column)?).map_err(corrupt)
}

/// A topic and partition (the key of most log tables).
pub(crate) fn partition_key(row: &impl SqlRow) -> StoreResult<(String, i32)> {
    Ok((row.text("topic")?, row.int4("partition")?))
}

/// A row of the outbox (`seq, topic, key, payload, created_at`).
pub(crate) fn outbox_event(row: &impl SqlRow) -> StoreResult<OutboxEvent> {
    let seq = row.int("seq")?;
    Ok(OutboxEvent {
        seq,
        topic: row.text("topic")?,
        key: row.text("key")?,
        envelope: envelope(row, "payload")
            .map_err(|e| corrupt(format!("outbox row {seq} cannot be decoded: {e}")))?,
        created_at: row.time("created_at")?,
    })
}

pub(crate) fn dead_letter(row: &impl SqlRow) -> StoreResult<DeadLetter> {
    Ok(DeadLetter {
        id: row.uuid("id")?,
        group: row.text("group_name")?,
        topic: row.text("topic")?,
        partition: row.int4("partition")?,
        offset: row.int("offset")?,
        error: row.text("error")?,
        attempts: unsigned(row, "attempts")?,
        event: envelope(row, "event")?,
        failed_at: row.time("failed_at")?,
        replayed_at: row.opt_time("replayed_at")?,
    })
}

pub(crate) fn sales_window(row: &impl SqlRow) -> StoreResult<SalesWindow> {
    Ok(SalesWindow {
        granularity: Granularity::parse(&row.text("granularity")?).map_err(corrupt)?,
        window_start: row.time("window_start")?,
        currency: row.text("currency")?,
        orders: row.int("orders")?,
        units: row.int("units")?,
        revenue_cents: row.int("revenue_cents")?,
    })
}

pub(crate) fn product_sales(row: &impl SqlRow) -> StoreResult<ProductSales> {
    Ok(ProductSales {
        product_id: row.uuid("product_id")?,
        name: row.opt_text("name")?,
        currency: row.text("currency")?,
        orders: row.int("orders")?,
        units: row.int("units")?,
        revenue_cents: row.int("revenue_cents")?,
        place: row.int("place")?,
    })
}
