"""An e-mail to support@ becomes a ticket on the dashboard and gets a reply with its number."""

from typing import Any

from dashboard.live import broadcast
from django.db import transaction

from gateway.consumers import SyncEmailConsumer

from .models import Ticket


class TicketConsumer(SyncEmailConsumer):
    def message(self, msg: dict[str, Any]) -> None:
        user = self.scope.get("user")
        # The row, and the acknowledgement sent through the relay, succeed or fail together: if the
        # relay is down the sender's server is told 451 and tries again later, with no ticket yet.
        with transaction.atomic():
            ticket = Ticket.objects.create(
                sender=msg["from"]["address"], subject=msg.get("subject") or "", body=msg.get("text") or "",
                user=getattr(user, "username", "") or "", message_id=msg.get("message_id") or "")
            self.reply(f"Your ticket number is {ticket.pk}.")
        broadcast("ticket", ticket.as_event())
