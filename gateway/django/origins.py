from __future__ import annotations


def allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS`` as Django applies it: under ``DEBUG`` an empty list means the local
    names (``validate_host``'s rule), which is what ``runserver`` users expect to work."""
    from django.conf import settings

    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts
