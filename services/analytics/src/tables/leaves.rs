//! `ledger_leaves` rows as stored, and the MAC each one carries.
//!
//! A leaf's hash is authenticated by the tree (the signed checkpoints and
//! the head's root), but the columns beside it — the event id, the tenant,
//! the kind, the event's time — are not: rewriting the tenant of a leaf row
//! used to turn another tenant's proof request into an answer. Each leaf row
//! is therefore sealed (scheme 2) with HMAC-SHA256 over the canonical
//! `{event_id, event_time, key_id, kind, leaf_hash, leaf_index, mac_scheme,
//! table, tenant}` (the hash as lowercase hex, integers as decimal
//! strings), written by the ledger writer with the leaf. Rows appended
//! before scheme 2 carry no MAC (`mac_scheme` 1) until the start-up re-seal
//! has matched them to their verified event rows.

use soma_sign::HmacKeyring;

use super::Get;
use super::row::{MAC_SCHEME, push_i64, push_string};
use crate::convert::hex;
use crate::error::AnalyticsError;

/// What a leaf row says about its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeafFacts<'a> {
    pub index: i64,
    pub event_id: &'a str,
    pub tenant: &'a str,
    pub kind: &'a str,
    /// The event's time (its table's time column).
    pub time: i64,
    pub hash: &'a [u8],
}

impl LeafFacts<'_> {
    /// The bytes the leaf MAC covers.
    pub(crate) fn mac_message(&self, key_id: &str) -> Vec<u8> {
        // Member names in byte order: event_id, event_time, key_id, kind,
        // leaf_hash, leaf_index, mac_scheme, table, tenant.
        let mut out = Vec::with_capacity(320);
        out.extend_from_slice(b"{\"event_id\":");
        push_string(&mut out, self.event_id);
        out.extend_from_slice(b",\"event_time\":\"");
        push_i64(&mut out, self.time);
        out.extend_from_slice(b"\",\"key_id\":");
        push_string(&mut out, key_id);
        out.extend_from_slice(b",\"kind\":");
        push_string(&mut out, self.kind);
        out.extend_from_slice(b",\"leaf_hash\":\"");
        out.extend_from_slice(hex(self.hash).as_bytes());
        out.extend_from_slice(b"\",\"leaf_index\":\"");
        push_i64(&mut out, self.index);
        out.extend_from_slice(b"\",\"mac_scheme\":\"2\",\"table\":\"ledger_leaves\",\"tenant\":");
        push_string(&mut out, self.tenant);
        out.push(b'}');
        out
    }

    /// The leaf's MAC under the keyring's primary key: its key id and tag.
    pub(crate) fn seal(&self, keys: &HmacKeyring) -> (String, Vec<u8>) {
        let key_id = keys.primary().as_str();
        let (_, tag) = keys.sign(&self.mac_message(key_id));
        (key_id.to_owned(), tag.to_vec())
    }
}

/// A stored leaf row, every column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeafRow {
    pub index: i64,
    pub event_id: String,
    pub tenant: String,
    pub kind: String,
    pub hash: Vec<u8>,
    /// `None` until the leaf is sealed.
    pub time: Option<i64>,
    pub scheme: i64,
    pub key_id: Option<String>,
    pub mac: Option<Vec<u8>>,
}

impl LeafRow {
    /// The columns [`LeafRow::read`] reads.
    pub(crate) const COLUMNS: &'static str =
        "leaf_index, event_id, tenant, kind, leaf_hash, event_time, mac_scheme, mac_key_id, mac";

    /// A leaf row selected with [`LeafRow::COLUMNS`].
    pub(crate) fn read<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        Ok(Self {
            index: r.int("leaf_index")?,
            event_id: r.text("event_id")?,
            tenant: r.text("tenant")?,
            kind: r.text("kind")?,
            hash: r.bytes("leaf_hash")?,
            time: r.opt_int("event_time")?,
            scheme: r.int("mac_scheme")?,
            key_id: r.opt_text("mac_key_id")?,
            mac: r.opt_bytes("mac")?,
        })
    }

    /// Whether the row is sealed ([`MAC_SCHEME`]); an unsealed row (one
    /// appended before leaves were sealed) is only as good as the event row
    /// it matches.
    pub(crate) fn sealed(&self) -> bool {
        self.scheme == MAC_SCHEME
    }

    /// Checks the MAC of a sealed row; `Err` says why it fails (an unsealed
    /// row fails too: nothing authenticates its columns).
    pub(crate) fn check(&self, keys: &HmacKeyring) -> Result<(), String> {
        let (Some(time), Some(key_id), Some(mac), true) = (self.time, &self.key_id, &self.mac, self.sealed())
        else {
            return Err("the leaf row is not sealed".to_owned());
        };
        let facts = LeafFacts {
            index: self.index,
            event_id: &self.event_id,
            tenant: &self.tenant,
            kind: &self.kind,
            time,
            hash: &self.hash,
        };
        keys.verify(key_id, &facts.mac_message(key_id), mac)
            .map_err(|e| format!("leaf mac: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use soma_sign::jcs;

    use super::LeafFacts;
    use crate::convert::hex;
    use crate::tables::row::tests::AWKWARD;

    #[test]
    fn the_leaf_mac_message_is_the_canonical_object() {
        for text in AWKWARD {
            for n in [0, -1, 42, i64::MAX, i64::MIN] {
                let hash = [7u8; 32];
                let facts = LeafFacts {
                    index: n,
                    event_id: text,
                    tenant: text,
                    kind: "billing_event",
                    time: n.wrapping_neg(),
                    hash: &hash,
                };
                let expected = jcs::canonicalize(&json!({
                    "table": "ledger_leaves",
                    "mac_scheme": "2",
                    "leaf_index": n.to_string(),
                    "event_id": text,
                    "tenant": text,
                    "kind": "billing_event",
                    "event_time": n.wrapping_neg().to_string(),
                    "leaf_hash": hex(&hash),
                    "key_id": "row-1",
                }))
                .unwrap();
                assert_eq!(
                    String::from_utf8(facts.mac_message("row-1")).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }
}
