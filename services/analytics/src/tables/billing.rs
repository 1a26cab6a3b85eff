//! `billing_events`: one row per billing event the tool registry records
//! from measured execution metadata, each a ledger leaf.
//!
//! # Content versions
//!
//! The row's content — what its MAC and its ledger leaf cover, and what its
//! export object carries — gained two members when the sandbox's
//! measurements began to travel with each event: `module_sha256` (the
//! SHA-256 of the WebAssembly module that ran, lowercase hex) and
//! `peak_memory_bytes` (its peak linear memory). Rows written before that
//! were sealed, appended and exported without them, and must keep
//! verifying exactly as they were: their MAC, their leaf (which signed
//! checkpoints and inclusion proofs already commit to), and the export
//! object of their window. So the content has two versions, and the
//! `row_version` that both MAC schemes bind names the one a row was sealed
//! with:
//!
//! - **[`UNMEASURED`]** (1, every row written before): the eleven original
//!   columns. The two new columns are NULL, and NULL columns are members
//!   the row does not have (`object`): content, leaf and export object are
//!   byte for byte what they were.
//! - **[`MEASURED`]** (2, every row written now): both new members present.
//!
//! A row is admitted only at the version whose members it has
//! ([`EventRow::content_is_of`]): both NULL at version 1, both set (the
//! digest 32 bytes) at version 2, anything else at no version. Since the
//! MAC message binds the row version, a new row cannot pass as an old one:
//! with its new columns blanked it is version-1 content, which fails under
//! its version-2 MAC, and rewriting `row_version` to 1 changes the MAC
//! message too; that version-1 message (old content at this table, key,
//! tenant and ledger index) was never signed. Its leaf, recomputed without
//! the members, is not the leaf the ledger holds either. The reverse — an
//! old row given new columns — fails the same way. The check sits in the
//! MAC message itself, so the sweep, `verify_store`, the start-up re-seal
//! (which keeps a row's version), exports, proofs and anomaly scans all
//! apply it.
//!
//! Why the row version rather than a new MAC scheme or a version column:
//! both schemes already bind it and every row stores it; a billing row is
//! never updated in place, so its version has no other meaning; and the
//! rows of before are verified as they are, with no rewrite. A new scheme
//! would have changed the MAC message of every table for one table's
//! members, and a version column would have been bound by no existing
//! scheme.
//!
//! A retry of an event recorded under version 1 with the measurements is
//! other content under the same id: refused as a conflict, like any other
//! difference.

use serde_json::{Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;

use super::row::ROW_VERSION;
use super::{EventRow, Exported, Ledgered, Registration, Table, columns, keyed_by};
use crate::convert::hex;
use crate::error::AnalyticsError;
use crate::validate;

/// The table's registration.
pub(crate) const TABLES: &[Registration] = &[Registration::of::<BillingEvent>()];

/// Content version of the rows written before the measurements were
/// recorded: neither `module_sha256` nor `peak_memory_bytes`.
pub(crate) const UNMEASURED: i64 = ROW_VERSION;

/// Content version of the rows written now: with `module_sha256` and
/// `peak_memory_bytes`.
pub(crate) const MEASURED: i64 = 2;

/// A billing event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BillingEvent {
    pub event_id: String,
    pub tenant: String,
    pub tool: String,
    pub tool_version: String,
    /// ISO 4217.
    pub currency: String,
    pub amount_micros: i64,
    pub fuel_consumed: i64,
    pub duration_micros: i64,
    /// Unix nanoseconds.
    pub occurred_at: i64,
    pub run_id: String,
    pub recorded_by: String,
    /// SHA-256 of the WebAssembly module that ran (32 bytes); `None` in a
    /// row of version [`UNMEASURED`].
    pub module_sha256: Option<Vec<u8>>,
    /// Peak linear memory of the execution, bytes; `None` in a row of
    /// version [`UNMEASURED`].
    pub peak_memory_bytes: Option<i64>,
}

impl BillingEvent {
    /// `RecordBillingEvent`'s row: every field checked, the recorder the
    /// caller's SPIFFE ID.
    pub(crate) fn from_request(caller: &Caller, r: pb::RecordBillingEventRequest) -> Result<Self, AnalyticsError> {
        let amount = r.amount.as_ref().ok_or_else(|| validate::invalid("amount", "required"))?;
        if amount.micros < 0 {
            return Err(validate::invalid("amount.micros", "must not be negative"));
        }
        Ok(Self {
            event_id: validate::identifier("event_id", &r.event_id)?,
            tenant: validate::ingest_tenant(caller, &r.tenant)?,
            tool: validate::identifier("tool", &r.tool)?,
            tool_version: validate::version("tool_version", &r.tool_version)?,
            currency: validate::currency("amount.currency", &amount.currency)?,
            amount_micros: amount.micros,
            fuel_consumed: validate::count("fuel_consumed", r.fuel_consumed)?,
            duration_micros: validate::count("duration_micros", r.duration_micros)?,
            occurred_at: validate::timestamp("occurred_at", r.occurred_at.as_ref())?,
            run_id: validate::identifier("run_id", &r.run_id)?,
            recorded_by: caller.peer.spiffe_id.to_string(),
            peak_memory_bytes: Some(validate::count("peak_memory_bytes", r.peak_memory_bytes)?),
            module_sha256: Some(validate::sha256("module_sha256", r.module_sha256)?),
        })
    }

    /// The content version of the row's members (see the module doc);
    /// `None` for a row that has one measurement without the other, or a
    /// digest that is not 32 bytes, which no version of this code wrote.
    fn content_version(&self) -> Option<i64> {
        match (&self.module_sha256, self.peak_memory_bytes) {
            (None, None) => Some(UNMEASURED),
            (Some(digest), Some(_)) if digest.len() == 32 => Some(MEASURED),
            _ => None,
        }
    }
}

impl EventRow for BillingEvent {
    const TABLE: &'static str = "billing_events";
    const KIND: &'static str = "billing_event";

    keyed_by!(event_id);

    fn content(&self) -> Json {
        let mut content = json!({
            "tool": self.tool,
            "tool_version": self.tool_version,
            "currency": self.currency,
            "amount_micros": self.amount_micros.to_string(),
            "fuel_consumed": self.fuel_consumed.to_string(),
            "duration_micros": self.duration_micros.to_string(),
            "occurred_at": self.occurred_at.to_string(),
            "run_id": self.run_id,
            "recorded_by": self.recorded_by,
        });
        if let Some(digest) = &self.module_sha256 {
            content["module_sha256"] = json!(hex(digest));
        }
        if let Some(peak) = self.peak_memory_bytes {
            content["peak_memory_bytes"] = json!(peak.to_string());
        }
        content
    }

    fn write_content(&self, out: &mut Vec<u8>) -> Result<(), AnalyticsError> {
        self.write_column_content(out);
        Ok(())
    }

    /// [`MEASURED`] for a row with its measurements (every row recorded
    /// now); a row without them is one read back, never sealed anew but at
    /// its own version (the re-seal keeps it).
    fn new_row_version(&self) -> i64 {
        self.content_version().unwrap_or(MEASURED)
    }

    fn content_is_of(&self, row_version: i64) -> bool {
        self.content_version() == Some(row_version)
    }
}

impl Table for BillingEvent {
    const KEY: &'static str = "event_id";
    // In name order: the content and export objects are written column by
    // column (`Exported::COLUMNS_IN_NAME_ORDER`).
    columns! {
        amount_micros: int,
        currency: text,
        duration_micros: int,
        event_id: text,
        fuel_consumed: int,
        module_sha256: opt_bytes,
        occurred_at: int,
        peak_memory_bytes: opt_int,
        recorded_by: text,
        run_id: text,
        tenant: text,
        tool: text,
        tool_version: text,
    }
    const LEDGERED: bool = true;
    const BULK: bool = true;

    fn leaf_time(&self) -> Option<i64> {
        Some(self.occurred_at)
    }
}

impl Ledgered for BillingEvent {
    const TIME: &'static str = "occurred_at";

    fn time(&self) -> i64 {
        self.occurred_at
    }
}

impl Exported for BillingEvent {
    const EXPORT: &'static str = "billing_ledger";
    const TOOL: Option<&'static str> = Some("tool");

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn tool(&self) -> Option<&str> {
        Some(&self.tool)
    }
}

#[cfg(test)]
mod tests {
    use soma_sign::HmacKeyring;

    use super::{BillingEvent, MEASURED, UNMEASURED};
    use crate::tables::{EventRow, Exported, Seal};

    fn row(module_sha256: Option<Vec<u8>>, peak_memory_bytes: Option<i64>) -> BillingEvent {
        BillingEvent {
            event_id: "bill-1".to_owned(),
            tenant: "acme".to_owned(),
            tool: "summarize".to_owned(),
            tool_version: "1.2.0".to_owned(),
            currency: "EUR".to_owned(),
            amount_micros: 1_250,
            fuel_consumed: 1_000,
            duration_micros: 2_500,
            occurred_at: 1_790_000_000_000_000_000,
            run_id: "run-1".to_owned(),
            recorded_by: "spiffe://somastack.test/svc/tool-registry".to_owned(),
            module_sha256,
            peak_memory_bytes,
        }
    }

    fn object(row: &BillingEvent) -> String {
        let mut out = Vec::new();
        row.write_object(3, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The bytes a row without measurements was sealed, hashed and
    /// exported as before they existed, typed out from the code of then.
    #[test]
    fn a_row_without_measurements_is_the_row_of_before() {
        let old = row(None, None);
        let mut content = Vec::new();
        old.write_content(&mut content).unwrap();
        assert_eq!(
            String::from_utf8(content).unwrap(),
            r#"{"amount_micros":"1250","currency":"EUR","duration_micros":"2500","fuel_consumed":"1000","occurred_at":"1790000000000000000","recorded_by":"spiffe://somastack.test/svc/tool-registry","run_id":"run-1","tool":"summarize","tool_version":"1.2.0"}"#
        );
        assert_eq!(
            object(&old),
            r#"{"amount_micros":1250,"currency":"EUR","duration_micros":2500,"event_id":"bill-1","fuel_consumed":1000,"ledger_index":3,"occurred_at":"2026-09-21T14:13:20.000000000Z","recorded_by":"spiffe://somastack.test/svc/tool-registry","run_id":"run-1","tenant":"acme","tool":"summarize","tool_version":"1.2.0"}"#
        );
    }

    #[test]
    fn a_measured_row_carries_both_members() {
        let new = row(Some(vec![0xab; 32]), Some(1 << 20));
        let mut content = Vec::new();
        new.write_content(&mut content).unwrap();
        let content = String::from_utf8(content).unwrap();
        assert!(
            content.contains(&format!(
                r#""fuel_consumed":"1000","module_sha256":"{}","occurred_at":"1790000000000000000","peak_memory_bytes":"1048576","recorded_by""#,
                "ab".repeat(32)
            )),
            "{content}"
        );
        let object = object(&new);
        assert!(
            object.contains(&format!(
                r#""ledger_index":3,"module_sha256":"{}","occurred_at":"2026-09-21T14:13:20.000000000Z","peak_memory_bytes":1048576,"recorded_by""#,
                "ab".repeat(32)
            )),
            "{object}"
        );
    }

    /// Each row is sealed at the version of its members and verifies at
    /// that version only; a row with one measurement, or a short digest,
    /// is of no version.
    #[test]
    fn a_row_verifies_only_at_the_version_of_its_members() {
        let (keys, _) = HmacKeyring::generate("row-1").unwrap();
        let digest = vec![7u8; 32];
        let new = row(Some(digest.clone()), Some(4096));
        let old = row(None, None);
        let sealed_new = new.seal(&keys, Some(3)).unwrap();
        let sealed_old = old.seal(&keys, Some(3)).unwrap();
        assert_eq!(
            (sealed_new.row_version, sealed_old.row_version),
            (MEASURED, UNMEASURED)
        );
        new.check(&keys, &sealed_new).unwrap();
        old.check(&keys, &sealed_old).unwrap();
        let at = |seal: &Seal, row_version| Seal {
            row_version,
            ..seal.clone()
        };
        // Blanked: the new row's MAC does not cover the old content, at
        // either version.
        assert!(old.check(&keys, &sealed_new).is_err());
        assert!(old.check(&keys, &at(&sealed_new, UNMEASURED)).is_err());
        assert!(new.check(&keys, &sealed_old).is_err());
        assert!(new.check(&keys, &at(&sealed_old, MEASURED)).is_err());
        for partial in [
            row(Some(digest.clone()), None),
            row(None, Some(4096)),
            row(Some(vec![7u8; 31]), Some(4096)),
        ] {
            for version in [UNMEASURED, MEASURED] {
                assert!(
                    partial.check(&keys, &at(&sealed_new, version)).is_err(),
                    "{partial:?}"
                );
            }
            assert!(partial.seal(&keys, Some(3)).is_err(), "{partial:?}");
        }
    }
}
