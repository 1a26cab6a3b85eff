//! Analytics' signed exports, on SQLite and on PostgreSQL, through the real
//! service over mTLS: tenancy and window checks, tampered rows refused, and
//! streaming in bounded chunks. (That an export is exactly a tenant's window
//! and verifies with three independent verifiers, one of them the `soma`
//! binary, is `crates/soma/tests/verify_export.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::export::{Env, Kind, event_ids, window};
use common::{billing_of, capsule_run_of, ts, ts_nanos};
use soma_proto::v1 as pb;
use soma_testing::{exec, grpc_reason, operator_claims_request};
use tonic::Code;

/// Start of the test window: 2026-09-21T14:13:20Z.
const T0: i64 = 1_790_000_000;
/// The window is one hour.
const WINDOW: i64 = 3600;
/// Largest chunk the service promises.
const CHUNK_BYTES: usize = 32 * 1024;

#[tokio::test]
async fn tenancy_and_the_window_are_checked_before_anything_is_exported() {
    for db in soma_store::testing::engines("analytics_export_tenancy").await {
        let span = Duration::from_secs(24 * 3600);
        let env = Env::start(&db.settings, Some(span)).await;
        env.record_billing(vec![
            billing_of("a-1", "acme", "summarize", 1, ts(T0 + 1)),
            billing_of("g-1", "globex", "summarize", 2, ts(T0 + 2)),
        ])
        .await;
        let day = 24 * 3600;
        const EXPORT: &[&str] = &["analytics:export"];
        const CROSS: &[&str] = &["analytics:export", "analytics:cross-tenant"];

        enum Who {
            Tenant(&'static str, &'static [&'static str]),
            /// Operator claims (an operator issuer's token) through the gateway.
            OperatorClaims(&'static str, &'static [&'static str]),
            Operator,
        }
        struct Case {
            name: &'static str,
            who: Who,
            request: pb::ExportRequest,
            /// Ok(rows) or Err((code, reason, text in the message)).
            expected: Result<&'static [&'static str], (Code, &'static str, &'static str)>,
        }
        let swapped = window("", T0 + 10, T0);
        let mut no_from = window("", T0, T0 + 10);
        no_from.from = None;
        let mut bad_nanos = window("", T0, T0 + 10);
        bad_nanos.to = ts_nanos(T0 + 10, 1_000_000_000);
        let mut bad_tool = window("", T0, T0 + 10);
        bad_tool.tool = "sum marize".to_owned();
        let mut bad_service = window("", T0, T0 + 10);
        bad_service.service = "svc/gateway".to_owned();
        let mut one_ns_over = window("", T0, T0 + day);
        one_ns_over.to = ts_nanos(T0 + day, 1);
        let cases = [
            Case {
                name: "own tenant, implicit",
                who: Who::Tenant("acme", EXPORT),
                request: window("", T0, T0 + 10),
                expected: Ok(&["a-1"]),
            },
            Case {
                name: "own tenant, named",
                who: Who::Tenant("acme", EXPORT),
                request: window("acme", T0, T0 + 10),
                expected: Ok(&["a-1"]),
            },
            Case {
                name: "another tenant without the capability",
                who: Who::Tenant("acme", EXPORT),
                request: window("globex", T0, T0 + 10),
                expected: Err((Code::PermissionDenied, "operator_required", "globex")),
            },
            // A tenant scope never grants an operator power.
            Case {
                name: "tenant claims with the cross-tenant capability",
                who: Who::Tenant("acme", CROSS),
                request: window("globex", T0, T0 + 10),
                expected: Err((Code::PermissionDenied, "operator_required", "globex")),
            },
            Case {
                name: "operator claims with the cross-tenant capability",
                who: Who::OperatorClaims("ops", CROSS),
                request: window("globex", T0, T0 + 10),
                expected: Ok(&["g-1"]),
            },
            // Least privilege among operators: the capability is still needed.
            Case {
                name: "operator claims without the cross-tenant capability",
                who: Who::OperatorClaims("ops", EXPORT),
                request: window("globex", T0, T0 + 10),
                expected: Err((Code::PermissionDenied, "tenant_denied", "analytics:cross-tenant")),
            },
            Case {
                name: "operator naming a tenant",
                who: Who::Operator,
                request: window("globex", T0, T0 + 10),
                expected: Ok(&["g-1"]),
            },
            Case {
                name: "operator naming no tenant",
                who: Who::Operator,
                request: window("", T0, T0 + 10),
                expected: Err((Code::InvalidArgument, "invalid_argument", "tenant: required")),
            },
            Case {
                name: "window of exactly the maximum span",
                who: Who::Tenant("acme", EXPORT),
                request: window("", T0, T0 + day),
                expected: Ok(&["a-1"]),
            },
            Case {
                name: "window one nanosecond over the maximum span",
                who: Who::Tenant("acme", EXPORT),
                request: one_ns_over,
                expected: Err((
                    Code::InvalidArgument,
                    "invalid_argument",
                    "to: the window [from, to) spans",
                )),
            },
            Case {
                name: "window of a year",
                who: Who::Tenant("acme", EXPORT),
                request: window("", T0, T0 + 365 * day),
                expected: Err((
                    Code::InvalidArgument,
                    "invalid_argument",
                    "longer than the longest export window",
                )),
            },
            Case {
                name: "to before from",
                who: Who::Tenant("acme", EXPORT),
                request: swapped,
                expected: Err((
                    Code::InvalidArgument,
                    "invalid_argument",
                    "to: must be after from",
                )),
            },
            Case {
                name: "empty window",
                who: Who::Tenant("acme", EXPORT),
                request: window("", T0, T0),
                expected: Err((
                    Code::InvalidArgument,
                    "invalid_argument",
                    "to: must be after from",
                )),
            },
            Case {
                name: "from missing",
                who: Who::Tenant("acme", EXPORT),
                request: no_from,
                expected: Err((Code::InvalidArgument, "invalid_argument", "from: required")),
            },
            Case {
                name: "malformed to",
                who: Who::Tenant("acme", EXPORT),
                request: bad_nanos,
                expected: Err((Code::InvalidArgument, "invalid_argument", "to: nanos")),
            },
            Case {
                name: "malformed tool",
                who: Who::Tenant("acme", EXPORT),
                request: bad_tool,
                expected: Err((Code::InvalidArgument, "invalid_argument", "tool: ")),
            },
            Case {
                name: "malformed service",
                who: Who::Tenant("acme", EXPORT),
                request: bad_service,
                expected: Err((Code::InvalidArgument, "invalid_argument", "service: ")),
            },
        ];
        for c in cases {
            for kind in [Kind::Billing, Kind::Runs] {
                let (path, request) = match &c.who {
                    Who::Tenant(tenant, caps) => {
                        ("/svc/gateway", env.as_tenant(tenant, caps, c.request.clone()))
                    }
                    Who::OperatorClaims(tenant, caps) => (
                        "/svc/gateway",
                        operator_claims_request(
                            &env.claims,
                            &env.analytics_id,
                            tenant,
                            caps,
                            c.request.clone(),
                        ),
                    ),
                    Who::Operator => ("/operator/alice", tonic::Request::new(c.request.clone())),
                };
                let result = env.export(kind, path, request).await;
                match (&c.expected, result) {
                    (Ok(expected), Ok(collected)) => {
                        let document = collected.document();
                        let (_, signature, _) = collected.signed();
                        assert_eq!(signature.signature.len(), 64);
                        if matches!(kind, Kind::Billing) {
                            assert_eq!(event_ids(&document), *expected, "{} {}", db.label, c.name);
                        } else {
                            assert!(event_ids(&document).is_empty(), "{}", c.name);
                        }
                    }
                    (Err((code, why, text)), Err(status)) => {
                        assert_eq!(status.code(), *code, "{} {}: {status:?}", db.label, c.name);
                        assert_eq!(grpc_reason(&status), *why, "{}", c.name);
                        assert!(
                            status.message().contains(text),
                            "{}: {}",
                            c.name,
                            status.message()
                        );
                    }
                    (expected, Ok(collected)) => panic!(
                        "{} {}: expected {expected:?}, got a stream ending in {:?}",
                        db.label, c.name, collected.error
                    ),
                    (expected, Err(status)) => {
                        panic!("{} {}: expected {expected:?}, got {status:?}", db.label, c.name)
                    }
                }
            }
        }

        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_row_tampered_in_sql_aborts_the_export_with_data_loss_and_no_signature() {
    for db in soma_store::testing::engines("analytics_export_tamper").await {
        let env = Env::start(&db.settings, None).await;
        // Enough rows before the tampered one that earlier pages were sent.
        let mut events: Vec<_> = (0..2500)
            .map(|i| billing_of(&format!("t-{i:05}"), "acme", "summarize", 100 + i, ts(T0 + i)))
            .collect();
        events.push(billing_of("t-victim", "acme", "summarize", 1_000, ts(T0 + 2600)));
        events.push(billing_of("t-after", "acme", "summarize", 1_000, ts(T0 + 2700)));
        env.record_billing(events).await;
        let request = || env.as_tenant("acme", &["analytics:export"], window("", T0, T0 + WINDOW));

        // Sound first: the whole export verifies.
        let (_, signature, _) = env
            .export(Kind::Billing, "/svc/gateway", request())
            .await
            .unwrap()
            .signed();
        assert_eq!(signature.signature.len(), 64);

        let sql = env.sql(&db).await;
        let changed = exec(
            &sql,
            "UPDATE billing_events SET amount_micros = 1 WHERE event_id = 't-victim'",
        )
        .await;
        assert_eq!(changed, 1);
        let collected = env
            .export(Kind::Billing, "/svc/gateway", request())
            .await
            .unwrap();
        let status = collected.error.clone().expect("the export must fail");
        assert_eq!(status.code(), Code::DataLoss, "{} {status:?}", db.label);
        assert_eq!(grpc_reason(&status), "row_integrity");
        assert!(
            status.message().contains("billing_events/t-victim"),
            "{}",
            status.message()
        );
        assert!(collected.signature.is_none(), "no signature after a failing row");
        let sent = collected.bytes();
        assert!(!sent.is_empty(), "rows before the tampered one were streamed");
        let text = String::from_utf8(sent).unwrap();
        assert!(!text.contains("t-victim"), "the tampered row is never exported");
        assert!(!text.contains("t-after"), "nothing after it either");

        // A valid capsule run moved to another tenant fails too.
        env.record_run_as_registry(capsule_run_of("r-moved", "acme", "summarize", T0 + 1))
            .await;
        assert_eq!(
            exec(
                &sql,
                "UPDATE capsule_runs SET tenant = 'globex' WHERE event_id = 'r-moved'"
            )
            .await,
            1
        );
        let collected = env
            .export(
                Kind::Runs,
                "/svc/gateway",
                env.as_tenant("globex", &["analytics:export"], window("", T0, T0 + 10)),
            )
            .await
            .unwrap();
        let status = collected.error.clone().expect("the export must fail");
        assert_eq!(status.code(), Code::DataLoss, "{} {status:?}", db.label);
        assert!(
            status.message().contains("capsule_runs/r-moved"),
            "{}",
            status.message()
        );
        assert!(collected.signature.is_none());

        sql.close().await;
        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_large_export_streams_in_many_bounded_chunks_across_keyset_pages() {
    const ROWS: i64 = 20_000;
    for db in soma_store::testing::engines("analytics_export_stream").await {
        let env = Env::start(&db.settings, None).await;
        // 16 rows share each timestamp, so page boundaries fall inside runs
        // of equal times: only the (time, ledger index) keyset keeps them exact.
        let events: Vec<_> = (0..ROWS)
            .map(|i| billing_of(&format!("s-{i:06}"), "acme", "summarize", i, ts(T0 + i / 16)))
            .collect();
        env.record_billing(events).await;
        env.record_billing(vec![billing_of("s-other", "globex", "summarize", 1, ts(T0))])
            .await;

        let export = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant("acme", &["analytics:export"], window("", T0, T0 + WINDOW)),
            )
            .await
            .unwrap();
        for (i, chunk) in export.chunks.iter().enumerate() {
            assert!(!chunk.is_empty(), "chunk {i} is empty");
            assert!(chunk.len() <= CHUNK_BYTES, "chunk {i} has {} bytes", chunk.len());
        }
        let document = export.document();
        let (bytes, signature, chunks) = export.signed();
        assert!(chunks > 100, "{chunks} chunks for {} bytes", bytes.len());

        let rows = document["rows"].as_array().unwrap();
        assert_eq!(rows.len() as i64, ROWS, "{}", db.label);
        let mut previous: Option<(String, u64)> = None;
        let mut seen = std::collections::HashSet::new();
        for row in rows {
            let key = (
                row["occurred_at"].as_str().unwrap().to_owned(),
                row["ledger_index"].as_u64().unwrap(),
            );
            if let Some(p) = &previous {
                assert!(p < &key, "rows out of order: {p:?} then {key:?}");
            }
            assert!(seen.insert(row["event_id"].as_str().unwrap().to_owned()));
            assert_eq!(row["tenant"], "acme");
            previous = Some(key);
        }
        let key =
            soma_sign::ed25519_public_key_from_pem(&env.verification_key().await.public_key_pem).unwrap();
        soma_sign::verify_ed25519_strict(&key, &bytes, &signature.signature).unwrap();
        assert!(
            rows.iter()
                .all(|r| r["ledger_index"].as_u64().unwrap()
                    < signature.checkpoint.as_ref().unwrap().tree_size)
        );

        env.svc.stop().await;
        db.cleanup().await;
    }
}

/// The signature's nonce is drawn afresh for every export (one pass over
/// the document, no replay): the same window exported twice is the same
/// bytes under two different signatures, each verifying strictly over
/// exactly those bytes and neither over the other export's bytes changed.
#[tokio::test]
async fn each_export_is_signed_with_a_fresh_nonce_and_both_signatures_verify() {
    for db in soma_store::testing::engines("analytics_export_nonce").await {
        let env = Env::start(&db.settings, None).await;
        let events: Vec<_> = (0..300)
            .map(|i| billing_of(&format!("n-{i:04}"), "acme", "summarize", i, ts(T0 + i / 10)))
            .collect();
        env.record_billing(events).await;
        let key =
            soma_sign::ed25519_public_key_from_pem(&env.verification_key().await.public_key_pem).unwrap();
        let mut signed = Vec::new();
        for _ in 0..2 {
            let export = env
                .export(
                    Kind::Billing,
                    "/svc/gateway",
                    env.as_tenant("acme", &["analytics:export"], window("", T0, T0 + WINDOW)),
                )
                .await
                .unwrap();
            let (bytes, signature, _) = export.signed();
            assert_eq!(signature.sha256, soma_sign::sha256(&bytes).to_vec());
            soma_sign::verify_ed25519_strict(&key, &bytes, &signature.signature).unwrap();
            signed.push((bytes, signature.signature));
        }
        let (first, second) = (&signed[0], &signed[1]);
        assert_eq!(first.0, second.0, "{}: the same window, the same bytes", db.label);
        assert_ne!(
            first.1[..32],
            second.1[..32],
            "{}: two signatures share the nonce point R",
            db.label
        );
        let mut changed = first.0.clone();
        let at = changed.len() / 2;
        changed[at] ^= 1;
        for (_, signature) in &signed {
            assert!(soma_sign::verify_ed25519_strict(&key, &changed, signature).is_err());
        }

        env.svc.stop().await;
        db.cleanup().await;
    }
}

/// Rows per keyset page of the service's export reads (`PAGE_ROWS`).
const PAGE_ROWS: usize = 4000;

/// `billing_of` for row `i` of a run with one row per millisecond from
/// `T0`, so that row `i` is the `i`-th exported.
fn billing_at(i: usize, micros: i64) -> pb::RecordBillingEventRequest {
    let i64_i = i64::try_from(i).unwrap();
    billing_of(
        &format!("p-{i:05}"),
        "acme",
        "summarize",
        micros,
        ts_nanos(
            T0 + i64_i / 1000,
            i32::try_from((i64_i % 1000) * 1_000_000).unwrap(),
        ),
    )
}

#[tokio::test]
async fn a_row_tampered_inside_a_page_or_at_a_page_boundary_ends_the_export_right_before_it() {
    // Three pages: the checks of a page run in two halves, and the next page
    // is read while one is checked; a failing row in any position must still
    // end the document right before it.
    const ROWS: usize = 2 * PAGE_ROWS + 2;
    for db in soma_store::testing::engines("analytics_export_tamper_positions").await {
        let env = Env::start(&db.settings, None).await;
        env.record_billing((0..ROWS).map(|i| billing_at(i, 100)).collect())
            .await;
        let request = || env.as_tenant("acme", &["analytics:export"], window("", T0, T0 + WINDOW));
        let sql = env.sql(&db).await;

        let (sound, _, _) = env
            .export(Kind::Billing, "/svc/gateway", request())
            .await
            .unwrap()
            .signed();
        struct Case {
            name: &'static str,
            /// Position of the tampered row in the export.
            row: usize,
        }
        let cases = [
            Case {
                name: "first row",
                row: 0,
            },
            Case {
                name: "middle of the first page",
                row: 1234,
            },
            Case {
                name: "first row of a page's second half",
                row: PAGE_ROWS / 2,
            },
            Case {
                name: "last row of the first page",
                row: PAGE_ROWS - 1,
            },
            Case {
                name: "first row of the second page",
                row: PAGE_ROWS,
            },
            Case {
                name: "last row of the second page's first half",
                row: PAGE_ROWS + PAGE_ROWS / 2 - 1,
            },
            Case {
                name: "last row of the second page",
                row: 2 * PAGE_ROWS - 1,
            },
            Case {
                name: "first row of the last page",
                row: 2 * PAGE_ROWS,
            },
            Case {
                name: "last row",
                row: ROWS - 1,
            },
        ];
        for case in cases {
            let victim = format!("p-{:05}", case.row);
            let update = |micros: i64| {
                format!("UPDATE billing_events SET amount_micros = {micros} WHERE event_id = '{victim}'")
            };
            assert_eq!(exec(&sql, &update(101)).await, 1, "{}", case.name);
            let collected = env
                .export(Kind::Billing, "/svc/gateway", request())
                .await
                .unwrap();
            let status = collected.error.clone().expect("the export must fail");
            assert_eq!(
                status.code(),
                Code::DataLoss,
                "{} {}: {status:?}",
                db.label,
                case.name
            );
            assert_eq!(grpc_reason(&status), "row_integrity", "{}", case.name);
            assert!(
                status.message().contains(&format!("billing_events/{victim}")),
                "{}: {}",
                case.name,
                status.message()
            );
            assert!(collected.signature.is_none(), "{}: no signature", case.name);
            // A prefix of the sound document that ends before the victim:
            // the whole chunks filled before it (the chunk being filled when
            // the victim failed is dropped, never sent).
            let sent = collected.bytes();
            let victim_at = find(&sound, format!("{{\"amount_micros\":100,\"currency\":\"EUR\",\"duration_micros\":2500,\"event_id\":\"{victim}\"").as_bytes())
                .unwrap_or_else(|| panic!("{}: the victim is in the sound export", case.name));
            let end = if case.row == 0 { victim_at } else { victim_at - 1 };
            assert!(
                sent.len() <= end && end - sent.len() <= CHUNK_BYTES,
                "{} {}: {} bytes sent, the victim starts at {end}",
                db.label,
                case.name,
                sent.len()
            );
            assert_eq!(sent, sound[..sent.len()], "{} {}", db.label, case.name);
            assert_eq!(exec(&sql, &update(100)).await, 1, "{}", case.name);
        }
        // Restored: the export is again the sound one, byte for byte.
        let (again, _, _) = env
            .export(Kind::Billing, "/svc/gateway", request())
            .await
            .unwrap()
            .signed();
        assert_eq!(again, sound, "{}", db.label);

        sql.close().await;
        env.svc.stop().await;
        db.cleanup().await;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn an_export_is_byte_for_byte_the_document_serde_json_writes() {
    // Varied numbers (zero, powers of ten, above 2^53, near the largest a
    // count can be) across several pages and many chunks, so that rows
    // written in place into a chunk and rows moved to the next one are both
    // compared.
    const ROWS: usize = PAGE_ROWS + 1500;
    let numbers = [
        0,
        1,
        9,
        10,
        999_999,
        1_000_000,
        9_007_199_254_740_993,
        i64::MAX / 2,
        i64::MAX,
    ];
    for db in soma_store::testing::engines("analytics_export_bytes").await {
        let env = Env::start(&db.settings, None).await;
        let events: Vec<_> = (0..ROWS)
            .map(|i| {
                let mut event = billing_at(i, numbers[i % numbers.len()]);
                event.fuel_consumed = u64::try_from(numbers[(i / 3) % numbers.len()]).unwrap();
                event.duration_micros = u64::try_from(numbers[(i / 7) % numbers.len()]).unwrap();
                event.peak_memory_bytes = u64::try_from(numbers[(i / 11) % numbers.len()]).unwrap();
                event.tool_version = format!("{}.{}.{}-rc.{i}+b.{}", i % 3, i % 100, i, i % 17);
                event.tool = ["summarize", "a", "tool_with.dots-and:colons"][i % 3].to_owned();
                event
            })
            .collect();
        env.record_billing(events.clone()).await;
        let collected = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant("acme", &["analytics:export"], window("", T0, T0 + WINDOW)),
            )
            .await
            .unwrap();
        let (bytes, signature, chunks) = collected.signed();
        assert!(chunks > 20, "{chunks} chunks");
        let document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let checkpoint = signature.checkpoint.as_ref().unwrap();

        // The document as serde_json writes it: the header member by
        // member, each row as a map (members sorted by name).
        let string = |s: &str| serde_json::Value::from(s).to_string();
        let mut expected = format!(
            "{{\"kind\":\"billing_ledger\",\"tenant\":\"acme\",\"from\":{},\"to\":{},\"checkpoint\":{{\"origin\":{},\
             \"tree_size\":{},\"root_hash\":{}}},\"rows\":[",
            string("2026-09-21T14:13:20.000000000Z"),
            string("2026-09-21T15:13:20.000000000Z"),
            string(&checkpoint.origin),
            checkpoint.tree_size,
            string(
                &soma_ledger::Hash::from_slice(&checkpoint.root_hash)
                    .unwrap()
                    .to_base64()
            ),
        );
        let indices: Vec<u64> = document["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ledger_index"].as_u64().unwrap())
            .collect();
        assert_eq!(indices.len(), ROWS, "{}", db.label);
        for (i, (event, index)) in events.iter().zip(&indices).enumerate() {
            let at = event.occurred_at.unwrap();
            let row = serde_json::json!({
                "amount_micros": event.amount.as_ref().unwrap().micros,
                "currency": "EUR",
                "duration_micros": event.duration_micros,
                "event_id": event.event_id,
                "fuel_consumed": event.fuel_consumed,
                "ledger_index": index,
                "module_sha256": hex(&event.module_sha256),
                // Rows span seconds 0 to 5 after T0 (14:13:20).
                "occurred_at": format!("2026-09-21T14:13:{:02}.{:09}Z", 20 + at.seconds - T0, at.nanos),
                "peak_memory_bytes": event.peak_memory_bytes,
                "recorded_by": env.ca.id("/svc/tool-registry").to_string(),
                "run_id": event.run_id,
                "tenant": "acme",
                "tool": event.tool,
                "tool_version": event.tool_version,
            });
            if i > 0 {
                expected.push(',');
            }
            expected.push_str(&row.to_string());
        }
        expected.push_str("]}\n");
        assert_eq!(String::from_utf8(bytes).unwrap(), expected, "{}", db.label);

        env.svc.stop().await;
        db.cleanup().await;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
