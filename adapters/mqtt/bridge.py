"""`to: {mqtt: {...}}`: a layer group's messages published to a topic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from gateway.bridges import (
    BridgeMessageError,
    BridgeTarget,
    MissingField,
    Outbound,
    Template,
)

from .events import encode_json, publish_event
from .topics import check_topic_name


class MqttBridgeTarget(BridgeTarget):
    """A bridge from a group to MQTT: one `mqtt.publish` per group message."""

    topic: str = Field(description="Topic name, a template filled from the message's fields: `alerts/{level}` (no wildcards).")
    qos: Literal[0, 1, 2] = Field(0, description="QoS of the publish.")
    retain: bool = Field(False, description="Publish with the retain flag (the broker keeps the last message for new subscribers).")
    payload: str | None = Field(
        None, description="The message field that is the payload (bytes or text, sent as it is; any other value as JSON). "
        "Default: the whole message but its `type`, as JSON.",
    )

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, value: str) -> str:
        template = Template(value)  # raises ValueError naming the problem
        problem = check_topic_name(template.fill(dict.fromkeys(template.fields, "x")))
        if problem:
            raise ValueError(f"topic {value!r}: {problem}")
        return value

    async def outbound(self, message: dict[str, Any]) -> Outbound:
        try:
            topic = Template(self.topic).fill(message)
        except MissingField as exc:
            raise BridgeMessageError(str(exc)) from None
        problem = check_topic_name(topic)
        if problem:
            raise BridgeMessageError(f"topic {topic!r} (from {self.topic!r}): {problem}")
        if self.payload is None:
            value: Any = {k: v for k, v in message.items() if k != "type"}
        elif self.payload not in message:
            raise BridgeMessageError(f"the message has no field {self.payload!r} for the payload")
        else:
            value = message[self.payload]
        if isinstance(value, (bytes, str)):
            payload = value if isinstance(value, bytes) else value.encode()
        else:
            try:
                payload = encode_json(value)
            except (TypeError, ValueError) as exc:
                raise BridgeMessageError(f"the payload cannot be written as JSON: {exc}") from None
        return [("mqtt.publish", publish_event(topic, payload, qos=self.qos, retain=self.retain))]
