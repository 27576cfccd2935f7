#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a fixed number of executions each (not part of
# tests/run.sh or CI; see docs/fuzzing.md).
#
#   tests/fuzz.sh                      every target, 10,000,000 executions each
#   tests/fuzz.sh body click           these targets
#   FUZZ_RUNS=100000 tests/fuzz.sh     fewer executions
#
# Environment: FUZZ_RUNS (executions per target), CARGO_TARGET_DIR (default fuzz/target),
# FUZZ_LOCK (a file to flock around the build, for shared machines), FUZZ_NO_BUILD=1 (run
# the binaries already built), FUZZ_SANITIZER (cargo-fuzz's -s; address by default).
# One job, one core: each target runs in the foreground after the previous one. A crash stops
# the script; the input is in fuzz/artifacts/<target>/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz="$root/fuzz"
runs="${FUZZ_RUNS:-10000000}"
sanitizer="${FUZZ_SANITIZER:-address}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$fuzz/target}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(signature body validate click answer queue_files)

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

build=(cargo +nightly fuzz build -s "$sanitizer")
if [ -n "${FUZZ_LOCK:-}" ]; then build=(flock "$FUZZ_LOCK" "${build[@]}"); fi
[ -n "${FUZZ_NO_BUILD:-}" ] || (cd "$fuzz" && "${build[@]}")

host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin="$CARGO_TARGET_DIR/$host/release"

# Longest input per target (bytes) and its dictionary.
max_len() {
    case "$1" in
        body | validate | answer | queue_files) echo 16384 ;;
        *) echo 4096 ;;
    esac
}
dict() {
    case "$1" in
        body | validate) echo "$fuzz/dict/json.dict" ;;
        answer) echo "$fuzz/dict/answer.dict" ;;
        click) echo "$fuzz/dict/url.dict" ;;
        queue_files) echo "$fuzz/dict/queue.dict" ;;
        *) echo "$fuzz/dict/signature.dict" ;;
    esac
}

summary=()
for t in "${targets[@]}"; do
    mkdir -p "$fuzz/corpus/$t" "$fuzz/artifacts/$t"
    log="$fuzz/artifacts/$t/run.log"
    echo "== $t: $runs executions" >&2
    start=$(date +%s)
    (cd "$fuzz" && "$bin/$t" "corpus/$t" -runs="$runs" -max_len="$(max_len "$t")" -dict="$(dict "$t")" \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="artifacts/$t/") >"$log" 2>&1 || {
        tail -n 40 "$log" >&2
        echo "$t: FAILED (log $log)" >&2
        exit 1
    }
    secs=$(($(date +%s) - start))
    done_runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
    # libFuzzer's last status line: edges covered and the corpus it keeps (inputs/bytes).
    final=$(grep 'DONE' "$log" | tail -n 1)
    cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' <<<"$final")
    corp=$(sed -n 's/.* corp: \([^ ]*\) .*/\1/p' <<<"$final")
    line="$t: $done_runs executions in ${secs} s ($((done_runs / (secs > 0 ? secs : 1))) exec/s), $cov edges, corpus $corp, no crash"
    echo "$line" >&2
    summary+=("$line")
done
printf '%s\n' "" "Summary ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -m), sanitizer $sanitizer):" "${summary[@]}"
