from typing import Any

from django.db import models


class Text(models.Model):
    """One SMS, either way: a conversation is every text with one number."""

    RECEIVED, SENT = "in", "out"
    number = models.CharField(max_length=32, db_index=True, help_text="the customer's number (E.164)")
    direction = models.CharField(max_length=3, choices=[(RECEIVED, "received"), (SENT, "sent")])
    body = models.TextField()
    author = models.CharField(max_length=150, blank=True, help_text="who answered (sent texts)")
    message_id = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created"]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.number}: {self.body[:40]}"

    def as_event(self) -> dict[str, Any]:
        return {"id": self.pk, "number": self.number, "direction": self.direction, "body": self.body,
                "author": self.author, "at": self.created.isoformat()}
