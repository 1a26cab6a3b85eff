//! Reviews: the transitions of a submission and their append-only history.
//!
//! `pending → in_review` (START_REVIEW), then from `in_review` only:
//! `approved` (APPROVE), `rejected` (REJECT), `changes_requested`
//! (REQUEST_CHANGES); anything else is `invalid_transition`. The reviewer is
//! the verified claims' subject, never a request field, and never the
//! submitter (`self_review`). A reviewer acts within their own tenant (any
//! other tenant's submission is `NOT_FOUND`), an operator within any.
//!
//! Each transition writes, in one transaction: the submission's new state
//! (a compare-and-set on its MAC, so two reviewers racing cannot both
//! move it), one history row whose MAC covers the MAC of the row before it,
//! and the `capsule.review` audit event for Analytics. The history is
//! checked whole before every transition and every read.

use soma_proto::v1 as pb;

use crate::error::RepoError;
use crate::store::{ReviewRow, SubmissionRow};
use crate::submissions::{APPROVED, CHANGES_REQUESTED, IN_REVIEW, PENDING, REJECTED, state_proto};
use crate::{Actor, Repo, audit_event, now_nanos, random_id, seal, timestamp};

/// Longest review comment, bytes.
const MAX_COMMENT: usize = 4096;

impl Repo {
    /// `ReviewSubmission`.
    pub(crate) async fn review(
        &self,
        actor: &Actor,
        request: pb::ReviewSubmissionRequest,
    ) -> Result<pb::Review, RepoError> {
        let tenant = actor.require_tenant("ReviewSubmission")?;
        let scope = if actor.operator { None } else { Some(tenant) };
        let decision = pb::ReviewDecision::try_from(request.decision)
            .ok()
            .filter(|d| *d != pb::ReviewDecision::Unspecified)
            .ok_or_else(|| {
                RepoError::invalid(
                    "decision_invalid",
                    "decision: one of START_REVIEW, APPROVE, REJECT, REQUEST_CHANGES",
                )
            })?;
        if request.comment.len() > MAX_COMMENT {
            return Err(RepoError::invalid(
                "comment_invalid",
                format!("comment: at most {MAX_COMMENT} bytes"),
            ));
        }
        let row = self.submission(scope, &request.submission_id).await?;
        let history = self.store.history(&row.submission_id).await?;
        self.check_history(&row, &history)?;
        if actor.id == row.submitter {
            return Err(RepoError::Denied {
                reason: "self_review",
                message: format!(
                    "{} submitted {}: a submitter never reviews their own submission",
                    actor.id, row.submission_id
                ),
            });
        }
        let (from, to) = transition(decision);
        if row.state != from {
            return Err(RepoError::precondition(
                "invalid_transition",
                format!(
                    "submission {} cannot go from {} to {}",
                    row.submission_id, row.state, to
                ),
            ));
        }
        let now = now_nanos();
        let mut updated = SubmissionRow {
            state: to.to_owned(),
            review_seq: row.review_seq.saturating_add(1),
            updated_at: now,
            ..row.clone()
        };
        self.seal_submission(&mut updated)?;
        let mut review = ReviewRow {
            submission_id: row.submission_id.clone(),
            sequence: updated.review_seq,
            review_id: random_id(),
            tenant: row.tenant.clone(),
            reviewer: actor.id.clone(),
            decision: decision_name(decision).to_owned(),
            from_state: from.to_owned(),
            to_state: to.to_owned(),
            comment: request.comment,
            reviewed_at: now,
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        let previous = history.last().map(|r| r.mac.as_slice()).unwrap_or_default();
        (review.mac_key_id, review.mac) = seal::mac(&self.keys, ReviewRow::TABLE, &review.columns(previous))?;
        let audit = self.outbox.audit(
            &audit_event(
                &row.tenant,
                "capsule.review",
                &format!("submission:{}", row.submission_id),
                serde_json::json!({
                    "submission_id": row.submission_id,
                    "capsule": row.capsule,
                    "version": row.version,
                    "sequence": review.sequence,
                    "decision": review.decision,
                    "from_state": from,
                    "to_state": to,
                    "reviewer": actor.id,
                    "operator": actor.operator,
                    "request_id": actor.request_id,
                }),
                now,
            ),
            now,
        )?;
        if !self.store.review(&updated, &row.mac, &review, &audit).await? {
            return Err(RepoError::Aborted {
                reason: "concurrent_review",
                message: format!(
                    "submission {} changed while this review was made; read it again",
                    row.submission_id
                ),
            });
        }
        self.outbox.wake();
        tracing::info!(submission = %row.submission_id, from, to, reviewer = %actor.id, "submission reviewed");
        Ok(review_proto(&review))
    }

    /// `ListReviewHistory`: oldest first, every row verified.
    pub(crate) async fn history(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<pb::ListReviewHistoryResponse, RepoError> {
        let row = self.submission(actor.read_scope()?, id).await?;
        let history = self.store.history(&row.submission_id).await?;
        self.check_history(&row, &history)?;
        Ok(pb::ListReviewHistoryResponse {
            reviews: history.iter().map(review_proto).collect(),
        })
    }
}

/// The state a decision moves from, and the state it moves to.
fn transition(decision: pb::ReviewDecision) -> (&'static str, &'static str) {
    match decision {
        pb::ReviewDecision::StartReview => (PENDING, IN_REVIEW),
        pb::ReviewDecision::Approve => (IN_REVIEW, APPROVED),
        pb::ReviewDecision::Reject => (IN_REVIEW, REJECTED),
        pb::ReviewDecision::RequestChanges => (IN_REVIEW, CHANGES_REQUESTED),
        // Refused before: never reached.
        pb::ReviewDecision::Unspecified => ("", ""),
    }
}

fn decision_name(decision: pb::ReviewDecision) -> &'static str {
    match decision {
        pb::ReviewDecision::StartReview => "start_review",
        pb::ReviewDecision::Approve => "approve",
        pb::ReviewDecision::Reject => "reject",
        pb::ReviewDecision::RequestChanges => "request_changes",
        pb::ReviewDecision::Unspecified => "unspecified",
    }
}

fn decision_proto(name: &str) -> pb::ReviewDecision {
    match name {
        "start_review" => pb::ReviewDecision::StartReview,
        "approve" => pb::ReviewDecision::Approve,
        "reject" => pb::ReviewDecision::Reject,
        "request_changes" => pb::ReviewDecision::RequestChanges,
        _ => pb::ReviewDecision::Unspecified,
    }
}

fn review_proto(row: &ReviewRow) -> pb::Review {
    pb::Review {
        review_id: row.review_id.clone(),
        submission_id: row.submission_id.clone(),
        reviewer: row.reviewer.clone(),
        decision: decision_proto(&row.decision) as i32,
        comment: row.comment.clone(),
        reviewed_at: Some(timestamp(row.reviewed_at)),
        from_state: state_proto(&row.from_state) as i32,
        to_state: state_proto(&row.to_state) as i32,
        sequence: u64::try_from(row.sequence).unwrap_or(0),
    }
}
