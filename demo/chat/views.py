from django.http import JsonResponse
from django.shortcuts import render

from sensors.models import Reading
from tickets.models import Ticket


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    return render(request, "chat/room.html", {"room_name": room_name})


def readings(request):
    """The latest sensor readings, from the database every gateway process writes to."""
    rows = Reading.objects.order_by("-created")[:50]
    return JsonResponse({"readings": [{"device": r.device, "celsius": r.celsius, "at": r.created.isoformat()} for r in rows]})


def tickets(request):
    rows = Ticket.objects.order_by("-created")[:50]
    return JsonResponse({"tickets": [{"id": t.pk, "sender": t.sender, "subject": t.subject} for t in rows]})
