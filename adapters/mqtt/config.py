"""The YAML of the mqtt adapter: ``adapters.mqtt`` and one entry of ``routes.mqtt``."""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from gateway.routing import Matcher
from gateway.schema import Listen, OptionalListen, RouteConfig, Section, parse_listen

from .topics import TopicError, TopicMatcher, check_topic_name

DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


class TlsSection(Section):
    """TLS towards the broker (client mode) or on a listener (broker mode)."""

    ca_file: str | None = Field(None, description="CA bundle to verify the peer (default: the system store).")
    cert_file: str | None = Field(None, description="Certificate (client certificate in client mode; server certificate in broker mode).")
    key_file: str | None = Field(None, description="Private key for `cert_file`.")
    insecure: bool = Field(False, description="Client mode: do not verify the broker's certificate or host name (testing only).")


class ReconnectSection(Section):
    min_delay: float = Field(0.5, gt=0, description="Seconds before the first reconnect attempt; doubles on each failure.")
    max_delay: float = Field(30.0, gt=0, description="Upper bound of the reconnect backoff, in seconds.")
    at_start: Literal["wait", "fail"] = Field(
        "wait",
        description="When the broker cannot be reached at start: `wait` starts the gateway anyway, reports "
        "`adapter.mqtt.broker` not ready on `/readyz` and keeps trying with the backoff above (a compose stack "
        "whose broker comes up after the gateway); `fail` stops the start with an error. A TLS failure (an untrusted "
        "certificate) and a refused CONNECT stop the start either way: waiting would not cure them.",
    )


class UserSection(Section):
    password: str = Field(description="The user's password (use `${ENV}` interpolation to keep it out of the file).")


class AclRule(Section):
    """One ACL entry: topic filters a user may publish or subscribe to. `%u` is the username, `%c` the client id."""

    publish: list[str] = Field(default_factory=list, description="Topic filters the client may publish to.")
    subscribe: list[str] = Field(default_factory=list, description="Topic filters the client may subscribe to.")


class RetrySection(Section):
    """What becomes of a QoS 1/2 message whose application failed (raised, timed out)."""

    attempts: int = Field(
        5, ge=1, description="Deliveries of one message to its application in total (the first one and the retries) "
        "before the gateway gives up on it; `1` means no retry."
    )
    delay: float = Field(1.0, gt=0, description="Seconds before the first retry; doubles for each further one.")
    max_delay: float = Field(30.0, gt=0, description="Upper bound of the delay between two retries, in seconds.")
    exhausted: Literal["disconnect", "dead_letter"] = Field(
        "disconnect", description="After the last attempt: `disconnect` leaves the message unacknowledged and ends the "
        "connection it came on, so it is sent again (broker mode: the device's connection; client mode: the gateway "
        "reconnects to the broker, persistent session only); `dead_letter` hands it to `dead_letter_topic` and/or "
        "`dead_letter_channel` and acknowledges it."
    )
    dead_letter_topic: str | None = Field(
        None, description="With `exhausted: dead_letter`: the message is published (QoS 1, same payload) to "
        "`<dead_letter_topic>/<original topic>` (broker mode: to the embedded broker's subscribers; client mode: to the broker)."
    )
    dead_letter_channel: str | None = Field(
        None, description="With `exhausted: dead_letter`: the message is sent on this channel-layer channel as an "
        "`mqtt.dead_letter` event (topic, payload, qos, route, attempts, error, client_id)."
    )

    @model_validator(mode="after")
    def _target(self) -> RetrySection:
        if self.exhausted == "dead_letter" and not (self.dead_letter_topic or self.dead_letter_channel):
            raise ValueError("'exhausted: dead_letter' needs 'dead_letter_topic' and/or 'dead_letter_channel'")
        if self.dead_letter_topic is not None:
            problem = check_topic_name(self.dead_letter_topic)
            if problem:
                raise ValueError(f"dead_letter_topic {self.dead_letter_topic!r}: {problem}")
        return self


class LoginThrottleSection(Section):
    """Broker mode: refused logins per client address, and what happens after too many."""

    max_failures: int = Field(5, ge=1, description="Failed logins from one client address within `window` seconds "
                              "after which further CONNECTs from it are refused without checking them.")
    window: float = Field(60.0, gt=0, description="Seconds a failed login counts against its address.")


class MqttConfig(Section):
    """`adapters.mqtt`: the MQTT adapter, as an embedded broker or as a client of an external one."""

    mode: Literal["broker", "client"] = Field(
        "broker", description="`broker`: run an embedded MQTT broker (amqtt) devices connect to; "
        "`client`: connect to an external broker (Mosquitto, EMQX, ...)."
    )
    # -- client mode --------------------------------------------------------------------------
    url: str | None = Field(
        None, description="Client mode: the broker, `mqtt://[user:password@]host[:port]` or `mqtts://...` for TLS."
    )
    client_id: str | None = Field(
        None, description="Client mode: the MQTT client id. Set it (unique per gateway process) to get a persistent "
        "session, so unacknowledged messages are redelivered after a crash or reconnect."
    )
    username: str | None = Field(None, description="Client mode: username (overrides the one in `url`).")
    password: str | None = Field(None, description="Client mode: password (overrides the one in `url`).")
    clean_session: bool | None = Field(
        None, description="Client mode: start a fresh session on every connect. Default: persistent session "
        "(false) when `client_id` is set, clean (true) otherwise."
    )
    protocol: Literal["3.1.1", "5"] = Field("3.1.1", description="Client mode: MQTT protocol version.")
    session_expiry: int = Field(
        3600, ge=0, description="Client mode, MQTT 5 with a persistent session: seconds the broker keeps the session after a disconnect."
    )
    keepalive: int = Field(60, ge=5, description="Seconds between keep-alive pings.")
    reconnect: ReconnectSection = Field(default_factory=ReconnectSection, description="Client mode: reconnect backoff.")
    shared: str | None = Field(
        None, description="Client mode: shared subscription group; every route filter `f` is subscribed as "
        "`$share/<group>/f`, so the gateway processes of one group split the messages between them."
    )
    max_inflight: int = Field(100, ge=1, description="Client mode: QoS>0 messages published by the gateway awaiting their acknowledgement.")
    # -- broker mode --------------------------------------------------------------------------
    listen: Listen = Field(
        default_factory=lambda: ["127.0.0.1:1883"],
        description="Broker mode: TCP addresses the embedded broker listens on (`host:port`, port 0 = any free port).",
    )
    tls_listen: OptionalListen = Field(default_factory=list, description="Broker mode: TLS listeners (needs `tls.cert_file`/`key_file`).")
    ws_listen: OptionalListen = Field(
        default_factory=list, description="Broker mode: MQTT-over-WebSocket listeners on ports of their own (`host:port`).",
    )
    ws_path: str | None = Field(
        None, description="Broker mode: also accept MQTT over WebSocket on the HTTP adapter's listeners at this path "
        "(e.g. `/mqtt`), sharing their port, TLS and limits. Needs `adapters.http`."
    )
    allow_anonymous: bool | None = Field(
        None, description="Broker mode: accept clients without credentials. Default: true when no `users` are configured."
    )
    users: dict[str, UserSection] = Field(default_factory=dict, description="Broker mode: username -> {password}.")
    acl: dict[str, AclRule] | None = Field(
        None, description="Broker mode: per-user topic ACL (`*` is the rule for users without their own and for "
        "anonymous clients); filters may use `%u` and `%c`. Default: no ACL (everything allowed)."
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Broker mode: seconds a new connection has to send a complete CONNECT; "
        "after that, or on a malformed one, it is closed."
    )
    auth_app: str | None = Field(
        None, description="Broker mode: `module:callable` `(client_id, username, password)`, sync (run in a worker thread) "
        "or async, deciding logins for usernames not in `users` (e.g. a Django-backed check). Any result but "
        "`False`/`None` accepts the login; a result other than `True` (a user object) becomes `scope['user']` of the "
        "connection's messages and the `user` of `acl_app`."
    )
    acl_app: str | None = Field(
        None, description="Broker mode: `module:callable` `(user, topic, action) -> bool`, sync or async, asked for "
        "every topic filter of a SUBSCRIBE (`action='subscribe'`) and every PUBLISH topic (`'publish'`); cached per "
        "connection, topic and action. `user` is what `auth_app` returned, else the username (or `None`). "
        "Used in addition to `acl`."
    )
    login_throttle: LoginThrottleSection = Field(
        default_factory=LoginThrottleSection,
        description="Broker mode: failed logins per client address before that address is refused for a while.",
    )
    # -- both ---------------------------------------------------------------------------------
    retry: RetrySection = Field(default_factory=RetrySection, description="Failed QoS 1/2 messages: retries by the gateway, then what.")
    tls: TlsSection | None = Field(None, description="TLS settings (client mode: towards the broker; broker mode: for `tls_listen`).")
    max_payload: int = Field(
        1_048_576, ge=1,
        description="Largest inbound payload in bytes; larger messages are refused (counted and logged) and never reach an app.",
    )

    @field_validator("url")
    @classmethod
    def _url_ok(cls, value: str | None) -> str | None:
        if value is not None:
            broker_url(value)
        return value

    @field_validator("listen", "tls_listen", "ws_listen")
    @classmethod
    def _listen_ok(cls, value: list[str]) -> list[str]:
        for item in value:
            addr = parse_listen(item)
            if addr.kind != "tcp":
                raise ValueError(f"{item!r}: the MQTT broker listens on TCP addresses only (host:port)")
        return value

    @field_validator("ws_path")
    @classmethod
    def _ws_path_ok(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or value == "/"):
            raise ValueError(f"ws_path {value!r} must be a path below the root, such as '/mqtt'")
        return value

    @field_validator("shared")
    @classmethod
    def _shared_ok(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/+#")):
            raise ValueError(f"shared group {value!r} must be non-empty and contain no '/', '+' or '#'")
        return value

    @model_validator(mode="after")
    def _shape(self) -> MqttConfig:
        other = BROKER_ONLY if self.mode == "client" else CLIENT_ONLY
        misplaced = sorted(self.model_fields_set & other)
        if misplaced:
            other_mode = "broker" if self.mode == "client" else "client"
            raise ValueError(f"{', '.join(repr(k) for k in misplaced)} only applies to {other_mode} mode (this block is mode: {self.mode})")
        if self.mode == "client" and not self.url:
            raise ValueError("client mode needs 'url' (e.g. mqtt://localhost:1883)")
        if self.mode == "broker" and self.url:
            raise ValueError("'url' is for client mode: add 'mode: client', or remove 'url' to run the embedded broker")
        if self.clean_session is False and not self.client_id:
            raise ValueError("a persistent session (clean_session: false) needs a 'client_id'")
        if self.tls_listen and not (self.tls and self.tls.cert_file and self.tls.key_file):
            raise ValueError("'tls_listen' needs 'tls: {cert_file: ..., key_file: ...}'")
        return self

    @property
    def persistent(self) -> bool:
        if self.clean_session is not None:
            return not self.clean_session
        return self.client_id is not None


CLIENT_ONLY = frozenset({
    "client_id", "username", "password", "clean_session", "protocol", "session_expiry", "reconnect",
    "shared", "max_inflight",
})
BROKER_ONLY = frozenset({"listen", "tls_listen", "ws_listen", "ws_path", "connect_timeout", "allow_anonymous", "users", "acl", "auth_app",
                         "acl_app", "login_throttle"})


class BrokerAddress:
    """``url`` parsed: host, port, TLS on/off and credentials."""

    def __init__(self, host: str, port: int, tls: bool, username: str | None, password: str | None) -> None:
        self.host, self.port, self.tls, self.username, self.password = host, port, tls, username, password

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def broker_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"{url!r}: the broker URL must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"{url!r}: the broker URL has no host")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError(f"{url!r}: invalid port") from None
    if parts.path not in ("", "/"):
        raise ValueError(f"{url!r}: the broker URL takes no path")
    return BrokerAddress(
        parts.hostname, port, parts.scheme in ("mqtts", "ssl"),
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


class MqttRoute(RouteConfig):
    """A route for `mqtt` messages, matched on the topic."""

    topic: str = Field(
        description="MQTT topic filter; wildcards may be named: `sensors/+device/temperature`, `logs/#rest` "
        "(captures land in `scope['url_route']['kwargs']`)."
    )
    qos: Literal[0, 1, 2] = Field(1, description="QoS the adapter subscribes with (client mode).")
    concurrency: int = Field(
        16, ge=1, description="Instances of this route running at once; `1` processes its messages strictly in order. "
        "When the bound is reached further messages wait in the route's backlog."
    )
    backlog: int = Field(
        1000, ge=1, description="Messages that may wait for a free slot of this route. When it is full the adapter stops "
        "reading (client mode: from the broker; broker mode: from the devices) until it is half empty."
    )
    drop_after: float = Field(
        1.0, ge=0, description="Seconds reading may stay stopped because this route's backlog is full of QoS 0 messages; "
        "after that the route overflows: its QoS 0 messages are dropped (counted as `dropped`, logged once per overflow) "
        "until its backlog is half empty, so it no longer holds back other routes. QoS 1/2 messages are never dropped."
    )

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, value: str) -> str:
        try:
            TopicMatcher(value)
        except TopicError as exc:
            raise ValueError(str(exc)) from None
        return value

    def matcher(self) -> Matcher:
        return TopicMatcher(self.topic)
