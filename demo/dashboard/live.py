"""How a change reaches every open dashboard: one layer group, one event type.

The dashboard's WebSocket consumer (dashboard.consumers) is in the ``dashboard`` group and turns
each ``dashboard.event`` into ``{"kind": ..., "data": ...}`` for the page. Sensor alerts go to a
group of their own, ``alerts``, so something other than the page (a bridge to MQTT, SMS or e-mail)
can subscribe to them alone.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

DASHBOARD_GROUP = "dashboard"
ALERTS_GROUP = "alerts"


def event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "dashboard.event", "kind": kind, "data": data}


def broadcast(kind: str, data: dict[str, Any]) -> None:
    """From sync code (views, sync consumers): every open dashboard shows ``data``."""
    async_to_sync(get_channel_layer().group_send)(DASHBOARD_GROUP, event(kind, data))


async def abroadcast(kind: str, data: dict[str, Any]) -> None:
    await get_channel_layer().group_send(DASHBOARD_GROUP, event(kind, data))
