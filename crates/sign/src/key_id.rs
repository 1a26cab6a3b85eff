//! Key identifiers shared by the HMAC keyring and the Ed25519 signer.

use std::fmt;

use crate::error::SignError;

/// The name of one key: non-empty, only `[A-Za-z0-9._-]`.
///
/// The alphabet keeps ids safe to embed in headers, file names, JWS `kid`
/// values and log lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, SignError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(id))
        } else {
            Err(SignError::InvalidKeyId { id })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Sound because `KeyId`'s `Eq`, `Ord` and `Hash` are those of the inner string.
impl std::borrow::Borrow<str> for KeyId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for KeyId {
    type Err = SignError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}
