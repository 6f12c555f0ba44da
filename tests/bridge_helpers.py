"""Hooks and apps named by the bridge tests' YAML (importable from the tests folder, also by the
gateway processes those tests start)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway.layers import get_channel_layer

CALLS: list[dict[str, Any]] = []


def shout(message: dict[str, Any]) -> dict[str, Any]:
    """A sync transform that reshapes: the text in capitals, and a field the template needs."""
    return {**message, "text": str(message["text"]).upper(), "severity": "sev-" + str(message["level"])}


async def only_high(message: dict[str, Any]) -> dict[str, Any] | None:
    """An async transform that filters: anything but level 'high' is dropped on purpose."""
    return message if message.get("level") == "high" else None


def broken(message: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("the transform is broken")


def reading(message: dict[str, Any]) -> dict[str, Any]:
    """MQTT -> group: the payload (bytes) as a number, and the room the topic named."""
    return {"type": "sensor.reading", "room": message["kwargs"]["room"], "celsius": float(message["payload"])}


def on_call(message: dict[str, Any]) -> list[str]:
    CALLS.append(message)
    return ["+447700900456"]


async def admins(message: dict[str, Any]) -> list[str]:
    return ["ops@example.org"]


async def alerts_socket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A WebSocket member of group `alerts`: says `joined` once it is in, then relays every
    group message as JSON text (bytes as text)."""
    layer = get_channel_layer()
    assert layer is not None
    assert (await receive())["type"] == "websocket.connect"
    channel = await layer.new_channel()
    await layer.group_add("alerts", channel)
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": "joined"})
    from_client = asyncio.ensure_future(receive())
    try:
        while True:
            from_layer = asyncio.ensure_future(layer.receive(channel))
            done, _ = await asyncio.wait([from_client, from_layer], return_when=asyncio.FIRST_COMPLETED)
            if from_client in done:
                from_layer.cancel()
                return
            message = from_layer.result()
            text = json.dumps({k: v.decode() if isinstance(v, bytes) else v for k, v in message.items()})
            await send({"type": "websocket.send", "text": text})
    finally:
        from_client.cancel()
        await layer.group_discard("alerts", channel)


def unpackable(message: dict[str, Any]) -> dict[str, Any]:
    """A message no Redis layer can carry (a set is not msgpack-serialisable)."""
    return {"type": "sensor.reading", "rooms": {message["kwargs"]["room"]}}
