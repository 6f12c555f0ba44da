"""`make run`'s first step: the database ready and a login to show, then where to go."""

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

# Documented in demo/README.md. Only ever created in a database that has no user at all, so a
# deployment (which makes its own superuser) never gets it.
DEMO_USER, DEMO_PASSWORD = "admin", "admin"


class Command(BaseCommand):
    help = "Apply the migrations, create the demo superuser in an empty database, print the URL to open."

    def handle(self, *args: object, **options: object) -> None:
        database = settings.DATABASES["default"]
        if database["ENGINE"].endswith("sqlite3"):
            Path(database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        call_command("migrate", interactive=False, verbosity=0)
        users = get_user_model().objects
        created = not users.exists()
        if created:
            users.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)
        listen = os.environ.get("GATEWAY_HTTP_LISTEN", "127.0.0.1:8000")
        login = f"{DEMO_USER} / {DEMO_PASSWORD}" if created or users.filter(username=DEMO_USER).exists() else "your own superuser"
        self.stdout.write(f"Showcase: open http://{listen}/  (admin at /admin/, sign in as {login})")
