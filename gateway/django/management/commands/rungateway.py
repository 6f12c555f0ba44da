"""``python manage.py rungateway``: the gateway for this project, as ``runserver`` is Django's.

Reads the project's gateway YAML (``--config``, else ``settings.GATEWAY_CONFIG``, else
``gateway.yaml`` beside ``manage.py``); under ``DEBUG`` it restarts on code changes with
Django's own autoreloader, as ``runserver`` does.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import autoreload

from gateway import logs
from gateway.cli import install_loop
from gateway.config import load
from gateway.errors import GatewayError


class Command(BaseCommand):
    help = "Run the asgi-gateway for this project (HTTP, WebSocket, MQTT, e-mail, SMS), reading its gateway YAML."
    requires_system_checks: list[str] = []  # checked below, once, in the process that serves

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-c", "--config", help="the gateway YAML (default: settings.GATEWAY_CONFIG or ./gateway.yaml)")
        parser.add_argument("--noreload", action="store_false", dest="use_reloader", help="do not restart on code changes")
        parser.add_argument("--log-level", choices=logs.LEVELS, help="overrides logging.level")
        parser.add_argument("--log-format", choices=("console", "json"), help="overrides logging.format")
        parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["config"] or getattr(settings, "GATEWAY_CONFIG", None) or "gateway.yaml")
        if not path.exists():
            raise CommandError(f"{path}: no such gateway config (give --config or set GATEWAY_CONFIG in settings)")
        if options["use_reloader"] and settings.DEBUG:
            autoreload.run_with_reloader(self.serve, path, options)
        else:
            self.serve(path, options)

    def serve(self, path: Path, options: dict[str, Any]) -> None:
        self.check(display_num_errors=False)
        try:
            plan = load(path)
        except GatewayError as exc:
            raise CommandError(str(exc)) from None
        cfg = plan.config.logging
        logs.configure(options["log_level"] or cfg.level, options["log_format"] or cfg.format)
        install_loop(options["loop"])
        from gateway.server import Gateway

        # Under the autoreloader this runs in a thread and the reloader owns the signals: it
        # ends the process itself on a change or on Ctrl-C.
        main = threading.current_thread() is threading.main_thread()
        gateway = Gateway(plan)
        asyncio.run(gateway.serve() if main else gateway.serve(signals=()))
