"""The in-memory channel layer: every API call, its limits, and Channels parity."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.layers import BACKENDS, ChannelFull, InvalidChannelName
from gateway.layers.base import BaseChannelLayer
from gateway.layers.memory import InMemoryChannelLayer


async def receive_now(layer: Any, channel: str, timeout: float = 0.05) -> dict[str, Any] | None:
    """The next message on ``channel``, or None when nothing arrives within ``timeout``."""
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout)
    except TimeoutError:
        return None


@pytest.fixture
def layer() -> InMemoryChannelLayer:
    return InMemoryChannelLayer()


def test_backend_registry_points_here() -> None:
    module, _, name = BACKENDS["memory"].partition(":")
    assert module == InMemoryChannelLayer.__module__ and name == InMemoryChannelLayer.__name__
    assert issubclass(InMemoryChannelLayer, BaseChannelLayer)
    assert InMemoryChannelLayer.extensions == ["groups", "flush"]


# send / receive


async def test_send_receive_in_order(layer: InMemoryChannelLayer) -> None:
    for i in range(3):
        await layer.send("work", {"type": "job", "n": i})
    assert [(await layer.receive("work"))["n"] for _ in range(3)] == [0, 1, 2]
    assert await receive_now(layer, "work") is None


async def test_receive_waits_for_a_later_send(layer: InMemoryChannelLayer) -> None:
    waiting = asyncio.ensure_future(layer.receive("later"))
    await asyncio.sleep(0)
    assert not waiting.done()
    await layer.send("later", {"type": "x"})
    assert await asyncio.wait_for(waiting, 1) == {"type": "x"}


async def test_each_message_goes_to_exactly_one_receiver(layer: InMemoryChannelLayer) -> None:
    receivers = [asyncio.ensure_future(layer.receive("shared")) for _ in range(3)]
    await asyncio.sleep(0)
    for i in range(3):
        await layer.send("shared", {"type": "m", "n": i})
    got = await asyncio.wait_for(asyncio.gather(*receivers), 1)
    assert sorted(m["n"] for m in got) == [0, 1, 2]


async def test_receiver_cancelled_after_wakeup_passes_message_on(layer: InMemoryChannelLayer) -> None:
    first = asyncio.ensure_future(layer.receive("c"))
    second = asyncio.ensure_future(layer.receive("c"))
    await asyncio.sleep(0)
    await layer.send("c", {"type": "only"})  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == {"type": "only"}
    assert first.cancelled()


async def test_cancelled_receive_leaves_no_state(layer: InMemoryChannelLayer) -> None:
    assert await receive_now(layer, "gone") is None
    assert "gone" not in layer._channels


async def test_messages_are_copies(layer: InMemoryChannelLayer) -> None:
    original = {"type": "m", "items": [1], "nested": {"k": "v"}}
    await layer.send("copy", original)
    original["items"].append(2)
    original["nested"]["k"] = "changed"
    received = await layer.receive("copy")
    assert received == {"type": "m", "items": [1], "nested": {"k": "v"}}

    await layer.group_add("g", "one")
    await layer.group_add("g", "two")
    await layer.group_send("g", original)
    one, two = await layer.receive("one"), await layer.receive("two")
    assert one == two == original
    one["items"].append(3)
    assert two["items"] == [1, 2] and original["items"] == [1, 2]


async def test_message_must_be_a_dict(layer: InMemoryChannelLayer) -> None:
    with pytest.raises(TypeError, match="must be a dict, not list"):
        await layer.send("c", ["type", "x"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a dict"):
        await layer.group_send("g", "text")  # type: ignore[arg-type]


# capacity


async def test_capacity_boundary(layer: InMemoryChannelLayer) -> None:
    small = InMemoryChannelLayer(capacity=3)
    for i in range(3):
        await small.send("q", {"type": "m", "n": i})
    with pytest.raises(ChannelFull) as excinfo:
        await small.send("q", {"type": "m", "n": 3})
    assert "q" in str(excinfo.value)
    # receiving one frees exactly one slot
    assert (await small.receive("q"))["n"] == 0
    await small.send("q", {"type": "m", "n": 4})
    with pytest.raises(ChannelFull):
        await small.send("q", {"type": "m", "n": 5})
    assert [(await small.receive("q"))["n"] for _ in range(3)] == [1, 2, 4]


async def test_default_capacity_is_100(layer: InMemoryChannelLayer) -> None:
    for i in range(100):
        await layer.send("big", {"type": "m", "n": i})
    with pytest.raises(ChannelFull):
        await layer.send("big", {"type": "m"})


async def test_channel_capacity_glob_override() -> None:
    layer = InMemoryChannelLayer(capacity=5, channel_capacity={"http.request*": 1, "mqtt.*": 2})
    assert layer.get_capacity("http.request.x") == 1
    assert layer.get_capacity("mqtt.publish") == 2
    assert layer.get_capacity("email.send") == 5
    await layer.send("http.request.x", {"type": "a"})
    with pytest.raises(ChannelFull):
        await layer.send("http.request.x", {"type": "b"})
    for _ in range(2):
        await layer.send("mqtt.publish", {"type": "a"})
    with pytest.raises(ChannelFull):
        await layer.send("mqtt.publish", {"type": "b"})
    for _ in range(5):
        await layer.send("email.send", {"type": "a"})
    with pytest.raises(ChannelFull):
        await layer.send("email.send", {"type": "b"})


# expiry


async def test_expired_message_is_not_received() -> None:
    layer = InMemoryChannelLayer(expiry=0.05)
    await layer.send("old", {"type": "stale"})
    await asyncio.sleep(0.08)
    await layer.send("old", {"type": "fresh"})
    assert await layer.receive("old") == {"type": "fresh"}
    assert await receive_now(layer, "old") is None
    assert layer.expired_drops == 1


async def test_expired_messages_free_capacity() -> None:
    layer = InMemoryChannelLayer(expiry=0.05, capacity=2)
    await layer.send("c", {"type": "a"})
    await layer.send("c", {"type": "b"})
    with pytest.raises(ChannelFull):
        await layer.send("c", {"type": "c"})
    await asyncio.sleep(0.08)
    await layer.send("c", {"type": "d"})  # both old ones expired: room again
    assert await layer.receive("c") == {"type": "d"}


async def test_expired_message_removes_channel_from_groups_and_logs() -> None:
    """As Channels does: an unread message that expired means the consumer is gone."""
    layer = InMemoryChannelLayer(expiry=0.05)
    await layer.group_add("room", "dead")
    await layer.group_add("room", "alive")
    await layer.group_send("room", {"type": "first"})
    assert await layer.receive("alive") == {"type": "first"}
    await asyncio.sleep(0.08)
    with capture_logs() as logs:
        await layer.group_send("room", {"type": "second"})
    assert await layer.receive("alive") == {"type": "second"}
    assert await receive_now(layer, "dead") is None
    assert "dead" not in layer._groups.get("room", {})
    expired = [entry for entry in logs if entry["event"] == "layer.message_expired"]
    assert expired and expired[0]["channel"] == "dead" and expired[0]["left_groups"] == ["room"]


async def test_sweep_frees_channels_nobody_touches_again() -> None:
    layer = InMemoryChannelLayer(expiry=0.05)
    for i in range(10):
        await layer.send(f"abandoned{i}", {"type": "m"})
    await asyncio.sleep(0.08)
    await layer.send("other", {"type": "m"})
    assert set(layer._channels) == {"other"}
    assert layer.expired_drops == 10


async def test_group_expiry() -> None:
    layer = InMemoryChannelLayer(group_expiry=0.05)
    await layer.group_add("g", "member")
    await layer.group_send("g", {"type": "in-time"})
    assert await layer.receive("member") == {"type": "in-time"}
    await asyncio.sleep(0.08)
    await layer.group_send("g", {"type": "too-late"})
    assert await receive_now(layer, "member") is None


async def test_group_add_again_renews_membership() -> None:
    layer = InMemoryChannelLayer(group_expiry=0.1)
    await layer.group_add("g", "member")
    await asyncio.sleep(0.06)
    await layer.group_add("g", "member")
    await asyncio.sleep(0.06)  # 0.12 after the first add, 0.06 after the renewal
    await layer.group_send("g", {"type": "m"})
    assert await receive_now(layer, "member") == {"type": "m"}


# names


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad name", "may only hold"),
        ("a!b!c", "may only hold"),
        ("", "may only hold"),
        ("é", "may only hold"),
        ("x" * 100, "is 100 characters; the limit is 99"),
        (42, "must be a str, not int"),
    ],
)
async def test_invalid_channel_names(layer: InMemoryChannelLayer, name: Any, message: str) -> None:
    for call in (
        lambda: layer.send(name, {"type": "m"}),
        lambda: layer.receive(name),
        lambda: layer.group_add("g", name),
        lambda: layer.group_discard("g", name),
    ):
        with pytest.raises(InvalidChannelName, match=re.escape(message)) as excinfo:
            await call()
        assert isinstance(excinfo.value, TypeError)  # Channels raises TypeError: callers catching it still work


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("has!bang", "may only hold"),
        ("has space", "may only hold"),
        ("g" * 100, "is 100 characters; the limit is 99"),
        (None, "must be a str, not NoneType"),
    ],
)
async def test_invalid_group_names(layer: InMemoryChannelLayer, name: Any, message: str) -> None:
    for call in (
        lambda: layer.group_add(name, "c"),
        lambda: layer.group_discard(name, "c"),
        lambda: layer.group_send(name, {"type": "m"}),
    ):
        with pytest.raises(InvalidChannelName, match=re.escape(message)):
            await call()


async def test_name_length_boundary(layer: InMemoryChannelLayer) -> None:
    channel, group = "c" * 99, "g" * 99
    await layer.group_add(group, channel)
    await layer.group_send(group, {"type": "m"})
    assert await layer.receive(channel) == {"type": "m"}
    await layer.group_discard(group, channel)
    with pytest.raises(InvalidChannelName):
        await layer.send(channel + "c", {"type": "m"})
    with pytest.raises(InvalidChannelName):
        await layer.group_add(group + "g", channel)


# new_channel


async def test_new_channel_names(layer: InMemoryChannelLayer) -> None:
    names = {await layer.new_channel() for _ in range(1000)}
    assert len(names) == 1000
    assert all(re.fullmatch(r"specific\.inmemory![0-9a-f]{16}", n) for n in names)
    custom = await layer.new_channel(prefix="websocket")
    assert custom.startswith("websocket.inmemory!")
    await layer.send(custom, {"type": "m"})
    assert await layer.receive(custom) == {"type": "m"}
    with pytest.raises(InvalidChannelName):
        await layer.new_channel(prefix="bad prefix")


# groups


async def test_group_add_send_discard(layer: InMemoryChannelLayer) -> None:
    await layer.group_add("chat", "alice")
    await layer.group_add("chat", "bob")
    await layer.group_add("chat", "bob")  # twice: still one membership
    await layer.group_send("chat", {"type": "chat.message", "text": "hi"})
    assert await layer.receive("alice") == {"type": "chat.message", "text": "hi"}
    assert await layer.receive("bob") == {"type": "chat.message", "text": "hi"}
    assert await receive_now(layer, "bob") is None

    await layer.group_discard("chat", "bob")
    await layer.group_discard("chat", "bob")  # not a member any more: no error
    await layer.group_discard("nosuchgroup", "bob")
    await layer.group_send("chat", {"type": "chat.message", "text": "bye"})
    assert (await layer.receive("alice"))["text"] == "bye"
    assert await receive_now(layer, "bob") is None

    await layer.group_discard("chat", "alice")
    assert "chat" not in layer._groups  # empty groups are freed
    await layer.group_send("chat", {"type": "nobody"})  # sending to an empty group is fine
    await layer.group_send("never-created", {"type": "nobody"})


async def test_group_send_skips_full_channel_counts_and_logs() -> None:
    seen: list[tuple[str, str | None]] = []
    layer = InMemoryChannelLayer(capacity=1, on_full=lambda channel, group: seen.append((channel, group)))
    await layer.group_add("room", "slow")
    await layer.group_add("room", "fast")
    await layer.send("slow", {"type": "backlog"})
    with capture_logs() as logs:
        await layer.group_send("room", {"type": "news"})
    assert await layer.receive("fast") == {"type": "news"}
    assert await layer.receive("slow") == {"type": "backlog"}
    assert await receive_now(layer, "slow") is None
    assert layer.full_drops == 1
    assert seen == [("slow", "room")]
    full = [entry for entry in logs if entry["event"] == "layer.channel_full"]
    assert full == [{"event": "layer.channel_full", "log_level": "warning", "channel": "slow", "group": "room", "capacity": 1}]
    # the full channel stays a member: once it drains, it gets group messages again
    await layer.group_send("room", {"type": "later"})
    assert await layer.receive("slow") == {"type": "later"}


async def test_group_send_to_many_members_is_linear() -> None:
    layer = InMemoryChannelLayer()
    members = [f"member{i}" for i in range(10_000)]
    for name in members:
        await layer.group_add("big", name)
    started = time.perf_counter()
    await layer.group_send("big", {"type": "m", "payload": {"n": 1}})
    elapsed = time.perf_counter() - started
    assert all(layer._channels[name].messages for name in members)
    assert await layer.receive("member9999") == {"type": "m", "payload": {"n": 1}}
    assert elapsed < 5  # generous: quadratic work on 10k members would take far longer


# flush / close


async def test_flush_drops_messages_and_groups(layer: InMemoryChannelLayer) -> None:
    await layer.send("c", {"type": "m"})
    await layer.group_add("g", "member")
    await layer.flush()
    assert await receive_now(layer, "c") is None
    await layer.group_send("g", {"type": "m"})
    assert await receive_now(layer, "member") is None


async def test_receiver_waiting_across_flush_still_gets_later_message(layer: InMemoryChannelLayer) -> None:
    waiting = asyncio.ensure_future(layer.receive("c"))
    await asyncio.sleep(0)
    await layer.flush()
    await layer.send("c", {"type": "after"})
    assert await asyncio.wait_for(waiting, 1) == {"type": "after"}


async def test_close(layer: InMemoryChannelLayer) -> None:
    await layer.send("c", {"type": "m"})
    await layer.close()
    assert await receive_now(layer, "c") is None


# Channels parity


async def _scenario(layer: Any, full_error: type[Exception]) -> list[Any]:
    """One sequence of calls; returns what a caller can observe, layer-neutrally."""
    seen: list[Any] = []

    async def attempt(coro: Any) -> Any:
        try:
            result = await coro
        except full_error:
            return "ChannelFull"
        except TypeError:
            return "TypeError"
        return result

    for i in range(4):  # capacity 3: the fourth is refused
        seen.append(("send", i, await attempt(layer.send("q", {"type": "m", "n": i}))))
    seen.append(("recv", await layer.receive("q")))
    seen.append(("send", 9, await attempt(layer.send("q", {"type": "m", "n": 9}))))
    seen.append(("send", 10, await attempt(layer.send("q", {"type": "m", "n": 10}))))
    seen.append(("drain", [await layer.receive("q") for _ in range(3)]))
    seen.append(("empty", await receive_now(layer, "q")))

    await layer.group_add("g", "a")
    await layer.group_add("g", "b")
    for _ in range(3):
        await layer.send("b", {"type": "backlog"})
    seen.append(("group_send", await attempt(layer.group_send("g", {"type": "g1"}))))
    seen.append(("a", await layer.receive("a")))
    seen.append(("b", [await layer.receive("b") for _ in range(3)], await receive_now(layer, "b")))
    await layer.group_discard("g", "a")
    await layer.group_send("g", {"type": "g2"})
    seen.append(("after discard", await receive_now(layer, "a"), await receive_now(layer, "b")))

    specific = await layer.new_channel("proc")
    seen.append(("new_channel", re.sub(r"!.*", "!", specific)))
    await layer.send(specific, {"type": "direct"})
    seen.append(("specific", await layer.receive(specific)))

    await layer.send("exp", {"type": "old"})
    await asyncio.sleep(0.08)
    await layer.send("exp", {"type": "new"})
    seen.append(("expiry", await layer.receive("exp"), await receive_now(layer, "exp")))

    for name in ("ok", "x" * 99, "x" * 100, "bad name", "a!b!c", "p.inmemory!abc"):
        seen.append(("name", len(name), await attempt(layer.send(name, {"type": "m"}))))
    for group in ("g" * 99, "g" * 100, "g!", "has space"):
        seen.append(("group", len(group), await attempt(layer.group_add(group, "ok"))))

    await layer.send("f", {"type": "m"})
    await layer.group_add("fg", "f")
    await layer.flush()
    await layer.group_send("fg", {"type": "m"})
    seen.append(("flushed", await receive_now(layer, "f")))
    return seen


async def test_same_observable_behaviour_as_channels_in_memory_layer() -> None:
    from channels.exceptions import ChannelFull as ChannelsFull
    from channels.layers import InMemoryChannelLayer as ChannelsLayer

    expected = await _scenario(ChannelsLayer(capacity=3, expiry=0.05), ChannelsFull)
    actual = await _scenario(InMemoryChannelLayer(capacity=3, expiry=0.05), ChannelFull)
    assert actual == expected
    # and the scenario did exercise the interesting outcomes
    assert ("send", 3, "ChannelFull") in actual
    assert ("name", 100, "TypeError") in actual and ("name", 99, None) in actual
