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

from .connection import ApplicationCommunicator, HttpCommunicator, WebsocketCommunicator
from .harness import Harness
from .messages import (
    EmailCommunicator, EmailResult, MqttCommunicator, MqttResult, SmsCommunicator, SmsResult, SmsStatusCommunicator,
)

__all__ = [
    "ApplicationCommunicator", "EmailCommunicator", "EmailResult", "Harness", "HttpCommunicator", "MqttCommunicator",
    "MqttResult", "SmsCommunicator", "SmsResult", "SmsStatusCommunicator", "WebsocketCommunicator",
]
