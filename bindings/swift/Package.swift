// swift-tools-version:5.10
// The Trailmark SDK for Apple platforms (and Linux, where its tests run).
//
// `Sources/Trailmark/Generated/trailmark_ffi.swift` and the C header are generated from the
// Rust library by `./build-xcframework.sh` (Apple) or `./tests/run.sh swift` (Linux).
import PackageDescription

#if os(Linux)
// Linux: the host-built libtrailmark_ffi.so, found through -L and LD_LIBRARY_PATH.
let ffi: Target = .systemLibrary(name: "trailmark_ffiFFI", path: "Sources/trailmark_ffiFFI")
#else
// Apple platforms: the static library for every Apple target, built by build-xcframework.sh.
let ffi: Target = .binaryTarget(name: "trailmark_ffiFFI", path: "TrailmarkFFI.xcframework")
#endif

let package = Package(
    name: "Trailmark",
    platforms: [.iOS(.v13), .macOS(.v10_15), .tvOS(.v13), .watchOS(.v6)],
    products: [.library(name: "Trailmark", targets: ["Trailmark"])],
    targets: [
        ffi,
        .target(name: "Trailmark", dependencies: ["trailmark_ffiFFI"], path: "Sources/Trailmark"),
        .testTarget(name: "TrailmarkTests", dependencies: ["Trailmark"], path: "Tests/TrailmarkTests"),
        // Start time and track latency (./tests/run.sh swift-bench).
        .executableTarget(name: "TrailmarkBench", dependencies: ["Trailmark"], path: "Sources/TrailmarkBench"),
    ]
)
