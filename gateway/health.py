"""Health of the gateway's parts, served as JSON at the configured health path."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from .types import Receive, Scope, Send

Status = Literal["ok", "degraded", "down"]
_RANK = {"ok": 0, "degraded": 1, "down": 2}


@dataclass
class Component:
    status: Status
    detail: str = ""


class Health:
    """Parts report their state here; the worst state is the gateway's state."""

    def __init__(self) -> None:
        self.components: dict[str, Component] = {}

    def set(self, name: str, status: Status, detail: str = "") -> None:
        self.components[name] = Component(status, detail)

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

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI endpoint: 200 when every part is ok or degraded, 503 when one is down."""
        body = json.dumps(self.as_dict()).encode()
        status = 503 if self.status == "down" else 200
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})
