"""The dashboard's live feed: a plain Channels JSON consumer in two groups (read-only)."""

from __future__ import annotations

from typing import Any, ClassVar

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .live import ALERTS_GROUP, DASHBOARD_GROUP


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    groups: ClassVar[list[str]] = [DASHBOARD_GROUP, ALERTS_GROUP]   # Channels joins them on connect, leaves on disconnect

    async def dashboard_event(self, event: dict[str, Any]) -> None:
        await self.send_json({"kind": event["kind"], "data": event["data"]})

    async def sensor_alert(self, event: dict[str, Any]) -> None:
        await self.send_json({"kind": "alert", "data": {k: event[k] for k in ("device", "celsius", "threshold", "at")}})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The feed is one-way: what a page sends is ignored (actions go through the views, with CSRF)."""
