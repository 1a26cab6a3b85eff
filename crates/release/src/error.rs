//! The one error type of `soma-release`.

use soma_sign::SignError;

/// Why a manifest, a version, a module or a publication was refused.
///
/// Each variant has a stable snake_case machine reason ([`ReleaseError::reason`])
/// for clients and metrics, and a lowercase message naming the member path
/// (`limits.fuel`) where there is one. Messages never quote a secret and never
/// echo more of the input than a member name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    // ---- the manifest's JSON ----
    /// The manifest is not JSON (syntax, invalid UTF-8, `NaN`, nesting), see the source.
    #[error("manifest is not valid json")]
    ManifestInvalidJson {
        /// The strict parser's reason.
        #[source]
        source: SignError,
    },

    /// An object of the manifest carries the same member name twice.
    #[error("manifest has a duplicate member {key:?}")]
    ManifestDuplicateKey {
        /// The repeated member name.
        key: String,
    },

    /// A `\uD800`..`\uDFFF` escape that is not part of a surrogate pair.
    #[error("manifest has a lone surrogate escape at byte {offset}")]
    ManifestLoneSurrogate {
        /// Byte offset of the escape.
        offset: usize,
    },

    /// A number whose magnitude is 2^53 or more (integers beyond 2^53 − 1 are
    /// not exact in IEEE-754 doubles, so two readers could disagree on them), or
    /// that overflows a double altogether.
    #[error("manifest number at {at} is out of range (integers are within 0..=2^53-1)")]
    ManifestNumberOutOfRange {
        /// The member path (`limits.fuel`), or `byte N` when the parser refused it.
        at: String,
    },

    /// The manifest parses but is not byte for byte its RFC 8785 canonical form.
    #[error("manifest is not in rfc 8785 canonical form")]
    ManifestNotCanonical,

    /// A required member is absent.
    #[error("manifest member {path} is missing")]
    ManifestMissingField {
        /// The member path.
        path: &'static str,
    },

    /// A member the manifest format does not define.
    #[error("manifest member {path} is not a known field")]
    ManifestUnknownField {
        /// The member path.
        path: String,
    },

    /// A member of the wrong JSON type.
    #[error("manifest member {path} must be {expected}")]
    ManifestWrongType {
        /// The member path (`manifest` for the document itself).
        path: &'static str,
        /// The type required.
        expected: &'static str,
    },

    /// A member of the right type whose value is not allowed.
    #[error("manifest member {path} is invalid: {reason}")]
    ManifestInvalidValue {
        /// The member path.
        path: &'static str,
        /// The rule broken.
        reason: &'static str,
    },

    /// `version` is not SemVer 2.0.0 text.
    #[error("version is not semver 2.0.0: {reason}")]
    VersionInvalid {
        /// The rule broken.
        reason: &'static str,
    },

    /// `tool` is not a tool name (1–64 characters of `[a-z0-9][a-z0-9._-]*`).
    #[error("tool is not a valid tool name: {reason}")]
    ToolInvalid {
        /// The rule broken.
        reason: &'static str,
    },

    // ---- the module ----
    /// The module's length is not the manifest's `module_size`.
    #[error("module is {actual} bytes, the manifest's module_size is {expected}")]
    ModuleSizeMismatch {
        /// `module_size` from the manifest.
        expected: u64,
        /// The module's length.
        actual: u64,
    },

    /// The module's SHA-256 is not the manifest's `module_sha256`.
    #[error("module sha-256 does not match the manifest's module_sha256")]
    ModuleDigestMismatch,

    // ---- the publisher's envelope ----
    /// The DSSE envelope's `payloadType` is not [`PAYLOAD_TYPE`](crate::PAYLOAD_TYPE).
    #[error("envelope payload type is not the release manifest type")]
    EnvelopePayloadType,

    /// The DSSE envelope does not carry exactly one signature.
    #[error("envelope carries {count} signatures, exactly one is required")]
    EnvelopeSignatureCount {
        /// How many it carries.
        count: usize,
    },

    /// The envelope's `keyid` is not the publisher key's id, or the publisher
    /// key's id is not the digest of its public key.
    #[error("envelope keyid does not name the publisher key")]
    PublisherUnknown,

    /// The publisher key was retired at or before the time of publication.
    #[error("publisher key is retired")]
    PublisherRetired,

    /// The publisher's Ed25519 signature over the PAE does not verify.
    #[error("publisher signature does not verify")]
    SignatureInvalid {
        /// The strict verifier's reason.
        #[source]
        source: SignError,
    },

    /// The PKCS#8 PEM given to sign with is not an Ed25519 private key.
    #[error("signing key is not an ed25519 pkcs#8 private key")]
    SigningKeyInvalid {
        /// The loader's reason.
        #[source]
        source: SignError,
    },
}

impl ReleaseError {
    /// The stable machine reason, snake_case (`manifest_not_canonical`, `version_invalid`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ManifestInvalidJson { .. } => "manifest_invalid_json",
            Self::ManifestDuplicateKey { .. } => "manifest_duplicate_key",
            Self::ManifestLoneSurrogate { .. } => "manifest_lone_surrogate",
            Self::ManifestNumberOutOfRange { .. } => "manifest_number_out_of_range",
            Self::ManifestNotCanonical => "manifest_not_canonical",
            Self::ManifestMissingField { .. } => "manifest_missing_field",
            Self::ManifestUnknownField { .. } => "manifest_unknown_field",
            Self::ManifestWrongType { .. } => "manifest_wrong_type",
            Self::ManifestInvalidValue { .. } => "manifest_invalid_value",
            Self::VersionInvalid { .. } => "version_invalid",
            Self::ToolInvalid { .. } => "tool_invalid",
            Self::ModuleSizeMismatch { .. } => "module_size_mismatch",
            Self::ModuleDigestMismatch => "module_digest_mismatch",
            Self::EnvelopePayloadType => "envelope_payload_type",
            Self::EnvelopeSignatureCount { .. } => "envelope_signature_count",
            Self::PublisherUnknown => "publisher_unknown",
            Self::PublisherRetired => "publisher_retired",
            Self::SignatureInvalid { .. } => "signature_invalid",
            Self::SigningKeyInvalid { .. } => "signing_key_invalid",
        }
    }
}
