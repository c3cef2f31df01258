#!/usr/bin/env bash
# Installs the benchmark's peers when missing: wrk (Debian's package) and gunicorn (PyPI).
set -euo pipefail
apt_install() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; fi
}
command -v wrk >/dev/null || apt_install wrk
python3 -c 'import gunicorn' 2>/dev/null || python3 -m pip install --quiet gunicorn \
  || python3 -m pip install --quiet --break-system-packages gunicorn || echo "bench: gunicorn not installed: its rows stay empty" >&2
