//! Wycheproof JSON Web Signature vectors through `verify_compact_jws`:
//! every invalid case is refused, every valid case of a supported algorithm
//! is accepted with its payload. Reads
//! `../shared/vectors/wycheproof/json_web_signature_test.json` (or the file
//! named by `SOMA_WYCHEPROOF_JWS`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::engine::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use soma_auth::{Jwk, verify_compact_jws};

fn vectors() -> Value {
    let path = std::env::var_os("SOMA_WYCHEPROOF_JWS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/vectors/wycheproof/json_web_signature_test.json")
        });
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "Wycheproof vectors missing at {} ({e}): the conformance data in ../shared/vectors is required",
            path.display()
        )
    });
    serde_json::from_slice(&text).unwrap()
}

/// The group's verification key: `public` when present, else `private`
/// (only `oct` groups lack `public`, and for them the secret is the key).
fn group_key(group: &Value) -> &Value {
    group.get("public").unwrap_or(&group["private"])
}

#[test]
fn wycheproof_json_web_signature() {
    let doc = vectors();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let (mut invalid_in_file, mut total) = (0, 0);
    let mut contradictions = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        let key = Jwk::from_json(group_key(group));
        let tests = group["tests"].as_array().unwrap();
        // The jws of each valid case of this group, to spot an invalid case
        // that is byte-identical to a valid one (no verifier can satisfy both).
        let valid_jws: BTreeMap<&str, u64> = tests
            .iter()
            .filter(|t| t["result"] == "valid")
            .map(|t| (t["jws"].as_str().unwrap(), t["tcId"].as_u64().unwrap()))
            .collect();
        for test in tests {
            total += 1;
            let id = test["tcId"].as_u64().unwrap();
            let comment = test["comment"].as_str().unwrap_or("");
            let jws = test["jws"]
                .as_str()
                .expect("compact or JSON serialization as a string");
            let valid = match test["result"].as_str().unwrap() {
                "valid" => true,
                "invalid" => false,
                other => panic!("tcId {id}: unexpected result {other}"),
            };
            if !valid {
                invalid_in_file += 1;
            }
            let outcome = key
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|key| verify_compact_jws(jws, key));
            // One group's key is 32 zero bytes: refused at load, so every case
            // of that group, valid or not, is refused.
            if let Err(e) = &key
                && e.to_string().contains(soma_auth::ALL_ZERO_HMAC_KEY)
            {
                assert!(outcome.is_err(), "tcId {id}");
                let label = if valid {
                    "valid refused (all-zero HMAC key)"
                } else {
                    "invalid refused (no usable key)"
                };
                *counts.entry(label).or_default() += 1;
                continue;
            }
            if !valid && let Some(twin) = valid_jws.get(jws) {
                assert!(
                    outcome.is_ok(),
                    "tcId {id} is identical to valid tcId {twin} and must verify like it"
                );
                contradictions.push(format!(
                    "tcId {id} ({comment}): invalid, but identical to valid tcId {twin}"
                ));
                continue;
            }
            if valid
                && !jws
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                // RFC 7515 §2: base64url has no other characters, and the
                // verifier refuses them rather than skipping them.
                let reason = outcome.as_ref().map_err(|e| e.reason());
                assert_eq!(reason.err(), Some("token_malformed"), "tcId {id}");
                contradictions.push(format!(
                    "tcId {id} ({comment}): valid, but not base64url: refused"
                ));
                continue;
            }
            match (valid, &key, outcome) {
                (false, Err(_), Err(_)) => *counts.entry("invalid refused (no usable key)").or_default() += 1,
                (false, Ok(_), Err(_)) => *counts.entry("invalid refused by verification").or_default() += 1,
                (false, _, Ok(_)) => failures.push(format!("tcId {id} ({comment}): invalid case accepted")),
                (true, Err(e), _) => {
                    // A key this crate does not support (RS384, PS256, ES512...).
                    let alg = group_key(group)["alg"].as_str().unwrap_or("?");
                    assert!(
                        !matches!(alg, "HS256" | "RS256" | "ES256" | "EdDSA"),
                        "tcId {id}: key of supported alg {alg} refused: {e}"
                    );
                    *counts.entry("valid skipped (unsupported algorithm)").or_default() += 1;
                }
                (true, Ok(_), Ok(payload)) => {
                    let expected = URL_SAFE_NO_PAD.decode(jws.split('.').nth(1).unwrap()).unwrap();
                    if payload == expected {
                        *counts.entry("valid accepted").or_default() += 1;
                    } else {
                        failures.push(format!("tcId {id} ({comment}): wrong payload"));
                    }
                }
                (true, Ok(_), Err(e)) => {
                    failures.push(format!(
                        "tcId {id} ({comment}): valid case refused: {} ({e})",
                        e.reason()
                    ));
                }
            }
        }
    }
    for (outcome, n) in &counts {
        println!("{outcome}: {n}");
    }
    for line in &contradictions {
        println!("vector contradicting the specification or another vector: {line}");
    }
    // Invalid tcIds 367 and 370 repeat valid tcId 357 verbatim, and valid
    // 372/373 carry a '?' inside a part; all are in the group whose key is
    // all zero bytes, which is refused. Any other disagreement fails.
    assert!(contradictions.is_empty(), "{contradictions:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(total as u64, doc["numberOfTests"].as_u64().unwrap());
    let invalid_checked =
        counts["invalid refused (no usable key)"] + counts["invalid refused by verification"];
    let invalid_twins = contradictions
        .iter()
        .filter(|l| l.contains("identical to valid"))
        .count();
    println!(
        "invalid cases: {invalid_in_file} in the file, {invalid_checked} refused, {invalid_twins} identical to a valid case"
    );
    assert_eq!(
        invalid_checked + invalid_twins,
        invalid_in_file,
        "every invalid case of the file was checked"
    );
    let valid_refused = contradictions.len() - invalid_twins;
    let valid_seen = counts["valid accepted"]
        + counts["valid skipped (unsupported algorithm)"]
        + counts
            .get("valid refused (all-zero HMAC key)")
            .copied()
            .unwrap_or(0)
        + valid_refused;
    assert_eq!(
        valid_seen,
        total - invalid_in_file,
        "every valid case of the file was checked"
    );
    // HS256, RS256 and ES256 valid vectors (the file has no EdDSA group).
    assert!(
        counts["valid accepted"] >= 13,
        "the supported algorithms' valid cases were exercised"
    );
}
