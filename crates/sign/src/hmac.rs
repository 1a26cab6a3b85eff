//! HMAC-SHA256 with versioned keys.
//!
//! A keyring holds several named secrets. The *primary* signs; every
//! *enabled* key verifies, so a rotation is: add a new key
//! ([`HmacKeyring::add_generated`]), make it primary
//! ([`HmacKeyring::promote`]), and later mark the old one `retired`
//! ([`HmacKeyring::retire`]) once no live tag can carry it. A retired key
//! never verifies again, and never becomes primary again: retiring is final,
//! so a tag made under a key that was once withdrawn cannot be brought back
//! to life by a later promotion.
//!
//! The rotation methods change one in-memory keyring and either succeed
//! completely or leave it untouched; [`HmacKeyring::to_json`] then gives the
//! document to write back to the key file. Services load the file
//! ([`HmacKeyring::load`]), so a rotation reaches them as a file change.
//!
//! Verification compares in constant time (ring's `hmac::verify`) and accepts
//! only full 32-byte tags: a truncated tag is refused, whatever its prefix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::SignError;
use crate::key_id::KeyId;

/// Length of an HMAC-SHA256 tag, the only length [`HmacKeyring::verify`] accepts.
pub const HMAC_TAG_LEN: usize = 32;

/// Minimum length of a decoded HMAC secret (the SHA-256 output size, RFC 2104 §3).
pub const MIN_SECRET_LEN: usize = 32;

/// Whether a key of a keyring may still verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// The key verifies (and signs, when primary).
    Enabled,
    /// The key is kept for the record but neither signs nor verifies.
    Retired,
}

/// A set of HMAC-SHA256 keys addressed by [`KeyId`], one of them primary.
///
/// The file format is
/// `{"primary": "k2", "keys": [{"id": "k1", "secret": "<base64>", "status": "enabled"}]}`
/// with standard padded base64 secrets of at least [`MIN_SECRET_LEN`] bytes.
/// `Debug` prints ids and statuses, never secrets.
pub struct HmacKeyring {
    primary: KeyId,
    /// The primary's key, held apart so signing needs no lookup that could fail.
    primary_key: hmac::Key,
    keys: BTreeMap<KeyId, Entry>,
}

struct Entry {
    key: hmac::Key,
    /// The secret itself, kept only so that [`HmacKeyring::to_json`] can write the key file back.
    secret: Vec<u8>,
    status: KeyStatus,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    primary: String,
    keys: Vec<KeyFile>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    secret: String,
    status: KeyStatus,
}

impl HmacKeyring {
    /// Parses and validates a keyring document.
    ///
    /// Refuses unknown fields, invalid or duplicate ids, secrets that are not
    /// base64 or shorter than [`MIN_SECRET_LEN`], and a primary that is
    /// missing or retired.
    pub fn from_json(json: &[u8]) -> Result<Self, SignError> {
        let file: KeyringFile =
            serde_json::from_slice(json).map_err(|source| SignError::KeyringFormat { source })?;
        let mut keys = BTreeMap::new();
        for k in file.keys {
            let id = KeyId::new(k.id)?;
            let secret = STANDARD
                .decode(k.secret.as_bytes())
                .map_err(|_| SignError::SecretNotBase64 { id: id.to_string() })?;
            if secret.len() < MIN_SECRET_LEN {
                return Err(SignError::SecretTooShort {
                    id: id.to_string(),
                    len: secret.len(),
                });
            }
            if keys.contains_key(&id) {
                return Err(SignError::DuplicateKeyId { id: id.to_string() });
            }
            let entry = Entry {
                key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
                secret,
                status: k.status,
            };
            keys.insert(id, entry);
        }
        let primary = KeyId::new(file.primary)?;
        match keys.get(&primary) {
            None => Err(SignError::PrimaryMissing {
                id: primary.to_string(),
            }),
            Some(e) if e.status == KeyStatus::Retired => Err(SignError::PrimaryRetired {
                id: primary.to_string(),
            }),
            Some(e) => Ok(Self {
                primary_key: e.key.clone(),
                primary,
                keys,
            }),
        }
    }

    /// Reads and validates a keyring file (see [`HmacKeyring::from_json`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SignError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| SignError::KeyringRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes)
    }

    /// Creates a keyring with one enabled primary key holding a fresh random
    /// 32-byte secret, and returns it with its JSON document (which contains the
    /// secret: write it to a file only the service can read).
    pub fn generate(primary_id: &str) -> Result<(Self, Vec<u8>), SignError> {
        let id = KeyId::new(primary_id)?;
        let secret = random_secret()?;
        let file = KeyringFile {
            primary: id.to_string(),
            keys: vec![KeyFile {
                id: id.to_string(),
                secret: STANDARD.encode(secret),
                status: KeyStatus::Enabled,
            }],
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|source| SignError::KeyringFormat { source })?;
        let ring = Self::from_json(&json)?;
        Ok((ring, json))
    }

    /// The id of the primary key, the one [`HmacKeyring::sign`] uses.
    pub fn primary(&self) -> &KeyId {
        &self.primary
    }

    /// The status of key `id`, if the keyring holds it.
    pub fn status(&self, id: &str) -> Option<KeyStatus> {
        self.keys.get(id).map(|e| e.status)
    }

    /// Signs `message` with the primary key; returns the key id to send along with the 32-byte tag.
    pub fn sign(&self, message: &[u8]) -> (KeyId, [u8; HMAC_TAG_LEN]) {
        let mut tag = [0u8; HMAC_TAG_LEN];
        // An HMAC-SHA256 tag is always 32 bytes, so the lengths match.
        tag.copy_from_slice(hmac::sign(&self.primary_key, message).as_ref());
        (self.primary.clone(), tag)
    }

    /// Verifies a tag made under key `key_id`.
    ///
    /// Refuses an unknown or retired key id, a tag of any length other than
    /// 32 bytes, and a tag that does not match (compared in constant time).
    pub fn verify(&self, key_id: &str, message: &[u8], tag: &[u8]) -> Result<(), SignError> {
        let entry = self.keys.get(key_id).ok_or_else(|| SignError::UnknownKeyId {
            id: key_id.to_owned(),
        })?;
        if entry.status == KeyStatus::Retired {
            return Err(SignError::RetiredKeyId {
                id: key_id.to_owned(),
            });
        }
        if tag.len() != HMAC_TAG_LEN {
            return Err(SignError::TagLength { len: tag.len() });
        }
        hmac::verify(&entry.key, message, tag).map_err(|_| SignError::TagMismatch)
    }

    /// Every key: its id, its status and whether it is the primary, in id order.
    pub fn keys(&self) -> Vec<(KeyId, KeyStatus, bool)> {
        self.keys
            .iter()
            .map(|(id, e)| (id.clone(), e.status, *id == self.primary))
            .collect()
    }

    /// Adds a new enabled, non-primary key `id` with a fresh random 32-byte secret.
    ///
    /// The key verifies at once and signs only once promoted, so every
    /// instance can load it before any of them signs with it. Refuses an
    /// invalid id and an id the keyring already holds (even a retired one:
    /// an id names one secret forever).
    pub fn add_generated(&mut self, id: &str) -> Result<(), SignError> {
        let id = KeyId::new(id)?;
        if self.keys.contains_key(&id) {
            return Err(SignError::DuplicateKeyId { id: id.to_string() });
        }
        let secret = random_secret()?.to_vec();
        let entry = Entry {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            secret,
            status: KeyStatus::Enabled,
        };
        self.keys.insert(id, entry);
        Ok(())
    }

    /// Makes the enabled key `id` the primary, the one that signs from now on.
    ///
    /// The previous primary stays enabled, so its tags keep verifying until it
    /// is retired. Promoting the current primary changes nothing. Refuses an
    /// unknown id and a retired key (retiring is final).
    pub fn promote(&mut self, id: &str) -> Result<(), SignError> {
        let (key_id, entry) = self
            .keys
            .get_key_value(id)
            .ok_or_else(|| SignError::UnknownKeyId { id: id.to_owned() })?;
        if entry.status == KeyStatus::Retired {
            return Err(SignError::RetiredKeyId { id: id.to_owned() });
        }
        self.primary_key = entry.key.clone();
        self.primary = key_id.clone();
        Ok(())
    }

    /// Retires key `id`: from now on it neither signs nor verifies, for good.
    ///
    /// Refuses an unknown id and the primary (promote its successor first, so
    /// that the keyring always has a key to sign with). Retiring a retired key
    /// changes nothing.
    pub fn retire(&mut self, id: &str) -> Result<(), SignError> {
        if self.primary.as_str() == id {
            return Err(SignError::RetirePrimary { id: id.to_owned() });
        }
        let entry = self
            .keys
            .get_mut(id)
            .ok_or_else(|| SignError::UnknownKeyId { id: id.to_owned() })?;
        entry.status = KeyStatus::Retired;
        Ok(())
    }

    /// The keyring document, in the format [`HmacKeyring::from_json`] reads,
    /// keys in id order.
    ///
    /// It contains every secret in base64: use it only to write the key file
    /// (readable by the service alone), never to log or display.
    pub fn to_json(&self) -> Vec<u8> {
        let file = KeyringFile {
            primary: self.primary.to_string(),
            keys: self
                .keys
                .iter()
                .map(|(id, e)| KeyFile {
                    id: id.to_string(),
                    secret: STANDARD.encode(&e.secret),
                    status: e.status,
                })
                .collect(),
        };
        // Strings and a two-variant enum only: serialisation cannot fail.
        serde_json::to_vec_pretty(&file).unwrap_or_default()
    }
}

/// A fresh 32-byte secret from the system's random number generator.
fn random_secret() -> Result<[u8; MIN_SECRET_LEN], SignError> {
    let mut secret = [0u8; MIN_SECRET_LEN];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| SignError::Random)?;
    Ok(secret)
}

impl fmt::Debug for HmacKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(&str, KeyStatus)> = self.keys.iter().map(|(k, e)| (k.as_str(), e.status)).collect();
        f.debug_struct("HmacKeyring")
            .field("primary", &self.primary.as_str())
            .field("keys", &keys)
            .finish()
    }
}
