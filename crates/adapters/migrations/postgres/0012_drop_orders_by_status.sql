-- Issue 10: no query reads this index (the status counts scan `orders`
-- either way), and every order changes its status twice, so it cost two
-- index updates per order for nothing: measured on SQLite, 7% of the bytes
-- written per order (docs/benchmarks.md).
DROP INDEX IF EXISTS orders_by_status;
