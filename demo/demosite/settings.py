"""The showcase's settings, read from the environment so one project serves both shapes.

Without any variable set it is the local showcase of `make run` (config/gateway.yaml): SQLite in
demo/var/, the in-memory layer, DEBUG, and the simulators (a phone and a customer's mailbox) on the
dashboard. In the compose stack, docker-compose.yml sets DJANGO_SECRET_KEY, POSTGRES_* and
REDIS_URL from `.env`: a secret key is what marks a deployment, so DEBUG and the simulators are off
there unless asked for.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# A local run has no secret key to keep: it gets a fixed, public one and DEBUG, and listens on
# loopback only (config/gateway.yaml). A deployment must bring its own key (docker-compose.yml
# refuses to start without it).
LOCAL = not os.environ.get("DJANGO_SECRET_KEY")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-local-showcase-key"
DEBUG = os.environ.get("DJANGO_DEBUG", "1" if LOCAL else "0") == "1"
# The dashboard's "try it" panel: a phone and a customer's mailbox that talk to the gateway's own
# SMS webhook and SMTP listener (config/gateway.yaml routes them), so no provider is needed.
DEMO_SIMULATORS = os.environ.get("DEMO_SIMULATORS", "1" if LOCAL else "0") == "1"
# Where the mail simulator sends from the customer's side: the gateway's own SMTP listener.
DEMO_SMTP = os.environ.get("GATEWAY_SMTP_LISTEN", "127.0.0.1:2525")
# The MQTT port the dashboard's hint names (config/gateway.yaml's broker; in compose, Mosquitto's).
DEMO_MQTT_PORT = os.environ.get("GATEWAY_MQTT_LISTEN", os.environ.get("MQTT_PUBLISHED_PORT", "1883")).rsplit(":", 1)[-1]
SUPPORT_ADDRESS = "support@" + os.environ.get("MAIL_DOMAIN", "example.com")
# The number customers text (the SMS adapter's `numbers:`); replies go out from it.
SMS_NUMBER = os.environ.get("SMS_NUMBER", "+15005550006")
# Who is texted a sensor alert: the `alerts-to-oncall` bridge of config/gateway.yaml and
# config/compose.yaml reads the same variable; the page names it (and, locally, shows its texts).
ONCALL_PHONE = os.environ.get("DEMO_ONCALL_PHONE", "+15005550100")
# A reading above this many degrees raises an alert: group_send("alerts", {"type": "sensor.alert", ...}).
SENSOR_ALERT_CELSIUS = float(os.environ.get("SENSOR_ALERT_CELSIUS", "30"))
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "gateway.django",
    "dashboard",
    "chat",
    "sensors",
    "tickets",
    "texts",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "demosite.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]

if os.environ.get("POSTGRES_HOST"):
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["POSTGRES_HOST"],
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "NAME": os.environ.get("POSTGRES_DB", "demo"),
        "USER": os.environ.get("POSTGRES_USER", "demo"),
        "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }}
else:
    # demo/var/ is git-ignored; `manage.py demo_init` (run by `make run`) creates and migrates it.
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                             "NAME": os.environ.get("DEMO_SQLITE") or BASE_DIR / "var" / "db.sqlite3"}}

# channels_redis settings, as a Channels project writes them: the gateway runs its own Redis
# layer on the same hosts and prefix (docs/django.md), so every gateway process shares it.
if os.environ.get("REDIS_URL"):
    CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ["REDIS_URL"]], "prefix": "demo"},
    }}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "admin:login"
# Behind a TLS-terminating proxy the gateway takes the scheme from its X-Forwarded-Proto (the
# proxy listed in TRUSTED_PROXIES), so request.is_secure() is right; cookies then go over HTTPS only.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = os.environ.get("DJANGO_SECURE_COOKIES", "0") == "1"
LOGGING = {"version": 1, "disable_existing_loggers": False}
