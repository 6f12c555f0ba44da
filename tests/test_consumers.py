"""Django-free consumers, driven directly as ASGI apps (queues for receive/send, no server), or
through ``gateway.testing``'s ``WebsocketCommunicator`` where the gateway's routing and event
checks belong in the picture."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.consumers import (
    AsyncConsumer,
    AsyncJsonWebsocketConsumer,
    AsyncWebsocketConsumer,
    DenyConnection,
    StopConsumer,
)
from gateway.layers import get_channel_layer, set_channel_layer
from gateway.layers.memory import InMemoryChannelLayer
from gateway.routing import Router, path
from gateway.testing import WebsocketCommunicator

WS_SCOPE = {"type": "websocket", "path": "/ws/chat/lobby/", "url_route": {"kwargs": {"room": "lobby"}}}


class Peer:
    """The server side of one ASGI instance: feeds ``receive`` and collects ``send``."""

    def __init__(self, app: Any, scope: dict[str, Any] | None = None) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.ensure_future(app(dict(scope or WS_SCOPE), self.inbox.get, self.outbox.put))

    async def put(self, message: dict[str, Any]) -> None:
        await self.inbox.put(message)

    async def get(self, timeout: float = 1) -> dict[str, Any]:
        return await asyncio.wait_for(self.outbox.get(), timeout)

    async def nothing_sent(self, timeout: float = 0.05) -> bool:
        await asyncio.sleep(timeout)
        return self.outbox.empty()

    async def finished(self, timeout: float = 1) -> None:
        await asyncio.wait_for(self.task, timeout)

    async def connect(self) -> dict[str, Any]:
        await self.put({"type": "websocket.connect"})
        return await self.get()


@pytest.fixture
def layer() -> Iterator[InMemoryChannelLayer]:
    previous = get_channel_layer()
    layer = InMemoryChannelLayer()
    set_channel_layer(layer)
    yield layer
    set_channel_layer(previous)


@pytest.fixture
def no_layer() -> Iterator[None]:
    previous = get_channel_layer()
    set_channel_layer(None)
    yield
    set_channel_layer(previous)


def members(layer: InMemoryChannelLayer, group: str) -> set[str]:
    return set(layer._groups.get(group, {}))


# AsyncConsumer


class Echo(AsyncConsumer):
    prefix = "echo"

    async def custom_ping(self, message: dict[str, Any]) -> None:
        await self.send({"type": "custom.pong", "text": f"{self.prefix}:{message['text']}", "path": self.scope["path"]})

    async def custom_stop(self, message: dict[str, Any]) -> None:
        raise StopConsumer()


async def test_dispatch_by_type_and_stop(no_layer: None) -> None:
    peer = Peer(Echo.as_asgi(prefix="hey"))
    await peer.put({"type": "custom.ping", "text": "one"})
    assert await peer.get() == {"type": "custom.pong", "text": "hey:one", "path": "/ws/chat/lobby/"}
    await peer.put({"type": "custom.ping", "text": "two"})
    assert (await peer.get())["text"] == "hey:two"
    await peer.put({"type": "custom.stop"})
    await peer.finished()
    assert peer.task.result() is None


async def test_unknown_type_raises(no_layer: None) -> None:
    peer = Peer(Echo.as_asgi())
    await peer.put({"type": "no.such.thing"})
    with pytest.raises(ValueError, match="No handler for message type no.such.thing"):
        await peer.finished()


@pytest.mark.parametrize(
    ("message", "error"),
    [({"type": "_private"}, "leading underscore"), ({"text": "x"}, "no 'type' key")],
)
async def test_malformed_types_raise(no_layer: None, message: dict[str, Any], error: str) -> None:
    peer = Peer(Echo.as_asgi())
    await peer.put(message)
    with pytest.raises(ValueError, match=error):
        await peer.finished()


async def test_as_asgi_like_channels() -> None:
    app = Echo.as_asgi(prefix="p")
    assert app.consumer_class is Echo  # type: ignore[attr-defined]
    assert app.consumer_initkwargs == {"prefix": "p"}  # type: ignore[attr-defined]
    assert app.__name__ == "Echo"
    assert Echo.prefix == "echo"  # initkwargs go on the instance, not the class
    with pytest.raises(TypeError, match="'nonsense', which is not an attribute"):
        await Echo.as_asgi(nonsense=1)({"type": "websocket"}, asyncio.Queue().get, asyncio.Queue().put)


async def test_new_instance_per_scope(layer: InMemoryChannelLayer) -> None:
    instances: list[AsyncConsumer] = []

    class Recorder(AsyncConsumer):
        async def custom_ping(self, message: dict[str, Any]) -> None:
            instances.append(self)
            raise StopConsumer()

    app = Recorder.as_asgi()
    for _ in range(2):
        peer = Peer(app)
        await peer.put({"type": "custom.ping"})
        await peer.finished()
    assert len(instances) == 2 and instances[0] is not instances[1]
    assert instances[0].channel_name != instances[1].channel_name


async def test_layer_messages_are_dispatched_and_listener_cancelled(layer: InMemoryChannelLayer) -> None:
    names: list[str] = []

    class Listener(AsyncConsumer):
        async def custom_hello(self, message: dict[str, Any]) -> None:
            names.append(self.channel_name)
            await self.send({"type": "custom.ready"})

        async def worker_job(self, message: dict[str, Any]) -> None:
            await self.send({"type": "custom.done", "n": message["n"]})

        async def custom_stop(self, message: dict[str, Any]) -> None:
            raise StopConsumer()

    peer = Peer(Listener.as_asgi())
    await peer.put({"type": "custom.hello"})
    assert await peer.get() == {"type": "custom.ready"}
    (channel,) = names
    assert channel.startswith("specific.inmemory!")
    await layer.send(channel, {"type": "worker.job", "n": 7})
    assert await peer.get() == {"type": "custom.done", "n": 7}
    await peer.put({"type": "custom.stop"})
    await peer.finished()
    # the receive on the consumer's channel was cancelled: nothing waits on it any more
    assert channel not in layer._channels


async def test_class_attribute_layer_overrides_the_gateway_layer(layer: InMemoryChannelLayer) -> None:
    private = InMemoryChannelLayer()

    class Private(AsyncWebsocketConsumer):
        channel_layer = private
        groups = ["mine"]

    peer = Peer(Private.as_asgi())
    await peer.connect()
    assert len(members(private, "mine")) == 1
    assert members(layer, "mine") == set()
    await peer.put({"type": "websocket.disconnect", "code": 1000})
    await peer.finished()
    assert members(private, "mine") == set()


async def test_without_layer_only_asgi_events(no_layer: None) -> None:
    seen: list[Any] = []

    class Plain(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            seen.append((self.channel_layer, self.channel_name))
            await self.accept()

    peer = Peer(Plain.as_asgi())
    assert await peer.connect() == {"type": "websocket.accept", "subprotocol": None}
    assert seen == [(None, None)]
    await peer.put({"type": "websocket.disconnect", "code": 1000})
    await peer.finished()


async def test_groups_without_layer_is_a_clear_error(no_layer: None) -> None:
    class Grouped(AsyncWebsocketConsumer):
        groups = ["room"]

    peer = Peer(Grouped.as_asgi())
    await peer.put({"type": "websocket.connect"})
    with pytest.raises(RuntimeError, match=r"has groups \['room'\] but there is no channel layer"):
        await peer.finished()


# AsyncWebsocketConsumer


class Chat(AsyncWebsocketConsumer):
    groups = ["lobby"]
    closed_with: list[int] = []

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data == "bye":
            await self.send(text_data="closing", close=True)
        elif text_data is not None:
            await self.channel_layer.group_send("lobby", {"type": "chat.message", "text": text_data})
        else:
            await self.send(bytes_data=bytes_data[::-1])

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        self.closed_with.append(code)


async def test_websocket_accept_groups_and_group_send_from_outside(layer: InMemoryChannelLayer) -> None:
    alice, bob = Peer(Chat.as_asgi()), Peer(Chat.as_asgi())
    assert await alice.connect() == {"type": "websocket.accept", "subprotocol": None}
    assert await bob.connect() == {"type": "websocket.accept", "subprotocol": None}
    assert len(members(layer, "lobby")) == 2

    # from outside any consumer (a view, a cron job): the gateway's layer
    await get_channel_layer().group_send("lobby", {"type": "chat.message", "text": "announcement"})  # type: ignore[union-attr]
    assert await alice.get() == {"type": "websocket.send", "text": "announcement"}
    assert await bob.get() == {"type": "websocket.send", "text": "announcement"}

    # from one consumer to the group
    await alice.put({"type": "websocket.receive", "text": "hello"})
    assert await alice.get() == {"type": "websocket.send", "text": "hello"}
    assert await bob.get() == {"type": "websocket.send", "text": "hello"}

    await bob.put({"type": "websocket.receive", "bytes": b"abc"})
    assert await bob.get() == {"type": "websocket.send", "bytes": b"cba"}

    await bob.put({"type": "websocket.disconnect", "code": 1001})
    await bob.finished()
    assert len(members(layer, "lobby")) == 1
    await layer.group_send("lobby", {"type": "chat.message", "text": "after"})
    assert await alice.get() == {"type": "websocket.send", "text": "after"}

    await alice.put({"type": "websocket.receive", "text": "bye"})
    assert await alice.get() == {"type": "websocket.send", "text": "closing"}
    assert await alice.get() == {"type": "websocket.close"}
    await alice.put({"type": "websocket.disconnect", "code": 1000})
    await alice.finished()
    assert members(layer, "lobby") == set()
    assert Chat.closed_with[-2:] == [1001, 1000]
    assert Chat.groups == ["lobby"]  # instances never mutate the class's list


async def test_accept_with_subprotocol_headers_and_close_with_code(no_layer: None) -> None:
    class Custom(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            await self.accept(subprotocol="chat.v2", headers=[(b"x-a", b"1")])

        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
            await self.close(code=4000, reason="done")

    communicator = WebsocketCommunicator(Custom.as_asgi(), "/ws/")
    assert await communicator.connect() == (True, "chat.v2")
    assert communicator.response_headers == [(b"x-a", b"1")]
    await communicator.send_to(text_data="x")
    assert await communicator.receive_output() == {"type": "websocket.close", "code": 4000, "reason": "done"}
    with pytest.raises(ValueError, match="one of bytes_data or text_data"):
        await Custom().send()


async def test_deny_connection_closes(no_layer: None) -> None:
    class Denied(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            raise DenyConnection()

    assert await WebsocketCommunicator(Denied.as_asgi(), "/ws/").connect() == (False, 1000)


async def test_groups_left_after_exception_and_cancellation(layer: InMemoryChannelLayer) -> None:
    class Fragile(AsyncWebsocketConsumer):
        groups = ["declared"]

        async def connect(self) -> None:
            # joined by user code, as the Channels tutorial does
            await self.channel_layer.group_add(f"room.{self.scope['url_route']['kwargs']['room']}", self.channel_name)
            await self.accept()

        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
            raise RuntimeError("handler bug")

    crashing, cancelled = Peer(Fragile.as_asgi()), Peer(Fragile.as_asgi())
    await crashing.connect()
    await cancelled.connect()
    assert len(members(layer, "declared")) == len(members(layer, "room.lobby")) == 2

    await crashing.put({"type": "websocket.receive", "text": "boom"})
    with pytest.raises(RuntimeError, match="handler bug"):
        await crashing.finished()
    assert len(members(layer, "declared")) == len(members(layer, "room.lobby")) == 1

    cancelled.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled.finished()
    assert members(layer, "declared") == members(layer, "room.lobby") == set()
    assert not any(state.waiters for state in layer._channels.values())


# AsyncJsonWebsocketConsumer


class JsonEcho(AsyncJsonWebsocketConsumer):
    groups = ["json"]

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        await self.send_json({"echo": content, "room": self.scope["url_route"]["kwargs"]["room"]})

    async def notify(self, event: dict[str, Any]) -> None:
        await self.send_json(event["payload"], close=event.get("close", False))


async def test_json_round_trip(layer: InMemoryChannelLayer) -> None:
    # routed by a Python router, as a project's routing.py would: the room comes from the path
    communicator = WebsocketCommunicator(Router([path("/ws/chat/<room>/", JsonEcho.as_asgi())]), "/ws/chat/lobby/")
    assert (await communicator.connect())[0]
    await communicator.send_json_to({"n": [1, 2], "s": "é"})
    assert await communicator.receive_json_from() == {"echo": {"n": [1, 2], "s": "é"}, "room": "lobby"}

    await layer.group_send("json", {"type": "notify", "payload": {"alert": True}, "close": True})
    assert await communicator.receive_json_from() == {"alert": True}
    assert await communicator.receive_output() == {"type": "websocket.close"}
    await communicator.disconnect()
    assert members(layer, "json") == set()


async def test_json_consumer_refuses_binary_frames(layer: InMemoryChannelLayer) -> None:
    peer = Peer(JsonEcho.as_asgi())
    await peer.connect()
    await peer.put({"type": "websocket.receive", "bytes": b"{}"})
    with pytest.raises(ValueError, match="No text section"):
        await peer.finished()
    assert members(layer, "json") == set()


async def test_json_codec_hooks_are_async_classmethods_like_channels(no_layer: None) -> None:
    class Custom(AsyncJsonWebsocketConsumer):
        @classmethod
        async def encode_json(cls, content: Any) -> str:
            return json.dumps(content, sort_keys=True, separators=(",", ":"))

    assert await AsyncJsonWebsocketConsumer.decode_json('{"a": 1}') == {"a": 1}
    peer = Peer(Custom.as_asgi())
    await peer.connect()
    await peer.put({"type": "websocket.receive", "text": "{}"})
    assert await peer.nothing_sent()  # receive_json's default does nothing
    consumer = Custom()
    consumer.base_send = peer.outbox.put
    await consumer.send_json({"b": 2, "a": 1})
    assert (await peer.get())["text"] == '{"a":1,"b":2}'


# A Channels consumer, unchanged


def _django_settings() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})


async def test_channels_consumer_runs_unchanged(layer: InMemoryChannelLayer) -> None:
    _django_settings()
    from channels.generic.websocket import AsyncWebsocketConsumer as ChannelsConsumer

    class Upper(ChannelsConsumer):
        channel_layer_alias = "gateway-tests-no-such-alias"  # None even if some settings define layers

        async def receive(self, text_data=None, bytes_data=None):  # type: ignore[no-untyped-def]
            await self.send(text_data=text_data.upper())

    peer = Peer(Upper.as_asgi())
    assert await peer.connect() == {"type": "websocket.accept", "subprotocol": None}
    await peer.put({"type": "websocket.receive", "text": "shout"})
    assert await peer.get() == {"type": "websocket.send", "text": "SHOUT"}
    await peer.put({"type": "websocket.disconnect", "code": 1000})
    await peer.finished(timeout=5)


async def test_channels_consumer_with_gateway_layer(layer: InMemoryChannelLayer) -> None:
    """A Channels consumer given the gateway's layer joins groups and receives group_send."""
    _django_settings()
    from channels.generic.websocket import AsyncWebsocketConsumer as ChannelsConsumer
    from channels.layers import channel_layers

    alias = "gateway-tests"
    channel_layers.set(alias, layer)
    try:

        class Room(ChannelsConsumer):
            channel_layer_alias = alias
            groups = ["channels-room"]

            async def room_event(self, event):  # type: ignore[no-untyped-def]
                await self.send(text_data=event["text"])

        peer = Peer(Room.as_asgi())
        await peer.connect()
        assert len(members(layer, "channels-room")) == 1
        await layer.group_send("channels-room", {"type": "room.event", "text": "via gateway layer"})
        assert await peer.get(timeout=5) == {"type": "websocket.send", "text": "via gateway layer"}
        await peer.put({"type": "websocket.disconnect", "code": 1000})
        await peer.finished(timeout=5)
        assert members(layer, "channels-room") == set()
    finally:
        channel_layers.backends.pop(alias, None)
