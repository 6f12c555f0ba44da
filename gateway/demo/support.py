"""The e-mail part of the demo: mail to support@example.com shows up on the demo page."""

from __future__ import annotations

from typing import Any

from gateway.consumers import AsyncEmailConsumer

from .chat import FEED_GROUP


class SupportInbox(AsyncEmailConsumer):
    """Forwards each message's sender and subject to the page; returning acknowledges it (250)."""

    async def message(self, msg: dict[str, Any]) -> None:
        sender = (msg.get("from") or {}).get("address") or self.scope.get("mail_from") or "?"
        subject = msg.get("subject") or "(no subject)"
        await self.channel_layer.group_send(
            FEED_GROUP, {"type": "demo.event", "source": "email", "text": f"{sender}: {subject}"}
        )
