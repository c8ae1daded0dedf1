# Measures the test broker's CPU per message: one idempotent producer (batch.num.messages=1, as orderflow's tests
# and scaled runs set it) at RATE msgs/s for SECS s into TOPIC (PARTS partitions), GROUPS consumer groups reading it.
import os, sys, time, threading
from confluent_kafka import Producer, Consumer
from confluent_kafka.admin import AdminClient, NewTopic
port, pid, rate, secs, groups, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
boot = f"127.0.0.1:{port}"; topic = f"probe-{rate}-{groups}-{int(time.time())}"
adm = AdminClient({"bootstrap.servers": boot}); adm.create_topics([NewTopic(topic, parts, 1)])[topic].result()
def cpu(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
got = [0] * groups; stop = False
def consume(i):
    c = Consumer({"bootstrap.servers": boot, "group.id": f"g{i}-{topic}", "auto.offset.reset": "earliest", "fetch.wait.max.ms": 25, "enable.auto.commit": True})
    c.subscribe([topic])
    while not stop:
        for m in c.consume(500, 0.1):
            if m.error() is None: got[i] += 1
    c.close()
ts = [threading.Thread(target=consume, args=(i,)) for i in range(groups)]
for t in ts: t.start()
time.sleep(6)  # joins
p = Producer({"bootstrap.servers": boot, "batch.num.messages": int(os.environ.get("BNM", "1")), "enable.idempotence": True, "linger.ms": 5})
c0 = cpu(pid); t0 = time.time(); n = 0
while time.time() - t0 < secs:
    due = int((time.time() - t0) * rate)
    while n < due:
        p.produce(topic, key=str(n % 1000).encode(), value=b"x" * 300); n += 1
    p.poll(0); time.sleep(0.002)
p.flush(10); time.sleep(2)
c1 = cpu(pid); el = time.time() - t0
stop = True
for t in ts: t.join()
print(f"rate {rate}/s sent {n} consumed {got} over {el:.1f}s: tansu cpu {c1-c0:.2f}s = {100*(c1-c0)/el:.0f}% of a core, {1e6*(c1-c0)/max(n,1):.0f} us per message produced")
