//! `ExecuteTool`: only a verified release runs, and every run is billed.
//!
//! A release is compiled only after its full verification (row MAC,
//! manifest digest, registry seal, publisher signature and key state,
//! module digest, state ACTIVE); the verified, compiled release is then kept
//! under its row MAC, and a later call whose row is byte-for-byte the same
//! skips re-verification. The row itself is read again (and its MAC
//! checked) once it was last checked [`REVALIDATE_AFTER`] ago: a revocation
//! on this replica evicts at once, one made by another replica sharing the
//! database stops the release here within that time, and any change of the
//! row (a revocation, a rewrite) misses the cache and is verified again, or
//! refused. Which release is a tool's newest is revalidated the same way (a
//! publish on this replica forgets it at once).
//!
//! After every run — success, trap, fuel or deadline exhaustion — one
//! billing event built from what the sandbox measured, with the tenant of
//! the verified claims, goes to the outbox before the reply.
//!
//! `ExecuteCapsuleStep` is the same execution for one step of a capsule
//! run, with what a run needs besides: the release's row is read at the
//! call (never a verdict up to [`REVALIDATE_AFTER`] old, so a revocation made
//! on another replica a moment ago stops the step), a missing release is
//! `release_missing`, a module other than the one the capsule pins is
//! `release_digest_mismatch` — each before anything compiles or runs — and
//! the step that ends the run (the last one, or one the sandbox stopped)
//! writes the run's record for Analytics in the transaction of its billing
//! event: one commit for both, delivered by the outbox, neither without the
//! other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use soma_proto::v1 as pb;
use soma_release::{Manifest, Version};
use soma_sandbox::{Prepared, RunLimits};

use crate::error::RegistryError;
use crate::releases::check_tool;
use crate::store::{ACTIVE, ReleaseRow};
use soma_proto::json;

use crate::{Actor, Registry, now_nanos, timestamp};

/// How long a verified release (and a tool's newest version) is used
/// before its row is read and checked again.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);

/// A release verified and compiled, as long as its row stays the same.
#[derive(Clone)]
pub(crate) struct Verified {
    /// The row MAC the verification was made for.
    mac: Vec<u8>,
    tool: String,
    version: String,
    prepared: Prepared,
    limits: RunLimits,
    module_sha256: [u8; 32],
    /// When the row was last read and found to be this one.
    checked_at: Instant,
}

/// Verified releases by `tool@version`, and each tool's newest active
/// release with when it was found.
#[derive(Clone, Default)]
pub(crate) struct VerifiedReleases(Arc<Mutex<Cache>>);

#[derive(Default)]
struct Cache {
    by_name: HashMap<String, Verified>,
    newest: HashMap<String, (String, Instant)>,
}

impl std::fmt::Debug for VerifiedReleases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.lock().by_name.len();
        f.debug_struct("VerifiedReleases").field("len", &len).finish()
    }
}

/// What `ExecuteCapsuleStep` adds to an execution.
struct Step {
    /// The module the capsule pins.
    module_sha256: [u8; 32],
    /// The run, recorded when this step ends it.
    run: pb::CapsuleRunStep,
    /// When the call reached the registry.
    received: Instant,
}

impl Registry {
    /// `ExecuteTool`.
    pub async fn execute(
        &self,
        actor: &Actor,
        request: pb::ExecuteToolRequest,
    ) -> Result<pb::ExecuteToolResponse, RegistryError> {
        self.run_release(actor, request, None).await
    }

    /// `ExecuteCapsuleStep`.
    pub async fn execute_capsule_step(
        &self,
        actor: &Actor,
        request: pb::ExecuteCapsuleStepRequest,
    ) -> Result<pb::ExecuteToolResponse, RegistryError> {
        let received = Instant::now();
        let execute = request
            .execute
            .ok_or_else(|| RegistryError::invalid("invalid_argument", "execute: required"))?;
        if execute.version.is_empty() {
            return Err(RegistryError::invalid(
                "invalid_argument",
                "execute.version: required (a capsule pins its releases' versions)",
            ));
        }
        if execute.run_id.is_empty() {
            return Err(RegistryError::invalid(
                "invalid_argument",
                "execute.run_id: required",
            ));
        }
        let module_sha256 = <[u8; 32]>::try_from(request.module_sha256.as_slice())
            .map_err(|_| RegistryError::invalid("invalid_argument", "module_sha256: must be 32 bytes"))?;
        let run = request
            .run
            .ok_or_else(|| RegistryError::invalid("invalid_argument", "run: required"))?;
        if run.capsule_id.is_empty() {
            return Err(RegistryError::invalid(
                "invalid_argument",
                "run.capsule_id: required",
            ));
        }
        if run.bundle_sha256.len() != 32 {
            return Err(RegistryError::invalid(
                "invalid_argument",
                "run.bundle_sha256: must be 32 bytes",
            ));
        }
        if run.started_at.is_none() {
            return Err(RegistryError::invalid(
                "invalid_argument",
                "run.started_at: required",
            ));
        }
        if run.elapsed.is_none_or(|e| e.seconds < 0 || e.nanos < 0) {
            return Err(RegistryError::invalid(
                "invalid_argument",
                "run.elapsed: required, not negative",
            ));
        }
        let step = Step {
            module_sha256,
            run,
            received,
        };
        self.run_release(actor, execute, Some(step)).await
    }

    /// The release `request` names, verified and compiled.
    async fn release_to_run(
        &self,
        request: &pb::ExecuteToolRequest,
        step: Option<&Step>,
    ) -> Result<Verified, RegistryError> {
        let Some(step) = step else {
            if let Some(verified) = self.verified.fresh(&request.tool, &request.version) {
                return Ok(verified);
            }
            let row = if request.version.is_empty() {
                self.newest_active(&request.tool).await?
            } else {
                self.stored(&request.tool, &request.version).await?
            };
            let verified = self.verified_active(&row).await?;
            if request.version.is_empty() {
                self.verified.set_newest(&row.tool, row.name());
            }
            return Ok(verified);
        };
        // A capsule's step: the row as stored at this moment.
        let name = format!("{}@{}", request.tool, request.version);
        let row = match self.stored(&request.tool, &request.version).await {
            Ok(row) => row,
            Err(RegistryError::NotFound(_)) => {
                return Err(RegistryError::precondition(
                    "release_missing",
                    format!("release {name} the capsule pins is not in the tool registry"),
                ));
            }
            Err(RegistryError::RowIntegrity { .. }) => {
                return Err(RegistryError::Unverified {
                    release: name,
                    failures: vec!["row_mac".to_owned()],
                });
            }
            Err(e) => return Err(e),
        };
        if row.module_sha256.as_slice() != step.module_sha256.as_slice() {
            return Err(RegistryError::precondition(
                "release_digest_mismatch",
                format!(
                    "release {name} holds module {}, the capsule pins {}",
                    soma_sign::hex::encode(&row.module_sha256),
                    soma_sign::hex::encode(&step.module_sha256)
                ),
            ));
        }
        self.verified_active(&row).await
    }

    /// The verified, compiled form of an active `row`.
    async fn verified_active(&self, row: &ReleaseRow) -> Result<Verified, RegistryError> {
        if row.state != ACTIVE {
            return Err(RegistryError::precondition(
                "release_revoked",
                format!("release {} is revoked and never runs again", row.name()),
            ));
        }
        self.verified(row).await
    }

    /// Runs a release: `ExecuteTool`, or a capsule's step.
    async fn run_release(
        &self,
        actor: &Actor,
        request: pb::ExecuteToolRequest,
        step: Option<Step>,
    ) -> Result<pb::ExecuteToolResponse, RegistryError> {
        if !actor.tenant_claims {
            return Err(RegistryError::ClaimsRequired(
                "ExecuteTool runs for a tenant: the call needs the gateway's verified claims".into(),
            ));
        }
        check_tool(&request.tool)?;
        let verified = self.release_to_run(&request, step.as_ref()).await?;

        let input = match &request.input {
            Some(input) => json::from_struct(input)
                .map_err(|e| RegistryError::invalid("input_invalid", format!("input: {e}")))?,
            None => serde_json::Value::Object(serde_json::Map::new()),
        };
        let input = serde_json::to_vec(&input)
            .map_err(|e| RegistryError::invalid("input_invalid", format!("input: {e}")))?;

        let permit = Arc::clone(&self.running)
            .try_acquire_owned()
            .map_err(|_| RegistryError::Busy(format!("{} executions are running", self.running_limit)))?;
        let sandbox = self.sandbox.clone();
        let prepared = verified.prepared.clone();
        let limits = verified.limits;
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sandbox.run(&prepared, &input, limits)
        })
        .await
        .map_err(|e| RegistryError::Task(e.to_string()))?;

        let measured = &outcome.measured;
        let execution_id = crate::random_id("exec");
        let now = now_nanos();
        let billing = pb::RecordBillingEventRequest {
            event_id: execution_id.clone(),
            tenant: actor.tenant.clone(),
            tool: verified.tool.clone(),
            tool_version: verified.version.clone(),
            amount: Some(pb::Money {
                currency: self.price.currency.clone(),
                micros: self.price.of_fuel(measured.fuel_consumed),
            }),
            fuel_consumed: measured.fuel_consumed,
            duration_micros: u64::try_from(measured.wall.as_micros()).unwrap_or(u64::MAX),
            occurred_at: Some(timestamp(now)),
            run_id: if request.run_id.is_empty() {
                execution_id.clone()
            } else {
                request.run_id.clone()
            },
            peak_memory_bytes: measured.peak_memory_bytes,
            module_sha256: verified.module_sha256.to_vec(),
        };
        // The outcome is known before anything is written: the billing
        // event, and the run's record when this step ends a capsule run,
        // are committed together.
        let output = match outcome.result {
            Ok(output) => soma_sign::jcs::parse_strict(&output)
                .ok()
                .and_then(|v| json::to_struct(&v).ok().flatten())
                .ok_or_else(|| RegistryError::Execution {
                    reason: "output_invalid",
                    message: format!(
                        "the adapter's output is not a JSON object (billing event {execution_id})"
                    ),
                }),
            Err(e) => Err(RegistryError::Execution {
                reason: e.reason(),
                message: format!("{e} (billing event {execution_id})"),
            }),
        };
        let mut events = vec![self.outbox.billing(&billing, now)?];
        let mut run_event_id = String::new();
        if let Some(step) = &step
            && (step.run.last_step || output.is_err())
        {
            let record = run_record(actor, &request, &verified, step, output.is_ok());
            run_event_id.clone_from(&record.event_id);
            events.push(self.outbox.capsule_run(&record, now)?);
        }
        self.outbox.enqueue_all(&events).await?;

        let output = output?;
        Ok(pb::ExecuteToolResponse {
            output: Some(output),
            fuel_consumed: measured.fuel_consumed,
            peak_memory_bytes: measured.peak_memory_bytes,
            duration_micros: billing.duration_micros,
            billing_event_id: execution_id,
            version: verified.version.clone(),
            module_sha256: verified.module_sha256.to_vec(),
            run_event_id,
        })
    }

    /// The highest active version of `tool`. Every release of the tool must
    /// pass its row MAC: a row edited to look revoked (or not) would
    /// otherwise change which one runs.
    async fn newest_active(&self, tool: &str) -> Result<ReleaseRow, RegistryError> {
        let mut newest: Option<(Version, ReleaseRow)> = None;
        for row in self.store.releases(Some(tool)).await? {
            self.check_release(&row)?;
            if row.state != ACTIVE {
                continue;
            }
            let version = Version::parse(&row.version).map_err(|_| RegistryError::RowIntegrity {
                table: ReleaseRow::TABLE,
                key: row.name(),
            })?;
            if newest.as_ref().is_none_or(|(v, _)| version > *v) {
                newest = Some((version, row));
            }
        }
        newest
            .map(|(_, row)| row)
            .ok_or_else(|| RegistryError::NotFound(format!("tool {tool:?} has no active release")))
    }

    /// The verified, compiled form of `row`: from the cache when the row is
    /// the one verified, else after a full verification.
    async fn verified(&self, row: &ReleaseRow) -> Result<Verified, RegistryError> {
        let name = row.name();
        if let Some(mut hit) = self.verified.get(&name).filter(|v| v.mac == row.mac) {
            hit.checked_at = Instant::now();
            self.verified.insert(name, hit.clone());
            return Ok(hit);
        }
        let failures = self.failures(row).await?;
        if !failures.is_empty() {
            self.verified.remove(&name);
            return Err(RegistryError::Unverified {
                release: name,
                failures,
            });
        }
        // `failures` parsed the manifest and checked the module; both are
        // read again here, from the same rows.
        let manifest = Manifest::parse(&row.manifest).map_err(crate::releases::release_error)?;
        let module =
            self.store
                .module(&row.module_sha256)
                .await?
                .ok_or_else(|| RegistryError::Unverified {
                    release: name.clone(),
                    failures: vec!["module_missing".into()],
                })?;
        let sandbox = self.sandbox.clone();
        let digest = *manifest.module_sha256();
        let entrypoint = manifest.entrypoint().to_owned();
        let prepared = tokio::task::spawn_blocking(move || sandbox.prepare(digest, &module, &entrypoint))
            .await
            .map_err(|e| RegistryError::Task(e.to_string()))?
            .map_err(|e| RegistryError::Unverified {
                release: name.clone(),
                failures: vec![e.reason().to_owned()],
            })?;
        let verified = Verified {
            mac: row.mac.clone(),
            tool: row.tool.clone(),
            version: row.version.clone(),
            checked_at: Instant::now(),
            prepared,
            limits: RunLimits {
                fuel: manifest.limits().fuel,
                memory_bytes: manifest.limits().memory_bytes,
                deadline: Duration::from_millis(manifest.limits().deadline_ms),
            },
            module_sha256: digest,
        };
        self.verified.insert(name, verified.clone());
        Ok(verified)
    }

    /// Drops a release from the caches (a revocation).
    pub(crate) fn forget_verified(&self, row: &ReleaseRow) {
        self.verified.remove(&row.name());
        self.verified.forget_newest(&row.tool);
        if let Ok(digest) = <[u8; 32]>::try_from(row.module_sha256.as_slice()) {
            self.sandbox.evict(&digest);
        }
    }
}

/// The record of the capsule run `step` ends: the tenant and the
/// moderation decision from the verified claims, the duration the run had
/// taken when the gateway sent the step plus the time the step took here.
fn run_record(
    actor: &Actor,
    request: &pb::ExecuteToolRequest,
    verified: &Verified,
    step: &Step,
    succeeded: bool,
) -> pb::RecordCapsuleRunRequest {
    let elapsed = step
        .run
        .elapsed
        .and_then(|e| Duration::try_from(e).ok())
        .unwrap_or_default();
    let duration = elapsed.saturating_add(step.received.elapsed());
    pb::RecordCapsuleRunRequest {
        event_id: format!("capsule-{}", request.run_id),
        tenant: actor.tenant.clone(),
        capsule_id: step.run.capsule_id.clone(),
        tool: verified.tool.clone(),
        run_id: request.run_id.clone(),
        outcome: if succeeded {
            pb::RunOutcome::Succeeded
        } else {
            pb::RunOutcome::Failed
        } as i32,
        started_at: step.run.started_at,
        duration: prost_types::Duration::try_from(duration).ok(),
        moderation_decision_id: actor.moderation_decision_id.clone(),
        capsule_version: step.run.capsule_version.clone(),
        bundle_sha256: step.run.bundle_sha256.clone(),
        environment: step.run.environment.clone(),
        installation_revision: step.run.installation_revision,
    }
}

impl VerifiedReleases {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The release `tool@version` (the newest when `version` is empty),
    /// if its row was checked less than [`REVALIDATE_AFTER`] ago.
    fn fresh(&self, tool: &str, version: &str) -> Option<Verified> {
        let cache = self.lock();
        let name = if version.is_empty() {
            let (name, found_at) = cache.newest.get(tool)?;
            if found_at.elapsed() >= REVALIDATE_AFTER {
                return None;
            }
            name.clone()
        } else {
            format!("{tool}@{version}")
        };
        cache
            .by_name
            .get(&name)
            .filter(|v| v.checked_at.elapsed() < REVALIDATE_AFTER)
            .cloned()
    }

    fn get(&self, name: &str) -> Option<Verified> {
        self.lock().by_name.get(name).cloned()
    }

    fn insert(&self, name: String, verified: Verified) {
        self.lock().by_name.insert(name, verified);
    }

    fn remove(&self, name: &str) {
        self.lock().by_name.remove(name);
    }

    fn set_newest(&self, tool: &str, name: String) {
        self.lock().newest.insert(tool.to_owned(), (name, Instant::now()));
    }

    /// Forgets which release is `tool`'s newest (a publish or a revocation).
    pub(crate) fn forget_newest(&self, tool: &str) {
        self.lock().newest.remove(tool);
    }
}
