#!/usr/bin/env bash
# The README's demo: starts examples/c/http_server (4 workers on 127.0.0.1:$PORT), sends a
# few requests and shows which worker answered each, then keeps serving until Ctrl-C.
# DEMO_STAY=0 stops it after the requests (what CI and the tests do).
set -euo pipefail
port=${PORT:-8080}
requests=${DEMO_REQUESTS:-8}
server=${1:?usage: demo.sh path/to/http_server}

"$server" "$port" 4 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' EXIT INT TERM

get() { # one HTTP request with bash's /dev/tcp, prints the body
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET / HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
  sed -n '/^\r$/,$p' <&3 | tail -n +2
  exec 3<&-
}

for _ in $(seq 1 100); do # wait (up to 5 s) for the port to answer
  get >/dev/null 2>&1 && break
  sleep 0.05
done
for i in $(seq 1 "$requests"); do
  printf 'request %d -> %s\n' "$i" "$(get)"
done
if [ "${DEMO_STAY:-1}" = 1 ]; then
  echo "try: curl http://127.0.0.1:$port/   (Ctrl-C stops the cluster gracefully)"
  wait $pid
fi
