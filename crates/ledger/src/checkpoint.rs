//! Signed tree heads as checkpoints: the C2SP `tlog-checkpoint` body inside a
//! C2SP `signed-note`, signed with Ed25519 (signature type 0x01).
//!
//! ```text
//! <origin>
//! <tree size, ASCII decimal>
//! <root hash, standard base64>
//! [extension lines]
//!
//! — <key name> <base64(key ID ‖ Ed25519 signature)>
//! ```
//!
//! The key ID is the first four bytes of SHA-256(key name ‖ 0x0A ‖ 0x01 ‖
//! 32-byte public key). A verifier trusts exactly one (name, key) pair: it
//! ignores signature lines by other keys, as the note format requires
//! (witness cosignatures, rotated keys), but refuses the note unless a
//! signature by its key is present and every such signature verifies.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::error::LedgerError;
use crate::hash::{Hash, sha256};

/// The largest note [`CheckpointVerifier::verify`] accepts, in bytes.
pub const MAX_NOTE_LEN: usize = 256 * 1024;

/// The most signature lines [`CheckpointVerifier::verify`] accepts (the
/// signed-note format requires accepting at least 16).
pub const MAX_SIGNATURES: usize = 64;

/// The prefix of every signature line: em dash (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// The signed-note signature type byte of Ed25519.
const ED25519_SIGNATURE_TYPE: u8 = 0x01;

/// An Ed25519 signature is 64 bytes.
const ED25519_SIGNATURE_LEN: usize = 64;

/// A signed-note key ID is 4 bytes.
const KEY_ID_LEN: usize = 4;

/// A tree head: which log (`origin`), how many leaves, and the root hash.
///
/// Constructed through [`Checkpoint::new`] or parsed from a verified note, so
/// every value formats into a body that parses back to itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    origin: String,
    tree_size: u64,
    root: Hash,
    extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines. The origin must be non-empty and
    /// free of newlines and other control characters.
    pub fn new(origin: impl Into<String>, tree_size: u64, root: Hash) -> Result<Self, LedgerError> {
        let origin = origin.into();
        if !is_valid_line(&origin) {
            return Err(LedgerError::InvalidBodyLine { field: "origin" });
        }
        Ok(Self {
            origin,
            tree_size,
            root,
            extensions: Vec::new(),
        })
    }

    /// Adds extension lines (opaque, each non-empty and free of control characters).
    pub fn with_extensions(mut self, extensions: Vec<String>) -> Result<Self, LedgerError> {
        if !extensions.iter().all(|line| is_valid_line(line)) {
            return Err(LedgerError::InvalidBodyLine { field: "extension" });
        }
        self.extensions = extensions;
        Ok(self)
    }

    /// Parses a checkpoint body strictly: at least three non-empty lines, each
    /// ending in a newline; a canonical decimal size (no sign, no leading
    /// zero unless the size is `0`); a canonical base64 root of 32 bytes; any
    /// further lines are extension lines.
    ///
    /// This does not check any signature: use [`CheckpointVerifier::verify`]
    /// on untrusted input.
    pub fn parse_body(text: &str) -> Result<Self, LedgerError> {
        let Some(body) = text.strip_suffix('\n') else {
            return Err(LedgerError::NoteMissingTrailingNewline);
        };
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() < 3 {
            return Err(LedgerError::CheckpointTooShort { lines: lines.len() });
        }
        if let Some(empty) = lines.iter().position(|line| line.is_empty()) {
            return Err(LedgerError::EmptyBodyLine { line: empty + 1 });
        }
        let tree_size = parse_tree_size(lines[1])?;
        let root_bytes = STANDARD
            .decode(lines[2])
            .map_err(|source| LedgerError::InvalidBase64 {
                field: "root hash",
                source,
            })?;
        let root = Hash::from_slice(&root_bytes)?;
        Self::new(lines[0], tree_size, root)?
            .with_extensions(lines[3..].iter().map(|line| (*line).to_owned()).collect())
    }

    /// The log identity.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of leaves.
    pub fn tree_size(&self) -> u64 {
        self.tree_size
    }

    /// The root hash of the tree of `tree_size` leaves.
    pub fn root(&self) -> &Hash {
        &self.root
    }

    /// Extension lines after the root, in order (usually none).
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The note text: `<origin>\n<size>\n<base64 root>\n` and one line per extension.
    pub fn to_body(&self) -> String {
        let mut body = format!("{}\n{}\n{}\n", self.origin, self.tree_size, self.root.to_base64());
        for line in &self.extensions {
            body.push_str(line);
            body.push('\n');
        }
        body
    }
}

/// Signs checkpoints with an Ed25519 key.
pub struct CheckpointSigner {
    name: String,
    key_pair: Ed25519KeyPair,
    key_id: [u8; KEY_ID_LEN],
}

impl CheckpointSigner {
    /// A signer from an unencrypted PKCS#8 (v1 or v2) Ed25519 private key in
    /// DER. `name` is the signed-note key name, usually the log's origin; it
    /// must be non-empty and contain no space or `+`.
    pub fn from_pkcs8_der(name: impl Into<String>, der: &[u8]) -> Result<Self, LedgerError> {
        let name = name.into();
        if !is_valid_key_name(&name) {
            return Err(LedgerError::InvalidKeyName);
        }
        // `maybe_unchecked` accepts v1 documents (what `openssl genpkey`
        // writes); a v2 document's public key is still checked against the seed.
        let key_pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| LedgerError::InvalidPrivateKey {
                reason: e.to_string(),
            })?;
        let key_id = key_id(&name, key_pair.public_key().as_ref());
        Ok(Self {
            name,
            key_pair,
            key_id,
        })
    }

    /// A signer from a PEM `PRIVATE KEY` block holding PKCS#8 DER.
    pub fn from_pkcs8_pem(name: impl Into<String>, pem: &str) -> Result<Self, LedgerError> {
        let der = pem_private_key(pem)?;
        Self::from_pkcs8_der(name, &der)
    }

    /// The key name written on signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key ID of this key.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // ring's Ed25519 public keys are always 32 bytes.
        out.copy_from_slice(self.key_pair.public_key().as_ref());
        out
    }

    /// The verifier for this signer's key, expecting checkpoints whose origin
    /// is the key name.
    pub fn verifier(&self) -> CheckpointVerifier {
        CheckpointVerifier {
            name: self.name.clone(),
            public_key: self.public_key(),
            key_id: self.key_id,
            origin: self.name.clone(),
        }
    }

    /// The complete signed note for `checkpoint`: body, blank line, one signature line.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.to_body();
        let signature = self.key_pair.sign(body.as_bytes());
        signed_note(&self.name, self.key_id, &body, signature.as_ref())
    }

    /// The complete signed note for `checkpoint` carrying `signature`, a
    /// pure Ed25519 signature over exactly `checkpoint.to_body()` made
    /// elsewhere with this signer's key: for a signer whose nonce was drawn
    /// ahead of time (RFC 8032 verification never asks how the nonce was
    /// chosen). A signature of another key or body gives a note that no
    /// verifier of this key accepts; nothing here checks it.
    pub fn note(&self, checkpoint: &Checkpoint, signature: &[u8; ED25519_SIGNATURE_LEN]) -> String {
        signed_note(&self.name, self.key_id, &checkpoint.to_body(), signature)
    }
}

/// A signed note: `body`, a blank line, one signature line of key `name`.
fn signed_note(name: &str, key_id: [u8; KEY_ID_LEN], body: &str, signature: &[u8]) -> String {
    let mut payload = Vec::with_capacity(KEY_ID_LEN + ED25519_SIGNATURE_LEN);
    payload.extend_from_slice(&key_id);
    payload.extend_from_slice(signature);
    format!("{body}\n{SIGNATURE_PREFIX}{name} {}\n", STANDARD.encode(payload))
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The private key is never printed.
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Verifies checkpoint notes against one trusted (key name, Ed25519 key).
///
/// Signatures are checked with ring's `UnparsedPublicKey` and `ED25519`. In
/// ring 0.17 that check rejects a scalar `S >= ℓ` (so a signature cannot be
/// altered into another valid one), rejects a public key that does not decode
/// to a curve point, and compares `R` by re-encoding the computed point (so a
/// non-canonically encoded `R` fails). It uses the cofactorless equation and
/// does **not** reject small-order public keys or small-order `R`, nor a
/// public key whose y coordinate is encoded non-canonically. The public key
/// comes from configuration, never from the note, so such a key can only be
/// a misconfiguration; strict (small-order-rejecting) verification is a later
/// concern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointVerifier {
    name: String,
    public_key: [u8; 32],
    key_id: [u8; KEY_ID_LEN],
    origin: String,
}

impl CheckpointVerifier {
    /// A verifier for the key `name` with the 32-byte Ed25519 `public_key`.
    /// It expects the checkpoint origin to equal `name`; see
    /// [`CheckpointVerifier::with_origin`] otherwise.
    pub fn new(name: impl Into<String>, public_key: &[u8]) -> Result<Self, LedgerError> {
        let name = name.into();
        if !is_valid_key_name(&name) {
            return Err(LedgerError::InvalidKeyName);
        }
        let public_key = <[u8; 32]>::try_from(public_key).map_err(|_| LedgerError::InvalidPublicKey {
            len: public_key.len(),
        })?;
        let key_id = key_id(&name, &public_key);
        Ok(Self {
            origin: name.clone(),
            name,
            public_key,
            key_id,
        })
    }

    /// Expects checkpoints of `origin` instead of the key name.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// The trusted key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key ID of the trusted key.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The origin a checkpoint must carry.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Verifies a complete signed note and returns its checkpoint.
    ///
    /// In order: the note's size and characters, its framing (text, the last
    /// blank line, well-formed signature lines), then the signature by the
    /// trusted key, and only then the checkpoint body and its origin — the
    /// body of an unverified note is never interpreted.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, LedgerError> {
        if note.len() > MAX_NOTE_LEN {
            return Err(LedgerError::NoteTooLarge {
                len: note.len(),
                max: MAX_NOTE_LEN,
            });
        }
        if let Some(offset) = note.bytes().position(|b| b < 0x20 && b != b'\n') {
            return Err(LedgerError::NoteControlCharacter { offset });
        }
        if !note.ends_with('\n') {
            return Err(LedgerError::NoteMissingTrailingNewline);
        }
        // The text ends at the last blank line; it keeps its final newline.
        let split = note.rfind("\n\n").ok_or(LedgerError::NoteMissingBlankLine)?;
        let text = &note[..=split];
        let signature_block = &note[split + 2..];
        let Some(signature_block) = signature_block.strip_suffix('\n') else {
            return Err(LedgerError::NoteNoSignatures);
        };

        let mut saw_name = false;
        let mut ours = Vec::new();
        for (i, line) in signature_block.split('\n').enumerate() {
            let number = i + 1;
            if number > MAX_SIGNATURES {
                return Err(LedgerError::TooManySignatures { max: MAX_SIGNATURES });
            }
            let (name, payload) = parse_signature_line(line, number)?;
            if name != self.name {
                continue;
            }
            saw_name = true;
            if payload[..KEY_ID_LEN] == self.key_id {
                ours.push(payload);
            }
        }
        if ours.is_empty() {
            let name = self.name.clone();
            return Err(if saw_name {
                LedgerError::KeyIdMismatch { name }
            } else {
                LedgerError::NoSignatureFromKey { name }
            });
        }
        let key = UnparsedPublicKey::new(&ED25519, &self.public_key);
        for payload in &ours {
            key.verify(text.as_bytes(), &payload[KEY_ID_LEN..])
                .map_err(|_| LedgerError::BadSignature {
                    name: self.name.clone(),
                })?;
        }

        let checkpoint = Checkpoint::parse_body(text)?;
        if checkpoint.origin != self.origin {
            return Err(LedgerError::UnexpectedOrigin {
                expected: self.origin.clone(),
                found: checkpoint.origin,
            });
        }
        Ok(checkpoint)
    }
}

/// Refuses a `next` checkpoint that cannot follow `previous` from the same
/// log: another origin, a smaller tree, or the same size with another root
/// (a fork). Equal checkpoints and larger trees are accepted; whether a
/// larger tree extends the smaller one is for [`crate::verify_consistency`].
pub fn check_monotonic(previous: &Checkpoint, next: &Checkpoint) -> Result<(), LedgerError> {
    if previous.origin != next.origin {
        return Err(LedgerError::OriginChanged {
            previous: previous.origin.clone(),
            next: next.origin.clone(),
        });
    }
    if next.tree_size < previous.tree_size {
        return Err(LedgerError::CheckpointSizeDecreased {
            previous: previous.tree_size,
            next: next.tree_size,
        });
    }
    if next.tree_size == previous.tree_size && next.root != previous.root {
        return Err(LedgerError::CheckpointForked {
            tree_size: next.tree_size,
        });
    }
    Ok(())
}

/// `— <name> <base64>` → (name, decoded payload of at least key ID + 1 byte).
fn parse_signature_line(line: &str, number: usize) -> Result<(&str, Vec<u8>), LedgerError> {
    let malformed = LedgerError::MalformedSignatureLine { line: number };
    let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or(malformed)?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or(LedgerError::MalformedSignatureLine { line: number })?;
    if !is_valid_key_name(name) {
        return Err(LedgerError::MalformedSignatureLine { line: number });
    }
    let payload = STANDARD
        .decode(encoded)
        .map_err(|source| LedgerError::InvalidBase64 {
            field: "signature",
            source,
        })?;
    if payload.len() <= KEY_ID_LEN {
        return Err(LedgerError::SignatureTooShort {
            line: number,
            len: payload.len(),
        });
    }
    Ok((name, payload))
}

/// The canonical decimal form: digits only, no leading zero unless the value is 0.
fn parse_tree_size(text: &str) -> Result<u64, LedgerError> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) || (bytes.len() > 1 && bytes[0] == b'0') {
        return Err(LedgerError::NonCanonicalTreeSize);
    }
    // Only overflow remains possible for a string of ASCII digits.
    text.parse::<u64>().map_err(|_| LedgerError::TreeSizeOutOfRange)
}

/// SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4].
fn key_id(name: &str, public_key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = sha256(&[name.as_bytes(), b"\n", &[ED25519_SIGNATURE_TYPE], public_key]);
    let mut out = [0u8; KEY_ID_LEN];
    out.copy_from_slice(&digest.as_bytes()[..KEY_ID_LEN]);
    out
}

/// Signed-note key names: non-empty, no Unicode space, no `+`, no control character.
fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// Checkpoint body lines: non-empty and free of control characters (newline included).
fn is_valid_line(line: &str) -> bool {
    !line.is_empty() && !line.chars().any(char::is_control)
}

/// The DER inside the first `-----BEGIN PRIVATE KEY-----` block.
fn pem_private_key(pem: &str) -> Result<Vec<u8>, LedgerError> {
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let start = pem.find(BEGIN).ok_or(LedgerError::InvalidPem)? + BEGIN.len();
    let len = pem[start..].find(END).ok_or(LedgerError::InvalidPem)?;
    let encoded: String = pem[start..start + len]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(encoded)
        .map_err(|source| LedgerError::InvalidBase64 {
            field: "PEM private key",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_size_parsing_is_canonical() {
        let ok = [
            ("0", 0u64),
            ("1", 1),
            ("10", 10),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, value) in ok {
            assert_eq!(parse_tree_size(text).unwrap(), value, "{text}");
        }
        for text in ["", "00", "01", "+1", "-1", " 1", "1 ", "1.0", "0x1", "１"] {
            assert!(
                matches!(parse_tree_size(text), Err(LedgerError::NonCanonicalTreeSize)),
                "{text:?}"
            );
        }
        assert!(matches!(
            parse_tree_size("18446744073709551616"),
            Err(LedgerError::TreeSizeOutOfRange)
        ));
    }

    #[test]
    fn key_names_follow_signed_note() {
        for name in ["example.com/log", "a", "é/ü"] {
            assert!(is_valid_key_name(name), "{name}");
        }
        for name in ["", "a b", "a+b", "a\u{a0}b", "a\tb", "a\u{2003}b"] {
            assert!(!is_valid_key_name(name), "{name:?}");
        }
    }
}
