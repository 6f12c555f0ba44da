from typing import Any

from django.db import models


class Reading(models.Model):
    device = models.CharField(max_length=100)
    celsius = models.FloatField()
    user = models.CharField(max_length=150, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def as_event(self) -> dict[str, Any]:
        return {"id": self.pk, "device": self.device, "celsius": self.celsius, "at": self.created.isoformat()}
