//! The admission pipeline, shared by the JSON edge and the gRPC ingress.
//!
//! Two phases. [`Admission::admit`] decides everything the request head
//! can decide, before one byte of the body is read: the bearer token (JWT,
//! RFC 8725), residency, capability and MFA from the method's policy, kill
//! switches and the tenant's rate limit — so a request without a valid
//! token, or one that would be refused anyway, never makes the edge read or
//! buffer its body. [`Admission::moderate`] then runs, for methods whose
//! policy asks for it, on the final message the backend will receive (path,
//! query and body merged), and binds its decision to that message's digest.
//! The first stage that refuses decides the answer: a [`Refusal`] with its
//! HTTP status, gRPC code and a stable reason; every refusal is logged
//! once, here.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use serde_json::{Value, json};
use soma_auth::{JwtVerifier, TokenClaims};
use soma_proto::PolicyView;
use soma_store::{Database, retry_on_pool};

use crate::config::Residency;
use crate::context::{Moderated, RequestContext, RequestId};
use crate::killswitch::KillSwitches;
use crate::moderation::{Decision, Moderator};
use crate::ratelimit::RateLimiter;
use crate::refusal::Refusal;

/// `amr` values (RFC 8176) that prove a factor beyond a password.
const SECOND_FACTORS: [&str; 12] = [
    "mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "sc",
];

/// The methods that set and list kill switches: never stopped by one.
const KILL_SWITCH_METHODS: [&str; 2] = [
    "/somastack.v1.Gateway/SetKillSwitch",
    "/somastack.v1.Gateway/ListKillSwitches",
];

/// One request, as the pipeline sees it.
#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    /// `/pkg.Service/Method`.
    pub method: &'a str,
    /// The method's policy (`None`: deny).
    pub policy: Option<&'a PolicyView>,
    /// The `authorization` header or metadata value.
    pub authorization: Option<&'a [u8]>,
    /// The request id (accepted or minted).
    pub request_id: RequestId,
}

/// The pipeline and everything its stages consult.
#[derive(Clone, Debug)]
pub struct Admission {
    verifier: JwtVerifier,
    residency: Arc<Residency>,
    mfa_max_age: Duration,
    leeway: Duration,
    kill_switches: KillSwitches,
    moderator: Moderator,
    rate_limiter: RateLimiter,
    db: Database,
}

impl Admission {
    /// Assembles the pipeline.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per stage, each a distinct type"
    )]
    pub fn new(
        verifier: JwtVerifier,
        residency: Residency,
        mfa_max_age: Duration,
        leeway: Duration,
        kill_switches: KillSwitches,
        moderator: Moderator,
        rate_limiter: RateLimiter,
        db: Database,
    ) -> Self {
        Self {
            verifier,
            residency: Arc::new(residency),
            mfa_max_age,
            leeway,
            kill_switches,
            moderator,
            rate_limiter,
            db,
        }
    }

    /// The kill switches (for `SetKillSwitch` / `ListKillSwitches`).
    pub fn kill_switches(&self) -> &KillSwitches {
        &self.kill_switches
    }

    /// The moderator (for `RunCapsule` over the gRPC ingress).
    pub fn moderator(&self) -> &Moderator {
        &self.moderator
    }

    /// Runs every stage the request head decides (token, residency,
    /// capability and MFA, kill switches, rate limit); the verified context
    /// on success. Nothing here reads a body.
    pub async fn admit(&self, request: AdmissionRequest<'_>) -> Result<RequestContext, Refusal> {
        let method = request.method;
        let request_id = request.request_id.clone();
        let result = self.run(request).await;
        if let Err(refusal) = &result {
            log_refusal(method, &request_id, refusal);
        }
        result
    }

    /// Moderates `input`, the proto3 JSON of the exact message the backend
    /// will receive, and binds the decision to its digest in `context`
    /// (forwarded in the signed claims envelope). Rejections are audited and
    /// answered 422 / INVALID_ARGUMENT with their findings.
    pub async fn moderate(
        &self,
        method: &str,
        context: &mut RequestContext,
        input: &Value,
    ) -> Result<(), Refusal> {
        let decision = self.moderator.check(method, input);
        let decision_id = decision.id.clone();
        if let Err(refusal) = self.judge(method, context, decision).await {
            log_refusal(method, &context.request_id, &refusal);
            return Err(refusal);
        }
        context.moderation = crate::moderation::input_digest(input).map(|input_sha256| Moderated {
            decision_id,
            input_sha256,
        });
        Ok(())
    }

    async fn run(&self, request: AdmissionRequest<'_>) -> Result<RequestContext, Refusal> {
        let now = SystemTime::now();
        let now_unix =
            i64::try_from(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).unwrap_or(i64::MAX);

        // 1. The token.
        let token = bearer_token(request.authorization)?;
        let claims = self
            .verifier
            .verify(token, now_unix)
            .await
            .map_err(|e| Refusal::unauthenticated(e.reason(), format!("token refused: {e}")))?;

        // 2. Residency, from the verified claims only.
        if !self.residency.allows(&claims.tenant, &claims.region) {
            return Err(Refusal::new(
                tonic::Code::PermissionDenied,
                "residency_denied",
                format!(
                    "this gateway does not serve tenant {:?} in region {:?}",
                    claims.tenant, claims.region
                ),
            ));
        }

        // 3. Capability and MFA, from the method's policy.
        let Some(policy) = request.policy else {
            return Err(Refusal::new(
                tonic::Code::PermissionDenied,
                "no_policy",
                format!("{} has no policy and is denied", request.method),
            ));
        };
        if policy.capability.is_empty() {
            return Err(Refusal::new(
                tonic::Code::PermissionDenied,
                "not_tenant_callable",
                format!("{} is not callable by tenants", request.method),
            ));
        }
        if !claims.scope.contains(&policy.capability) {
            return Err(Refusal::new(
                tonic::Code::PermissionDenied,
                "insufficient_scope",
                format!("the token's scope lacks {:?}", policy.capability),
            ));
        }
        let mfa = self.mfa_satisfied(&claims, now_unix);
        if policy.mfa_required && !mfa {
            let max_age = self.mfa_max_age.as_secs();
            return Err(Refusal::new(
                tonic::Code::Unauthenticated,
                "insufficient_user_authentication",
                format!("{} needs a second factor within {max_age} s", request.method),
            )
            .with_www_authenticate(&format!(
                "Bearer error=\"insufficient_user_authentication\", \
                 error_description=\"a second factor within {max_age} s is required\", \
                 max_age={max_age}, acr_values=\"mfa\""
            )));
        }

        // 4. Kill switches. The switches' own methods are exempt, so that an
        // operator can always clear a global switch.
        let exempt = KILL_SWITCH_METHODS.contains(&request.method);
        if !exempt && let Some(tripped) = self.kill_switches.check(&claims.tenant, request.method) {
            return Err(Refusal::new(
                tonic::Code::Unavailable,
                "kill_switch_engaged",
                format!(
                    "a {} kill switch{} is engaged",
                    scope_word(tripped.scope),
                    if tripped.target.is_empty() {
                        String::new()
                    } else {
                        format!(" for {}", tripped.target)
                    }
                ),
            )
            .with_retry_after(u64::from(tripped.retry_after_seconds)));
        }

        // 5. The tenant's rate limit: decided from the head too, so that a
        // tenant over its limit never has a body read either.
        if let Err(wait) = self.rate_limiter.check(&claims.tenant, Instant::now()) {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Refusal::new(
                tonic::Code::ResourceExhausted,
                "rate_limited",
                format!("tenant {:?} is over its rate limit", claims.tenant),
            )
            .with_retry_after(seconds.max(1)));
        }
        let context = RequestContext {
            request_id: request.request_id,
            tenant: claims.tenant,
            subject: claims.subject,
            region: claims.region,
            capabilities: claims.scope,
            mfa,
            operator: claims.operator,
            moderation: None,
        };
        Ok(context)
    }

    /// Turns a moderation decision into a refusal, auditing rejections.
    pub async fn judge(
        &self,
        method: &str,
        context: &RequestContext,
        decision: Decision,
    ) -> Result<(), Refusal> {
        if decision.allowed {
            return Ok(());
        }
        let details: Vec<Value> = decision
            .findings
            .iter()
            .map(|f| json!({"reason": f.reason, "field": f.field, "detail": f.detail}))
            .collect();
        let reasons: Vec<&str> = decision.findings.iter().map(|f| f.reason).collect();
        if let Err(e) = self
            .audit_rejection(method, context, &decision.id, &details)
            .await
        {
            // The request is refused either way; the audit failure is an
            // operator's problem, reported loudly.
            tracing::error!(error = %e, decision = %decision.id, "moderation rejection not audited");
        }
        Err(Refusal::new(
            tonic::Code::InvalidArgument,
            "moderation_rejected",
            format!(
                "the input was rejected by moderation ({}): decision {}",
                reasons.join(", "),
                decision.id
            ),
        )
        .with_http_status(StatusCode::UNPROCESSABLE_ENTITY)
        .with_details(details))
    }

    async fn audit_rejection(
        &self,
        method: &str,
        context: &RequestContext,
        decision_id: &str,
        details: &[Value],
    ) -> Result<(), sqlx::Error> {
        let now_ms = crate::context::unix_millis();
        let findings = Value::Array(details.to_vec()).to_string();
        // Retried on a new connection when the connection is lost: keyed by
        // the decision id (128 fresh random bits per decision), so a rerun
        // after a commit that did happen inserts nothing, and the row under
        // that id is this decision's.
        retry_on_pool!(self.db, "audit_moderation_rejection", sqlx::Error, pool => {
            sqlx::query(
                "INSERT INTO moderation_rejections \
                 (decision_id, method, tenant, subject, request_id, findings, decided_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (decision_id) DO NOTHING",
            )
            .bind(decision_id)
            .bind(method)
            .bind(&context.tenant)
            .bind(&context.subject)
            .bind(context.request_id.as_str())
            .bind(&findings)
            .bind(now_ms)
            .execute(pool)
            .await?;
        })
    }

    /// Whether the token proves a second factor used within the MFA window.
    fn mfa_satisfied(&self, claims: &TokenClaims, now_unix: i64) -> bool {
        let second_factor = claims.amr.iter().any(|m| SECOND_FACTORS.contains(&m.as_str()));
        let max_age = i64::try_from(self.mfa_max_age.as_secs()).unwrap_or(i64::MAX);
        let leeway = i64::try_from(self.leeway.as_secs()).unwrap_or(0);
        let fresh = claims
            .auth_time
            .is_some_and(|t| t <= now_unix.saturating_add(leeway) && now_unix.saturating_sub(t) <= max_age);
        second_factor && fresh
    }
}

/// The one log line of a refusal.
fn log_refusal(method: &str, request_id: &RequestId, refusal: &Refusal) {
    tracing::info!(
        method,
        request_id = request_id.as_str(),
        status = refusal.http_status().as_u16(),
        reason = refusal.reason(),
        message = %refusal.message(),
        "request refused"
    );
}

fn scope_word(scope: soma_proto::v1::KillSwitchScope) -> &'static str {
    match scope {
        soma_proto::v1::KillSwitchScope::Global => "global",
        soma_proto::v1::KillSwitchScope::Tenant => "tenant",
        soma_proto::v1::KillSwitchScope::Method => "method",
        soma_proto::v1::KillSwitchScope::Unspecified => "unspecified",
    }
}

/// The token of an `authorization: Bearer <token>` value (RFC 6750 §2.1:
/// the scheme is case-insensitive, one space, a token68).
fn bearer_token(value: Option<&[u8]>) -> Result<&str, Refusal> {
    let Some(value) = value else {
        return Err(Refusal::unauthenticated("token_missing", "no bearer token"));
    };
    let text = std::str::from_utf8(value)
        .map_err(|_| Refusal::unauthenticated("token_malformed", "the authorization header is not ASCII"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or_else(|| Refusal::unauthenticated("token_missing", "the authorization header is not Bearer"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::unauthenticated(
            "token_missing",
            "the authorization header is not Bearer",
        ));
    }
    if token.is_empty() {
        return Err(Refusal::unauthenticated(
            "token_malformed",
            "the bearer token is empty",
        ));
    }
    Ok(token)
}
