#!/usr/bin/env bash
# Set up umlrun in ./.venv: the system packages it builds with (when run as root),
# a virtual environment, and the cffi extension compiled in place.
set -euo pipefail
cd "$(dirname "$0")"
PKGS="gcc libc6-dev python3-dev python3-venv libseccomp2 ca-certificates wget gpgv debian-archive-keyring"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    # Only the build packages need root; umlrun itself never does.
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    command -v $SUDO >/dev/null 2>&1 || [ -z "$SUDO" ] || {
        echo "setup.sh: missing packages:" $missing "; ask an administrator to apt-get install them" >&2; exit 1; }
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
# The `umlrun` command is a small C launcher (sysemu/launcher.c): it hands `umlrun run`
# to the resident server when one runs (umlrun server start), else runs the Python CLI.
gcc -O2 -o .venv/bin/umlrun.new sysemu/launcher.c && mv .venv/bin/umlrun.new .venv/bin/umlrun
echo "umlrun is ready: .venv/bin/umlrun"
