//! Cost of `JwtVerifier::verify`: a valid HS256 token (target: 2 µs or
//! less), a valid EdDSA token against a raw ed25519-dalek verification of
//! the same signing input (target: 1.1× or less; the raw verification is
//! measured right before and right after, and compared as their mean), and
//! hostile tokens.
//! `scripts/bench/jwt.sh` runs this and prints the figures against targets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::engine::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use serde_json::json;
use soma_auth::{Algorithm, IssuerSettings, JwtSettings, JwtVerifier};

const NOW: i64 = 1_750_000_000;

/// Polls a future that must complete without waiting: a token whose key is
/// in memory never awaits, so this measures the verification alone rather
/// than an executor.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("verification awaited: a key fetch is not part of this benchmark"),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn token(
    header: serde_json::Value,
    payload: serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> (String, String) {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    (format!("{input}.{}", b64(&sig)), input)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let secret: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    let seed: [u8; 32] = rand::random();
    let signing = SigningKey::from_bytes(&seed);
    let hs_path = dir.path().join("hs.jwk");
    std::fs::write(
        &hs_path,
        json!({"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": b64(&secret)}).to_string(),
    )
    .unwrap();
    let jwks_path = dir.path().join("jwks.json");
    let okp =
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed-1", "x": b64(signing.verifying_key().as_bytes())});
    std::fs::write(&jwks_path, json!({"keys": [okp]}).to_string()).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = runtime
        .block_on(JwtVerifier::new(JwtSettings {
            issuers: vec![IssuerSettings {
                issuer: "https://issuer.example".to_owned(),
                audiences: vec!["soma-gateway".to_owned()],
                algorithms: vec![Algorithm::Hs256, Algorithm::EdDsa],
                hmac_secret_file: Some(hs_path),
                jwks_file: Some(jwks_path),
                ..IssuerSettings::default()
            }],
            leeway: Duration::from_secs(30),
            max_token_bytes: 8192,
            max_lifetime: soma_auth::DEFAULT_MAX_LIFETIME,
        }))
        .unwrap();

    let claims = json!({
        "iss": "https://issuer.example", "sub": "user-42", "tenant": "acme", "region": "eu-west-1",
        "aud": "soma-gateway", "exp": NOW + 600, "iat": NOW, "nbf": NOW, "auth_time": NOW - 60,
        "jti": "2f1c7d0e-4c1b-4f59-9a57-3f0c1d2b6a77", "scope": "tools:read tools:write", "amr": ["pwd", "otp"],
    });
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let hs = |i: &[u8]| ring::hmac::sign(&hmac_key, i).as_ref().to_vec();
    let (hs_token, _) = token(
        json!({"alg": "HS256", "typ": "JWT", "kid": "hs-1"}),
        claims.clone(),
        hs,
    );
    let (ed_token, ed_input) = token(
        json!({"alg": "EdDSA", "typ": "JWT", "kid": "ed-1"}),
        claims.clone(),
        |i| signing.sign(i).to_vec(),
    );
    let ed_signature = signing.sign(ed_input.as_bytes());
    let (none_token, _) = token(json!({"alg": "none", "kid": "hs-1"}), claims.clone(), hs);
    let (bad_sig_token, _) = token(json!({"alg": "HS256", "kid": "hs-1"}), claims.clone(), |_| {
        vec![7; 32]
    });
    let mut expired = claims.clone();
    expired["exp"] = json!(NOW - 3600);
    let (expired_token, _) = token(json!({"alg": "HS256", "kid": "hs-1"}), expired, hs);
    let (unknown_kid_token, _) = token(json!({"alg": "HS256", "kid": "hs-9"}), claims, hs);

    // Each token is checked once so the benchmark measures what it claims.
    assert!(ready(verifier.verify(&hs_token, NOW)).is_ok());
    assert!(ready(verifier.verify(&ed_token, NOW)).is_ok());
    for (token, reason) in [
        (&none_token, "alg_not_allowed"),
        (&bad_sig_token, "bad_signature"),
        (&expired_token, "expired"),
        (&unknown_kid_token, "unknown_kid"),
    ] {
        assert_eq!(ready(verifier.verify(token, NOW)).unwrap_err().reason(), reason);
    }
    let verifying = signing.verifying_key();
    assert!(verifying.verify(ed_input.as_bytes(), &ed_signature).is_ok());

    let mut group = c.benchmark_group("jwt");
    group.bench_function("hs256_valid", |b| {
        b.iter(|| ready(verifier.verify(black_box(&hs_token), NOW)));
    });
    // The raw baseline is measured right before and right after the full
    // EdDSA verify, and `jwt.sh` compares against the mean of the two, so
    // that the machine drifting during the run weighs on both sides alike.
    let raw = |b: &mut criterion::Bencher<'_>| {
        b.iter(|| verifying.verify(black_box(ed_input.as_bytes()), black_box(&ed_signature)));
    };
    group.bench_function("dalek_raw_verify", raw);
    group.bench_function("eddsa_valid", |b| {
        b.iter(|| ready(verifier.verify(black_box(&ed_token), NOW)));
    });
    group.bench_function("dalek_raw_verify_after", raw);
    group.bench_function("hostile_alg_none", |b| {
        b.iter(|| ready(verifier.verify(black_box(&none_token), NOW)));
    });
    group.bench_function("hostile_bad_signature", |b| {
        b.iter(|| ready(verifier.verify(black_box(&bad_sig_token), NOW)));
    });
    group.bench_function("hostile_expired", |b| {
        b.iter(|| ready(verifier.verify(black_box(&expired_token), NOW)));
    });
    group.bench_function("hostile_unknown_kid", |b| {
        b.iter(|| ready(verifier.verify(black_box(&unknown_kid_token), NOW)));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
