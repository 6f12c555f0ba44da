"""SMS providers: the built-in ones, those of installed plugins, and any ``module:Class``.

A plugin distribution registers its provider class in the entry-point group
``asgi_gateway.sms_providers`` (the name is what ``provider:`` says in YAML); a provider may also
be named by import string. Built-in providers are imported only when an account uses them.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from importlib.metadata import entry_points

from .base import (
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

ENTRY_POINT_GROUP = "asgi_gateway.sms_providers"
BUILT_IN = {
    "twilio": "gateway_adapters.sms.providers.twilio:TwilioProvider",
    "vonage": "gateway_adapters.sms.providers.vonage:VonageProvider",
    "telnyx": "gateway_adapters.sms.providers.telnyx:TelnyxProvider",
    "generic": "gateway_adapters.sms.providers.generic:GenericProvider",
}


def provider_class(name: str) -> type[Provider]:
    """The provider called ``name``; ``ValueError`` naming the known ones otherwise."""
    spec = BUILT_IN.get(name)
    if spec is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                spec = ep.value
                break
    if spec is None and ":" in name:
        spec = name
    if spec is None:
        plugins = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        known = ", ".join([*BUILT_IN, *plugins])
        raise ValueError(f"unknown SMS provider {name!r} (known: {known}; or a 'module:Class' import string)")
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"SMS provider {name!r}: cannot import {spec!r}: {exc}") from None
    if not (inspect.isclass(cls) and issubclass(cls, Provider)) or inspect.isabstract(cls):
        raise ValueError(f"SMS provider {name!r}: {spec!r} is not a concrete subclass of gateway_adapters.sms.Provider")
    return cls


__all__ = [
    "Inbound", "MalformedWebhook", "OutboundSms", "Provider", "RestRequest", "SendFailed", "SignatureError",
    "StatusReport", "WebhookRequest", "provider_class",
]
