-- The fraud check's memory: each shopper's recent orders by event time
-- (the OrderPlaced envelope's `time`), written by the `fraud` group in the
-- transaction that marks the event processed. A shopper's watermark is
-- their latest `placed_at`. Pruned by `placed_at` after the fraud
-- retention, which is never shorter than a window plus its grace.
CREATE TABLE fraud_orders (
    order_id    TEXT    PRIMARY KEY,
    user_id     TEXT    NOT NULL,
    placed_at   INTEGER NOT NULL,
    total_cents INTEGER NOT NULL,
    currency    TEXT    NOT NULL
) STRICT;
CREATE INDEX fraud_orders_by_shopper ON fraud_orders (user_id, placed_at);
CREATE INDEX fraud_orders_by_time ON fraud_orders (placed_at);
