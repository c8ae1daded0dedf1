-- Carts kept in the database (the embedded setup, or no Redis): a row per
-- shopper with the cart's token, which every change replaces, and its
-- lines. An empty cart has no rows at all.
CREATE TABLE carts (
    user_id    TEXT    PRIMARY KEY,
    token      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE TABLE cart_lines (
    user_id    TEXT    NOT NULL,
    product_id TEXT    NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    -- Lines are shown in the order they were added.
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (user_id, product_id)
) STRICT;
