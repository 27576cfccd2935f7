#!/usr/bin/env bash
# The one test command: ./tests/run.sh [suite ...]
# Suites: rust, kotlin, swift, js, compat, browser, services. No suite = all of them.
# Benchmarks, not part of the test run: kotlin-bench, swift-bench (docs/BENCHMARKS.md).
# Installs what it needs itself; exits non-zero when any test fails; ends with the test
# runners' own summary lines.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TERM_COLOR=never
# One build per run: incremental caches would only take disk (several GB); a developer's own
# setting wins.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
log_dir="${TM_TEST_LOG_DIR:-$root/target/test-logs}"
mkdir -p "$log_dir"

all_suites=(rust kotlin swift js compat browser services)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
tool_cache="${TM_TOOL_CACHE:-$HOME/.cache/trailmark}"
suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=("${all_suites[@]}")

failed=()
summary=()

step() { printf '\n==> %s\n' "$*"; }

# Runs a command, keeping its output in a log; records failure without stopping the run.
run() {
  local name="$1"; shift
  step "$name: $*"
  if "$@" 2>&1 | tee "$log_dir/$name.log"; then
    return 0
  fi
  failed+=("$name")
  return 1
}

suite_rust() {
  step "rust toolchain"
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || rustup target add wasm32-unknown-unknown
  run rust-fmt cargo fmt --all -- --check
  # The core must build for the browser without its native driver.
  run rust-wasm cargo build -p trailmark-core --target wasm32-unknown-unknown --no-default-features
  # Every crate, every target (unit, integration, property, kill -9, examples, bench smoke run).
  run rust-clippy cargo clippy --workspace --all-targets -- -D warnings
  step "GeoIP test databases"
  if TM_GEOIP_DIR="$("$root/tests/fixtures.sh")"; then
    export TM_GEOIP_DIR
    echo "using $TM_GEOIP_DIR"
  else
    failed+=("geoip-fixtures")
  fi
  run rust-test cargo test --workspace --all-targets --no-fail-fast
  summary+=("$(awk '/^ *Running /{name=($2=="unittests") ? $3" "$4 : $2} /^test result:/{print "rust " name ": " $0}' "$log_dir/rust-test.log")")
  # The README's main command (in the test profile) and the SDK demo, as smoke tests.
  run quickstart cargo run -q -p trailmark-examples --bin quickstart -- --once --listen 127.0.0.1:0 --data "$root/target/quickstart-ci"
  summary+=("quickstart: $(grep -E '^(OK|MISMATCH)' "$log_dir/quickstart.log" || echo 'no summary line')")
  run rust-demo cargo run -q -p trailmark-core --example offline_demo
  summary+=("rust demo: $(tail -n 1 "$log_dir/rust-demo.log")")
  # The mobile library's size is a budget (issue 18, docs/BENCHMARKS.md): x86_64 and the
  # aarch64 stand-in for Android arm64 (Debian's cross compiler as the linker).
  need_debs gcc-aarch64-linux-gnu || failed+=("mobile-size-setup")
  rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1 || rustup target add aarch64-unknown-linux-gnu
  run mobile-size "$root/tests/mobile-size.sh" --budget 1.2MB
  # Android itself (no NDK here to link): the SDK library type-checks for it.
  rustup target add aarch64-linux-android >/dev/null 2>&1 || rustup target add aarch64-linux-android
  run android-check cargo check -p trailmark-ffi --no-default-features --target aarch64-linux-android
  summary+=("mobile library: $(grep -E ' bytes +[0-9.]+ MB|: skipped' "$log_dir/mobile-size.log" | paste -sd';' -)")
  step "rust: dependency policy"
  if cargo tree --workspace -e normal,build,dev --prefix none | grep -Eq '^backoff v'; then
    echo "the unmaintained 'backoff' crate is in the dependency tree"
    failed+=("rust-deps")
  else
    echo "no 'backoff' crate in the dependency tree"
  fi
}

# Debian packages, installed when missing (CI runs as root on a fresh machine).
need_debs() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Kotlin toolchain; sets kc (kotlin-compiler) and kcp (the class path).
kotlin_toolchain() {
  step "kotlin toolchain (JDK 17, Debian JNA and JUnit 4, npm kotlin-compiler in $tool_cache)"
  need_debs libjna-java junit4 || return 1
  local kdir="$tool_cache/kotlin"
  kc="$kdir/node_modules/kotlin-compiler"
  if [ ! -x "$kc/bin/kotlinc" ]; then
    mkdir -p "$kdir"
    (cd "$kdir" && npm init -y >/dev/null && npm install --no-audit --no-fund kotlin-compiler@2.4) || return 1
  fi
  kcp="/usr/share/java/jna.jar:/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar"
  kcp="$kcp:$kc/lib/kotlin-stdlib.jar:$kc/lib/kotlin-test.jar:$kc/lib/kotlin-test-junit.jar:$kc/lib/kotlinx-coroutines-core-jvm.jar"
}

# The library for a profile (debug for tests, release for benchmarks), the binding generator
# and the reference server; then the bindings for a language into $target_dir/<lang>/generated.
build_ffi() {
  local name="$1" profile="$2" lang="$3"
  local flag=""
  [ "$profile" = release ] && flag="--release"
  run "$name-cargo" cargo build $flag -p trailmark-ffi --features trailmark-ffi/cli -p trailmark-examples \
    --bin uniffi-bindgen --bin trailmark-server --lib || return 1
  gen="$target_dir/$lang/generated"
  rm -rf "$gen" && mkdir -p "$gen"
  run "$name-bindgen" "$target_dir/$profile/uniffi-bindgen" generate --no-format \
    --library "$target_dir/$profile/libtrailmark_ffi.so" --language "$lang" --out-dir "$gen"
}

suite_kotlin() {
  kotlin_toolchain || { failed+=("kotlin-setup"); return; }
  build_ffi kotlin debug kotlin || return
  run kotlin-compile "$kc/bin/kotlinc" -nowarn -cp "$kcp" -d "$target_dir/kotlin/tests.jar" \
    $(find "$gen" -name '*.kt') $(find "$root/bindings/kotlin/src/main" "$root/bindings/kotlin/src/test" -name '*.kt') || return
  run kotlin-test java -Djna.library.path="$target_dir/debug" -Dtrailmark.server="$target_dir/debug/trailmark-server" \
    -Dtrailmark.scenarios="$root/tests/scenarios" \
    -cp "$target_dir/kotlin/tests.jar:$kcp" org.junit.runner.JUnitCore TrailmarkFfiTest TrailmarkApiTest ScenarioTest FastPathTest
  summary+=("kotlin: $(grep -E '^(OK \(|Tests run:)' "$log_dir/kotlin-test.log" || echo 'no JUnit summary line')")
  # The same API with the JNI fast path switched off: track/screen/identify through UniFFI.
  run kotlin-test-uniffi java -Dtrailmark.fastpath=false -Djna.library.path="$target_dir/debug" \
    -Dtrailmark.server="$target_dir/debug/trailmark-server" -Dtrailmark.scenarios="$root/tests/scenarios" \
    -cp "$target_dir/kotlin/tests.jar:$kcp" org.junit.runner.JUnitCore TrailmarkApiTest ScenarioTest
  summary+=("kotlin, UniFFI fallback: $(grep -E '^(OK \(|Tests run:)' "$log_dir/kotlin-test-uniffi.log" || echo 'no JUnit summary line')")
}

# Not part of the test run: start time and track latency through the Kotlin API (release lib).
suite_kotlin_bench() {
  kotlin_toolchain || { failed+=("kotlin-setup"); return; }
  build_ffi kotlin-bench release kotlin || return
  run kotlin-bench-compile "$kc/bin/kotlinc" -nowarn -cp "$kcp" -d "$target_dir/kotlin/bench.jar" \
    $(find "$gen" -name '*.kt') $(find "$root/bindings/kotlin/src/main" "$root/bindings/kotlin/src/bench" -name '*.kt') || return
  run kotlin-bench java -Djna.library.path="$target_dir/release" -cp "$target_dir/kotlin/bench.jar:$kcp" BenchKt
  summary+=("$(grep -E '^(start|track|screen)' "$log_dir/kotlin-bench.log")")
}

# Copies the Swift package, its generated bindings, the library, the server and the scenarios
# into the chroot (its binaries run on the host kernel; glibc there is newer). Sets chroot.
swift_prepare() {
  local profile="$1"
  step "swift toolchain (Debian trixie swiftlang in a chroot under $tool_cache)"
  chroot="$("$root/tests/swift-chroot.sh")" || return 1
  build_ffi "swift-$profile" "$profile" swift || return 1
  local work="$chroot/trailmark"
  rm -rf "$work/swift" "$work/lib" "$work/bin" "$work/scenarios"
  mkdir -p "$work/lib" "$work/bin"
  cp -r "$root/bindings/swift" "$work/swift"
  rm -rf "$work/swift/.build"
  mkdir -p "$work/swift/Sources/Trailmark/Generated"
  cp "$gen/trailmark_ffi.swift" "$work/swift/Sources/Trailmark/Generated/"
  cp "$gen/trailmark_ffiFFI.h" "$work/swift/Sources/trailmark_ffiFFI/"
  cp "$target_dir/$profile/libtrailmark_ffi.so" "$work/lib/"
  cp "$target_dir/$profile/trailmark-server" "$work/bin/"
  cp -r "$root/tests/scenarios" "$work/scenarios"
  mountpoint -q "$chroot/proc" || mount -t proc proc "$chroot/proc"
  mountpoint -q "$chroot/dev" || mount --bind /dev "$chroot/dev"
}

swift_unmount() {
  umount "$chroot/dev" 2>/dev/null || true
  umount "$chroot/proc" 2>/dev/null || true
}

in_chroot() {
  chroot "$chroot" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin LD_LIBRARY_PATH=/trailmark/lib \
    TRAILMARK_SERVER=/trailmark/bin/trailmark-server TRAILMARK_SCENARIOS=/trailmark/scenarios sh -c "cd /trailmark/swift && $1"
}

suite_swift() {
  swift_prepare debug || { failed+=("swift-setup"); swift_unmount; return; }
  run swift-test in_chroot 'swift build --build-tests -Xlinker -L/trailmark/lib && swift test --skip-build -Xlinker -L/trailmark/lib'
  swift_unmount
  summary+=("swift: $(grep -E 'Executed [0-9]+ tests?' "$log_dir/swift-test.log" | tail -n 1 | sed 's/^[[:space:]]*//' || true)")
}

# Not part of the test run: start time and track latency through the Swift API (release lib).
suite_swift_bench() {
  swift_prepare release || { failed+=("swift-setup"); swift_unmount; return; }
  run swift-bench in_chroot 'swift run -c release -Xlinker -L/trailmark/lib TrailmarkBench'
  swift_unmount
  summary+=("$(grep -E '^(start|track|screen)' "$log_dir/swift-bench.log")")
}

# The web SDK: wasm32 target, wasm-bindgen-cli of the crate's exact version, binaryen's
# wasm-opt, the npm dev dependencies; then npm run build (bindings/js/dist) and the reference
# server the tests talk to. Once per run.
js_built=""
js_build() {
  [ -n "$js_built" ] && return "$js_built"
  js_built=1
  step "web SDK toolchain (wasm32 target, wasm-bindgen-cli, binaryen, npm packages)"
  rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || rustup target add wasm32-unknown-unknown || return 1
  need_debs binaryen || return 1
  local want
  want="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/[^0-9.]/, ""); print}' "$root/bindings/js/Cargo.lock")"
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    run wasm-bindgen-install cargo install wasm-bindgen-cli --version "$want" || return 1
  fi
  (cd "$root/bindings/js" && npm ci --no-audit --no-fund) || return 1
  run js-fmt cargo fmt --manifest-path "$root/bindings/js/Cargo.toml" -- --check || return 1
  run js-clippy cargo clippy --manifest-path "$root/bindings/js/Cargo.toml" --target wasm32-unknown-unknown -- -D warnings || return 1
  run js-build env CARGO_TARGET_DIR="$target_dir" npm --prefix "$root/bindings/js" run build || return 1
  run js-server cargo build -p trailmark-examples --bin trailmark-server || return 1
  js_built=0
}

# node:test's closing counters ("# tests 17" ...) as one line.
node_summary() {
  grep -E '^# (tests|pass|fail) [0-9]+' "$log_dir/$1.log" | tr -d '#' | paste -sd, | sed 's/^ *//' || true
}

suite_js() {
  js_build || { failed+=("js-setup"); return; }
  run js-test env TRAILMARK_SERVER="$target_dir/debug/trailmark-server" npm --prefix "$root/bindings/js" test
  summary+=("js: $(node_summary js-test)")
  # The size budgets (bindings/js/size-budget.json) are a test: over budget fails the suite.
  run js-size npm --prefix "$root/bindings/js" run --silent size
  summary+=("$(grep -E '^(first script|web size)' "$log_dir/js-size.log")")
}

# Segment's and RudderStack's own Node SDKs (npm, pinned in tests/compat/package-lock.json)
# against the reference server's Segment-compatible API (docs/segment.md).
suite_compat() {
  step "compat: npm ci in tests/compat (@segment/analytics-node, @rudderstack/rudder-sdk-node)"
  (cd "$root/tests/compat" && npm ci --no-audit --no-fund --ignore-scripts) || { failed+=("compat-setup"); return; }
  run compat-server cargo build -p trailmark-examples --bin trailmark-server || return
  run compat-test env TRAILMARK_SERVER="$target_dir/debug/trailmark-server" npm --prefix "$root/tests/compat" test
  summary+=("compat: $(node_summary compat-test)")
}

suite_browser() {
  js_build || { failed+=("browser-setup"); return; }
  need_debs chromium || { failed+=("browser-setup"); return; }
  run browser-test env TRAILMARK_SERVER="$target_dir/debug/trailmark-server" npm --prefix "$root/bindings/js" run test:browser
  summary+=("browser: $(node_summary browser-test)")
  run dashboard-test env TRAILMARK_SERVER="$target_dir/debug/trailmark-server" TM_ARTIFACTS="$log_dir/artifacts" \
    node --test "$root/tests/browser/dashboard.mjs" "$root/tests/browser/dashboard-pages.mjs"
  summary+=("dashboard: $(node_summary dashboard-test); screenshots in $log_dir/artifacts")
}

# PostgreSQL and Redis from Debian, private instances started for the run (tests/services.sh).
# tansu, a Kafka-protocol broker, from crates.io (about 10 minutes to build; kept in the cache).
TANSU_VERSION=0.6.0
tansu_bin() {
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/trailmark/tansu-$TANSU_VERSION"
  if [ ! -x "$dir/bin/tansu" ]; then
    step "building tansu $TANSU_VERSION (Kafka-protocol broker for the sink test)" >&2
    CARGO_TARGET_DIR="$target_dir/tansu-build" cargo install -q tansu --version "$TANSU_VERSION" \
      --features dynostore --root "$dir" >&2 || return 1
    rm -rf "$target_dir/tansu-build"
  fi
  echo "$dir/bin/tansu"
}

suite_services() {
  need_debs postgresql redis-server clickhouse-server curl || { failed+=("services-setup"); return; }
  local tansu
  if tansu="$(tansu_bin)"; then export TM_TANSU="$tansu"; else failed+=("kafka-setup"); fi
  step "starting private PostgreSQL, Redis, ClickHouse and a Kafka-protocol broker"
  local env_file="$log_dir/services.env"
  if ! "$root/tests/services.sh" start >"$env_file"; then
    failed+=("services-setup")
    return
  fi
  # shellcheck disable=SC1090
  . "$env_file"
  echo "PostgreSQL $TM_POSTGRES_URL, Redis $TM_REDIS_URL, ClickHouse $TM_CLICKHOUSE_URL, Kafka ${TM_KAFKA_BROKERS:-none}"
  run services-test env TM_REQUIRE_SERVICES=1 cargo test -p trailmark-server --test storage_suite --test reports --test schema_parity --test postgres_installs --test tls --test clickhouse
  summary+=("$(awk '/^test result:/{print "services storage suite + reports + schema parity + TLS + ClickHouse client (SQLite + PostgreSQL, Redis, ClickHouse): " $0}' "$log_dir/services-test.log")")
  run services-multi env TM_REQUIRE_SERVICES=1 cargo test -p trailmark-examples --test multi_instance
  summary+=("$(awk '/^test result:/{print "services two instances (PostgreSQL + Redis): " $0}' "$log_dir/services-multi.log")")
  run services-kafka env TM_REQUIRE_SERVICES=1 cargo test -p trailmark-server --features kafka --test kafka
  summary+=("$(awk '/^test result:/{print "services Kafka sink (tansu broker): " $0}' "$log_dir/services-kafka.log")")
  "$root/tests/services.sh" stop "$TM_SERVICES_DIR"
  # The ops kit: alert rules (promtool check + unit tests) and the Grafana dashboard's PromQL.
  if need_debs prometheus; then
    run ops-check "$root/examples/ops/check.sh"
    summary+=("$(grep -E "^ops kit:|unknown series" "$log_dir/ops-check.log" | paste -sd" " || true)")
  else
    failed+=("ops-setup")
  fi
}

# The reference server's bundled librdkafka links the system OpenSSL (SSL and SASL for Kafka);
# the services suite makes its test certificates with the openssl tool.
need_debs libssl-dev pkg-config openssl || failed+=("openssl-setup")

for suite in "${suites[@]}"; do
  case "$suite" in
    rust) suite_rust ;;
    kotlin) suite_kotlin ;;
    swift) suite_swift ;;
    js) suite_js ;;
    compat) suite_compat ;;
    browser) suite_browser ;;
    services) suite_services ;;
    kotlin-bench) suite_kotlin_bench ;;
    swift-bench) suite_swift_bench ;;
    *) echo "unknown suite '$suite' (known: ${all_suites[*]})"; exit 2 ;;
  esac
done

printf '\n==================== summary ====================\n'
for line in "${summary[@]}"; do printf '%s\n' "$line"; done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[*]}"
  exit 1
fi
printf 'all suites passed: %s\n' "${suites[*]}"
