"""MQTT readings saved with the ORM and broadcast to a WebSocket group, in both consumer forms."""

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async

from gateway.consumers import AsyncMqttConsumer, SyncMqttConsumer

from .models import Reading


class ReadingConsumer(SyncMqttConsumer):
    """Sync: the ORM directly, the layer through async_to_sync."""

    def message(self, topic, payload, **info):
        device = self.kwargs["device"]
        if payload == b"boom":
            raise ValueError("a reading the app refuses")
        user = self.scope.get("user")
        reading = Reading.objects.create(device=device, celsius=float(payload),
                                         user=getattr(user, "username", "") or "")
        async_to_sync(self.channel_layer.group_send)(
            "chat_sensors", {"type": "chat.message", "message": f"{device}: {reading.celsius}"})


class AsyncReadingConsumer(AsyncMqttConsumer):
    """Async: the ORM through database_sync_to_async."""

    async def message(self, topic, payload, **info):
        await self.save(self.kwargs["device"], float(payload))
        await self.channel_layer.group_send("chat_sensors", {"type": "chat.message", "message": f"async {payload.decode()}"})

    @database_sync_to_async
    def save(self, device, celsius):
        Reading.objects.create(device=device, celsius=celsius)


class SlowConsumer(SyncMqttConsumer):
    """Blocks past its route's timeout: the message must not be acknowledged."""

    def message(self, topic, payload, **info):
        import time

        time.sleep(float(payload))
        Reading.objects.create(device="slow", celsius=float(payload))
