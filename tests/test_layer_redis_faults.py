"""The Redis layer when Redis goes away: kill and restart a real redis-server mid-traffic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs
from test_layer_redis_helpers import RedisServer, free_port

from gateway.layers.redis import LayerUnavailable, RedisChannelLayer

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


# -- connections opened before a restart ---------------------------------------------------------


async def restarted(server: RedisServer, *layers: RedisChannelLayer) -> None:
    """kill -9 the server, start it again empty on the same port, wait until ``layers`` are ready."""
    server.stop()
    server.start()
    await wait_for(lambda: all(layer.health == ("ok", "") for layer in layers) and all(
        layer._down == {} and layer._restoring == {} for layer in layers), timeout=15)


async def test_connections_opened_before_a_restart_work_after_it(own_redis: RedisServer, prefix: str) -> None:
    """Every pooled connection is dead after a restart; none may make a call fail once Redis is back."""
    member = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)
    sender = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)  # no channels: no receive loop notices the restart
    try:
        channels = [await member.new_channel() for _ in range(30)]
        await asyncio.gather(*(member.group_add("room", c) for c in channels))
        await asyncio.gather(*(sender.group_add("other", c) for c in channels))  # the sender's pool: several connections
        await sender.send("work", {"type": "before"})
        await sender.group_send("room", {"type": "before"})
        await asyncio.gather(*(member.receive(c) for c in channels))
        await restarted(own_redis, member)
        for layer in (member, sender):
            results = await asyncio.gather(
                *(layer.group_add("lobby", c) for c in channels), *(layer.group_discard("room", c) for c in channels[:10]),
                return_exceptions=True,
            )
            assert [r for r in results if r is not None] == []
        assert [r for r in await asyncio.gather(*(sender.send("work", {"type": "after", "n": n}) for n in range(10)),
                                                return_exceptions=True) if r is not None] == []
        await sender.group_send("lobby", {"type": "after"})
        got = await asyncio.wait_for(asyncio.gather(*(member.receive(c) for c in channels)), 5)
        assert got == [{"type": "after"}] * 30
        assert sorted([(await member.receive("work"))["n"] for _ in range(10)]) == list(range(10))
    finally:
        await member.close()
        await sender.close()


# -- the window between Redis coming back empty and the restore ------------------------------------


async def test_group_send_after_a_restart_reaches_every_member_or_fails(own_redis: RedisServer, prefix: str) -> None:
    member = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)
    sender = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)
    try:
        channels = [await member.new_channel() for _ in range(5)]
        for c in channels:
            await member.group_add("room", c)
        await sender.group_send("room", {"type": "m", "n": -1})
        for c in channels:
            assert (await asyncio.wait_for(member.receive(c), 3))["n"] == -1
        with capture_logs() as logs:
            own_redis.stop()
            own_redis.start()  # empty; the member's receive loops are still backing off
            returned, failed = [], []
            for n in range(60):
                try:
                    await sender.group_send("room", {"type": "m", "n": n})
                    returned.append(n)
                except LayerUnavailable:
                    failed.append(n)
                await asyncio.sleep(0.01)
            got = {c: [] for c in channels}
            for c in channels:
                while len(got[c]) < len(returned):
                    got[c].append((await asyncio.wait_for(member.receive(c), 5))["n"])
        assert returned, "nothing got through after the restore"
        for c in channels:
            assert got[c] == returned  # nothing that returned normally was lost, nothing twice
        assert "layer.memberships_restored" in [e["event"] for e in logs]
        assert sender.drops["restore_window"] == len(failed)
    finally:
        await member.close()
        await sender.close()


STOPPABLE_MEMBER = """
    import asyncio, json, sys
    from gateway.layers.redis import RedisChannelLayer

    async def main(url, prefix, dead_after):
        layer = RedisChannelLayer(hosts=[url], prefix=prefix, dead_after=float(dead_after))
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        while not layer._peers.get(0) and not layer._epochs:  # its keeper has met Redis
            await asyncio.sleep(0.01)
        print(json.dumps({"ready": channel, "inbox": layer.non_local_name(channel)}), flush=True)
        while True:
            message = await layer.receive(channel)
            print(json.dumps({"got": message["n"]}), flush=True)

    asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_process_that_cannot_restore_holds_group_send_for_restore_timeout(
    tmp_path: Any, own_redis: RedisServer, prefix: str
) -> None:
    """A member frozen (SIGSTOP) across the restart cannot re-add its memberships: group_send
    waits restore_timeout, then fails, counted; once the window closes it goes through again."""
    import signal

    from test_layer_redis_helpers import finish, read_line, run_script

    frozen = run_script(tmp_path, "member.py", STOPPABLE_MEMBER, own_redis.url, prefix, "30")
    member = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, restore_timeout=2)  # it marks the restore: 2 s
    sender = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, restore_timeout=0.3)  # it waits 0.3 s
    try:
        await read_line(frozen)
        mine = await member.new_channel()
        await member.group_add("room", mine)
        await wait_for(lambda: bool(member._peers.get(0)))  # the member has seen the other process alive
        await sender.group_send("room", {"type": "m", "n": 0})
        assert (await read_line(frozen))["got"] == 0
        assert (await asyncio.wait_for(member.receive(mine), 3))["n"] == 0
        frozen.send_signal(signal.SIGSTOP)
        with capture_logs() as logs:
            own_redis.stop()
            own_redis.start()
            await wait_for(lambda: "still re-adding" in member.health[1], timeout=10)  # the member has restored, the other not
            with pytest.raises(LayerUnavailable, match="restore"):
                await sender.group_send("room", {"type": "m", "n": 1})
            assert sender.drops["restore_window"] == 1
            await wait_for(lambda: member._restoring == {}, timeout=10)  # the restoring mark expired
            await sender.group_send("room", {"type": "m", "n": 2})
            assert (await asyncio.wait_for(member.receive(mine), 3))["n"] == 2
        assert [e["event"] for e in logs].count("layer.restore_window") == 1
    finally:
        frozen.send_signal(signal.SIGCONT)
        finish(frozen)
        await member.close()
        await sender.close()


# -- a process killed with SIGKILL ---------------------------------------------------------------------


async def test_a_killed_process_is_removed_within_dead_after(tmp_path: Any, own_redis: RedisServer, prefix: str) -> None:
    import redis.asyncio as aioredis
    from test_layer_redis_helpers import finish, read_line, run_script

    doomed = run_script(tmp_path, "member.py", STOPPABLE_MEMBER, own_redis.url, prefix, "2")
    live = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, dead_after=2, inbox_limit=5)
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        dead_inbox = (await read_line(doomed))["inbox"]
        mine = await live.new_channel()
        await live.group_add("room", mine)
        await live.group_send("room", {"type": "m", "n": 0})
        assert (await read_line(doomed))["got"] == 0
        await live.receive(mine)
        finish(doomed)  # SIGKILL, reaped, its pipes closed
        with capture_logs() as logs:
            for n in range(1, 21):  # its inbox fills: 5 queued, the rest refused as full, one warning
                await live.group_send("room", {"type": "m", "n": n})
                assert (await live.receive(mine))["n"] == n
            assert live.drops["full"] == 15
            await wait_for(lambda: "layer.dead_process_removed" in [e["event"] for e in logs], timeout=15)
            for n in range(21, 26):  # after removal: no member there any more, nothing refused
                await live.group_send("room", {"type": "m", "n": n})
                assert (await live.receive(mine))["n"] == n
            await asyncio.sleep(1)  # more heartbeats: still removed once
        removed = [e for e in logs if e["event"] == "layer.dead_process_removed"]
        assert len(removed) == 1 and removed[0]["inbox"] == dead_inbox and removed[0]["memberships"] == 1
        assert live.drops["dead_member"] == removed[0]["dropped"] == 5  # what sat in its inbox, counted
        assert live.drops["full"] == 15
        full = [e for e in logs if e["event"] == "layer.channel_full"]
        assert len(full) == 1 and full[0]["inbox_limit"] == 5 and "capacity" not in full[0]
        assert await client.hkeys(f"{prefix}:gp:room") == [live.non_local_name(mine).encode()]
        assert not await client.exists(f"{prefix}:q:{dead_inbox}", f"{prefix}:ig:{dead_inbox}")
    finally:
        finish(doomed)
        await client.aclose()
        await live.close()


async def test_a_live_process_taken_for_dead_restores_itself(own_redis: RedisServer, prefix: str) -> None:
    """Sync code runs no receive loop between calls: it may miss heartbeats, then it re-adds its memberships."""
    other = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, dead_after=1.5)
    sender = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)
    sleeper = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, dead_after=1.5)
    try:
        reaper = await other.new_channel()  # a process whose keeper removes dead ones
        channel = await asyncio.to_thread(lambda: asyncio.run(_join(sleeper, "room")))  # its loop ends here
        with capture_logs() as logs:
            await wait_for(lambda: "layer.dead_process_removed" in [e["event"] for e in logs], timeout=30)
            got = asyncio.ensure_future(asyncio.to_thread(lambda: asyncio.run(_receive(sleeper, channel))))  # back
            await wait_for(lambda: "layer.memberships_restored" in [e["event"] for e in logs], timeout=30)
            await sender.group_send("room", {"type": "m", "n": 1})
            assert (await asyncio.wait_for(got, 10))["n"] == 1
        assert reaper
    finally:
        await other.close()
        await sender.close()


async def test_taken_for_dead_before_its_first_heartbeat_still_restores(own_redis: RedisServer, prefix: str) -> None:
    """Sync code whose loop ends right after group_add, before its keeper ever visited Redis: the
    membership GROUP_ADD wrote must still be restored when the process comes back."""
    other = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, dead_after=1.0)
    sender = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix)
    sleeper = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, dead_after=1.0)
    real_keeper = sleeper._keeper

    async def never_visits(*args: Any) -> None:  # loop A ends before the keeper's first visit
        await asyncio.Event().wait()

    try:
        await other.new_channel()  # a live process whose keeper removes dead ones
        sleeper._keeper = never_visits  # type: ignore[method-assign]
        channel = await asyncio.to_thread(lambda: asyncio.run(_join(sleeper, "room")))
        sleeper._keeper = real_keeper  # type: ignore[method-assign]
        with capture_logs() as logs:
            await wait_for(lambda: "layer.dead_process_removed" in [e["event"] for e in logs], timeout=30)
            got = asyncio.ensure_future(asyncio.to_thread(lambda: asyncio.run(_receive(sleeper, channel))))
            await wait_for(lambda: "layer.memberships_restored" in [e["event"] for e in logs], timeout=30)
            await sender.group_send("room", {"type": "m", "n": 2})
            assert (await asyncio.wait_for(got, 10))["n"] == 2
    finally:
        await other.close()
        await sender.close()


async def _join(layer: RedisChannelLayer, group: str) -> str:
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    return channel


async def _receive(layer: RedisChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), 8)


# -- the gateway's view: metrics and health ---------------------------------------------------------


async def test_gateway_counts_drops_by_reason_and_is_not_ready_while_redis_is_away(own_redis: RedisServer, prefix: str) -> None:
    import httpx

    from gateway import Gateway

    gw = Gateway.from_text(f"""
layer: {{backend: redis, url: "{own_redis.url}", prefix: {prefix}, capacity: 1, expiry: 0.3}}
adapters:
  http: {{listen: "127.0.0.1:0"}}
""")
    async with gw, httpx.AsyncClient(base_url=f"http://{gw.addresses['http'][0]}") as http:
        layer = gw.layer
        assert isinstance(layer, RedisChannelLayer)
        mine = await layer.new_channel()
        await layer.group_add("g", mine)
        await layer.group_send("g", {"type": "fills"})
        await layer.group_send("g", {"type": "refused"})  # full
        await asyncio.sleep(0.4)
        await layer.send(mine, {"type": "x"})  # notices "fills" expired
        metrics = (await http.get("/metrics")).text
        assert 'gateway_layer_dropped_total{reason="full"} 1.0' in metrics
        assert 'gateway_layer_dropped_total{reason="expired"} 1.0' in metrics
        assert 'gateway_layer_dropped_total{reason="restore_window"} 0.0' in metrics
        assert 'gateway_layer_dropped_total{reason="dead_member"} 0.0' in metrics
        assert (await http.get("/healthz")).status_code == 200
        own_redis.stop()
        await wait_for(lambda: layer.health[0] == "down")
        report = await http.get("/healthz")
        assert report.status_code == 503 and report.json()["components"]["layer"]["status"] == "down"
        own_redis.start()
        await wait_for(lambda: layer.health == ("ok", ""), timeout=15)
        assert (await http.get("/healthz")).status_code == 200
