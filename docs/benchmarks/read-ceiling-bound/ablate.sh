#!/bin/bash
# ablate.sh BIN LABEL [NAME=VALUE...]: a v2 server (serve --demo) started with the extra settings, and a bare listener;
# wrk -t1 -c32 against its product read, its /healthz and the bare listener, two rounds, server CPU per request from /proc.
BIN=$1; LABEL=$2; shift 2
D=$(mktemp -d)
env ORDERFLOW_DATA_DIR=$D ORDERFLOW_LISTEN=127.0.0.1:18421 ORDERFLOW_CACHE=on ORDERFLOW_SIDE_EFFECTS=events ORDERFLOW_RATE_LIMITS="catalog=ip:bucket:10000000/s,burst=20000000" "$@" setsid $BIN serve --demo > $D/log 2>&1 &
SP=$!
for i in $(seq 50); do curl -sf localhost:18421/healthz >/dev/null && break; sleep 0.2; done
ID=$(curl -s 'localhost:18421/api/v1/products?limit=1' | python3 -c 'import json,sys; d=json.load(sys.stdin); print((d.get("items") or d)[0]["id"])')
curl -s localhost:18421/api/v1/products/$ID > $D/body.json
setsid $BIN bench --bare-listener 127.0.0.1:18422 --bare-body $D/body.json > /dev/null 2>&1 &
BP=$!
sleep 1
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
TCK=$(getconf CLK_TCK)
echo "== $LABEL ($*)"
for round in 1 2; do
 for t in product healthz bare; do
  case $t in product) U=http://127.0.0.1:18421/api/v1/products/$ID; P=$SP;; healthz) U=http://127.0.0.1:18421/healthz; P=$SP;; bare) U=http://127.0.0.1:18422/; P=$BP;; esac
  wrk -t1 -c32 -d2s $U > /dev/null
  C0=$(cpu $P)
  R=$(wrk -t1 -c32 -d5s $U | awk '/^Requests\/sec/ {print $2}')
  C1=$(cpu $P)
  awk -v t=$t -v r=$R -v c0=$C0 -v c1=$C1 -v tck=$TCK 'BEGIN {printf "%-8s %10.0f req/s  %5.2f µs CPU/req\n", t, r, (c1-c0)/tck*1e6/(r*5)}'
 done
done
kill $SP $BP; wait $SP $BP 2>/dev/null; rm -rf $D
