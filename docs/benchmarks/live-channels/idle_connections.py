"""Server memory per idle live connection, measured from outside.

Opens N WebSocket connections (`GET /api/v1/live/ws`) to a running
orderflow, each following its own `orders:{user}` channel (as the admin,
who may follow anyone's), waits until they are all subscribed and idle,
and compares the server's resident memory (VmRSS of its pid) with what it
was after one connection, then measures the server's CPU over
`--settle-secs` of idleness. Prints one table row. A stand-in until
`orderflow bench live` exists; needs `pip install websockets`.

    python3 idle_connections.py --base http://127.0.0.1:8080 --pid PID \
        --email admin@example.com --password … --connections 5000
"""

import argparse
import asyncio
import json
import os
import time
import urllib.request
import uuid

import websockets


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def login(base: str, email: str, password: str) -> str:
    body = json.dumps({"email": email, "password": password, "device": "idle bench"}).encode()
    request = urllib.request.Request(
        f"{base}/api/v1/auth/login",
        data=body,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return json.load(answer)["access_token"]


async def open_one(url: str, token: str):
    socket = await websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        ping_interval=None,
        max_queue=None,
    )
    channel = f"orders:{uuid.uuid4()}"
    await socket.send(json.dumps({"type": "subscribe", "channel": channel}))
    frame = json.loads(await socket.recv())
    if frame.get("type") != "subscribed":
        raise RuntimeError(f"expected subscribed, got {frame}")
    return socket


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--settle-secs", type=float, default=5.0)
    args = parser.parse_args()

    token = login(args.base, args.email, args.password)
    url = args.base.replace("http://", "ws://", 1) + "/api/v1/live/ws"
    sockets = [await open_one(url, token)]
    await asyncio.sleep(args.settle_secs)
    before = rss_kib(args.pid)
    started = time.monotonic()
    while len(sockets) < args.connections + 1:
        batch = min(args.batch, args.connections + 1 - len(sockets))
        sockets += await asyncio.gather(*(open_one(url, token) for _ in range(batch)))
        print(f"\r{len(sockets) - 1}/{args.connections} connections", end="", flush=True)
    opened = time.monotonic() - started
    await asyncio.sleep(args.settle_secs)
    cpu_before, idle_started = cpu_seconds(args.pid), time.monotonic()
    await asyncio.sleep(args.settle_secs)
    idle_cpu = (cpu_seconds(args.pid) - cpu_before) / (time.monotonic() - idle_started)
    after = rss_kib(args.pid)
    print()
    per_connection = (after - before) / args.connections
    print(
        "| connections | open time | server RSS before | after | per idle connection "
        "| server CPU while idle |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {args.connections:,} | {opened:.1f} s | {before / 1024:.1f} MiB "
        f"| {after / 1024:.1f} MiB | {per_connection:.1f} KiB | {idle_cpu:.0%} of a core |"
    )
    await asyncio.gather(*(socket.close() for socket in sockets))


if __name__ == "__main__":
    asyncio.run(main())
