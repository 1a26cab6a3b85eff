//! Strict decoding shared by JWS parsing and JWK loading (RFC 7515 §2,
//! RFC 8725 §3.2): base64url without padding and with canonical trailing
//! bits, and JSON objects whose member names are unique.

use std::fmt;

use base64::alphabet::URL_SAFE;
use base64::engine::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// base64url as JOSE uses it: the URL-safe alphabet, no `=` padding, and
/// the unused bits of the last character zero, so each byte string has
/// exactly one accepted encoding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// Decodes strict base64url; `None` on any other character (`=`, `+`, `/`,
/// whitespace), an impossible length or non-zero trailing bits.
pub(crate) fn b64url_decode(text: &[u8]) -> Option<Vec<u8>> {
    BASE64URL.decode(text).ok()
}

/// Bytes decoded into a caller's buffer when they fit, else onto the heap.
#[derive(Debug)]
pub(crate) enum Decoded<'b> {
    /// In the caller's buffer.
    Buffer(&'b [u8]),
    /// Too long for it.
    Heap(Vec<u8>),
}

impl std::ops::Deref for Decoded<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Buffer(bytes) => bytes,
            Self::Heap(bytes) => bytes,
        }
    }
}

/// [`b64url_decode`] into `buffer` when the decoded bytes surely fit in it
/// (no allocation on the request path for the usual token), with exactly
/// the same strictness either way.
pub(crate) fn b64url_decode_into<'b>(text: &[u8], buffer: &'b mut [u8]) -> Option<Decoded<'b>> {
    // The base64 crate's own bound for `decode_slice`.
    let bound = text.len().div_ceil(4).saturating_mul(3);
    if bound <= buffer.len() {
        let n = BASE64URL.decode_slice(text, buffer).ok()?;
        Some(Decoded::Buffer(&buffer[..n]))
    } else {
        b64url_decode(text).map(Decoded::Heap)
    }
}

/// Parses `bytes` as one JSON object, refusing duplicate member names at
/// any depth. Two parsers that keep a different one of two `alg` or `sub`
/// members would disagree on what was signed (RFC 7515 §5.2, RFC 8725 §2.7).
pub(crate) fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<StrictValue>(bytes) {
        Ok(StrictValue(Value::Object(map))) => Some(map),
        _ => None,
    }
}

/// A JSON value read by [`StrictVisitor`].
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

/// Builds a [`Value`] like serde_json's own visitor, except that a repeated
/// member name is an error instead of silently replacing the earlier one.
struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot express NaN or infinities, so `from_f64` succeeds.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let StrictValue(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_decode(b"Zm9v").as_deref(), Some(b"foo".as_slice()));
        assert_eq!(b64url_decode(b"Zm8").as_deref(), Some(b"fo".as_slice()));
        assert!(b64url_decode(b"Zm8=").is_none(), "padding");
        assert!(b64url_decode(b"Zm9").is_none(), "non-zero trailing bits");
        assert!(b64url_decode(b"a+b/").is_none(), "standard alphabet");
        // Into a buffer: the same answers, whether the bytes fit or not.
        for text in [
            &b"Zm9v"[..],
            b"Zm8",
            b"Zm8=",
            b"Zm9",
            b"a+b/",
            b"",
            b"Zm9vYmFy",
            b"Zm9vYmE",
        ] {
            let expected = b64url_decode(text);
            for size in [0, 2, 3, 6, 64] {
                let mut buffer = vec![0u8; size];
                let decoded = b64url_decode_into(text, &mut buffer);
                assert_eq!(
                    decoded.as_deref(),
                    expected.as_deref(),
                    "{text:?} into {size} bytes"
                );
            }
        }
        assert!(b64url_decode(b"Zm 9v").is_none(), "whitespace");
        assert!(b64url_decode(b"Z").is_none(), "impossible length");
    }

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"b":{"c":2}}"#).is_some());
        assert!(parse_object(br#"{"a":1,"a":1}"#).is_none());
        assert!(parse_object(br#"{"a":[{"c":1,"c":2}]}"#).is_none());
        assert!(parse_object(br#"[1]"#).is_none());
        assert!(parse_object(br#"{"a":1} x"#).is_none());
    }
}
