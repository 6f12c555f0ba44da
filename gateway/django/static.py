"""Production static files: ``STATIC_ROOT`` at ``STATIC_URL``, in front of Django's handler.

ServeStatic is the WhiteNoise fork that serves natively on ASGI (WhiteNoise itself is WSGI
only, so behind an ASGI server it runs as Django middleware in a worker thread per file). It
brings what a static server needs: content types, ETag/Last-Modified and 304, Range requests,
``.gz``/``.br`` variants when present and accepted, far-future caching of hashed names. Its
Django middleware class reads the project's settings (manifest storage, ``STATIC_ROOT``,
``SERVESTATIC_*``); its ASGI file server answers, so a static request never builds an
``HttpRequest`` nor crosses into a thread.
"""

from __future__ import annotations

from typing import Any

from servestatic.asgi import FileServerASGI
from servestatic.middleware import ServeStaticMiddleware

from ..types import ASGIApp, Receive, Scope, Send


class StaticFiles(ServeStaticMiddleware):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__(get_response=_never_called)
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            root_path: str = scope.get("root_path", "")
            if root_path and path.startswith(root_path):
                path = path[len(root_path):]  # the middleware matches Django's path_info
            found = self.find_file(path) if self.autorefresh else self.files.get(path)
            if found is not None:
                await FileServerASGI(found)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _never_called(request: Any) -> Any:
    raise AssertionError("static files are answered before Django's handler is reached")
