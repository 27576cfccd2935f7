//! A small JSON reader and writer for the SDK's own path (issue 18: the core diet).
//!
//! serde_json's derived code and its `Value` DOM were a quarter of the web SDK's wasm, and its
//! float printing another large part. This module does what the engine needs and no more:
//!
//! * [`Value`] / [`Object`]: a DOM whose objects keep their keys sorted and unique (the last of
//!   a repeated key wins), as serde_json's `Map` does, so events serialise the same way.
//! * Numbers are kept as their validated source text ([`Number`]): they are never converted to
//!   binary floating point, so nothing prints floats and `9.99` stays `9.99`. A number at or
//!   above 1.797693134862315e308 in magnitude (`1e999`) is refused: serde_json refuses what
//!   overflows a double, and a little below that too (see `LIMIT_DIGITS`).
//! * [`parse`] is strict RFC 8259 (no `NaN`, no trailing commas, no comments, no lone
//!   surrogates) with a nesting limit, so hostile input cannot exhaust the stack.
//! * [`Writer`] writes compact JSON with serde_json's escaping.
//!
//! The server keeps serde_json; tests in `protocol` check that the two agree.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::borrow::Cow;

/// A JSON number, kept as its text (valid JSON number syntax, finite as an IEEE double).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number(Box<str>);

impl Number {
    /// The number as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A number from trusted text; `None` when it is not a finite JSON number.
    pub fn from_text(text: &str) -> Option<Number> {
        let mut reader = Reader { bytes: text.as_bytes(), pos: 0, max_depth: 0 };
        let end = reader.number().ok()?;
        (end == text.len()).then(|| Number(text.into()))
    }

    pub fn from_u64(n: u64) -> Number {
        let mut s = String::new();
        push_u64(&mut s, n);
        Number(s.into())
    }

    pub fn from_i64(n: i64) -> Number {
        let mut s = String::new();
        push_i64(&mut s, n);
        Number(s.into())
    }

    /// The value when it is an integer that fits (no fraction, no exponent).
    pub fn as_i64(&self) -> Option<i64> {
        parse_i64(&self.0)
    }

    pub fn as_u64(&self) -> Option<u64> {
        let t = &self.0;
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.bytes().try_fold(0u64, |n, b| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
    }
}

/// A JSON value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// The compact JSON text.
    pub fn to_json(&self) -> String {
        let mut w = Writer::new();
        w.value(self);
        w.into_string()
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Number(Number::from_i64(n))
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Number(Number::from_u64(n))
    }
}
/// A float as a JSON number (Rust's shortest round-trip text, e.g. `1e16` where serde_json
/// writes `1e+16`: the same number); NaN and infinities become `null`, as serde_json's `json!`
/// does. For Rust hosts: the SDK's own path never prints floats.
impl From<f64> for Value {
    fn from(n: f64) -> Self {
        if n.is_finite() { Value::Number(Number(format!("{n:?}").into())) } else { Value::Null }
    }
}
impl From<i32> for Value {
    fn from(n: i32) -> Self {
        Value::from(i64::from(n))
    }
}
impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::Array(items)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// serde_json values for Rust hosts that build properties with `json!` (feature `serde`).
#[cfg(feature = "serde")]
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => Value::Number(Number(n.to_string().into())),
            serde_json::Value::String(s) => Value::String(s),
            serde_json::Value::Array(items) => Value::Array(items.into_iter().map(Value::from).collect()),
            serde_json::Value::Object(map) => Value::Object(Object::from(map)),
        }
    }
}

#[cfg(feature = "serde")]
impl From<serde_json::Map<String, serde_json::Value>> for Object {
    fn from(map: serde_json::Map<String, serde_json::Value>) -> Self {
        map.into_iter().map(|(k, v)| (k, Value::from(v))).collect()
    }
}

impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(o)
    }
}

/// A JSON object: keys sorted (byte order) and unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Object(Vec<(String, Value)>);

impl Object {
    pub fn new() -> Self {
        Object(Vec::new())
    }
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
    /// Sets `key`, returning the value it replaces.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.find(&key) {
            Ok(i) => Some(core::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.0.iter().map(|(_, v)| v)
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    /// Entries of `other` replace entries of `self` with the same key.
    pub fn extend(&mut self, other: Object) {
        for (k, v) in other.0 {
            self.insert(k, v);
        }
    }
    /// The compact JSON text.
    pub fn to_json(&self) -> String {
        let mut w = Writer::new();
        w.object(self);
        w.into_string()
    }
    /// A string member.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

impl Object {
    /// An object from members in any order; of repeated keys the last wins. Sorted input (the
    /// common case) is taken as is; otherwise one O(n log n) sort, so a hostile object with
    /// many keys in reverse order costs no quadratic work.
    fn from_members(members: Vec<(String, Value)>) -> Object {
        if members.windows(2).all(|w| w[0].0 < w[1].0) {
            return Object(members);
        }
        let mut order: Vec<usize> = (0..members.len()).collect();
        // Key, then position: equal keys stay in input order, so the last of a run wins.
        heap_sort(&mut order, |a, b| (members[*a].0.as_str(), *a) < (members[*b].0.as_str(), *b));
        let mut slots: Vec<Option<(String, Value)>> = members.into_iter().map(Some).collect();
        let mut out: Vec<(String, Value)> = Vec::with_capacity(slots.len());
        for i in order {
            if let Some(member) = slots[i].take() {
                match out.last_mut() {
                    Some(last) if last.0 == member.0 => *last = member,
                    _ => out.push(member),
                }
            }
        }
        Object(out)
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Object::from_members(iter.into_iter().collect())
    }
}

/// Why a text is not acceptable JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Syntax error at this byte offset, with what was wrong.
    Syntax { at: usize, what: &'static str },
    /// Arrays and objects nest deeper than allowed.
    TooDeep,
}

impl ParseError {
    /// A human-readable description (`"expected ':' at byte 12"`).
    pub fn describe(&self) -> String {
        match *self {
            ParseError::Syntax { at, what } => {
                let mut s = String::from(what);
                s.push_str(" at byte ");
                push_u64(&mut s, at as u64);
                s
            }
            ParseError::TooDeep => "nesting too deep".into(),
        }
    }
}

/// Parses one JSON value (surrounded by optional white space). Arrays and objects may nest
/// `max_depth` levels (the outermost array or object is level 1).
pub fn parse(text: &str, max_depth: usize) -> Result<Value, ParseError> {
    let mut r = Reader { bytes: text.as_bytes(), pos: 0, max_depth };
    r.skip_ws();
    let v = r.value(0)?;
    r.skip_ws();
    if r.pos != r.bytes.len() {
        return Err(r.err("trailing characters"));
    }
    Ok(v)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl Reader<'_> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError::Syntax { at: self.pos, what }
    }
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }
    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), ParseError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err(what))
        }
    }
    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, ParseError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.err("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        match self.peek() {
            Some(b'{') => {
                let depth = self.enter(depth)?;
                let mut members = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Value::Object(Object::new()));
                }
                loop {
                    self.skip_ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    self.expect(b':', "expected ':'")?;
                    self.skip_ws();
                    let value = self.value(depth)?;
                    members.push((key, value));
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Value::Object(Object::from_members(members)));
                        }
                        _ => return Err(self.err("expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                let depth = self.enter(depth)?;
                let mut items = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth)?);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                let end = self.number()?;
                // The bytes are ASCII digits, signs, dots and exponents: valid UTF-8.
                let text = core::str::from_utf8(&self.bytes[start..end]).unwrap_or("0");
                Ok(Value::Number(Number(text.into())))
            }
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn enter(&mut self, depth: usize) -> Result<usize, ParseError> {
        self.pos += 1;
        if depth >= self.max_depth {
            return Err(ParseError::TooDeep);
        }
        Ok(depth + 1)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Reads a number starting at `pos`; returns its end. Refuses values an IEEE double cannot
    /// hold (their magnitude rounds to infinity).
    fn number(&mut self) -> Result<usize, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        let int_end = self.pos;
        let mut frac = (self.pos, self.pos);
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let s = self.pos;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
            frac = (s, self.pos);
        }
        let mut exp: i64 = 0;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            let negative = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let s = self.pos;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
            // Saturates far beyond any double's range; only the sign of the excess matters.
            let magnitude = self.bytes[s..self.pos]
                .iter()
                .fold(0i64, |n, b| n.saturating_mul(10).saturating_add(i64::from(b - b'0')).min(1 << 40));
            exp = if negative { -magnitude } else { magnitude };
        }
        let int = &self.bytes[int_start..int_end];
        let frac = &self.bytes[frac.0..frac.1];
        if !finite(int, frac, exp) {
            self.pos = start;
            return Err(self.err("number out of range"));
        }
        Ok(self.pos)
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut n = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            n = n * 16 + u32::from(d);
            self.pos += 1;
        }
        Ok(n)
    }

    /// Reads a string starting at its opening quote.
    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let run = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            out.extend_from_slice(&self.bytes[run..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    // The input is a &str and escapes produce whole characters: valid UTF-8.
                    return String::from_utf8(out).map_err(|_| self.err("invalid UTF-8"));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.pos += 1;
                            let unit = self.hex4()?;
                            let code = match unit {
                                0xD800..=0xDBFF => {
                                    if !self.bytes[self.pos..].starts_with(b"\\u") {
                                        return Err(self.err("lone leading surrogate in \\u escape"));
                                    }
                                    self.pos += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return Err(self.err("invalid surrogate pair in \\u escape"));
                                    }
                                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                                }
                                0xDC00..=0xDFFF => return Err(self.err("lone trailing surrogate in \\u escape")),
                                u => u,
                            };
                            let c = char::from_u32(code).ok_or_else(|| self.err("invalid \\u escape"))?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                            continue;
                        }
                        _ => return Err(self.err("invalid escape")),
                    };
                    self.pos += 1;
                    out.push(c as u8);
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }
}

/// Significant digits of the smallest magnitude refused (× 10^309 in `0.ddd` form, i.e.
/// 1.797693134862315e308). An IEEE double reaches about 1.7976931348623157e308, but serde_json
/// (the server's parser, not correctly rounded near the top of the range) refuses some values
/// just below that; the SDK must never accept a number the server refuses, or the event would
/// block its queue. So the top sliver of the range is refused here.
const LIMIT_DIGITS: &[u8] = b"1797693134862315";

/// True when the decimal number `int.frac × 10^exp` (digits, no sign) is below
/// 1.797693134862315e308 in magnitude (underflow to zero is fine, as in every JSON parser).
fn finite(int: &[u8], frac: &[u8], exp: i64) -> bool {
    // Significant digits: leading zeros dropped; `point` = where the decimal point sits
    // relative to the first significant digit (value = 0.d1d2... × 10^point).
    let all = int.iter().chain(frac.iter());
    let leading = all.clone().take_while(|b| **b == b'0').count();
    let total = int.len() + frac.len();
    if leading == total {
        return true; // zero
    }
    let point = int.len() as i64 - leading as i64 + exp;
    const LEN: i64 = 309;
    if point < LEN {
        return true;
    }
    if point > LEN {
        return false;
    }
    // Same magnitude as the limit: compare digit by digit.
    let mut digits = all.skip(leading);
    for t in LIMIT_DIGITS {
        match digits.next() {
            Some(d) if d < t => return true,
            Some(d) if d > t => return false,
            Some(_) => {}
            None => return true, // a prefix of the limit is below it
        }
    }
    false // the limit itself or above
}

/// In-place heap sort (small code, no allocation, O(n log n) worst case).
pub(crate) fn heap_sort<T>(v: &mut [T], less: impl Fn(&T, &T) -> bool) {
    let sift = |v: &mut [T], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            break;
        }
        if child + 1 < end && less(&v[child], &v[child + 1]) {
            child += 1;
        }
        if !less(&v[root], &v[child]) {
            break;
        }
        v.swap(root, child);
        root = child;
    };
    let n = v.len();
    for start in (0..n / 2).rev() {
        sift(v, start, n);
    }
    for end in (1..n).rev() {
        v.swap(0, end);
        sift(v, 0, end);
    }
}

/// Writes compact JSON into a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

/// Writing recurses once per nesting level: the engine checks depth (at most 32 levels) before
/// it writes, and parsed values are depth-limited; a value built in Rust thousands of levels
/// deep would exhaust the stack.
impl Writer {
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    pub fn into_string(self) -> String {
        // Only whole UTF-8 strings and ASCII are ever written.
        String::from_utf8(self.buf).unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Raw bytes (already JSON).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    pub fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }
    /// A JSON string.
    pub fn string(&mut self, s: &str) {
        self.buf.push(b'"');
        let bytes = s.as_bytes();
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => b"",
                _ => continue,
            };
            self.buf.extend_from_slice(&bytes[run..i]);
            run = i + 1;
            if escape.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.buf.extend_from_slice(b"\\u00");
                self.buf.push(HEX[usize::from(b >> 4)]);
                self.buf.push(HEX[usize::from(b & 0xf)]);
            } else {
                self.buf.extend_from_slice(escape);
            }
        }
        self.buf.extend_from_slice(&bytes[run..]);
        self.buf.push(b'"');
    }
    pub fn u64(&mut self, n: u64) {
        let mut s = String::new();
        push_u64(&mut s, n);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn i64(&mut self, n: i64) {
        let mut s = String::new();
        push_i64(&mut s, n);
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn bool(&mut self, b: bool) {
        self.buf.extend_from_slice(if b { b"true" } else { b"false" });
    }
    pub fn null(&mut self) {
        self.buf.extend_from_slice(b"null");
    }
    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.null(),
            Value::Bool(b) => self.bool(*b),
            Value::Number(n) => self.raw(n.as_str().as_bytes()),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.buf.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.buf.push(b',');
                    }
                    self.value(item);
                }
                self.buf.push(b']');
            }
            Value::Object(o) => self.object(o),
        }
    }
    pub fn object(&mut self, o: &Object) {
        let mut obj = self.begin();
        for (k, v) in o.iter() {
            obj.key(k);
            obj.w.value(v);
        }
        obj.end();
    }
    /// Starts an object; write members with [`ObjectWriter`]'s methods.
    pub fn begin(&mut self) -> ObjectWriter<'_> {
        self.buf.push(b'{');
        ObjectWriter { w: self, first: true }
    }
}

/// Writes the members of one object.
pub struct ObjectWriter<'a> {
    pub w: &'a mut Writer,
    first: bool,
}

impl ObjectWriter<'_> {
    /// Writes `"key":`; the caller writes the value next.
    pub fn key(&mut self, key: &str) {
        if !self.first {
            self.w.buf.push(b',');
        }
        self.first = false;
        self.w.string(key);
        self.w.buf.push(b':');
    }
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        self.w.string(value);
    }
    /// A string member, left out when `None`.
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }
    /// A string member written as `null` when `None`.
    pub fn str_or_null(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => self.w.string(v),
            None => self.w.null(),
        }
    }
    pub fn u64(&mut self, key: &str, n: u64) {
        self.key(key);
        self.w.u64(n);
    }
    pub fn i64(&mut self, key: &str, n: i64) {
        self.key(key);
        self.w.i64(n);
    }
    pub fn opt_i64(&mut self, key: &str, n: Option<i64>) {
        if let Some(n) = n {
            self.i64(key, n);
        }
    }
    pub fn bool(&mut self, key: &str, b: bool) {
        self.key(key);
        self.w.bool(b);
    }
    /// A boolean member written as `null` when `None`.
    pub fn opt_bool_or_null(&mut self, key: &str, b: Option<bool>) {
        self.key(key);
        match b {
            Some(b) => self.w.bool(b),
            None => self.w.null(),
        }
    }
    pub fn end(self) {
        self.w.buf.push(b'}');
    }
}

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits.
    out.push_str(core::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

pub fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_u64(out, n.unsigned_abs());
}

/// The decimal text of `n`.
pub fn u64_text(n: u64) -> String {
    let mut s = String::new();
    push_u64(&mut s, n);
    s
}

pub fn i64_text(n: i64) -> String {
    let mut s = String::new();
    push_i64(&mut s, n);
    s
}

/// Parses an optionally signed decimal integer (no white space, no `+`).
pub fn parse_i64(t: &str) -> Option<i64> {
    let (negative, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().try_fold(0i128, |n, b| {
        let n = n * 10 + i128::from(b - b'0');
        (n <= 1 << 63).then_some(n)
    })?;
    let n = if negative { -magnitude } else { magnitude };
    i64::try_from(n).ok()
}

/// Reads members out of a parsed object, for the hand-written decoders.
pub trait Fields {
    fn field_str(&self, key: &str) -> Option<String>;
    fn field_bool(&self, key: &str) -> Option<bool>;
    fn field_i64(&self, key: &str) -> Option<i64>;
    fn field_u64(&self, key: &str) -> Option<u64>;
}

impl Fields for Object {
    fn field_str(&self, key: &str) -> Option<String> {
        self.str(key).map(str::to_owned)
    }
    fn field_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }
    fn field_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }
    fn field_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }
}

/// Text as UTF-8, replacing invalid sequences (for bytes that are JSON we wrote).
pub fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Value, ParseError> {
        parse(text, 32)
    }

    #[test]
    fn round_trips_compactly_with_sorted_keys() {
        let v = p(r#" {"b": [1, -2.50, 3e10, true, null], "a": {"x": "y\n\u00e9\ud83d\ude00"}, "b": 0} "#).unwrap();
        assert_eq!(v.to_json(), "{\"a\":{\"x\":\"y\\n\u{e9}\u{1F600}\"},\"b\":0}");
        let v = p("[1.0,1E5,-0,0.5e-3]").unwrap();
        assert_eq!(v.to_json(), "[1.0,1E5,-0,0.5e-3]");
    }

    #[test]
    fn refuses_what_json_refuses() {
        for bad in [
            "",
            "NaN",
            "Infinity",
            "-Infinity",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "--1",
            "\"\\x\"",
            "\"\u{1}\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "[1 2]",
            "{\"a\" 1}",
            "{1:2}",
            "nul",
            "tru",
            "[",
            "{",
            "\"abc",
            "1 2",
            "// c\n1",
            "'a'",
            "\u{feff}1",
        ] {
            assert!(matches!(p(bad), Err(ParseError::Syntax { .. })), "{bad:?} -> {:?}", p(bad));
        }
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert!(p(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(p(&deep), Err(ParseError::TooDeep));
        let hostile = "[".repeat(1_000_000);
        assert_eq!(p(&hostile), Err(ParseError::TooDeep));
    }

    #[test]
    fn number_range_stays_inside_what_a_double_holds() {
        for ok in
            ["1e308", "1.797693134862314e308", "-1.79769313486231e308", "1e-999", "0e99999", "0.000e999", "5e-324"]
        {
            assert!(p(ok).is_ok(), "{ok}");
            assert!(ok.parse::<f64>().unwrap().is_finite());
        }
        for refused in ["1e309", "-1e309", "1e999", "1.797693134862315e308", "1.7976931348623157e308", "1.8e308"] {
            assert!(p(refused).is_err(), "{refused}");
        }
        let long = format!("1797693134862314{}", "9".repeat(293));
        assert!(p(&long).is_ok());
        let long = format!("1797693134862315{}", "0".repeat(293));
        assert!(p(&long).is_err());
    }

    #[test]
    fn writer_escapes_like_serde_json() {
        let mut w = Writer::new();
        w.string("a\"b\\c\u{0}\u{1f}\u{7f}\u{8}\u{c}/é");
        assert_eq!(w.into_string(), "\"a\\\"b\\\\c\\u0000\\u001f\u{7f}\\b\\f/é\"");
    }

    #[test]
    fn objects_sort_and_keep_the_last_of_repeated_keys() {
        let v = p(r#"{"b":1,"a":2,"c":3,"a":4,"b":5,"a":6}"#).unwrap();
        assert_eq!(v.to_json(), r#"{"a":6,"b":5,"c":3}"#);
        // Many keys in reverse order: no quadratic work (this would take minutes otherwise).
        let text =
            format!("{{{}}}", (0..200_000).rev().map(|i| format!("\"k{i:06}\":{i}")).collect::<Vec<_>>().join(","));
        let o = parse(&text, 4).unwrap();
        let o = o.as_object().unwrap();
        assert_eq!(o.len(), 200_000);
        assert_eq!(o.keys().next(), Some("k000000"));
        assert!(o.keys().zip(o.keys().skip(1)).all(|(a, b)| a < b));
    }

    #[test]
    fn integers() {
        assert_eq!(parse_i64("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64("9223372036854775808"), None);
        assert_eq!(parse_i64("1.0"), None);
        assert_eq!(i64_text(-42), "-42");
        assert_eq!(u64_text(u64::MAX), "18446744073709551615");
        assert_eq!(Number::from_text("12").and_then(|n| n.as_u64()), Some(12));
        assert_eq!(Number::from_text("1e999"), None);
    }
}
