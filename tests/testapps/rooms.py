"""A WebSocket room that says which process serves it: for tests across gateway workers."""

from __future__ import annotations

import os

from gateway.consumers import AsyncWebsocketConsumer


class PidRoom(AsyncWebsocketConsumer):
    groups = ["everyone"]

    async def connect(self):
        await self.accept()
        await self.send(text_data=f"pid:{os.getpid()}")

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send("everyone", {"type": "room.say", "text": text_data})

    async def room_say(self, event):
        await self.send(text_data=f"said:{event['text']}")
