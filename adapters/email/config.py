"""The ``adapters.email`` block: SMTP listener, IMAP mailboxes and the outbound relay."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.schema import Listen, PositiveFloat, Section, parse_listen


class SmtpUser(Section):
    """One SMTP AUTH account."""

    username: str = Field(description="Login name.")
    password: str = Field(description="Password (use `${ENV_VAR}` interpolation rather than a literal).")


class LoginThrottle(Section):
    """Failed SMTP AUTH attempts allowed per client address before AUTH is refused for a while."""

    max_failures: int = Field(
        5, ge=0, description="Failed logins per client address within `window`; then AUTH gets `454 4.7.0`. 0: no throttling.",
    )
    window: PositiveFloat = Field(60.0, description="Seconds a failed login counts against its address (a sliding window).")


class SmtpConfig(Section):
    """`adapters.email.smtp`: the inbound SMTP listener."""

    listen: Listen = Field(
        default_factory=lambda: ["127.0.0.1:2525"], description="`host:port`, or a list of them, to bind (port 0: any free port).")
    hostname: str | None = Field(None, description="Name announced in the greeting and EHLO (default: the host's FQDN).")
    domains: list[str] = Field(
        default_factory=list,
        description="Recipient domains this server accepts mail for; other recipients get `550 5.7.1` at RCPT. "
        "Empty: any domain, as long as a route accepts the recipient.",
    )
    max_message_size: int = Field(
        10 * 1024 * 1024, ge=0,
        description="Largest message in bytes (announced as `SIZE` in EHLO; larger ones get `552`). 0: no limit.",
    )
    max_recipients: int = Field(100, gt=0, description="Recipients per message; more get `452 4.5.3`.")
    reuse_port: bool = Field(False, description="Set SO_REUSEPORT so several processes can listen on one port (`--workers` sets it).")
    max_sessions: int = Field(100, gt=0, description="Concurrent SMTP sessions; more are greeted with `421 4.3.2` and closed.")
    command_timeout: PositiveFloat = Field(300.0, description="Seconds a client may be idle between commands before `421 4.4.2` and close.")
    data_timeout: PositiveFloat = Field(600.0, description="Seconds a client may take to send the message after `DATA`.")
    smtputf8: bool = Field(True, description="Announce and accept SMTPUTF8 (UTF-8 addresses and headers).")
    bare_lf: Literal["reject", "accept"] = Field(
        "reject",
        description="Messages with bare LF line endings: `reject` (`550 5.6.0`, the SMTP-smuggling-safe default) "
        "or `accept` them as they are.",
    )
    reject_nul: bool = Field(True, description="Refuse messages that contain a NUL byte (`550 5.6.0`).")
    tls_cert: str | None = Field(None, description="PEM certificate chain file; enables STARTTLS.")
    tls_key: str | None = Field(None, description="PEM private key file for `tls_cert`.")
    require_starttls: bool = Field(False, description="Refuse every command but EHLO/STARTTLS/NOOP/QUIT before STARTTLS (`530`).")
    auth_users: list[SmtpUser] = Field(
        default_factory=list, description="Accounts for AUTH PLAIN/LOGIN (offered only over TLS)."
    )
    auth_hook: str | None = Field(
        None, description="`module:callable` deciding logins: `(username, password)`, plain (run in a worker thread) "
        "or `async`; `None`/`False` refuses, anything else accepts and (unless it is `True`) becomes `scope['user']`. "
        "Used when `auth_users` does not know the user."
    )
    login_throttle: LoginThrottle = Field(
        default_factory=LoginThrottle, description="Throttling of failed AUTH attempts per client address.",
    )
    auth_required: bool = Field(False, description="Refuse MAIL before a successful AUTH (`530 5.7.0`).")
    lmtp_replies: bool = Field(
        False,
        description="After DATA, answer one reply line per accepted recipient (LMTP style) instead of one "
        "reply for the whole message. Only for clients that expect it (LMTP).",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        for item in value:
            if parse_listen(item).kind != "tcp":
                raise ValueError(f"{item!r}: the SMTP listener binds TCP only: write host:port")
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lower().lstrip("@") for d in value]

    @model_validator(mode="after")
    def _tls(self) -> SmtpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("STARTTLS needs both 'tls_cert' and 'tls_key'")
        if self.require_starttls and self.tls_cert is None:
            raise ValueError("'require_starttls' needs 'tls_cert' and 'tls_key'")
        if (self.auth_users or self.auth_hook or self.auth_required) and self.tls_cert is None:
            raise ValueError("AUTH is offered over TLS only: set 'tls_cert' and 'tls_key'")
        return self


class RelayConfig(Section):
    """`adapters.email.relay`: where `email.send` events are delivered."""

    host: str = Field(description="Relay (smarthost) host name.")
    port: int = Field(25, ge=1, le=65535, description="Relay port (25, 587 for STARTTLS, 465 for implicit TLS).")
    tls: Literal["none", "starttls", "implicit"] = Field("none", description="`starttls`, `implicit` (SMTPS) or `none`.")
    verify_tls: bool = Field(True, description="Check the relay's certificate and host name.")
    username: str | None = Field(None, description="AUTH user at the relay.")
    password: str | None = Field(None, description="AUTH password at the relay.")
    default_from: str | None = Field(None, description="`From` for `email.send` events that name none.")
    timeout: PositiveFloat = Field(30.0, description="Seconds for connecting and for each SMTP command.")
    retries: int = Field(3, ge=0, description="Further attempts after a temporary failure (4xx reply, connection error).")
    backoff: PositiveFloat = Field(1.0, description="Seconds before the first retry; doubles with each further one.")
    max_backoff: PositiveFloat = Field(60.0, description="Upper bound of the wait between attempts.")


class ImapMailbox(Section):
    """One mailbox under `adapters.email.imap`."""

    name: str | None = Field(None, description="Name for logs and `scope['mailbox']` (default: `user@host/folder`).")
    host: str = Field(description="IMAP server host.")
    port: int | None = Field(None, ge=1, le=65535, description="IMAP port (default 993 with `tls: implicit`, else 143).")
    tls: Literal["none", "starttls", "implicit"] = Field("implicit", description="`implicit` (IMAPS), `starttls` or `none`.")
    verify_tls: bool = Field(True, description="Check the server's certificate and host name.")
    user: str = Field(description="Login name.")
    password: str = Field(description="Password.")
    folder: str = Field("INBOX", description="Folder to read.")
    address: str | None = Field(
        None, description="The recipient address routed for this mailbox's messages (default: `user`, or the first `To`)."
    )
    idle: bool = Field(True, description="Wait with IDLE when the server supports it (else poll).")
    poll_interval: PositiveFloat = Field(30.0, description="Seconds between polls when IDLE is not used; also the IDLE renewal bound.")
    after: Literal["seen", "move", "delete"] = Field(
        "seen", description="What happens to a handled message: flag `\\Seen`, `move` to `move_to`, or `delete`.",
    )
    move_to: str | None = Field(None, description="Folder for handled messages when `after: move`.")
    max_attempts: int = Field(3, gt=0, description="Attempts per message before it goes to `error_folder`.")
    error_folder: str = Field("Errors", description="Folder for messages that failed `max_attempts` times (created if missing).")
    reconnect_backoff: PositiveFloat = Field(
        1.0, description="Seconds before reconnecting after a dropped connection; doubles up to `max_backoff`.",
    )
    max_backoff: PositiveFloat = Field(60.0, description="Upper bound of the reconnect wait.")
    timeout: PositiveFloat = Field(30.0, description="Seconds for connecting and for each IMAP command.")
    lock_ttl: PositiveFloat = Field(
        30.0, description="With a Redis layer: seconds the per-mailbox poller lock lives unless renewed "
        "(another process takes over after that)."
    )

    @model_validator(mode="after")
    def _after(self) -> ImapMailbox:
        if self.after == "move" and not self.move_to:
            raise ValueError("'after: move' needs 'move_to'")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.user}@{self.host}/{self.folder}"

    @property
    def real_port(self) -> int:
        return self.port or (993 if self.tls == "implicit" else 143)


class MimeLimits(Section):
    """`adapters.email.mime`: how complex a message may be. Parsing costs about (lines x nesting
    depth) plus a little per part and per header; these bounds keep one crafted message from
    costing seconds or exhausting the parser's recursion. Applies to SMTP and IMAP alike."""

    max_depth: int = Field(
        32, gt=0,
        description="Deepest MIME nesting: how many multipart or message/* containers may enclose a part. "
        "Deeper messages are refused over SMTP (`550 5.6.0`) and moved to `error_folder` over IMAP.",
    )
    max_parts: int = Field(1000, gt=0, description="MIME parts per message, the message itself and nested messages included.")
    max_headers: int = Field(2000, gt=0, description="Header fields per message, the headers of every part included.")


class EmailConfig(Section):
    """`adapters.email`: SMTP in, IMAP in, SMTP out. Each part is optional."""

    smtp: SmtpConfig | None = Field(None, description="The SMTP listener (inbound mail).")
    imap: list[ImapMailbox] = Field(default_factory=list, description="Mailboxes to ingest over IMAP.")
    relay: RelayConfig | None = Field(None, description="The outbound relay for `email.send`.")
    mime: MimeLimits = Field(default_factory=MimeLimits, description="Bounds on the structure of inbound messages (SMTP and IMAP).")

    @model_validator(mode="after")
    def _unique_mailboxes(self) -> EmailConfig:
        seen: set[str] = set()
        for mailbox in self.imap:
            if mailbox.label in seen:
                raise ValueError(f"two IMAP mailboxes are named {mailbox.label!r}: give each a distinct 'name'")
            seen.add(mailbox.label)
        return self
