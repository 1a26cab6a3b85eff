//! Installations: one per tenant, environment and capsule, each change a
//! revision.
//!
//! `CreateInstallation`, `UpdateInstallation` and `RollbackInstallation`
//! each write a revision row, PENDING, in the transaction that moves the
//! installation's `revision` forward. The move is a compare-and-set on the
//! installation row's MAC in the `UPDATE` itself, from the revision the
//! caller saw (`expected_revision`): of two updates made from the same
//! revision, on one replica or two sharing a PostgreSQL, exactly one
//! writes; the other is `ABORTED` `revision_conflict` and writes nothing.
//! Then every tool release of the revision's bundle is verified with the
//! ToolRegistry (`GetRelease` and `VerifyRelease` over mTLS): the revision
//! becomes INSTALLED and the installation's active revision, or FAILED with
//! the reason while the previous active revision stays. The settlement and
//! its `capsule.install` audit event share one transaction.
//!
//! A rollback installs the submission of the newest INSTALLED revision
//! older than the active one.

use soma_proto::v1 as pb;

use crate::error::RepoError;
use crate::registry::Verify;
use crate::store::{InstallationFilter, InstallationRow, RevisionRow, SubmissionRow};
use crate::submissions::{APPROVED, page_of, parse_bundle};
use crate::{Actor, Repo, audit_event, now_nanos, random_id, seal, timestamp};

/// Revision statuses as stored.
pub(crate) const PENDING: &str = "pending";
/// See [`PENDING`].
pub(crate) const INSTALLED: &str = "installed";
/// See [`PENDING`].
pub(crate) const FAILED: &str = "failed";

/// Revision actions as stored.
const CREATE: &str = "create";
/// See [`CREATE`].
const UPDATE: &str = "update";
/// See [`CREATE`].
const ROLLBACK: &str = "rollback";

/// Longest environment name.
const MAX_ENVIRONMENT: usize = 64;
/// Attempts at activating a verified revision while other revisions move
/// the installation.
const ACTIVATE_ATTEMPTS: usize = 8;

/// An installation with its revisions, every MAC checked.
pub(crate) struct View {
    pub installation: InstallationRow,
    /// Oldest first; never empty.
    pub revisions: Vec<RevisionRow>,
}

impl View {
    fn latest(&self) -> &RevisionRow {
        // A view is built only with the installation's every revision,
        // at least its first (checked in `Repo::view`).
        &self.revisions[self.revisions.len() - 1]
    }

    pub(crate) fn active(&self) -> Option<&RevisionRow> {
        self.revisions
            .iter()
            .find(|r| r.revision == self.installation.active_revision)
    }

    fn proto(&self) -> pb::Installation {
        let latest = self.latest();
        let i = &self.installation;
        pb::Installation {
            installation_id: i.installation_id.clone(),
            tenant: i.tenant.clone(),
            environment: i.environment.clone(),
            submission_id: latest.submission_id.clone(),
            revision: u64::try_from(i.revision).unwrap_or(0),
            updated_at: Some(timestamp(i.updated_at)),
            status: status_proto(&latest.status) as i32,
            capsule: i.capsule.clone(),
            version: latest.version.clone(),
            failure_reason: latest.failure_reason.clone(),
            active_revision: u64::try_from(i.active_revision).unwrap_or(0),
            active_submission_id: self.active().map(|r| r.submission_id.clone()).unwrap_or_default(),
        }
    }
}

impl Repo {
    /// `CreateInstallation`.
    pub(crate) async fn create_installation(
        &self,
        actor: &Actor,
        request: pb::CreateInstallationRequest,
    ) -> Result<pb::Installation, RepoError> {
        let tenant = actor.require_tenant("CreateInstallation")?;
        check_environment(&request.environment)?;
        let submission = self.approved(tenant, &request.submission_id).await?;
        let now = now_nanos();
        let mut installation = InstallationRow {
            installation_id: random_id(),
            tenant: tenant.to_owned(),
            environment: request.environment.clone(),
            capsule: submission.capsule.clone(),
            revision: 1,
            active_revision: 0,
            created_at: now,
            created_by: actor.id.clone(),
            updated_at: now,
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        self.seal_installation(&mut installation)?;
        let revision = self.pending_revision(actor, &installation, &submission, CREATE, now)?;
        if !self.store.create_installation(&installation, &revision).await? {
            return Err(RepoError::AlreadyExists {
                reason: "installation_exists",
                message: format!(
                    "capsule {} is already installed in {}: update that installation",
                    installation.capsule, installation.environment
                ),
            });
        }
        self.settle(actor, &installation, revision, &submission).await
    }

    /// `UpdateInstallation`.
    pub(crate) async fn update_installation(
        &self,
        actor: &Actor,
        request: pb::UpdateInstallationRequest,
    ) -> Result<pb::Installation, RepoError> {
        let tenant = actor.require_tenant("UpdateInstallation")?;
        let view = self.view(Some(tenant), &request.installation_id).await?;
        check_expected(&view.installation, request.expected_revision)?;
        let submission = self.approved(tenant, &request.submission_id).await?;
        if submission.capsule != view.installation.capsule {
            return Err(RepoError::invalid(
                "capsule_mismatch",
                format!(
                    "submission {} is of capsule {}, the installation runs {}",
                    submission.submission_id, submission.capsule, view.installation.capsule
                ),
            ));
        }
        self.advance(actor, &view.installation, &submission, UPDATE).await
    }

    /// `RollbackInstallation`.
    pub(crate) async fn rollback_installation(
        &self,
        actor: &Actor,
        request: pb::RollbackInstallationRequest,
    ) -> Result<pb::Installation, RepoError> {
        let tenant = actor.require_tenant("RollbackInstallation")?;
        let view = self.view(Some(tenant), &request.installation_id).await?;
        check_expected(&view.installation, request.expected_revision)?;
        let active = view.installation.active_revision;
        let previous = view
            .revisions
            .iter()
            .rev()
            .find(|r| r.status == INSTALLED && r.revision < active)
            .ok_or_else(|| {
                RepoError::precondition(
                    "no_previous_revision",
                    format!(
                        "installation {} has no installed revision before its active revision {active}",
                        view.installation.installation_id
                    ),
                )
            })?;
        let submission = self.submission(Some(tenant), &previous.submission_id).await?;
        self.advance(actor, &view.installation, &submission, ROLLBACK)
            .await
    }

    /// `ListInstallations`.
    pub(crate) async fn list_installations(
        &self,
        actor: &Actor,
        request: pb::ListInstallationsRequest,
    ) -> Result<pb::ListInstallationsResponse, RepoError> {
        let scope = actor.read_scope()?;
        let status = match pb::InstallationStatus::try_from(request.status) {
            Ok(pb::InstallationStatus::Unspecified) => None,
            Ok(pb::InstallationStatus::Pending) => Some(PENDING),
            Ok(pb::InstallationStatus::Installed) => Some(INSTALLED),
            Ok(pb::InstallationStatus::Failed) => Some(FAILED),
            Err(_) => {
                return Err(RepoError::invalid(
                    "status_invalid",
                    format!("status {} is not an installation status", request.status),
                ));
            }
        };
        let nonempty = |s: &str| !s.is_empty();
        let filter = InstallationFilter {
            tenant: scope,
            environment: nonempty(&request.environment).then_some(request.environment.as_str()),
            capsule: nonempty(&request.capsule).then_some(request.capsule.as_str()),
            installation_id: nonempty(&request.installation_id).then_some(request.installation_id.as_str()),
        };
        let (size, after) = page_of(request.page)?;
        let mut rows = self
            .store
            .installations(
                &filter,
                after.as_ref().map(|(t, id)| (*t, id.as_str())),
                i64::from(size) + 1,
            )
            .await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => format!("{}.{}", last.created_at, last.installation_id),
            _ => String::new(),
        };
        let mut installations = Vec::with_capacity(rows.len());
        let mut revisions = Vec::new();
        for row in rows {
            let view = self.view_of(row).await?;
            // The status is the latest revision's (filtered after the page
            // is read: a page may hold fewer than its size).
            if status.is_some_and(|s| view.latest().status != s) {
                continue;
            }
            installations.push(view.proto());
            if request.history {
                revisions.extend(view.revisions.iter().rev().map(revision_proto));
            }
        }
        Ok(pb::ListInstallationsResponse {
            installations,
            next_page_token,
            revisions,
        })
    }

    /// The installation `id` of `tenant` (any for `None`) with its
    /// revisions, every MAC checked; another tenant's is `NOT_FOUND`.
    pub(crate) async fn view(&self, tenant: Option<&str>, id: &str) -> Result<View, RepoError> {
        let filter = InstallationFilter {
            tenant,
            installation_id: Some(id),
            ..InstallationFilter::default()
        };
        let row = self
            .store
            .installations(&filter, None, 1)
            .await?
            .pop()
            .ok_or_else(|| {
                RepoError::not_found(
                    "installation_not_found",
                    format!("installation {id:?} does not exist"),
                )
            })?;
        self.view_of(row).await
    }

    /// `row` and its revisions: each MAC, revisions 1..=revision without a
    /// gap, each of the installation's tenant, the active one installed.
    pub(crate) async fn view_of(&self, row: InstallationRow) -> Result<View, RepoError> {
        self.check_installation(&row)?;
        let revisions = self.store.revisions(&row.installation_id, row.revision).await?;
        let id = row.installation_id.clone();
        let broken = |revision: i64| RepoError::RowIntegrity {
            table: RevisionRow::TABLE,
            key: format!("{id}/{revision}"),
        };
        for (i, revision) in revisions.iter().enumerate() {
            let expected = i64::try_from(i).unwrap_or(i64::MAX).saturating_add(1);
            if revision.revision != expected {
                return Err(broken(expected));
            }
            self.check_revision(revision)?;
            if revision.tenant != row.tenant {
                return Err(broken(revision.revision));
            }
        }
        let count = i64::try_from(revisions.len()).unwrap_or(i64::MAX);
        if count != row.revision || count == 0 {
            return Err(broken(count.min(row.revision).saturating_add(1)));
        }
        let view = View {
            installation: row,
            revisions,
        };
        if view.installation.active_revision != 0 && view.active().is_none_or(|r| r.status != INSTALLED) {
            return Err(broken(view.installation.active_revision));
        }
        Ok(view)
    }

    /// The approved submission `id` of `tenant`.
    async fn approved(&self, tenant: &str, id: &str) -> Result<SubmissionRow, RepoError> {
        let submission = self.submission(Some(tenant), id).await?;
        if submission.state != APPROVED {
            return Err(RepoError::precondition(
                "submission_not_approved",
                format!(
                    "submission {} is {}: only an approved submission is installed",
                    submission.submission_id, submission.state
                ),
            ));
        }
        Ok(submission)
    }

    /// Moves `installation` one revision forward to `submission`, from the
    /// revision it holds, then settles that revision.
    async fn advance(
        &self,
        actor: &Actor,
        installation: &InstallationRow,
        submission: &SubmissionRow,
        action: &str,
    ) -> Result<pb::Installation, RepoError> {
        let now = now_nanos();
        let mut moved = InstallationRow {
            revision: installation.revision.saturating_add(1),
            updated_at: now,
            ..installation.clone()
        };
        self.seal_installation(&mut moved)?;
        let revision = self.pending_revision(actor, &moved, submission, action, now)?;
        if !self
            .store
            .advance_installation(&moved, &installation.mac, &revision)
            .await?
        {
            return Err(conflict(installation));
        }
        self.settle(actor, &moved, revision, submission).await
    }

    /// Verifies the releases of `revision`'s bundle and records the
    /// outcome: INSTALLED (and active) or FAILED with the reason.
    async fn settle(
        &self,
        actor: &Actor,
        installation: &InstallationRow,
        mut revision: RevisionRow,
        submission: &SubmissionRow,
    ) -> Result<pb::Installation, RepoError> {
        let verified = match parse_bundle(&submission.bundle) {
            Ok(bundle) => self.registry.check_releases(&bundle, Verify::All).await,
            Err(_) => Err(RepoError::RowIntegrity {
                table: SubmissionRow::TABLE,
                key: submission.submission_id.clone(),
            }),
        };
        match verified {
            Ok(()) => revision.status = INSTALLED.to_owned(),
            Err(e @ (RepoError::FailedPrecondition { .. } | RepoError::Registry(_))) => {
                revision.status = FAILED.to_owned();
                revision.failure_reason = format!("{}: {e}", e.reason());
            }
            Err(e) => return Err(e),
        }
        self.seal_revision(&mut revision)?;
        let now = now_nanos();
        let audit = self.outbox.audit(
            &audit_event(
                &installation.tenant,
                "capsule.install",
                &format!("installation:{}", installation.installation_id),
                serde_json::json!({
                    "installation_id": installation.installation_id,
                    "environment": installation.environment,
                    "capsule": installation.capsule,
                    "revision": revision.revision,
                    "action": revision.action,
                    "status": revision.status,
                    "failure_reason": revision.failure_reason,
                    "submission_id": revision.submission_id,
                    "version": revision.version,
                    "actor": actor.id,
                    "request_id": actor.request_id,
                }),
                now,
            ),
            now,
        )?;
        let settled = if revision.status == INSTALLED {
            self.activate(&revision, &audit, now).await?
        } else {
            self.store.settle_revision(&revision, None, &audit).await?
        };
        if !settled {
            return Err(conflict(installation));
        }
        self.outbox.wake();
        tracing::info!(
            installation = %installation.installation_id,
            revision = revision.revision,
            action = %revision.action,
            status = %revision.status,
            actor = %actor.id,
            "installation revision settled"
        );
        Ok(self
            .view(Some(&installation.tenant), &installation.installation_id)
            .await?
            .proto())
    }

    /// Settles `revision` as INSTALLED and makes it the active revision
    /// (unless a newer one is active already), retrying while other
    /// revisions move the installation row.
    async fn activate(
        &self,
        revision: &RevisionRow,
        audit: &crate::store::NewOutbox,
        now: i64,
    ) -> Result<bool, RepoError> {
        for _ in 0..ACTIVATE_ATTEMPTS {
            let current = self
                .view(Some(&revision.tenant), &revision.installation_id)
                .await?;
            let current = current.installation;
            let mut activated = InstallationRow {
                active_revision: current.active_revision.max(revision.revision),
                updated_at: now,
                ..current.clone()
            };
            self.seal_installation(&mut activated)?;
            if self
                .store
                .settle_revision(revision, Some((&activated, &current.mac)), audit)
                .await?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn pending_revision(
        &self,
        actor: &Actor,
        installation: &InstallationRow,
        submission: &SubmissionRow,
        action: &str,
        now: i64,
    ) -> Result<RevisionRow, RepoError> {
        let mut revision = RevisionRow {
            installation_id: installation.installation_id.clone(),
            revision: installation.revision,
            tenant: installation.tenant.clone(),
            submission_id: submission.submission_id.clone(),
            version: submission.version.clone(),
            action: action.to_owned(),
            status: PENDING.to_owned(),
            failure_reason: String::new(),
            actor: actor.id.clone(),
            created_at: now,
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        self.seal_revision(&mut revision)?;
        Ok(revision)
    }

    fn seal_installation(&self, row: &mut InstallationRow) -> Result<(), RepoError> {
        (row.mac_key_id, row.mac) = seal::mac(&self.keys, InstallationRow::TABLE, &row.columns())?;
        Ok(())
    }

    fn seal_revision(&self, row: &mut RevisionRow) -> Result<(), RepoError> {
        (row.mac_key_id, row.mac) = seal::mac(&self.keys, RevisionRow::TABLE, &row.columns())?;
        Ok(())
    }

    pub(crate) fn check_installation(&self, row: &InstallationRow) -> Result<(), RepoError> {
        seal::check(
            &self.keys,
            InstallationRow::TABLE,
            &row.installation_id,
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
    }

    pub(crate) fn check_revision(&self, row: &RevisionRow) -> Result<(), RepoError> {
        seal::check(
            &self.keys,
            RevisionRow::TABLE,
            &row.key(),
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
    }
}

fn check_environment(environment: &str) -> Result<(), RepoError> {
    let ok = !environment.is_empty()
        && environment.len() <= MAX_ENVIRONMENT
        && environment.as_bytes()[0].is_ascii_alphanumeric()
        && environment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RepoError::invalid(
            "environment_invalid",
            format!("environment: 1 to {MAX_ENVIRONMENT} of [a-z0-9._-], starting with a letter or digit"),
        ))
    }
}

fn check_expected(installation: &InstallationRow, expected: u64) -> Result<(), RepoError> {
    if i64::try_from(expected).ok() == Some(installation.revision) {
        Ok(())
    } else {
        Err(RepoError::Aborted {
            reason: "revision_conflict",
            message: format!(
                "installation {} is at revision {}, not the expected revision {expected}",
                installation.installation_id, installation.revision
            ),
        })
    }
}

fn conflict(installation: &InstallationRow) -> RepoError {
    RepoError::Aborted {
        reason: "revision_conflict",
        message: format!(
            "installation {} moved past revision {} meanwhile; read it again",
            installation.installation_id, installation.revision
        ),
    }
}

fn status_proto(status: &str) -> pb::InstallationStatus {
    match status {
        PENDING => pb::InstallationStatus::Pending,
        INSTALLED => pb::InstallationStatus::Installed,
        FAILED => pb::InstallationStatus::Failed,
        _ => pb::InstallationStatus::Unspecified,
    }
}

fn revision_proto(row: &RevisionRow) -> pb::InstallationRevision {
    pb::InstallationRevision {
        installation_id: row.installation_id.clone(),
        revision: u64::try_from(row.revision).unwrap_or(0),
        submission_id: row.submission_id.clone(),
        version: row.version.clone(),
        action: row.action.clone(),
        status: status_proto(&row.status) as i32,
        failure_reason: row.failure_reason.clone(),
        actor: row.actor.clone(),
        created_at: Some(timestamp(row.created_at)),
    }
}
