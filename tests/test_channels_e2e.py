"""Channels' own consumer classes run unchanged behind the gateway, over a real WebSocket."""

from __future__ import annotations

import json

import django
import websockets
from django.conf import settings

from gateway import Gateway


def ensure_django() -> None:
    if not settings.configured:
        settings.configure(CHANNEL_LAYERS={})
        django.setup()


async def test_channels_consumer_over_a_real_websocket():
    ensure_django()
    gw = Gateway.from_text("""
adapters:
  http: {listen: "127.0.0.1:0"}
routes:
  websocket:
    - {path: "/ws/<name>/", app: "testapps.channels_apps:ChannelsEcho", name: echo}
""")
    async with gw:
        url = f"ws://{gw.addresses['http'][0]}/ws/alice/"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"n": 1}))
            reply = json.loads(await ws.recv())
    assert reply == {"echo": {"n": 1}, "name": "alice", "route": "echo"}
