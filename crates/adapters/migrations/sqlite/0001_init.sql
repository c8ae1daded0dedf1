-- orderflow's embedded schema (SQLite >= 3.37 for STRICT tables; sqlx bundles a
-- recent SQLite).
--
-- Conventions, kept in every table:
-- * ids (UUIDs) are TEXT in lower-case hyphenated form. UUID v7 ids therefore
--   sort by creation time with plain text comparison, and rows stay readable
--   in the sqlite3 shell.
-- * timestamps are INTEGER unix microseconds (UTC): sortable, exact, and the
--   same precision PostgreSQL keeps.
-- * money is INTEGER cents next to a TEXT ISO 4217 currency code.
-- * STRICT tables, so a wrongly typed bind fails loudly instead of being
--   stored with SQLite's type affinity.

-- --- users and sessions -----------------------------------------------------

CREATE TABLE users (
    id                 TEXT    PRIMARY KEY,
    email              TEXT    NOT NULL UNIQUE,
    name               TEXT    NOT NULL,
    password_hash      TEXT    NOT NULL,
    role               TEXT    NOT NULL CHECK (role IN ('shopper', 'admin')),
    created_at         INTEGER NOT NULL,
    -- logout-all: every access token issued before this instant is revoked.
    tokens_valid_after INTEGER
) STRICT;

-- One row per login on one device. Only the SHA-256 of the current refresh
-- token is kept; the tokens it replaced move to `rotated_refresh_tokens`.
CREATE TABLE sessions (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device       TEXT    NOT NULL,
    refresh_hash TEXT    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER
) STRICT;
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);

-- Refresh tokens that were rotated away. Presenting one again means it was
-- stolen and replayed (or the client is broken): the session gets revoked.
CREATE TABLE rotated_refresh_tokens (
    refresh_hash TEXT    PRIMARY KEY,
    session_id   TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    rotated_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX rotated_refresh_tokens_by_session ON rotated_refresh_tokens (session_id);

-- Revoked access tokens by `jti`, until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    jti        TEXT    PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_at);

-- --- catalog ----------------------------------------------------------------

CREATE TABLE products (
    id          TEXT    PRIMARY KEY,
    sku         TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    currency    TEXT    NOT NULL,
    -- A second line of defence behind reserve_stock's own check: stock can
    -- never be written below zero, whatever the code above does.
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- --- orders -----------------------------------------------------------------

CREATE TABLE orders (
    id          TEXT    PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES users (id),
    status      TEXT    NOT NULL,
    total_cents INTEGER NOT NULL,
    currency    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
-- Serves "my orders, newest first" with keyset paging.
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_by_status ON orders (status);

-- Lines are copied at order time (sku, name, price), so later catalog edits
-- never change what the shopper bought.
CREATE TABLE order_items (
    order_id         TEXT    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no          INTEGER NOT NULL,
    product_id       TEXT    NOT NULL,
    sku              TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL,
    line_total_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, line_no)
) STRICT;

-- One row per state the order walked through; `seq` keeps the steps of one
-- transition (which share a timestamp) in order.
CREATE TABLE order_history (
    seq      INTEGER PRIMARY KEY,
    order_id TEXT    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status   TEXT    NOT NULL,
    at       INTEGER NOT NULL
) STRICT;
CREATE INDEX order_history_by_order ON order_history (order_id, seq);

-- Saved answers to idempotent requests. A row with a NULL response_status is
-- a claim whose transaction has not completed it (it is never visible to
-- others, since claim and completion commit together).
CREATE TABLE idempotency_keys (
    user_id         TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    request_hash    TEXT    NOT NULL,
    response_status INTEGER,
    response_body   TEXT,
    created_at      INTEGER NOT NULL,
    completed_at    INTEGER,
    PRIMARY KEY (user_id, key)
) STRICT;

-- What each order took from stock, so a release gives back exactly what was
-- taken, once, and a redelivered reservation is recognised.
CREATE TABLE stock_reservations (
    order_id    TEXT    NOT NULL,
    product_id  TEXT    NOT NULL,
    quantity    INTEGER NOT NULL CHECK (quantity > 0),
    reserved_at INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (order_id, product_id)
) STRICT;

-- Every payment attempt, successful or not.
CREATE TABLE payments (
    seq          INTEGER PRIMARY KEY,
    order_id     TEXT    NOT NULL,
    succeeded    INTEGER NOT NULL CHECK (succeeded IN (0, 1)),
    reference    TEXT    NOT NULL,
    amount_cents INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    at           INTEGER NOT NULL
) STRICT;
CREATE INDEX payments_by_order ON payments (order_id);

-- --- read models filled by consumers ---------------------------------------

CREATE TABLE notifications (
    seq      INTEGER PRIMARY KEY,
    user_id  TEXT    NOT NULL,
    channel  TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    order_id TEXT,
    sent_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX notifications_by_user ON notifications (user_id, sent_at DESC, seq DESC);

CREATE TABLE loyalty_points (
    user_id TEXT    PRIMARY KEY,
    points  INTEGER NOT NULL
) STRICT;
-- Serves the leaderboard and "how many have more points than me".
CREATE INDEX loyalty_points_by_points ON loyalty_points (points DESC, user_id);

-- Revenue per UTC day (`day` is 'YYYY-MM-DD', which sorts as a date).
CREATE TABLE daily_sales (
    day           TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    orders        INTEGER NOT NULL,
    revenue_cents INTEGER NOT NULL,
    PRIMARY KEY (day, currency)
) STRICT;

CREATE TABLE product_sales (
    product_id    TEXT    PRIMARY KEY,
    quantity      INTEGER NOT NULL,
    revenue_cents INTEGER NOT NULL
) STRICT;

-- "(group, event) was handled": written in the same transaction as the
-- handler's effect, which is what makes redelivery harmless.
CREATE TABLE processed_events (
    group_name   TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    processed_at INTEGER NOT NULL,
    PRIMARY KEY (group_name, event_id)
) STRICT;

CREATE TABLE dead_letters (
    id          TEXT    PRIMARY KEY,
    group_name  TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    error       TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    -- The original event as structured-mode CloudEvents JSON.
    event       TEXT    NOT NULL,
    failed_at   INTEGER NOT NULL,
    replayed_at INTEGER
) STRICT;
CREATE INDEX dead_letters_by_time ON dead_letters (failed_at DESC, id DESC);

-- --- the embedded event log -------------------------------------------------
--
-- `partition` and `offset` are SQL keywords, so they are always double-quoted.

-- Every event ever appended, per topic and partition, numbered like Kafka
-- offsets. `seq` is the global append order: since SQLite has one writer at a
-- time, it is also the commit order, so ORDER BY seq never shows a later
-- offset of a partition before an earlier one.
CREATE TABLE event_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    key         TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (topic, "partition", "offset")
) STRICT;

-- The offset the next event of each partition gets (the "end" of the
-- partition). Incremented inside the appending transaction, so a rollback
-- also gives the offset back and offsets stay gap-free.
CREATE TABLE log_partitions (
    topic       TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, "partition")
) STRICT;

-- Committed positions: the next offset each group will read (Kafka semantics).
CREATE TABLE consumer_offsets (
    group_name  TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic, "partition")
) STRICT;
