#!/usr/bin/env bash
# Builds TrailmarkFFI.xcframework (static libraries for iOS, the iOS simulator and macOS) and
# generates the Swift bindings into Sources/Trailmark/Generated. Needs macOS with Xcode and
# rustup; it cannot run on Linux (no Apple SDKs), so CI here tests the package on Linux instead
# (./tests/run.sh swift).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
# Without the built-in reqwest/rustls client: the Swift API always passes URLSession (ADR 0005).
for t in "${targets[@]}"; do
  cargo build --release -p trailmark-ffi --no-default-features --target "$t"
done
out="$root/target/xcframework"
rm -rf "$out" && mkdir -p "$out/ios" "$out/sim" "$out/macos" "$out/headers" "$out/gen"
lib=libtrailmark_ffi.a
cp "target/aarch64-apple-ios/release/$lib" "$out/ios/"
lipo -create "target/aarch64-apple-ios-sim/release/$lib" "target/x86_64-apple-ios/release/$lib" -output "$out/sim/$lib"
lipo -create "target/aarch64-apple-darwin/release/$lib" "target/x86_64-apple-darwin/release/$lib" -output "$out/macos/$lib"

# The bindings come from the built library's metadata (identical on every target).
cargo run --release -p trailmark-ffi --features cli --bin uniffi-bindgen -- generate \
  --library target/aarch64-apple-darwin/release/libtrailmark_ffi.dylib --language swift --out-dir "$out/gen"
cp "$out/gen/trailmark_ffiFFI.h" "$out/headers/"
cp "$out/gen/trailmark_ffiFFI.modulemap" "$out/headers/module.modulemap"
mkdir -p "$here/Sources/Trailmark/Generated"
cp "$out/gen/trailmark_ffi.swift" "$here/Sources/Trailmark/Generated/"

rm -rf "$here/TrailmarkFFI.xcframework"
xcodebuild -create-xcframework \
  -library "$out/ios/$lib" -headers "$out/headers" \
  -library "$out/sim/$lib" -headers "$out/headers" \
  -library "$out/macos/$lib" -headers "$out/headers" \
  -output "$here/TrailmarkFFI.xcframework"
echo "built $here/TrailmarkFFI.xcframework; add bindings/swift as a local package or publish it"
