//! Row MACs: every row of the registry that carries meaning is
//! authenticated with the registry's keyring over all its meaningful
//! columns, so that a row edited in the database files is refused on read.
//!
//! The MACed message is `somastack.tool-registry/<table>/v1\n` followed by
//! the RFC 8785 canonical JSON of the row's columns (binary columns in
//! lowercase hex, integers as decimal strings). The table name in the
//! prefix keeps a row of one table from passing as a row of another, and
//! the release seal (an HMAC over a bare 32-byte digest) can never be
//! mistaken for a row MAC, whose message is never 32 bytes long.

use serde_json::Value;
use soma_sign::{HmacKeyring, KeyId};

use crate::error::RegistryError;

/// The MAC of a row of `table` whose columns are `columns`.
pub(crate) fn mac(
    keys: &HmacKeyring,
    table: &str,
    columns: &Value,
) -> Result<(KeyId, Vec<u8>), RegistryError> {
    let message = message(table, columns)?;
    let (key_id, tag) = keys.sign(&message);
    Ok((key_id, tag.to_vec()))
}

/// Checks a row's MAC; a mismatch, an unknown or a retired key all fail.
pub(crate) fn check(
    keys: &HmacKeyring,
    table: &'static str,
    key: &str,
    columns: &Value,
    mac_key_id: &str,
    mac: &[u8],
) -> Result<(), RegistryError> {
    let message = message(table, columns)?;
    keys.verify(mac_key_id, &message, mac)
        .map_err(|_| RegistryError::RowIntegrity {
            table,
            key: key.to_owned(),
        })
}

fn message(table: &str, columns: &Value) -> Result<Vec<u8>, RegistryError> {
    let mut message = format!("somastack.tool-registry/{table}/v1\n").into_bytes();
    message.extend_from_slice(&soma_sign::jcs::canonicalize(columns)?);
    Ok(message)
}
