"""docs/testing.md's examples, run as a user runs them: written into a folder, then pytest there.

The pytest run is a separate process, so it also proves the plugin is found through its
``pytest11`` entry point (nothing here imports it) and that the ``gateway_config`` ini option,
the ``communicators`` fixture and the live ``gateway`` fixture work for a project of its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
BLOCK = re.compile(r"```(?:python|yaml|ini)\n# (?P<name>[\w.]+)\n(?P<body>.*?)```", re.S)


def doc_files() -> dict[str, str]:
    """Every fenced block of the page that starts with ``# <file name>``."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(DOC.read_text())}


def test_the_page_has_a_test_for_every_protocol():
    files = doc_files()
    tests = "".join(body for name, body in files.items() if name.startswith("test_"))
    for needle in ("communicators.http(", "WebsocketCommunicator(", "communicators.mqtt(", "communicators.email(",
                   "communicators.sms(", "communicators.sms_status(", "(gateway)"):
        assert needle in tests, needle
    assert {"pytest.ini", "gateway.yaml", "shop.py"} <= set(files)


def test_the_examples_pass_as_written(tmp_path: Path):
    files = doc_files()
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    expected = sum(len(re.findall(r"^async def test_", body, re.M)) for name, body in files.items() if name.startswith("test_"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{expected} passed" in done.stdout, done.stdout[-2000:]
