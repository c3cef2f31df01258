#!/usr/bin/env bash
# Past one machine: three "hosts", each a network namespace running one rcluster server
# (examples/c/http_server, 2 FORK workers, /healthz on its metrics port), behind HAProxy in a
# fourth namespace with HTTP health checks on /healthz. Under wrk load, three full rolling
# deploys, host by host: SIGTERM (the host's /healthz says 503 from that moment; it serves on
# for its 600 ms drain delay, so HAProxy takes it out before its listeners close, then drains),
# wait for it to exit, start the new version, wait until HAProxy sees it UP, next
# host. Asserted: no failed request (no socket error, no non-2xx answer) over all of them, and
# every phase bounded. Prints what each phase took.
#   tests/multihost.sh [rounds]   (default 3)
# Namespaces, veth pairs and addresses (198.18.0.0/15, inside the namespaces only) are made
# here and removed at the end. Without root, `ip`, haproxy, wrk or curl it says SKIPPED and
# exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}

skip() { echo "multihost: SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root to make network namespaces"
for c in ip haproxy wrk curl; do command -v $c >/dev/null || skip "$c is not installed"; done
tag=$$
lb=rc-lb-$tag
ip netns add "$lb" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "$lb"

work=$(mktemp -d /tmp/rcluster-multihost.XXXXXX)
# The example server, against the debug library `make test` built.
cargo build --lib --quiet
server=$work/http_server
${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -Werror -Iinclude examples/c/http_server.c -o "$server" \
  -L"$PWD/target/debug" -Wl,-rpath,"$PWD/target/debug" -lrcluster
pids=()
cleanup() {
  exec 2>/dev/null # no "Killed" job notices for what is stopped here on purpose
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for n in "$lb" rc-h1-$tag rc-h2-$tag rc-h3-$tag; do
    # Whatever still runs inside goes with it.
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

# The load balancer's namespace and three hosts, one veth pair each: lb 198.18.i.1, host i
# 198.18.i.2.
ip netns add "$lb"
in_ns "$lb" ip link set lo up
for i in 1 2 3; do
  h=rc-h$i-$tag
  ip netns add "$h"
  in_ns "$h" ip link set lo up
  ip link add "rl$i-$tag" netns "$lb" type veth peer name "rh$i-$tag" netns "$h"
  in_ns "$lb" ip addr add "198.18.$i.1/24" dev "rl$i-$tag"
  in_ns "$h" ip addr add "198.18.$i.2/24" dev "rh$i-$tag"
  in_ns "$lb" ip link set "rl$i-$tag" up
  in_ns "$h" ip link set "rh$i-$tag" up
done

# start_host I: the server of host I, in the background; its primary's pid in spid[I].
declare -A spid
start_host() {
  local i=$1
  ip netns exec "rc-h$i-$tag" env HOST="198.18.$i.2" METRICS="198.18.$i.2:9100" HEALTHY_WORKERS=2 DRAIN_DELAY_MS=600 \
    "$server" 8080 2 fork rr >> "$work/h$i.log" 2>&1 &
  spid[$i]=$!
  pids+=("$!")
}

cat > "$work/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
frontend web
    bind 127.0.0.1:8000
    default_backend hosts
frontend stats
    bind 127.0.0.1:8404
    stats enable
    stats uri /stats
backend hosts
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check port 9100 inter 100ms fall 1 rise 2
    server h1 198.18.1.2:8080
    server h2 198.18.2.2:8080
    server h3 198.18.3.2:8080
EOF

# status_of HOST: h1's status in HAProxy's CSV stats (UP, DOWN, ...).
status_of() {
  in_ns "$lb" curl -s --max-time 2 "http://127.0.0.1:8404/stats;csv" | awk -F, -v s="$1" '$1 == "hosts" && $2 == s {print $18}'
}
# wait_status HOST WANT SECONDS
wait_status() {
  local deadline=$(( $(date +%s%N) / 1000000 + $3 * 1000 ))
  while [ "$(status_of "$1")" != "$2" ]; do
    if [ $(( $(date +%s%N) / 1000000 )) -gt $deadline ]; then
      echo "multihost: FAILED: $1 not $2 within $3 s (it is '$(status_of "$1")')"; tail -5 "$work/${1}.log"; exit 1
    fi
    sleep 0.05
  done
}
ms() { echo $(( $(date +%s%N) / 1000000 )); }

for i in 1 2 3; do start_host $i; done
ip netns exec "$lb" haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
pids+=("$!")
for i in 1 2 3; do wait_status h$i UP 20; done
answer=$(in_ns "$lb" curl -s --max-time 2 http://127.0.0.1:8000/)
case "$answer" in *worker*) ;; *) echo "multihost: FAILED: no answer through HAProxy: $answer"; exit 1;; esac

# The load, for as long as the deploys take: stopped at the end by SIGINT, on which wrk prints
# its totals (job control on, or a background job would start with SIGINT ignored).
set -m
ip netns exec "$lb" wrk -t2 -c16 -d600s http://127.0.0.1:8000/ > "$work/wrk.txt" 2>&1 &
wrk_pid=$!
set +m
pids+=("$wrk_pid")
sleep 1

printf '%-6s %-5s %-22s %-20s %s\n' round host "SIGTERM->exit (ms)" "start->UP (ms)" "host down (ms)"
for r in $(seq 1 "$rounds"); do
  for i in 1 2 3; do
    t0=$(ms)
    kill -TERM "${spid[$i]}"
    for _ in $(seq 1 400); do kill -0 "${spid[$i]}" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "${spid[$i]}" 2>/dev/null; then echo "multihost: FAILED: host $i did not exit within 20 s"; exit 1; fi
    wait "${spid[$i]}" || { echo "multihost: FAILED: host $i exited with $?"; tail -5 "$work/h$i.log"; exit 1; }
    t1=$(ms)
    start_host "$i"
    wait_status "h$i" UP 20
    t2=$(ms)
    printf '%-6s %-5s %-22s %-20s %s\n' "$r" "h$i" $((t1 - t0)) $((t2 - t1)) $((t2 - t0))
  done
done
sleep 1
kill -INT "$wrk_pid"
for _ in $(seq 1 100); do kill -0 "$wrk_pid" 2>/dev/null || break; sleep 0.1; done
wait "$wrk_pid" || true
cat "$work/wrk.txt" | grep -E "requests in|Requests/sec|Socket errors|Non-2xx" | sed 's/^/  wrk: /'
requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
if grep -qE "Socket errors|Non-2xx" "$work/wrk.txt"; then
  echo "multihost: FAILED: requests failed during the rolling deploys; HAProxy's log:"
  tail -20 "$work/haproxy.log"
  exit 1
fi
[ "${requests:-0}" -gt 100 ] || { echo "multihost: FAILED: only ${requests:-0} requests made"; exit 1; }
echo "multihost: ok: $rounds rolling deploys of 3 hosts, $requests requests, 0 failed"
