from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from dashboard.live import broadcast
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from .models import Text


@require_POST
def reply(request: HttpRequest) -> JsonResponse:
    """A staff member's text to a customer, sent by the gateway's SMS adapter (`sms.send`)."""
    if not request.user.is_staff:
        return JsonResponse({"error": "sign in as a staff member to reply"}, status=403)
    number, body = request.POST.get("number", "").strip(), request.POST.get("body", "").strip()
    if not number or not body:
        return JsonResponse({"error": "a reply needs a number and a text"}, status=400)
    if not Text.objects.filter(number=number).exists():
        return JsonResponse({"error": f"no conversation with {number}"}, status=404)
    sent = Text.objects.create(number=number, direction=Text.SENT, body=body, author=request.user.get_username())
    async_to_sync(get_channel_layer().send)("sms.send", {"type": "sms.send", "to": number, "body": body})
    broadcast("text", sent.as_event())
    return JsonResponse(sent.as_event())
