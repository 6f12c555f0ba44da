"""The SMS part of the demo: a text shows up on the page and gets an answer."""

from __future__ import annotations

from typing import Any

from gateway.consumers import AsyncSmsConsumer

from .chat import FEED_GROUP


class TextInbox(AsyncSmsConsumer):
    async def message(self, body: str, **info: Any) -> None:
        await self.channel_layer.group_send(FEED_GROUP, {"type": "demo.event", "source": "sms", "text": f"{info['from']}: {body}"})
        await self.reply(f"Thanks, {len(body)} characters received.")
