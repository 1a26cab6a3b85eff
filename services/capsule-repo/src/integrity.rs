//! The store sweep: every row of the repository checked — each MAC, each
//! review history chained and complete, each installation's revisions
//! without a gap — and every failing row reported, not only the first.
//! `soma verify store`-style tooling calls [`verify_store`] with the
//! repository's keyring; it only reads.

use soma_sign::HmacKeyring;
use soma_store::Database;

use crate::config::CapsuleRepoConfig;
use crate::error::RepoError;
use crate::store::{InstallationRow, OutboxRow, RevisionRow, SubmissionRow, ThresholdRow};
use crate::{Repo, seal};

/// What [`verify_store`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreReport {
    /// Rows checked, failed or not.
    pub rows_checked: u64,
    /// The rows that failed, in sweep order.
    pub failures: Vec<StoreFailure>,
}

/// One row that failed the sweep (or that is missing from a chain).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreFailure {
    /// Table of the row, e.g. `review_history`.
    pub table: String,
    /// The row's key (`submission_id/sequence` for a history row).
    pub primary_key: String,
    /// Why it failed.
    pub reason: String,
}

impl StoreReport {
    fn fail(&mut self, table: &str, key: &str, reason: impl Into<String>) {
        self.failures.push(StoreFailure {
            table: table.to_owned(),
            primary_key: key.to_owned(),
            reason: reason.into(),
        });
    }
}

/// Sweeps every row of the repository's database `db` with `keys` (the
/// keyring the service MACs with).
pub async fn verify_store(db: &Database, keys: &HmacKeyring) -> Result<StoreReport, RepoError> {
    let keyring = HmacKeyring::from_json(&keys.to_json())?;
    let repo = Repo::new(
        db.clone(),
        CapsuleRepoConfig {
            keys: keyring,
            keys_path: std::path::PathBuf::new(),
            catalogues: Vec::new(),
        },
        None,
    );
    repo.sweep().await
}

const MAC_FAILS: &str = "mac does not verify";

impl Repo {
    async fn sweep(&self) -> Result<StoreReport, RepoError> {
        let mut report = StoreReport::default();
        for row in self.store.thresholds().await? {
            report.rows_checked += 1;
            if self.check_threshold(&row).is_err() {
                report.fail(ThresholdRow::TABLE, &row.publisher, MAC_FAILS);
            }
        }
        for row in self.store.all_submissions().await? {
            report.rows_checked += 1;
            if self.check_submission(&row).is_err() {
                report.fail(SubmissionRow::TABLE, &row.submission_id, MAC_FAILS);
            }
            let history = self.store.history(&row.submission_id).await?;
            report.rows_checked += history.len() as u64;
            for (key, reason) in self.history_faults(&row, &history) {
                report.fail(crate::store::ReviewRow::TABLE, &key, reason);
            }
        }
        for row in self.store.orphan_history().await? {
            report.rows_checked += 1;
            report.fail(
                crate::store::ReviewRow::TABLE,
                &row.key(),
                "its submission does not exist",
            );
        }
        let revisions = self.store.all_revisions().await?;
        for row in self.store.all_installations().await? {
            report.rows_checked += 1;
            if self.check_installation(&row).is_err() {
                report.fail(InstallationRow::TABLE, &row.installation_id, MAC_FAILS);
            }
            let own: Vec<&RevisionRow> = revisions
                .iter()
                .filter(|r| r.installation_id == row.installation_id)
                .collect();
            report.rows_checked += own.len() as u64;
            let mut expected = 1;
            for revision in &own {
                while revision.revision > expected {
                    report.fail(
                        RevisionRow::TABLE,
                        &format!("{}/{expected}", row.installation_id),
                        "missing: a revision row was deleted",
                    );
                    expected += 1;
                }
                if self.check_revision(revision).is_err() {
                    report.fail(RevisionRow::TABLE, &revision.key(), MAC_FAILS);
                } else if revision.tenant != row.tenant {
                    report.fail(RevisionRow::TABLE, &revision.key(), "belongs to another tenant");
                }
                expected = revision.revision + 1;
            }
            for missing in expected..=row.revision {
                report.fail(
                    RevisionRow::TABLE,
                    &format!("{}/{missing}", row.installation_id),
                    "missing: a revision row was deleted",
                );
            }
        }
        for row in self.store.outbox().await? {
            report.rows_checked += 1;
            if seal::check(
                &self.keys,
                OutboxRow::TABLE,
                &row.event_id,
                &row.columns(),
                &row.mac_key_id,
                &row.mac,
            )
            .is_err()
            {
                report.fail(OutboxRow::TABLE, &row.seq.to_string(), MAC_FAILS);
            }
        }
        Ok(report)
    }
}
