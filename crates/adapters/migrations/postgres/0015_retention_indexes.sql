-- Retention deletes by age in small batches: each batch finds its rows by
-- these instead of scanning the table.
CREATE INDEX processed_events_by_time ON processed_events (processed_at);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at);
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
