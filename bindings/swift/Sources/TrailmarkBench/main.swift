// SDK start time and `track` latency through the Swift API (dictionary → JSON text by the SDK's
// own writer → UniFFI → Rust).
// Run by `./tests/run.sh swift-bench` against the release library; figures in
// docs/BENCHMARKS.md.

import Foundation
@_spi(Benchmark) import Trailmark

/// Answers every upload at once as the server does when it takes everything (an organic
/// attribution for the install request), so the benchmark measures the SDK, not a network.
final class Accept: HttpTransport, @unchecked Sendable {
    func post(url: String, headers: [String: String], body: Data) -> HttpResponse {
        let answer: Any
        if url.hasSuffix("/v1/install") {
            answer = ["attributed": false, "match_type": "organic", "confidence": 0.0,
                      "fraud": ["flags": [Any](), "rejected": false], "reinstall": false] as [String: Any]
        } else {
            let sent = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
            let n = (sent?["batch"] as? [Any])?.count ?? 0
            answer = ["accepted": n, "duplicates": 0, "rejected": [Any]()] as [String: Any]
        }
        let data = (try? JSONSerialization.data(withJSONObject: answer)) ?? Data()
        return HttpResponse(status: 200, retryAfter: nil, body: data, error: nil)
    }
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

func report(_ what: String, _ samples: [UInt64]) {
    let s = samples.sorted()
    func p(_ q: Double) -> Double { Double(s[Int(Double(s.count - 1) * q)]) / 1000 }
    print(what.padding(toLength: 44, withPad: " ", startingAt: 0),
          "n=\(s.count)", String(format: "p50 %.2f µs  p90 %.2f µs  p99 %.2f µs", p(0.5), p(0.9), p(0.99)))
}

let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tm-bench-\(UUID().uuidString)")
try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
func config(_ name: String) -> Trailmark.Configuration {
    var c = Trailmark.Configuration(appId: "bench", appSecret: "secret", endpoint: "https://collect.example.test")
    c.databasePath = dir.appendingPathComponent(name).path
    c.deviceId = "idfv-1"
    c.os = "iOS"
    return c
}

var starts: [UInt64] = []
for i in 0..<200 {
    let t = now()
    let tm = try Trailmark.start(config: config("fresh-\(i).db"), transport: Accept())
    starts.append(now() - t)
    _ = tm
}
report("start: first launch (new queue)", starts)

let tm = try Trailmark.start(config: config("track.db"), transport: Accept())
let props: [String: Any] = ["sku": "A-1", "price": 9.99, "currency": "EUR", "quantity": 2]
var samples: [UInt64] = []
samples.reserveCapacity(200_000)
for _ in 0..<20 {
    for _ in 0..<10_000 {
        let t = now()
        tm.track("add_to_cart", properties: props)
        samples.append(now() - t)
    }
    try await tm.flush()
}
let dropped = try tm.stats().droppedBackpressure
precondition(dropped == 0, "backpressure drops: \(dropped)")
report("track (Swift API, 4 properties)", samples)
var screens: [UInt64] = []
screens.reserveCapacity(200_000)
for _ in 0..<20 {
    for _ in 0..<10_000 {
        let t = now()
        tm.screen("Checkout", properties: props)
        screens.append(now() - t)
    }
    try await tm.flush()
}
report("screen (Swift API, 4 properties)", screens)
let refused = try tm.stats().refusedInvalid
precondition(refused == 0, "refused: \(refused)")

// Where the time goes: the SDK's JSON writer alone, JSONSerialization alone (what the API used
// before, plus value sanitising), and the generated binding called with the JSON already encoded
// (UniFFI + the Rust call).
var writer: [UInt64] = []
var sink = 0
for _ in 0..<200_000 {
    let t = now()
    sink &+= JSONText.encode(props).utf8.count
    writer.append(now() - t)
}
report("  of which: JSONText.encode (direct writer)", writer)
var encode: [UInt64] = []
for _ in 0..<200_000 {
    let t = now()
    let data = try JSONSerialization.data(withJSONObject: props)
    sink &+= data.count
    encode.append(now() - t)
}
report("  (before: JSONSerialization alone)", encode)
let raw = try TrailmarkSdk.start(config: TrailmarkConfig(
    appId: "bench", appSecret: "secret", endpoint: "https://collect.example.test",
    dbPath: dir.appendingPathComponent("raw.db").path, requireConsent: false, deviceId: "idfv-1",
    advertisingId: nil, appVersion: nil, os: "iOS", osVersion: nil, model: nil, locale: nil, timezone: nil,
    sdkName: nil, sdkVersion: nil, flushAt: nil, flushIntervalMs: nil, maxQueueEvents: nil), transport: Accept())
let json = String(decoding: try JSONSerialization.data(withJSONObject: props), as: UTF8.self)
var ffi: [UInt64] = []
for _ in 0..<20 {
    for _ in 0..<10_000 {
        let t = now()
        raw.track(eventType: "add_to_cart", propertiesJson: json)
        ffi.append(now() - t)
    }
    try raw.flush()
}
report("  of which: generated binding (JSON given)", ffi)
precondition(sink > 0)
