-- Product views per minute, for the trending products (a hopping window
-- over these). The write-behind view flush adds each batch to the minute it
-- was flushed in (every second by default), next to the product's total.
CREATE TABLE product_view_minutes (
    minute_start TIMESTAMPTZ NOT NULL,
    product_id   UUID        NOT NULL,
    views        BIGINT      NOT NULL CHECK (views >= 0),
    PRIMARY KEY (minute_start, product_id)
);
