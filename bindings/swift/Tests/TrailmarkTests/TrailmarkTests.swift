// The idiomatic Swift API against the real reference server (`TRAILMARK_SERVER`, a binary) and
// the host-built Rust library. Run by `./tests/run.sh swift`.

import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
@_spi(Benchmark) @testable import Trailmark

/// The reference server on a free port.
final class ReferenceServer {
    let base: String
    private let process: Process

    init(dir: URL) throws {
        guard let bin = ProcessInfo.processInfo.environment["TRAILMARK_SERVER"] else {
            throw XCTSkip("set TRAILMARK_SERVER")
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: bin)
        process.arguments = ["--app", "app:secret", "--admin-key", "adm1n-key-0123456789",
                             "--db", dir.appendingPathComponent("server.db").path, "--listen", "127.0.0.1:0"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var text = ""
        func found() -> Substring? { text.split(separator: "\n").first(where: { $0.hasPrefix("listening ") }) }
        while found() == nil {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let line = found() else {
            throw NSError(domain: "server", code: 1, userInfo: [NSLocalizedDescriptionKey: "no listening line: \(text)"])
        }
        base = String(line.dropFirst("listening ".count)).trimmingCharacters(in: .whitespaces)
    }

    /// What the server stored for an anonymous id, through the admin event inspector.
    func events(anonymousId: String) throws -> [[String: Any]] {
        var request = URLRequest(url: URL(string: "\(base)/v1/events?anonymous_id=\(anonymousId)")!)
        request.setValue("Bearer adm1n-key-0123456789", forHTTPHeaderField: "Authorization")
        let done = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var data = Data() }
        let box = Box()
        URLSession.shared.dataTask(with: request) { data, _, _ in
            box.data = data ?? Data()
            done.signal()
        }.resume()
        done.wait()
        let json = try JSONSerialization.jsonObject(with: box.data) as? [String: Any]
        return json?["events"] as? [[String: Any]] ?? []
    }

    deinit {
        process.terminate()
    }
}

func tempDir() -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tm-swift-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

func waitUntil(_ what: String, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(20)
    while try !condition() {
        if Date() > deadline { XCTFail("timed out waiting for \(what)"); return }
        Thread.sleep(forTimeInterval: 0.02)
    }
}

final class TrailmarkTests: XCTestCase {
    func config(_ endpoint: String, _ dir: URL, requireConsent: Bool = false) -> Trailmark.Configuration {
        var c = Trailmark.Configuration(appId: "app", appSecret: "secret", endpoint: endpoint)
        c.databasePath = dir.appendingPathComponent("sdk.db").path
        c.requireConsent = requireConsent
        c.deviceId = "idfv-1"
        return c
    }

    func testTrackThroughURLSessionArrivesAtTheServer() async throws {
        let dir = tempDir()
        let server = try ReferenceServer(dir: dir)
        var c = config(server.base, dir)
        c.os = "iOS"
        c.debug = true
        let lines = LineBox()
        let tm = try Trailmark.start(config: c, logger: { lines.add($0) })
        // The install request reaches the real attribution engine: organic, no campaign.
        let attribution = try await tm.attribution(timeout: 20)
        XCTAssertEqual(attribution?.matchType, "organic")
        XCTAssertEqual(attribution?.attributed, false)
        tm.identify("user-7", traits: ["email": "Kim@Example.com", "plan": "pro"])
        let when = Date(timeIntervalSince1970: 1_700_000_000)
        tm.track("add_to_cart", properties: ["sku": "A \"1\"", "price": 9.5, "quantity": 2, "currency": "EUR",
                                             "gift": false, "tags": ["x", 1, NSNull()], "at": when])
        tm.track("Not A Type") // refused and counted, never thrown
        // Invalid for the server (no currency): rejected alone, and stats() says why.
        tm.track("purchase", properties: ["revenue": 10])
        try await tm.flush()
        try waitUntil("delivery") { let s = try tm.stats(); return s.queued == 0 && s.inFlight == 0 }
        let stats = try tm.stats()
        XCTAssertEqual(stats.delivered, 4, "\(stats)")
        XCTAssertEqual(stats.refusedInvalid, 1)
        XCTAssertEqual(stats.rejectedByServer, 1, "\(stats)")
        XCTAssertEqual(stats.lastRejectionStatus, 200, "rejected in a batch the server took")
        XCTAssertTrue(stats.lastRejectionReason.contains("currency"), "the server's reason: \(stats)")
        XCTAssertEqual(stats.badAnswers, 0)

        let events = try server.events(anonymousId: try await tm.anonymousId())
        let byType = Dictionary(events.map { ($0["type"] as! String, $0) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(Set(byType.keys), ["install", "session_start", "identify", "add_to_cart"])
        let cart = try XCTUnwrap(byType["add_to_cart"])
        let props = try XCTUnwrap(cart["properties"] as? [String: Any])
        XCTAssertEqual(props["sku"] as? String, "A \"1\"")
        XCTAssertEqual(props["price"] as? Double, 9.5)
        XCTAssertEqual(props["quantity"] as? Int, 2)
        XCTAssertEqual(props["gift"] as? Bool, false)
        XCTAssertEqual(props["at"] as? String, "2023-11-14T22:13:20Z")
        XCTAssertEqual((props["tags"] as? [Any])?.count, 3)
        XCTAssertEqual(cart["user_id"] as? String, "user-7")
        let sdk = (cart["context"] as? [String: Any])?["sdk"] as? [String: Any]
        XCTAssertEqual(sdk?["name"] as? String, "trailmark-swift")
        let traits = try XCTUnwrap(byType["identify"]?["properties"] as? [String: Any])
        XCTAssertEqual(traits["email_sha256"] as? String, try Trailmark.hashEmail("kim@example.com"))
        XCTAssertNil(traits["email"], "the raw email never leaves the device")
        XCTAssertEqual(traits["plan"] as? String, "pro")
        // debug = true: the core's decisions reached the logger.
        let log = lines.all
        XCTAssertTrue(log.contains("add_to_cart queued"), "\(log)")
        XCTAssertTrue(log.contains { $0.hasPrefix("upload batch") }, "\(log)")
        XCTAssertTrue(log.contains { $0.contains("acknowledged") && $0.contains("1 rejected") }, "\(log)")
    }

    func testConsentHoldsAndPersistsAcrossRecreation() async throws {
        let dir = tempDir()
        var anon = ""
        do {
            let tm = try Trailmark.start(config: config("http://127.0.0.1:9", dir, requireConsent: true), transport: nil)
            tm.track("add_to_cart", properties: ["sku": "A-1"])
            try await tm.flush()
            anon = try await tm.anonymousId()
            XCTAssertEqual(try tm.stats().held, 3) // session_start, install, add_to_cart
        }
        // A new client on the same queue: same anonymous id, same held events.
        let again = try Trailmark.start(config: config("http://127.0.0.1:9", dir, requireConsent: true), transport: nil)
        let sameAnon = try await again.anonymousId()
        XCTAssertEqual(sameAnon, anon)
        XCTAssertEqual(try again.stats().held, 3)
        again.setConsent(analytics: false, attribution: false, doNotSell: true)
        try await again.flush()
        XCTAssertEqual(try again.stats().held, 0)
        XCTAssertEqual(try again.stats().droppedConsentDenied, 3)
        again.setConsent(analytics: true)
        again.optOut()
        again.track("add_to_cart")
        try await again.flush()
        XCTAssertEqual(try again.stats().queued, 0, "nothing is collected after opt-out")
    }

    func testPiiHashingMatchesTheCore() throws {
        XCTAssertEqual(try Trailmark.hashEmail(" Jane@Example.com "),
                       "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d")
    }

    func testErrorsAreThrownAsTypedSwiftErrors() throws {
        XCTAssertThrowsError(try Trailmark.hashEmail("not an email")) { error in
            guard case TrailmarkError.InvalidInput = error else { return XCTFail("\(error)") }
        }
        let dir = tempDir()
        XCTAssertThrowsError(try Trailmark.start(config: config("http://collect.example.com", dir))) { error in
            guard case TrailmarkError.InvalidConfig(let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.contains("https"), reason)
        }
    }

    func testUnusualPropertyValuesNeverCrash() {
        let text = JSONText.encode(["nan": Double.nan, "opt": Optional<Int>.none as Any, "obj": NSObject(),
                                    "url": URL(string: "https://x.test/a")!, "nested": ["inf": Float.infinity]])
        let back = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        XCTAssertNotNil(back, text)
        XCTAssertTrue(back?["nan"] is NSNull, text)
        XCTAssertTrue(back?["opt"] is NSNull, text)
        XCTAssertEqual(back?["url"] as? String, "https://x.test/a")
    }
}

/// Lines from the SDK's worker thread, read by the test.
final class LineBox: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    func add(_ line: String) {
        lock.lock()
        lines.append(line)
        lock.unlock()
    }

    var all: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }
}
