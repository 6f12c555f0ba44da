"""A chat room for tests and benchmarks of the layer: every socket in a room shares one group.

Clients send ``{"text", "name"}`` and receive ``{"type": "chat", "name", "text"}``; anything in
the process (or another process on the same Redis layer) reaches a room with
``group_send("chat.<room>", {"type": "chat.message", "name": ..., "text": ...})``.
"""

from __future__ import annotations

from typing import Any

from gateway.consumers import AsyncJsonWebsocketConsumer


class ChatRoom(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.groups = [f"chat.{self.room}"]
        await self.channel_layer.group_add(self.groups[0], self.channel_name)
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if isinstance(content, dict) and isinstance(content.get("text"), str):
            await self.channel_layer.group_send(
                f"chat.{self.room}", {"type": "chat.message", "name": str(content.get("name") or "anonymous"), "text": content["text"]})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "chat", "name": event["name"], "text": event["text"]})
