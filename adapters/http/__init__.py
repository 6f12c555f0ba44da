"""The ``http`` adapter: HTTP/1.1 (parsed by httptools) and WebSocket (frames by the adapter's own codec), served as ASGI ``http`` and
``websocket`` scopes to the router. See docs/http.md."""

from .config import HttpConfig, Limits, TLSConfig
from .server import HttpAdapter

__all__ = ["HttpAdapter", "HttpConfig", "Limits", "TLSConfig"]
