"""Helpers for tests that run a whole gateway in-process on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "plugins"


def syslog_yaml(routes: str, *, transport: str = "tcp", extra: str = "") -> str:
    """A config with the example syslog plugin listening on a free port."""
    return f"""\
plugins: {{paths: ["{PLUGINS}"]}}
adapters:
  syslog: {{listen: "127.0.0.1:0", transport: {transport}}}
routes:
  syslog:
{routes}
{extra}"""


async def send_lines(address: str, *lines: bytes) -> None:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"".join(lines))
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def eventually(predicate, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (polling); fail with the last value otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket without SO_REUSEPORT, as a foreign program
    holds it, for as long as the block runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for peers that need a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(program: str, *fallbacks: str) -> str:
    """The path of a peer program the tests run; a clear failure (never a skip) when it is missing."""
    for candidate in (shutil.which(program), *fallbacks):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(f"{program} is not installed: `make test` installs every test peer (tests/install-peers.sh)", pytrace=False)
