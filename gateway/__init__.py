"""asgi-gateway: HTTP, WebSocket, MQTT, email and SMS in, ASGI applications behind."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asgi-gateway")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

from .server import Gateway, serve

__all__ = ["Gateway", "__version__", "serve"]
