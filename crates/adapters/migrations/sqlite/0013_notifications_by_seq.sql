-- The live channel notifications:{user} reads a shopper's notifications
-- after a position (seq), in seq order.
CREATE INDEX notifications_by_user_seq ON notifications (user_id, seq);
