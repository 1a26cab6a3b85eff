//! `disaster_drills` (one ledger leaf per drill) and `webhook_outbox` (the
//! signed notifications of a failed drill, queued in the drill's own
//! transaction; see [`crate::webhook`] for their delivery).

use serde_json::{Value as Json, json};
use soma_ledger::Hash;
use soma_sign::{HmacKeyring, jcs};
use soma_store::{Database, on_pool};

use super::row::push_string;
use super::{keyed_by, 
    Column, EventRow, Get, Ledgered, Registration, Seal, Table, Value, Write, columns, flag, int, opt_int, select_list,
    text,
};
use crate::convert::hex;
use crate::error::AnalyticsError;

/// The tables' registrations.
pub(crate) const TABLES: &[Registration] = &[Registration::of::<DrillRow>(), Registration::of::<Delivery>()];

/// A region's recovery objectives, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Objective {
    pub rto_nanos: i64,
    pub rpo_nanos: i64,
}

/// One step of a drill, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub name: String,
    /// `passed`, `failed` or `skipped`.
    pub outcome: String,
    pub detail: String,
}

/// A recorded drill row: the request's facts and the server's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DrillRow {
    pub event_id: String,
    pub tenant: String,
    pub region: String,
    pub scenario: String,
    /// Unix nanoseconds.
    pub started_at: i64,
    pub failover_completed_at: i64,
    pub restored_at: i64,
    pub last_durable_write_at: i64,
    pub rto_nanos: i64,
    pub rpo_nanos: i64,
    /// The objective applied; `None` when none was configured.
    pub objective: Option<Objective>,
    pub passed: bool,
    pub failure_reasons: Vec<String>,
    pub steps: Vec<Step>,
    /// SPIFFE ID of the service that recorded it.
    pub recorded_by: String,
    /// The webhook URLs a failed drill notifies (its outbox rows); not part
    /// of the row.
    pub notify: Vec<String>,
}

impl DrillRow {
    /// Whether `other` records the same drill facts (the verdict aside,
    /// which depends on the objectives configured at the time).
    pub(crate) fn same_facts(&self, other: &Self) -> bool {
        (
            &self.event_id,
            &self.tenant,
            &self.region,
            &self.scenario,
            self.started_at,
            self.failover_completed_at,
            self.restored_at,
            self.last_durable_write_at,
            &self.steps,
            &self.recorded_by,
        ) == (
            &other.event_id,
            &other.tenant,
            &other.region,
            &other.scenario,
            other.started_at,
            other.failover_completed_at,
            other.restored_at,
            other.last_durable_write_at,
            &other.steps,
            &other.recorded_by,
        )
    }

    fn steps_value(&self) -> Json {
        Json::Array(
            self.steps
                .iter()
                .map(|s| json!({"name": s.name, "outcome": s.outcome, "detail": s.detail}))
                .collect(),
        )
    }

    /// The steps as stored: their RFC 8785 canonical JSON, written
    /// directly (members of a step in byte order: detail, name, outcome).
    fn steps_json(&self) -> String {
        let mut out = vec![b'['];
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"detail\":");
            push_string(&mut out, &s.detail);
            out.extend_from_slice(b",\"name\":");
            push_string(&mut out, &s.name);
            out.extend_from_slice(b",\"outcome\":");
            push_string(&mut out, &s.outcome);
            out.push(b'}');
        }
        out.push(b']');
        utf8(out)
    }

    /// The failure reasons as stored: their RFC 8785 canonical JSON.
    fn failure_reasons_json(&self) -> String {
        let mut out = vec![b'['];
        for (i, reason) in self.failure_reasons.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_string(&mut out, reason);
        }
        out.push(b']');
        utf8(out)
    }
}

/// Bytes built from `&str`s and ASCII punctuation, as a string.
fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl EventRow for DrillRow {
    const TABLE: &'static str = "disaster_drills";
    const KIND: &'static str = "disaster_drill";

    keyed_by!(event_id);

    fn content(&self) -> Json {
        json!({
            "region": self.region,
            "scenario": self.scenario,
            "started_at": self.started_at.to_string(),
            "failover_completed_at": self.failover_completed_at.to_string(),
            "restored_at": self.restored_at.to_string(),
            "last_durable_write_at": self.last_durable_write_at.to_string(),
            "rto_nanos": self.rto_nanos.to_string(),
            "rpo_nanos": self.rpo_nanos.to_string(),
            "objective_rto_nanos": self.objective.map(|o| o.rto_nanos.to_string()),
            "objective_rpo_nanos": self.objective.map(|o| o.rpo_nanos.to_string()),
            "passed": self.passed,
            "failure_reasons": self.failure_reasons,
            "steps": self.steps_value(),
            "recorded_by": self.recorded_by,
        })
    }
}

/// A stored row whose JSON columns do not parse is reported as failing its
/// integrity check: it was not written by this service.
fn corrupt(event_id: &str) -> AnalyticsError {
    AnalyticsError::RowIntegrity {
        table: DrillRow::TABLE,
        primary_key: event_id.to_owned(),
    }
}

fn parse_reasons(event_id: &str, text: &str) -> Result<Vec<String>, AnalyticsError> {
    let value: Json = serde_json::from_str(text).map_err(|_| corrupt(event_id))?;
    value
        .as_array()
        .ok_or_else(|| corrupt(event_id))?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| corrupt(event_id)))
        .collect()
}

fn parse_steps(event_id: &str, text: &str) -> Result<Vec<Step>, AnalyticsError> {
    let value: Json = serde_json::from_str(text).map_err(|_| corrupt(event_id))?;
    let field = |step: &Json, name: &str| -> Result<String, AnalyticsError> {
        step.get(name)
            .and_then(Json::as_str)
            .map(str::to_owned)
            .ok_or_else(|| corrupt(event_id))
    };
    value
        .as_array()
        .ok_or_else(|| corrupt(event_id))?
        .iter()
        .map(|s| {
            Ok(Step {
                name: field(s, "name")?,
                outcome: field(s, "outcome")?,
                detail: field(s, "detail")?,
            })
        })
        .collect()
}

impl Table for DrillRow {
    const KEY: &'static str = "event_id";
    const COLUMNS: &'static [Column] = &[
        text("event_id"),
        text("tenant"),
        text("region"),
        text("scenario"),
        int("started_at"),
        int("failover_completed_at"),
        int("restored_at"),
        int("last_durable_write_at"),
        int("rto_nanos"),
        int("rpo_nanos"),
        opt_int("objective_rto_nanos"),
        opt_int("objective_rpo_nanos"),
        flag("passed"),
        text("failure_reasons"),
        text("steps"),
        text("recorded_by"),
    ];
    const LEDGERED: bool = true;

    fn values(&self) -> Vec<Value<'_>> {
        vec![
            Value::Text(&self.event_id),
            Value::Text(&self.tenant),
            Value::Text(&self.region),
            Value::Text(&self.scenario),
            Value::Int(self.started_at),
            Value::Int(self.failover_completed_at),
            Value::Int(self.restored_at),
            Value::Int(self.last_durable_write_at),
            Value::Int(self.rto_nanos),
            Value::Int(self.rpo_nanos),
            Value::OptInt(self.objective.map(|o| o.rto_nanos)),
            Value::OptInt(self.objective.map(|o| o.rpo_nanos)),
            Value::Bool(self.passed),
            Value::Owned(self.failure_reasons_json()),
            Value::Owned(self.steps_json()),
            Value::Text(&self.recorded_by),
        ]
    }

    fn from_row<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        let event_id = r.text("event_id")?;
        let objective = match (r.opt_int("objective_rto_nanos")?, r.opt_int("objective_rpo_nanos")?) {
            (Some(rto_nanos), Some(rpo_nanos)) => Some(Objective { rto_nanos, rpo_nanos }),
            (None, None) => None,
            _ => return Err(corrupt(&event_id)),
        };
        Ok(Self {
            tenant: r.text("tenant")?,
            region: r.text("region")?,
            scenario: r.text("scenario")?,
            started_at: r.int("started_at")?,
            failover_completed_at: r.int("failover_completed_at")?,
            restored_at: r.int("restored_at")?,
            last_durable_write_at: r.int("last_durable_write_at")?,
            rto_nanos: r.int("rto_nanos")?,
            rpo_nanos: r.int("rpo_nanos")?,
            objective,
            passed: r.flag("passed")?,
            failure_reasons: parse_reasons(&event_id, &r.text("failure_reasons")?)?,
            steps: parse_steps(&event_id, &r.text("steps")?)?,
            recorded_by: r.text("recorded_by")?,
            notify: Vec::new(),
            event_id,
        })
    }

    fn leaf_time(&self) -> Option<i64> {
        Some(self.started_at)
    }
}

impl Ledgered for DrillRow {
    const TIME: &'static str = "started_at";

    fn time(&self) -> i64 {
        self.started_at
    }

    /// The outbox rows of a failed drill: the drill, its leaf and its
    /// notifications commit together or not at all.
    fn dependents(
        &self,
        keys: &HmacKeyring,
        ledger_index: i64,
        leaf_hash: &Hash,
        now: i64,
    ) -> Result<Vec<Write<'static>>, AnalyticsError> {
        deliveries(self, ledger_index, leaf_hash, now)?
            .iter()
            .map(|d| Write::sealed(d, keys))
            .collect()
    }
}

/// Drills of `region` (every region when `None`) and of `tenant` (every
/// tenant when `None`), with their seals (not yet checked).
pub(crate) async fn drills_of(
    db: &Database,
    region: Option<&str>,
    tenant: Option<&str>,
) -> Result<Vec<(DrillRow, Seal)>, AnalyticsError> {
    let sql = format!(
        "SELECT {} FROM disaster_drills WHERE ($1 = '' OR region = $1) AND ($2 = '' OR tenant = $2) \
         ORDER BY ledger_index",
        select_list::<DrillRow>()
    );
    soma_store::retry!(db, "drills", AnalyticsError, on_pool!(db, pool => {
        let rows = sqlx::query(&sql)
            .bind(region.unwrap_or(""))
            .bind(tenant.unwrap_or(""))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((DrillRow::from_row(r)?, Seal::read(r)?)) })
            .collect()
    }))
}

/// One queued notification: a row of `webhook_outbox`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub delivery_id: String,
    /// The drill notified about.
    pub event_id: String,
    pub tenant: String,
    pub url: String,
    /// The exact bytes sent on every attempt.
    pub body: Vec<u8>,
    /// Unix nanoseconds.
    pub created_at: i64,
    /// Attempts so far (delivery state: not MACed).
    pub attempts: i64,
    /// When the next attempt is due (delivery state: not MACed).
    pub next_attempt_at: i64,
}

/// The outbox row's MAC covers its immutable part; it is never a ledger
/// leaf (the drill it notifies about is).
impl EventRow for Delivery {
    const TABLE: &'static str = "webhook_outbox";
    const KIND: &'static str = "webhook_delivery";

    #[expect(
        clippy::misnamed_getters,
        reason = "the MAC's primary key of an outbox row is its delivery id, not the drill's event id"
    )]
    fn event_id(&self) -> &str {
        &self.delivery_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Json {
        json!({
            "event_id": self.event_id,
            "url": self.url,
            "body_sha256": hex(&soma_sign::sha256(&self.body)),
            "created_at": self.created_at.to_string(),
        })
    }
}

impl Table for Delivery {
    const KEY: &'static str = "delivery_id";
    columns! {
        delivery_id: text,
        event_id: text,
        tenant: text,
        url: text,
        body: bytes,
        created_at: int,
        attempts: int,
        next_attempt_at: int,
    }
    const LEDGERED: bool = false;
}

/// The notification body of a failed drill: its event, with its ledger
/// position, in RFC 8785 canonical JSON.
fn event_body(row: &DrillRow, index: i64, leaf_hash: &Hash) -> Result<Vec<u8>, AnalyticsError> {
    let mut event = json!({
        "type": "disaster_drill.failed",
        "event_id": row.event_id,
        "tenant": row.tenant,
        "ledger": {"index": index.to_string(), "leaf_hash": hex(leaf_hash.as_bytes())},
    });
    if let (Some(event), Json::Object(content)) = (event.as_object_mut(), row.content()) {
        event.extend(content);
    }
    Ok(jcs::canonicalize(&event)?)
}

/// The outbox rows of a drill just appended at `index` (none when it
/// passed or no URL is configured). Delivery ids are derived from the
/// tenant, the drill and the URL, so they are stable and unique per triple
/// (drill ids are scoped per tenant).
fn deliveries(row: &DrillRow, index: i64, leaf_hash: &Hash, now: i64) -> Result<Vec<Delivery>, AnalyticsError> {
    if row.passed || row.notify.is_empty() {
        return Ok(Vec::new());
    }
    let body = event_body(row, index, leaf_hash)?;
    Ok(row
        .notify
        .iter()
        .map(|url| {
            let mut seed = row.tenant.as_bytes().to_vec();
            seed.push(0);
            seed.extend_from_slice(row.event_id.as_bytes());
            seed.push(0);
            seed.extend_from_slice(url.as_bytes());
            Delivery {
                delivery_id: format!("whd-{}", &hex(&soma_sign::sha256(&seed))[..32]),
                event_id: row.event_id.clone(),
                tenant: row.tenant.clone(),
                url: url.clone(),
                body: body.clone(),
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
            }
        })
        .collect())
}

/// Up to `limit` undelivered outbox rows due at `now`, with their seals
/// (not yet checked), the earliest first.
pub(crate) async fn due_deliveries(
    db: &Database,
    now: i64,
    limit: i64,
) -> Result<Vec<(Delivery, Seal)>, AnalyticsError> {
    let sql = format!(
        "SELECT {} FROM webhook_outbox WHERE delivered_at IS NULL AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, delivery_id LIMIT $2",
        select_list::<Delivery>()
    );
    soma_store::retry!(db, "webhook_due", AnalyticsError, on_pool!(db, pool => {
        let rows = sqlx::query(&sql).bind(now).bind(limit).fetch_all(pool).await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((Delivery::from_row(r)?, Seal::read(r)?)) })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use soma_sign::jcs;

    use super::{DrillRow, Step};

    #[test]
    fn json_columns_are_rfc_8785_canonical() {
        let texts = ["plain", "", "q\"b\\s/", "\u{0}\u{1f}\u{7f}\n\t", "é 漢 \u{10348}"];
        let row = DrillRow {
            event_id: "d".to_owned(),
            tenant: "t".to_owned(),
            region: "r".to_owned(),
            scenario: "s".to_owned(),
            started_at: 0,
            failover_completed_at: 0,
            restored_at: 0,
            last_durable_write_at: 0,
            rto_nanos: 0,
            rpo_nanos: 0,
            objective: None,
            passed: false,
            failure_reasons: texts.iter().map(|t| (*t).to_owned()).collect(),
            steps: texts
                .iter()
                .map(|t| Step {
                    name: format!("n{t}"),
                    outcome: "failed".to_owned(),
                    detail: (*t).to_owned(),
                })
                .collect(),
            recorded_by: "x".to_owned(),
            notify: Vec::new(),
        };
        assert_eq!(
            row.steps_json().into_bytes(),
            jcs::canonicalize(&row.steps_value()).unwrap()
        );
        assert_eq!(
            row.failure_reasons_json().into_bytes(),
            jcs::canonicalize(&json!(row.failure_reasons)).unwrap()
        );
    }
}
