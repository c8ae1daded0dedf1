-- Unique viewers per product and day, exact (the embedded setup; with Redis
-- the `trending` group keeps a HyperLogLog per product and day there
-- instead). `viewer` is a visitor id: a hash of the reader's address and
-- User-Agent salted with the day's salt below, never the address itself.
-- Written by the `trending` group in the transaction that marks the event
-- processed; pruned with the minute windows.
CREATE TABLE product_viewers (
    day        TEXT NOT NULL,
    product_id TEXT NOT NULL,
    viewer     TEXT NOT NULL,
    PRIMARY KEY (day, product_id, viewer)
) STRICT, WITHOUT ROWID;

-- One random salt per UTC day, shared by every API process (the first to
-- need it makes it). Deleted once its day is over, so no one can hash
-- addresses again to link them to a past day's visitor ids.
CREATE TABLE viewer_salts (
    day  TEXT PRIMARY KEY,
    salt TEXT NOT NULL
) STRICT;
