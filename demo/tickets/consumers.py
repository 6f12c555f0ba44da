"""An e-mail to support@ becomes a ticket row and gets a reply with its number (through the relay)."""

from gateway.consumers import SyncEmailConsumer

from .models import Ticket


class TicketConsumer(SyncEmailConsumer):
    def message(self, msg):
        user = self.scope.get("user")
        ticket = Ticket.objects.create(sender=msg["from"]["address"], subject=msg.get("subject") or "",
                                       body=msg.get("text") or "", user=getattr(user, "username", "") or "")
        self.reply(f"Your ticket number is {ticket.pk}.")
