-- Revenue in tumbling windows of event time (the confirmation's envelope
-- time), one minute and one day wide, written by the `analytics` group in
-- the transaction that marks the event processed. `window_start` is the
-- window's first instant; a window ends where the next one of its
-- granularity starts.
CREATE TABLE sales_windows (
    granularity   TEXT        NOT NULL CHECK (granularity IN ('minute', 'day')),
    window_start  TIMESTAMPTZ NOT NULL,
    currency      TEXT        NOT NULL,
    orders        BIGINT      NOT NULL,
    units         BIGINT      NOT NULL,
    revenue_cents BIGINT      NOT NULL,
    PRIMARY KEY (granularity, window_start, currency)
);

-- The same per product: `orders` counts the orders that had the product.
CREATE TABLE product_sales_windows (
    granularity   TEXT        NOT NULL CHECK (granularity IN ('minute', 'day')),
    window_start  TIMESTAMPTZ NOT NULL,
    product_id    UUID        NOT NULL,
    currency      TEXT        NOT NULL,
    orders        BIGINT      NOT NULL,
    units         BIGINT      NOT NULL,
    revenue_cents BIGINT      NOT NULL,
    PRIMARY KEY (granularity, window_start, product_id, currency)
);
