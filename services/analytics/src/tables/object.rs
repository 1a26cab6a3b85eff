//! JSON objects written straight from a table's columns, without building
//! a `serde_json::Value` for every row: the row-MAC content of a table
//! whose content is its columns, and every export object.
//!
//! Both forms are canonical — members sorted by name, compact, strings with
//! RFC 8785's minimal escapes — because an exported table declares its
//! columns in name order (checked when the code is compiled, see
//! [`names_in_order`]), so walking the columns is walking the members.
//! Each table's tests hold these bytes to what serde_json and RFC 8785
//! write for the same row.
//!
//! A column that is NULL is a member the row does not have: both forms
//! leave it out, rather than writing `null`. That is how a table gains
//! columns without changing what its older rows were sealed, hashed and
//! exported as (see `billing`, whose rows written before the sandbox's
//! measurements existed have neither measured member).

use super::row::{push_i64, push_string};
use super::{Exported, Value};
use crate::convert::push_rfc3339_nanos;

/// The member every export object adds to the columns.
const LEDGER_INDEX: &str = "ledger_index";

/// Whether the names of `columns` ascend strictly, byte by byte (RFC 8785
/// §3.2.3 orders members by UTF-16 code units; these names are ASCII, where
/// the two orders agree).
pub(crate) const fn names_in_order(columns: &[super::Column]) -> bool {
    let mut i = 1;
    while i < columns.len() {
        if !less(columns[i - 1].name.as_bytes(), columns[i].name.as_bytes()) {
            return false;
        }
        i += 1;
    }
    true
}

const fn less(a: &[u8], b: &[u8]) -> bool {
    let mut i = 0;
    while i < a.len() && i < b.len() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
        i += 1;
    }
    a.len() < b.len()
}

/// Writes the content a row MAC and a ledger leaf cover: every column but
/// the primary key and `tenant` (both bound beside it) and the NULL ones,
/// integers as decimal strings (RFC 8785 numbers are doubles; amounts must
/// stay exact).
pub(crate) fn write_content<T: Exported>(row: &T, out: &mut Vec<u8>) {
    let () = T::COLUMNS_IN_NAME_ORDER;
    let mut open = b'{';
    for (column, value) in T::COLUMNS.iter().zip(row.values()) {
        if column.name == T::KEY || column.name == "tenant" || value.is_null() {
            continue;
        }
        member(out, open, column.name);
        open = b',';
        if let Value::Int(n) | Value::OptInt(Some(n)) = value {
            out.push(b'"');
            push_i64(out, n);
            out.push(b'"');
        } else {
            write_value::<T>(out, column.name, &value);
        }
    }
    close(out, open);
}

/// Writes the export object of a row at `ledger_index`: every column but
/// the NULL ones, and `ledger_index`, integers as JSON numbers, the time
/// column as RFC 3339 with nine fractional digits.
pub(crate) fn write_export<T: Exported>(row: &T, ledger_index: i64, out: &mut Vec<u8>) {
    let () = T::COLUMNS_IN_NAME_ORDER;
    let mut open = b'{';
    let mut index_written = false;
    for (column, value) in T::COLUMNS.iter().zip(row.values()) {
        if !index_written && column.name > LEDGER_INDEX {
            member(out, open, LEDGER_INDEX);
            push_i64(out, ledger_index);
            open = b',';
            index_written = true;
        }
        if value.is_null() {
            continue;
        }
        member(out, open, column.name);
        open = b',';
        match value {
            Value::Int(at) if column.name == T::TIME => {
                out.push(b'"');
                push_rfc3339_nanos(out, at);
                out.push(b'"');
            }
            Value::Int(n) | Value::OptInt(Some(n)) => push_i64(out, n),
            value => write_value::<T>(out, column.name, &value),
        }
    }
    if !index_written {
        member(out, open, LEDGER_INDEX);
        push_i64(out, ledger_index);
        open = b',';
    }
    close(out, open);
}

/// `{"name":` for the first member, `,"name":` for the others (names are
/// column names: ASCII identifiers, nothing to escape).
fn member(out: &mut Vec<u8>, open: u8, name: &str) {
    out.push(open);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// `}`, or `{}` for an object without members.
fn close(out: &mut Vec<u8>, open: u8) {
    if open == b'{' {
        out.push(b'{');
    }
    out.push(b'}');
}

/// A value other than an integer: a column of [`Exported::JSON_COLUMNS`]
/// as the canonical JSON it holds, text as a string, a flag as a boolean, a
/// real as serde_json writes it, bytes as a string of lowercase hex (NULL,
/// which the writers above leave out, as `null`).
fn write_value<T: Exported>(out: &mut Vec<u8>, column: &str, value: &Value<'_>) {
    match value {
        Value::Text(s) if T::JSON_COLUMNS.contains(&column) => out.extend_from_slice(s.as_bytes()),
        Value::Owned(s) if T::JSON_COLUMNS.contains(&column) => out.extend_from_slice(s.as_bytes()),
        Value::Text(s) | Value::OptText(Some(s)) => push_string(out, s),
        Value::Owned(s) | Value::OwnedOptText(Some(s)) => push_string(out, s),
        Value::Int(n) | Value::OptInt(Some(n)) => push_i64(out, *n),
        Value::OptInt(None)
        | Value::OptBytes(None)
        | Value::OwnedOptBytes(None)
        | Value::OptText(None)
        | Value::OwnedOptText(None) => {
            out.extend_from_slice(b"null");
        }
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Real(x) => out.extend_from_slice(serde_json::Value::from(*x).to_string().as_bytes()),
        Value::Bytes(b) | Value::OptBytes(Some(b)) => push_hex(out, b),
        Value::OwnedBytes(b) | Value::OwnedOptBytes(Some(b)) => push_hex(out, b),
    }
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0x0f)]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use soma_sign::jcs;

    use super::names_in_order;
    use crate::convert::rfc3339_nanos;
    use crate::tables::audit_events::{AuditEvent, canonical};
    use crate::tables::billing::BillingEvent;
    use crate::tables::capsule_runs::CapsuleRun;
    use crate::tables::row::tests::AWKWARD;
    use crate::tables::{EventRow, Exported, int, text};

    fn billing(text: &str, n: i64) -> BillingEvent {
        BillingEvent {
            event_id: format!("e-{text}"),
            tenant: format!("t{text}"),
            tool: text.to_owned(),
            tool_version: format!("{text}1"),
            currency: "EUR".to_owned(),
            amount_micros: n,
            fuel_consumed: n / 3,
            duration_micros: n / 7,
            occurred_at: n.wrapping_neg(),
            run_id: format!("r{text}"),
            recorded_by: text.to_owned(),
            // Rows of even `n` carry the sandbox's measurements; the others
            // are rows written before them.
            module_sha256: (n & 1 == 0).then(|| soma_sign::sha256(format!("{text}/{n}").as_bytes()).to_vec()),
            peak_memory_bytes: (n & 1 == 0).then_some(n / 5),
        }
    }

    fn run(text: &str, n: i64) -> CapsuleRun {
        CapsuleRun {
            event_id: format!("{text}-id"),
            tenant: text.to_owned(),
            capsule_id: format!("c{text}"),
            tool: text.to_owned(),
            run_id: format!("{text}r"),
            outcome: "failed".to_owned(),
            started_at: n,
            duration_nanos: n.wrapping_neg(),
            recorded_by: text.to_owned(),
            // Every other run carries its provenance; the others are runs
            // recorded without it.
            capsule_version: (n & 1 == 0).then(|| format!("1.{n}.0")),
            bundle_sha256: (n & 1 == 0).then(|| soma_sign::sha256(text.as_bytes()).to_vec()),
            environment: (n & 1 == 0).then(|| format!("env-{text}")),
            installation_revision: (n & 1 == 0).then_some(n.max(1)),
            moderation_decision_id: (n & 1 == 0).then(|| format!("mod_{text}")),
        }
    }

    fn audit(text: &str, n: i64) -> AuditEvent {
        let details = json!({"z": [n, 2.5, null, true], "a": {"k": text}, "é": text, "n": -7});
        AuditEvent {
            event_id: format!("a-{text}"),
            tenant: text.to_owned(),
            actor: format!("spiffe://td/svc/{text}"),
            action: "release.publish".to_owned(),
            subject: format!("s{text}"),
            details_json: canonical(&details).unwrap(),
            details,
            occurred_at: n,
            recorded_by: text.to_owned(),
        }
    }

    /// The `Value` form the direct writers replace: scheme 1 (`None`), or
    /// scheme 2 at a ledger index (or none).
    fn value_mac<R: EventRow>(
        row: &R,
        row_version: i64,
        key_id: &str,
        scheme_2: Option<Option<i64>>,
    ) -> Vec<u8> {
        let mut message = json!({
            "table": R::TABLE,
            "primary_key": row.event_id(),
            "tenant": row.tenant(),
            "row_version": row_version.to_string(),
            "key_id": key_id,
            "content": row.content(),
        });
        if let Some(ledger_index) = scheme_2 {
            message["ledger_index"] = json!(ledger_index.map(|i| i.to_string()));
            message["mac_scheme"] = json!("2");
        }
        jcs::canonicalize(&message).unwrap()
    }

    fn value_leaf<R: EventRow>(row: &R) -> Vec<u8> {
        jcs::canonicalize(&json!({
            "kind": R::KIND,
            "event_id": row.event_id(),
            "tenant": row.tenant(),
            "content": row.content(),
        }))
        .unwrap()
    }

    fn same_bytes<R: EventRow>(row: &R, key_id: &str) {
        let mut content = Vec::new();
        row.write_content(&mut content).unwrap();
        assert_eq!(
            String::from_utf8(content).unwrap(),
            String::from_utf8(jcs::canonicalize(&row.content()).unwrap()).unwrap()
        );
        // A row version the content can be of: 3 for a table whose content
        // has one version, the row's own for one whose content has more.
        let version = if row.content_is_of(3) {
            3
        } else {
            row.new_row_version()
        };
        assert_eq!(
            String::from_utf8(row.mac_message(1, version, key_id, Some(7)).unwrap()).unwrap(),
            String::from_utf8(value_mac(row, version, key_id, None)).unwrap()
        );
        for index in [Some(0), Some(7), Some(i64::MAX), None] {
            assert_eq!(
                String::from_utf8(row.mac_message(2, version, key_id, index).unwrap()).unwrap(),
                String::from_utf8(value_mac(row, version, key_id, Some(index))).unwrap()
            );
        }
        assert!(
            row.mac_message(3, 1, key_id, None).is_err(),
            "an unknown scheme verifies nothing"
        );
        assert_eq!(
            String::from_utf8(row.leaf_data().unwrap()).unwrap(),
            String::from_utf8(value_leaf(row)).unwrap()
        );
        // An export check writes the content once and both messages around
        // it, into a buffer still holding the previous row's message.
        let mut content = Vec::new();
        row.write_content(&mut content).unwrap();
        let mut reused = b"the previous row's message".to_vec();
        row.write_mac_message(&content, 2, version, key_id, Some(7), &mut reused)
            .unwrap();
        assert_eq!(reused, value_mac(row, version, key_id, Some(Some(7))));
        row.write_leaf_data(&content, &mut reused);
        assert_eq!(reused, value_leaf(row));
        assert!(
            row.write_mac_message(&content, 3, version, key_id, None, &mut reused)
                .is_err()
        );
    }

    #[test]
    fn direct_canonical_writers_match_the_value_path_byte_for_byte() {
        let numbers = [0, 1, -1, 42, 1_250_000, i64::MAX, i64::MIN, 9_007_199_254_740_993];
        for text in AWKWARD {
            for n in numbers {
                same_bytes(&billing(text, n), text);
                same_bytes(&run(text, n), "row-1");
                same_bytes(&audit(text, n), "row-2");
            }
        }
    }

    /// Times at the edges of what RFC 3339 with nine digits can say.
    const TIMES: [i64; 5] = [0, -1, 1_709_251_199_000_000_001, i64::MAX, i64::MIN];

    #[test]
    fn export_objects_are_the_bytes_serde_json_writes() {
        fn same<R: Exported>(row: &R, ledger_index: i64, expected: &serde_json::Value) {
            let mut out = Vec::new();
            row.write_object(ledger_index, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected.to_string());
        }
        for text in AWKWARD {
            for (n, at) in TIMES.into_iter().enumerate() {
                let n = i64::try_from(n).unwrap() * 1_000_003;
                let b = BillingEvent {
                    occurred_at: at,
                    ..billing(text, n)
                };
                let mut expected = json!({
                    "event_id": b.event_id, "ledger_index": n + 7, "tenant": b.tenant, "tool": b.tool,
                    "tool_version": b.tool_version, "amount_micros": b.amount_micros, "currency": b.currency,
                    "fuel_consumed": b.fuel_consumed, "duration_micros": b.duration_micros,
                    "occurred_at": rfc3339_nanos(b.occurred_at), "run_id": b.run_id, "recorded_by": b.recorded_by,
                });
                // A row of before the measurements has neither member.
                if let (Some(digest), Some(peak)) = (&b.module_sha256, b.peak_memory_bytes) {
                    expected["module_sha256"] = json!(crate::convert::hex(digest));
                    expected["peak_memory_bytes"] = json!(peak);
                }
                same(&b, n + 7, &expected);
                let r = CapsuleRun {
                    started_at: at,
                    ..run(text, n)
                };
                let mut expected = json!({
                    "event_id": r.event_id, "ledger_index": i64::MAX - n, "tenant": r.tenant,
                    "capsule_id": r.capsule_id, "tool": r.tool, "run_id": r.run_id, "outcome": r.outcome,
                    "started_at": rfc3339_nanos(r.started_at), "duration_nanos": r.duration_nanos,
                    "recorded_by": r.recorded_by,
                });
                // A run recorded without its provenance has none of it.
                if let (Some(version), Some(digest), Some(environment), Some(revision), Some(decision)) = (
                    &r.capsule_version,
                    &r.bundle_sha256,
                    &r.environment,
                    r.installation_revision,
                    &r.moderation_decision_id,
                ) {
                    expected["capsule_version"] = json!(version);
                    expected["bundle_sha256"] = json!(crate::convert::hex(digest));
                    expected["environment"] = json!(environment);
                    expected["installation_revision"] = json!(revision);
                    expected["moderation_decision_id"] = json!(decision);
                }
                same(&r, i64::MAX - n, &expected);
                let a = AuditEvent {
                    occurred_at: at,
                    ..audit(text, n)
                };
                let expected = json!({
                    "event_id": a.event_id, "ledger_index": 42, "tenant": a.tenant, "actor": a.actor,
                    "action": a.action, "subject": a.subject, "details": a.details,
                    "occurred_at": rfc3339_nanos(a.occurred_at), "recorded_by": a.recorded_by,
                });
                same(&a, 42, &expected);
            }
        }
    }

    #[test]
    fn names_in_order_wants_strictly_ascending_bytes() {
        assert!(names_in_order(&[]));
        assert!(names_in_order(&[text("a")]));
        assert!(names_in_order(&[text("a"), int("ab"), text("b")]));
        assert!(!names_in_order(&[text("b"), text("a")]));
        assert!(!names_in_order(&[text("a"), text("a")]));
        assert!(!names_in_order(&[text("ab"), text("a")]));
        // Byte order: `_` (0x5f) sorts before lowercase letters.
        assert!(names_in_order(&[text("run_id"), text("runs")]));
    }
}
