//! A capsule, end to end, on a real `soma up` (embedded SQLite), through
//! the JSON edge: the `text_stats` release signed and published, the
//! repository's example bundle attested with `soma capsule attest` and
//! submitted with `soma capsule submit`, reviewed by a second person with a
//! second factor (the submitter cannot review it, a reviewer without MFA is
//! refused), installed, and run with `RunCapsule`; the run and its billing
//! event are in Analytics' signed exports, each verifying with
//! `soma verify export`, the run with its provenance (capsule version,
//! bundle digest, environment, revision, moderation decision). Another
//! tenant's run of the same capsule is 404; once the release is revoked a
//! run is 409 `release_revoked` and nothing executes; a token that may not execute
//! tools may not run a capsule. A review-history row edited in SQL is
//! refused by the read and named by `soma verify store --service
//! capsule-repo`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use common::cli::{head_only, ok, rfc3339, sign_text_stats, soma, wait_for_edge};

/// The repository's example bundle.
fn example_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capsule/bundles/text-stats.capsule.json")
}

/// The data bytes and the detached signature of an NDJSON export stream.
fn export_parts(body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut data = Vec::new();
    let mut signature = None;
    for line in text.lines() {
        let chunk: Value = serde_json::from_str(line).unwrap();
        if let Some(d) = chunk["data"].as_str() {
            data.extend(base64::engine::general_purpose::STANDARD.decode(d).unwrap());
        }
        if let Some(s) = chunk["signature"]["signature"].as_str() {
            signature = Some(base64::engine::general_purpose::STANDARD.decode(s).unwrap());
        }
    }
    (data, signature.expect("a signed export"))
}

/// How `service`'s claims verifier has checked envelopes so far, from its
/// `/metrics` (the admin listener `soma up` wrote to `endpoints.json`):
/// (signatures verified in full, verdicts reused).
async fn envelope_checks(data: &Path, service: &str) -> (u64, u64) {
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let admin = endpoints["admin"][service].as_str().unwrap();
    let r = common::edge::send(
        &common::edge::client(),
        "GET",
        &format!("http://{admin}/metrics"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let count = |check: &str| {
        let series = format!("soma_claims_envelopes_total{{check=\"{check}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.parse().ok())
            .unwrap_or_else(|| panic!("{service}: no {series} in /metrics"))
    };
    (count("signature"), count("reused"))
}

struct Edge {
    url: String,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Edge {
    /// `RunCapsule` of the example capsule with `body`.
    async fn run(&self, token: &str, body: Value) -> common::edge::Reply {
        self.call("POST", "/v1/capsules/text-stats:run", token, Some(body))
            .await
    }

    async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> common::edge::Reply {
        let body = body.map(|b| b.to_string());
        common::edge::send(
            &self.http,
            method,
            &format!("{}{path}", self.url),
            Some(token),
            body.as_deref(),
            &[],
        )
        .await
    }

    /// The signed export at `path` once it holds a row `matching`: the
    /// document, and `soma verify export`'s verdict on its bytes.
    async fn verified_export(
        &self,
        path: &str,
        token: &str,
        work: &Path,
        name: &str,
        matching: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.call("GET", path, token, None).await;
            assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
            let (data, signature) = export_parts(&r.body);
            let document: Value = serde_json::from_slice(&data).unwrap();
            if document["rows"].as_array().unwrap().iter().any(&matching) {
                let keys = self.call("GET", "/v1/exports/keys", token, None).await;
                assert_eq!(keys.status, 200, "{}", String::from_utf8_lossy(&keys.body));
                let pem = keys.json()["keys"][0]["publicKeyPem"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let (file, sig, key) = (
                    work.join(format!("{name}.json")),
                    work.join(format!("{name}.sig")),
                    work.join(format!("{name}.pub")),
                );
                std::fs::write(&file, &data).unwrap();
                std::fs::write(&sig, base64::engine::general_purpose::STANDARD.encode(&signature)).unwrap();
                std::fs::write(&key, pem).unwrap();
                let verify = || {
                    soma(
                        &[
                            "verify",
                            "export",
                            file.to_str().unwrap(),
                            "--signature",
                            sig.to_str().unwrap(),
                            "--public-key",
                            key.to_str().unwrap(),
                        ],
                        work,
                    )
                };
                ok(&verify());
                // One byte changed: refused.
                let mut changed = data.clone();
                changed[10] ^= 1;
                std::fs::write(&file, &changed).unwrap();
                let refused = verify();
                assert_eq!(
                    refused.status.code(),
                    Some(1),
                    "{name}: a changed export must not verify"
                );
                return document;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: no matching row in time: {document}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_goes_from_attested_submission_to_a_recorded_run_through_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &[]);
    let edge = Edge {
        url: wait_for_edge(&data).await,
        http: common::edge::client(),
    };
    let data_arg = data.to_str().unwrap();
    let work = dir.path();
    let token = |tenant: &str, subject: &str, scope: &str, mfa: bool| {
        let mut args = vec![
            "token",
            "--data-dir",
            data_arg,
            "--tenant",
            tenant,
            "--subject",
            subject,
            "--region",
            "local",
            "--scope",
            scope,
        ];
        if mfa {
            args.push("--mfa");
        }
        ok(&soma(&args, work)).trim().to_owned()
    };

    // The release the bundle pins: text-stats 1.0.0, the text_stats adapter.
    let key_id = ok(&soma(&["release", "keygen", "--out", "pub"], work))
        .trim()
        .to_owned();
    ok(&soma(
        &[
            "release",
            "publisher",
            "add",
            "--data-dir",
            data_arg,
            "--name",
            "acme-tools",
            "--public-key",
            "pub/publisher.pub",
        ],
        work,
    ));
    sign_text_stats(work, "pub/publisher.key");
    ok(&soma(
        &[
            "release",
            "publish",
            "--envelope",
            "envelope.json",
            "--module",
            "text_stats.wat",
            "--token",
            &token("acme", "publisher@acme", "tools:publish", true),
            "--data-dir",
            data_arg,
        ],
        work,
    ));

    // Attested with the publisher's key, submitted by alice.
    let bundle = example_bundle();
    let bundle_arg = bundle.to_str().unwrap();
    let digest = ok(&soma(&["capsule", "digest", bundle_arg], work))
        .trim()
        .to_owned();
    ok(&soma(
        &[
            "capsule",
            "attest",
            "--bundle",
            bundle_arg,
            "--key",
            "pub/publisher.key",
            "--out",
            "attestation.json",
        ],
        work,
    ));
    let alice = token(
        "acme",
        "alice@acme",
        "capsules:submit capsules:read capsules:review",
        true,
    );
    let submitted: Value = serde_json::from_str(&ok(&soma(
        &[
            "capsule",
            "submit",
            "--edge",
            &edge.url,
            "--token",
            &alice,
            "--bundle",
            bundle_arg,
            "--envelope",
            "attestation.json",
        ],
        work,
    )))
    .unwrap();
    let id = submitted["submissionId"].as_str().unwrap().to_owned();
    assert_eq!(submitted["state"], "SUBMISSION_STATE_PENDING", "{submitted}");
    assert_eq!(submitted["submitter"], "alice@acme", "{submitted}");
    assert_eq!(submitted["publisher"], "acme-tools", "{submitted}");
    assert_eq!(submitted["signerKeyIds"], json!([key_id]), "{submitted}");
    let bundle_b64 = submitted["bundleSha256"].as_str().unwrap();
    let bundle_hex: String = base64::engine::general_purpose::STANDARD
        .decode(bundle_b64)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(bundle_hex, digest);

    // Bad input at the edge: each refused with its status and reason, and
    // no submission written.
    let submissions = || async {
        let r = edge.call("GET", "/v1/submissions", &alice, None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["submissions"].as_array().map_or(0, Vec::len)
    };
    let before = submissions().await;
    assert_eq!(before, 1);
    let bundle_bytes = std::fs::read(&bundle).unwrap();
    let envelope: Value =
        serde_json::from_slice(&std::fs::read(work.join("attestation.json")).unwrap()).unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let good = json!({
        "capsule": "text-stats",
        "version": "1.0.0",
        "bundle": b64(&bundle_bytes),
        "attestation": envelope,
    });
    let with = |path: &[&str], value: Value| {
        let mut body = good.clone();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        body
    };
    // A bundle whose version is not SemVer, canonical otherwise.
    let mut not_semver: Value = serde_json::from_slice(&bundle_bytes).unwrap();
    not_semver["version"] = json!("1.0");
    let not_semver = soma_sign::jcs::canonicalize(&not_semver).unwrap();
    struct Case {
        name: &'static str,
        body: String,
        status: u16,
        reason: &'static str,
    }
    let cases = [
        Case {
            name: "bundle of the wrong JSON type",
            body: with(&["bundle"], json!(5)).to_string(),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "attestation of the wrong JSON type",
            body: with(&["attestation"], json!("envelope")).to_string(),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "an unknown field",
            body: with(&["reviewer"], json!("alice@acme")).to_string(),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "a bundle that is not base64",
            body: with(&["bundle"], json!("not base64!")).to_string(),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "a version that is not SemVer",
            body: with(&["version"], json!("1.0")).to_string(),
            status: 400,
            reason: "version_mismatch",
        },
        Case {
            name: "a bundle whose version is not SemVer",
            body: json!({"capsule": "text-stats", "version": "1.0", "bundle": b64(&not_semver), "attestation": envelope})
                .to_string(),
            status: 400,
            reason: "version_invalid",
        },
    ];
    for case in &cases {
        let r = common::edge::send(
            &edge.http,
            "POST",
            &format!("{}/v1/submissions", edge.url),
            Some(&alice),
            Some(&case.body),
            &[],
        )
        .await;
        assert_eq!(
            (r.status, r.reason()),
            (case.status, case.reason.to_owned()),
            "{}: {}",
            case.name,
            String::from_utf8_lossy(&r.body)
        );
    }
    // An oversized bundle is refused from the head: the edge answers before
    // reading a byte of the body (and closes), so only the head is sent.
    let (status, reply) = head_only(&format!("{}/v1/submissions", edge.url), &alice, 2 * 1024 * 1024).await;
    assert_eq!(
        (status, reply["reason"].as_str()),
        (413, Some("body_too_large")),
        "{reply}"
    );
    assert_eq!(submissions().await, before, "nothing written");

    // Another tenant sees, reviews and installs nothing of acme's: each
    // answered as if it did not exist.
    let globex_all = token(
        "globex",
        "erin@globex",
        "capsules:read capsules:review installations:write installations:read",
        true,
    );
    let r = edge
        .call("GET", &format!("/v1/submissions/{id}"), &globex_all, None)
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let r = edge.call("GET", "/v1/submissions", &globex_all, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["submissions"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.json()
    );
    let r = edge
        .call(
            "POST",
            &format!("/v1/submissions/{id}:review"),
            &globex_all,
            Some(json!({"decision": "REVIEW_DECISION_START_REVIEW"})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    // Review: not by the submitter; not without a second factor.
    let review = |decision: &str| json!({"decision": decision, "comment": "looked at the schema"});
    let path = format!("/v1/submissions/{id}:review");
    let r = edge
        .call(
            "POST",
            &path,
            &alice,
            Some(review("REVIEW_DECISION_START_REVIEW")),
        )
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (403, "self_review".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let bob_without_mfa = token("acme", "bob@acme", "capsules:review capsules:read", false);
    let r = edge
        .call(
            "POST",
            &path,
            &bob_without_mfa,
            Some(review("REVIEW_DECISION_START_REVIEW")),
        )
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (401, "insufficient_user_authentication".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let bob = token("acme", "bob@acme", "capsules:review capsules:read", true);
    for (decision, state) in [
        ("REVIEW_DECISION_START_REVIEW", "SUBMISSION_STATE_IN_REVIEW"),
        ("REVIEW_DECISION_APPROVE", "SUBMISSION_STATE_APPROVED"),
    ] {
        let r = edge.call("POST", &path, &bob, Some(review(decision))).await;
        assert_eq!(r.status, 200, "{decision}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["toState"], state, "{}", r.json());
        assert_eq!(r.json()["reviewer"], "bob@acme", "{}", r.json());
    }
    let history = edge
        .call("GET", &format!("/v1/submissions/{id}/reviews"), &bob, None)
        .await;
    assert_eq!(history.status, 200, "{}", String::from_utf8_lossy(&history.body));
    let reviews = history.json()["reviews"].as_array().unwrap().clone();
    assert_eq!(reviews.len(), 2, "{reviews:?}");

    // Installed for acme's production.
    let installer = token("acme", "ops@acme", "installations:write installations:read", true);
    let r = edge
        .call(
            "POST",
            "/v1/installations",
            &installer,
            Some(json!({"environment": "production", "submissionId": id})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let installation = r.json();
    assert_eq!(
        installation["status"], "INSTALLATION_STATUS_INSTALLED",
        "{installation}"
    );
    assert_eq!(installation["revision"], "1", "{installation}");

    // Globex can neither install acme's submission nor see or change
    // acme's installation.
    let installation_id = installation["installationId"].as_str().unwrap().to_owned();
    let r = edge
        .call(
            "POST",
            "/v1/installations",
            &globex_all,
            Some(json!({"environment": "production", "submissionId": id})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let r = edge
        .call("GET", "/v1/installations?history=true", &globex_all, None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["installations"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.json()
    );
    let r = edge
        .call(
            "PATCH",
            &format!("/v1/installations/{installation_id}"),
            &globex_all,
            Some(json!({"submissionId": id, "expectedRevision": "1"})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    // The run, through the edge's admission and the gateway's orchestration.
    let started = time::OffsetDateTime::now_utc();
    // Running a capsule executes its tools: capsules:run alone is refused.
    let r = edge
        .run(
            &token("acme", "carol@acme", "capsules:run", false),
            json!({"environment": "production", "input": {"text": "hi"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (403, "insufficient_scope".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let runner = token(
        "acme",
        "carol@acme",
        "capsules:run tools:execute analytics:export",
        false,
    );
    let r = edge
        .run(
            &runner,
            json!({"environment": "production", "input": {"text": "one two three\nfour"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json();
    assert_eq!(run["succeeded"], true, "{run}");
    assert_eq!(
        run["output"],
        json!({"characters": 18.0, "words": 4.0, "lines": 2.0, "bytes": 18.0}),
        "{run}"
    );
    let run_id = run["runId"].as_str().unwrap().to_owned();
    let decision = run["moderationDecisionId"].as_str().unwrap().to_owned();
    assert!(decision.starts_with("mod_"), "{run}");

    // The two backend calls of a run and their envelopes: the step
    // (`ExecuteCapsuleStep`, a moderated method) gets an envelope sealed for
    // its request alone, carrying the decision, so the ToolRegistry verifies
    // each one in full; the resolution (`ResolveCapsuleRun`, not moderated)
    // gets the reusable envelope of the caller's claims, which CapsuleRepo
    // verified once and recognizes by its bytes at the next run.
    let (repo_before, registry_before) = (
        envelope_checks(&data, "capsule-repo").await,
        envelope_checks(&data, "tool-registry").await,
    );
    for text in ["five six", "seven"] {
        let r = edge
            .run(
                &runner,
                json!({"environment": "production", "input": {"text": text}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            r.json()["moderationDecisionId"]
                .as_str()
                .unwrap()
                .starts_with("mod_"),
            "{}",
            r.json()
        );
    }
    let (repo_after, registry_after) = (
        envelope_checks(&data, "capsule-repo").await,
        envelope_checks(&data, "tool-registry").await,
    );
    // Two resolutions; at most one new reusable envelope between them (the
    // gateway seals a fresh one every half lifetime), so at least one verdict
    // is reused. Sealed per request, both would be verified in full: (2, 0).
    let repo = (repo_after.0 - repo_before.0, repo_after.1 - repo_before.1);
    assert!(
        repo.0 + repo.1 == 2 && repo.1 >= 1,
        "CapsuleRepo: (signatures verified, verdicts reused) over two runs: {repo:?}"
    );
    assert_eq!(
        (
            registry_after.0 - registry_before.0,
            registry_after.1 - registry_before.1
        ),
        (2, 0),
        "ToolRegistry: (signatures verified, verdicts reused) over two runs"
    );

    // Input the capsule's schema refuses: 400 naming the field; nothing runs.
    let r = edge
        .run(
            &runner,
            json!({"environment": "production", "input": {"text": 7}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["message"].as_str().unwrap().contains("text"),
        "{}",
        r.json()
    );

    // Another tenant has installed nothing: 404.
    let globex = token("globex", "dave@globex", "capsules:run tools:execute", false);
    let r = edge
        .run(
            &globex,
            json!({"environment": "production", "input": {"text": "hi"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (404, "capsule_not_installed".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // The run and its billing event, each in a signed export that
    // `soma verify export` accepts (and refuses with a byte changed).
    let from = rfc3339(started - time::Duration::minutes(10));
    let to = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::minutes(5));
    let runs = edge
        .verified_export(
            &format!("/v1/exports/capsule-runs?from={from}&to={to}"),
            &runner,
            work,
            "capsule-runs",
            |row| row["run_id"] == run_id.as_str(),
        )
        .await;
    let row = runs["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["run_id"] == run_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["tenant"], "acme", "{row}");
    assert_eq!(row["capsule_id"], "text-stats", "{row}");
    assert_eq!(row["tool"], "text-stats", "{row}");
    assert_eq!(row["outcome"], "succeeded", "{row}");
    assert_eq!(row["capsule_version"], "1.0.0", "{row}");
    assert_eq!(row["bundle_sha256"], digest.as_str(), "{row}");
    assert_eq!(row["environment"], "production", "{row}");
    assert_eq!(row["installation_revision"], 1, "{row}");
    assert_eq!(row["moderation_decision_id"], decision.as_str(), "{row}");
    // Recorded by the registry, in the transaction of the step's billing
    // event.
    assert_eq!(
        row["recorded_by"], "spiffe://somastack.local/svc/tool-registry",
        "{row}"
    );
    let billing = edge
        .verified_export(
            &format!("/v1/exports/billing-ledger?from={from}&to={to}"),
            &runner,
            work,
            "billing",
            |row| row["run_id"] == run_id.as_str(),
        )
        .await;
    let billed: Vec<&Value> = billing["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["run_id"] == run_id.as_str())
        .collect();
    assert_eq!(billed.len(), 1, "one step, one billing event: {billing}");
    assert_eq!(billed[0]["tool"], "text-stats");
    assert_eq!(billed[0]["tenant"], "acme");

    // The review history nobody can rewrite: `soma verify store` sweeps
    // the repository clean, then names a history row edited in SQL, which
    // the history read refuses too.
    let sweep = |expect: i32| {
        let out = soma(
            &[
                "verify",
                "store",
                "--data-dir",
                data_arg,
                "--service",
                "capsule-repo",
            ],
            work,
        );
        assert_eq!(
            out.status.code(),
            Some(expect),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let clean = sweep(0);
    assert!(clean.trim_end().ends_with("rows checked, 0 failed"), "{clean}");
    let db = soma_store::Database::connect(
        &soma_store::StoreSettings::sqlite(data.join("db")),
        "capsule-repo",
    )
    .await
    .unwrap();
    let edited = soma_testing::exec(
        &db,
        &format!("UPDATE review_history SET comment = 'nothing to see' WHERE submission_id = '{id}' AND sequence = 2"),
    )
    .await;
    assert_eq!(edited, 1);
    db.close().await;
    let r = edge
        .call("GET", &format!("/v1/submissions/{id}/reviews"), &bob, None)
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (500, "row_integrity".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let tampered = sweep(1);
    assert!(
        tampered
            .lines()
            .any(|l| l.starts_with(&format!("review_history/{id}/2: "))),
        "{tampered}"
    );
    assert!(
        tampered.trim_end().ends_with("rows checked, 1 failed"),
        "{tampered}"
    );

    // Analytics frozen (SIGSTOP): a run does not wait for it — its record
    // is written with the step's billing event, in the registry — and the
    // record arrives once Analytics runs again.
    let analytics = common::services_of(up.id().unwrap())["analytics"];
    common::signal("STOP", analytics);
    let r = edge
        .run(
            &runner,
            json!({"environment": "production", "input": {"text": "while analytics sleeps"}}),
        )
        .await;
    common::signal("CONT", analytics);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let frozen = r.json();
    assert_eq!(frozen["succeeded"], true, "{frozen}");
    let frozen_run = frozen["runId"].as_str().unwrap().to_owned();
    edge.verified_export(
        &format!("/v1/exports/capsule-runs?from={from}&to={to}"),
        &runner,
        work,
        "capsule-runs-after-freeze",
        |row| row["run_id"] == frozen_run.as_str(),
    )
    .await;

    // The release revoked after the installation: the run is 409 with the
    // reason, and nothing executes (no billing event, no run recorded).
    let revoker = token("acme", "publisher@acme", "tools:revoke", true);
    let r = edge
        .call(
            "POST",
            "/v1/tools/text-stats/releases/1.0.0:revoke",
            &revoker,
            Some(json!({"reason": "superseded"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let exported = |path: String| {
        let edge = &edge;
        let runner = &runner;
        async move {
            let r = edge.call("GET", &path, runner, None).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let (data, _) = export_parts(&r.body);
            serde_json::from_slice::<Value>(&data).unwrap()["rows"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    let billing_path = format!("/v1/exports/billing-ledger?from={from}&to={to}");
    let runs_path = format!("/v1/exports/capsule-runs?from={from}&to={to}");
    let (billed_before, runs_before) = (
        exported(billing_path.clone()).await,
        exported(runs_path.clone()).await,
    );
    let r = edge
        .run(
            &runner,
            json!({"environment": "production", "input": {"text": "after the revocation"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.reason()),
        (409, "release_revoked".to_owned()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The outbox delivers within milliseconds; a second is ample for an
    // execution that would have happened.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(exported(billing_path).await, billed_before, "nothing executed");
    assert_eq!(exported(runs_path).await, runs_before, "no run recorded");

    let _ = up.start_kill();
    let _ = up.wait().await;
}
