//! The row-MAC and ledger-leaf scheme every table shares: a row's
//! canonical content, its MAC, its seal columns and its leaf.
//!
//! A row's MAC is HMAC-SHA256 over an RFC 8785 canonical object computed
//! from application values (never from database text). Two schemes exist,
//! and each stored row says which sealed it (`mac_scheme`):
//!
//! - **Scheme 2** (every row written now): `{content, key_id, ledger_index,
//!   mac_scheme, primary_key, row_version, table, tenant}`. Every column
//!   that carries meaning is bound: the table, key and tenant (a valid row
//!   copied to another table, key or tenant fails), the key id (a MAC
//!   cannot be replayed under another key), the row version (an older
//!   version of an updated row fails), the ledger index (`null` for a table
//!   that is not ledgered: a row moved to another index, or past the tree's
//!   size, fails) and the scheme itself (a scheme-2 MAC never verifies as
//!   another scheme's).
//! - **Scheme 1** (rows written before scheme 2): `{content, key_id,
//!   primary_key, row_version, table, tenant}`, without the ledger index.
//!   Still verified, so that nothing written before the change becomes
//!   unverifiable; the service re-seals each such row under scheme 2 at
//!   start-up once it verifies under scheme 1 and matches its ledger leaf
//!   (`crate::integrity::reseal`). Where a scheme-1 row is read, its index
//!   is checked against the leaf at that index instead.
//!
//! Both schemes bind the row version. A row updated in place binds its
//! update count (persona regressions); a table whose content gained members
//! binds the version of the content a row was sealed with, and admits a row
//! only at the version whose members it has ([`EventRow::content_is_of`];
//! `billing_events`, see its module doc); every other row is at
//! [`ROW_VERSION`].
//!
//! Integers travel as decimal strings: RFC 8785 numbers are doubles, and
//! amounts must stay exact.

use serde_json::Value;
use soma_ledger::Hash;
use soma_sign::{HmacKeyring, jcs};

use super::{Get, Value as Bound};
use crate::error::AnalyticsError;

/// Version a row is written with, unless it is updated in place (its
/// update count) or its table's content has versions
/// ([`EventRow::new_row_version`]).
pub(crate) const ROW_VERSION: i64 = 1;

/// The row-MAC scheme rows are sealed with.
pub(crate) const MAC_SCHEME: i64 = 2;

/// The scheme of rows sealed before [`MAC_SCHEME`]: no ledger index, no
/// scheme in the MAC.
pub(crate) const LEGACY_MAC_SCHEME: i64 = 1;

/// What the MAC of a stored row covers, and what its ledger leaf hashes.
pub(crate) trait EventRow {
    /// The table.
    const TABLE: &'static str;
    /// The ledger leaf kind.
    const KIND: &'static str;
    /// Primary key (within the tenant).
    fn event_id(&self) -> &str;
    /// Tenant the row belongs to.
    fn tenant(&self) -> &str;
    /// Every application field but the key and tenant.
    fn content(&self) -> Value;

    /// Writes the RFC 8785 canonical form of [`EventRow::content`] to `out`.
    ///
    /// The default canonicalizes the `Value`. A table whose content is its
    /// columns overrides it with [`super::Exported::write_column_content`],
    /// which writes the members straight from the columns: the same bytes
    /// (a test holds them to the `Value` path), without building a map of
    /// owned strings for every row written, exported or swept.
    fn write_content(&self, out: &mut Vec<u8>) -> Result<(), AnalyticsError> {
        out.extend_from_slice(&jcs::canonicalize(&self.content())?);
        Ok(())
    }

    /// The row version a new row is sealed at: [`ROW_VERSION`], unless the
    /// table's content has versions.
    fn new_row_version(&self) -> i64 {
        ROW_VERSION
    }

    /// Whether the row's content is content a MAC at `row_version` can
    /// have sealed. Any version, unless the table's content has versions:
    /// then only the one whose members the row has, so that no row is read
    /// as another version's (a new row with its new columns blanked is not
    /// an old row).
    fn content_is_of(&self, _row_version: i64) -> bool {
        true
    }

    /// The bytes the row MAC of `scheme` covers (see the module doc);
    /// `ledger_index` is the row's index (`None` for a table that is not
    /// ledgered), which scheme 1 does not bind. A row whose content is not
    /// of `row_version` ([`EventRow::content_is_of`]) has none: it fails
    /// its integrity check, and is never sealed.
    fn mac_message(
        &self,
        scheme: i64,
        row_version: i64,
        key_id: &str,
        ledger_index: Option<i64>,
    ) -> Result<Vec<u8>, AnalyticsError> {
        // The version is checked before the content is written, as
        // `write_mac_message` checks it, so that a row of no version fails
        // as such whatever its content.
        if !self.content_is_of(row_version) {
            return Err(AnalyticsError::RowIntegrity {
                table: Self::TABLE,
                primary_key: self.event_id().to_owned(),
            });
        }
        let mut content = Vec::with_capacity(512);
        self.write_content(&mut content)?;
        let mut out = Vec::with_capacity(content.len() + 256);
        self.write_mac_message(&content, scheme, row_version, key_id, ledger_index, &mut out)?;
        Ok(out)
    }

    /// Writes [`EventRow::mac_message`] to `out` (cleared first) around
    /// `content`, the row's [`EventRow::write_content`] bytes written once
    /// by the caller: an export check shares them with the leaf data
    /// ([`EventRow::write_leaf_data`]) instead of writing them twice.
    fn write_mac_message(
        &self,
        content: &[u8],
        scheme: i64,
        row_version: i64,
        key_id: &str,
        ledger_index: Option<i64>,
        out: &mut Vec<u8>,
    ) -> Result<(), AnalyticsError> {
        out.clear();
        if !self.content_is_of(row_version) {
            return Err(AnalyticsError::RowIntegrity {
                table: Self::TABLE,
                primary_key: self.event_id().to_owned(),
            });
        }
        // RFC 8785 orders members by name; these names are ASCII, so by
        // bytes: content, key_id, [ledger_index, mac_scheme,] primary_key,
        // row_version, table, tenant. A canonical value nested in a
        // canonical object is canonical, so writing the content in place is
        // the canonical form of the whole.
        out.extend_from_slice(b"{\"content\":");
        out.extend_from_slice(content);
        out.extend_from_slice(b",\"key_id\":");
        push_string(out, key_id);
        match scheme {
            LEGACY_MAC_SCHEME => {}
            MAC_SCHEME => {
                out.extend_from_slice(b",\"ledger_index\":");
                match ledger_index {
                    Some(index) => {
                        out.push(b'"');
                        push_i64(out, index);
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"mac_scheme\":\"2\"");
            }
            // A scheme no version of this code writes verifies nothing.
            _ => {
                out.clear();
                return Err(AnalyticsError::RowIntegrity {
                    table: Self::TABLE,
                    primary_key: self.event_id().to_owned(),
                });
            }
        }
        out.extend_from_slice(b",\"primary_key\":");
        push_string(out, self.event_id());
        out.extend_from_slice(b",\"row_version\":\"");
        push_i64(out, row_version);
        out.extend_from_slice(b"\",\"table\":");
        push_string(out, Self::TABLE);
        out.extend_from_slice(b",\"tenant\":");
        push_string(out, self.tenant());
        out.push(b'}');
        Ok(())
    }

    /// MACs the row at [`EventRow::new_row_version`], at `ledger_index`
    /// for a ledgered row, with the keyring's primary key.
    fn seal(&self, keys: &HmacKeyring, ledger_index: Option<i64>) -> Result<Seal, AnalyticsError> {
        Seal::at(self, keys, self.new_row_version(), ledger_index)
    }

    /// Checks a stored row's MAC under the scheme that sealed it.
    fn check(&self, keys: &HmacKeyring, seal: &Seal) -> Result<(), AnalyticsError> {
        let message = self.mac_message(seal.scheme, seal.row_version, &seal.key_id, seal.ledger_index)?;
        keys.verify(&seal.key_id, &message, &seal.mac)
            .map_err(|_| AnalyticsError::RowIntegrity {
                table: Self::TABLE,
                primary_key: self.event_id().to_owned(),
            })
    }

    /// The ledger leaf data: canonical `{kind, event_id, tenant, content}`.
    fn leaf_data(&self) -> Result<Vec<u8>, AnalyticsError> {
        let mut content = Vec::with_capacity(512);
        self.write_content(&mut content)?;
        let mut out = Vec::with_capacity(content.len() + 128);
        self.write_leaf_data(&content, &mut out);
        Ok(out)
    }

    /// Writes [`EventRow::leaf_data`] to `out` (cleared first) around
    /// `content`, the row's [`EventRow::write_content`] bytes (see
    /// [`EventRow::write_mac_message`]).
    fn write_leaf_data(&self, content: &[u8], out: &mut Vec<u8>) {
        // Member order as in `mac_message`: content, event_id, kind, tenant.
        out.clear();
        out.extend_from_slice(b"{\"content\":");
        out.extend_from_slice(content);
        out.extend_from_slice(b",\"event_id\":");
        push_string(out, self.event_id());
        out.extend_from_slice(b",\"kind\":");
        push_string(out, Self::KIND);
        out.extend_from_slice(b",\"tenant\":");
        push_string(out, self.tenant());
        out.push(b'}');
    }

    /// The RFC 9162 leaf hash of [`EventRow::leaf_data`].
    fn leaf_hash(&self) -> Result<Hash, AnalyticsError> {
        Ok(soma_ledger::leaf_hash(&self.leaf_data()?))
    }
}

/// The integrity columns of a stored row: its MAC, what the MAC was made
/// under, and (for a ledgered row) the ledger index it claims, which
/// scheme 2 binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seal {
    /// `mac_scheme`: [`MAC_SCHEME`] or [`LEGACY_MAC_SCHEME`].
    pub scheme: i64,
    pub row_version: i64,
    pub key_id: String,
    pub mac: Vec<u8>,
    /// `ledger_index` of a ledgered row; `None` for the other tables.
    pub ledger_index: Option<i64>,
}

impl Seal {
    /// MACs `row` under [`MAC_SCHEME`] with the keyring's primary key at
    /// `row_version` (rows updated in place bind their version here; the
    /// others their [`EventRow::new_row_version`]) and `ledger_index`.
    pub(crate) fn at<R: EventRow + ?Sized>(
        row: &R,
        keys: &HmacKeyring,
        row_version: i64,
        ledger_index: Option<i64>,
    ) -> Result<Self, AnalyticsError> {
        let key_id = keys.primary().as_str().to_owned();
        let (_, tag) = keys.sign(&row.mac_message(MAC_SCHEME, row_version, &key_id, ledger_index)?);
        Ok(Self {
            scheme: MAC_SCHEME,
            row_version,
            key_id,
            mac: tag.to_vec(),
            ledger_index,
        })
    }

    /// The seal columns of a stored row (and its `ledger_index` when the
    /// query selected one).
    pub(crate) fn read<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        Ok(Self {
            scheme: r.int("mac_scheme")?,
            row_version: r.int("row_version")?,
            key_id: r.text("mac_key_id")?,
            mac: r.bytes("mac")?,
            ledger_index: r.int_if_selected("ledger_index")?,
        })
    }

    /// The ledger index and seal columns as bound to an insert (see
    /// [`super::insert_columns`]), borrowing the seal.
    pub(crate) fn values(&self) -> impl Iterator<Item = Bound<'_>> {
        self.ledger_index.map(Bound::Int).into_iter().chain([
            Bound::Int(self.scheme),
            Bound::Int(self.row_version),
            Bound::Text(&self.key_id),
            Bound::Bytes(&self.mac),
        ])
    }

    /// The same values, owned.
    pub(crate) fn into_values(self) -> impl Iterator<Item = Bound<'static>> {
        self.ledger_index.map(Bound::Int).into_iter().chain([
            Bound::Int(self.scheme),
            Bound::Int(self.row_version),
            Bound::Owned(self.key_id),
            Bound::OwnedBytes(self.mac),
        ])
    }
}

/// Strings are written as RFC 8785 writes them (the one writer, in
/// `soma_sign`).
pub(crate) use soma_sign::jcs::push_string;

/// Appends the decimal digits of `n` (a leading `-` when negative).
pub(crate) fn push_i64(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        // `rest % 10` is a single digit: the cast cannot truncate.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{push_i64, push_string};

    /// Strings every JSON writer must escape, or must not.
    pub(crate) const AWKWARD: [&str; 6] = [
        "plain",
        "",
        "quote \" backslash \\ slash /",
        "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}",
        "é ü 漢字 \u{10348} \u{2028}",
        "spiffe://somastack.local/svc/tool-registry",
    ];

    #[test]
    fn strings_and_integers_are_written_as_serde_json_writes_them() {
        for text in AWKWARD {
            let mut out = Vec::new();
            push_string(&mut out, text);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::Value::from(text).to_string()
            );
        }
        for n in [0, 7, -7, 10, -10, 1_000_000_007, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            push_i64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
