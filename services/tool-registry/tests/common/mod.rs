//! Builders of the tool registry's tests: the registry served in-process
//! over real mTLS on a real database, publishers with real Ed25519 keys,
//! signed releases of the repository's own WebAssembly adapters, and
//! clients under the gateway's, an operator's or another SPIFFE ID.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these builders"
)]

use std::net::SocketAddr;
use std::time::Duration;

use soma_auth::{ClaimsSigner, ClaimsVerifier};
use soma_identity::SpiffeId;
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_proto::v1::tool_registry_client::ToolRegistryClient;
use soma_release::{Limits, Manifest};
use soma_sandbox::SandboxConfig;
use soma_sign::{DsseEnvelope, Ed25519Signer, HmacKeyring, KeyId};
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running};
use tonic::transport::Channel;

/// The registry's own SPIFFE path.
pub const REGISTRY: &str = "/svc/tool-registry";
/// The gateway's.
pub const GATEWAY: &str = "/svc/gateway";
/// An operator's.
pub const OPERATOR: &str = "/operator/alice";

/// Everything a test needs around one running registry.
pub struct Harness {
    pub ca: Ca,
    pub claims: ClaimsSigner,
    pub running: Running,
    pub registry: soma_tool_registry::Registry,
    /// A second handle on the registry's database, to look or tamper.
    pub db: Database,
    /// The registry's keyring file contents.
    pub keys_json: Vec<u8>,
}

/// Limits that suit the small adapters.
pub fn limits() -> Limits {
    Limits {
        fuel: 50_000_000,
        memory_bytes: 4 * 1024 * 1024,
        deadline_ms: 2_000,
    }
}

impl Harness {
    /// The registry on `store` with a fresh keyring and the default
    /// sandbox; billing and audit go to `analytics` when given.
    pub async fn start(store: &StoreSettings) -> Self {
        Self::start_with(store, SandboxConfig::default(), None).await
    }

    /// [`Harness::start`] with a sandbox configuration and an Analytics.
    pub async fn start_with(
        store: &StoreSettings,
        sandbox: SandboxConfig,
        analytics: Option<(SocketAddr, SpiffeId)>,
    ) -> Self {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let (_, keys_json) = HmacKeyring::generate("registry-1").unwrap();
        Self::start_on(ca, claims, store, keys_json, sandbox, analytics).await
    }

    /// The registry under `ca`, with `claims` as the gateway's key and the
    /// keyring `keys_json`.
    pub async fn start_on(
        ca: Ca,
        claims: ClaimsSigner,
        store: &StoreSettings,
        keys_json: Vec<u8>,
        sandbox: SandboxConfig,
        analytics: Option<(SocketAddr, SpiffeId)>,
    ) -> Self {
        let identity = ca.store(REGISTRY, Duration::from_secs(3600));
        let verifier = ClaimsVerifier::new(
            ca.id(GATEWAY),
            ca.id(REGISTRY),
            vec![(claims.key_id().to_owned(), claims.public_key())],
        );
        let settings = soma_testing::settings(ServiceKind::ToolRegistry, &[]);
        let db = Database::connect(store, "tool-registry").await.unwrap();
        db.migrate(&soma_tool_registry::MIGRATIONS).await.unwrap();
        let config = soma_tool_registry::RegistryConfig {
            keys: HmacKeyring::from_json(&keys_json).unwrap(),
            keys_path: std::path::PathBuf::new(),
            price: soma_tool_registry::Price::default(),
            max_module_bytes: soma_tool_registry::config::DEFAULT_MAX_MODULE_BYTES,
        };
        let registry = soma_tool_registry::Registry::new(db.clone(), config, sandbox).unwrap();
        registry.reseal().await.unwrap();
        if let Some((addr, id)) = analytics {
            let channel = soma_testing::channel(std::sync::Arc::clone(&identity), addr, &id);
            registry.spawn_outbox(channel);
        }
        let spec = soma_tool_registry::spec(db, registry.clone(), &settings.limits);
        let running = soma_testing::serve(settings, identity, Some(verifier), spec).await;
        let db = Database::connect(store, "tool-registry").await.unwrap();
        Self {
            ca,
            claims,
            running,
            registry,
            db,
            keys_json,
        }
    }

    /// A client under the SPIFFE ID `path`.
    pub fn client(&self, path: &str) -> ToolRegistryClient<Channel> {
        ToolRegistryClient::new(soma_testing::channel(
            self.ca.store(path, Duration::from_secs(3600)),
            self.running.addr,
            &self.running.id,
        ))
    }

    /// A request as the gateway forwards a tenant's, with `capabilities`.
    pub fn tenant<T>(&self, tenant: &str, capabilities: &[&str], message: T) -> tonic::Request<T> {
        soma_testing::tenant_request(&self.claims, &self.running.id, tenant, capabilities, message)
    }

    /// Registers `publisher`'s key as an operator.
    pub async fn register(&self, publisher: &Publisher) -> pb::PublisherKey {
        self.client(OPERATOR)
            .add_publisher_key(pb::AddPublisherKeyRequest {
                name: publisher.name.clone(),
                public_key_pem: publisher.public_pem.clone(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Publishes `request` as tenant `acme` through the gateway's identity.
    pub async fn publish(&self, request: pb::PublishReleaseRequest) -> Result<pb::Release, tonic::Status> {
        self.client(GATEWAY)
            .publish_release(self.tenant("acme", &["tools:publish"], request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Executes `tool` (`version`, or the newest) with `input` for `tenant`.
    pub async fn execute(
        &self,
        tenant: &str,
        tool: &str,
        version: &str,
        input: serde_json::Value,
    ) -> Result<pb::ExecuteToolResponse, tonic::Status> {
        self.client(GATEWAY)
            .execute_tool(self.tenant(
                tenant,
                &["tools:execute"],
                pb::ExecuteToolRequest {
                    tool: tool.to_owned(),
                    version: version.to_owned(),
                    input: Some(to_struct(&input)),
                    run_id: String::new(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `ExecuteCapsuleStep` as the gateway's capsule runner sends it, for
    /// `tenant` with claims naming the moderation decision `decision`.
    pub async fn execute_step(
        &self,
        tenant: &str,
        decision: &str,
        step: pb::ExecuteCapsuleStepRequest,
    ) -> Result<pb::ExecuteToolResponse, tonic::Status> {
        let claims = pb::VerifiedClaims {
            tenant: tenant.to_owned(),
            subject: format!("user@{tenant}"),
            region: "local".to_owned(),
            capabilities: vec!["capsules:run".to_owned(), "tools:execute".to_owned()],
            request_id: "test".to_owned(),
            moderation_decision_id: decision.to_owned(),
            ..Default::default()
        };
        self.client(GATEWAY)
            .execute_capsule_step(soma_testing::claims_request(
                &self.claims,
                &self.running.id,
                claims,
                step,
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Another replica of the registry: the same database and keyring, its
    /// own caches.
    pub async fn replica(&self, store: &StoreSettings) -> soma_tool_registry::Registry {
        let db = Database::connect(store, "tool-registry").await.unwrap();
        let config = soma_tool_registry::RegistryConfig {
            keys: HmacKeyring::from_json(&self.keys_json).unwrap(),
            keys_path: std::path::PathBuf::new(),
            price: soma_tool_registry::Price::default(),
            max_module_bytes: soma_tool_registry::config::DEFAULT_MAX_MODULE_BYTES,
        };
        soma_tool_registry::Registry::new(db, config, SandboxConfig::default()).unwrap()
    }

    /// `VerifyRelease`'s failure names.
    pub async fn failures(&self, tool: &str, version: &str) -> Vec<String> {
        self.client(GATEWAY)
            .verify_release(self.tenant(
                "acme",
                &["tools:read"],
                pb::VerifyReleaseRequest {
                    tool: tool.to_owned(),
                    version: version.to_owned(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .failures
    }

    /// Stops the registry and starts it again on `store` with `keys_json`
    /// (a rotated keyring), under the same authority and gateway key.
    pub async fn restart(self, store: &StoreSettings, keys_json: Vec<u8>) -> Self {
        let Self {
            ca,
            claims,
            running,
            db,
            ..
        } = self;
        running.stop().await;
        db.close().await;
        Self::start_on(ca, claims, store, keys_json, SandboxConfig::default(), None).await
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.db.close().await;
    }
}

/// A publisher: an Ed25519 key pair.
pub struct Publisher {
    pub name: String,
    pub private_pem: String,
    pub public_pem: String,
    pub key_id: String,
}

impl Publisher {
    pub fn generate(name: &str) -> Self {
        let (signer, pkcs8) = Ed25519Signer::generate(KeyId::new("publisher").unwrap()).unwrap();
        Self {
            name: name.to_owned(),
            private_pem: soma_testing::pem("PRIVATE KEY", &pkcs8),
            public_pem: signer.public_key_pem(),
            key_id: soma_release::publisher_key_id(&signer.public_key()),
        }
    }

    /// The envelope of `payload` (any bytes) signed by this publisher.
    pub fn sign_payload(&self, payload: Vec<u8>) -> DsseEnvelope {
        let signer =
            Ed25519Signer::from_pkcs8_pem(KeyId::new(self.key_id.clone()).unwrap(), &self.private_pem)
                .unwrap();
        DsseEnvelope::sign(soma_release::PAYLOAD_TYPE, payload, &signer)
    }

    /// A signed release of `module` as `tool@version`.
    pub fn release(&self, tool: &str, version: &str, module: &[u8]) -> pb::PublishReleaseRequest {
        self.release_with(tool, version, module, limits())
    }

    /// [`Publisher::release`] with `limits`.
    pub fn release_with(
        &self,
        tool: &str,
        version: &str,
        module: &[u8],
        limits: Limits,
    ) -> pb::PublishReleaseRequest {
        let manifest = Manifest::new(tool, version, "run", limits, "a test release", module).unwrap();
        let envelope = soma_release::sign_manifest(&manifest, &self.private_pem).unwrap();
        request(tool, envelope, module.to_vec())
    }
}

/// A publish request of `envelope` and `module`.
pub fn request(tool: &str, envelope: DsseEnvelope, module: Vec<u8>) -> pb::PublishReleaseRequest {
    pb::PublishReleaseRequest {
        tool: tool.to_owned(),
        version: String::new(),
        module,
        envelope: Some(pb::DsseEnvelope {
            payload_type: envelope.payload_type,
            payload: envelope.payload,
            signatures: envelope
                .signatures
                .into_iter()
                .map(|s| pb::DsseSignature {
                    keyid: s.keyid,
                    sig: s.sig,
                })
                .collect(),
        }),
    }
}

/// A repository adapter's module bytes.
pub fn adapter(name: &str) -> Vec<u8> {
    soma_sandbox::adapter(name).unwrap_or_else(|| panic!("no adapter {name}"))
}

/// A JSON object as a `Struct`.
pub fn to_struct(v: &serde_json::Value) -> prost_types::Struct {
    let serde_json::Value::Object(map) = v else {
        panic!("not an object: {v}")
    };
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `Struct` as JSON.
pub fn from_struct(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect())
}

fn from_value(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind.as_ref().unwrap() {
        Kind::NullValue(_) => serde_json::Value::Null,
        Kind::BoolValue(b) => serde_json::Value::Bool(*b),
        Kind::NumberValue(n) => serde_json::json!(n),
        Kind::StringValue(s) => serde_json::Value::String(s.clone()),
        Kind::ListValue(l) => serde_json::Value::Array(l.values.iter().map(from_value).collect()),
        Kind::StructValue(s) => from_struct(s),
    }
}
