#!/usr/bin/env bash
# Whole cluster runs with the primary under valgrind's memcheck; fails on any memcheck error or
# any definitely/indirectly lost block. `make test-valgrind` runs it (about 20 s).
#
#   1. examples/c/http_server.c, EXEC mode: 4 workers, 20 requests handed off, a rolling reload
#      (SIGHUP), 20 more requests, then SIGTERM (a graceful stop). The workers are exec'd, and
#      --trace-children=no leaves them outside valgrind: only the primary is checked.
#   2. The same in FORK mode. Forked workers are copies of the valgrind process, so they stay
#      under memcheck (--trace-children only concerns exec): the primary and every worker are
#      checked, each at its own exit, and a worker with errors exits 99, which fails the run.
#   3. ffi-tests/messages.c in FORK and EXEC mode (messages both ways, relay, broadcast, a
#      graceful stop; the program checks every worker's exit itself).
#   4. ffi-tests/node_channel.c: Node's IPC channel (the protocol, and hostile workers: an fd
#      flood, an endless line, garbage); its workers are exec'd, only the primary is checked.
#
# valgrind 3.19 does not know pidfd_open (syscall 434: "unhandled amd64-linux syscall" in the
# logs); the library then polls for its workers' exits instead, so under valgrind that
# fallback is what runs. The ASan runs (make test-sanitize) cover the pidfd path.
#
# Logs: target/debug/valgrind/<run>.<pid>.log (one per process).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind.sh: valgrind is not installed" >&2; exit 1; }

CC=${CC:-cc}
dir=target/debug/valgrind
cargo build --lib --quiet
mkdir -p "$dir"
rm -f "$dir"/*.log "$dir"/*.out
cflags=(-std=gnu11 -O1 -g -Wall -Wextra -Werror -Iinclude -Iffi-tests -Ltarget/debug "-Wl,-rpath,$PWD/target/debug")
"$CC" "${cflags[@]}" examples/c/http_server.c -o "$dir/http_server" -lrcluster
"$CC" "${cflags[@]}" ffi-tests/messages.c -o "$dir/messages" -lrcluster -lpthread
"$CC" "${cflags[@]}" ffi-tests/node_channel.c -o "$dir/node_channel" -lrcluster

vg=(valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99 --trace-children=no)
failed=0
fail() { echo "valgrind.sh: $run: $*" >&2; failed=1; }

# Checks the logs of run $run whose primary was pid $1: the primary's must hold a clean
# summary; every other log either holds one (a forked worker) or none (an exec'd worker, whose
# log ends at the exec). Sets $clean to the number of clean summaries.
check_logs() {
  local primary=$1 f
  clean=0
  for f in "$dir/$run".*.log; do
    if grep -q "ERROR SUMMARY:" "$f"; then
      if grep -q "ERROR SUMMARY: 0 errors" "$f" && ! grep -Eq "(definitely|indirectly) lost: [1-9]" "$f"; then
        clean=$((clean + 1))
      else
        fail "memcheck reported errors or leaks in $f:"
        cat "$f" >&2
      fi
    elif [ "$f" = "$dir/$run.$primary.log" ]; then
      fail "the primary's log has no summary (it did not exit normally): $f"
    fi
  done
}

get() { # one HTTP request to 127.0.0.1:$port, prints the body
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET / HTTP/1.0\r\nHost: valgrind\r\n\r\n' >&3
  sed -n '/^\r$/,$p' <&3 | tail -n +2
  exec 3<&-
}

# Waits up to 60 s until file $1 has at least $2 lines matching $3.
wait_for() {
  local i
  for i in $(seq 600); do
    [ "$(grep -c -- "$3" "$1" || true)" -ge "$2" ] && return 0
    sleep 0.1
  done
  fail "timed out waiting for $2 x '$3' in $1"
  return 1
}

requests() { # $1 requests, each must be answered by a worker
  local i body
  for i in $(seq "$1"); do
    body=$(get 2>/dev/null || true)
    case $body in "Hello from worker "*) ;; *) fail "request $i got '$body'"; return 1 ;; esac
  done
}

http_run() { # $1 = fork|exec
  run=http-$1
  local out="$dir/$run.out" start=$SECONDS
  "${vg[@]}" --log-file="$dir/$run.%p.log" "$dir/http_server" 0 4 "$1" >"$out" 2>&1 &
  local pid=$!
  if wait_for "$out" 4 " is ready"; then
    port=$(sed -n 's|.*serving http://127.0.0.1:\([0-9]*\)/.*|\1|p' "$out")
    requests 20 && kill -HUP "$pid" && wait_for "$out" 8 " is ready" && wait_for "$out" 4 "exited (code" && requests 20
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local rc=0 i
  for i in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { fail "no exit 60 s after SIGTERM"; kill -KILL "$pid"; }
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "the primary exited with $rc (99: memcheck errors or leaks), output: $out"
  local exits bad
  exits=$(grep -c "exited (code 0, signal 0)" "$out" || true)
  bad=$(grep "exited (code" "$out" | grep -vc "exited (code 0, signal 0)" || true)
  [ "$exits" = 8 ] && [ "$bad" = 0 ] || fail "expected 8 clean worker exits, got $exits (and $bad others): $out"
  check_logs "$pid"
  if [ "$1" = fork ] && [ "$clean" != 9 ]; then fail "expected 9 clean memcheck summaries (primary + 8 workers), got $clean"; fi
  echo "valgrind: $run: $clean process(es) checked, $((SECONDS - start)) s"
}

messages_run() { # $1 = fork|exec
  run=messages-$1
  local start=$SECONDS rc=0
  "${vg[@]}" --log-file="$dir/$run.%p.log" "$dir/messages" "$1" >"$dir/$run.out" 2>&1 &
  local pid=$!
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "exited with $rc (99: memcheck errors or leaks), output: $dir/$run.out"
  check_logs "$pid"
  echo "valgrind: $run: $clean process(es) checked, $((SECONDS - start)) s"
}

node_channel_run() { # $1 = protocol|hostile: Node's channel (workers exec'd, not checked)
  run=node_channel-$1
  local start=$SECONDS rc=0
  "${vg[@]}" --log-file="$dir/$run.%p.log" "$dir/node_channel" "$1" >"$dir/$run.out" 2>&1 &
  local pid=$!
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "exited with $rc (99: memcheck errors or leaks), output: $dir/$run.out"
  check_logs "$pid"
  echo "valgrind: $run: $clean process(es) checked, $((SECONDS - start)) s"
}

http_run exec
http_run fork
messages_run exec
messages_run fork
node_channel_run protocol
node_channel_run hostile
if [ "$failed" = 0 ]; then echo "valgrind: ok (no memcheck error, nothing definitely or indirectly lost)"; fi
exit "$failed"
