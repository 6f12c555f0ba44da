"""`to: {email: {...}}`: a layer group's messages mailed through `email.send` (the relay's
retries apply to them as to any outbound mail)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gateway.bridges import (
    BridgeMessageError,
    BridgeTarget,
    MissingField,
    Outbound,
    Template,
    load_callable,
    recipients,
)


class EmailBridgeTarget(BridgeTarget):
    """A bridge from a group to e-mail: one `email.send` (to every recipient) per group message."""

    model_config = ConfigDict(populate_by_name=True)

    to: list[str] = Field(default_factory=list, description="Recipients every message is mailed to.")
    to_from: str | None = Field(
        None, description="`module:func(message) -> list of addresses`, sync or async: recipients for each message, besides `to`.",
    )
    subject: str = Field("{subject}", description="The subject, a template filled from the message's fields.")
    text: str = Field("{text}", description="The plain-text body, a template filled from the message's fields.")
    sender: str | None = Field(None, alias="from", description="The From address (default: the relay's `default_from`).")
    _to_from: Callable[..., Any] | None = PrivateAttr(None)

    @field_validator("subject", "text")
    @classmethod
    def _template(cls, value: str) -> str:
        Template(value)
        return value

    @model_validator(mode="after")
    def _someone(self) -> EmailBridgeTarget:
        if not self.to and self.to_from is None:
            raise ValueError("give 'to' (a list of addresses) or 'to_from' (module:func returning them), or both")
        if self.to_from is not None:
            self._to_from = load_callable(self.to_from)
        return self

    async def outbound(self, message: dict[str, Any]) -> Outbound:
        try:
            subject = Template(self.subject).fill(message)
            text = Template(self.text).fill(message)
        except MissingField as exc:
            raise BridgeMessageError(str(exc)) from None
        to = await recipients(self.to, self._to_from, self.to_from, message, "addresses")
        if not to:
            raise BridgeMessageError(f"{self.to_from} returned no recipient")
        event: dict[str, Any] = {"type": "email.send", "to": to, "subject": subject, "text": text}
        if self.sender is not None:
            event["from"] = self.sender
        return [("email.send", event)]
