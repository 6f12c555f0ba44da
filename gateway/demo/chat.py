"""The demo chat room: every socket in a room shares one group on the channel layer."""

from __future__ import annotations

from typing import Any

from gateway.consumers import AsyncJsonWebsocketConsumer

FEED_GROUP = "demo"  # other protocols' demo consumers group_send here
MAX_TEXT = 2000


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        self.room = self.scope["url_route"]["kwargs"]["room"]
        self.groups = [f"chat.{self.room}", FEED_GROUP]
        for group in self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """A frame that is not JSON gets an error frame; the socket stays open."""
        try:
            content = await self.decode_json(text_data) if text_data else None
        except ValueError:
            content = None
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        text = content.get("text") if isinstance(content, dict) else None
        if not isinstance(text, str) or not text.strip():
            await self.send_json({"type": "error", "error": "send {\"text\": \"...\"}"})
            return
        name = str(content.get("name") or "anonymous")[:40]
        await self.channel_layer.group_send(
            f"chat.{self.room}", {"type": "chat.message", "name": name, "text": text[:MAX_TEXT]}
        )

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"type": "chat", "name": event["name"], "text": event["text"]})

    async def demo_event(self, event: dict[str, Any]) -> None:
        """A message another protocol's demo consumer forwarded (MQTT reading, e-mail, ...)."""
        await self.send_json({"type": "feed", "source": event.get("source", "?"), "text": event.get("text", "")})
