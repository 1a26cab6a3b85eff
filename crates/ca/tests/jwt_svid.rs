#![allow(clippy::unwrap_used, clippy::expect_used)]
//! JWT-SVIDs over a real Unix socket: FetchJWTSVID, FetchJWTBundles and
//! ValidateJWTSVID, driven by the `spiffe` crate and by a raw tonic client;
//! hostile tokens (signed here with real keys) refused with exact reasons.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use soma_proto::workload::{JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest};
use tonic::Code;

use common::{TestServer, jwt_svid, raw_client, spiffe_id, with_header};

const HOUR: Duration = Duration::from_secs(3600);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The authority's JWT key, read from its file as an operator could.
fn authority_key(server: &TestServer) -> EcdsaKeyPair {
    let pem = std::fs::read(server.dir.path().join("ca/jwt.key")).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &block.contents,
        &SystemRandom::new(),
    )
    .unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn es256(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let signature = key.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

#[tokio::test]
async fn the_spiffe_crate_fetches_and_validates_a_jwt_svid() {
    let server = TestServer::start(HOUR).await;
    server
        .registry
        .register_pid(std::process::id(), spiffe_id("/svc/gateway"));
    let client = spiffe::WorkloadApiClient::connect_to(server.endpoint())
        .await
        .unwrap();
    let svid = client.fetch_jwt_svid(["billing", "audit"], None).await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://somastack.test/svc/gateway"
    );
    let mut audience: Vec<&str> = svid.audience().iter().map(String::as_str).collect();
    audience.sort_unstable();
    assert_eq!(audience, ["audit", "billing"]);

    let bundles = client.fetch_jwt_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("somastack.test").unwrap();
    let bundle = bundles.get(&td).expect("jwt bundle of the own trust domain");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(svid.token().split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert!(
        bundle
            .find_jwt_authority(header["kid"].as_str().unwrap())
            .is_some()
    );

    let validated = client.validate_jwt_token("billing", svid.token()).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://somastack.test/svc/gateway"
    );
}

#[tokio::test]
async fn the_jwks_bundle_has_the_signing_key() {
    let server = TestServer::start(HOUR).await;
    server
        .registry
        .register_pid(std::process::id(), spiffe_id("/svc/a"));
    let mut client = raw_client(&server.socket).await;
    let message = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let jwks: Value = serde_json::from_slice(&message.bundles["spiffe://somastack.test"]).unwrap();
    let key = authority_key(&server);
    let point = key.public_key().as_ref();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["use"], "jwt-svid");
    assert_eq!(keys[0]["x"], URL_SAFE_NO_PAD.encode(&point[1..33]));
    assert_eq!(keys[0]["y"], URL_SAFE_NO_PAD.encode(&point[33..]));
    assert_eq!(keys[0]["kid"].as_str().unwrap().len(), 43);
}

#[tokio::test]
async fn fetch_requires_an_audience_and_the_callers_own_identity() {
    let server = TestServer::start(HOUR).await;
    let mut client = raw_client(&server.socket).await;
    let request = |audience: &[&str], id: &str| {
        with_header(JwtsvidRequest {
            audience: audience.iter().map(|a| (*a).to_owned()).collect(),
            spiffe_id: id.to_owned(),
        })
    };
    let denied = client.fetch_jwtsvid(request(&["a"], "")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "no identity issued: the caller matches no registration entry"
    );

    server
        .registry
        .register_pid(std::process::id(), spiffe_id("/svc/a"));
    let empty = client.fetch_jwtsvid(request(&[], "")).await.unwrap_err();
    assert_eq!(
        (empty.code(), empty.message()),
        (Code::InvalidArgument, "audience must be specified")
    );
    let other = client
        .fetch_jwtsvid(request(&["a"], "spiffe://somastack.test/svc/b"))
        .await
        .unwrap_err();
    assert_eq!(
        (other.code(), other.message()),
        (
            Code::PermissionDenied,
            "no identity issued: the caller is not entitled to spiffe://somastack.test/svc/b"
        )
    );
    let own = client
        .fetch_jwtsvid(request(&["a"], "spiffe://somastack.test/svc/a"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.svids[0].spiffe_id, "spiffe://somastack.test/svc/a");
}

#[tokio::test]
async fn validate_refuses_every_hostile_token_with_its_reason() {
    struct Case {
        name: &'static str,
        token: String,
        audience: &'static str,
        expected: Result<&'static str, (Code, &'static str)>,
    }
    let server = TestServer::start(HOUR).await;
    server
        .registry
        .register_pid(std::process::id(), spiffe_id("/svc/validator"));
    let mut client = raw_client(&server.socket).await;
    let good = jwt_svid(&mut client, "billing").await;
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(good.split('.').next().unwrap()).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let key = authority_key(&server);
    let rng = SystemRandom::new();
    let other_key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref(),
        &rng,
    )
    .unwrap();
    let es_header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let claims =
        |aud: Value, exp: u64| json!({"sub": "spiffe://somastack.test/svc/gateway", "aud": aud, "exp": exp});
    let valid_claims = claims(json!(["billing"]), now() + 300);
    let hs256 = {
        // The classic confusion: HMAC keyed with the public key.
        let header = json!({"alg": "HS256", "kid": kid, "typ": "JWT"});
        let input = format!("{}.{}", b64(&header), b64(&valid_claims));
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.public_key().as_ref()),
            input.as_bytes(),
        );
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": kid})),
        b64(&valid_claims)
    );
    let mut tampered: Vec<&str> = good.split('.').collect();
    let forged_claims = b64(&claims(json!(["billing"]), now() + 86_400));
    tampered[1] = &forged_claims;
    let tampered = tampered.join(".");

    let denied = |reason| Err((Code::InvalidArgument, reason));
    let cases = [
        Case {
            name: "issued token",
            token: good.clone(),
            audience: "billing",
            expected: Ok("spiffe://somastack.test/svc/validator"),
        },
        Case {
            name: "audience mismatch",
            token: good.clone(),
            audience: "audit",
            expected: denied("invalid jwt-svid: audience \"audit\" not in token audience [\"billing\"]"),
        },
        Case {
            name: "audience as a string",
            token: es256(&key, &es_header, &claims(json!("billing"), now() + 300)),
            audience: "billing",
            expected: Ok("spiffe://somastack.test/svc/gateway"),
        },
        Case {
            name: "expired",
            token: es256(&key, &es_header, &claims(json!(["billing"]), now() - 1)),
            audience: "billing",
            expected: denied("invalid jwt-svid: token has expired"),
        },
        Case {
            name: "no exp",
            token: es256(
                &key,
                &es_header,
                &json!({"sub": "spiffe://somastack.test/a", "aud": "billing"}),
            ),
            audience: "billing",
            expected: denied("invalid jwt-svid: token has no numeric exp"),
        },
        Case {
            name: "wrong key, right kid",
            token: es256(&other_key, &es_header, &valid_claims),
            audience: "billing",
            expected: denied("invalid jwt-svid: signature does not verify with the bundle's key"),
        },
        Case {
            name: "claims changed after signing",
            token: tampered,
            audience: "billing",
            expected: denied("invalid jwt-svid: signature does not verify with the bundle's key"),
        },
        Case {
            name: "unknown kid",
            token: es256(
                &other_key,
                &json!({"alg": "ES256", "kid": "other"}),
                &valid_claims,
            ),
            audience: "billing",
            expected: denied("invalid jwt-svid: unknown key id \"other\""),
        },
        Case {
            name: "alg none",
            token: none,
            audience: "billing",
            expected: denied("invalid jwt-svid: unsupported algorithm \"none\""),
        },
        Case {
            name: "alg HS256 keyed with the public key",
            token: hs256,
            audience: "billing",
            expected: denied("invalid jwt-svid: unsupported algorithm \"HS256\""),
        },
        Case {
            name: "crit header",
            token: es256(
                &key,
                &json!({"alg": "ES256", "kid": kid, "crit": ["exp"]}),
                &valid_claims,
            ),
            audience: "billing",
            expected: denied("invalid jwt-svid: crit header not supported"),
        },
        Case {
            name: "foreign trust domain",
            token: es256(
                &key,
                &es_header,
                &json!({"sub": "spiffe://elsewhere.test/x", "aud": "billing", "exp": now() + 300}),
            ),
            audience: "billing",
            expected: denied(
                "invalid jwt-svid: sub spiffe://elsewhere.test/x is not in trust domain somastack.test",
            ),
        },
        Case {
            name: "not yet valid",
            token: es256(
                &key,
                &es_header,
                &json!({"sub": "spiffe://somastack.test/x", "aud": "billing", "exp": now() + 300, "nbf": now() + 200}),
            ),
            audience: "billing",
            expected: denied("invalid jwt-svid: token is not valid yet"),
        },
        Case {
            name: "two parts",
            token: "a.b".to_owned(),
            audience: "billing",
            expected: denied("invalid jwt-svid: not a compact jws (three dot-separated parts)"),
        },
        Case {
            name: "no audience asked",
            token: good.clone(),
            audience: "",
            expected: denied("audience must be specified"),
        },
        Case {
            name: "no token",
            token: String::new(),
            audience: "billing",
            expected: denied("svid must be specified"),
        },
    ];
    for case in cases {
        let got = client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: case.audience.to_owned(),
                svid: case.token.clone(),
            }))
            .await
            .map(|r| r.into_inner().spiffe_id)
            .map_err(|s| (s.code(), s.message().to_owned()));
        let expected = case
            .expected
            .map(str::to_owned)
            .map_err(|(c, m)| (c, m.to_owned()));
        assert_eq!(got, expected, "{}", case.name);
    }
}
