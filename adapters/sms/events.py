"""The ``sms.send`` event's send-side spec (docs/specs/sms.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.events import EventSpec


def _send_ok(event: Mapping[str, Any]) -> str | None:
    media = event.get("media")
    if media is not None and not all(isinstance(url, str) for url in media):
        return "field 'media' must be a list of URL strings"
    if not event.get("body") and not media:
        return "an 'sms.send' needs a 'body' (or 'media')"
    return None


SEND_SPEC = EventSpec(
    {
        "to": (str,), "body": (str,), "from": (str,), "media": (list, tuple), "account": (str,), "idempotency_key": (str,),
    },
    frozenset({"to"}),
    _send_ok,
)

SEND_EVENTS = {"sms": {"sms.send": SEND_SPEC}}
