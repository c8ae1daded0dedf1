-- orderflow's schema on PostgreSQL (15 or newer): the same tables as the
-- embedded SQLite schema, with native types.
--
-- Conventions, kept in every table:
-- * ids are UUID (v7 ids sort by creation time);
-- * timestamps are TIMESTAMPTZ (microsecond precision, like the domain);
-- * money is BIGINT cents next to a TEXT ISO 4217 currency code;
-- * events and bodies are JSONB.
--
-- Concurrency is handled with row locks, not a database-wide writer lock:
-- conditional UPDATEs for stock, INSERT ... ON CONFLICT for claims and marks,
-- SELECT ... FOR UPDATE for orders and sessions (see src/postgres/mod.rs).

-- --- users and sessions -----------------------------------------------------

CREATE TABLE users (
    id                 UUID        PRIMARY KEY,
    email              TEXT        NOT NULL,
    name               TEXT        NOT NULL,
    password_hash      TEXT        NOT NULL,
    role               TEXT        NOT NULL CHECK (role IN ('shopper', 'admin')),
    created_at         TIMESTAMPTZ NOT NULL,
    -- logout-all: every access token issued before this instant is revoked.
    tokens_valid_after TIMESTAMPTZ,
    CONSTRAINT users_email_key UNIQUE (email)
);

-- One row per login on one device. Only the SHA-256 of the current refresh
-- token is kept; the tokens it replaced move to `rotated_refresh_tokens`.
CREATE TABLE sessions (
    id           UUID        PRIMARY KEY,
    user_id      UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device       TEXT        NOT NULL,
    refresh_hash TEXT        NOT NULL UNIQUE,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX sessions_by_user ON sessions (user_id, created_at);

-- Refresh tokens that were rotated away. Presenting one again means it was
-- stolen and replayed (or the client is broken): the session gets revoked.
CREATE TABLE rotated_refresh_tokens (
    refresh_hash TEXT        PRIMARY KEY,
    session_id   UUID        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    rotated_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX rotated_refresh_tokens_by_session ON rotated_refresh_tokens (session_id);

-- Revoked access tokens by `jti`, until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    jti        TEXT        PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_at);

-- --- catalog ----------------------------------------------------------------

CREATE TABLE products (
    id          UUID        PRIMARY KEY,
    sku         TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    price_cents BIGINT      NOT NULL CHECK (price_cents >= 0),
    currency    TEXT        NOT NULL,
    -- A second line of defence behind reserve_stock's conditional UPDATE:
    -- stock can never be written below zero, whatever the code above does.
    stock       BIGINT      NOT NULL CONSTRAINT products_stock_not_negative CHECK (stock >= 0),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    CONSTRAINT products_sku_key UNIQUE (sku)
);

-- --- orders -----------------------------------------------------------------

CREATE TABLE orders (
    id          UUID        PRIMARY KEY,
    user_id     UUID        NOT NULL REFERENCES users (id),
    status      TEXT        NOT NULL,
    total_cents BIGINT      NOT NULL,
    currency    TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- Serves "my orders, newest first" with keyset paging.
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_by_status ON orders (status);

-- Lines are copied at order time (sku, name, price), so later catalog edits
-- never change what the shopper bought.
CREATE TABLE order_items (
    order_id         UUID    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no          INTEGER NOT NULL,
    product_id       UUID    NOT NULL,
    sku              TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    quantity         BIGINT  NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT  NOT NULL,
    line_total_cents BIGINT  NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

-- One row per state the order walked through; `seq` keeps the steps of one
-- transition (which share a timestamp) in order.
CREATE TABLE order_history (
    seq      BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id UUID        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status   TEXT        NOT NULL,
    at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX order_history_by_order ON order_history (order_id, seq);

-- Saved answers to idempotent requests. A row with a NULL response_status is
-- a claim whose transaction has not completed it. Claims are
-- INSERT ... ON CONFLICT DO NOTHING: a second claimer of an uncommitted key
-- waits on the primary key until the first commits (then sees the row) or
-- rolls back (then takes the key).
CREATE TABLE idempotency_keys (
    user_id         UUID        NOT NULL,
    key             TEXT        NOT NULL,
    request_hash    TEXT        NOT NULL,
    response_status INTEGER,
    response_body   JSONB,
    created_at      TIMESTAMPTZ NOT NULL,
    completed_at    TIMESTAMPTZ,
    PRIMARY KEY (user_id, key)
);

-- What each order took from stock, so a release gives back exactly what was
-- taken, once, and a redelivered reservation is recognised.
CREATE TABLE stock_reservations (
    order_id    UUID        NOT NULL,
    product_id  UUID        NOT NULL,
    quantity    BIGINT      NOT NULL CHECK (quantity > 0),
    reserved_at TIMESTAMPTZ NOT NULL,
    released_at TIMESTAMPTZ,
    PRIMARY KEY (order_id, product_id)
);

-- Every payment attempt, successful or not.
CREATE TABLE payments (
    seq          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id     UUID        NOT NULL,
    succeeded    BOOLEAN     NOT NULL,
    reference    TEXT        NOT NULL,
    amount_cents BIGINT      NOT NULL,
    currency     TEXT        NOT NULL,
    at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX payments_by_order ON payments (order_id);

-- --- read models filled by consumers ---------------------------------------

CREATE TABLE notifications (
    seq      BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id  UUID        NOT NULL,
    channel  TEXT        NOT NULL,
    kind     TEXT        NOT NULL,
    order_id UUID,
    sent_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX notifications_by_user ON notifications (user_id, sent_at DESC, seq DESC);

CREATE TABLE loyalty_points (
    user_id UUID   PRIMARY KEY,
    points  BIGINT NOT NULL
);
-- Serves the leaderboard and "how many have more points than me".
CREATE INDEX loyalty_points_by_points ON loyalty_points (points DESC, user_id);

-- Revenue per UTC day.
CREATE TABLE daily_sales (
    day           DATE   NOT NULL,
    currency      TEXT   NOT NULL,
    orders        BIGINT NOT NULL,
    revenue_cents BIGINT NOT NULL,
    PRIMARY KEY (day, currency)
);

CREATE TABLE product_sales (
    product_id    UUID   PRIMARY KEY,
    quantity      BIGINT NOT NULL,
    revenue_cents BIGINT NOT NULL
);

-- "(group, event) was handled": written in the same transaction as the
-- handler's effect, which is what makes redelivery harmless.
CREATE TABLE processed_events (
    group_name   TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (group_name, event_id)
);

CREATE TABLE dead_letters (
    id          UUID        PRIMARY KEY,
    group_name  TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    "partition" INTEGER     NOT NULL,
    "offset"    BIGINT      NOT NULL,
    error       TEXT        NOT NULL,
    attempts    BIGINT      NOT NULL,
    -- The original event as structured-mode CloudEvents JSON.
    event       JSONB       NOT NULL,
    failed_at   TIMESTAMPTZ NOT NULL,
    replayed_at TIMESTAMPTZ
);
CREATE INDEX dead_letters_by_time ON dead_letters (failed_at DESC, id DESC);

-- --- the embedded event log -------------------------------------------------
--
-- Used when events stay in the database (no Kafka). `partition` and `offset`
-- are always double-quoted (`offset` is a reserved word).

-- Every event ever appended, per topic and partition, numbered like Kafka
-- offsets. Appends to one partition are serialised by the row lock on its
-- `log_partitions` row, held until commit, so within a partition both
-- `offset` and `seq` grow in commit order.
CREATE TABLE event_log (
    seq         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic       TEXT        NOT NULL,
    "partition" INTEGER     NOT NULL,
    "offset"    BIGINT      NOT NULL,
    key         TEXT        NOT NULL,
    event_id    UUID        NOT NULL,
    payload     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (topic, "partition", "offset")
);

-- The offset the next event of each partition gets (the "end" of the
-- partition). Incremented inside the appending transaction, so a rollback
-- also gives the offset back and offsets stay gap-free.
CREATE TABLE log_partitions (
    topic       TEXT    NOT NULL,
    "partition" INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    PRIMARY KEY (topic, "partition")
);

-- Committed positions: the next offset each group will read (Kafka semantics).
CREATE TABLE consumer_offsets (
    group_name  TEXT        NOT NULL,
    topic       TEXT        NOT NULL,
    "partition" INTEGER     NOT NULL,
    next_offset BIGINT      NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (group_name, topic, "partition")
);

-- --- the outbox -------------------------------------------------------------
--
-- Used when the event log is Kafka: units of work append here, relays move
-- the rows to the broker. Relays claim rows with FOR UPDATE SKIP LOCKED, so
-- several can run at once without publishing the same row twice in parallel.
CREATE TABLE outbox (
    seq        BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic      TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    event_id   UUID        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    sent_at    TIMESTAMPTZ
);
-- Only unsent rows are ever looked up; the index stays as small as the backlog.
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
