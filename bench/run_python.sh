#!/usr/bin/env bash
# Python benchmark: examples/python/wsgi_server.py (rcluster) against gunicorn's sync workers,
# the same WSGI app (bench/py_app.py), the same worker count, a new connection per request,
# one after the other in one run. Needs wrk and gunicorn (pip install gunicorn).
# Usage: bench/run_python.sh [seconds] [workers] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
workers=${2:-2}
conns=${3:-32}
bench/setup.sh
python3 -c 'import gunicorn' 2>/dev/null || { echo "bench: gunicorn missing (pip install gunicorn)"; exit 2; }
cargo build --release --quiet
export RCLUSTER_LIB=$PWD/target/release/librcluster.so PYTHONPATH=$PWD/bench:$PWD/bindings/python

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A rps
measure() {
  local name=$1 port=$2; shift 2
  "$@" > "target/bench-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  sleep 0.5
  wrk -t1 -c1 -d1s -H 'Connection: close' "http://127.0.0.1:$port/" > /dev/null 2>&1 || true
  local r
  r=$(wrk -t2 -c"$conns" -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rps[$name]=${r:-0}
  printf '%-22s %10s req/s\n' "$name" "${r:-0}"
}
p1=$(free_port)
measure rcluster-wsgi "$p1" python3 examples/python/wsgi_server.py --workers "$workers" --port "$p1" py_app:app
p2=$(free_port)
measure gunicorn-sync "$p2" python3 -m gunicorn --workers "$workers" --bind "127.0.0.1:$p2" --worker-class sync py_app:app
awk -v a="${rps[rcluster-wsgi]}" -v b="${rps[gunicorn-sync]}" 'BEGIN { printf "rcluster-wsgi / gunicorn-sync = %.2f   (target >= 1.0)\n", a / b }'
