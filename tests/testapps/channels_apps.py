"""A consumer written for Channels, routed by the gateway unchanged."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class ChannelsEcho(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.name = self.scope["url_route"]["kwargs"]["name"]
        await self.accept()

    async def receive_json(self, content, **kwargs):
        await self.send_json({"echo": content, "name": self.name, "route": self.scope["route_name"]})
