"""The trivial ASGI apps every server under test runs (gateway, uvicorn, Daphne): same code for all."""

from __future__ import annotations

HELLO = b"Hello, world!"
CHUNK = b"x" * 65536
DOWNLOAD_SIZE = 1024 * 1024

_clients: set = set()  # broadcast group: the send callables of connected WebSocket clients


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        path = scope["path"]
        if path == "/upload":
            total = 0
            more = True
            while more:
                message = await receive()
                total += len(message.get("body", b""))
                more = message.get("more_body", False)
            body = str(total).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        elif path == "/download":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream"),
                                    (b"content-length", str(DOWNLOAD_SIZE).encode())]})
            sent = 0
            while sent < DOWNLOAD_SIZE:
                sent += len(CHUNK)
                await send({"type": "http.response.body", "body": CHUNK, "more_body": sent < DOWNLOAD_SIZE})
        else:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")]})
            await send({"type": "http.response.body", "body": HELLO})
    elif kind == "websocket":
        path = scope["path"]
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if path == "/echo":
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                if message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:  # /group: stay connected; a "broadcast" message from anyone goes to every member
            _clients.add(send)
            try:
                while True:
                    message = await receive()
                    if message["type"] != "websocket.receive":
                        return
                    if message.get("text") == "broadcast":
                        event = {"type": "websocket.send", "text": "news"}
                        for member in list(_clients):
                            if member is not send:
                                try:
                                    await member(event)
                                except Exception:  # noqa: BLE001 - a departed client
                                    pass
            finally:
                _clients.discard(send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
