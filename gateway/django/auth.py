"""Django's users for the other protocols: MQTT CONNECT and SMTP AUTH, and MQTT topic rights.

Name these in the YAML (the adapters call them in a worker thread, with stale database
connections closed around each call)::

    adapters:
      mqtt:  {mode: broker, auth_app: "gateway.django.auth:mqtt_login", acl_app: "gateway.django.auth:mqtt_acl"}
      email: {smtp: {auth_hook: "gateway.django.auth:smtp_login", ...}}

The user returned becomes ``scope["user"]`` of the messages that connection or session sends.
Failed logins are logged and throttled per client address by the adapters themselves.
"""

from __future__ import annotations

from typing import Any

from ..threads import fresh_connections

PUBLISH = "asgi_gateway.mqtt_publish"
SUBSCRIBE = "asgi_gateway.mqtt_subscribe"


@fresh_connections
def mqtt_login(client_id: str, username: str | None, password: str | bytes | None) -> Any:
    """An active Django user whose password matches, else None (the CONNECT is refused)."""
    return _authenticate(username, password)


@fresh_connections
def smtp_login(username: str | bytes | None, password: str | bytes | None) -> Any:
    return _authenticate(username, password)


@fresh_connections
def mqtt_acl(user: Any, topic: str, action: str) -> bool:
    """Topic rights from Django permissions: ``asgi_gateway.mqtt_publish`` to publish,
    ``asgi_gateway.mqtt_subscribe`` to subscribe (superusers have both). A login that is not a
    Django user (an anonymous device, a ``users:`` entry of the YAML) has neither; write a callable
    of your own for per-topic rules."""
    has_perm = getattr(user, "has_perm", None)
    if has_perm is None or not getattr(user, "is_active", False):
        return False
    return bool(has_perm(PUBLISH if action == "publish" else SUBSCRIBE))


def _authenticate(username: str | bytes | None, password: str | bytes | None) -> Any:
    if not username or password is None:
        return None
    from django.contrib.auth import authenticate

    name = username.decode("utf-8", "replace") if isinstance(username, bytes) else username
    secret = password.decode("utf-8", "replace") if isinstance(password, bytes) else password
    user = authenticate(username=name, password=secret)
    return user if user is not None and user.is_active else None
