"""Channel layers: the Channels layer API, behind one small backend interface.

``layer:`` in YAML names a backend (``memory``; ``redis`` with the redis extra; or any
``module:Class``). ``get_channel_layer()`` returns the running gateway's layer, so consumers
and code outside an instance (a Django view, a cron job) can reach it.
"""

from __future__ import annotations

from .base import BaseChannelLayer, ChannelFull, InvalidChannelName, LayerUnavailable, get_channel_layer, set_channel_layer

BACKENDS = {
    "memory": "gateway.layers.memory:InMemoryChannelLayer",
    "redis": "gateway.layers.redis:RedisChannelLayer",
}

__all__ = [
    "BACKENDS", "BaseChannelLayer", "ChannelFull", "InvalidChannelName", "LayerUnavailable",
    "get_channel_layer", "set_channel_layer",
]
