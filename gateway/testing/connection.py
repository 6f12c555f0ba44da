"""HTTP and WebSocket communicators with Channels' names and behaviour, run by the gateway's runner.

Channels' ``ApplicationCommunicator`` calls the application directly. These route the scope
through the harness's router first (so a YAML's paths, captures, middleware and origin checks
apply), then run the routed app as a gateway ``Instance``: every event the app sends is checked
against the event table, exactly as in production. The methods keep Channels' signatures,
return values and exceptions (the app's exception is raised by the next call that waits on it;
``receive_output`` raises ``TimeoutError`` and cancels the app), so a Channels test suite switches
by changing its import.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import unquote, urlparse

from gateway.runner import Instance
from gateway.types import Message, Scope

from .harness import Harness, harness_for

ASGI = {"version": "3.0", "spec_version": "2.3"}


class ApplicationCommunicator:
    """Feeds events to one application instance and collects what it sends."""

    def __init__(self, application: Any, scope: Scope, *, adapter: str = "http") -> None:
        self.harness: Harness = harness_for(application)
        self.scope = scope
        self.adapter = adapter
        self.output_queue: asyncio.Queue[Message] = asyncio.Queue()
        self._instance: Instance | None = None

    @property
    def instance(self) -> Instance:
        """The running instance, started on first use (as Channels starts its future)."""
        if self._instance is None:
            match = self.harness.resolve_or_refuse(self.scope)
            self._instance = self.harness.runner.instance(match, self.scope, self.output_queue.put, adapter=self.adapter)
            self._instance.start()
        return self._instance

    @property
    def future(self) -> asyncio.Task[Any]:
        task = self.instance.task
        assert task is not None
        return task

    def _raise_if_failed(self) -> None:
        """Raise the app's exception (or its timeout) once the instance has ended with one."""
        if self.future.done() and not self.future.cancelled():  # cancelled: by a timeout here, reported then
            result = self.future.result()
            if result.error is not None and not isinstance(result.error, asyncio.CancelledError):
                raise result.error

    async def send_input(self, message: Message) -> None:
        self._raise_if_failed()
        await self.instance.put(message)

    async def receive_output(self, timeout: float = 1) -> Message:
        self._raise_if_failed()
        if not self.output_queue.empty():
            return self.output_queue.get_nowait()
        getter = asyncio.ensure_future(self.output_queue.get())
        try:
            done, _ = await asyncio.wait({getter, self.future}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter in done:
            return getter.result()
        if self.future.done():
            self._raise_if_failed()
            if not self.output_queue.empty():
                return self.output_queue.get_nowait()
            raise TimeoutError("the application returned without sending another event")
        await self._cancel()
        raise TimeoutError(f"no event from the application within {timeout} s")

    async def receive_nothing(self, timeout: float = 0.1, interval: float = 0.01) -> bool:
        self._raise_if_failed()
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.output_queue.empty():
                return False
            await asyncio.sleep(interval)
        return self.output_queue.empty()

    async def wait(self, timeout: float = 1) -> None:
        """Wait for the application to return; raise its exception; cancel it after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.future)
        finally:
            if not self.future.done():
                await self._cancel()
        self._raise_if_failed()

    async def _cancel(self) -> None:
        self.future.cancel()
        try:
            await self.future
        except asyncio.CancelledError:
            pass

    def stop(self, exceptions: bool = True) -> None:
        if self._instance is None or self._instance.task is None:
            return
        if not self.future.done():
            self.future.cancel()
        elif exceptions:
            self._raise_if_failed()


def _base_scope(kind: str, path: str, headers: Any) -> Scope:
    parsed = urlparse(path)
    return {
        "type": kind,
        "asgi": dict(ASGI),
        "http_version": "1.1",
        "scheme": "ws" if kind == "websocket" else "http",
        "path": unquote(parsed.path),
        "raw_path": parsed.path.encode(),
        "query_string": parsed.query.encode("utf-8"),
        "root_path": "",
        "headers": list(headers or []),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }


class HttpCommunicator(ApplicationCommunicator):
    """One HTTP request: ``await HttpCommunicator(app, "GET", "/").get_response()``."""

    def __init__(self, application: Any, method: str, path: str, body: bytes = b"", headers: Any = None) -> None:
        if not isinstance(body, bytes):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        scope = _base_scope("http", path, headers)
        scope["method"] = method.upper()
        self.body = body
        self.sent_request = False
        super().__init__(application, scope, adapter="http")

    async def get_response(self, timeout: float = 1) -> dict[str, Any]:
        """``{"status", "headers", "body"}`` of the response (body chunks joined)."""
        if not self.sent_request:
            self.sent_request = True
            await self.send_input({"type": "http.request", "body": self.body})
        start = await self.receive_output(timeout)
        assert start["type"] == "http.response.start", f"expected 'http.response.start', got {start['type']!r}"
        response = {k: v for k, v in start.items() if k != "type"}
        response.setdefault("headers", [])
        response["body"] = b""
        while True:
            chunk = await self.receive_output(timeout)
            assert chunk["type"] == "http.response.body", f"expected 'http.response.body', got {chunk['type']!r}"
            response["body"] += bytes(chunk.get("body") or b"")
            if not chunk.get("more_body", False):
                return response


class WebsocketCommunicator(ApplicationCommunicator):
    """One WebSocket connection, with Channels' ``connect`` / ``send_to`` / ``receive_from`` / ..."""

    def __init__(self, application: Any, path: str, headers: Any = None, subprotocols: Any = None,
                 spec_version: str | None = None) -> None:
        if not isinstance(path, str):
            raise TypeError(f"Expected str, got {type(path)}")
        scope = _base_scope("websocket", path, headers)
        scope["subprotocols"] = list(subprotocols or [])
        if spec_version:
            scope["spec_version"] = spec_version
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        super().__init__(application, scope, adapter="http")

    async def connect(self, timeout: float = 1) -> tuple[bool, Any]:
        """``(True, subprotocol)`` when accepted, ``(False, close code)`` when refused (a denial
        response, ``websocket.http.response.start``, gives ``(False, its status)``)."""
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        if response["type"] == "websocket.http.response.start":
            return False, response["status"]
        assert response["type"] == "websocket.accept", f"expected 'websocket.accept', got {response['type']!r}"
        self.response_headers = list(response.get("headers") or [])
        return True, response.get("subprotocol")

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        assert bool(text_data) != bool(bytes_data), "You must supply exactly one of text_data or bytes_data"
        if text_data:
            assert isinstance(text_data, str), "The text_data argument must be a str"
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            assert isinstance(bytes_data, bytes), "The bytes_data argument must be bytes"
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def send_json_to(self, data: Any) -> None:
        await self.send_to(text_data=json.dumps(data))

    async def receive_from(self, timeout: float = 1) -> str | bytes:
        response = await self.receive_output(timeout)
        assert response["type"] == "websocket.send", f"Expected type 'websocket.send', but was '{response['type']}'"
        text, data = response.get("text"), response.get("bytes")
        assert (text is None) != (data is None), "The response needs exactly one of 'text' or 'bytes'"
        return text if text is not None else bytes(data)  # type: ignore[arg-type]

    async def receive_json_from(self, timeout: float = 1) -> Any:
        payload = await self.receive_from(timeout)
        assert isinstance(payload, str), f"JSON data is not a text frame, it is {type(payload)}"
        return json.loads(payload)

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": code})
        await self.wait(timeout)
