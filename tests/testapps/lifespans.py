"""Applications with lifespan behaviours the tests check."""

from __future__ import annotations

import json

EVENTS: list[str] = []


async def with_state(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                EVENTS.append("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                EVENTS.append("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = repr(scope.get("state")).encode()
    if scope["type"] == "syslog":
        await receive()
        EVENTS.append(f"state:{scope['state'].get('db')}")
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def failing_startup(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


async def no_lifespan(scope, receive, send):
    if scope["type"] == "lifespan":
        raise ValueError("lifespan not supported")
    await receive()


async def waits_for_a_file(scope, receive, send):
    """Its startup holds until the file named by GATE_FILE exists (a test decides when)."""
    import asyncio
    import os
    from pathlib import Path

    if scope["type"] == "lifespan":
        await receive()
        print(json.dumps({"event": "test.startup_waiting"}), flush=True)
        gate = Path(os.environ["GATE_FILE"])
        while not gate.exists():
            await asyncio.sleep(0.02)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
