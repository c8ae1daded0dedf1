-- What a storefront shows of a product besides its price: a description
-- and a category (a shelf name such as "Kitchen"; NULL files it nowhere).
ALTER TABLE products ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE products ADD COLUMN category TEXT;
-- Category pages and the category list, in a stable order within one.
CREATE INDEX products_by_category ON products (category, id);

-- Full-text search over name, description and category (FTS5, Unicode
-- words, case folded; accents kept, as PostgreSQL's 'simple' keeps them). The index keeps its own copy of the text under the
-- product's rowid, kept current by the triggers below: only the searched
-- columns fire them, so stock changes (a reservation per order line) never
-- touch the index. orderflow never VACUUMs, which is what could renumber
-- the rowids of a table without an INTEGER PRIMARY KEY.
CREATE VIRTUAL TABLE products_search USING fts5(
    name, description, category,
    tokenize = 'unicode61 remove_diacritics 0'
);
INSERT INTO products_search (rowid, name, description, category)
    SELECT rowid, name, description, coalesce(category, '') FROM products;
CREATE TRIGGER products_search_insert AFTER INSERT ON products BEGIN
    INSERT INTO products_search (rowid, name, description, category)
        VALUES (new.rowid, new.name, new.description, coalesce(new.category, ''));
END;
CREATE TRIGGER products_search_update AFTER UPDATE OF name, description, category ON products BEGIN
    DELETE FROM products_search WHERE rowid = old.rowid;
    INSERT INTO products_search (rowid, name, description, category)
        VALUES (new.rowid, new.name, new.description, coalesce(new.category, ''));
END;
CREATE TRIGGER products_search_delete AFTER DELETE ON products BEGIN
    DELETE FROM products_search WHERE rowid = old.rowid;
END;
