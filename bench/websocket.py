"""WebSocket speed and footprint: the gateway vs uvicorn (websockets, and websockets-sansio: its
fastest engine; both on uvloop) vs Daphne, same app.

    .venv/bin/python bench/websocket.py [--seconds 5] [--idle 10000] [--repeat 3] [--servers gateway,uvicorn,daphne]

Measures echo round trips/s over 50 connections, broadcast of one message to 1,000 and to
10,000 clients of one group (time until the last client has it), and resident memory per idle
connection with 10,000 connections held open. The client side is a minimal asyncio protocol on
uvloop (no WebSocket library) so that it costs as little CPU as possible.
"""

from __future__ import annotations

import os
import sys

# bench/http.py and bench/email.py shadow the standard library: this folder goes last on sys.path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import argparse
import asyncio
import base64
import struct
import time

import _common as common

MASK = b"\x00\x00\x00\x00"  # a zero mask keeps the client cheap; servers accept any mask


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, 0x80 | n]) + MASK + payload
    return bytes([0x81, 0x80 | 126]) + struct.pack("!H", n) + MASK + payload


class Client(asyncio.Protocol):
    """A bare WebSocket client: handshake, then counts (and optionally awaits) text frames."""

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.path = path
        self.loop = loop
        self.opened = loop.create_future()
        self.waiter: asyncio.Future[bytes] | None = None
        self.buf = b""
        self.upgraded = False
        self.received = 0
        self.transport: asyncio.Transport | None = None
        self.on_message = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16))
        transport.write(  # type: ignore[attr-defined]
            b"GET %s HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.path.encode(), key)
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                if not self.opened.done():
                    self.opened.set_exception(RuntimeError(buf[:80].decode(errors="replace")))
                return
            self.upgraded = True
            buf = buf[end + 4:]
            if not self.opened.done():
                self.opened.set_result(None)
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            i = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n = struct.unpack_from("!H", buf, 2)[0]
                i = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n = struct.unpack_from("!Q", buf, 2)[0]
                i = 10
            if len(buf) < i + n:
                break
            opcode = buf[0] & 0x0F
            payload = buf[i:i + n]
            buf = buf[i + n:]
            if opcode in (1, 2):
                self.received += 1
                waiter = self.waiter
                if waiter is not None and not waiter.done():
                    self.waiter = None
                    waiter.set_result(payload)
                if self.on_message is not None:
                    self.on_message()
            elif opcode == 9:  # ping -> pong
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + MASK + payload)  # type: ignore[union-attr]
        self.buf = buf

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the handshake"))
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def roundtrip(self, frame: bytes) -> bytes:
        self.waiter = self.loop.create_future()
        self.transport.write(frame)  # type: ignore[union-attr]
        return await self.waiter


async def connect_many(port: int, path: str, n: int, batch: int = 200) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for start in range(0, n, batch):
        made = await asyncio.gather(*(
            loop.create_connection(lambda: Client(path, loop), "127.0.0.1", port) for _ in range(min(batch, n - start))
        ))
        group = [p for _, p in made]
        await asyncio.gather(*(c.opened for c in group))
        clients.extend(group)
    return clients


def close_all(clients: list[Client]) -> None:
    for c in clients:
        if c.transport is not None:
            c.transport.abort()


async def echo(port: int, seconds: float, connections: int = 50) -> float:
    clients = await connect_many(port, "/echo", connections)
    frame = text_frame(b"x" * 32)
    count = 0
    stop = time.perf_counter() + seconds

    async def loop_one(c: Client) -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await c.roundtrip(frame)
            count += 1

    for c in clients:  # warm-up
        await c.roundtrip(frame)
    started = time.perf_counter()
    await asyncio.gather(*(loop_one(c) for c in clients))
    elapsed = time.perf_counter() - started
    close_all(clients)
    return count / elapsed


async def broadcast(port: int, n: int, timeout: float = 120.0) -> float | None:
    """Seconds from the trigger message until the last of ``n`` group members has the broadcast."""
    members = await connect_many(port, "/group", n)
    trigger = (await connect_many(port, "/group", 1))[0]
    await asyncio.sleep(0.5 + n / 20000)  # let every app instance register itself in the group
    loop = asyncio.get_running_loop()
    remaining = n
    done = loop.create_future()

    def got() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not done.done():
            done.set_result(time.perf_counter())

    for m in members:
        m.on_message = got
    started = time.perf_counter()
    trigger.transport.write(text_frame(b"broadcast"))  # type: ignore[union-attr]
    try:
        finished = await asyncio.wait_for(done, timeout)
    except TimeoutError:
        print(f"   broadcast to {n}: only {n - remaining} received within {timeout:g} s", file=sys.stderr)
        return None
    finally:
        close_all([*members, trigger])
    return finished - started


async def idle(port: int, pid: int, n: int) -> tuple[float, int]:
    """RSS bytes per idle connection, and how many connections were held."""
    warm = await connect_many(port, "/echo", 100)
    close_all(warm)
    await asyncio.sleep(1.0)
    before = common.rss_bytes(pid)
    clients = await connect_many(port, "/echo", n)
    await asyncio.sleep(2.0)
    after = common.rss_bytes(pid)
    held = sum(1 for c in clients if c.transport is not None and not c.transport.is_closing())
    close_all(clients)
    return (after - before) / n, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the echo measurement (default 5)")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all servers; medians are printed (default 3)")
    parser.add_argument("--servers", default=",".join((*common.SERVERS, "uvicorn-sansio")), help="comma-separated subset to run")
    args = parser.parse_args()
    limit = common.raise_fd_limit()
    if limit < args.idle + 1000:
        sys.exit(f"the open-file limit is {limit}; raise it (ulimit -n) to at least {args.idle + 1000}")
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    servers = [s for s in args.servers.split(",") if s]
    runs: dict[str, dict[str, list[float | None]]] = {k: {s: [] for s in servers} for k in ("echo", "b1k", "b10k", "idle")}
    # Interleaved rounds, medians printed: one noisy moment on a shared machine does not decide a ratio.
    for round_no in range(1, args.repeat + 1):
        for server in servers:
            print(f"-- {server} (round {round_no} of {args.repeat})", file=sys.stderr, flush=True)
            try:
                with common.running(server) as (port, proc):
                    # memory first, while the server's heap has not yet grown for other measurements
                    per, held = runner(idle(port, proc.pid, args.idle))
                    runs["idle"][server].append(per / 1024)
                    print(f"   {server}: {held} idle connections held", file=sys.stderr)
                    runs["echo"][server].append(runner(echo(port, args.seconds)))
                    t = runner(broadcast(port, 1000))
                    runs["b1k"][server].append(t * 1000 if t is not None else None)
                    t = runner(broadcast(port, 10_000))
                    runs["b10k"][server].append(t * 1000 if t is not None else None)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other servers
                print(f"   {server} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    rows = {k: {s: common.median(v) for s, v in per_server.items()} for k, per_server in runs.items()}
    print(common.table(
        f"WebSocket ({args.seconds:g} s echo; {args.idle} idle connections; median of {args.repeat} rounds; client and server on one machine)",
        [
            ("echo round trips, 50 connections", "rt/s", rows["echo"]),
            ("broadcast to 1,000 (last client)", "ms", rows["b1k"]),
            ("broadcast to 10,000 (last client)", "ms", rows["b10k"]),
            (f"RSS per idle connection ({args.idle})", "KiB", rows["idle"]),
        ],
        {"rt/s": True, "ms": False, "KiB": False},
    ))


if __name__ == "__main__":
    main()
