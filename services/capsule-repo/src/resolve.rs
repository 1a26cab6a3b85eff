//! `ResolveCapsuleRun`: what the gateway runs for a tenant's capsule.
//!
//! The caller tenant's installation of the capsule in the environment and
//! its active revision (`capsule_not_installed` when there is none, or no
//! revision is active), that revision's submission (MAC checked, its
//! bundle's digest recomputed, and the bundle parsed — once per distinct
//! bytes, see [`crate::bundles`]), the run input checked against the
//! bundle's input schema (`soma-capsule`'s `check_input`, the field named),
//! and every tool release but the first step's looked up in the
//! ToolRegistry at this moment and fully verified by it: a release revoked
//! after the installation (on any registry replica), gone, holding another
//! module than the bundle pins or failing its verification stops the run
//! here. The first step's release gets the same checks from
//! `ExecuteCapsuleStep`, the gateway's next call, before it runs anything
//! ([`Verify::AfterFirst`]).

use soma_proto::json;
use soma_proto::v1 as pb;

use crate::error::RepoError;
use crate::installations::INSTALLED;
use crate::registry::Verify;
use crate::store::{RevisionRow, SubmissionRow};
use crate::{Actor, Repo};

impl Repo {
    /// `ResolveCapsuleRun`.
    pub(crate) async fn resolve(
        &self,
        actor: &Actor,
        request: pb::ResolveCapsuleRunRequest,
    ) -> Result<pb::ResolvedCapsuleRun, RepoError> {
        let tenant = actor.require_tenant("ResolveCapsuleRun")?;
        let not_installed = || {
            RepoError::not_found(
                "capsule_not_installed",
                format!(
                    "capsule {:?} is not installed in environment {:?}",
                    request.capsule, request.environment
                ),
            )
        };
        // One statement: the installation, its active revision and that
        // revision's submission, each row's MAC checked here. (The other
        // revisions, which a run does not use, are checked by every read
        // of the installation and by `soma verify store`.)
        let run = self
            .store
            .active_run(tenant, &request.environment, &request.capsule)
            .await?
            .ok_or_else(not_installed)?;
        let installation = &run.installation;
        self.check_installation(installation)?;
        if installation.active_revision == 0 {
            return Err(not_installed());
        }
        let broken_revision = || RepoError::RowIntegrity {
            table: RevisionRow::TABLE,
            key: format!(
                "{}/{}",
                installation.installation_id, installation.active_revision
            ),
        };
        let active = run.revision.as_ref().ok_or_else(broken_revision)?;
        self.check_revision(active)?;
        if active.tenant != installation.tenant || active.status != INSTALLED {
            return Err(broken_revision());
        }
        let submission = run.submission.as_ref().ok_or_else(broken_revision)?;
        self.check_submission(submission)?;
        let corrupt = || RepoError::RowIntegrity {
            table: SubmissionRow::TABLE,
            key: submission.submission_id.clone(),
        };
        let (bundle, digest) = self.bundles.parse(&submission.bundle).map_err(|_| corrupt())?;
        if digest.as_slice() != submission.bundle_sha256.as_slice() {
            return Err(corrupt());
        }
        let input = match &request.input {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(input) => json::from_struct(input)
                .map_err(|e| RepoError::invalid("input_invalid", format!("input: {e}")))?,
        };
        bundle.check_input(&input).map_err(|e| RepoError::Invalid {
            reason: e.reason(),
            message: format!("{e} (field {})", e.path()),
        })?;
        self.registry.check_releases(&bundle, Verify::AfterFirst).await?;
        Ok(pb::ResolvedCapsuleRun {
            installation_id: installation.installation_id.clone(),
            revision: u64::try_from(active.revision).unwrap_or(0),
            submission_id: submission.submission_id.clone(),
            capsule: submission.capsule.clone(),
            version: submission.version.clone(),
            bundle_sha256: submission.bundle_sha256.clone(),
            steps: bundle
                .tools()
                .iter()
                .map(|t| pb::CapsuleStep {
                    tool: t.tool.clone(),
                    version: t.version.as_str().to_owned(),
                    module_sha256: t.module_sha256.to_vec(),
                })
                .collect(),
            parameters: json::to_struct(&serde_json::Value::Object(bundle.parameters().clone()))
                .ok()
                .flatten(),
        })
    }
}
