// The shared scenarios (tests/scenarios/*.json, format in its README) through the idiomatic
// Swift API. The folder comes in `TRAILMARK_SCENARIOS`.

import Foundation
import XCTest
@testable import Trailmark

struct ScenarioFailure: Error, CustomStringConvertible {
    let description: String
}

/// The server's answer when the script has none left: an organic attribution for the install
/// request, every event of a batch accepted.
func defaultAnswer(_ url: String, _ body: Data) -> [String: Any] {
    if url.hasSuffix("/v1/install") {
        return ["attributed": false, "match_type": "organic", "confidence": 0.0, "campaign_id": NSNull(),
                "link_id": NSNull(), "click_id": NSNull(), "network": NSNull(), "deep_link": NSNull(),
                "fraud": ["flags": [Any](), "rejected": false] as [String: Any], "reinstall": false]
    }
    let sent = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
    return ["accepted": (sent?["batch"] as? [Any])?.count ?? 0, "duplicates": 0, "rejected": [Any]()]
}

/// Records every request and answers from the script, then as the server does when it takes
/// everything. A string `body` is sent as it is (a proxy's page).
final class ScriptedTransport: HttpTransport, @unchecked Sendable {
    private let lock = NSLock()
    private var script: [[String: Any]]
    private var requests: [(String, [String: String], Data)] = []

    init(_ responses: [[String: Any]]) { script = responses }

    var captured: [(String, [String: String], Data)] {
        lock.lock(); defer { lock.unlock() }
        return requests
    }

    func post(url: String, headers: [String: String], body: Data) -> HttpResponse {
        lock.lock()
        let next = script.isEmpty ? ["body": defaultAnswer(url, body)] : script.removeFirst()
        requests.append((url, headers, body))
        lock.unlock()
        let answer: Data
        switch next["body"] {
        case let text as String: answer = Data(text.utf8)
        case let json?: answer = (try? JSONSerialization.data(withJSONObject: json)) ?? Data()
        case nil: answer = Data()
        }
        return HttpResponse(status: UInt16((next["status"] as? NSNumber)?.intValue ?? 200),
                            retryAfter: next["retry_after"] as? String, body: answer, error: next["error"] as? String)
    }
}

/// Exact match with the scenario patterns (`$var`, `<shape>`); numbers compare by value.
final class Matcher {
    private var vars: [String: Any] = [:]
    private let shapes = [
        "<any>": "(?s).*",
        "<uuid>": "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "<timestamp>": "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z",
        "<digits>": "\\d+",
        "<signature>": "v1=[0-9a-fA-F]{64}",
        "<traceparent>": "00-[0-9a-f]{32}-[0-9a-f]{16}-01",
    ]

    /// Variables (and stats) hold strings or numbers.
    static func same(_ a: Any, _ b: Any) -> Bool {
        if let x = a as? String, let y = b as? String { return x == y }
        if let x = a as? NSNumber, let y = b as? NSNumber { return x.isEqual(to: y) }
        return false
    }

    func match(_ expected: Any, _ actual: Any, _ path: String) throws {
        func bad() -> ScenarioFailure { ScenarioFailure(description: "\(path): expected \(expected), got \(actual)") }
        if let p = expected as? String, p.hasPrefix("$") {
            if let bound = vars[p] {
                guard Matcher.same(bound, actual) else { throw ScenarioFailure(description: "\(path): \(p) was \(bound), now \(actual)") }
            } else {
                if let other = vars.first(where: { Matcher.same($0.value, actual) }) {
                    throw ScenarioFailure(description: "\(path): \(p) would equal \(other.key)")
                }
                vars[p] = actual
            }
        } else if let p = expected as? String, p.hasPrefix("<"), p.hasSuffix(">") {
            guard let shape = shapes[p] else { throw ScenarioFailure(description: "\(path): unknown pattern \(p)") }
            guard let a = actual as? String, a.range(of: "^\(shape)$", options: .regularExpression) != nil else { throw bad() }
        } else if let e = expected as? [String: Any] {
            guard let a = actual as? [String: Any] else { throw bad() }
            guard Set(e.keys) == Set(a.keys) else {
                throw ScenarioFailure(description: "\(path): keys \(e.keys.sorted()) expected, got \(a.keys.sorted())")
            }
            for (k, v) in e { try match(v, a[k]!, "\(path).\(k)") }
        } else if let e = expected as? [Any] {
            guard let a = actual as? [Any] else { throw bad() }
            guard e.count == a.count else { throw ScenarioFailure(description: "\(path): \(e.count) items expected, got \(a.count)") }
            for (i, v) in e.enumerated() { try match(v, a[i], "\(path)[\(i)]") }
        } else if expected is NSNull || actual is NSNull {
            guard expected is NSNull && actual is NSNull else { throw bad() }
        } else if let e = expected as? String {
            guard (actual as? String) == e else { throw bad() }
        } else if let e = expected as? NSNumber, let a = actual as? NSNumber {
            guard e.isEqual(to: a) else { throw bad() }
        } else {
            throw bad()
        }
    }
}

func expand(_ v: Any, _ defs: [String: Any]) throws -> Any {
    if let s = v as? String, s.hasPrefix("@") {
        guard let d = defs[String(s.dropFirst())] else { throw ScenarioFailure(description: "undefined \(s)") }
        return try expand(d, defs)
    }
    if let m = v as? [String: Any] { return try m.mapValues { try expand($0, defs) } }
    if let a = v as? [Any] { return try a.map { try expand($0, defs) } }
    return v
}

func statsMap(_ s: SdkStats) -> [String: Any] {
    let counters: [String: UInt64] = [
        "recorded": s.recorded, "delivered": s.delivered, "queued": s.queued, "held": s.held,
        "rejected_by_server": s.rejectedByServer, "refused_invalid": s.refusedInvalid,
        "dropped_queue_full": s.droppedQueueFull, "dropped_expired": s.droppedExpired,
        "dropped_consent_denied": s.droppedConsentDenied, "dropped_opted_out": s.droppedOptedOut,
        "dropped_backpressure": s.droppedBackpressure, "uploads": s.uploads,
        "upload_failures": s.uploadFailures, "bad_answers": s.badAnswers, "in_flight": s.inFlight,
        "dropped_by_middleware": s.droppedByMiddleware, "middleware_errors": s.middlewareErrors]
    var all: [String: Any] = counters.mapValues { NSNumber(value: $0) }
    all["last_rejection_status"] = NSNumber(value: s.lastRejectionStatus)
    all["last_rejection_reason"] = s.lastRejectionReason
    return all
}

let trackingStatuses: [String: TrackingAuthorization] = [
    "not_determined": .notDetermined, "restricted": .restricted, "denied": .denied, "authorized": .authorized]

func configuration(_ c: [String: Any], _ db: URL) -> Trailmark.Configuration {
    var t = Trailmark.Configuration(appId: c["app_id"] as? String ?? "", appSecret: c["app_secret"] as? String ?? "",
                                    endpoint: c["endpoint"] as? String ?? "")
    t.databasePath = db.path
    t.requireConsent = c["require_consent"] as? Bool ?? false
    t.deviceId = c["device_id"] as? String
    t.advertisingId = c["advertising_id"] as? String
    t.appVersion = c["app_version"] as? String
    t.os = c["os"] as? String
    t.osVersion = c["os_version"] as? String
    t.model = c["model"] as? String
    t.locale = c["locale"] as? String
    t.timezone = c["timezone"] as? String
    if let n = c["sdk_name"] as? String { t.sdkName = n }
    if let v = c["sdk_version"] as? String { t.sdkVersion = v }
    t.flushAt = (c["flush_at"] as? NSNumber)?.intValue
    t.flushInterval = (c["flush_interval_ms"] as? NSNumber).map { $0.doubleValue / 1000 }
    t.maxQueueEvents = (c["max_queue_events"] as? NSNumber)?.intValue
    t.hashedTraits = c["hashed_traits"] as? [String]
    t.trackingAuthorizationWait = (c["tracking_authorization_wait_ms"] as? NSNumber).map { $0.doubleValue / 1000 }
    t.trackingAuthorization = (c["tracking_authorization"] as? String).flatMap { trackingStatuses[$0] }
    return t
}

func errorName(_ e: Error) -> String {
    switch e as? TrailmarkError {
    case .InvalidConfig?: return "InvalidConfig"
    case .InvalidInput?: return "InvalidInput"
    case .Storage?: return "Storage"
    case .Closed?: return "Closed"
    case .Timeout?: return "Timeout"
    case nil: return "\(e)"
    }
}

func runScenario(_ file: URL) async throws {
    let scenario = try JSONSerialization.jsonObject(with: Data(contentsOf: file)) as! [String: Any]
    let dir = tempDir()
    let db = dir.appendingPathComponent("sdk.db")
    let cfg = scenario["config"] as? [String: Any] ?? [:]
    let transport = ScriptedTransport(scenario["responses"] as? [[String: Any]] ?? [])
    var tm: Trailmark? = try Trailmark.start(config: configuration(cfg, db), transport: transport)
    let matcher = Matcher()
    for (i, step) in (scenario["steps"] as? [[String: Any]] ?? []).enumerated() {
        let at = "step \(i) \(step)"
        if step["call"] as? String == "restart" {
            tm = nil // the old client shuts down (and commits) before the new one opens the queue
            tm = try Trailmark.start(config: configuration(cfg, db), transport: transport)
            continue
        }
        guard let s = tm else { throw ScenarioFailure(description: "\(at): not running") }
        let props = step["properties"] as? [String: Any] ?? [:]
        switch step["call"] as? String {
        case "track": s.track(step["type"] as! String, properties: props)
        case "screen": s.screen(step["name"] as! String, properties: props)
        case "identify": s.identify(step["user_id"] as! String, traits: step["traits"] as? [String: Any] ?? [:])
        case "register": s.register(step["properties"] as? [String: Any] ?? [:])
        case "unregister": s.unregister(step["key"] as! String)
        case "group": s.group(step["group_id"] as! String, traits: step["traits"] as? [String: Any] ?? [:])
        case "alias": s.alias(step["user_id"] as! String)
        case "add_middleware": s.addMiddleware { e in try scripted(step, e) }
        case "set_advertising_id": s.setAdvertisingId(step["id"] as? String)
        case "set_tracking_authorization": s.setTrackingAuthorization(trackingStatuses[step["status"] as! String]!)
        case "set_consent":
            s.setConsent(analytics: step["analytics"] as? Bool, attribution: step["attribution"] as? Bool,
                         doNotSell: step["do_not_sell"] as? Bool)
        case "opt_out": s.optOut()
        case "opt_in": s.optIn()
        case "reset": s.reset()
        case "on_foreground": s.onForeground()
        case "on_background": s.onBackground()
        case "handle_open_url":
            // URL(string:) refuses what is not a URL; pass such text to the core as it is.
            let text = step["url"] as! String
            if let url = URL(string: text) { s.handleOpenURL(url) } else { s.handleOpenURL(string: text) }
        case "flush": try await s.flush()
        case "wait_requests":
            let want = (step["count"] as! NSNumber).intValue
            let deadline = Date().addingTimeInterval(20)
            while true {
                // The captured count first, then the stats: read the other way round, an
                // upload handed out between the two reads looks finished (in flight 0, captured).
                let have = transport.captured.count
                if have >= want, try s.stats().inFlight == 0 { break }
                if Date() > deadline { throw ScenarioFailure(description: "\(at): \(transport.captured.count) requests after 20 s") }
                try await Task.sleep(nanoseconds: 5_000_000)
            }
        case "expect_stats":
            let actual = statsMap(try s.stats())
            for (k, v) in step["stats"] as? [String: Any] ?? [:] {
                guard let a = actual[k] else { throw ScenarioFailure(description: "\(at): unknown stat \(k)") }
                guard Matcher.same(a, v) else {
                    throw ScenarioFailure(description: "\(at): stat \(k) is \(a), expected \(v); all: \(actual)")
                }
            }
        case "anonymous_id": try matcher.match(step["expect"]!, try await s.anonymousId(), at)
        case "attribution":
            let got: Any = try await s.attribution(timeout: 0).map { a -> [String: Any] in
                ["attributed": a.attributed, "match_type": a.matchType, "confidence": a.confidence,
                 "campaign_id": a.campaignId as Any? ?? NSNull(), "link_id": a.linkId as Any? ?? NSNull(),
                 "click_id": a.clickId as Any? ?? NSNull(), "network": a.network as Any? ?? NSNull(),
                 "deep_link_path": a.deepLinkPath as Any? ?? NSNull(), "deep_link_params": a.deepLinkParams,
                 "fraud_flags": a.fraudFlags, "fraud_rejected": a.fraudRejected, "reinstall": a.reinstall,
                 "reason": a.reason as Any? ?? NSNull()]
            } ?? NSNull()
            try matcher.match(step["expect"] ?? NSNull(), got, at)
        case "hash_email":
            let result = Result { try Trailmark.hashEmail(step["email"] as! String) }
            switch (result, step["expect"] as? String, step["error"] as? String) {
            case (.success(let h), let e?, nil) where h == e: break
            case (.failure(let e), nil, let name?) where errorName(e) == name: break
            default: throw ScenarioFailure(description: "\(at): got \(result)")
            }
        case "start_error":
            let changed = cfg.merging(step["config"] as? [String: Any] ?? [:]) { _, new in new }
            do {
                _ = try Trailmark.start(config: configuration(changed, dir.appendingPathComponent("other-\(i).db")),
                                        transport: nil)
                throw ScenarioFailure(description: "\(at): started")
            } catch let e as TrailmarkError {
                guard errorName(e) == step["error"] as? String else { throw ScenarioFailure(description: "\(at): wrong error \(e)") }
            }
        default: throw ScenarioFailure(description: "\(at): unknown call")
        }
    }
    tm = nil
    let actual: [Any] = try transport.captured.map { url, headers, body in
        let afterScheme = url.components(separatedBy: "://").last ?? ""
        let path = afterScheme.firstIndex(of: "/").map { String(afterScheme[$0...]) } ?? ""
        return ["path": path,
                "headers": Dictionary(uniqueKeysWithValues: headers.map { ($0.key.lowercased(), $0.value) }),
                "body": try JSONSerialization.jsonObject(with: body)] as [String: Any]
    }
    let expected = try expand(scenario["requests"] ?? [], scenario["defs"] as? [String: Any] ?? [:])
    try matcher.match(expected, actual, "requests")
}

final class ScenarioTests: XCTestCase {
    func testSharedScenarios() async throws {
        guard let dir = ProcessInfo.processInfo.environment["TRAILMARK_SCENARIOS"] else {
            throw XCTSkip("set TRAILMARK_SCENARIOS")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir)
            .filter { $0.hasSuffix(".json") }.sorted()
            .map { URL(fileURLWithPath: dir).appendingPathComponent($0) }
        XCTAssertFalse(files.isEmpty)
        var failures: [String] = []
        for f in files {
            do {
                try await runScenario(f)
                print("scenario \(f.lastPathComponent) ok")
            } catch {
                failures.append("\(f.lastPathComponent): \(error)")
            }
        }
        XCTAssertTrue(failures.isEmpty, "\(failures.count) of \(files.count) scenarios failed:\n" + failures.joined(separator: "\n"))
    }
}

/// A middleware doing what an `add_middleware` step says (tests/scenarios/README.md).
func scripted(_ rule: [String: Any], _ e: TrailmarkEvent) throws -> TrailmarkEvent? {
    if rule["drop_type"] as? String == e.type { return nil }
    if rule["fail_type"] as? String == e.type { throw ScenarioFailure(description: "scripted failure") }
    var out = e
    if let r = rule["rename"] as? [String: Any], r["from"] as? String == e.type, let to = r["to"] as? String {
        out.type = to
    }
    for k in rule["remove"] as? [String] ?? [] { out.properties.removeValue(forKey: k) }
    for (k, v) in rule["set"] as? [String: Any] ?? [:] { out.properties[k] = v }
    for (k, from) in rule["copy_context"] as? [String: String] ?? [:] { out.properties[k] = e.context[from] ?? NSNull() }
    return out
}
