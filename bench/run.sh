#!/usr/bin/env bash
# Benchmark: a new connection per request (wrk with "Connection: close"), the same tiny
# response from every contestant, the same worker count, measured one after the other in one
# run on this machine. Prints requests/s and the ratios the issues set targets for:
#   rcluster round-robin / plain SO_REUSEPORT C workers (no primary)   target >= 0.85
#   rcluster round-robin / Node's cluster (round-robin)                target >= 1.8
# Usage: bench/run.sh [seconds] [workers] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
workers=${2:-2}
conns=${3:-32}
out=target/bench
mkdir -p "$out"

bench/setup.sh
cargo build --release --quiet
cc -std=gnu11 -O2 -Wall -Wextra -Werror -Iinclude bench/rcluster_server.c -o $out/rcluster_server \
   -Ltarget/release -Wl,-rpath,"$PWD/target/release" -lrcluster
cc -std=gnu11 -O2 -Wall -Wextra -Werror bench/reuseport_server.c -o $out/reuseport_server
if command -v node >/dev/null; then
  # The Node binding against the release library (a test run may have built it against debug).
  (cd bindings/node && RCLUSTER_LIB_DIR="$PWD/../../target/release" npm install --no-audit --no-fund --loglevel=error >/dev/null) || true
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure NAME CMD...: starts CMD, waits for its "ready" lines, runs wrk, prints and records req/s.
declare -A rps
measure() {
  local name=$1; shift
  local port; port=$(free_port)
  "$@" "$port" "$workers" > "$out/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  wrk -t1 -c1 -d1s -H 'Connection: close' "http://127.0.0.1:$port/" > /dev/null 2>&1 || true # warm-up
  local r
  r=$(wrk -t2 -c"$conns" -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$port/" | tee "$out/$name.wrk" | awk '/Requests\/sec/ {print $2}')
  local errors; errors=$(grep -E 'Socket errors|Non-2xx' "$out/$name.wrk" || true)
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rps[$name]=${r:-0}
  printf '%-22s %10s req/s  %s\n' "$name" "${r:-0}" "$errors"
}

policy_server() { local policy=$1; shift; exec "$out/rcluster_server" "$1" "$2" "$policy"; }
node_server() { exec node bench/node_cluster.js "$1" "$2"; }
node_rcluster_server() { exec node bench/node_rcluster.js "$1" "$2"; }

echo "new connection per request, $workers workers, $conns connections, ${secs}s each ($(nproc) cores)"
measure plain-reuseport "$out/reuseport_server"
measure rcluster-rr policy_server rr
measure rcluster-least policy_server least
measure rcluster-shared policy_server shared
measure rcluster-reuseport policy_server reuseport
if command -v node >/dev/null; then
  measure node-cluster-rr node_server
  if [ -f bindings/node/build/rcluster.node ]; then measure node-rcluster-rr node_rcluster_server; fi
fi

ratio() { awk -v a="${rps[$1]:-0}" -v b="${rps[$2]:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "rcluster-rr / plain-reuseport = $(ratio rcluster-rr plain-reuseport)   (target >= 0.85)"
echo "rcluster-rr / node-cluster-rr = $(ratio rcluster-rr node-cluster-rr)   (target >= 1.8)"
if [ -n "${rps[node-rcluster-rr]:-}" ]; then
  echo "same JS handler: rcluster / node:cluster = $(ratio node-rcluster-rr node-cluster-rr)   (target >= 1.3)"
  echo
  a=$(node bench/ipc_echo.js node 3 | awk '{print $4}')
  b=$(node bench/ipc_echo.js rcluster 3 | awk '{print $4}')
  echo "ipc echo 64 B: node:cluster $a/s, rcluster $b/s, ratio $(awk -v a="$b" -v b="$a" 'BEGIN { printf "%.2f", a / b }')   (target >= 2)"
fi
