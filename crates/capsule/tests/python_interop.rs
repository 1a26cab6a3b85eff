#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with independent Python implementations: attestations built and
//! signed by `securesystemslib` and by the `in-toto` package's DSSE envelope
//! are accepted by `verify_attestation`; an attestation made by `attest`
//! verifies under `securesystemslib` (2-of-3 threshold), under plain
//! `cryptography` over a PAE Python builds itself, and reads as an in-toto
//! envelope; and the example bundle is `rfc8785`'s canonical form. Runs under
//! `soma_testing::python()` (set `SOMA_PYTHON`).

mod common;

use soma_capsule::{
    AttestationKey, CAPSULE_REVIEW_PREDICATE_TYPE, DEFAULT_ALLOWED_PREDICATE_TYPES, PAYLOAD_TYPE,
    SLSA_PROVENANCE_PREDICATE_TYPE, STATEMENT_TYPE, attest, envelope_from_json, verify_attestation,
};
use soma_sign::sha256;

const AT: i64 = 1_750_000_000_000_000_000;

/// Python attests: three fresh Ed25519 keys (key id = SHA-256 of the SPKI
/// DER), an in-toto Statement v1 over the SHA-256 of the bundle bytes it
/// reads, serialised by `json.dumps` (not canonical: the verifier must use
/// the bytes as sent), and four envelopes:
/// 1. `securesystemslib.dsse.Envelope` signed by keys 0 and 2;
/// 2. the `in-toto` package's `Envelope` (its `ENVELOPE_PAYLOAD_TYPE`), SLSA
///    provenance predicate, signed by keys 1 and 2 through `create_signature`
///    and read back through `Metadata.from_dict`;
/// 3. key 0 alone;
/// 4. key 0 twice, written by hand (a dict of signatures cannot hold it).
const PYTHON_ATTESTS: &str = r#"
import hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey
from in_toto.models.metadata import ENVELOPE_PAYLOAD_TYPE, Metadata
from in_toto.models.metadata import Envelope as InTotoEnvelope

bundle = sys.stdin.buffer.read()
digest = hashlib.sha256(bundle).hexdigest()
name = json.loads(bundle)["name"] + "@" + json.loads(bundle)["version"]

signers, keys = [], []
for _ in range(3):
    priv = Ed25519PrivateKey.generate()
    pub = priv.public_key()
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key = SSlibKey.from_crypto(pub, keyid=hashlib.sha256(spki).hexdigest())
    keys.append(key)
    signers.append(CryptoSigner(priv, key))
    print(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())

def statement(predicate_type, predicate):
    return json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": digest}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }, indent=1).encode()

review = statement("https://somastack.dev/capsule-review/v1", {"reviewer": "py", "notes": "ok \u00e9"})
env = Envelope(payload=review, payload_type=ENVELOPE_PAYLOAD_TYPE, signatures={})
env.sign(signers[0])
env.sign(signers[2])
assert len(env.verify(keys, 2)) == 2
print(json.dumps(env.to_dict()))

provenance = statement("https://slsa.dev/provenance/v1", {"buildDefinition": {"buildType": "py"}})
it = InTotoEnvelope(payload=provenance, payload_type=ENVELOPE_PAYLOAD_TYPE, signatures={})
it.create_signature(signers[1])
it.create_signature(signers[2])
back = Metadata.from_dict(it.to_dict())
assert isinstance(back, InTotoEnvelope) and back.payload == provenance
print(json.dumps(back.to_dict()))

alone = Envelope(payload=review, payload_type=ENVELOPE_PAYLOAD_TYPE, signatures={})
alone.sign(signers[0])
print(json.dumps(alone.to_dict()))

twice = alone.to_dict()
twice["signatures"] = twice["signatures"] * 2
print(json.dumps(twice))

print(ENVELOPE_PAYLOAD_TYPE)
"#;

#[test]
fn python_attests_rust_verifies() {
    let bundle = common::example_bundle();
    let out = common::run_python(
        &["securesystemslib", "in_toto"],
        PYTHON_ATTESTS,
        std::str::from_utf8(bundle.canonical_bytes()).unwrap(),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    let keys: Vec<AttestationKey> = lines[..3]
        .iter()
        .map(|hex| AttestationKey::new(common::hex(hex).try_into().unwrap()))
        .collect();
    // in-toto's own constant is ours.
    assert_eq!(lines[7], PAYLOAD_TYPE);

    let verify = |json: &str| {
        let envelope = envelope_from_json(json.as_bytes()).unwrap();
        verify_attestation(
            &envelope,
            &bundle.digest(),
            &keys,
            2,
            &DEFAULT_ALLOWED_PREDICATE_TYPES,
            AT,
        )
    };

    // securesystemslib, keys 0 and 2: accepted, over json.dumps' bytes as sent.
    let statement = verify(lines[3]).unwrap();
    assert_eq!(statement.predicate_type(), CAPSULE_REVIEW_PREDICATE_TYPE);
    assert_eq!(statement.predicate()["notes"], "ok é");
    assert_eq!(statement.subjects()[0].name(), Some("text-stats@1.0.0"));
    let envelope = envelope_from_json(lines[3].as_bytes()).unwrap();
    assert!(
        envelope.payload.contains(&b'\n'),
        "the payload is json.dumps' indented text"
    );
    assert_eq!(envelope.signatures[0].keyid, keys[0].key_id);

    // The in-toto package's envelope, keys 1 and 2, SLSA provenance.
    let statement = verify(lines[4]).unwrap();
    assert_eq!(statement.predicate_type(), SLSA_PROVENANCE_PREDICATE_TYPE);

    // One key: below the threshold; the same key twice: still one.
    for (name, line) in [("one key", lines[5]), ("one key twice", lines[6])] {
        let err = verify(line).unwrap_err();
        assert_eq!(err.reason(), "attestation_below_threshold", "{name}");
    }
    // With key 0 retired at submission, the first envelope misses for that reason.
    let mut retired = keys.clone();
    retired[0].retired_at_nanos = Some(AT);
    let envelope = envelope_from_json(lines[3].as_bytes()).unwrap();
    let err = verify_attestation(
        &envelope,
        &bundle.digest(),
        &retired,
        2,
        &DEFAULT_ALLOWED_PREDICATE_TYPES,
        AT,
    )
    .unwrap_err();
    assert_eq!(err.reason(), "attestation_key_retired");
}

/// Python checks `attest`'s envelope: `securesystemslib` verifies it with a
/// 2-of-3 threshold over all three public keys; plain `cryptography` verifies
/// each signature over a PAE built by hand, selecting the key whose SPKI
/// SHA-256 is the keyid; the `in-toto` package reads it as its envelope type;
/// the statement names the SHA-256 of the bundle bytes Python read; and the
/// payload and the bundle are both `rfc8785`'s canonical form.
const PYTHON_VERIFIES: &str = r#"
import base64, hashlib, json, sys
import rfc8785
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
from in_toto.models.metadata import Metadata
from in_toto.models.metadata import Envelope as InTotoEnvelope

STATEMENT_TYPE, pems, bundle, text = sys.stdin.read().split("\n\n", 3)
keys = {}
for pem in pems.split("\n;\n"):
    pub = serialization.load_pem_public_key(pem.encode())
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    keys[hashlib.sha256(spki).hexdigest()] = pub
assert len(keys) == 3

doc = json.loads(text)
# securesystemslib's from_dict consumes the dict it is given: each reader gets its own copy.
env = Envelope.from_dict(json.loads(text))
accepted = env.verify([SSlibKey.from_crypto(pub, keyid=kid) for kid, pub in keys.items()], 2)
assert len(accepted) == 2, accepted

payload = base64.b64decode(doc["payload"], validate=True)
t = doc["payloadType"].encode()
pae = b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)
for sig in doc["signatures"]:
    keys[sig["keyid"]].verify(base64.b64decode(sig["sig"], validate=True), pae)

assert isinstance(Metadata.from_dict(json.loads(text)), InTotoEnvelope)

statement = json.loads(payload)
assert statement["_type"] == STATEMENT_TYPE, statement["_type"]
[subject] = statement["subject"]
assert subject["digest"]["sha256"] == hashlib.sha256(bundle.encode()).hexdigest()
assert rfc8785.dumps(statement) == payload, "payload is not rfc8785's canonical form"
assert rfc8785.dumps(json.loads(bundle)) == bundle.encode(), "bundle is not rfc8785's canonical form"
print("verified", len(accepted), subject["name"], statement["predicateType"], statement["predicate"]["reviewer"])
"#;

#[test]
fn rust_attests_python_verifies() {
    let bundle = common::example_bundle();
    let signers = [common::signer(11), common::signer(12), common::signer(13)];
    let envelope = attest(
        &bundle,
        CAPSULE_REVIEW_PREDICATE_TYPE,
        serde_json::json!({"reviewer": "rust «é» 🚀", "decision": "approve", "score": 0.75}),
        &[&signers[0], &signers[2]],
    )
    .unwrap();
    let pems: Vec<String> = signers.iter().map(|s| s.public_key_pem()).collect();
    let stdin = format!(
        "{STATEMENT_TYPE}\n\n{}\n\n{}\n\n{}",
        pems.iter()
            .map(|p| p.trim_end())
            .collect::<Vec<_>>()
            .join("\n;\n"),
        std::str::from_utf8(bundle.canonical_bytes()).unwrap(),
        String::from_utf8(envelope.to_json()).unwrap()
    );
    let out = common::run_python(
        &["securesystemslib", "in_toto", "rfc8785"],
        PYTHON_VERIFIES,
        &stdin,
    );
    assert_eq!(
        out.trim(),
        "verified 2 text-stats@1.0.0 https://somastack.dev/capsule-review/v1 rust «é» 🚀"
    );
    // And the digest Python compared is the one Rust attests.
    assert_eq!(bundle.digest(), sha256(bundle.canonical_bytes()));
}
