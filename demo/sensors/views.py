from django.http import HttpRequest, JsonResponse

from .models import Reading


def readings(request: HttpRequest) -> JsonResponse:
    """Sensor readings (the latest 50, and how many in all), optionally of one ``?device=``."""
    rows = Reading.objects.order_by("-created")
    if request.GET.get("device"):
        rows = rows.filter(device=request.GET["device"])
    return JsonResponse({"count": rows.count(), "readings": [r.as_event() for r in rows[:50]]})
