//! The capsule bundle: what a capsule is, in one canonical byte string.

use serde_json::{Map, Number, Value};
use soma_release::Version;
use soma_sign::{SignError, jcs, sha256};

use crate::error::{BundleError, InputError};
use crate::schema::Schema;
use soma_sign::hex;

/// Longest capsule `name` and tool name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Longest `description`, in characters (Unicode scalar values).
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// Most tool releases one capsule runs.
pub const MAX_TOOLS: usize = 16;

/// The largest magnitude an integer in a bundle may have, 2^53 − 1: every
/// integer up to it is exact as an IEEE-754 double, the number of RFC 8785.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The members of a bundle, in canonical (RFC 8785) order.
const MEMBERS: [&str; 6] = [
    "description",
    "input_schema",
    "name",
    "parameters",
    "tools",
    "version",
];

/// The members of one `tools` entry, in canonical order.
const TOOL_MEMBERS: [&str; 3] = ["module_sha256", "tool", "version"];

/// One tool release a capsule runs, named as the ToolRegistry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRef {
    /// The tool's name (1–64 characters of `[a-z0-9][a-z0-9._-]*`, the release rule).
    pub tool: String,
    /// The release's version.
    pub version: Version,
    /// SHA-256 of the release's WebAssembly module, so the capsule pins the
    /// exact module and not only a name the registry could re-point.
    pub module_sha256: [u8; 32],
}

/// A validated capsule bundle and its canonical bytes.
///
/// The canonical bytes are computed once, when the bundle is built or
/// parsed, and are the one byte string that is digested, attested and
/// stored: [`Bundle::parse`] accepts a document only if it *is* those bytes.
///
/// ```text
/// {"description":"…","input_schema":{"properties":{"text":{"maxLength":4096,"type":"string"}},
///  "required":["text"],"type":"object"},"name":"text-stats","parameters":{},
///  "tools":[{"module_sha256":"<64 hex>","tool":"text-stats","version":"1.0.0"}],"version":"1.0.0"}
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    name: String,
    version: Version,
    description: String,
    tools: Vec<ToolRef>,
    input_schema: Map<String, Value>,
    schema: Schema,
    parameters: Map<String, Value>,
    canonical: Vec<u8>,
}

impl Bundle {
    /// Builds a bundle from its parts, validating every member as [`Bundle::parse`] does.
    pub fn new(
        name: &str,
        version: &str,
        description: &str,
        tools: &[ToolRef],
        input_schema: Value,
        parameters: Value,
    ) -> Result<Self, BundleError> {
        let tools = tools
            .iter()
            .map(|t| {
                let mut entry = Map::new();
                entry.insert(
                    "module_sha256".to_owned(),
                    Value::String(hex::encode(&t.module_sha256)),
                );
                entry.insert("tool".to_owned(), Value::String(t.tool.clone()));
                entry.insert("version".to_owned(), Value::String(t.version.as_str().to_owned()));
                Value::Object(entry)
            })
            .collect();
        let mut map = Map::new();
        map.insert("description".to_owned(), Value::String(description.to_owned()));
        map.insert("input_schema".to_owned(), input_schema);
        map.insert("name".to_owned(), Value::String(name.to_owned()));
        map.insert("parameters".to_owned(), parameters);
        map.insert("tools".to_owned(), Value::Array(tools));
        map.insert("version".to_owned(), Value::String(version.to_owned()));
        Self::from_value(&Value::Object(map))
    }

    /// Validates a bundle held as a JSON value (for example one converted
    /// from a protobuf `Struct`) and computes its canonical bytes.
    ///
    /// Numbers are read as the doubles they denote, as RFC 8785 does: any
    /// number of magnitude 2^53 or more is refused first, then every member,
    /// its type and its value are checked.
    pub fn from_value(value: &Value) -> Result<Self, BundleError> {
        check_number_range(value, "")?;
        Self::validate(value)
    }

    /// Parses and validates a bundle, which must be exactly its RFC 8785 canonical form.
    ///
    /// In order: strict I-JSON parsing (duplicate members, lone surrogates,
    /// invalid UTF-8 and overflowing numbers refused); every number below
    /// 2^53 in magnitude; the members, their types and values, the tools
    /// and the input schema; and finally `bytes == canonical bytes`, so
    /// that the digested, attested and stored bytes are one byte string.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let value = jcs::parse_strict(bytes).map_err(|e| match e {
            SignError::DuplicateKey { key } => BundleError::DuplicateKey { key },
            SignError::NumberOutOfRange { offset } => BundleError::NumberOutOfRange {
                at: format!("byte {offset}"),
            },
            source => BundleError::InvalidJson { source },
        })?;
        let bundle = Self::from_value(&value)?;
        if bundle.canonical != bytes {
            return Err(BundleError::NotCanonical);
        }
        Ok(bundle)
    }

    /// The canonical bytes, borrowed: what is digested, attested and stored.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }

    /// SHA-256 of the canonical bytes: the digest an attestation's subject names.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&self.canonical)
    }

    /// The digest as 64 lowercase hex digits (the spelling of an in-toto `digest.sha256`).
    pub fn digest_hex(&self) -> String {
        hex::encode(&self.digest())
    }

    /// The in-toto subject name of this bundle, `name@version`.
    pub fn subject_name(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Checks a run input against the bundle's input schema, naming the
    /// field at fault from the root `input` (`input.options.level`).
    pub fn check_input(&self, input: &Value) -> Result<(), InputError> {
        self.schema.check(input, "input")
    }

    /// The capsule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The capsule's version.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Free text for people.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The tool releases the capsule runs, in the bundle's order.
    pub fn tools(&self) -> &[ToolRef] {
        &self.tools
    }

    /// The input schema as written.
    pub fn input_schema(&self) -> &Map<String, Value> {
        &self.input_schema
    }

    /// The default parameters.
    pub fn parameters(&self) -> &Map<String, Value> {
        &self.parameters
    }

    fn validate(value: &Value) -> Result<Self, BundleError> {
        let Value::Object(map) = value else {
            return Err(BundleError::WrongType {
                path: "bundle".to_owned(),
                expected: "a json object",
            });
        };
        refuse_unknown(map, &MEMBERS, "")?;
        let name = string(map, "name", "")?;
        check_name(name, "name")?;
        let version = version(map, "")?;
        let description = string(map, "description", "")?;
        if description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(BundleError::InvalidValue {
                path: "description".to_owned(),
                reason: "longer than 1024 characters",
            });
        }
        let tools = tools(map)?;
        let input_schema = object(map, "input_schema")?;
        let schema = Schema::compile_root(&Value::Object(input_schema.clone()))?;
        let parameters = object(map, "parameters")?;
        // Every number was checked finite and below 2^53 and the parser
        // bounds the nesting: canonicalisation cannot fail here, and if it
        // ever did the bundle is refused rather than digested wrongly.
        let canonical = jcs::canonicalize(value).map_err(|source| BundleError::InvalidJson { source })?;
        Ok(Self {
            name: name.to_owned(),
            version,
            description: description.to_owned(),
            tools,
            input_schema,
            schema,
            parameters,
            canonical,
        })
    }
}

/// `tools`: 1..=16 entries `{module_sha256, tool, version}`, no tool@version twice.
fn tools(map: &Map<String, Value>) -> Result<Vec<ToolRef>, BundleError> {
    let entries = match map.get("tools") {
        None => return Err(missing("tools")),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(wrong_type("tools", "an array")),
    };
    if entries.is_empty() {
        return Err(BundleError::InvalidValue {
            path: "tools".to_owned(),
            reason: "must list at least one tool release",
        });
    }
    if entries.len() > MAX_TOOLS {
        return Err(BundleError::InvalidValue {
            path: "tools".to_owned(),
            reason: "lists more than 16 tool releases",
        });
    }
    let mut tools: Vec<ToolRef> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let prefix = format!("tools[{i}].");
        let Value::Object(entry) = entry else {
            return Err(wrong_type(&format!("tools[{i}]"), "a json object"));
        };
        refuse_unknown(entry, &TOOL_MEMBERS, &prefix)?;
        let tool = string(entry, "tool", &prefix)?;
        check_name(tool, &format!("{prefix}tool"))?;
        let version = version(entry, &prefix)?;
        let module_sha256 = hex::decode_32(string(entry, "module_sha256", &prefix)?).ok_or_else(|| {
            BundleError::InvalidValue {
                path: format!("{prefix}module_sha256"),
                reason: "must be 64 lowercase hex digits",
            }
        })?;
        // SemVer precedence: `1.0.0+a` and `1.0.0+b` are one release to the registry.
        if tools.iter().any(|t| t.tool == tool && t.version == version) {
            return Err(BundleError::DuplicateTool {
                path: format!("tools[{i}]"),
            });
        }
        tools.push(ToolRef {
            tool: tool.to_owned(),
            version,
            module_sha256,
        });
    }
    Ok(tools)
}

/// A capsule or tool name: 1–64 characters, `[a-z0-9][a-z0-9._-]*` (the
/// ToolRegistry's tool rule, so a name is safe in a path, a log line and a
/// metric label).
fn check_name(name: &str, path: &str) -> Result<(), BundleError> {
    let invalid = |reason| BundleError::InvalidValue {
        path: path.to_owned(),
        reason,
    };
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(invalid("empty"));
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid("must start with [a-z0-9]"));
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("must use only [a-z0-9._-]"));
    }
    Ok(())
}

/// Refuses the first member (in canonical order) that `known` does not list.
fn refuse_unknown(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), BundleError> {
    let mut unknown: Vec<&String> = map.keys().filter(|k| !known.contains(&k.as_str())).collect();
    unknown.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    match unknown.first() {
        Some(name) => Err(BundleError::UnknownField {
            path: format!("{prefix}{name}"),
        }),
        None => Ok(()),
    }
}

fn string<'a>(map: &'a Map<String, Value>, name: &str, prefix: &str) -> Result<&'a str, BundleError> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(&format!("{prefix}{name}"), "a string")),
        None => Err(missing(&format!("{prefix}{name}"))),
    }
}

fn version(map: &Map<String, Value>, prefix: &str) -> Result<Version, BundleError> {
    Version::parse(string(map, "version", prefix)?).map_err(|source| BundleError::VersionInvalid {
        path: format!("{prefix}version"),
        source,
    })
}

fn object(map: &Map<String, Value>, name: &str) -> Result<Map<String, Value>, BundleError> {
    match map.get(name) {
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(wrong_type(name, "a json object")),
        None => Err(missing(name)),
    }
}

fn missing(path: &str) -> BundleError {
    BundleError::MissingField {
        path: path.to_owned(),
    }
}

fn wrong_type(path: &str, expected: &'static str) -> BundleError {
    BundleError::WrongType {
        path: path.to_owned(),
        expected,
    }
}

/// Refuses any number whose magnitude is 2^53 or more, anywhere in the
/// document, naming its member path (`parameters.limit`, `tools[0]`).
fn check_number_range(value: &Value, path: &str) -> Result<(), BundleError> {
    match value {
        Value::Number(n) if !number_is_safe(n) => Err(BundleError::NumberOutOfRange {
            at: if path.is_empty() {
                "bundle".to_owned()
            } else {
                path.to_owned()
            },
        }),
        Value::Object(map) => {
            map.iter()
                .filter(|(_, item)| contains_number(item))
                .try_for_each(|(name, item)| {
                    let child = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    check_number_range(item, &child)
                })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter(|(_, item)| contains_number(item))
            .try_for_each(|(i, item)| check_number_range(item, &format!("{path}[{i}]"))),
        Value::Number(_) | Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

/// Whether `value` holds a number anywhere (so paths are only formatted where one is).
fn contains_number(value: &Value) -> bool {
    match value {
        Value::Number(_) => true,
        Value::Object(map) => map.values().any(contains_number),
        Value::Array(items) => items.iter().any(contains_number),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

fn number_is_safe(n: &Number) -> bool {
    if let Some(u) = n.as_u64() {
        return u <= MAX_SAFE_INTEGER;
    }
    if let Some(i) = n.as_i64() {
        return i.unsigned_abs() <= MAX_SAFE_INTEGER;
    }
    // 2^53 − 1 < |f| < 2^53 holds no double, so `< 2^53` is the exact bound.
    n.as_f64().is_some_and(|f| f.abs() < 9_007_199_254_740_992.0)
}
