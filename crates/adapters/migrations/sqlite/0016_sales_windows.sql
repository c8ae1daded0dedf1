-- Revenue in tumbling windows of event time (the confirmation's envelope
-- time), one minute and one day wide, written by the `analytics` group in
-- the transaction that marks the event processed. `window_start` is the
-- window's first instant (milliseconds since the epoch, like every time
-- here); a window ends where the next one of its granularity starts.
CREATE TABLE sales_windows (
    granularity   TEXT    NOT NULL CHECK (granularity IN ('minute', 'day')),
    window_start  INTEGER NOT NULL,
    currency      TEXT    NOT NULL,
    orders        INTEGER NOT NULL,
    units         INTEGER NOT NULL,
    revenue_cents INTEGER NOT NULL,
    PRIMARY KEY (granularity, window_start, currency)
) STRICT;

-- The same per product: `orders` counts the orders that had the product.
CREATE TABLE product_sales_windows (
    granularity   TEXT    NOT NULL CHECK (granularity IN ('minute', 'day')),
    window_start  INTEGER NOT NULL,
    product_id    TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    orders        INTEGER NOT NULL,
    units         INTEGER NOT NULL,
    revenue_cents INTEGER NOT NULL,
    PRIMARY KEY (granularity, window_start, product_id, currency)
) STRICT;
