//! The release manifest: what is published, in one canonical byte string.

use serde_json::{Map, Number, Value};
use soma_sign::{SignError, jcs, sha256};

use crate::error::ReleaseError;
use crate::version::Version;
use soma_sign::hex;

/// The DSSE `payloadType` of a signed release manifest.
pub const PAYLOAD_TYPE: &str = "application/vnd.somastack.release.v1+json";

/// The largest integer a manifest may hold, 2^53 − 1: every integer up to it
/// is exact as an IEEE-754 double, the number type of JSON in JavaScript and
/// of RFC 8785, so every reader of the manifest sees the same value.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The WebAssembly page size; `limits.memory_bytes` is a whole number of pages.
pub const WASM_PAGE_SIZE: u64 = 65_536;

/// Longest `tool` and `entrypoint`, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Longest `description`, in characters (Unicode scalar values).
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// The members of a manifest, in canonical (RFC 8785) order.
const MEMBERS: [&str; 7] = [
    "description",
    "entrypoint",
    "limits",
    "module_sha256",
    "module_size",
    "tool",
    "version",
];

/// The members of `limits`, in canonical order.
const LIMIT_MEMBERS: [&str; 3] = ["deadline_ms", "fuel", "memory_bytes"];

/// What the sandbox grants one execution of the tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Wasmtime fuel units, 1..=2^53−1.
    pub fuel: u64,
    /// Linear memory ceiling in bytes: whole 64 KiB pages, 65536..=2^53−1.
    pub memory_bytes: u64,
    /// Wall-clock deadline in milliseconds, 1..=2^53−1.
    pub deadline_ms: u64,
}

/// A validated release manifest and its canonical bytes.
///
/// The canonical bytes are computed once, when the manifest is built or
/// parsed, and are the one byte string that is signed, digested and stored:
/// [`Manifest::parse`] accepts a payload only if it *is* those bytes.
///
/// ```text
/// {"description":"…","entrypoint":"run","limits":{"deadline_ms":1000,"fuel":1000000,
///  "memory_bytes":1048576},"module_sha256":"<64 hex>","module_size":1234,"tool":"echo",
///  "version":"1.2.0"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    tool: String,
    version: Version,
    module_sha256: [u8; 32],
    module_size: u64,
    entrypoint: String,
    limits: Limits,
    description: String,
    canonical: Vec<u8>,
}

impl Manifest {
    /// Builds the manifest of `module` (its size and SHA-256 are computed
    /// here), validating every member as [`Manifest::parse`] does.
    pub fn new(
        tool: &str,
        version: &str,
        entrypoint: &str,
        limits: Limits,
        description: &str,
        module: &[u8],
    ) -> Result<Self, ReleaseError> {
        let mut limits_map = Map::new();
        limits_map.insert("deadline_ms".to_owned(), Value::Number(limits.deadline_ms.into()));
        limits_map.insert("fuel".to_owned(), Value::Number(limits.fuel.into()));
        limits_map.insert(
            "memory_bytes".to_owned(),
            Value::Number(limits.memory_bytes.into()),
        );
        let mut map = Map::new();
        map.insert("description".to_owned(), Value::String(description.to_owned()));
        map.insert("entrypoint".to_owned(), Value::String(entrypoint.to_owned()));
        map.insert("limits".to_owned(), Value::Object(limits_map));
        map.insert(
            "module_sha256".to_owned(),
            Value::String(hex::encode(&sha256(module))),
        );
        map.insert(
            "module_size".to_owned(),
            Value::Number((module.len() as u64).into()),
        );
        map.insert("tool".to_owned(), Value::String(tool.to_owned()));
        map.insert("version".to_owned(), Value::String(version.to_owned()));
        Self::from_value(&Value::Object(map))
    }

    /// Validates a manifest held as a JSON value (for example one converted
    /// from a protobuf `Struct`) and computes its canonical bytes.
    ///
    /// Numbers are read as the doubles they denote, as RFC 8785 does: any
    /// number of magnitude 2^53 or more is refused first, then every member,
    /// its type and its value are checked.
    pub fn from_value(value: &Value) -> Result<Self, ReleaseError> {
        check_number_range(value, "manifest")?;
        Self::validate(value)
    }

    /// Parses and validates a manifest payload, which must be exactly its
    /// RFC 8785 canonical form.
    ///
    /// In order: strict I-JSON parsing (duplicate members, lone surrogates,
    /// invalid UTF-8 and overflowing numbers refused, each with its own
    /// reason); every number below 2^53 in magnitude; the members, their
    /// types and values; and finally `payload == canonical bytes`, so that
    /// the signed, digested and stored bytes are one byte string.
    pub fn parse(payload: &[u8]) -> Result<Self, ReleaseError> {
        let value = jcs::parse_strict(payload).map_err(|e| match e {
            SignError::DuplicateKey { key } => ReleaseError::ManifestDuplicateKey { key },
            SignError::LoneSurrogate { offset } => ReleaseError::ManifestLoneSurrogate { offset },
            SignError::NumberOutOfRange { offset } => ReleaseError::ManifestNumberOutOfRange {
                at: format!("byte {offset}"),
            },
            source => ReleaseError::ManifestInvalidJson { source },
        })?;
        let manifest = Self::from_value(&value)?;
        if manifest.canonical != payload {
            return Err(ReleaseError::ManifestNotCanonical);
        }
        Ok(manifest)
    }

    /// The canonical bytes: what the publisher signs and the registry digests and stores.
    pub fn canonical(&self) -> Vec<u8> {
        self.canonical.clone()
    }

    /// The canonical bytes, borrowed.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }

    /// SHA-256 of the canonical bytes.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&self.canonical)
    }

    /// Checks that `module` is the module this manifest describes: its
    /// length first (cheap, and a clear reason), then its SHA-256.
    pub fn check_module(&self, module: &[u8]) -> Result<(), ReleaseError> {
        let actual = module.len() as u64;
        if actual != self.module_size {
            return Err(ReleaseError::ModuleSizeMismatch {
                expected: self.module_size,
                actual,
            });
        }
        if sha256(module) != self.module_sha256 {
            return Err(ReleaseError::ModuleDigestMismatch);
        }
        Ok(())
    }

    /// The tool's name.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The release's version.
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// SHA-256 of the WebAssembly module.
    pub fn module_sha256(&self) -> &[u8; 32] {
        &self.module_sha256
    }

    /// Length of the WebAssembly module in bytes.
    pub fn module_size(&self) -> u64 {
        self.module_size
    }

    /// The exported function the sandbox calls.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// The execution limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Free text for people.
    pub fn description(&self) -> &str {
        &self.description
    }

    fn validate(value: &Value) -> Result<Self, ReleaseError> {
        let Value::Object(map) = value else {
            return Err(ReleaseError::ManifestWrongType {
                path: "manifest",
                expected: "a json object",
            });
        };
        refuse_unknown(map, &MEMBERS, "")?;
        let tool = string(map, "tool", "tool")?;
        check_tool(tool)?;
        let version = Version::parse(string(map, "version", "version")?)?;
        let module_sha256 = hex::decode_32(string(map, "module_sha256", "module_sha256")?).ok_or(
            ReleaseError::ManifestInvalidValue {
                path: "module_sha256",
                reason: "must be 64 lowercase hex digits",
            },
        )?;
        let module_size = integer(map, "module_size", "module_size", 1)?;
        let entrypoint = string(map, "entrypoint", "entrypoint")?;
        check_entrypoint(entrypoint)?;
        let limits = match map.get("limits") {
            None => return Err(ReleaseError::ManifestMissingField { path: "limits" }),
            Some(Value::Object(limits)) => {
                refuse_unknown(limits, &LIMIT_MEMBERS, "limits.")?;
                let fuel = integer(limits, "fuel", "limits.fuel", 1)?;
                let memory_bytes = integer(limits, "memory_bytes", "limits.memory_bytes", WASM_PAGE_SIZE)?;
                if memory_bytes % WASM_PAGE_SIZE != 0 {
                    return Err(ReleaseError::ManifestInvalidValue {
                        path: "limits.memory_bytes",
                        reason: "must be a multiple of 65536 (whole webassembly pages)",
                    });
                }
                let deadline_ms = integer(limits, "deadline_ms", "limits.deadline_ms", 1)?;
                Limits {
                    fuel,
                    memory_bytes,
                    deadline_ms,
                }
            }
            Some(_) => {
                return Err(ReleaseError::ManifestWrongType {
                    path: "limits",
                    expected: "a json object",
                });
            }
        };
        let description = string(map, "description", "description")?;
        if description.chars().count() > MAX_DESCRIPTION_LEN {
            return Err(ReleaseError::ManifestInvalidValue {
                path: "description",
                reason: "longer than 1024 characters",
            });
        }
        // Every value is a string, an object or an integer below 2^53 (checked
        // above) at depth two: canonicalisation cannot fail here.
        let canonical =
            jcs::canonicalize(value).map_err(|source| ReleaseError::ManifestInvalidJson { source })?;
        Ok(Self {
            tool: tool.to_owned(),
            version,
            module_sha256,
            module_size,
            entrypoint: entrypoint.to_owned(),
            limits,
            description: description.to_owned(),
            canonical,
        })
    }
}

/// Refuses the first member (in canonical order) that `known` does not list.
fn refuse_unknown(map: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), ReleaseError> {
    let mut unknown: Vec<&String> = map.keys().filter(|k| !known.contains(&k.as_str())).collect();
    unknown.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    match unknown.first() {
        Some(name) => Err(ReleaseError::ManifestUnknownField {
            path: format!("{prefix}{name}"),
        }),
        None => Ok(()),
    }
}

fn string<'a>(map: &'a Map<String, Value>, name: &str, path: &'static str) -> Result<&'a str, ReleaseError> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ReleaseError::ManifestWrongType {
            path,
            expected: "a string",
        }),
        None => Err(ReleaseError::ManifestMissingField { path }),
    }
}

/// An integer member within `min..=2^53−1`.
///
/// The range rule for |n| ≥ 2^53 has already been applied by
/// [`check_number_range`]; here a fraction is the wrong type, and a value below
/// `min` (negative ones included) an invalid value.
fn integer(map: &Map<String, Value>, name: &str, path: &'static str, min: u64) -> Result<u64, ReleaseError> {
    let wrong_type = ReleaseError::ManifestWrongType {
        path,
        expected: "an integer",
    };
    let n = match map.get(name) {
        Some(Value::Number(n)) => n,
        Some(_) => return Err(wrong_type),
        None => return Err(ReleaseError::ManifestMissingField { path }),
    };
    let below_min = ReleaseError::ManifestInvalidValue {
        path,
        reason: if min == 1 {
            "must be at least 1"
        } else {
            "must be at least 65536"
        },
    };
    let value = match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u,
        (None, Some(_)) => return Err(below_min),
        (None, None) => {
            let Some(f) = n.as_f64() else {
                return Err(wrong_type);
            };
            if f.fract() != 0.0 {
                return Err(wrong_type);
            }
            if f < 0.0 {
                return Err(below_min);
            }
            // A whole double in 0..2^53 converts exactly.
            f as u64
        }
    };
    if value > MAX_SAFE_INTEGER {
        return Err(ReleaseError::ManifestNumberOutOfRange { at: path.to_owned() });
    }
    if value < min {
        return Err(below_min);
    }
    Ok(value)
}

/// Refuses any number whose magnitude is 2^53 or more, anywhere in the
/// document, naming its member path.
fn check_number_range(value: &Value, path: &str) -> Result<(), ReleaseError> {
    match value {
        Value::Number(n) => {
            if !number_is_safe(n) {
                return Err(ReleaseError::ManifestNumberOutOfRange { at: path.to_owned() });
            }
            Ok(())
        }
        Value::Object(map) => {
            for (name, item) in map {
                if contains_number(item) {
                    let child = if path == "manifest" {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    check_number_range(item, &child)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if contains_number(item) {
                    check_number_range(item, &format!("{path}[{i}]"))?;
                }
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
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

/// `tool`: 1–64 characters, `[a-z0-9][a-z0-9._-]*`.
fn check_tool(tool: &str) -> Result<(), ReleaseError> {
    let invalid = |reason| ReleaseError::ToolInvalid { reason };
    let bytes = tool.as_bytes();
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

/// `entrypoint`: 1–64 characters, `[A-Za-z_][A-Za-z0-9_]*`.
fn check_entrypoint(entrypoint: &str) -> Result<(), ReleaseError> {
    let invalid = |reason| ReleaseError::ManifestInvalidValue {
        path: "entrypoint",
        reason,
    };
    let bytes = entrypoint.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(invalid("empty"));
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(invalid("longer than 64 characters"));
    }
    if !(first.is_ascii_alphabetic() || *first == b'_') {
        return Err(invalid("must start with [A-Za-z_]"));
    }
    if !bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return Err(invalid("must use only [A-Za-z0-9_]"));
    }
    Ok(())
}
