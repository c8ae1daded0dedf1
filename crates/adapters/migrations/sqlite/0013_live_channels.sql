-- Issue 13: live channels.
--
-- Every message a live client can be sent (an order moving to a new status,
-- on `orders:{user}`) is a row here, written in the same transaction as the
-- change it describes, at the next position of its channel. A client that
-- reconnects with its last position reads what it missed from this table,
-- so recovery never depends on Redis or on the process it was connected to.
--
-- On SQLite the next position is the channel's last + 1, read in the insert
-- itself: the one writer keeps a channel's messages committing in position
-- order. `live_channels` (PostgreSQL's per-channel counter, which gives the
-- same order there) stays empty here; it exists so both schemas have the
-- same tables.
CREATE TABLE live_channels (
    channel TEXT    PRIMARY KEY,
    head    INTEGER NOT NULL CHECK (head > 0)
) STRICT;

CREATE TABLE live_messages (
    channel  TEXT    NOT NULL,
    position INTEGER NOT NULL,
    payload  TEXT    NOT NULL,
    at       INTEGER NOT NULL,
    PRIMARY KEY (channel, position)
) STRICT, WITHOUT ROWID;
