#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One-pass streamed Ed25519 with a hedged nonce: every size and chunking
//! verifies with ring, with strict verification and with Python
//! `cryptography`; a changed message, signature or key does not; each
//! signature draws its own nonce, so no two share `R`.

mod common;

use std::collections::HashSet;

use ring::signature::{ED25519, UnparsedPublicKey};
use soma_sign::{Ed25519Signer, KeyId, SignError, sha256, verify_ed25519_strict};

/// splitmix64: reproducible pseudo-random bytes and chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn signer(name: &str) -> Ed25519Signer {
    Ed25519Signer::generate(KeyId::new(name).unwrap()).unwrap().0
}

/// Signs `message` in one pass, fed in pieces of `chunk` bytes.
fn hedged(signer: &Ed25519Signer, message: &[u8], chunk: usize) -> soma_sign::StreamSignature {
    let mut stream = signer.hedged_stream_signer().unwrap();
    for piece in message.chunks(chunk.max(1)) {
        stream.update(piece);
    }
    assert_eq!(stream.message_len(), message.len() as u64);
    stream.finish()
}

/// ring's verifier (the RFC 8032 equation, another implementation than
/// the one that signs).
fn ring_verifies(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[test]
fn every_size_and_chunking_verifies_with_ring_and_strictly() {
    let signer = signer("k");
    let public = signer.public_key();
    let mut rng = Rng(7);
    let mut cases = 0;
    for size in [0usize, 1, 63, 64, 127, 128, 129, 1000, 32 * 1024, 100_003] {
        let message = rng.bytes(size);
        for chunk in [1usize, 7, 128, 4096, 1 << 20] {
            if chunk == 1 && size > 5000 {
                continue;
            }
            let done = hedged(&signer, &message, chunk);
            assert_eq!(done.message_len, size as u64);
            assert_eq!(done.message_sha256, sha256(&message), "{size} bytes");
            assert!(
                ring_verifies(&public, &message, &done.signature),
                "{size}/{chunk}"
            );
            verify_ed25519_strict(&public, &message, &done.signature).unwrap();
            cases += 1;
        }
    }
    println!("hedged one-pass signatures verified (ring, strict) in {cases} size/chunking cases");
}

/// The same message signed twice: two nonces, two valid signatures. A
/// repeated `R` under one key would be a reused nonce.
#[test]
fn each_signature_draws_a_fresh_nonce() {
    let signer = signer("k");
    let public = signer.public_key();
    let message = Rng(3).bytes(10_000);
    let mut nonces = HashSet::new();
    for _ in 0..64 {
        let done = hedged(&signer, &message, 1000);
        verify_ed25519_strict(&public, &message, &done.signature).unwrap();
        assert!(nonces.insert(done.signature[..32].to_vec()), "R repeated");
    }
    // Nor is it the deterministic RFC 8032 nonce of the message.
    let deterministic = signer.sign(&message);
    assert!(!nonces.contains(&deterministic[..32]));
    verify_ed25519_strict(&public, &message, &deterministic).unwrap();
}

/// Hostile changes to what was signed, each refused by both verifiers
/// with the strict verifier's exact error.
#[test]
fn a_changed_message_signature_or_key_is_refused() {
    struct Case {
        name: &'static str,
        message: Vec<u8>,
        signature: Vec<u8>,
        public: [u8; 32],
        expected: SignError,
    }

    let signer = signer("k");
    let other = self::signer("other");
    let message = Rng(5).bytes(70_000);
    let done = hedged(&signer, &message, 32 * 1024);
    let sig = done.signature.to_vec();
    let public = signer.public_key();
    let flip = |bytes: &[u8], at: usize| {
        let mut out = bytes.to_vec();
        out[at] ^= 1;
        out
    };
    let mut s_plus_ell = sig.clone();
    // S + ℓ: the same S mod ℓ, non-canonical (malleability).
    let ell: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s_plus_ell[32 + i]) + u16::from(ell[i]) + carry;
        s_plus_ell[32 + i] = v as u8;
        carry = v >> 8;
    }
    let cases = vec![
        Case {
            name: "one message byte flipped",
            message: flip(&message, 40_000),
            signature: sig.clone(),
            public,
            expected: SignError::SignatureMismatch,
        },
        Case {
            name: "message extended by one byte",
            message: [message.as_slice(), b"!"].concat(),
            signature: sig.clone(),
            public,
            expected: SignError::SignatureMismatch,
        },
        Case {
            name: "message cut by one byte",
            message: message[..message.len() - 1].to_vec(),
            signature: sig.clone(),
            public,
            expected: SignError::SignatureMismatch,
        },
        Case {
            name: "S flipped",
            message: message.clone(),
            signature: flip(&sig, 40),
            public,
            expected: SignError::SignatureMismatch,
        },
        Case {
            name: "S + ell",
            message: message.clone(),
            signature: s_plus_ell,
            public,
            expected: SignError::NonCanonicalS,
        },
        Case {
            name: "another key",
            message: message.clone(),
            signature: sig.clone(),
            public: other.public_key(),
            expected: SignError::SignatureMismatch,
        },
    ];
    for case in cases {
        let got = verify_ed25519_strict(&case.public, &case.message, &case.signature);
        assert_eq!(
            got.as_ref().map_err(ToString::to_string),
            Err(case.expected.to_string()),
            "{}",
            case.name
        );
        if case.name != "S + ell" {
            assert!(
                !ring_verifies(&case.public, &case.message, &case.signature),
                "{}: ring accepted",
                case.name
            );
        }
    }
    // And the untouched triple still verifies.
    assert!(ring_verifies(&public, &message, &sig));
    verify_ed25519_strict(&public, &message, &sig).unwrap();
}

#[test]
fn python_cryptography_verifies_a_hedged_signature() {
    let signer = signer("k");
    let message = Rng(11).bytes(300_000);
    let done = hedged(&signer, &message, 32 * 1024);
    // The extended message must fail with InvalidSignature and nothing else:
    // any other exception (a bad key, bad hex, a missing module) is a broken
    // check, and ends the script with a traceback that fails the test.
    let script = r#"
import json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
d = json.load(sys.stdin)
key = load_pem_public_key(d["pem"].encode())
assert isinstance(key, Ed25519PublicKey), type(key)
msg = bytes.fromhex(d["msg"])
key.verify(bytes.fromhex(d["sig"]), msg)
try:
    key.verify(bytes.fromhex(d["sig"]), msg + b"!")
    print("extended message verified")
except InvalidSignature:
    print("ok")
"#;
    let input = serde_json::json!({
        "pem": signer.public_key_pem(),
        "msg": common::to_hex(&message),
        "sig": common::to_hex(&done.signature),
    });
    let out = common::run_python("cryptography", script, &input.to_string());
    assert_eq!(out.trim(), "ok");
}
