"""Serves the demo page (one static HTML file)."""

from __future__ import annotations

import html
import os
from importlib import resources

from gateway.types import Receive, Scope, Send

_PAGE = resources.files(__package__).joinpath("static/index.html").read_bytes()


def _page() -> bytes:
    """The page with the addresses the demo config reads from the environment (moved with
    GATEWAY_SMTP_LISTEN / GATEWAY_MQTT_LISTEN), so it never names a port the gateway is not on."""
    smtp = os.environ.get("GATEWAY_SMTP_LISTEN") or "127.0.0.1:2525"
    mqtt = os.environ.get("GATEWAY_MQTT_LISTEN") or "127.0.0.1:1883"
    return _PAGE.replace(b"@SMTP@", html.escape(smtp).encode()).replace(b"@MQTT@", html.escape(mqtt).encode())


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    page = _page()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(page)).encode())],
    })
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else page})


_ICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
         b'<rect width="16" height="16" rx="3" fill="#1a7f37"/><path d="M4 8h8M8 4v8" stroke="#fff" stroke-width="2"/></svg>')


async def favicon(scope: Scope, receive: Receive, send: Send) -> None:
    """The browser asks for it on every visit: an icon instead of a 404 in the log."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"image/svg+xml"), (b"content-length", str(len(_ICON)).encode()), (b"cache-control", b"max-age=86400")]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else _ICON})
