"""The Redis layer as Channels code drives it: sync callers, one event loop after another, loops
closed without ``close()``, and names it must refuse at once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from test_layer_redis_helpers import RedisServer

from gateway.layers.redis import RedisChannelLayer

pytestmark = pytest.mark.timeout(60)


def test_sync_callers_reach_their_own_channel(redis_server: RedisServer, prefix: str) -> None:
    """Channels' documented pattern: each async_to_sync call runs on a new event loop."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)

    async def receive(name: str) -> dict[str, Any]:
        return await asyncio.wait_for(layer.receive(name), 5)

    name = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(name, {"type": "local", "n": 1})
    assert async_to_sync(receive)(name) == {"type": "local", "n": 1}
    # and the same through Redis, from another layer instance
    other = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
    async_to_sync(other.send)(name, {"type": "remote", "n": 2})
    assert async_to_sync(receive)(name) == {"type": "remote", "n": 2}
    async_to_sync(layer.flush)()


def test_a_second_loop_takes_over_from_an_idle_one_without_losing(redis_server: RedisServer, prefix: str) -> None:
    """The first loop's receive loop must not keep popping into buffers nobody reads."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
    first, second, third = asyncio.Runner(), asyncio.Runner(), asyncio.Runner()
    try:
        name = first.run(layer.new_channel())
        third.run(sender.send(name, {"type": "m", "n": -1}))
        assert first.run(asyncio.wait_for(layer.receive(name), 5))["n"] == -1  # first loop's receive loop runs
        second.run(layer.new_channel())  # a call from a second loop: it takes over
        for n in range(1, 21):
            third.run(sender.send(name, {"type": "m", "n": n}))
        first.run(asyncio.sleep(0.5))  # the first loop runs again for a while

        async def drain() -> list[int]:
            return [(await asyncio.wait_for(layer.receive(name), 5))["n"] for _ in range(20)]

        assert second.run(drain()) == list(range(1, 21))
    finally:
        for runner in (first, second, third):
            runner.close()


def test_closing_loops_without_close_never_hangs(redis_server: RedisServer, prefix: str) -> None:
    """Channels code never calls close(): a loop closed while the receive loop is busy must close.

    A flood of messages keeps the receive loop's Redis reads completing while each loop is closed,
    so a cancellation arriving as a read completes is exercised many times.
    """
    flood_stop = threading.Event()
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, capacity=100_000)
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, capacity=100_000)
    names: list[str] = []

    def flood() -> None:
        async def go() -> None:
            while not flood_stop.is_set():
                for name in list(names):
                    await sender.send(name, {"type": "flood"})
                await asyncio.sleep(0)

        asyncio.run(go())

    flooder = threading.Thread(target=flood, daemon=True)
    try:
        for round_ in range(40):
            runner = asyncio.Runner()

            async def start() -> None:
                name = await layer.new_channel()
                names.append(name)
                await asyncio.wait_for(layer.receive(name), 5) if round_ else None  # noqa: B023 - run within its round
                asyncio.ensure_future(layer.receive(name))  # noqa: RUF006 - a receiver still waiting at close

            if round_ == 1:
                flooder.start()
            runner.run(start())
            closer = threading.Thread(target=runner.close, daemon=True)
            closer.start()
            closer.join(20)
            assert not closer.is_alive(), f"closing event loop {round_} hung"
    finally:
        flood_stop.set()
        if flooder.is_alive():
            flooder.join(10)


def test_receive_refuses_a_process_specific_name_it_did_not_make(redis_server: RedisServer, prefix: str) -> None:
    """channels_redis refuses at once; waiting would be waiting for ever."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)

    async def go() -> None:
        for name in ("not-client-prefix!local", "specific!x", "specific.0123456789ab!x"):
            with pytest.raises(ValueError, match="new_channel"):
                await asyncio.wait_for(layer.receive(name), 5)
        await layer.close()

    asyncio.run(go())


async def test_group_message_queued_before_an_expiry_leave_is_delivered(redis_server: RedisServer, prefix: str) -> None:
    """A group message queued while the channel was still a member is delivered (unless it expired itself)."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, expiry=0.5)
    try:
        channel = await layer.new_channel()
        await layer.group_add("g", channel)
        await layer.group_send("g", {"type": "old"})
        await asyncio.sleep(0.7)  # "old" expired unread: the channel leaves "g" ...
        await layer.send(channel, {"type": "direct"})  # ... noticed here
        await layer.group_send("g", {"type": "queued"})  # queued while Redis still has it in "g"
        got = [await asyncio.wait_for(layer.receive(channel), 3) for _ in range(2)]
        assert got == [{"type": "direct"}, {"type": "queued"}]
        assert layer.drops["expired"] == 1
        await asyncio.sleep(0.1)
        await layer.group_send("g", {"type": "after.leave"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.3)
    finally:
        await layer.flush()
        await layer.close()


async def test_an_unexpected_error_in_the_receive_loop_is_logged_and_the_loop_goes_on(
    redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug (ours or a library's) in handing out what a pop returned ended the receive loop
    silently: every later receive on that host waited for ever. Now it is logged with its
    traceback once, and receiving goes on."""
    from structlog.testing import capture_logs

    from gateway.layers import redis_poller

    real_take = redis_poller.Poller._take
    calls = {"n": 0}

    async def take_failing_once(self: Any, result: Any) -> None:
        if result is not None and result[0].decode() != self.wake_key and calls["n"] == 0:
            calls["n"] += 1
            raise RuntimeError("a bug while handing a message out")
        await real_take(self, result)

    monkeypatch.setattr(redis_poller.Poller, "_take", take_failing_once)
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
    sender = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
    try:
        with capture_logs() as logs:
            receiving = asyncio.ensure_future(layer.receive("work"))
            await sender.send("work", {"type": "job", "n": 1})  # its hand-out fails
            await sender.send("work", {"type": "job", "n": 2})
            got = await asyncio.wait_for(receiving, 10)
        assert got == {"type": "job", "n": 2}
        failures = [e for e in logs if e["event"] == "layer.receive_loop_error"]
        assert len(failures) == 1 and failures[0]["exc_info"], logs
    finally:
        await layer.close()
        await sender.close()
