//! The one error type of `soma-sign`.

use std::path::PathBuf;

/// Everything `soma-sign` can refuse.
///
/// Each variant names exactly one reason, so callers (and tests) can tell a
/// duplicate JSON key from a lone surrogate, a retired HMAC key from an unknown
/// one, or a small-order Ed25519 key from a signature that merely does not match.
/// No variant ever carries secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    // ---- RFC 8785 / I-JSON parsing ----
    /// The JSON text is not valid UTF-8.
    #[error("json text is not valid utf-8 (at byte {offset})")]
    InvalidUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },

    /// The JSON text ended in the middle of a value.
    #[error("json text ended unexpectedly")]
    UnexpectedEnd,

    /// A character that cannot start or continue the current JSON production.
    #[error("unexpected character {found:?} at byte {offset}")]
    UnexpectedCharacter {
        /// Byte offset of the character.
        offset: usize,
        /// The character found there.
        found: char,
    },

    /// Something other than whitespace followed the top-level value.
    #[error("trailing data after the json value at byte {offset}")]
    TrailingData {
        /// Byte offset of the first trailing character.
        offset: usize,
    },

    /// `NaN`, `Infinity` or `-Infinity` appeared where a value was expected.
    #[error("non-finite number literal at byte {offset}")]
    NonFiniteLiteral {
        /// Byte offset of the literal.
        offset: usize,
    },

    /// A number token that does not follow the JSON number grammar.
    #[error("malformed number at byte {offset}")]
    MalformedNumber {
        /// Byte offset where the number starts.
        offset: usize,
    },

    /// A number whose magnitude does not fit an IEEE-754 double (it would be infinite).
    #[error("number at byte {offset} is out of the ieee-754 double range")]
    NumberOutOfRange {
        /// Byte offset where the number starts.
        offset: usize,
    },

    /// A `serde_json::Value` held a number that is not a finite double.
    #[error("number is not a finite ieee-754 double")]
    NonFiniteNumber,

    /// An unescaped control character (U+0000..U+001F) inside a string.
    #[error("unescaped control character in string at byte {offset}")]
    ControlCharacterInString {
        /// Byte offset of the control character.
        offset: usize,
    },

    /// A backslash escape that JSON does not define, or a malformed `\u` escape.
    #[error("invalid escape sequence at byte {offset}")]
    InvalidEscape {
        /// Byte offset of the backslash.
        offset: usize,
    },

    /// A `\uD800`..`\uDFFF` escape that is not part of a surrogate pair.
    #[error("lone surrogate escape at byte {offset}")]
    LoneSurrogate {
        /// Byte offset of the backslash of the offending escape.
        offset: usize,
    },

    /// An object carried the same member name twice (after unescaping).
    #[error("duplicate object key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },

    /// Arrays and objects nested deeper than the parser allows.
    #[error("json nesting deeper than {limit} levels")]
    NestingTooDeep {
        /// The maximum depth.
        limit: usize,
    },

    // ---- HMAC keyrings ----
    /// The keyring file could not be read.
    #[error("cannot read hmac keyring {path}")]
    KeyringRead {
        /// The file that was read.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The keyring document is not valid JSON of the expected shape.
    #[error("hmac keyring is not a valid keyring document")]
    KeyringFormat {
        /// The JSON decoder's reason.
        #[source]
        source: serde_json::Error,
    },

    /// A key id is empty or contains a character outside `[A-Za-z0-9._-]`.
    #[error("invalid key id {id:?}: must be non-empty and use only [A-Za-z0-9._-]")]
    InvalidKeyId {
        /// The rejected id.
        id: String,
    },

    /// Two keys of one keyring share an id.
    #[error("duplicate key id {id:?} in hmac keyring")]
    DuplicateKeyId {
        /// The repeated id.
        id: String,
    },

    /// A secret is not canonical padded standard base64.
    #[error("secret of key {id:?} is not standard base64")]
    SecretNotBase64 {
        /// The key whose secret failed to decode (the decoder's reason is
        /// withheld because it may quote a byte of the secret).
        id: String,
    },

    /// A secret decodes to fewer than 32 bytes.
    #[error("secret of key {id:?} is {len} bytes, at least 32 are required")]
    SecretTooShort {
        /// The key with the short secret.
        id: String,
        /// Its decoded length.
        len: usize,
    },

    /// The keyring names a primary key that it does not contain.
    #[error("primary key {id:?} is not in the hmac keyring")]
    PrimaryMissing {
        /// The named primary.
        id: String,
    },

    /// The keyring's primary key is retired.
    #[error("primary key {id:?} is retired")]
    PrimaryRetired {
        /// The named primary.
        id: String,
    },

    /// A tag names a key id that the keyring does not hold.
    #[error("unknown key id {id:?}")]
    UnknownKeyId {
        /// The id presented.
        id: String,
    },

    /// A tag names a key that is retired and may no longer verify.
    #[error("key id {id:?} is retired")]
    RetiredKeyId {
        /// The id presented.
        id: String,
    },

    /// An HMAC-SHA256 tag that is not exactly 32 bytes (truncated tags are refused).
    #[error("hmac tag is {len} bytes, expected exactly 32")]
    TagLength {
        /// The length presented.
        len: usize,
    },

    /// The HMAC tag does not authenticate the message under the named key.
    #[error("hmac tag does not match")]
    TagMismatch,

    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,

    /// A keyring change that would retire the primary key (promote another key first).
    #[error("key id {id:?} is the primary and cannot be retired")]
    RetirePrimary {
        /// The primary's id.
        id: String,
    },

    // ---- Ed25519 ----
    /// PEM text is malformed (armour, line structure or base64 body).
    #[error("malformed pem: {reason}")]
    PemMalformed {
        /// What was wrong.
        reason: &'static str,
    },

    /// PEM text carries a different label than expected.
    #[error("pem label is {found:?}, expected {expected:?}")]
    PemLabel {
        /// The label required.
        expected: &'static str,
        /// The label found.
        found: String,
    },

    /// A SubjectPublicKeyInfo whose AlgorithmIdentifier is not exactly id-Ed25519 without parameters.
    #[error("subject public key info is not an ed25519 key (rfc 8410)")]
    SpkiNotEd25519,

    /// A SubjectPublicKeyInfo that is not the 44-byte DER encoding RFC 8410 defines.
    #[error("subject public key info is malformed ({len} bytes)")]
    SpkiMalformed {
        /// The DER length presented.
        len: usize,
    },

    /// A PKCS#8 document ring refuses as an Ed25519 private key.
    #[error("invalid ed25519 pkcs#8 private key: {reason}")]
    InvalidPrivateKey {
        /// ring's reason (its `KeyRejected` description).
        reason: String,
    },

    /// An Ed25519 public key that is not exactly 32 bytes.
    #[error("ed25519 public key is {len} bytes, expected 32")]
    PublicKeyLength {
        /// The length presented.
        len: usize,
    },

    /// An Ed25519 signature that is not exactly 64 bytes.
    #[error("ed25519 signature is {len} bytes, expected 64")]
    SignatureLength {
        /// The length presented.
        len: usize,
    },

    /// The public key bytes do not decode to a point of the curve.
    #[error("ed25519 public key is not a curve point")]
    PublicKeyNotOnCurve,

    /// The public key is a non-canonical encoding of its point (y ≥ p, or a sign bit on x = 0).
    #[error("ed25519 public key encoding is not canonical")]
    NonCanonicalPublicKey,

    /// The public key is a point of small order (a weak key that many signatures verify under).
    #[error("ed25519 public key has small order")]
    WeakPublicKey,

    /// The signature's R does not decode to a point of the curve.
    #[error("ed25519 signature r is not a curve point")]
    SignatureRNotOnCurve,

    /// The signature's R is a non-canonical point encoding.
    #[error("ed25519 signature r encoding is not canonical")]
    NonCanonicalR,

    /// The signature's R is a point of small order.
    #[error("ed25519 signature r has small order")]
    SmallOrderR,

    /// The signature's S is not reduced modulo the group order ℓ (S ≥ ℓ, malleable).
    #[error("ed25519 signature s is not reduced modulo the group order")]
    NonCanonicalS,

    /// The signature is well formed but does not verify.
    #[error("ed25519 signature does not verify")]
    SignatureMismatch,

    /// A streamed signature's replay of the message failed to read it.
    #[error("cannot replay the streamed message for its ed25519 signature")]
    StreamReplay {
        /// The replay's I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A streamed signature's replay of the message differs from the message
    /// first given; no signature is made (one nonce over two messages would
    /// reveal the key).
    #[error(
        "the replayed message ({replayed_len} bytes) differs from the streamed one ({expected_len} bytes)"
    )]
    StreamReplayMismatch {
        /// Length of the message of the first pass.
        expected_len: u64,
        /// Length of the replayed message.
        replayed_len: u64,
    },

    // ---- DSSE ----
    /// A DSSE envelope that is not the JSON shape envelope.md defines.
    #[error("dsse envelope is malformed: {reason}")]
    DsseEnvelopeFormat {
        /// What was wrong.
        reason: &'static str,
    },

    /// A DSSE envelope or signature member that the format does not define.
    #[error("dsse envelope has an unknown member {member:?}")]
    DsseUnknownMember {
        /// The member's name.
        member: String,
    },

    /// A required DSSE envelope member is absent.
    #[error("dsse envelope member {member:?} is missing")]
    DsseMissingMember {
        /// The member's name.
        member: &'static str,
    },

    /// A DSSE envelope member is not a json string.
    #[error("dsse envelope member {member:?} is not a string")]
    DsseMemberType {
        /// The member's name.
        member: &'static str,
    },

    /// A DSSE `payload` or `sig` that is not base64 (standard or url-safe, padded or not).
    #[error("dsse envelope member {member:?} is not base64")]
    DsseBase64 {
        /// The member's name.
        member: &'static str,
    },

    /// No signature of the envelope names the key id being verified.
    #[error("dsse envelope has no signature with keyid {keyid:?}")]
    DsseNoSignatureForKey {
        /// The key id looked for.
        keyid: String,
    },

    /// Several signatures of the envelope name the key id being verified.
    #[error("dsse envelope has several signatures with keyid {keyid:?}")]
    DsseAmbiguousKeyId {
        /// The repeated key id.
        keyid: String,
    },
}
