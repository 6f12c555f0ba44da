"""The ``email`` adapter: SMTP in (aiosmtpd), IMAP in (aioimaplib), SMTP out (aiosmtplib)."""

from .adapter import EmailAdapter
from .smtp_out import DeliveryError, build_message

__all__ = ["DeliveryError", "EmailAdapter", "build_message"]
