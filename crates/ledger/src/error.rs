//! The one error type of `soma-ledger`.

use crate::hash::Hash;

/// Everything the ledger core can refuse.
///
/// Each variant names one reason, so callers (and tests) can tell a proof of
/// the wrong length from a proof that hashes to the wrong root, or a note with
/// a forged signature from a note that is merely malformed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A hash was not exactly 32 bytes long.
    #[error("hash is {len} bytes long, expected 32")]
    InvalidHashLength {
        /// The length that was supplied.
        len: usize,
    },

    /// A field was not canonical standard base64 (RFC 4648 §4, padded).
    #[error("{field} is not canonical standard base64")]
    InvalidBase64 {
        /// Which field failed to decode.
        field: &'static str,
        /// The decoder's reason.
        #[source]
        source: base64::DecodeError,
    },

    /// A hash was not 64 lowercase or uppercase hexadecimal digits.
    #[error("hash is not 64 hexadecimal digits")]
    InvalidHex,

    /// A leaf index was not smaller than the tree size.
    #[error("leaf index {index} is out of range for tree size {tree_size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size it was checked against.
        tree_size: u64,
    },

    /// A proof was asked for a tree larger than the leaves supplied.
    #[error("tree size {tree_size} exceeds the {available} leaves supplied")]
    TreeSizeExceedsLeaves {
        /// The tree size asked for.
        tree_size: u64,
        /// How many leaf hashes were supplied.
        available: u64,
    },

    /// A consistency proof was asked between a larger and a smaller tree.
    #[error("first tree size {size1} is larger than second tree size {size2}")]
    SizesOutOfOrder {
        /// The first (older) tree size.
        size1: u64,
        /// The second (newer) tree size.
        size2: u64,
    },

    /// A consistency proof from the empty tree was asked for or offered.
    ///
    /// Every tree is consistent with the empty tree, so such a proof proves
    /// nothing; like transparency-dev/merkle, it is refused rather than
    /// accepted vacuously.
    #[error("a consistency proof from the empty tree is meaningless")]
    ConsistencyFromEmptyTree,

    /// A proof did not have the number of hashes its sizes require.
    #[error("proof has {got} hashes, expected {want}")]
    WrongProofLength {
        /// The number of hashes in the proof.
        got: usize,
        /// The number the tree sizes and index require.
        want: usize,
    },

    /// A proof was well formed but led to a different root.
    #[error("computed root {computed} does not match expected root {expected}")]
    RootMismatch {
        /// The root the caller expected.
        expected: Hash,
        /// The root the proof leads to.
        computed: Hash,
    },

    /// A compact tree already holds 2^64 - 1 leaves.
    #[error("tree is full")]
    TreeFull,

    /// A compact-tree frontier did not have one hash per set bit of its size.
    #[error("a tree of size {size} needs {want} frontier hashes, got {got}")]
    InvalidFrontier {
        /// The tree size.
        size: u64,
        /// The number of hashes supplied.
        got: usize,
        /// The number of hashes the size requires.
        want: usize,
    },

    /// A note was longer than the verifier accepts.
    #[error("note is {len} bytes long, the limit is {max}")]
    NoteTooLarge {
        /// The note length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A note contained an ASCII control character other than newline.
    #[error("note contains a control character at byte {offset}")]
    NoteControlCharacter {
        /// The byte offset of the character.
        offset: usize,
    },

    /// A note did not end with a newline.
    #[error("note does not end with a newline")]
    NoteMissingTrailingNewline,

    /// A note had no blank line separating its text from its signatures.
    #[error("note has no blank line before its signatures")]
    NoteMissingBlankLine,

    /// A note had no signature lines after its blank line.
    #[error("note has no signature lines")]
    NoteNoSignatures,

    /// A note carried more signature lines than the verifier accepts.
    #[error("note has more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },

    /// A signature line was not `— <key name> <base64>`.
    #[error("signature line {line} is malformed")]
    MalformedSignatureLine {
        /// The 1-based line number within the signature block.
        line: usize,
    },

    /// A decoded signature was too short to hold a key ID and a signature.
    #[error("signature line {line} decodes to {len} bytes, fewer than a key id and a signature")]
    SignatureTooShort {
        /// The 1-based line number within the signature block.
        line: usize,
        /// The decoded length.
        len: usize,
    },

    /// A key name was empty or contained a space or `+`.
    #[error("key name is empty or contains a space or '+'")]
    InvalidKeyName,

    /// The note carries signatures under the verifier's key name, but none
    /// with the verifier's key ID.
    #[error("no signature by key {name} carries the expected key id")]
    KeyIdMismatch {
        /// The key name the verifier trusts.
        name: String,
    },

    /// The note carries no signature under the verifier's key name.
    #[error("note is not signed by key {name}")]
    NoSignatureFromKey {
        /// The key name the verifier trusts.
        name: String,
    },

    /// A signature by the trusted key name and key ID failed to verify.
    #[error("signature by key {name} does not verify")]
    BadSignature {
        /// The key name the verifier trusts.
        name: String,
    },

    /// A checkpoint body had fewer than its three mandatory lines.
    #[error("checkpoint body has {lines} lines, at least 3 are required")]
    CheckpointTooShort {
        /// The number of lines found.
        lines: usize,
    },

    /// A checkpoint body line (origin, size, root or extension) was empty.
    #[error("checkpoint body line {line} is empty")]
    EmptyBodyLine {
        /// The 1-based line number within the body.
        line: usize,
    },

    /// An origin or extension line was empty or held a newline or control character.
    #[error("checkpoint {field} is empty or contains a control character")]
    InvalidBodyLine {
        /// Which field (`origin` or `extension`).
        field: &'static str,
    },

    /// A tree size was not the canonical ASCII decimal form.
    #[error("tree size is not canonical decimal (digits only, no leading zero)")]
    NonCanonicalTreeSize,

    /// A tree size did not fit in 64 bits.
    #[error("tree size does not fit in 64 bits")]
    TreeSizeOutOfRange,

    /// A verified checkpoint names another log than the one expected.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    UnexpectedOrigin {
        /// The origin the verifier expects.
        expected: String,
        /// The origin in the note.
        found: String,
    },

    /// A private key was not a valid Ed25519 PKCS#8 document.
    #[error("invalid Ed25519 PKCS#8 private key: {reason}")]
    InvalidPrivateKey {
        /// ring's reason.
        reason: String,
    },

    /// A PEM document had no `PRIVATE KEY` block.
    #[error("no PEM \"PRIVATE KEY\" block found")]
    InvalidPem,

    /// A public key was not 32 bytes long.
    #[error("Ed25519 public key is {len} bytes long, expected 32")]
    InvalidPublicKey {
        /// The length that was supplied.
        len: usize,
    },

    /// A newer checkpoint has a smaller tree than an older one.
    #[error("checkpoint tree size went back from {previous} to {next}")]
    CheckpointSizeDecreased {
        /// The earlier tree size.
        previous: u64,
        /// The later, smaller tree size.
        next: u64,
    },

    /// Two checkpoints of the same size have different roots: the log forked.
    #[error("two checkpoints of tree size {tree_size} have different roots")]
    CheckpointForked {
        /// The shared tree size.
        tree_size: u64,
    },

    /// Two checkpoints compared for monotonicity belong to different logs.
    #[error("checkpoints belong to different origins {previous:?} and {next:?}")]
    OriginChanged {
        /// The earlier origin.
        previous: String,
        /// The later origin.
        next: String,
    },
}
