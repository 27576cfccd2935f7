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
#if canImport(os)
import os
#endif
#if canImport(AppTrackingTransparency)
import AppTrackingTransparency
#endif

/// An event as a middleware sees it (see `Trailmark.addMiddleware`): its type, its properties
/// and the context it will carry (app, device, SDK, consent, group id; read-only).
public struct TrailmarkEvent {
    public var type: String
    public var properties: [String: Any]
    public let context: [String: Any]
}

/// Carries a log sink across the FFI.
final class LineLogger: DebugLogger, @unchecked Sendable {
    let sink: (String) -> Void

    init(_ sink: @escaping (String) -> Void) { self.sink = sink }

    func log(line: String) { sink(line) }
}

/// Carries a Swift middleware closure across the FFI (marshalling only).
final class MiddlewareBox: EventMiddleware, @unchecked Sendable {
    let run: (TrailmarkEvent) throws -> TrailmarkEvent?

    init(_ run: @escaping (TrailmarkEvent) throws -> TrailmarkEvent?) { self.run = run }

    func process(eventJson: String) throws -> String? {
        let m = (try JSONSerialization.jsonObject(with: Data(eventJson.utf8))) as? [String: Any] ?? [:]
        let event = TrailmarkEvent(type: m["type"] as? String ?? "", properties: m["properties"] as? [String: Any] ?? [:],
                                   context: m["context"] as? [String: Any] ?? [:])
        guard let out = try run(event) else { return nil }
        return JSONText.encode(["type": out.type, "properties": out.properties])
    }
}

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
        /// CFBundleVersion by default.
        public var appBuild: String?
        /// `app_opened`, `app_backgrounded` and `app_updated` events (default on).
        public var lifecycleEvents = true
        /// A `screen_view` named after each view controller's class when it appears (UIKit;
        /// UIKit's own containers are skipped). Default off.
        public var autoScreenViews = false
        /// How long after the start a pending ATT decision holds the install request (5 s).
        public var trackingAuthorizationWait: TimeInterval?
        /// The ATT status at the start (read from `ATTrackingManager` on iOS 14+); later
        /// changes go through `setTrackingAuthorization`.
        public var trackingAuthorization: TrackingAuthorization?
        public var flushAt: Int?
        public var flushInterval: TimeInterval?
        public var maxQueueEvents: Int?
        /// More `identify` traits sent only as SHA-256 (`<name>_sha256`), besides the e-mail and
        /// phone names always hashed.
        public var hashedTraits: [String]?
        /// Overrides for the device context (filled from the platform when nil).
        public var os: String?
        public var osVersion: String?
        public var model: String?
        public var manufacturer: String?
        /// The screen in pixels (filled on iOS when the configuration is made on the main thread).
        public var screenWidth: Int?
        public var screenHeight: Int?
        public var locale: String? = Locale.current.identifier
        public var timezone: String? = TimeZone.current.identifier
        /// The core's debug lines (one per decision) to the platform log (`os_log`, subsystem
        /// `dev.trailmark`; stderr where there is none) or to the `logger` given to `start`.
        public var debug = false
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
            appBuild = Bundle.main.infoDictionary?["CFBundleVersion"] as? String
            #if os(iOS) || os(tvOS) || os(macOS) || os(watchOS) || os(visionOS)
            manufacturer = "Apple"
            model = Configuration.machine()
            #endif
            #if canImport(AppTrackingTransparency)
            if #available(iOS 14, tvOS 14, macOS 11, *) {
                trackingAuthorization = Configuration.tracking(ATTrackingManager.trackingAuthorizationStatus)
            }
            #endif
            #if canImport(UIKit) && !os(watchOS)
            if Thread.isMainThread {
                let bounds = MainActor.assumeIsolated { UIScreen.main.nativeBounds }
                screenWidth = Int(bounds.width)
                screenHeight = Int(bounds.height)
            }
            #endif
        }

        #if canImport(AppTrackingTransparency)
        @available(iOS 14, tvOS 14, macOS 11, *)
        static func tracking(_ s: ATTrackingManager.AuthorizationStatus) -> TrackingAuthorization {
            switch s {
            case .notDetermined: return .notDetermined
            case .restricted: return .restricted
            case .denied: return .denied
            case .authorized: return .authorized
            @unknown default: return .denied
            }
        }
        #endif

        /// The hardware model (`iPhone15,2`), from `uname`.
        static func machine() -> String? {
            var info = utsname()
            guard uname(&info) == 0 else { return nil }
            let name = withUnsafeBytes(of: &info.machine) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            return name.isEmpty ? nil : name
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
                maxQueueEvents: maxQueueEvents.map { UInt32(clamping: $0) },
                hashedTraits: hashedTraits, debug: debug, appBuild: appBuild, manufacturer: manufacturer,
                screenWidth: screenWidth.map { UInt32(clamping: $0) }, screenHeight: screenHeight.map { UInt32(clamping: $0) },
                lifecycleEvents: lifecycleEvents,
                trackingAuthorizationWaitMs: trackingAuthorizationWait.map { UInt64(max(0, $0) * 1000) },
                trackingAuthorization: trackingAuthorization)
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
    /// With `config.debug`, the core's debug lines go to `logger` (the platform log by default),
    /// called on the SDK's worker thread.
    public static func start(
        config: Configuration, transport: HttpTransport? = URLSessionTransport(),
        logger: (@Sendable (String) -> Void)? = nil
    ) throws -> Trailmark {
        let tm = Trailmark(sdk: try TrailmarkSdk.start(config: try config.record(), transport: transport))
        #if canImport(UIKit) && !os(watchOS)
        if config.autoScreenViews {
            ScreenViews.shared.sdk = tm.sdk
            ScreenViews.install()
        }
        #endif
        if config.debug {
            tm.sdk.setDebugLogger(logger: LineLogger(logger ?? Trailmark.platformLog))
        }
        tm.observeLifecycle()
        return tm
    }

    deinit {
        observers.forEach(NotificationCenter.default.removeObserver)
    }

    /// The platform log: `os_log` (subsystem `dev.trailmark`, category `sdk`) on Apple
    /// platforms, stderr elsewhere.
    @Sendable static func platformLog(_ line: String) {
        #if canImport(os)
        os_log("%{public}@", log: OSLog(subsystem: "dev.trailmark", category: "sdk"), type: .debug, line)
        #else
        FileHandle.standardError.write(Data("[trailmark] \(line)\n".utf8))
        #endif
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

    /// The advertising id known after the start: the IDFA once App Tracking Transparency
    /// allows it (`ASIdentifierManager.shared().advertisingIdentifier`), or nil when it is gone.
    /// A pending install request carries the latest; after the install, a new id is sent as an
    /// update the server attaches to the device.
    public func setAdvertisingId(_ id: String?) { sdk.setAdvertisingId(id: id) }

    /// The ATT status. Report `.notDetermined` before showing the prompt: the install request
    /// then waits (at most `trackingAuthorizationWait`, 5 s after the start) for the answer.
    public func setTrackingAuthorization(_ status: TrackingAuthorization) {
        sdk.setTrackingAuthorization(status: status)
    }

    /// Adds a middleware, run after those added before on every later `track`, `screen` and
    /// `page`, on the caller's thread: it returns the event (changed or not; a changed type is
    /// recorded) or nil to drop it (counted in `droppedByMiddleware`). One that throws drops the
    /// event (counted in `middlewareErrors`); nothing is thrown at the caller.
    public func addMiddleware(_ middleware: @escaping (TrailmarkEvent) throws -> TrailmarkEvent?) {
        sdk.addMiddleware(middleware: MiddlewareBox(middleware))
    }

    /// Puts the user in a group (an account, a company): a `group` event whose properties are
    /// `traits` plus `group_id`; the group id rides on every later event's `context.group_id`
    /// (kept across launches, cleared by `reset`).
    public func group(_ groupId: String, traits: [String: Any] = [:]) {
        sdk.group(groupId: groupId, traitsJson: JSONText.encode(traits))
    }

    /// Links the current identity (the user id, or the anonymous id before `identify`) to
    /// `newUserId` with an `alias` event; the server then counts both ids as one person.
    public func alias(_ newUserId: String) { sdk.alias(newUserId: newUserId) }

    /// Super properties: merged into every later event (the event's own values win), kept
    /// across launches, cleared by `reset`. At most 4,096 bytes of JSON.
    public func register(_ properties: [String: Any]) {
        sdk.register(propertiesJson: JSONText.encode(properties))
    }

    /// Removes one super property.
    public func unregister(_ key: String) { sdk.unregister(key: key) }

    /// The super properties registered, after every earlier call.
    public func registeredProperties() throws -> [String: Any] {
        let text = try sdk.registeredProperties()
        return (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
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

/// Properties to JSON text, written directly (no `JSONSerialization`, no intermediate objects).
/// Values JSON cannot hold become strings (dates as ISO 8601, URLs as their absolute string,
/// anything else as `String(describing:)`), and non-finite numbers null, so a host's unusual
/// value never crashes the app. Foundation numbers keep their kind: an `NSNumber` boolean (as
/// `JSONSerialization` returns) is `true`/`false`, never 1/0.
@_spi(Benchmark)
public enum JSONText {
    public static func encode(_ object: [String: Any]) -> String {
        var w = JSONWriter()
        w.object(object)
        return w.text
    }
}

/// JSON as UTF-8 bytes. The order of the type checks in `value` is the one the SDK has always
/// used (Optional first; Foundation numbers before the Swift types they bridge to).
struct JSONWriter {
    private(set) var bytes: [UInt8] = []

    init() {
        bytes.reserveCapacity(256)
    }

    var text: String { String(decoding: bytes, as: UTF8.self) }

    mutating func object(_ m: [String: Any]) {
        bytes.append(UInt8(ascii: "{"))
        var first = true
        for (k, v) in m {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            string(k)
            bytes.append(UInt8(ascii: ":"))
            value(v)
        }
        bytes.append(UInt8(ascii: "}"))
    }

    mutating func value(_ value: Any) {
        if let optional = value as? OptionalProtocol {
            guard let wrapped = optional.wrapped else { return ascii("null") }
            return self.value(wrapped)
        }
        switch value {
        case is NSNull: ascii("null")
        case let s as String: string(s)
        case let n as NSNumber where type(of: value) is AnyObject.Type: number(n)
        case let b as Bool: ascii(b ? "true" : "false")
        case let i as Int: ascii(i.description)
        case let i as Int64: ascii(i.description)
        case let i as Int32: ascii(i.description)
        case let i as UInt: ascii(i.description)
        case let i as UInt64: ascii(i.description)
        case let i as UInt32: ascii(i.description)
        case let d as Double: double(d)
        case let f as Float: double(Double(f))
        case let d as Date: string(ISO8601DateFormatter().string(from: d))
        case let u as URL: string(u.absoluteString)
        case let m as [String: Any]: object(m)
        case let a as [Any]:
            bytes.append(UInt8(ascii: "["))
            for (i, x) in a.enumerated() {
                if i > 0 { bytes.append(UInt8(ascii: ",")) }
                self.value(x)
            }
            bytes.append(UInt8(ascii: "]"))
        default: string(String(describing: value))
        }
    }

    private mutating func ascii(_ s: String) {
        bytes.append(contentsOf: s.utf8)
    }

    /// Shortest text that reads back as the same Double (`2.0`, `9.99`, `1e+300`); null when
    /// not finite.
    private mutating func double(_ d: Double) {
        ascii(d.isFinite ? d.description : "null")
    }

    private static let hex = Array("0123456789abcdef".utf8)
    private static let booleanClass = ObjectIdentifier(type(of: NSNumber(value: true)))

    /// A Foundation number: a boolean (`__NSCFBoolean`, on Apple platforms and Linux alike),
    /// a floating-point number, or an integer of any width.
    private mutating func number(_ n: NSNumber) {
        if ObjectIdentifier(type(of: n)) == JSONWriter.booleanClass {
            return ascii(n.boolValue ? "true" : "false")
        }
        switch UInt8(truncatingIfNeeded: n.objCType.pointee) {
        case UInt8(ascii: "d"): double(n.doubleValue)
        case UInt8(ascii: "f"):
            let f = n.floatValue
            ascii(f.isFinite ? f.description : "null")
        default: ascii(n.stringValue)
        }
    }

    /// A JSON string: quote, backslash and control characters escaped, the rest as UTF-8.
    /// (Swift strings hold no lone surrogates, so the bytes are always valid UTF-8.)
    mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { utf8 in
            var start = 0
            for i in 0..<utf8.count {
                let b = utf8[i]
                guard b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<i]))
                start = i + 1
                bytes.append(UInt8(ascii: "\\"))
                switch b {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): bytes.append(b)
                case 0x0A: bytes.append(UInt8(ascii: "n"))
                case 0x0D: bytes.append(UInt8(ascii: "r"))
                case 0x09: bytes.append(UInt8(ascii: "t"))
                case 0x08: bytes.append(UInt8(ascii: "b"))
                case 0x0C: bytes.append(UInt8(ascii: "f"))
                default:
                    let hex = JSONWriter.hex
                    bytes.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 0xF)]])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<utf8.count]))
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

private protocol OptionalProtocol {
    var wrapped: Any? { get }
}

extension Optional: OptionalProtocol {
    var wrapped: Any? { self.map { $0 as Any } }
}

#if canImport(UIKit) && !os(watchOS)
/// Automatic screen views: `viewDidAppear` of every view controller reports its class name
/// (one exchange of implementations, made once; UIKit's own containers are skipped).
final class ScreenViews: @unchecked Sendable {
    static let shared = ScreenViews()
    weak var sdk: TrailmarkSdk?
    private static let exchanged: Void = {
        guard let original = class_getInstanceMethod(UIViewController.self, #selector(UIViewController.viewDidAppear(_:))),
              let replacement = class_getInstanceMethod(
                  UIViewController.self, #selector(UIViewController.trailmarkViewDidAppear(_:)))
        else { return }
        method_exchangeImplementations(original, replacement)
    }()

    static func install() { _ = exchanged }

    func appeared(_ name: String) {
        // UIKit's and SwiftUI's own controllers (UINavigationController, _UIHostingView...).
        guard !name.hasPrefix("UI"), !name.hasPrefix("_"), !name.hasPrefix("UIHosting"), !name.contains("HostingController")
        else { return }
        sdk?.screen(name: name, propertiesJson: "{}")
    }
}

extension UIViewController {
    @objc func trailmarkViewDidAppear(_ animated: Bool) {
        trailmarkViewDidAppear(animated) // the original, after the exchange
        ScreenViews.shared.appeared(String(describing: type(of: self)))
    }
}
#endif
