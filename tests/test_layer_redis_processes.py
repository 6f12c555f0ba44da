"""The Redis layer across processes, and as Django's CHANNEL_LAYERS backend with a Channels consumer.

Every process here is a real Python subprocess sharing one real redis-server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_layer_redis_helpers import RedisServer, finish, read_line, run_script

from gateway.layers.redis import RedisChannelLayer

pytestmark = pytest.mark.timeout(60)


MEMBER = """
    import asyncio, json, sys
    from gateway.layers.redis import RedisChannelLayer

    def say(**kw):
        print(json.dumps(kw), flush=True)

    async def main(url, prefix, name):
        layer = RedisChannelLayer(hosts=[url], prefix=prefix)
        channel = await layer.new_channel()
        await layer.group_add("shared", channel)
        say(ready=name, channel=channel)
        got = []
        while len(got) < 3:
            message = await asyncio.wait_for(layer.receive(channel), 20)
            got.append(message["text"])
            if message["text"] == "from-parent":
                await layer.group_send("shared", {"type": "chat", "text": "from-" + name})
        say(name=name, got=sorted(got))
        await layer.close()

    asyncio.run(main(*sys.argv[1:]))
"""


async def test_two_processes_share_a_group(tmp_path: Path, redis_server: RedisServer, prefix: str) -> None:
    procs = [run_script(tmp_path, "member.py", MEMBER, redis_server.url, prefix, name) for name in ("a", "b")]
    try:
        ready = [await read_line(p) for p in procs]
        assert {r["ready"] for r in ready} == {"a", "b"}
        parent = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
        await parent.group_send("shared", {"type": "chat", "text": "from-parent"})
        results = [await read_line(p) for p in procs]
        await parent.close()
        # each process got the parent's message and each member's reply, its own included
        for r in results:
            assert r["got"] == ["from-a", "from-b", "from-parent"]
    finally:
        for p in procs:
            finish(p)


WORKER = """
    import asyncio, json, sys
    from gateway.layers.redis import RedisChannelLayer

    async def main(url, prefix):
        layer = RedisChannelLayer(hosts=[url], prefix=prefix)
        got = []
        print(json.dumps({"ready": True}), flush=True)
        while True:
            message = await layer.receive("mqtt.publish")
            if message.get("stop"):
                break
            got.append(message["n"])
        print(json.dumps({"got": got}), flush=True)
        await layer.close()

    asyncio.run(main(*sys.argv[1:]))
"""


async def test_outbound_channel_is_consumed_by_exactly_one_process(tmp_path: Path, redis_server: RedisServer, prefix: str) -> None:
    procs = [run_script(tmp_path, "worker.py", WORKER, redis_server.url, prefix) for _ in range(3)]
    try:
        for p in procs:
            await read_line(p)
        sender = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix, capacity=1000)
        await asyncio.sleep(0.3)  # let every worker block on the channel
        for n in range(60):
            await sender.send("mqtt.publish", {"type": "mqtt.publish", "n": n})
        await asyncio.sleep(0.5)
        for _ in procs:
            await sender.send("mqtt.publish", {"type": "mqtt.publish", "stop": True})
        results = [(await read_line(p))["got"] for p in procs]
        await sender.close()
        everything = [n for got in results for n in got]
        assert sorted(everything) == list(range(60))  # each exactly once
        assert sum(1 for got in results if got) >= 2  # and the work was actually shared
    finally:
        for p in procs:
            finish(p)


DJANGO = """
    import asyncio, json, sys
    import django
    from django.conf import settings

    url, prefix = sys.argv[1:]
    settings.configure(
        SECRET_KEY="test", INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={"default": {
            "BACKEND": "gateway.layers.redis.RedisChannelLayer",
            "CONFIG": {"hosts": [url], "prefix": prefix, "capacity": 50, "expiry": 30},
        }},
    )
    django.setup()

    from asgiref.sync import async_to_sync
    from channels.generic.websocket import AsyncJsonWebsocketConsumer
    from channels.layers import get_channel_layer
    from channels.testing import WebsocketCommunicator

    class Chat(AsyncJsonWebsocketConsumer):
        async def connect(self):
            await self.channel_layer.group_add("room", self.channel_name)
            await self.accept()

        async def disconnect(self, code):
            await self.channel_layer.group_discard("room", self.channel_name)

        async def receive_json(self, content):
            await self.channel_layer.group_send("room", {"type": "chat.message", "text": content["text"]})

        async def chat_message(self, event):
            await self.send_json({"text": event["text"]})

    out = {}

    async def main():
        layer = get_channel_layer()
        out["backend"] = type(layer).__module__ + "." + type(layer).__name__
        out["capacity"] = layer.capacity
        one = WebsocketCommunicator(Chat.as_asgi(), "/ws/")
        two = WebsocketCommunicator(Chat.as_asgi(), "/ws/")
        assert (await one.connect())[0] and (await two.connect())[0]
        await one.send_json_to({"text": "hello"})
        out["consumer_group_send"] = [await one.receive_json_from(5), await two.receive_json_from(5)]
        await layer.group_send("room", {"type": "chat.message", "text": "from a view"})
        out["outside_group_send"] = [await one.receive_json_from(5), await two.receive_json_from(5)]
        await two.disconnect()
        await layer.group_send("room", {"type": "chat.message", "text": "after leave"})
        out["after_leave"] = [await one.receive_json_from(5), await two.receive_nothing(0.3)]
        await one.disconnect()

    asyncio.run(main())
    # sync code (a Django view, a management command) reaches the same layer through async_to_sync
    async_to_sync(get_channel_layer().send)("jobs", {"type": "job", "n": 1})
    out["sync_send_then_receive"] = asyncio.run(get_channel_layer().receive("jobs"))
    print(json.dumps(out), flush=True)
"""


async def test_django_channel_layers_backend_with_a_consumer(tmp_path: Path, redis_server: RedisServer, prefix: str) -> None:
    import channels  # noqa: F401 - a dev dependency: fail loudly if missing
    proc = run_script(tmp_path, "django_app.py", DJANGO, redis_server.url, prefix)
    try:
        out = await read_line(proc, timeout=30)
    finally:
        finish(proc)
    assert out["backend"] == "gateway.layers.redis.RedisChannelLayer" and out["capacity"] == 50
    assert out["consumer_group_send"] == [{"text": "hello"}, {"text": "hello"}]
    assert out["outside_group_send"] == [{"text": "from a view"}, {"text": "from a view"}]
    assert out["after_leave"] == [{"text": "after leave"}, True]
    assert out["sync_send_then_receive"] == {"type": "job", "n": 1}


async def test_gateway_from_yaml_runs_on_the_redis_layer(redis_server: RedisServer, prefix: str) -> None:
    """`layer: {backend: redis, url: ...}` in YAML: a chat room's groups live in Redis."""
    import websockets

    from gateway import Gateway
    from gateway.layers import get_channel_layer

    gw = Gateway.from_text(f"""
layer: {{backend: redis, url: "{redis_server.url}", prefix: {prefix}, capacity: 20}}
adapters:
  http: {{listen: "127.0.0.1:0"}}
routes:
  websocket:
    - {{path: "/ws/chat/<room>/", app: "testapps.chat:ChatRoom", name: chat}}
""")
    async with gw:
        layer = get_channel_layer()
        assert isinstance(layer, RedisChannelLayer) and layer.capacity == 20
        url = f"ws://{gw.addresses['http'][0]}/ws/chat/lobby/"
        async with websockets.connect(url) as one, websockets.connect(url) as two:
            await one.send(json.dumps({"text": "hi", "name": "ann"}))
            for ws in (one, two):
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "chat", "name": "ann", "text": "hi"}
            # another process (here: a second layer instance) reaches the same sockets
            other = RedisChannelLayer(hosts=[redis_server.url], prefix=prefix)
            await other.group_send("chat.lobby", {"type": "chat.message", "name": "view", "text": "from elsewhere"})
            for ws in (one, two):
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["text"] == "from elsewhere"
            await other.close()
    assert get_channel_layer() is None and layer._state is None  # closed with the gateway
