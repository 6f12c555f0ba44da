"""`gateway run` as a real process: start-up, serving, SIGTERM drain, a second signal, port taken."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .gateway_helpers import ROOT, taken_port

TESTS = Path(__file__).resolve().parent


class Proc:
    """A `gateway run` subprocess whose JSON log lines we can wait for."""

    def __init__(self, config: Path, *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config), "--log-format", "json", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        )
        self.lines: list[str] = []

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        assert self.p.stdout is not None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return record
        raise AssertionError(f"{event!r} not logged; output so far:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        out, _ = self.p.communicate(timeout=timeout)
        return self.p.returncode, "".join(self.lines) + (out or "")

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.communicate()


@pytest.fixture
def proc_factory():
    made: list[Proc] = []

    def make(config: Path, *extra: str) -> Proc:
        made.append(Proc(config, *extra))
        return made[-1]

    yield make
    for p in made:
        p.kill()


def config_with(write, listen: str, routes: str, extra: str = "") -> Path:
    return write("gw.yaml", f"""\
adapters:
  http: {{listen: "{listen}"}}
routes:
  http:
{routes}
{extra}""")


def test_run_serves_then_stops_cleanly_on_sigterm(write, proc_factory):
    cfg = config_with(write, "127.0.0.1:0", '    - {path: "/hi/<name>/", app: "testapps.basic:hello"}\n')
    proc = proc_factory(cfg)
    started = proc.wait_for("adapter.started")
    address = started["addresses"][0]
    r = httpx.get(f"http://{address}/hi/you/", timeout=10)
    assert r.status_code == 200 and r.text == "hello {'name': 'you'}"
    assert httpx.get(f"http://{address}/nowhere", timeout=10).status_code == 404
    proc.p.send_signal(signal.SIGTERM)
    code, output = proc.finish()
    assert code == 0, output
    assert '"gateway.stopped"' in output


def test_second_signal_skips_the_drain(write, proc_factory):
    cfg = config_with(write, "127.0.0.1:0", '    - {path: "/slow", app: "testapps.basic:slow"}\n', "shutdown: {drain_timeout: 600}\n")
    proc = proc_factory(cfg)
    address = proc.wait_for("adapter.started")["addresses"][0]
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # in flight for 30 s
        time.sleep(0.3)
        proc.p.send_signal(signal.SIGTERM)
        proc.wait_for("gateway.stopping")
        proc.p.send_signal(signal.SIGTERM)  # without this the drain would wait 600 s
        code, output = proc.finish(timeout=30)
    assert code == 0, output
    assert "gateway.stop_now" in output


def test_port_already_taken_is_named(write):
    with taken_port() as port:
        cfg = config_with(write, f"127.0.0.1:{port}", '    - {path: "/", app: "testapps.basic:hello"}\n')
        res = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert res.returncode == 1
    assert f"127.0.0.1:{port}" in res.stderr and "in use" in res.stderr
    assert "Traceback" not in res.stderr
    assert "environment" not in res.stderr  # the address was written in the file


def test_port_taken_in_the_default_config_names_the_environment_variable():
    with taken_port() as port:
        env = {**os.environ, "GATEWAY_HTTP_LISTEN": "127.0.0.1:0", "GATEWAY_SMTP_LISTEN": "127.0.0.1:0",
               "GATEWAY_MQTT_LISTEN": f"127.0.0.1:{port}"}
        res = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", "config/gateway.yaml"], capture_output=True,
                             text=True, timeout=60, env=env, cwd=ROOT)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: error: adapters.mqtt: cannot listen on 127.0.0.1:") and "in use" in last
    assert last.endswith("(adapters.mqtt is set from the environment: GATEWAY_MQTT_LISTEN)")
    assert "adapter.started" not in res.stderr  # nothing served for a moment before the failure


def test_invalid_config_exits_non_zero_before_listening(write):
    cfg = write("bad.yaml", "adapters:\n  http: {listen: 'nonsense'}\n")
    res = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "adapters.http.listen" in res.stderr and ":2:" in res.stderr


def test_run_module_app_serves_one_app_for_every_path():
    port = free_tcp_port()
    p = subprocess.Popen([sys.executable, "-m", "gateway", "run", "testapps.basic:hello", "--listen", f"127.0.0.1:{port}",
                          "--log-format", "json"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(TESTS)},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if '"gateway.started"' in line:
                break
        for path in ("/", "/any/path"):
            reply = httpx.get(f"http://127.0.0.1:{port}{path}")
            assert reply.status_code == 200 and reply.text == "hello {}"
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "nope"], "'nope' is neither a config file nor an app: write module:attribute"),
    (["run", "testapps.basic:hello", "-c", "x.yaml"], "give either a config file (-c x.yaml) or an app (testapps.basic:hello), not both"),
    (["run", "--listen", "127.0.0.1:1"], "--listen goes with MODULE:APP"),
    (["run", "testapps.basic:nothere"], "module 'testapps.basic' has no attribute 'nothere'"),
])
def test_run_argument_errors_are_one_clear_line(argv, message):
    done = subprocess.run([sys.executable, "-m", "gateway", *argv], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(TESTS)})
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_while_starting_stops_gracefully_once_started(write, tmp_path, monkeypatch):
    """A stop signal that arrives while an app's lifespan startup runs (Django loading, a database
    warming up) is kept: the gateway finishes starting, then drains and stops with status 0,
    instead of dying of the signal's default action."""
    gate = tmp_path / "gate"
    monkeypatch.setenv("GATE_FILE", str(gate))
    cfg = config_with(write, "127.0.0.1:0", '    - {app: "testapps.lifespans:waits_for_a_file"}\n')
    proc = Proc(cfg)
    try:
        proc.wait_for("test.startup_waiting")
        proc.p.send_signal(signal.SIGTERM)
        proc.wait_for("gateway.stop_requested_while_starting")
        gate.touch()
        code, output = proc.finish()
    finally:
        proc.kill()
    assert code == 0, output
    assert '"gateway.stopped"' in output


def test_a_second_signal_while_starting_gives_up_the_start(write, tmp_path, monkeypatch):
    """Ctrl-C twice on a start that hangs (here a lifespan startup that never completes) ends the
    process, with status 0 and the adapters' and admin's sockets closed."""
    monkeypatch.setenv("GATE_FILE", str(tmp_path / "never"))
    cfg = config_with(write, "127.0.0.1:0", '    - {app: "testapps.lifespans:waits_for_a_file"}\n')
    proc = Proc(cfg)
    try:
        proc.wait_for("test.startup_waiting")
        proc.p.send_signal(signal.SIGINT)
        proc.wait_for("gateway.stop_requested_while_starting")
        proc.p.send_signal(signal.SIGINT)
        code, output = proc.finish()
    finally:
        proc.kill()
    assert code == 0, output
    assert "gateway.start_abandoned" in output and "Traceback" not in output
