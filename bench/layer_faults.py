"""The Redis layer through a Redis crash: two gateway processes, WebSocket clients, group messages.

    .venv/bin/python bench/layer_faults.py                       # 200 clients, 2,000 messages
    .venv/bin/python bench/layer_faults.py --clients 20 --messages 200   # a quick run

Starts its own redis-server (no persistence) and two ``gateway run`` processes sharing it through
the Redis layer, each serving the tests' chat room (tests/testapps/chat.py); connects the clients (half to each process)
to one room; then a sender process (this one, with a layer of its own) makes ``--messages``
group_send calls at ``--rate`` per second. Half-way through, redis-server is killed with SIGKILL
and started again, empty, on the same port ``--down`` seconds later.

Every group_send either returns or raises ``LayerUnavailable``. At the end the script prints,
for the messages sent before the kill and after it: how many returned, how many raised (reported
to the caller), how many reached every client, and how many returned but did not reach every
client: **lost silently**, the number that must be 0. It also prints each gateway's layer drop
counters from /metrics and the layer's log lines about the incident.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"] + [str(ROOT / "bench")]
sys.path.insert(0, str(ROOT))

import urllib.request

import _common as common

LAYER_EVENTS = (
    "layer.redis_unreachable", "layer.redis_reconnected", "layer.memberships_restored", "layer.restore_window",
    "layer.channel_full", "layer.message_expired", "layer.dead_member", "layer.dead_process_removed",
)


class Redis:
    """One redis-server on a fixed port, killed with SIGKILL and started again empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = common.free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        exe = shutil.which("redis-server") or sys.exit("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        sys.exit("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def start_gateway(workdir: Path, index: int, url: str, prefix: str) -> tuple[int, subprocess.Popen[bytes], Path]:
    port = common.free_port()
    conf = workdir / f"gateway{index}.yaml"
    conf.write_text(f"""
logging: {{level: info}}
python_path: ["{ROOT / 'tests'}"]
layer: {{backend: redis, url: "{url}", prefix: {prefix}, capacity: 100000, inbox_limit: 100000}}
adapters:
  http: {{listen: "127.0.0.1:{port}"}}
routes:
  websocket:
    - {{path: "/ws/chat/<room>/", app: "testapps.chat:ChatRoom"}}
""")
    log_path = workdir / f"gateway{index}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([common.PY, "-m", "gateway", "run", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    common.wait_listening(port, proc, f"gateway {index}", log_path.read_text)
    return port, proc, log_path


async def inbox_backlog(url: str, prefix: str) -> dict[str, int]:
    """Elements waiting in each process's inbox in Redis: what a crash right now would lose."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        keys = [k for k in await client.keys(f"{prefix}:q:*") if k.endswith(b"!")]
        return {k.decode().rsplit(":", 1)[-1]: await client.llen(k) for k in keys}
    finally:
        await client.aclose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import websockets

    from gateway.layers.redis import LayerUnavailable, RedisChannelLayer

    common.raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="layer-faults-"))
    redis = Redis(workdir)
    redis.start()
    url, prefix = f"redis://127.0.0.1:{redis.port}/0", "faults" + secrets.token_hex(3)
    gateways = [start_gateway(workdir, i, url, prefix) for i in range(2)]
    received: list[set[int]] = [set() for _ in range(args.clients)]
    duplicates = 0
    connected = asyncio.Semaphore(0)
    last_frame = time.monotonic()

    async def client(i: int) -> None:
        nonlocal duplicates, last_frame
        port = gateways[i % 2][0]
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/lobby/", max_queue=None) as ws:
            connected.release()
            async for frame in ws:
                data = json.loads(frame)
                if data.get("type") == "chat":
                    n = int(data["text"])
                    if n in received[i]:
                        duplicates += 1
                    received[i].add(n)
                    last_frame = time.monotonic()

    clients = [asyncio.ensure_future(client(i)) for i in range(args.clients)]
    for _ in range(args.clients):
        await asyncio.wait_for(connected.acquire(), 60)
    sender = RedisChannelLayer(hosts=[url], prefix=prefix, capacity=100000)
    outcome: dict[int, str] = {}
    errors: dict[str, int] = {}  # why group_send raised
    kill_at = args.messages // 2
    restarted = asyncio.Event()

    async def restart_later() -> None:
        await asyncio.sleep(args.down)
        await asyncio.to_thread(redis.start)
        restarted.set()

    started = time.monotonic()
    restart_task = None
    backlog: dict[str, int] = {}
    for n in range(args.messages):
        if n == kill_at:
            backlog = await inbox_backlog(url, prefix)
            redis.kill()
            restart_task = asyncio.ensure_future(restart_later())
        try:
            await sender.group_send("chat.lobby", {"type": "chat.message", "name": "bench", "text": str(n)})
            outcome[n] = "returned"
        except LayerUnavailable as exc:
            outcome[n] = "raised"
            reason = str(exc).split(" is ")[-1].split(";")[0][:90] if restarted.is_set() else "redis down"
            errors[reason] = errors.get(reason, 0) + 1
        await asyncio.sleep(max(0.0, started + (n + 1) / args.rate - time.monotonic()))
    if restart_task is not None:
        await restart_task
    quiet_since = time.monotonic()
    while time.monotonic() - max(last_frame, quiet_since) < 3 and time.monotonic() - quiet_since < 60:
        await asyncio.sleep(0.2)
    for task in clients:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    await sender.close()

    metrics = []
    for port, _, _ in gateways:
        text = await asyncio.to_thread(lambda p=port: urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=5).read().decode())
        metrics.append([line for line in text.splitlines() if line.startswith("gateway_layer_dropped_total")])
    for _, proc, _ in gateways:
        common.stop(proc)
    redis.kill()
    logs = []
    for _, _, log_path in gateways:
        events: dict[str, int] = {}
        for line in log_path.read_text(errors="replace").splitlines():
            for event in LAYER_EVENTS:
                if event in line:
                    events[event] = events.get(event, 0) + 1
        logs.append(events)

    def phase(numbers: range) -> dict[str, Any]:
        returned = [n for n in numbers if outcome[n] == "returned"]
        everywhere = [n for n in returned if all(n in got for got in received)]
        lost = sorted(set(returned) - set(everywhere))
        return {
            "sent": len(numbers), "returned": len(returned), "raised (reported to the caller)": len(numbers) - len(returned),
            "reached every client": len(everywhere), "lost silently": len(lost),
            "lost silently, clients missing them per gateway": [
                sum(1 for n in lost for i in range(g, args.clients, 2) if n not in received[i]) for g in (0, 1)
            ],
            "lost silently, first and last": lost[:1] + lost[-1:],
        }

    return {
        "clients": args.clients, "messages": args.messages, "redis down (s)": args.down,
        "before the kill": phase(range(kill_at)), "inbox elements in Redis at the kill": backlog, "after the kill": phase(range(kill_at, args.messages)),
        "frames received": sum(len(got) for got in received), "duplicates": duplicates, "group_send errors": errors,
        "gateway metrics": metrics, "gateway layer log lines": logs,
    }


def main() -> None:
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the result
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=150, help="group_send calls per second")
    parser.add_argument("--down", type=float, default=1.0, help="seconds between the kill and the restart")
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
