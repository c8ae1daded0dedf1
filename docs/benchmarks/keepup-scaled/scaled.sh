#!/bin/bash
# The scaled stack for a sustained measurement: PostgreSQL, Redis, tansu (memory), one api, one relay,
# WORKERS members of every group. $1 bin, $2 label, $3 rates, $4 workers per group.
# Output under $OUT (default /tmp/s20); cpu.sh, hops.sql, pgss.sql and pgss2.sql are this script's neighbours.
# PGEXTRA: more postgres settings (-c pg_stat_statements.track_planning=on); KCONF: ORDERFLOW_KAFKA_CONFIG.
# The fraud thresholds are raised as `orderflow bench` raises them for the servers it starts:
# a followed shopper orders more than five times in five minutes, and a held order is never confirmed.
BIN=$1; L=$2; RATES=$3; W=${4:-2}
OUT=${OUT:-/tmp/s20}; HERE=$(cd "$(dirname "$0")" && pwd)
B=$OUT/sc-$L; rm -rf $B; mkdir -p $B/pg; chown postgres:postgres $B/pg
PGP=55432; RP=56379; KP=59092; API=18300
su postgres -c "initdb -D $B/pg --auth=trust --username=orderflow --no-sync" > $B/initdb.log 2>&1
su postgres -c "postgres -D $B/pg -p $PGP -k $B/pg -c listen_addresses=127.0.0.1 -c max_connections=300 -c log_min_messages=warning -c shared_preload_libraries=pg_stat_statements ${PGEXTRA:-}" > $B/pg.log 2>&1 &
redis-server --port $RP --bind 127.0.0.1 --save '' --appendonly no > $B/redis.log 2>&1 & RPID=$!
tansu broker --listener-url tcp://127.0.0.1:$KP --advertised-listener-url tcp://127.0.0.1:$KP --storage-engine memory://tansu/ --cluster-id orderflow-bench > $B/tansu.log 2>&1 & TPID=$!
for i in $(seq 1 50); do pg_isready -h 127.0.0.1 -p $PGP >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1
su postgres -c "createdb -h 127.0.0.1 -p $PGP -U orderflow orderflow"
export ORDERFLOW_DATABASE_URL=postgres://orderflow@127.0.0.1:$PGP/orderflow ORDERFLOW_KAFKA_BROKERS=127.0.0.1:$KP ORDERFLOW_REDIS_URL=redis://127.0.0.1:$RP/0 \
  ORDERFLOW_DATA_DIR=$B ORDERFLOW_AUTH_RATE_PER_SEC=0 ORDERFLOW_RATE_PER_SEC=0 ORDERFLOW_RATE_LIMITS=off ORDERFLOW_FRAUD_MAX_ORDERS=1000000 ORDERFLOW_FRAUD_MAX_TOTAL_CENTS=1000000000000 \
  ORDERFLOW_ADMIN_EMAIL=admin@example.com ORDERFLOW_ADMIN_PASSWORD=admin-password-bench-2026 RUST_LOG=${RLOG:-warn} ORDERFLOW_KAFKA_CONFIG="${KCONF:-batch.num.messages=1}"
$BIN migrate > $B/migrate.log 2>&1 || { echo migrate failed; cat $B/migrate.log; }
$BIN seed > $B/seed.log 2>&1 || { echo seed failed; cat $B/seed.log; }
PIDS=""
ORDERFLOW_LISTEN=127.0.0.1:$API $BIN api > $B/api.log 2>&1 & PIDS="$PIDS $!"
ORDERFLOW_METRICS_LISTEN=127.0.0.1:19400 $BIN relay > $B/relay.log 2>&1 & PIDS="$PIDS $!"
for r in $(seq 2 ${RELAYS:-1}); do ORDERFLOW_METRICS_LISTEN=127.0.0.1:1941$r $BIN relay > $B/relay$r.log 2>&1 & PIDS="$PIDS $!"; done
for w in $(seq 1 $W); do ORDERFLOW_METRICS_LISTEN=127.0.0.1:1940$w $BIN worker > $B/worker$w.log 2>&1 & PIDS="$PIDS $!"; done
for i in $(seq 1 100); do curl -sf http://127.0.0.1:$API/readyz >/dev/null && break; sleep 0.2; done
psql -h 127.0.0.1 -p $PGP -U orderflow orderflow -c "UPDATE products SET stock = 10000000" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" > /dev/null
$HERE/cpu.sh > $B/cpu0.txt; timeout 900 $BIN bench --sustained --target http://127.0.0.1:$API --shoppers ${SHOPPERS:-1500} --sustained-rates $RATES --sustained-step-secs 8 --out $OUT/$L > $OUT/$L.txt 2>&1
$HERE/cpu.sh > $B/cpu1.txt; join $B/cpu0.txt $B/cpu1.txt | awk '{printf "%s %.1f s\n", $1, $3-$2}' > $OUT/$L.cpu; cat $OUT/$L.cpu
for p in 19400 19401 19402; do curl -s http://127.0.0.1:$p/metrics > $B/metrics-$p.txt; done; curl -s http://127.0.0.1:$API/metrics > $B/metrics-api.txt
psql -h 127.0.0.1 -p $PGP -U orderflow orderflow -f $HERE/hops.sql > $OUT/$L.hops 2>&1; psql -h 127.0.0.1 -p $PGP -U orderflow orderflow -f $HERE/pgss.sql > $OUT/$L.pgss 2>&1; psql -h 127.0.0.1 -p $PGP -U orderflow orderflow -f $HERE/pgss2.sql > $OUT/$L.pgss2 2>&1
kill $PIDS; wait $PIDS 2>/dev/null
su postgres -c "pg_ctl -D $B/pg stop -m fast" > /dev/null 2>&1
kill $RPID $TPID; wait $RPID $TPID 2>/dev/null
grep -A12 "┌" $OUT/$L.txt | head -14
