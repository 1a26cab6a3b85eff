#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Strict Ed25519: Wycheproof vectors, typed small-order and non-canonical
//! inputs, SPKI parsing, and interop with Python `cryptography` both ways.

mod common;

use soma_sign::{
    Ed25519Signer, KeyId, SignError, ed25519_public_key_from_pem, ed25519_public_key_from_spki_der,
    verify_ed25519_strict,
};

#[test]
fn wycheproof_ed25519() {
    let doc = common::vector_json("wycheproof/ed25519_test.json");
    let (mut valid, mut invalid, mut total) = (0, 0, 0);
    for group in doc["testGroups"].as_array().unwrap() {
        let pk = common::hex(group["publicKey"]["pk"].as_str().unwrap());
        // The group's PEM and DER forms carry the same key through the strict SPKI parser.
        let from_pem = ed25519_public_key_from_pem(group["publicKeyPem"].as_str().unwrap()).unwrap();
        assert_eq!(from_pem.to_vec(), pk);
        let from_der =
            ed25519_public_key_from_spki_der(&common::hex(group["publicKeyDer"].as_str().unwrap())).unwrap();
        assert_eq!(from_der.to_vec(), pk);
        for t in group["tests"].as_array().unwrap() {
            total += 1;
            let id = t["tcId"].as_u64().unwrap();
            let msg = common::hex(t["msg"].as_str().unwrap());
            let sig = common::hex(t["sig"].as_str().unwrap());
            let outcome = verify_ed25519_strict(&pk, &msg, &sig);
            match t["result"].as_str().unwrap() {
                "valid" => {
                    assert!(
                        outcome.is_ok(),
                        "tcId {id} ({}) valid but: {outcome:?}",
                        t["comment"]
                    );
                    valid += 1;
                }
                "invalid" => {
                    assert!(
                        outcome.is_err(),
                        "tcId {id} ({}) invalid but accepted",
                        t["comment"]
                    );
                    invalid += 1;
                }
                other => panic!("tcId {id}: unexpected result {other} (no 'acceptable' cases are expected)"),
            }
        }
    }
    println!("wycheproof ed25519: {total} cases: {valid} valid verified, {invalid} invalid rejected");
    assert_eq!(total, 151);
    assert_eq!(valid + invalid, total);
}

struct Case {
    name: &'static str,
    public_key: Vec<u8>,
    signature: Vec<u8>,
    message: &'static [u8],
    expected: Result<(), SignError>,
}

fn h(s: &str) -> Vec<u8> {
    common::hex(s)
}

/// The base point's encoding: a valid, canonical point of prime order.
const BASEPOINT: &str = "5866666666666666666666666666666666666666666666666666666666666666";
/// The group order ℓ, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn add_ell(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(ELL[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

#[test]
fn small_order_public_keys_rejected() {
    // A well-formed signature shape (R = base point, S = 0) so only the key decides.
    let sig = [h(BASEPOINT), vec![0u8; 32]].concat();
    let rows: &[(&str, &str, SignError)] = &[
        (
            "identity (order 1)",
            "0100000000000000000000000000000000000000000000000000000000000000",
            SignError::WeakPublicKey,
        ),
        (
            "order 2 (y = -1)",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            SignError::WeakPublicKey,
        ),
        (
            "order 4 (y = 0, x even)",
            "0000000000000000000000000000000000000000000000000000000000000000",
            SignError::WeakPublicKey,
        ),
        (
            "order 4 (y = 0, x odd)",
            "0000000000000000000000000000000000000000000000000000000000000080",
            SignError::WeakPublicKey,
        ),
        (
            "order 8",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            SignError::WeakPublicKey,
        ),
        (
            "order 8, negated x",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
            SignError::WeakPublicKey,
        ),
        (
            "order 8, other y",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            SignError::WeakPublicKey,
        ),
        (
            "order 8, other y, negated x",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
            SignError::WeakPublicKey,
        ),
        (
            "identity encoded as y = p + 1",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            SignError::NonCanonicalPublicKey,
        ),
        (
            "order 4 encoded as y = p",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            SignError::NonCanonicalPublicKey,
        ),
        (
            "identity with sign bit (x = -0)",
            "0100000000000000000000000000000000000000000000000000000000000080",
            SignError::NonCanonicalPublicKey,
        ),
        (
            "y = 2 is not on the curve",
            "0200000000000000000000000000000000000000000000000000000000000000",
            SignError::PublicKeyNotOnCurve,
        ),
    ];
    for (name, pk, expected) in rows {
        let got = verify_ed25519_strict(&h(pk), b"", &sig);
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", Err::<(), _>(expected)),
            "{name}"
        );
    }
    println!("ed25519 typed public keys: {} rejected", rows.len());
}

#[test]
fn signature_table() {
    let (signer, _) = Ed25519Signer::generate(KeyId::new("ed-1").unwrap()).unwrap();
    let pk = signer.public_key().to_vec();
    let msg: &'static [u8] = b"checkpoint 42";
    let sig = signer.sign(msg).to_vec();
    let (r, s) = sig.split_at(32);
    let mut flipped = sig.clone();
    flipped[40] ^= 0x01;
    let mut high_s = sig.clone();
    high_s[63] |= 0x80;

    let cases = vec![
        Case {
            name: "valid",
            public_key: pk.clone(),
            signature: sig.clone(),
            message: msg,
            expected: Ok(()),
        },
        Case {
            name: "other message",
            public_key: pk.clone(),
            signature: sig.clone(),
            message: b"checkpoint 43",
            expected: Err(SignError::SignatureMismatch),
        },
        Case {
            name: "flipped bit in S",
            public_key: pk.clone(),
            signature: flipped,
            message: msg,
            expected: Err(SignError::SignatureMismatch),
        },
        Case {
            name: "S + ℓ (malleated)",
            public_key: pk.clone(),
            signature: [r.to_vec(), add_ell(s)].concat(),
            message: msg,
            expected: Err(SignError::NonCanonicalS),
        },
        Case {
            name: "S with the top bit set",
            public_key: pk.clone(),
            signature: high_s,
            message: msg,
            expected: Err(SignError::NonCanonicalS),
        },
        Case {
            name: "R is the identity (small order)",
            public_key: pk.clone(),
            signature: [
                h("0100000000000000000000000000000000000000000000000000000000000000"),
                s.to_vec(),
            ]
            .concat(),
            message: msg,
            expected: Err(SignError::SmallOrderR),
        },
        Case {
            name: "R of order 8",
            public_key: pk.clone(),
            signature: [
                h("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
                s.to_vec(),
            ]
            .concat(),
            message: msg,
            expected: Err(SignError::SmallOrderR),
        },
        Case {
            name: "R non-canonical (y = p + 1)",
            public_key: pk.clone(),
            signature: [
                h("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
                s.to_vec(),
            ]
            .concat(),
            message: msg,
            expected: Err(SignError::NonCanonicalR),
        },
        Case {
            name: "R not on the curve",
            public_key: pk.clone(),
            signature: [
                h("0200000000000000000000000000000000000000000000000000000000000000"),
                s.to_vec(),
            ]
            .concat(),
            message: msg,
            expected: Err(SignError::SignatureRNotOnCurve),
        },
        Case {
            name: "all-zero signature",
            public_key: pk.clone(),
            signature: vec![0u8; 64],
            message: msg,
            expected: Err(SignError::SmallOrderR),
        },
        Case {
            name: "63-byte signature",
            public_key: pk.clone(),
            signature: sig[..63].to_vec(),
            message: msg,
            expected: Err(SignError::SignatureLength { len: 63 }),
        },
        Case {
            name: "65-byte signature",
            public_key: pk.clone(),
            signature: [sig.clone(), vec![0]].concat(),
            message: msg,
            expected: Err(SignError::SignatureLength { len: 65 }),
        },
        Case {
            name: "31-byte public key",
            public_key: pk[..31].to_vec(),
            signature: sig.clone(),
            message: msg,
            expected: Err(SignError::PublicKeyLength { len: 31 }),
        },
        Case {
            name: "33-byte public key",
            public_key: [pk.clone(), vec![0]].concat(),
            signature: sig.clone(),
            message: msg,
            expected: Err(SignError::PublicKeyLength { len: 33 }),
        },
    ];
    for case in &cases {
        let got = verify_ed25519_strict(&case.public_key, case.message, &case.signature);
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", case.expected),
            "case {}",
            case.name
        );
    }
    println!("ed25519 signature table: {} cases", cases.len());
}

#[test]
fn rfc8032_test_1() {
    // RFC 8032 §7.1 TEST 1: secret key, public key, empty message, signature.
    let seed = h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let der = [h("302e020100300506032b657004220420"), seed].concat();
    let signer = Ed25519Signer::from_pkcs8_der(KeyId::new("rfc").unwrap(), &der).unwrap();
    let pk = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let sig = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
    assert_eq!(common::to_hex(&signer.public_key()), pk);
    assert_eq!(common::to_hex(&signer.sign(b"")), sig);
    verify_ed25519_strict(&h(pk), b"", &h(sig)).unwrap();
    let debug = format!("{signer:?}");
    assert!(debug.contains(pk) && !debug.contains("9d61b19d"), "{debug}");
}

#[test]
fn spki_and_pem_table() {
    let (signer, der) = Ed25519Signer::generate(KeyId::new("k").unwrap()).unwrap();
    let pk = signer.public_key();
    let pem = signer.public_key_pem();
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----\n") && pem.ends_with("-----END PUBLIC KEY-----\n"),
        "{pem}"
    );
    assert_eq!(ed25519_public_key_from_pem(&pem).unwrap(), pk);
    assert_eq!(
        ed25519_public_key_from_pem(&pem.replace('\n', "\r\n")).unwrap(),
        pk
    );
    // The PKCS#8 v2 document from `generate` reloads to the same key.
    let again = Ed25519Signer::from_pkcs8_der(KeyId::new("k").unwrap(), &der).unwrap();
    assert_eq!(again.public_key(), pk);

    let key = pk.to_vec();
    let spki = |prefix: &str| [h(prefix), key.clone()].concat();
    let der_rows: Vec<(&str, Vec<u8>, SignError)> = vec![
        (
            "ed448 oid",
            spki("302a300506032b6571032100"),
            SignError::SpkiNotEd25519,
        ),
        (
            "x25519 oid",
            spki("302a300506032b656e032100"),
            SignError::SpkiNotEd25519,
        ),
        (
            "ed25519 with NULL parameters",
            spki("302c300706032b65700500032100"),
            SignError::SpkiNotEd25519,
        ),
        (
            "rsaEncryption oid",
            spki("302f300a06092a864886f70d010101032100"),
            SignError::SpkiNotEd25519,
        ),
        (
            "31-byte key",
            spki("302a300506032b6570032100")[..43].to_vec(),
            SignError::SpkiMalformed { len: 43 },
        ),
        (
            "trailing byte",
            [spki("302a300506032b6570032100"), vec![0]].concat(),
            SignError::SpkiMalformed { len: 45 },
        ),
        (
            "unused bits in bit string",
            spki("302a300506032b6570032101"),
            SignError::SpkiMalformed { len: 44 },
        ),
        (
            "wrong outer length",
            spki("302b300506032b6570032100"),
            SignError::SpkiMalformed { len: 44 },
        ),
        (
            "not der at all",
            b"hello".to_vec(),
            SignError::SpkiMalformed { len: 5 },
        ),
        ("empty", Vec::new(), SignError::SpkiMalformed { len: 0 }),
    ];
    for (name, der, expected) in &der_rows {
        let got = ed25519_public_key_from_spki_der(der);
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", Err::<(), _>(expected)),
            "{name}"
        );
    }

    let pem_rows: Vec<(&str, String, SignError)> = vec![
        (
            "private key label",
            pem.replace("PUBLIC KEY", "PRIVATE KEY"),
            SignError::PemLabel {
                expected: "PUBLIC KEY",
                found: "PRIVATE KEY".into(),
            },
        ),
        (
            "missing end line",
            pem.replace("-----END PUBLIC KEY-----\n", ""),
            SignError::PemMalformed {
                reason: "missing end line",
            },
        ),
        (
            "no armour",
            "MCowBQYDK2VwAyEA".into(),
            SignError::PemMalformed {
                reason: "missing begin line",
            },
        ),
        (
            "bad base64",
            "-----BEGIN PUBLIC KEY-----\nMCow*QYDK2VwAyEA\n-----END PUBLIC KEY-----\n".into(),
            SignError::PemMalformed {
                reason: "body is not base64",
            },
        ),
        (
            "two documents",
            format!("{pem}{pem}"),
            SignError::PemMalformed {
                reason: "data after end line",
            },
        ),
        (
            "empty",
            String::new(),
            SignError::PemMalformed {
                reason: "empty input",
            },
        ),
    ];
    for (name, text, expected) in &pem_rows {
        let got = ed25519_public_key_from_pem(text);
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", Err::<(), _>(expected)),
            "{name}"
        );
    }

    // A PKCS#8 v2 document whose embedded public key does not match its seed is refused.
    let mut bad = der.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let err = Ed25519Signer::from_pkcs8_der(KeyId::new("k").unwrap(), &bad).unwrap_err();
    assert!(matches!(err, SignError::InvalidPrivateKey { .. }), "{err:?}");
}

#[test]
fn interop_rust_signs_python_verifies() {
    let (signer, _) = Ed25519Signer::generate(KeyId::new("interop").unwrap()).unwrap();
    let messages: [&[u8]; 4] = [b"", b"abc", b"{\"a\":1}", &[0u8; 1000]];
    let mut lines = String::new();
    for m in messages {
        let sig = signer.sign(m);
        lines += &format!(
            "{} {} {} ok\n",
            common::to_hex(&signer.public_key()),
            common::to_hex(m),
            common::to_hex(&sig)
        );
        // The same signature on a different message must fail in Python too.
        lines += &format!(
            "{} {}ff {} bad\n",
            common::to_hex(&signer.public_key()),
            common::to_hex(m),
            common::to_hex(&sig)
        );
    }
    let script = r#"
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives import serialization
from cryptography.exceptions import InvalidSignature
for line in sys.stdin:
    pk, msg, sig, want = line.split(" ")
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(pk))
    try:
        key.verify(bytes.fromhex(sig), bytes.fromhex(msg))
        print("ok")
    except InvalidSignature:
        print("bad")
"#;
    let out = common::run_python("cryptography", script, &lines);
    let want: Vec<&str> = lines.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want);

    // Python also reads the PEM public key the signer publishes.
    let pem_script = r#"
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
key = serialization.load_pem_public_key(sys.stdin.read().encode())
print(key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex())
"#;
    let out = common::run_python("cryptography", pem_script, &signer.public_key_pem());
    assert_eq!(out.trim(), common::to_hex(&signer.public_key()));
    println!(
        "ed25519 interop: {} rust signatures checked by python cryptography",
        want.len()
    );
}

#[test]
fn interop_python_signs_rust_verifies() {
    let script = r#"
import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, PrivateFormat, NoEncryption
for i in range(5):
    key = Ed25519PrivateKey.generate()
    msg = ("python message %d" % i).encode() * (i + 1)
    sig = key.sign(msg)
    pk = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode().replace("\n", "|")
    pub_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode().replace("\n", "|")
    print(pk.hex(), msg.hex(), sig.hex(), pem, pub_pem, sep="\t")
"#;
    let out = common::run_python("cryptography", script, "");
    let mut n = 0;
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (pk, msg, sig) = (h(f[0]), h(f[1]), h(f[2]));
        verify_ed25519_strict(&pk, &msg, &sig).unwrap();
        let mut tampered = msg.clone();
        tampered.push(b'!');
        assert!(matches!(
            verify_ed25519_strict(&pk, &tampered, &sig),
            Err(SignError::SignatureMismatch)
        ));
        // The PKCS#8 v1 PEM OpenSSL writes loads, and Ed25519 being deterministic, signs identically.
        let signer =
            Ed25519Signer::from_pkcs8_pem(KeyId::new("py").unwrap(), &f[3].replace('|', "\n")).unwrap();
        assert_eq!(signer.public_key().to_vec(), pk);
        assert_eq!(signer.sign(&msg).to_vec(), sig);
        assert_eq!(
            ed25519_public_key_from_pem(&f[4].replace('|', "\n"))
                .unwrap()
                .to_vec(),
            pk
        );
        n += 1;
    }
    assert_eq!(n, 5);
    println!("ed25519 interop: {n} python signatures verified strictly");
}
