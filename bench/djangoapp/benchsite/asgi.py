"""The project as uvicorn and Daphne serve it (the gateway reads bench/django.py's YAML instead):
Django for http, the echo consumer for websocket behind Channels' Origin check, which the gateway
applies to its websocket routes by default."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
django_asgi = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402 - after Django is set up
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from benchapp.consumers import EchoConsumer  # noqa: E402

application = ProtocolTypeRouter({
    "http": django_asgi,
    "websocket": AllowedHostsOriginValidator(URLRouter([path("echo/", EchoConsumer.as_asgi())])),
})
