//! The capsule's input schema: the subset of JSON Schema a bundle may use,
//! compiled once when the bundle is read, and the check `RunCapsule` runs.
//!
//! Supported, on every node: `type` (required, one of `string`, `number`,
//! `integer`, `boolean`, `object`, `array`), `enum`, and the annotations
//! `title` and `description`; on `object`: `properties`, `required`,
//! `additionalProperties` (a boolean; absent means `true`, as in JSON
//! Schema); on `string`: `maxLength`; on `number` and `integer`: `minimum`
//! and `maximum`; on `array`: `items` (one schema for every element). The
//! root is an `object` and may also carry `$schema` (an annotation).
//!
//! Anything else (`$ref`, `oneOf`, `pattern`, `format`, a list of types, a
//! schema as `additionalProperties`, ...) is refused as
//! `input_schema_unsupported` rather than ignored: a constraint the
//! publisher wrote and the checker skipped would pass input the publisher
//! meant to refuse. A supported keyword on a type it does not apply to, or
//! with a value that can never hold, is `input_schema_invalid`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{BundleError, InputError};

/// Largest `maxLength`, 2^53 − 1 (the largest integer exact in a double).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// One compiled schema node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schema {
    kind: Kind,
    /// The allowed values, when `enum` is given (each already of `kind`'s type).
    allowed: Option<Vec<Value>>,
}

/// The node's type and the constraints that apply to it.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    String {
        max_length: Option<u64>,
    },
    Number {
        integer: bool,
        minimum: Option<f64>,
        maximum: Option<f64>,
    },
    Boolean,
    Object {
        properties: BTreeMap<String, Schema>,
        required: Vec<String>,
        additional: bool,
    },
    Array {
        items: Option<Box<Schema>>,
    },
}

impl Schema {
    /// Compiles the bundle's `input_schema` (its path is `input_schema`).
    pub(crate) fn compile_root(value: &Value) -> Result<Self, BundleError> {
        let schema = Self::compile(value, "input_schema", true)?;
        if !matches!(schema.kind, Kind::Object { .. }) {
            return Err(invalid(
                "input_schema.type",
                "the root schema must be of type object",
            ));
        }
        Ok(schema)
    }

    fn compile(value: &Value, path: &str, root: bool) -> Result<Self, BundleError> {
        let Value::Object(node) = value else {
            return Err(BundleError::WrongType {
                path: path.to_owned(),
                expected: "a json object (a schema)",
            });
        };
        // Unknown keywords first, so that an unsupported construct is named
        // as such even when the rest of the node is also wrong.
        for keyword in node.keys() {
            let known = KEYWORDS.contains(&keyword.as_str()) || (root && keyword == "$schema");
            if !known {
                return Err(BundleError::InputSchemaUnsupported {
                    path: format!("{path}.{keyword}"),
                    reason: "keyword outside the supported subset",
                });
            }
        }
        for annotation in ["title", "description", "$schema"] {
            if node.get(annotation).is_some_and(|v| !v.is_string()) {
                return Err(invalid_at(path, annotation, "must be a string"));
            }
        }
        let type_name = match node.get("type") {
            None => {
                return Err(BundleError::InputSchemaUnsupported {
                    path: format!("{path}.type"),
                    reason: "a schema without type",
                });
            }
            Some(Value::String(t)) => t.as_str(),
            Some(Value::Array(_)) => {
                return Err(BundleError::InputSchemaUnsupported {
                    path: format!("{path}.type"),
                    reason: "a list of types",
                });
            }
            Some(_) => return Err(invalid_at(path, "type", "must be a string")),
        };
        let applies: &[&str] = match type_name {
            "string" => &["maxLength"],
            "number" | "integer" => &["minimum", "maximum"],
            "boolean" => &[],
            "object" => &["properties", "required", "additionalProperties"],
            "array" => &["items"],
            _ => {
                return Err(BundleError::InputSchemaUnsupported {
                    path: format!("{path}.type"),
                    reason: "type other than string, number, integer, boolean, object, array",
                });
            }
        };
        if let Some(keyword) = TYPED_KEYWORDS
            .iter()
            .find(|k| node.contains_key(**k) && !applies.contains(*k))
        {
            return Err(invalid_at(path, keyword, "does not apply to this type"));
        }
        let kind = match type_name {
            "string" => Kind::String {
                max_length: node
                    .get("maxLength")
                    .map(|v| non_negative_integer(v, path, "maxLength"))
                    .transpose()?,
            },
            "number" | "integer" => {
                let minimum = node
                    .get("minimum")
                    .map(|v| number(v, path, "minimum"))
                    .transpose()?;
                let maximum = node
                    .get("maximum")
                    .map(|v| number(v, path, "maximum"))
                    .transpose()?;
                if let (Some(min), Some(max)) = (minimum, maximum)
                    && min > max
                {
                    return Err(invalid_at(path, "minimum", "is above maximum"));
                }
                Kind::Number {
                    integer: type_name == "integer",
                    minimum,
                    maximum,
                }
            }
            "boolean" => Kind::Boolean,
            "object" => compile_object(node, path)?,
            // Only "array" is left: every other name returned above.
            _ => Kind::Array {
                items: node
                    .get("items")
                    .map(|v| Self::compile(v, &format!("{path}.items"), false).map(Box::new))
                    .transpose()?,
            },
        };
        let mut schema = Self { kind, allowed: None };
        if let Some(values) = node.get("enum") {
            schema.allowed = Some(schema.compile_enum(values, path)?);
        }
        Ok(schema)
    }

    /// `enum`: a non-empty list of distinct values, each of which the rest of
    /// the node accepts (a value it refuses could never be given).
    fn compile_enum(&self, values: &Value, path: &str) -> Result<Vec<Value>, BundleError> {
        let Value::Array(values) = values else {
            return Err(invalid_at(path, "enum", "must be an array"));
        };
        if values.is_empty() {
            return Err(invalid_at(path, "enum", "must not be empty"));
        }
        for (i, value) in values.iter().enumerate() {
            if values[..i].iter().any(|earlier| json_eq(earlier, value)) {
                return Err(invalid_at(path, "enum", "lists a value twice"));
            }
            if self.check(value, "input").is_err() {
                return Err(invalid_at(path, "enum", "lists a value the schema refuses"));
            }
        }
        Ok(values.clone())
    }

    /// Checks `value` against this node; `path` names it in the error.
    ///
    /// In order: the type; for an object, the `required` properties in the
    /// order listed, then every member in name order (a listed property
    /// recursively, an unlisted one refused when `additionalProperties` is
    /// false); for an array each element in order; then `maxLength`,
    /// `minimum`, `maximum`; and last `enum`. The first failure is returned.
    pub(crate) fn check(&self, value: &Value, path: &str) -> Result<(), InputError> {
        let wrong_type = |expected| InputError::WrongType {
            path: path.to_owned(),
            expected,
        };
        match (&self.kind, value) {
            (Kind::String { max_length }, Value::String(s)) => {
                if let Some(max_length) = *max_length
                    && s.chars().count() as u64 > max_length
                {
                    return Err(InputError::TooLong {
                        path: path.to_owned(),
                        max_length,
                    });
                }
            }
            (Kind::String { .. }, _) => return Err(wrong_type("a string")),
            (
                Kind::Number {
                    integer,
                    minimum,
                    maximum,
                },
                Value::Number(n),
            ) => {
                // Every JSON number serde_json holds has a finite double value.
                let f = n.as_f64().unwrap_or(f64::NAN);
                // JSON Schema: an integer is a number without a fractional part (1.0 is one).
                if *integer && f.fract() != 0.0 {
                    return Err(wrong_type("an integer"));
                }
                if let Some(minimum) = *minimum
                    && f < minimum
                {
                    return Err(InputError::BelowMinimum {
                        path: path.to_owned(),
                        minimum,
                    });
                }
                if let Some(maximum) = *maximum
                    && f > maximum
                {
                    return Err(InputError::AboveMaximum {
                        path: path.to_owned(),
                        maximum,
                    });
                }
            }
            (Kind::Number { integer: true, .. }, _) => return Err(wrong_type("an integer")),
            (Kind::Number { .. }, _) => return Err(wrong_type("a number")),
            (Kind::Boolean, Value::Bool(_)) => {}
            (Kind::Boolean, _) => return Err(wrong_type("a boolean")),
            (
                Kind::Object {
                    properties,
                    required,
                    additional,
                },
                Value::Object(members),
            ) => {
                if let Some(missing) = required.iter().find(|name| !members.contains_key(*name)) {
                    return Err(InputError::Missing {
                        path: format!("{path}.{missing}"),
                    });
                }
                for (name, member) in members {
                    match properties.get(name) {
                        Some(schema) => schema.check(member, &format!("{path}.{name}"))?,
                        None if !additional => {
                            return Err(InputError::UnknownField {
                                path: format!("{path}.{name}"),
                            });
                        }
                        None => {}
                    }
                }
            }
            (Kind::Object { .. }, _) => return Err(wrong_type("an object")),
            (Kind::Array { items }, Value::Array(elements)) => {
                if let Some(items) = items {
                    for (i, element) in elements.iter().enumerate() {
                        items.check(element, &format!("{path}[{i}]"))?;
                    }
                }
            }
            (Kind::Array { .. }, _) => return Err(wrong_type("an array")),
        }
        if let Some(allowed) = &self.allowed
            && !allowed.iter().any(|a| json_eq(a, value))
        {
            return Err(InputError::NotInEnum {
                path: path.to_owned(),
            });
        }
        Ok(())
    }
}

/// Every keyword the subset knows.
const KEYWORDS: [&str; 11] = [
    "type",
    "enum",
    "title",
    "description",
    "properties",
    "required",
    "additionalProperties",
    "maxLength",
    "minimum",
    "maximum",
    "items",
];

/// The keywords that apply to one type only.
const TYPED_KEYWORDS: [&str; 7] = [
    "properties",
    "required",
    "additionalProperties",
    "maxLength",
    "minimum",
    "maximum",
    "items",
];

fn compile_object(node: &Map<String, Value>, path: &str) -> Result<Kind, BundleError> {
    let mut properties = BTreeMap::new();
    match node.get("properties") {
        None => {}
        Some(Value::Object(listed)) => {
            for (name, schema) in listed {
                let child = Schema::compile(schema, &format!("{path}.properties.{name}"), false)?;
                properties.insert(name.clone(), child);
            }
        }
        Some(_) => return Err(invalid_at(path, "properties", "must be an object")),
    }
    let mut required = Vec::new();
    match node.get("required") {
        None => {}
        Some(Value::Array(names)) => {
            for name in names {
                let Value::String(name) = name else {
                    return Err(invalid_at(path, "required", "must list strings"));
                };
                if required.contains(name) {
                    return Err(invalid_at(path, "required", "lists a name twice"));
                }
                // JSON Schema allows naming an unlisted property; in a closed
                // subset it is a typo that would make every input fail or pass
                // unchecked, so it is refused.
                if !properties.contains_key(name) {
                    return Err(invalid_at(path, "required", "names a property not in properties"));
                }
                required.push(name.clone());
            }
        }
        Some(_) => return Err(invalid_at(path, "required", "must be an array")),
    }
    let additional = match node.get("additionalProperties") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(Value::Object(_)) => {
            return Err(BundleError::InputSchemaUnsupported {
                path: format!("{path}.additionalProperties"),
                reason: "a schema as additionalProperties (only true or false)",
            });
        }
        Some(_) => return Err(invalid_at(path, "additionalProperties", "must be a boolean")),
    };
    Ok(Kind::Object {
        properties,
        required,
        additional,
    })
}

fn non_negative_integer(value: &Value, path: &str, keyword: &str) -> Result<u64, BundleError> {
    let f = value
        .as_f64()
        .ok_or_else(|| invalid_at(path, keyword, "must be a non-negative integer"))?;
    if f < 0.0 || f.fract() != 0.0 || f > MAX_SAFE_INTEGER as f64 {
        return Err(invalid_at(path, keyword, "must be a non-negative integer"));
    }
    // A whole double in 0..=2^53−1 converts exactly.
    Ok(f as u64)
}

fn number(value: &Value, path: &str, keyword: &str) -> Result<f64, BundleError> {
    value
        .as_f64()
        .ok_or_else(|| invalid_at(path, keyword, "must be a number"))
}

fn invalid(path: &str, reason: &'static str) -> BundleError {
    BundleError::InputSchemaInvalid {
        path: path.to_owned(),
        reason,
    }
}

fn invalid_at(path: &str, keyword: &str, reason: &'static str) -> BundleError {
    invalid(&format!("{path}.{keyword}"), reason)
}

/// JSON equality as JSON Schema defines it for `enum`: numbers by value
/// (`1` equals `1.0`, which serde_json's own `==` does not say), objects
/// member by member, arrays element by element.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!json_eq(&json!("1"), &json!(1)));
        assert!(!json_eq(&json!([1]), &json!([1, 1])));
    }
}
