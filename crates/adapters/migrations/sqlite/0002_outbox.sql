-- The outbox: events appended by units of work when the event log is Kafka
-- (EventDestination::Outbox). A row lives here only until a relay has had it
-- acknowledged by the broker; then it is deleted (Kafka is the record from
-- there on), so the table holds exactly the backlog.
CREATE TABLE outbox (
    -- Append order; relays publish in this order, so one key's events reach
    -- its partition in the order their transactions committed.
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    -- The CloudEvents JSON of the envelope.
    payload     TEXT    NOT NULL,
    -- Unix microseconds; for the backlog's oldest-row age.
    created_at  INTEGER NOT NULL
) STRICT;
