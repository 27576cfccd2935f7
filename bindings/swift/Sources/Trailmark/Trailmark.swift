// The idiomatic Swift API over the generated bindings (`Generated/trailmark_ffi.swift`).
// Marshalling only: every decision (validation, consent, queueing, retries, hashing) is the
// Rust core's.

import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(UIKit)
import UIKit
#endif

/// A running SDK. Recording calls return at once and never throw; misuse is counted in
/// `stats().refusedInvalid`.
public final class Trailmark: @unchecked Sendable {
    public static let sdkName = "trailmark-swift"
    public static let sdkVersion = "0.1.0"

    /// What the host app configures; everything but the credentials has a default.
    public struct Configuration: Sendable {
        public var appId: String
        public var appSecret: String
        /// Base URL of the collection server, e.g. `https://collect.example.com`.
        public var endpoint: String
        /// Where the queue lives; by default `trailmark.db` in Application Support.
        public var databasePath: String?
        /// Hold events until `setConsent(analytics: true)`.
        public var requireConsent = false
        /// A stable device identifier (IDFV); sent only with attribution consent.
        public var deviceId: String?
        /// The IDFA, when App Tracking Transparency allows it; sent only in the install request.
        public var advertisingId: String?
        public var appVersion: String?
        public var flushAt: Int?
        public var flushInterval: TimeInterval?
        public var maxQueueEvents: Int?
        /// Overrides for the device context (filled from the platform when nil).
        public var os: String?
        public var osVersion: String?
        public var model: String?
        public var locale: String? = Locale.current.identifier
        public var timezone: String? = TimeZone.current.identifier
        public var sdkName: String = Trailmark.sdkName
        public var sdkVersion: String = Trailmark.sdkVersion

        public init(appId: String, appSecret: String, endpoint: String) {
            self.appId = appId
            self.appSecret = appSecret
            self.endpoint = endpoint
            #if canImport(UIKit) && !os(watchOS)
            os = "iOS"
            #elseif os(macOS)
            os = "macOS"
            #elseif os(Linux)
            os = "Linux"
            #endif
            let v = ProcessInfo.processInfo.operatingSystemVersion
            osVersion = "\(v.majorVersion).\(v.minorVersion).\(v.patchVersion)"
            appVersion = Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String
        }

        func record() throws -> TrailmarkConfig {
            TrailmarkConfig(
                appId: appId, appSecret: appSecret, endpoint: endpoint,
                dbPath: try databasePath ?? Configuration.defaultDatabasePath(),
                requireConsent: requireConsent, deviceId: deviceId, advertisingId: advertisingId,
                appVersion: appVersion,
                os: os, osVersion: osVersion, model: model, locale: locale, timezone: timezone,
                sdkName: sdkName, sdkVersion: sdkVersion,
                flushAt: flushAt.map { UInt32(clamping: $0) },
                flushIntervalMs: flushInterval.map { UInt64(max(0, $0) * 1000) },
                maxQueueEvents: maxQueueEvents.map { UInt32(clamping: $0) })
        }

        static func defaultDatabasePath() throws -> String {
            let dir = try FileManager.default.url(
                for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
            return dir.appendingPathComponent("trailmark.db").path
        }
    }

    private let sdk: TrailmarkSdk
    private var observers: [NSObjectProtocol] = []

    private init(sdk: TrailmarkSdk) {
        self.sdk = sdk
    }

    /// Opens the queue and starts the SDK. Throws `TrailmarkError` for a bad configuration.
    /// `transport` is the HTTP stack (URLSession by default; nil uses the Rust client).
    public static func start(
        config: Configuration, transport: HttpTransport? = URLSessionTransport()
    ) throws -> Trailmark {
        let tm = Trailmark(sdk: try TrailmarkSdk.start(config: try config.record(), transport: transport))
        tm.observeLifecycle()
        return tm
    }

    deinit {
        observers.forEach(NotificationCenter.default.removeObserver)
    }

    public func track(_ event: String, properties: [String: Any] = [:]) {
        sdk.track(eventType: event, propertiesJson: JSONText.encode(properties))
    }

    public func screen(_ name: String, properties: [String: Any] = [:]) {
        sdk.screen(name: name, propertiesJson: JSONText.encode(properties))
    }

    /// `traits` may carry `email` and `phone`: the core hashes them before they leave the device.
    public func identify(_ userId: String, traits: [String: Any] = [:]) {
        sdk.identify(userId: userId, traitsJson: JSONText.encode(traits))
    }

    /// Changes consent; nil leaves a purpose as it is.
    public func setConsent(analytics: Bool? = nil, attribution: Bool? = nil, doNotSell: Bool? = nil) {
        sdk.setConsent(consent: Consent(analytics: analytics, attribution: attribution, doNotSell: doNotSell))
    }

    public func optOut() { sdk.optOut() }
    public func optIn() { sdk.optIn() }
    public func reset() { sdk.reset() }
    public func handleOpenURL(_ url: URL) { sdk.handleOpenUrl(url: url.absoluteString) }
    /// The same for a URL as text (one `URL(string:)` refuses is refused and counted).
    public func handleOpenURL(string: String) { sdk.handleOpenUrl(url: string) }
    public func onForeground() { sdk.onForeground() }
    public func onBackground() { sdk.onBackground() }

    /// Waits (off the caller's thread) until every earlier call is on disk, and asks for an upload.
    public func flush() async throws {
        try await offMain { try self.sdk.flush() }
    }

    /// The anonymous id the SDK's events carry now (a new one after `reset()`).
    public func anonymousId() async throws -> String {
        try await offMain { try self.sdk.anonymousId() }
    }

    /// The install's attribution: waits until the server answered the SDK's install request,
    /// or returns nil after `timeout` (offline, consent not given, or no install request).
    public func attribution(timeout: TimeInterval = 30) async throws -> Attribution? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let result = try await offMain({ try self.sdk.attribution() }) { return result }
            if Date() >= deadline { return nil }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
    }

    /// SHA-256 of a normalised email, as the SDK sends it.
    public static func hashEmail(_ email: String) throws -> String {
        try Trailmark_hashEmail(email)
    }

    public func stats() throws -> SdkStats { try sdk.stats() }

    private func offMain<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try work() })
            }
        }
    }

    private func observeLifecycle() {
        #if canImport(UIKit) && !os(watchOS)
        let center = NotificationCenter.default
        observers.append(center.addObserver(
            forName: UIApplication.didBecomeActiveNotification, object: nil, queue: nil
        ) { [weak self] _ in self?.sdk.onForeground() })
        observers.append(center.addObserver(
            forName: UIApplication.didEnterBackgroundNotification, object: nil, queue: nil
        ) { [weak self] _ in self?.sdk.onBackground() })
        #endif
    }
}

// The generated free function, reachable from inside `Trailmark` (whose static method has the
// same name).
private func Trailmark_hashEmail(_ email: String) throws -> String {
    try hashEmail(email: email)
}

/// Uploads with URLSession. Called on the SDK's uploader thread, which may block.
public final class URLSessionTransport: HttpTransport, @unchecked Sendable {
    private let session: URLSession
    private let timeout: TimeInterval

    public init(session: URLSession = .shared, timeout: TimeInterval = 30) {
        self.session = session
        self.timeout = timeout
    }

    public func post(url: String, headers: [String: String], body: Data) -> HttpResponse {
        guard let u = URL(string: url) else {
            return HttpResponse(status: 0, retryAfter: nil, body: Data(), error: "bad URL \(url)")
        }
        var request = URLRequest(url: u, timeoutInterval: timeout)
        request.httpMethod = "POST"
        headers.forEach { request.setValue($0.value, forHTTPHeaderField: $0.key) }
        request.httpBody = body
        let done = DispatchSemaphore(value: 0)
        let box = ResponseBox()
        session.dataTask(with: request) { data, response, error in
            if let http = response as? HTTPURLResponse {
                box.value = HttpResponse(
                    status: UInt16(clamping: http.statusCode),
                    retryAfter: http.value(forHTTPHeaderField: "Retry-After"),
                    body: data ?? Data(), error: nil)
            } else {
                box.value = HttpResponse(
                    status: 0, retryAfter: nil, body: Data(), error: error.map { "\($0)" } ?? "no response")
            }
            done.signal()
        }.resume()
        done.wait()
        return box.value ?? HttpResponse(status: 0, retryAfter: nil, body: Data(), error: "no response")
    }
}

private final class ResponseBox: @unchecked Sendable {
    var value: HttpResponse?
}

/// Properties to JSON text. Values JSON cannot hold become strings (dates as ISO 8601), and
/// non-finite numbers null, so a host's unusual value never crashes the app.
enum JSONText {
    static func encode(_ object: [String: Any]) -> String {
        let clean = sanitize(object)
        guard JSONSerialization.isValidJSONObject(clean),
              let data = try? JSONSerialization.data(withJSONObject: clean, options: [.fragmentsAllowed])
        else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func sanitize(_ value: Any) -> Any {
        if let optional = value as? OptionalProtocol {
            guard let wrapped = optional.wrapped else { return NSNull() }
            return sanitize(wrapped)
        }
        switch value {
        case is NSNull: return value
        case let s as String: return s
        case let n as NSNumber where type(of: value) is AnyObject.Type:
            // Foundation numbers and booleans (say, from JSONSerialization) keep their kind.
            if let d = n as? Double, !(d.isFinite) { return NSNull() }
            return n
        case let b as Bool: return b
        case let i as Int: return i
        case let i as Int64: return i
        case let i as Int32: return Int(i)
        case let i as UInt: return i
        case let i as UInt64: return i
        case let i as UInt32: return Int(i)
        case let d as Double: return d.isFinite ? d : NSNull()
        case let f as Float: return f.isFinite ? Double(f) : NSNull()
        case let d as Date: return ISO8601DateFormatter().string(from: d)
        case let u as URL: return u.absoluteString
        case let m as [String: Any]: return m.mapValues(sanitize)
        case let a as [Any]: return a.map(sanitize)
        default: return String(describing: value)
        }
    }
}

private protocol OptionalProtocol {
    var wrapped: Any? { get }
}

extension Optional: OptionalProtocol {
    var wrapped: Any? { self.map { $0 as Any } }
}
