from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render

from .models import Message


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    return render(request, "chat/room.html", {"room_name": room_name})


def notify(request, room_name):
    """A plain sync view reaching the room's WebSocket clients through Channels' layer API."""
    layer = get_channel_layer()
    async_to_sync(layer.group_send)(f"chat_{room_name}", {"type": "chat.message", "message": request.GET.get("text", "")})
    return HttpResponse("sent")


def command_device(request, device):
    """A sync view publishing to a device through the gateway's outbound MQTT channel."""
    layer = get_channel_layer()
    async_to_sync(layer.send)("mqtt.publish", {"type": "mqtt.publish", "topic": f"devices/{device}/command",
                                               "payload": request.GET.get("cmd", "").encode(), "qos": 1})
    return HttpResponse("queued")


def mail_team(request):
    """A sync view sending mail through the gateway's outbound e-mail channel."""
    layer = get_channel_layer()
    async_to_sync(layer.send)("email.send", {"type": "email.send", "to": ["team@example.net"],
                                             "subject": request.GET.get("subject", ""), "text": "sent from a view"})
    return HttpResponse("queued")


def whoami(request):
    return JsonResponse({"user": request.user.username if request.user.is_authenticated else None,
                         "messages": Message.objects.count()})
