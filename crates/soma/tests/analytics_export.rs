//! Analytics' signed exports, on SQLite and on PostgreSQL, through the real
//! service over mTLS: exactly a tenant's window, verified by three
//! independent verifiers (soma-sign, Python `cryptography`, the `soma`
//! binary), bound to a checkpoint that verifies, tenancy and window checks,
//! tampered rows refused, and streaming in bounded chunks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::exec;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::{
    Ca, Running, analytics_config, channel, operator_claims_request, start_analytics, tenant_request,
};
use futures::StreamExt as _;
use soma_auth::ClaimsSigner;
use soma_identity::SpiffeId;
use soma_ledger::CheckpointVerifier;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::Database;
use tonic::Code;
use tonic::transport::Channel;

/// Start of the test window: 2026-09-21T14:13:20Z.
const T0: i64 = 1_790_000_000;
/// The window is one hour.
const WINDOW: i64 = 3600;
/// Largest chunk the service promises.
const CHUNK_BYTES: usize = 32 * 1024;

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn billing(
    event_id: &str,
    tenant: &str,
    tool: &str,
    micros: i64,
    at: (i64, i32),
) -> pb::RecordBillingEventRequest {
    pb::RecordBillingEventRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        tool: tool.to_owned(),
        tool_version: "1.2.0".to_owned(),
        amount: Some(pb::Money {
            currency: "EUR".to_owned(),
            micros,
        }),
        fuel_consumed: 1000,
        duration_micros: 2500,
        occurred_at: ts(at.0, at.1),
        run_id: format!("run-{event_id}"),
    }
}

fn capsule_run(event_id: &str, tenant: &str, tool: &str, at: i64) -> pb::RecordCapsuleRunRequest {
    pb::RecordCapsuleRunRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        capsule_id: "capsule-1".to_owned(),
        tool: tool.to_owned(),
        run_id: format!("run-{event_id}"),
        outcome: pb::RunOutcome::Succeeded as i32,
        started_at: ts(at, 0),
        duration: Some(prost_types::Duration {
            seconds: 2,
            nanos: 500,
        }),
    }
}

fn window(tenant: &str, from: i64, to: i64) -> pb::ExportRequest {
    pb::ExportRequest {
        tenant: tenant.to_owned(),
        from: ts(from, 0),
        to: ts(to, 0),
        tool: String::new(),
        service: String::new(),
    }
}

/// A running Analytics with the identities the tests call it as.
struct Env {
    ca: Ca,
    svc: Running,
    claims: ClaimsSigner,
    analytics_id: SpiffeId,
    config_public_key: [u8; 32],
    origin: String,
}

impl Env {
    async fn start(settings: &soma_store::StoreSettings, max_span: Option<Duration>) -> Self {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let mut config = analytics_config();
        if let Some(span) = max_span {
            config.max_export_span = span;
        }
        let config_public_key = soma_sign::Ed25519Signer::from_pkcs8_pem(
            soma_sign::KeyId::new("analytics-1").unwrap(),
            &config.signing_key_pem,
        )
        .unwrap()
        .public_key();
        let origin = config.ledger_origin.clone();
        let svc = start_analytics(&ca, settings, config, Some(&claims)).await;
        let analytics_id = ca.id("/svc/analytics");
        Self {
            ca,
            svc,
            claims,
            analytics_id,
            config_public_key,
            origin,
        }
    }

    fn client(&self, path: &str) -> AnalyticsClient<Channel> {
        let store = self.ca.store(path, Duration::from_secs(600));
        AnalyticsClient::new(channel(store, self.svc.addr, &self.svc.id))
    }

    /// Records billing events as the tool registry (no claims).
    async fn record_billing(&self, events: Vec<pb::RecordBillingEventRequest>) {
        let client = self.client("/svc/tool-registry");
        let results: Vec<_> = futures::stream::iter(events)
            .map(|e| {
                let mut client = client.clone();
                async move { client.record_billing_event(e).await }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for r in results {
            r.unwrap();
        }
    }

    /// Records a capsule run as the gateway with `tenant`'s claims.
    async fn record_run_as_tenant(&self, tenant: &str, run: pb::RecordCapsuleRunRequest) {
        let request = tenant_request(
            &self.claims,
            &self.analytics_id,
            tenant,
            &["analytics:ingest"],
            run,
        );
        self.client("/svc/gateway")
            .record_capsule_run(request)
            .await
            .unwrap();
    }

    /// Records a capsule run as the tool registry (tenant in the body).
    async fn record_run_as_registry(&self, run: pb::RecordCapsuleRunRequest) {
        self.client("/svc/tool-registry")
            .record_capsule_run(run)
            .await
            .unwrap();
    }

    /// An export request from the gateway with `tenant`'s claims.
    fn as_tenant(
        &self,
        tenant: &str,
        caps: &[&str],
        r: pb::ExportRequest,
    ) -> tonic::Request<pb::ExportRequest> {
        tenant_request(&self.claims, &self.analytics_id, tenant, caps, r)
    }

    async fn export(
        &self,
        kind: Kind,
        from_path: &str,
        request: tonic::Request<pb::ExportRequest>,
    ) -> Result<Collected, tonic::Status> {
        let mut client = self.client(from_path);
        let stream = match kind {
            Kind::Billing => client.export_billing_ledger(request).await?,
            Kind::Runs => client.export_capsule_runs(request).await?,
        }
        .into_inner();
        Ok(collect(stream).await)
    }

    async fn verification_key(&self) -> pb::VerificationKey {
        let mut keys = self
            .client("/operator/alice")
            .list_verification_keys(pb::ListVerificationKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        assert_eq!(keys.len(), 1, "{keys:?}");
        keys.remove(0)
    }

    /// A direct SQL connection to the service's database.
    async fn sql(&self, db: &soma_store::testing::TestDb) -> Database {
        Database::connect(&db.settings, "analytics").await.unwrap()
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Billing,
    Runs,
}

/// Everything a stream delivered.
struct Collected {
    /// Each data chunk, in order.
    chunks: Vec<Vec<u8>>,
    /// The signature message, when one came.
    signature: Option<pb::ExportSignature>,
    /// The error that ended the stream, if any.
    error: Option<tonic::Status>,
    /// Whether any message carried both data and a signature, or a data
    /// message followed the signature.
    malformed: bool,
}

impl Collected {
    fn bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// The complete, signed export; panics on an error or a missing signature.
    fn signed(self) -> (Vec<u8>, pb::ExportSignature, usize) {
        assert!(self.error.is_none(), "{:?}", self.error);
        assert!(!self.malformed, "signature must come alone, last");
        let bytes = self.bytes();
        (
            bytes,
            self.signature.expect("a signature message"),
            self.chunks.len(),
        )
    }

    fn document(&self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes()).unwrap()
    }
}

async fn collect(mut stream: tonic::Streaming<pb::ExportChunk>) -> Collected {
    let mut out = Collected {
        chunks: Vec::new(),
        signature: None,
        error: None,
        malformed: false,
    };
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                if out.signature.is_some() || (chunk.signature.is_some() && !chunk.data.is_empty()) {
                    out.malformed = true;
                }
                if let Some(sig) = chunk.signature {
                    out.signature = Some(sig);
                } else {
                    out.chunks.push(chunk.data);
                }
            }
            Ok(None) => return out,
            Err(status) => {
                out.error = Some(status);
                return out;
            }
        }
    }
}

fn event_ids(document: &serde_json::Value) -> Vec<String> {
    document["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn reason(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get("soma-reason")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Runs a command and returns (exit code, stdout, stderr).
async fn run(program: &Path, args: &[&Path]) -> (i32, String, String) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

async fn soma_verify(file: &Path, sig: &Path, key: &Path) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"))
        .arg("verify")
        .arg("export")
        .arg(file)
        .arg("--signature")
        .arg(sig)
        .arg("--public-key")
        .arg(key)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn an_export_is_exactly_the_tenants_window_and_verifies_with_three_independent_verifiers() {
    for db in soma_store::testing::engines("analytics_export_window").await {
        let env = Env::start(&db.settings, None).await;
        let from = T0;
        let to = T0 + WINDOW;
        // Recorded out of time order, so the export's order (time, then
        // ledger index) differs from the ledger's.
        env.record_billing(vec![
            billing("b-acme-3", "acme", "summarize", 0, (to - 1, 999_999_999)),
            billing("b-acme-late", "acme", "summarize", 7, (to, 0)),
            billing("b-acme-1", "acme", "summarize", 1_500_000, (from, 0)),
            billing("b-acme-early", "acme", "summarize", 7, (from - 1, 999_999_999)),
            billing("b-globex-1", "globex", "summarize", 9, (from + 5, 0)),
        ])
        .await;
        env.record_billing(vec![billing(
            "b-acme-2",
            "acme",
            "translate",
            250,
            (from + 10, 123_456_789),
        )])
        .await;
        env.record_run_as_tenant("acme", capsule_run("r-acme-gw-2", "", "", from + 2))
            .await;
        env.record_run_as_tenant("acme", capsule_run("r-acme-gw-1", "", "summarize", from + 1))
            .await;
        env.record_run_as_tenant("globex", capsule_run("r-globex-gw", "", "summarize", from + 1))
            .await;
        env.record_run_as_registry(capsule_run("r-acme-tr-1", "acme", "translate", from + 3))
            .await;
        env.record_run_as_registry(capsule_run("r-acme-tr-out", "acme", "translate", to + 3))
            .await;

        // The verification key is the service's signing key.
        let key = env.verification_key().await;
        assert_eq!(key.key_id, "analytics-1");
        let public_key = soma_sign::ed25519_public_key_from_pem(&key.public_key_pem).unwrap();
        assert_eq!(public_key, env.config_public_key, "{}", db.label);

        let export = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant("acme", &["analytics:export"], window("", from, to)),
            )
            .await
            .unwrap();
        let document = export.document();
        let (bytes, signature, _) = export.signed();

        // Exactly acme's rows in [from, to), in time order.
        assert_eq!(
            event_ids(&document),
            ["b-acme-1", "b-acme-2", "b-acme-3"],
            "{}",
            db.label
        );
        assert_eq!(document["kind"], "billing_ledger");
        assert_eq!(document["tenant"], "acme");
        assert_eq!(document["from"], "2026-09-21T14:13:20.000000000Z");
        assert_eq!(document["to"], "2026-09-21T15:13:20.000000000Z");
        let rows = document["rows"].as_array().unwrap();
        let first = rows[0].clone();
        let first_index = first["ledger_index"].as_u64().unwrap();
        assert_eq!(
            first,
            serde_json::json!({
                "event_id": "b-acme-1",
                "ledger_index": first_index,
                "tenant": "acme",
                "tool": "summarize",
                "tool_version": "1.2.0",
                "amount_micros": 1_500_000,
                "currency": "EUR",
                "fuel_consumed": 1000,
                "duration_micros": 2500,
                "occurred_at": "2026-09-21T14:13:20.000000000Z",
                "run_id": "run-b-acme-1",
                "recorded_by": "spiffe://somastack.test/svc/tool-registry",
            }),
            "{}",
            db.label
        );
        assert_eq!(rows[1]["occurred_at"], "2026-09-21T14:13:30.123456789Z");
        assert_eq!(rows[1]["amount_micros"], 250);
        assert_eq!(rows[2]["occurred_at"], "2026-09-21T15:13:19.999999999Z");
        assert_eq!(rows[2]["amount_micros"], 0);

        // The signature: soma-sign's strict verify over the exact bytes.
        assert_eq!(signature.key_id, "analytics-1");
        assert_eq!(signature.sha256, soma_sign::sha256(&bytes).to_vec());
        soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x01;
        assert!(soma_sign::verify_ed25519_strict(&public_key, &flipped, &signature.signature).is_err());

        // The checkpoint it was cut at verifies, and bounds every index.
        let checkpoint = signature.checkpoint.clone().unwrap();
        let verified = CheckpointVerifier::new(env.origin.clone(), &public_key)
            .unwrap()
            .verify(&checkpoint.note)
            .unwrap();
        assert_eq!(verified.tree_size(), checkpoint.tree_size);
        assert_eq!(
            verified.root().as_bytes().as_slice(),
            checkpoint.root_hash.as_slice()
        );
        assert_eq!(verified.origin(), checkpoint.origin);
        assert_eq!(document["checkpoint"]["tree_size"], checkpoint.tree_size);
        assert_eq!(document["checkpoint"]["origin"], checkpoint.origin);
        assert_eq!(document["checkpoint"]["root_hash"], verified.root().to_base64());
        assert_eq!(
            checkpoint.tree_size, 11,
            "every append so far is in the cut: {}",
            db.label
        );
        for row in rows {
            assert!(
                row["ledger_index"].as_u64().unwrap() < verified.tree_size(),
                "{row}"
            );
        }

        // Offline: Python `cryptography` and the `soma` binary.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.json");
        let sig = dir.path().join("export.sig");
        let pem = dir.path().join("analytics-1.pem");
        std::fs::write(&file, &bytes).unwrap();
        std::fs::write(
            &sig,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(&signature.signature)
            ),
        )
        .unwrap();
        std::fs::write(&pem, &key.public_key_pem).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/verify_export.py");
        let (code, stdout, stderr) = run(&common::python(), &[&script, &file, &sig, &pem]).await;
        assert_eq!(code, 0, "{stdout}{stderr}");
        let py: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(
            py,
            serde_json::json!({"valid": true, "kind": "billing_ledger", "tenant": "acme", "rows": 3, "tree_size": 11})
        );
        let (code, stdout, stderr) = soma_verify(&file, &sig, &pem).await;
        assert_eq!((code, stdout.as_str()), (0, "valid\n"), "{stderr}");

        // One byte changed: both refuse it.
        let tampered = dir.path().join("tampered.json");
        let mut changed = bytes.clone();
        let at = changed.windows(7).position(|w| w == b"1500000").unwrap();
        changed[at] = b'2';
        std::fs::write(&tampered, &changed).unwrap();
        let (code, stdout, stderr) = run(&common::python(), &[&script, &tampered, &sig, &pem]).await;
        assert_eq!(code, 1, "{stdout}{stderr}");
        let (code, _, stderr) = soma_verify(&tampered, &sig, &pem).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.starts_with("invalid: "), "{stderr}");

        // Unusable input: exit 2 with one line on stderr.
        let garbage = dir.path().join("garbage.sig");
        std::fs::write(&garbage, "this is not base64!\n").unwrap();
        let short = dir.path().join("short.sig");
        std::fs::write(
            &short,
            base64::engine::general_purpose::STANDARD.encode([7u8; 63]),
        )
        .unwrap();
        let bad_pem = dir.path().join("bad.pem");
        std::fs::write(
            &bad_pem,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.json");
        struct Case<'a> {
            name: &'static str,
            file: &'a Path,
            sig: &'a Path,
            key: &'a Path,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "garbage signature",
                file: &file,
                sig: &garbage,
                key: &pem,
                expected: "not standard base64",
            },
            Case {
                name: "63-byte signature",
                file: &file,
                sig: &short,
                key: &pem,
                expected: "63 bytes",
            },
            Case {
                name: "bad pem",
                file: &file,
                sig: &sig,
                key: &bad_pem,
                expected: "public key",
            },
            Case {
                name: "missing file",
                file: &missing,
                sig: &sig,
                key: &pem,
                expected: "missing.json",
            },
            Case {
                name: "missing key",
                file: &file,
                sig: &sig,
                key: &missing,
                expected: "missing.json",
            },
        ];
        for c in cases {
            let (code, stdout, stderr) = soma_verify(c.file, c.sig, c.key).await;
            assert_eq!(code, 2, "{}: {stdout}{stderr}", c.name);
            assert_eq!(stderr.lines().count(), 1, "{}: {stderr}", c.name);
            assert!(stderr.contains(c.expected), "{}: {stderr}", c.name);
        }

        // The tool filter.
        let mut only_translate = window("", from, to);
        only_translate.tool = "translate".to_owned();
        let export = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant("acme", &["analytics:export"], only_translate),
            )
            .await
            .unwrap();
        assert_eq!(event_ids(&export.document()), ["b-acme-2"]);
        let (bytes, signature, _) = export.signed();
        soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();

        // Capsule runs, and the service filter (the recorder's last path segment).
        struct Filter {
            service: &'static str,
            expected: &'static [&'static str],
        }
        for f in [
            Filter {
                service: "",
                expected: &["r-acme-gw-1", "r-acme-gw-2", "r-acme-tr-1"],
            },
            Filter {
                service: "gateway",
                expected: &["r-acme-gw-1", "r-acme-gw-2"],
            },
            Filter {
                service: "tool-registry",
                expected: &["r-acme-tr-1"],
            },
            Filter {
                service: "capsule-repo",
                expected: &[],
            },
        ] {
            let mut request = window("", from, to);
            request.service = f.service.to_owned();
            let export = env
                .export(
                    Kind::Runs,
                    "/svc/gateway",
                    env.as_tenant("acme", &["analytics:export"], request),
                )
                .await
                .unwrap();
            let document = export.document();
            assert_eq!(event_ids(&document), f.expected, "{} {:?}", db.label, f.service);
            assert_eq!(document["kind"], "capsule_runs");
            let (bytes, signature, _) = export.signed();
            soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();
            if f.service == "gateway" {
                let run = &document["rows"][0];
                assert_eq!(run["started_at"], "2026-09-21T14:13:21.000000000Z");
                assert_eq!(run["duration_nanos"], 2_000_000_500_i64);
                assert_eq!(run["outcome"], "succeeded");
                assert_eq!(run["recorded_by"], "spiffe://somastack.test/svc/gateway");
            }
        }

        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn tenancy_and_the_window_are_checked_before_anything_is_exported() {
    for db in soma_store::testing::engines("analytics_export_tenancy").await {
        let span = Duration::from_secs(24 * 3600);
        let env = Env::start(&db.settings, Some(span)).await;
        env.record_billing(vec![
            billing("a-1", "acme", "summarize", 1, (T0 + 1, 0)),
            billing("g-1", "globex", "summarize", 2, (T0 + 2, 0)),
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
        bad_nanos.to = ts(T0 + 10, 1_000_000_000);
        let mut bad_tool = window("", T0, T0 + 10);
        bad_tool.tool = "sum marize".to_owned();
        let mut bad_service = window("", T0, T0 + 10);
        bad_service.service = "svc/gateway".to_owned();
        let mut one_ns_over = window("", T0, T0 + day);
        one_ns_over.to = ts(T0 + day, 1);
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
                        assert_eq!(reason(&status).as_deref(), Some(*why), "{}", c.name);
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
            .map(|i| billing(&format!("t-{i:05}"), "acme", "summarize", 100 + i, (T0 + i, 0)))
            .collect();
        events.push(billing("t-victim", "acme", "summarize", 1_000, (T0 + 2600, 0)));
        events.push(billing("t-after", "acme", "summarize", 1_000, (T0 + 2700, 0)));
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
        assert_eq!(reason(&status).as_deref(), Some("row_integrity"));
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
        env.record_run_as_registry(capsule_run("r-moved", "acme", "summarize", T0 + 1))
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
            .map(|i| billing(&format!("s-{i:06}"), "acme", "summarize", i, (T0 + i / 16, 0)))
            .collect();
        env.record_billing(events).await;
        env.record_billing(vec![billing("s-other", "globex", "summarize", 1, (T0, 0))])
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
