"""The health endpoint reports the channel layer: degraded while Redis is away, ok when it is back."""

from __future__ import annotations

import asyncio

import httpx
from test_layer_redis_helpers import RedisServer

from gateway import Gateway


async def test_health_shows_the_layer_down_while_redis_is_down(own_redis: RedisServer):
    gw = Gateway.from_text(f"""
layer: {{backend: redis, hosts: ["{own_redis.url}"], prefix: health}}
adapters:
  http: {{listen: "127.0.0.1:0"}}
""")
    async with gw, httpx.AsyncClient(base_url=f"http://{gw.addresses['http'][0]}") as client:

        async def layer_status() -> str:
            report = (await client.get("/healthz")).json()
            return report["components"]["layer"]["status"], report["status"]

        assert await layer_status() == ("ok", "ok")
        # Something has to use the layer for it to notice; a receive loop is what a consumer runs.
        listener = asyncio.ensure_future(gw.layer.receive("health.probe"))
        own_redis.stop()
        states: list[tuple[str, str]] = []

        async def down() -> bool:  # not ready: the health endpoint answers 503
            states.append(await layer_status())
            return states[-1] == ("down", "down")

        for _ in range(200):
            if await down():
                break
            await asyncio.sleep(0.05)
        assert states[-1] == ("down", "down"), states[-5:]
        assert (await client.get("/healthz")).status_code == 503
        own_redis.start()
        for _ in range(200):
            if await layer_status() == ("ok", "ok"):
                break
            await asyncio.sleep(0.05)
        assert await layer_status() == ("ok", "ok")
        listener.cancel()
