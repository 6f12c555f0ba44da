"""The customer's side of e-mail in the local showcase: write to support, read the answers.

``send`` (a view) mails support through the gateway's own SMTP listener, as any mail client
would. ``CustomerMailbox`` is where the answers land: config/gateway.yaml points the relay at the
same listener and routes every address other than support's here, so ticket replies sent through
``email.send`` show up on the dashboard instead of needing a mail server.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

import aiosmtplib
from dashboard.live import abroadcast
from django.conf import settings
from django.http import HttpRequest, JsonResponse

from gateway.consumers import AsyncEmailConsumer


async def send(request: HttpRequest) -> JsonResponse:
    if not settings.DEMO_SIMULATORS:
        return JsonResponse({"error": "the simulators are off (DEMO_SIMULATORS)"}, status=404)
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    mail = EmailMessage()
    mail["From"] = request.POST.get("from", "").strip() or "ann@customer.test"
    mail["To"] = settings.SUPPORT_ADDRESS
    mail["Subject"] = request.POST.get("subject", "").strip() or "(no subject)"
    mail.set_content(request.POST.get("body", ""))
    host, port = settings.DEMO_SMTP.rsplit(":", 1)
    try:
        await aiosmtplib.send(mail, hostname=host, port=int(port), timeout=30)
    except aiosmtplib.SMTPException as exc:
        return JsonResponse({"error": f"the gateway's SMTP listener said: {exc}"}, status=502)
    return JsonResponse({"sent": True})


class CustomerMailbox(AsyncEmailConsumer):
    async def message(self, msg: dict[str, Any]) -> None:
        await abroadcast("mail", {"to": self.scope.get("rcpt_to"), "from": (msg.get("from") or {}).get("address"),
                                  "subject": msg.get("subject") or "", "body": msg.get("text") or ""})
