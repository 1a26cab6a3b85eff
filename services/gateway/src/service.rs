//! The `Gateway` gRPC service: `WhoAmI`, `ListKillSwitches`,
//! `SetKillSwitch` and `RunCapsule`.
//!
//! Tenants reach these methods through the edge (JSON or gRPC), after the
//! admission pipeline put the verified [`RequestContext`] into the request;
//! operators with an SVID reach them over mesh mTLS, where the runtime put
//! the verified [`Caller`].
//!
//! Authority over kill switches: a GLOBAL or METHOD switch, or a TENANT
//! switch on another tenant, reaches beyond one tenant and needs an operator
//! principal (an operator SVID over mTLS, or an operator issuer's token with
//! `"operator": true`); anyone else is refused with `PERMISSION_DENIED` and
//! the reason [`OPERATOR_REQUIRED`]. A tenant sets and lists only its own
//! tenant's TENANT switch. No scope changes this: `ops:killswitch` is the
//! capability to touch switches at all, not authority over other tenants.

use std::sync::Arc;

use soma_mesh::Caller;
use soma_proto::v1::gateway_server::Gateway;
use soma_proto::v1::{
    KillSwitch, KillSwitchScope, ListKillSwitchesRequest, ListKillSwitchesResponse, RunCapsuleRequest,
    RunCapsuleResponse, SetKillSwitchRequest, WhoAmIRequest, WhoAmIResponse,
};
use tonic::{Code, Request, Response, Status};

use crate::admission::Admission;
use crate::capsule_run::CapsuleRunner;
use crate::context::{Moderated, REQUEST_ID_HEADER, RequestContext, RequestId, is_valid_tenant};
use crate::killswitch::{Change, DEFAULT_RETRY_AFTER_SECONDS};
use crate::refusal::Refusal;

/// The `soma-reason` of an action refused because it needs an operator.
pub const OPERATOR_REQUIRED: &str = "operator_required";

/// Longest `reason` of a kill switch change.
const MAX_REASON_BYTES: usize = 1024;
/// Longest `retry_after_seconds` of a kill switch (a day).
const MAX_RETRY_AFTER_SECONDS: u32 = 86_400;

/// The Gateway service.
#[derive(Clone, Debug)]
pub struct GatewayService {
    admission: Admission,
    methods: Arc<Vec<String>>,
    runner: CapsuleRunner,
}

impl GatewayService {
    /// The service over the admission pipeline; `methods` are the full
    /// method paths a METHOD kill switch may name; `runner` runs capsules.
    pub fn new(admission: Admission, methods: Vec<String>, runner: CapsuleRunner) -> Self {
        Self {
            admission,
            methods: Arc::new(methods),
            runner,
        }
    }
}

/// The admitted tenant context of a request: from its extensions (the edge
/// puts it there), else from the task-local context.
fn tenant_context<T>(request: &Request<T>) -> Option<Arc<RequestContext>> {
    request
        .extensions()
        .get::<Arc<RequestContext>>()
        .cloned()
        .or_else(RequestContext::current)
}

/// Who is acting, as far as authority over kill switches goes.
#[derive(Debug)]
struct Actor {
    /// The tenant the caller acts for; `None` for an operator SVID calling
    /// without claims.
    tenant: Option<String>,
    /// Whether the caller is an operator principal.
    operator: bool,
    /// Recorded as `set_by`: the token's subject, or the peer's SPIFFE ID.
    name: String,
    /// The request id for the audit row.
    request_id: String,
}

impl Actor {
    /// The actor of a request: the edge's admitted context, else the mesh
    /// runtime's verified caller (an operator SVID, or claims the gateway
    /// sealed). `None` when neither is there.
    fn of<T>(request: &Request<T>) -> Option<Self> {
        if let Some(c) = tenant_context(request) {
            return Some(Self {
                tenant: Some(c.tenant.clone()),
                operator: c.operator,
                name: c.subject.clone(),
                request_id: c.request_id.as_str().to_owned(),
            });
        }
        let caller = Caller::of(request)?;
        // Over mTLS a caller may name its request; a malformed id is replaced.
        let request_id = request
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(RequestId::mint);
        Some(match &caller.claims {
            Some(claims) => Self {
                tenant: Some(claims.tenant.clone()),
                operator: claims.operator,
                name: claims.subject.clone(),
                request_id: request_id.as_str().to_owned(),
            },
            None => Self {
                tenant: None,
                operator: caller.is_operator(),
                name: caller.peer.spiffe_id.to_string(),
                request_id: request_id.as_str().to_owned(),
            },
        })
    }

    /// Whether this actor may see or change the switch of `scope` on
    /// `target`: an operator any; anyone else only the TENANT switch of its
    /// own tenant.
    fn may_touch(&self, scope: KillSwitchScope, target: &str) -> bool {
        self.operator || (scope == KillSwitchScope::Tenant && self.tenant.as_deref() == Some(target))
    }
}

/// `PERMISSION_DENIED` with the reason [`OPERATOR_REQUIRED`], logged once.
fn operator_required(actor: &Actor, action: &str) -> Status {
    tracing::warn!(
        reason = OPERATOR_REQUIRED,
        caller = %actor.name,
        tenant = actor.tenant.as_deref().unwrap_or("-"),
        request_id = %actor.request_id,
        "refused: {action} needs an operator"
    );
    Refusal::new(
        Code::PermissionDenied,
        OPERATOR_REQUIRED,
        format!(
            "{action} needs an operator (an operator SVID over mTLS, or a token of an operator issuer); \
             a tenant may set only its own tenant's TENANT switch"
        ),
    )
    .into_status()
}

/// `INVALID_ARGUMENT` naming the request field at fault.
fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Refusal::bad_request("invalid_argument", format!("{field}: {message}")).into_status()
}

/// A request that reached the service without the verified caller or
/// tenant the method needs.
fn unauthenticated(message: &'static str) -> Status {
    Refusal::without_reason(Code::Unauthenticated, message).into_status()
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    #[tracing::instrument(skip_all, name = "Gateway/WhoAmI")]
    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        if let Some(c) = tenant_context(&request) {
            return Ok(Response::new(WhoAmIResponse {
                peer_spiffe_id: String::new(),
                tenant: c.tenant.clone(),
                subject: c.subject.clone(),
                region: c.region.clone(),
                capabilities: c.capabilities.clone(),
                mfa: c.mfa,
                request_id: c.request_id.as_str().to_owned(),
            }));
        }
        let caller = Caller::of(&request).ok_or_else(|| unauthenticated("no verified caller"))?;
        let mut response = WhoAmIResponse {
            peer_spiffe_id: caller.peer.spiffe_id.to_string(),
            ..Default::default()
        };
        if let Some(c) = &caller.claims {
            response.tenant.clone_from(&c.tenant);
            response.subject.clone_from(&c.subject);
            response.region.clone_from(&c.region);
            response.capabilities.clone_from(&c.capabilities);
            response.mfa = c.mfa;
            response.request_id.clone_from(&c.request_id);
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, name = "Gateway/RunCapsule")]
    async fn run_capsule(
        &self,
        request: Request<RunCapsuleRequest>,
    ) -> Result<Response<RunCapsuleResponse>, Status> {
        let context = tenant_context(&request).ok_or_else(|| unauthenticated("no admitted tenant"))?;
        let message = request.get_ref();
        if message.capsule_id.is_empty() {
            return Err(invalid("capsule_id", "required"));
        }
        // Moderation before orchestration. The edge moderated the final
        // message and bound its decision to the message's digest; the
        // decision is trusted only for a message with exactly that digest,
        // and anything else (no decision, or one made for another message)
        // is moderated here.
        let input =
            crate::transcode::message_to_json("somastack.v1.RunCapsuleRequest", message).map_err(|e| {
                Refusal::without_reason(
                    Code::Internal,
                    format!("request not readable for moderation: {e}"),
                )
            })?;
        let digest = crate::moderation::input_digest(&input);
        let bound = context
            .moderation
            .as_ref()
            .is_some_and(|m| digest.is_some_and(|digest| digest == m.input_sha256));
        let context = if bound {
            context
        } else {
            let decision = self
                .admission
                .moderator()
                .check("/somastack.v1.Gateway/RunCapsule", &input);
            let decision_id = decision.id.clone();
            self.admission
                .judge("/somastack.v1.Gateway/RunCapsule", &context, decision)
                .await?;
            let input_sha256 = digest.ok_or_else(|| {
                Refusal::without_reason(Code::Internal, "request has no canonical form for moderation")
            })?;
            // Admitted here: the run carries this decision, bound to this
            // message, as it would carry the edge's.
            Arc::new(RequestContext {
                moderation: Some(Moderated {
                    decision_id,
                    input_sha256,
                }),
                ..(*context).clone()
            })
        };
        let response = self.runner.run(&context, message).await?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, name = "Gateway/ListKillSwitches")]
    async fn list_kill_switches(
        &self,
        request: Request<ListKillSwitchesRequest>,
    ) -> Result<Response<ListKillSwitchesResponse>, Status> {
        let actor = Actor::of(&request).ok_or_else(|| unauthenticated("no verified caller"))?;
        let all = self.admission.kill_switches().list();
        // A tenant sees its own tenant's switch and nothing else: not the
        // other tenants' switches, not who set them, not the global or
        // method switches (a request they stop answers 503 anyway).
        let switches = all
            .iter()
            .filter(|s| {
                let scope = KillSwitchScope::try_from(s.scope).unwrap_or(KillSwitchScope::Unspecified);
                actor.may_touch(scope, &s.target)
            })
            .cloned()
            .collect();
        Ok(Response::new(ListKillSwitchesResponse { switches }))
    }

    #[tracing::instrument(skip_all, name = "Gateway/SetKillSwitch")]
    async fn set_kill_switch(
        &self,
        request: Request<SetKillSwitchRequest>,
    ) -> Result<Response<KillSwitch>, Status> {
        let actor = Actor::of(&request).ok_or_else(|| unauthenticated("no admitted caller"))?;
        let m = request.get_ref();
        let scope = KillSwitchScope::try_from(m.scope)
            .ok()
            .filter(|s| *s != KillSwitchScope::Unspecified)
            .ok_or_else(|| invalid("scope", "must be GLOBAL, TENANT or METHOD"))?;
        // Authority before the target is looked at, so that a tenant learns
        // nothing from the validation of a target it may not touch.
        if !actor.may_touch(scope, &m.target) {
            let action = match scope {
                KillSwitchScope::Tenant => "a TENANT switch on another tenant",
                KillSwitchScope::Method => "a METHOD switch",
                _ => "a GLOBAL switch",
            };
            return Err(operator_required(&actor, action));
        }
        match scope {
            KillSwitchScope::Global if !m.target.is_empty() => {
                return Err(invalid("target", "must be empty for a GLOBAL switch"));
            }
            KillSwitchScope::Tenant if !is_valid_tenant(&m.target) => {
                return Err(invalid("target", "must be a tenant name for a TENANT switch"));
            }
            KillSwitchScope::Method if !self.methods.contains(&m.target) => {
                return Err(invalid(
                    "target",
                    "must be a full method path such as /somastack.v1.Analytics/RecordCapsuleRun",
                ));
            }
            _ => {}
        }
        let reason = m.reason.trim();
        if reason.is_empty() || m.reason.len() > MAX_REASON_BYTES {
            return Err(invalid(
                "reason",
                format!("required, at most {MAX_REASON_BYTES} bytes"),
            ));
        }
        if m.retry_after_seconds > MAX_RETRY_AFTER_SECONDS {
            return Err(invalid(
                "retry_after_seconds",
                format!("at most {MAX_RETRY_AFTER_SECONDS}"),
            ));
        }
        let change = Change {
            scope,
            target: m.target.clone(),
            engaged: m.engaged,
            reason: reason.to_owned(),
            retry_after_seconds: if m.retry_after_seconds == 0 {
                DEFAULT_RETRY_AFTER_SECONDS
            } else {
                m.retry_after_seconds
            },
            set_by: actor.name,
            tenant: actor.tenant.unwrap_or_default(),
            request_id: actor.request_id,
        };
        let stored = self
            .admission
            .kill_switches()
            .set(change)
            .await
            .map_err(Refusal::from)?;
        Ok(Response::new(stored))
    }
}
