"""Channels' ``get_channel_layer()`` with our backend behaves as with channels_redis, run the way
Channels users run it: one script, two backends, the same observations."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from test_layer_redis_helpers import RedisServer, finish, read_line, run_script

pytestmark = pytest.mark.timeout(90)

SCRIPT = """
    import asyncio, json, sys
    import django
    from django.conf import settings

    backend, url, prefix = sys.argv[1:]
    settings.configure(
        SECRET_KEY="test", INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS={
            "default": {"BACKEND": backend, "CONFIG": {"hosts": [url], "prefix": prefix, "capacity": 5}},
            "short": {"BACKEND": backend, "CONFIG": {"hosts": [url], "prefix": prefix + "s", "expiry": 1, "capacity": 2}},
        },
    )
    django.setup()

    from asgiref.sync import async_to_sync
    from channels.exceptions import ChannelFull
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    out = {"same_object": get_channel_layer() is layer}

    def say(**kw):
        print(json.dumps(kw), flush=True)

    async def within(awaitable, timeout=3):
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError:
            return "nothing"

    async def one_loop(i):
        # what a pytest-asyncio test does: its own loop, the shared layer, never close()
        ch = await layer.new_channel()
        await layer.group_add("loops", ch)
        await layer.group_send("loops", {"type": "g", "i": i})
        got = (await within(layer.receive(ch)))["i"]
        await layer.group_discard("loops", ch)
        await layer.send("plain", {"type": "p", "i": i})
        return [got, (await within(layer.receive("plain")))["i"]]

    out["loops"] = [asyncio.run(one_loop(i)) for i in range(15)]

    # sync code: every call on a fresh loop
    name = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(name, {"type": "sync", "n": 1})
    out["sync_own_channel"] = async_to_sync(within)(layer.receive(name))
    async_to_sync(layer.group_add)("sync-group", name)
    async_to_sync(layer.group_send)("sync-group", {"type": "sync.group"})
    out["sync_group"] = async_to_sync(within)(layer.receive(name))

    # another process sends to this one (the parent, with its own layer)
    say(channel=name)
    sys.stdin.readline()
    out["from_other_process"] = [async_to_sync(within)(layer.receive(name)) for _ in range(3)]

    # capacity
    def fill(target, n):
        results = []
        for i in range(n):
            try:
                async_to_sync(layer.send)(target, {"type": "f", "i": i})
                results.append("ok")
            except ChannelFull:
                results.append("full")
        return results

    out["capacity_normal"] = fill("cap", 6)
    out["capacity_own"] = fill(async_to_sync(layer.new_channel)(), 6)

    # expiry (the "short" alias)
    short = get_channel_layer("short")

    async def expiry():
        ch = await short.new_channel()
        await short.send(ch, {"type": "old"})
        await short.send("plain-short", {"type": "old"})
        await asyncio.sleep(1.3)
        await short.send("plain-short", {"type": "new"})
        return [await within(short.receive(ch), 0.3), await within(short.receive("plain-short"))]

    out["expiry"] = asyncio.run(expiry())

    # flush
    async def flush():
        ch = await layer.new_channel()
        await layer.group_add("flushed", ch)
        await layer.send("flush-me", {"type": "x"})
        await layer.flush()
        await layer.group_send("flushed", {"type": "after"})
        return [await within(layer.receive("flush-me"), 0.3), await within(layer.receive(ch), 0.3)]

    out["flush"] = asyncio.run(flush())
    say(**out)
"""

BACKENDS = {"gateway": "gateway.layers.redis.RedisChannelLayer", "channels_redis": "channels_redis.core.RedisChannelLayer"}


async def observe(tmp_path: Path, server: RedisServer, backend: str) -> dict[str, Any]:
    import importlib

    prefix = "c" + secrets.token_hex(4)
    module, _, name = backend.rpartition(".")
    other = getattr(importlib.import_module(module), name)(hosts=[server.url], prefix=prefix, capacity=5)
    proc = run_script(tmp_path, "channels_user.py", SCRIPT, backend, server.url, prefix)
    try:
        channel = (await read_line(proc, 60))["channel"]
        for n in range(3):
            await other.send(channel, {"type": "remote", "n": n})
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        return await read_line(proc, 60)
    finally:
        finish(proc)
        if hasattr(other, "close"):
            await other.close()


async def test_get_channel_layer_behaves_as_with_channels_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    theirs = await observe(tmp_path, redis_server, BACKENDS["channels_redis"])
    ours = await observe(tmp_path, redis_server, BACKENDS["gateway"])
    assert ours == theirs
    assert ours == {
        "same_object": True,
        "loops": [[i, i] for i in range(15)],
        "sync_own_channel": {"type": "sync", "n": 1},
        "sync_group": {"type": "sync.group"},
        "from_other_process": [{"type": "remote", "n": n} for n in range(3)],
        "capacity_normal": ["ok"] * 5 + ["full"],
        "capacity_own": ["ok"] * 5 + ["full"],
        "expiry": ["nothing", {"type": "new"}],
        "flush": ["nothing", "nothing"],
    }
