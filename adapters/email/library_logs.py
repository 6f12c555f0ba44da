"""aiosmtpd logs every command line, the sender and each recipient at INFO (about a dozen lines per
mail, addresses included). The listener logs one line per mail itself; the library's lines are
detail, shown as DEBUG and only when the gateway runs at the debug level. Its warnings and errors
stay as they are."""

from __future__ import annotations

import logging

from gateway import logs

LIBRARY_LOGGER = "mail.log"


class _DetailAsDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logs.debug


_FILTER = _DetailAsDebug()


def quiet_library() -> None:
    """Install the filter on aiosmtpd's logger (once, however many listeners start)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
