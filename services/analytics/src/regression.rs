//! Persona regressions: a state machine with optimistic concurrency, each
//! transition audited in the ledger.
//!
//! # Transition table
//!
//! | from \ to   | queued | running | passed | failed | promoted | rolled_back | cancelled |
//! |-------------|--------|---------|--------|--------|----------|-------------|-----------|
//! | (none)      | create |         |        |        |          |             |           |
//! | queued      |        | yes     |        |        |          |             | yes       |
//! | running     |        |         | yes    | yes    |          |             | yes       |
//! | passed      |        |         |        |        | yes      | yes         |           |
//! | failed      |        |         |        |        | yes      | yes         |           |
//! | promoted    |        |         |        |        |          |             |           |
//! | rolled_back |        |         |        |        |          |             |           |
//! | cancelled   |        |         |        |        |          |             |           |
//!
//! `promoted`, `rolled_back` and `cancelled` are terminal. Cancelling is
//! allowed only before a verdict (from `queued` or `running`): once a run
//! has passed or failed, its outcome is evidence and the only way on is a
//! decision (promote or roll back). Every other pair, including a state to
//! itself, is refused with `FAILED_PRECONDITION` (`soma-reason:
//! illegal_transition`), the message naming the current state.
//!
//! # Creation
//!
//! A request for an unknown `regression_id` with `to = QUEUED` (and no
//! expectation) creates it at version 1; `persona` is required then. Any
//! other request for an unknown id is `NOT_FOUND`: there is no state to move
//! from, and the caller's expectation (if any) is of something that does
//! not exist. `to = QUEUED` for an id that exists is an illegal transition
//! (`FAILED_PRECONDITION`, whatever the expectation): queued is where a
//! regression starts, never where one goes.
//!
//! # Order of checks
//!
//! Field validation (`INVALID_ARGUMENT`, nothing read), then the stored row
//! of the caller's tenant (its MAC; `DATA_LOSS` if it fails or if it was
//! rolled back), the expectation (`ABORTED`), and last the table
//! (`FAILED_PRECONDITION`): a caller whose view is stale is told so before
//! being told what its stale view would not allow.
//!
//! Regression ids are scoped per tenant: the same id in two tenants is two
//! regressions, and another tenant's regression is never read, so a
//! request answers exactly as it would if that regression did not exist.
//!
//! # Optimistic concurrency
//!
//! Moving an existing regression needs `expected_state` or
//! `expected_version` (or both); a missing expectation is
//! `INVALID_ARGUMENT`. Since the machine is acyclic, a state is reached at
//! most once, so either one pins the version. A mismatch is `ABORTED`
//! (`soma-reason: stale_version`), the message naming the current state and
//! version: the caller re-reads and decides again. The check is made twice:
//! on the row read before the request is queued, and inside the ledger
//! writer's transaction (`UPDATE .. WHERE state = $from AND version =
//! $from_version`), where a row that has moved meanwhile fails the item
//! before its leaf is appended. The transition's event id is
//! `regression:<id>:<version>`, and the ledger's unique event ids make a
//! second transition to the same version impossible even then.
//!
//! # Audit
//!
//! Each transition is a ledger-appended row of
//! `persona_regression_transitions` (regression id, persona, from, to, new
//! version, actor, reason, time), committed in the same transaction as the
//! state update. The actor is the verified claims' subject (the peer's
//! SPIFFE ID when the claims carry none). The state row is MACed like every
//! row, with `row_version` equal to the regression's version. A field
//! changed in SQL fails the MAC; a whole older row written back carries a
//! valid MAC for its older version, but the ledger already holds the
//! transition to the next version, so the read (in the same statement) and
//! the store sweep both refuse it.

use soma_mesh::Caller;
use soma_proto::v1 as pb;

use crate::convert::now_nanos;
use crate::error::AnalyticsError;
use crate::service::AnalyticsService;
use crate::tables::EventRow as _;
use crate::tables::regressions::{Regression, State, Transition, event_id_of, regression_row};
use crate::validate::{self, actor, invalid};

/// Longest regression id: `regression:<id>:<version>` must stay a valid
/// event id (128 characters) for every version.
pub(crate) const MAX_REGRESSION_ID_LEN: usize = 96;

/// Longest transition reason, in bytes.
pub(crate) const MAX_REASON_LEN: usize = 512;

/// The state machine over the stored [`State`]s.
impl State {
    fn from_proto(state: pb::RegressionState) -> Option<Self> {
        match state {
            pb::RegressionState::Unspecified => None,
            pb::RegressionState::Queued => Some(Self::Queued),
            pb::RegressionState::Running => Some(Self::Running),
            pb::RegressionState::Passed => Some(Self::Passed),
            pb::RegressionState::Failed => Some(Self::Failed),
            pb::RegressionState::Promoted => Some(Self::Promoted),
            pb::RegressionState::RolledBack => Some(Self::RolledBack),
            pb::RegressionState::Cancelled => Some(Self::Cancelled),
        }
    }

    fn to_proto(self) -> pb::RegressionState {
        match self {
            Self::Queued => pb::RegressionState::Queued,
            Self::Running => pb::RegressionState::Running,
            Self::Passed => pb::RegressionState::Passed,
            Self::Failed => pb::RegressionState::Failed,
            Self::Promoted => pb::RegressionState::Promoted,
            Self::RolledBack => pb::RegressionState::RolledBack,
            Self::Cancelled => pb::RegressionState::Cancelled,
        }
    }

    /// The transition table of the module doc.
    pub(crate) fn can_move_to(self, to: Self) -> bool {
        use State::{Cancelled, Failed, Passed, Promoted, Queued, RolledBack, Running};
        matches!(
            (self, to),
            (Queued, Running | Cancelled)
                | (Running, Passed | Failed | Cancelled)
                | (Passed | Failed, Promoted | RolledBack)
        )
    }
}

/// An optional enum field: `None` when unset.
fn optional_state(field: &'static str, value: i32) -> Result<Option<State>, AnalyticsError> {
    if value == 0 {
        return Ok(None);
    }
    let state =
        pb::RegressionState::try_from(value).map_err(|_| invalid(field, format!("unknown value {value}")))?;
    Ok(State::from_proto(state))
}

fn reason(value: &str) -> Result<String, AnalyticsError> {
    if value.len() > MAX_REASON_LEN {
        return Err(invalid("reason", format!("longer than {MAX_REASON_LEN} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("reason", "control characters are not allowed"));
    }
    Ok(value.to_owned())
}

/// `TransitionPersonaRegression`.
pub(crate) async fn transition_persona_regression(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::TransitionPersonaRegressionRequest,
) -> Result<pb::PersonaRegression, AnalyticsError> {
    // Every field is checked before anything is read or written.
    let regression_id = validate::identifier("regression_id", &request.regression_id)?;
    if regression_id.len() > MAX_REGRESSION_ID_LEN {
        return Err(invalid(
            "regression_id",
            format!("longer than {MAX_REGRESSION_ID_LEN} characters"),
        ));
    }
    let persona = if request.persona.is_empty() {
        None
    } else {
        Some(validate::identifier("persona", &request.persona)?)
    };
    let to = optional_state("to", request.to)?.ok_or_else(|| invalid("to", "required"))?;
    let expected_state = optional_state("expected_state", request.expected_state)?;
    let expected_version = match request.expected_version {
        0 => None,
        v => Some(validate::count("expected_version", v)?),
    };
    let reason = reason(&request.reason)?;
    let tenant = caller.claims.as_ref().map(|c| c.tenant.clone()).ok_or_else(|| {
        AnalyticsError::PermissionDenied("persona regressions need verified tenant claims".to_owned())
    })?;

    // Regression ids are scoped per tenant: another tenant's regression of
    // the same id is another record, never read here.
    let current = match regression_row(&svc.db, &tenant, &regression_id).await? {
        Some((row, seal, later)) => {
            row.check(&svc.keys, &seal)?;
            // A whole older row written back carries a valid MAC for its
            // older version; the ledger knows a later transition exists.
            if seal.row_version != row.version || later {
                return Err(AnalyticsError::RowIntegrity {
                    table: Regression::TABLE,
                    primary_key: regression_id,
                });
            }
            Some(row)
        }
        None => None,
    };

    let transition = match current {
        None => {
            if to != State::Queued || expected_state.is_some() || expected_version.is_some() {
                return Err(AnalyticsError::NotFound(format!(
                    "regression {regression_id} does not exist (create it with to = QUEUED and no expectation)"
                )));
            }
            let persona = persona.ok_or_else(|| invalid("persona", "required to create a regression"))?;
            Transition {
                event_id: event_id_of(&regression_id, 1),
                tenant,
                regression_id,
                persona,
                from_state: String::new(),
                to_state: State::Queued.as_str().to_owned(),
                version: 1,
                actor: actor(caller),
                reason,
                occurred_at: now_nanos(),
            }
        }
        Some(row) => {
            if to == State::Queued {
                // Queued is where a regression starts, never where one goes.
                return Err(AnalyticsError::IllegalTransition {
                    regression_id,
                    current: State::label(&row.state),
                    to: to.as_str(),
                });
            }
            if persona.as_deref().is_some_and(|p| p != row.persona) {
                return Err(invalid(
                    "persona",
                    format!("regression {regression_id} is for persona {:?}", row.persona),
                ));
            }
            if expected_state.is_none() && expected_version.is_none() {
                return Err(invalid(
                    "expected_version",
                    "expected_state or expected_version is required to move an existing regression",
                ));
            }
            let stored = State::parse(&row.state).ok_or_else(|| AnalyticsError::RowIntegrity {
                table: Regression::TABLE,
                primary_key: regression_id.clone(),
            })?;
            if expected_state.is_some_and(|s| s != stored)
                || expected_version.is_some_and(|v| v != row.version)
            {
                return Err(AnalyticsError::StaleRegression {
                    regression_id,
                    state: stored.as_str(),
                    version: row.version.max(0).unsigned_abs(),
                });
            }
            if !stored.can_move_to(to) {
                return Err(AnalyticsError::IllegalTransition {
                    regression_id,
                    current: stored.as_str(),
                    to: to.as_str(),
                });
            }
            let version = row.version + 1;
            Transition {
                event_id: event_id_of(&regression_id, version),
                tenant,
                regression_id,
                persona: row.persona,
                from_state: stored.as_str().to_owned(),
                to_state: to.as_str().to_owned(),
                version,
                actor: actor(caller),
                reason,
                occurred_at: now_nanos(),
            }
        }
    };
    let response = pb::PersonaRegression {
        regression_id: transition.regression_id.clone(),
        tenant: transition.tenant.clone(),
        persona: transition.persona.clone(),
        state: to.to_proto().into(),
        version: transition.version.max(0).unsigned_abs(),
        ledger: None,
    };
    let appended = svc.ledger.append(transition).await?;
    tracing::info!(
        regression_id = %response.regression_id,
        to = to.as_str(),
        version = response.version,
        index = appended.index,
        "persona regression moved"
    );
    Ok(pb::PersonaRegression {
        ledger: Some(pb::LedgerEntry {
            index: appended.index,
            leaf_hash: appended.leaf_hash.as_bytes().to_vec(),
        }),
        ..response
    })
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn transition_table_is_the_documented_one() {
        let legal = [
            ("queued", "running"),
            ("queued", "cancelled"),
            ("running", "passed"),
            ("running", "failed"),
            ("running", "cancelled"),
            ("passed", "promoted"),
            ("passed", "rolled_back"),
            ("failed", "promoted"),
            ("failed", "rolled_back"),
        ];
        for from in State::ALL {
            for to in State::ALL {
                let expected = legal.contains(&(from.as_str(), to.as_str()));
                assert_eq!(
                    from.can_move_to(to),
                    expected,
                    "{} -> {}",
                    from.as_str(),
                    to.as_str()
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
            assert_eq!(State::from_proto(s.to_proto()), Some(s));
        }
        assert_eq!(State::label("nonsense"), "unknown");
    }
}
