"""The ``mqtt`` adapter: MQTT messages routed by topic to ASGI applications, and published back.

See docs/mqtt.md (how to use it) and docs/specs/mqtt.md (the ``mqtt`` scope and its events).
"""

from .adapter import MqttAdapter
from .events import publish_event
from .topics import TopicMatcher

__all__ = ["MqttAdapter", "TopicMatcher", "publish_event"]
