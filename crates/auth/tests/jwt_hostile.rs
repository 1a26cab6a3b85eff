//! The tenant JWT verifier against hostile tokens, one table row each with
//! the exact refusal code, plus the happy path of every algorithm and the
//! leeway edges. Keys are real (openssl RSA, ring P-256 and Ed25519) and
//! loaded from real files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use soma_auth::{Algorithm, IssuerSettings, JwtSettings, JwtVerifier, TokenClaims};

use common::{EcKey, EdKey, HsKey, RsaKey, b64, hmac, mint, signing_input, write_json};

const ISSUER: &str = "https://issuer.example";
const ES_ONLY_ISSUER: &str = "https://es-only.example";
const SINGLE_KEY_ISSUER: &str = "https://single.example";
const OPERATOR_ISSUER: &str = "https://operators.example";
const AUDIENCE: &str = "soma-gateway";
const NOW: i64 = 1_750_000_000;
const LEEWAY: i64 = 30;
/// The fixture's `max_lifetime`: the default, 24 h.
const MAX_LIFETIME: i64 = 24 * 3600;

struct Fixture {
    _dir: tempfile::TempDir,
    verifier: JwtVerifier,
    hs: HsKey,
    rsa: RsaKey,
    ec: EcKey,
    ed: EdKey,
    single: HsKey,
    operator: HsKey,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let hs = HsKey::generate();
    let rsa = RsaKey::generate(dir.path(), 2048);
    let ec = EcKey::generate();
    let ed = EdKey::generate();
    let single = HsKey::generate();
    let operator = HsKey::generate();
    let secret_file = write_json(dir.path(), "hs.jwk", &hs.jwk("hs-1"));
    let jwks = json!({"keys": [rsa.jwk("rsa-1"), ec.jwk("ec-1"), ed.jwk("ed-1")]});
    let jwks_file = write_json(dir.path(), "jwks.json", &jwks);
    let single_file = write_json(dir.path(), "single.jwk", &single.jwk("only"));
    let operator_file = write_json(dir.path(), "operator.jwk", &operator.jwk("op-1"));
    let all = vec![
        Algorithm::Hs256,
        Algorithm::Rs256,
        Algorithm::Es256,
        Algorithm::EdDsa,
    ];
    let settings = JwtSettings {
        issuers: vec![
            IssuerSettings {
                issuer: ISSUER.to_owned(),
                audiences: vec!["other-audience".to_owned(), AUDIENCE.to_owned()],
                algorithms: all,
                hmac_secret_file: Some(secret_file.clone()),
                jwks_file: Some(jwks_file.clone()),
                ..IssuerSettings::default()
            },
            IssuerSettings {
                issuer: ES_ONLY_ISSUER.to_owned(),
                audiences: vec![AUDIENCE.to_owned()],
                algorithms: vec![Algorithm::Es256],
                hmac_secret_file: Some(secret_file),
                jwks_file: Some(jwks_file),
                ..IssuerSettings::default()
            },
            IssuerSettings {
                issuer: SINGLE_KEY_ISSUER.to_owned(),
                audiences: vec![AUDIENCE.to_owned()],
                algorithms: vec![Algorithm::Hs256],
                hmac_secret_file: Some(single_file),
                ..IssuerSettings::default()
            },
            IssuerSettings {
                issuer: OPERATOR_ISSUER.to_owned(),
                audiences: vec![AUDIENCE.to_owned()],
                algorithms: vec![Algorithm::Hs256],
                hmac_secret_file: Some(operator_file),
                operator: true,
                ..IssuerSettings::default()
            },
        ],
        leeway: Duration::from_secs(LEEWAY as u64),
        max_token_bytes: 8192,
        max_lifetime: Duration::from_secs(MAX_LIFETIME as u64),
    };
    let verifier = JwtVerifier::new(settings).await.unwrap();
    Fixture {
        _dir: dir,
        verifier,
        hs,
        rsa,
        ec,
        ed,
        single,
        operator,
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "sub": "user-42",
        "tenant": "acme",
        "region": "eu-west-1",
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "auth_time": NOW - 20,
        "jti": "token-1",
        "scope": "tools:read  tools:write",
        "amr": ["pwd", "otp"],
    })
}

fn with(mut value: Value, key: &str, member: Value) -> Value {
    value[key] = member;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    value.as_object_mut().unwrap().remove(key);
    value
}

fn header(alg: &str, kid: &str) -> Value {
    json!({"alg": alg, "kid": kid, "typ": "JWT"})
}

impl Fixture {
    fn hs256(&self, header: &Value, payload: &Value) -> String {
        mint(&header.to_string(), &payload.to_string(), |i| self.hs.sign(i))
    }

    fn hs(&self, payload: &Value) -> String {
        self.hs256(&header("HS256", "hs-1"), payload)
    }

    /// A token of the operator issuer (its own key).
    fn op(&self, payload: &Value) -> String {
        let payload = with(payload.clone(), "iss", json!(OPERATOR_ISSUER));
        mint(&header("HS256", "op-1").to_string(), &payload.to_string(), |i| {
            self.operator.sign(i)
        })
    }

    fn rs(&self, payload: &Value) -> String {
        mint(&header("RS256", "rsa-1").to_string(), &payload.to_string(), |i| {
            self.rsa.sign(i)
        })
    }

    fn es(&self, payload: &Value) -> String {
        mint(&header("ES256", "ec-1").to_string(), &payload.to_string(), |i| {
            self.ec.sign(i)
        })
    }

    fn ed(&self, payload: &Value) -> String {
        mint(&header("EdDSA", "ed-1").to_string(), &payload.to_string(), |i| {
            self.ed.sign(i)
        })
    }
}

struct Case {
    name: &'static str,
    token: String,
    expected_reason: &'static str,
}

fn case(name: &'static str, token: String, expected_reason: &'static str) -> Case {
    Case {
        name,
        token,
        expected_reason,
    }
}

fn hostile_cases(f: &Fixture) -> Vec<Case> {
    let c = claims();
    let good = f.hs(&c);
    let (good_input, good_sig) = good.rsplit_once('.').unwrap();
    let hs_sig = |input: &str| b64(&f.hs.sign(input.as_bytes()));
    let mut cases = Vec::new();

    // alg none, every casing: a MAC is attached so only `alg` is at fault;
    // and the classic form with an empty signature.
    for alg in ["none", "None", "NONE", "nOnE"] {
        cases.push(case(
            "alg none (any casing)",
            f.hs256(&header(alg, "hs-1"), &c),
            "alg_not_allowed",
        ));
    }
    let none_input = signing_input(&json!({"alg": "none"}).to_string(), &c.to_string());
    cases.push(case(
        "alg none, empty signature",
        format!("{none_input}."),
        "token_malformed",
    ));
    cases.push(case(
        "alg missing",
        f.hs256(&json!({"kid": "hs-1"}), &c),
        "alg_not_allowed",
    ));
    cases.push(case(
        "alg not a string",
        f.hs256(&json!({"alg": 256, "kid": "hs-1"}), &c),
        "alg_not_allowed",
    ));
    cases.push(case(
        "alg lowercase hs256",
        f.hs256(&header("hs256", "hs-1"), &c),
        "alg_not_allowed",
    ));
    cases.push(case(
        "alg HS512",
        f.hs256(&header("HS512", "hs-1"), &c),
        "alg_not_allowed",
    ));
    cases.push(case(
        "alg PS256",
        f.hs256(&header("PS256", "rsa-1"), &c),
        "alg_not_allowed",
    ));
    let es_only = with(c.clone(), "iss", json!(ES_ONLY_ISSUER));
    cases.push(case(
        "alg not allowed for the issuer",
        f.hs(&es_only),
        "alg_not_allowed",
    ));

    // Algorithm confusion: HS256 MACed with public key bytes, naming the
    // public key's kid.
    let hs_with_key = |kid: &str, key: &[u8]| {
        mint(&header("HS256", kid).to_string(), &c.to_string(), |i| {
            hmac(key, i)
        })
    };
    cases.push(case(
        "HS256 with the RSA public key PEM",
        hs_with_key("rsa-1", &f.rsa.spki_pem),
        "alg_not_allowed",
    ));
    cases.push(case(
        "HS256 with the RSA public key DER",
        hs_with_key("rsa-1", &f.rsa.spki_der),
        "alg_not_allowed",
    ));
    cases.push(case(
        "HS256 with the EC public point",
        hs_with_key("ec-1", f.ec.point()),
        "alg_not_allowed",
    ));
    let ed_pub = f.ed.jwk("x")["x"].as_str().unwrap().to_owned();
    cases.push(case(
        "HS256 with the Ed25519 public key",
        hs_with_key("ed-1", ed_pub.as_bytes()),
        "alg_not_allowed",
    ));
    cases.push(case(
        "RS256 naming the EC key",
        mint(&header("RS256", "ec-1").to_string(), &c.to_string(), |i| {
            f.rsa.sign(i)
        }),
        "alg_not_allowed",
    ));
    cases.push(case(
        "ES256 naming the HMAC key",
        mint(&header("ES256", "hs-1").to_string(), &c.to_string(), |i| {
            f.ec.sign(i)
        }),
        "alg_not_allowed",
    ));

    // Key ids.
    cases.push(case(
        "unknown kid",
        f.hs256(&header("HS256", "hs-2"), &c),
        "unknown_kid",
    ));
    cases.push(case(
        "no kid, issuer has several keys",
        f.hs256(&json!({"alg": "HS256"}), &c),
        "unknown_kid",
    ));
    for (name, kid) in [
        ("kid path traversal", "../../etc/passwd"),
        ("kid slash", "/"),
        ("kid sql injection", "' OR 1=1 --"),
        ("kid semicolon", ";"),
        ("kid empty", ""),
        ("kid with space", "hs 1"),
        ("kid with quote", "hs\"1"),
        ("kid non-ascii", "hs-\u{0131}"),
    ] {
        cases.push(case(name, f.hs256(&header("HS256", kid), &c), "bad_kid"));
    }
    cases.push(case(
        "kid of 129 characters",
        f.hs256(&header("HS256", &"a".repeat(129)), &c),
        "bad_kid",
    ));
    cases.push(case(
        "kid not a string",
        f.hs256(&json!({"alg": "HS256", "kid": 1}), &c),
        "bad_kid",
    ));
    let other_iss = with(c.clone(), "iss", json!("https://unknown.example"));
    cases.push(case(
        "bad kid is refused before the issuer is read",
        f.hs256(&header("HS256", "../x"), &other_iss),
        "bad_kid",
    ));

    // Key references in the header are never followed.
    for (member, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", f.ec.jwk("attacker")),
        ("x5c", json!(["MIIBszCCAVmgAwIBAgIUQ=="])),
    ] {
        let h = with(header("HS256", "hs-1"), member, value);
        cases.push(case(
            "key reference in the header",
            f.hs256(&h, &c),
            "untrusted_key_reference",
        ));
    }

    // crit.
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("exp")] {
        let h = with(header("HS256", "hs-1"), "crit", crit);
        cases.push(case("crit", f.hs256(&h, &c), "unknown_crit"));
    }

    // typ.
    cases.push(case(
        "typ JOSE+JSON",
        f.hs256(&with(header("HS256", "hs-1"), "typ", json!("JOSE+JSON")), &c),
        "token_malformed",
    ));
    cases.push(case(
        "typ not a string",
        f.hs256(&with(header("HS256", "hs-1"), "typ", json!(1)), &c),
        "token_malformed",
    ));

    // Claim types.
    cases.push(case(
        "exp as a string",
        f.hs(&with(c.clone(), "exp", json!((NOW + 600).to_string()))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "exp as a float",
        f.hs(&with(c.clone(), "exp", json!(NOW as f64 + 600.5))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "exp as a float without fraction",
        f.hs(&with(c.clone(), "exp", json!(NOW as f64 + 600.0))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "exp as a bool",
        f.hs(&with(c.clone(), "exp", json!(true))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "exp null",
        f.hs(&with(c.clone(), "exp", Value::Null)),
        "invalid_claim_type",
    ));
    cases.push(case(
        "exp beyond i64",
        f.hs(&with(c.clone(), "exp", json!(u64::MAX))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "nbf as a string",
        f.hs(&with(c.clone(), "nbf", json!("0"))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "iat as a float",
        f.hs(&with(c.clone(), "iat", json!(1.5))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "auth_time as a string",
        f.hs(&with(c.clone(), "auth_time", json!("1"))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "sub as a number",
        f.hs(&with(c.clone(), "sub", json!(42))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "tenant as an array",
        f.hs(&with(c.clone(), "tenant", json!(["acme"]))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "region as an object",
        f.hs(&with(c.clone(), "region", json!({}))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "jti as a number",
        f.hs(&with(c.clone(), "jti", json!(1))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "scope as an array",
        f.hs(&with(c.clone(), "scope", json!(["a"]))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "amr as a string",
        f.hs(&with(c.clone(), "amr", json!("pwd"))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "amr with a number",
        f.hs(&with(c.clone(), "amr", json!(["pwd", 1]))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "aud as a number",
        f.hs(&with(c.clone(), "aud", json!(1))),
        "invalid_claim_type",
    ));
    cases.push(case(
        "aud array with a number",
        f.hs(&with(c.clone(), "aud", json!([AUDIENCE, 1]))),
        "invalid_claim_type",
    ));
    // The operator claim is a JSON boolean, from any issuer: a string
    // "true" is a type error, not a truthy value.
    for (name, value) in [
        ("operator as the string \"true\"", json!("true")),
        ("operator as 1", json!(1)),
        ("operator null", Value::Null),
        ("operator as an array", json!([true])),
    ] {
        cases.push(case(
            name,
            f.hs(&with(c.clone(), "operator", value.clone())),
            "invalid_claim_type",
        ));
        cases.push(case(
            name,
            f.op(&with(c.clone(), "operator", value)),
            "invalid_claim_type",
        ));
    }

    // Issuer.
    for (name, iss) in [
        ("iss prefix match", "https://issuer.exampl"),
        (
            "iss extended (configured is a prefix)",
            "https://issuer.example.attacker.net",
        ),
        ("iss suffix match", "https://attacker.net/https://issuer.example"),
        ("iss case change", "HTTPS://ISSUER.EXAMPLE"),
        ("iss trailing slash", "https://issuer.example/"),
        ("iss empty", ""),
    ] {
        cases.push(case(
            name,
            f.hs(&with(c.clone(), "iss", json!(iss))),
            "unknown_issuer",
        ));
    }
    cases.push(case(
        "iss missing",
        f.hs(&without(c.clone(), "iss")),
        "unknown_issuer",
    ));
    cases.push(case(
        "iss array",
        f.hs(&with(c.clone(), "iss", json!([ISSUER]))),
        "invalid_claim_type",
    ));

    // Time.
    cases.push(case(
        "expired",
        f.hs(&with(c.clone(), "exp", json!(NOW - 3600))),
        "expired",
    ));
    cases.push(case(
        "nbf in the future",
        f.hs(&with(c.clone(), "nbf", json!(NOW + 3600))),
        "not_yet_valid",
    ));
    cases.push(case(
        "iat in the future",
        f.hs(&with(c.clone(), "iat", json!(NOW + 3600))),
        "issued_in_future",
    ));
    cases.push(case(
        "iat one second beyond the leeway",
        f.hs(&with(c.clone(), "iat", json!(NOW + LEEWAY + 1))),
        "issued_in_future",
    ));

    // Lifetime: exp - iat, or without iat exp - now, at most max_lifetime.
    let no_iat = without(c.clone(), "iat");
    cases.push(case(
        "exp = i64::MAX without iat",
        f.hs(&with(no_iat.clone(), "exp", json!(i64::MAX))),
        "lifetime_too_long",
    ));
    cases.push(case(
        "exp = i64::MAX with iat",
        f.hs(&with(c.clone(), "exp", json!(i64::MAX))),
        "lifetime_too_long",
    ));
    cases.push(case(
        "exp - iat = max_lifetime + 1 s",
        f.hs(&with(
            with(c.clone(), "iat", json!(NOW - 10)),
            "exp",
            json!(NOW - 10 + MAX_LIFETIME + 1),
        )),
        "lifetime_too_long",
    ));
    cases.push(case(
        "without iat, exp = now + max_lifetime + leeway + 1 s",
        f.hs(&with(no_iat, "exp", json!(NOW + MAX_LIFETIME + LEEWAY + 1))),
        "lifetime_too_long",
    ));
    cases.push(case(
        "iat = i64::MIN, exp in an hour",
        f.hs(&with(c.clone(), "iat", json!(i64::MIN))),
        "lifetime_too_long",
    ));
    cases.push(case(
        "operator issuer, exp = i64::MAX without iat",
        f.op(&with(
            with(without(c.clone(), "iat"), "operator", json!(true)),
            "exp",
            json!(i64::MAX),
        )),
        "lifetime_too_long",
    ));

    // Audience.
    cases.push(case(
        "aud mismatch",
        f.hs(&with(c.clone(), "aud", json!("billing"))),
        "audience_mismatch",
    ));
    cases.push(case(
        "aud array mismatch",
        f.hs(&with(c.clone(), "aud", json!(["billing", "x"]))),
        "audience_mismatch",
    ));
    cases.push(case(
        "aud empty array",
        f.hs(&with(c.clone(), "aud", json!([]))),
        "audience_mismatch",
    ));
    cases.push(case(
        "aud missing",
        f.hs(&without(c.clone(), "aud")),
        "audience_mismatch",
    ));

    // Required claims.
    cases.push(case(
        "tenant missing",
        f.hs(&without(c.clone(), "tenant")),
        "missing_claim",
    ));
    cases.push(case(
        "tenant empty",
        f.hs(&with(c.clone(), "tenant", json!(""))),
        "missing_claim",
    ));
    cases.push(case(
        "exp missing",
        f.hs(&without(c.clone(), "exp")),
        "missing_claim",
    ));
    cases.push(case(
        "sub missing",
        f.hs(&without(c.clone(), "sub")),
        "missing_claim",
    ));
    cases.push(case(
        "region missing",
        f.hs(&without(c.clone(), "region")),
        "missing_claim",
    ));

    // Size: checked before anything else, even on garbage.
    let big = with(c.clone(), "pad", json!("x".repeat(8192)));
    cases.push(case("oversized token", f.hs(&big), "token_too_large"));
    cases.push(case("oversized garbage", "!".repeat(8193), "token_too_large"));

    // Structure.
    cases.push(case(
        "two signatures (4 parts)",
        format!("{good}.{good_sig}"),
        "token_malformed",
    ));
    cases.push(case(
        "5 parts (JWE shape)",
        format!("{good}.{good_sig}.{good_sig}"),
        "token_malformed",
    ));
    let (h64, rest) = good_input.split_once('.').unwrap();
    let json_serialization = json!({
        "payload": rest,
        "signatures": [
            {"protected": h64, "signature": good_sig},
            {"protected": h64, "signature": good_sig},
        ],
    });
    cases.push(case(
        "JWS JSON serialization",
        json_serialization.to_string(),
        "token_malformed",
    ));
    let flattened = json!({"payload": rest, "protected": h64, "signature": good_sig});
    cases.push(case(
        "JWS flattened JSON serialization",
        flattened.to_string(),
        "token_malformed",
    ));
    cases.push(case(
        "trailing garbage after the signature",
        format!("{good}!!"),
        "token_malformed",
    ));
    cases.push(case("trailing dot", format!("{good}."), "token_malformed"));
    cases.push(case("leading space", format!(" {good}"), "token_malformed"));
    cases.push(case("trailing newline", format!("{good}\n"), "token_malformed"));
    cases.push(case(
        "space inside",
        format!("{good_input}. {good_sig}"),
        "token_malformed",
    ));
    cases.push(case("padded signature", format!("{good}="), "token_malformed"));
    let padded_header = {
        // A header whose encoding needs padding, then padded.
        let h = json!({"alg": "HS256", "kid": "hs-1", "typ": "JWT", "x": "ab"}).to_string();
        let h = if b64(h.as_bytes()).len().is_multiple_of(4) {
            h.replace("\"ab\"", "\"abc\"")
        } else {
            h
        };
        let pad = "=".repeat((4 - b64(h.as_bytes()).len() % 4) % 4);
        let input = format!("{}{pad}.{}", b64(h.as_bytes()), b64(c.to_string().as_bytes()));
        format!("{input}.{}", hs_sig(&input))
    };
    cases.push(case("padded header", padded_header, "token_malformed"));
    let std_alphabet = good_sig.replace('-', "+").replace('_', "/");
    let std_alphabet = if std_alphabet == good_sig {
        format!("{good_input}.+{}", &good_sig[1..])
    } else {
        format!("{good_input}.{std_alphabet}")
    };
    cases.push(case("standard base64 alphabet", std_alphabet, "token_malformed"));
    cases.push(case(
        "empty header",
        format!(".{}", good.split_once('.').unwrap().1),
        "token_malformed",
    ));
    cases.push(case(
        "empty payload",
        format!("{h64}..{good_sig}"),
        "token_malformed",
    ));
    cases.push(case("no dots", "abc".to_owned(), "token_malformed"));
    cases.push(case("empty token", String::new(), "token_malformed"));
    // Non-canonical trailing bits: the last character of a 32-byte MAC
    // carries 2 unused bits; setting them must not decode to the same MAC.
    let last = good_sig.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let idx = alphabet.find(last).unwrap();
    let tweaked = alphabet.chars().nth(idx | 1).unwrap();
    let non_canonical = format!("{}{tweaked}", &good[..good.len() - 1]);
    cases.push(case(
        "non-canonical trailing bits",
        non_canonical,
        "token_malformed",
    ));

    // JSON.
    let raw = |h: &str, p: &str| {
        let input = signing_input(h, p);
        format!("{input}.{}", hs_sig(&input))
    };
    cases.push(case(
        "duplicate alg in the header",
        raw(r#"{"alg":"HS256","alg":"none","kid":"hs-1"}"#, &c.to_string()),
        "token_malformed",
    ));
    cases.push(case(
        "duplicate kid in the header",
        raw(r#"{"alg":"HS256","kid":"hs-1","kid":"hs-1"}"#, &c.to_string()),
        "token_malformed",
    ));
    let dup_sub = c.to_string().replacen('{', r#"{"sub":"admin","#, 1);
    cases.push(case(
        "duplicate sub in the payload",
        raw(r#"{"alg":"HS256","kid":"hs-1"}"#, &dup_sub),
        "token_malformed",
    ));
    cases.push(case(
        "header is an array",
        raw(r#"["HS256"]"#, &c.to_string()),
        "token_malformed",
    ));
    cases.push(case(
        "header is not json",
        raw("alg=HS256", &c.to_string()),
        "token_malformed",
    ));
    cases.push(case(
        "payload is not json",
        raw(r#"{"alg":"HS256","kid":"hs-1"}"#, "foo"),
        "token_malformed",
    ));
    cases.push(case(
        "payload is a string",
        raw(r#"{"alg":"HS256","kid":"hs-1"}"#, r#""x""#),
        "token_malformed",
    ));
    cases.push(case(
        "trailing data after the payload json",
        raw(r#"{"alg":"HS256","kid":"hs-1"}"#, &format!("{c} {{}}")),
        "token_malformed",
    ));

    // Signatures.
    let wrong_secret = mint(&header("HS256", "hs-1").to_string(), &c.to_string(), |i| {
        hmac(&[7; 32], i)
    });
    cases.push(case("HS256 wrong secret", wrong_secret, "bad_signature"));
    cases.push(case(
        "HS256 truncated MAC",
        format!("{good_input}.{}", b64(&f.hs.sign(good_input.as_bytes())[..16])),
        "bad_signature",
    ));
    cases.push(case(
        "HS256 modified payload",
        {
            let other = with(c.clone(), "tenant", json!("other"));
            format!(
                "{}.{good_sig}",
                signing_input(&header("HS256", "hs-1").to_string(), &other.to_string())
            )
        },
        "bad_signature",
    ));
    let es_header = header("ES256", "ec-1").to_string();
    cases.push(case(
        "ES256 all-zero signature",
        mint(&es_header, &c.to_string(), |_| vec![0; 64]),
        "bad_signature",
    ));
    cases.push(case(
        "ES256 DER signature",
        mint(&es_header, &c.to_string(), |i| f.ec.sign_der(i)),
        "bad_signature",
    ));
    cases.push(case(
        "ES256 63-byte signature",
        mint(&es_header, &c.to_string(), |i| f.ec.sign(i)[..63].to_vec()),
        "bad_signature",
    ));
    cases.push(case(
        "ES256 r = s = n",
        mint(&es_header, &c.to_string(), |_| {
            let n = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
            [n.clone(), n].concat()
        }),
        "bad_signature",
    ));
    let rs_header = header("RS256", "rsa-1").to_string();
    cases.push(case(
        "RS256 short signature",
        mint(&rs_header, &c.to_string(), |i| f.rsa.sign(i)[1..].to_vec()),
        "bad_signature",
    ));
    cases.push(case(
        "RS256 long signature",
        mint(&rs_header, &c.to_string(), |i| [vec![0], f.rsa.sign(i)].concat()),
        "bad_signature",
    ));
    let ed_header = header("EdDSA", "ed-1").to_string();
    cases.push(case(
        "EdDSA flipped bit",
        mint(&ed_header, &c.to_string(), |i| {
            let mut s = f.ed.sign(i);
            s[0] ^= 1;
            s
        }),
        "bad_signature",
    ));
    cases.push(case(
        "EdDSA non-canonical S (S + L)",
        mint(&ed_header, &c.to_string(), |i| {
            let mut s = f.ed.sign(i);
            add_group_order(&mut s[32..]);
            s
        }),
        "bad_signature",
    ));
    cases
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Adds the Ed25519 group order L to a little-endian scalar: the same
/// signature, malleated, which strict verification refuses.
fn add_group_order(s: &mut [u8]) {
    let l = hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
    let mut carry = 0u16;
    for (byte, add) in s.iter_mut().zip(l) {
        let sum = u16::from(*byte) + u16::from(add) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_their_exact_reason() {
    let f = fixture().await;
    let cases = hostile_cases(&f);
    let mut failures = Vec::new();
    for Case {
        name,
        token,
        expected_reason,
    } in &cases
    {
        match f.verifier.verify(token, NOW).await {
            Ok(claims) => failures.push(format!("{name}: accepted as {claims:?}")),
            Err(err) if err.reason() != *expected_reason => {
                failures.push(format!(
                    "{name}: got {} ({err}), expected {expected_reason}",
                    err.reason()
                ));
            }
            Err(_) => {}
        }
    }
    println!("{} hostile cases checked", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn each_algorithm_verifies_and_returns_the_claims() {
    let f = fixture().await;
    let c = claims();
    for (alg, token, kid) in [
        ("HS256", f.hs(&c), "hs-1"),
        ("RS256", f.rs(&c), "rsa-1"),
        ("ES256", f.es(&c), "ec-1"),
        ("EdDSA", f.ed(&c), "ed-1"),
    ] {
        let claims = f
            .verifier
            .verify(&token, NOW)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(
            claims,
            TokenClaims {
                issuer: ISSUER.to_owned(),
                subject: "user-42".to_owned(),
                tenant: "acme".to_owned(),
                region: "eu-west-1".to_owned(),
                scope: vec!["tools:read".to_owned(), "tools:write".to_owned()],
                amr: vec!["pwd".to_owned(), "otp".to_owned()],
                auth_time: Some(NOW - 20),
                jti: Some("token-1".to_owned()),
                expires_at: NOW + 600,
                issued_at: Some(NOW - 10),
                key_id: kid.to_owned(),
                operator: false,
            },
            "{alg}"
        );
    }
}

#[tokio::test]
async fn accepted_variants() {
    let f = fixture().await;
    let c = claims();
    // aud as an array holding one configured audience among others.
    let aud_array = with(c.clone(), "aud", json!(["billing", AUDIENCE]));
    f.verifier.verify(&f.hs(&aud_array), NOW).await.unwrap();
    // typ in other casings and at+jwt; no typ at all.
    for typ in [json!("jwt"), json!("at+JWT")] {
        let token = f.hs256(&with(header("HS256", "hs-1"), "typ", typ), &c);
        f.verifier.verify(&token, NOW).await.unwrap();
    }
    f.verifier
        .verify(&f.hs256(&json!({"alg": "HS256", "kid": "hs-1"}), &c), NOW)
        .await
        .unwrap();
    // Optional claims absent.
    let minimal =
        json!({"iss": ISSUER, "sub": "s", "tenant": "t", "region": "r", "aud": AUDIENCE, "exp": NOW + 1});
    let claims = f.verifier.verify(&f.hs(&minimal), NOW).await.unwrap();
    assert_eq!(
        (
            claims.scope,
            claims.amr,
            claims.auth_time,
            claims.jti,
            claims.issued_at
        ),
        (vec![], vec![], None, None, None)
    );
    // No kid, and the issuer has exactly one key.
    let single = with(c.clone(), "iss", json!(SINGLE_KEY_ISSUER));
    let token = mint(&json!({"alg": "HS256"}).to_string(), &single.to_string(), |i| {
        f.single.sign(i)
    });
    assert_eq!(f.verifier.verify(&token, NOW).await.unwrap().key_id, "only");
    // A kid of exactly 128 allowed characters is syntactically fine (and unknown).
    let long_kid = format!("{}.-_~", "a".repeat(124));
    let err = f
        .verifier
        .verify(&f.hs256(&header("HS256", &long_kid), &c), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unknown_kid");
}

#[tokio::test]
async fn leeway_edges() {
    let f = fixture().await;
    let exp = NOW;
    let token = f.hs(&with(with(claims(), "exp", json!(exp)), "iat", json!(exp - 100)));
    f.verifier
        .verify(&token, exp + LEEWAY - 1)
        .await
        .expect("now = exp + leeway - 1 is accepted");
    let err = f.verifier.verify(&token, exp + LEEWAY).await.unwrap_err();
    assert_eq!(err.reason(), "expired", "now = exp + leeway is refused");

    let nbf = with(claims(), "nbf", json!(NOW + LEEWAY));
    f.verifier
        .verify(&f.hs(&nbf), NOW)
        .await
        .expect("nbf = now + leeway is accepted");
    let nbf = with(claims(), "nbf", json!(NOW + LEEWAY + 1));
    assert_eq!(
        f.verifier.verify(&f.hs(&nbf), NOW).await.unwrap_err().reason(),
        "not_yet_valid"
    );

    let iat = with(claims(), "iat", json!(NOW + LEEWAY));
    f.verifier
        .verify(&f.hs(&iat), NOW)
        .await
        .expect("iat = now + leeway is accepted");
    let iat = with(claims(), "iat", json!(NOW + LEEWAY + 1));
    assert_eq!(
        f.verifier.verify(&f.hs(&iat), NOW).await.unwrap_err().reason(),
        "issued_in_future"
    );
}

#[tokio::test]
async fn lifetime_edges() {
    let f = fixture().await;
    // exp - iat exactly max_lifetime: accepted; one second more: refused.
    let iat = NOW - 10;
    let exact = with(
        with(claims(), "iat", json!(iat)),
        "exp",
        json!(iat + MAX_LIFETIME),
    );
    let accepted = f
        .verifier
        .verify(&f.hs(&exact), NOW)
        .await
        .expect("exactly max_lifetime");
    assert_eq!(accepted.expires_at - accepted.issued_at.unwrap(), MAX_LIFETIME);
    let over = with(exact.clone(), "exp", json!(iat + MAX_LIFETIME + 1));
    assert_eq!(
        f.verifier.verify(&f.hs(&over), NOW).await.unwrap_err().reason(),
        "lifetime_too_long"
    );
    // Without iat: exp up to now + max_lifetime + leeway.
    let no_iat = without(claims(), "iat");
    let edge = with(no_iat.clone(), "exp", json!(NOW + MAX_LIFETIME + LEEWAY));
    f.verifier
        .verify(&f.hs(&edge), NOW)
        .await
        .expect("without iat, exp = now + max_lifetime + leeway");
    let beyond = with(no_iat, "exp", json!(NOW + MAX_LIFETIME + LEEWAY + 1));
    assert_eq!(
        f.verifier.verify(&f.hs(&beyond), NOW).await.unwrap_err().reason(),
        "lifetime_too_long"
    );
    // The bound follows the configuration: with max_lifetime = 1 h, a token
    // of 1 h 1 s is refused and one of 1 h accepted.
    let dir = tempfile::tempdir().unwrap();
    let hs = HsKey::generate();
    let settings = JwtSettings {
        issuers: vec![IssuerSettings {
            issuer: ISSUER.to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::Hs256],
            hmac_secret_file: Some(write_json(dir.path(), "hs.jwk", &hs.jwk("hs-1"))),
            ..IssuerSettings::default()
        }],
        max_lifetime: Duration::from_secs(3600),
        ..JwtSettings::default()
    };
    let hour = JwtVerifier::new(settings).await.unwrap();
    let mint_hs = |payload: &Value| {
        mint(&header("HS256", "hs-1").to_string(), &payload.to_string(), |i| {
            hs.sign(i)
        })
    };
    let one_hour = with(with(claims(), "iat", json!(NOW)), "exp", json!(NOW + 3600));
    hour.verify(&mint_hs(&one_hour), NOW).await.expect("1 h");
    let longer = with(one_hour, "exp", json!(NOW + 3601));
    assert_eq!(
        hour.verify(&mint_hs(&longer), NOW).await.unwrap_err().reason(),
        "lifetime_too_long"
    );
}

#[tokio::test]
async fn the_operator_claim_counts_only_from_an_operator_issuer() {
    let f = fixture().await;
    struct Row {
        name: &'static str,
        token: String,
        operator: bool,
    }
    let c = claims();
    let rows = [
        Row {
            name: "tenant issuer, operator true: grants nothing",
            token: f.hs(&with(c.clone(), "operator", json!(true))),
            operator: false,
        },
        Row {
            name: "tenant issuer, no operator claim",
            token: f.hs(&c),
            operator: false,
        },
        Row {
            name: "operator issuer, operator true",
            token: f.op(&with(c.clone(), "operator", json!(true))),
            operator: true,
        },
        Row {
            name: "operator issuer, operator false",
            token: f.op(&with(c.clone(), "operator", json!(false))),
            operator: false,
        },
        Row {
            name: "operator issuer, no operator claim",
            token: f.op(&c),
            operator: false,
        },
    ];
    for row in rows {
        let claims = f
            .verifier
            .verify(&row.token, NOW)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert_eq!(claims.operator, row.operator, "{}", row.name);
    }
    // The operator issuer's key is its own: an operator claim MACed with
    // the tenant issuer's key but naming the operator issuer is refused.
    let forged = f.hs256(
        &header("HS256", "hs-1"),
        &with(with(c, "iss", json!(OPERATOR_ISSUER)), "operator", json!(true)),
    );
    assert_eq!(
        f.verifier.verify(&forged, NOW).await.unwrap_err().reason(),
        "unknown_kid"
    );
}

#[tokio::test]
async fn max_lifetime_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HsKey::generate();
    let path = write_json(dir.path(), "hs.jwk", &hs.jwk("k"));
    let settings = |max_lifetime: Option<&str>| {
        let mut text = json!({
            "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256"],
                         "hmac_secret_file": path}],
        });
        if let Some(m) = max_lifetime {
            text["max_lifetime"] = json!(m);
        }
        serde_json::from_value::<JwtSettings>(text)
    };
    // (value, Ok(parsed) or Err(whether it is refused when parsed or when validated))
    struct Row {
        value: Option<&'static str>,
        expected: Result<Duration, &'static str>,
    }
    let rows = [
        Row {
            value: None,
            expected: Ok(Duration::from_secs(24 * 3600)),
        },
        Row {
            value: Some("1s"),
            expected: Ok(Duration::from_secs(1)),
        },
        Row {
            value: Some("15m"),
            expected: Ok(Duration::from_secs(900)),
        },
        Row {
            value: Some("24h"),
            expected: Ok(Duration::from_secs(24 * 3600)),
        },
        Row {
            value: Some("30days"),
            expected: Ok(Duration::from_secs(30 * 24 * 3600)),
        },
        Row {
            value: Some("30days 1s"),
            expected: Err("validate"),
        },
        Row {
            value: Some("1year"),
            expected: Err("validate"),
        },
        Row {
            value: Some("0s"),
            expected: Err("validate"),
        },
        Row {
            value: Some("soon"),
            expected: Err("parse"),
        },
        Row {
            value: Some("-1h"),
            expected: Err("parse"),
        },
        Row {
            value: Some(""),
            expected: Err("parse"),
        },
    ];
    for row in rows {
        let parsed = settings(row.value);
        match (row.expected, parsed) {
            (Ok(expected), Ok(s)) => {
                assert_eq!(s.max_lifetime, expected, "{:?}", row.value);
                s.validate().unwrap_or_else(|e| panic!("{:?}: {e}", row.value));
                JwtVerifier::new(s).await.unwrap();
            }
            (Err("validate"), Ok(s)) => {
                let err = s.validate().unwrap_err();
                assert!(
                    matches!(err, soma_auth::JwtConfigError::MaxLifetime(_)),
                    "{:?}: {err}",
                    row.value
                );
                assert!(err.to_string().contains("max_lifetime"), "{err}");
                assert!(JwtVerifier::new(s).await.is_err(), "{:?}", row.value);
            }
            (Err("parse"), Err(_)) => {}
            (expected, got) => panic!("{:?}: expected {expected:?}, got {got:?}", row.value),
        }
    }
    assert_eq!(
        JwtSettings::default().max_lifetime,
        soma_auth::DEFAULT_MAX_LIFETIME
    );
    assert_eq!(
        soma_auth::MAX_LIFETIME_CEILING,
        Duration::from_secs(30 * 24 * 3600)
    );
}

#[tokio::test]
async fn debug_output_redacts_secrets() {
    let f = fixture().await;
    let debug = format!("{:?}", f.verifier);
    let secret = b64(&f.hs.secret);
    assert!(!debug.contains(&secret), "{debug}");
    assert!(debug.contains(ISSUER), "{debug}");
    let jwk = soma_auth::Jwk::from_json(&f.hs.jwk("hs-1")).unwrap();
    let debug = format!("{jwk:?}");
    assert!(!debug.contains(&secret) && debug.contains("hs-1"), "{debug}");
}

#[tokio::test]
async fn settings_deserialize_strictly() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HsKey::generate();
    let path = write_json(dir.path(), "hs.jwk", &hs.jwk("k"));
    let text = json!({
        "issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE], "algorithms": ["HS256", "EdDSA"],
                     "hmac_secret_file": path, "jwks_refresh_interval": "1m 30s"}],
        "leeway": "45s",
    });
    let settings: JwtSettings = serde_json::from_value(text.clone()).unwrap();
    assert_eq!(settings.leeway, Duration::from_secs(45));
    assert_eq!(settings.max_token_bytes, 8192);
    assert_eq!(settings.issuers[0].jwks_refresh_interval, Duration::from_secs(90));
    assert_eq!(
        settings.issuers[0].algorithms,
        vec![Algorithm::Hs256, Algorithm::EdDsa]
    );
    JwtVerifier::new(settings).await.unwrap();

    let defaults: JwtSettings = serde_json::from_value(json!({"issuers": []})).unwrap();
    assert_eq!(defaults.leeway, Duration::from_secs(30));
    let unknown = with(text.clone(), "leway", json!("1s"));
    assert!(
        serde_json::from_value::<JwtSettings>(unknown).is_err(),
        "unknown field"
    );
    let mut bad_alg = text.clone();
    bad_alg["issuers"][0]["algorithms"] = json!(["none"]);
    assert!(
        serde_json::from_value::<JwtSettings>(bad_alg).is_err(),
        "alg none in settings"
    );
    let mut bad_duration = text;
    bad_duration["leeway"] = json!("soon");
    assert!(serde_json::from_value::<JwtSettings>(bad_duration).is_err());

    // Configuration errors.
    assert!(
        JwtVerifier::new(JwtSettings::default()).await.is_err(),
        "no issuers"
    );
    let missing = JwtSettings {
        issuers: vec![IssuerSettings {
            issuer: ISSUER.to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::Hs256],
            hmac_secret_file: Some(dir.path().join("absent.jwk")),
            ..IssuerSettings::default()
        }],
        ..JwtSettings::default()
    };
    assert!(JwtVerifier::new(missing).await.is_err(), "missing secret file");
    let short = write_json(
        dir.path(),
        "short.jwk",
        &json!({"kty": "oct", "kid": "k", "k": b64(&[1; 16])}),
    );
    let short = JwtSettings {
        issuers: vec![IssuerSettings {
            issuer: ISSUER.to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::Hs256],
            hmac_secret_file: Some(short),
            ..IssuerSettings::default()
        }],
        ..JwtSettings::default()
    };
    assert!(JwtVerifier::new(short).await.is_err(), "16-byte HS256 secret");
}

#[test]
fn weak_public_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let small = RsaKey::generate(dir.path(), 1024);
    let err = soma_auth::Jwk::from_json(&small.jwk("small")).unwrap_err();
    assert_eq!(err.reason(), "invalid_key");
    // The Ed25519 identity point has small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&identity)});
    assert!(soma_auth::Jwk::from_json(&weak).is_err());
    let with_private = with(EcKey::generate().jwk("e"), "d", json!(b64(&[1; 32])));
    assert!(
        soma_auth::Jwk::from_json(&with_private).is_err(),
        "private member"
    );
    let enc = with(EdKey::generate().jwk("e"), "use", json!("enc"));
    assert!(soma_auth::Jwk::from_json(&enc).is_err(), "use enc");
    let wrong_alg = with(EdKey::generate().jwk("e"), "alg", json!("ES256"));
    assert!(soma_auth::Jwk::from_json(&wrong_alg).is_err(), "alg mismatch");
}
