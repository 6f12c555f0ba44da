"""Before any adapter starts: are the TCP ports the config names free?

Adapters bind and start serving one after another, so without this check a port taken by
another program (a Mosquitto on 1883) would be found only after the adapters before it had
started serving for a moment. Each address is bound once, briefly, and released; the adapters
then bind for real. (A program can still take a port in between: start-up stays all or nothing.)
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from .errors import StartupError
from .schema import parse_listen


def tcp_ports_free(wanted: Iterable[tuple[str, str]]) -> None:
    """``wanted``: ``(adapter, "tcp:host:port")``; raises ``StartupError`` naming the first address
    that is taken.

    The probe sets SO_REUSEPORT: a sibling ``--workers`` process that already shares the port does
    not count as taken, while a program that holds it without the option (a Mosquitto) still does.
    """
    for adapter, address in wanted:
        if not address.startswith("tcp:"):
            continue
        listen = parse_listen(address[4:])
        host, port = listen.host, listen.port
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise PortTaken(adapter, f"adapters.{adapter}: cannot listen on {address[4:]}: {exc.strerror or exc} "
                                f"(another program is listening there: stop it, or move this listener)") from None


class PortTaken(StartupError):
    def __init__(self, adapter: str, message: str) -> None:
        super().__init__(message)
        self.adapter = adapter
