"""Bridges: layer groups with members on every protocol (docs/bridges.md).

A bridge forwards every message of a layer group to an adapter's outbound channel (an MQTT
topic, phone numbers, e-mail addresses), or a protocol's messages (an MQTT topic filter) into
a group, so one ``group_send`` reaches WebSocket clients, devices and phones alike, each
external delivery once across every gateway process sharing the layer.
"""

from .config import Bridge, BridgeConfig
from .target import BridgeMessageError, BridgeTarget, Outbound, call, load_callable, recipients
from .template import MissingField, Template

__all__ = [
    "Bridge", "BridgeConfig", "BridgeMessageError", "BridgeTarget", "MissingField", "Outbound", "Template", "call", "load_callable",
    "recipients",
]
