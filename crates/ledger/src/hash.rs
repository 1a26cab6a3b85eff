//! SHA-256 hashes and the RFC 9162 §2.1.1 domain-separated leaf and node hashes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::digest;

use crate::error::LedgerError;

/// Domain-separation prefix of a leaf hash (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// A SHA-256 output: a leaf hash, a node hash or a tree root.
///
/// `Display` and `Debug` print lowercase hex; checkpoints and the conformance
/// vectors use standard base64 ([`Hash::to_base64`], [`Hash::from_base64`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash([u8; 32]);

/// The root of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
pub const EMPTY_ROOT: Hash = Hash([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27,
    0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

impl Hash {
    /// The length of a hash in bytes.
    pub const LEN: usize = 32;

    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Copies a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, LedgerError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| LedgerError::InvalidHashLength { len: bytes.len() })
    }

    /// Decodes canonical standard base64 (padded) holding exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, LedgerError> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|source| LedgerError::InvalidBase64 {
                field: "hash",
                source,
            })?;
        Self::from_slice(&bytes)
    }

    /// Decodes 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<Self, LedgerError> {
        let digits = text.as_bytes();
        if digits.len() != 64 {
            return Err(LedgerError::InvalidHex);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let high = hex_value(pair[0]).ok_or(LedgerError::InvalidHex)?;
            let low = hex_value(pair[1]).ok_or(LedgerError::InvalidHex)?;
            *byte = (high << 4) | low;
        }
        Ok(Self(out))
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Standard base64 with padding, as used in checkpoints.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({self})")
    }
}

impl From<[u8; 32]> for Hash {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The hash of a leaf: SHA-256(0x00 ‖ data) (RFC 9162 §2.1.1).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[LEAF_PREFIX]);
    ctx.update(data);
    finish(ctx)
}

/// The hash of an interior node: SHA-256(0x01 ‖ left ‖ right) (RFC 9162 §2.1.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[NODE_PREFIX]);
    ctx.update(&left.0);
    ctx.update(&right.0);
    finish(ctx)
}

/// SHA-256 of arbitrary bytes (used for key IDs and by tests of [`EMPTY_ROOT`]).
pub(crate) fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    finish(ctx)
}

fn finish(ctx: digest::Context) -> Hash {
    let mut out = [0u8; 32];
    // SHA-256 always yields 32 bytes, so the copy lengths match.
    out.copy_from_slice(ctx.finish().as_ref());
    Hash(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(EMPTY_ROOT, sha256(&[]));
        assert_eq!(
            EMPTY_ROOT.to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn leaf_and_node_hashes_are_domain_separated() {
        // RFC 6962 test leaf: the hash of the empty leaf.
        assert_eq!(
            leaf_hash(b"").to_string(),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let a = leaf_hash(b"a");
        assert_ne!(node_hash(&a, &a), sha256(&[a.as_bytes(), a.as_bytes()]));
        assert_eq!(node_hash(&a, &a), sha256(&[&[1], a.as_bytes(), a.as_bytes()]));
    }

    #[test]
    fn from_slice_requires_exactly_32_bytes() {
        for len in [0usize, 1, 31, 33, 64] {
            let err = Hash::from_slice(&vec![0u8; len]).unwrap_err();
            assert!(matches!(err, LedgerError::InvalidHashLength { len: l } if l == len));
        }
        assert_eq!(Hash::from_slice(&[7u8; 32]).unwrap(), Hash::from_bytes([7u8; 32]));
    }

    #[test]
    fn base64_and_hex_round_trip_and_reject() {
        let h = leaf_hash(b"x");
        assert_eq!(Hash::from_base64(&h.to_base64()).unwrap(), h);
        assert_eq!(Hash::from_hex(&h.to_string()).unwrap(), h);
        assert_eq!(Hash::from_hex(&h.to_string().to_uppercase()).unwrap(), h);
        assert!(matches!(
            Hash::from_base64("not base64!"),
            Err(LedgerError::InvalidBase64 { .. })
        ));
        // Unpadded form of a valid hash is not canonical.
        let unpadded = h.to_base64().trim_end_matches('=').to_owned();
        assert!(matches!(
            Hash::from_base64(&unpadded),
            Err(LedgerError::InvalidBase64 { .. })
        ));
        assert!(matches!(
            Hash::from_base64("AAAA"),
            Err(LedgerError::InvalidHashLength { len: 3 })
        ));
        assert!(matches!(Hash::from_hex("zz"), Err(LedgerError::InvalidHex)));
        assert!(matches!(
            Hash::from_hex(&"g".repeat(64)),
            Err(LedgerError::InvalidHex)
        ));
    }
}
