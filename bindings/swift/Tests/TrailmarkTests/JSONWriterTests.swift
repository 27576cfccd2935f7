// The direct JSON writer of the Swift API (`JSONText`, `JSONWriter`) against the path it
// replaced (sanitising into Foundation objects, then `JSONSerialization`): the same tricky
// values through both, parsed back with `JSONSerialization`, must agree.

import Foundation
import XCTest
@_spi(Benchmark) @testable import Trailmark

/// The SDK's properties encoding before the direct writer, kept here as the reference.
enum LegacyJSONText {
    static func encode(_ object: [String: Any]) -> String {
        let clean = sanitize(object)
        guard JSONSerialization.isValidJSONObject(clean),
              let data = try? JSONSerialization.data(withJSONObject: clean, options: [.fragmentsAllowed])
        else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func sanitize(_ value: Any) -> Any {
        if let optional = value as? LegacyOptional {
            guard let wrapped = optional.legacyWrapped else { return NSNull() }
            return sanitize(wrapped)
        }
        switch value {
        case is NSNull: return value
        case let s as String: return s
        case let n as NSNumber where type(of: value) is AnyObject.Type:
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

private protocol LegacyOptional {
    var legacyWrapped: Any? { get }
}

extension Optional: LegacyOptional {
    fileprivate var legacyWrapped: Any? { self.map { $0 as Any } }
}

private struct Custom: CustomStringConvertible {
    var description: String { "custom \"value\"" }
}

private enum Plan { case pro }

private let booleanClass = ObjectIdentifier(type(of: NSNumber(value: true)))

/// Deep equality of parsed JSON; numbers by value, and a boolean never equals a number.
func sameJSON(_ a: Any, _ b: Any) -> Bool {
    switch (a, b) {
    case (is NSNull, is NSNull): return true
    case let (x as String, y as String): return x == y
    case let (x as [String: Any], y as [String: Any]):
        return Set(x.keys) == Set(y.keys) && x.allSatisfy { k, v in sameJSON(v, y[k]!) }
    case let (x as [Any], y as [Any]):
        return x.count == y.count && zip(x, y).allSatisfy { sameJSON($0, $1) }
    case let (x as NSNumber, y as NSNumber):
        let bools = (ObjectIdentifier(type(of: x)) == booleanClass, ObjectIdentifier(type(of: y)) == booleanClass)
        return bools.0 == bools.1 && x.isEqual(to: y)
    default: return false
    }
}

final class JSONWriterTests: XCTestCase {
    /// Every kind of value the SDK has ever handled, and the strings JSON must escape.
    func tricky() throws -> [String: Any] {
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(#"{"t":true,"f":false,"i":1,"z":0,"d":2.5,"w":2.0,"big":18446744073709551615,"neg":-7,"s":"x","a":[1,true],"o":{"k":null}}"#.utf8))
            as? [String: Any])
        let nested: [String: Any] = ["n": 1.5, "list": [1, "a", Optional<Int>.none as Any, [true]] as [Any]]
        return [
            "plain": "A-1", "empty": "",
            "escapes": "quote \" backslash \\ slash / nl \n cr \r tab \t bs \u{8} ff \u{c} nul \u{0} unit \u{1f} del \u{7f}",
            "unicode": "é € 😀 \u{2028} \u{2029} 👩‍👩‍👧 \u{FEFF}",
            "true": true, "false": false,
            "int": 42, "int_min": Int.min, "int64": Int64.max, "int32": Int32.min, "uint": UInt.max,
            "uint64": UInt64.max, "uint32": UInt32.max, "int8": Int8(-5), "uint16": UInt16(7),
            "double": 9.99, "whole": 2.0, "neg_zero": -0.0, "huge": 1e300, "tiny": 5e-324, "third": 1.0 / 3,
            "float": Float(0.1), "float_big": Float(3.4e38),
            "nan": Double.nan, "inf": Double.infinity, "ninf": -Double.infinity, "fnan": Float.nan, "finf": Float.infinity,
            "ns_true": NSNumber(value: true), "ns_false": NSNumber(value: false), "ns_int8": NSNumber(value: Int8(1)),
            "ns_int": NSNumber(value: 5), "ns_double": NSNumber(value: 2.5), "ns_whole": NSNumber(value: 2.0),
            "ns_float": NSNumber(value: Float(0.1)), "ns_uint64": NSNumber(value: UInt64.max),
            "ns_nan": NSNumber(value: Double.nan), "ns_inf": NSNumber(value: -Float.infinity),
            "parsed": parsed, "parsed_true": parsed["t"]!, "parsed_zero": parsed["z"]!,
            "null": NSNull(), "none": Optional<Int>.none as Any, "some": Optional("x") as Any,
            "some_none": Optional<Optional<Int>>.some(nil) as Any, "some_bool": Optional(NSNumber(value: false)) as Any,
            "date": Date(timeIntervalSince1970: 1_700_000_000), "url": URL(string: "https://x.test/a?b=c d".addingPercentEncoding(withAllowedCharacters: .urlQueryAllowed)!)!,
            "nested": nested, "typed_dict": ["a": 1, "b": 2] as [String: Int], "typed_array": [1.5, 2.5] as [Double],
            "ns_array": NSArray(array: [1, "two", NSNull()]), "ns_dict": NSDictionary(dictionary: ["k": "v"]),
            "int_keys": [1: "one"] as [Int: String], "set": Set([7]), "substring": "hello".prefix(3),
            "character": Character("x"), "custom": Custom(), "enum": Plan.pro, "object": NSObject(),
            "deep": ["a": ["b": ["c": [[["d": 1]]]]]] as [String: Any],
        ]
    }

    func testAgreesWithTheFoundationPath() throws {
        let values = try tricky()
        let new = JSONText.encode(values)
        let old = LegacyJSONText.encode(values)
        let newParsed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(new.utf8)) as? [String: Any], new)
        let oldParsed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(old.utf8)) as? [String: Any], old)
        XCTAssertEqual(Set(newParsed.keys), Set(values.keys))
        for key in values.keys.sorted() {
            XCTAssertTrue(sameJSON(newParsed[key]!, oldParsed[key]!),
                          "\(key): writer \(newParsed[key]!), Foundation \(oldParsed[key]!)")
        }
        // Each value alone, too (the top level is always an object).
        for (key, value) in values {
            let one = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(JSONText.encode([key: value]).utf8)) as? [String: Any])
            XCTAssertTrue(sameJSON(one[key]!, oldParsed[key]!), key)
        }
    }

    func testWhatTheValuesBecome() throws {
        let back = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(JSONText.encode(try tricky()).utf8)) as? [String: Any])
        for key in ["nan", "inf", "ninf", "fnan", "finf", "ns_nan", "ns_inf", "null", "none", "some_none"] {
            XCTAssertTrue(back[key] is NSNull, key)
        }
        XCTAssertEqual(back["escapes"] as? String,
                       "quote \" backslash \\ slash / nl \n cr \r tab \t bs \u{8} ff \u{c} nul \u{0} unit \u{1f} del \u{7f}")
        XCTAssertEqual(back["unicode"] as? String, "é € 😀 \u{2028} \u{2029} 👩‍👩‍👧 \u{FEFF}")
        XCTAssertEqual(back["date"] as? String, "2023-11-14T22:13:20Z")
        XCTAssertEqual(back["some"] as? String, "x")
        XCTAssertEqual(back["custom"] as? String, "custom \"value\"")
        XCTAssertEqual((back["uint64"] as? NSNumber)?.uint64Value, UInt64.max)
        XCTAssertEqual((back["int_min"] as? NSNumber)?.int64Value, Int64.min)
        let isBool = { (v: Any?) in v.map { ObjectIdentifier(type(of: $0 as AnyObject)) == booleanClass } ?? false }
        for key in ["true", "false", "ns_true", "ns_false", "parsed_true", "some_bool"] {
            XCTAssertTrue(isBool(back[key]), "\(key) is a JSON boolean")
        }
        for key in ["ns_int8", "parsed_zero", "int"] {
            XCTAssertFalse(isBool(back[key]), "\(key) is a JSON number")
        }
    }

    func testExactText() {
        XCTAssertEqual(JSONText.encode([:]), "{}")
        XCTAssertEqual(JSONText.encode(["s": "a\u{1}\"\\\n\u{7f}é"]), "{\"s\":\"a\\u0001\\\"\\\\\\n\u{7f}é\"}")
        XCTAssertEqual(JSONText.encode(["b": NSNumber(value: true)]), #"{"b":true}"#)
        XCTAssertEqual(JSONText.encode(["n": [1, 2.5, false] as [Any]]), #"{"n":[1,2.5,false]}"#)
        XCTAssertEqual(JSONText.encode(["u": UInt64.max]), #"{"u":18446744073709551615}"#)
    }
}
