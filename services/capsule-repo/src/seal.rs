//! Row MACs: every row of the repository that carries meaning is
//! authenticated with the repository's keyring over all its meaningful
//! columns, so that a row edited in the database files is refused on read.
//!
//! The MACed message is `somastack.capsule-repo/<table>/v1\n` followed by
//! the RFC 8785 canonical JSON of the row's columns (binary columns in
//! lowercase hex, integers as decimal strings). The table name in the
//! prefix keeps a row of one table from passing as a row of another.

use serde_json::Value;
use soma_sign::HmacKeyring;

use crate::error::RepoError;

/// The MAC of a row of `table` whose columns are `columns`: the key id
/// and the tag.
pub(crate) fn mac(keys: &HmacKeyring, table: &str, columns: &Value) -> Result<(String, Vec<u8>), RepoError> {
    let message = message(table, columns)?;
    let (key_id, tag) = keys.sign(&message);
    Ok((key_id.to_string(), tag.to_vec()))
}

/// Checks a row's MAC; a mismatch, an unknown or a retired key all fail.
pub(crate) fn check(
    keys: &HmacKeyring,
    table: &'static str,
    key: &str,
    columns: &Value,
    mac_key_id: &str,
    mac: &[u8],
) -> Result<(), RepoError> {
    let message = message(table, columns)?;
    keys.verify(mac_key_id, &message, mac)
        .map_err(|_| RepoError::RowIntegrity {
            table,
            key: key.to_owned(),
        })
}

fn message(table: &str, columns: &Value) -> Result<Vec<u8>, RepoError> {
    let mut message = format!("somastack.capsule-repo/{table}/v1\n").into_bytes();
    message.extend_from_slice(&soma_sign::jcs::canonicalize(columns)?);
    Ok(message)
}
