"""Same calls, same observable outcomes: channels_redis's RedisChannelLayer vs ours, one real Redis.

Each scenario is a function of a layer factory returning what a user could observe (messages
received, ChannelFull raised, exceptions); it runs against both layers and the results must match.
Scenarios that sleep run both layers at once.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import channels_redis.core as channels_redis_core
import pytest
from channels.exceptions import ChannelFull as ChannelsChannelFull
from test_layer_redis_helpers import RedisServer

from gateway.layers.redis import RedisChannelLayer

pytestmark = pytest.mark.timeout(30)

Factory = Callable[..., Any]


async def within(awaitable: Awaitable[Any], timeout: float = 0.3) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        return "nothing"


async def outcome(awaitable: Awaitable[Any]) -> str:
    try:
        await awaitable
        return "ok"
    except ChannelsChannelFull:
        return "full"
    except TypeError:
        return "TypeError"
    except AssertionError:  # channels_redis asserts on some inputs where we raise TypeError
        return "TypeError"


async def run_both(server: RedisServer, scenario: Callable[[Factory], Awaitable[Any]]) -> tuple[Any, Any]:
    made: list[Any] = []

    def factory_for(cls: type) -> Factory:
        prefix = "p" + secrets.token_hex(4)

        def make(**options: Any) -> Any:
            layer = cls(hosts=[server.url], prefix=prefix, **options)
            made.append(layer)
            return layer

        return make

    try:
        theirs, ours = await asyncio.gather(
            scenario(factory_for(channels_redis_core.RedisChannelLayer)), scenario(factory_for(RedisChannelLayer))
        )
    finally:
        for layer in made:
            try:
                await layer.flush()
            except Exception:  # noqa: BLE001
                pass
            if isinstance(layer, RedisChannelLayer):
                await layer.close()
    return theirs, ours


async def send_receive_order(make: Factory) -> Any:
    a = make()
    for i in range(3):
        await a.send("work", {"type": "job", "n": i})
    return [await within(a.receive("work")) for _ in range(4)]


async def message_types(make: Factory) -> Any:
    a, b = make(), make()
    ch = await b.new_channel()
    message = {"type": "t", "bytes": b"\x00\x01", "tuple": (1, 2), "nested": {"a": [1.5, None, True]}, "big": 2**40}
    await a.send(ch, message)
    await a.send("plain", message)
    return [await within(b.receive(ch), 2), await within(b.receive("plain"), 2)]


async def normal_channel_capacity(make: Factory) -> Any:
    a = make(capacity=2, channel_capacity={"big.*": 3})
    results = [await outcome(a.send("small", {"type": "x"})) for _ in range(3)]
    results += [await outcome(a.send("big.x", {"type": "x"})) for _ in range(4)]
    await a.receive("small")
    results.append(await outcome(a.send("small", {"type": "x"})))
    return results


async def specific_channel_capacity_without_receiver(make: Factory) -> Any:
    owner, sender = make(capacity=2), make(capacity=2)
    ch = await owner.new_channel()
    return [await outcome(sender.send(ch, {"type": "x", "n": i})) for i in range(3)]


async def groups(make: Factory) -> Any:
    a, b = make(), make()
    ca, cb = await a.new_channel(), await b.new_channel()
    await a.group_add("room", ca)
    await a.group_add("room", cb)
    await b.group_add("room", "plain.member")
    await a.group_send("room", {"type": "one"})
    first = [await within(a.receive(ca), 2), await within(b.receive(cb), 2), await within(a.receive("plain.member"), 2)]
    await b.group_discard("room", cb)
    await b.group_discard("room", "never.added")
    await a.group_send("room", {"type": "two"})
    second = [await within(a.receive(ca), 2), await within(b.receive(cb)), await within(a.receive("plain.member"), 2)]
    await a.group_send("empty", {"type": "three"})
    return first, second


async def group_send_skips_full_members(make: Factory) -> Any:
    # ``free`` lives in another process: channels_redis counts capacity per process key, so a
    # full channel there makes its whole process full (see test_capacity_is_per_channel_here).
    a, b, c = make(capacity=1), make(capacity=1), make(capacity=1)
    full, free = await a.new_channel(), await c.new_channel()
    await b.group_add("g", full)
    await b.group_add("g", free)
    await b.group_add("g", "plain.full")
    await b.send("plain.full", {"type": "filler"})
    await b.send(full, {"type": "filler"})
    await b.group_send("g", {"type": "group"})
    # Ours checks a process-specific channel's room when the message reaches its process (the
    # full channel must not have been read yet); channels_redis checks it when sending.
    await asyncio.sleep(0.2)
    got = [await within(a.receive(full), 2), await within(c.receive(free), 2), await within(a.receive("plain.full"), 2)]
    got += [await within(a.receive(full)), await within(a.receive("plain.full"))]
    return got


async def message_expiry(make: Factory) -> Any:
    a, b = make(expiry=1), make(expiry=1)
    ch = await b.new_channel()
    await a.send("plain", {"type": "old"})
    await a.send(ch, {"type": "old"})
    await asyncio.sleep(1.3)
    gone = [await within(b.receive("plain")), await within(b.receive(ch))]
    await a.send("plain", {"type": "new"})
    return [*gone, await within(b.receive("plain"), 2)]


async def group_expiry(make: Factory) -> Any:
    a = make(group_expiry=1)
    ch = await a.new_channel()
    await a.group_add("g", ch)
    await asyncio.sleep(1.3)
    await a.group_send("g", {"type": "x"})
    return await within(a.receive(ch))


async def flush(make: Factory) -> Any:
    a = make()
    ch = await a.new_channel()
    await a.group_add("g", ch)
    await a.send("plain", {"type": "x"})
    await a.flush()
    await a.group_send("g", {"type": "x"})
    return [await within(a.receive("plain")), await within(a.receive(ch))]


async def name_rules(make: Factory) -> Any:
    a = make()
    names = [await a.new_channel(), await a.new_channel("websocket")]
    shapes = [bool(re.fullmatch(r"(specific|websocket)\.[0-9a-f]+![0-9a-f]+", n)) for n in names]
    errors = [
        await outcome(a.send("bad name", {"type": "x"})),
        await outcome(a.send("x" * 101, {"type": "x"})),
        await outcome(a.group_add("bad group!", "x")),
        await outcome(a.send("ok", "not a dict")),
    ]
    return shapes, names[0] != names[1], errors


SCENARIOS = [
    send_receive_order, message_types, normal_channel_capacity, specific_channel_capacity_without_receiver,
    groups, group_send_skips_full_members, message_expiry, group_expiry, flush, name_rules,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_same_outcome_as_channels_redis(redis_server: RedisServer, scenario: Callable[[Factory], Awaitable[Any]]) -> None:
    theirs, ours = await run_both(redis_server, scenario)
    assert ours == theirs


async def test_capacity_is_per_channel_here(redis_server: RedisServer) -> None:
    """Where we differ on purpose: a full channel does not make its process's other channels full.

    channels_redis keeps every channel of a process in one key and checks capacity on that key,
    so one full channel makes group_send skip all of that process's members. Channels' documented
    rule (and our in-memory layer) is per channel; we follow it.
    """

    async def scenario(make: Factory) -> Any:
        a, b = make(capacity=1), make(capacity=1)
        full, free = await a.new_channel(), await a.new_channel()
        await b.group_add("g", full)
        await b.group_add("g", free)
        await b.send(full, {"type": "filler"})
        await b.group_send("g", {"type": "group"})
        return await within(a.receive(free), 2)

    theirs, ours = await run_both(redis_server, scenario)
    assert theirs == "nothing" and ours == {"type": "group"}
