//! The verifier's reading of the header and payload JSON, end to end: every
//! token below carries a valid HMAC over JSON text written by hand (member
//! names with escapes, repeated members, odd whitespace, numbers serde's
//! grammar refuses, deep nesting, lone surrogates), so the only thing under
//! test is how that text is read. One row per input, each with the exact
//! refusal code or the claims it yields.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use soma_auth::{Algorithm, IssuerSettings, JwtSettings, JwtVerifier, TokenClaims};

use common::{HsKey, mint, write_json};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "soma-gateway";
const NOW: i64 = 1_750_000_000;
const EXP: i64 = NOW + 600;
const HEADER: &str = r#"{"alg":"HS256","kid":"hs-1"}"#;

/// What a row expects.
enum Expected {
    /// Refused with this reason.
    Refused(&'static str),
    /// Accepted; the check runs on the claims.
    Accepted(fn(&TokenClaims) -> bool),
}

struct Case {
    name: &'static str,
    header: String,
    payload: String,
    expected: Expected,
}

fn payload_case(name: &'static str, payload: impl Into<String>, expected: Expected) -> Case {
    Case {
        name,
        header: HEADER.to_owned(),
        payload: payload.into(),
        expected,
    }
}

fn header_case(name: &'static str, header: impl Into<String>, expected: Expected) -> Case {
    Case {
        name,
        header: header.into(),
        payload: claims(""),
        expected,
    }
}

/// The required claims, then `extra` members (each starting with a comma).
fn claims(extra: &str) -> String {
    format!(
        r#"{{"iss":"{ISSUER}","sub":"u","tenant":"t","region":"r","aud":"{AUDIENCE}","exp":{EXP}{extra}}}"#
    )
}

/// The required claims without `exp`, then `extra`.
fn claims_without_exp(extra: &str) -> String {
    format!(r#"{{"iss":"{ISSUER}","sub":"u","tenant":"t","region":"r","aud":"{AUDIENCE}"{extra}}}"#)
}

fn any(_: &TokenClaims) -> bool {
    true
}

fn cases() -> Vec<Case> {
    use Expected::{Accepted, Refused};
    let nested = |n: usize| format!(r#","x":{}{}"#, "[".repeat(n), "]".repeat(n));
    vec![
        payload_case("plain", claims(""), Accepted(any)),
        payload_case(
            "whitespace of every JSON kind",
            format!(
                " \r\n{{ \"iss\" :\t\"{ISSUER}\" ,\n\"sub\":\"u\",\"tenant\":\"t\",\"region\":\"r\",\"aud\":\"{AUDIENCE}\",\"exp\" : {EXP} }}\r\n"
            ),
            Accepted(any),
        ),
        payload_case(
            "form feed before the object",
            format!("\u{c}{}", claims("")),
            Refused("token_malformed"),
        ),
        payload_case(
            "form feed between members",
            claims(",\u{c}\"x\":1"),
            Refused("token_malformed"),
        ),
        payload_case("trailing comma", claims(","), Refused("token_malformed")),
        payload_case(
            "second object after the first",
            format!("{} {{}}", claims("")),
            Refused("token_malformed"),
        ),
        payload_case(
            "exp named twice",
            claims(&format!(r#","exp":{EXP}"#)),
            Refused("token_malformed"),
        ),
        payload_case(
            "iss named twice, once escaped",
            claims(&format!(r#","\u0069ss":"{ISSUER}""#)),
            Refused("token_malformed"),
        ),
        payload_case(
            "exp named with an escape",
            claims_without_exp(&format!(r#","\u0065xp":{EXP}"#)),
            Accepted(|c| c.expires_at == EXP),
        ),
        payload_case(
            "an ignored member named twice",
            claims(r#","x":1,"x":2"#),
            Accepted(any),
        ),
        payload_case(
            "exp with a leading zero",
            claims_without_exp(&format!(r#","exp":0{EXP}"#)),
            Refused("token_malformed"),
        ),
        payload_case(
            "exp with a plus sign",
            claims_without_exp(&format!(r#","exp":+{EXP}"#)),
            Refused("token_malformed"),
        ),
        payload_case(
            "exp as 1.0 form",
            claims_without_exp(&format!(r#","exp":{EXP}.0"#)),
            Refused("invalid_claim_type"),
        ),
        payload_case(
            "exp with an exponent",
            claims_without_exp(r#","exp":1.7500006e9"#),
            Refused("invalid_claim_type"),
        ),
        payload_case("exp -0", claims_without_exp(r#","exp":-0"#), Refused("expired")),
        payload_case(
            "exp NaN",
            claims_without_exp(r#","exp":NaN"#),
            Refused("token_malformed"),
        ),
        payload_case(
            "exp truncated literal",
            claims_without_exp(r#","exp":nul"#),
            Refused("token_malformed"),
        ),
        payload_case(
            "a number serde's grammar refuses, ignored member",
            claims(r#","x":1.e5"#),
            Refused("token_malformed"),
        ),
        payload_case(
            "a raw control character in an ignored member",
            claims(",\"x\":\"a\u{1}\""),
            Refused("token_malformed"),
        ),
        payload_case(
            "an unknown escape in an ignored member",
            claims(r#","x":"\q""#),
            Refused("token_malformed"),
        ),
        payload_case(
            "a lone surrogate naming an ignored member",
            claims(r#","\udc00":1"#),
            Refused("token_malformed"),
        ),
        payload_case(
            "a lone surrogate inside an ignored value",
            claims(r#","x":"\udc00""#),
            Accepted(any),
        ),
        payload_case(
            "a lone surrogate in sub",
            format!(
                r#"{{"iss":"{ISSUER}","sub":"\ud800","tenant":"t","region":"r","aud":"{AUDIENCE}","exp":{EXP}}}"#
            ),
            Refused("invalid_claim_type"),
        ),
        payload_case(
            "escapes in iss and sub",
            format!(
                r#"{{"iss":"https:\/\/issuer.example","sub":"\u00e9\ud83d\ude00","tenant":"t","region":"r","aud":"{AUDIENCE}","exp":{EXP}}}"#
            ),
            Accepted(|c| c.issuer == ISSUER && c.subject == "\u{e9}\u{1f600}"),
        ),
        payload_case(
            "nesting 100 deep in an ignored member",
            claims(&nested(100)),
            Accepted(any),
        ),
        payload_case(
            "nesting 2000 deep in an ignored member",
            claims(&nested(2000)),
            Accepted(any),
        ),
        payload_case(
            "nesting 2000 deep, unclosed",
            claims(&format!(r#","x":{}"#, "[".repeat(2000))),
            Refused("token_malformed"),
        ),
        payload_case(
            "amr with escapes and spaces",
            claims(r#","amr":[ "p\u0077d" , "otp" ]"#),
            Accepted(|c| c.amr == ["pwd", "otp"]),
        ),
        payload_case(
            "amr with a null",
            claims(r#","amr":["pwd",null]"#),
            Refused("invalid_claim_type"),
        ),
        payload_case(
            "amr with a nested array",
            claims(r#","amr":[["pwd"]]"#),
            Refused("invalid_claim_type"),
        ),
        payload_case(
            "aud array with spaces",
            format!(
                r#"{{"iss":"{ISSUER}","sub":"u","tenant":"t","region":"r","aud":[ "billing" , "{AUDIENCE}" ],"exp":{EXP}}}"#
            ),
            Accepted(any),
        ),
        payload_case(
            "aud array, ours only under an escape",
            format!(
                r#"{{"iss":"{ISSUER}","sub":"u","tenant":"t","region":"r","aud":["billing","soma\u002dgateway"],"exp":{EXP}}}"#
            ),
            Accepted(any),
        ),
        payload_case(
            "aud array, ours with a trailing space",
            format!(
                r#"{{"iss":"{ISSUER}","sub":"u","tenant":"t","region":"r","aud":["{AUDIENCE} "],"exp":{EXP}}}"#
            ),
            Refused("audience_mismatch"),
        ),
        payload_case(
            "operator null",
            claims(r#","operator":null"#),
            Refused("invalid_claim_type"),
        ),
        payload_case(
            "the payload is an array",
            format!("[{}]", claims("")),
            Refused("token_malformed"),
        ),
        header_case(
            "alg named twice, once escaped",
            r#"{"alg":"HS256","\u0061lg":"none","kid":"hs-1"}"#,
            Refused("token_malformed"),
        ),
        header_case(
            "alg named with an escape",
            r#"{"\u0061lg":"HS256","kid":"hs-1"}"#,
            Accepted(any),
        ),
        header_case(
            "alg written with escapes",
            r#"{"alg":"HS\u0032\u0035\u0036","kid":"hs-1"}"#,
            Accepted(any),
        ),
        header_case(
            "jku null",
            r#"{"alg":"HS256","kid":"hs-1","jku":null}"#,
            Refused("untrusted_key_reference"),
        ),
        header_case(
            "jku named with an escape",
            r#"{"alg":"HS256","kid":"hs-1","\u006aku":"https://x"}"#,
            Refused("untrusted_key_reference"),
        ),
        header_case(
            "crit empty",
            r#"{"alg":"HS256","kid":"hs-1","crit":[]}"#,
            Refused("unknown_crit"),
        ),
        header_case(
            "jku nested in another member",
            r#"{"alg":"HS256","kid":"hs-1","x":{"jku":"y","jku":"z"}}"#,
            Accepted(any),
        ),
        header_case(
            "kid written with an escape",
            r#"{"alg":"HS256","kid":"hs\u002d1"}"#,
            Accepted(|c| c.key_id == "hs-1"),
        ),
        header_case(
            "kid with an escaped slash",
            r#"{"alg":"HS256","kid":"hs\/1"}"#,
            Refused("bad_kid"),
        ),
        header_case(
            "kid named twice",
            r#"{"alg":"HS256","kid":"hs-1","kid":"hs-1"}"#,
            Refused("token_malformed"),
        ),
        header_case(
            "typ null",
            r#"{"alg":"HS256","kid":"hs-1","typ":null}"#,
            Refused("token_malformed"),
        ),
        header_case(
            "header trailing comma",
            r#"{"alg":"HS256","kid":"hs-1",}"#,
            Refused("token_malformed"),
        ),
        header_case(
            "header form feed",
            "{\"alg\":\"HS256\",\u{c}\"kid\":\"hs-1\"}",
            Refused("token_malformed"),
        ),
    ]
}

#[tokio::test]
async fn hand_written_json_is_read_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HsKey::generate();
    let secret_file = write_json(dir.path(), "hs.jwk", &hs.jwk("hs-1"));
    let verifier = JwtVerifier::new(JwtSettings {
        issuers: vec![IssuerSettings {
            issuer: ISSUER.to_owned(),
            audiences: vec![AUDIENCE.to_owned()],
            algorithms: vec![Algorithm::Hs256],
            hmac_secret_file: Some(secret_file),
            ..IssuerSettings::default()
        }],
        leeway: Duration::from_secs(30),
        max_token_bytes: 64 * 1024,
        max_lifetime: soma_auth::DEFAULT_MAX_LIFETIME,
    })
    .await
    .unwrap();

    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let token = mint(&case.header, &case.payload, |i| hs.sign(i));
        match (verifier.verify(&token, NOW).await, &case.expected) {
            (Ok(claims), Expected::Accepted(check)) if check(&claims) => {}
            (Ok(claims), _) => failures.push(format!("{}: accepted as {claims:?}", case.name)),
            (Err(err), Expected::Refused(reason)) if err.reason() == *reason => {}
            (Err(err), _) => failures.push(format!("{}: refused with {}", case.name, err.reason())),
        }
    }
    println!("{} hand-written JSON cases checked", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The plain row is what every other row varies: it must verify as a
    // whole, or every refusal above could have another cause.
    let plain = mint(HEADER, &claims(""), |i| hs.sign(i));
    assert_eq!(verifier.verify(&plain, NOW).await.unwrap().tenant, "t");
}
