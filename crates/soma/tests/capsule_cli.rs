//! `soma capsule digest | attest | verify | submit`, the real binary, with
//! Python's independent implementations on the other side: the digest is
//! `hashlib.sha256` of the bundle file and of `rfc8785`'s form of it; an
//! envelope `soma capsule attest` makes with two keys verifies under
//! `securesystemslib` (2 of 2) and under plain `cryptography` over a PAE
//! Python builds itself, and carries an in-toto Statement v1 over the
//! bundle digest; envelopes made by `securesystemslib` and by the `in-toto`
//! package are accepted by `soma capsule verify` (2 of 2) and refused, each
//! with its exit code and soma-capsule's reason, below the threshold, under
//! another key, with a payload byte changed and for another bundle; and
//! every usage error exits 64 with a one-line reason. `submit` is checked
//! on what it refuses before it connects (its server, CapsuleRepo, is
//! tested with its service). Python is `soma_testing::python()` (set
//! `SOMA_PYTHON`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// The example bundle of the repository (canonical, as stored).
fn bundle_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capsule/bundles/text-stats.capsule.json")
}

/// What one run of the binary did.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `soma` with `args` in `dir` (no database: these commands open none).
fn soma(args: &[&str], dir: &Path) -> Outcome {
    let output = Command::new(SOMA)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    Outcome {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The standard output of a run that succeeded.
fn ok(outcome: &Outcome) -> &str {
    assert_eq!(outcome.code, 0, "{outcome:?}");
    &outcome.stdout
}

/// Runs `script` under the interop Python with `args`, in `dir`; returns
/// its standard output, failing loudly if it fails (a missing module
/// names itself in the traceback).
fn python(script: &str, args: &[&str], dir: &Path) -> String {
    let py = soma_testing::python();
    let output = Command::new(&py)
        .args(["-c", script])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} failed (it needs scripts/requirements-interop.txt installed): {}",
        py.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The example bundle's digest as `soma capsule digest` prints it.
fn soma_digest(dir: &Path) -> String {
    let out = soma(&["capsule", "digest", bundle_path().to_str().unwrap()], dir);
    let digest = ok(&out).strip_suffix('\n').unwrap().to_owned();
    assert_eq!(digest.len(), 64, "{digest}");
    digest
}

/// Writes the example bundle changed by `edit`, in RFC 8785 form.
fn edited_bundle(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut value: Value = serde_json::from_slice(&std::fs::read(bundle_path()).unwrap()).unwrap();
    edit(&mut value);
    let path = dir.join(name);
    std::fs::write(&path, soma_sign::jcs::canonicalize(&value).unwrap()).unwrap();
    path
}

/// Asserts a refusal: the exit code, nothing on standard output, and one
/// line on standard error starting with `expected`.
fn assert_refused(name: &str, outcome: &Outcome, code: i32, expected: &str) {
    assert_eq!(outcome.code, code, "{name}: {outcome:?}");
    assert_eq!(outcome.stdout, "", "{name}");
    assert!(
        outcome.stderr.starts_with(expected),
        "{name}: expected {expected:?}, got {:?}",
        outcome.stderr
    );
    assert_eq!(
        outcome.stderr.matches('\n').count(),
        1,
        "{name}: one line: {:?}",
        outcome.stderr
    );
    assert!(outcome.stderr.ends_with('\n'), "{name}");
}

#[test]
fn the_digest_is_the_sha256_of_the_canonical_bytes_and_anything_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let digest = soma_digest(work);

    // Python: the SHA-256 of the file's bytes, and of rfc8785's form of its JSON.
    let script = r#"
import hashlib, json, sys
import rfc8785
raw = open(sys.argv[1], "rb").read()
print(hashlib.sha256(raw).hexdigest())
print(hashlib.sha256(rfc8785.dumps(json.loads(raw))).hexdigest())
open("pretty.json", "w").write(json.dumps(json.loads(raw), indent=2))
"#;
    let out = python(script, &[bundle_path().to_str().unwrap()], work);
    assert_eq!(out, format!("{digest}\n{digest}\n"));

    let tool_version = edited_bundle(work, "tool-version.json", |v| {
        v["tools"][0]["version"] = json!("1.0");
    });
    let unknown = edited_bundle(work, "unknown.json", |v| {
        v["author"] = json!("someone");
    });
    let missing = edited_bundle(work, "missing.json", |v| {
        v.as_object_mut().unwrap().remove("input_schema");
    });
    let long_name = edited_bundle(work, "long-name.json", |v| {
        v["name"] = json!("x".repeat(65));
    });
    let duplicate = work.join("duplicate.json");
    let canonical = std::fs::read_to_string(bundle_path()).unwrap();
    std::fs::write(&duplicate, canonical.replacen('{', r#"{"name":"other","#, 1)).unwrap();

    struct Case {
        name: &'static str,
        file: PathBuf,
        expected: &'static str,
    }
    let cases = [
        Case {
            name: "pretty-printed",
            file: work.join("pretty.json"),
            expected: "bundle_not_canonical: bundle is not in rfc 8785 canonical form\n",
        },
        Case {
            name: "a tool version that is not SemVer",
            file: tool_version,
            expected: "version_invalid at tools[0].version: bundle member tools[0].version is not semver 2.0.0: ",
        },
        Case {
            name: "an unknown member",
            file: unknown,
            expected: "bundle_unknown_field at author: bundle member author is not a known field\n",
        },
        Case {
            name: "a missing member",
            file: missing,
            expected: "bundle_missing_field at input_schema: bundle member input_schema is missing\n",
        },
        Case {
            name: "a name too long",
            file: long_name,
            expected: "bundle_invalid_value at name: bundle member name is invalid: ",
        },
        Case {
            name: "a duplicate member",
            file: duplicate,
            expected: "bundle_duplicate_key: bundle has a duplicate member \"name\"\n",
        },
    ];
    for case in cases {
        let file = case.file.to_str().unwrap();
        let outcome = soma(&["capsule", "digest", file], work);
        assert_refused(
            case.name,
            &outcome,
            1,
            &format!("soma: {file}: {}", case.expected),
        );
    }
}

/// Python checks what `soma capsule attest` made with two keys of
/// `soma release keygen`: `securesystemslib` verifies it with both keys,
/// threshold 2; plain `cryptography` verifies each signature over a PAE
/// built by hand, selecting the key whose SPKI SHA-256 is the keyid; the
/// payload is an in-toto Statement v1 (in RFC 8785 form) whose one subject
/// names the SHA-256 of the bundle file Python read.
const PYTHON_VERIFIES: &str = r#"
import base64, hashlib, json, sys
import rfc8785
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

envelope_path, bundle_path, pems = sys.argv[1], sys.argv[2], sys.argv[3:]
keys = {}
for path in pems:
    pub = serialization.load_pem_public_key(open(path, "rb").read())
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    keys[hashlib.sha256(spki).hexdigest()] = pub
text = open(envelope_path).read()

env = Envelope.from_dict(json.loads(text))
accepted = env.verify([SSlibKey.from_crypto(pub, keyid=kid) for kid, pub in keys.items()], 2)
assert sorted(accepted) == sorted(keys), accepted

doc = json.loads(text)
payload = base64.b64decode(doc["payload"], validate=True)
t = doc["payloadType"].encode()
assert t == b"application/vnd.in-toto+json", t
pae = b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)
assert len(doc["signatures"]) == 2
for sig in doc["signatures"]:
    keys[sig["keyid"]].verify(base64.b64decode(sig["sig"], validate=True), pae)

statement = json.loads(payload)
assert rfc8785.dumps(statement) == payload, "the payload is rfc8785's form"
assert statement["_type"] == "https://in-toto.io/Statement/v1", statement["_type"]
[subject] = statement["subject"]
print(subject["name"], subject["digest"]["sha256"], hashlib.sha256(open(bundle_path, "rb").read()).hexdigest())
print(statement["predicateType"], json.dumps(statement["predicate"], sort_keys=True))
print(" ".join(sig["keyid"] for sig in doc["signatures"]))
"#;

#[test]
fn an_attestation_made_with_two_keys_verifies_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let digest = soma_digest(work);
    let key_a = ok(&soma(&["release", "keygen", "--out", "a"], work))
        .trim()
        .to_owned();
    let key_b = ok(&soma(&["release", "keygen", "--out", "b"], work))
        .trim()
        .to_owned();
    std::fs::write(
        work.join("predicate.json"),
        r#"{"reviewer": "alice@acme «é»", "decision": "approve"}"#,
    )
    .unwrap();
    let bundle = bundle_path();
    let bundle = bundle.to_str().unwrap();
    let attest = [
        "capsule",
        "attest",
        "--bundle",
        bundle,
        "--key",
        "a/publisher.key",
        "--key",
        "b/publisher.key",
        "--predicate",
        "predicate.json",
    ];
    let written = soma(&[&attest[..], &["--out", "envelope.json"]].concat(), work);
    assert_eq!(ok(&written), "");
    // Ed25519 is deterministic: standard output carries the same envelope.
    let printed = soma(&attest, work);
    let file = std::fs::read_to_string(work.join("envelope.json")).unwrap();
    assert_eq!(ok(&printed), format!("{file}\n"));

    let out = python(
        PYTHON_VERIFIES,
        &["envelope.json", bundle, "a/publisher.pub", "b/publisher.pub"],
        work,
    );
    assert_eq!(
        out,
        format!(
            "text-stats@1.0.0 {digest} {digest}\n\
             https://somastack.dev/capsule-review/v1 \
             {{\"decision\": \"approve\", \"reviewer\": \"alice@acme \\u00ab\\u00e9\\u00bb\"}}\n\
             {key_a} {key_b}\n"
        )
    );

    // And soma's own verifier, 2 of 2, naming both keys.
    let verified = soma(
        &[
            "capsule",
            "verify",
            "--bundle",
            bundle,
            "--envelope",
            "envelope.json",
            "--public-key",
            "a/publisher.pub",
            "--public-key",
            "b/publisher.pub",
            "--threshold",
            "2",
        ],
        work,
    );
    assert_eq!(
        ok(&verified),
        format!(
            "predicate_type https://somastack.dev/capsule-review/v1\n\
             subject text-stats@1.0.0 sha256:{digest}\n\
             key {key_a}\nkey {key_b}\n"
        )
    );
}

/// Python attests the bundle file it reads with two fresh Ed25519 keys (a
/// third, unrelated, is the wrong key): an in-toto Statement v1 serialised
/// by `json.dumps` (indented, not canonical: the verifier must use the
/// bytes as sent), in
/// 1. `securesystemslib.dsse.Envelope`, a capsule review, and
/// 2. the `in-toto` package's `Envelope` (its `ENVELOPE_PAYLOAD_TYPE`), SLSA
///    provenance, signed through `create_signature` and read back through
///    `Metadata.from_dict`;
///
/// and the same statements over another bundle. Prints the key ids.
const PYTHON_ATTESTS: &str = r#"
import hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey
from in_toto.models.metadata import ENVELOPE_PAYLOAD_TYPE, Metadata
from in_toto.models.metadata import Envelope as InTotoEnvelope

signers = []
for i in range(3):
    priv = Ed25519PrivateKey.generate()
    pub = priv.public_key()
    open("py%d.pub" % i, "wb").write(pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    keyid = hashlib.sha256(spki).hexdigest()
    signers.append(CryptoSigner(priv, SSlibKey.from_crypto(pub, keyid=keyid)))
    print(keyid)

def statement(bundle_path, predicate_type, predicate):
    raw = open(bundle_path, "rb").read()
    doc = json.loads(raw)
    return json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": doc["name"] + "@" + doc["version"],
                     "digest": {"sha256": hashlib.sha256(raw).hexdigest()}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }, indent=1).encode()

for bundle_path, prefix in [(sys.argv[1], ""), (sys.argv[2], "other-")]:
    review = statement(bundle_path, "https://somastack.dev/capsule-review/v1", {"reviewer": "py"})
    env = Envelope(payload=review, payload_type=ENVELOPE_PAYLOAD_TYPE, signatures={})
    env.sign(signers[0])
    env.sign(signers[1])
    open(prefix + "sslib.json", "w").write(json.dumps(env.to_dict()))

    provenance = statement(bundle_path, "https://slsa.dev/provenance/v1", {"buildDefinition": {"buildType": "py"}})
    it = InTotoEnvelope(payload=provenance, payload_type=ENVELOPE_PAYLOAD_TYPE, signatures={})
    it.create_signature(signers[0])
    it.create_signature(signers[1])
    back = Metadata.from_dict(it.to_dict())
    assert isinstance(back, InTotoEnvelope) and back.payload == provenance
    open(prefix + "in-toto.json", "w").write(json.dumps(back.to_dict()))
"#;

#[test]
fn envelopes_made_in_python_are_verified_and_refused_with_their_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let digest = soma_digest(work);
    let bundle = bundle_path();
    let bundle = bundle.to_str().unwrap();
    let other = edited_bundle(work, "other-bundle.json", |v| {
        v["version"] = json!("1.0.1");
    });
    let other = other.to_str().unwrap();
    let out = python(PYTHON_ATTESTS, &[bundle, other], work);
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 3, "{out}");

    for (made_by, predicate_type) in [
        ("sslib", "https://somastack.dev/capsule-review/v1"),
        ("in-toto", "https://slsa.dev/provenance/v1"),
    ] {
        let envelope = format!("{made_by}.json");
        // One payload byte changed (the signatures are left as they were).
        let tampered = format!("{made_by}-tampered.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(work.join(&envelope)).unwrap()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut payload = b64.decode(doc["payload"].as_str().unwrap()).unwrap();
        let at = payload.iter().position(|b| *b == b'p').unwrap();
        payload[at] = b'P';
        doc["payload"] = json!(b64.encode(&payload));
        std::fs::write(work.join(&tampered), serde_json::to_vec(&doc).unwrap()).unwrap();
        let other_envelope = format!("other-{made_by}.json");

        let verify = |bundle: &str, envelope: &str, keys: &[&str], threshold: &str| {
            let mut args = vec![
                "capsule",
                "verify",
                "--bundle",
                bundle,
                "--envelope",
                envelope,
                "--threshold",
                threshold,
            ];
            for key in keys {
                args.extend(["--public-key", key]);
            }
            soma(&args, work)
        };
        let both = ["py0.pub", "py1.pub"];

        let accepted = verify(bundle, &envelope, &both, "2");
        assert_eq!(
            ok(&accepted),
            format!(
                "predicate_type {predicate_type}\n\
                 subject text-stats@1.0.0 sha256:{digest}\n\
                 key {}\nkey {}\n",
                ids[0], ids[1]
            ),
            "{made_by}"
        );

        struct Case<'a> {
            name: &'static str,
            bundle: &'a str,
            envelope: &'a str,
            keys: &'a [&'a str],
            threshold: &'static str,
            expected: String,
        }
        let cases = [
            Case {
                name: "threshold 3 of 2 signatures",
                bundle,
                envelope: &envelope,
                keys: &both,
                threshold: "3",
                expected: format!(
                    "soma: {envelope}: attestation_below_threshold: \
                     attestation has 2 valid signatures of distinct keys, 3 required\n"
                ),
            },
            Case {
                name: "a wrong public key",
                bundle,
                envelope: &envelope,
                keys: &["py2.pub"],
                threshold: "1",
                expected: format!(
                    "soma: {envelope}: attestation_key_unknown: \
                     no attestation signature names a registered publisher key\n"
                ),
            },
            Case {
                name: "one payload byte changed",
                bundle,
                envelope: &tampered,
                keys: &both,
                threshold: "2",
                expected: format!(
                    "soma: {tampered}: attestation_signature_invalid: attestation signature does not verify: "
                ),
            },
            Case {
                name: "another bundle",
                bundle: other,
                envelope: &envelope,
                keys: &both,
                threshold: "2",
                expected: format!(
                    "soma: {envelope}: attestation_subject_mismatch: \
                     no attestation subject has the bundle's sha-256 digest\n"
                ),
            },
            Case {
                name: "an envelope over another bundle",
                bundle,
                envelope: &other_envelope,
                keys: &both,
                threshold: "2",
                expected: format!(
                    "soma: {other_envelope}: attestation_subject_mismatch: \
                     no attestation subject has the bundle's sha-256 digest\n"
                ),
            },
        ];
        for case in cases {
            let outcome = verify(case.bundle, case.envelope, case.keys, case.threshold);
            assert_refused(&format!("{made_by}: {}", case.name), &outcome, 1, &case.expected);
        }
    }
}

/// Each usage error exits 64 with one line naming the file and what is
/// wrong with it; `submit` refuses what it can judge alone (a bundle that is
/// not canonical, an envelope about another bundle) with exit 1 and
/// soma-capsule's reason, before it connects to anything.
#[test]
fn usage_errors_exit_64_and_submit_refuses_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    ok(&soma(&["release", "keygen", "--out", "a"], work));
    // Keys of another kind, made by Python: P-256 in PKCS#8 and in SPKI.
    python(
        r#"
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
open("p256.key", "wb").write(key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
open("p256.pub", "wb").write(key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
"#,
        &[],
        work,
    );
    std::fs::write(work.join("list.json"), "[1, 2]").unwrap();
    std::fs::write(work.join("not-json.json"), "{reviewer: alice}").unwrap();
    let bundle = bundle_path();
    let bundle = bundle.to_str().unwrap();
    ok(&soma(
        &[
            "capsule",
            "attest",
            "--bundle",
            bundle,
            "--key",
            "a/publisher.key",
            "--out",
            "envelope.json",
        ],
        work,
    ));
    let other = edited_bundle(work, "other-bundle.json", |v| {
        v["version"] = json!("2.0.0");
    });
    let other = other.to_str().unwrap();
    let missing = work.join("missing.json");
    let missing = missing.to_str().unwrap();

    let pretty = work.join("pretty.json");
    let value: Value = serde_json::from_slice(&std::fs::read(bundle_path()).unwrap()).unwrap();
    std::fs::write(&pretty, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
    let pretty = pretty.to_str().unwrap();

    struct Case<'a> {
        name: &'static str,
        args: Vec<&'a str>,
        code: i32,
        expected: String,
    }
    let attest = ["capsule", "attest", "--bundle", bundle];
    let verify = ["capsule", "verify", "--bundle", bundle];
    let submit = |edge, bundle, envelope| {
        vec![
            "capsule",
            "submit",
            "--edge",
            edge,
            "--token",
            "not-sent",
            "--bundle",
            bundle,
            "--envelope",
            envelope,
        ]
    };
    // Nothing listens there: a command that tried to connect would fail
    // with another message.
    let closed = "http://127.0.0.1:9";
    let cases = vec![
        Case {
            name: "digest of a missing file",
            args: vec!["capsule", "digest", missing],
            code: 64,
            expected: format!("soma: reading {missing}: "),
        },
        Case {
            name: "attest with a missing key file",
            args: [&attest[..], &["--key", "missing.key"]].concat(),
            code: 64,
            expected: "soma: reading missing.key: ".to_owned(),
        },
        Case {
            name: "attest with a public key",
            args: [&attest[..], &["--key", "a/publisher.pub"]].concat(),
            code: 64,
            expected: "soma: a/publisher.pub: not an Ed25519 PKCS#8 private key: ".to_owned(),
        },
        Case {
            name: "attest with a P-256 PKCS#8 key",
            args: [&attest[..], &["--key", "p256.key"]].concat(),
            code: 64,
            expected: "soma: p256.key: not an Ed25519 PKCS#8 private key: ".to_owned(),
        },
        Case {
            name: "attest with one key twice",
            args: [
                &attest[..],
                &["--key", "a/publisher.key", "--key", "a/publisher.key"],
            ]
            .concat(),
            code: 64,
            expected: "soma: a/publisher.key is the same key as a/publisher.key\n".to_owned(),
        },
        Case {
            name: "attest with a predicate that is not an object",
            args: [
                &attest[..],
                &["--key", "a/publisher.key", "--predicate", "list.json"],
            ]
            .concat(),
            code: 64,
            expected: "soma: attestation_predicate_invalid: attestation predicate is invalid: \
                       the predicate is not a json object\n"
                .to_owned(),
        },
        Case {
            name: "attest with a predicate that is not JSON",
            args: [
                &attest[..],
                &["--key", "a/publisher.key", "--predicate", "not-json.json"],
            ]
            .concat(),
            code: 64,
            expected: "soma: not-json.json: not JSON: ".to_owned(),
        },
        Case {
            name: "verify with a P-256 public key",
            args: [
                &verify[..],
                &["--envelope", "envelope.json", "--public-key", "p256.pub"],
            ]
            .concat(),
            code: 64,
            expected: "soma: p256.pub: not an Ed25519 public key (SubjectPublicKeyInfo PEM): ".to_owned(),
        },
        Case {
            name: "verify with a private key as the public key",
            args: [
                &verify[..],
                &["--envelope", "envelope.json", "--public-key", "a/publisher.key"],
            ]
            .concat(),
            code: 64,
            expected: "soma: a/publisher.key: not an Ed25519 public key (SubjectPublicKeyInfo PEM): "
                .to_owned(),
        },
        Case {
            name: "verify with a missing envelope",
            args: [
                &verify[..],
                &["--envelope", "missing.json", "--public-key", "a/publisher.pub"],
            ]
            .concat(),
            code: 64,
            expected: "soma: reading missing.json: ".to_owned(),
        },
        Case {
            name: "verify with threshold 0",
            args: [
                &verify[..],
                &[
                    "--envelope",
                    "envelope.json",
                    "--public-key",
                    "a/publisher.pub",
                    "--threshold",
                    "0",
                ],
            ]
            .concat(),
            code: 64,
            expected: "soma: --threshold 0: attestation_threshold_invalid: \
                       attestation threshold must be at least 1\n"
                .to_owned(),
        },
        Case {
            name: "submit to an https edge",
            args: submit("https://127.0.0.1:9", bundle, "envelope.json"),
            code: 64,
            expected: "soma: --edge \"https://127.0.0.1:9\": only http:// edges are supported here\n"
                .to_owned(),
        },
        Case {
            name: "submit a missing bundle",
            args: submit(closed, missing, "envelope.json"),
            code: 64,
            expected: format!("soma: reading {missing}: "),
        },
        Case {
            name: "submit an attestation of another bundle",
            args: submit(closed, other, "envelope.json"),
            code: 1,
            expected: "soma: envelope.json: attestation_subject_mismatch: \
                       no attestation subject has the bundle's sha-256 digest\n"
                .to_owned(),
        },
        Case {
            name: "submit a bundle that is not canonical",
            args: submit(closed, pretty, "envelope.json"),
            code: 1,
            expected: format!(
                "soma: {pretty}: bundle_not_canonical: bundle is not in rfc 8785 canonical form\n"
            ),
        },
    ];
    for case in cases {
        let outcome = soma(&case.args, work);
        assert_refused(case.name, &outcome, case.code, &case.expected);
    }
}
