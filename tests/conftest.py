"""Shared fixtures for the core tests.

``tests/testapps`` holds small applications the YAML in tests refers to by import string; it is
put on ``sys.path`` as the package ``testapps``.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway import logs

if TYPE_CHECKING:
    from test_layer_redis_helpers import RedisServer

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # `import testapps.xxx` -> tests/testapps

# Plain JSON lines in test output: the console renderer's rich tracebacks cost ~0.3 s per failing
# instance, and many tests make applications fail on purpose.
logs.configure("info", "json")


@pytest.fixture
def write(tmp_path: Path):
    """Write a file under tmp_path and return its path: write("name.yaml", text)."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    return _write


# -- shared fixtures ---------------------------------------------------------------------------
# What they use lives in the helper modules, imported when a test asks for the fixture, so a test
# run that needs no Redis or MQTT imports neither. A module that wants one names it (an argument,
# or ``pytest.mark.usefixtures``); nothing is imported for its side effect.

@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the tests that do not stop it (each test uses its own prefix)."""
    from test_layer_redis_helpers import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test, which may stop and restart it."""
    from test_layer_redis_helpers import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """A channel-layer key prefix of the test's own (tests share the session's redis-server)."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def clean_apps() -> Iterator[None]:
    """Each test starts and ends with no per-route MQTT apps registered (``mqtt_helpers.route_app``)."""
    from mqtt_helpers import APPS

    APPS.clear()
    yield
    APPS.clear()


@pytest.fixture
def only_mqtt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugin discovery finds the mqtt adapter only."""
    from mqtt_helpers import mqtt_entry_points

    import gateway.plugins

    monkeypatch.setattr(gateway.plugins, "entry_points", mqtt_entry_points)


@pytest.fixture
def clean_email_state() -> Iterator[None]:
    """Each test starts and ends with no mail recorded by the ``email_helpers`` apps."""
    from email_helpers import reset

    reset()
    yield
    reset()


@pytest.fixture
def clean_sms_state() -> Iterator[None]:
    """Each test starts and ends with no message recorded by the ``sms_helpers`` apps."""
    from sms_helpers import reset

    reset()
    yield
    reset()


# -- no silent skips ------------------------------------------------------------------------
# The suite tests against real peers and `make test` installs them (tests/install-peers.sh), so a
# skip can only mean a broken set-up. Report it as the failure it is instead of a quiet "s".
_NO_SKIP = "a skipped test is a failure here (make test installs every peer: tests/install-peers.sh)"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"{_NO_SKIP}: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{_NO_SKIP}: {_skip_reason(report)}"
