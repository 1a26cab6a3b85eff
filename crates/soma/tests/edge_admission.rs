//! The admission pipeline through the real edge, in front of a real
//! Analytics backend over mTLS: every refusal has its exact status and
//! reason, and the backend's own dispatch counter proves that no refused
//! request reached it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};
use soma_gateway::Residency;
use soma_mesh::ServiceKind;

use common::analytics::{analytics_config, start_analytics};
use common::edge::{Reply, client, gateway_signer, now, send, start_edge};
use soma_testing::Ca;

const CHECKPOINT: &str = "/somastack.v1.Analytics/LedgerCheckpoint";

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    claims: Option<Value>,
    body: Option<Value>,
    status: u16,
    reason: &'static str,
}

/// The sum of the backend's dispatch counters over every Analytics method.
fn backend_calls(metrics: &soma_mesh::Metrics) -> u64 {
    let pool = soma_proto::descriptor_pool().unwrap();
    let service = pool.get_service_by_name("somastack.v1.Analytics").unwrap();
    service
        .methods()
        .map(|m| metrics.dispatched_count(&format!("/somastack.v1.Analytics/{}", m.name())))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_reason_and_never_reaches_the_backend() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let signer = gateway_signer();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&signer),
        )
        .await;
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |c| {
            c.residency = Residency::parse("local,eu-west-1,acme=eu-central-1").unwrap();
            c.rate_limit.requests_per_second = 0.01;
            c.rate_limit.burst = 20;
        })
        .await;
        let http = client();
        let url = |p: &str| format!("{}{p}", edge.url);
        let old_auth = now() - 3600;

        let cases = vec![
            Case {
                name: "no token",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: None,
                body: None,
                status: 401,
                reason: "token_missing",
            },
            Case {
                name: "region not served",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(json!({"tenant": "t-us", "region": "us-east-1", "scope": "ledger:read"})),
                body: None,
                status: 403,
                reason: "residency_denied",
            },
            Case {
                name: "region in upper case",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(json!({"tenant": "t-upper", "region": "EU-WEST-1", "scope": "ledger:read"})),
                body: None,
                status: 403,
                reason: "residency_denied",
            },
            Case {
                name: "region with a trailing space",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(json!({"tenant": "t-space", "region": "eu-west-1 ", "scope": "ledger:read"})),
                body: None,
                status: 403,
                reason: "residency_denied",
            },
            Case {
                name: "region with a Unicode hyphen",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(
                    json!({"tenant": "t-uni", "region": "eu\u{2011}west-1", "scope": "ledger:read"}),
                ),
                body: None,
                status: 403,
                reason: "residency_denied",
            },
            Case {
                name: "tenant outside its own regions",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(json!({"tenant": "acme", "region": "eu-west-1", "scope": "ledger:read"})),
                body: None,
                status: 403,
                reason: "residency_denied",
            },
            Case {
                name: "missing capability",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(json!({"tenant": "t-scope", "scope": "drills:read ledger:write"})),
                body: None,
                status: 403,
                reason: "insufficient_scope",
            },
            Case {
                name: "capability prefix is not the capability",
                method: "GET",
                path: "/v1/ledger/checkpoint",
                claims: Some(json!({"tenant": "t-prefix", "scope": "ledger:rea"})),
                body: None,
                status: 403,
                reason: "insufficient_scope",
            },
            Case {
                name: "method tenants may not call",
                method: "POST",
                path: "/v1/billing-events",
                claims: Some(json!({"tenant": "t-bill", "scope": "analytics:ingest"})),
                body: Some(json!({})),
                status: 403,
                reason: "not_tenant_callable",
            },
            Case {
                name: "MFA method without a second factor",
                method: "POST",
                path: "/v1/kill-switches",
                claims: Some(json!({"tenant": "t-mfa", "scope": "ops:killswitch", "amr": ["pwd"]})),
                body: Some(json!({"scope": "KILL_SWITCH_SCOPE_GLOBAL", "engaged": true, "reason": "x"})),
                status: 401,
                reason: "insufficient_user_authentication",
            },
            Case {
                name: "MFA method with a stale second factor",
                method: "POST",
                path: "/v1/kill-switches",
                claims: Some(
                    json!({"tenant": "t-mfa2", "scope": "ops:killswitch", "amr": ["pwd", "otp"], "auth_time": old_auth}),
                ),
                body: Some(json!({"scope": "KILL_SWITCH_SCOPE_GLOBAL", "engaged": true, "reason": "x"})),
                status: 401,
                reason: "insufficient_user_authentication",
            },
            Case {
                name: "moderation: a payment card number",
                method: "POST",
                path: "/v1/capsules/c1:run",
                claims: Some(json!({"tenant": "t-mod", "scope": "capsules:run"})),
                body: Some(
                    json!({"environment": "production", "input": {"note": "card 4111 1111 1111 1111"}}),
                ),
                status: 422,
                reason: "moderation_rejected",
            },
        ];

        let before = backend_calls(&analytics.metrics);
        for case in &cases {
            let token = case.claims.clone().map(|c| edge.token(c));
            let body = case.body.as_ref().map(Value::to_string);
            let reply = send(
                &http,
                case.method,
                &url(case.path),
                token.as_deref(),
                body.as_deref(),
                &[],
            )
            .await;
            assert_eq!(
                reply.status,
                case.status,
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.reason(), case.reason, "{}", case.name);
            let json = reply.json();
            assert!(
                json["request_id"].as_str().is_some_and(|r| !r.is_empty()),
                "{}: request id",
                case.name
            );
            assert_eq!(
                reply.header("x-request-id").as_deref(),
                json["request_id"].as_str(),
                "{}",
                case.name
            );
            if case.status == 401 {
                let challenge = reply.header("www-authenticate").unwrap_or_default();
                assert!(challenge.starts_with("Bearer"), "{}: {challenge}", case.name);
                if case.reason == "insufficient_user_authentication" {
                    assert!(
                        challenge.contains("error=\"insufficient_user_authentication\""),
                        "{challenge}"
                    );
                }
            }
            if case.status == 422 {
                assert_eq!(json["details"][0]["reason"], "pii_card_number", "{json}");
                // The rejection is audited, without the card number itself.
                let id = json["message"]
                    .as_str()
                    .unwrap()
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .to_owned();
                let stored = soma_testing::scalar_text(
                    &edge.db,
                    &format!("SELECT findings FROM moderation_rejections WHERE decision_id = '{id}'"),
                )
                .await;
                assert!(
                    stored.contains("pii_card_number") && !stored.contains("4111"),
                    "{stored}"
                );
            }
        }
        assert_eq!(
            backend_calls(&analytics.metrics),
            before,
            "a refused request reached the backend"
        );

        // Admitted: the backend is called exactly once per request.
        let ok = edge.token(json!({"tenant": "acme", "region": "eu-central-1", "scope": "ledger:read"}));
        let reply = send(&http, "GET", &url("/v1/ledger/checkpoint"), Some(&ok), None, &[]).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(analytics.metrics.dispatched_count(CHECKPOINT), 1);

        // Rate limit: a burst of 20, then 429 with Retry-After; the backend saw
        // only the admitted ones.
        let token = edge.token(json!({"tenant": "t-burst", "scope": "ledger:read"}));
        let mut admitted = 0;
        let mut limited = None;
        for _ in 0..25 {
            let r = send(
                &http,
                "GET",
                &url("/v1/ledger/checkpoint"),
                Some(&token),
                None,
                &[],
            )
            .await;
            match r.status {
                200 => admitted += 1,
                429 => {
                    limited = Some(r);
                    break;
                }
                other => panic!("unexpected {other}"),
            }
        }
        let limited: Reply = limited.expect("the burst was never limited");
        assert_eq!(admitted, 20);
        assert_eq!(limited.reason(), "rate_limited");
        assert!(limited.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
        assert_eq!(analytics.metrics.dispatched_count(CHECKPOINT), 21);
        // The one refusal is on the gateway's /metrics, by its reason and as
        // the one 429 answer: no other request of this test was rate limited.
        let exposition = soma_testing::http_get(edge.admin, "/metrics").await;
        assert!(
            exposition.contains("soma_edge_refusals_total{reason=\"rate_limited\"} 1\n"),
            "{}: {exposition}",
            stores.label
        );
        let answered_429: u64 = exposition
            .lines()
            .filter(|l| l.starts_with("soma_edge_requests_total{") && l.contains(",code=\"429\"} "))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(answered_429, 1, "{}: {exposition}", stores.label);
        // Admission refused a routed request: it counts under its route.
        assert!(
            exposition.contains(&format!(
                "soma_edge_requests_total{{route=\"{CHECKPOINT}\",code=\"429\"}} 1\n"
            )),
            "{}: {exposition}",
            stores.label
        );

        // Kill switches: set with MFA, seen at once by this replica; every scope
        // answers 503 with Retry-After and never reaches the backend. Switches
        // beyond one tenant need an operator: a token of the operator issuer.
        let operator = edge.operator_token(json!({"tenant": "ops", "sub": "alice@ops", "scope": "ops:killswitch ledger:read", "amr": ["pwd", "hwk"]}));
        let t_kill = edge.token(json!({"tenant": "t-kill", "scope": "ledger:read"}));
        let t_other = edge.token(json!({"tenant": "t-other", "scope": "ledger:read"}));
        for (scope, target, victim) in [
            ("KILL_SWITCH_SCOPE_TENANT", "t-kill", &t_kill),
            ("KILL_SWITCH_SCOPE_METHOD", CHECKPOINT, &t_other),
            ("KILL_SWITCH_SCOPE_GLOBAL", "", &t_other),
        ] {
            let set = json!({"scope": scope, "target": target, "engaged": true, "reason": "incident 42", "retryAfterSeconds": 30});
            let r = send(
                &http,
                "POST",
                &url("/v1/kill-switches"),
                Some(&operator),
                Some(&set.to_string()),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["setBy"], "alice@ops");
            let calls = backend_calls(&analytics.metrics);
            let r = send(
                &http,
                "GET",
                &url("/v1/ledger/checkpoint"),
                Some(victim),
                None,
                &[],
            )
            .await;
            assert_eq!(
                (r.status, r.reason().as_str()),
                (503, "kill_switch_engaged"),
                "{scope}"
            );
            assert_eq!(r.header("retry-after").as_deref(), Some("30"));
            assert_eq!(
                backend_calls(&analytics.metrics),
                calls,
                "{scope}: the backend was called"
            );
            if scope == "KILL_SWITCH_SCOPE_TENANT" {
                let r = send(
                    &http,
                    "GET",
                    &url("/v1/ledger/checkpoint"),
                    Some(&t_other),
                    None,
                    &[],
                )
                .await;
                assert_eq!(r.status, 200, "another tenant is not stopped");
            }
            // Listing and clearing stay possible while a switch is engaged.
            let clear = json!({"scope": scope, "target": target, "engaged": false, "reason": "resolved"});
            let r = send(
                &http,
                "POST",
                &url("/v1/kill-switches"),
                Some(&operator),
                Some(&clear.to_string()),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let r = send(
                &http,
                "GET",
                &url("/v1/ledger/checkpoint"),
                Some(victim),
                None,
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{scope}: cleared");
        }
        let list = send(
            &http,
            "GET",
            &url("/v1/kill-switches"),
            Some(&operator),
            None,
            &[],
        )
        .await;
        assert_eq!(list.status, 200);
        assert_eq!(list.json()["switches"].as_array().unwrap().len(), 3);
        let audit = soma_testing::scalar(
            &edge.db,
            "SELECT COUNT(*) FROM kill_switch_audit WHERE set_by = 'alice@ops'",
        )
        .await;
        assert_eq!(audit, 6);

        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

/// A compact JWS with this header and claims, MACed with `secret`.
fn forge(secret: &[u8], header: &Value, claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{input}.{}",
        b64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_401_with_their_own_reason_at_the_edge() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        let ca = Ca::new();
        let signer = gateway_signer();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&signer),
        )
        .await;
        let edge = start_edge(&ca, Some(&analytics), stores.of(ServiceKind::Gateway), |_| {}).await;
        let http = client();
        let url = format!("{}/v1/ledger/checkpoint", edge.url);
        let t = now();
        let good = json!({"iss": "soma-dev", "aud": "somastack", "sub": "u", "tenant": "t", "region": "local", "scope": "ledger:read", "iat": t, "exp": t + 300});
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let hs = json!({"alg": "HS256", "typ": "JWT", "kid": edge.kid});
        let valid = forge(&edge.secret, &hs, &good);
        let none_token = |alg: &str| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b64.encode(json!({"alg": alg, "kid": edge.kid}).to_string()),
                b64.encode(good.to_string())
            )
        };
        let cases: Vec<(&str, String, &str)> = vec![
            ("alg none", none_token("none"), "token_malformed"),
            (
                "alg None with a signature",
                format!("{}AAAA", none_token("None")),
                "alg_not_allowed",
            ),
            (
                "alg NONE with a signature",
                format!("{}AAAA", none_token("NONE")),
                "alg_not_allowed",
            ),
            (
                "unknown kid",
                forge(&edge.secret, &json!({"alg": "HS256", "kid": "other"}), &good),
                "unknown_kid",
            ),
            (
                "kid with a path",
                forge(
                    &edge.secret,
                    &json!({"alg": "HS256", "kid": "../../etc/passwd"}),
                    &good,
                ),
                "bad_kid",
            ),
            (
                "kid with SQL",
                forge(
                    &edge.secret,
                    &json!({"alg": "HS256", "kid": "' OR 1=1 --"}),
                    &good,
                ),
                "bad_kid",
            ),
            (
                "jku elsewhere",
                forge(
                    &edge.secret,
                    &json!({"alg": "HS256", "kid": edge.kid, "jku": "http://127.0.0.1:1/jwks"}),
                    &good,
                ),
                "untrusted_key_reference",
            ),
            (
                "x5u elsewhere",
                forge(
                    &edge.secret,
                    &json!({"alg": "HS256", "kid": edge.kid, "x5u": "http://127.0.0.1:1/x5"}),
                    &good,
                ),
                "untrusted_key_reference",
            ),
            (
                "unknown crit",
                forge(
                    &edge.secret,
                    &json!({"alg": "HS256", "kid": edge.kid, "crit": ["exp"], "exp": 1}),
                    &good,
                ),
                "unknown_crit",
            ),
            (
                "string exp",
                forge(&edge.secret, &hs, &with("exp", json!((t + 300).to_string()))),
                "invalid_claim_type",
            ),
            (
                "expired",
                forge(&edge.secret, &hs, &with("exp", json!(t - 120))),
                "expired",
            ),
            (
                "nbf in the future",
                forge(&edge.secret, &hs, &with("nbf", json!(t + 600))),
                "not_yet_valid",
            ),
            (
                "iat in the future beyond the leeway",
                forge(&edge.secret, &hs, &with("iat", json!(t + 600))),
                "issued_in_future",
            ),
            (
                "exp = i64::MAX without iat",
                forge(&edge.secret, &hs, &{
                    let mut c = with("exp", json!(i64::MAX));
                    c.as_object_mut().unwrap().remove("iat");
                    c
                }),
                "lifetime_too_long",
            ),
            (
                "exp - iat = 24 h + 1 s",
                forge(&edge.secret, &hs, &with("exp", json!(t + 24 * 3600 + 1))),
                "lifetime_too_long",
            ),
            (
                "without iat, exp beyond now + 24 h + leeway",
                forge(&edge.secret, &hs, &{
                    let mut c = with("exp", json!(t + 24 * 3600 + 30 + 120));
                    c.as_object_mut().unwrap().remove("iat");
                    c
                }),
                "lifetime_too_long",
            ),
            (
                "operator claim as the string \"true\"",
                forge(&edge.secret, &hs, &with("operator", json!("true"))),
                "invalid_claim_type",
            ),
            (
                "iss prefix",
                forge(&edge.secret, &hs, &with("iss", json!("soma-de"))),
                "unknown_issuer",
            ),
            (
                "iss suffix",
                forge(&edge.secret, &hs, &with("iss", json!("soma-dev2"))),
                "unknown_issuer",
            ),
            (
                "aud mismatch",
                forge(&edge.secret, &hs, &with("aud", json!("another"))),
                "audience_mismatch",
            ),
            (
                "oversized",
                forge(&edge.secret, &hs, &with("pad", json!("p".repeat(9000)))),
                "token_too_large",
            ),
            (
                "two signatures",
                format!("{valid}.{}", valid.rsplit('.').next().unwrap()),
                "token_malformed",
            ),
            ("trailing garbage", format!("{valid}~~"), "token_malformed"),
            (
                "wrong key",
                forge(b"a-different-secret-of-32-bytes-!", &hs, &good),
                "bad_signature",
            ),
        ];
        let before = backend_calls(&analytics.metrics);
        for (name, token, reason) in &cases {
            let r = send(&http, "GET", &url, Some(token), None, &[]).await;
            assert_eq!(
                (r.status, r.reason().as_str()),
                (401, *reason),
                "{name}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(
                r.header("www-authenticate").unwrap().contains("invalid_token"),
                "{name}"
            );
        }
        assert_eq!(backend_calls(&analytics.metrics), before);
        let r = send(&http, "GET", &url, Some(&valid), None, &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // The lifetime boundary: exactly the default max_lifetime is accepted.
        let longest = forge(&edge.secret, &hs, &with("exp", json!(t + 24 * 3600)));
        let r = send(&http, "GET", &url, Some(&longest), None, &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_needs_no_token_and_only_configured_origins_are_allowed() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let ca = Ca::new();
        let edge = start_edge(&ca, None, stores.of(ServiceKind::Gateway), |c| {
            c.cors_allowed_origins = vec!["https://app.example".to_owned()];
        })
        .await;
        let http = client();
        let url = format!("{}/v1/whoami", edge.url);
        let preflight = [
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ];
        let r = send(&http, "OPTIONS", &url, None, None, &preflight).await;
        assert_eq!(r.status, 204);
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some("https://app.example")
        );
        assert!(
            r.header("access-control-allow-headers")
                .unwrap()
                .contains("authorization")
        );
        let evil = [
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ];
        let r = send(&http, "OPTIONS", &url, None, None, &evil).await;
        assert_eq!((r.status, r.reason().as_str()), (403, "cors_origin_denied"));
        assert!(r.header("access-control-allow-origin").is_none());
        // A real request from the allowed origin carries the CORS headers, also
        // on a refusal (so the browser can read the error).
        let r = send(
            &http,
            "GET",
            &url,
            None,
            None,
            &[("origin", "https://app.example")],
        )
        .await;
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("access-control-allow-origin").as_deref(),
            Some("https://app.example")
        );
        assert!(
            r.header("access-control-expose-headers")
                .unwrap()
                .contains("x-request-id")
        );
        let r = send(
            &http,
            "GET",
            &url,
            None,
            None,
            &[("origin", "https://evil.example")],
        )
        .await;
        assert!(r.header("access-control-allow-origin").is_none());
        edge.stop().await;
        stores.cleanup().await;
    }
}
