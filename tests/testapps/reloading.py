"""Apps for the reload tests: a WebSocket echo, two HTTP answers, and apps whose lifespan leaves
a trace in a file (RELOAD_TRACE), so a test in another process sees starts and stops."""

import os


def _trace(line: str) -> None:
    with open(os.environ["RELOAD_TRACE"], "a") as f:
        f.write(line + "\n")


async def echo(scope, receive, send):
    if scope["type"] != "websocket":
        return
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event.get("text") or ""})
        else:
            return


def answer(label: str):
    body = label.encode()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                kind = event["type"].split(".")[-1]
                _trace(f"{label} {kind}")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


old = answer("old")
new = answer("new")
kept = answer("kept")
