"""The ``adapters.sms`` block: provider accounts (one webhook each), limits and opt-out handling.

One account can be written directly in the block (``sms: {provider: twilio, webhook: ...}``);
several go under ``accounts:``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.schema import PositiveFloat, Section

from .numbers import InvalidNumber, to_e164


class AccountConfig(Section):
    """One provider account (or one number of it): its webhook path, credentials and sending settings."""

    name: str | None = Field(
        None, description="Name in logs, metrics, `scope['account']` and `sms.send`'s `account` (default: the provider name).",
    )
    provider: str = Field(
        description="`twilio`, `vonage`, `telnyx`, `generic`, a plugin's provider name, or a `module:Class` import string.",
    )
    webhook: str = Field(
        description="Path on the `http` adapter's listener where the provider posts messages and status reports, e.g. `/sms/twilio`.",
    )
    public_url: str | None = Field(
        None,
        description="The public origin the provider calls, e.g. `https://gw.example.com` (the webhook URL is this plus the path "
        "and query). Signatures are checked against it. Default: the request's scheme and Host as the `http` adapter "
        "sees them (correct behind its `trusted_proxies`). Also used for status callback URLs of outbound sends.",
    )
    numbers: list[str] = Field(default_factory=list, description="Our numbers on this account (E.164); the first is the default sender.")
    default_from: str | None = Field(
        None, description="Sender of `sms.send` events that name none and answer no message (default: the first of `numbers`).",
    )
    account_id: str | None = Field(None, description="Twilio: the Account SID. Vonage: the API key.")
    auth_token: SecretStr | None = Field(
        None, description="Twilio: the auth token (signs webhooks, authenticates REST). Vonage: the API secret. Telnyx: the API key. "
        "Generic: an optional bearer token for `api_url`. Write `${ENV_VAR}`; never logged."
    )
    signing_secret: SecretStr | None = Field(
        None, description="Twilio: the shared webhook key (requests with `X-Twilio-Webhooks-Signature-Settings`). Vonage: the "
        "signature secret. Generic: the HMAC-SHA256 secret. Never logged."
    )
    signature_method: Literal["md5hash", "md5", "sha1", "sha256", "sha512"] = Field(
        "md5hash", description="Vonage SMS API: how `sig` is made (as set in the Vonage dashboard)."
    )
    public_key: str | None = Field(None, description="Telnyx: the base64 Ed25519 public key of the account.")
    api_url: str | None = Field(
        None, description="Base URL of the provider's REST API (default: the provider's; generic: required for sending).",
    )
    replay_window: PositiveFloat = Field(
        300.0, description="Seconds a signed timestamp may be away from now (Telnyx, Vonage, generic) "
        "before the webhook is refused as a replay.",
    )
    timeout: PositiveFloat = Field(10.0, description="Seconds for one REST attempt.")
    retries: int = Field(3, ge=0, description="Further attempts after 429, 5xx, a timeout or a network error.")
    backoff: PositiveFloat = Field(
        0.5, description="Seconds before the first retry; doubles with each one, with jitter (`Retry-After` wins).",
    )
    max_backoff: PositiveFloat = Field(30.0, description="Upper bound of one wait between attempts.")
    rate_limit: float = Field(
        1.0, ge=0, description="Messages per second per sender number (0: no limit); sends beyond it wait their turn.",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="Settings for a plugin provider (read by the plugin).")

    @property
    def label(self) -> str:
        return self.name or self.provider

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value:
            raise ValueError("'webhook' is a path starting with '/', without a query")
        return value.rstrip("/") or "/"

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("'public_url' must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, value: list[str]) -> list[str]:
        try:
            return [to_e164(n, None) for n in value]
        except InvalidNumber as exc:
            raise ValueError(f"'numbers': {exc}") from None

    @model_validator(mode="after")
    def _provider(self) -> AccountConfig:
        from .providers import provider_class

        provider_class(self.provider).check(self)
        return self

    @property
    def sender(self) -> str | None:
        return self.default_from or (self.numbers[0] if self.numbers else None)


class OptOutConfig(Section):
    """`adapters.sms.opt_out`: the keywords a sender texts to stop, restart or get help, and the answers."""

    enabled: bool = Field(True, description="Handle the keywords below; off: they are ordinary messages.")
    stop: list[str] = Field(
        default_factory=lambda: ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"],
        description="First words that add the sender to the opt-out list.",
    )
    start: list[str] = Field(default_factory=lambda: ["START", "UNSTOP"], description="First words that take the sender off the list.")
    help: list[str] = Field(default_factory=lambda: ["HELP"], description="First words answered with `help_reply`.")
    stop_reply: str | None = Field(
        "You have been unsubscribed and will get no more messages. Reply START to resubscribe.",
        description="Answer to a stop word (null: none).",
    )
    start_reply: str | None = Field(
        "You have been resubscribed. Reply STOP to unsubscribe.", description="Answer to a start word (null: none).",
    )
    help_reply: str | None = Field(None, description="Answer to a help word (null: none, and the message goes to the routes).")
    pass_to_app: bool = Field(False, description="Route stop and start messages to the applications too (after the list is updated).")

    @field_validator("stop", "start", "help")
    @classmethod
    def _upper(cls, value: list[str]) -> list[str]:
        return [w.strip().upper() for w in value]


class SmsConfig(Section):
    """`adapters.sms`: provider accounts and the limits every account shares. One account may be written
    in place, its keys directly in this block, instead of under `accounts`."""

    accounts: list[AccountConfig] = Field(default_factory=list, description="Provider accounts, one webhook path each.")
    default_region: str | None = Field(
        None, description="Region (ISO 3166 code, e.g. `GB`) for numbers written without `+`; none: every number must be E.164."
    )
    max_body_size: int = Field(64 * 1024, gt=0, description="Largest webhook body in bytes; a larger one gets `413`.")
    max_segments: int = Field(
        10, gt=0, description="Longest outbound text in SMS parts (GSM-7: 153 characters a part, UCS-2: 67); longer ones are refused.",
    )
    dedup_window: float = Field(
        86400.0, ge=0, description="Seconds a handled message id is remembered, so a provider's retry is acknowledged without "
        "running the app again (in Redis when the layer is Redis). 0: off."
    )
    opt_out: OptOutConfig = Field(default_factory=OptOutConfig, description="STOP / START / HELP handling.")
    outbound_concurrency: int = Field(
        8, gt=0, description="Sends from the `sms.send` layer channel in flight at once (each with its own retries); "
        "beyond it the channel waits, and its capacity pushes back on producers."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_account(cls, data: Any) -> Any:
        """``sms: {provider: ..., webhook: ...}`` is one account written in place."""
        if isinstance(data, dict) and "provider" in data:
            own = {k: v for k, v in data.items() if k in cls.model_fields}
            account = {k: v for k, v in data.items() if k not in cls.model_fields}
            if "accounts" in own:
                raise ValueError("write one account in place or several under 'accounts', not both")
            return {**own, "accounts": [account]}
        return data

    @model_validator(mode="after")
    def _unique(self) -> SmsConfig:
        if not self.accounts:
            raise ValueError("the sms adapter needs an account: 'provider' and 'webhook' (or 'accounts: [...]')")
        names: set[str] = set()
        paths: set[str] = set()
        for account in self.accounts:
            if account.label in names:
                raise ValueError(f"two accounts are named {account.label!r}: give each a distinct 'name'")
            if account.webhook in paths:
                raise ValueError(f"two accounts use the webhook path {account.webhook!r}")
            names.add(account.label)
            paths.add(account.webhook)
        if self.default_region is not None:
            import phonenumbers

            if self.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"'default_region' {self.default_region!r} is not a region code phonenumbers knows (e.g. GB, US)")
        return self
