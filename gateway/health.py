"""Health of the gateway's parts: the JSON report, and the liveness and readiness answers
that orchestrators and load balancers act on.

``/healthz`` (the report) stays 200 while a part is only degraded, for dashboards. ``/readyz``
is strict: it answers 200 only while the gateway serves and every part is ``ok`` (each adapter
listening, the layer reachable, external brokers and mailboxes connected), so a load balancer
stops sending traffic to a process that would fail it. ``/livez`` says the process still
answers at all; a restart is the only cure for a failing one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from .types import Receive, Scope, Send

Status = Literal["ok", "degraded", "down"]
Phase = Literal["starting", "serving", "stopping"]
_RANK = {"ok": 0, "degraded": 1, "down": 2}


@dataclass
class Component:
    status: Status
    detail: str = ""


class Health:
    """Parts report their state here; the worst state is the gateway's state."""

    def __init__(self) -> None:
        self.components: dict[str, Component] = {}
        self.phase: Phase = "starting"

    def set(self, name: str, status: Status, detail: str = "") -> None:
        self.components[name] = Component(status, detail)

    def forget(self, prefix: str) -> None:
        """Drop a component and its parts (``adapter.mqtt`` and ``adapter.mqtt.broker``): the
        adapter was removed or is being replaced on reload."""
        for name in [n for n in self.components if n == prefix or n.startswith(prefix + ".")]:
            del self.components[name]

    @property
    def status(self) -> Status:
        worst: Status = "ok"
        for c in self.components.values():
            if _RANK[c.status] > _RANK[worst]:
                worst = c.status
        return worst

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "components": {k: {"status": v.status, "detail": v.detail} for k, v in sorted(self.components.items())},
        }

    def failing(self) -> dict[str, str]:
        """What keeps the gateway from being ready, by component: empty when it is ready."""
        failing = {name: f"{c.status}: {c.detail}" if c.detail else c.status
                   for name, c in sorted(self.components.items()) if c.status != "ok"}
        if self.phase != "serving":
            failing = {"gateway": self.phase, **failing}
        return failing

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI endpoint: 200 when every part is ok or degraded, 503 when one is down."""
        await send_json(send, 503 if self.status == "down" else 200, self.as_dict())

    async def live(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Liveness: answering at all is the proof."""
        await send_json(send, 200, {"status": "live", "phase": self.phase})

    async def ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Readiness: 200 when serving with every part ok; 503 naming each failing part otherwise."""
        failing = self.failing()
        if failing:
            await send_json(send, 503, {"status": "not ready", "failing": failing})
        else:
            await send_json(send, 200, {"status": "ready"})


async def send_json(send: Send, status: int, document: dict[str, object]) -> None:
    body = json.dumps(document).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
