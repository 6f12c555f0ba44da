"""A text to our number lands in the dashboard's SMS inbox and gets an immediate acknowledgement."""

from typing import Any

from dashboard.live import broadcast
from django.db import transaction

from gateway.consumers import SyncSmsConsumer

from .models import Text

ACKNOWLEDGEMENT = "Thanks, we got your message (#{id}). Someone from support will answer here."


class TextConsumer(SyncSmsConsumer):
    def message(self, body: str, **info: Any) -> None:
        # If the acknowledgement cannot be sent the webhook fails, the provider delivers the text
        # again, and the rolled-back row is not stored twice.
        with transaction.atomic():
            received = Text.objects.create(number=info["from"], direction=Text.RECEIVED, body=body,
                                           message_id=info.get("message_id") or "")
            ack = ACKNOWLEDGEMENT.format(id=received.pk)
            self.reply(ack)
            sent = Text.objects.create(number=info["from"], direction=Text.SENT, body=ack, author="auto-reply")
        broadcast("text", received.as_event())
        broadcast("text", sent.as_event())
