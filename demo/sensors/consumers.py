"""MQTT readings saved with the ORM and pushed to the `sensors` chat room's WebSocket clients."""

from asgiref.sync import async_to_sync

from gateway.consumers import SyncMqttConsumer

from .models import Reading


class ReadingConsumer(SyncMqttConsumer):
    def message(self, topic, payload, **info):
        device = self.kwargs["device"]
        reading = Reading.objects.create(device=device, celsius=float(payload))
        async_to_sync(self.channel_layer.group_send)(
            "chat_sensors", {"type": "chat.message", "message": f"{device}: {reading.celsius}"})
