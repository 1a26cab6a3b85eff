//! The drill's plan from the installed capsule (`soma drill run --capsule
//! NAME --environment ENV`).
//!
//! Why a capsule and not only a file: a plan file is whatever the checkout
//! holds, and anyone who can write to it sets the targets a drill is held
//! to. The capsule `dr_failover_drill` carries the same plan as its
//! `parameters`, and it ran the whole CapsuleRepo path before a drill can
//! follow it: imported with an attestation by the operator's catalogue key,
//! approved by a second reviewer with a second factor, installed per tenant
//! and environment with revisions and rollback. Its single tool step is a
//! release that returns its input (`drill-plan`, the sandbox's echo module,
//! pinned by digest), so running it with an empty input through the edge
//! (`RunCapsule`, as the drill's tenant) answers the plan exactly as the
//! active revision holds it, after every check a run makes (admission, the
//! installation and its revision, the release verified and not revoked),
//! and the run is recorded in Analytics with its provenance (revision,
//! bundle digest). The plan is resolved at each drill, so a newly installed
//! revision or a rollback takes effect at the next one; it is resolved
//! before anything is looked up or killed, so a refusal leaves the stack
//! alone.
//!
//! The run's output then goes through the very checks a plan file does
//! ([`super::plan::apply_value`]). Refusals, each a one-line reason and its
//! own exit code: [`EXIT_NOT_INSTALLED`], [`EXIT_RELEASE_REVOKED`],
//! [`EXIT_RUN_REFUSED`], [`EXIT_PLAN_INVALID`].

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use serde_json::{Value, json};

use crate::cli::request;

/// Exit code: the capsule is not installed for the drill's tenant in that
/// environment (404 `capsule_not_installed`).
pub const EXIT_NOT_INSTALLED: u8 = 3;
/// Exit code: a release the installed capsule pins was revoked (409
/// `release_revoked`).
pub const EXIT_RELEASE_REVOKED: u8 = 4;
/// Exit code: the edge refused the run for another reason, or the run did
/// not succeed (the reason printed).
pub const EXIT_RUN_REFUSED: u8 = 5;
/// Exit code: the installed capsule's plan fails the plan's checks (the
/// field named).
pub const EXIT_PLAN_INVALID: u8 = 6;

/// The plan of an installed capsule, as its run answered it.
#[derive(Debug)]
pub struct Resolved {
    /// The run's output: the plan (numbers as proto3 JSON carried them).
    pub plan: Value,
    /// The run's id (its record in Analytics names the installation's
    /// revision and the bundle's digest).
    pub run_id: String,
}

/// Why the plan could not be resolved: an exit code and a one-line reason.
#[derive(Debug)]
pub struct Refusal {
    /// The exit code.
    pub code: u8,
    /// Why.
    pub reason: String,
}

impl Refusal {
    /// The refusal on standard error, and its exit code.
    #[expect(clippy::print_stderr, reason = "the command's one-line reason")]
    pub fn exit(&self) -> ExitCode {
        eprintln!("soma: {}", self.reason);
        ExitCode::from(self.code)
    }
}

/// Whether `name` is a capsule name (the bundle's rule: 1 to 64 of
/// `[a-z0-9._-]`, starting with a letter or digit): it goes into the run's
/// path.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
}

/// Runs the installed `capsule` of the drill's tenant in `environment`
/// through the edge of the `soma up` in `data_dir`, with an empty input,
/// and answers its output. `Err(Ok(refusal))`: the edge or the run said
/// no; `Err(Err(e))`: the stack could not be asked (no endpoints, no edge).
pub async fn resolve(
    data_dir: &Path,
    region: &str,
    tenant: &str,
    capsule: &str,
    environment: &str,
) -> Result<Resolved, Result<Refusal, anyhow::Error>> {
    let endpoints = super::endpoints(data_dir).map_err(Err)?;
    let edge = endpoints["edge"]
        .as_str()
        .ok_or_else(|| anyhow!("endpoints.json has no edge"))
        .map_err(Err)?;
    let authority = crate::cli::edge_authority(edge).map_err(Err)?;
    // The drill's tenant runs it: the installation is that tenant's. A
    // capsule's steps run under the caller's own authority, so the token
    // carries tools:execute beside capsules:run, and nothing more.
    let token = crate::token::mint(&crate::token::TokenArgs {
        data_dir: data_dir.to_owned(),
        tenant: tenant.to_owned(),
        region: region.to_owned(),
        subject: Some(format!("drill@{tenant}")),
        scope: "capsules:run tools:execute".to_owned(),
        mfa: false,
        ttl: Duration::from_secs(600),
        operator: false,
    })
    .map_err(Err)?;
    let body = json!({"environment": environment, "input": {}}).to_string();
    let (status, reply) = request(
        http::Method::POST,
        &authority,
        &format!("/v1/capsules/{capsule}:run"),
        Some(&token),
        Some(body.as_bytes()),
    )
    .await
    .with_context(|| format!("running the capsule {capsule} through {edge}"))
    .map_err(Err)?;
    let answer: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
    let source = format!("--capsule {capsule} (environment {environment})");
    if status != http::StatusCode::OK {
        let reason = answer["reason"].as_str().unwrap_or_default();
        let message = answer["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(&reply).into_owned(), str::to_owned);
        let code = match (status.as_u16(), reason) {
            (404, "capsule_not_installed") => EXIT_NOT_INSTALLED,
            (409, "release_revoked") => EXIT_RELEASE_REVOKED,
            _ => EXIT_RUN_REFUSED,
        };
        let hint = match code {
            EXIT_NOT_INSTALLED => {
                " (import it with scripts/ops/schedule_dr_drill.sh import, then review and install it: docs/runbooks/drill-plan.md)"
            }
            EXIT_RELEASE_REVOKED => {
                " (install a revision whose plan tool release is not revoked, or roll back: docs/runbooks/drill-plan.md)"
            }
            _ => "",
        };
        return Err(Ok(Refusal {
            code,
            reason: format!(
                "{source}: refused, HTTP {} {reason}: {message}{hint}",
                status.as_u16()
            ),
        }));
    }
    let run_id = answer["runId"].as_str().unwrap_or_default().to_owned();
    if answer["succeeded"].as_bool() != Some(true) {
        return Err(Ok(Refusal {
            code: EXIT_RUN_REFUSED,
            reason: format!("{source}: run {run_id} did not succeed: {}", answer["output"]),
        }));
    }
    Ok(Resolved {
        plan: answer["output"].clone(),
        run_id,
    })
}
