//! `persona_regressions` (the current state of each regression, updated in
//! place, its `row_version` its version) and
//! `persona_regression_transitions` (one ledger leaf per transition).
//!
//! A transition's commit moves the state row first, guarded by the state
//! and version it moves from ([`Ledgered::guard`]): a row that moved
//! meanwhile fails the item before its leaf touches the tree.

use serde_json::{Value as Json, json};
use soma_sign::HmacKeyring;
use soma_store::{Database, on_pool};

use super::{keyed_by, 
    BoxFuture, Conn, EventRow, Get, Leaves, Ledgered, Registration, Seal, Table, bind_values, columns, on_conn,
    select_list,
};
use crate::error::AnalyticsError;

/// The tables' registrations.
pub(crate) const TABLES: &[Registration] = &[
    Registration::of::<Transition>(),
    Registration::of::<Regression>(),
];

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
    pub(crate) const ALL: [Self; 7] = [
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

    keyed_by!(regression_id);

    fn content(&self) -> Json {
        json!({
            "persona": self.persona,
            "state": self.state,
            "version": self.version.to_string(),
            "last_event_id": self.last_event_id,
            "updated_at": self.updated_at.to_string(),
        })
    }
}

impl Table for Regression {
    const KEY: &'static str = "regression_id";
    columns! {
        regression_id: text,
        tenant: text,
        persona: text,
        state: text,
        version: int,
        last_event_id: text,
        updated_at: int,
    }
    const LEDGERED: bool = false;

    /// Its row version, and the ledger: the transition that produced it is
    /// there, and none after it (a whole older row written back carries a
    /// valid MAC for its older version).
    fn cross_check(&self, seal: &Seal, leaves: &Leaves) -> Option<String> {
        if seal.row_version != self.version || self.last_event_id != event_id_of(&self.regression_id, self.version)
        {
            return Some("row version does not match the regression's version".to_owned());
        }
        if !leaves.has(&self.tenant, &self.last_event_id) {
            return Some("no ledger leaf for the regression's last transition".to_owned());
        }
        if leaves.has(
            &self.tenant,
            &event_id_of(&self.regression_id, self.version.saturating_add(1)),
        ) {
            return Some("the ledger holds a later transition (row rolled back)".to_owned());
        }
        None
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

    keyed_by!(event_id);

    fn content(&self) -> Json {
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

impl Table for Transition {
    const KEY: &'static str = "event_id";
    columns! {
        event_id: text,
        tenant: text,
        regression_id: text,
        persona: text,
        from_state: text,
        to_state: text,
        version: int,
        actor: text,
        reason: text,
        occurred_at: int,
    }
    const LEDGERED: bool = true;

    fn leaf_time(&self) -> Option<i64> {
        Some(self.occurred_at)
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

impl Ledgered for Transition {
    const TIME: &'static str = "occurred_at";

    fn time(&self) -> i64 {
        self.occurred_at
    }

    /// Moves the state row as the transition says, guarded by the state
    /// and version it moves from (a creation inserts it, unless it exists).
    fn guard<'a>(
        &'a self,
        conn: &'a mut Conn<'_>,
        keys: &'a HmacKeyring,
    ) -> BoxFuture<'a, Result<Option<AnalyticsError>, AnalyticsError>> {
        Box::pin(async move {
            let next = self.state_row();
            let seal = Seal::at(&next, keys, next.version, None)?;
            let changed = if self.from_state.is_empty() {
                let sql = format!(
                    "INSERT INTO persona_regressions ({}) VALUES {} ON CONFLICT (tenant, regression_id) DO NOTHING",
                    select_list::<Regression>(),
                    super::values_list(0, 1, Regression::COLUMNS.len() + 4)
                );
                let mut values = next.values();
                values.extend(seal.values());
                on_conn!(conn, c => bind_values!(sqlx::query(&sql), &values).execute(&mut **c).await?.rows_affected())
            } else {
                on_conn!(conn, c => sqlx::query(
                    "UPDATE persona_regressions SET state = $1, version = $2, last_event_id = $3, updated_at = $4, \
                     row_version = $5, mac_key_id = $6, mac = $7, mac_scheme = $12 \
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
                .bind(&self.from_state)
                .bind(next.version - 1)
                .bind(seal.scheme)
                .execute(&mut **c)
                .await?
                .rows_affected())
            };
            if changed == 1 {
                Ok(None)
            } else {
                Ok(Some(current_state(conn, &self.tenant, &self.regression_id).await?))
            }
        })
    }

    /// Another transition already produced this version.
    fn conflict<'a>(&'a self, conn: &'a mut Conn<'_>) -> BoxFuture<'a, Result<AnalyticsError, AnalyticsError>> {
        Box::pin(current_state(conn, &self.tenant, &self.regression_id))
    }
}

/// The error that names a regression's current state and version (for a
/// transition that lost a race).
async fn current_state(
    conn: &mut Conn<'_>,
    tenant: &str,
    regression_id: &str,
) -> Result<AnalyticsError, AnalyticsError> {
    let sql = "SELECT state, version FROM persona_regressions WHERE tenant = $1 AND regression_id = $2";
    let current: Option<(String, i64)> = on_conn!(conn, c => {
        match sqlx::query(sql).bind(tenant).bind(regression_id).fetch_optional(&mut **c).await? {
            Some(r) => Some((r.text("state")?, r.int("version")?)),
            None => None,
        }
    });
    Ok(match current {
        Some((state, version)) => AnalyticsError::StaleRegression {
            regression_id: regression_id.to_owned(),
            state: State::label(&state),
            version: version.max(0).unsigned_abs(),
        },
        None => AnalyticsError::NotFound(format!("regression {regression_id} does not exist")),
    })
}

/// The event id of the transition that produces `version`.
pub(crate) fn event_id_of(regression_id: &str, version: i64) -> String {
    format!("regression:{regression_id}:{version}")
}

/// One regression of `tenant`: its state row, its seal, and whether the
/// ledger holds a transition past the row's version (the row was rolled
/// back in SQL). One statement, so the row and the ledger are read from one
/// snapshot: a transition committed between two reads cannot pass for a
/// rollback.
pub(crate) async fn regression_row(
    db: &Database,
    tenant: &str,
    regression_id: &str,
) -> Result<Option<(Regression, Seal, bool)>, AnalyticsError> {
    let sql = format!(
        "SELECT {}, EXISTS (SELECT 1 FROM ledger_leaves AS l WHERE l.tenant = r.tenant \
         AND l.event_id = 'regression:' || r.regression_id || ':' || CAST(r.version + 1 AS TEXT)) AS later \
         FROM persona_regressions AS r WHERE r.tenant = $1 AND r.regression_id = $2",
        select_list::<Regression>()
    );
    soma_store::retry!(db, "regression_row", AnalyticsError, on_pool!(db, pool => {
        let row = sqlx::query(&sql).bind(tenant).bind(regression_id).fetch_optional(pool).await?;
        row.map(|r| -> Result<_, AnalyticsError> {
            Ok((Regression::from_row(&r)?, Seal::read(&r)?, r.flag("later")?))
        })
        .transpose()
    }))
}
