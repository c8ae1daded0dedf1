#!/usr/bin/env python3
"""Reproduces, without orderflow, the test broker's (tansu 0.6) lost partitions
after a member dies and comes back (the stall `crates/orderflow/tests/scaled.rs`
hits now and then).

Two librdkafka consumers (confluent-kafka) in one group, cooperative-sticky,
session 6 s: B runs throughout; A joins, exits without leaving (os._exit, as
SIGKILL would) and restarts. Each prints its assignment after every callback.

    pip install confluent-kafka
    B=127.0.0.1:9092; T=probe-$(date +%s)
    ./tansu-rebalance-probe.py $B $T setup
    ./tansu-rebalance-probe.py $B $T dynamic B 40 close &
    sleep 1; ./tansu-rebalance-probe.py $B $T dynamic A 8 kill
    sleep 1; ./tansu-rebalance-probe.py $B $T dynamic A 25 close

Seen on 2026-12-02 against tansu 0.6.0 (memory engine): after the restart A
held {1, 3} and B {4, 5}: partitions 0 and 2 had no owner until the dead
member's session ran out, and then B was given 0, 1 and 3 while A still held
1 and 3. In one scaled.rs run the group never recovered (order.events p0 of
the sms group unowned for 9+ minutes). With `static` instead of `dynamic`
(group.instance.id, KIP-345) the restarted member was never assigned
anything, so static membership is no way around it on this broker.
"""
# Does tansu honour group.instance.id (KIP-345)? member A (static id "a") and B; A is killed (no leave) and restarted
# with the same id: with static membership the broker hands A's partitions back at once, without waiting for the session timeout.
import sys, time, subprocess, os
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
bs, topic, role = sys.argv[1], sys.argv[2], sys.argv[3]
if role == "setup":
    adm = AdminClient({"bootstrap.servers": bs}); adm.create_topics([NewTopic(topic, 6, 1)])[topic].result(); sys.exit(0)
inst = sys.argv[4]
assigned = set()
def on_assign(c, parts):
    for p in parts: assigned.add(p.partition)
    print(f"{time.strftime('%T')} {inst} assigned +{sorted(p.partition for p in parts)} -> {sorted(assigned)}", flush=True)
def on_revoke(c, parts):
    for p in parts: assigned.discard(p.partition)
    print(f"{time.strftime('%T')} {inst} revoked -{sorted(p.partition for p in parts)} -> {sorted(assigned)}", flush=True)
conf = {"bootstrap.servers": bs, "group.id": "g-"+topic, "partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 25}
if role == "static": conf["group.instance.id"] = inst
c = Consumer(conf); c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
end = time.time() + float(sys.argv[5])
while time.time() < end: c.poll(0.1)
if sys.argv[6] == "kill": os._exit(0)
c.close()
