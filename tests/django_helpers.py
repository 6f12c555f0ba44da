"""The test Django project (tests/djangoproject) run as a user runs it: `gateway run` in its folder."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent / "djangoproject"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PASSWORD = "wonderland-42"


def project_env(db: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update({"DJANGO_DB": str(db), "HTTP_LISTEN": "127.0.0.1:0", "MQTT_LISTEN": "127.0.0.1:0",
                "SMTP_LISTEN": "127.0.0.1:0", "PYTHONPATH": str(PROJECT)})
    env.update(extra)
    return env


def manage(db: Path, *args: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=project_env(db, **env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def migrated(db: Path) -> Path:
    """A fresh database with the project's tables and two users (alice is staff)."""
    manage(db, "migrate", "-v0")
    manage(db, "shell", "-c",
           "from django.contrib.auth.models import User;"
           f"User.objects.create_superuser('alice', 'alice@example.com', '{PASSWORD}');"
           f"User.objects.create_user('bob', 'bob@example.com', '{PASSWORD}')")
    return db


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db, timeout=20) as conn:
        return conn.execute(sql).fetchall()


class GatewayProcess:
    """`gateway run -c <config>` in the project's folder (or ``cwd``); its JSON log lines are collected."""

    def __init__(self, config: Path | str, env: dict[str, str], *, args: tuple[str, ...] = (),
                 cwd: Path = PROJECT) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config), "--log-format", "json", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            with self._changed:
                self.lines.append(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.records.append(record)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records:
                    if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                        return record
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{event!r} {fields or ''} not logged; output:\n{''.join(self.lines)[-6000:]}")
                self._changed.wait(min(left, 0.5))

    def started(self) -> dict[str, list[str]]:
        return self.wait_for("gateway.started")["addresses"]

    def count(self, event: str) -> int:
        with self._changed:
            return sum(1 for r in self.records if r.get("event") == event)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._reader.join(5)
        if not self._reader.is_alive() and self.p.stdout is not None:
            self.p.stdout.close()
        return self.p.returncode


def run_check(config: Path | str, env: dict[str, str], command: str = "check") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", command, str(config)], cwd=PROJECT, env=env,
                          capture_output=True, text=True, timeout=60)
