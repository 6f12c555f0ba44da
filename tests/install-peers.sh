#!/bin/sh
# Installs the real protocol peers the tests run against, when they are missing:
# Mosquitto (MQTT), redis-server, Dovecot (IMAP), Chromium (the Django and showcase tests), swaks (SMTP client).
# The tests start their own instances on free loopback ports; nothing here is started.
set -eu

missing=""
need() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ] || missing="$missing $3"; }
need mosquitto /usr/sbin/mosquitto mosquitto
need mosquitto_pub /usr/bin/mosquitto_pub mosquitto-clients
need redis-server /usr/bin/redis-server redis-server
need dovecot-imap /usr/lib/dovecot/imap dovecot-imapd
need chromium /usr/bin/chromium chromium
need swaks /usr/bin/swaks swaks
need openssl /usr/bin/openssl openssl

[ -z "$missing" ] && exit 0

echo "install-peers: installing${missing}"
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-peers: need root (or sudo) to install:${missing}" >&2
    echo "install-peers: on Debian/Ubuntu run: apt-get install -y${missing}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-peers: no apt-get here; install these packages yourself:${missing}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
