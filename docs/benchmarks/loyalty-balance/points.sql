-- psql -f points.sql against a scratch PostgreSQL 15 (initdb, default settings); the table and index are 0001_init.sql's.
CREATE TABLE loyalty_points (user_id UUID PRIMARY KEY, points BIGINT NOT NULL);
CREATE INDEX loyalty_points_by_points ON loyalty_points (points DESC, user_id);
-- 1,000,000 members, points 1..100,000; one known member far down the ranks.
INSERT INTO loyalty_points SELECT md5(i::text)::uuid, 1 + (i::bigint * 7919) % 100000 FROM generate_series(1, 1000000) i;
INSERT INTO loyalty_points VALUES ('00000000-0000-0000-0000-000000000001', 10);
VACUUM ANALYZE loyalty_points;
\timing on
PREPARE standing(uuid) AS SELECT p.points, (SELECT COUNT(*) FROM loyalty_points o WHERE o.points > p.points) AS ahead FROM loyalty_points p WHERE p.user_id = $1;
PREPARE balance(uuid) AS SELECT points FROM loyalty_points WHERE user_id = $1;
EXPLAIN (ANALYZE, BUFFERS) EXECUTE standing('00000000-0000-0000-0000-000000000001');
EXPLAIN (ANALYZE, BUFFERS) EXECUTE balance('00000000-0000-0000-0000-000000000001');
EXPLAIN (ANALYZE, BUFFERS) EXECUTE standing('00000000-0000-0000-0000-000000000001');
EXPLAIN (ANALYZE, BUFFERS) EXECUTE balance('00000000-0000-0000-0000-000000000001');
