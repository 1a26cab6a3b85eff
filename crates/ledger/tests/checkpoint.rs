//! Signed checkpoints: round trips with keys minted at run time, an
//! independent construction of the note format, the golang.org/x/mod
//! sumdb/note known-answer note, a table of hostile notes (each asserting its
//! exact error), and `check_monotonic`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use soma_ledger::{
    Checkpoint, CheckpointSigner, CheckpointVerifier, Hash, LedgerError, MAX_SIGNATURES, check_monotonic,
    leaf_hash, root,
};

const ORIGIN: &str = "soma.example/analytics-ledger";

fn new_pkcs8() -> Vec<u8> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// The key ID computed here, independently of the crate.
fn independent_key_id(name: &str, public_key: &[u8]) -> [u8; 4] {
    let mut input = name.as_bytes().to_vec();
    input.push(0x0a);
    input.push(0x01);
    input.extend_from_slice(public_key);
    let d = digest::digest(&digest::SHA256, &input);
    d.as_ref()[..4].try_into().unwrap()
}

/// A note signed over arbitrary text, built here without the crate.
fn sign_raw(pkcs8: &[u8], name: &str, key_id: [u8; 4], text: &str) -> String {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).unwrap();
    let mut payload = key_id.to_vec();
    payload.extend_from_slice(pair.sign(text.as_bytes()).as_ref());
    format!("{text}\n\u{2014} {name} {}\n", STANDARD.encode(payload))
}

fn sample_root() -> Hash {
    let leaves: Vec<Hash> = (0u8..5).map(|i| leaf_hash(&[i])).collect();
    root(&leaves)
}

#[test]
fn sign_then_verify_round_trips() {
    let signer = CheckpointSigner::from_pkcs8_der(ORIGIN, &new_pkcs8()).unwrap();
    let verifier = signer.verifier();
    for (size, extensions) in [
        (0u64, vec![]),
        (5, vec![]),
        (u64::MAX, vec!["ext one".to_owned(), "2".to_owned()]),
    ] {
        let checkpoint = Checkpoint::new(ORIGIN, size, sample_root())
            .unwrap()
            .with_extensions(extensions)
            .unwrap();
        let note = signer.sign(&checkpoint);
        let verified = verifier.verify(&note).unwrap();
        assert_eq!(verified, checkpoint);
        assert_eq!(verified.extensions(), checkpoint.extensions());
    }
}

#[test]
fn note_format_matches_an_independent_construction() {
    let pkcs8 = new_pkcs8();
    let signer = CheckpointSigner::from_pkcs8_der(ORIGIN, &pkcs8).unwrap();
    let public_key = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    assert_eq!(signer.public_key().as_slice(), public_key.as_slice());
    let key_id = independent_key_id(ORIGIN, &public_key);
    assert_eq!(signer.key_id(), key_id);

    let checkpoint = Checkpoint::new(ORIGIN, 42, sample_root()).unwrap();
    let body = format!("{ORIGIN}\n42\n{}\n", STANDARD.encode(sample_root().as_bytes()));
    assert_eq!(checkpoint.to_body(), body);
    // Ed25519 is deterministic, so the whole note is reproducible byte for byte.
    assert_eq!(signer.sign(&checkpoint), sign_raw(&pkcs8, ORIGIN, key_id, &body));

    let verifier = CheckpointVerifier::new(ORIGIN, &public_key).unwrap();
    assert_eq!(verifier, signer.verifier());
}

#[test]
fn a_note_carries_a_signature_made_elsewhere_with_the_key() {
    let pkcs8 = new_pkcs8();
    let signer = CheckpointSigner::from_pkcs8_der(ORIGIN, &pkcs8).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
    let checkpoint = Checkpoint::new(ORIGIN, 42, sample_root()).unwrap();
    let signature: [u8; 64] = pair
        .sign(checkpoint.to_body().as_bytes())
        .as_ref()
        .try_into()
        .unwrap();
    let note = signer.note(&checkpoint, &signature);
    assert_eq!(note, signer.sign(&checkpoint));
    assert_eq!(signer.verifier().verify(&note).unwrap(), checkpoint);

    // A signature over another body (another size) is carried as given,
    // and no verifier accepts the note.
    let other = Checkpoint::new(ORIGIN, 43, sample_root()).unwrap();
    let wrong: [u8; 64] = pair.sign(other.to_body().as_bytes()).as_ref().try_into().unwrap();
    let err = signer
        .verifier()
        .verify(&signer.note(&checkpoint, &wrong))
        .unwrap_err();
    assert!(matches!(err, LedgerError::BadSignature { .. }), "{err:?}");
}

#[test]
fn pem_keys_load() {
    let pkcs8 = new_pkcs8();
    let encoded = STANDARD.encode(&pkcs8);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let from_pem = CheckpointSigner::from_pkcs8_pem(ORIGIN, &pem).unwrap();
    let from_der = CheckpointSigner::from_pkcs8_der(ORIGIN, &pkcs8).unwrap();
    assert_eq!(from_pem.public_key(), from_der.public_key());

    assert!(matches!(
        CheckpointSigner::from_pkcs8_pem(ORIGIN, "no pem here"),
        Err(LedgerError::InvalidPem)
    ));
    assert!(matches!(
        CheckpointSigner::from_pkcs8_der(ORIGIN, b"not a key"),
        Err(LedgerError::InvalidPrivateKey { .. })
    ));
    assert!(matches!(
        CheckpointSigner::from_pkcs8_der("bad name", &pkcs8),
        Err(LedgerError::InvalidKeyName)
    ));
    assert!(matches!(
        CheckpointVerifier::new(ORIGIN, &[0u8; 31]),
        Err(LedgerError::InvalidPublicKey { len: 31 })
    ));
}

/// golang.org/x/mod/sumdb/note's published example: key
/// `PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW` and
/// signer `PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz`.
#[test]
fn go_sumdb_note_known_answer() {
    let vkey = STANDARD
        .decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
        .unwrap();
    assert_eq!(vkey[0], 0x01);
    let public_key = &vkey[1..];
    let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    let note = format!(
        "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    );

    let verifier = CheckpointVerifier::new("PeterNeumann", public_key).unwrap();
    assert_eq!(verifier.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
    // The signature verifies; only then is the two-line text refused as a
    // checkpoint body. A failing signature would stop earlier.
    assert!(matches!(
        verifier.verify(&note),
        Err(LedgerError::CheckpointTooShort { lines: 2 })
    ));
    let altered = note.replace("cryptography", "cryptographY");
    assert!(matches!(
        verifier.verify(&altered),
        Err(LedgerError::BadSignature { .. })
    ));

    // The private seed as an RFC 8410 PKCS#8 v1 document yields the same key.
    let skey = STANDARD
        .decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")
        .unwrap();
    assert_eq!(skey[0], 0x01);
    let mut pkcs8_v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    pkcs8_v1.extend_from_slice(&skey[1..]);
    let signer = CheckpointSigner::from_pkcs8_der("PeterNeumann", &pkcs8_v1).unwrap();
    assert_eq!(signer.public_key().as_slice(), public_key);
    assert_eq!(signer.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
}

#[test]
fn extension_lines_and_foreign_signatures_are_accepted() {
    let pkcs8 = new_pkcs8();
    let signer = CheckpointSigner::from_pkcs8_der(ORIGIN, &pkcs8).unwrap();
    let witness_pkcs8 = new_pkcs8();
    let witness_pub = Ed25519KeyPair::from_pkcs8(&witness_pkcs8)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let checkpoint = Checkpoint::new(ORIGIN, 9, sample_root())
        .unwrap()
        .with_extensions(vec!["timestamp 1700000000".to_owned()])
        .unwrap();
    let note = signer.sign(&checkpoint);
    // A witness cosignature line from an unknown key is ignored.
    let witness_line = sign_raw(
        &witness_pkcs8,
        "witness.example",
        independent_key_id("witness.example", &witness_pub),
        &checkpoint.to_body(),
    );
    let cosigned = format!("{note}{}\n", witness_line.lines().last().unwrap());
    assert_eq!(cosigned.matches('\u{2014}').count(), 2);
    let verified = signer.verifier().verify(&cosigned).unwrap();
    assert_eq!(verified.extensions(), ["timestamp 1700000000".to_owned()]);
}

#[test]
fn hostile_notes_are_refused_with_their_exact_error() {
    let pkcs8 = new_pkcs8();
    let signer = CheckpointSigner::from_pkcs8_der(ORIGIN, &pkcs8).unwrap();
    let verifier = signer.verifier();
    let key_id = signer.key_id();
    let good_root = sample_root();
    let good_body = format!("{ORIGIN}\n5\n{}\n", good_root.to_base64());
    let good = signer.sign(&Checkpoint::new(ORIGIN, 5, good_root).unwrap());
    assert_eq!(good, sign_raw(&pkcs8, ORIGIN, key_id, &good_body));

    // Pieces for hand-made notes.
    let (body_part, sig_line) = good.split_once("\n\n").unwrap();
    let sig_b64 = sig_line
        .trim_start_matches("\u{2014} ")
        .split_once(' ')
        .unwrap()
        .1
        .trim_end();
    let mut payload = STANDARD.decode(sig_b64).unwrap();

    let mut wrong_id = payload.clone();
    wrong_id[0] ^= 0xff;
    let wrong_key_hash = format!(
        "{body_part}\n\n\u{2014} {ORIGIN} {}\n",
        STANDARD.encode(&wrong_id)
    );

    payload[10] ^= 0x01;
    let bad_signature = format!("{body_part}\n\n\u{2014} {ORIGIN} {}\n", STANDARD.encode(&payload));

    let other_pkcs8 = new_pkcs8();
    let other_pub = Ed25519KeyPair::from_pkcs8(&other_pkcs8)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let other_key_same_name = sign_raw(
        &other_pkcs8,
        ORIGIN,
        independent_key_id(ORIGIN, &other_pub),
        &good_body,
    );
    let other_key_forged_id = sign_raw(&other_pkcs8, ORIGIN, key_id, &good_body);

    let signed = |text: &str| sign_raw(&pkcs8, ORIGIN, key_id, text);
    let root_b64 = good_root.to_base64();

    struct Case {
        name: &'static str,
        input: String,
        expected: fn(&LedgerError) -> bool,
    }
    let cases = vec![
        Case {
            name: "wrong key hash",
            input: wrong_key_hash,
            expected: |e| matches!(e, LedgerError::KeyIdMismatch { .. }),
        },
        Case {
            name: "bad signature",
            input: bad_signature,
            expected: |e| matches!(e, LedgerError::BadSignature { .. }),
        },
        Case {
            name: "altered size",
            input: good.replacen("\n5\n", "\n6\n", 1),
            expected: |e| matches!(e, LedgerError::BadSignature { .. }),
        },
        Case {
            name: "altered root",
            input: good.replacen(&root_b64, &leaf_hash(b"other").to_base64(), 1),
            expected: |e| matches!(e, LedgerError::BadSignature { .. }),
        },
        Case {
            name: "altered origin",
            input: good.replacen(&format!("{ORIGIN}\n"), "soma.example/other\n", 1),
            expected: |e| matches!(e, LedgerError::BadSignature { .. }),
        },
        Case {
            name: "missing blank line",
            input: good.replacen("\n\n", "\n", 1),
            expected: |e| matches!(e, LedgerError::NoteMissingBlankLine),
        },
        Case {
            name: "missing trailing newline",
            input: good.trim_end_matches('\n').to_owned(),
            expected: |e| matches!(e, LedgerError::NoteMissingTrailingNewline),
        },
        Case {
            name: "no signature lines",
            input: format!("{good_body}\n"),
            expected: |e| matches!(e, LedgerError::NoteNoSignatures),
        },
        Case {
            name: "trailing blank line after signatures",
            input: format!("{good}\n"),
            expected: |e| matches!(e, LedgerError::NoteNoSignatures),
        },
        Case {
            name: "signature by another key with the same name",
            input: other_key_same_name,
            expected: |e| matches!(e, LedgerError::KeyIdMismatch { .. }),
        },
        Case {
            name: "another key with the same name and a copied key id",
            input: other_key_forged_id,
            expected: |e| matches!(e, LedgerError::BadSignature { .. }),
        },
        Case {
            name: "signed only by an unknown name",
            input: good.replacen(&format!("\u{2014} {ORIGIN} "), "\u{2014} someone.else ", 1),
            expected: |e| matches!(e, LedgerError::NoSignatureFromKey { .. }),
        },
        Case {
            name: "size with leading zero",
            input: signed(&format!("{ORIGIN}\n05\n{root_b64}\n")),
            expected: |e| matches!(e, LedgerError::NonCanonicalTreeSize),
        },
        Case {
            name: "size with plus sign",
            input: signed(&format!("{ORIGIN}\n+5\n{root_b64}\n")),
            expected: |e| matches!(e, LedgerError::NonCanonicalTreeSize),
        },
        Case {
            name: "size beyond 64 bits",
            input: signed(&format!("{ORIGIN}\n18446744073709551616\n{root_b64}\n")),
            expected: |e| matches!(e, LedgerError::TreeSizeOutOfRange),
        },
        Case {
            name: "non-base64 root",
            input: signed(&format!("{ORIGIN}\n5\n{}\n", root_b64.replace('=', "!"))),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::InvalidBase64 {
                        field: "root hash",
                        ..
                    }
                )
            },
        },
        Case {
            name: "unpadded root",
            input: signed(&format!("{ORIGIN}\n5\n{}\n", root_b64.trim_end_matches('='))),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::InvalidBase64 {
                        field: "root hash",
                        ..
                    }
                )
            },
        },
        Case {
            name: "root of wrong length",
            input: signed(&format!("{ORIGIN}\n5\n{}\n", STANDARD.encode([7u8; 31]))),
            expected: |e| matches!(e, LedgerError::InvalidHashLength { len: 31 }),
        },
        Case {
            name: "body of two lines",
            input: signed(&format!("{ORIGIN}\n5\n")),
            expected: |e| matches!(e, LedgerError::CheckpointTooShort { lines: 2 }),
        },
        Case {
            name: "empty extension line",
            input: signed(&format!("{ORIGIN}\n5\n{root_b64}\n\nextension\n")),
            expected: |e| matches!(e, LedgerError::EmptyBodyLine { line: 4 }),
        },
        Case {
            name: "unexpected origin",
            input: signed(&format!("soma.example/other\n5\n{root_b64}\n")),
            expected: |e| matches!(e, LedgerError::UnexpectedOrigin { .. }),
        },
        Case {
            name: "control character",
            input: good.replacen('5', "5\r", 1),
            expected: |e| matches!(e, LedgerError::NoteControlCharacter { .. }),
        },
        Case {
            name: "signature line without em dash",
            input: good.replacen('\u{2014}', "-", 1),
            expected: |e| matches!(e, LedgerError::MalformedSignatureLine { line: 1 }),
        },
        Case {
            name: "signature line without signature",
            input: format!("{good_body}\n\u{2014} {ORIGIN}\n"),
            expected: |e| matches!(e, LedgerError::MalformedSignatureLine { line: 1 }),
        },
        Case {
            name: "signature not base64",
            input: format!("{good_body}\n\u{2014} {ORIGIN} %%%%\n"),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::InvalidBase64 {
                        field: "signature",
                        ..
                    }
                )
            },
        },
        Case {
            name: "signature shorter than a key id",
            input: format!("{good_body}\n\u{2014} {ORIGIN} {}\n", STANDARD.encode(key_id)),
            expected: |e| matches!(e, LedgerError::SignatureTooShort { line: 1, len: 4 }),
        },
        Case {
            name: "truncated signature with our key id",
            input: format!(
                "{good_body}\n\u{2014} {ORIGIN} {}\n",
                STANDARD.encode([&key_id[..], &[0u8; 10]].concat())
            ),
            expected: |e| matches!(e, LedgerError::BadSignature { .. }),
        },
        Case {
            name: "too many signature lines",
            input: format!(
                "{good}{}",
                format!("\u{2014} other.example {}\n", STANDARD.encode([1u8; 68])).repeat(MAX_SIGNATURES)
            ),
            expected: |e| matches!(e, LedgerError::TooManySignatures { .. }),
        },
    ];
    for case in &cases {
        let err = verifier.verify(&case.input).expect_err(case.name);
        assert!((case.expected)(&err), "{}: got {err:?}", case.name);
    }
    // The unaltered note still verifies, so the rows fail for their own reason.
    assert_eq!(verifier.verify(&good).unwrap().tree_size(), 5);
}

#[test]
fn check_monotonic_table() {
    let a = sample_root();
    let b = leaf_hash(b"b");
    let cp = |size: u64, root: Hash| Checkpoint::new(ORIGIN, size, root).unwrap();
    struct Case {
        name: &'static str,
        previous: Checkpoint,
        next: Checkpoint,
        expected: fn(&Result<(), LedgerError>) -> bool,
    }
    let cases = [
        Case {
            name: "smaller size is refused",
            previous: cp(10, a),
            next: cp(9, a),
            expected: |r| {
                matches!(
                    r,
                    Err(LedgerError::CheckpointSizeDecreased {
                        previous: 10,
                        next: 9
                    })
                )
            },
        },
        Case {
            name: "same size with another root is refused",
            previous: cp(10, a),
            next: cp(10, b),
            expected: |r| matches!(r, Err(LedgerError::CheckpointForked { tree_size: 10 })),
        },
        Case {
            name: "another origin is refused",
            previous: cp(10, a),
            next: Checkpoint::new("soma.example/other", 11, b).unwrap(),
            expected: |r| matches!(r, Err(LedgerError::OriginChanged { .. })),
        },
        Case {
            name: "same checkpoint is accepted",
            previous: cp(10, a),
            next: cp(10, a),
            expected: |r| r.is_ok(),
        },
        Case {
            name: "larger size is accepted",
            previous: cp(10, a),
            next: cp(11, b),
            expected: |r| r.is_ok(),
        },
        Case {
            name: "from the empty tree is accepted",
            previous: cp(0, soma_ledger::EMPTY_ROOT),
            next: cp(1, b),
            expected: |r| r.is_ok(),
        },
    ];
    for case in &cases {
        let result = check_monotonic(&case.previous, &case.next);
        assert!((case.expected)(&result), "{}: got {result:?}", case.name);
    }
}

#[test]
fn checkpoint_construction_refuses_bad_lines() {
    assert!(matches!(
        Checkpoint::new("", 1, sample_root()),
        Err(LedgerError::InvalidBodyLine { field: "origin" })
    ));
    assert!(matches!(
        Checkpoint::new("a\nb", 1, sample_root()),
        Err(LedgerError::InvalidBodyLine { field: "origin" })
    ));
    let cp = Checkpoint::new(ORIGIN, 1, sample_root()).unwrap();
    assert!(matches!(
        cp.clone().with_extensions(vec![String::new()]),
        Err(LedgerError::InvalidBodyLine { field: "extension" })
    ));
    assert!(matches!(
        cp.with_extensions(vec!["x\ny".to_owned()]),
        Err(LedgerError::InvalidBodyLine { field: "extension" })
    ));
}
