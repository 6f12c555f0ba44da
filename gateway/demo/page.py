"""Serves the demo page (one static HTML file)."""

from __future__ import annotations

from importlib import resources

from gateway.types import Receive, Scope, Send

_PAGE = resources.files(__package__).joinpath("static/index.html").read_bytes()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(_PAGE)).encode())],
    })
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else _PAGE})
