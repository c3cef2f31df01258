#!/usr/bin/env bash
# Builds the libFuzzer targets on stable Rust and runs them.
#
#   fuzz/run.sh                   every target, a short deterministic run (what `make test` does)
#   fuzz/run.sh primary 600       one target for 600 s, new inputs kept in fuzz/corpus/primary
#   fuzz/run.sh frame 0           one target with no time limit
#
# Short runs are deterministic: a fixed seed and a fixed number of inputs
# (FUZZ_RUNS, default 20000 per target), starting from the committed corpus and the
# regressions. Long runs add what they find to fuzz/corpus/<target>. A crash is written to
# target/fuzz/artifacts/<target>/; copy it into fuzz/regressions/<target>/ so that
# tests/fuzz_corpus.rs replays it for ever after.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
triple="$(rustc -vV | sed -n 's/^host: //p')"
out="$root/target/fuzz"

# Coverage instrumentation without a sanitizer (sanitizers need nightly). Passing --target
# keeps these flags off build scripts and proc macros, which would not link with them.
export RUSTFLAGS="--cfg fuzzing -Cdebug-assertions -Coverflow-checks -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares"
cargo build --quiet --release --manifest-path "$here/Cargo.toml" --target "$triple" --target-dir "$out" --bins
bin="$out/$triple/release"

run() { # target, extra libFuzzer flags...
    local t=$1 log
    shift
    mkdir -p "$out/artifacts/$t" "$out/scratch/$t" "$here/corpus/$t" "$here/regressions/$t"
    log="$out/$t.log"
    echo "fuzz: $t $*"
    if ! "$bin/$t" -artifact_prefix="$out/artifacts/$t/" -max_len=4096 -timeout=10 -rss_limit_mb=1024 \
        "$@" >"$log" 2>&1; then
        grep -v '^#[0-9]' "$log" | tail -n 40
        echo "fuzz: $t FAILED (whole log: $log; the input is in $out/artifacts/$t/)"
        return 1
    fi
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs)' "$log" | tail -n 2
}

targets=(frame primary)
if [[ $# -eq 0 ]]; then
    for t in "${targets[@]}"; do
        rm -rf "$out/scratch/$t"
        # New inputs go to the first directory (scratch): the committed corpus stays as it is.
        run "$t" -seed=1 -runs="${FUZZ_RUNS:-20000}" "$out/scratch/$t" "$here/corpus/$t" "$here/regressions/$t"
    done
else
    t=$1
    secs=${2:-60}
    run "$t" -max_total_time="$secs" "$here/corpus/$t" "$here/regressions/$t"
fi
