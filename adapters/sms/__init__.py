"""The ``sms`` adapter: provider webhooks in, ``sms.send`` out (docs/sms.md, docs/specs/sms.md).

Providers are plugins too: subclass ``Provider`` (see ``providers/base.py``).
"""

from .adapter import SmsAdapter
from .providers import (
    Inbound,
    MalformedWebhook,
    OutboundSms,
    Provider,
    RestRequest,
    SendFailed,
    SignatureError,
    StatusReport,
    WebhookRequest,
)
from .sender import OptedOut, SmsSendError

__all__ = [
    "Inbound", "MalformedWebhook", "OptedOut", "OutboundSms", "Provider", "RestRequest", "SendFailed", "SignatureError", "SmsAdapter",
    "SmsSendError", "StatusReport", "WebhookRequest",
]
