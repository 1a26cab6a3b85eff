//! The registry's seal: its own HMAC over the manifest digest.

use soma_sign::{HMAC_TAG_LEN, HmacKeyring, KeyId};

/// Seals a stored release: HMAC-SHA256 with the keyring's primary key over
/// the 32-byte SHA-256 of the canonical manifest. Returns the key id to store
/// beside the tag; [`verify`](crate::verify) checks it with
/// [`HmacKeyring::verify`] (constant time, retired keys refused).
///
/// The manifest binds the module (`module_sha256`, `module_size`), so the
/// seal over the manifest digest covers the module too. It does not cover
/// the row's other columns (publication time, revocation): those are the
/// storage layer's row MAC to protect.
pub fn seal(keyring: &HmacKeyring, manifest_sha256: &[u8; 32]) -> (KeyId, [u8; HMAC_TAG_LEN]) {
    keyring.sign(manifest_sha256)
}
