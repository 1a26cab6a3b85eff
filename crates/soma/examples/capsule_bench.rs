//! Latency of `RunCapsule` through the gateway's edge, against a direct
//! `ExecuteTool` of the same release over mTLS measured alternately in the
//! same run (target: the edge's p50 at most 2.0 times the direct one).
//!
//! Everything runs in this process with real cryptography: a development
//! authority in a temp dir mints the SVIDs; each service has its SQLite
//! database in a temp dir and runs alone on its own OS thread with a
//! current-thread tokio runtime (`common/bench.rs`):
//!
//! - Analytics, verifying the gateway's claims envelopes;
//! - the ToolRegistry, its billing outbox delivering to Analytics;
//! - CapsuleRepo, asking the ToolRegistry about releases and publisher keys,
//!   its audit outbox delivering to Analytics;
//! - the gateway, assembled by `soma_gateway::Gateway::build` from
//!   `GatewayConfig::dev` (development HS256 issuer, region `local`) with
//!   its rate limit raised out of the way, its edge serving plaintext HTTP
//!   on 127.0.0.1:0, its peers the three services above.
//!
//! Setup goes through the real RPCs: an operator SVID registers a fresh
//! publisher key with the ToolRegistry; `text-stats` 1.0.0 (the repository's
//! `text_stats` adapter) is published with a DSSE envelope signed by that
//! key, as the gateway with claims holding MFA; the repository's example
//! bundle (`crates/capsule/bundles/text-stats.capsule.json`, which pins that
//! module's digest) is attested with the same key and submitted by
//! `alice@acme`, taken into review and approved by `bob@acme` with MFA, and
//! installed in `production`. One `RunCapsule` through the edge must then
//! answer 200 with `succeeded: true` and the statistics of the input text,
//! computed here from the adapter's definition, before anything is
//! measured.
//!
//! The paths, each launched open loop at `--rate` requests/s for
//! `--seconds` per round after `--warmup-seconds` of the same on each path;
//! rounds go edge, execute, resolve, edge, execute, resolve, …:
//!
//! - edge: `POST /v1/capsules/text-stats:run` over HTTP/1.1 keep-alive with
//!   an HS256 token holding `capsules:run` and `tools:execute` (a capsule's
//!   tools run under the caller's own authority) and the body
//!   `{"environment":"production","input":{"text":…}}` (about 200 bytes of
//!   text): JWT, residency, capability, moderation of the input, then the
//!   orchestration: `CapsuleRepo.ResolveCapsuleRun` (the one step's release
//!   is left to its execution), `ToolRegistry.ExecuteCapsuleStep` (the
//!   release's row read and its module compared with the pinned one, then
//!   the run's record written for Analytics in the transaction of the
//!   step's billing event, which the registry's outbox delivers), each over
//!   mTLS with an envelope sealed for that backend (the step's for its
//!   request alone, with the moderation decision bound to its message; the
//!   resolution's, an unmoderated method, the reusable one of the caller's
//!   claims);
//! - execute (the baseline): `ExecuteTool` of `text-stats` 1.0.0 with the
//!   same input over one mTLS HTTP/2 connection to the same ToolRegistry,
//!   as `/svc/gateway`, each call with a freshly signed claims envelope of
//!   the same tenant, subject and capabilities (as the gateway seals one per
//!   moderated request);
//! - resolve (information): `ResolveCapsuleRun` of the same capsule and
//!   input over one mTLS HTTP/2 connection to the same CapsuleRepo, as the
//!   gateway: the first of the two backend calls a run is made of.
//!
//! Every reply must be a success (200 with `succeeded: true`, an output and
//! a billing event, one resolved step): the process fails otherwise, since
//! the figures of failed calls mean nothing. The headline is the median
//! over rounds of the per-round ratio of the p50s, edge / execute.
//!
//! No tracing subscriber is installed (as in `edge_bench`) unless
//! `RUST_LOG` is set (then log lines of those levels go to stderr, to find
//! why a call failed; the figures of such a run include them): otherwise log
//! lines cost their level check only. Nothing here passes or fails on timing: the
//! target is printed next to the measurement.
//!
//! The last lines are `result.<key>=<value>`, for `scripts/bench/capsule.sh`.

#[path = "common/bench.rs"]
#[expect(
    dead_code,
    reason = "the closed-loop CPU helpers of bench.rs serve the other benchmarks"
)]
mod bench;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use soma_auth::{ClaimsSigner, ClaimsVerifier};
use soma_ca::Authority;
use soma_capsule::{Bundle, CAPSULE_REVIEW_PREDICATE_TYPE};
use soma_identity::{SpiffeId, SvidStore, TrustDomain};
use soma_mesh::{Application, MeshSettings, Peers, ServiceKind, ServiceSpec};
use soma_proto::v1 as pb;
use soma_proto::v1::capsule_repo_client::CapsuleRepoClient;
use soma_proto::v1::tool_registry_client::ToolRegistryClient;
use soma_sign::{Ed25519Signer, HmacKeyring, KeyId};
use soma_store::{Database, StoreSettings};
use soma_tool_registry::{Price, RegistryConfig};
use tonic::transport::Channel;

use crate::bench::{Latencies, Serve, ServerThread, Started, identity, open_loop, progress};

const TRUST_DOMAIN: &str = "somastack.bench";
const TENANT: &str = "acme";
const REGION: &str = "local";
const TOOL: &str = "text-stats";
const VERSION: &str = "1.0.0";
const CAPSULE: &str = "text-stats";
const ENVIRONMENT: &str = "production";
const OPERATOR: &str = "/operator/bench";
/// The edge route of the measured run.
const RUN_ROUTE: &str = "/v1/capsules/text-stats:run";
/// Key id of the gateway's envelope key.
const GATEWAY_KEY_ID: &str = "gateway-1";
/// The subjects of the setup: who submits, who reviews, who installs,
/// and who runs.
const SUBMITTER: &str = "alice@acme";
const REVIEWER: &str = "bob@acme";
const INSTALLER: &str = "ops@acme";
const RUNNER: &str = "carol@acme";
/// What the runner's token holds: running a capsule executes its tools
/// under the caller's own authority, so both (the ToolRegistry refuses a
/// step whose claims lack `tools:execute`). The direct calls carry the same.
const RUN_CAPABILITIES: &[&str] = &["capsules:run", "tools:execute"];

/// The repository's example bundle: `text-stats` 1.0.0, pinning the
/// `text_stats` adapter's module digest.
const EXAMPLE_BUNDLE: &[u8] = include_bytes!("../../capsule/bundles/text-stats.capsule.json");

/// The text of every run and execution: with `{"text":...}` around it,
/// about 200 bytes of JSON (the one `registry_bench` executes).
const INPUT_TEXT: &str = "SomaStack runs verified WebAssembly adapters in a sandbox with fuel, memory and \
                          deadline limits; every run is billed from what the sandbox measured, through a \
                          durable outbox.";

/// Target set by the issue; printed, never asserted.
const TARGET_P50_RATIO: f64 = 2.0;

#[derive(Debug, Parser)]
#[command(about = "Latency of RunCapsule through the edge against a direct ExecuteTool over mTLS")]
struct Args {
    /// Open-loop requests per second, on each path.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Open-loop duration per path and round, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Open-loop warm-up per path before the rounds, in seconds.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u32,
    /// Rounds (edge, execute and resolve alternate in each).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if [args.rate, args.seconds, args.rounds].contains(&0) {
        bail!("--rate, --seconds and --rounds must be greater than zero");
    }
    let ca_dir = tempfile::tempdir()?;
    let data_dir = tempfile::tempdir()?;
    let authority = Authority::open_or_create(ca_dir.path(), &TrustDomain::parse(TRUST_DOMAIN)?)
        .context("opening the authority")?;
    let td = authority.trust_domain().clone();
    let id_of = |kind: ServiceKind| SpiffeId::from_parts(&td, &kind.spiffe_path());
    let gateway_id = id_of(ServiceKind::Gateway)?;
    let analytics_id = id_of(ServiceKind::Analytics)?;
    let registry_id = id_of(ServiceKind::ToolRegistry)?;
    let repo_id = id_of(ServiceKind::CapsuleRepo)?;

    // One gateway key: the edge signs with it, the direct calls and the
    // setup with a copy; every backend trusts it for envelopes from the
    // gateway's SPIFFE ID.
    let (edge_signer, key_der) = ClaimsSigner::generate(GATEWAY_KEY_ID)?;
    let claims = Arc::new(ClaimsSigner::from_pkcs8_der(GATEWAY_KEY_ID, &key_der)?);
    let verifier = |own: &SpiffeId| {
        ClaimsVerifier::new(
            gateway_id.clone(),
            own.clone(),
            vec![(GATEWAY_KEY_ID.to_owned(), edge_signer.public_key())],
        )
    };

    let analytics = start_analytics(
        &authority,
        verifier(&analytics_id),
        &data_dir.path().join("analytics"),
    )?;
    let registry = start_registry(
        &authority,
        verifier(&registry_id),
        &data_dir.path().join("registry"),
        (analytics.addr, analytics_id.clone()),
    )?;
    let repo = start_repo(
        &authority,
        verifier(&repo_id),
        &data_dir.path().join("capsule-repo"),
        (registry.addr, registry_id.clone()),
        (analytics.addr, analytics_id.clone()),
    )?;

    let gateway_dir = data_dir.path().join("gateway");
    std::fs::create_dir_all(&gateway_dir)?;
    let local = soma_gateway::Region::parse(REGION).map_err(anyhow::Error::msg)?;
    let mut config = soma_gateway::GatewayConfig::dev(&gateway_dir, &local, Some("127.0.0.1:0".parse()?))?;
    config.rate_limit.requests_per_second = 1e6;
    config.rate_limit.burst = 1_000_000;
    let issuer = Issuer::from_jwk_file(&gateway_dir.join("dev-issuer.jwk"))?;
    let peers = Peers {
        tool_registry: Some(registry.addr.into()),
        capsule_repo: Some(repo.addr.into()),
        analytics: Some(analytics.addr.into()),
        ..Default::default()
    };
    let gateway_store = identity(&authority, &ServiceKind::Gateway.spiffe_path())?;
    let edge_store = Arc::clone(&gateway_store);
    let edge = ServerThread::spawn("bench-edge", move |stop| async move {
        let kind = ServiceKind::Gateway;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = connect(&gateway_dir, kind).await?;
        db.migrate(&soma_gateway::MIGRATIONS).await?;
        let gateway =
            soma_gateway::Gateway::build(db, &settings.limits, config, &edge_store, &peers, edge_signer)
                .await?;
        let server = gateway.edge.context("the gateway built no edge")?;
        let (addr, poller) = (server.local_addr(), gateway.poller);
        let serve: Serve = Box::pin(async move {
            let served = server
                .serve(async move {
                    let _ = stop.await;
                })
                .await;
            poller.abort();
            served.context("edge")
        });
        Ok(Started {
            addr,
            serve,
            metrics: None,
        })
    })?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        // The channels' connection tasks run on the client runtime.
        let world = World {
            claims,
            operator: identity(&authority, OPERATOR)?,
            gateway: gateway_store,
            registry: (registry.addr, registry_id),
            repo: (repo.addr, repo_id),
        };
        let bundle = setup(&world).await?;
        run(&args, &world, &bundle, &issuer, &edge).await
    });
    // The connections are gone with the client runtime; stop the servers
    // either way, the edge first (it calls the others).
    drop(runtime);
    let stopped = edge
        .stop()
        .and(repo.stop())
        .and(registry.stop())
        .and(analytics.stop());
    let report = report?;
    stopped?;
    report.print(&args);
    Ok(())
}

/// A SQLite database for `kind` under `dir`.
async fn connect(dir: &Path, kind: ServiceKind) -> anyhow::Result<Database> {
    Ok(Database::connect(&StoreSettings::sqlite(dir.to_owned()), kind.name()).await?)
}

/// Serves `spec` through the mesh runtime until stopped.
async fn mesh_server(
    settings: MeshSettings,
    store: Arc<SvidStore>,
    verifier: ClaimsVerifier,
    spec: ServiceSpec,
    stop: tokio::sync::oneshot::Receiver<()>,
    background: Option<tokio::task::JoinHandle<()>>,
    what: &'static str,
) -> anyhow::Result<Started> {
    let app = Application::build(settings, store, Some(verifier), spec).await?;
    let (addr, metrics) = (app.local_addr(), app.metrics());
    let serve: Serve = Box::pin(async move {
        let served = app
            .run_until_stopped(async move {
                let _ = stop.await;
            })
            .await
            .context(what);
        if let Some(task) = background {
            task.abort();
        }
        served
    });
    Ok(Started {
        addr,
        serve,
        metrics: Some(metrics),
    })
}

/// Analytics on its own thread, with fresh row and signing keys.
fn start_analytics(
    authority: &Authority,
    verifier: ClaimsVerifier,
    data_dir: &Path,
) -> anyhow::Result<ServerThread> {
    let store = identity(authority, &ServiceKind::Analytics.spiffe_path())?;
    let (row_keys, _) = HmacKeyring::generate("row-1")?;
    let (_, pkcs8) = Ed25519Signer::generate(KeyId::new("analytics-1")?)?;
    let config = soma_analytics::AnalyticsConfig {
        row_keys,
        signing_key_pem: soma_testing::pem("PRIVATE KEY", &pkcs8),
        signing_key_id: "analytics-1".to_owned(),
        ledger_origin: format!("{TRUST_DOMAIN}/analytics"),
        max_export_span: soma_analytics::DEFAULT_MAX_EXPORT_SPAN,
        drills: soma_analytics::DrillConfig::default(),
        anomaly: soma_analytics::AnomalyConfig::default(),
    };
    let data_dir = data_dir.to_owned();
    ServerThread::spawn("bench-analytics", move |stop| async move {
        let kind = ServiceKind::Analytics;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = connect(&data_dir, kind).await?;
        db.migrate(&soma_analytics::MIGRATIONS).await?;
        let spec = soma_analytics::spec(db, &settings.limits, config).await?;
        mesh_server(settings, store, verifier, spec, stop, None, "analytics").await
    })
}

/// The ToolRegistry on its own thread, its billing outbox delivering to
/// `analytics`.
fn start_registry(
    authority: &Authority,
    verifier: ClaimsVerifier,
    data_dir: &Path,
    analytics: (std::net::SocketAddr, SpiffeId),
) -> anyhow::Result<ServerThread> {
    let store = identity(authority, &ServiceKind::ToolRegistry.spiffe_path())?;
    let data_dir = data_dir.to_owned();
    ServerThread::spawn("bench-registry", move |stop| async move {
        let kind = ServiceKind::ToolRegistry;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = connect(&data_dir, kind).await?;
        db.migrate(&soma_tool_registry::MIGRATIONS).await?;
        let (keys, _) = HmacKeyring::generate("registry-1")?;
        let config = RegistryConfig {
            keys,
            keys_path: PathBuf::new(),
            price: Price::default(),
            max_module_bytes: soma_tool_registry::config::DEFAULT_MAX_MODULE_BYTES,
        };
        let registry =
            soma_tool_registry::Registry::new(db.clone(), config, soma_sandbox::SandboxConfig::default())?;
        // Spawned here, so that delivery runs on this server's runtime.
        let outbox = registry.spawn_outbox(soma_mesh::channel(Arc::clone(&store), analytics.0, analytics.1)?);
        let spec = soma_tool_registry::spec(db, registry, &settings.limits);
        mesh_server(
            settings,
            store,
            verifier,
            spec,
            stop,
            Some(outbox),
            "tool registry",
        )
        .await
    })
}

/// CapsuleRepo on its own thread, asking the ToolRegistry at `registry`,
/// its audit outbox delivering to `analytics`.
fn start_repo(
    authority: &Authority,
    verifier: ClaimsVerifier,
    data_dir: &Path,
    registry: (std::net::SocketAddr, SpiffeId),
    analytics: (std::net::SocketAddr, SpiffeId),
) -> anyhow::Result<ServerThread> {
    let store = identity(authority, &ServiceKind::CapsuleRepo.spiffe_path())?;
    let data_dir = data_dir.to_owned();
    ServerThread::spawn("bench-capsules", move |stop| async move {
        let kind = ServiceKind::CapsuleRepo;
        let settings = MeshSettings::load(kind, None, |_| None)?;
        let db = connect(&data_dir, kind).await?;
        db.migrate(&soma_capsule_repo::MIGRATIONS).await?;
        let (keys, _) = HmacKeyring::generate("capsule-repo-1")?;
        let config = soma_capsule_repo::CapsuleRepoConfig {
            keys,
            keys_path: PathBuf::new(),
            catalogues: Vec::new(),
        };
        let to_registry = soma_mesh::channel(Arc::clone(&store), registry.0, registry.1)?;
        let repo = soma_capsule_repo::Repo::new(db.clone(), config, Some(to_registry.into()));
        let outbox = repo.spawn_outbox(soma_mesh::channel(Arc::clone(&store), analytics.0, analytics.1)?);
        let spec = soma_capsule_repo::spec(db, repo, &settings.limits);
        mesh_server(
            settings,
            store,
            verifier,
            spec,
            stop,
            Some(outbox),
            "capsule repo",
        )
        .await
    })
}

/// The identities and keys the clients call with, and where the backends are.
struct World {
    /// The gateway's claims key (a copy of the edge's).
    claims: Arc<ClaimsSigner>,
    /// An operator's SVID: registers the publisher key.
    operator: Arc<SvidStore>,
    /// The gateway's SVID: every other direct call is the gateway's.
    gateway: Arc<SvidStore>,
    registry: (std::net::SocketAddr, SpiffeId),
    repo: (std::net::SocketAddr, SpiffeId),
}

impl World {
    fn registry_client(&self, store: &Arc<SvidStore>) -> anyhow::Result<ToolRegistryClient<Channel>> {
        Ok(ToolRegistryClient::new(soma_mesh::channel(
            Arc::clone(store),
            self.registry.0,
            self.registry.1.clone(),
        )?))
    }

    fn repo_client(&self) -> anyhow::Result<CapsuleRepoClient<Channel>> {
        Ok(CapsuleRepoClient::new(soma_mesh::channel(
            Arc::clone(&self.gateway),
            self.repo.0,
            self.repo.1.clone(),
        )?))
    }
}

/// `message` as the gateway forwards a call of `subject` of [`TENANT`]
/// holding `capabilities`, to the service `audience`, with a freshly signed
/// envelope.
fn as_user<T>(
    claims: &ClaimsSigner,
    audience: &SpiffeId,
    subject: &str,
    capabilities: &[&str],
    mfa: bool,
    message: T,
) -> anyhow::Result<tonic::Request<T>> {
    let verified = pb::VerifiedClaims {
        tenant: TENANT.to_owned(),
        subject: subject.to_owned(),
        region: REGION.to_owned(),
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        mfa,
        request_id: "bench".to_owned(),
        ..Default::default()
    };
    let signed = claims.sign(verified, audience, Duration::from_secs(30), SystemTime::now())?;
    let mut request = tonic::Request::new(message);
    signed.insert_into(request.metadata_mut());
    Ok(request)
}

/// The example bundle published, attested, submitted, approved by a
/// second subject with MFA and installed in [`ENVIRONMENT`], all over the
/// real RPCs; returns the bundle.
async fn setup(world: &World) -> anyhow::Result<Bundle> {
    progress("setup: publisher key, text-stats 1.0.0, the example capsule submitted, reviewed, installed");
    let module = soma_sandbox::adapter("text_stats").context("no text_stats adapter")?;
    let bundle = Bundle::parse(EXAMPLE_BUNDLE).context("the example bundle")?;
    let pinned: Vec<(&str, &str, [u8; 32])> = bundle
        .tools()
        .iter()
        .map(|t| (t.tool.as_str(), t.version.as_str(), t.module_sha256))
        .collect();
    ensure!(
        pinned == [(TOOL, VERSION, soma_sign::sha256(&module))],
        "the example bundle pins {pinned:?}, not {TOOL}@{VERSION} with the text_stats adapter's digest"
    );

    // The publisher key, registered by an operator.
    let (publisher, pkcs8) = Ed25519Signer::generate(KeyId::new("publisher")?)?;
    world
        .registry_client(&world.operator)?
        .add_publisher_key(pb::AddPublisherKeyRequest {
            name: "bench-tools".to_owned(),
            public_key_pem: publisher.public_key_pem(),
        })
        .await
        .context("registering the publisher key")?;

    // text-stats 1.0.0, a signed release of the adapter.
    let limits = soma_release::Limits {
        fuel: 50_000_000,
        memory_bytes: 4 * 1024 * 1024,
        deadline_ms: 2_000,
    };
    let manifest = soma_release::Manifest::new(
        TOOL,
        VERSION,
        soma_sandbox::ADAPTER_ENTRYPOINT,
        limits,
        "Counts characters, words, lines and bytes of a text.",
        &module,
    )?;
    let envelope = soma_release::sign_manifest(&manifest, &soma_testing::pem("PRIVATE KEY", &pkcs8))?;
    let publish = pb::PublishReleaseRequest {
        tool: TOOL.to_owned(),
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
    };
    world
        .registry_client(&world.gateway)?
        .publish_release(as_user(
            &world.claims,
            &world.registry.1,
            "publisher@acme",
            &["tools:publish"],
            true,
            publish,
        )?)
        .await
        .context("publishing text-stats")?;

    // The bundle attested by the publisher and submitted by alice.
    let attestation = soma_capsule::attest(
        &bundle,
        CAPSULE_REVIEW_PREDICATE_TYPE,
        json!({"reviewer": "publisher"}),
        &[&publisher],
    )?;
    let mut repo = world.repo_client()?;
    let audience = &world.repo.1;
    let submission = repo
        .submit_capsule(as_user(
            &world.claims,
            audience,
            SUBMITTER,
            &["capsules:submit"],
            true,
            pb::SubmitCapsuleRequest {
                capsule: bundle.name().to_owned(),
                version: bundle.version().as_str().to_owned(),
                bundle: bundle.canonical_bytes().to_vec(),
                attestation: Some(pb::DsseEnvelope {
                    payload_type: attestation.payload_type.clone(),
                    payload: attestation.payload.clone(),
                    signatures: attestation
                        .signatures
                        .iter()
                        .map(|s| pb::DsseSignature {
                            keyid: s.keyid.clone(),
                            sig: s.sig.clone(),
                        })
                        .collect(),
                }),
            },
        )?)
        .await
        .context("submitting the example capsule")?
        .into_inner();

    // Reviewed by bob, a second subject, with MFA.
    for decision in [pb::ReviewDecision::StartReview, pb::ReviewDecision::Approve] {
        repo.review_submission(as_user(
            &world.claims,
            audience,
            REVIEWER,
            &["capsules:review"],
            true,
            pb::ReviewSubmissionRequest {
                submission_id: submission.submission_id.clone(),
                decision: decision as i32,
                comment: format!("{decision:?}: the schema and the pinned digest checked"),
            },
        )?)
        .await
        .with_context(|| format!("review {decision:?}"))?;
    }

    // Installed in production.
    let installation = repo
        .create_installation(as_user(
            &world.claims,
            audience,
            INSTALLER,
            &["installations:write"],
            true,
            pb::CreateInstallationRequest {
                environment: ENVIRONMENT.to_owned(),
                submission_id: submission.submission_id.clone(),
            },
        )?)
        .await
        .context("installing the capsule")?
        .into_inner();
    ensure!(
        installation.status == pb::InstallationStatus::Installed as i32 && installation.active_revision == 1,
        "the installation is {:?} at active revision {}",
        pb::InstallationStatus::try_from(installation.status),
        installation.active_revision
    );
    Ok(bundle)
}

/// What `text_stats` answers for `text`, from its definition: Unicode
/// scalar values, maximal runs of non-whitespace (space, \t, \n, \v, \f,
/// \r), the number of \n plus one when non-empty, UTF-8 bytes.
fn expected_stats(text: &str) -> [(&'static str, f64); 4] {
    let words = text
        .split([' ', '\t', '\n', '\x0b', '\x0c', '\r'])
        .filter(|w| !w.is_empty())
        .count();
    let lines = if text.is_empty() {
        0
    } else {
        text.matches('\n').count() + 1
    };
    let count = |n: usize| -> f64 {
        // A count of a 200-byte text: exact in an f64.
        f64::from(u32::try_from(n).unwrap_or(u32::MAX))
    };
    [
        ("characters", count(text.chars().count())),
        ("words", count(words)),
        ("lines", count(lines)),
        ("bytes", count(text.len())),
    ]
}

/// Whether a JSON output holds exactly the expected statistics.
fn json_matches(output: &Value, expected: &[(&str, f64)]) -> bool {
    output.as_object().is_some_and(|o| {
        o.len() == expected.len()
            && expected
                .iter()
                .all(|(k, v)| o.get(*k).and_then(Value::as_f64) == Some(*v))
    })
}

/// Whether a protobuf output holds exactly the expected statistics.
fn struct_matches(output: &prost_types::Struct, expected: &[(&str, f64)]) -> bool {
    use prost_types::value::Kind;
    output.fields.len() == expected.len()
        && expected.iter().all(|(k, v)| {
            matches!(
                output.fields.get(*k).and_then(|f| f.kind.as_ref()),
                Some(Kind::NumberValue(n)) if n == v
            )
        })
}

/// The run input as a protobuf `Struct`.
fn input_struct() -> prost_types::Struct {
    use prost_types::value::Kind;
    let text = prost_types::Value {
        kind: Some(Kind::StringValue(INPUT_TEXT.to_owned())),
    };
    prost_types::Struct {
        fields: [("text".to_owned(), text)].into_iter().collect(),
    }
}

async fn run(
    args: &Args,
    world: &World,
    bundle: &Bundle,
    issuer: &Issuer,
    edge: &ServerThread,
) -> anyhow::Result<Report> {
    let expected = expected_stats(INPUT_TEXT);
    let client = http_client();
    let url: http::Uri = format!("http://{}{RUN_ROUTE}", edge.addr).parse()?;
    let bearer = issuer.bearer(RUN_CAPABILITIES)?;
    let body = Bytes::from(json!({"environment": ENVIRONMENT, "input": {"text": INPUT_TEXT}}).to_string());
    let edge_run = EdgeRun {
        client,
        url,
        bearer,
        body,
    };

    // One run through the edge before anything is measured: 200,
    // succeeded, and the statistics of the text.
    let reply = edge_run.send().await?;
    let answer: Value = serde_json::from_slice(&reply.1).with_context(|| {
        format!(
            "the edge answered {} with a body that is not JSON: {}",
            reply.0,
            String::from_utf8_lossy(&reply.1)
        )
    })?;
    ensure!(
        reply.0 == StatusCode::OK
            && answer["succeeded"] == true
            && json_matches(&answer["output"], &expected),
        "RunCapsule through the edge answered {} {answer}; expected 200, succeeded, output {expected:?}",
        reply.0
    );
    progress(&format!(
        "checked: RunCapsule through the edge answered 200, succeeded, output {} (run {})",
        answer["output"],
        answer["runId"].as_str().unwrap_or("?")
    ));

    let execute = Execute {
        client: world.registry_client(&world.gateway)?,
        claims: Arc::clone(&world.claims),
        audience: world.registry.1.clone(),
        input: input_struct(),
        expected,
    };
    let first = execute.call_checked().await?;
    ensure!(
        first.module_sha256.as_slice() == bundle.tools()[0].module_sha256.as_slice(),
        "the direct ExecuteTool ran a module other than the one the capsule pins"
    );
    let resolve = Resolve {
        client: world.repo_client()?,
        claims: Arc::clone(&world.claims),
        audience: world.repo.1.clone(),
        input: input_struct(),
    };
    resolve.call().await?;

    let edge_call = || edge_run.call();
    let execute_call = || execute.call();
    let resolve_call = || resolve.call();

    let period = Duration::from_secs(1) / args.rate;
    if args.warmup_seconds > 0 {
        let warmup = Duration::from_secs(u64::from(args.warmup_seconds));
        progress(&format!(
            "warm-up: {} s open loop at {}/s on each path",
            args.warmup_seconds, args.rate
        ));
        open_loop(period, warmup, edge_call)
            .await
            .context("edge warm-up")?;
        open_loop(period, warmup, execute_call)
            .await
            .context("execute warm-up")?;
        open_loop(period, warmup, resolve_call)
            .await
            .context("resolve warm-up")?;
    }
    let duration = Duration::from_secs(u64::from(args.seconds));
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let e = open_loop(period, duration, edge_call)
            .await
            .context("edge open loop")?;
        let x = open_loop(period, duration, execute_call)
            .await
            .context("execute open loop")?;
        let r = open_loop(period, duration, resolve_call)
            .await
            .context("resolve open loop")?;
        progress(&format!(
            "round {round}: edge p50 {:>8.1} µs p99 {:>8.1} µs   execute p50 {:>7.1} µs p99 {:>8.1} µs   \
             resolve p50 {:>7.1} µs   p50 ratio {:.3}   ({:.0} / {:.0} / {:.0} launched/s)",
            e.percentile_us(50.0),
            e.percentile_us(99.0),
            x.percentile_us(50.0),
            x.percentile_us(99.0),
            r.percentile_us(50.0),
            e.percentile_us(50.0) / x.percentile_us(50.0),
            e.achieved_rate(),
            x.achieved_rate(),
            r.achieved_rate(),
        ));
        rounds.push(Round {
            edge: e,
            execute: x,
            resolve: r,
        });
    }
    Ok(Report { rounds })
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// HTTP/1.1 keep-alive, pooled connections, `TCP_NODELAY`.
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The edge path: one `RunCapsule` request, always the same.
struct EdgeRun {
    client: HttpClient,
    url: http::Uri,
    bearer: HeaderValue,
    body: Bytes,
}

impl EdgeRun {
    /// The status and the whole body (read, so that the connection is reused).
    fn send(&self) -> impl Future<Output = anyhow::Result<(StatusCode, Bytes)>> + Send + use<> {
        let client = self.client.clone();
        let request = http::Request::post(self.url.clone())
            .header(http::header::AUTHORIZATION, self.bearer.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()));
        async move {
            let response = client.request(request?).await.context("edge request")?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .context("edge reply body")?
                .to_bytes();
            Ok((status, body))
        }
    }

    /// One run, which must answer 200 with `succeeded: true`.
    fn call(&self) -> impl Future<Output = anyhow::Result<()>> + Send + use<> {
        let sent = self.send();
        async move {
            let (status, body) = sent.await?;
            let succeeded = serde_json::from_slice::<Value>(&body)
                .ok()
                .is_some_and(|v| v["succeeded"] == true);
            if status != StatusCode::OK || !succeeded {
                bail!(
                    "RunCapsule through the edge answered {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        }
    }
}

/// The baseline: `ExecuteTool` of [`TOOL`]@[`VERSION`] as the gateway.
struct Execute {
    client: ToolRegistryClient<Channel>,
    claims: Arc<ClaimsSigner>,
    audience: SpiffeId,
    input: prost_types::Struct,
    expected: [(&'static str, f64); 4],
}

impl Execute {
    fn request(&self) -> anyhow::Result<tonic::Request<pb::ExecuteToolRequest>> {
        as_user(
            &self.claims,
            &self.audience,
            RUNNER,
            RUN_CAPABILITIES,
            false,
            pb::ExecuteToolRequest {
                tool: TOOL.to_owned(),
                version: VERSION.to_owned(),
                input: Some(self.input.clone()),
                run_id: String::new(),
            },
        )
    }

    /// One execution, which must answer an output and a billing event.
    fn call(&self) -> impl Future<Output = anyhow::Result<()>> + Send + use<> {
        let mut client = self.client.clone();
        let request = self.request();
        async move {
            let response = client
                .execute_tool(request?)
                .await
                .context("direct ExecuteTool")?
                .into_inner();
            if response.output.is_none() || response.billing_event_id.is_empty() {
                bail!("ExecuteTool answered no output or no billing event: {response:?}");
            }
            Ok(())
        }
    }

    /// One execution whose output must be the expected statistics.
    async fn call_checked(&self) -> anyhow::Result<pb::ExecuteToolResponse> {
        let response = self
            .client
            .clone()
            .execute_tool(self.request()?)
            .await
            .context("direct ExecuteTool")?
            .into_inner();
        ensure!(
            response
                .output
                .as_ref()
                .is_some_and(|o| struct_matches(o, &self.expected))
                && !response.billing_event_id.is_empty(),
            "the direct ExecuteTool answered {response:?}; expected the output {:?} and a billing event",
            self.expected
        );
        Ok(response)
    }
}

/// The first backend call of a run: `ResolveCapsuleRun` as the gateway.
struct Resolve {
    client: CapsuleRepoClient<Channel>,
    claims: Arc<ClaimsSigner>,
    audience: SpiffeId,
    input: prost_types::Struct,
}

impl Resolve {
    /// One resolution, which must answer the one pinned step.
    fn call(&self) -> impl Future<Output = anyhow::Result<()>> + Send + use<> {
        let mut client = self.client.clone();
        let request = as_user(
            &self.claims,
            &self.audience,
            RUNNER,
            RUN_CAPABILITIES,
            false,
            pb::ResolveCapsuleRunRequest {
                capsule: CAPSULE.to_owned(),
                environment: ENVIRONMENT.to_owned(),
                input: Some(self.input.clone()),
            },
        );
        async move {
            let resolved = client
                .resolve_capsule_run(request?)
                .await
                .context("direct ResolveCapsuleRun")?
                .into_inner();
            if resolved.steps.len() != 1 || resolved.steps[0].tool != TOOL {
                bail!("ResolveCapsuleRun answered the steps {:?}", resolved.steps);
            }
            Ok(())
        }
    }
}

/// The development issuer of the gateway under test: its HS256 key.
struct Issuer {
    secret: Vec<u8>,
    kid: String,
}

impl Issuer {
    /// Reads the JWK that `GatewayConfig::dev` wrote.
    fn from_jwk_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let jwk: Value = serde_json::from_str(&text)?;
        let field = |name: &str| {
            jwk.get(name)
                .and_then(Value::as_str)
                .with_context(|| format!("{} has no {name:?}", path.display()))
        };
        Ok(Self {
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(field("k")?)?,
            kid: field("kid")?.to_owned(),
        })
    }

    /// `Bearer <HS256 token>` of [`RUNNER`] with `scopes`, valid for an hour.
    fn bearer(&self, scopes: &[&str]) -> anyhow::Result<HeaderValue> {
        let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
        let claims = json!({
            "iss": soma_gateway::config::DEV_ISSUER,
            "aud": soma_gateway::config::DEV_AUDIENCE,
            "sub": RUNNER,
            "tenant": TENANT,
            "region": REGION,
            "scope": scopes.join(" "),
            "amr": ["pwd"],
            "auth_time": now,
            "iat": now,
            "exp": now + 3600,
        });
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": self.kid});
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        Ok(HeaderValue::try_from(format!(
            "Bearer {input}.{}",
            b64.encode(tag.as_ref())
        ))?)
    }
}

/// One round: each path's latencies, in the order measured.
#[derive(Debug)]
struct Round {
    edge: Latencies,
    execute: Latencies,
    resolve: Latencies,
}

#[derive(Debug)]
struct Report {
    rounds: Vec<Round>,
}

impl Report {
    #[expect(clippy::print_stdout, reason = "the benchmark's output")]
    fn print(&self, args: &Args) {
        let med = |f: &dyn Fn(&Round) -> f64| bench::median(self.rounds.iter().map(f).collect());
        let pcts = [50.0, 90.0, 99.0];
        let edge = pcts.map(|p| med(&|r| r.edge.percentile_us(p)));
        let execute = pcts.map(|p| med(&|r| r.execute.percentile_us(p)));
        let resolve = pcts.map(|p| med(&|r| r.resolve.percentile_us(p)));
        let ratios: Vec<f64> = self
            .rounds
            .iter()
            .map(|r| r.edge.percentile_us(50.0) / r.execute.percentile_us(50.0))
            .collect();
        let p50_ratio = bench::median(ratios.clone());
        let p99_ratio = med(&|r| r.edge.percentile_us(99.0) / r.execute.percentile_us(99.0));
        let rest50 = med(&|r| {
            r.edge.percentile_us(50.0) - r.resolve.percentile_us(50.0) - r.execute.percentile_us(50.0)
        });
        let calls = |f: &dyn Fn(&Round) -> usize| -> usize { self.rounds.iter().map(f).sum() };
        let edge_calls = calls(&|r| r.edge.samples.len());
        let execute_calls = calls(&|r| r.execute.samples.len());
        let resolve_calls = calls(&|r| r.resolve.samples.len());
        let rate = |f: &dyn Fn(&Round) -> f64| bench::median(self.rounds.iter().map(f).collect());
        let edge_rate = rate(&|r| r.edge.achieved_rate());

        println!();
        println!(
            "== RunCapsule of the text-stats capsule, open loop at {} req/s, {} rounds x {} s per path after {} s warm-up",
            args.rate, args.rounds, args.seconds, args.warmup_seconds
        );
        println!(
            "   edge: POST {RUN_ROUTE}, HTTP/1.1 keep-alive, HS256 token with capsules:run tools:execute, ~200-byte text"
        );
        println!(
            "   execute: direct mTLS gRPC ExecuteTool of {TOOL} {VERSION}, same input, as the gateway with signed claims"
        );
        println!("   resolve: direct mTLS gRPC ResolveCapsuleRun of the capsule, same input, as the gateway");
        println!("   per round (µs):");
        println!(
            "   round |     edge p50       p90       p99 |  execute p50       p90       p99 |  resolve p50       p90       p99 | p50 ratio"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let p = |l: &Latencies| pcts.map(|q| l.percentile_us(q));
            let (e, x, s) = (p(&r.edge), p(&r.execute), p(&r.resolve));
            println!(
                "   {:>5} | {:>12.1} {:>9.1} {:>9.1} | {:>12.1} {:>9.1} {:>9.1} | {:>12.1} {:>9.1} {:>9.1} | {:>8.3}x",
                i + 1,
                e[0],
                e[1],
                e[2],
                x[0],
                x[1],
                x[2],
                s[0],
                s[1],
                s[2],
                ratios[i]
            );
        }
        println!(
            "   medians over rounds ({edge_calls} runs, {execute_calls} executions, {resolve_calls} resolutions):"
        );
        println!(
            "   edge      p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs",
            edge[0], edge[1], edge[2]
        );
        println!(
            "   execute   p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs",
            execute[0], execute[1], execute[2]
        );
        println!(
            "   resolve   p50 {:>8.1} µs  p90 {:>8.1} µs  p99 {:>8.1} µs",
            resolve[0], resolve[1], resolve[2]
        );
        println!(
            "   ratio     p50 {p50_ratio:>8.3}x    (target <= {TARGET_P50_RATIO:.1}x; median of per-round ratios edge / execute)"
        );
        println!("   ratio     p99 {p99_ratio:>8.3}x");
        println!();
        println!("== what one RunCapsule is made of (information)");
        println!("   2 backend calls over mTLS: resolve (CapsuleRepo) and execute (ToolRegistry's");
        println!("   ExecuteCapsuleStep: the sandbox, the billing event and the run's record in one commit)");
        println!(
            "   resolve p50 {:.1} µs + execute p50 {:.1} µs = {:.1} µs of the edge's p50 {:.1} µs",
            resolve[0],
            execute[0],
            resolve[0] + execute[0],
            edge[0]
        );
        println!(
            "   the rest, p50 {rest50:.1} µs (median of per-round differences): the HTTP hop, admission (token,"
        );
        println!(
            "   residency, capability, moderation of the input), the envelopes, the step's checks and its record"
        );

        println!();
        println!("result.rate={}", args.rate);
        println!("result.seconds={}", args.seconds);
        println!("result.rounds={}", args.rounds);
        println!("result.edge_launched_rate={edge_rate:.1}");
        println!("result.p50_us_edge={:.1}", edge[0]);
        println!("result.p90_us_edge={:.1}", edge[1]);
        println!("result.p99_us_edge={:.1}", edge[2]);
        println!("result.p50_us_execute={:.1}", execute[0]);
        println!("result.p90_us_execute={:.1}", execute[1]);
        println!("result.p99_us_execute={:.1}", execute[2]);
        println!("result.p50_us_resolve={:.1}", resolve[0]);
        println!("result.p90_us_resolve={:.1}", resolve[1]);
        println!("result.p99_us_resolve={:.1}", resolve[2]);
        println!("result.p50_us_rest={rest50:.1}");
        println!("result.p50_ratio={p50_ratio:.4}");
        println!(
            "result.p50_ratio_rounds={}",
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        println!("result.p99_ratio={p99_ratio:.4}");
        println!("result.p50_ratio_target={TARGET_P50_RATIO:.1}");
        println!("result.edge_runs={edge_calls}");
        println!("result.executions={execute_calls}");
        println!("result.resolutions={resolve_calls}");
    }
}
