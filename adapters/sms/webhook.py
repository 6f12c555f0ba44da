"""One account's webhook: the ASGI app mounted on the ``http`` adapter's listener at its path.

It reads the body (bounded), checks the signature against the public URL, parses the message or
status report, and hands it to the adapter, which answers only once the application returned.
Nothing reaches a route before the signature is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from gateway.types import Receive, Scope, Send

from .numbers import InvalidNumber, to_e164
from .providers import Inbound, MalformedWebhook, SignatureError, WebhookRequest

if TYPE_CHECKING:
    from .adapter import SmsAdapter
    from .sender import Account


class ClientGone(Exception):
    """The request ended (``http.disconnect``) before its body was complete."""


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()


class Webhook:
    def __init__(self, adapter: SmsAdapter, account: Account) -> None:
        self.adapter = adapter
        self.account = account
        self.log = adapter.context.log.bind(account=account.label)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            answer = await self.handle(scope, receive)
        except Exception as exc:  # e.g. Redis away: the provider must retry, not lose the text
            self.adapter.count(self.account, "unknown", "error")
            self.log.error("sms.webhook.error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            answer = Answer(503, b"temporarily unable to take this webhook, retry later\n", headers=((b"retry-after", b"1"),))
        headers = [
            (b"content-type", answer.content_type.encode()), (b"content-length", str(len(answer.body)).encode()), *answer.headers,
        ]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def handle(self, scope: Scope, receive: Receive) -> Answer:
        adapter, provider = self.adapter, self.account.provider
        method = scope["method"]
        if method not in provider.methods:
            return self.refuse("method", 405, f"{method} is not how {provider.name} calls a webhook",
                               headers=((b"allow", ", ".join(provider.methods).encode()),))
        try:
            body = await self.read_body(receive)
        except ClientGone:
            # the caller hung up, or the http adapter refused the body under its own max_body_size
            # (it answered 413 itself): nothing was accepted, so nothing is lost
            return self.refuse("disconnected", 400, "the request ended before its body was complete")
        if body is None:
            return self.refuse("too_large", 413, f"the body is larger than max_body_size ({adapter.config.max_body_size} bytes)")
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        request = WebhookRequest(method, self.url(scope, headers), headers, body)
        try:
            provider.verify(request)
        except SignatureError as exc:
            return self.refuse("forbidden", 403, str(exc), url=_without_userinfo(request.url))
        except MalformedWebhook as exc:  # a signature over parameters that cannot be read
            return self.refuse("malformed", 400, str(exc))
        try:
            item = provider.parse(request)
            if isinstance(item, Inbound):
                region = adapter.config.default_region
                item.sender = to_e164(item.sender, region)
                item.recipient = to_e164(item.recipient, region)
        except (MalformedWebhook, InvalidNumber) as exc:
            return self.refuse("malformed", 400, str(exc))
        client = scope.get("client")
        if isinstance(item, Inbound):
            return await adapter.on_message(self.account, item, client, request.url)
        return await adapter.on_status(self.account, item, client, request.url)

    def refuse(self, outcome: str, status: int, why: str, *, url: str | None = None,
               headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
        self.adapter.count(self.account, "unknown", outcome)
        self.log.warning(f"sms.webhook.{outcome}", status=status, error=why, **({"url": url} if url else {}))
        return Answer(status, f"{why}\n".encode(), headers=headers)

    async def read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or ``None`` once it passes ``max_body_size``; ``ClientGone`` when the
        request ends first."""
        limit = self.adapter.config.max_body_size
        chunks: list[bytes] = []
        size = 0
        while True:
            event: Any = await receive()
            if event["type"] != "http.request":
                raise ClientGone()
            chunk = event.get("body") or b""
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)

    def url(self, scope: Scope, headers: dict[str, str]) -> str:
        """The URL the provider called: ``public_url`` (or the request's scheme and Host) plus the target."""
        base = self.account.config.public_url
        if base is None:
            host = headers.get("host")
            if not host:
                server = scope.get("server") or ("localhost", 80)
                host = f"{server[0]}:{server[1]}"
            base = f"{scope.get('scheme', 'http')}://{host}"
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope.get("root_path", "") + scope["path"]
        query = scope.get("query_string") or b""
        return base + path + (f"?{query.decode('latin-1')}" if query else "")


def _without_userinfo(url: str) -> str:
    """``url`` for a log line: a ``user:password@`` in it (some providers allow one) is left out."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
