#!/usr/bin/env bash
# Python benchmark: rcluster-serve against gunicorn and uvicorn on the same real apps
# (bindings/python/tests/apps: Flask, Django, Starlette), 2 workers each, in one run:
#
#   Flask, Django  Connection: close   rcluster-serve  vs gunicorn sync            target >= 1.3x
#   Flask, Django  keep-alive          rcluster-serve  vs gunicorn gthread (4 thr) target >= 1.5x
#   Starlette      keep-alive          rcluster-serve  vs uvicorn --workers 2      target >= 1.2x
#   Starlette      Connection: close   rcluster-serve  vs uvicorn --workers 2      target >= 1.5x
#
# Every server runs with its defaults but for -w 2 (rcluster-serve: WSGI apps in 4 threads per
# worker, uvloop and httptools; gunicorn gthread: --threads 4, as many; uvicorn: uvloop and
# httptools too). The two contestants of a row alternate, `rounds` times each, and the row
# keeps each one's median (the machine is shared: alternating spreads the noise over both).
# Needs wrk, gunicorn, uvicorn, flask, django, starlette, httptools (bench/setup.sh installs).
# Usage: [ROWS="flask django starlette"] bench/run_python.sh [seconds] [rounds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
rounds=${2:-3}
conns=${3:-32}
bench/setup.sh
for m in gunicorn uvicorn flask django starlette httptools; do
  python3 -c "import $m" 2>/dev/null || { echo "bench: python module $m missing (pip install $m)"; exit 2; }
done
cargo build --release --quiet
export RCLUSTER_LIB=$PWD/target/release/librcluster.so
export PYTHONPATH=$PWD/bindings/python:$PWD/bindings/python/tests/apps
APPS=$PWD/bindings/python/tests/apps
mkdir -p target

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# measure LOG CONN(close|keep) PORT CMD...: starts CMD, warms it up, prints wrk's requests/s
measure() {
  local log=$1 conn=$2 port=$3; shift 3
  (cd "$APPS" && exec "$@") > "$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  local hdr=()
  [ "$conn" = close ] && hdr=(-H 'Connection: close')
  wrk -t2 -c"$conns" -d1s "${hdr[@]}" "http://127.0.0.1:$port/" > /dev/null 2>&1 || true
  local out r
  out=$(wrk -t2 -c"$conns" -d"${secs}s" "${hdr[@]}" "http://127.0.0.1:$port/")
  r=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
  if grep -q 'Non-2xx\|Socket errors' <<< "$out"; then
    echo "bench: errors from $* ($conn): $(grep 'Non-2xx\|Socket errors' <<< "$out" | tr -s ' ')" >&2
  fi
  kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  echo "${r:-0}"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

rows=()
# row NAME CONN TARGET APP_SPEC PEER_NAME PEER_CMD [RC_OPTIONS] (PORT in the commands is replaced)
row() {
  local name=$1 conn=$2 target=$3 app=$4 peer=$5 peer_cmd=$6 rc_opts=${7:-}
  case " ${ROWS:-$name} " in *" $name "*) ;; *) return 0 ;; esac  # ROWS="flask django": only those
  local a=() b=() p
  for _ in $(seq 1 "$rounds"); do
    p=$(free_port)
    a+=("$(measure "target/bench-py-rc.log" "$conn" "$p" python3 -m rcluster.serve -w 2 $rc_opts -b "127.0.0.1:$p" "$app")")
    p=$(free_port)
    # shellcheck disable=SC2086
    b+=("$(measure "target/bench-py-peer.log" "$conn" "$p" ${peer_cmd//PORT/$p})")
  done
  local ma mb
  ma=$(echo "${a[*]}" | median)
  mb=$(echo "${b[*]}" | median)
  echo "  $name $conn rounds: rcluster-serve ${a[*]} | $peer ${b[*]}" >&2
  [ -n "$rc_opts" ] && conn="$conn $rc_opts"
  rows+=("$(awk -v n="$name" -v c="$conn" -v a="$ma" -v p="$peer" -v b="$mb" -v t="$target" 'BEGIN {
    r = (b > 0) ? a / b : 0
    verdict = (t ~ /info/) ? "(information, no target)" : sprintf("(target >= %s: %s)", t, (r >= t + 0) ? "met" : "NOT met")
    printf "%-10s %-22s rcluster-serve %9.0f  %-16s %9.0f  %5.2fx  %s", n, c, a, p, b, r, verdict }')")
  echo "${rows[-1]}"
}

echo "rcluster-serve vs gunicorn/uvicorn: 2 workers, wrk -t2 -c$conns, ${secs}s x $rounds rounds (medians, req/s)"
row flask close 1.3 flask_app:app "gunicorn sync" "python3 -m gunicorn -w 2 -b 127.0.0.1:PORT flask_app:app"
row flask keep 1.5 flask_app:app "gunicorn gthread" "python3 -m gunicorn -w 2 -k gthread --threads 4 -b 127.0.0.1:PORT flask_app:app"
row django close 1.3 django_app:application "gunicorn sync" "python3 -m gunicorn -w 2 -b 127.0.0.1:PORT django_app:application"
row django keep 1.5 django_app:application "gunicorn gthread" "python3 -m gunicorn -w 2 -k gthread --threads 4 -b 127.0.0.1:PORT django_app:application"
row starlette keep 1.2 starlette_app:app "uvicorn" "python3 -m uvicorn --workers 2 --port PORT --log-level warning --no-access-log starlette_app:app"
row starlette close 1.5 starlette_app:app "uvicorn" "python3 -m uvicorn --workers 2 --port PORT --log-level warning --no-access-log starlette_app:app"
# (information) Connection: close with the workers accepting on the shared socket themselves,
# as gunicorn's and uvicorn's do: no handoff by the primary (--policy shared)
if [ -z "${ROWS:-}" ] || [ "${ROWS:-}" = shared ]; then
  ROWS_SAVED=${ROWS:-}; ROWS=
  row starlette close "(info)" starlette_app:app "uvicorn" "python3 -m uvicorn --workers 2 --port PORT --log-level warning --no-access-log starlette_app:app" "--policy shared"
  row flask close "(info)" flask_app:app "gunicorn sync" "python3 -m gunicorn -w 2 -b 127.0.0.1:PORT flask_app:app" "--policy shared"
  ROWS=$ROWS_SAVED
fi
echo
echo "summary:"
printf '%s\n' "${rows[@]}"
