from django.http import JsonResponse
from django.shortcuts import render

from sensors.models import Reading
from tickets.models import Ticket


def index(request):
    return render(request, "chat/index.html")


def room(request, room_name):
    return render(request, "chat/room.html", {"room_name": room_name})


def readings(request):
    """Sensor readings (the latest 50, and how many in all), optionally of one ``?device=``."""
    rows = Reading.objects.order_by("-created")
    if request.GET.get("device"):
        rows = rows.filter(device=request.GET["device"])
    return JsonResponse({"count": rows.count(), "readings": [
        {"device": r.device, "celsius": r.celsius, "at": r.created.isoformat()} for r in rows[:50]]})


def tickets(request):
    rows = Ticket.objects.order_by("-created")[:50]
    return JsonResponse({"tickets": [{"id": t.pk, "sender": t.sender, "subject": t.subject} for t in rows]})
