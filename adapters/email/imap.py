"""IMAP ingestion (aioimaplib): one poller per configured mailbox.

Each poller connects, logs in, selects the folder and handles every message not handled yet
(``UNSEEN``, or everything still in the folder with ``after: move``/``delete``), routing each
like an SMTP message (``scope["source"] == "imap"``). After the application returned, the
message is flagged ``\\Seen`` (or moved, or deleted); when it failed, it stays as it is and is
tried again on the next round, up to ``max_attempts``, and then moved to ``error_folder``.
Between rounds the poller waits with IDLE when the server offers it, else polls. A dropped
connection is re-established with exponential backoff. UIDVALIDITY is tracked: when it changes,
the per-UID bookkeeping (attempts, handled UIDs, last UID) starts over.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import re
import secrets
import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import aioimaplib

from .parse import TooComplex, read_message, scope_headers
from .smtp_in import ASGI

if TYPE_CHECKING:
    from .adapter import EmailAdapter
    from .config import ImapMailbox

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_UID = re.compile(rb"UID (\d+)")


class ImapError(Exception):
    """A command the server refused (the poller reconnects after a backoff)."""


# What a server or a network can do to a session (the poller reconnects and says so in one line).
_CONNECTION_FAILURES = (OSError, TimeoutError, ImapError, aioimaplib.AioImapException)


def _check(response: Any, what: str) -> Any:
    if response.result != "OK":
        text = b" ".join(bytes(x) for x in response.lines).decode(errors="replace")
        raise ImapError(f"{what}: {response.result} {text}")
    return response


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"""


class MailboxLock:
    """One poller per mailbox across gateway processes: a Redis key with an expiry, renewed while
    held. A holder that dies stops renewing; after ``ttl`` another process takes over."""

    def __init__(self, layer: Any, label: str, ttl: float) -> None:
        from gateway.layers.redis_hosts import make_client

        self.client = make_client(layer.hosts[0], socket_timeout=max(1.0, ttl / 3), connect_timeout=max(1.0, ttl / 3))
        self.key = f"{layer.prefix}:email.imap.lock:{label}"
        self.token = secrets.token_hex(12)
        self.ttl_ms = max(int(ttl * 1000), 100)
        self.closed = False

    async def acquire(self) -> bool:
        if await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return await self.renew()

    async def renew(self) -> bool:
        return bool(await self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    async def release(self) -> None:
        try:
            await self.client.eval(_RELEASE, 1, self.key, self.token)
        except Exception:  # noqa: BLE001 - it expires anyway
            pass

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self.release()
        try:
            await self.client.aclose()
        except Exception:  # noqa: BLE001
            pass


def make_lock(layer: Any, label: str, ttl: float) -> MailboxLock | None:
    """A lock when the channel layer is the Redis one (several processes may share mailboxes)."""
    try:
        from gateway.layers.redis import RedisChannelLayer
    except ImportError:
        return None
    if not isinstance(layer, RedisChannelLayer):
        return None
    return MailboxLock(layer, label, ttl)


class MailboxPoller:
    def __init__(self, adapter: EmailAdapter, config: ImapMailbox) -> None:
        self.adapter = adapter
        self.config = config
        self.log = adapter.context.log.bind(mailbox=config.label)
        self.task: asyncio.Task[None] | None = None
        self.client: aioimaplib.IMAP4 | None = None
        self.uidvalidity: int | None = None
        self.last_uid = 0
        self.attempts: dict[int, int] = {}
        self.handled: set[int] = set()  # handled, but the after-action may not have stuck yet
        self._renewer: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.rounds = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self.lock = make_lock(adapter.context.layer, config.label, config.lock_ttl)
        self._abandoned = False  # a command on this connection was given up: no LOGOUT on it
        self._outcomes = adapter.context.metrics.counter(
            "gateway_email_imap_messages_total",
            "IMAP messages by outcome: handled, retry (left for the next round), error_folder, rejected, unroutable, "
            "too_complex (over the mime limits).",
            ("mailbox", "outcome"),
        )
        self.holding = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"imap {self.config.label}")

    async def stop(self, drain: float) -> None:
        self._stopping = True
        self._wake.set()
        if self.task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), max(drain, 0.1))
        except (TimeoutError, asyncio.CancelledError):
            pass
        if not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self._close()
        if self.lock is not None:
            await self.lock.close()

    def _health(self, status: str, detail: str = "") -> None:
        self.adapter.context.health.set(f"email.imap.{self.config.label}", status, detail)  # type: ignore[arg-type]

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            renewer, self._renewer = self._renewer, None
            if renewer is not None:
                renewer.cancel()

    async def _loop(self) -> None:
        cfg = self.config
        delay = cfg.reconnect_backoff
        while not self._stopping:
            try:
                if self.lock is not None and not await self._take_lock():
                    continue
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a backoff
                if self._stopping:
                    break
                self.connected.clear()
                self._health("degraded", f"{type(exc).__name__}: {exc}")
                # what the network and the server do is one line; anything else is a bug: its traceback
                trace = {} if isinstance(exc, _CONNECTION_FAILURES) else {"exc_info": exc}
                self.log.warning("imap.disconnected", error=f"{type(exc).__name__}: {exc}", retry_in=delay, **trace)
                await self._close()
                await self._sleep(delay)
                delay = min(delay * 2, cfg.max_backoff)
                continue
            delay = cfg.reconnect_backoff
        await self._close()
        if self.lock is not None:
            await self.lock.close()

    async def _take_lock(self) -> bool:
        """Wait until this process holds the mailbox lock; False when stopping."""
        assert self.lock is not None
        waited = False
        while not self._stopping:
            if await self.lock.acquire():
                self.holding = True
                self.log.info("imap.lock_acquired", key=self.lock.key)
                self._renewer = asyncio.get_running_loop().create_task(self._keep_lock())
                return True
            if not waited:
                self.log.info("imap.lock_busy", key=self.lock.key, note="another gateway process polls this mailbox")
                self._health("ok", "standby: another process holds the mailbox lock")
                waited = True
            await self._sleep(self.config.lock_ttl / 3)
        return False

    async def _keep_lock(self) -> None:
        """Renew the lock every ttl/3; if it is lost (or Redis fails), drop the IMAP connection
        so this process stops handling the mailbox at once."""
        assert self.lock is not None
        try:
            while True:
                await asyncio.sleep(self.config.lock_ttl / 3)
                try:
                    ok = await self.lock.renew()
                except Exception as exc:  # noqa: BLE001
                    self.log.warning("imap.lock_renew_failed", error=f"{type(exc).__name__}: {exc}")
                    ok = False
                if not ok:
                    break
        except asyncio.CancelledError:
            return
        self.holding = False
        self.log.warning("imap.lock_lost", key=self.lock.key)
        client = self.client
        transport = getattr(client.protocol, "transport", None) if client is not None else None
        if transport is not None:
            transport.close()
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _close(self) -> None:
        renewer = getattr(self, "_renewer", None)
        if renewer is not None:
            self._renewer = None
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        if self.holding and self.lock is not None:
            self.holding = False
            await self.lock.release()
        client, self.client = self.client, None
        if client is None:
            return
        # LOGOUT only on a healthy connection: on a dead one it would wait on commands that never end.
        if not self._lost.done() and not self._abandoned and self._writable(client):
            try:
                if client.get_state() in ("AUTH", "SELECTED"):  # a polite goodbye, never a long one
                    await asyncio.wait_for(self._command(client.logout(), "LOGOUT", check=False), 2)
            except Exception:  # noqa: BLE001 - best effort
                pass
        transport = getattr(client.protocol, "transport", None)
        if transport is not None:
            transport.close()
        # What aioimaplib still waits for on this connection will never come: end it now rather
        # than leave tasks pending for the garbage collector to complain about.
        leftovers = [t for t in (*client.tasks, *client.protocol.tasks) if not t.done()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    # -- one connection ------------------------------------------------------------------------
    async def _connect(self) -> aioimaplib.IMAP4:
        cfg = self.config
        lost = asyncio.get_running_loop().create_future()

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(exc)
            self._wake.set()

        self._lost = lost
        self._abandoned = False
        if cfg.tls == "implicit":
            client = aioimaplib.IMAP4(
                cfg.host, cfg.real_port, timeout=cfg.timeout, conn_lost_cb=on_lost, ssl_context=self._tls_context(),
            )
        else:
            client = aioimaplib.IMAP4(cfg.host, cfg.real_port, timeout=cfg.timeout, conn_lost_cb=on_lost)
        self.client = client
        try:
            await client.wait_hello_from_server()
        except TimeoutError:
            raise ImapError(f"no greeting from the server within {cfg.timeout:g} s") from None
        if cfg.tls == "starttls":
            await self._starttls(client, self._tls_context())
        return client

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _starttls(self, client: aioimaplib.IMAP4, context: ssl.SSLContext) -> None:
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("the server does not offer STARTTLS")
        cmd = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        await self._command(protocol.execute(cmd), "STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(protocol.transport, protocol, context, server_hostname=self.config.host)
        protocol.transport = transport
        await self._command(protocol.capability(), "CAPABILITY", check=False)

    async def _session(self) -> None:
        cfg = self.config
        client = await self._connect()
        await self._command(client.login(cfg.user, cfg.password), "LOGIN")
        selected = await self._command(client.select(_quote(cfg.folder)), f"SELECT {cfg.folder}")
        validity = None
        for line in selected.lines:
            m = _UIDVALIDITY.search(bytes(line))
            if m:
                validity = int(m.group(1))
        if validity != self.uidvalidity:
            if self.uidvalidity is not None:
                self.log.warning("imap.uidvalidity_changed", old=self.uidvalidity, new=validity)
            self.uidvalidity = validity
            self.last_uid = 0
            self.attempts.clear()
            self.handled.clear()
        await self._ensure_folder(client, cfg.error_folder)
        if cfg.after == "move" and cfg.move_to:
            await self._ensure_folder(client, cfg.move_to)
        self.connected.set()
        self._health("ok", f"{cfg.host}:{cfg.real_port}/{cfg.folder}")
        self.log.info("imap.connected", uidvalidity=validity, idle=self._use_idle(client))
        while not self._stopping:
            await self._round(client)
            self.rounds += 1
            if self._lost.done():
                raise ImapError("connection lost")
            if self._use_idle(client):
                await self._idle(client)
            else:
                await self._sleep(cfg.poll_interval)
                if self._lost.done():
                    raise ImapError("connection lost")
                await self._command(client.noop(), "NOOP")

    def _use_idle(self, client: aioimaplib.IMAP4) -> bool:
        return self.config.idle and client.has_capability("IDLE")

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        idle = await self._command(client.idle_start(timeout=self.config.poll_interval), "IDLE", check=False)
        try:
            waiter = asyncio.ensure_future(client.wait_server_push(self.config.poll_interval + 5))
            wake = asyncio.ensure_future(self._wake_wait())
            await asyncio.wait({waiter, wake, self._lost}, return_when=asyncio.FIRST_COMPLETED)
            for task in (waiter, wake):
                task.cancel()
            await asyncio.gather(waiter, wake, return_exceptions=True)
        finally:
            if self._dropped():
                idle.cancel()
                await asyncio.gather(idle, return_exceptions=True)
            else:
                if client.has_pending_idle():
                    client.idle_done()
                await self._command(idle, "IDLE DONE", check=False)
        if self._lost.done():
            raise ImapError("connection lost")

    @staticmethod
    def _writable(client: aioimaplib.IMAP4) -> bool:
        transport = getattr(client.protocol, "transport", None)
        return transport is not None and not transport.is_closing()

    async def _command(self, command: Awaitable[Any], what: str, *, check: bool = True) -> Any:
        """One IMAP command, bounded by ``timeout`` and by the connection: aioimaplib leaves a
        command waiting for ever when the connection drops under it (and some commands have no
        timeout of their own), which would wedge the mailbox."""
        if self._dropped():
            if inspect.iscoroutine(command):
                command.close()
            raise ImapError(f"{what}: connection lost")
        task = asyncio.ensure_future(command)
        try:
            await asyncio.wait({task, self._lost}, timeout=self.config.timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self._abandoned = True
        if task.cancelled() or (task.exception() is not None and self._dropped()):
            # (writing to a transport that just closed raises RuntimeError on uvloop: the same drop)
            lost = self._dropped()
            raise ImapError(f"{what}: connection lost" if lost else f"{what}: no answer in {self.config.timeout:g} s")
        return _check(task.result(), what) if check else task.result()

    def _dropped(self) -> bool:
        return self._lost.done() or self.client is None or not self._writable(self.client)

    async def _wake_wait(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    async def _ensure_folder(self, client: aioimaplib.IMAP4, folder: str) -> None:
        response = await self._command(client.create(_quote(folder)), f"CREATE {folder}", check=False)
        if response.result != "OK":
            text = b" ".join(bytes(x) for x in response.lines)
            if b"ALREADYEXISTS" not in text.upper() and b"EXISTS" not in text.upper():
                raise ImapError(f"CREATE {folder}: {text.decode(errors='replace')}")

    # -- one round: every pending message -------------------------------------------------------
    async def _round(self, client: aioimaplib.IMAP4) -> None:
        criteria = "UNSEEN UNDELETED" if self.config.after == "seen" else "UNDELETED"
        response = await self._command(client.uid_search(criteria, charset=None), "UID SEARCH")
        uids: list[int] = []
        for line in response.lines[:-1]:
            uids.extend(int(tok) for tok in bytes(line).split() if tok.isdigit())
        for uid in sorted(set(uids)):
            if self._stopping:
                return
            await self._handle(client, uid)

    async def _handle(self, client: aioimaplib.IMAP4, uid: int) -> None:
        cfg = self.config
        if uid in self.handled:
            await self._after_success(client, uid)  # the earlier after-action did not stick
            return
        fetched = await self._command(client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), f"UID FETCH {uid}")
        raw = None
        for line in fetched.lines:
            if isinstance(line, bytearray):
                raw = bytes(line)
                break
        if raw is None:
            self.log.warning("imap.fetch_empty", uid=uid)
            return
        try:
            parsed = await read_message(raw, self.adapter.config.mime)
        except TooComplex as exc:
            # It will never parse better: straight to the error folder, as a 5xx reject goes.
            self.log.warning("imap.too_complex", uid=uid, reason=str(exc), moved_to=cfg.error_folder)
            await self._to_error_folder(client, uid)
            self._count("too_complex")
            return
        except Exception as exc:  # the message's failure, never the connection's
            self.log.error("imap.parse_failed", uid=uid, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            await self._failed(client, uid, "the message could not be parsed")
            return
        scope = self._scope(uid, parsed)
        match = self.adapter.context.resolve(scope)
        if match is None:
            self.log.warning("imap.unroutable", uid=uid, rcpt_to=scope["rcpt_to"], moved_to=cfg.error_folder)
            await self._to_error_folder(client, uid)
            self._count("unroutable")
            return
        event = {"type": "email.message", "raw": raw, "message": parsed}
        reply = (await self.adapter.run_shielded([(match, scope)], event))[0]
        if reply.startswith("2"):
            self.handled.add(uid)
            self.last_uid = max(self.last_uid, uid)
            self.attempts.pop(uid, None)
            self._count("handled")
            await self._after_success(client, uid)
        elif reply.startswith("5"):
            self.log.warning("imap.rejected", uid=uid, reply=reply, moved_to=cfg.error_folder)
            await self._to_error_folder(client, uid)
            self._count("rejected")
        else:
            await self._failed(client, uid, reply)

    async def _failed(self, client: aioimaplib.IMAP4, uid: int, why: str) -> None:
        """One failed attempt at ``uid``: tried again next round, or moved after ``max_attempts``."""
        cfg = self.config
        tries = self.attempts[uid] = self.attempts.get(uid, 0) + 1
        if tries >= cfg.max_attempts:
            self.log.error("imap.gave_up", uid=uid, attempts=tries, moved_to=cfg.error_folder, reply=why)
            await self._to_error_folder(client, uid)
            self.attempts.pop(uid, None)
            self._count("error_folder")
        else:
            self.log.warning("imap.retry_later", uid=uid, attempt=tries, reply=why)
            self._count("retry")

    def _count(self, outcome: str) -> None:
        self._outcomes.labels(self.config.label, outcome).inc()

    def _scope(self, uid: int, parsed: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        headers = scope_headers(parsed)
        recipient = cfg.address
        if recipient is None:
            recipient = cfg.user if "@" in cfg.user else (parsed["to"][0]["address"] if parsed["to"] else cfg.user)
        sender = ""
        for name, value in parsed["headers"]:
            if name.lower() == "return-path":
                sender = email.utils.parseaddr(value)[1]
                break
        else:
            if parsed["from"]:
                sender = parsed["from"]["address"]
        return {
            "type": "email",
            "asgi": ASGI,
            "source": "imap",
            "mail_from": sender,
            "rcpt_to": recipient,
            "recipients": [recipient],
            "client": None,
            "server": [cfg.host, cfg.real_port],
            "helo": None,
            "tls": cfg.tls != "none",
            "auth_user": None,
            "user": None,
            "smtputf8": False,
            "headers": headers,
            "message_id": parsed["message_id"],
            "mailbox": cfg.label,
            "folder": cfg.folder,
            "uid": uid,
            "uidvalidity": self.uidvalidity,
        }

    async def _after_success(self, client: aioimaplib.IMAP4, uid: int) -> None:
        cfg = self.config
        if cfg.after == "seen":
            await self._command(client.uid("store", str(uid), "+FLAGS.SILENT (\\Seen)"), f"UID STORE {uid}")
        elif cfg.after == "move":
            assert cfg.move_to is not None
            await self._move(client, uid, cfg.move_to)
        else:
            await self._command(client.uid("store", str(uid), "+FLAGS.SILENT (\\Deleted)"), f"UID STORE {uid}")
            await self._expunge(client, uid)
        self.handled.discard(uid)

    async def _to_error_folder(self, client: aioimaplib.IMAP4, uid: int) -> None:
        await self._move(client, uid, self.config.error_folder)

    async def _move(self, client: aioimaplib.IMAP4, uid: int, folder: str) -> None:
        if client.has_capability("MOVE"):
            await self._command(client.uid("move", str(uid), _quote(folder)), f"UID MOVE {uid}")
            return
        await self._command(client.uid("copy", str(uid), _quote(folder)), f"UID COPY {uid}")
        await self._command(client.uid("store", str(uid), "+FLAGS.SILENT (\\Deleted)"), f"UID STORE {uid}")
        await self._expunge(client, uid)

    async def _expunge(self, client: aioimaplib.IMAP4, uid: int) -> None:
        if client.has_capability("UIDPLUS"):
            await self._command(client.uid("expunge", str(uid)), f"UID EXPUNGE {uid}")
        else:
            await self._command(client.expunge(), "EXPUNGE")
