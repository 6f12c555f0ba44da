"""The Redis layer when Redis goes away: kill and restart a real redis-server mid-traffic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

pytest.importorskip("redis")

from gateway.layers.redis import LayerUnavailable, RedisChannelLayer  # noqa: E402
from test_layer_redis_helpers import RedisServer, free_port, own_redis, prefix  # noqa: E402,F401

pytestmark = pytest.mark.timeout(40)


async def wait_for(predicate: Any, timeout: float = 8.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(step)


async def test_restart_mid_traffic(own_redis: RedisServer, prefix: str) -> None:
    from gateway.health import Health

    health: list[tuple[str, str]] = []
    gateway_health = Health()  # how the core wires the hook: one "layer" component

    def on_health(status: str, detail: str) -> None:
        health.append((status, detail))
        gateway_health.set("layer", status, detail)  # type: ignore[arg-type]

    a = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, on_health=on_health)
    b = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)
    received: list[int] = []
    sent: list[int] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def consume() -> None:
        while True:
            received.append((await a.receive("work"))["n"])

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await b.send("work", {"type": "job", "n": n})
                sent.append(n)
            except LayerUnavailable as exc:
                failures.append(exc)
            await asyncio.sleep(0.005)

    mine = await a.new_channel()
    await a.group_add("room", mine)
    consumer = asyncio.ensure_future(consume())
    producer = asyncio.ensure_future(produce())
    try:
        await wait_for(lambda: len(received) >= 20)
        with capture_logs() as logs:
            own_redis.stop()
            await wait_for(lambda: len(failures) >= 3 and a.health[0] == "down")
            assert health and health[-1][0] == "down" and f"127.0.0.1:{own_redis.port}" in health[-1][1]
            assert gateway_health.as_dict()["status"] == "down"  # not ready: the health endpoint answers 503
            assert "unreachable" in str(failures[0]) and f"127.0.0.1:{own_redis.port}" in str(failures[0])
            seen_before = len(received)
            own_redis.start()  # empty: no persistence
            await wait_for(lambda: len(received) >= seen_before + 20)
            await wait_for(lambda: a.health[0] == "ok")
        assert health[-1] == ("ok", "") and gateway_health.status == "ok"
        events = [e["event"] for e in logs]
        assert "layer.redis_unreachable" in events and "layer.redis_reconnected" in events
        assert "layer.memberships_restored" in events
        # the membership added before the restart was re-added by its process
        await b.group_send("room", {"type": "after.restart"})
        assert await asyncio.wait_for(a.receive(mine), 3) == {"type": "after.restart"}
    finally:
        stop.set()
        await producer
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await a.close()
        await b.close()
    # at most once: no message twice, nothing that was not sent
    assert len(received) == len(set(received))
    assert set(received) <= set(sent)


async def test_unreachable_from_the_start(prefix: str) -> None:
    port = free_port()
    health: list[tuple[str, str]] = []
    layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"], prefix=prefix, on_health=lambda s, d: health.append((s, d)))
    try:
        started = time.monotonic()
        with pytest.raises(LayerUnavailable, match=f"127.0.0.1:{port}"):
            await layer.send("x", {"type": "x"})
        with pytest.raises(LayerUnavailable):
            await layer.group_send("g", {"type": "x"})
        with pytest.raises(LayerUnavailable):
            await layer.group_add("g", "x")
        assert time.monotonic() - started < 3
        assert layer.health[0] == "down" and health[0][0] == "down"
        # a receiver just waits (its loop retries with backoff) instead of failing
        waiting = asyncio.ensure_future(layer.receive("x"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        server = RedisServer(port).start()
        try:
            other = RedisChannelLayer(hosts=[server.url], prefix=prefix)
            await other.send("x", {"type": "late"})
            assert await asyncio.wait_for(waiting, 6) == {"type": "late"}
            await other.close()
        finally:
            server.stop()
    finally:
        await layer.close()


async def test_redis_without_blmpop_falls_back_to_blpop(prefix: str) -> None:
    """Redis before 7.0 has no BLMPOP: the receive loops switch to BLPOP (+ LPOP count) once."""
    server = RedisServer(None, "--rename-command", "BLMPOP", "BLMPOP_DISABLED_FOR_TEST").start()
    a = RedisChannelLayer(hosts=[server.url], prefix=prefix)
    b = RedisChannelLayer(hosts=[server.url], prefix=prefix)
    try:
        with capture_logs() as logs:
            channel = await b.new_channel()
            for n in range(5):
                await a.send(channel, {"type": "x", "n": n})
            await a.send("normal", {"type": "y"})
            got = [(await asyncio.wait_for(b.receive(channel), 5))["n"] for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]
            assert await asyncio.wait_for(b.receive("normal"), 5) == {"type": "y"}
        assert "layer.redis_without_blmpop" in [e["event"] for e in logs]
    finally:
        await a.close()
        await b.close()
        server.stop()
