//! One chain, end to end, on a real `soma up` (embedded SQLite): a
//! publisher key made and registered with the CLI, a release signed with
//! `soma release sign`, published through the JSON edge with a token that
//! has `tools:publish` and a second factor, verified, executed through the
//! edge, and its billing event found in Analytics' signed billing export.
//! Python interop both ways: a release signed by Python (`cryptography` +
//! `rfc8785`, PAE built by hand) and published by Python through the edge
//! is accepted; an envelope made by `soma release sign` verifies in Python.
//! And the bad-input table of the publish route: each refused with its
//! status and reason, nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use common::cli::{head_only, ok, rfc3339, sign_text_stats, soma, wait_for_edge};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_goes_from_signature_to_billing_through_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &[]);
    let edge = wait_for_edge(&data).await;
    let data_arg = data.to_str().unwrap();
    let work = dir.path();

    // The publisher's key, registered by an operator with the CLI.
    let key_id = ok(&soma(&["release", "keygen", "--out", "pub"], work))
        .trim()
        .to_owned();
    assert_eq!(key_id.len(), 64, "{key_id}");
    let added = ok(&soma(
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
    assert!(added.starts_with(&key_id), "{added}");

    // The module as WebAssembly text; sign fills in its digest and size.
    sign_text_stats(work, "pub/publisher.key");
    let verified = ok(&soma(
        &[
            "release",
            "verify",
            "--envelope",
            "envelope.json",
            "--module",
            "text_stats.wat",
            "--public-key",
            "pub/publisher.pub",
        ],
        work,
    ));
    assert_eq!(
        verified.trim(),
        format!("valid: text-stats@1.0.0 signed by {key_id}")
    );
    // Offline verification refuses another key.
    ok(&soma(&["release", "keygen", "--out", "other"], work));
    let wrong = soma(
        &[
            "release",
            "verify",
            "--envelope",
            "envelope.json",
            "--module",
            "text_stats.wat",
            "--public-key",
            "other/publisher.pub",
        ],
        work,
    );
    assert_eq!(
        wrong.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("publisher_unknown"));

    let token = |scope: &str, mfa: bool| {
        let mut args = vec![
            "token",
            "--data-dir",
            data_arg,
            "--tenant",
            "acme",
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
    let all = "tools:publish tools:read tools:execute tools:revoke analytics:export";

    // Publishing needs a second factor.
    let no_mfa = soma(
        &[
            "release",
            "publish",
            "--envelope",
            "envelope.json",
            "--module",
            "text_stats.wat",
            "--token",
            &token(all, false),
            "--data-dir",
            data_arg,
        ],
        work,
    );
    assert_eq!(no_mfa.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&no_mfa.stderr).contains("insufficient_user_authentication"),
        "{}",
        String::from_utf8_lossy(&no_mfa.stderr)
    );

    let token = token(all, true);
    let published: Value = serde_json::from_str(&ok(&soma(
        &[
            "release",
            "publish",
            "--envelope",
            "envelope.json",
            "--module",
            "text_stats.wat",
            "--token",
            &token,
            "--data-dir",
            data_arg,
        ],
        work,
    )))
    .unwrap();
    assert_eq!(published["state"], "RELEASE_STATE_ACTIVE", "{published}");
    assert_eq!(published["ed25519KeyId"], key_id.as_str());
    assert_eq!(published["publishedBy"], "dev-user@acme");

    let http = common::edge::client();
    let r = common::edge::send(
        &http,
        "POST",
        &format!("{edge}/v1/tools/text-stats/releases/1.0.0:verify"),
        Some(&token),
        Some("{}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["valid"], true, "{}", r.json());

    let started = time::OffsetDateTime::now_utc();
    let r = common::edge::send(
        &http,
        "POST",
        &format!("{edge}/v1/tools/text-stats:execute?runId=run-e2e"),
        Some(&token),
        Some(r#"{"text": "one two three\nfour"}"#),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json();
    assert_eq!(
        run["output"],
        json!({"characters": 18.0, "words": 4.0, "lines": 2.0, "bytes": 18.0}),
        "{run}"
    );
    let billing_id = run["billingEventId"].as_str().unwrap().to_owned();

    // The billing event reaches Analytics through the outbox, and its
    // signed export holds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let to = rfc3339(time::OffsetDateTime::now_utc() + time::Duration::minutes(5));
    let from = rfc3339(started - time::Duration::minutes(10));
    let document = loop {
        let r = common::edge::send(
            &http,
            "GET",
            &format!("{edge}/v1/exports/billing-ledger?from={from}&to={to}"),
            Some(&token),
            None,
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let document = export_document(&r.body);
        if document["rows"].as_array().is_some_and(|rows| !rows.is_empty()) {
            break document;
        }
        assert!(
            Instant::now() < deadline,
            "no billing event exported in time: {document}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let row = &document["rows"][0];
    assert_eq!(row["event_id"], billing_id.as_str(), "{document}");
    assert_eq!(row["tenant"], "acme");
    assert_eq!(row["tool"], "text-stats");
    assert_eq!(row["tool_version"], "1.0.0");
    assert_eq!(row["run_id"], "run-e2e");
    // proto3 JSON writes 64-bit integers as strings; the export, as numbers.
    let fuel: u64 = run["fuelConsumed"].as_str().unwrap().parse().unwrap();
    assert_eq!(row["fuel_consumed"], json!(fuel), "{document} {run}");
    // What the sandbox measured, and which module ran.
    let module_hex: String = soma_sign::sha256(&soma_sandbox::adapter("text_stats").unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(row["module_sha256"], module_hex.as_str(), "{document}");
    let peak: u64 = run["peakMemoryBytes"].as_str().unwrap().parse().unwrap();
    assert_eq!(row["peak_memory_bytes"], json!(peak), "{document}");
    assert!(peak >= 65_536, "{run}");

    python_interop(&edge, &token, &data, work).await;
    bad_input(&edge, &token, &data, work).await;
    audit_trail(&edge, &token, &data, work, &from, &to).await;

    let _ = up.start_kill();
    let _ = up.wait().await;
}

/// Revocation through the edge, and a keyring rotation with the CLI: each
/// an audit event in Analytics' ledger, next to the publish; `soma canon`
/// prints what Python's `rfc8785` prints.
async fn audit_trail(edge: &str, token: &str, data: &Path, work: &Path, from: &str, to: &str) {
    let http = common::edge::client();
    let r = common::edge::send(
        &http,
        "POST",
        &format!("{edge}/v1/tools/text-stats/releases/1.0.0:revoke"),
        Some(token),
        Some(r#"{"reason": "superseded"}"#),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["state"], "RELEASE_STATE_REVOKED");
    let r = common::edge::send(
        &http,
        "POST",
        &format!("{edge}/v1/tools/text-stats:execute"),
        Some(token),
        Some(r#"{"text": "x"}"#),
        &[],
    )
    .await;
    assert_eq!(
        (r.status, r.reason().as_str()),
        (404, "not_found"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    let data_arg = data.to_str().unwrap();
    ok(&soma(
        &[
            "release",
            "key",
            "add",
            "--data-dir",
            data_arg,
            "--id",
            "registry-2",
        ],
        work,
    ));
    let promoted = ok(&soma(
        &[
            "release",
            "key",
            "promote",
            "--data-dir",
            data_arg,
            "--id",
            "registry-2",
        ],
        work,
    ));
    assert!(promoted.contains("primary registry-2"), "{promoted}");
    let listed = ok(&soma(&["release", "key", "list", "--data-dir", data_arg], work));
    assert_eq!(listed, "registry-1 enabled\nregistry-2 enabled primary\n");
    let refused = soma(
        &[
            "release",
            "key",
            "retire",
            "--data-dir",
            data_arg,
            "--id",
            "registry-2",
        ],
        work,
    );
    assert_eq!(refused.status.code(), Some(1), "the primary is never retired");

    // The tenant's own audit trail: its publish and its revoke.
    let deadline = Instant::now() + Duration::from_secs(30);
    let actions = loop {
        let r = common::edge::send(
            &http,
            "GET",
            &format!("{edge}/v1/exports/audit-events?from={from}&to={to}"),
            Some(token),
            None,
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let document = export_document(&r.body);
        let actions: Vec<String> = document["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["action"].as_str().unwrap().to_owned())
            .collect();
        if actions.len() >= 3 || Instant::now() > deadline {
            break actions;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // text-stats and Python's py-echo, then the revoke.
    assert_eq!(actions, ["release.publish", "release.publish", "release.revoke"]);

    // The platform's own (publisher keys, the keyring: no tenant) is an
    // operator's to read: an operator SVID over mTLS naming no tenant,
    // straight to Analytics, exports exactly those.
    ok(&soma(
        &[
            "ca",
            "issue",
            "--data-dir",
            data_arg,
            "--spiffe-id",
            "spiffe://somastack.local/operator/tester",
            "--out",
            "op",
        ],
        work,
    ));
    let op = work.join("op");
    let td = soma_identity::TrustDomain::parse("somastack.local").unwrap();
    let svid = soma_identity::Svid::from_pem(
        &std::fs::read(op.join("svid.pem")).unwrap(),
        &std::fs::read(op.join("key.pem")).unwrap(),
    )
    .unwrap();
    let mut bundles = soma_identity::BundleSet::new();
    bundles
        .insert(soma_identity::Bundle::from_pem(td, &std::fs::read(op.join("bundle.pem")).unwrap()).unwrap());
    let store = soma_identity::SvidStore::new(svid.spiffe_id().clone(), svid, bundles).unwrap();
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let analytics = soma_proto::v1::analytics_client::AnalyticsClient::new(soma_testing::channel(
        store,
        endpoints["analytics"].as_str().unwrap().parse().unwrap(),
        &soma_identity::SpiffeId::parse("spiffe://somastack.local/svc/analytics").unwrap(),
    ));
    let stamp = |text: &str| {
        let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
        Some(prost_types::Timestamp {
            seconds: t.unix_timestamp(),
            nanos: 0,
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = analytics
            .clone()
            .export_audit_events(soma_proto::v1::ExportRequest {
                from: stamp(from),
                to: stamp(to),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            bytes.extend_from_slice(&chunk.data);
        }
        let document: Value = serde_json::from_slice(&bytes).unwrap();
        let mut actions: Vec<(String, String)> = document["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row["tenant"].as_str().unwrap().to_owned(),
                    row["action"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        actions.sort();
        let expected: Vec<(String, String)> = [
            ("", "publisher_key.add"),
            ("", "publisher_key.add"),
            ("", "registry_key.add"),
            ("", "registry_key.promote"),
        ]
        .iter()
        .map(|(t, a)| ((*t).to_owned(), (*a).to_owned()))
        .collect();
        if actions == expected {
            break;
        }
        assert!(Instant::now() < deadline, "audit events: {actions:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let canonical = ok(&soma(&["canon", "manifest.json"], work));
    let python = std::process::Command::new(soma_testing::python())
        .args([
            "-c",
            "import json, sys, rfc8785; sys.stdout.buffer.write(rfc8785.dumps(json.load(open(sys.argv[1]))))",
        ])
        .arg(work.join("manifest.json"))
        .output()
        .unwrap();
    assert_eq!(canonical, ok(&python));
}

/// The JSON document of an NDJSON export stream.
fn export_document(body: &[u8]) -> Value {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let data: Vec<u8> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|l| l["data"].as_str().map(str::to_owned))
        .flat_map(|d| base64::engine::general_purpose::STANDARD.decode(d).unwrap())
        .collect();
    serde_json::from_slice(&data).unwrap()
}

/// Python signs and publishes; Python verifies what `soma release sign` made.
async fn python_interop(edge: &str, token: &str, data: &Path, work: &Path) {
    std::fs::write(work.join("echo.wasm"), soma_sandbox::adapter("echo").unwrap()).unwrap();
    let script = r#"
import base64, hashlib, json, sys, urllib.request, urllib.error
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

work, edge, token = sys.argv[1], sys.argv[2], sys.argv[3]
key = Ed25519PrivateKey.generate()
pub = key.public_key()
open(work + "/py.pub", "wb").write(pub.public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
keyid = hashlib.sha256(spki).hexdigest()
module = open(work + "/echo.wasm", "rb").read()
manifest = {"tool": "py-echo", "version": "0.1.0", "entrypoint": "run",
            "limits": {"fuel": 1000000, "memory_bytes": 1048576, "deadline_ms": 1000},
            "description": "signed in Python",
            "module_sha256": hashlib.sha256(module).hexdigest(), "module_size": len(module)}
payload = rfc8785.dumps(manifest)
ptype = "application/vnd.somastack.release.v1+json"
pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
envelope = {"payloadType": ptype, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": keyid, "sig": base64.b64encode(key.sign(pae)).decode()}]}
if sys.argv[4] == "keyid":
    print(keyid)
    open(work + "/py.key", "wb").write(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    sys.exit(0)
"#;
    // Two steps: make the key (so the operator can register it), then sign
    // and publish with it.
    let keygen = std::process::Command::new(soma_testing::python())
        .args(["-c", script])
        .arg(work)
        .args([edge, token, "keyid"])
        .output()
        .unwrap();
    let py_keyid = ok(&keygen).trim().to_owned();
    ok(&soma(
        &[
            "release",
            "publisher",
            "add",
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "py-publisher",
            "--public-key",
            "py.pub",
        ],
        work,
    ));
    let publish = r#"
import base64, hashlib, json, sys, urllib.request, urllib.error
import rfc8785
from cryptography.hazmat.primitives import serialization
work, edge, token = sys.argv[1], sys.argv[2], sys.argv[3]
key = serialization.load_pem_private_key(open(work + "/py.key", "rb").read(), None)
spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
keyid = hashlib.sha256(spki).hexdigest()
module = open(work + "/echo.wasm", "rb").read()
manifest = {"tool": "py-echo", "version": "0.1.0", "entrypoint": "run",
            "limits": {"fuel": 1000000, "memory_bytes": 1048576, "deadline_ms": 1000},
            "description": "signed in Python",
            "module_sha256": hashlib.sha256(module).hexdigest(), "module_size": len(module)}
payload = rfc8785.dumps(manifest)
ptype = "application/vnd.somastack.release.v1+json"
pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
body = {"envelope": {"payloadType": ptype, "payload": base64.b64encode(payload).decode(),
                     "signatures": [{"keyid": keyid, "sig": base64.b64encode(key.sign(pae)).decode()}]},
        "module": base64.b64encode(module).decode()}
request = urllib.request.Request(edge + "/v1/tools/py-echo/releases", data=json.dumps(body).encode(),
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"}, method="POST")
try:
    reply = urllib.request.urlopen(request)
    print(reply.status, reply.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;
    let published = std::process::Command::new(soma_testing::python())
        .args(["-c", publish])
        .arg(work)
        .args([edge, token])
        .output()
        .unwrap();
    let line = ok(&published);
    let (status, body) = line.trim().split_once(' ').unwrap();
    assert_eq!(status, "200", "{body}");
    let release: Value = serde_json::from_str(body).unwrap();
    assert_eq!(release["ed25519KeyId"], py_keyid.as_str(), "{release}");
    assert_eq!(release["state"], "RELEASE_STATE_ACTIVE");

    // What `soma release sign` made, verified by Python alone.
    let verify = r#"
import base64, json, sys
import rfc8785
from cryptography.hazmat.primitives import serialization
envelope = json.load(open(sys.argv[1] + "/envelope.json"))
pub = serialization.load_pem_public_key(open(sys.argv[1] + "/pub/publisher.pub", "rb").read())
payload = base64.b64decode(envelope["payload"])
ptype = envelope["payloadType"]
assert ptype == "application/vnd.somastack.release.v1+json", ptype
pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
pub.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae)
assert rfc8785.dumps(json.loads(payload)) == payload, "the payload is its RFC 8785 form"
print("verified", json.loads(payload)["tool"])
"#;
    let verified = std::process::Command::new(soma_testing::python())
        .args(["-c", verify])
        .arg(work)
        .output()
        .unwrap();
    assert_eq!(ok(&verified).trim(), "verified text-stats");
}

/// The publish route's bad input: each refused with its status and
/// reason, and nothing written.
async fn bad_input(edge: &str, token: &str, data: &Path, work: &Path) {
    let envelope: Value =
        serde_json::from_slice(&std::fs::read(work.join("envelope.json")).unwrap()).unwrap();
    let module = soma_sandbox::adapter("text_stats").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let good = json!({"envelope": envelope, "module": b64.encode(&module)});
    let url = format!("{edge}/v1/tools/text-stats/releases");
    let http = common::edge::client();
    let releases_before = release_count(data).await;

    struct Case {
        name: &'static str,
        body: Vec<u8>,
        status: u16,
        reason: &'static str,
    }
    let with = |path: &[&str], value: Value| {
        let mut body = good.clone();
        let mut at = &mut body;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        serde_json::to_vec(&body).unwrap()
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(key);
        serde_json::to_vec(&body).unwrap()
    };
    let cases = vec![
        Case {
            name: "envelope of the wrong JSON type",
            body: with(&["envelope"], json!("a string")),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "module of the wrong JSON type",
            body: with(&["module"], json!(12)),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "module that is not base64",
            body: with(&["module"], json!("not base64 ***")),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "signatures of the wrong type",
            body: with(&["envelope", "signatures"], json!({"keyid": "x"})),
            status: 400,
            reason: "invalid_argument",
        },
        Case {
            name: "missing envelope",
            body: without("envelope"),
            status: 400,
            reason: "envelope_missing",
        },
        Case {
            name: "missing module",
            body: without("module"),
            status: 400,
            reason: "module_size_mismatch",
        },
        Case {
            name: "non-UTF-8 body",
            body: {
                let mut b = serde_json::to_vec(&good).unwrap();
                b.insert(1, 0xff);
                b
            },
            status: 400,
            reason: "invalid_json",
        },
    ];
    let mut mismatches = Vec::new();
    for case in cases {
        let request = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(case.body)))
            .unwrap();
        let response = http.request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let reply: Value =
            serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{}: not JSON: {body:?}", case.name));
        let got = (status, reply["reason"].as_str().unwrap_or_default().to_owned());
        if got != (case.status, case.reason.to_owned()) {
            mismatches.push(format!("{}: {reply}", case.name));
        }
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");

    // A 10 MB module: refused from the request's head, before its body is
    // read (a client still writing it sees the connection closed).
    let ten_mb =
        serde_json::to_vec(&json!({"envelope": envelope, "module": b64.encode(vec![0u8; 10 * 1024 * 1024])}))
            .unwrap();
    let (status, reply) = head_only(&url, token, ten_mb.len()).await;
    assert_eq!(
        (status, reply["reason"].as_str()),
        (413, Some("body_too_large")),
        "{reply}"
    );
    assert_eq!(release_count(data).await, releases_before, "nothing written");
}

async fn release_count(data: &Path) -> i64 {
    let db = soma_store::Database::connect(
        &soma_store::StoreSettings::sqlite(data.join("db")),
        "tool-registry",
    )
    .await
    .unwrap();
    let n = soma_testing::scalar(&db, "SELECT COUNT(*) FROM releases").await;
    db.close().await;
    n
}
