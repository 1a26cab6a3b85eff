//! JSON ↔ protobuf by the descriptors (proto3 JSON mapping), with errors
//! that name the offending field, and the bounds checked before parsing.
//!
//! JSON at the edge is strict (RFC 7493 I-JSON §2.3): an object that names a
//! member twice is refused, and so is an object that names one protobuf field
//! by both its spellings (`eventId` and `event_id`). Last-one-wins would let a
//! filter in front of the edge read a different request than the backend.

use std::cell::RefCell;
use std::fmt;

use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a JSON body does not make the request message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscodeError {
    /// Nesting deeper than the limit.
    #[error("the JSON body nests deeper than {0} levels")]
    TooDeep(usize),
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    /// An object names one member twice (RFC 7493 §2.3), after unescaping:
    /// `"a"` and `"\u0061"` are the same name.
    #[error(
        "duplicate member name {} in the object at JSON pointer {}",
        quoted(.key),
        quoted(.pointer)
    )]
    DuplicateKey {
        /// The member name, unescaped.
        key: String,
        /// RFC 6901 JSON Pointer of the object holding it (`""`: the top level).
        pointer: String,
    },
    /// An object names one protobuf field twice: by its JSON name and by its
    /// proto name.
    #[error("{at}: {} and {} are two spellings of one field; send one", quoted(.json_name), quoted(.proto_name))]
    DuplicateField {
        /// Dotted path of the object (JSON names), `(body)` at the top level.
        at: String,
        /// The field's JSON name (`eventId`).
        json_name: String,
        /// The field's name in the proto (`event_id`).
        proto_name: String,
    },
    /// A field has the wrong JSON type, is unknown, or is out of range.
    #[error("{field}: {reason}")]
    Field {
        /// Dotted path of the field (JSON names).
        field: String,
        /// Why.
        reason: String,
    },
    /// A message did not encode or decode (a defect, or a backend answering
    /// bytes that are not its declared type).
    #[error("message does not decode as {0}")]
    Decode(String),
}

impl TranscodeError {
    /// The machine-readable reason of the refusal, as the edge answers it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooDeep(_) => "json_too_deep",
            Self::NotJson(_) => "invalid_json",
            Self::DuplicateKey { .. } => "duplicate_json_key",
            Self::DuplicateField { .. } => "duplicate_field",
            Self::Field { .. } => "invalid_argument",
            Self::Decode(_) => "undecodable_message",
        }
    }
}

/// Whether `body` nests JSON arrays/objects deeper than `max` — a linear
/// scan that runs before any parser, so a hostile body cannot make the
/// parser recurse.
pub fn check_depth(body: &[u8], max: usize) -> Result<(), TranscodeError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(TranscodeError::TooDeep(max));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses a JSON body (empty → `{}`), rejecting duplicate member names in
/// any object at any depth.
///
/// The value is what `serde_json::from_slice` makes of a body without
/// duplicates (numbers, escapes, its recursion limit), with one exception:
/// serde_json's private `$serde_json::private::RawValue` member name, which
/// `from_slice` would parse a second time from its string value, is an
/// ordinary name here. Duplicates are noticed as each member is inserted,
/// so a valid body costs no second pass.
pub fn parse_json(body: &[u8]) -> Result<Value, TranscodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed = StrictValue {
        duplicate: &duplicate,
    }
    .deserialize(&mut deserializer)
    // Trailing characters other than whitespace are an error, as in
    // `from_slice`.
    .and_then(|value| deserializer.end().map(|()| value));
    match (parsed, duplicate.into_inner()) {
        (Ok(value), _) => Ok(value),
        (Err(_), Some(d)) => Err(d.into_error()),
        (Err(e), None) => Err(TranscodeError::NotJson(e.to_string())),
    }
}

/// A duplicate member found while parsing. The path to its object is
/// collected while the error unwinds (innermost first), so parsing a valid
/// body never tracks where it is.
struct Duplicate {
    key: String,
    reversed_path: Vec<PathSegment>,
}

enum PathSegment {
    Member(String),
    Index(usize),
}

impl Duplicate {
    fn into_error(self) -> TranscodeError {
        let mut pointer = String::new();
        for segment in self.reversed_path.iter().rev() {
            pointer.push('/');
            match segment {
                PathSegment::Index(i) => pointer.push_str(&i.to_string()),
                // RFC 6901 §3: `~` is written `~0` and `/` is written `~1`.
                PathSegment::Member(name) => pointer.push_str(&name.replace('~', "~0").replace('/', "~1")),
            }
        }
        TranscodeError::DuplicateKey {
            key: self.key,
            pointer,
        }
    }
}

/// Builds a [`Value`] exactly as serde_json's own visitor does, except that
/// an object naming a member twice is an error whose details go to
/// `duplicate` (serde's error type carries only a message).
#[derive(Clone, Copy)]
struct StrictValue<'a> {
    duplicate: &'a RefCell<Option<Duplicate>>,
}

impl StrictValue<'_> {
    /// Adds `segment` to the path of a duplicate found below it; other
    /// errors pass through untouched.
    fn below(self, segment: impl FnOnce() -> PathSegment) {
        if let Some(d) = self.duplicate.borrow_mut().as_mut() {
            d.reversed_path.push(segment());
        }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
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

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        serde::Deserialize::deserialize(de::value::I128Deserializer::<E>::new(v)).map(Value::Number)
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        serde::Deserialize::deserialize(de::value::U128Deserializer::<E>::new(v)).map(Value::Number)
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json's rule: a non-finite float is null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(e) => {
                    let index = items.len();
                    self.below(|| PathSegment::Index(index));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        // Keys arrive unescaped, so `"a"` and `"\u0061"` collide here.
        while let Some(key) = map.next_key::<String>()? {
            match members.entry(key) {
                Entry::Vacant(slot) => match map.next_value_seed(self) {
                    Ok(value) => {
                        slot.insert(value);
                    }
                    Err(e) => {
                        self.below(|| PathSegment::Member(slot.key().clone()));
                        return Err(e);
                    }
                },
                // Refused before its value is even parsed.
                Entry::Occupied(taken) => {
                    *self.duplicate.borrow_mut() = Some(Duplicate {
                        key: taken.key().clone(),
                        reversed_path: Vec::new(),
                    });
                    return Err(de::Error::custom("duplicate member name"));
                }
            }
        }
        Ok(Value::Object(members))
    }
}

/// Builds the request message `desc` from a JSON value, rejecting unknown
/// fields and wrong types with the field's path.
pub fn json_to_message(desc: &MessageDescriptor, value: &Value) -> Result<DynamicMessage, TranscodeError> {
    check_types(desc, value, "")?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(desc.clone(), value.clone(), &options).map_err(|e| {
        TranscodeError::Field {
            field: "(body)".to_owned(),
            reason: e.to_string(),
        }
    })
}

/// The proto3 JSON form of a message.
pub fn message_to_value(message: &DynamicMessage) -> Result<Value, TranscodeError> {
    let options = SerializeOptions::new();
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| TranscodeError::Decode(e.to_string()))
}

/// Decodes `bytes` as `desc` and writes its proto3 JSON form.
pub fn bytes_to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Vec<u8>, TranscodeError> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|_| TranscodeError::Decode(desc.full_name().to_owned()))?;
    let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .map_err(|e| TranscodeError::Decode(e.to_string()))?;
    Ok(out)
}

/// The proto3 JSON form of a generated message whose full protobuf name
/// is `full_name` (for moderation of gRPC requests).
pub fn message_to_json<M: prost::Message>(full_name: &str, message: &M) -> Result<Value, TranscodeError> {
    let pool = soma_proto::descriptor_pool().map_err(|e| TranscodeError::Decode(e.to_string()))?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| TranscodeError::Decode(full_name.to_owned()))?;
    let dynamic = DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .map_err(|_| TranscodeError::Decode(full_name.to_owned()))?;
    message_to_value(&dynamic)
}

/// Checks every field's JSON type against the proto3 JSON mapping, so a
/// mistake is reported with the field's name (the deserializer's own errors
/// carry no path).
fn check_types(desc: &MessageDescriptor, value: &Value, path: &str) -> Result<(), TranscodeError> {
    if let Some(expected) = well_known_json(desc.full_name()) {
        return match expected(value) {
            Ok(()) => Ok(()),
            Err(want) => Err(field_error(
                path,
                format!("expected {want}, got {}", type_name(value)),
            )),
        };
    }
    let Value::Object(map) = value else {
        return Err(field_error(
            path,
            format!("expected a JSON object, got {}", type_name(value)),
        ));
    };
    for (key, v) in map {
        let field = desc
            .fields()
            .find(|f| f.json_name() == key || f.name() == key)
            .ok_or_else(|| field_error(&join(path, key), format!("unknown field of {}", desc.full_name())))?;
        // Both spellings in one object: the deserializer would keep the
        // last, a filter in front may have read the first. Looked for only
        // from the proto-name spelling, which clients rarely send, so the
        // usual body (JSON names only) pays one string comparison per key;
        // checked before that member's value, even `null`, is looked at. A
        // mistyped JSON-name spelling, which sorts first, is refused for its
        // type instead: the body is refused either way.
        if key == field.name() && field.json_name() != key && map.contains_key(field.json_name()) {
            return Err(TranscodeError::DuplicateField {
                at: if path.is_empty() {
                    "(body)".to_owned()
                } else {
                    path.to_owned()
                },
                json_name: field.json_name().to_owned(),
                proto_name: field.name().to_owned(),
            });
        }
        let here = join(path, key);
        if v.is_null() {
            continue;
        }
        if field.is_map() {
            let Value::Object(entries) = v else {
                return Err(field_error(
                    &here,
                    format!("expected an object (map), got {}", type_name(v)),
                ));
            };
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            if let Kind::Message(m) = entry.map_entry_value_field().kind() {
                for (k, ev) in entries {
                    check_types(&m, ev, &format!("{here}.{k}"))?;
                }
            }
            continue;
        }
        if field.is_list() {
            let Value::Array(items) = v else {
                return Err(field_error(
                    &here,
                    format!("expected an array, got {}", type_name(v)),
                ));
            };
            for (i, item) in items.iter().enumerate() {
                check_scalar(&field.kind(), item, &format!("{here}[{i}]"))?;
            }
            continue;
        }
        check_scalar(&field.kind(), v, &here)?;
    }
    Ok(())
}

fn check_scalar(kind: &Kind, v: &Value, path: &str) -> Result<(), TranscodeError> {
    let ok = match kind {
        Kind::Bool => v.is_boolean(),
        Kind::String | Kind::Bytes => v.is_string(),
        Kind::Double | Kind::Float => v.is_number() || v.is_string(),
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Int64
        | Kind::Sint64
        | Kind::Sfixed64
        | Kind::Uint64
        | Kind::Fixed64 => is_integral(v) || v.is_string(),
        Kind::Enum(_) => v.is_string() || is_integral(v),
        Kind::Message(m) => return check_types(m, v, path),
    };
    if ok {
        Ok(())
    } else {
        Err(field_error(
            path,
            format!("expected {}, got {}", expected(kind), type_name(v)),
        ))
    }
}

/// Whether `v` is a JSON number without a fractional part.
fn is_integral(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

/// A check of a JSON value's shape; `Err` names what was expected.
type ShapeCheck = fn(&Value) -> Result<(), &'static str>;

/// The JSON shape of a well-known type (proto3 JSON mapping), or `None`
/// for an ordinary message.
fn well_known_json(name: &str) -> Option<ShapeCheck> {
    let check: ShapeCheck = match name {
        "google.protobuf.Timestamp" => |v| v.is_string().then_some(()).ok_or("an RFC 3339 timestamp string"),
        "google.protobuf.Duration" => |v| {
            v.is_string()
                .then_some(())
                .ok_or("a duration string such as \"1.5s\"")
        },
        "google.protobuf.FieldMask" | "google.protobuf.StringValue" | "google.protobuf.BytesValue" => {
            |v| v.is_string().then_some(()).ok_or("a string")
        }
        "google.protobuf.BoolValue" => |v| v.is_boolean().then_some(()).ok_or("a boolean"),
        "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value"
        | "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.FloatValue"
        | "google.protobuf.DoubleValue" => |v| {
            (v.is_number() || v.is_string())
                .then_some(())
                .ok_or("a number or a decimal string")
        },
        "google.protobuf.Struct" | "google.protobuf.Empty" | "google.protobuf.Any" => {
            |v| v.is_object().then_some(()).ok_or("an object")
        }
        "google.protobuf.ListValue" => |v| v.is_array().then_some(()).ok_or("an array"),
        "google.protobuf.Value" => |_| Ok(()),
        _ => return None,
    };
    Some(check)
}

fn expected(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "a boolean",
        Kind::String => "a string",
        Kind::Bytes => "a base64 string",
        Kind::Double | Kind::Float => "a number",
        Kind::Enum(_) => "an enum name or integer",
        Kind::Message(_) => "an object",
        _ => "an integer or a decimal string",
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// `s` as a JSON string literal (quotes and escapes), at most
/// [`QUOTED_MAX_CHARS`] characters of it: an error message names a hostile
/// key without echoing a megabyte of it into the reply and the log.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTED_MAX_CHARS) {
        None => Value::String(s.to_owned()).to_string(),
        Some((cut, _)) => format!("{}…", Value::String(s[..cut].to_owned())),
    }
}

/// How much of a name an error message quotes.
const QUOTED_MAX_CHARS: usize = 128;

fn field_error(path: &str, reason: String) -> TranscodeError {
    TranscodeError::Field {
        field: if path.is_empty() {
            "(body)".to_owned()
        } else {
            path.to_owned()
        },
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert!(check_depth(br#"{"a":[[["x"]]]}"#, 4).is_ok());
        assert!(check_depth(br#"{"a":[[[["x"]]]]}"#, 4).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[[[[["}"#, 2).is_ok());
        assert!(check_depth(br#"{"a":"\"[[[[[["}"#, 2).is_ok());
    }
}
