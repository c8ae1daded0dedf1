-- Issue 11: caches that never lie.
--
-- Every product row carries a version, bumped in the same transaction as any
-- change of its fields or stock (an admin edit, an import, a reservation, a
-- release). Cache writes are conditional on it: a loader that read an older
-- row can never put it over a newer one (the stale-set race).
--
-- The bump is a trigger, so no writer of `products` can forget it. Writers
-- that need the new version in their RETURNING clause (SQLite does not report
-- what an AFTER trigger changed) bump it themselves; the trigger's WHEN then
-- sees the version already moved and does nothing, so a change bumps once.
ALTER TABLE products ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TRIGGER products_version_bump
AFTER UPDATE OF sku, name, price_cents, currency, stock ON products
FOR EACH ROW WHEN NEW.version = OLD.version
BEGIN
    UPDATE products SET version = OLD.version + 1 WHERE id = NEW.id;
END;

-- Write-behind view counters: each API process counts product reads in
-- memory and adds them here in batches (see the catalog's view counter).
CREATE TABLE product_views (
    product_id TEXT    PRIMARY KEY,
    views      INTEGER NOT NULL CHECK (views >= 0)
) STRICT;
