from typing import Any

from django.db import models


class Ticket(models.Model):
    sender = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    user = models.CharField(max_length=150, blank=True)
    message_id = models.CharField(max_length=300, blank=True, help_text="the mail's Message-ID: replies thread under it")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"#{self.pk} {self.subject}"

    def as_event(self) -> dict[str, Any]:
        return {"id": self.pk, "sender": self.sender, "subject": self.subject, "body": self.body,
                "at": self.created.isoformat(), "replies": [r.as_event() for r in self.replies.all()]}


class Reply(models.Model):
    """An answer written on the dashboard, sent to the ticket's sender through `email.send`."""

    ticket = models.ForeignKey(Ticket, related_name="replies", on_delete=models.CASCADE)
    body = models.TextField()
    author = models.CharField(max_length=150)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created"]
        verbose_name_plural = "replies"

    def as_event(self) -> dict[str, Any]:
        return {"id": self.pk, "ticket": self.ticket.pk, "body": self.body, "author": self.author, "at": self.created.isoformat()}
