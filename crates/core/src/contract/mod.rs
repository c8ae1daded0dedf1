//! Port contract scenarios, written once and run against every adapter.
//!
//! Each scenario is a `pub async fn` that drives a port only through its trait
//! object and panics with a message naming the broken promise. An adapter's
//! test file instantiates every scenario against a fresh instance, one test
//! per scenario (see `crates/adapters/tests/contract_sqlite.rs`):
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
//! async fn store_users() {
//!     let store = fresh_store().await; // migrated and empty
//!     orderflow_core::contract::store::users(store).await;
//! }
//! ```
//!
//! - [`store`]: the database port ([`Store`] and [`StoreTx`](crate::ports::store::StoreTx)).
//! - [`log`]: the event-log port ([`EventLog`](crate::ports::log::EventLog)),
//!   with events appended through a [`Store`] unit of work, as in production.
//! - [`cache`]: the shared cache ([`SharedCache`](crate::ports::cache::SharedCache)):
//!   values with a TTL, token-checked locks, invalidations over pub/sub.
//! - [`rate_limit`]: each algorithm's promises
//!   ([`RateLimiter`](crate::ports::rate_limit::RateLimiter)), on real time.
//! - [`read_models`]: the read models
//!   ([`ReadModels`](crate::ports::read_models::ReadModels)): absolute writes,
//!   reads that answer only when complete.
//! - [`revocations`]: the revocation list
//!   ([`RevocationList`](crate::ports::revocations::RevocationList)) and its
//!   database backing.
//! - [`presence`]: the live presence board
//!   ([`PresenceBoard`](crate::ports::presence::PresenceBoard)): reports
//!   summed across processes, expiring unless kept alive.
//! - [`carts`]: the cart port ([`Carts`](crate::ports::carts::Carts)):
//!   lines in order, a token per change, compare-and-clear.
//! - [`outbox`]: the outbox port ([`Outbox`](crate::ports::outbox::Outbox)),
//!   fed by a [`Store`] whose units of work append to the outbox
//!   ([`EventDestination::Outbox`](crate::ports::outbox::EventDestination)).
//!
//! Rules the scenarios keep, so that every adapter can run them:
//! - Each scenario expects a freshly migrated, empty store (and log): counts,
//!   leaderboards and offsets are asserted exactly.
//! - Timestamps are made with microsecond precision ([`now`]), the precision
//!   every supported database keeps.
//! - Nothing sleeps to wait for something to happen; the only sleeps are in
//!   scenarios that test a wait itself, or that widen a race window on
//!   purpose, and each says so. Timing bounds are generous (seconds): these
//!   are correctness tests, and speed is measured by benchmarks.

/// Calls `$test!(scenario, …)` with the name of every scenario of a module
/// ([`store`], [`log`] or [`outbox`]): an adapter's test binary passes a
/// macro of its own that turns each name into a test against a fresh
/// instance, so a scenario added here runs on every adapter without another
/// list to keep. `store_scenarios!(my_test; args)` calls
/// `my_test!(args; scenario, …)`, for a macro that needs more than the names.
#[macro_export]
macro_rules! store_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            migrate_is_repeatable,
            users,
            refresh_rotation_and_reuse,
            revoke_sessions,
            token_revocations,
            products,
            orders,
            idempotency,
            concurrent_idempotency_claims,
            stock_reservation,
            cancelled_orders,
            product_search,
            concurrent_reservations,
            processed_marks,
            processed_marks_in_bulk,
            savepoints_undo_one_effect,
            read_models,
            sales_windows,
            dead_letters,
            product_versions,
            product_imports,
            product_views,
            unique_viewers,
            fraud_orders,
            live_channels,
            retention,
        );
    };
}

/// The [`carts`] scenarios, as [`store_scenarios!`] does for the store.
#[macro_export]
macro_rules! cart_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            lines_and_tokens,
            clear_only_while_unchanged,
            change_only_while_unchanged,
            concurrent_changes_all_land,
            concurrent_increments_all_count,
        );
    };
}

/// The [`presence`] scenarios, as [`store_scenarios!`] does for the store.
#[macro_export]
macro_rules! presence_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            tallies_sum_the_processes,
            reports_expire_unless_kept_alive,
        );
    };
}

/// The [`cache`] scenarios, as [`store_scenarios!`] does for the store.
#[macro_export]
macro_rules! cache_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            values,
            values_expire,
            locks,
            locks_expire,
            lock_is_exclusive_under_contention,
            invalidations_reach_every_subscriber,
            versioned_writes,
        );
    };
}

/// The [`rate_limit`] scenarios, as [`store_scenarios!`] does for the store.
#[macro_export]
macro_rules! rate_limit_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            fixed_window,
            token_bucket,
            leaky_bucket,
            concurrent_checks_never_overspend,
            deciding_at_once_spends_the_same_budget,
        );
    };
}

/// The [`log`] scenarios, as [`store_scenarios!`] does for the store.
#[macro_export]
macro_rules! log_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            append_visible_only_after_commit,
            poll_order_commit_and_resume,
            appends_follow_savepoints,
            groups_are_independent,
            rewind_replays_from_the_beginning,
            lag,
            poll_wakes_on_commit,
            poll_waits_at_most_wait,
            ping,
        );
    };
}

/// The [`outbox`] scenarios, as [`store_scenarios!`] does for the store.
#[macro_export]
macro_rules! outbox_scenarios {
    ($test:ident $(; $($arg:tt)*)?) => {
        $test!($($($arg)* ;)?
            claim_sees_only_committed,
            claim_limit_takes_oldest,
            marked_rows_never_come_back,
            dropped_batch_leaves_rows_unsent,
            live_claims_do_not_overlap,
            live_claims_keep_key_order,
            backlog_counts_and_age,
            relay_marks_only_after_ack,
            running_relay_claims_at_commit_with_batches_in_flight,
        );
    };
}

pub mod cache;
pub mod carts;
pub mod log;
pub mod outbox;
pub mod presence;
pub mod rate_limit;
pub mod read_models;
pub mod revocations;
pub mod store;

use std::sync::Arc;

use chrono::SubsecRound;
use orderflow_domain::events::{Envelope, EventData};
use orderflow_domain::money::Currency;
use orderflow_domain::order::{Order, OrderLine, OrderStatus};
use orderflow_domain::product::{Product, ProductDraft};
use orderflow_domain::user::Role;
use orderflow_domain::{Timestamp, UserId};

use crate::ports::store::{Store, UserRecord};

/// Now, truncated to microseconds (what the databases keep).
pub fn now() -> Timestamp {
    chrono::Utc::now().trunc_subsecs(6)
}

/// `minutes` from now (an expiry).
pub fn in_minutes(minutes: i64) -> Timestamp {
    chrono::Utc::now() + chrono::TimeDelta::minutes(minutes)
}

/// A shopper with a unique e-mail address.
pub fn shopper(name: &str) -> UserRecord {
    let id = uuid::Uuid::now_v7();
    UserRecord {
        id,
        email: format!("{}-{id}@example.com", name.to_lowercase()),
        name: name.to_owned(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_owned(),
        role: Role::Shopper,
        created_at: now(),
    }
}

/// Inserts and commits a shopper.
pub async fn given_user(store: &Arc<dyn Store>, name: &str) -> UserRecord {
    let user = shopper(name);
    let mut tx = store.begin().await.expect("begin");
    tx.insert_user(&user).await.expect("insert a new user");
    tx.commit().await.expect("commit the new user");
    user
}

/// A valid product draft with a unique SKU.
pub fn draft(name: &str, price_cents: i64, stock: i64) -> ProductDraft {
    let sku = format!("SKU-{}", uuid::Uuid::now_v7().simple());
    ProductDraft::new(&sku, name, price_cents, "EUR", stock).expect("a valid draft")
}

/// Inserts a product with `stock` units at 2.50 EUR.
pub async fn given_product(store: &Arc<dyn Store>, stock: i64) -> Product {
    store
        .insert_product(uuid::Uuid::now_v7(), &draft("Mug", 250, stock), now())
        .await
        .expect("insert a product")
}

/// A pending order of `lines`, priced from the products, created at `at`.
pub fn order_of(user_id: UserId, lines: &[(&Product, u32)], at: Timestamp) -> Order {
    let items: Vec<OrderLine> = lines
        .iter()
        .map(|(product, quantity)| OrderLine {
            product_id: product.id,
            sku: product.sku.clone(),
            name: product.name.clone(),
            quantity: *quantity,
            unit_price_cents: product.price_cents,
            line_total_cents: product.price_cents * i64::from(*quantity),
        })
        .collect();
    Order {
        id: uuid::Uuid::now_v7(),
        user_id,
        status: OrderStatus::Pending,
        total_cents: items.iter().map(|line| line.line_total_cents).sum(),
        currency: lines
            .first()
            .map(|(product, _)| product.currency.clone())
            .unwrap_or_else(|| Currency::parse("EUR").expect("EUR")),
        items,
        created_at: at,
        updated_at: at,
    }
}

/// Inserts and commits a pending order.
pub async fn given_order(
    store: &Arc<dyn Store>,
    user_id: UserId,
    lines: &[(&Product, u32)],
) -> Order {
    let order = order_of(user_id, lines, now());
    let mut tx = store.begin().await.expect("begin");
    tx.insert_order(&order).await.expect("insert an order");
    tx.commit().await.expect("commit the order");
    order
}

/// A `user.events` event keyed by `user_id`.
pub fn user_registered(user_id: UserId) -> Envelope {
    Envelope::new(
        EventData::UserRegistered {
            user_id,
            email: format!("{user_id}@example.com"),
            name: "Ann".into(),
        },
        None,
    )
}

/// An `order.events` event keyed by `user_id`.
pub fn order_rejected(user_id: UserId) -> Envelope {
    Envelope::new(
        EventData::OrderRejected {
            order_id: uuid::Uuid::now_v7(),
            user_id,
            reason: "out of stock".into(),
        },
        None,
    )
}

/// Appends `events` in one unit of work and commits it.
pub async fn append_committed(store: &Arc<dyn Store>, events: &[Envelope]) {
    let mut tx = store.begin().await.expect("begin");
    tx.append(events).await.expect("append events");
    tx.commit().await.expect("commit the appended events");
}
