"""One channel layer for the gateway and for Channels.

The gateway builds its layer from ``CHANNEL_LAYERS["default"]`` when the YAML has no ``layer:``
(Channels' backends map onto the gateway's own, option for option), and while it runs,
``channels.layers.get_channel_layer()`` returns that very object. A consumer's
``self.channel_layer``, a view's ``async_to_sync(get_channel_layer().group_send)`` and the
adapters' outbound channels (``mqtt.publish``, ``email.send``) therefore all meet in one place.
"""

from __future__ import annotations

from typing import Any

# Channels' backend import paths, and the gateway backend that does the same job.
EQUIVALENT = {
    "channels.layers.InMemoryChannelLayer": "memory",
    "channels_redis.core.RedisChannelLayer": "redis",
    "channels_redis.pubsub.RedisPubSubChannelLayer": "redis",
    "gateway.layers.memory.InMemoryChannelLayer": "memory",
    "gateway.layers.memory:InMemoryChannelLayer": "memory",
    "gateway.layers.redis.RedisChannelLayer": "redis",
    "gateway.layers.redis:RedisChannelLayer": "redis",
}
# CONFIG keys of those backends that the gateway's layers take as they are.
SHARED_OPTIONS = {
    "memory": {"expiry", "group_expiry", "capacity", "channel_capacity"},
    "redis": {"hosts", "prefix", "expiry", "group_expiry", "capacity", "channel_capacity"},
}


class LayerSettingsError(Exception):
    """``CHANNEL_LAYERS`` asks for something the gateway cannot be."""


def from_settings() -> tuple[str, dict[str, Any]] | None:
    """``(gateway backend, options)`` for ``CHANNEL_LAYERS["default"]``, or None when unset."""
    from django.conf import settings

    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    default = layers.get("default")
    if not default:
        return None
    backend = default.get("BACKEND")
    gateway_backend = EQUIVALENT.get(str(backend))
    if gateway_backend is None:
        raise LayerSettingsError(
            f"CHANNEL_LAYERS['default'] uses {backend!r}, which the gateway cannot share with Channels; "
            "use channels.layers.InMemoryChannelLayer or channels_redis.core.RedisChannelLayer "
            "(or gateway.layers.redis.RedisChannelLayer), or remove CHANNEL_LAYERS and set 'layer:' in the YAML"
        )
    config = dict(default.get("CONFIG") or {})
    unknown = sorted(set(config) - SHARED_OPTIONS[gateway_backend])
    if unknown:
        raise LayerSettingsError(
            f"CHANNEL_LAYERS['default']['CONFIG'] has {', '.join(map(repr, unknown))}, which the gateway's "
            f"{gateway_backend} layer does not support (supported: {', '.join(sorted(SHARED_OPTIONS[gateway_backend]))})"
        )
    if gateway_backend == "redis" and "hosts" in config:
        config["hosts"] = [list(h) if isinstance(h, tuple) else h for h in config["hosts"]]
    return gateway_backend, config


def describe(backend: str, options: dict[str, Any]) -> str:
    shown = {k: options[k] for k in ("hosts", "url", "prefix") if options.get(k) is not None}
    return f"{backend} {shown}" if shown else backend


def share_outside_the_gateway() -> None:
    """In every process of the project (``manage.py`` commands, Celery workers), make Channels'
    ``get_channel_layer()`` speak the gateway's Redis wire format when ``CHANNEL_LAYERS`` names
    channels_redis: the two formats differ, and a ``group_send`` from a process still on
    channels_redis would never reach the gateway. Called from the ``gateway.django`` app's
    ``ready()``; inside the gateway the running layer replaces this one."""
    shared = from_settings()
    if shared is None or shared[0] != "redis":
        return
    from django.conf import settings

    if str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).startswith("gateway."):
        return  # Channels builds the gateway's layer itself
    from channels import DEFAULT_CHANNEL_LAYER
    from channels.layers import channel_layers

    from ..layers.redis import RedisChannelLayer

    channel_layers.set(DEFAULT_CHANNEL_LAYER, RedisChannelLayer(**shared[1]))


def outside_processes_warning() -> str | None:
    """Why a ``group_send`` from outside the gateway could miss it, or None when it cannot."""
    from django.apps import apps
    from django.conf import settings

    backend = str(((getattr(settings, "CHANNEL_LAYERS", None) or {}).get("default") or {}).get("BACKEND", ""))
    if backend.startswith("channels_redis.") and not apps.is_installed("gateway.django"):
        return (f"CHANNEL_LAYERS names {backend}: the gateway runs its own Redis layer on those hosts, and code in "
                "other processes (manage.py commands, Celery) reaches it only when 'gateway.django' is in "
                "INSTALLED_APPS or BACKEND is 'gateway.layers.redis.RedisChannelLayer'")
    return None


class ChannelsBinding:
    """Makes ``channels.layers.get_channel_layer()`` return the gateway's layer while it runs."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._bound = False

    def bind(self, layer: Any) -> None:
        try:
            from channels import DEFAULT_CHANNEL_LAYER
            from channels.layers import channel_layers
        except ImportError:
            return  # Django without Channels: nothing else could hold a layer
        self._previous = channel_layers.set(DEFAULT_CHANNEL_LAYER, layer)
        self._bound = True

    def unbind(self) -> None:
        if not self._bound:
            return
        from channels import DEFAULT_CHANNEL_LAYER
        from channels.layers import channel_layers

        if self._previous is None:
            channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
        else:
            channel_layers.set(DEFAULT_CHANNEL_LAYER, self._previous)
        self._bound = False
