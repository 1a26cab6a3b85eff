//! The in-toto Statement v1 (in-toto/attestation, `spec/v1/statement.md`)
//! an attestation carries, read from the payload exactly as it was sent.
//!
//! ```text
//! {"_type":"https://in-toto.io/Statement/v1",
//!  "subject":[{"name":"text-stats@1.0.0","digest":{"sha256":"<64 hex>"}}],
//!  "predicateType":"https://somastack.dev/capsule-review/v1","predicate":{...}}
//! ```
//!
//! Parsing is strict I-JSON (duplicate members, lone surrogates refused) and
//! strict where the statement carries meaning: `_type` exactly the v1 URI;
//! `subject` a non-empty list of resource descriptors, each with a non-empty
//! `digest` object of strings whose `sha256`, when present, is 64 lowercase
//! hex digits, and whose `name`, when present, is a string; `predicateType` a
//! non-empty string; `predicate` an object, or absent (the specification
//! reads an absent predicate as an empty one). Members the specification
//! leaves to others (a subject's `uri`, `annotations`, ...) and members it
//! does not define are ignored, as its parsing rules require of consumers;
//! the signature covers them, so they cannot be slipped in after signing.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use soma_sign::jcs;

use crate::error::AttestError;
use soma_sign::hex;

/// The `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The DSSE `payloadType` of an in-toto statement (the in-toto and
/// securesystemslib constant `ENVELOPE_PAYLOAD_TYPE`).
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A parsed in-toto Statement v1.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    subjects: Vec<Subject>,
    predicate_type: String,
    predicate: Map<String, Value>,
}

/// One subject of a [`Statement`]: the artifact the statement is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    name: Option<String>,
    digest: BTreeMap<String, String>,
    sha256: Option<[u8; 32]>,
}

impl Statement {
    /// Parses a statement from the payload bytes as sent (see the module documentation).
    ///
    /// Errors: `attestation_malformed` for a payload that is not strict JSON
    /// or not an object, `attestation_statement_type` for a missing or other
    /// `_type`, then `attestation_malformed` naming the first member of the
    /// wrong shape.
    pub fn parse(payload: &[u8]) -> Result<Self, AttestError> {
        let malformed = |reason| AttestError::Malformed { reason };
        let value = jcs::parse_strict(payload).map_err(|_| malformed("the payload is not strict json"))?;
        let Value::Object(mut top) = value else {
            return Err(malformed("the statement is not a json object"));
        };
        match top.get("_type") {
            Some(Value::String(t)) if t == STATEMENT_TYPE => {}
            _ => return Err(AttestError::StatementType),
        }
        let subjects = match top.get("subject") {
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().map(Subject::parse).collect::<Result<Vec<_>, _>>()?
            }
            Some(Value::Array(_)) => return Err(malformed("subject is empty")),
            Some(_) => return Err(malformed("subject is not an array")),
            None => return Err(malformed("subject is missing")),
        };
        let predicate_type = match top.remove("predicateType") {
            Some(Value::String(t)) if !t.is_empty() => t,
            Some(Value::String(_)) => return Err(malformed("predicateType is empty")),
            Some(_) => return Err(malformed("predicateType is not a string")),
            None => return Err(malformed("predicateType is missing")),
        };
        let predicate = match top.remove("predicate") {
            Some(Value::Object(p)) => p,
            None => Map::new(),
            Some(_) => return Err(malformed("predicate is not an object")),
        };
        Ok(Self {
            subjects,
            predicate_type,
            predicate,
        })
    }

    /// The subjects, in the statement's order.
    pub fn subjects(&self) -> &[Subject] {
        &self.subjects
    }

    /// The predicate type URI.
    pub fn predicate_type(&self) -> &str {
        &self.predicate_type
    }

    /// The predicate (empty when the statement has none).
    pub fn predicate(&self) -> &Map<String, Value> {
        &self.predicate
    }

    /// Whether some subject's `digest.sha256` is `digest`.
    pub fn names_sha256(&self, digest: &[u8; 32]) -> bool {
        self.subjects.iter().any(|s| s.sha256.as_ref() == Some(digest))
    }

    /// The statement of one subject `name` with SHA-256 `digest`, as JSON in
    /// RFC 8785 canonical form: the payload [`attest`](crate::attest) signs.
    pub(crate) fn canonical_json(
        name: &str,
        digest: &[u8; 32],
        predicate_type: &str,
        predicate: Map<String, Value>,
    ) -> Result<Vec<u8>, AttestError> {
        let mut digest_set = Map::new();
        digest_set.insert("sha256".to_owned(), Value::String(hex::encode(digest)));
        let mut subject = Map::new();
        subject.insert("digest".to_owned(), Value::Object(digest_set));
        subject.insert("name".to_owned(), Value::String(name.to_owned()));
        let mut top = Map::new();
        top.insert("_type".to_owned(), Value::String(STATEMENT_TYPE.to_owned()));
        top.insert("predicate".to_owned(), Value::Object(predicate));
        top.insert(
            "predicateType".to_owned(),
            Value::String(predicate_type.to_owned()),
        );
        top.insert("subject".to_owned(), Value::Array(vec![Value::Object(subject)]));
        jcs::canonicalize(&Value::Object(top)).map_err(|_| AttestError::PredicateInvalid {
            reason: "the predicate cannot be canonicalised (nested too deeply)",
        })
    }
}

impl Subject {
    fn parse(value: &Value) -> Result<Self, AttestError> {
        let malformed = |reason| AttestError::Malformed { reason };
        let Value::Object(member) = value else {
            return Err(malformed("a subject is not an object"));
        };
        let name = match member.get("name") {
            None => None,
            Some(Value::String(n)) => Some(n.clone()),
            Some(_) => return Err(malformed("a subject name is not a string")),
        };
        let digest = match member.get("digest") {
            Some(Value::Object(d)) if !d.is_empty() => d,
            Some(Value::Object(_)) => return Err(malformed("a subject digest is empty")),
            Some(_) => return Err(malformed("a subject digest is not an object")),
            None => return Err(malformed("a subject has no digest")),
        };
        let mut digests = BTreeMap::new();
        for (algorithm, value) in digest {
            let Value::String(value) = value else {
                return Err(malformed("a subject digest value is not a string"));
            };
            digests.insert(algorithm.clone(), value.clone());
        }
        let sha256 = match digests.get("sha256") {
            None => None,
            Some(text) => Some(
                hex::decode_32(text).ok_or(malformed("a subject sha256 is not 64 lowercase hex digits"))?,
            ),
        };
        Ok(Self {
            name,
            digest: digests,
            sha256,
        })
    }

    /// The subject's `name`, when it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The subject's digest set (algorithm → lowercase hex), as written.
    pub fn digest(&self) -> &BTreeMap<String, String> {
        &self.digest
    }

    /// The subject's SHA-256, when its digest set has one.
    pub fn sha256(&self) -> Option<&[u8; 32]> {
        self.sha256.as_ref()
    }
}
