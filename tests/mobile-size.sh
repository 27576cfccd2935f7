#!/usr/bin/env bash
# Size of the SDK library in the mobile build (ADR 0005, docs/BENCHMARKS.md):
#   cargo build --profile mobile -p trailmark-ffi --no-default-features
# for the host (x86_64 Linux) and, when the cross compiler is installed, for
# aarch64-unknown-linux-gnu (the stand-in for Android arm64: same instruction set, glibc instead
# of Bionic). The profile strips the library; the sizes printed are the files' sizes.
#
#   tests/mobile-size.sh [--budget SIZE] [--no-build]
#
# SIZE in bytes or with a unit: 1.2MB (10^6 bytes, as the docs count), 1200kB, 1.2MiB. With a
# budget, exits 1 when a library is larger. --no-build measures what target/ holds.
# arm64 needs: apt-get install gcc-aarch64-linux-gnu; rustup target add aarch64-unknown-linux-gnu
# (the linker is set in .cargo/config.toml).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" # .cargo/config.toml (SQLite options, the arm64 linker) applies from here down
target_dir="${CARGO_TARGET_DIR:-$root/target}"

budget=""
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget="${2:?--budget needs a size}"; shift 2 ;;
    --budget=*) budget="${1#--budget=}"; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# SIZE -> bytes.
to_bytes() {
  awk -v s="$1" 'BEGIN {
    n = s + 0; u = s; sub(/^[0-9.]+ */, "", u)
    f["" ] = 1; f["B"] = 1; f["kB"] = 1e3; f["KB"] = 1e3; f["MB"] = 1e6
    f["KiB"] = 1024; f["MiB"] = 1048576
    if (!(u in f) || n <= 0) { print "bad"; exit }
    printf "%d\n", n * f[u]
  }'
}
limit=""
if [ -n "$budget" ]; then
  limit="$(to_bytes "$budget")"
  [ "$limit" = bad ] && { echo "cannot read the budget '$budget' (e.g. 1.2MB, 1200000)" >&2; exit 2; }
fi

targets=("$(rustc -vV | sed -n 's/^host: //p')")
arm=aarch64-unknown-linux-gnu
arm_note=""
if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
  arm_note="skipped: no aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)"
elif [ ! -d "$(rustc --print target-libdir --target "$arm" 2>/dev/null)" ]; then
  arm_note="skipped: no Rust standard library for $arm (rustup target add $arm)"
elif [ "${targets[0]}" != "$arm" ]; then
  targets+=("$arm")
fi

status=0
printf '%s; %s\n' "$(rustc -V)" "$(cargo -V)"
for t in "${targets[@]}"; do
  # The host build is exactly the documented command (no --target: target/mobile/).
  if [ "$t" = "${targets[0]}" ]; then args=(); lib="$target_dir/mobile/libtrailmark_ffi.so"
  else args=(--target "$t"); lib="$target_dir/$t/mobile/libtrailmark_ffi.so"; fi
  if [ "$build" = 1 ] &&
    ! cargo build --profile mobile -p trailmark-ffi --no-default-features ${args[@]+"${args[@]}"} >&2; then
    echo "$t: build failed" >&2
    exit 2
  fi
  if [ ! -f "$lib" ]; then
    echo "$t: no $lib (run without --no-build)" >&2
    exit 2
  fi
  bytes=$(stat -c %s "$lib")
  line=$(awk -v t="$t" -v b="$bytes" 'BEGIN { printf "%-28s %9d bytes  %.2f MB", t, b, b / 1e6 }')
  if [ -n "$limit" ]; then
    if [ "$bytes" -le "$limit" ]; then
      line+="  within $budget"
    else
      line+="  OVER $budget by $((bytes - limit)) bytes"
      status=1
    fi
  fi
  echo "$line"
done
[ -n "$arm_note" ] && echo "$arm: $arm_note"
exit "$status"
