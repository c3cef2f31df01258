#!/usr/bin/env bash
# Handoff with many workers: a new connection per request (wrk, "Connection: close"), FORK
# workers, round-robin, at 2, 8, 32, 128 and 512 workers; beside it, in the same run, plain
# SO_REUSEPORT processes with no primary (bench/reuseport_server.c) and node:cluster
# round-robin (bench/node_cluster.js; up to 128 workers: 512 Node processes need ~20 GB).
# For rcluster it also reports the primary's CPU time per connection (utime+stime over the wrk
# run, divided by the requests answered) and its RSS at the end of the run.
#   bench/scale.sh [seconds] [connections] [worker counts...]   (defaults 3 64 2 8 32 128 512)
# Prints one table row per worker count:
#   workers | rcluster req/s | reuseport req/s | ratio | node req/s | ratio | primary us/conn |
#   x(2) | RSS KB | targets
# Targets (issue 22) at 128 and 512 workers: rcluster >= 0.95x reuseport; the primary's CPU per
# connection within 1.15x of the 2-worker figure; at 512 the primary's RSS under 8 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
conns=${2:-64}
shift 2 2>/dev/null || shift $#
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(2 8 32 128 512)
out=target/bench
mkdir -p "$out"

bench/setup.sh
cargo build --release --quiet
CFLAGS=(-std=gnu11 -O2 -Wall -Wextra -Werror -Iinclude)
cc "${CFLAGS[@]}" bench/rcluster_server.c -o $out/rcluster_server -Ltarget/release -Wl,-rpath,"$PWD/target/release" -lrcluster
cc "${CFLAGS[@]}" bench/reuseport_server.c -o $out/reuseport_server
have_node=0; command -v node >/dev/null && have_node=1
# Every process a contestant starts counts against the fd and process limits.
ulimit -n 65536 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ticks PID: utime+stime of PID in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

# wait_ready LOG N: until LOG has N "ready" lines (rcluster, node) or the port answers.
wait_ready() {
  local log=$1 n=$2 port=$3
  for _ in $(seq 1 1200); do
    if [ "$n" -gt 0 ] && [ "$(grep -c '^ready' "$log" 2>/dev/null || true)" -ge "$n" ]; then return 0; fi
    if [ "$n" = 0 ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench/scale.sh: $log: not ready" >&2
  return 1
}

# The contestants: FUNC PORT WORKERS.
c_rcluster()  { exec "$out/rcluster_server" "$1" "$2" rr close; }
c_reuseport() { exec "$out/reuseport_server" "$1" "$2" close; }
c_node()      { exec node bench/node_cluster.js "$1" "$2"; }

# run NAME WORKERS: req/s into $rps; also the contestant's main process's CPU time per
# connection ($cpu_us) and RSS ($rss_kb) (for rcluster: the primary).
run() {
  local name=$1 w=$2
  local port; port=$(free_port)
  local log="$out/scale-$name-$w.log"
  "c_$name" "$port" "$w" > "$log" 2>&1 &
  local pid=$!
  local want=$w; [ "$name" = reuseport ] && want=0; [ "$name" = node ] && want=1
  wait_ready "$log" "$want" "$port" || { kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true; rps=0; return; }
  wrk -t1 -c4 -d1s -H 'Connection: close' "http://127.0.0.1:$port/" > /dev/null 2>&1 || true
  local t0; t0=$(ticks $pid)
  local res; res=$(wrk -t2 -c"$conns" -d"${secs}s" -H 'Connection: close' "http://127.0.0.1:$port/")
  local t1; t1=$(ticks $pid)
  rps=$(awk '/Requests\/sec/ {print $2}' <<< "$res")
  local reqs; reqs=$(awk '/requests in/ {print $1}' <<< "$res")
  local errs; errs=$(grep -E 'Socket errors|Non-2xx' <<< "$res" || true)
  [ -n "$errs" ] && echo "  $name $w: $errs" >&2
  cpu_us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="${reqs:-0}" 'BEGIN { if (n > 0) printf "%.2f", t * 1e6 / hz / n; else print 0 }')
  rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  kill -TERM $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo "$(nproc) cores; wrk ${secs}s, $conns connections, Connection: close" >&2
printf '%-8s | %-14s | %-15s | %-6s | %-12s | %-6s | %-15s | %-6s | %-14s | %s\n' \
  workers "rcluster req/s" "reuseport req/s" ratio "node rr req/s" ratio "primary us/conn" "x(2)" "primary RSS KB" targets
base_cpu=""
for w in "${counts[@]}"; do
  run rcluster "$w"
  r_rps=$rps r_cpu=$cpu_us r_rss=$rss_kb
  run reuseport "$w"
  p_rps=$rps
  n_rps="-"
  if [ $have_node = 1 ] && [ "$w" -le 128 ]; then run node "$w"; n_rps=$rps; fi
  [ -n "$base_cpu" ] || base_cpu=$r_cpu
  rr=$(ratio "$r_rps" "$p_rps") cx=$(ratio "$r_cpu" "$base_cpu") met="-"
  if [ "$w" -ge 128 ]; then
    met=$(awk -v r="$rr" -v c="$cx" -v m="$r_rss" -v w="$w" 'BEGIN {
      s = (r >= 0.95 ? "rps met" : "rps NOT met") ", " (c <= 1.15 ? "cpu met" : "cpu NOT met")
      if (w >= 512) s = s ", " (m < 8192 ? "rss met" : "rss NOT met")
      print s }')
  fi
  printf '%-8s | %-14s | %-15s | %-6s | %-12s | %-6s | %-15s | %-6s | %-14s | %s\n' "$w" "$r_rps" "$p_rps" "$rr" \
    "$n_rps" "$(ratio "$r_rps" "$n_rps")" "$r_cpu" "$cx" "$r_rss" "$met"
done
