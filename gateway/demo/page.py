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


_ICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
         b'<rect width="16" height="16" rx="3" fill="#1a7f37"/><path d="M4 8h8M8 4v8" stroke="#fff" stroke-width="2"/></svg>')


async def favicon(scope: Scope, receive: Receive, send: Send) -> None:
    """The browser asks for it on every visit: an icon instead of a 404 in the log."""
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"image/svg+xml"), (b"content-length", str(len(_ICON)).encode()), (b"cache-control", b"max-age=86400")]})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else _ICON})
