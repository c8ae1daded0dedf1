-- What a storefront shows of a product besides its price: a description
-- and a category (a shelf name such as "Kitchen"; NULL files it nowhere).
ALTER TABLE products ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE products ADD COLUMN category TEXT;
-- Category pages and the category list, in a stable order within one.
CREATE INDEX products_by_category ON products (category, id);

-- Full-text search over name, description and category: the 'simple'
-- configuration (words lower-cased, no language's stemming, as SQLite's
-- FTS5 does it), kept by the database itself, under a GIN index.
ALTER TABLE products ADD COLUMN search tsvector GENERATED ALWAYS AS (
    to_tsvector('simple', name || ' ' || description || ' ' || coalesce(category, ''))
) STORED;
CREATE INDEX products_search ON products USING GIN (search);
