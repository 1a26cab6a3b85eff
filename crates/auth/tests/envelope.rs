#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The claims envelope end to end: signed by `ClaimsSigner`, carried as tonic
//! binary metadata turned into HTTP/2 headers, checked by `ClaimsVerifier`.
//! Hostile envelopes are built by hand with ring, so that each row breaks
//! exactly one rule and asserts exactly one error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use http::{HeaderMap, HeaderValue};
use prost::Message as _;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use soma_auth::{
    AuthError, CLAIMS_METADATA, ClaimsSigner, ClaimsVerifier, DOMAIN_SEPARATOR, MAX_ENVELOPE_LIFETIME,
    SIGNATURE_METADATA, SignedClaims, VerifiedClaims,
};
use soma_identity::SpiffeId;
use tonic::metadata::{BinaryMetadataValue, MetadataKey, MetadataMap};

const KEY_ID: &str = "gateway-2025-06";
/// 2025-06-15T15:06:40Z.
const NOW_SECS: u64 = 1_750_000_000;
const TTL: Duration = Duration::from_secs(30);

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn at(offset: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS.checked_add_signed(offset).unwrap())
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn gateway() -> SpiffeId {
    id("spiffe://somastack.local/ns/soma/sa/gateway")
}

fn backend() -> SpiffeId {
    id("spiffe://somastack.local/ns/soma/sa/tool-registry")
}

fn other_service() -> SpiffeId {
    id("spiffe://somastack.local/ns/soma/sa/analytics")
}

/// Claims as the gateway fills them before sealing; the signer sets the rest.
fn input_claims() -> VerifiedClaims {
    VerifiedClaims {
        tenant: "acme".to_owned(),
        subject: "user-42@acme".to_owned(),
        region: "eu-west".to_owned(),
        capabilities: vec![
            "tools:read".to_owned(),
            "tools:invoke".to_owned(),
            "capsules:read".to_owned(),
        ],
        mfa: true,
        request_id: "req-7f3a9c".to_owned(),
        audience: "spiffe://somastack.local/ignored".to_owned(),
        expires_at: 1,
        issued_at: 2,
        key_id: "ignored".to_owned(),
        moderation_decision_id: "mod-0001".to_owned(),
        // Carried and signed like every other claim.
        operator: true,
        moderation_input_sha256: vec![0x5a; 32],
    }
}

/// What the verifier must hand back for an envelope signed at `now()`.
fn expected_claims() -> VerifiedClaims {
    VerifiedClaims {
        audience: backend().to_string(),
        issued_at: NOW_SECS as i64,
        expires_at: NOW_SECS as i64 + 30,
        key_id: KEY_ID.to_owned(),
        ..input_claims()
    }
}

struct Keys {
    signer: ClaimsSigner,
    pkcs8: Vec<u8>,
    /// A second key pair, published under nobody's key id.
    intruder_pkcs8: Vec<u8>,
}

fn keys() -> Keys {
    let (signer, pkcs8) = ClaimsSigner::generate(KEY_ID).unwrap();
    let (_, intruder_pkcs8) = ClaimsSigner::generate(KEY_ID).unwrap();
    Keys {
        signer,
        pkcs8,
        intruder_pkcs8,
    }
}

fn verifier(keys: &Keys) -> ClaimsVerifier {
    ClaimsVerifier::new(
        gateway(),
        backend(),
        vec![(KEY_ID.to_owned(), keys.signer.public_key())],
    )
}

/// The headers as the backend receives them: tonic metadata, as sent.
fn headers_of(signed: &SignedClaims) -> HeaderMap {
    let mut md = MetadataMap::new();
    signed.insert_into(&mut md);
    md.into_headers()
}

/// Headers carrying `claims` and `signature` bytes, base64 by `encode`.
fn raw_headers(claims: Option<&[u8]>, signature: Option<&[u8]>, encode: fn(&[u8]) -> String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(claims) = claims {
        headers.insert(CLAIMS_METADATA, HeaderValue::from_str(&encode(claims)).unwrap());
    }
    if let Some(signature) = signature {
        headers.insert(
            SIGNATURE_METADATA,
            HeaderValue::from_str(&encode(signature)).unwrap(),
        );
    }
    headers
}

fn unpadded(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

fn padded(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Signs `encoded` as the gateway would, but with any key and any claims:
/// the way to build envelopes the signer refuses to make.
fn sign_raw(pkcs8: &[u8], encoded: &[u8]) -> Vec<u8> {
    let key = Ed25519KeyPair::from_pkcs8(pkcs8).unwrap();
    let mut message = DOMAIN_SEPARATOR.to_vec();
    message.extend_from_slice(encoded);
    key.sign(&message).as_ref().to_vec()
}

/// Claims as signed at `now()`, with the times replaced.
fn claims_with_times(issued_at: i64, expires_at: i64) -> Vec<u8> {
    VerifiedClaims {
        issued_at,
        expires_at,
        ..expected_claims()
    }
    .encode_to_vec()
}

fn raw_envelope(pkcs8: &[u8], encoded: &[u8]) -> HeaderMap {
    raw_headers(Some(encoded), Some(&sign_raw(pkcs8, encoded)), unpadded)
}

struct Case {
    name: &'static str,
    peer: Option<SpiffeId>,
    headers: HeaderMap,
    now: SystemTime,
    expected: Result<Option<VerifiedClaims>, AuthError>,
}

#[test]
fn verify_accepts_only_a_well_formed_current_envelope_from_the_gateway() {
    let keys = keys();
    let verifier = verifier(&keys);
    let signed = keys.signer.sign(input_claims(), &backend(), TTL, now()).unwrap();
    let valid = headers_of(&signed);
    let ok = Ok(Some(expected_claims()));

    // Forged signatures.
    let mut flipped = signed.signature;
    flipped[17] ^= 0x04;
    let by_intruder = sign_raw(&keys.intruder_pkcs8, &signed.encoded);
    let no_separator = Ed25519KeyPair::from_pkcs8(&keys.pkcs8)
        .unwrap()
        .sign(&signed.encoded)
        .as_ref()
        .to_vec();

    // Claims changed after signing: "acme" -> "acmf", still valid protobuf.
    let tenant_at = signed.encoded.windows(4).position(|w| w == b"acme").unwrap();
    let mut altered = signed.encoded.clone();
    altered[tenant_at + 3] = b'f';
    assert_eq!(VerifiedClaims::decode(altered.as_slice()).unwrap().tenant, "acmf");

    // An unknown field (number 15, varint 1) appended after signing. It
    // decodes to the very same claims, and re-encodes to the signed bytes:
    // only a verifier that checks the received bytes refuses it.
    let mut extended = signed.encoded.clone();
    extended.extend_from_slice(&[0x78, 0x01]);
    let decoded = VerifiedClaims::decode(extended.as_slice()).unwrap();
    assert_eq!(decoded, expected_claims());
    assert_eq!(decoded.encode_to_vec(), signed.encoded);

    let for_other = keys
        .signer
        .sign(input_claims(), &other_service(), TTL, now())
        .unwrap();
    let (unknown_signer, _) = ClaimsSigner::generate("gateway-retired").unwrap();
    let unknown = unknown_signer
        .sign(input_claims(), &backend(), TTL, now())
        .unwrap();

    let mut duplicate_claims = valid.clone();
    duplicate_claims.append(CLAIMS_METADATA, valid.get(CLAIMS_METADATA).unwrap().clone());
    let mut duplicate_signature = valid.clone();
    duplicate_signature.append(SIGNATURE_METADATA, valid.get(SIGNATURE_METADATA).unwrap().clone());

    let now_secs = NOW_SECS as i64;
    let cases = vec![
        Case {
            name: "valid",
            peer: Some(gateway()),
            headers: valid.clone(),
            now: now(),
            expected: ok.clone(),
        },
        Case {
            name: "valid, padded base64",
            peer: Some(gateway()),
            headers: raw_headers(Some(&signed.encoded), Some(&signed.signature), padded),
            now: now(),
            expected: ok.clone(),
        },
        Case {
            name: "valid one second before expiry",
            peer: Some(gateway()),
            headers: valid.clone(),
            now: at(29),
            expected: ok.clone(),
        },
        Case {
            name: "no envelope",
            peer: Some(gateway()),
            headers: HeaderMap::new(),
            now: now(),
            expected: Ok(None),
        },
        Case {
            name: "no envelope, no peer identity",
            peer: None,
            headers: HeaderMap::new(),
            now: now(),
            expected: Ok(None),
        },
        Case {
            name: "no envelope from another peer",
            peer: Some(other_service()),
            headers: HeaderMap::new(),
            now: now(),
            expected: Ok(None),
        },
        Case {
            name: "signature with one bit flipped",
            peer: Some(gateway()),
            headers: raw_headers(Some(&signed.encoded), Some(&flipped), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "signed by another key under the same key id",
            peer: Some(gateway()),
            headers: raw_headers(Some(&signed.encoded), Some(&by_intruder), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "signed without the domain separator",
            peer: Some(gateway()),
            headers: raw_headers(Some(&signed.encoded), Some(&no_separator), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "claims altered after signing",
            peer: Some(gateway()),
            headers: raw_headers(Some(&altered), Some(&signed.signature), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "unknown field appended after signing",
            peer: Some(gateway()),
            headers: raw_headers(Some(&extended), Some(&signed.signature), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "addressed to another service",
            peer: Some(gateway()),
            headers: headers_of(&for_other),
            now: now(),
            expected: Err(AuthError::WrongAudience {
                audience: other_service().to_string(),
            }),
        },
        Case {
            name: "expired: now is expires_at",
            peer: Some(gateway()),
            headers: valid.clone(),
            now: at(30),
            expected: Err(AuthError::Expired),
        },
        Case {
            name: "expired long ago",
            peer: Some(gateway()),
            headers: valid.clone(),
            now: at(3600),
            expected: Err(AuthError::Expired),
        },
        Case {
            name: "issued at the edge of the allowed skew",
            peer: Some(gateway()),
            headers: valid.clone(),
            now: at(-5),
            expected: ok.clone(),
        },
        Case {
            name: "issued in the future beyond the skew",
            peer: Some(gateway()),
            headers: valid.clone(),
            now: at(-6),
            expected: Err(AuthError::IssuedInFuture),
        },
        Case {
            name: "lifetime of exactly 60 s",
            peer: Some(gateway()),
            headers: raw_envelope(&keys.pkcs8, &claims_with_times(now_secs, now_secs + 60)),
            now: now(),
            expected: Ok(Some(VerifiedClaims {
                expires_at: now_secs + 60,
                ..expected_claims()
            })),
        },
        Case {
            name: "lifetime over 60 s",
            peer: Some(gateway()),
            headers: raw_envelope(&keys.pkcs8, &claims_with_times(now_secs, now_secs + 61)),
            now: now(),
            expected: Err(AuthError::LifetimeTooLong),
        },
        Case {
            name: "lifetime of i64 range",
            peer: Some(gateway()),
            headers: raw_envelope(&keys.pkcs8, &claims_with_times(i64::MIN, i64::MAX)),
            now: now(),
            expected: Err(AuthError::LifetimeTooLong),
        },
        Case {
            name: "expires when issued",
            peer: Some(gateway()),
            headers: raw_envelope(&keys.pkcs8, &claims_with_times(now_secs, now_secs)),
            now: now(),
            expected: Err(AuthError::LifetimeNotPositive),
        },
        Case {
            name: "expires before issued",
            peer: Some(gateway()),
            headers: raw_envelope(&keys.pkcs8, &claims_with_times(now_secs + 3, now_secs + 2)),
            now: now(),
            expected: Err(AuthError::LifetimeNotPositive),
        },
        Case {
            name: "valid envelope from a non-gateway peer",
            peer: Some(other_service()),
            headers: valid.clone(),
            now: now(),
            expected: Err(AuthError::NotFromGateway {
                peer: other_service(),
            }),
        },
        Case {
            name: "gateway path in another trust domain",
            peer: Some(id("spiffe://evil.example/ns/soma/sa/gateway")),
            headers: valid.clone(),
            now: now(),
            expected: Err(AuthError::NotFromGateway {
                peer: id("spiffe://evil.example/ns/soma/sa/gateway"),
            }),
        },
        Case {
            name: "no peer identity",
            peer: None,
            headers: valid.clone(),
            now: now(),
            expected: Err(AuthError::MissingPeerIdentity),
        },
        Case {
            name: "unknown key id",
            peer: Some(gateway()),
            headers: headers_of(&unknown),
            now: now(),
            expected: Err(AuthError::UnknownKey {
                key_id: "gateway-retired".to_owned(),
            }),
        },
        Case {
            name: "signature missing",
            peer: Some(gateway()),
            headers: raw_headers(Some(&signed.encoded), None, unpadded),
            now: now(),
            expected: Err(AuthError::MissingSignature),
        },
        Case {
            name: "claims missing",
            peer: Some(gateway()),
            headers: raw_headers(None, Some(&signed.signature), unpadded),
            now: now(),
            expected: Err(AuthError::MissingClaims),
        },
        Case {
            name: "claims entry twice",
            peer: Some(gateway()),
            headers: duplicate_claims,
            now: now(),
            expected: Err(AuthError::DuplicateClaims),
        },
        Case {
            name: "signature entry twice",
            peer: Some(gateway()),
            headers: duplicate_signature,
            now: now(),
            expected: Err(AuthError::DuplicateSignature),
        },
        Case {
            name: "garbage base64 claims",
            peer: Some(gateway()),
            headers: raw_headers(Some(b"x"), Some(&signed.signature), |_| "not*base64!".to_owned()),
            now: now(),
            expected: Err(AuthError::MalformedClaims),
        },
        Case {
            name: "garbage base64 signature",
            peer: Some(gateway()),
            headers: {
                let mut h = raw_headers(Some(&signed.encoded), None, unpadded);
                h.insert(SIGNATURE_METADATA, HeaderValue::from_static("%%%%"));
                h
            },
            now: now(),
            expected: Err(AuthError::MalformedSignature),
        },
        Case {
            name: "claims are not protobuf",
            peer: Some(gateway()),
            headers: raw_headers(Some(&[0xff, 0xff, 0xff]), Some(&signed.signature), unpadded),
            now: now(),
            expected: Err(AuthError::MalformedClaims),
        },
        Case {
            name: "signature of 63 bytes",
            peer: Some(gateway()),
            headers: {
                let mut h = raw_headers(Some(&signed.encoded), None, unpadded);
                h.insert(
                    SIGNATURE_METADATA,
                    HeaderValue::from_str(&unpadded(&signed.signature[..63])).unwrap(),
                );
                h
            },
            now: now(),
            expected: Err(AuthError::MalformedSignature),
        },
        Case {
            name: "signature of 65 bytes",
            peer: Some(gateway()),
            headers: {
                let mut long = signed.signature.to_vec();
                long.push(0);
                raw_headers(Some(&signed.encoded), Some(&long), unpadded)
            },
            now: now(),
            expected: Err(AuthError::MalformedSignature),
        },
    ];
    for case in cases {
        let got = verifier.verify(case.peer.as_ref(), &case.headers, case.now);
        assert_eq!(got, case.expected, "case: {}", case.name);
    }
}

#[test]
fn a_valid_envelope_round_trips_every_field() {
    let keys = keys();
    let signed = keys.signer.sign(input_claims(), &backend(), TTL, now()).unwrap();
    let claims = verifier(&keys)
        .verify(Some(&gateway()), &headers_of(&signed), now())
        .unwrap()
        .unwrap();
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.subject, "user-42@acme");
    assert_eq!(claims.region, "eu-west");
    assert_eq!(
        claims.capabilities,
        ["tools:read", "tools:invoke", "capsules:read"]
    );
    assert!(claims.mfa);
    assert_eq!(claims.request_id, "req-7f3a9c");
    assert_eq!(
        claims.audience,
        "spiffe://somastack.local/ns/soma/sa/tool-registry"
    );
    assert_eq!(claims.issued_at, 1_750_000_000);
    assert_eq!(claims.expires_at, 1_750_000_030);
    assert_eq!(claims.key_id, KEY_ID);
    assert_eq!(claims.moderation_decision_id, "mod-0001");
    assert_eq!(claims.moderation_input_sha256, vec![0x5a; 32]);
    // The signature is Ed25519 over the separator and the encoded claims.
    let mut message = b"somastack.v1.VerifiedClaims\0".to_vec();
    message.extend_from_slice(&signed.encoded);
    UnparsedPublicKey::new(&ED25519, keys.signer.public_key())
        .verify(&message, &signed.signature)
        .unwrap();
}

#[test]
fn the_verifier_knows_several_keys_and_forgets_none() {
    let keys = keys();
    let (next, _) = ClaimsSigner::generate("gateway-2025-07").unwrap();
    let verifier = ClaimsVerifier::new(
        gateway(),
        backend(),
        vec![
            (KEY_ID.to_owned(), keys.signer.public_key()),
            ("gateway-2025-07".to_owned(), next.public_key()),
        ],
    );
    for signer in [&keys.signer, &next] {
        let signed = signer.sign(input_claims(), &backend(), TTL, now()).unwrap();
        let claims = verifier
            .verify(Some(&gateway()), &headers_of(&signed), now())
            .unwrap()
            .unwrap();
        assert_eq!(claims.key_id, signer.key_id());
    }
}

#[test]
fn insert_into_replaces_a_client_supplied_envelope() {
    let keys = keys();
    let signed = keys.signer.sign(input_claims(), &backend(), TTL, now()).unwrap();
    let mut md = MetadataMap::new();
    md.append_bin(
        MetadataKey::from_static(CLAIMS_METADATA),
        BinaryMetadataValue::from_bytes(b"client"),
    );
    md.append_bin(
        MetadataKey::from_static(CLAIMS_METADATA),
        BinaryMetadataValue::from_bytes(b"client2"),
    );
    md.append_bin(
        MetadataKey::from_static(SIGNATURE_METADATA),
        BinaryMetadataValue::from_bytes(&[0; 64]),
    );
    signed.insert_into(&mut md);
    let headers = md.into_headers();
    assert_eq!(headers.get_all(CLAIMS_METADATA).iter().count(), 1);
    assert_eq!(headers.get_all(SIGNATURE_METADATA).iter().count(), 1);
    assert_eq!(
        verifier(&keys).verify(Some(&gateway()), &headers, now()),
        Ok(Some(expected_claims()))
    );
}

#[test]
fn sign_sets_the_envelope_fields_and_caps_the_lifetime() {
    struct Case {
        name: &'static str,
        ttl: Duration,
        expected: Result<i64, AuthError>,
    }
    let cases = [
        Case {
            name: "one second",
            ttl: Duration::from_secs(1),
            expected: Ok(1),
        },
        Case {
            name: "fraction dropped",
            ttl: Duration::from_millis(30_900),
            expected: Ok(30),
        },
        Case {
            name: "maximum",
            ttl: MAX_ENVELOPE_LIFETIME,
            expected: Ok(60),
        },
        Case {
            name: "capped",
            ttl: Duration::from_secs(3600),
            expected: Ok(60),
        },
        Case {
            name: "zero",
            ttl: Duration::ZERO,
            expected: Err(AuthError::TtlTooShort),
        },
        Case {
            name: "under a second",
            ttl: Duration::from_millis(999),
            expected: Err(AuthError::TtlTooShort),
        },
    ];
    let keys = keys();
    for case in cases {
        let got = keys
            .signer
            .sign(input_claims(), &backend(), case.ttl, now())
            .map(|signed| {
                let claims = VerifiedClaims::decode(signed.encoded.as_slice()).unwrap();
                assert_eq!(claims.issued_at, NOW_SECS as i64, "{}", case.name);
                assert_eq!(claims.key_id, KEY_ID, "{}", case.name);
                assert_eq!(claims.audience, backend().to_string(), "{}", case.name);
                claims.expires_at - claims.issued_at
            });
        assert_eq!(got, case.expected, "case: {}", case.name);
    }
    // Sub-second parts of `now` are dropped, not rounded.
    let signed = keys
        .signer
        .sign(
            input_claims(),
            &backend(),
            TTL,
            now() + Duration::from_millis(999),
        )
        .unwrap();
    assert_eq!(
        VerifiedClaims::decode(signed.encoded.as_slice())
            .unwrap()
            .issued_at,
        NOW_SECS as i64
    );
    assert_eq!(
        keys.signer.sign(
            input_claims(),
            &backend(),
            TTL,
            UNIX_EPOCH - Duration::from_secs(1)
        ),
        Err(AuthError::ClockOutOfRange)
    );
}

/// RFC 8410 §10.3 private key and §10.1 public key: one Ed25519 key pair.
const RFC8410_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC
-----END PRIVATE KEY-----
";
const RFC8410_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----
";

#[test]
fn keys_load_from_the_rfc_8410_pem_vectors() {
    let signer = ClaimsSigner::from_pkcs8_pem("rfc8410", RFC8410_PRIVATE_PEM).unwrap();
    assert_eq!(signer.key_id(), "rfc8410");
    assert_eq!(signer.public_key_pem(), RFC8410_PUBLIC_PEM);
    let public = ClaimsVerifier::public_key_from_spki_pem(RFC8410_PUBLIC_PEM).unwrap();
    assert_eq!(public, signer.public_key());
    assert_eq!(public[..4], [0x19, 0xbf, 0x44, 0x09]);

    // A PEM key and its published PEM public key work end to end.
    let verifier = ClaimsVerifier::new(gateway(), backend(), vec![("rfc8410".to_owned(), public)]);
    let signed = signer.sign(input_claims(), &backend(), TTL, now()).unwrap();
    let claims = verifier
        .verify(Some(&gateway()), &headers_of(&signed), now())
        .unwrap()
        .unwrap();
    assert_eq!(claims.key_id, "rfc8410");
}

#[test]
fn generated_keys_round_trip_through_pkcs8_der_and_pem() {
    let keys = keys();
    let from_der = ClaimsSigner::from_pkcs8_der(KEY_ID, &keys.pkcs8).unwrap();
    assert_eq!(from_der.public_key(), keys.signer.public_key());
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(&keys.pkcs8)
    );
    let from_pem = ClaimsSigner::from_pkcs8_pem(KEY_ID, &pem).unwrap();
    assert_eq!(from_pem.public_key(), keys.signer.public_key());
    assert_eq!(
        ClaimsVerifier::public_key_from_spki_pem(&keys.signer.public_key_pem()).unwrap(),
        keys.signer.public_key()
    );
}

#[test]
fn bad_key_material_is_refused_with_its_own_error() {
    struct Case {
        name: &'static str,
        result: Result<[u8; 32], AuthError>,
        expected: AuthError,
    }
    let keys = keys();
    // X25519 (1.3.101.110) instead of Ed25519 (1.3.101.112).
    let mut x25519 = STANDARD
        .decode("MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=")
        .unwrap();
    x25519[8] = 0x6e;
    let x25519_pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        STANDARD.encode(&x25519)
    );
    let mut corrupt = keys.pkcs8.clone();
    corrupt.truncate(20);
    let public = |pem: &str| ClaimsVerifier::public_key_from_spki_pem(pem);
    let private = |key_id: &str, pem: &str| ClaimsSigner::from_pkcs8_pem(key_id, pem).map(|s| s.public_key());
    let cases = vec![
        Case {
            name: "public key of another algorithm",
            result: public(&x25519_pem),
            expected: AuthError::InvalidKey("not an ed25519 subjectpublickeyinfo".to_owned()),
        },
        Case {
            name: "private key given as public key",
            result: public(RFC8410_PRIVATE_PEM),
            expected: AuthError::InvalidPem("no block of the expected type"),
        },
        Case {
            name: "public key given as private key",
            result: private("k", RFC8410_PUBLIC_PEM),
            expected: AuthError::InvalidPem("no block of the expected type"),
        },
        Case {
            name: "unterminated pem",
            result: public("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n"),
            expected: AuthError::InvalidPem("block is not terminated"),
        },
        Case {
            name: "pem body not base64",
            result: public("-----BEGIN PUBLIC KEY-----\nMCow*QYDK2VwAyEA\n-----END PUBLIC KEY-----\n"),
            expected: AuthError::InvalidPem("block is not valid base64"),
        },
        Case {
            name: "truncated pkcs8",
            result: ClaimsSigner::from_pkcs8_der("k", &corrupt).map(|s| s.public_key()),
            expected: AuthError::InvalidKey("InvalidEncoding".to_owned()),
        },
        Case {
            name: "empty key id",
            result: private("", RFC8410_PRIVATE_PEM),
            expected: AuthError::EmptyKeyId,
        },
    ];
    for case in cases {
        assert_eq!(case.result, Err(case.expected), "case: {}", case.name);
    }
}

/// The reasons callers log for the two refusals this file's table is built
/// around, word for word. That every variant has its own snake_case reason
/// is checked in the crate, over a list derived from the enum:
/// `error::tests::every_auth_error_has_a_distinct_snake_case_reason`.
#[test]
fn the_signature_and_gateway_refusals_have_their_stable_reasons() {
    assert_eq!(AuthError::BadSignature.reason(), "bad_signature");
    assert_eq!(
        AuthError::NotFromGateway { peer: gateway() }.reason(),
        "not_from_gateway"
    );
    assert_eq!(
        AuthError::NotFromGateway {
            peer: other_service()
        }
        .reason(),
        "not_from_gateway"
    );
}

/// Claims of an envelope the gateway reuses for every request with the
/// same claims: no request id, no moderation decision.
fn reusable_claims(subject: &str) -> VerifiedClaims {
    VerifiedClaims {
        subject: subject.to_owned(),
        request_id: String::new(),
        moderation_decision_id: String::new(),
        moderation_input_sha256: Vec::new(),
        ..input_claims()
    }
}

/// `headers` with its claims entry replaced by `text`.
fn with_claims_text(headers: &HeaderMap, text: &str) -> HeaderMap {
    let mut changed = headers.clone();
    changed.insert(CLAIMS_METADATA, HeaderValue::from_str(text).unwrap());
    changed
}

#[test]
fn a_verified_envelope_is_reused_only_for_the_same_bytes_and_still_checked_at_every_use() {
    let keys = keys();
    let verifier = verifier(&keys);
    let signed = keys
        .signer
        .sign(reusable_claims("user-42@acme"), &backend(), TTL, now())
        .unwrap();
    let headers = headers_of(&signed);
    let first = verifier
        .verify(Some(&gateway()), &headers, now())
        .unwrap()
        .unwrap();
    assert_eq!(
        (verifier.verified_envelopes(), verifier.counts().reuses()),
        (1, 0)
    );
    let again = verifier
        .verify(Some(&gateway()), &headers, at(10))
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "a reused verdict hands back the same claims");
    assert_eq!(verifier.counts().reuses(), 1);
    // The handle a service's `/metrics` reads: one signature verified in
    // full, one verdict reused.
    let counts = verifier.counts();
    assert_eq!((counts.signature_checks(), counts.reuses()), (1, 1));

    // One byte changed anywhere is another envelope, verified in full.
    let claims_text = headers.get(CLAIMS_METADATA).unwrap().to_str().unwrap().to_owned();
    let mut flipped = claims_text.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let mut tampered_claims = signed.encoded.clone();
    tampered_claims[3] ^= 0x01;
    let other_signature = sign_raw(&keys.intruder_pkcs8, &signed.encoded);
    let padded_text = padded(&signed.encoded);
    assert_ne!(padded_text, claims_text, "tonic sends binary metadata unpadded");
    let cases = [
        Case {
            name: "claims text with its last character changed",
            peer: Some(gateway()),
            headers: with_claims_text(&headers, &flipped),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "claims bytes with one bit flipped, the signature of the original",
            peer: Some(gateway()),
            headers: raw_headers(Some(&tampered_claims), Some(&signed.signature), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "the same claims with another key's signature",
            peer: Some(gateway()),
            headers: raw_headers(Some(&signed.encoded), Some(&other_signature), unpadded),
            now: now(),
            expected: Err(AuthError::BadSignature),
        },
        Case {
            name: "the reused envelope from a peer that is not the gateway",
            peer: Some(other_service()),
            headers: headers.clone(),
            now: now(),
            expected: Err(AuthError::NotFromGateway {
                peer: other_service(),
            }),
        },
        Case {
            name: "the reused envelope without a peer identity",
            peer: None,
            headers: headers.clone(),
            now: now(),
            expected: Err(AuthError::MissingPeerIdentity),
        },
        Case {
            name: "the reused envelope with its claims entry twice",
            peer: Some(gateway()),
            headers: {
                let mut twice = headers.clone();
                twice.append(CLAIMS_METADATA, HeaderValue::from_str(&claims_text).unwrap());
                twice
            },
            now: now(),
            expected: Err(AuthError::DuplicateClaims),
        },
    ];
    for case in cases {
        let reuses = verifier.counts().reuses();
        assert_eq!(
            verifier.verify(case.peer.as_ref(), &case.headers, case.now),
            case.expected,
            "{}",
            case.name
        );
        assert_eq!(verifier.counts().reuses(), reuses, "{}: no reuse", case.name);
        assert_eq!(verifier.verified_envelopes(), 1, "{}: nothing kept", case.name);
    }

    // The same bytes, the time checks made again at every use.
    for (name, when, expected) in [
        ("at its expiry", at(30), AuthError::Expired),
        ("long after its expiry", at(3600), AuthError::Expired),
        (
            "before it was issued, beyond the skew",
            at(-6),
            AuthError::IssuedInFuture,
        ),
    ] {
        let reuses = verifier.counts().reuses();
        assert_eq!(
            verifier.verify(Some(&gateway()), &headers, when),
            Err(expected),
            "{name}"
        );
        assert_eq!(
            verifier.counts().reuses(),
            reuses + 1,
            "{name}: the verdict was reused"
        );
    }

    // The padded encoding of the same bytes is other bytes: verified in
    // full, then kept beside the first.
    let padded_headers = with_claims_text(&headers, &padded_text);
    let reuses = verifier.counts().reuses();
    assert_eq!(
        verifier
            .verify(Some(&gateway()), &padded_headers, now())
            .unwrap()
            .unwrap(),
        first
    );
    assert_eq!(verifier.counts().reuses(), reuses);
    assert_eq!(verifier.verified_envelopes(), 2);

    // Another service's verifier never accepts it, and keeps nothing.
    let analytics = ClaimsVerifier::new(
        gateway(),
        other_service(),
        vec![(KEY_ID.to_owned(), keys.signer.public_key())],
    );
    for _ in 0..2 {
        assert!(matches!(
            analytics.verify(Some(&gateway()), &headers, now()),
            Err(AuthError::WrongAudience { .. })
        ));
    }
    assert_eq!(
        (analytics.verified_envelopes(), analytics.counts().reuses()),
        (0, 0)
    );
}

#[test]
fn envelopes_sealed_for_one_request_and_refused_ones_are_never_kept() {
    let keys = keys();
    let verifier = verifier(&keys);
    let bad = raw_envelope(&keys.intruder_pkcs8, &reusable_claims("user-1").encode_to_vec());
    for _ in 0..2 {
        assert!(verifier.verify(Some(&gateway()), &bad, now()).is_err());
    }
    for claims in [
        input_claims(),
        VerifiedClaims {
            moderation_decision_id: String::new(),
            moderation_input_sha256: Vec::new(),
            ..input_claims()
        },
        VerifiedClaims {
            request_id: String::new(),
            ..input_claims()
        },
    ] {
        let headers = headers_of(&keys.signer.sign(claims, &backend(), TTL, now()).unwrap());
        for _ in 0..2 {
            verifier
                .verify(Some(&gateway()), &headers, now())
                .unwrap()
                .unwrap();
        }
    }
    assert_eq!(
        (verifier.verified_envelopes(), verifier.counts().reuses()),
        (0, 0)
    );
}

#[test]
fn the_kept_verdicts_are_bounded() {
    let keys = keys();
    let verifier = verifier(&keys);
    let subjects = soma_auth::VERIFIED_ENVELOPES_CAPACITY + 10;
    for n in 0..subjects {
        let signed = keys
            .signer
            .sign(reusable_claims(&format!("user-{n}")), &backend(), TTL, now())
            .unwrap();
        verifier
            .verify(Some(&gateway()), &headers_of(&signed), now())
            .unwrap()
            .unwrap();
        assert!(verifier.verified_envelopes() <= soma_auth::VERIFIED_ENVELOPES_CAPACITY);
    }
    // Full of current envelopes, the set was emptied once and refilled.
    assert_eq!(verifier.verified_envelopes(), 10);
}
