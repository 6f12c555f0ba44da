"""Shared pieces of the Redis layer tests: a real ``redis-server`` on a free port, per test prefixes.

The server is started by the tests (never the system Redis on 6379), without persistence, so a
restart loses everything, which is exactly the fault the layer must survive.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from gateway_helpers import free_port, require

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    """One ``redis-server`` subprocess on 127.0.0.1; ``stop``/``start`` keep the port."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        # Its own directory: a replica writes the data it receives to dump.rdb there, and a
        # redis-server loads dump.rdb from its directory when it starts.
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it empty (no persistence: a restart loses everything)."""
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "no", "--dir", str(self.dir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def command(self, *args: str) -> bytes:
        """One raw command over a fresh socket (inline protocol); the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            return s.recv(65536)


def layer_kwargs(server: RedisServer, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"hosts": [server.url], "prefix": prefix, **extra}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def run_script(tmp_path: Path, name: str, source: str, *args: str) -> subprocess.Popen[str]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, str(path), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=str(ROOT), env=subprocess_env(),
    )


async def read_line(proc: subprocess.Popen[str], timeout: float = 15) -> dict[str, Any]:
    """The script's next JSON line, skipping log lines (structlog prints to stdout by default)."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)
        if not line:
            raise AssertionError(f"process exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")
        if line.startswith("{"):
            data = json.loads(line)
            if "event" not in data:
                return data


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
