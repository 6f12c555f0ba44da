"""Channel layer bench: channels_redis (RedisChannelLayer, RedisPubSubChannelLayer) vs ours, one run.

    .venv/bin/python bench/layer.py            # needs redis-server on PATH and the dev extra
    .venv/bin/python bench/layer.py --quick    # smaller counts, for a smoke run

Starts its own redis-server on a free port of 127.0.0.1 (no persistence) and measures, for each
layer against that same server:

* send+receive msgs/s on one channel (a process-specific channel, sender and receiver being two
  layer instances, so every message goes through Redis);
* the same on a normal channel (``work``), where the PubSub layer has no queue semantics (n/a);
* group_send calls/s to a 1,000-member group whose members all live in one process, and the
  time until every member received every message (members are draining all along);
* the same with the 1,000 members spread over 4 processes (subprocesses of this script);
* latency of one group_send until all 1,000 members have it;
* group_send calls/s, sender and Redis only (member processes simulated, not draining), with the
  1,000 members in one process, and with each in its own process (1,000 separate keys);
* memory per 10,000 group memberships: Redis ``used_memory`` growth, and Python heap growth of
  the process holding them (tracemalloc);
* messages lost (delivered count vs expected; capacity is set above the load, so any loss is a bug).

Ratios are printed against channels_redis's RedisChannelLayer.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"] + [str(ROOT / "bench")]
sys.path.insert(0, str(ROOT))

import _common as common

CAPACITY = 1_000_000
KINDS = ("channels_redis", "channels_redis_pubsub", "gateway")


def make_layer(kind: str, url: str, prefix: str) -> Any:
    if kind == "channels_redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[url], prefix=prefix, capacity=CAPACITY, expiry=600)
    if kind == "channels_redis_pubsub":
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=[url], prefix=prefix)
    if kind == "gateway":
        from gateway.layers.redis import RedisChannelLayer as Ours

        return Ours(hosts=[url], prefix=prefix, capacity=CAPACITY, expiry=600, inbox_limit=CAPACITY)
    raise ValueError(kind)


async def close_layer(layer: Any) -> None:
    try:
        await layer.flush()
    except Exception:  # noqa: BLE001
        pass
    close = getattr(layer, "close", None) or getattr(layer, "close_pools", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001
            pass


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port = common.free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


# -- measurements ---------------------------------------------------------------------------------


async def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


async def send_receive(kind: str, url: str, n: int, normal: bool) -> dict[str, Any]:
    if normal and kind == "channels_redis_pubsub":
        return {"rate": None}
    prefix = "b" + secrets.token_hex(3)
    sender, receiver = make_layer(kind, url, prefix), make_layer(kind, url, prefix)
    channel = "work" if normal else await receiver.new_channel()
    got = {"n": 0, "warm": 0}

    async def consume() -> None:
        while True:
            message = await receiver.receive(channel)
            got["warm" if message.get("warm") else "n"] += 1

    consumer = asyncio.ensure_future(consume())
    try:
        while not got["warm"]:  # PubSub drops what is sent before the subscription lands
            await sender.send(channel, {"type": "warm", "warm": True})
            await wait_until(lambda: got["warm"] > 0, 0.2)
        started = time.perf_counter()
        for i in range(n):
            await sender.send(channel, {"type": "bench.message", "i": i, "text": "hello"})
        await wait_until(lambda: got["n"] >= n, 60)
        elapsed = time.perf_counter() - started
        return {"rate": n / elapsed, "lost": n - got["n"]}
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await close_layer(sender)
        await close_layer(receiver)


class Members:
    """``count`` member channels in one layer instance, each drained by its own receiving task."""

    def __init__(self, layer: Any, group: str, count: int) -> None:
        self.layer, self.group, self.count = layer, group, count
        self.channels: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.received = 0
        self.warm: set[str] = set()

    async def start(self) -> None:
        for _ in range(self.count):
            channel = await self.layer.new_channel()
            self.channels.append(channel)
            await self.layer.group_add(self.group, channel)
            self.tasks.append(asyncio.ensure_future(self._drain(channel)))

    async def _drain(self, channel: str) -> None:
        while True:
            message = await self.layer.receive(channel)
            if message.get("warm"):
                self.warm.add(channel)
            else:
                self.received += 1

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def warm_up(sender: Any, group: str, ready: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("members never became ready")
        await sender.group_send(group, {"type": "warm", "warm": True})
        await wait_until(ready, 0.3)


async def group_one_process(kind: str, url: str, members: int, sends: int) -> dict[str, Any]:
    prefix = "b" + secrets.token_hex(3)
    sender, holder = make_layer(kind, url, prefix), make_layer(kind, url, prefix)
    group = "bench"
    m = Members(holder, group, members)
    await m.start()
    try:
        await warm_up(sender, group, lambda: len(m.warm) == members)
        started = time.perf_counter()
        await sender.group_send(group, {"type": "bench.one"})
        await wait_until(lambda: m.received >= members, 60)
        latency = time.perf_counter() - started
        m.received = 0
        started = time.perf_counter()
        for i in range(sends):
            await sender.group_send(group, {"type": "bench.message", "i": i})
        send_time = time.perf_counter() - started
        await wait_until(lambda: m.received >= members * sends, 120)
        all_time = time.perf_counter() - started
        return {
            "calls": sends / send_time, "all_received_s": all_time, "latency_ms": latency * 1000,
            "lost": members * sends - m.received,
        }
    finally:
        await m.stop()
        await close_layer(sender)
        await close_layer(holder)


async def group_four_processes(kind: str, url: str, members: int, sends: int, processes: int = 4) -> dict[str, Any]:
    prefix = "b" + secrets.token_hex(3)
    sender = make_layer(kind, url, prefix)
    per = members // processes
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--member", kind, url, prefix, str(per), str(sends),
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE, cwd=str(ROOT),
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            assert json.loads(await p.stdout.readline())["ready"]  # type: ignore[union-attr]
        warm_lines = [asyncio.ensure_future(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        await warm_up(sender, "bench", lambda: all(t.done() for t in warm_lines), timeout=30)
        done_lines = [asyncio.ensure_future(p.stdout.readline()) for p in procs]  # type: ignore[union-attr]
        started_wall = time.time()
        started = time.perf_counter()
        for i in range(sends):
            await sender.group_send("bench", {"type": "bench.message", "i": i})
        send_time = time.perf_counter() - started
        results = [json.loads(await asyncio.wait_for(t, 180)) for t in done_lines]
        return {
            "calls": sends / send_time,
            "all_received_s": max(r["at"] for r in results) - started_wall,
            "lost": per * processes * sends - sum(r["received"] for r in results),
        }
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()
        await close_layer(sender)


async def member_process(kind: str, url: str, prefix: str, count: int, sends: int) -> None:
    layer = make_layer(kind, url, prefix)
    m = Members(layer, "bench", count)
    await m.start()
    print(json.dumps({"ready": True}), flush=True)
    await wait_until(lambda: len(m.warm) == count, 60)
    print(json.dumps({"warm": True}), flush=True)
    await wait_until(lambda: m.received >= count * sends, 180)
    print(json.dumps({"at": time.time(), "received": m.received}), flush=True)
    await m.stop()


async def group_sender_only(kind: str, url: str, members: int, sends: int, processes: int) -> dict[str, Any]:
    """group_send calls/s with the members spread over ``processes`` processes that do not drain.

    The member processes are simulated by channel names with ``processes`` different process
    ids, so this measures the sender and Redis only (1,000 processes: 1,000 separate keys).
    """
    if kind == "channels_redis_pubsub":
        return {"calls": None}
    prefix = "b" + secrets.token_hex(3)
    sender = make_layer(kind, url, prefix)
    width = 32 if kind == "channels_redis" else 12
    try:
        ids = [secrets.token_hex(width // 2) for _ in range(processes)]
        for i in range(members):
            await sender.group_add("bench", f"specific.{ids[i % processes]}!{secrets.token_hex(8)}")
        # One call before the clock starts. Ours, in a process without channels, waits there
        # (restore_timeout) for a process with channels to claim the fresh Redis; the simulated
        # member processes cannot, so it then claims it itself.
        await sender.group_send("bench", {"type": "bench.warmup"})
        started = time.perf_counter()
        for i in range(sends):
            await sender.group_send("bench", {"type": "bench.message", "i": i})
        return {"calls": sends / (time.perf_counter() - started)}
    finally:
        await close_layer(sender)


async def memberships_memory(kind: str, url: str, count: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    prefix = "b" + secrets.token_hex(3)
    layer = make_layer(kind, url, prefix)
    try:
        channels = [await layer.new_channel() for _ in range(count)]
        gc.collect()
        before = int((await client.info("memory"))["used_memory"])
        tracemalloc.start()
        heap_before = tracemalloc.get_traced_memory()[0]
        for channel in channels:
            await layer.group_add("bench", channel)
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - heap_before
        tracemalloc.stop()
        after = int((await client.info("memory"))["used_memory"])
        return {"redis_bytes": (after - before) / count, "python_bytes": heap / count}
    finally:
        await close_layer(layer)
        await client.aclose()


# -- report -----------------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.0f}{unit}" if value >= 100 else f"{value:,.2f}{unit}"
    return f"{value}{unit}"


def ratio(ours: Any, theirs: Any, lower_is_better: bool = False) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{(theirs / ours) if lower_is_better else (ours / theirs):.1f}x"


async def main(args: argparse.Namespace) -> None:
    proc, url = start_redis()
    n = 2000 if args.quick else 10000
    sends = 50 if args.quick else 200
    members = 1000
    results: dict[str, dict[str, Any]] = {k: {} for k in args.layers}
    try:
        for kind in args.layers:
            print(f"... {kind}", file=sys.stderr, flush=True)
            r = results[kind]
            r["specific"] = await send_receive(kind, url, n, normal=False)
            r["normal"] = await send_receive(kind, url, n, normal=True)
            r["group1"] = await group_one_process(kind, url, members, sends)
            r["group4"] = await group_four_processes(kind, url, members, sends)
            r["sender1"] = await group_sender_only(kind, url, members, sends, 1)
            r["separate"] = await group_sender_only(kind, url, members, max(sends // 4, 20), members)
            r["memory"] = await memberships_memory(kind, url, 10000)
    finally:
        proc.kill()
        proc.wait()

    rows = [
        ("send+receive msgs/s, process-specific channel", lambda r: r["specific"]["rate"], False, ""),
        ("send+receive msgs/s, normal channel", lambda r: r["normal"]["rate"], False, ""),
        (f"group_send calls/s, {members} members in 1 process", lambda r: r["group1"]["calls"], False, ""),
        (f"  time until all {members}x{sends} received (s)", lambda r: r["group1"]["all_received_s"], True, ""),
        ("  one group_send until all members have it (ms)", lambda r: r["group1"]["latency_ms"], True, ""),
        (f"group_send calls/s, {members} members over 4 processes", lambda r: r["group4"]["calls"], False, ""),
        (f"  time until all {members}x{sends} received (s)", lambda r: r["group4"]["all_received_s"], True, ""),
        (f"group_send calls/s, {members} members in 1 process (sender only)", lambda r: r["sender1"]["calls"], False, ""),
        (f"group_send calls/s, {members} members in {members} processes (sender only)", lambda r: r["separate"]["calls"], False, ""),
        ("Redis bytes per membership (10,000)", lambda r: r["memory"]["redis_bytes"], True, ""),
        ("Python heap bytes per membership (10,000)", lambda r: r["memory"]["python_bytes"], True, ""),
        ("messages lost", lambda r: sum(r[k].get("lost", 0) or 0 for k in ("specific", "normal", "group1", "group4")), True, ""),
    ]
    kinds = list(args.layers)
    header = "| measure | " + " | ".join(kinds) + " | gateway / channels_redis |"
    print(header)
    print("|" + " --- |" * (len(kinds) + 2))
    for label, get, lower, unit in rows:
        values = {k: get(results[k]) for k in kinds}
        cells = " | ".join(fmt(values[k], unit) for k in kinds)
        r = ratio(values.get("gateway"), values.get("channels_redis"), lower) if "messages lost" not in label else "-"
        print(f"| {label} | {cells} | {r} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--member":
        kind, url, prefix, count, sends = sys.argv[2:7]
        asyncio.run(member_process(kind, url, prefix, int(count), int(sends)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--layers", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--json", help="also write raw figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
