//! `google.protobuf.Struct` ↔ JSON, bounded: adapters and capsule schemas
//! speak JSON, the API speaks `Struct`. Depth is capped both ways, so a
//! hostile message is refused, never recursed into without end; a number
//! that is not finite and a `Value` without a kind are refused too.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as PbValue};
use serde_json::{Map, Number, Value};

/// Deepest nesting converted; deeper input is refused, never recursed into.
pub const MAX_DEPTH: usize = 64;

/// Why a conversion failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A number that is not finite.
    NonFinite,
    /// A `Value` with no kind set.
    Empty,
}

impl std::error::Error for Refused {}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            Self::NonFinite => f.write_str("a number is not finite"),
            Self::Empty => f.write_str("a value has no kind"),
        }
    }
}

/// A `Struct` as a JSON object.
pub fn from_struct(s: &Struct) -> Result<Value, Refused> {
    object(s, 0)
}

fn object(s: &Struct, depth: usize) -> Result<Value, Refused> {
    if depth >= MAX_DEPTH {
        return Err(Refused::TooDeep);
    }
    let mut map = Map::with_capacity(s.fields.len());
    for (k, v) in &s.fields {
        map.insert(k.clone(), value(v, depth + 1)?);
    }
    Ok(Value::Object(map))
}

fn value(v: &PbValue, depth: usize) -> Result<Value, Refused> {
    if depth >= MAX_DEPTH {
        return Err(Refused::TooDeep);
    }
    Ok(match &v.kind {
        None => return Err(Refused::Empty),
        Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => Value::Number(Number::from_f64(*n).ok_or(Refused::NonFinite)?),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::StructValue(s)) => object(s, depth + 1)?,
        Some(Kind::ListValue(l)) => Value::Array(
            l.values
                .iter()
                .map(|v| value(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A JSON object as a `Struct`; `None` if `v` is not an object.
pub fn to_struct(v: &Value) -> Result<Option<Struct>, Refused> {
    match v {
        Value::Object(map) => Ok(Some(struct_of(map, 0)?)),
        _ => Ok(None),
    }
}

fn struct_of(map: &Map<String, Value>, depth: usize) -> Result<Struct, Refused> {
    if depth >= MAX_DEPTH {
        return Err(Refused::TooDeep);
    }
    Ok(Struct {
        fields: map
            .iter()
            .map(|(k, v)| Ok((k.clone(), pb_value(v, depth + 1)?)))
            .collect::<Result<_, Refused>>()?,
    })
}

fn pb_value(v: &Value, depth: usize) -> Result<PbValue, Refused> {
    if depth >= MAX_DEPTH {
        return Err(Refused::TooDeep);
    }
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().ok_or(Refused::NonFinite)?),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items
                .iter()
                .map(|v| pb_value(v, depth + 1))
                .collect::<Result<_, _>>()?,
        }),
        Value::Object(map) => Kind::StructValue(struct_of(map, depth + 1)?),
    };
    Ok(PbValue { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_round_trip() {
        let v = json!({"a": 1.5, "b": [true, null, "x", {"c": -2.5}], "d": {}});
        let s = to_struct(&v).unwrap().unwrap();
        assert_eq!(from_struct(&s).unwrap(), v);
        assert_eq!(to_struct(&json!([1])).unwrap(), None);
    }

    #[test]
    fn depth_is_bounded_both_ways() {
        let mut v = json!({});
        for _ in 0..MAX_DEPTH {
            v = json!({ "x": v });
        }
        assert_eq!(to_struct(&v), Err(Refused::TooDeep));
        let mut s = Struct::default();
        for _ in 0..MAX_DEPTH {
            s = Struct {
                fields: [(
                    "x".to_owned(),
                    PbValue {
                        kind: Some(Kind::StructValue(s)),
                    },
                )]
                .into(),
            };
        }
        assert_eq!(from_struct(&s), Err(Refused::TooDeep));
    }
}
