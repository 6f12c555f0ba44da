"""The Redis channel layer against a real redis-server: every API call, limits, expiry, shortcut, config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs
from test_layer_redis_helpers import RedisServer

from gateway import config as config_mod
from gateway.errors import ConfigError
from gateway.layers import BACKENDS, ChannelFull, InvalidChannelName
from gateway.layers.base import BaseChannelLayer
from gateway.layers.redis import LayerUnavailable, RedisChannelLayer, RedisLayerOptions
from gateway.layers.redis_scripts import glob_to_lua

pytestmark = pytest.mark.timeout(30)


async def receive_now(layer: Any, channel: str, timeout: float = 0.2) -> dict[str, Any] | None:
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout)
    except TimeoutError:
        return None


@pytest.fixture
async def make(redis_server: RedisServer, prefix: str) -> AsyncIterator[Any]:
    """make(**options) -> a RedisChannelLayer on the shared server, under this test's prefix."""
    made: list[RedisChannelLayer] = []

    def _make(**options: Any) -> RedisChannelLayer:
        layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, **options)
        made.append(layer)
        return layer

    yield _make
    if made:
        await made[0].flush()
    for layer in made:
        await layer.close()


@pytest.fixture
def layer(make: Any) -> RedisChannelLayer:
    return make()


# -- registry, options, config -------------------------------------------------------------------


def test_backend_registry_points_here() -> None:
    module, _, name = BACKENDS["redis"].partition(":")
    assert module == RedisChannelLayer.__module__ and name == RedisChannelLayer.__name__
    assert issubclass(RedisChannelLayer, BaseChannelLayer)
    assert RedisChannelLayer.extensions == ["groups", "flush"]
    for key, info in RedisLayerOptions.model_fields.items():
        assert info.description, f"{key} has no description"


def test_yaml_layer_block_validates_and_builds() -> None:
    plan = config_mod.loads(
        "layer: {backend: redis, hosts: ['redis://127.0.0.1:1/0', [127.0.0.1, 2]], prefix: gw, capacity: 5,"
        " channel_capacity: {'mqtt.*': 50}, expiry: 10}\n"
    )
    assert plan.layer_class is RedisChannelLayer
    layer = plan.layer_class(**plan.layer_options)
    assert layer.prefix == "gw" and layer.get_capacity("mqtt.publish") == 50 and layer.get_capacity("x") == 5
    assert layer.labels == ["redis://127.0.0.1:1/0", "127.0.0.1:2/0"]


def test_yaml_url_shorthand_and_bad_keys() -> None:
    plan = config_mod.loads("layer: {backend: redis, url: 'redis://127.0.0.1:7/3'}\n")
    assert plan.layer_class(**plan.layer_options).labels == ["redis://127.0.0.1:7/3"]
    with pytest.raises(ConfigError) as info:
        config_mod.loads("layer: {backend: redis, hots: []}\n")
    assert "hots" in str(info.value) and "hosts" in str(info.value)


def test_fault_limits_are_positive() -> None:
    plan = config_mod.loads("layer: {backend: redis, dead_after: 0.5, restore_timeout: 0.1}\n")
    layer = plan.layer_class(**plan.layer_options)
    assert (layer.dead_after, layer.restore_timeout) == (0.5, 0.1)
    for key in ("dead_after", "restore_timeout"):
        with pytest.raises(ConfigError) as info:
            config_mod.loads(f"layer: {{backend: redis, {key}: 0}}\n")
        assert key in str(info.value)


def test_channels_redis_config_keys_and_refusals() -> None:
    layer = RedisChannelLayer(hosts=[("127.0.0.1", 6390)], prefix="x", expiry=5, group_expiry=9, capacity=3,
                              channel_capacity={"a*": 1}, serializer_format="msgpack", random_prefix_length=12)
    assert (layer.expiry, layer.group_expiry, layer.capacity, layer.get_capacity("abc")) == (5, 9, 3, 1)
    with pytest.raises(TypeError, match="symmetric_encryption_keys"):
        RedisChannelLayer(symmetric_encryption_keys=["k"])
    with pytest.raises(TypeError, match="unknown"):
        RedisChannelLayer(hostz=["redis://x"])
    with pytest.raises(ValueError, match="list"):
        RedisChannelLayer(hosts="redis://127.0.0.1:6379")


@pytest.mark.parametrize(
    "glob, yes, no",
    [("mqtt.*", ["mqtt.publish", "mqtt."], ["xmqtt.publish", "mqtt"]), ("a?c", ["abc"], ["ac", "abcd"]),
     ("sms.[st]end", ["sms.send", "sms.tend"], ["sms.bend"]), ("x[!a]y", ["xby"], ["xay"]), ("a-b.c", ["a-b.c"], ["a-bxc"])],
)
async def test_capacity_globs_match_the_same_in_lua(redis_server: RedisServer, glob: str, yes: list[str], no: list[str]) -> None:
    """channel_capacity globs are matched by fnmatch in Python and by a translated pattern in Lua."""
    import fnmatch

    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        for name in yes + no:
            lua = await client.eval("return string.find(ARGV[1], ARGV[2]) and 1 or 0", 0, name, glob_to_lua(glob))
            assert bool(lua) == fnmatch.fnmatchcase(name, glob) == (name in yes), name
    finally:
        await client.aclose()


# -- send / receive ------------------------------------------------------------------------------


async def test_send_receive_in_order(layer: RedisChannelLayer) -> None:
    for i in range(3):
        await layer.send("work", {"type": "job", "n": i})
    assert [(await layer.receive("work"))["n"] for _ in range(3)] == [0, 1, 2]
    assert await receive_now(layer, "work") is None


async def test_receive_waits_for_a_later_send(layer: RedisChannelLayer, make: Any) -> None:
    other = make()
    waiting = asyncio.ensure_future(layer.receive("later"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await other.send("later", {"type": "x"})
    assert await asyncio.wait_for(waiting, 2) == {"type": "x"}


async def test_normal_channel_message_goes_to_exactly_one_receiver(make: Any) -> None:
    a, b, sender = make(), make(), make()
    receivers = [asyncio.ensure_future(x.receive("shared")) for x in (a, a, b, b)]
    await asyncio.sleep(0.05)
    for i in range(4):
        await sender.send("shared", {"type": "m", "n": i})
    got = await asyncio.wait_for(asyncio.gather(*receivers), 3)
    assert sorted(m["n"] for m in got) == [0, 1, 2, 3]


async def test_cancelled_receiver_does_not_lose_a_message(layer: RedisChannelLayer, make: Any) -> None:
    other = make()
    for _ in range(5):
        waiting = asyncio.ensure_future(layer.receive("c"))
        await asyncio.sleep(0.02)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    await other.send("c", {"type": "only"})
    assert await asyncio.wait_for(other.receive("c"), 3) == {"type": "only"}
    assert await receive_now(layer, "c") is None


async def test_process_specific_channel_from_another_process(make: Any) -> None:
    owner, sender = make(), make()
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "hello", "data": b"\x00\xff", "n": [1, 2]})
    assert await asyncio.wait_for(owner.receive(channel), 2) == {"type": "hello", "data": b"\x00\xff", "n": [1, 2]}


async def test_another_process_channel_cannot_be_received_here(make: Any) -> None:
    owner, other = make(), make()
    channel = await owner.new_channel()
    with pytest.raises(ValueError, match="another process"):
        await other.receive(channel)
    await other.send(channel, {"type": "still.fine"})
    assert await asyncio.wait_for(owner.receive(channel), 2) == {"type": "still.fine"}
    # a hand-made process-specific name can be sent to, but no layer receives it (channels_redis refuses too)
    await other.send("jobs!a", {"type": "x"})
    with pytest.raises(ValueError, match="new_channel"):
        await other.receive("jobs!a")


async def test_new_channel_names(layer: RedisChannelLayer) -> None:
    a, b = await layer.new_channel(), await layer.new_channel("websocket")
    assert a != b and a.startswith(f"specific.{layer.client_id}!") and b.startswith(f"websocket.{layer.client_id}!")
    assert layer.valid_channel_name(a) and layer.valid_channel_name(b)


async def test_received_messages_are_independent_copies(layer: RedisChannelLayer) -> None:
    message = {"type": "x", "items": [1]}
    channel = await layer.new_channel()
    await layer.send(channel, message)
    message["items"].append(2)
    got = await layer.receive(channel)
    assert got == {"type": "x", "items": [1]} and got is not message


async def test_invalid_names_and_messages(layer: RedisChannelLayer) -> None:
    with pytest.raises(InvalidChannelName):
        await layer.send("bad name", {"type": "x"})
    with pytest.raises(InvalidChannelName):
        await layer.group_add("bad!group", "ch")
    with pytest.raises(InvalidChannelName):
        await layer.receive("x" * 120)
    with pytest.raises(TypeError):
        await layer.send("ok", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="msgpack"):
        await layer.send("ok", {"type": "x", "obj": object()})


# -- process-local shortcut --------------------------------------------------------------------


async def test_local_send_does_not_touch_redis(own_redis: RedisServer, prefix: str) -> None:
    layer = RedisChannelLayer(hosts=[own_redis.url], prefix=prefix, capacity=2)
    try:
        channel = await layer.new_channel()
        own_redis.stop()  # the shortcut needs no Redis at all
        await layer.send(channel, {"type": "local", "n": (1, 2)})
        assert await asyncio.wait_for(layer.receive(channel), 1) == {"type": "local", "n": [1, 2]}  # serialised like Redis
        await layer.send(channel, {"type": "a"})
        await layer.send(channel, {"type": "b"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "c"})
        with pytest.raises(LayerUnavailable, match="unreachable"):
            await layer.send("normal.channel", {"type": "x"})
    finally:
        await layer.close()


# -- groups ------------------------------------------------------------------------------------


async def test_group_send_reaches_every_member_in_every_process(make: Any) -> None:
    a, b = make(), make()
    ca1, ca2, cb = await a.new_channel(), await a.new_channel(), await b.new_channel()
    for ch in (ca1, ca2):
        await a.group_add("room", ch)
    await b.group_add("room", cb)
    await b.group_add("room", "plain.channel")
    await a.group_send("room", {"type": "chat", "text": "hi"})
    got = await asyncio.wait_for(
        asyncio.gather(a.receive(ca1), a.receive(ca2), b.receive(cb), b.receive("plain.channel")), 3
    )
    assert got == [{"type": "chat", "text": "hi"}] * 4
    assert await receive_now(a, ca1) is None


async def test_memberships_changed_by_another_process(make: Any) -> None:
    """group_add/group_discard of a channel from another process reach its owner's fan-out."""
    owner, other = make(), make()
    ch = await owner.new_channel()
    await other.group_add("g", ch)
    await other.group_send("g", {"type": "one"})
    assert await asyncio.wait_for(owner.receive(ch), 2) == {"type": "one"}
    await other.group_discard("g", ch)
    await other.group_send("g", {"type": "two"})
    assert await receive_now(owner, ch) is None
    await other.group_add("g", ch)
    await owner.group_send("g", {"type": "three"})
    assert await asyncio.wait_for(owner.receive(ch), 2) == {"type": "three"}


async def test_flush_from_another_process_clears_the_owners_memberships(make: Any) -> None:
    owner, other = make(), make()
    old, new = await owner.new_channel(), await owner.new_channel()
    await owner.group_add("g", old)
    await other.flush()
    await other.group_add("g", new)
    await other.group_send("g", {"type": "after.flush"})
    assert await asyncio.wait_for(owner.receive(new), 2) == {"type": "after.flush"}
    assert await receive_now(owner, old) is None


async def test_group_discard_and_empty_groups(make: Any) -> None:
    a = make()
    ch = await a.new_channel()
    await a.group_add("g", ch)
    await a.group_add("g", ch)  # twice: still one member
    await a.group_discard("g", ch)
    await a.group_discard("g", ch)  # not a member: no-op
    await a.group_discard("never", ch)
    await a.group_send("g", {"type": "x"})
    await a.group_send("nobody", {"type": "x"})
    assert await receive_now(a, ch) is None


async def test_flush_drops_messages_and_groups(make: Any) -> None:
    a, b = make(), make()
    ch = await b.new_channel()
    await a.group_add("g", ch)
    await a.send("work", {"type": "x"})
    await b.send(ch, {"type": "local"})
    await a.flush()
    await b.flush()
    await a.group_send("g", {"type": "after"})
    assert await receive_now(a, "work") is None
    assert await receive_now(b, ch) is None


# -- capacity --------------------------------------------------------------------------------------


async def test_normal_channel_capacity_boundary(make: Any) -> None:
    layer = make(capacity=3, channel_capacity={"big.*": 5})
    for i in range(3):
        await layer.send("small", {"type": "x", "i": i})
    with pytest.raises(ChannelFull):
        await layer.send("small", {"type": "x"})
    await layer.receive("small")
    await layer.send("small", {"type": "x"})  # room again
    for _ in range(5):
        await layer.send("big.one", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("big.one", {"type": "x"})


async def test_channel_full_is_channels_channel_full(layer: RedisChannelLayer) -> None:
    from channels.exceptions import ChannelFull as ChannelsChannelFull

    layer.capacity = 1
    await layer.send("one", {"type": "x"})
    with pytest.raises(ChannelsChannelFull):
        await layer.send("one", {"type": "x"})


async def test_remote_process_specific_capacity_is_given_back_on_receive(make: Any) -> None:
    owner, sender = make(capacity=2), make(capacity=2)
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "1"})
    await sender.send(channel, {"type": "2"})
    with pytest.raises(ChannelFull):
        await sender.send(channel, {"type": "3"})
    assert (await owner.receive(channel))["type"] == "1"
    assert (await owner.receive(channel))["type"] == "2"
    deadline = time.monotonic() + 2
    while True:  # the count is returned to Redis in the background, batched
        try:
            await sender.send(channel, {"type": "4"})
            break
        except ChannelFull:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    assert (await owner.receive(channel))["type"] == "4"


async def test_group_send_to_full_members_is_counted_and_logged(make: Any) -> None:
    a = make(capacity=1)
    full: list[tuple[str, str | None]] = []
    a.on_full = lambda channel, group: full.append((channel, group))
    mine = await a.new_channel()
    await a.group_add("g", mine)
    await a.group_add("g", "plain")
    await a.send("plain", {"type": "filler"})
    await a.send(mine, {"type": "filler"})
    with capture_logs() as logs:
        await a.group_send("g", {"type": "dropped"})
        deadline = time.monotonic() + 2
        while len(full) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert sorted(full) == sorted([("plain", "g"), (mine, "g")])
    assert a.full_drops == 2
    warnings = [e for e in logs if e["event"] == "layer.channel_full"]
    assert {e["channel"] for e in warnings} == {"plain", mine} and all(e["log_level"] == "warning" for e in warnings)
    assert (await a.receive(mine))["type"] == "filler"
    assert (await a.receive("plain"))["type"] == "filler"


async def test_dead_process_inbox_is_bounded(make: Any) -> None:
    """Members of a process that stopped reading stop piling up after inbox_limit group messages."""
    a = make(inbox_limit=3, restore_timeout=0.2)  # no process with channels claims this fresh Redis: do not wait long
    dead = "specific.deadbeef!x"  # nobody receives this inbox
    full: list[tuple[str, str | None]] = []
    a.on_full = lambda channel, group: full.append((channel, group))
    await a.group_add("g", dead)  # the membership notice is the inbox's first element
    for _ in range(5):
        await a.group_send("g", {"type": "x"})
    assert a.full_drops == 3 and full == [("specific.deadbeef!", "g")] * 3


# -- expiry ------------------------------------------------------------------------------------------


async def test_messages_expire(make: Any) -> None:
    a = make(expiry=0.2, capacity=1)
    mine = await a.new_channel()
    await a.send("work", {"type": "old"})
    await a.send(mine, {"type": "old"})
    await asyncio.sleep(0.3)
    with capture_logs() as logs:
        await a.send("work", {"type": "new"})  # expired one no longer counts against capacity
        assert await a.receive("work") == {"type": "new"}
        assert await receive_now(a, mine) is None
    # The local one is counted; the queued one went with its key (Redis expires a queue nobody
    # sent to for a whole expiry period), which frees the capacity just the same.
    assert a.expired_drops >= 1
    assert mine in {e["channel"] for e in logs if e["event"] == "layer.message_expired"}


async def test_expired_remote_message_is_not_delivered(make: Any) -> None:
    owner, sender = make(expiry=0.2), make(expiry=0.2)
    await sender.send("slow", {"type": "old"})
    await asyncio.sleep(0.3)
    await sender.send("slow", {"type": "new"})
    assert await asyncio.wait_for(owner.receive("slow"), 2) == {"type": "new"}


async def test_channel_whose_message_expired_leaves_its_groups(make: Any) -> None:
    a = make(expiry=0.2)
    ch = await a.new_channel()
    await a.group_add("g", ch)
    await a.group_send("g", {"type": "unread"})
    await asyncio.sleep(0.3)
    assert await receive_now(a, ch) is None  # expired; channel leaves "g"
    await asyncio.sleep(0.05)
    await a.group_send("g", {"type": "later"})
    assert await receive_now(a, ch) is None


async def test_group_membership_expires_and_renews(make: Any) -> None:
    a = make(group_expiry=0.3)
    ch, renewed = await a.new_channel(), await a.new_channel()
    await a.group_add("g", ch)
    await a.group_add("g", renewed)
    await asyncio.sleep(0.2)
    await a.group_add("g", renewed)
    await asyncio.sleep(0.15)
    await a.group_send("g", {"type": "x"})
    assert await receive_now(a, ch) is None
    assert await receive_now(a, renewed) == {"type": "x"}


def test_layer_survives_one_event_loop_after_another(redis_server: RedisServer, prefix: str) -> None:
    """Django's sync code runs each async_to_sync call on a fresh loop: the layer follows."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
    try:
        asyncio.run(layer.send("jobs", {"type": "one"}))
        assert asyncio.run(layer.receive("jobs")) == {"type": "one"}

        async def local_roundtrip() -> dict[str, Any]:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "two"})
            return await layer.receive(channel)

        assert asyncio.run(local_roundtrip()) == {"type": "two"}
    finally:
        asyncio.run(layer.flush())


async def test_receiving_from_two_running_loops_is_refused(layer: RedisChannelLayer) -> None:
    import threading

    await layer.send("here", {"type": "x"})
    assert await layer.receive("here") == {"type": "x"}  # binds the layer to this loop
    errors: list[BaseException] = []

    def other_thread() -> None:
        async def go() -> None:
            await layer.send("there", {"type": "fine"})  # sending from another loop works
            await layer.receive("there")

        try:
            asyncio.run(go())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    await asyncio.to_thread(thread.join, 10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and "two event loops" in str(errors[0])
    assert await layer.receive("there") == {"type": "fine"}
