//! The repository's tables: publisher thresholds, submissions, review
//! history, installations, installation revisions and the outbox, for
//! SQLite and PostgreSQL (each query written once, see
//! [`soma_store::on_pool`]).
//!
//! Rows are returned as they are stored; their MACs are checked by the
//! callers ([`crate::seal`]) before anything is trusted. Every write that
//! moves a row someone else may move too is a compare-and-set on the row's
//! MAC, made by the database in the `UPDATE` itself (never only in memory),
//! so that replicas sharing one PostgreSQL agree on who won.

use serde_json::{Value, json};
use soma_sign::hex::encode as hex;
use soma_store::{Database, Inline, on_pool, retry, retry_on_pool};
use sqlx::Row as _;

use crate::error::RepoError;

// ---- rows ----

/// A row of `publisher_thresholds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ThresholdRow {
    pub publisher: String,
    pub threshold: i64,
    pub set_by: String,
    pub set_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl ThresholdRow {
    pub(crate) const TABLE: &'static str = "publisher_thresholds";

    /// The columns the row MAC covers.
    pub(crate) fn columns(&self) -> Value {
        json!({
            "publisher": self.publisher,
            "threshold": self.threshold.to_string(),
            "set_by": self.set_by,
            "set_at": self.set_at.to_string(),
        })
    }
}

/// A row of `submissions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SubmissionRow {
    pub submission_id: String,
    pub tenant: String,
    pub capsule: String,
    pub version: String,
    /// The canonical bundle bytes.
    pub bundle: Vec<u8>,
    pub bundle_sha256: Vec<u8>,
    /// The DSSE envelope, JSON.
    pub attestation: Vec<u8>,
    pub publisher: String,
    /// Key ids that counted, comma-separated.
    pub signer_key_ids: String,
    pub submitter: String,
    pub source: String,
    pub state: String,
    /// How many review history rows the submission has.
    pub review_seq: i64,
    pub submitted_at: i64,
    pub updated_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl SubmissionRow {
    pub(crate) const TABLE: &'static str = "submissions";

    /// The columns the row MAC covers: every column but the MAC itself.
    pub(crate) fn columns(&self) -> Value {
        json!({
            "submission_id": self.submission_id,
            "tenant": self.tenant,
            "capsule": self.capsule,
            "version": self.version,
            "bundle": hex(&self.bundle),
            "bundle_sha256": hex(&self.bundle_sha256),
            "attestation": hex(&self.attestation),
            "publisher": self.publisher,
            "signer_key_ids": self.signer_key_ids,
            "submitter": self.submitter,
            "source": self.source,
            "state": self.state,
            "review_seq": self.review_seq.to_string(),
            "submitted_at": self.submitted_at.to_string(),
            "updated_at": self.updated_at.to_string(),
        })
    }
}

/// A row of `review_history`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReviewRow {
    pub submission_id: String,
    pub sequence: i64,
    pub review_id: String,
    pub tenant: String,
    pub reviewer: String,
    pub decision: String,
    pub from_state: String,
    pub to_state: String,
    pub comment: String,
    pub reviewed_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl ReviewRow {
    pub(crate) const TABLE: &'static str = "review_history";

    /// `submission_id/sequence`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.submission_id, self.sequence)
    }

    /// The columns the row MAC covers, with the MAC of the row before it
    /// (empty for the first): a row deleted, inserted or rewritten breaks
    /// the MAC of the row after it.
    pub(crate) fn columns(&self, previous_mac: &[u8]) -> Value {
        json!({
            "submission_id": self.submission_id,
            "sequence": self.sequence.to_string(),
            "review_id": self.review_id,
            "tenant": self.tenant,
            "reviewer": self.reviewer,
            "decision": self.decision,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "comment": self.comment,
            "reviewed_at": self.reviewed_at.to_string(),
            "previous_mac": hex(previous_mac),
        })
    }
}

/// A row of `installations`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InstallationRow {
    pub installation_id: String,
    pub tenant: String,
    pub environment: String,
    pub capsule: String,
    /// The latest revision written.
    pub revision: i64,
    /// The latest INSTALLED revision (0: none).
    pub active_revision: i64,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl InstallationRow {
    pub(crate) const TABLE: &'static str = "installations";

    /// The columns the row MAC covers.
    pub(crate) fn columns(&self) -> Value {
        json!({
            "installation_id": self.installation_id,
            "tenant": self.tenant,
            "environment": self.environment,
            "capsule": self.capsule,
            "revision": self.revision.to_string(),
            "active_revision": self.active_revision.to_string(),
            "created_at": self.created_at.to_string(),
            "created_by": self.created_by,
            "updated_at": self.updated_at.to_string(),
        })
    }
}

/// A row of `installation_revisions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RevisionRow {
    pub installation_id: String,
    pub revision: i64,
    pub tenant: String,
    pub submission_id: String,
    pub version: String,
    pub action: String,
    pub status: String,
    pub failure_reason: String,
    pub actor: String,
    pub created_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl RevisionRow {
    pub(crate) const TABLE: &'static str = "installation_revisions";

    /// `installation_id/revision`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.installation_id, self.revision)
    }

    /// The columns the row MAC covers.
    pub(crate) fn columns(&self) -> Value {
        json!({
            "installation_id": self.installation_id,
            "revision": self.revision.to_string(),
            "tenant": self.tenant,
            "submission_id": self.submission_id,
            "version": self.version,
            "action": self.action,
            "status": self.status,
            "failure_reason": self.failure_reason,
            "actor": self.actor,
            "created_at": self.created_at.to_string(),
        })
    }
}

/// An event waiting in the outbox for Analytics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutboxRow {
    pub seq: i64,
    pub kind: String,
    pub event_id: String,
    /// The encoded `RecordAuditEventRequest`.
    pub payload: Vec<u8>,
    pub created_at: i64,
    pub attempts: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl OutboxRow {
    pub(crate) const TABLE: &'static str = "outbox";

    /// The columns the row MAC covers (delivery bookkeeping is not: it
    /// never changes what is sent).
    pub(crate) fn columns(&self) -> Value {
        outbox_columns(&self.kind, &self.event_id, &self.payload, self.created_at)
    }
}

/// The MACed columns of an outbox row.
pub(crate) fn outbox_columns(kind: &str, event_id: &str, payload: &[u8], created_at: i64) -> Value {
    json!({
        "kind": kind,
        "event_id": event_id,
        "payload": hex(payload),
        "created_at": created_at.to_string(),
    })
}

/// An outbox event to insert, MAC made.
#[derive(Clone, Debug)]
pub(crate) struct NewOutbox {
    pub kind: &'static str,
    pub event_id: String,
    pub payload: Vec<u8>,
    pub created_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

// ---- columns and row readers ----

const THRESHOLD_COLUMNS: &str = "publisher, threshold, set_by, set_at, mac_key_id, mac";
const SUBMISSION_COLUMNS: &str = "submission_id, tenant, capsule, version, bundle, bundle_sha256, attestation, \
                                  publisher, signer_key_ids, submitter, source, state, review_seq, submitted_at, \
                                  updated_at, mac_key_id, mac";
const REVIEW_COLUMNS: &str = "submission_id, sequence, review_id, tenant, reviewer, decision, from_state, \
                              to_state, comment, reviewed_at, mac_key_id, mac";
const INSTALLATION_COLUMNS: &str = "installation_id, tenant, environment, capsule, revision, active_revision, \
                                    created_at, created_by, updated_at, mac_key_id, mac";
const REVISION_COLUMNS: &str = "installation_id, revision, tenant, submission_id, version, action, status, \
                                failure_reason, actor, created_at, mac_key_id, mac";

/// Reads a row selected with [`THRESHOLD_COLUMNS`] (a macro, so it expands
/// once per engine's row type).
macro_rules! threshold_of {
    () => {
        |row| -> Result<ThresholdRow, sqlx::Error> {
            Ok(ThresholdRow {
                publisher: row.try_get(0)?,
                threshold: row.try_get(1)?,
                set_by: row.try_get(2)?,
                set_at: row.try_get(3)?,
                mac_key_id: row.try_get(4)?,
                mac: row.try_get(5)?,
            })
        }
    };
}

/// Reads a row selected with [`SUBMISSION_COLUMNS`].
macro_rules! submission_of {
    () => {
        submission_of!(0)
    };
    ($offset:expr) => {
        |row| -> Result<SubmissionRow, sqlx::Error> {
            let o: usize = $offset;
            Ok(SubmissionRow {
                submission_id: row.try_get(o)?,
                tenant: row.try_get(o + 1)?,
                capsule: row.try_get(o + 2)?,
                version: row.try_get(o + 3)?,
                bundle: row.try_get(o + 4)?,
                bundle_sha256: row.try_get(o + 5)?,
                attestation: row.try_get(o + 6)?,
                publisher: row.try_get(o + 7)?,
                signer_key_ids: row.try_get(o + 8)?,
                submitter: row.try_get(o + 9)?,
                source: row.try_get(o + 10)?,
                state: row.try_get(o + 11)?,
                review_seq: row.try_get(o + 12)?,
                submitted_at: row.try_get(o + 13)?,
                updated_at: row.try_get(o + 14)?,
                mac_key_id: row.try_get(o + 15)?,
                mac: row.try_get(o + 16)?,
            })
        }
    };
}

/// Reads a row selected with [`REVIEW_COLUMNS`].
macro_rules! review_of {
    () => {
        |row| -> Result<ReviewRow, sqlx::Error> {
            Ok(ReviewRow {
                submission_id: row.try_get(0)?,
                sequence: row.try_get(1)?,
                review_id: row.try_get(2)?,
                tenant: row.try_get(3)?,
                reviewer: row.try_get(4)?,
                decision: row.try_get(5)?,
                from_state: row.try_get(6)?,
                to_state: row.try_get(7)?,
                comment: row.try_get(8)?,
                reviewed_at: row.try_get(9)?,
                mac_key_id: row.try_get(10)?,
                mac: row.try_get(11)?,
            })
        }
    };
}

/// Reads a row selected with [`INSTALLATION_COLUMNS`].
macro_rules! installation_of {
    () => {
        installation_of!(0)
    };
    ($offset:expr) => {
        |row| -> Result<InstallationRow, sqlx::Error> {
            let o: usize = $offset;
            Ok(InstallationRow {
                installation_id: row.try_get(o)?,
                tenant: row.try_get(o + 1)?,
                environment: row.try_get(o + 2)?,
                capsule: row.try_get(o + 3)?,
                revision: row.try_get(o + 4)?,
                active_revision: row.try_get(o + 5)?,
                created_at: row.try_get(o + 6)?,
                created_by: row.try_get(o + 7)?,
                updated_at: row.try_get(o + 8)?,
                mac_key_id: row.try_get(o + 9)?,
                mac: row.try_get(o + 10)?,
            })
        }
    };
}

/// Reads a row selected with [`REVISION_COLUMNS`].
macro_rules! revision_of {
    () => {
        revision_of!(0)
    };
    ($offset:expr) => {
        |row| -> Result<RevisionRow, sqlx::Error> {
            let o: usize = $offset;
            Ok(RevisionRow {
                installation_id: row.try_get(o)?,
                revision: row.try_get(o + 1)?,
                tenant: row.try_get(o + 2)?,
                submission_id: row.try_get(o + 3)?,
                version: row.try_get(o + 4)?,
                action: row.try_get(o + 5)?,
                status: row.try_get(o + 6)?,
                failure_reason: row.try_get(o + 7)?,
                actor: row.try_get(o + 8)?,
                created_at: row.try_get(o + 9)?,
                mac_key_id: row.try_get(o + 10)?,
                mac: row.try_get(o + 11)?,
            })
        }
    };
}

/// The rows a capsule run reads ([`Store::active_run`]).
#[derive(Debug)]
pub(crate) struct ActiveRun {
    pub installation: InstallationRow,
    /// The active revision; `None` when no row has that number.
    pub revision: Option<RevisionRow>,
    /// The active revision's submission, of the installation's tenant;
    /// `None` when there is no such row.
    pub submission: Option<SubmissionRow>,
}

/// Reads a row of [`Store::active_run`]'s statement: the installation's
/// columns, then the revision's from [`ACTIVE_RUN_REVISION_AT`], then the
/// submission's from [`ACTIVE_RUN_SUBMISSION_AT`] (a LEFT JOIN's absent row
/// is NULL in its first column).
macro_rules! active_run_of {
    () => {
        |row| -> Result<ActiveRun, sqlx::Error> {
            // (An array's `map` gives each closure its row type.)
            let [installation] = [row].map(installation_of!(0));
            let revision_key: Option<String> = row.try_get(ACTIVE_RUN_REVISION_AT)?;
            let revision = match revision_key {
                None => None,
                Some(_) => {
                    let [revision] = [row].map(revision_of!(ACTIVE_RUN_REVISION_AT));
                    Some(revision?)
                }
            };
            let submission_key: Option<String> = row.try_get(ACTIVE_RUN_SUBMISSION_AT)?;
            let submission = match submission_key {
                None => None,
                Some(_) => {
                    let [submission] = [row].map(submission_of!(ACTIVE_RUN_SUBMISSION_AT));
                    Some(submission?)
                }
            };
            Ok(ActiveRun {
                installation: installation?,
                revision,
                submission,
            })
        }
    };
}

/// First column of the revision in [`Store::active_run`]'s statement.
const ACTIVE_RUN_REVISION_AT: usize = 11;
/// First column of the submission in [`Store::active_run`]'s statement.
const ACTIVE_RUN_SUBMISSION_AT: usize = ACTIVE_RUN_REVISION_AT + 12;

/// One value bound to a query built at run time.
#[derive(Clone, Debug)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// Binds `$binds` in order to `$query`.
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind {
                Bind::Text(s) => query.bind(s.clone()),
                Bind::Int(i) => query.bind(*i),
            };
        }
        query
    }};
}

/// Binds a revision row's columns, in [`REVISION_COLUMNS`] order.
macro_rules! bind_revision {
    ($query:expr, $r:expr) => {
        $query
            .bind(&$r.installation_id)
            .bind($r.revision)
            .bind(&$r.tenant)
            .bind(&$r.submission_id)
            .bind(&$r.version)
            .bind(&$r.action)
            .bind(&$r.status)
            .bind(&$r.failure_reason)
            .bind(&$r.actor)
            .bind($r.created_at)
            .bind(&$r.mac_key_id)
            .bind(&$r.mac)
    };
}

/// The compare-and-set of an installation row on its MAC.
macro_rules! update_installation {
    ($updated:expr, $old_mac:expr) => {
        sqlx::query(
            "UPDATE installations SET revision = $1, active_revision = $2, updated_at = $3, mac_key_id = $4, \
             mac = $5 WHERE installation_id = $6 AND mac = $7",
        )
        .bind($updated.revision)
        .bind($updated.active_revision)
        .bind($updated.updated_at)
        .bind(&$updated.mac_key_id)
        .bind(&$updated.mac)
        .bind(&$updated.installation_id)
        .bind($old_mac)
    };
}

const INSERT_OUTBOX: &str = "INSERT INTO outbox (kind, event_id, payload, created_at, next_attempt_at, \
                             mac_key_id, mac) VALUES ($1, $2, $3, $4, $4, $5, $6)";

macro_rules! insert_outbox {
    ($tx:expr, $event:expr) => {
        sqlx::query(INSERT_OUTBOX)
            .bind($event.kind)
            .bind(&$event.event_id)
            .bind(&$event.payload)
            .bind($event.created_at)
            .bind(&$event.mac_key_id)
            .bind(&$event.mac)
            .execute(&mut *$tx)
            .await?
    };
}

/// Runs one write (`$write`, a query not yet executed) and, if it changed
/// exactly one row, runs `$then` (more writes on `$tx`) and inserts
/// `$audit` into the outbox in the same transaction and commits; evaluates
/// to whether the row was written. Nothing is committed when the write
/// changed no row.
///
/// Retried on a new connection when the connection is lost: a loss before
/// `COMMIT` rolled the transaction back on the server, and every `$write`
/// is conditional (`ON CONFLICT DO NOTHING`, a compare-and-set on the
/// row's MAC, `status = 'pending'`), so a rerun after a `COMMIT` that did
/// happen changes no row and writes nothing twice. It then evaluates to
/// `false`, and the caller looks its rows up before answering: stored
/// exactly as this request made them (their MACs cover timestamps and
/// actors), they are its own write.
macro_rules! write_with_audit {
    ($db:expr, $operation:expr, $audit:expr, $write:expr) => {
        write_with_audit!($db, $operation, $audit, $write, |tx| {})
    };
    ($db:expr, $operation:expr, $audit:expr, $write:expr, |$tx:ident| $then:block) => {
        retry_on_pool!($db, $operation, RepoError, pool => {
            let mut $tx = pool.begin().await?;
            let written = $write.execute(&mut *$tx).await?.rows_affected() == 1;
            if written {
                $then
                if let Some(audit) = $audit {
                    insert_outbox!($tx, audit);
                }
                $tx.commit().await?;
            }
            written
        })?
    };
}

// ---- the store ----

/// The tables, through one database handle.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    db: Database,
}

impl Store {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    // ---- publisher thresholds ----

    #[tracing::instrument(skip_all)]
    pub(crate) async fn threshold(&self, publisher: &str) -> Result<Option<ThresholdRow>, RepoError> {
        let sql = format!("SELECT {THRESHOLD_COLUMNS} FROM publisher_thresholds WHERE publisher = $1");
        retry_on_pool!(self.db, "threshold", RepoError, pool => {
            sqlx::query(&sql)
                .bind(publisher)
                // All rows (at most one), so that the statement ends
                // before the connection goes back to the pool (see the
                // backlog query below).
                .fetch_all(pool)
                .await?
                .first()
                .map(threshold_of!())
                .transpose()?
        })
    }

    #[tracing::instrument(skip_all)]
    pub(crate) async fn thresholds(&self) -> Result<Vec<ThresholdRow>, RepoError> {
        let sql = format!("SELECT {THRESHOLD_COLUMNS} FROM publisher_thresholds ORDER BY publisher");
        retry_on_pool!(self.db, "thresholds", RepoError, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(threshold_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Sets a publisher's threshold, with its audit event.
    ///
    /// Retried on a new connection when the connection is lost. The upsert
    /// is not conditional (run again it would write a second audit event),
    /// so each rerun first looks the threshold up: stored exactly as this
    /// request made it (its MAC covers `set_at` and `set_by`), the earlier
    /// attempt committed and nothing is written again.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn set_threshold(&self, row: &ThresholdRow, audit: &NewOutbox) -> Result<(), RepoError> {
        let sql = format!(
            "INSERT INTO publisher_thresholds ({THRESHOLD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (publisher) DO UPDATE SET threshold = excluded.threshold, set_by = excluded.set_by, \
             set_at = excluded.set_at, mac_key_id = excluded.mac_key_id, mac = excluded.mac"
        );
        let mut rerun = false;
        retry!(self.db, "set_threshold", RepoError, {
            if std::mem::replace(&mut rerun, true)
                && self.threshold(&row.publisher).await?.as_ref() == Some(row)
            {
                return Ok(());
            }
            on_pool!(self.db, pool => {
                let mut tx = pool.begin().await?;
                sqlx::query(&sql)
                    .bind(&row.publisher)
                    .bind(row.threshold)
                    .bind(&row.set_by)
                    .bind(row.set_at)
                    .bind(&row.mac_key_id)
                    .bind(&row.mac)
                    .execute(&mut *tx)
                    .await?;
                insert_outbox!(tx, audit);
                tx.commit().await?;
            });
            Ok(())
        })
    }

    // ---- submissions ----

    /// The submission `id`, of `tenant` when given.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn submission(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<Option<SubmissionRow>, RepoError> {
        let filter = if tenant.is_some() { "AND tenant = $2" } else { "" };
        let sql = format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE submission_id = $1 {filter}");
        retry_on_pool!(self.db, "submission", RepoError, pool => {
            let mut query = sqlx::query(&sql).bind(id);
            if let Some(tenant) = tenant {
                query = query.bind(tenant);
            }
            query
                // All rows (at most one), so that the statement ends
                // before the connection goes back to the pool (see the
                // backlog query below).
                .fetch_all(pool)
                .await?
                .first()
                .map(submission_of!())
                .transpose()?
        })
    }

    /// Submissions matching `filter`, oldest first, after the position
    /// `after` (`submitted_at`, `submission_id`), at most `limit`.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn submissions(
        &self,
        filter: &SubmissionFilter<'_>,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<SubmissionRow>, RepoError> {
        let mut binds: Vec<Bind> = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        let mut push = |clause: &str, bind: Bind| {
            binds.push(bind);
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(tenant) = filter.tenant {
            push("tenant = ?", Bind::Text(tenant.to_owned()));
        }
        if let Some(state) = filter.state {
            push("state = ?", Bind::Text(state.to_owned()));
        }
        if let Some(capsule) = filter.capsule {
            push("capsule = ?", Bind::Text(capsule.to_owned()));
        }
        if let Some((at, id)) = after {
            let n = binds.len() + 1;
            binds.push(Bind::Int(at));
            binds.push(Bind::Int(at));
            binds.push(Bind::Text(id.to_owned()));
            clauses.push(format!(
                "(submitted_at > ${n} OR (submitted_at = ${} AND submission_id > ${}))",
                n + 1,
                n + 2
            ));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        binds.push(Bind::Int(limit));
        let sql = format!(
            "SELECT {SUBMISSION_COLUMNS} FROM submissions {filter} ORDER BY submitted_at, submission_id LIMIT ${}",
            binds.len()
        );
        retry_on_pool!(self.db, "submissions", RepoError, pool => {
            bind_all!(sqlx::query(&sql), &binds)
                .fetch_all(pool)
                .await?
                .iter()
                .map(submission_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Inserts a submission and its audit event; `false` if the tenant
    /// already holds this capsule at this version.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn insert_submission(
        &self,
        row: &SubmissionRow,
        audit: &NewOutbox,
    ) -> Result<bool, RepoError> {
        let sql = format!(
            "INSERT INTO submissions ({SUBMISSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17) ON CONFLICT DO NOTHING"
        );
        let written = write_with_audit!(
            self.db,
            "insert_submission",
            Some(audit),
            sqlx::query(&sql)
                .bind(&row.submission_id)
                .bind(&row.tenant)
                .bind(&row.capsule)
                .bind(&row.version)
                .bind(&row.bundle)
                .bind(&row.bundle_sha256)
                .bind(&row.attestation)
                .bind(&row.publisher)
                .bind(&row.signer_key_ids)
                .bind(&row.submitter)
                .bind(&row.source)
                .bind(&row.state)
                .bind(row.review_seq)
                .bind(row.submitted_at)
                .bind(row.updated_at)
                .bind(&row.mac_key_id)
                .bind(&row.mac)
        );
        Ok(written || self.submission(&row.submission_id, None).await?.as_ref() == Some(row))
    }

    /// Every review history row of `submission_id`, in sequence order.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn history(&self, submission_id: &str) -> Result<Vec<ReviewRow>, RepoError> {
        let sql =
            format!("SELECT {REVIEW_COLUMNS} FROM review_history WHERE submission_id = $1 ORDER BY sequence");
        retry_on_pool!(self.db, "history", RepoError, pool => {
            sqlx::query(&sql)
                .bind(submission_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(review_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Records a review: the submission moves to `updated` only if it still
    /// holds `old_mac` (compare-and-set), and its history row and audit
    /// event are written in the same transaction. `false`: another review
    /// came first, nothing was written.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn review(
        &self,
        updated: &SubmissionRow,
        old_mac: &[u8],
        review: &ReviewRow,
        audit: &NewOutbox,
    ) -> Result<bool, RepoError> {
        let insert = format!(
            "INSERT INTO review_history ({REVIEW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let written = write_with_audit!(
            self.db,
            "review",
            Some(audit),
            sqlx::query(
                "UPDATE submissions SET state = $1, review_seq = $2, updated_at = $3, mac_key_id = $4, mac = $5 \
                 WHERE submission_id = $6 AND mac = $7",
            )
            .bind(&updated.state)
            .bind(updated.review_seq)
            .bind(updated.updated_at)
            .bind(&updated.mac_key_id)
            .bind(&updated.mac)
            .bind(&updated.submission_id)
            .bind(old_mac),
            |tx| {
                sqlx::query(&insert)
                .bind(&review.submission_id)
                .bind(review.sequence)
                .bind(&review.review_id)
                .bind(&review.tenant)
                .bind(&review.reviewer)
                .bind(&review.decision)
                .bind(&review.from_state)
                .bind(&review.to_state)
                .bind(&review.comment)
                .bind(review.reviewed_at)
                .bind(&review.mac_key_id)
                .bind(&review.mac)
                .execute(&mut *tx)
                .await?;
            }
        );
        Ok(written
            || (self.submission(&updated.submission_id, None).await?.as_ref() == Some(updated)
                && self.history(&updated.submission_id).await?.contains(review)))
    }

    /// Every submission's id, for the store sweep.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn all_submissions(&self) -> Result<Vec<SubmissionRow>, RepoError> {
        let sql =
            format!("SELECT {SUBMISSION_COLUMNS} FROM submissions ORDER BY submitted_at, submission_id");
        retry_on_pool!(self.db, "all_submissions", RepoError, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(submission_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// History rows whose submission does not exist (or was deleted).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn orphan_history(&self) -> Result<Vec<ReviewRow>, RepoError> {
        let sql = format!(
            "SELECT {REVIEW_COLUMNS} FROM review_history WHERE submission_id NOT IN \
             (SELECT submission_id FROM submissions) ORDER BY submission_id, sequence"
        );
        retry_on_pool!(self.db, "orphan_history", RepoError, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(review_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    // ---- installations ----

    /// Installations matching `filter`, oldest first, after the
    /// installation id `after`, at most `limit`.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn installations(
        &self,
        filter: &InstallationFilter<'_>,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<InstallationRow>, RepoError> {
        let mut binds: Vec<Bind> = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        let mut push = |clause: &str, bind: Bind| {
            binds.push(bind);
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(tenant) = filter.tenant {
            push("tenant = ?", Bind::Text(tenant.to_owned()));
        }
        if let Some(environment) = filter.environment {
            push("environment = ?", Bind::Text(environment.to_owned()));
        }
        if let Some(capsule) = filter.capsule {
            push("capsule = ?", Bind::Text(capsule.to_owned()));
        }
        if let Some(id) = filter.installation_id {
            push("installation_id = ?", Bind::Text(id.to_owned()));
        }
        if let Some((at, id)) = after {
            let n = binds.len() + 1;
            binds.push(Bind::Int(at));
            binds.push(Bind::Int(at));
            binds.push(Bind::Text(id.to_owned()));
            clauses.push(format!(
                "(created_at > ${n} OR (created_at = ${} AND installation_id > ${}))",
                n + 1,
                n + 2
            ));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        binds.push(Bind::Int(limit));
        let sql = format!(
            "SELECT {INSTALLATION_COLUMNS} FROM installations {filter} ORDER BY created_at, installation_id LIMIT ${}",
            binds.len()
        );
        retry_on_pool!(self.db, "installations", RepoError, pool => {
            bind_all!(sqlx::query(&sql), &binds)
                .fetch_all(pool)
                .await?
                .iter()
                .map(installation_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// What a run of `capsule` for `tenant` in `environment` reads, in one
    /// statement: the installation, its active revision and that
    /// revision's submission of the same tenant (`None` each when the row
    /// is absent; the caller decides what an absence means). `None` when
    /// the tenant has no installation of it there.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn active_run(
        &self,
        tenant: &str,
        environment: &str,
        capsule: &str,
    ) -> Result<Option<ActiveRun>, RepoError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let prefixed = |alias: &str, columns: &str| {
                columns
                    .split(',')
                    .map(|c| format!("{alias}.{}", c.trim()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!(
                "SELECT {}, {}, {} FROM installations i \
                 LEFT JOIN installation_revisions r \
                   ON r.installation_id = i.installation_id AND r.revision = i.active_revision \
                 LEFT JOIN submissions s ON s.submission_id = r.submission_id AND s.tenant = i.tenant \
                 WHERE i.tenant = $1 AND i.environment = $2 AND i.capsule = $3",
                prefixed("i", INSTALLATION_COLUMNS),
                prefixed("r", REVISION_COLUMNS),
                prefixed("s", SUBMISSION_COLUMNS),
            )
        });
        // On SQLite, on this thread: a point read by the installations'
        // unique key, joined by primary keys (see `soma_store::InlineReader`).
        if let Some(inline) = self.db.inline_reader()
            && let Inline::Done(run) = inline.read_one(SQL.as_str(), &[tenant, environment, capsule], |row| {
                row.map(active_run_of!()).transpose()
            })
        {
            return Ok(run?);
        }
        retry_on_pool!(self.db, "active_run", RepoError, pool => {
            sqlx::query(SQL.as_str())
                .bind(tenant)
                .bind(environment)
                .bind(capsule)
                .fetch_all(pool)
                .await?
                .first()
                .map(active_run_of!())
                .transpose()?
        })
    }

    /// The revisions of `installation_id` up to `up_to`, oldest first.
    /// (A writer inserts a revision in the transaction that moves the
    /// installation to it: reading up to the revision the installation row
    /// showed gives one consistent state, whatever committed in between.)
    #[tracing::instrument(skip_all)]
    pub(crate) async fn revisions(
        &self,
        installation_id: &str,
        up_to: i64,
    ) -> Result<Vec<RevisionRow>, RepoError> {
        let sql = format!(
            "SELECT {REVISION_COLUMNS} FROM installation_revisions WHERE installation_id = $1 AND revision <= $2 \
             ORDER BY revision"
        );
        retry_on_pool!(self.db, "revisions", RepoError, pool => {
            sqlx::query(&sql)
                .bind(installation_id)
                .bind(up_to)
                .fetch_all(pool)
                .await?
                .iter()
                .map(revision_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Inserts a new installation with its first (pending) revision;
    /// `false` if the tenant already has this capsule installed in this
    /// environment.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn create_installation(
        &self,
        installation: &InstallationRow,
        revision: &RevisionRow,
    ) -> Result<bool, RepoError> {
        let sql = format!(
            "INSERT INTO installations ({INSTALLATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT DO NOTHING"
        );
        let insert_revision = insert_revision_sql();
        let no_audit: Option<&NewOutbox> = None;
        let written = write_with_audit!(
            self.db,
            "create_installation",
            no_audit,
            sqlx::query(&sql)
                .bind(&installation.installation_id)
                .bind(&installation.tenant)
                .bind(&installation.environment)
                .bind(&installation.capsule)
                .bind(installation.revision)
                .bind(installation.active_revision)
                .bind(installation.created_at)
                .bind(&installation.created_by)
                .bind(installation.updated_at)
                .bind(&installation.mac_key_id)
                .bind(&installation.mac),
            |tx| {
                bind_revision!(sqlx::query(&insert_revision), revision)
                    .execute(&mut *tx)
                    .await?;
            }
        );
        Ok(written || (self.installation_is(installation).await? && self.revision_is(revision).await?))
    }

    /// Moves an installation to `updated` (its next revision) only if it
    /// still holds `old_mac` — the revision its caller saw — and inserts
    /// that revision's (pending) row in the same transaction. `false`:
    /// another writer moved it first, nothing was written.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn advance_installation(
        &self,
        updated: &InstallationRow,
        old_mac: &[u8],
        revision: &RevisionRow,
    ) -> Result<bool, RepoError> {
        let insert_revision = insert_revision_sql();
        let no_audit: Option<&NewOutbox> = None;
        let written = write_with_audit!(
            self.db,
            "advance_installation",
            no_audit,
            update_installation!(updated, old_mac),
            |tx| {
                bind_revision!(sqlx::query(&insert_revision), revision)
                    .execute(&mut *tx)
                    .await?;
            }
        );
        Ok(written || (self.installation_is(updated).await? && self.revision_is(revision).await?))
    }

    /// Whether `row` is stored exactly as given (every column and the MAC,
    /// which covers its timestamps): then it is this request's write,
    /// committed before its connection was lost and found by the rerun.
    async fn installation_is(&self, row: &InstallationRow) -> Result<bool, RepoError> {
        let filter = InstallationFilter {
            installation_id: Some(&row.installation_id),
            ..InstallationFilter::default()
        };
        Ok(self.installations(&filter, None, 1).await?.first() == Some(row))
    }

    /// [`Store::installation_is`] for a revision row.
    async fn revision_is(&self, row: &RevisionRow) -> Result<bool, RepoError> {
        Ok(self
            .revisions(&row.installation_id, row.revision)
            .await?
            .contains(row))
    }

    /// Settles a pending revision (`settled`: INSTALLED or FAILED) with its
    /// audit event; when `activated` is given, the installation moves to it
    /// (its active revision) in the same transaction, only if it still
    /// holds `old_mac`. `false`: the installation moved meanwhile, or the
    /// revision was already settled; nothing was written.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn settle_revision(
        &self,
        settled: &RevisionRow,
        activated: Option<(&InstallationRow, &[u8])>,
        audit: &NewOutbox,
    ) -> Result<bool, RepoError> {
        let settle = "UPDATE installation_revisions SET status = $1, failure_reason = $2, mac_key_id = $3, mac = $4 \
                      WHERE installation_id = $5 AND revision = $6 AND status = 'pending'";
        macro_rules! settle_query {
            () => {
                sqlx::query(settle)
                    .bind(&settled.status)
                    .bind(&settled.failure_reason)
                    .bind(&settled.mac_key_id)
                    .bind(&settled.mac)
                    .bind(&settled.installation_id)
                    .bind(settled.revision)
            };
        }
        let written = match activated {
            Some((updated, old_mac)) => retry_on_pool!(self.db, "settle_revision", RepoError, pool => {
                let mut tx = pool.begin().await?;
                let moved = update_installation!(updated, old_mac).execute(&mut *tx).await?.rows_affected() == 1;
                let done = moved && settle_query!().execute(&mut *tx).await?.rows_affected() == 1;
                if done {
                    insert_outbox!(tx, audit);
                    tx.commit().await?;
                }
                done
            })?,
            None => write_with_audit!(self.db, "settle_revision", Some(audit), settle_query!()),
        };
        if written {
            return Ok(true);
        }
        // A rerun after a commit that did happen changes no row: the rows
        // stored exactly as this request made them are its own write.
        let activated_stored = match activated {
            Some((updated, _)) => self.installation_is(updated).await?,
            None => true,
        };
        Ok(activated_stored && self.revision_is(settled).await?)
    }

    /// Every installation, for the store sweep.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn all_installations(&self) -> Result<Vec<InstallationRow>, RepoError> {
        self.installations(&InstallationFilter::default(), None, i64::MAX)
            .await
    }

    /// Every revision row, for the store sweep.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn all_revisions(&self) -> Result<Vec<RevisionRow>, RepoError> {
        let sql = format!(
            "SELECT {REVISION_COLUMNS} FROM installation_revisions ORDER BY installation_id, revision"
        );
        retry_on_pool!(self.db, "all_revisions", RepoError, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(revision_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    // ---- outbox ----

    /// Up to `limit` events due at `now`, oldest first.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn due(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, RepoError> {
        retry_on_pool!(self.db, "outbox_due", RepoError, pool => {
            sqlx::query(
                "SELECT seq, kind, event_id, payload, created_at, attempts, mac_key_id, mac FROM outbox \
                 WHERE next_attempt_at <= $1 ORDER BY seq LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| -> Result<OutboxRow, sqlx::Error> {
                Ok(OutboxRow {
                    seq: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    event_id: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                    attempts: row.try_get(5)?,
                    mac_key_id: row.try_get(6)?,
                    mac: row.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Every outbox row.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn outbox(&self) -> Result<Vec<OutboxRow>, RepoError> {
        self.due(i64::MAX, i64::MAX).await
    }

    /// Forgets delivered events. Retried on a new connection when the
    /// connection is lost: deleting by sequence number twice deletes once.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn delivered(&self, seqs: &[i64]) -> Result<(), RepoError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let list = seqs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let sql = format!("DELETE FROM outbox WHERE seq IN ({list})");
        retry_on_pool!(self.db, "outbox_delivered", RepoError, pool => {
            sqlx::query(&sql).execute(pool).await?;
        })
    }

    /// Puts an event off until `next_attempt_at`, noting why. Not retried:
    /// run twice it would count two attempts; a lost connection fails it,
    /// and the deliverer's next round tries the event again.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn retry_later(
        &self,
        seq: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), RepoError> {
        on_pool!(self.db, pool => {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE seq = $1",
            )
            .bind(seq)
            .bind(next_attempt_at)
            .bind(error)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Events waiting, and the oldest one's creation time.
    ///
    /// Read with `fetch_all`, not `fetch_one`: SQLite's statement then runs
    /// to its end and is reset before the connection goes back to the pool.
    /// A statement left at its first row keeps the connection's read
    /// snapshot open, and the next transaction on that connection that
    /// reads, then writes, fails its first write with `SQLITE_BUSY` once
    /// another connection has written since (the deliverer calls this after
    /// every round, so it would be often).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn backlog(&self) -> Result<(i64, Option<i64>), RepoError> {
        retry_on_pool!(self.db, "outbox_backlog", RepoError, pool => {
            let rows = sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox")
                .fetch_all(pool)
                .await?;
            let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
            (row.try_get::<i64, _>(0)?, row.try_get::<Option<i64>, _>(1)?)
        })
    }
}

/// What `ListSubmissions` filters on.
#[derive(Clone, Debug, Default)]
pub(crate) struct SubmissionFilter<'a> {
    pub tenant: Option<&'a str>,
    pub state: Option<&'a str>,
    pub capsule: Option<&'a str>,
}

/// What `ListInstallations` filters on.
#[derive(Clone, Debug, Default)]
pub(crate) struct InstallationFilter<'a> {
    pub tenant: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub capsule: Option<&'a str>,
    pub installation_id: Option<&'a str>,
}

fn insert_revision_sql() -> String {
    format!(
        "INSERT INTO installation_revisions ({REVISION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12)"
    )
}
