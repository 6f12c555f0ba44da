"""``gateway.testing``: communicators for every protocol, and a pytest plugin (docs/testing.md).

``HttpCommunicator`` and ``WebsocketCommunicator`` keep the names and behaviour of
``channels.testing``; ``MqttCommunicator``, ``EmailCommunicator``, ``SmsCommunicator`` and
``SmsStatusCommunicator`` deliver one message each and return the protocol's answer. Every one
runs the application through the gateway's own router, instance runner and event checks, in
process and without sockets; pass a ``Harness`` (from a YAML file) instead of an application to
exercise the configuration's routing too.

This is a testing add-on: unlike the core, it imports the built-in adapters
(``gateway_adapters``), because the protocol answers are theirs to make.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use (PEP 562): the pytest plugin lives in this package and is loaded by every
# pytest run in an environment where asgi-gateway is installed, tests of the gateway or not.
_WHERE = {
    "ApplicationCommunicator": "connection", "HttpCommunicator": "connection", "WebsocketCommunicator": "connection",
    "Harness": "harness", "Communicators": "fixtures",
    "EmailCommunicator": "messages", "EmailResult": "messages", "MqttCommunicator": "messages", "MqttResult": "messages",
    "SmsCommunicator": "messages", "SmsResult": "messages", "SmsStatusCommunicator": "messages",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.testing' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
