//! `RunCapsule`: the orchestration behind admission.
//!
//! The edge (or the gRPC ingress) has verified the token, residency,
//! capability, kill switches and moderation of the run's input. Then, in
//! order: CapsuleRepo resolves the caller's installed capsule for the
//! environment (its active revision, the input checked against the bundle's
//! input schema, every tool release but the first step's looked up in the
//! ToolRegistry — present, not revoked, the pinned module — and fully
//! verified by it); the ToolRegistry executes each tool step in its sandbox
//! (`ExecuteCapsuleStep`: the first step gets the bundle's parameters with
//! the input over them, each next one the previous output), each step's
//! release read at that call, compared with the module the capsule pins and
//! verified before anything runs — for the first step, the run's only check
//! of that release — and billing each execution itself; the step that ends
//! the run (the last one, or one the sandbox stopped) has the registry
//! write the run's record for Analytics (`RecordCapsuleRun`, with what was
//! measured and the moderation decision of the verified claims) in the
//! transaction of its billing event, which the registry's outbox delivers:
//! one commit for both, neither without the other; the caller gets the run
//! id and the output.
//!
//! Every backend call carries the gateway's claims envelope sealed for that
//! backend alone. A call of a moderated method (`ExecuteCapsuleStep`: its
//! policy in the proto says `moderate`) carries the decision and the
//! digest of the exact message it travels with: the gateway derives each
//! step's message from the moderated input, and vouches for the derived
//! message under the same decision. `ResolveCapsuleRun` is not a moderated
//! method (it runs nothing and records nothing of the input): its call
//! carries no decision, so its envelope is the reusable one the gateway
//! seals per claims and audience, which CapsuleRepo verifies once and then
//! recognizes by its exact bytes.
//!
//! What a refusal becomes: a capsule that is not installed for the tenant
//! is 404 (`capsule_not_installed`); an input the schema refuses is 400
//! naming the field; a release revoked after the installation is 409
//! (`release_revoked`) and nothing executes; a first step whose release the
//! ToolRegistry refuses before running it (`release_revoked`: 409,
//! `release_unverified`, `release_missing`, `release_digest_mismatch`) ends
//! the run as the resolution's refusal would: nothing ran, so nothing is
//! recorded; a step the sandbox stops (fuel, memory, deadline, trap, bad
//! output) ends the run with `succeeded: false` and the step's reason in the
//! output, recorded as failed by the registry; a run the mesh's failure
//! ends after a step ran (a backend unreachable, a later release revoked)
//! is answered with that failure and recorded as failed by the gateway.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use tonic::Code;

use crate::context::{Moderated, RequestContext};
use crate::forward::{Backend, Backends};
use crate::refusal::Refusal;

/// Reasons of a failed tool step that are the adapter's outcome (its
/// budget, its trap, its output, its input), not a failure of the mesh:
/// the run ends with `succeeded: false` instead of an error.
const STEP_OUTCOMES: [&str; 12] = [
    "fuel_exhausted",
    "deadline_exceeded",
    "memory_limit_exceeded",
    "stack_overflow",
    "trap",
    "alloc_out_of_bounds",
    "output_too_large",
    "output_out_of_bounds",
    "output_not_utf8",
    "output_invalid",
    "input_too_large",
    "input_not_utf8",
];

/// The capability `ExecuteTool` requires, which every step's envelope
/// carries from the caller's own token.
const EXECUTE_CAPABILITY: &str = "tools:execute";

/// Refusals of `ExecuteCapsuleStep` made by the release's checks, before
/// the registry compiles or runs anything: for the first step, nothing of
/// the run has executed yet.
const RELEASE_REFUSALS: [&str; 4] = [
    "release_revoked",
    "release_unverified",
    "release_missing",
    "release_digest_mismatch",
];

/// The backend calls of a run, each relayed as the edge relays a unary
/// call (one mTLS HTTP/2 connection per backend, the message encoded here).
const RESOLVE_PATH: &str = "/somastack.v1.CapsuleRepo/ResolveCapsuleRun";
const EXECUTE_STEP_PATH: &str = "/somastack.v1.ToolRegistry/ExecuteCapsuleStep";

/// Attempts of the run's record in Analytics (the same event id each time:
/// Analytics keeps one record however often it is sent).
const RECORD_ATTEMPTS: u32 = 3;

/// How a run ended.
enum Ended {
    /// Every step ran; the last one's output. The registry recorded the
    /// run with the last step's billing event.
    Succeeded(Option<prost_types::Struct>),
    /// A step was stopped by the sandbox or refused its input: the
    /// adapter's outcome. The registry recorded the run (failed) with that
    /// step's billing event.
    StepFailed(Refusal),
    /// The mesh refused or failed (a backend unreachable, a revocation
    /// between two steps): no step recorded the run.
    Refused(Refusal),
}

/// Runs capsules through the backends.
#[derive(Clone, Debug)]
pub struct CapsuleRunner {
    backends: Backends,
    /// Whether each backend call's method is moderated (its policy in the
    /// proto says `moderate`): only such a call carries the run's
    /// moderation decision, bound to its message.
    moderated: MethodsModerated,
}

/// The `moderate` flag of the policies of the run's two backend methods.
#[derive(Clone, Copy, Debug)]
struct MethodsModerated {
    resolve: bool,
    step: bool,
}

impl CapsuleRunner {
    /// A runner over the gateway's backends; the backend methods' policies
    /// are read from the descriptor set.
    pub fn new(backends: Backends) -> Result<Self, soma_proto::PolicyError> {
        let policies = soma_proto::PolicyTable::for_services(&[
            "somastack.v1.CapsuleRepo",
            "somastack.v1.ToolRegistry",
        ])?;
        let moderated = |path: &str| policies.get(path).is_some_and(|p| p.moderate);
        Ok(Self {
            backends,
            moderated: MethodsModerated {
                resolve: moderated(RESOLVE_PATH),
                step: moderated(EXECUTE_STEP_PATH),
            },
        })
    }

    /// Runs `request` for the admitted `context`.
    pub async fn run(
        &self,
        context: &RequestContext,
        request: &pb::RunCapsuleRequest,
    ) -> Result<pb::RunCapsuleResponse, Refusal> {
        if request.environment.is_empty() {
            return Err(Refusal::bad_request("invalid_argument", "environment: required"));
        }
        // A capsule's tools run under the caller's own authority: the
        // steps' envelopes carry the caller's capabilities, never more, so
        // a token that may not execute tools is refused before anything is
        // resolved or run.
        if !context.capabilities.iter().any(|c| c == EXECUTE_CAPABILITY) {
            return Err(Refusal::new(
                Code::PermissionDenied,
                "insufficient_scope",
                format!(
                    "running a capsule executes its tools: the token needs {EXECUTE_CAPABILITY} besides capsules:run"
                ),
            ));
        }
        let repo = self.backend("somastack.v1.CapsuleRepo")?;
        let registry = self.backend("somastack.v1.ToolRegistry")?;
        let analytics = self.backend("somastack.v1.Analytics")?;

        let resolve = pb::ResolveCapsuleRunRequest {
            capsule: request.capsule_id.clone(),
            environment: request.environment.clone(),
            input: request.input.clone(),
        };
        let sealed = self.sealed(context, repo, self.moderated.resolve, || {
            generic_digest("somastack.v1.ResolveCapsuleRunRequest", &resolve)
        })?;
        let resolved: pb::ResolvedCapsuleRun = unary(repo, RESOLVE_PATH, sealed, &resolve)
            .await
            .map_err(|status| revoked_is_conflict(Refusal::from_status(&status)))?;

        let run_id = format!("run-{:032x}", rand::random::<u128>());
        let run = Run {
            id: &run_id,
            started_at: SystemTime::now(),
            clock: Instant::now(),
        };
        // A first step refused before anything ran is refused as the
        // resolution would have refused it: there is no run to record.
        let (ended, last_tool) = self.steps(context, &resolved, request, &run, registry).await?;
        let (succeeded, output) = match ended {
            Ended::Succeeded(output) => (true, output),
            Ended::StepFailed(refusal) => (false, Some(failure_output(&refusal))),
            // The mesh's failure, not the adapter's: no step recorded the
            // run, so it is recorded here (failed) if Analytics can, and
            // answered as what it is.
            Ended::Refused(refusal) => {
                self.record_failed(analytics, context, &resolved, request, &run, &last_tool)
                    .await;
                return Err(refusal);
            }
        };
        Ok(pb::RunCapsuleResponse {
            run_id,
            output,
            moderation_decision_id: context
                .moderation
                .as_ref()
                .map(|m| m.decision_id.clone())
                .unwrap_or_default(),
            succeeded,
        })
    }

    /// Executes the resolved steps in order; returns how the run ended and
    /// the last tool that ran (or was tried), or the refusal of the first
    /// step's release made before anything ran (see [`RELEASE_REFUSALS`]).
    async fn steps(
        &self,
        context: &RequestContext,
        resolved: &pb::ResolvedCapsuleRun,
        request: &pb::RunCapsuleRequest,
        run: &Run<'_>,
        registry: &Backend,
    ) -> Result<(Ended, String), Refusal> {
        let mut input = merged(resolved.parameters.as_ref(), request.input.as_ref());
        let mut output = None;
        let mut last_tool = String::new();
        for (index, step) in resolved.steps.iter().enumerate() {
            last_tool.clone_from(&step.tool);
            let execute = pb::ExecuteCapsuleStepRequest {
                execute: Some(pb::ExecuteToolRequest {
                    tool: step.tool.clone(),
                    version: step.version.clone(),
                    input: Some(input.clone()),
                    run_id: run.id.to_owned(),
                }),
                module_sha256: step.module_sha256.clone(),
                run: Some(pb::CapsuleRunStep {
                    capsule_id: resolved.capsule.clone(),
                    capsule_version: resolved.version.clone(),
                    bundle_sha256: resolved.bundle_sha256.clone(),
                    environment: request.environment.clone(),
                    installation_revision: resolved.revision,
                    started_at: Some(timestamp(run.started_at)),
                    elapsed: prost_types::Duration::try_from(run.clock.elapsed()).ok(),
                    last_step: index + 1 == resolved.steps.len(),
                }),
            };
            let sealed = match self.sealed(context, registry, self.moderated.step, || {
                crate::step_digest::step_digest(&execute).map_err(|_| {
                    Refusal::without_reason(
                        Code::Internal,
                        "somastack.v1.ExecuteCapsuleStepRequest has no canonical form",
                    )
                })
            }) {
                Ok(sealed) => sealed,
                Err(refusal) => return Ok((Ended::Refused(refusal), last_tool)),
            };
            let executed: Result<pb::ExecuteToolResponse, _> =
                unary(registry, EXECUTE_STEP_PATH, sealed, &execute).await;
            let reply = match executed {
                Ok(reply) => reply,
                Err(status) => {
                    let refusal = revoked_is_conflict(Refusal::from_status(&status));
                    if nothing_ran(index, &refusal) {
                        return Err(refusal);
                    }
                    let ended = if STEP_OUTCOMES.contains(&refusal.reason()) {
                        Ended::StepFailed(refusal.with_details(vec![serde_json::json!({
                            "step": index,
                            "tool": step.tool,
                            "version": step.version,
                        })]))
                    } else {
                        Ended::Refused(refusal)
                    };
                    return Ok((ended, last_tool));
                }
            };
            input = reply.output.clone().unwrap_or_default();
            output = reply.output;
        }
        Ok((Ended::Succeeded(output), last_tool))
    }

    fn backend(&self, service: &str) -> Result<&Backend, Refusal> {
        self.backends.get(service).ok_or_else(|| {
            Refusal::new(
                Code::Unavailable,
                "backend_not_configured",
                format!("no backend is configured for {service}"),
            )
        })
    }

    /// The metadata of a call to `backend`: the claims sealed for it, with
    /// the moderation decision bound to the digest of the call's message
    /// (`digest`: SHA-256 of its canonical proto3 JSON) when the method is
    /// `moderated`. A method whose policy does not moderate is not given
    /// the decision (it neither needs nor checks one): its envelope is the
    /// reusable kind the gateway seals per claims and audience, as for any
    /// unmoderated call through the edge.
    fn sealed(
        &self,
        context: &RequestContext,
        backend: &Backend,
        moderated: bool,
        digest: impl FnOnce() -> Result<[u8; 32], Refusal>,
    ) -> Result<tonic::metadata::MetadataMap, Refusal> {
        let derived;
        let context = match &context.moderation {
            None => context,
            Some(_) if !moderated => {
                derived = RequestContext {
                    moderation: None,
                    ..context.clone()
                };
                &derived
            }
            Some(moderated) => {
                derived = RequestContext {
                    moderation: Some(Moderated {
                        input_sha256: digest()?,
                        ..moderated.clone()
                    }),
                    ..context.clone()
                };
                &derived
            }
        };
        self.backends
            .metadata(context, &backend.id)
            .map_err(|status| Refusal::from_status(&status))
    }

    /// Records a run the mesh's failure ended (no step recorded it) as
    /// failed in Analytics, as the gateway (the tenant is the admitted one;
    /// the call carries no claims, as Analytics' ingestion takes the tenant
    /// from a trusted service's message). The caller gets the failure's own
    /// answer either way: a record Analytics could not take is logged.
    async fn record_failed(
        &self,
        analytics: &Backend,
        context: &RequestContext,
        resolved: &pb::ResolvedCapsuleRun,
        request: &pb::RunCapsuleRequest,
        run: &Run<'_>,
        tool: &str,
    ) {
        let run_id = run.id;
        let record = pb::RecordCapsuleRunRequest {
            event_id: format!("capsule-{run_id}"),
            tenant: context.tenant.clone(),
            capsule_id: resolved.capsule.clone(),
            tool: tool.to_owned(),
            run_id: run_id.to_owned(),
            outcome: pb::RunOutcome::Failed as i32,
            started_at: Some(timestamp(run.started_at)),
            duration: prost_types::Duration::try_from(run.clock.elapsed()).ok(),
            moderation_decision_id: context
                .moderation
                .as_ref()
                .map(|m| m.decision_id.clone())
                .unwrap_or_default(),
            capsule_version: resolved.version.clone(),
            bundle_sha256: resolved.bundle_sha256.clone(),
            environment: request.environment.clone(),
            installation_revision: resolved.revision,
        };
        let mut client = AnalyticsClient::new(analytics.channel.clone());
        for attempt in 0..RECORD_ATTEMPTS {
            match client.record_capsule_run(record.clone()).await {
                Ok(_) => return,
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) =>
                {
                    tracing::warn!(run_id, attempt, message = %status.message(), "failed capsule run not recorded yet");
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(status) => {
                    tracing::error!(run_id, message = %status.message(), "Analytics refused the failed capsule run's record");
                    return;
                }
            }
        }
        tracing::error!(
            run_id,
            "failed capsule run not recorded: Analytics did not answer"
        );
    }
}

/// The run being made: its id and when it started (the record's start
/// time, and the monotonic clock its duration is measured by).
struct Run<'a> {
    id: &'a str,
    started_at: SystemTime,
    clock: Instant,
}

/// One unary call of `path` on `backend` through the edge's relay, with the
/// sealed `metadata`: `message` encoded, the reply decoded (a reply that
/// does not decode is the backend's fault: `INTERNAL`).
async fn unary<Req: prost::Message, Rep: prost::Message + Default>(
    backend: &Backend,
    path: &'static str,
    metadata: tonic::metadata::MetadataMap,
    message: &Req,
) -> Result<Rep, tonic::Status> {
    let reply = backend
        .call(
            http::uri::PathAndQuery::from_static(path),
            metadata.into_headers(),
            bytes::Bytes::from(message.encode_to_vec()),
            None,
        )
        .await?;
    Rep::decode(reply).map_err(|e| {
        tracing::error!(method = path, error = %e, "backend reply does not decode");
        tonic::Status::internal(format!("{path}: the reply does not decode"))
    })
}

/// Whether `ExecuteTool`'s refusal of step `index` leaves a run of which
/// nothing executed: the first step's release refused by its verification.
fn nothing_ran(index: usize, refusal: &Refusal) -> bool {
    index == 0 && RELEASE_REFUSALS.contains(&refusal.reason())
}

/// A refusal for a revoked release is 409: the installation pins a release
/// the registry has since revoked, a conflict between the two.
fn revoked_is_conflict(refusal: Refusal) -> Refusal {
    if refusal.reason() == "release_revoked" {
        refusal.with_http_status(StatusCode::CONFLICT)
    } else {
        refusal
    }
}

/// The first step's input: the bundle's parameters, the run's input over
/// them.
fn merged(
    parameters: Option<&prost_types::Struct>,
    input: Option<&prost_types::Struct>,
) -> prost_types::Struct {
    let mut fields = parameters.map(|p| p.fields.clone()).unwrap_or_default();
    if let Some(input) = input {
        fields.extend(input.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    prost_types::Struct { fields }
}

/// The output of a run a step ended: which step, and why.
fn failure_output(refusal: &Refusal) -> prost_types::Struct {
    use prost_types::value::Kind;
    let text = |s: &str| prost_types::Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("reason".to_owned(), text(refusal.reason()));
    fields.insert("message".to_owned(), text(refusal.message()));
    if let Some(step) = refusal.details().first() {
        if let Some(index) = step["step"].as_u64() {
            fields.insert(
                "step".to_owned(),
                prost_types::Value {
                    kind: Some(Kind::NumberValue(index as f64)),
                },
            );
        }
        if let Some(tool) = step["tool"].as_str() {
            fields.insert("tool".to_owned(), text(tool));
        }
    }
    prost_types::Struct { fields }
}

/// The moderation digest of `message` (whose proto3 JSON type is
/// `type_name`) by the generic route: its proto3 JSON through the
/// descriptor set, canonicalized.
fn generic_digest<M: prost::Message>(type_name: &str, message: &M) -> Result<[u8; 32], Refusal> {
    let json = crate::transcode::message_to_json(type_name, message)
        .map_err(|e| Refusal::without_reason(Code::Internal, format!("{type_name} not encodable: {e}")))?;
    crate::moderation::input_digest(&json)
        .ok_or_else(|| Refusal::without_reason(Code::Internal, format!("{type_name} has no canonical form")))
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Case {
        name: &'static str,
        index: usize,
        code: Code,
        reason: &'static str,
        /// (nothing ran, HTTP status at the edge)
        expected: (bool, StatusCode),
    }

    /// How `ExecuteTool`'s refusal of a step ends a run: the first step's
    /// release refused by its verification is the resolution's refusal
    /// (nothing ran, nothing is recorded), a revoked one 409 wherever it
    /// is met; anything else ends a run that is recorded.
    #[test]
    fn a_first_step_refused_by_its_release_check_ends_a_run_that_never_started() {
        let cases = [
            Case {
                name: "first step revoked",
                index: 0,
                code: Code::FailedPrecondition,
                reason: "release_revoked",
                expected: (true, StatusCode::CONFLICT),
            },
            Case {
                name: "first step unverified",
                index: 0,
                code: Code::FailedPrecondition,
                reason: "release_unverified",
                expected: (true, StatusCode::BAD_REQUEST),
            },
            Case {
                name: "second step revoked (the first one ran)",
                index: 1,
                code: Code::FailedPrecondition,
                reason: "release_revoked",
                expected: (false, StatusCode::CONFLICT),
            },
            Case {
                name: "second step unverified (the first one ran)",
                index: 1,
                code: Code::FailedPrecondition,
                reason: "release_unverified",
                expected: (false, StatusCode::BAD_REQUEST),
            },
            Case {
                name: "first step out of fuel (it ran)",
                index: 0,
                code: Code::ResourceExhausted,
                reason: "fuel_exhausted",
                expected: (false, StatusCode::TOO_MANY_REQUESTS),
            },
            Case {
                name: "first step: sandbox busy",
                index: 0,
                code: Code::ResourceExhausted,
                reason: "sandbox_busy",
                expected: (false, StatusCode::TOO_MANY_REQUESTS),
            },
        ];
        for case in cases {
            let mut status = tonic::Status::new(case.code, "refused");
            status.metadata_mut().insert(
                soma_mesh::REASON_METADATA,
                tonic::metadata::AsciiMetadataValue::from_static(case.reason),
            );
            let refusal = revoked_is_conflict(Refusal::from_status(&status));
            assert_eq!(
                (nothing_ran(case.index, &refusal), refusal.http_status()),
                case.expected,
                "{}",
                case.name
            );
        }
    }
}
