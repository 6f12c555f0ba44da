"""An e-mail that becomes a model row and gets a reply."""

from gateway.consumers import SyncEmailConsumer, SyncSmsConsumer

from .models import Text, Ticket


class TicketConsumer(SyncEmailConsumer):
    def message(self, msg):
        user = self.scope.get("user")
        ticket = Ticket.objects.create(sender=msg["from"]["address"], subject=msg.get("subject") or "",
                                       body=msg.get("text") or "", user=getattr(user, "username", "") or "")
        self.reply(f"Your ticket number is {ticket.pk}.")


class TextConsumer(SyncSmsConsumer):
    """A text message becomes a row and gets a numbered answer."""

    def message(self, body, **info):
        text = Text.objects.create(sender=info["from"], body=body)
        self.reply(f"Got it: text {text.pk}.")
