"""The tutorial's chat consumer: a room group, messages saved with the ORM, the user from the session."""

import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from .models import Message


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()
        user = self.scope.get("user")
        await self.send(text_data=json.dumps({"hello": user.username if user and user.is_authenticated else None}))

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        message = json.loads(text_data)["message"]
        await self.save(message)
        await self.channel_layer.group_send(self.room_group_name, {"type": "chat.message", "message": message})

    @database_sync_to_async
    def save(self, text):
        user = self.scope.get("user")
        Message.objects.create(room=self.room_name, text=text, author=user if user and user.is_authenticated else None)

    async def chat_message(self, event):
        await self.send(text_data=json.dumps({"message": event["message"]}))
