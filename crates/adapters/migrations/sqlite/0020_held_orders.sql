-- The fraud review queue (`GET /api/v1/admin/orders/held`): held orders,
-- oldest first. Partial: held orders are a handful among millions, so the
-- index stays tiny and the orders' writes rarely touch it (0012 dropped
-- the full index on status for that cost).
CREATE INDEX orders_held ON orders (created_at, id) WHERE status = 'held';
