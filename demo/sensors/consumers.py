"""MQTT readings saved with the ORM and pushed to the `sensors` chat room's WebSocket clients."""

from asgiref.sync import async_to_sync
from django.db import transaction

from gateway.consumers import SyncMqttConsumer

from .models import Reading


class ReadingConsumer(SyncMqttConsumer):
    def message(self, topic, payload, **info):
        # A reading that raises is not acknowledged, and the broker delivers it again: the row and
        # the broadcast succeed or fail together, so a redelivery never stores a reading twice.
        device = self.kwargs["device"]
        with transaction.atomic():
            reading = Reading.objects.create(device=device, celsius=float(payload))
            async_to_sync(self.channel_layer.group_send)(
                "chat_sensors", {"type": "chat.message", "message": f"{device}: {reading.celsius}"})
