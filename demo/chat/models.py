from django.conf import settings
from django.db import models


class Message(models.Model):
    room = models.CharField(max_length=100)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.room}: {self.text[:40]}"
