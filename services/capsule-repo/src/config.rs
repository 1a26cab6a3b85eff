//! The repository's settings: its keyring (read from a file so that
//! rotation is a file change) and the operator-pinned template catalogues,
//! checked before any port is bound.

use std::path::PathBuf;

use soma_capsule::AttestationKey;
use soma_sign::HmacKeyring;

use crate::error::RepoError;

/// Environment variable naming the repository's HMAC keyring file (the
/// JSON format of every SomaStack keyring, see [`HmacKeyring::load`]).
pub const KEYS_FILE_ENV: &str = "SOMA_CAPSULE_REPO_KEYS_FILE";
/// Environment variable naming the template catalogues file:
/// `{"catalogues":[{"name":"mao","threshold":1,"public_keys_pem":["-----BEGIN PUBLIC KEY-----…"]}]}`.
/// Unset: no catalogue, and every template import is refused
/// `catalogue_unknown`.
pub const CATALOGUES_FILE_ENV: &str = "SOMA_CAPSULE_REPO_CATALOGUES_FILE";

/// Longest catalogue name.
const MAX_CATALOGUE_NAME: usize = 64;

/// The repository's own settings.
#[derive(Debug)]
pub struct CapsuleRepoConfig {
    /// MACs every row.
    pub keys: HmacKeyring,
    /// Where the keyring was read from.
    pub keys_path: PathBuf,
    /// Template catalogues whose keys an operator pinned.
    pub catalogues: Vec<Catalogue>,
}

/// A template catalogue: the keys that must sign an imported template's
/// attestation, `threshold` of them.
#[derive(Clone, Debug)]
pub struct Catalogue {
    /// The name `ImportTemplate` names it by.
    pub name: String,
    /// Distinct keys that must sign.
    pub threshold: usize,
    /// The pinned keys.
    pub keys: Vec<AttestationKey>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CataloguesFile {
    catalogues: Vec<CatalogueEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueEntry {
    name: String,
    threshold: usize,
    public_keys_pem: Vec<String>,
}

impl CapsuleRepoConfig {
    /// Reads [`KEYS_FILE_ENV`] (required) and [`CATALOGUES_FILE_ENV`]
    /// (optional).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, RepoError> {
        let value = |var: &str| env(var).filter(|v| !v.is_empty());
        let keys_path = value(KEYS_FILE_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| RepoError::Config(format!("{KEYS_FILE_ENV} is not set")))?;
        let keys = HmacKeyring::load(&keys_path)
            .map_err(|e| RepoError::Config(format!("{}: {e}", keys_path.display())))?;
        let catalogues = match value(CATALOGUES_FILE_ENV) {
            None => Vec::new(),
            Some(path) => {
                let text = std::fs::read(&path).map_err(|e| RepoError::Config(format!("{path}: {e}")))?;
                parse_catalogues(&text).map_err(|e| RepoError::Config(format!("{path}: {e}")))?
            }
        };
        Ok(Self {
            keys,
            keys_path,
            catalogues,
        })
    }
}

/// Parses a catalogues file: each name once, a threshold from 1 to the
/// number of its keys, each key a PEM Ed25519 public key, listed once.
pub fn parse_catalogues(json: &[u8]) -> Result<Vec<Catalogue>, String> {
    let file: CataloguesFile = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut catalogues: Vec<Catalogue> = Vec::with_capacity(file.catalogues.len());
    for entry in file.catalogues {
        let name_ok = !entry.name.is_empty()
            && entry.name.len() <= MAX_CATALOGUE_NAME
            && entry
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(format!(
                "catalogue {:?}: a name of 1 to {MAX_CATALOGUE_NAME} letters, digits, '.', '_' or '-' is expected",
                entry.name
            ));
        }
        if catalogues.iter().any(|c| c.name == entry.name) {
            return Err(format!("catalogue {:?} is listed twice", entry.name));
        }
        let mut keys: Vec<AttestationKey> = Vec::with_capacity(entry.public_keys_pem.len());
        for (i, pem) in entry.public_keys_pem.iter().enumerate() {
            let key = soma_sign::ed25519_public_key_from_pem(pem)
                .map_err(|e| format!("catalogue {:?}: public_keys_pem[{i}]: {e}", entry.name))?;
            let key = AttestationKey::new(key);
            if keys.iter().any(|k| k.key_id == key.key_id) {
                return Err(format!(
                    "catalogue {:?}: public_keys_pem[{i}] repeats a key",
                    entry.name
                ));
            }
            keys.push(key);
        }
        if entry.threshold == 0 || entry.threshold > keys.len() {
            return Err(format!(
                "catalogue {:?}: threshold {} must be from 1 to its {} keys",
                entry.name,
                entry.threshold,
                keys.len()
            ));
        }
        catalogues.push(Catalogue {
            name: entry.name,
            threshold: entry.threshold,
            keys,
        });
    }
    Ok(catalogues)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn catalogue_files_are_checked() {
        let ok =
            serde_json::json!({"catalogues": [{"name": "mao", "threshold": 1, "public_keys_pem": [KEY]}]});
        let parsed = parse_catalogues(ok.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].name, "mao");
        assert_eq!(parsed[0].threshold, 1);
        let table = [
            (
                "threshold above the keys",
                serde_json::json!({"catalogues": [{"name": "mao", "threshold": 2, "public_keys_pem": [KEY]}]}),
                "threshold 2",
            ),
            (
                "threshold zero",
                serde_json::json!({"catalogues": [{"name": "mao", "threshold": 0, "public_keys_pem": [KEY]}]}),
                "threshold 0",
            ),
            (
                "a key twice",
                serde_json::json!({"catalogues": [{"name": "mao", "threshold": 1, "public_keys_pem": [KEY, KEY]}]}),
                "repeats a key",
            ),
            (
                "a name twice",
                serde_json::json!({"catalogues": [
                    {"name": "mao", "threshold": 1, "public_keys_pem": [KEY]},
                    {"name": "mao", "threshold": 1, "public_keys_pem": [KEY]}]}),
                "listed twice",
            ),
            (
                "not a key",
                serde_json::json!({"catalogues": [{"name": "mao", "threshold": 1, "public_keys_pem": ["nope"]}]}),
                "public_keys_pem[0]",
            ),
            (
                "an unknown member",
                serde_json::json!({"catalogues": [], "extra": 1}),
                "unknown field",
            ),
        ];
        for (name, json, expected) in table {
            let err = parse_catalogues(json.to_string().as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }
}
