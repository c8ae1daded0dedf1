-- Issue 13: live channels.
--
-- Every message a live client can be sent (an order moving to a new status,
-- on `orders:{user}`) is a row here, written in the same transaction as the
-- change it describes, at the next position of its channel. A client that
-- reconnects with its last position reads what it missed from this table,
-- so recovery never depends on Redis or on the process it was connected to.
--
-- `live_channels.head` is the channel's last position. Taking the next one
-- is an upsert on that row, which locks it until the transaction ends: the
-- messages of one channel commit in position order, so a reader that sees
-- position n has seen every position below it (SQLite's one writer gives
-- the same).
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
) STRICT;
