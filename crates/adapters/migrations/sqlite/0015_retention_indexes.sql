-- Retention deletes by age in small batches: each batch finds its rows by
-- these instead of scanning the table.
CREATE INDEX processed_events_by_time ON processed_events (processed_at);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at);
-- (SQLite's relay deletes the outbox rows it published: none stay to prune.)
