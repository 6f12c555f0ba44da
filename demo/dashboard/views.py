from chat.models import Message
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from sensors.models import Reading
from texts.models import Text
from tickets.models import Ticket

CHAT_ROOM = "lobby"


@ensure_csrf_cookie   # the page's replies are fetch() posts that send the cookie's token
def index(request: HttpRequest) -> HttpResponse:
    """The dashboard as it stands; from here on the page follows the live feed (/ws/dashboard/)."""
    readings = reversed(Reading.objects.order_by("-created")[:300])
    tickets = Ticket.objects.order_by("-created").prefetch_related("replies")[:30]
    texts = reversed(Text.objects.order_by("-created")[:200])
    chat = reversed(Message.objects.filter(room=CHAT_ROOM).order_by("-created")[:50])
    return render(request, "dashboard/index.html", {
        "initial": {
            "readings": [r.as_event() for r in readings],
            "tickets": [t.as_event() for t in tickets],
            "texts": [t.as_event() for t in texts],
            "chat": [m.text for m in chat],
            "threshold": settings.SENSOR_ALERT_CELSIUS,
            "room": CHAT_ROOM,
            "canReply": request.user.is_staff,
            "smsNumber": settings.SMS_NUMBER,
            "oncallPhone": settings.ONCALL_PHONE,
            "support": settings.SUPPORT_ADDRESS,
        },
        "simulators": settings.DEMO_SIMULATORS,
        "support": settings.SUPPORT_ADDRESS,
        "sms_number": settings.SMS_NUMBER,
        "oncall_phone": settings.ONCALL_PHONE,
        "mqtt_port": settings.DEMO_MQTT_PORT,
        "smtp_port": settings.DEMO_SMTP.rsplit(":", 1)[-1],
    })
