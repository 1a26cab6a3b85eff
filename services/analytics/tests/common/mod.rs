//! Builders shared by Analytics' own tests: a development authority in a
//! temp dir, Analytics started in-process on 127.0.0.1:0 with real mTLS on
//! a real database (SQLite or PostgreSQL), clients under any SPIFFE ID,
//! claims as the gateway forwards them, and request builders.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use soma_ca::{Authority, IssueOptions};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, ServiceKind};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::{Database, StoreSettings};
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const TD: &str = "somastack.test";

/// A development authority in a temp dir.
pub struct Ca {
    pub dir: tempfile::TempDir,
    pub authority: Arc<Authority>,
}

impl Ca {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let authority = Authority::open_or_create(dir.path(), &TrustDomain::parse(TD).unwrap()).unwrap();
        Self {
            dir,
            authority: Arc::new(authority),
        }
    }

    pub fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::from_parts(self.authority.trust_domain(), path).unwrap()
    }

    fn bundles(&self) -> BundleSet {
        let mut set = BundleSet::new();
        set.insert(
            Bundle::from_der_concat(
                self.authority.trust_domain().clone(),
                &self.authority.bundle_der(),
            )
            .unwrap(),
        );
        set
    }

    /// A live identity for `path`, valid for an hour.
    pub fn store(&self, path: &str) -> Arc<SvidStore> {
        let id = self.id(path);
        let issued = self
            .authority
            .issue(&id, Duration::from_secs(3600), IssueOptions::default())
            .unwrap();
        let svid = Svid::from_der(&issued.chain_der_concatenated(), &issued.key_pkcs8_der).unwrap();
        SvidStore::new(id, svid, self.bundles()).unwrap()
    }
}

/// Fresh Analytics keys: a row keyring and an Ed25519 signing key.
pub fn analytics_config() -> soma_analytics::AnalyticsConfig {
    keyed_config().0
}

/// [`analytics_config`] and a copy of its row keys (for sweeping the
/// database directly).
pub fn keyed_config() -> (soma_analytics::AnalyticsConfig, soma_sign::HmacKeyring) {
    let (_, row_keys_json) = soma_sign::HmacKeyring::generate("row-1").unwrap();
    let (_, pkcs8) =
        soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1").unwrap()).unwrap();
    let config = soma_analytics::AnalyticsConfig {
        row_keys: soma_sign::HmacKeyring::from_json(&row_keys_json).unwrap(),
        signing_key_pem: pem("PRIVATE KEY", &pkcs8),
        signing_key_id: "analytics-1".to_owned(),
        ledger_origin: format!("{TD}/analytics"),
        max_export_span: soma_analytics::DEFAULT_MAX_EXPORT_SPAN,
        drills: soma_analytics::DrillConfig::default(),
        anomaly: soma_analytics::AnomalyConfig::default(),
    };
    (config, soma_sign::HmacKeyring::from_json(&row_keys_json).unwrap())
}

/// A PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

/// Analytics running in-process, and its database.
pub struct Running {
    pub addr: SocketAddr,
    pub id: SpiffeId,
    pub db: Database,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.db.close().await;
    }

    /// A client under the SPIFFE ID `path` of `ca`, over mTLS.
    pub fn client(&self, ca: &Ca, path: &str) -> AnalyticsClient<Channel> {
        AnalyticsClient::new(soma_mesh::channel(ca.store(path), self.addr, self.id.clone()).unwrap())
    }
}

/// Starts Analytics (identity `/svc/analytics` from `ca`) on the database
/// of `store`, verifying claims envelopes signed by `claims`.
pub async fn start_analytics(
    ca: &Ca,
    store: &StoreSettings,
    config: soma_analytics::AnalyticsConfig,
    claims: &soma_auth::ClaimsSigner,
) -> Running {
    let identity = ca.store("/svc/analytics");
    let verifier = soma_auth::ClaimsVerifier::new(
        ca.id("/svc/gateway"),
        ca.id("/svc/analytics"),
        vec![(claims.key_id().to_owned(), claims.public_key())],
    );
    let settings = MeshSettings::load(ServiceKind::Analytics, None, |_| None).unwrap();
    let db = Database::connect(store, "analytics").await.unwrap();
    db.migrate(&soma_analytics::MIGRATIONS).await.unwrap();
    let spec = soma_analytics::spec(db.clone(), &settings.limits, config)
        .await
        .unwrap();
    let id = identity.own_id().clone();
    let app = Application::build(settings, identity, Some(verifier), spec)
        .await
        .unwrap();
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        id,
        db,
        stop: Some(tx),
        task: Some(task),
    }
}

/// Signed claims for `tenant` with `capabilities`, addressed to `audience`,
/// as the gateway forwards them.
pub fn tenant_request<T>(
    signer: &soma_auth::ClaimsSigner,
    audience: &SpiffeId,
    tenant: &str,
    capabilities: &[&str],
    message: T,
) -> tonic::Request<T> {
    let claims = pb::VerifiedClaims {
        tenant: tenant.to_owned(),
        subject: format!("user@{tenant}"),
        region: "local".to_owned(),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        mfa: true,
        request_id: "test".to_owned(),
        ..Default::default()
    };
    let signed = signer
        .sign(
            claims,
            audience,
            Duration::from_secs(30),
            std::time::SystemTime::now(),
        )
        .unwrap();
    let mut request = tonic::Request::new(message);
    signed.insert_into(request.metadata_mut());
    request
}

/// A timestamp at whole seconds.
pub fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// A billing event of `tenant`.
pub fn billing(event_id: &str, tenant: &str, micros: i64) -> pb::RecordBillingEventRequest {
    pb::RecordBillingEventRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        tool: "summarize".to_owned(),
        tool_version: "1.2.0".to_owned(),
        amount: Some(pb::Money {
            currency: "EUR".to_owned(),
            micros,
        }),
        fuel_consumed: 1000,
        duration_micros: 2500,
        occurred_at: ts(1_790_000_000),
        run_id: format!("run-{event_id}"),
    }
}

/// An audit event of `tenant` (empty: platform-wide) with a few details.
pub fn audit(event_id: &str, tenant: &str, action: &str, at: i64) -> pb::RecordAuditEventRequest {
    use prost_types::value::Kind;
    let value = |kind| prost_types::Value { kind: Some(kind) };
    pb::RecordAuditEventRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        action: action.to_owned(),
        subject: format!("tool:summarize@1.2.0/{event_id}"),
        details: Some(prost_types::Struct {
            fields: [
                ("version".to_owned(), value(Kind::StringValue("1.2.0".to_owned()))),
                ("attempt".to_owned(), value(Kind::NumberValue(3.0))),
                ("signed".to_owned(), value(Kind::BoolValue(true))),
                (
                    "reviewers".to_owned(),
                    value(Kind::ListValue(prost_types::ListValue {
                        values: vec![value(Kind::StringValue("ada".to_owned()))],
                    })),
                ),
            ]
            .into_iter()
            .collect(),
        }),
        occurred_at: ts(at),
    }
}

/// The `soma-reason` of a refusal.
pub fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(soma_mesh::REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Runs one SQL statement on either engine; the rows it affected.
pub async fn exec(db: &Database, sql: &str) -> u64 {
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        (None, Some(pool)) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// The one text value `sql` selects.
pub async fn text(db: &Database, sql: &str) -> String {
    use sqlx::Row as _;
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql)
            .fetch_one(pool)
            .await
            .unwrap()
            .get::<String, _>(0),
        (None, Some(pool)) => sqlx::query(sql)
            .fetch_one(pool)
            .await
            .unwrap()
            .get::<String, _>(0),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// A collected export: its bytes and its signature message.
pub async fn collect_export(mut stream: tonic::Streaming<pb::ExportChunk>) -> (Vec<u8>, pb::ExportSignature) {
    let mut bytes = Vec::new();
    let mut signature = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(signature.is_none(), "the signature comes last");
        bytes.extend_from_slice(&chunk.data);
        signature = chunk.signature;
    }
    (bytes, signature.expect("a signature message"))
}
