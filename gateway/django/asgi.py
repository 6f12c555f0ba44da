"""``app: django``: the project's ASGI handler, with its static files in front of it.

Static files are served the way a Django developer expects in each mode: under ``DEBUG`` as
``runserver`` serves them (Django's own ``ASGIStaticFilesHandler``, from the finders, no
``collectstatic`` needed); otherwise from ``STATIC_ROOT`` (``static.py``).
"""

from __future__ import annotations

import os
from typing import Literal

import structlog

from ..types import ASGIApp

log = structlog.get_logger("gateway.django")

StaticMode = Literal["auto", "off"]
Handler = Literal["asgi", "wsgi"]


def application(static: StaticMode = "auto", handler: Handler = "asgi") -> ASGIApp:
    from django.apps import apps
    from django.conf import settings

    app = _handler(handler)
    if static == "off" or not apps.is_installed("django.contrib.staticfiles") or not _local(settings.STATIC_URL):
        return app
    if settings.DEBUG:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        return ASGIStaticFilesHandler(app)
    root = getattr(settings, "STATIC_ROOT", None)
    if not root:
        log.warning("django.static_not_served", reason="DEBUG is off and STATIC_ROOT is not set",
                    hint="set STATIC_ROOT and run manage.py collectstatic, or django: {static: off} if something else serves them")
        return app
    if not os.path.isdir(root) or not os.listdir(root):
        log.warning("django.static_root_empty", static_root=str(root), hint="run manage.py collectstatic")
    try:
        from .static import StaticFiles
    except ImportError:
        log.warning("django.static_not_served", reason="servestatic is not installed", hint="pip install 'asgi-gateway[django]'")
        return app
    return StaticFiles(app)


def _handler(kind: Handler) -> ASGIApp:
    """Django's ASGI handler, or (``handler: wsgi``) its WSGI handler run in a worker thread.

    A project of sync views pays for the ASGI handler: each sync middleware and view hops into a
    thread and back, per request. Under the WSGI handler the whole request runs in one thread
    call, as under gunicorn, at about a third of the CPU per request (bench/django.py). Async
    views still work there (Django runs them with ``async_to_sync``), but lose their concurrency."""
    if kind == "wsgi":
        from asgiref.wsgi import WsgiToAsgi
        from django.core.wsgi import get_wsgi_application

        return WsgiToAsgi(get_wsgi_application())
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def _local(url: str | None) -> bool:
    """Only a path is ours to serve; an absolute URL means a CDN or another host serves them."""
    return bool(url) and "://" not in str(url) and not str(url).startswith("//")
