"""aiohttp's own low-level server (no ASGI) answering bench/http.py's three paths: the floor of
what an aiohttp-based server can cost, printed beside the gateway and uvicorn.

    python bench/aiohttp_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web
from apps import CHUNK, DOWNLOAD_SIZE, HELLO


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    if request.path == "/upload":
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.Response(body=str(total).encode(), content_type="text/plain")
    if request.path == "/download":
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = DOWNLOAD_SIZE
        await response.prepare(request)
        for _ in range(DOWNLOAD_SIZE // len(CHUNK)):
            await response.write(CHUNK)
        await response.write_eof()
        return response
    return web.Response(body=HELLO, content_type="text/plain")


async def main(port: int) -> None:
    server = web.Server(handle, access_log=None)
    await asyncio.get_running_loop().create_server(server, "127.0.0.1", port, backlog=1024)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
