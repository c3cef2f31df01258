#!/usr/bin/env bash
# Installs the benchmark's peers when missing: wrk (Debian's package), gunicorn and uvicorn
# (PyPI), and what the Python rows serve (Flask, Django, Starlette; httptools and uvloop for
# rcluster-serve).
set -euo pipefail
apt_install() {
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; fi
}
command -v wrk >/dev/null || apt_install wrk
python3 -c 'import gunicorn' 2>/dev/null || python3 -m pip install --quiet gunicorn \
  || python3 -m pip install --quiet --break-system-packages gunicorn || echo "bench: gunicorn not installed: its rows stay empty" >&2
python3 -c 'import uvicorn, flask, django, starlette, httptools, uvloop' 2>/dev/null \
  || python3 -m pip install --quiet uvicorn flask django starlette httptools uvloop \
  || python3 -m pip install --quiet --break-system-packages uvicorn flask django starlette httptools uvloop \
  || echo "bench: the Python web rows need uvicorn, flask, django, starlette, httptools (pip install)" >&2
