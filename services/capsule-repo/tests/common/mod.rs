//! Builders of the capsule repository's tests: a real ToolRegistry and the
//! repository served in-process over real mTLS under one development
//! authority, on real databases; the `text-stats` release published by a
//! publisher with a real Ed25519 key registered by an operator; attested
//! bundles; and calls as the gateway forwards them, with the claims of any
//! tenant and subject.

#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "each test binary uses a different subset of these builders; a failed builder is a failed test"
)]

#[path = "../../../tool-registry/tests/common/mod.rs"]
pub mod registry;

use std::time::{Duration, SystemTime};

use serde_json::json;
use soma_auth::ClaimsVerifier;
use soma_capsule::{Bundle, CAPSULE_REVIEW_PREDICATE_TYPE, ToolRef};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_proto::v1::capsule_repo_client::CapsuleRepoClient;
use soma_sign::{DsseEnvelope, Ed25519Signer, HmacKeyring, KeyId};
use soma_store::{Database, StoreSettings};
use soma_testing::{Running, Stores};
use tonic::transport::Channel;

pub use registry::{GATEWAY, OPERATOR, Publisher};

/// The repository's own SPIFFE path.
pub const CAPSULE_REPO: &str = "/svc/capsule-repo";
/// The example bundle of the repository (the text-stats capsule).
pub const EXAMPLE_BUNDLE: &str = include_str!("../../../../crates/capsule/bundles/text-stats.capsule.json");
/// The tool and version the example bundle pins.
pub const TOOL: &str = "text-stats";

/// Every capability a tenant of these tests holds.
pub const CAPABILITIES: &[&str] = &[
    "capsules:submit",
    "capsules:read",
    "capsules:review",
    "capsules:run",
    "installations:write",
    "installations:read",
];

/// A real registry and the repository beside it.
pub struct Harness {
    pub registry: registry::Harness,
    pub running: Running,
    pub repo: soma_capsule_repo::Repo,
    /// A second handle on the repository's database, to look or tamper.
    pub db: Database,
    /// The repository's keyring (for `verify_store`).
    pub keys_json: Vec<u8>,
    /// The publisher of `text-stats`, registered with the registry.
    pub publisher: Publisher,
}

impl Harness {
    /// The registry on `stores`' ToolRegistry database with `text-stats`
    /// 1.0.0 published, and the repository on its CapsuleRepo database,
    /// with `catalogues_json` as its catalogues file when given.
    pub async fn start(stores: &Stores, catalogues_json: Option<&[u8]>) -> Self {
        let registry = registry::Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        registry.register(&publisher).await;
        registry
            .publish(publisher.release(TOOL, "1.0.0", &registry::adapter("text_stats")))
            .await
            .unwrap();
        Self::start_beside(
            registry,
            publisher,
            stores.of(ServiceKind::CapsuleRepo),
            catalogues_json,
        )
        .await
    }

    async fn start_beside(
        registry: registry::Harness,
        publisher: Publisher,
        store: &StoreSettings,
        catalogues_json: Option<&[u8]>,
    ) -> Self {
        let identity = registry.ca.store(CAPSULE_REPO, Duration::from_secs(3600));
        let verifier = ClaimsVerifier::new(
            registry.ca.id(GATEWAY),
            registry.ca.id(CAPSULE_REPO),
            vec![(registry.claims.key_id().to_owned(), registry.claims.public_key())],
        );
        let settings = soma_testing::settings(ServiceKind::CapsuleRepo, &[]);
        let db = Database::connect(store, "capsule-repo").await.unwrap();
        db.migrate(&soma_capsule_repo::MIGRATIONS).await.unwrap();
        let (_, keys_json) = HmacKeyring::generate("capsule-repo-1").unwrap();
        let config = soma_capsule_repo::CapsuleRepoConfig {
            keys: HmacKeyring::from_json(&keys_json).unwrap(),
            keys_path: std::path::PathBuf::new(),
            catalogues: catalogues_json
                .map(|json| soma_capsule_repo::config::parse_catalogues(json).unwrap())
                .unwrap_or_default(),
        };
        let to_registry = soma_testing::channel(
            std::sync::Arc::clone(&identity),
            registry.running.addr,
            &registry.running.id,
        );
        let repo = soma_capsule_repo::Repo::new(db.clone(), config, Some(to_registry.into()));
        let spec = soma_capsule_repo::spec(db, repo.clone(), &settings.limits);
        let running = soma_testing::serve(settings, identity, Some(verifier), spec).await;
        let db = Database::connect(store, "capsule-repo").await.unwrap();
        Self {
            registry,
            running,
            repo,
            db,
            keys_json,
            publisher,
        }
    }

    /// A second replica of the repository on the same database (and
    /// keyring, without catalogues), served on its own port: what two
    /// replicas sharing a PostgreSQL see.
    pub async fn replica(&self, store: &StoreSettings) -> (Running, CapsuleRepoClient<Channel>) {
        let identity = self.registry.ca.store(CAPSULE_REPO, Duration::from_secs(3600));
        let verifier = ClaimsVerifier::new(
            self.registry.ca.id(GATEWAY),
            self.registry.ca.id(CAPSULE_REPO),
            vec![(
                self.registry.claims.key_id().to_owned(),
                self.registry.claims.public_key(),
            )],
        );
        let settings = soma_testing::settings(ServiceKind::CapsuleRepo, &[]);
        let db = Database::connect(store, "capsule-repo").await.unwrap();
        let config = soma_capsule_repo::CapsuleRepoConfig {
            keys: HmacKeyring::from_json(&self.keys_json).unwrap(),
            keys_path: std::path::PathBuf::new(),
            catalogues: Vec::new(),
        };
        let to_registry = soma_testing::channel(
            std::sync::Arc::clone(&identity),
            self.registry.running.addr,
            &self.registry.running.id,
        );
        let repo = soma_capsule_repo::Repo::new(db.clone(), config, Some(to_registry.into()));
        let spec = soma_capsule_repo::spec(db, repo, &settings.limits);
        let running = soma_testing::serve(settings, identity, Some(verifier), spec).await;
        let client = CapsuleRepoClient::new(soma_testing::channel(
            self.registry.ca.store(GATEWAY, Duration::from_secs(3600)),
            running.addr,
            &running.id,
        ));
        (running, client)
    }

    /// A client of the repository under the SPIFFE ID `path`.
    pub fn client(&self, path: &str) -> CapsuleRepoClient<Channel> {
        CapsuleRepoClient::new(soma_testing::channel(
            self.registry.ca.store(path, Duration::from_secs(3600)),
            self.running.addr,
            &self.running.id,
        ))
    }

    /// The gateway's client.
    pub fn gateway(&self) -> CapsuleRepoClient<Channel> {
        self.client(GATEWAY)
    }

    /// `message` as the gateway forwards a call of `subject` of `tenant`
    /// holding every capability of [`CAPABILITIES`], with MFA.
    pub fn as_user<T>(&self, tenant: &str, subject: &str, message: T) -> tonic::Request<T> {
        self.sealed(tenant, subject, false, true, message)
    }

    /// The same, for an operator's token (`"operator": true`).
    pub fn as_operator_user<T>(&self, tenant: &str, subject: &str, message: T) -> tonic::Request<T> {
        self.sealed(tenant, subject, true, true, message)
    }

    /// The same as [`Harness::as_user`], for a token without MFA.
    pub fn as_user_without_mfa<T>(&self, tenant: &str, subject: &str, message: T) -> tonic::Request<T> {
        self.sealed(tenant, subject, false, false, message)
    }

    fn sealed<T>(
        &self,
        tenant: &str,
        subject: &str,
        operator: bool,
        mfa: bool,
        message: T,
    ) -> tonic::Request<T> {
        let claims = pb::VerifiedClaims {
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            region: "local".to_owned(),
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
            mfa,
            request_id: "test".to_owned(),
            operator,
            ..Default::default()
        };
        let signed = self
            .registry
            .claims
            .sign(
                claims,
                &self.running.id,
                Duration::from_secs(30),
                SystemTime::now(),
            )
            .unwrap();
        let mut request = tonic::Request::new(message);
        signed.insert_into(request.metadata_mut());
        request
    }

    /// The publisher's signer.
    pub fn signer(&self) -> Ed25519Signer {
        signer_of(&self.publisher)
    }

    /// Submits `bundle` attested by `envelope` as `subject` of `tenant`.
    pub async fn submit(
        &self,
        tenant: &str,
        subject: &str,
        bundle: &Bundle,
        envelope: &DsseEnvelope,
    ) -> Result<pb::Submission, tonic::Status> {
        self.submit_request(tenant, subject, submit_request(bundle, envelope))
            .await
    }

    pub async fn submit_request(
        &self,
        tenant: &str,
        subject: &str,
        request: pb::SubmitCapsuleRequest,
    ) -> Result<pb::Submission, tonic::Status> {
        self.gateway()
            .submit_capsule(self.as_user(tenant, subject, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Submits the example bundle (or `bundle`) attested by the publisher, as
    /// `alice@<tenant>`.
    pub async fn submit_good(&self, tenant: &str, bundle: &Bundle) -> pb::Submission {
        let envelope = attest(bundle, &[&self.signer()]);
        self.submit(tenant, &format!("alice@{tenant}"), bundle, &envelope)
            .await
            .unwrap()
    }

    /// One review decision by `subject` of `tenant`.
    pub async fn review(
        &self,
        tenant: &str,
        subject: &str,
        submission_id: &str,
        decision: pb::ReviewDecision,
    ) -> Result<pb::Review, tonic::Status> {
        self.gateway()
            .review_submission(self.as_user(
                tenant,
                subject,
                pb::ReviewSubmissionRequest {
                    submission_id: submission_id.to_owned(),
                    decision: decision as i32,
                    comment: format!("{decision:?} by {subject}"),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Submits `bundle` as `alice@<tenant>` and has `bob@<tenant>` approve it.
    pub async fn approved(&self, tenant: &str, bundle: &Bundle) -> pb::Submission {
        let submission = self.submit_good(tenant, bundle).await;
        let bob = format!("bob@{tenant}");
        for decision in [pb::ReviewDecision::StartReview, pb::ReviewDecision::Approve] {
            self.review(tenant, &bob, &submission.submission_id, decision)
                .await
                .unwrap();
        }
        submission
    }

    /// Rows of `table` in the repository's database.
    pub async fn count(&self, table: &str) -> i64 {
        soma_testing::scalar(&self.db, &format!("SELECT COUNT(*) FROM {table}")).await
    }

    /// The repository's keyring.
    pub fn keys(&self) -> HmacKeyring {
        HmacKeyring::from_json(&self.keys_json).unwrap()
    }

    /// Revokes `tool@version` at the registry, as tenant `acme` (its owner).
    pub async fn revoke(&self, tool: &str, version: &str) {
        self.registry
            .client(GATEWAY)
            .revoke_release(self.registry.tenant(
                "acme",
                &["tools:revoke"],
                pb::RevokeReleaseRequest {
                    tool: tool.to_owned(),
                    version: version.to_owned(),
                    reason: "withdrawn".to_owned(),
                },
            ))
            .await
            .unwrap();
    }

    pub async fn stop(self) {
        self.running.stop().await;
        self.db.close().await;
        self.registry.stop().await;
    }
}

/// The Ed25519 signer of a registry test publisher.
pub fn signer_of(publisher: &Publisher) -> Ed25519Signer {
    Ed25519Signer::from_pkcs8_pem(
        KeyId::new(publisher.key_id.clone()).unwrap(),
        &publisher.private_pem,
    )
    .unwrap()
}

/// The example bundle.
pub fn example() -> Bundle {
    Bundle::parse(EXAMPLE_BUNDLE.as_bytes()).unwrap()
}

/// The example bundle at another version (the same tool).
pub fn example_at(version: &str) -> Bundle {
    with_tools(version, example().tools())
}

/// A bundle of the example's shape at `version` running `tools`.
pub fn with_tools(version: &str, tools: &[ToolRef]) -> Bundle {
    let example = example();
    Bundle::new(
        example.name(),
        version,
        example.description(),
        tools,
        serde_json::Value::Object(example.input_schema().clone()),
        json!({}),
    )
    .unwrap()
}

/// An attestation of `bundle` (a capsule review) signed by `signers`.
pub fn attest(bundle: &Bundle, signers: &[&Ed25519Signer]) -> DsseEnvelope {
    soma_capsule::attest(
        bundle,
        CAPSULE_REVIEW_PREDICATE_TYPE,
        json!({"reviewer": "publisher"}),
        signers,
    )
    .unwrap()
}

/// A `SubmitCapsule` request of `bundle` with `envelope`.
pub fn submit_request(bundle: &Bundle, envelope: &DsseEnvelope) -> pb::SubmitCapsuleRequest {
    pb::SubmitCapsuleRequest {
        capsule: bundle.name().to_owned(),
        version: bundle.version().as_str().to_owned(),
        bundle: bundle.canonical_bytes().to_vec(),
        attestation: Some(envelope_proto(envelope)),
    }
}

/// A DSSE envelope as the proto carries it.
pub fn envelope_proto(e: &DsseEnvelope) -> pb::DsseEnvelope {
    pb::DsseEnvelope {
        payload_type: e.payload_type.clone(),
        payload: e.payload.clone(),
        signatures: e
            .signatures
            .iter()
            .map(|s| pb::DsseSignature {
                keyid: s.keyid.clone(),
                sig: s.sig.clone(),
            })
            .collect(),
    }
}
