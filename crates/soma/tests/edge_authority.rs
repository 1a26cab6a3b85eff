//! Who may do what: one row per (principal, action), through the real edge
//! and the gateway's and Analytics' mesh listeners over mTLS.
//!
//! Principals: a tenant token with every scope and a fresh second factor;
//! the same token claiming `"operator": true` (from the tenant issuer, so
//! the claim grants nothing); a token of the operator issuer; an operator
//! SVID (`/operator/alice`) calling the mesh listeners directly. Actions
//! that reach beyond one tenant (GLOBAL and METHOD switches, another
//! tenant's switch, another tenant's export) are refused to the first two
//! with 403 and the reason `operator_required`, and allowed to operators;
//! each allowed change is checked by its effect (the switch stops requests,
//! the export holds the other tenant's rows). A tenant lists only its own
//! tenant's switch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::{Value, json};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_proto::v1::gateway_client::GatewayClient;
use tonic::Code;

use common::analytics::{analytics_config, start_analytics};
use common::edge::{Edge, Reply, client, every_scope, gateway_signer, now, send, start_edge};
use soma_testing::{Ca, Running};

const CHECKPOINT: &str = "/somastack.v1.Analytics/LedgerCheckpoint";
const OPERATOR_SVID: &str = "/operator/alice";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Principal {
    /// Tenant `acme`, every scope, MFA.
    Tenant,
    /// Tenant `acme`, every scope, MFA, `"operator": true` from the tenant
    /// issuer.
    TenantClaimingOperator,
    /// Tenant `ops`, every scope, MFA, a token of the operator issuer.
    OperatorToken,
    /// The SVID `/operator/alice` over mTLS, no token.
    OperatorSvid,
}

impl Principal {
    /// The tenant the principal acts for, if any.
    fn tenant(self) -> Option<&'static str> {
        match self {
            Self::Tenant | Self::TenantClaimingOperator => Some("acme"),
            Self::OperatorToken => Some("ops"),
            Self::OperatorSvid => None,
        }
    }
}

/// The kill switch a set action engages; listing and exporting have their
/// own rows below, one per principal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Global,
    Method,
    /// A TENANT switch on `globex`.
    OtherTenant,
    /// A TENANT switch on the principal's own tenant.
    OwnTenant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expected {
    Allowed,
    /// 403 / PERMISSION_DENIED, reason `operator_required`.
    OperatorRequired,
}

struct Row {
    principal: Principal,
    action: Action,
    expected: Expected,
}

/// What an action answered: success with its JSON, or a refusal.
#[derive(Debug)]
enum Outcome {
    Ok(Value),
    Refused {
        /// HTTP status at the edge; for a gRPC call over mTLS, the status
        /// the edge maps the code to.
        status: u16,
        code: Code,
        reason: String,
    },
}

struct World {
    ca: Ca,
    edge: Edge,
    analytics: Running,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    from: i64,
    to: i64,
}

impl World {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.edge.url)
    }

    /// The principal's bearer token (`None` for the SVID).
    fn token(&self, p: Principal) -> Option<String> {
        // Every scope and a fresh second factor: nothing but authority is
        // missing when a row is refused.
        let mut claims = json!({"scope": every_scope(), "amr": ["pwd", "otp"], "auth_time": now()});
        match p {
            Principal::Tenant => {
                claims["tenant"] = json!("acme");
                claims["sub"] = json!("bob@acme");
                Some(self.edge.token(claims))
            }
            Principal::TenantClaimingOperator => {
                claims["tenant"] = json!("acme");
                claims["sub"] = json!("mallory@acme");
                claims["operator"] = json!(true);
                Some(self.edge.token(claims))
            }
            Principal::OperatorToken => {
                claims["tenant"] = json!("ops");
                claims["sub"] = json!("alice@ops");
                Some(self.edge.operator_token(claims))
            }
            Principal::OperatorSvid => None,
        }
    }

    /// The (scope, target) of a set action for `p`.
    fn switch(p: Principal, action: Action) -> (pb::KillSwitchScope, String) {
        use pb::KillSwitchScope as S;
        match action {
            Action::Global => (S::Global, String::new()),
            Action::Method => (S::Method, CHECKPOINT.to_owned()),
            Action::OtherTenant => (S::Tenant, "globex".to_owned()),
            Action::OwnTenant => (S::Tenant, p.tenant().unwrap().to_owned()),
        }
    }

    /// Engages or clears a switch as `p`.
    async fn set(&self, p: Principal, action: Action, engaged: bool) -> Outcome {
        let (scope, target) = Self::switch(p, action);
        let reason = if engaged { "authority test" } else { "resolved" };
        match self.token(p) {
            Some(token) => {
                let body = json!({"scope": scope.as_str_name(), "target": target, "engaged": engaged,
                                  "reason": reason, "retryAfterSeconds": 7});
                let r = send(
                    &self.http,
                    "POST",
                    &self.url("/v1/kill-switches"),
                    Some(&token),
                    Some(&body.to_string()),
                    &[],
                )
                .await;
                edge_outcome(&r)
            }
            None => {
                let mut gateway = GatewayClient::new(self.edge.mesh_channel(&self.ca, OPERATOR_SVID));
                let request = pb::SetKillSwitchRequest {
                    scope: scope as i32,
                    target,
                    engaged,
                    reason: reason.to_owned(),
                    retry_after_seconds: 7,
                };
                match gateway.set_kill_switch(request).await {
                    Ok(r) => {
                        let s = r.into_inner();
                        Outcome::Ok(json!({"setBy": s.set_by, "engaged": s.engaged, "target": s.target}))
                    }
                    Err(status) => grpc_outcome(&status),
                }
            }
        }
    }

    /// The switches `p` sees, as (scope name, target, set_by).
    async fn list(&self, p: Principal) -> Result<Vec<(String, String, String)>, Outcome> {
        match self.token(p) {
            Some(token) => {
                let r = send(
                    &self.http,
                    "GET",
                    &self.url("/v1/kill-switches"),
                    Some(&token),
                    None,
                    &[],
                )
                .await;
                match edge_outcome(&r) {
                    Outcome::Ok(json) => Ok(json["switches"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|s| {
                            (
                                s["scope"].as_str().unwrap().to_owned(),
                                s["target"].as_str().unwrap_or_default().to_owned(),
                                s["setBy"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()),
                    refused => Err(refused),
                }
            }
            None => {
                let mut gateway = GatewayClient::new(self.edge.mesh_channel(&self.ca, OPERATOR_SVID));
                match gateway.list_kill_switches(pb::ListKillSwitchesRequest {}).await {
                    Ok(r) => Ok(r
                        .into_inner()
                        .switches
                        .into_iter()
                        .map(|s| {
                            let scope = pb::KillSwitchScope::try_from(s.scope).unwrap();
                            (scope.as_str_name().to_owned(), s.target, s.set_by)
                        })
                        .collect()),
                    Err(status) => Err(grpc_outcome(&status)),
                }
            }
        }
    }

    /// `globex`'s capsule runs exported as `p`: the export document, or the
    /// refusal.
    async fn export_globex(&self, p: Principal) -> Outcome {
        match self.token(p) {
            Some(token) => {
                let q = format!(
                    "/v1/exports/capsule-runs?tenant=globex&from={}&to={}",
                    rfc3339(self.from),
                    rfc3339(self.to)
                );
                let r = send(&self.http, "GET", &self.url(&q), Some(&token), None, &[]).await;
                if r.status != 200 {
                    return edge_outcome(&r);
                }
                let text = String::from_utf8(r.body.to_vec()).unwrap();
                let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
                if let Some(error) = lines.iter().find_map(|l| l.get("error")) {
                    // A refusal after the status line: the same table applies.
                    return Outcome::Refused {
                        status: 200,
                        code: Code::from(error["code"].as_i64().unwrap() as i32),
                        reason: error["reason"].as_str().unwrap().to_owned(),
                    };
                }
                let data: Vec<u8> = lines
                    .iter()
                    .filter_map(|l| l["data"].as_str())
                    .flat_map(|d| base64::engine::general_purpose::STANDARD.decode(d).unwrap())
                    .collect();
                Outcome::Ok(serde_json::from_slice(&data).unwrap())
            }
            None => {
                let store = self.ca.store(OPERATOR_SVID, std::time::Duration::from_secs(600));
                let mut analytics = AnalyticsClient::new(soma_testing::channel(
                    store,
                    self.analytics.addr,
                    &self.analytics.id,
                ));
                let request = pb::ExportRequest {
                    tenant: "globex".to_owned(),
                    from: Some(prost_types::Timestamp {
                        seconds: self.from,
                        nanos: 0,
                    }),
                    to: Some(prost_types::Timestamp {
                        seconds: self.to,
                        nanos: 0,
                    }),
                    tool: String::new(),
                    service: String::new(),
                };
                let mut stream = match analytics.export_capsule_runs(request).await {
                    Ok(r) => r.into_inner(),
                    Err(status) => return grpc_outcome(&status),
                };
                let mut data = Vec::new();
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(chunk) => data.extend_from_slice(&chunk.data),
                        Err(status) => return grpc_outcome(&status),
                    }
                }
                Outcome::Ok(serde_json::from_slice(&data).unwrap())
            }
        }
    }

    /// Whether a request of `victim` to the checkpoint is stopped by an
    /// engaged kill switch (503 `kill_switch_engaged`) or served (200).
    async fn stopped(&self, victim: &str) -> bool {
        let token = self.edge.token(json!({"tenant": victim, "scope": "ledger:read"}));
        let r = send(
            &self.http,
            "GET",
            &self.url("/v1/ledger/checkpoint"),
            Some(&token),
            None,
            &[],
        )
        .await;
        match (r.status, r.reason().as_str()) {
            (503, "kill_switch_engaged") => {
                assert_eq!(r.header("retry-after").as_deref(), Some("7"));
                true
            }
            (200, _) => false,
            other => panic!(
                "{victim}: unexpected {other:?}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
}

fn edge_outcome(r: &Reply) -> Outcome {
    if r.status == 200 {
        return Outcome::Ok(r.json());
    }
    let json = r.json();
    Outcome::Refused {
        status: r.status,
        code: Code::from(json["code"].as_i64().unwrap() as i32),
        reason: r.reason(),
    }
}

fn grpc_outcome(status: &tonic::Status) -> Outcome {
    Outcome::Refused {
        status: soma_gateway::edge::http_status(status.code()).as_u16(),
        code: status.code(),
        reason: status
            .metadata()
            .get(soma_mesh::REASON_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
    }
}

fn rfc3339(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// Who a victim of a set action is: a tenant whose request the switch stops.
fn victim(p: Principal, action: Action) -> &'static str {
    match action {
        Action::Global | Action::Method => "bystander",
        Action::OtherTenant => "globex",
        Action::OwnTenant => p.tenant().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_tenant_actions_need_an_operator_and_a_tenant_sees_only_its_own_switch() {
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
            c.rate_limit.requests_per_second = 1000.0;
            c.rate_limit.burst = 1000;
        })
        .await;
        let t0 = now() - 60;
        let world = World {
            ca,
            edge,
            analytics,
            http: client(),
            from: t0 - 60,
            to: now() + 600,
        };

        // Each tenant's own data, recorded through the edge with its own token.
        for (tenant, event) in [("acme", "a-1"), ("globex", "g-1")] {
            let token = world
                .edge
                .token(json!({"tenant": tenant, "scope": "analytics:ingest"}));
            let run = json!({"eventId": event, "capsuleId": "c1", "runId": format!("r-{event}"),
                             "outcome": "RUN_OUTCOME_SUCCEEDED", "startedAt": rfc3339(t0), "duration": "1s"});
            let r = send(
                &world.http,
                "POST",
                &world.url("/v1/capsule-runs"),
                Some(&token),
                Some(&run.to_string()),
                &[],
            )
            .await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        }

        use Action::*;
        use Expected::*;
        use Principal::*;
        let row = |principal, action, expected| Row {
            principal,
            action,
            expected,
        };
        let sets = [
            row(Tenant, Global, OperatorRequired),
            row(Tenant, Method, OperatorRequired),
            row(Tenant, OtherTenant, OperatorRequired),
            row(Tenant, OwnTenant, Allowed),
            row(TenantClaimingOperator, Global, OperatorRequired),
            row(TenantClaimingOperator, Method, OperatorRequired),
            row(TenantClaimingOperator, OtherTenant, OperatorRequired),
            row(TenantClaimingOperator, OwnTenant, Allowed),
            row(OperatorToken, Global, Allowed),
            row(OperatorToken, Method, Allowed),
            row(OperatorToken, OtherTenant, Allowed),
            row(OperatorToken, OwnTenant, Allowed),
            row(OperatorSvid, Global, Allowed),
            row(OperatorSvid, Method, Allowed),
            row(OperatorSvid, OtherTenant, Allowed),
        ];
        let mut failures = Vec::new();
        for Row {
            principal,
            action,
            expected,
        } in sets
        {
            let name = format!("{principal:?} sets {action:?}");
            let victim = victim(principal, action);
            assert!(!world.stopped(victim).await, "{name}: stopped before the change");
            let outcome = world.set(principal, action, true).await;
            match (expected, &outcome) {
                (OperatorRequired, Outcome::Refused { status, code, reason }) => {
                    if (*status, *code, reason.as_str()) != (403, Code::PermissionDenied, "operator_required")
                    {
                        failures.push(format!("{name}: refused with {status} {code:?} {reason}"));
                    }
                    // Refused means nothing changed: the victim is still served.
                    if world.stopped(victim).await {
                        failures.push(format!("{name}: refused, yet the switch engaged"));
                    }
                }
                (Allowed, Outcome::Ok(json)) => {
                    let expected_by = match principal {
                        OperatorSvid => world.ca.id(OPERATOR_SVID).to_string(),
                        Tenant => "bob@acme".to_owned(),
                        TenantClaimingOperator => "mallory@acme".to_owned(),
                        OperatorToken => "alice@ops".to_owned(),
                    };
                    assert_eq!(json["setBy"], expected_by.as_str(), "{name}");
                    // The effect: the victim's request is stopped, then served
                    // again once the same principal clears the switch.
                    if !world.stopped(victim).await {
                        failures.push(format!("{name}: allowed, but the switch did not stop {victim}"));
                    }
                    match world.set(principal, action, false).await {
                        Outcome::Ok(_) => {}
                        other => failures.push(format!("{name}: clearing answered {other:?}")),
                    }
                    assert!(
                        !world.stopped(victim).await,
                        "{name}: still stopped after clearing"
                    );
                }
                (expected, outcome) => {
                    failures.push(format!("{name}: expected {expected:?}, got {outcome:?}"));
                    // Undo a change that should not have happened, so that the
                    // next rows start from nothing engaged and report for
                    // themselves.
                    if matches!(outcome, Outcome::Ok(_)) {
                        world.set(principal, action, false).await;
                    }
                }
            }
        }

        // Every switch written above, as an operator sees them: the tenants'
        // own (acme, ops), another tenant's (globex), GLOBAL and METHOD.
        let mut all = world.list(OperatorSvid).await.unwrap();
        all.sort();
        let targets: Vec<(&str, &str)> = all.iter().map(|(s, t, _)| (s.as_str(), t.as_str())).collect();
        assert_eq!(
            targets,
            [
                ("KILL_SWITCH_SCOPE_GLOBAL", ""),
                ("KILL_SWITCH_SCOPE_METHOD", CHECKPOINT),
                ("KILL_SWITCH_SCOPE_TENANT", "acme"),
                ("KILL_SWITCH_SCOPE_TENANT", "globex"),
                ("KILL_SWITCH_SCOPE_TENANT", "ops"),
            ]
        );
        for principal in [Tenant, TenantClaimingOperator, OperatorToken, OperatorSvid] {
            let name = format!("{principal:?} ListSwitches");
            let mut seen = match world.list(principal).await {
                Ok(seen) => seen,
                Err(refused) => {
                    failures.push(format!("{name}: {refused:?}"));
                    continue;
                }
            };
            seen.sort();
            let expected: Vec<_> = match principal {
                // A tenant sees its own tenant's switch only: not globex's, not
                // ops', not GLOBAL or METHOD, and so not who set them.
                Tenant | TenantClaimingOperator => all
                    .iter()
                    .filter(|(s, t, _)| s == "KILL_SWITCH_SCOPE_TENANT" && t == "acme")
                    .cloned()
                    .collect(),
                OperatorToken | OperatorSvid => all.clone(),
            };
            if seen != expected {
                failures.push(format!("{name}: saw {seen:?}, expected {expected:?}"));
            }
        }

        // Another tenant's analytics: only an operator exports globex's rows.
        for (principal, expected) in [
            (Tenant, OperatorRequired),
            (TenantClaimingOperator, OperatorRequired),
            (OperatorToken, Allowed),
            (OperatorSvid, Allowed),
        ] {
            let name = format!("{principal:?} ExportOtherTenant");
            match (expected, world.export_globex(principal).await) {
                (OperatorRequired, Outcome::Refused { status, code, reason }) => {
                    if (status, code, reason.as_str()) != (403, Code::PermissionDenied, "operator_required") {
                        failures.push(format!("{name}: refused with {status} {code:?} {reason}"));
                    }
                }
                (Allowed, Outcome::Ok(document)) => {
                    let ids: Vec<&str> = document["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["event_id"].as_str().unwrap())
                        .collect();
                    if (document["tenant"].as_str(), ids.as_slice()) != (Some("globex"), ["g-1"].as_slice()) {
                        failures.push(format!("{name}: exported {document}"));
                    }
                }
                (expected, outcome) => {
                    failures.push(format!("{name}: expected {expected:?}, got {outcome:?}"));
                }
            }
        }
        // A tenant still exports its own rows (the refusal is about the other
        // tenant, not about exports).
        let acme = world.token(Tenant).unwrap();
        let q = format!(
            "/v1/exports/capsule-runs?from={}&to={}",
            rfc3339(world.from),
            rfc3339(world.to)
        );
        let r = send(&world.http, "GET", &world.url(&q), Some(&acme), None, &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("\"data\""));

        assert!(
            failures.is_empty(),
            "{} rows failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        world.edge.stop().await;
        world.analytics.stop().await;
        stores.cleanup().await;
    }
}
