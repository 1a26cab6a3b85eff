//! Helpers shared by the integration tests: a development authority in a
//! temp dir, SVIDs minted from it, services started in-process on
//! 127.0.0.1:0 with real mTLS on a real database of either engine (one
//! fresh database per service and engine, from [`engine_stores`]), and mTLS
//! clients.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use soma_ca::{Authority, IssueOptions};
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, Metrics, ServiceKind};
use soma_store::testing::TestDb;
use soma_store::{Database, StoreSettings};
use tokio::sync::oneshot;

pub mod edge;

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

    pub fn bundles(&self) -> BundleSet {
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

    /// A live identity for `path`, valid for `ttl`.
    pub fn store(&self, path: &str, ttl: Duration) -> Arc<SvidStore> {
        let id = self.id(path);
        let issued = self.authority.issue(&id, ttl, IssueOptions::default()).unwrap();
        let svid = Svid::from_der(&issued.chain_der_concatenated(), &issued.key_pkcs8_der).unwrap();
        SvidStore::new(id, svid, self.bundles()).unwrap()
    }
}

/// One service running in-process.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Metrics,
    pub id: SpiffeId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// One engine's databases for one test: a fresh database per service, as
/// each service owns its database in production. (Two services cannot share
/// one PostgreSQL database: both would record their migrations, whose
/// versions overlap, in the one sqlx migration table.)
pub struct Stores {
    /// `"sqlite"` or `"postgres"`.
    pub label: &'static str,
    dbs: Vec<(ServiceKind, TestDb)>,
}

impl Stores {
    /// The database settings of `kind` on this engine.
    ///
    /// # Panics
    /// When `kind` was not among the kinds asked of [`engine_stores`].
    pub fn of(&self, kind: ServiceKind) -> &StoreSettings {
        self.dbs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, db)| &db.settings)
            .unwrap_or_else(|| panic!("{kind}: no database asked of engine_stores for it"))
    }

    /// Drops this engine's PostgreSQL databases and removes the data
    /// directories.
    pub async fn cleanup(self) {
        for (_, db) in self.dbs {
            db.cleanup().await;
        }
    }
}

/// For every engine of `soma_store::testing::engines` (SQLite; PostgreSQL
/// when `DATABASE_URL` is set, and always under `CI`), a fresh database for
/// each of `kinds`. Announces each engine on stderr as the test reaches it,
/// so that a failure's captured output says which engine failed.
#[expect(
    clippy::print_stderr,
    reason = "the harness captures it and shows it beside a failure: which engine failed"
)]
pub async fn engine_stores(kinds: &[ServiceKind]) -> impl Iterator<Item = Stores> {
    let mut engines: Vec<Stores> = Vec::new();
    for &kind in kinds {
        for (i, db) in soma_store::testing::engines(kind.name())
            .await
            .into_iter()
            .enumerate()
        {
            if i == engines.len() {
                engines.push(Stores {
                    label: db.label,
                    dbs: Vec::new(),
                });
            }
            assert_eq!(
                engines[i].label, db.label,
                "engines() must list the engines in one order"
            );
            engines[i].dbs.push((kind, db));
        }
    }
    engines
        .into_iter()
        .inspect(|stores| eprintln!("--- engine: {}", stores.label))
}

/// Starts `kind` with identity `/svc/<kind>` from `ca`, on the database
/// `db` (one engine's, from [`Stores::of`]), with `claims` as its envelope
/// verifier.
pub async fn start(
    ca: &Ca,
    kind: ServiceKind,
    claims: Option<soma_auth::ClaimsVerifier>,
    db: &StoreSettings,
) -> Running {
    let store = ca.store(&kind.spiffe_path(), Duration::from_secs(3600));
    start_with(store, kind, claims, &[], db).await
}

/// Starts Analytics (identity `/svc/analytics` from `ca`) on the database
/// of `store` (SQLite or PostgreSQL, e.g. from `soma_store::testing::engines`),
/// with these keys, verifying claims envelopes signed by `claims` when given.
pub async fn start_analytics(
    ca: &Ca,
    store: &StoreSettings,
    config: soma_analytics::AnalyticsConfig,
    claims: Option<&soma_auth::ClaimsSigner>,
) -> Running {
    let identity = ca.store("/svc/analytics", Duration::from_secs(3600));
    let verifier = claims.map(|signer| {
        soma_auth::ClaimsVerifier::new(
            ca.id("/svc/gateway"),
            ca.id("/svc/analytics"),
            vec![(signer.key_id().to_owned(), signer.public_key())],
        )
    });
    let settings = MeshSettings::load(ServiceKind::Analytics, None, |_| None).unwrap();
    let db = Database::connect(store, "analytics").await.unwrap();
    db.migrate(&soma_analytics::MIGRATIONS).await.unwrap();
    let spec = soma_analytics::spec(db, &settings.limits, config).await.unwrap();
    let id = identity.own_id().clone();
    let app = Application::build(settings, identity, verifier, spec)
        .await
        .unwrap();
    let (addr, admin, metrics) = (app.local_addr(), app.admin_addr(), app.metrics());
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
        admin,
        metrics,
        id,
        stop: Some(tx),
        task: Some(task),
        _data: tempfile::tempdir().unwrap(),
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
    sealed_request(signer, audience, tenant, capabilities, false, message)
}

/// Like [`tenant_request`], but the claims of an operator: what the
/// gateway seals for a token of an operator issuer with `"operator": true`.
pub fn operator_claims_request<T>(
    signer: &soma_auth::ClaimsSigner,
    audience: &SpiffeId,
    tenant: &str,
    capabilities: &[&str],
    message: T,
) -> tonic::Request<T> {
    sealed_request(signer, audience, tenant, capabilities, true, message)
}

fn sealed_request<T>(
    signer: &soma_auth::ClaimsSigner,
    audience: &SpiffeId,
    tenant: &str,
    capabilities: &[&str],
    operator: bool,
    message: T,
) -> tonic::Request<T> {
    let claims = soma_proto::v1::VerifiedClaims {
        tenant: tenant.to_owned(),
        subject: format!("user@{tenant}"),
        region: "local".to_owned(),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        mfa: true,
        request_id: "test".to_owned(),
        operator,
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

/// Starts `kind` with this identity and these settings variables, on the
/// database `db` (one engine's, from [`Stores::of`]).
pub async fn start_with(
    store: Arc<SvidStore>,
    kind: ServiceKind,
    claims: Option<soma_auth::ClaimsVerifier>,
    env: &[(&str, &str)],
    db: &StoreSettings,
) -> Running {
    // The gateway's development configuration (its issuer keys) lives here;
    // the database is `db`'s.
    let data = tempfile::tempdir().unwrap();
    let settings = MeshSettings::load(kind, None, |k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    })
    .unwrap();
    let db = Database::connect(db, kind.name()).await.unwrap();
    let migrations = match kind {
        ServiceKind::Gateway => &soma_gateway::MIGRATIONS,
        ServiceKind::ToolRegistry => &soma_tool_registry::MIGRATIONS,
        ServiceKind::CapsuleRepo => &soma_capsule_repo::MIGRATIONS,
        ServiceKind::Analytics => &soma_analytics::MIGRATIONS,
    };
    db.migrate(migrations).await.unwrap();
    let spec = match kind {
        ServiceKind::Gateway => {
            let config = soma_gateway::GatewayConfig::dev(
                data.path(),
                &soma_gateway::Region::parse("local").unwrap(),
                None,
            )
            .unwrap();
            let (signer, _) = soma_auth::ClaimsSigner::generate("gateway-1").unwrap();
            let gateway =
                soma_gateway::Gateway::build(db, &settings.limits, config, &store, &settings.peers, signer)
                    .await
                    .unwrap();
            gateway.spec
        }
        ServiceKind::ToolRegistry => soma_tool_registry::spec(db, &settings.limits),
        ServiceKind::CapsuleRepo => soma_capsule_repo::spec(db, &settings.limits),
        ServiceKind::Analytics => soma_analytics::spec(db, &settings.limits, analytics_config())
            .await
            .unwrap(),
    };
    let id = store.own_id().clone();
    let app = Application::build(settings, store, claims, spec).await.unwrap();
    let (addr, admin, metrics) = (app.local_addr(), app.admin_addr(), app.metrics());
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
        admin,
        metrics,
        id,
        stop: Some(tx),
        task: Some(task),
        _data: data,
    }
}

/// Fresh Analytics keys: a row keyring and an Ed25519 signing key.
pub fn analytics_config() -> soma_analytics::AnalyticsConfig {
    AnalyticsKeys::generate().config()
}

/// Analytics key material that outlives one service instance (restarts).
pub struct AnalyticsKeys {
    pub row_keys_json: Vec<u8>,
    pub signing_key_pem: String,
}

impl AnalyticsKeys {
    pub fn generate() -> Self {
        let (_, row_keys_json) = soma_sign::HmacKeyring::generate("row-1").unwrap();
        let (_, pkcs8) =
            soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1").unwrap()).unwrap();
        Self {
            row_keys_json,
            signing_key_pem: pem("PRIVATE KEY", &pkcs8),
        }
    }

    /// A config over these keys (default settings otherwise).
    pub fn config(&self) -> soma_analytics::AnalyticsConfig {
        soma_analytics::AnalyticsConfig {
            row_keys: soma_sign::HmacKeyring::from_json(&self.row_keys_json).unwrap(),
            signing_key_pem: self.signing_key_pem.clone(),
            signing_key_id: "analytics-1".to_owned(),
            ledger_origin: format!("{TD}/analytics"),
            max_export_span: soma_analytics::DEFAULT_MAX_EXPORT_SPAN,
            drills: soma_analytics::DrillConfig::default(),
            anomaly: soma_analytics::AnomalyConfig::default(),
        }
    }
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

/// An mTLS channel from `client` to the service `server` at `addr`.
pub fn channel(client: Arc<SvidStore>, addr: SocketAddr, server: &SpiffeId) -> tonic::transport::Channel {
    soma_mesh::channel(client, addr, server.clone()).unwrap()
}

/// Health status of `service` (the empty string: the whole server).
pub async fn health(channel: tonic::transport::Channel, service: &str) -> Result<i32, tonic::Status> {
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status)
}

/// Service names listed by server reflection v1.
pub async fn reflection_list(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let message = stream.message().await.unwrap().unwrap();
    match message.message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// Service names listed by server reflection v1alpha.
pub async fn reflection_list_v1alpha(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let message = stream.message().await.unwrap().unwrap();
    match message.message_response.unwrap() {
        MessageResponse::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// The interpreter with the interop clients installed (`scripts/test.sh`
/// creates it and exports SOMA_PYTHON).
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("SOMA_PYTHON") {
        return p.into();
    }
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "the interop tests need Python with grpcio: run the suite with scripts/test.sh (it creates .venv), \
         or set SOMA_PYTHON"
    );
    venv
}

/// Runs one SQL statement on either engine; the rows it affected.
pub async fn exec(db: &Database, sql: &str) -> u64 {
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        (None, Some(pool)) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// Reads one i64 on either engine.
pub async fn scalar(db: &Database, sql: &str) -> i64 {
    use sqlx::Row as _;
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql).fetch_one(pool).await.unwrap().get::<i64, _>(0),
        (None, Some(pool)) => sqlx::query(sql).fetch_one(pool).await.unwrap().get::<i64, _>(0),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}

/// The one text value `sql` selects.
pub async fn scalar_text(db: &Database, sql: &str) -> String {
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

/// The `soma-reason` of a gRPC refusal (empty when it carries none).
pub fn grpc_reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(soma_mesh::REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `soma up` on `data_dir` with its edge on a free loopback port and
/// `extra` arguments, logging warnings only; killed if dropped.
pub fn spawn_soma_up(data_dir: &std::path::Path, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(["up", "--edge-addr", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED")
        .env_remove("SOMA_GATEWAY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
