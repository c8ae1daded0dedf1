-- Issue 11: caches that never lie.
--
-- Every product row carries a version, bumped in the same transaction as any
-- change of its fields or stock (an admin edit, an import, a reservation, a
-- release). Cache writes are conditional on it: a loader that read an older
-- row can never put it over a newer one (the stale-set race).
--
-- The bump is a trigger, so no writer of `products` can forget it. A writer
-- that sets the version itself is left alone (the trigger only bumps when the
-- statement did not), so a change bumps once.
ALTER TABLE products ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

CREATE FUNCTION products_version_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.version = OLD.version THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER products_version_bump
BEFORE UPDATE OF sku, name, price_cents, currency, stock ON products
FOR EACH ROW EXECUTE FUNCTION products_version_bump();

-- Write-behind view counters: each API process counts product reads in
-- memory and adds them here in batches (see the catalog's view counter).
CREATE TABLE product_views (
    product_id UUID   PRIMARY KEY,
    views      BIGINT NOT NULL CHECK (views >= 0)
);
