"""Every use of aiosmtpd's private internals, for the SMTP listener (``smtp_in.py``), checked at start-up.

aiosmtpd offers handler hooks and ``smtp_<COMMAND>`` methods to extend, but not what the listener
needs around them, so ``CompatSMTP`` puts these behind public names:

* the command timer (``_reset_timeout``, ``_timeout_handle``, ``_timeout_cb``): a separate DATA
  timeout, no timeout while the applications run, and a ``421`` before the connection closes
  (``restart_timer``, ``stop_timer``, ``on_timeout``);
* the stream writer (``_writer``) for a last reply written while the connection closes
  (``write_now``);
* ``_getaddr``, whose own version declares a ``typing.Protocol`` class on every MAIL and RCPT
  (about 5% of the listener's time): replaced by the same parse through ``stdlib_compat``,
  plus a refusal of control characters;
* ``auth_PLAIN`` / ``auth_LOGIN`` return what ``_authenticate`` got from the authenticator
  without awaiting it: the gateway's authenticator is asynchronous, so they await it here.

``CONTRACT`` lists every private name and signature used here; ``EmailAdapter.start`` calls
``CONTRACT.require()``. The range in ``SUPPORTED`` is the one in pyproject.toml.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult

from gateway.libcompat import Contract

from .stdlib_compat import mail_argument

SUPPORTED = ">=1.4.3,<1.5"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CompatSMTP(SMTP):
    """aiosmtpd's ``SMTP`` with its timer, writer and address parser behind public names."""

    def on_timeout(self) -> bool:
        """The command or data timeout expired: return ``False`` to keep the connection."""
        return True

    def restart_timer(self, seconds: float | None = None) -> None:
        """Start the timeout again, for ``seconds`` or the command timeout."""
        self._reset_timeout(seconds)

    def stop_timer(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def write_now(self, data: bytes) -> None:
        """Write without waiting for the transport (for a last reply before closing)."""
        self._writer.write(data)

    def _timeout_cb(self) -> None:
        if self.on_timeout():
            super()._timeout_cb()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address of a MAIL or RCPT argument and the rest of the line (``None, None``
        when it does not parse, holds a control character or its local part is too long)."""
        if not arg:
            return "", ""
        parsed = mail_argument(arg)
        if parsed is None:
            return None, None
        address, rest = parsed
        if _CONTROL.search(address):
            return None, None  # a NUL or other control character: never a deliverable address
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        result = await super().auth_PLAIN(_, args)
        return await result if inspect.isawaitable(result) else result

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        result = await super().auth_LOGIN(_, args)
        return await result if inspect.isawaitable(result) else result


CONTRACT = Contract("aiosmtpd", SUPPORTED)
for _name, _params in (
    ("_reset_timeout", ("self", "duration")),
    ("_timeout_cb", ("self",)),
    ("_getaddr", ("self", "arg")),
    ("_authenticate", ("self", "mechanism", "auth_data")),
    ("auth_PLAIN", ("self", "_", "args")),
    ("auth_LOGIN", ("self", "_", "args")),
):
    CONTRACT.method(SMTP, _name, _params)
for _name in ("_timeout_handle", "_writer", "local_part_limit"):
    CONTRACT.attribute(SMTP, _name)
