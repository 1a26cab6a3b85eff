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

impl Registry {
    /// `ExecuteTool`.
    pub async fn execute(
        &self,
        actor: &Actor,
        request: pb::ExecuteToolRequest,
    ) -> Result<pb::ExecuteToolResponse, RegistryError> {
        if !actor.tenant_claims {
            return Err(RegistryError::ClaimsRequired(
                "ExecuteTool runs for a tenant: the call needs the gateway's verified claims".into(),
            ));
        }
        check_tool(&request.tool)?;
        let verified = match self.verified.fresh(&request.tool, &request.version) {
            Some(verified) => verified,
            None => {
                let row = if request.version.is_empty() {
                    self.newest_active(&request.tool).await?
                } else {
                    self.stored(&request.tool, &request.version).await?
                };
                if row.state != ACTIVE {
                    return Err(RegistryError::precondition(
                        "release_revoked",
                        format!("release {} is revoked and never runs again", row.name()),
                    ));
                }
                let verified = self.verified(&row).await?;
                if request.version.is_empty() {
                    self.verified.set_newest(&row.tool, row.name());
                }
                verified
            }
        };

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
        let event = self.outbox.billing(&billing, now)?;
        self.outbox.enqueue(&event).await?;

        let output = match outcome.result {
            Ok(output) => output,
            Err(e) => {
                return Err(RegistryError::Execution {
                    reason: e.reason(),
                    message: format!("{e} (billing event {execution_id})"),
                });
            }
        };
        let output = soma_sign::jcs::parse_strict(&output)
            .ok()
            .and_then(|v| json::to_struct(&v).ok().flatten())
            .ok_or_else(|| RegistryError::Execution {
                reason: "output_invalid",
                message: format!("the adapter's output is not a JSON object (billing event {execution_id})"),
            })?;
        Ok(pb::ExecuteToolResponse {
            output: Some(output),
            fuel_consumed: measured.fuel_consumed,
            peak_memory_bytes: measured.peak_memory_bytes,
            duration_micros: billing.duration_micros,
            billing_event_id: execution_id,
            version: verified.version.clone(),
            module_sha256: verified.module_sha256.to_vec(),
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
