"""The project as uvicorn and Daphne serve it (the gateway reads bench/django.py's YAML instead):
Django for http, the echo consumer for websocket behind Channels' Origin check, which the gateway
applies to its websocket routes by default."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
django_asgi = get_asgi_application()

from benchapp.consumers import EchoConsumer
from channels.routing import ProtocolTypeRouter, URLRouter  # after Django is set up
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

application = ProtocolTypeRouter({
    "http": django_asgi,
    "websocket": AllowedHostsOriginValidator(URLRouter([path("echo/", EchoConsumer.as_asgi())])),
})
