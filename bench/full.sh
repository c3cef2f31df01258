#!/usr/bin/env bash
# The full benchmark: every measurement next to its peer measured in the same run on this
# machine (these machines are noisy: read the ratios, not the absolute numbers), one table:
#   name | value | peer value | ratio (value/peer) | target | met / NOT met
# Sections:
#   handoff     wrk, a new connection per request ("Connection: close"), WORKERS workers: C
#               (rcluster policies, plain SO_REUSEPORT), Node (node:cluster round-robin and
#               SCHED_NONE, the binding with the same JS), Python (the WSGI example, gunicorn
#               sync, the same app)
#   keep-alive  the same contestants with wrk's default keep-alive (servers in "keepalive" mode)
#   ipc         bench/ipc_c.c: rcluster primary <-> one FORK worker echo vs a raw socketpair echo
#               (64 in flight for msgs/s and MB/s; one in flight for the median RTT), by default
#               and with cluster_set_batching; bench/ipc_echo.js (node:cluster and the Node
#               binding) and bench/py_ipc_echo.py (the Python binding) at 64 B, 4 KiB, 1 MiB
#   startup     8 workers READY: rcluster FORK, rcluster EXEC (bench/startup_c.c) vs node:cluster
#               'online' (bench/node_startup.js); median of 5 runs
#   balance     10,000 connections (16 client threads) over 8 workers: max/min per-worker count
#   memory      VmRSS of the primary and of one worker, 8 idle workers (from the startup runs)
#   children    bench/child_c.c: spawn-and-wait of /bin/true in a row (cluster_spawn) vs Node's
#               child_process.spawn (bench/child_node.js) and a posix_spawn + waitpid loop in C;
#               loop <-> thread message round trips vs Node's worker_threads postMessage echo;
#               median of 3 runs
# Usage: bench/full.sh [seconds] [workers] [connections]     (defaults 3 2 32: about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
workers=${2:-2}
conns=${3:-32}
out=target/bench
mkdir -p "$out"

bench/setup.sh   # the peers: wrk and gunicorn from the package registries, when missing
have_node=0; command -v node >/dev/null && have_node=1
have_py=0; python3 -c 'import gunicorn' 2>/dev/null && have_py=1
have_node_rc=0
cargo build --release --quiet
if [ $have_node = 1 ]; then
  # The Node binding against the release library (a test run may have built it against debug).
  (cd bindings/node && RCLUSTER_LIB_DIR="$PWD/../../target/release" npm install --no-audit --no-fund --loglevel=error >/dev/null) \
    && have_node_rc=1 || echo "bench: the Node binding did not build: its rows stay empty" >&2
fi
CFLAGS=(-std=gnu11 -O2 -Wall -Wextra -Werror -Iinclude)
LINK=(-Ltarget/release -Wl,-rpath,"$PWD/target/release" -lrcluster)
for p in rcluster_server ipc_c startup_c child_c; do cc "${CFLAGS[@]}" bench/$p.c -o $out/$p "${LINK[@]}"; done
cc "${CFLAGS[@]}" bench/reuseport_server.c -o $out/reuseport_server
cc "${CFLAGS[@]}" -pthread bench/balance_client.c -o $out/balance_client

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

declare -A v   # every measured number, by key

# contestants: FUNC PORT WORKERS MODE (MODE: close | keepalive | id)
c_plain()     { exec "$out/reuseport_server" "$1" "$2" "$3"; }
c_rr()        { exec "$out/rcluster_server" "$1" "$2" rr "$3"; }
c_rr_wl()     { exec "$out/rcluster_server" "$1" "$2" rr-wl "$3"; }  # the workers call cluster_listen_tcp
c_least()     { exec "$out/rcluster_server" "$1" "$2" least "$3"; }
c_shared()    { exec "$out/rcluster_server" "$1" "$2" shared "$3"; }
c_reuseport() { exec "$out/rcluster_server" "$1" "$2" reuseport "$3"; }
c_node()      { if [ "$3" = keepalive ]; then exec node bench/node_cluster.js "$1" "$2" keepalive; else exec node bench/node_cluster.js "$1" "$2"; fi; }
c_node_none() { exec node bench/node_cluster.js "$1" "$2" "$3" none; }
c_express()   { exec node bench/node_express.js cluster "$1" "$2"; }
c_express_rc() { exec node bench/node_express.js rcluster "$1" "$2"; }
c_express_rc_none() { NODE_CLUSTER_SCHED_POLICY=none exec node bench/node_express.js rcluster "$1" "$2"; }
c_node_rc()   { if [ "$3" = keepalive ]; then exec node bench/node_rcluster.js "$1" "$2" keepalive; else exec node bench/node_rcluster.js "$1" "$2"; fi; }
# Python: the same WSGI app (bench/py_app.py) on rcluster's example server and on gunicorn's
# sync workers (which close every connection: their keep-alive row measures that).
c_pywsgi()    { RCLUSTER_LIB=$PWD/target/release/librcluster.so PYTHONPATH=$PWD/bench:$PWD/bindings/python exec python3 examples/python/wsgi_server.py --workers "$2" --port "$1" py_app:app; }
c_gunicorn()  { PYTHONPATH=$PWD/bench exec python3 -m gunicorn --workers "$2" --bind "127.0.0.1:$1" --worker-class sync py_app:app; }

# measure MODE NAME FUNC: req/s into v[MODE/NAME]
measure() {
  local mode=$1 name=$2 fn=$3 port hdr=()
  port=$(free_port)
  [ "$mode" = close ] && hdr=(-H 'Connection: close')
  $fn "$port" "$workers" "$mode" > "$out/$mode-$name.log" 2>&1 &
  local pid=$!
  wait_port "$port" || true
  sleep 0.2
  wrk -t1 -c1 -d1s "${hdr[@]}" "http://127.0.0.1:$port/" > /dev/null 2>&1 || true # warm-up
  local r
  r=$(wrk -t2 -c"$conns" -d"${secs}s" "${hdr[@]}" "http://127.0.0.1:$port/" | tee "$out/$mode-$name.wrk" | awk '/Requests\/sec/ {print $2}')
  local errors; errors=$(grep -E 'Socket errors|Non-2xx' "$out/$mode-$name.wrk" || true)
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  v[$mode/$name]=${r:-0}
  printf '  %-10s %-20s %12s req/s  %s\n' "$mode" "$name" "${r:-0}" "$errors" >&2
}

echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); wrk ${secs}s, $workers workers, $conns connections" >&2
for mode in close keepalive; do
  echo "[$mode]" >&2
  measure $mode plain-reuseport c_plain
  measure $mode rcluster-rr c_rr
  [ "$mode" = close ] && measure $mode rcluster-rr-wl c_rr_wl
  measure $mode rcluster-least c_least
  measure $mode rcluster-shared c_shared
  measure $mode rcluster-reuseport c_reuseport
  [ $have_node = 1 ] && measure $mode node-cluster-rr c_node
  [ $have_node = 1 ] && measure $mode node-cluster-none c_node_none
  [ $have_node_rc = 1 ] && measure $mode node-rcluster-rr c_node_rc
  [ $have_node_rc = 1 ] && measure $mode express-node-cluster c_express
  [ $have_node_rc = 1 ] && measure $mode express-rcluster c_express_rc
  [ $have_node_rc = 1 ] && measure $mode express-rcluster-none c_express_rc_none
  [ $have_py = 1 ] && measure $mode python-rcluster-wsgi c_pywsgi
  [ $have_py = 1 ] && measure $mode gunicorn-sync c_gunicorn
done

echo "[ipc]" >&2
while read -r _ name size rate mbs rtt; do
  v[ipc/$name/$size/rate]=$rate; v[ipc/$name/$size/mbs]=$mbs; v[ipc/$name/$size/rtt]=$rtt
  echo "  $name $size B: $rate msg/s, $mbs MB/s, RTT median $rtt us" >&2
done < <(timeout 120 "$out/ipc_c" 1 | grep '^ipc '; timeout 120 "$out/ipc_c" 1 batched | grep '^ipc ')
# The bindings and node:cluster, 64 in flight (4 from 64 KiB up): round trips/s.
for size in 64 4096 1048576; do
  if [ $have_node = 1 ]; then
    v[ipc/node-cluster/$size/rate]=$(timeout 60 node bench/ipc_echo.js node "$secs" $size | awk '{print $4}')
    v[ipc/node-cluster/$size/rtt]=$(timeout 60 node bench/ipc_echo.js node "$secs" $size rtt | awk '{print $4}')
    echo "  node:cluster ipc echo $size B: ${v[ipc/node-cluster/$size/rate]} round trips/s, RTT median ${v[ipc/node-cluster/$size/rtt]} us" >&2
  fi
  if [ $have_node_rc = 1 ]; then
    v[ipc/node-rcluster/$size/rate]=$(timeout 60 node bench/ipc_echo.js rcluster "$secs" $size | awk '{print $4}')
    echo "  rcluster (node binding) ipc echo $size B: ${v[ipc/node-rcluster/$size/rate]} round trips/s" >&2
  fi
  for how in plain batched; do
    v[ipc/py-$how/$size/rate]=$(RCLUSTER_LIB=$PWD/target/release/librcluster.so PYTHONPATH=bindings/python \
      timeout 60 python3 bench/py_ipc_echo.py "$secs" $how $size | awk '{print $(NF-4)}')
    echo "  rcluster (python, $how) ipc echo $size B: ${v[ipc/py-$how/$size/rate]} round trips/s" >&2
  done
done

echo "[startup, memory]" >&2
median() { sort -g | awk '{a[NR]=$1} END { if (NR) print a[int((NR+1)/2)]; else print 0 }'; }
for kind in fork exec node; do
  : > "$out/startup-$kind.txt"
  for _ in 1 2 3 4 5; do
    if [ $kind = node ]; then
      [ $have_node = 1 ] || break
      timeout 30 node bench/node_startup.js 8 >> "$out/startup-$kind.txt" || true
    else
      timeout 30 "$out/startup_c" $kind 8 >> "$out/startup-$kind.txt" || true
    fi
  done
  v[startup/$kind]=$(awk '/^startup/ {print $3}' "$out/startup-$kind.txt" | median)
  v[rss/$kind/primary]=$(awk '/^startup/ {print $4}' "$out/startup-$kind.txt" | median)
  v[rss/$kind/worker]=$(awk '/^startup/ {print $5}' "$out/startup-$kind.txt" | median)
  echo "  $kind: $(awk '/^startup/ {printf "%s ms  ", $3}' "$out/startup-$kind.txt")" >&2
done

echo "[balance]" >&2
balance() { # NAME FUNC
  local port; port=$(free_port)
  $2 "$port" 8 id > "$out/balance-$1.log" 2>&1 &
  local pid=$!
  wait_port "$port" || true
  sleep 0.3
  local line; line=$("$out/balance_client" "$port" 10000 16)
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  v[balance/$1]=$(awk '{print $4}' <<< "$line")
  # rr/least: the primary's own count (cluster_worker_info().connections, printed at shutdown)
  local info; info=$(awk '/^connections/ { mx=0; mn=-1; for (i=2;i<=NF;i++) { if ($i>mx) mx=$i; if (mn<0||$i<mn) mn=$i }; if (mn>0) printf "%.3f", mx/mn }' "$out/balance-$1.log")
  [ -n "$info" ] && v[balance/$1]=$info
  echo "  $1: client-side max/min $(awk '{ printf "%s, counts", $4; for (i = 5; i <= NF; i++) printf " %s", $i }' <<< "$line")${info:+  (cluster_worker_info max/min $info)}" >&2
}
balance plain-reuseport c_plain
balance rcluster-rr c_rr
balance rcluster-least c_least
balance rcluster-shared c_shared
balance rcluster-reuseport c_reuseport

echo "[children, threads]" >&2
# children NAME COMMAND...: the median of 3 runs' rates into v[children/NAME]
children() {
  local name=$1; shift
  : > "$out/children-$name.txt"
  for _ in 1 2 3; do timeout 120 "$@" >> "$out/children-$name.txt" || true; done
  v[children/$name]=$(awk '{print $2}' "$out/children-$name.txt" | median)
  echo "  $name: $(awk '{printf "%s/s  ", $2}' "$out/children-$name.txt")" >&2
}
children spawn "$out/child_c" spawn 2000
children posix "$out/child_c" posix 2000
children threads "$out/child_c" threads 200000
if [ $have_node = 1 ]; then
  children node-spawn node bench/child_node.js spawn 2000
  children node-threads node bench/child_node.js threads 200000
fi

# ---- the table ----
# row NAME VALUE PEER_NAME PEER_VALUE TARGET_TEXT CHECK   (CHECK: awk on r=ratio, x=value; "" = none)
rows=()
row() {
  local name=$1 x=${2:-} pn=$3 p=${4:-} tt=$5 chk=$6
  local ratio met
  ratio=$(awk -v a="${x:-0}" -v b="${p:-0}" 'BEGIN { if (b > 0 && a > 0) printf "%.2f", a / b; else print "n/a" }')
  if [ -z "$chk" ]; then met="-"
  elif [ -z "$x" ] || [ "$x" = 0 ]; then met="NOT met (no value)"
  else met=$(awk -v r="$ratio" -v x="$x" "BEGIN { if ($chk) print \"met\"; else print \"NOT met\" }"); fi
  rows+=("$(printf '%-44s %12s  %-30s %12s  %7s  %-22s %s' "$name" "${x:-n/a}" "$pn" "${p:-n/a}" "$ratio" "$tt" "$met")")
}
# The targets are for a new connection per request, where every request goes through the
# handoff. With keep-alive a connection is handed off once and then carries many requests: those
# rows compare the servers behind the handoff (C against node's http; the same JS for the Node
# binding, where about 1x is expected), so they are information, apart from staying close to the
# plain workers.
for mode in close keepalive; do
  label=handoff; [ $mode = keepalive ] && label=keep-alive
  target() { if [ $mode = close ]; then echo "$1"; else echo "(info)"; fi; }
  check() { if [ $mode = close ]; then echo "$1"; fi; }
  row "$label rcluster-rr req/s" "${v[$mode/rcluster-rr]:-}" plain-reuseport "${v[$mode/plain-reuseport]:-}" ">= 0.85x" "r >= 0.85"
  [ "$mode" = close ] && row "$label rcluster-rr, workers listen, req/s" "${v[$mode/rcluster-rr-wl]:-}" "rcluster-rr (config listener)" "${v[$mode/rcluster-rr]:-}" ">= 0.97x" "r >= 0.97"
  row "$label rcluster-rr req/s" "${v[$mode/rcluster-rr]:-}" node-cluster-rr "${v[$mode/node-cluster-rr]:-}" "$(target '>= 1.8x')" "$(check 'r >= 1.8')"
  row "$label rcluster-rr req/s" "${v[$mode/rcluster-rr]:-}" "node-cluster-none (SCHED_NONE)" "${v[$mode/node-cluster-none]:-}" "(info)" ""
  for pol in least shared reuseport; do
    row "$label rcluster-$pol req/s" "${v[$mode/rcluster-$pol]:-}" plain-reuseport "${v[$mode/plain-reuseport]:-}" "(info)" ""
  done
  row "$label node-rcluster-rr req/s (same JS)" "${v[$mode/node-rcluster-rr]:-}" node-cluster-rr "${v[$mode/node-cluster-rr]:-}" "$(target '>= 1.3x')" "$(check 'r >= 1.3')"
  # The issue's drop-in row: the same unchanged Express app, require('rcluster') against
  # require('cluster'), both round-robin (the default); SCHED_NONE on rcluster for information.
  row "$label express unchanged, rcluster req/s" "${v[$mode/express-rcluster]:-}" "express on node:cluster" "${v[$mode/express-node-cluster]:-}" "$( [ $mode = close ] && echo '>= 1.4x' || echo '>= 1.0x')" "$( [ $mode = close ] && echo 'r >= 1.4' || echo 'r >= 1.0')"
  row "$label express unchanged, rcluster SCHED_NONE req/s" "${v[$mode/express-rcluster-none]:-}" "express on node:cluster" "${v[$mode/express-node-cluster]:-}" "(info)" ""
  row "$label python-rcluster-wsgi req/s (same app)" "${v[$mode/python-rcluster-wsgi]:-}" gunicorn-sync "${v[$mode/gunicorn-sync]:-}" "$(target '>= 1.0x')" "$(check 'r >= 1.0')"
done
row "ipc 64 B windowed msg/s (batching on)" "${v[ipc/rcluster-batched/64/rate]:-}" raw-seqpacket "${v[ipc/raw-seqpacket/64/rate]:-}" ">= 0.8x" "r >= 0.8"
row "ipc 64 B windowed msg/s (batching on)" "${v[ipc/rcluster-batched/64/rate]:-}" "node:cluster (ipc_echo.js)" "${v[ipc/node-cluster/64/rate]:-}" ">= 1.5x" "r >= 1.5"
row "ipc 64 B windowed msg/s (default)" "${v[ipc/rcluster/64/rate]:-}" raw-seqpacket "${v[ipc/raw-seqpacket/64/rate]:-}" "(info)" ""
row "ipc 4 KiB windowed msg/s (batching on)" "${v[ipc/rcluster-batched/4096/rate]:-}" raw-seqpacket "${v[ipc/raw-seqpacket/4096/rate]:-}" "(info)" ""
row "ipc 4 KiB windowed msg/s (default)" "${v[ipc/rcluster/4096/rate]:-}" raw-seqpacket "${v[ipc/raw-seqpacket/4096/rate]:-}" "(info)" ""
row "ipc 1 MiB windowed MB/s" "${v[ipc/rcluster/1048576/mbs]:-}" raw-stream "${v[ipc/raw-stream/1048576/mbs]:-}" ">= 1000 MB/s" "x >= 1000"
for size in 64 4096 1048576; do
  row "ipc $size B node binding round trips/s" "${v[ipc/node-rcluster/$size/rate]:-}" "node:cluster (same script)" "${v[ipc/node-cluster/$size/rate]:-}" ">= 2x" "r >= 2"
  row "ipc $size B python (batching) round trips/s" "${v[ipc/py-batched/$size/rate]:-}" "node:cluster (ipc_echo.js)" "${v[ipc/node-cluster/$size/rate]:-}" ">= 1.0x" "r >= 1.0"
  row "ipc $size B python (default) round trips/s" "${v[ipc/py-plain/$size/rate]:-}" "node:cluster (ipc_echo.js)" "${v[ipc/node-cluster/$size/rate]:-}" "(info)" ""
done
row "ipc 64 B RTT median us (lower better)" "${v[ipc/rcluster/64/rtt]:-}" raw-seqpacket "${v[ipc/raw-seqpacket/64/rtt]:-}" "(info)" ""
row "ipc 4 KiB RTT median us (lower better)" "${v[ipc/rcluster/4096/rtt]:-}" raw-seqpacket "${v[ipc/raw-seqpacket/4096/rtt]:-}" "(info)" ""
row "ipc 1 MiB RTT median us (lower better)" "${v[ipc/rcluster/1048576/rtt]:-}" raw-stream "${v[ipc/raw-stream/1048576/rtt]:-}" "(info)" ""
for size in 64 4096 1048576; do
  row "ipc $size B RTT median us (lower better)" "${v[ipc/rcluster/$size/rtt]:-}" "node:cluster" "${v[ipc/node-cluster/$size/rtt]:-}" "(info)" ""
done
row "startup 8 READY FORK ms (median of 5)" "${v[startup/fork]:-}" "node:cluster online" "${v[startup/node]:-}" "< 20 ms" "x < 20"
row "startup 8 READY EXEC (C) ms (median of 5)" "${v[startup/exec]:-}" "node:cluster online" "${v[startup/node]:-}" "< 100 ms" "x < 100"
row "balance rr max/min (10k conns, 8 w)" "${v[balance/rcluster-rr]:-}" plain-reuseport "${v[balance/plain-reuseport]:-}" "<= 1.05" "x <= 1.05"
for pol in least shared reuseport; do
  row "balance $pol max/min (10k conns, 8 w)" "${v[balance/rcluster-$pol]:-}" plain-reuseport "${v[balance/plain-reuseport]:-}" "(info)" ""
done
row "memory primary RSS KiB (8 idle w, FORK)" "${v[rss/fork/primary]:-}" "node:cluster primary" "${v[rss/node/primary]:-}" "< 8192 KiB" "x < 8192"
row "memory worker RSS KiB (FORK)" "${v[rss/fork/worker]:-}" "node:cluster worker" "${v[rss/node/worker]:-}" "(info)" ""
row "memory worker RSS KiB (EXEC, C)" "${v[rss/exec/worker]:-}" "node:cluster worker" "${v[rss/node/worker]:-}" "(info)" ""
row "spawn+wait /bin/true children/s" "${v[children/spawn]:-}" "node child_process.spawn" "${v[children/node-spawn]:-}" ">= 1.5x" "r >= 1.5"
row "spawn+wait /bin/true children/s" "${v[children/spawn]:-}" "posix_spawn+waitpid (C)" "${v[children/posix]:-}" ">= 0.9x" "r >= 0.9"
row "thread message round trips/s" "${v[children/threads]:-}" "node worker_threads echo" "${v[children/node-threads]:-}" ">= 2x" "r >= 2"

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf '%-44s %12s  %-30s %12s  %7s  %-22s %s\n' name value peer "peer value" ratio target result
for r in "${rows[@]}"; do echo "$r"; done
