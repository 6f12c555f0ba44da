from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from dashboard.live import broadcast
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_POST

from .models import Reply, Ticket


@require_POST
def reply(request: HttpRequest, pk: int) -> JsonResponse:
    """A staff member's answer: saved, then mailed to the customer by the gateway (`email.send`)."""
    if not request.user.is_staff:
        return JsonResponse({"error": "sign in as a staff member to reply"}, status=403)
    ticket = get_object_or_404(Ticket, pk=pk)
    body = request.POST.get("body", "").strip()
    if not body:
        return JsonResponse({"error": "the reply is empty"}, status=400)
    answer = Reply.objects.create(ticket=ticket, body=body, author=request.user.get_username())
    mail = {"type": "email.send", "to": ticket.sender, "from": settings.SUPPORT_ADDRESS,
            "subject": f"Re: [#{ticket.pk}] {ticket.subject}".strip(), "text": body}
    if ticket.message_id:
        mail["in_reply_to"] = ticket.message_id
    async_to_sync(get_channel_layer().send)("email.send", mail)
    broadcast("ticket_reply", answer.as_event())
    return JsonResponse(answer.as_event())
