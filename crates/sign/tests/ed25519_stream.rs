#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Streamed pure Ed25519: byte-identical to one-shot signing for every
//! message size and chunking, RFC 8032 vectors, refusal of a replay that
//! differs from the first pass, and verification by Python `cryptography`.

mod common;

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

    /// Splits `len` into random chunk sizes in 1..=max (an empty chunk now and then too).
    fn chunks(&mut self, len: usize, max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut left = len;
        while left > 0 {
            if self.next().is_multiple_of(17) {
                out.push(0);
            }
            let n = (1 + (self.next() as usize) % max).min(left);
            out.push(n);
            left -= n;
        }
        out
    }
}

fn feed(message: &[u8], chunks: &[usize], sink: &mut dyn FnMut(&[u8])) {
    let mut at = 0;
    for &n in chunks {
        sink(&message[at..at + n]);
        at += n;
    }
    assert_eq!(at, message.len());
}

fn signers() -> Vec<(&'static str, Ed25519Signer)> {
    // A PKCS#8 v2 document (ring's `generate`) and a v1 document (OpenSSL's form).
    let (v2, _) = Ed25519Signer::generate(KeyId::new("v2").unwrap()).unwrap();
    let seed = common::hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb");
    let der = [common::hex("302e020100300506032b657004220420"), seed].concat();
    let v1 = Ed25519Signer::from_pkcs8_der(KeyId::new("v1").unwrap(), &der).unwrap();
    vec![("pkcs8 v2", v2), ("pkcs8 v1", v1)]
}

#[test]
fn streamed_signature_equals_one_shot_for_every_size_and_chunking() {
    let mut rng = Rng(0x5eed_0001);
    let sizes = [
        0usize,
        1,
        2,
        31,
        32,
        63,
        64,
        65,
        127,
        128,
        129,
        1000,
        4096,
        65_537,
        1 << 20,
    ];
    let mut checked = 0;
    for (key_name, signer) in signers() {
        let pk = signer.public_key();
        for &size in &sizes {
            let message = rng.bytes(size);
            let expected = signer.sign(&message);
            for max_chunk in [1usize, 7, 64, 1000, 70_000] {
                if max_chunk == 1 && size > 70_000 {
                    continue; // a byte at a time over a MiB adds time, not coverage
                }
                let first = rng.chunks(size, max_chunk);
                let second = rng.chunks(size, max_chunk.max(3) / 3 + 1);
                let mut stream = signer.stream_signer();
                feed(&message, &first, &mut |b| stream.update(b));
                assert_eq!(stream.message_len(), size as u64);
                let done = stream
                    .finish(|sink| {
                        feed(&message, &second, sink);
                        Ok(())
                    })
                    .unwrap();
                let case = format!("{key_name}, {size} bytes, chunks up to {max_chunk}");
                assert_eq!(done.signature, expected, "{case}");
                assert_eq!(done.message_sha256, sha256(&message), "{case}");
                assert_eq!(done.message_len, size as u64, "{case}");
                verify_ed25519_strict(&pk, &message, &done.signature).unwrap();
                checked += 1;
            }
            // The two-call convenience form.
            let chunks = rng.chunks(size, 4096);
            let streamed = signer
                .sign_stream(|sink| {
                    feed(&message, &chunks, sink);
                    Ok(())
                })
                .unwrap();
            assert_eq!(streamed, expected, "{key_name}, {size} bytes, sign_stream");
        }
    }
    println!("streamed = one-shot in {checked} size/chunking cases");
}

#[test]
fn rfc8032_vectors_streamed() {
    // RFC 8032 §7.1 TEST 1, TEST 2, TEST 3: seed, public key, message, signature.
    let vectors = [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];
    for (i, (seed, pk, msg, sig)) in vectors.iter().enumerate() {
        let der = [common::hex("302e020100300506032b657004220420"), common::hex(seed)].concat();
        let signer = Ed25519Signer::from_pkcs8_der(KeyId::new("rfc").unwrap(), &der).unwrap();
        assert_eq!(common::to_hex(&signer.public_key()), *pk, "TEST {}", i + 1);
        let message = common::hex(msg);
        // One byte per piece: the smallest chunking there is.
        let streamed = signer
            .sign_stream(|sink| {
                for b in &message {
                    sink(std::slice::from_ref(b));
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(common::to_hex(&streamed), *sig, "TEST {}", i + 1);
        assert_eq!(common::to_hex(&signer.sign(&message)), *sig, "TEST {}", i + 1);
    }
}

/// A replay of the message `m` into the sink.
type Replay = fn(&[u8], &mut dyn FnMut(&[u8])) -> std::io::Result<()>;

#[test]
fn a_replay_that_differs_makes_no_signature() {
    enum Expected {
        Mismatch { expected_len: u64, replayed_len: u64 },
        ReplayFailed,
    }
    struct Case {
        name: &'static str,
        replay: Replay,
        expected: Expected,
    }
    let cases = [
        Case {
            name: "one byte changed, same length",
            replay: |m, sink| {
                let mut changed = m.to_vec();
                changed[500] ^= 1;
                sink(&changed);
                Ok(())
            },
            expected: Expected::Mismatch {
                expected_len: 1000,
                replayed_len: 1000,
            },
        },
        Case {
            name: "last byte missing",
            replay: |m, sink| {
                sink(&m[..999]);
                Ok(())
            },
            expected: Expected::Mismatch {
                expected_len: 1000,
                replayed_len: 999,
            },
        },
        Case {
            name: "one byte more",
            replay: |m, sink| {
                sink(m);
                sink(b"x");
                Ok(())
            },
            expected: Expected::Mismatch {
                expected_len: 1000,
                replayed_len: 1001,
            },
        },
        Case {
            name: "nothing replayed",
            replay: |_, _| Ok(()),
            expected: Expected::Mismatch {
                expected_len: 1000,
                replayed_len: 0,
            },
        },
        Case {
            name: "pieces swapped",
            replay: |m, sink| {
                sink(&m[500..]);
                sink(&m[..500]);
                Ok(())
            },
            expected: Expected::Mismatch {
                expected_len: 1000,
                replayed_len: 1000,
            },
        },
        Case {
            name: "replay fails midway",
            replay: |m, sink| {
                sink(&m[..10]);
                Err(std::io::Error::other("disk gone"))
            },
            expected: Expected::ReplayFailed,
        },
    ];
    let (signer, _) = Ed25519Signer::generate(KeyId::new("k").unwrap()).unwrap();
    let message = Rng(7).bytes(1000);
    for case in &cases {
        let mut stream = signer.stream_signer();
        stream.update(&message);
        let outcome = stream.finish(|sink| (case.replay)(&message, sink));
        match (&case.expected, outcome) {
            (
                Expected::Mismatch {
                    expected_len,
                    replayed_len,
                },
                Err(SignError::StreamReplayMismatch {
                    expected_len: e,
                    replayed_len: r,
                }),
            ) => assert_eq!((e, r), (*expected_len, *replayed_len), "{}", case.name),
            (Expected::ReplayFailed, Err(SignError::StreamReplay { source })) => {
                assert_eq!(source.to_string(), "disk gone", "{}", case.name);
            }
            (_, other) => panic!("{}: unexpected outcome {other:?}", case.name),
        }
    }
    // A first pass that fails is reported too, before any nonce exists.
    let failed = signer.sign_stream(|_| Err(std::io::Error::other("no source")));
    assert!(
        matches!(&failed, Err(SignError::StreamReplay { source }) if source.to_string() == "no source"),
        "{failed:?}"
    );
}

#[test]
fn python_cryptography_verifies_a_streamed_signature() {
    let (signer, _) = Ed25519Signer::generate(KeyId::new("k").unwrap()).unwrap();
    let message = Rng(11).bytes(300_000);
    let mut stream = signer.stream_signer();
    for piece in message.chunks(32 * 1024) {
        stream.update(piece);
    }
    let done = stream
        .finish(|sink| {
            for piece in message.chunks(65_536) {
                sink(piece);
            }
            Ok(())
        })
        .unwrap();
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
