//! The refusals of `soma-capsule`, sorted in one place.
//!
//! Three enums, because three different parties are answered: a publisher
//! whose bundle is refused ([`BundleError`]), a publisher whose attestation
//! is refused ([`AttestError`]), and a tenant whose run input does not match
//! the capsule's schema ([`InputError`], what `RunCapsule` turns into a 400
//! naming the field). Each has a stable snake_case `reason()` and lowercase
//! messages that name a member path and never echo input values.

use soma_release::ReleaseError;
use soma_sign::SignError;

/// Why a capsule bundle was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bundle is not JSON (syntax, invalid UTF-8, lone surrogate, `NaN`, nesting), see the source.
    #[error("bundle is not valid json")]
    InvalidJson {
        /// The strict parser's reason.
        #[source]
        source: SignError,
    },

    /// An object of the bundle carries the same member name twice.
    #[error("bundle has a duplicate member {key:?}")]
    DuplicateKey {
        /// The repeated member name.
        key: String,
    },

    /// A number whose magnitude is 2^53 or more: beyond it integers are not
    /// exact as IEEE-754 doubles, so two readers of the bundle could disagree.
    #[error("bundle number at {at} is out of range (magnitude below 2^53)")]
    NumberOutOfRange {
        /// The member path (`parameters.limit`), or `byte N` when the parser refused it.
        at: String,
    },

    /// The bundle parses but is not byte for byte its RFC 8785 canonical form.
    #[error("bundle is not in rfc 8785 canonical form")]
    NotCanonical,

    /// A required member is absent.
    #[error("bundle member {path} is missing")]
    MissingField {
        /// The member path.
        path: String,
    },

    /// A member the bundle format does not define.
    #[error("bundle member {path} is not a known field")]
    UnknownField {
        /// The member path.
        path: String,
    },

    /// A member of the wrong JSON type.
    #[error("bundle member {path} must be {expected}")]
    WrongType {
        /// The member path (`bundle` for the document itself).
        path: String,
        /// The type required.
        expected: &'static str,
    },

    /// A member of the right type whose value is not allowed.
    #[error("bundle member {path} is invalid: {reason}")]
    InvalidValue {
        /// The member path.
        path: String,
        /// The rule broken.
        reason: &'static str,
    },

    /// A `version` (the bundle's or a tool's) is not SemVer 2.0.0 text.
    #[error("bundle member {path} is not semver 2.0.0")]
    VersionInvalid {
        /// The member path (`version`, `tools[1].version`).
        path: String,
        /// The SemVer parser's reason.
        #[source]
        source: ReleaseError,
    },

    /// Two entries of `tools` name the same tool at the same version (SemVer
    /// precedence: build metadata does not make another release).
    #[error("bundle member {path} repeats a tool@version listed before")]
    DuplicateTool {
        /// The member path of the repeat (`tools[2]`).
        path: String,
    },

    /// `input_schema` uses a JSON Schema construct outside the supported subset.
    #[error("input schema construct at {path} is not supported: {reason}")]
    InputSchemaUnsupported {
        /// The keyword's path (`input_schema.properties.text.pattern`).
        path: String,
        /// What is not supported.
        reason: &'static str,
    },

    /// `input_schema` uses a supported keyword with a value JSON Schema does
    /// not allow or that can never hold (`maxLength: -1`, `minimum` above
    /// `maximum`, an `enum` value of another type).
    #[error("input schema keyword at {path} is invalid: {reason}")]
    InputSchemaInvalid {
        /// The keyword's path.
        path: String,
        /// The rule broken.
        reason: &'static str,
    },
}

impl BundleError {
    /// The stable machine reason, snake_case (`bundle_not_canonical`, `version_invalid`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidJson { .. } => "bundle_invalid_json",
            Self::DuplicateKey { .. } => "bundle_duplicate_key",
            Self::NumberOutOfRange { .. } => "bundle_number_out_of_range",
            Self::NotCanonical => "bundle_not_canonical",
            Self::MissingField { .. } => "bundle_missing_field",
            Self::UnknownField { .. } => "bundle_unknown_field",
            Self::WrongType { .. } => "bundle_wrong_type",
            Self::InvalidValue { .. } => "bundle_invalid_value",
            Self::VersionInvalid { .. } => "version_invalid",
            Self::DuplicateTool { .. } => "bundle_duplicate_tool",
            Self::InputSchemaUnsupported { .. } => "input_schema_unsupported",
            Self::InputSchemaInvalid { .. } => "input_schema_invalid",
        }
    }

    /// The member path the refusal names, when it names one.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::InvalidJson { .. } | Self::DuplicateKey { .. } | Self::NotCanonical => None,
            Self::NumberOutOfRange { at: path }
            | Self::MissingField { path }
            | Self::UnknownField { path }
            | Self::WrongType { path, .. }
            | Self::InvalidValue { path, .. }
            | Self::VersionInvalid { path, .. }
            | Self::DuplicateTool { path }
            | Self::InputSchemaUnsupported { path, .. }
            | Self::InputSchemaInvalid { path, .. } => Some(path),
        }
    }
}

/// Why an attestation was refused, or could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The envelope's `payload` or a `sig` is not base64 (standard or URL-safe, padded or not).
    #[error("attestation envelope member {member:?} is not base64")]
    MalformedBase64 {
        /// The member (`payload` or `sig`).
        member: &'static str,
    },

    /// The envelope is not the JSON shape DSSE defines (see the source).
    #[error("attestation envelope is malformed")]
    EnvelopeInvalid {
        /// The DSSE parser's reason.
        #[source]
        source: SignError,
    },

    /// A threshold of zero, which every envelope would meet.
    #[error("attestation threshold must be at least 1")]
    ThresholdInvalid,

    /// The envelope's `payloadType` is not the in-toto type.
    #[error("attestation payload type is not application/vnd.in-toto+json")]
    PayloadType,

    /// No signature names a registered key (or the envelope has no signature).
    #[error("no attestation signature names a registered publisher key")]
    KeyUnknown,

    /// The threshold is missed because signatures of retired keys do not count.
    #[error("attestation signed by a publisher key retired at the time of submission")]
    KeyRetired,

    /// No signature verified: the only signatures naming registered keys do
    /// not verify over the PAE of the payload as sent (a signature over
    /// another payload ends here).
    #[error("attestation signature does not verify")]
    SignatureInvalid {
        /// The strict verifier's reason for the first signature that failed.
        #[source]
        source: SignError,
    },

    /// Some signatures verified, but fewer distinct keys than the threshold.
    #[error("attestation has {valid} valid signatures of distinct keys, {threshold} required")]
    BelowThreshold {
        /// Distinct registered, active keys whose signature verified.
        valid: usize,
        /// The publisher's threshold.
        threshold: usize,
    },

    /// The payload is not an in-toto Statement of the expected shape.
    #[error("attestation statement is malformed: {reason}")]
    Malformed {
        /// What was wrong (names the member, never quotes it).
        reason: &'static str,
    },

    /// The statement's `_type` is not `https://in-toto.io/Statement/v1`.
    #[error("attestation statement _type is not https://in-toto.io/Statement/v1")]
    StatementType,

    /// The statement's `predicateType` is not one the verifier allows.
    #[error("attestation predicate type is not allowed")]
    PredicateType,

    /// No subject of the statement carries the bundle's SHA-256.
    #[error("no attestation subject has the bundle's sha-256 digest")]
    SubjectMismatch,

    /// `attest` was given no signer.
    #[error("an attestation needs at least one signer")]
    NoSigner,

    /// `attest` was given a predicate that is not a JSON object, an empty
    /// predicate type, or a predicate too deeply nested to canonicalise.
    #[error("attestation predicate is invalid: {reason}")]
    PredicateInvalid {
        /// What was wrong.
        reason: &'static str,
    },
}

impl AttestError {
    /// The stable machine reason, snake_case (`attestation_below_threshold`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedBase64 { .. } => "attestation_malformed_base64",
            Self::EnvelopeInvalid { .. } => "attestation_envelope_invalid",
            Self::ThresholdInvalid => "attestation_threshold_invalid",
            Self::PayloadType => "attestation_payload_type",
            Self::KeyUnknown => "attestation_key_unknown",
            Self::KeyRetired => "attestation_key_retired",
            Self::SignatureInvalid { .. } => "attestation_signature_invalid",
            Self::BelowThreshold { .. } => "attestation_below_threshold",
            Self::Malformed { .. } => "attestation_malformed",
            Self::StatementType => "attestation_statement_type",
            Self::PredicateType => "attestation_predicate_type",
            Self::SubjectMismatch => "attestation_subject_mismatch",
            Self::NoSigner => "attestation_no_signer",
            Self::PredicateInvalid { .. } => "attestation_predicate_invalid",
        }
    }
}

/// Why a run input does not match a capsule's input schema; the path names
/// the field from the root `input` (`input.options.level`, `input.tags[2]`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A property listed in `required` is absent.
    #[error("{path} is required")]
    Missing {
        /// The missing field's path.
        path: String,
    },

    /// A value of another JSON type than the schema's `type`.
    #[error("{path} must be {expected}")]
    WrongType {
        /// The field's path.
        path: String,
        /// The type required (`a string`, `an integer`, ...).
        expected: &'static str,
    },

    /// A property the schema does not list, where `additionalProperties` is `false`.
    #[error("{path} is not an allowed field")]
    UnknownField {
        /// The field's path.
        path: String,
    },

    /// A string longer than `maxLength` (counted in Unicode code points, as JSON Schema does).
    #[error("{path} is longer than {max_length} characters")]
    TooLong {
        /// The field's path.
        path: String,
        /// The schema's `maxLength`.
        max_length: u64,
    },

    /// A value that is none of the schema's `enum` values.
    #[error("{path} is not one of the allowed values")]
    NotInEnum {
        /// The field's path.
        path: String,
    },

    /// A number below `minimum`.
    #[error("{path} is below the minimum {minimum}")]
    BelowMinimum {
        /// The field's path.
        path: String,
        /// The schema's `minimum`.
        minimum: f64,
    },

    /// A number above `maximum`.
    #[error("{path} is above the maximum {maximum}")]
    AboveMaximum {
        /// The field's path.
        path: String,
        /// The schema's `maximum`.
        maximum: f64,
    },
}

impl InputError {
    /// The stable machine reason, snake_case (`input_missing_field`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "input_missing_field",
            Self::WrongType { .. } => "input_wrong_type",
            Self::UnknownField { .. } => "input_unknown_field",
            Self::TooLong { .. } => "input_too_long",
            Self::NotInEnum { .. } => "input_not_in_enum",
            Self::BelowMinimum { .. } => "input_below_minimum",
            Self::AboveMaximum { .. } => "input_above_maximum",
        }
    }

    /// The path of the field at fault (`input.options.level`).
    pub fn path(&self) -> &str {
        match self {
            Self::Missing { path }
            | Self::WrongType { path, .. }
            | Self::UnknownField { path }
            | Self::TooLong { path, .. }
            | Self::NotInEnum { path }
            | Self::BelowMinimum { path, .. }
            | Self::AboveMaximum { path, .. } => path,
        }
    }
}
