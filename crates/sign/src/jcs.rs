//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! [`canonicalize`] serialises a `serde_json::Value`; [`canonicalize_json`]
//! first parses JSON text strictly as I-JSON (RFC 7493) and then serialises it.
//!
//! The output rules (RFC 8785 §3.2):
//! - no whitespace;
//! - object members sorted by their names' UTF-16 code units, compared as
//!   unsigned integers (not by UTF-8 bytes, not by locale);
//! - strings escaped with the minimal set of §3.2.2.2: `\"`, `\\`, `\b`, `\f`,
//!   `\n`, `\r`, `\t`, other controls as `\u00xx` in lowercase hex, everything
//!   else as literal UTF-8;
//! - numbers as IEEE-754 doubles printed by ECMAScript's
//!   `Number.prototype.toString` (§3.2.2.3): the shortest digits that round-trip,
//!   plain notation for 1e-6 ≤ |v| < 1e21, exponent notation outside, and `-0`
//!   printed as `0`. Integers are doubles too: 2^53 + 1 canonicalises as
//!   `9007199254740992`.
//!
//! Numbers are formatted by the `ryu-js` crate (Ryū with ECMAScript's layout
//! rules, the formatter of the Boa JavaScript engine). Rust's own shortest
//! formatting was not used: on an exact tie between two equally short digit
//! strings it rounds up, where ECMAScript takes the even digit (RFC 8785
//! Appendix B, `1424953923781206.2`).
//!
//! The parser refuses what I-JSON forbids instead of guessing: duplicate member
//! names (after unescaping), lone surrogate escapes, numbers that overflow a
//! double, the `NaN` / `Infinity` literals, invalid UTF-8, unescaped control
//! characters and anything after the top-level value.

use serde_json::{Map, Number, Value};

use crate::error::SignError;

/// Maximum nesting of arrays and objects accepted by [`canonicalize_json`].
///
/// Bounds the recursion of both the parser and the serialiser, so a hostile
/// document cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// Serialises `value` in RFC 8785 canonical form.
///
/// Numbers are taken as their IEEE-754 double value (an integer beyond 2^53 is
/// rounded to the nearest double first, as JCS requires). A `Value` parsed by
/// `serde_json` carries correctly rounded doubles because this crate enables
/// serde_json's `float_roundtrip` feature. Fails with
/// [`SignError::NonFiniteNumber`] for a number without a finite double value and
/// with [`SignError::NestingTooDeep`] beyond [`MAX_DEPTH`] levels.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, SignError> {
    let mut out = Vec::new();
    write_value(value, &mut out, 0)?;
    Ok(out)
}

/// Parses `text` strictly as I-JSON and returns its RFC 8785 canonical form.
///
/// Errors name the first problem found, with its byte offset where one exists.
pub fn canonicalize_json(text: &[u8]) -> Result<Vec<u8>, SignError> {
    let value = parse_strict(text)?;
    canonicalize(&value)
}

/// Parses `text` strictly as I-JSON (the rules of [`canonicalize_json`]) into a `serde_json::Value`.
///
/// Every number is stored as the double it denotes.
pub fn parse_strict(text: &[u8]) -> Result<Value, SignError> {
    let text = std::str::from_utf8(text).map_err(|e| SignError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut parser = Parser {
        src: text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    parser.skip_ws();
    let value = parser.value(0)?;
    parser.skip_ws();
    if parser.pos != parser.bytes.len() {
        return Err(SignError::TrailingData { offset: parser.pos });
    }
    Ok(value)
}

/// Formats a finite double exactly as ECMAScript `Number.prototype.toString` does.
///
/// Fails with [`SignError::NonFiniteNumber`] for NaN and the infinities, which
/// JSON cannot represent.
pub fn format_number(value: f64) -> Result<String, SignError> {
    if !value.is_finite() {
        return Err(SignError::NonFiniteNumber);
    }
    if value == 0.0 {
        // Covers -0 as well: ECMAScript prints both zeros as "0".
        return Ok("0".to_owned());
    }
    // ryu-js implements ECMAScript's Number::toString for finite doubles,
    // including round-half-even between two equally short digit strings
    // (1424953923781206.25 prints as ...206.2), which Rust's `{:e}` does not do.
    Ok(ryu_js::Buffer::new().format_finite(value).to_owned())
}

fn write_value(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), SignError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // `as_f64` rounds integers beyond 2^53 to the nearest double, which
            // is the value JCS canonicalises.
            let f = n.as_f64().ok_or(SignError::NonFiniteNumber)?;
            out.extend_from_slice(format_number(f)?.as_bytes());
        }
        Value::String(s) => push_string(out, s),
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                return Err(SignError::NestingTooDeep { limit: MAX_DEPTH });
            }
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            if depth >= MAX_DEPTH {
                return Err(SignError::NestingTooDeep { limit: MAX_DEPTH });
            }
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // RFC 8785 §3.2.3: compare names as arrays of UTF-16 code units.
            members.sort_by(|a, b| member_order(a.0, b.0));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_string(out, key);
                out.push(b':');
                write_value(item, out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Appends `s` as a JSON string with RFC 8785 §3.2.2.2's minimal escapes
/// (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other controls as lowercase
/// `\u00xx`, everything else literal UTF-8), which is also how serde_json
/// writes strings: the writer of canonical strings for callers that build
/// canonical JSON without a `Value`.
pub fn push_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Almost every string canonicalized (ids, names, hex-encoded columns)
    // has nothing to escape: one pass over all of it (no early exit, so it
    // compiles to wide compares), then one copy.
    let plain = !bytes.iter().fold(false, |escape, &b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    // Otherwise the runs between the bytes that need an escape are copied
    // whole (multi-byte UTF-8 sequences are all >= 0x80: literal).
    let mut run = 0;
    let mut control = *b"\\u0000";
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                control[4] = HEX[usize::from(b >> 4)];
                control[5] = HEX[usize::from(b & 0x0f)];
                &control
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        out.extend_from_slice(escaped);
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// RFC 8785 §3.2.3's order of member names: their UTF-16 code units
/// compared as unsigned integers. Two ASCII names compare as their bytes
/// (each byte is its code unit); only names with other characters need the
/// UTF-16 walk.
pub fn member_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// A recursive-descent parser over text already known to be valid UTF-8.
struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn unexpected(&self) -> SignError {
        match self.src.get(self.pos..).and_then(|rest| rest.chars().next()) {
            Some(found) => SignError::UnexpectedCharacter {
                offset: self.pos,
                found,
            },
            None => SignError::UnexpectedEnd,
        }
    }

    fn expect_byte(&mut self, expected: u8) -> Result<(), SignError> {
        if self.peek() == Some(expected) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, SignError> {
        let rest = &self.bytes[self.pos..];
        match self.peek() {
            None => Err(SignError::UnexpectedEnd),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(_) if rest.starts_with(b"NaN") || rest.starts_with(b"Infinity") => {
                Err(SignError::NonFiniteLiteral { offset: self.pos })
            }
            Some(_) if rest.starts_with(b"-Infinity") || rest.starts_with(b"+Infinity") => {
                Err(SignError::NonFiniteLiteral { offset: self.pos })
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.unexpected()),
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, SignError> {
        for &expected in word {
            self.expect_byte(expected)?;
        }
        Ok(value)
    }

    fn object(&mut self, depth: usize) -> Result<Value, SignError> {
        if depth >= MAX_DEPTH {
            return Err(SignError::NestingTooDeep { limit: MAX_DEPTH });
        }
        self.pos += 1; // '{'
        let mut map = Map::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected());
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect_byte(b':')?;
            self.skip_ws();
            let item = self.value(depth + 1)?;
            // serde_json's own map would keep the last duplicate silently; I-JSON forbids them.
            if map.contains_key(&key) {
                return Err(SignError::DuplicateKey { key });
            }
            map.insert(key, item);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SignError> {
        if depth >= MAX_DEPTH {
            return Err(SignError::NestingTooDeep { limit: MAX_DEPTH });
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn number(&mut self) -> Result<Value, SignError> {
        let start = self.pos;
        let malformed = SignError::MalformedNumber { offset: start };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(malformed),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(malformed);
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(malformed);
            }
            self.digits();
        }
        // A digit right after a leading zero ("01") is not JSON.
        if matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(malformed);
        }
        // Rust's float parser rounds correctly (round-half-even) from any number of digits.
        let f: f64 = self.src[start..self.pos]
            .parse()
            .map_err(|_| SignError::MalformedNumber { offset: start })?;
        if !f.is_finite() {
            return Err(SignError::NumberOutOfRange { offset: start });
        }
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or(SignError::NumberOutOfRange { offset: start })
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn string(&mut self) -> Result<String, SignError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The run stops only at ASCII bytes, so both ends are char boundaries.
            out.push_str(&self.src[run_start..self.pos]);
            match self.peek() {
                None => return Err(SignError::UnexpectedEnd),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => self.escape(&mut out)?,
                Some(_) => return Err(SignError::ControlCharacterInString { offset: self.pos }),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), SignError> {
        let start = self.pos;
        self.pos += 1; // backslash
        let Some(kind) = self.peek() else {
            return Err(SignError::UnexpectedEnd);
        };
        self.pos += 1;
        let c = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{08}',
            b'f' => '\u{0c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4(start)?;
                match unit {
                    0xd800..=0xdbff => {
                        // A high surrogate must be followed at once by an escaped low surrogate.
                        let low_start = self.pos;
                        if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(SignError::LoneSurrogate { offset: start });
                        }
                        self.pos += 2;
                        let low = self.hex4(low_start)?;
                        if !(0xdc00..=0xdfff).contains(&low) {
                            return Err(SignError::LoneSurrogate { offset: start });
                        }
                        let code = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
                        char::from_u32(code).ok_or(SignError::LoneSurrogate { offset: start })?
                    }
                    0xdc00..=0xdfff => return Err(SignError::LoneSurrogate { offset: start }),
                    _ => char::from_u32(u32::from(unit)).ok_or(SignError::InvalidEscape { offset: start })?,
                }
            }
            _ => return Err(SignError::InvalidEscape { offset: start }),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self, escape_start: usize) -> Result<u16, SignError> {
        let Some(hex) = self.bytes.get(self.pos..self.pos + 4) else {
            return Err(SignError::InvalidEscape { offset: escape_start });
        };
        let mut unit = 0u16;
        for &h in hex {
            let digit = match h {
                b'0'..=b'9' => h - b'0',
                b'a'..=b'f' => h - b'a' + 10,
                b'A'..=b'F' => h - b'A' + 10,
                _ => return Err(SignError::InvalidEscape { offset: escape_start }),
            };
            unit = (unit << 4) | u16::from(digit);
        }
        self.pos += 4;
        Ok(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8785 §3.2.2.2 spelled out one byte at a time: the definition the
    /// run-copying writer must agree with.
    fn escaped_one_byte_at_a_time(s: &str) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in s.as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x00..=0x1f => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    #[test]
    fn strings_are_escaped_as_the_byte_by_byte_definition_wherever_the_escapes_fall() {
        let mut cases: Vec<String> = (0u8..=0x7f).map(|b| char::from(b).to_string()).collect();
        for c in [
            '\u{80}',
            '\u{7ff}',
            '\u{800}',
            '\u{e000}',
            '\u{ffff}',
            '\u{10000}',
            '\u{10ffff}',
        ] {
            cases.push(c.to_string());
        }
        cases.extend(
            [
                "",
                "plain ascii with no escape at all",
                "\"leading quote",
                "trailing backslash\\",
                "\u{1}\u{1f}\u{8}\u{c}\n\r\t\"\\",
                "mid\ndle\tand€uro\u{0}end",
                "€\u{1d11e}\"\u{7f}é\u{1b}",
                "0123456789abcdef0123456789abcdef",
            ]
            .map(str::to_owned),
        );
        // A long run between escapes, as a hex-encoded column is.
        cases.push(format!("{}\n{}\"", "ab".repeat(4096), "€".repeat(300)));
        for case in &cases {
            let mut out = b"prefix".to_vec();
            push_string(&mut out, case);
            assert_eq!(
                &out[b"prefix".len()..],
                escaped_one_byte_at_a_time(case).as_slice(),
                "{case:?}"
            );
        }
    }

    #[test]
    fn member_names_sort_by_utf16_code_units_with_or_without_the_ascii_shortcut() {
        let names = [
            "",
            "a",
            "ab",
            "b",
            "B",
            "_",
            "~",
            "\u{7f}",
            "\u{80}",
            "é",
            "€",
            "\u{e000}",
            "\u{ffff}",
            "\u{10000}",
            "\u{1d11e}",
            "a\u{10000}",
            "a\u{ffff}",
            "aa",
        ];
        for a in names {
            for b in names {
                assert_eq!(
                    member_order(a, b),
                    a.encode_utf16().cmp(b.encode_utf16()),
                    "{a:?} vs {b:?}"
                );
            }
        }
        // The case where UTF-16 and code-point order differ: a surrogate
        // pair (U+10000) sorts before U+E000 and U+FFFF.
        let v: Value = serde_json::from_str(r#"{"\uffff":1,"\ud800\udc00":2,"\ue000":3,"z":4}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonicalize(&v).unwrap()).unwrap(),
            "{\"z\":4,\"\u{10000}\":2,\"\u{e000}\":3,\"\u{ffff}\":1}"
        );
    }

    /// RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
    #[test]
    fn rfc8785_appendix_b_numbers() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for &(bits, expected) in cases {
            let got = format_number(f64::from_bits(bits)).unwrap();
            assert_eq!(got, expected, "bits {bits:016x}");
        }
    }

    #[test]
    fn non_finite_doubles_are_refused() {
        for bits in [0x7fffffffffffffff_u64, 0x7ff0000000000000, 0xfff0000000000000] {
            assert!(matches!(
                format_number(f64::from_bits(bits)),
                Err(SignError::NonFiniteNumber)
            ));
        }
    }

    #[test]
    fn integers_beyond_2_pow_53_are_doubles() {
        let v: Value =
            serde_json::from_str("[9007199254740993, 18446744073709551615, -9223372036854775808]").unwrap();
        assert_eq!(
            canonicalize(&v).unwrap(),
            b"[9007199254740992,18446744073709552000,-9223372036854776000]"
        );
        assert_eq!(
            canonicalize_json(b"[9007199254740993,1e400]")
                .unwrap_err()
                .to_string(),
            SignError::NumberOutOfRange { offset: 18 }.to_string()
        );
    }
}
