"""`to: {sms: {...}}`: a layer group's messages texted to phone numbers, through `sms.send`
(so the adapter's rate limits, retries and opt-out checks apply to them as to any text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from gateway.bridges import (
    BridgeMessageError,
    BridgeTarget,
    MissingField,
    Outbound,
    Template,
    load_callable,
    recipients,
)

from .numbers import InvalidNumber, to_e164


class SmsBridgeTarget(BridgeTarget):
    """A bridge from a group to SMS: one `sms.send` per number per group message."""

    numbers: list[str] = Field(
        default_factory=list, description="Phone numbers in international form (`+447700900123`) every message is texted to.",
    )
    numbers_from: str | None = Field(
        None, description="`module:func(message) -> list of numbers`, sync or async: the numbers for each message "
        "(e.g. who is on call), besides `numbers`.",
    )
    body: str = Field("{text}", description="The text, a template filled from the message's fields.")
    account: str | None = Field(None, description="The `accounts` entry that sends (default: the adapter's first).")
    _numbers_from: Callable[..., Any] | None = PrivateAttr(None)

    @field_validator("numbers")
    @classmethod
    def _international(cls, value: list[str]) -> list[str]:
        try:
            return [to_e164(number, None) for number in value]
        except InvalidNumber as exc:
            raise ValueError(str(exc)) from None

    @field_validator("body")
    @classmethod
    def _template(cls, value: str) -> str:
        Template(value)
        return value

    @model_validator(mode="after")
    def _someone(self) -> SmsBridgeTarget:
        if not self.numbers and self.numbers_from is None:
            raise ValueError("give 'numbers' (a list) or 'numbers_from' (module:func returning them), or both")
        if self.numbers_from is not None:
            self._numbers_from = load_callable(self.numbers_from)
        return self

    async def outbound(self, message: dict[str, Any]) -> Outbound:
        try:
            body = Template(self.body).fill(message)
        except MissingField as exc:
            raise BridgeMessageError(str(exc)) from None
        numbers = await recipients(self.numbers, self._numbers_from, self.numbers_from, message, "numbers")
        event: dict[str, Any] = {"type": "sms.send", "body": body}
        if self.account is not None:
            event["account"] = self.account
        return [("sms.send", {**event, "to": number}) for number in numbers]
