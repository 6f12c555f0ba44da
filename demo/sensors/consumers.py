"""MQTT readings saved with the ORM, drawn live on the dashboard, and alerts above a threshold."""

import logging
from typing import Any

from asgiref.sync import async_to_sync
from dashboard.live import ALERTS_GROUP, broadcast
from django.conf import settings
from django.db import transaction

from gateway.consumers import SyncMqttConsumer

from .models import Reading

log = logging.getLogger(__name__)


class ReadingConsumer(SyncMqttConsumer):
    def message(self, topic: str, payload: bytes, **info: Any) -> None:
        device = self.kwargs["device"]
        try:
            celsius = float(payload)
        except ValueError:
            # acknowledged: a device that sends garbage would get it delivered again forever
            log.warning("sensors: %s sent %r, not a number of degrees; ignored", device, payload[:40])
            return
        # A reading that raises is not acknowledged, and the broker delivers it again: the row and
        # the broadcast succeed or fail together, so a redelivery never stores a reading twice.
        with transaction.atomic():
            reading = Reading.objects.create(device=device, celsius=celsius)
            broadcast("reading", reading.as_event())
            if celsius > settings.SENSOR_ALERT_CELSIUS:
                # The dashboard shows it; a bridge (the `bridges:` YAML section) can relay the
                # `alerts` group to MQTT, SMS or e-mail without a line of code here.
                async_to_sync(self.channel_layer.group_send)(ALERTS_GROUP, {
                    "type": "sensor.alert", "device": device, "celsius": celsius,
                    "threshold": settings.SENSOR_ALERT_CELSIUS, "at": reading.created.isoformat(),
                })
