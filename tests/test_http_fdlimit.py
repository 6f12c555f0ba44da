"""The open-file limit against the connection limits: at start the gateway compares the two,
raises the soft limit where the hard one allows, and warns once where it does not. Run as real
`gateway run` processes started with a low limit."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway_adapters.http import HttpAdapter, HttpConfig

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


class LowLimitGateway:
    """`gateway run` with RLIMIT_NOFILE set to ``(soft, hard)`` before it starts."""

    def __init__(self, config: Path, soft: int, hard: int) -> None:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config), "--log-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, preexec_fn=limit,
        )
        self.records: list[dict] = []

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        assert self.p.stdout is not None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            self.records.append(record)
            if record.get("event") == event:
                return record
        raise AssertionError(f"{event!r} not logged; got {[r.get('event') for r in self.records]}")

    def soft_limit(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-file limit in /proc")

    def stop(self) -> list[dict]:
        self.p.terminate()
        out, _ = self.p.communicate(timeout=30)
        for line in out.splitlines():
            try:
                self.records.append(json.loads(line))
            except ValueError:
                pass
        return self.records


def config(tmp_path: Path, max_connections: int) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(f"""\
adapters:
  http: {{listen: "127.0.0.1:0", access_log: false, limits: {{max_connections: {max_connections}, keepalive_timeout: 30}}}}
routes:
  http:
    - {{path: /, app: "http_helpers:hello"}}
""")
    return path


async def hold_and_request(host: str, port: int, count: int) -> list[int]:
    """Open ``count`` connections, keep every one open, send a request on each; the statuses."""
    async def one() -> tuple[int, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        return int(head.split()[1]), writer

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count)), return_exceptions=True), 30)
    statuses = []
    for result in results:
        if isinstance(result, BaseException):
            statuses.append(0)
        else:
            statuses.append(result[0])
            result[1].close()
    return statuses


def test_the_http_adapter_reports_its_connection_limit():
    assert HttpAdapter.connection_limit(HttpConfig(limits={"max_connections": 5000})) == 5000


async def test_the_soft_limit_is_raised_so_every_allowed_connection_is_served(tmp_path):
    gw = LowLimitGateway(config(tmp_path, 1000), soft=256, hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    try:
        started = gw.wait_for("adapter.started")
        host, _, port = started["addresses"][0].rpartition(":")
        assert gw.soft_limit() >= 1000
        statuses = await hold_and_request(host, int(port), 600)  # well past the 256 it started with
    finally:
        records = gw.stop()
    assert statuses == [200] * 600
    raised = [r for r in records if r.get("event") == "gateway.fd_limit_raised"]
    assert len(raised) == 1 and raised[0]["old"] == 256 and raised[0]["new"] >= 1000
    assert not [r for r in records if r.get("event") == "gateway.fd_limit_low"]


async def test_a_hard_limit_below_the_connection_limits_is_warned_about_once(tmp_path):
    gw = LowLimitGateway(config(tmp_path, 1000), soft=200, hard=300)
    try:
        gw.wait_for("adapter.started")
        assert gw.soft_limit() == 300  # raised as far as allowed
    finally:
        records = gw.stop()
    low = [r for r in records if r.get("event") == "gateway.fd_limit_low"]
    assert len(low) == 1
    assert low[0]["level"] == "warning" and low[0]["limit"] == 300 and low[0]["connections"] == 1000
    assert low[0]["wanted"] > 1000
