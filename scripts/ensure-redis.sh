#!/usr/bin/env bash
# Makes sure `redis-server` is on PATH, for the `redis` feature's tests.
#
# Idempotent and quiet: does nothing when redis-server is already there; otherwise installs
# the Debian package with apt-get (CI machines are fresh Debian, run as root). Never starts a
# server: the tests start their own on a free port and stop it.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-redis: redis-server is not on PATH and apt-get is not available" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Try the install first; refresh the package lists only if that fails (a fresh machine has none).
if ! $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

# The Debian package may start a system service on port 6379; the tests never use it, but
# leave the machine as we found it otherwise: stop it if we just started it.
if command -v service >/dev/null 2>&1; then
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

command -v redis-server >/dev/null 2>&1 || {
    echo "ensure-redis: redis-server still not on PATH after apt-get install" >&2
    exit 1
}
