-- Carts kept in the database (no Redis): a row per shopper with the cart's
-- token, which every change replaces, and its lines. An empty cart has no
-- rows at all.
CREATE TABLE carts (
    user_id    UUID        PRIMARY KEY,
    token      TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE cart_lines (
    user_id    UUID        NOT NULL,
    product_id UUID        NOT NULL,
    quantity   BIGINT      NOT NULL CHECK (quantity > 0),
    -- Lines are shown in the order they were added.
    added_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, product_id)
);
