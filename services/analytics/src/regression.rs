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
//! (its MAC; `DATA_LOSS` if it fails or if it was rolled back), tenancy
//! (`PERMISSION_DENIED`), the expectation (`ABORTED`), and last the table
//! (`FAILED_PRECONDITION`): a caller whose view is stale is told so before
//! being told what its stale view would not allow.
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

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;
use soma_sign::HmacKeyring;
use soma_store::Database;
use sqlx::Row as _;

use crate::db::on_pool;
use crate::error::AnalyticsError;
use crate::rows::{EventRow, NewRow, Seal};
use crate::service::AnalyticsService;
use crate::validate;

/// Longest regression id: `regression:<id>:<version>` must stay a valid
/// event id (128 characters) for every version.
pub(crate) const MAX_REGRESSION_ID_LEN: usize = 96;

/// Longest transition reason, in bytes.
pub(crate) const MAX_REASON_LEN: usize = 512;

/// A regression's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Queued,
    Running,
    Passed,
    Failed,
    Promoted,
    RolledBack,
    Cancelled,
}

impl State {
    const ALL: [Self; 7] = [
        Self::Queued,
        Self::Running,
        Self::Passed,
        Self::Failed,
        Self::Promoted,
        Self::RolledBack,
        Self::Cancelled,
    ];

    /// The stored name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// A stored name as a `'static` label for messages (`unknown` for a
    /// name no version of this code writes).
    pub(crate) fn label(name: &str) -> &'static str {
        Self::parse(name).map_or("unknown", Self::as_str)
    }

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

/// The current state of a regression: the row of `persona_regressions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Regression {
    pub regression_id: String,
    pub tenant: String,
    pub persona: String,
    pub state: String,
    pub version: i64,
    /// Event id of the transition that produced this version.
    pub last_event_id: String,
    /// Unix nanoseconds.
    pub updated_at: i64,
}

impl EventRow for Regression {
    const TABLE: &'static str = "persona_regressions";
    // Never appended itself: its transitions are.
    const KIND: &'static str = "persona_regression";

    fn event_id(&self) -> &str {
        &self.regression_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Value {
        json!({
            "persona": self.persona,
            "state": self.state,
            "version": self.version.to_string(),
            "last_event_id": self.last_event_id,
            "updated_at": self.updated_at.to_string(),
        })
    }
}

/// One transition, the audit row appended to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    /// `regression:<regression_id>:<version>`.
    pub event_id: String,
    pub tenant: String,
    pub regression_id: String,
    pub persona: String,
    /// Empty for the transition that created the regression.
    pub from_state: String,
    pub to_state: String,
    /// The version this transition produces.
    pub version: i64,
    /// Claims subject, or the peer's SPIFFE ID.
    pub actor: String,
    pub reason: String,
    /// Unix nanoseconds.
    pub occurred_at: i64,
}

impl EventRow for Transition {
    const TABLE: &'static str = "persona_regression_transitions";
    const KIND: &'static str = "persona_regression_transition";

    fn event_id(&self) -> &str {
        &self.event_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Value {
        json!({
            "regression_id": self.regression_id,
            "persona": self.persona,
            "from": self.from_state,
            "to": self.to_state,
            "version": self.version.to_string(),
            "actor": self.actor,
            "reason": self.reason,
            "occurred_at": self.occurred_at.to_string(),
        })
    }
}

impl Transition {
    /// The state row this transition leaves behind.
    pub(crate) fn state_row(&self) -> Regression {
        Regression {
            regression_id: self.regression_id.clone(),
            tenant: self.tenant.clone(),
            persona: self.persona.clone(),
            state: self.to_state.clone(),
            version: self.version,
            last_event_id: self.event_id.clone(),
            updated_at: self.occurred_at,
        }
    }
}

/// The event id of the transition that produces `version`.
pub(crate) fn event_id_of(regression_id: &str, version: i64) -> String {
    format!("regression:{regression_id}:{version}")
}

/// MACs a row under the keyring's primary key at `row_version` (the one
/// table whose rows are updated binds its version here).
pub(crate) fn seal_at<R: EventRow>(
    row: &R,
    keys: &HmacKeyring,
    row_version: i64,
) -> Result<Seal, AnalyticsError> {
    let key_id = keys.primary().as_str().to_owned();
    let (_, tag) = keys.sign(&row.mac_message(row_version, &key_id)?);
    Ok(Seal {
        row_version,
        key_id,
        mac: tag.to_vec(),
    })
}

/// Inside the ledger writer's transaction `$tx`, moves the state row as the
/// transition `$t` says, guarded by the state and version it moves from.
/// Evaluates to `Ok(())` or the item's error (the row moved meanwhile);
/// database errors leave the enclosing function with `?`.
macro_rules! apply_transition {
    ($tx:expr, $keys:expr, $t:expr) => {{
        let t: &$crate::regression::Transition = $t;
        let next = t.state_row();
        let seal = $crate::regression::seal_at(&next, $keys, next.version)?;
        let changed = if t.from_state.is_empty() {
            sqlx::query(
                "INSERT INTO persona_regressions (regression_id, tenant, persona, state, version, last_event_id, \
                 updated_at, row_version, mac_key_id, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (regression_id) DO NOTHING",
            )
            .bind(&next.regression_id)
            .bind(&next.tenant)
            .bind(&next.persona)
            .bind(&next.state)
            .bind(next.version)
            .bind(&next.last_event_id)
            .bind(next.updated_at)
            .bind(seal.row_version)
            .bind(&seal.key_id)
            .bind(&seal.mac)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE persona_regressions SET state = $1, version = $2, last_event_id = $3, updated_at = $4, \
                 row_version = $5, mac_key_id = $6, mac = $7 \
                 WHERE regression_id = $8 AND tenant = $9 AND state = $10 AND version = $11",
            )
            .bind(&next.state)
            .bind(next.version)
            .bind(&next.last_event_id)
            .bind(next.updated_at)
            .bind(seal.row_version)
            .bind(&seal.key_id)
            .bind(&seal.mac)
            .bind(&next.regression_id)
            .bind(&next.tenant)
            .bind(&t.from_state)
            .bind(next.version - 1)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
        };
        if changed == 1 {
            Ok(())
        } else {
            Err($crate::regression::current_state!($tx, &t.regression_id))
        }
    }};
}

/// Inside `$tx`, the error that names a regression's current state and
/// version (for a transition that lost a race).
macro_rules! current_state {
    ($tx:expr, $regression_id:expr) => {{
        let regression_id: &str = $regression_id;
        match sqlx::query("SELECT state, version FROM persona_regressions WHERE regression_id = $1")
            .bind(regression_id)
            .fetch_optional(&mut *$tx)
            .await?
        {
            Some(r) => $crate::error::AnalyticsError::StaleRegression {
                regression_id: regression_id.to_owned(),
                state: $crate::regression::State::label(&r.try_get::<String, _>("state")?),
                version: r.try_get::<i64, _>("version")?.max(0).unsigned_abs(),
            },
            None => {
                $crate::error::AnalyticsError::NotFound(format!("regression {regression_id} does not exist"))
            }
        }
    }};
}

/// Inside `$tx`, inserts the audit row of transition `$t` at ledger index
/// `$index`.
macro_rules! insert_transition {
    ($tx:expr, $keys:expr, $t:expr, $index:expr) => {{
        let t: &$crate::regression::Transition = $t;
        let seal = $crate::rows::EventRow::seal(t, $keys)?;
        sqlx::query(
            "INSERT INTO persona_regression_transitions (event_id, tenant, regression_id, persona, from_state, \
             to_state, version, actor, reason, occurred_at, ledger_index, row_version, mac_key_id, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&t.event_id)
        .bind(&t.tenant)
        .bind(&t.regression_id)
        .bind(&t.persona)
        .bind(&t.from_state)
        .bind(&t.to_state)
        .bind(t.version)
        .bind(&t.actor)
        .bind(&t.reason)
        .bind(t.occurred_at)
        .bind($index)
        .bind(seal.row_version)
        .bind(&seal.key_id)
        .bind(&seal.mac)
        .execute(&mut *$tx)
        .await?;
    }};
}

pub(crate) use {apply_transition, current_state, insert_transition};

const REGRESSION_COLUMNS: &str =
    "regression_id, tenant, persona, state, version, last_event_id, updated_at, row_version, mac_key_id, mac";
const TRANSITION_COLUMNS: &str = "event_id, tenant, regression_id, persona, from_state, to_state, version, actor, \
                                  reason, occurred_at, row_version, mac_key_id, mac";

macro_rules! seal_of {
    ($r:expr) => {
        Seal {
            row_version: $r.try_get::<i64, _>("row_version")?,
            key_id: $r.try_get::<String, _>("mac_key_id")?,
            mac: $r.try_get::<Vec<u8>, _>("mac")?,
        }
    };
}

macro_rules! regression_of {
    ($r:expr) => {
        Regression {
            regression_id: $r.try_get("regression_id")?,
            tenant: $r.try_get("tenant")?,
            persona: $r.try_get("persona")?,
            state: $r.try_get("state")?,
            version: $r.try_get("version")?,
            last_event_id: $r.try_get("last_event_id")?,
            updated_at: $r.try_get("updated_at")?,
        }
    };
}

macro_rules! transition_of {
    ($r:expr) => {
        Transition {
            event_id: $r.try_get("event_id")?,
            tenant: $r.try_get("tenant")?,
            regression_id: $r.try_get("regression_id")?,
            persona: $r.try_get("persona")?,
            from_state: $r.try_get("from_state")?,
            to_state: $r.try_get("to_state")?,
            version: $r.try_get("version")?,
            actor: $r.try_get("actor")?,
            reason: $r.try_get("reason")?,
            occurred_at: $r.try_get("occurred_at")?,
        }
    };
}

/// One regression's state row, its seal, and whether the ledger holds a
/// transition past the row's version (the row was rolled back in SQL).
/// One statement, so the row and the ledger are read from one snapshot: a
/// transition committed between two reads cannot pass for a rollback.
pub(crate) async fn regression_row(
    db: &Database,
    regression_id: &str,
) -> Result<Option<(Regression, Seal, bool)>, AnalyticsError> {
    on_pool!(db, pool => {
        let row = sqlx::query(&format!(
            "SELECT {REGRESSION_COLUMNS}, EXISTS (SELECT 1 FROM ledger_leaves AS l \
             WHERE l.event_id = 'regression:' || r.regression_id || ':' || CAST(r.version + 1 AS TEXT)) AS later \
             FROM persona_regressions AS r WHERE r.regression_id = $1"
        ))
        .bind(regression_id)
        .fetch_optional(pool)
        .await?;
        row.map(|r| -> Result<_, AnalyticsError> {
            Ok((regression_of!(r), seal_of!(r), r.try_get::<bool, _>("later")?))
        })
        .transpose()
    })
}

/// One transition's audit row and its seal, by event id.
pub(crate) async fn transition_row(
    db: &Database,
    event_id: &str,
) -> Result<Option<(Transition, Seal)>, AnalyticsError> {
    on_pool!(db, pool => {
        let row = sqlx::query(&format!(
            "SELECT {TRANSITION_COLUMNS} FROM persona_regression_transitions WHERE event_id = $1"
        ))
        .bind(event_id)
        .fetch_optional(pool)
        .await?;
        row.map(|r| -> Result<_, AnalyticsError> { Ok((transition_of!(r), seal_of!(r))) }).transpose()
    })
}

/// Every state row and every transition row, for the sweep.
pub(crate) async fn all_rows(
    db: &Database,
) -> Result<(Vec<(Regression, Seal)>, Vec<(Transition, Seal)>), AnalyticsError> {
    on_pool!(db, pool => {
        let states = sqlx::query(&format!(
            "SELECT {REGRESSION_COLUMNS} FROM persona_regressions ORDER BY regression_id"
        ))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| -> Result<_, AnalyticsError> { Ok((regression_of!(r), seal_of!(r))) })
        .collect::<Result<Vec<_>, _>>()?;
        let transitions = sqlx::query(&format!(
            "SELECT {TRANSITION_COLUMNS} FROM persona_regression_transitions ORDER BY ledger_index"
        ))
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| -> Result<_, AnalyticsError> { Ok((transition_of!(r), seal_of!(r))) })
        .collect::<Result<Vec<_>, _>>()?;
        Ok((states, transitions))
    })
}

/// The sweep's check of a state row: its MAC, its row version, and the
/// ledger (the transition that produced it is there, and none after it).
pub(crate) fn check_state(
    row: &Regression,
    seal: &Seal,
    keys: &HmacKeyring,
    leaves: &std::collections::HashMap<String, Vec<u8>>,
) -> Option<String> {
    if let Err(e) = row.check(keys, seal) {
        return Some(format!("row mac: {e}"));
    }
    if seal.row_version != row.version || row.last_event_id != event_id_of(&row.regression_id, row.version) {
        return Some("row version does not match the regression's version".to_owned());
    }
    if !leaves.contains_key(&row.last_event_id) {
        return Some("no ledger leaf for the regression's last transition".to_owned());
    }
    if leaves.contains_key(&event_id_of(&row.regression_id, row.version.saturating_add(1))) {
        return Some("the ledger holds a later transition (row rolled back)".to_owned());
    }
    None
}

fn invalid(field: &'static str, reason: impl Into<String>) -> AnalyticsError {
    AnalyticsError::InvalidArgument {
        field,
        reason: reason.into(),
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

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(i64::MAX)
}

/// Who acts: the verified claims' subject, else the peer's SPIFFE ID.
pub(crate) fn actor(caller: &Caller) -> String {
    match &caller.claims {
        Some(claims) if !claims.subject.is_empty() => claims.subject.clone(),
        _ => caller.peer.spiffe_id.to_string(),
    }
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

    let current = match regression_row(&svc.db, &regression_id).await? {
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
            if row.tenant != tenant {
                return Err(AnalyticsError::PermissionDenied(format!(
                    "regression {regression_id} belongs to another tenant"
                )));
            }
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
    let appended = svc
        .ledger
        .append(NewRow::RegressionTransition(transition))
        .await?;
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
