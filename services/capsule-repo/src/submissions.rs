//! Submissions: submit, import a template, read.
//!
//! `SubmitCapsule` checks, in order, before a byte is written: the tenant
//! and submitter from the verified claims; the bundle (canonical, every
//! member valid, `soma-capsule`'s reasons); the request's capsule and
//! version against the bundle's; the attestation (`soma-capsule`'s
//! `verify_attestation` over the bundle digest, with the publisher keys the
//! ToolRegistry holds, fetched over mTLS, and the publisher's threshold);
//! every tool release the bundle pins, with the ToolRegistry. Then the row
//! (MACed) and its audit event, in one transaction; the same capsule and
//! version again for the tenant is `ALREADY_EXISTS`.
//!
//! `ImportTemplate` is the same path with the operator-pinned catalogue's
//! keys and threshold in place of a publisher's.

use soma_capsule::{
    AttestError, AttestationKey, Bundle, DEFAULT_ALLOWED_PREDICATE_TYPES, PAYLOAD_TYPE, verify_attestation,
};
use soma_proto::v1 as pb;
use soma_sign::{DsseEnvelope, DsseSignature};

use crate::error::RepoError;
use crate::registry::{NamedKey, Verify};
use crate::store::{ReviewRow, SubmissionFilter, SubmissionRow};
use crate::{Actor, Repo, audit_event, now_nanos, random_id, seal, timestamp};

/// Submission states as stored.
pub(crate) const PENDING: &str = "pending";
/// See [`PENDING`].
pub(crate) const IN_REVIEW: &str = "in_review";
/// See [`PENDING`].
pub(crate) const APPROVED: &str = "approved";
/// See [`PENDING`].
pub(crate) const REJECTED: &str = "rejected";
/// See [`PENDING`].
pub(crate) const CHANGES_REQUESTED: &str = "changes_requested";

/// The source of a direct submission.
const SOURCE_SUBMISSION: &str = "submission";
/// Submissions per page at most.
const MAX_PAGE: u32 = 100;
/// Longest template name.
const MAX_TEMPLATE: usize = 64;

/// What verified an attestation: the publisher (or catalogue) and the key
/// ids that counted.
struct Attested {
    publisher: String,
    signers: Vec<String>,
}

impl Repo {
    /// `SubmitCapsule`.
    pub(crate) async fn submit(
        &self,
        actor: &Actor,
        request: pb::SubmitCapsuleRequest,
    ) -> Result<pb::Submission, RepoError> {
        let tenant = actor.require_tenant("SubmitCapsule")?.to_owned();
        let bundle = parse_bundle(&request.bundle)?;
        if request.capsule != bundle.name() {
            return Err(RepoError::invalid(
                "capsule_mismatch",
                format!(
                    "capsule {:?} is not the bundle's name {:?}",
                    request.capsule,
                    bundle.name()
                ),
            ));
        }
        if request.version != bundle.version().as_str() {
            return Err(RepoError::invalid(
                "version_mismatch",
                format!(
                    "version {:?} is not the bundle's version {:?}",
                    request.version,
                    bundle.version().as_str()
                ),
            ));
        }
        let envelope = envelope_of(request.attestation)?;
        let now = now_nanos();
        let keys = self.registry.publisher_keys().await?;
        let attested = self.verify_publisher(&envelope, &bundle, &keys, now).await?;
        self.registry.check_releases(&bundle, Verify::None).await?;
        self.store_submission(
            actor,
            &tenant,
            &bundle,
            &envelope,
            attested,
            SOURCE_SUBMISSION.to_owned(),
            "capsule.submit",
            now,
        )
        .await
    }

    /// `ImportTemplate`.
    pub(crate) async fn import(
        &self,
        actor: &Actor,
        request: pb::ImportTemplateRequest,
    ) -> Result<pb::Submission, RepoError> {
        let tenant = actor.require_tenant("ImportTemplate")?.to_owned();
        let template_ok = !request.template.is_empty()
            && request.template.len() <= MAX_TEMPLATE
            && request
                .template
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !template_ok {
            return Err(RepoError::invalid(
                "template_invalid",
                format!("template: 1 to {MAX_TEMPLATE} letters, digits, '.', '_' or '-'"),
            ));
        }
        let Some(catalogue) = self.catalogues.iter().find(|c| c.name == request.catalogue) else {
            return Err(RepoError::Denied {
                reason: "catalogue_unknown",
                message: format!(
                    "catalogue {:?} is not one whose keys an operator pinned",
                    request.catalogue
                ),
            });
        };
        let bundle = parse_bundle(&request.bundle)?;
        let envelope = envelope_of(request.attestation)?;
        let now = now_nanos();
        verify_attestation(
            &envelope,
            &bundle.digest(),
            &catalogue.keys,
            catalogue.threshold,
            &DEFAULT_ALLOWED_PREDICATE_TYPES,
            now,
        )
        .map_err(attest_error)?;
        let attested = Attested {
            publisher: format!("catalogue:{}", catalogue.name),
            signers: signers(&envelope, &bundle, &catalogue.keys, now),
        };
        self.registry.check_releases(&bundle, Verify::None).await?;
        let source = format!("template:{}/{}", catalogue.name, request.template);
        self.store_submission(
            actor,
            &tenant,
            &bundle,
            &envelope,
            attested,
            source,
            "capsule.import",
            now,
        )
        .await
    }

    /// Verifies `envelope` with the keys of the one publisher whose keys
    /// its signatures name, at that publisher's threshold.
    async fn verify_publisher(
        &self,
        envelope: &DsseEnvelope,
        bundle: &Bundle,
        keys: &[NamedKey],
        now: i64,
    ) -> Result<Attested, RepoError> {
        let digest = bundle.digest();
        // The payload type comes first, as the verifier has it, whoever signed.
        if envelope.payload_type != PAYLOAD_TYPE {
            return Err(attest_error(AttestError::PayloadType));
        }
        let mut publishers: Vec<&str> = Vec::new();
        for signature in &envelope.signatures {
            for named in keys.iter().filter(|k| k.key.key_id == signature.keyid) {
                if !publishers.contains(&named.publisher.as_str()) {
                    publishers.push(&named.publisher);
                }
            }
        }
        let publisher = match publishers.as_slice() {
            [] => {
                // No signature names a registered key: the verifier says so.
                return Err(attest_error(
                    verify_attestation(envelope, &digest, &[], 1, &DEFAULT_ALLOWED_PREDICATE_TYPES, now)
                        .err()
                        .unwrap_or(AttestError::KeyUnknown),
                ));
            }
            [one] => (*one).to_owned(),
            many => {
                return Err(RepoError::Denied {
                    reason: "attestation_publishers_mixed",
                    message: format!(
                        "the attestation's signatures name keys of {} publishers ({}): the keys that count must be one publisher's",
                        many.len(),
                        many.join(", ")
                    ),
                });
            }
        };
        let publisher_keys: Vec<AttestationKey> = keys
            .iter()
            .filter(|k| k.publisher == publisher)
            .map(|k| k.key.clone())
            .collect();
        let threshold = self.threshold_of(&publisher).await?;
        verify_attestation(
            envelope,
            &digest,
            &publisher_keys,
            threshold,
            &DEFAULT_ALLOWED_PREDICATE_TYPES,
            now,
        )
        .map_err(attest_error)?;
        Ok(Attested {
            signers: signers(envelope, bundle, &publisher_keys, now),
            publisher,
        })
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one submission's provenance, content and time"
    )]
    async fn store_submission(
        &self,
        actor: &Actor,
        tenant: &str,
        bundle: &Bundle,
        envelope: &DsseEnvelope,
        attested: Attested,
        source: String,
        action: &str,
        now: i64,
    ) -> Result<pb::Submission, RepoError> {
        let mut row = SubmissionRow {
            submission_id: random_id(),
            tenant: tenant.to_owned(),
            capsule: bundle.name().to_owned(),
            version: bundle.version().as_str().to_owned(),
            bundle: bundle.canonical_bytes().to_vec(),
            // The bytes as received are the canonical bytes (parse refuses
            // anything else): this is the hash of what was imported.
            bundle_sha256: soma_sign::sha256(bundle.canonical_bytes()).to_vec(),
            attestation: envelope.to_json(),
            publisher: attested.publisher,
            signer_key_ids: attested.signers.join(","),
            submitter: actor.id.clone(),
            source,
            state: PENDING.to_owned(),
            review_seq: 0,
            submitted_at: now,
            updated_at: now,
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        self.seal_submission(&mut row)?;
        let audit = self.outbox.audit(
            &audit_event(
                tenant,
                action,
                &format!("submission:{}", row.submission_id),
                serde_json::json!({
                    "submission_id": row.submission_id,
                    "capsule": row.capsule,
                    "version": row.version,
                    "bundle_sha256": soma_sign::hex::encode(&row.bundle_sha256),
                    "publisher": row.publisher,
                    "signer_key_ids": row.signer_key_ids,
                    "source": row.source,
                    "actor": actor.id,
                    "request_id": actor.request_id,
                }),
                now,
            ),
            now,
        )?;
        if !self.store.insert_submission(&row, &audit).await? {
            return Err(RepoError::AlreadyExists {
                reason: "submission_exists",
                message: format!(
                    "capsule {}@{} is already submitted for this tenant",
                    row.capsule, row.version
                ),
            });
        }
        self.outbox.wake();
        tracing::info!(submission = %row.submission_id, capsule = %row.capsule, version = %row.version, source = %row.source, actor = %actor.id, "capsule submitted");
        Ok(submission_proto(&row))
    }

    /// `GetSubmission`: the row and its whole review history verified.
    pub(crate) async fn get(&self, actor: &Actor, id: &str) -> Result<pb::Submission, RepoError> {
        let row = self.submission(actor.read_scope()?, id).await?;
        let history = self.store.history(&row.submission_id).await?;
        self.check_history(&row, &history)?;
        Ok(submission_proto(&row))
    }

    /// `ListSubmissions`: oldest first.
    pub(crate) async fn list(
        &self,
        actor: &Actor,
        request: pb::ListSubmissionsRequest,
    ) -> Result<pb::ListSubmissionsResponse, RepoError> {
        let scope = actor.read_scope()?;
        let state = match pb::SubmissionState::try_from(request.state) {
            Ok(pb::SubmissionState::Unspecified) => None,
            Ok(state) => Some(state_name(state)),
            Err(_) => {
                return Err(RepoError::invalid(
                    "state_invalid",
                    format!("state {} is not a submission state", request.state),
                ));
            }
        };
        let filter = SubmissionFilter {
            tenant: scope,
            state,
            capsule: (!request.capsule.is_empty()).then_some(request.capsule.as_str()),
        };
        let (size, after) = page_of(request.page)?;
        let mut rows = self
            .store
            .submissions(
                &filter,
                after.as_ref().map(|(t, id)| (*t, id.as_str())),
                i64::from(size) + 1,
            )
            .await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        for row in &rows {
            self.check_submission(row)?;
        }
        let next_page_token = match rows.last() {
            Some(last) if more => format!("{}.{}", last.submitted_at, last.submission_id),
            _ => String::new(),
        };
        Ok(pb::ListSubmissionsResponse {
            submissions: rows.iter().map(submission_proto).collect(),
            next_page_token,
        })
    }

    /// The submission `id` within `tenant` (any for `None`), MAC checked;
    /// another tenant's is `NOT_FOUND`, the same answer as none.
    pub(crate) async fn submission(
        &self,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<SubmissionRow, RepoError> {
        let row = self.store.submission(id, tenant).await?.ok_or_else(|| {
            RepoError::not_found(
                "submission_not_found",
                format!("submission {id:?} does not exist"),
            )
        })?;
        self.check_submission(&row)?;
        Ok(row)
    }

    pub(crate) fn seal_submission(&self, row: &mut SubmissionRow) -> Result<(), RepoError> {
        (row.mac_key_id, row.mac) = seal::mac(&self.keys, SubmissionRow::TABLE, &row.columns())?;
        Ok(())
    }

    pub(crate) fn check_submission(&self, row: &SubmissionRow) -> Result<(), RepoError> {
        seal::check(
            &self.keys,
            SubmissionRow::TABLE,
            &row.submission_id,
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
    }

    /// Checks a submission's review history: sequences 1, 2, … without a
    /// gap, each row's MAC chained to the row before it, as many rows as
    /// the submission counts and the last one ending in its state. The
    /// error names the first row at fault (a deleted row by its sequence).
    pub(crate) fn check_history(
        &self,
        submission: &SubmissionRow,
        history: &[ReviewRow],
    ) -> Result<(), RepoError> {
        match self.history_faults(submission, history).into_iter().next() {
            None => Ok(()),
            Some((key, _)) => Err(RepoError::RowIntegrity {
                table: ReviewRow::TABLE,
                key,
            }),
        }
    }

    /// Every fault of a submission's review history, in order: the row's
    /// key (`submission_id/sequence`) and why.
    pub(crate) fn history_faults(
        &self,
        submission: &SubmissionRow,
        history: &[ReviewRow],
    ) -> Vec<(String, &'static str)> {
        let key = |sequence: i64| format!("{}/{sequence}", submission.submission_id);
        let mut faults = Vec::new();
        let mut previous: &[u8] = &[];
        let mut expected: i64 = 1;
        for row in history {
            while row.sequence > expected {
                faults.push((key(expected), "missing: a history row was deleted"));
                expected += 1;
            }
            if row.sequence < expected {
                faults.push((row.key(), "sequence repeated or out of order"));
            }
            let intact = seal::check(
                &self.keys,
                ReviewRow::TABLE,
                &row.key(),
                &row.columns(previous),
                &row.mac_key_id,
                &row.mac,
            )
            .is_ok();
            if !intact {
                faults.push((
                    row.key(),
                    "mac does not verify (the row, or the chain to the row before it)",
                ));
            } else if row.tenant != submission.tenant || row.submission_id != submission.submission_id {
                faults.push((row.key(), "belongs to another submission"));
            }
            previous = &row.mac;
            expected = row.sequence.saturating_add(1);
        }
        let last = expected - 1;
        if last < submission.review_seq {
            for sequence in expected..=submission.review_seq {
                faults.push((key(sequence), "missing: a history row was deleted"));
            }
        } else if last > submission.review_seq {
            faults.push((key(last), "beyond the submission's count of reviews"));
        }
        let last_state = history.last().map_or(PENDING, |r| r.to_state.as_str());
        if faults.is_empty() && last_state != submission.state {
            faults.push((
                key(last.max(1)),
                "the history does not end in the submission's state",
            ));
        }
        faults
    }
}

/// The key ids among `keys` whose own signature verifies the attestation
/// (each key checked alone, at threshold 1, by the same verifier).
fn signers(envelope: &DsseEnvelope, bundle: &Bundle, keys: &[AttestationKey], now: i64) -> Vec<String> {
    let digest = bundle.digest();
    keys.iter()
        .filter(|key| {
            verify_attestation(
                envelope,
                &digest,
                std::slice::from_ref(*key),
                1,
                &DEFAULT_ALLOWED_PREDICATE_TYPES,
                now,
            )
            .is_ok()
        })
        .map(|key| key.key_id.clone())
        .collect()
}

/// A bundle as `soma-capsule` accepts it, each refusal with its reason.
pub(crate) fn parse_bundle(bytes: &[u8]) -> Result<Bundle, RepoError> {
    if bytes.is_empty() {
        return Err(RepoError::invalid("bundle_missing", "bundle: required"));
    }
    Bundle::parse(bytes).map_err(|e| RepoError::Invalid {
        reason: e.reason(),
        message: format!("bundle: {e}"),
    })
}

/// An `AttestError` with its own reason: `PERMISSION_DENIED` when the keys
/// and signatures do not admit it, `INVALID_ARGUMENT` for its shape and
/// statement.
pub(crate) fn attest_error(e: AttestError) -> RepoError {
    let reason = e.reason();
    let message = format!("attestation: {e}");
    match e {
        AttestError::KeyUnknown
        | AttestError::KeyRetired
        | AttestError::SignatureInvalid { .. }
        | AttestError::BelowThreshold { .. } => RepoError::Denied { reason, message },
        _ => RepoError::Invalid { reason, message },
    }
}

fn envelope_of(envelope: Option<pb::DsseEnvelope>) -> Result<DsseEnvelope, RepoError> {
    let e = envelope.ok_or_else(|| RepoError::invalid("attestation_missing", "attestation: required"))?;
    Ok(DsseEnvelope {
        payload_type: e.payload_type,
        payload: e.payload,
        signatures: e
            .signatures
            .into_iter()
            .map(|s| DsseSignature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    })
}

fn envelope_proto(e: DsseEnvelope) -> pb::DsseEnvelope {
    pb::DsseEnvelope {
        payload_type: e.payload_type,
        payload: e.payload,
        signatures: e
            .signatures
            .into_iter()
            .map(|s| pb::DsseSignature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    }
}

/// A stored state's name for the API.
pub(crate) fn state_proto(state: &str) -> pb::SubmissionState {
    match state {
        PENDING => pb::SubmissionState::Pending,
        IN_REVIEW => pb::SubmissionState::InReview,
        APPROVED => pb::SubmissionState::Approved,
        REJECTED => pb::SubmissionState::Rejected,
        CHANGES_REQUESTED => pb::SubmissionState::ChangesRequested,
        _ => pb::SubmissionState::Unspecified,
    }
}

/// An API state as stored.
pub(crate) fn state_name(state: pb::SubmissionState) -> &'static str {
    match state {
        pb::SubmissionState::Pending => PENDING,
        pb::SubmissionState::InReview => IN_REVIEW,
        pb::SubmissionState::Approved => APPROVED,
        pb::SubmissionState::Rejected => REJECTED,
        pb::SubmissionState::ChangesRequested => CHANGES_REQUESTED,
        pb::SubmissionState::Unspecified => "unspecified",
    }
}

/// A stored submission as the API shows it.
pub(crate) fn submission_proto(row: &SubmissionRow) -> pb::Submission {
    pb::Submission {
        submission_id: row.submission_id.clone(),
        tenant: row.tenant.clone(),
        capsule: row.capsule.clone(),
        version: row.version.clone(),
        bundle_sha256: row.bundle_sha256.clone(),
        attestation: DsseEnvelope::from_json(&row.attestation).ok().map(envelope_proto),
        state: state_proto(&row.state) as i32,
        submitted_at: Some(timestamp(row.submitted_at)),
        submitter: row.submitter.clone(),
        bundle: row.bundle.clone(),
        publisher: row.publisher.clone(),
        signer_key_ids: row
            .signer_key_ids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        source: row.source.clone(),
        updated_at: Some(timestamp(row.updated_at)),
    }
}

/// A page's size and position: `(created_at, id)` after which it starts.
pub(crate) fn page_of(page: Option<pb::PageRequest>) -> Result<(u32, Option<(i64, String)>), RepoError> {
    let page = page.unwrap_or_default();
    let size = match page.page_size {
        0 => MAX_PAGE,
        n => n.min(MAX_PAGE),
    };
    let after = match page.page_token.as_str() {
        "" => None,
        token => {
            let parsed = token
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                .filter(|(_, id)| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
            Some(parsed.ok_or_else(|| {
                RepoError::invalid(
                    "page_token_invalid",
                    "page.page_token is not a token this service gave",
                )
            })?)
        }
    };
    Ok((size, after))
}
