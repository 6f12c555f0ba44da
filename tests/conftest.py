"""Shared fixtures for the core tests.

``tests/testapps`` holds small applications the YAML in tests refers to by import string; it is
put on ``sys.path`` as the package ``testapps``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway import logs

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
