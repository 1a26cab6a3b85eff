//! The gateway's edge in-process: a real Analytics backend over mTLS, the
//! gateway with its edge on 127.0.0.1:0 and its mesh (mTLS) listener on
//! another, an HTTP client, and HS256 tokens minted with the development
//! issuer's key (tenant tokens) or the development operator issuer's key
//! (operator tokens).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use soma_identity::SpiffeId;
use soma_mesh::{Peers, ServiceKind};
use soma_store::StoreSettings;
use soma_testing::{Ca, Running};
use tokio::sync::oneshot;

/// The gateway's edge, running.
pub struct Edge {
    pub url: String,
    pub addr: SocketAddr,
    pub secret: Vec<u8>,
    pub kid: String,
    /// The development operator issuer's HS256 key and kid.
    pub operator_secret: Vec<u8>,
    pub operator_kid: String,
    pub db: soma_store::Database,
    /// The gateway's mesh listener (mTLS, SPIFFE): where operator SVIDs
    /// call the `Gateway` service directly.
    pub mesh_addr: SocketAddr,
    /// The gateway's SPIFFE ID (`/svc/gateway`).
    pub id: SpiffeId,
    /// The listener's connection counters (refusals and closures by reason).
    pub connections: soma_gateway::ConnectionMetrics,
    /// The gateway's admin listener: its `/metrics` carries the edge's
    /// series too, as `soma serve gateway` registers them.
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    mesh: Running,
    poller: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Edge {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.mesh.stop().await;
        self.poller.abort();
    }

    /// An HS256 token of the development issuer with these claims merged
    /// over valid defaults (a `null` value removes the claim).
    pub fn token(&self, overrides: Value) -> String {
        hs256(
            &self.secret,
            &self.kid,
            &claims(soma_gateway::config::DEV_ISSUER, overrides),
        )
    }

    /// An HS256 token of the development operator issuer (configured with
    /// `operator = true`), with `"operator": true` and these claims merged
    /// over valid defaults (a `null` value removes the claim).
    pub fn operator_token(&self, overrides: Value) -> String {
        let mut claims = claims(
            soma_gateway::config::DEV_OPERATOR_ISSUER,
            json!({"operator": true}),
        );
        merge(&mut claims, overrides);
        hs256(&self.operator_secret, &self.operator_kid, &claims)
    }

    /// A tonic channel to the gateway's mesh listener, as the SVID `path`
    /// of this test's authority (e.g. `/operator/alice`).
    pub fn mesh_channel(&self, ca: &Ca, path: &str) -> tonic::transport::Channel {
        soma_testing::channel(ca.store(path, Duration::from_secs(600)), self.mesh_addr, &self.id)
    }
}

/// Every capability that any method's policy names, plus
/// `analytics:cross-tenant` (which only Analytics reads): a token with these
/// has every scope there is.
pub fn every_scope() -> String {
    let table = soma_gateway::routes::RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
    let mut every: std::collections::BTreeSet<&str> = table
        .iter()
        .filter_map(|r| r.policy.as_ref().map(|p| p.capability.as_str()))
        .filter(|c| !c.is_empty())
        .collect();
    every.insert("analytics:cross-tenant");
    every.into_iter().collect::<Vec<_>>().join(" ")
}

/// Valid claims of `issuer` with `overrides` merged in.
fn claims(issuer: &str, overrides: Value) -> Value {
    let now = now();
    let mut claims = json!({
        "iss": issuer,
        "aud": soma_gateway::config::DEV_AUDIENCE,
        "sub": "user@tenant",
        "tenant": "tenant",
        "region": "local",
        "scope": "",
        "amr": ["pwd"],
        "auth_time": now,
        "iat": now,
        "exp": now + 600,
    });
    merge(&mut claims, overrides);
    claims
}

/// Merges `overrides` into `claims`; a `null` value removes the claim.
fn merge(claims: &mut Value, overrides: Value) {
    if let (Value::Object(c), Value::Object(o)) = (claims, overrides) {
        for (k, v) in o {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A compact HS256 JWS over `claims`.
pub fn hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64.encode(tag.as_ref()))
}

/// Starts the gateway with its edge, forwarding to `analytics`, in region
/// `local`; `tweak` adjusts the configuration first.
pub async fn start_edge(
    ca: &Ca,
    analytics: Option<&Running>,
    db: &StoreSettings,
    tweak: impl FnOnce(&mut soma_gateway::GatewayConfig),
) -> Edge {
    let peers = Peers {
        analytics: analytics.map(|a| a.addr.into()),
        ..Default::default()
    };
    start_edge_with_peers(ca, peers, db, tweak).await
}

/// Starts the gateway with its edge and its mesh listener, forwarding to
/// `peers`.
pub async fn start_edge_with_peers(
    ca: &Ca,
    peers: Peers,
    db: &StoreSettings,
    tweak: impl FnOnce(&mut soma_gateway::GatewayConfig),
) -> Edge {
    let dir = tempfile::tempdir().unwrap();
    let mut config = soma_gateway::GatewayConfig::dev(
        dir.path(),
        &soma_gateway::Region::parse("local").unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    tweak(&mut config);
    let read_jwk = |name: &str| {
        let jwk: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap();
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk["k"].as_str().unwrap())
            .unwrap();
        (secret, jwk["kid"].as_str().unwrap().to_owned())
    };
    let (secret, kid) = read_jwk(soma_gateway::config::DEV_ISSUER_JWK_FILE);
    let (operator_secret, operator_kid) = read_jwk(soma_gateway::config::DEV_OPERATOR_ISSUER_JWK_FILE);

    let store = ca.store("/svc/gateway", Duration::from_secs(3600));
    let settings = soma_testing::settings(ServiceKind::Gateway, &[]);
    let database = soma_store::Database::connect(db, "gateway").await.unwrap();
    database.migrate(&soma_gateway::MIGRATIONS).await.unwrap();
    let signer = gateway_signer();
    let gateway =
        soma_gateway::Gateway::build(database.clone(), &settings.limits, config, &store, &peers, signer)
            .await
            .unwrap();
    let edge = gateway.edge.unwrap();
    let addr = edge.local_addr();
    let connections = edge.connection_metrics();
    let requests = edge.request_metrics();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        edge.serve(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    // The same Gateway service (same kill switches) on the mesh listener,
    // as `soma serve gateway` runs it.
    let mesh = soma_testing::serve(settings, store, None, gateway.spec).await;
    mesh.metrics.register(std::sync::Arc::new(connections.clone()));
    mesh.metrics.register(std::sync::Arc::new(requests));
    Edge {
        url: format!("http://{addr}"),
        addr,
        secret,
        kid,
        operator_secret,
        operator_kid,
        db: database,
        mesh_addr: mesh.addr,
        id: mesh.id.clone(),
        connections,
        admin: mesh.admin,
        stop: Some(tx),
        task: Some(task),
        mesh,
        poller: gateway.poller,
        _dir: dir,
    }
}

/// The gateway's claims key of the tests: fixed seed, so the backends
/// started before the gateway can verify its envelopes.
pub fn gateway_signer() -> soma_auth::ClaimsSigner {
    static PKCS8: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let der = PKCS8.get_or_init(|| soma_auth::ClaimsSigner::generate("gateway-1").unwrap().1);
    soma_auth::ClaimsSigner::from_pkcs8_der("gateway-1", der).unwrap()
}

/// An HTTP/1.1 + HTTP/2 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A reply: status, headers, body.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or_default().to_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }
}

/// Sends one request.
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        builder = builder.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}
