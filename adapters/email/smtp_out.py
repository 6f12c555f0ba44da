"""SMTP out: ``email.send`` events -> MIME -> the configured relay, with retries and backoff."""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import mimetypes
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import structlog

from gateway.events import EventSpec

from .config import RelayConfig

log = structlog.get_logger("gateway.adapters.email.out")

_BUILD_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_STR = (str,)
_ADDRS = (str, list, tuple)


def _send_ok(event: Mapping[str, Any]) -> str | None:
    if not any(event.get(k) for k in ("to", "cc", "bcc")):
        return "needs at least one recipient in 'to', 'cc' or 'bcc'"
    for key in ("to", "cc", "bcc", "reply_to"):
        value = event.get(key)
        if isinstance(value, (list, tuple)) and not all(isinstance(v, str) for v in value):
            return f"field {key!r} must be a string or a list of strings"
    for i, att in enumerate(event.get("attachments") or ()):
        if not isinstance(att, Mapping) or not isinstance(att.get("content"), (bytes, bytearray, str)):
            return f"attachments[{i}] must be a mapping with 'content' (bytes or str)"
    headers = event.get("headers")
    if headers is not None and not isinstance(headers, (Mapping, list, tuple)):
        return "field 'headers' must be a mapping or a list of [name, value] pairs"
    return None


def _reject_ok(event: Mapping[str, Any]) -> str | None:
    code = event.get("code", 550)
    if not 400 <= code <= 599:
        return f"field 'code' must be an SMTP 4xx or 5xx code, not {code}"
    return None


SEND_SPEC = EventSpec(
    {
        "to": _ADDRS, "cc": _ADDRS, "bcc": _ADDRS, "from": _STR, "reply_to": _ADDRS, "subject": _STR,
        "text": _STR, "html": _STR, "attachments": (list, tuple), "headers": (dict, list, tuple),
        "in_reply_to": _STR, "references": (str, list, tuple), "message_id": _STR,
    },
    check=_send_ok,
)
REJECT_SPEC = EventSpec({"code": (int,), "reason": _STR}, check=_reject_ok)


class DeliveryError(Exception):
    """The relay did not take the message (after the retries, for temporary failures)."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


def _addr_list(value: Any) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def build_message(event: Mapping[str, Any], default_from: str | None = None) -> tuple[EmailMessage, str, list[str]]:
    """The MIME message, the envelope sender and the envelope recipients of an ``email.send`` event."""
    sender = event.get("from") or default_from
    if not sender:
        raise ValueError("email.send needs 'from' (or relay.default_from in the config)")
    # 7-bit transfer encodings: any relay takes the result, with or without 8BITMIME.
    msg = EmailMessage(policy=_BUILD_POLICY)
    to, cc, bcc = _addr_list(event.get("to")), _addr_list(event.get("cc")), _addr_list(event.get("bcc"))
    msg["From"] = sender
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    reply_to = _addr_list(event.get("reply_to"))
    if reply_to:
        msg["Reply-To"] = ", ".join(reply_to)
    msg["Subject"] = event.get("subject") or ""
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or None
    msg["Message-ID"] = event.get("message_id") or email.utils.make_msgid(domain=domain)
    in_reply_to = event.get("in_reply_to")
    references = event.get("references")
    refs = references.split() if isinstance(references, str) else list(references or [])
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        if in_reply_to not in refs:
            refs.append(in_reply_to)
    if refs:
        msg["References"] = " ".join(refs)
    headers = event.get("headers") or {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        name = name.decode() if isinstance(name, bytes) else str(name)
        value = value.decode() if isinstance(value, bytes) else str(value)
        if name.lower() in ("bcc",):
            continue
        if name in msg:
            del msg[name]
        msg[name] = value
    text, html = event.get("text"), event.get("html")
    if html is not None and text is not None:
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(text or "")
    for att in event.get("attachments") or ():
        content = att["content"]
        filename = att.get("filename")
        ctype = att.get("content_type") or (mimetypes.guess_type(filename)[0] if filename else None)
        if isinstance(content, str):
            ctype = ctype or "text/plain"
            maintype, _, subtype = ctype.partition("/")
            if maintype == "text":
                msg.add_attachment(content, subtype=subtype or "plain", filename=filename, cid=att.get("content_id"),
                                   disposition="inline" if att.get("inline") else "attachment")
                continue
            content = content.encode()
        ctype = ctype or "application/octet-stream"
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(bytes(content), maintype=maintype, subtype=subtype or "octet-stream", filename=filename,
                           cid=att.get("content_id"), disposition="inline" if att.get("inline") else "attachment")
    recipients = [addr for _, addr in email.utils.getaddresses(to + cc + bcc) if addr]
    if not recipients:
        raise ValueError("email.send: no valid recipient address in 'to', 'cc' or 'bcc'")
    envelope_from = email.utils.parseaddr(sender)[1]
    return msg, envelope_from, recipients


def _needs_smtputf8(addresses: list[str]) -> bool:
    return any(not a.isascii() for a in addresses)


class Relay:
    """Delivers messages to the configured relay, retrying temporary failures with backoff."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config

    async def send(self, event: Mapping[str, Any]) -> str:
        """Deliver one ``email.send`` event; returns the Message-ID. Raises ``DeliveryError``."""
        msg, sender, recipients = build_message(event, self.config.default_from)
        utf8 = _needs_smtputf8([sender, *recipients])
        policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
        raw = msg.as_bytes(policy=policy)
        await self.deliver(raw, sender, recipients, utf8=utf8, message_id=str(msg["Message-ID"]))
        return str(msg["Message-ID"])

    async def deliver(self, raw: bytes, sender: str, recipients: list[str], *, utf8: bool = False, message_id: str = "") -> None:
        cfg = self.config
        delay = cfg.backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                errors, response = await aiosmtplib.send(
                    raw, sender=sender, recipients=recipients,
                    mail_options=["SMTPUTF8"] if utf8 else None,
                    hostname=cfg.host, port=cfg.port, username=cfg.username, password=cfg.password,
                    use_tls=cfg.tls == "implicit", start_tls=cfg.tls == "starttls",
                    validate_certs=cfg.verify_tls, timeout=cfg.timeout,
                )
            except aiosmtplib.SMTPRecipientsRefused as exc:
                codes = [r.code for r in exc.recipients]
                detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
                if all(400 <= c < 500 for c in codes):
                    error = DeliveryError(f"relay refused every recipient for now: {detail}", permanent=False, code=codes[0])
                else:
                    raise self._permanent(f"relay refused the recipients: {detail}", codes[0], message_id) from None
            except aiosmtplib.SMTPResponseException as exc:
                text = f"relay replied {exc.code} {exc.message}"
                if 500 <= exc.code < 600:
                    raise self._permanent(text, exc.code, message_id) from None
                error = DeliveryError(text, permanent=False, code=exc.code)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                error = DeliveryError(f"relay {cfg.host}:{cfg.port} unreachable: {type(exc).__name__}: {exc}", permanent=False)
            else:
                if errors:
                    detail = "; ".join(f"{rcpt}: {r.code} {r.message}" for rcpt, r in errors.items())
                    log.error("email.send.partial", message_id=message_id, refused=detail, relay_reply=response)
                log.info("email.sent", message_id=message_id, recipients=len(recipients) - len(errors), attempts=attempt)
                return
            if attempt > cfg.retries:
                log.error("email.send.failed", message_id=message_id, attempts=attempt, error=str(error))
                raise error
            log.warning("email.send.retry", message_id=message_id, attempt=attempt, wait=delay, error=str(error))
            await asyncio.sleep(delay)
            delay = min(delay * 2, cfg.max_backoff)

    def _permanent(self, text: str, code: int, message_id: str) -> DeliveryError:
        log.error("email.send.rejected", message_id=message_id, relay_reply=text)
        return DeliveryError(text, permanent=True, code=code)
