"""What the pytest plugin's fixtures hand out, importable without pytest: communicators bound
to one YAML, and a gateway from that YAML on free loopback ports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import config as config_mod
from gateway.server import Gateway
from gateway.yamlsource import load_file

from .connection import HttpCommunicator, WebsocketCommunicator
from .harness import Harness
from .messages import EmailCommunicator, MqttCommunicator, SmsCommunicator, SmsStatusCommunicator


class Communicators:
    """Communicator factories bound to one harness: ``communicators.mqtt("a/b", b"1")``."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def http(self, method: str, path: str, body: bytes = b"", headers: Any = None) -> HttpCommunicator:
        return HttpCommunicator(self.harness, method, path, body, headers)

    def websocket(self, path: str, headers: Any = None, subprotocols: Any = None) -> WebsocketCommunicator:
        return WebsocketCommunicator(self.harness, path, headers, subprotocols)

    def mqtt(self, topic: str, payload: bytes | str = b"", **kwargs: Any) -> MqttCommunicator:
        return MqttCommunicator(self.harness, topic, payload, **kwargs)

    def email(self, message: Any, **kwargs: Any) -> EmailCommunicator:
        return EmailCommunicator(self.harness, message, **kwargs)

    def sms(self, body: str, **kwargs: Any) -> SmsCommunicator:
        return SmsCommunicator(self.harness, body, **kwargs)

    def sms_status(self, message_id: str, status: str = "delivered", **kwargs: Any) -> SmsStatusCommunicator:
        return SmsStatusCommunicator(self.harness, message_id, status, **kwargs)


def free_ports(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of config data with every TCP listener (``listen``, ``tls_listen``, ``ws_listen``,
    at any depth under ``adapters`` and ``admin``) moved to ``127.0.0.1:0``. Unix sockets stay."""

    def moved(value: Any) -> Any:
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str) and not value.startswith("unix:") and "/" not in value:
            return "127.0.0.1:0"
        return value

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: moved(v) if k == "listen" or str(k).endswith("_listen") else walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = dict(data)
    for key in ("adapters", "admin"):
        if key in out:
            out[key] = walk(out[key])
    return out


def live_gateway(path: Path) -> Gateway:
    """A gateway from the YAML at ``path`` with every listener on a free loopback port."""
    source = load_file(path)
    source.data = free_ports(source.data)
    return Gateway(config_mod.build(source, path.parent))
