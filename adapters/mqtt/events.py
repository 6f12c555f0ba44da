"""The ``mqtt.publish`` event: its send-side spec, a helper to build one, and normalising it."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.events import EventSpec

from .topics import check_topic_name


def _publish_ok(event: Mapping[str, Any]) -> str | None:
    problem = check_topic_name(event["topic"])
    if problem:
        return problem
    qos = event.get("qos", 0)
    if qos not in (0, 1, 2) or isinstance(qos, bool):
        return f"field 'qos' must be 0, 1 or 2, not {qos!r}"
    if event.get("payload") is not None and "json" in event:
        return "set either 'payload' or 'json', not both"
    return None


PUBLISH_SPEC = EventSpec(
    {
        "topic": (str,),
        "payload": (bytes, bytearray, memoryview, str),
        "qos": (int,),
        "retain": (bool,),
        "properties": (dict,),
    },
    frozenset({"topic"}),
    _publish_ok,
)

SEND_EVENTS = {"mqtt": {"mqtt.publish": PUBLISH_SPEC}}


def publish_event(
    topic: str,
    payload: bytes | str | None = None,
    *,
    json: Any = None,
    qos: int = 0,
    retain: bool = False,
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``mqtt.publish`` event; ``json=`` encodes a value as compact UTF-8 JSON for the payload."""
    if json is not None:
        if payload is not None:
            raise ValueError("pass either payload or json, not both")
        payload = encode_json(json)
    event: dict[str, Any] = {
        "type": "mqtt.publish", "topic": topic, "payload": payload if payload is not None else b"", "qos": qos, "retain": retain,
    }
    if properties:
        event["properties"] = properties
    return event


def encode_json(value: Any) -> bytes:
    return jsonlib.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any] | None


def outgoing(event: Mapping[str, Any]) -> Outgoing:
    """Validate and normalise an ``mqtt.publish`` event (from an app or from the layer)."""
    if event.get("type", "mqtt.publish") != "mqtt.publish":
        raise ValueError(f"expected an 'mqtt.publish' event, got type {event.get('type')!r}")
    problem = PUBLISH_SPEC.problem(event)
    if problem:
        raise ValueError(f"'mqtt.publish' event: {problem}")
    if "json" in event:
        payload = encode_json(event["json"])
    else:
        raw = event.get("payload")
        if raw is None:
            payload = b""
        elif isinstance(raw, str):
            payload = raw.encode()
        else:
            payload = bytes(raw)
    return Outgoing(event["topic"], payload, int(event.get("qos", 0)), bool(event.get("retain", False)), event.get("properties"))
